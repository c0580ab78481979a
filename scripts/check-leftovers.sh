#!/usr/bin/env bash
# After the suite: nothing the tests created may be left behind.
set -u
fail=0
if command -v bpftool >/dev/null 2>&1; then
  progs=$(bpftool prog list 2>/dev/null | grep -E 'name (sys_enter_execve|sys_exit_execve|sched_process_fork|connect4|dns_egress|egress_guard|sock_create|agent_exit)' || true)
  if [ -n "$progs" ]; then echo "leftover: watcher BPF programs still loaded:"; echo "$progs"; fail=1; fi
fi
# Pins of a watcher that was killed are removed by the next watcher start (the tests that
# kill one start another): none may be left.
pins=$(ls -d /sys/fs/bpf/watcher/* /sys/fs/bpf/watcher 2>/dev/null || true)
if [ -n "$pins" ]; then echo "leftover: pinned watcher programs: $pins"; fail=1; fi
cg=$(ls -d /sys/fs/cgroup/unified/watcher-* /sys/fs/cgroup/watcher-* 2>/dev/null || true)
if [ -n "$cg" ]; then echo "leftover: cgroups: $cg"; fail=1; fi
ns=$(ip netns list 2>/dev/null | grep -E 'watcher|wlab-' || true)
if [ -n "$ns" ]; then echo "leftover: network namespaces: $ns"; fail=1; fi
# The attack lab's resolv.conf files for `ip netns exec` (tests/src/lab.rs).
etc=$(ls -d /etc/netns/wlab-* 2>/dev/null || true)
if [ -n "$etc" ]; then echo "leftover: attack-lab /etc/netns entries: $etc"; fail=1; fi
if [ $fail -eq 0 ]; then echo "leftovers: none (no BPF programs, pins, cgroups or namespaces left)"; fi
exit $fail
