//! The guard: what keeps a job inside its policy whatever socket it uses and whatever happens
//! to the agent.
//!
//! * `sock_create` (cgroup_sock, every inet socket a watched process creates): records the
//!   socket's owner, so the packet backstop knows whose it is; refuses raw sockets inside an
//!   install script in enforce mode, and every socket once the agent is gone.
//! * `egress_guard` (cgroup_skb egress): the packet backstop. Every packet a job's socket sends
//!   is judged against the job's allow tables, whatever the socket kind (ICMP, raw IP, SCTP, a
//!   path the socket-address hooks miss); in enforce mode a packet to a destination that is not
//!   allowed is dropped. Once the agent is gone, every packet of a job is dropped.
//! * syscall tracepoints `socket`, `connect`, `bpf`, `mount`, `umount2`, `ptrace` and the raw
//!   tracepoint `signal_generate`: raw and packet sockets, unix-socket connects (local
//!   deputies), and tampering with watcher (a signal to the agent, loading BPF, (un)mounting,
//!   tracing). In enforce mode the process is killed before the syscall returns.
//! * `agent_exit` (sched_process_exit): when the agent's last thread exits while the programs
//!   are still attached (they are pinned, so a killed agent does not detach them), the
//!   "agent gone" state is set: every watched process is then denied all network and killed at
//!   its next exec, fork, socket, connect or signal.
use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_probe_read_user, generated::bpf_get_socket_cookie},
    macros::{cgroup_skb, cgroup_sock, raw_tracepoint},
    programs::{RawTracePointContext, SkBuffContext, SockContext, TracePointContext},
};
use watcher_common::{
    AF_INET, AF_INET6, AF_PACKET, AF_UNIX, CFG_AGENT_GONE, CFG_AGENT_PID, CFG_OFF_TASK_TGID, ConnectRecord, Counter,
    DeputyKey, GUARD_DENIED, GUARD_KILLED, GuardKey, JOB_ENFORCE, OP_PACKET, PROC_INSTALL, PROTO_ICMP, PROTO_ICMPV6,
    PROTO_TCP, PROTO_UDP, ProcInfo, RecordKind, SOCK_RAW, SockOwner, SocketRecord, TAMPER_BPF, TAMPER_MOUNT,
    TAMPER_PTRACE, TAMPER_SIGNAL, TamperRecord, UNIX_PATH_LEN, UnixConnectRecord, VERDICT_ALLOW, VERDICT_DENY,
};

use crate::{
    common::{agent_gone, count, current_tgid, fill_header, job_flags, kill_current, watched_current},
    maps::{CONFIG, DEPUTIES, EVENTS, GUARD_SEEN, WATCHED},
    net::{egress_allowed, fill_owner},
};

/// `SockOwner::_pad` flag: the socket-address hooks (connect, sendmsg) saw this socket.
pub const OWNER_JUDGED: u32 = 1;
/// `SockOwner::_pad` flag, with OWNER_JUDGED: a TCP (SOCK_STREAM) or UDP (SOCK_DGRAM) socket,
/// whose every packet went to a destination the socket-address hooks judged.
pub const OWNER_L4: u32 = 2;

const SIGCHLD: i32 = 17;

#[inline(always)]
fn enforced(info: &ProcInfo) -> bool {
    job_flags(info.job) & JOB_ENFORCE != 0
}

#[inline(always)]
fn in_install_script(info: &ProcInfo) -> bool {
    info.flags & PROC_INSTALL != 0
}

/// Every inet socket a watched process creates.
#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    let Some(info) = watched_current() else { return 1 };
    if agent_gone() {
        return 0;
    }
    let sock = crate::safe::sock(&ctx);
    let (sock_type, protocol) = (sock.type_, sock.protocol);
    let mut owner = SockOwner::default();
    fill_owner(&mut owner, info.ppid);
    owner.job = info.job;
    if !crate::safe::set_owner(ctx.sock, &owner) {
        return 0;
    }
    // Raw sockets made through io_uring never reach sys_enter_socket: refuse them here too.
    if sock_type == SOCK_RAW && protocol != 0 && enforced(&info) && in_install_script(&info) {
        return 0;
    }
    1
}

/// The packet backstop: every packet a job's socket sends.
#[cgroup_skb(egress)]
pub fn egress_guard(ctx: SkBuffContext) -> i32 {
    backstop::<true>(&ctx)
}

/// [`egress_guard`] with bounded loops, for kernels without bpf_loop (see `safe::repeat`).
#[cgroup_skb(egress)]
pub fn egress_guard_bounded(ctx: SkBuffContext) -> i32 {
    backstop::<false>(&ctx)
}

#[inline(always)]
fn backstop<const LOOP: bool>(ctx: &SkBuffContext) -> i32 {
    let Some(owner) = crate::safe::skb_owner(ctx) else { return 1 };
    if agent_gone() {
        return 0;
    }
    // TCP and UDP sockets that went through connect or sendmsg were judged (and reported) by
    // the socket-address hooks, whose verdict stands; the backstop is for everything else
    // (a listener's replies, raw and ping sockets, SCTP, a path those hooks miss).
    if owner._pad & (OWNER_JUDGED | OWNER_L4) == OWNER_JUDGED | OWNER_L4 {
        return 1;
    }
    let Some((family, proto, daddr, dport)) = parse(ctx) else { return 1 };
    let skb = aya_ebpf::EbpfContext::as_ptr(ctx);
    // SAFETY: bpf_get_socket_cookie takes the program's context pointer.
    let cookie = unsafe { bpf_get_socket_cookie(skb) };
    let key = GuardKey { cookie, daddr, dport, proto, _pad: 0, family, _pad2: 0 };
    // SAFETY: copied out at once.
    if let Some(v) = unsafe { GUARD_SEEN.get(&key) }.copied() {
        return if v == VERDICT_DENY { 0 } else { 1 };
    }
    let enforce = job_flags(owner.job) & JOB_ENFORCE != 0;
    let allowed = egress_allowed::<LOOP>(owner.job, &daddr, family, dport);
    let verdict = if allowed || !enforce { VERDICT_ALLOW } else { VERDICT_DENY };
    let _ = GUARD_SEEN.insert(&key, &verdict, 0);
    if !allowed {
        match EVENTS.reserve::<ConnectRecord>(0) {
            Some(mut entry) => {
                // SAFETY: the reservation is a ConnectRecord-sized, writable ring-buffer slot.
                let rec = unsafe { &mut *entry.as_mut_ptr() };
                fill_header(&mut rec.hdr, RecordKind::Connect, owner.ppid, owner.job);
                rec.hdr.pid = owner.pid;
                rec.hdr.tid = owner.pid;
                rec.hdr.uid = owner.uid;
                rec.hdr.gid = owner.gid;
                rec.hdr.comm = owner.comm;
                rec.daddr = daddr;
                rec.family = family;
                rec.dport = dport;
                rec.proto = proto;
                rec.op = OP_PACKET;
                rec.verdict = verdict;
                rec._pad = 0;
                entry.submit(0);
            }
            None => count(Counter::RingbufFullGuard),
        }
    }
    if verdict == VERDICT_DENY { 0 } else { 1 }
}

/// (family, protocol, destination, destination port or 0) of an IP packet, in two or three
/// helper calls (the first 20 bytes at once, the rest of an IPv6 header, the port).
#[inline(always)]
fn parse(ctx: &SkBuffContext) -> Option<(u16, u8, [u8; 16], u16)> {
    let h: [u8; 20] = ctx.load(0).ok()?;
    let mut daddr = [0u8; 16];
    let (family, proto, l4, first) = match h[0] >> 4 {
        4 => {
            let ihl = ((h[0] & 0x0f) as usize) * 4;
            let frag = u16::from_be_bytes([h[6], h[7]]);
            daddr[..4].copy_from_slice(&h[16..20]);
            (AF_INET, h[9], ihl, frag & 0x1fff == 0)
        }
        6 => {
            let rest: [u8; 20] = ctx.load(20).ok()?;
            daddr.copy_from_slice(&rest[4..20]);
            (AF_INET6, h[6], 40, true)
        }
        _ => return None,
    };
    let dport = if first && (proto == PROTO_TCP || proto == PROTO_UDP || proto == watcher_common::PROTO_SCTP) {
        u16::from_be(ctx.load(l4 + 2).ok()?)
    } else {
        0
    };
    Some((family, proto, daddr, dport))
}

/// Report (and in enforce mode inside an install script, kill) raw, packet and ICMP sockets.
/// sys_enter_socket: family @16, type @24, protocol @32.
/// Called by `syscalls::sys_enter` (the ctx has the per-syscall tracepoint's layout).
#[inline(always)]
pub fn sys_enter_socket(ctx: TracePointContext) -> u32 {
    let Some(info) = watched_current() else { return 0 };
    if agent_gone() {
        kill_current();
        return 0;
    }
    // SAFETY: offsets from the tracepoint's format file.
    let (family, stype, protocol) = unsafe {
        (
            ctx.read_at::<u64>(16).unwrap_or(0) as u32,
            (ctx.read_at::<u64>(24).unwrap_or(0) as u32) & 0xf,
            ctx.read_at::<u64>(32).unwrap_or(0) as u32,
        )
    };
    let inet = family == AF_INET as u32 || family == AF_INET6 as u32;
    let icmp = inet && (protocol == PROTO_ICMP as u32 || protocol == PROTO_ICMPV6 as u32);
    let dangerous = family == AF_PACKET as u32 || (inet && stype == SOCK_RAW);
    if !dangerous && !icmp {
        return 0;
    }
    let mut flags = 0;
    if dangerous && enforced(&info) && in_install_script(&info) {
        kill_current();
        flags |= GUARD_KILLED;
    }
    match EVENTS.reserve::<SocketRecord>(0) {
        Some(mut entry) => {
            // SAFETY: a SocketRecord-sized, writable ring-buffer slot.
            let rec = unsafe { &mut *entry.as_mut_ptr() };
            fill_header(&mut rec.hdr, RecordKind::Socket, info.ppid, info.job);
            rec.family = family;
            rec.sock_type = stype;
            rec.protocol = protocol;
            rec.flags = flags;
            entry.submit(0);
        }
        None => count(Counter::RingbufFullGuard),
    }
    0
}

/// Unix-socket connects (docker.sock and other local deputies). sys_enter_connect: fd @16,
/// uservaddr @24, addrlen @32. A path in `DEPUTIES` for the job kills the process in enforce
/// mode (the connect happens, but the process dies before it can use it).
/// Called by `syscalls::sys_enter` (the ctx has the per-syscall tracepoint's layout).
#[inline(always)]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let Some(info) = watched_current() else { return 0 };
    if agent_gone() {
        kill_current();
        return 0;
    }
    // SAFETY: offsets from the tracepoint's format file.
    let addr: *const u8 = unsafe { ctx.read_at::<u64>(24) }.unwrap_or(0) as *const u8;
    let alen = unsafe { ctx.read_at::<u64>(32) }.unwrap_or(0) as u32;
    if addr.is_null() || alen < 3 {
        return 0;
    }
    // SAFETY: a user pointer read with the probe helper (faults give an error).
    let fam: u16 = unsafe { bpf_probe_read_user(addr.cast::<u16>()) }.unwrap_or(0);
    if fam != AF_UNIX {
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve::<UnixConnectRecord>(0) else {
        count(Counter::RingbufFullGuard);
        return 0;
    };
    // SAFETY: a UnixConnectRecord-sized, writable ring-buffer slot.
    let rec = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut rec.hdr, RecordKind::UnixConnect, info.ppid, info.job);
    rec.flags = 0;
    rec._pad = [0; 4];
    let n = alen.saturating_sub(2).min(UNIX_PATH_LEN as u32) & 0x7f;
    rec.path = [0; UNIX_PATH_LEN];
    // SAFETY: reads n <= UNIX_PATH_LEN bytes of user memory into the record's buffer.
    let ok = n > 0
        && unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_user(
                rec.path.as_mut_ptr().cast(),
                n,
                addr.wrapping_add(2).cast(),
            )
        } == 0;
    rec.path_len = if ok { n } else { 0 };
    // The key: the path up to its NUL (an abstract name, which starts with NUL, whole), the rest
    // zeroed without a branch per byte (a branch per byte multiplies the verifier's states).
    let mut key = DeputyKey { job: info.job, path: [0; UNIX_PATH_LEN] };
    let abstract_name = rec.path[0] == 0;
    let mut seen: u8 = 0;
    for i in 0..UNIX_PATH_LEN {
        let b = rec.path[i];
        seen |= ((b as u32).wrapping_sub(1) >> 31) as u8;
        key.path[i] = b & seen.wrapping_sub(1);
    }
    if abstract_name {
        key.path = rec.path;
    }
    // SAFETY: copied out at once.
    let deputy = unsafe { DEPUTIES.get(&key) }.is_some();
    // A step may use docker itself (`docker build`); an install script has no business there.
    if deputy && enforced(&info) && in_install_script(&info) {
        kill_current();
        rec.flags |= GUARD_KILLED;
    }
    if deputy {
        rec.flags |= GUARD_DENIED;
    }
    entry.submit(0);
    0
}

#[inline(always)]
fn tamper(info: &ProcInfo, what: u32, arg: u32, target: u32) {
    let mut flags = 0;
    if enforced(info) || agent_gone() {
        kill_current();
        flags |= GUARD_KILLED;
    }
    match EVENTS.reserve::<TamperRecord>(0) {
        Some(mut entry) => {
            // SAFETY: a TamperRecord-sized, writable ring-buffer slot.
            let rec = unsafe { &mut *entry.as_mut_ptr() };
            fill_header(&mut rec.hdr, RecordKind::Tamper, info.ppid, info.job);
            rec.what = what;
            rec.arg = arg;
            rec.target = target;
            rec.flags = flags;
            entry.submit(0);
        }
        None => count(Counter::RingbufFullGuard),
    }
}

/// sys_enter_bpf: cmd @16. No install script or build step has a reason to load BPF programs
/// or open watcher's maps.
/// Called by `syscalls::sys_enter` (the ctx has the per-syscall tracepoint's layout).
#[inline(always)]
pub fn sys_enter_bpf(ctx: TracePointContext) -> u32 {
    let Some(info) = watched_current() else { return 0 };
    // SAFETY: offset from the tracepoint's format file.
    let cmd = unsafe { ctx.read_at::<u64>(16) }.unwrap_or(0) as u32;
    tamper(&info, TAMPER_BPF, cmd, 0);
    0
}

/// sys_enter_umount: unmounting bpffs would release watcher's pinned programs.
/// Called by `syscalls::sys_enter` (the ctx has the per-syscall tracepoint's layout).
#[inline(always)]
pub fn sys_enter_umount(ctx: TracePointContext) -> u32 {
    let Some(info) = watched_current() else { return 0 };
    // SAFETY: offset from the tracepoint's format file.
    let flags = unsafe { ctx.read_at::<u64>(24) }.unwrap_or(0) as u32;
    tamper(&info, TAMPER_MOUNT, flags, 0);
    0
}

/// sys_enter_ptrace: request @16, pid @24. Tracing the agent (or any process outside the job)
/// is tampering; a job tracing its own processes (a debugger in a test) is not judged here.
/// Called by `syscalls::sys_enter` (the ctx has the per-syscall tracepoint's layout).
#[inline(always)]
pub fn sys_enter_ptrace(ctx: TracePointContext) -> u32 {
    let Some(info) = watched_current() else { return 0 };
    // SAFETY: offsets from the tracepoint's format file.
    let (req, pid) =
        unsafe { (ctx.read_at::<u64>(16).unwrap_or(0) as u32, ctx.read_at::<u64>(24).unwrap_or(0) as u32) };
    // PTRACE_TRACEME (0) names no target.
    if req == 0 {
        return 0;
    }
    // SAFETY: copied out at once.
    if unsafe { WATCHED.get(&pid) }.is_some_and(|t| t.job == info.job) {
        // Inside the job: an install script tracing a process outside its own tree (the
        // runner, the package manager) is credential access (files.rs).
        crate::files::proc_access(watcher_common::FILE_PTRACE, pid, req);
        return 0;
    }
    tamper(&info, TAMPER_PTRACE, req, pid);
    0
}

/// signal_generate(sig, info, task, group, result): a signal a watched process sends to the
/// agent. Runs in the sender's context. Signals the kernel generates (SIGCHLD when the step's
/// first process exits, si_code > 0) are not tampering.
#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn signal_generate(ctx: RawTracePointContext) -> i32 {
    let agent = CONFIG.get(CFG_AGENT_PID).copied().unwrap_or(0) as u32;
    if agent == 0 {
        return 0;
    }
    // Who sent it is asked last, once the signal is known to be one to the agent: an exiting
    // process sends SIGCHLD (exit_notify) after sched_process_exit removed its entry, and
    // watched_current() would add it again, for good (one leaked entry per process that
    // ever exited in a watched cgroup, until WATCHED was full).
    let sig: i32 = ctx.arg(0);
    if sig == SIGCHLD {
        return 0;
    }
    let si: *const u8 = ctx.arg(1);
    // SEND_SIG_NOINFO (0) and SEND_SIG_PRIV (1) are kernel-internal senders.
    if (si as usize) <= 1 {
        return 0;
    }
    // SAFETY: kernel memory read with the probe helper; si_code follows si_signo and si_errno.
    let code: i32 = unsafe { bpf_probe_read_kernel(si.wrapping_add(8).cast::<i32>()) }.unwrap_or(1);
    if code > 0 {
        return 0;
    }
    let task: *const u8 = ctx.arg(2);
    let off = CONFIG.get(CFG_OFF_TASK_TGID).copied().unwrap_or(0) as usize;
    if off == 0 {
        return 0;
    }
    // SAFETY: kernel memory read with the probe helper at the BTF offset of task_struct.tgid.
    let tgid: i32 = unsafe { bpf_probe_read_kernel(task.wrapping_add(off).cast::<i32>()) }.unwrap_or(0);
    if tgid as u32 != agent {
        return 0;
    }
    let Some(info) = watched_current() else { return 0 };
    tamper(&info, TAMPER_SIGNAL, sig as u32, agent);
    0
}

/// The agent's exit: from now on, its jobs fail closed (see the module comment).
/// sched_process_exit's group_dead: the agent's last thread. Called by
/// `syscalls::sched_process_exit{,_tp}`.
#[inline(always)]
pub fn agent_exit(group_dead: bool) -> u32 {
    let agent = CONFIG.get(CFG_AGENT_PID).copied().unwrap_or(0) as u32;
    if agent == 0 || current_tgid() != agent {
        return 0;
    }
    if !group_dead {
        return 0;
    }
    if let Some(p) = CONFIG.get_ptr_mut(CFG_AGENT_GONE) {
        // SAFETY: an array slot of this program's map; a plain store.
        unsafe { *p = 1 };
    }
    0
}
