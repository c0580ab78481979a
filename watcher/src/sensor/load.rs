//! Loading: the kernel object (ABI checked), every program and how it is attached, pinned.
use std::{os::fd::AsFd, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::ProgramArray,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, Program, RawTracePoint,
        TracePoint,
        links::{FdLink, PinnedLink},
    },
};
use watcher_common::{ABI_VERSION, maps::names};

use super::{
    SensorConfig, SensorError,
    pins::PinDir,
    shell_identity,
    timing::{self, Phase},
};
use crate::event::SensorState;

pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/watcher-ebpf"));

/// How a program is attached. Everything that sees sockets or packets is attached at the
/// cgroup v2 root, so a process that moves to another cgroup is still seen; the programs
/// decide by the job the kernel keeps per process.
#[derive(Clone, Copy)]
enum Hook {
    Tracepoint(&'static str, &'static str),
    Raw(&'static str),
    /// A raw tracepoint where this kernel allows it (see [`Fallback`]), else the program named
    /// second on the perf-event tracepoint (category, name).
    RawOr(&'static str, &'static str, &'static str, &'static str),
    SockAddr,
    Skb(bool),
    SockCreate,
}

/// Every attached program, in attach order. The process sensors come first, so a process is
/// known before any of its sockets are judged. Every syscall watcher looks at goes through the
/// raw tracepoint program `sys_enter` (watcher-ebpf/src/syscalls.rs dispatches by number): one
/// attachment instead of one per syscall (their detaches serialised, most of the stop). Every
/// tracing program is a raw tracepoint where the kernel allows it: a perf-event tracepoint's
/// detach waits for an RCU grace period, one link after the other (~50 ms each here). The exec
/// record is sent at sched_process_exec, so no program runs at the syscall's exit.
const PROGRAMS: &[(&str, Hook)] = &[
    ("sys_enter", Hook::Raw("sys_enter")),
    ("sched_process_fork", Hook::RawOr("sched_process_fork", "sched_process_fork_tp", "sched", "sched_process_fork")),
    // The exit record, then the agent's own exit (guard): one program, syscalls.rs.
    ("sched_process_exit", Hook::RawOr("sched_process_exit", "sched_process_exit_tp", "sched", "sched_process_exit")),
    ("sched_process_exec_kill", Hook::Raw("sched_process_exec")),
    ("signal_generate", Hook::Raw("signal_generate")),
    ("connect4", Hook::SockAddr),
    ("connect6", Hook::SockAddr),
    ("sendmsg4", Hook::SockAddr),
    ("sendmsg6", Hook::SockAddr),
    ("sock_create", Hook::SockCreate),
    ("dns_egress", Hook::Skb(true)),
    ("dns_ingress", Hook::Skb(false)),
    ("egress_guard", Hook::Skb(true)),
];

/// Programs reached by tail call only: (program, program array, slot). Loaded, never attached.
const TAIL_CALLS: &[(&str, &str, u32, TailKind)] = &[
    ("exec_env_scan", names::ENV_SCAN_PROG, 0, TailKind::Raw),
    ("dns_egress_enforce", names::DNS_PROGS, 0, TailKind::Skb),
    ("stream_first", names::DNS_PROGS, 1, TailKind::Skb),
    ("stream_name", names::DNS_PROGS, 2, TailKind::Skb),
    ("stream_capture", names::DNS_PROGS, 3, TailKind::Skb),
    ("dns_ingress_learn", names::DNS_INGRESS_PROGS, 0, TailKind::Skb),
];

/// The programs whose loops run through bpf_loop (kernel >= 5.17; `watcher-ebpf`'s
/// `safe::repeat`), each with its twin of bounded loops, loaded in its place on older kernels
/// (or with `WATCHER_BOUNDED_LOOPS=1`): the same verdicts, at several times the verifier's work.
const BOUNDED: &[(&str, &str)] = &[
    ("sys_enter", "sys_enter_bounded"),
    ("exec_env_scan", "exec_env_scan_bounded"),
    ("dns_egress_enforce", "dns_egress_enforce_bounded"),
    ("dns_ingress_learn", "dns_ingress_learn_bounded"),
    ("connect4", "connect4_bounded"),
    ("connect6", "connect6_bounded"),
    ("sendmsg4", "sendmsg4_bounded"),
    ("sendmsg6", "sendmsg6_bounded"),
    ("egress_guard", "egress_guard_bounded"),
    ("stream_first", "stream_first_bounded"),
    ("stream_name", "stream_name_bounded"),
];

#[derive(Clone, Copy)]
enum TailKind {
    Raw,
    Skb,
}

pub fn require_root() -> Result<(), SensorError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(SensorError::NotRoot);
    }
    Ok(())
}

fn ensure_tracefs() -> Result<(), SensorError> {
    let events = Path::new("/sys/kernel/tracing/events");
    if events.exists() || Path::new("/sys/kernel/debug/tracing/events").exists() {
        return Ok(());
    }
    nix::mount::mount(Some("nodev"), "/sys/kernel/tracing", Some("tracefs"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(SensorError::Tracefs)
}

/// The ABI version the kernel object carries (the size of its `ABI` map), checked against
/// this agent's before anything is loaded.
pub fn check_abi(object: &[u8]) -> Result<(), SensorError> {
    let obj = aya_obj::Object::parse(object)
        .map_err(|e| SensorError::AbiMismatch { object: format!("unreadable ({e})"), agent: ABI_VERSION })?;
    match obj.maps.get(names::ABI).map(|m| m.max_entries()) {
        Some(v) if v == ABI_VERSION => Ok(()),
        Some(v) => Err(SensorError::AbiMismatch { object: v.to_string(), agent: ABI_VERSION }),
        None => Err(SensorError::AbiMismatch { object: "none (no ABI map)".into(), agent: ABI_VERSION }),
    }
}

pub fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut aya::maps::Map, SensorError> {
    ebpf.map_mut(name).ok_or(SensorError::Missing { kind: "map", name: name.into() })
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, SensorError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or(SensorError::Missing { kind: "program", name: name.into() })?;
    p.try_into().map_err(|e| SensorError::kernel(format!("program {name}"), e))
}

fn pin(link: FdLink, pins: &PinDir, name: &str) -> Result<PinnedLink, SensorError> {
    let path = pins.path().join(name);
    link.pin(&path).map_err(|e| SensorError::Pin { path, detail: e.to_string() })
}

/// Load the object, load and pin every program, fill the tail-call arrays, attach.
pub fn load_and_attach(
    cfg: &SensorConfig,
    cgroup_root: &Path,
    pins: &PinDir,
) -> Result<(Ebpf, Vec<PinnedLink>, Vec<SensorState>), SensorError> {
    if EBPF_OBJECT.is_empty() {
        return Err(SensorError::NoObject);
    }
    timing::time(Phase::Object, || check_abi(EBPF_OBJECT))?;
    if !cfg!(target_arch = "x86_64") {
        return Err(SensorError::Arch(std::env::consts::ARCH));
    }
    // Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
    let _ = nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_MEMLOCK,
        nix::sys::resource::RLIM_INFINITY,
        nix::sys::resource::RLIM_INFINITY,
    );
    ensure_tracefs()?;
    // Before the object is in memory: the BTF file is the biggest allocation of the start, and
    // the two then never add up in the agent's peak memory.
    let _ = super::btf::kernel_offsets();
    let mut ebpf = timing::time(Phase::Object, || {
        EbpfLoader::new().map_max_entries(names::EVENTS, cfg.ringbuf_bytes).load(EBPF_OBJECT)
    })
    .map_err(|e| SensorError::kernel("eBPF object (maps and BTF)", e))?;
    let mut links = Vec::new();
    match attach(&mut ebpf, cgroup_root, pins, &mut links, cfg.bench_disable) {
        Ok(states) => {
            timing::report_start();
            Ok((ebpf, links, states))
        }
        Err(e) => {
            detach_all(links);
            Err(e)
        }
    }
}

fn attach(
    ebpf: &mut Ebpf,
    cgroup_root: &Path,
    pins: &PinDir,
    links: &mut Vec<PinnedLink>,
    bench: super::BenchDisable,
) -> Result<Vec<SensorState>, SensorError> {
    let fallback = Fallback::probe();
    timing::time(Phase::Verify, || verify_all(ebpf, &fallback))?;
    // Before anything is attached: the raw sched_process_fork reads the child's pid with it.
    {
        let mut config = aya::maps::Array::<_, u64>::try_from(map_mut(ebpf, names::CONFIG)?)
            .map_err(|e| SensorError::map(names::CONFIG, "opening", e))?;
        for (slot, off) in super::btf::config_offsets() {
            config.set(slot, &(off as u64), 0).map_err(|e| SensorError::map(names::CONFIG, "writing", e))?;
        }
    }
    for (prog, array, slot, kind) in TAIL_CALLS {
        let prog = &fallback.program(prog);
        let fd = match kind {
            TailKind::Raw => {
                let p: &mut RawTracePoint = program(ebpf, prog)?;
                p.fd().map_err(|e| SensorError::kernel(format!("program {prog}"), e))?.try_clone()
            }
            TailKind::Skb => {
                let p: &mut CgroupSkb = program(ebpf, prog)?;
                p.fd().map_err(|e| SensorError::kernel(format!("program {prog}"), e))?.try_clone()
            }
        }
        .map_err(|e| SensorError::kernel(format!("program {prog}"), e))?;
        let mut slots =
            ProgramArray::try_from(map_mut(ebpf, array)?).map_err(|e| SensorError::map(array, "opening", e))?;
        slots.set(*slot, &fd, 0).map_err(|e| SensorError::map(array, "writing", e))?;
    }
    let mut states = vec![shell_identity::install(ebpf, pins, links)?];
    let cgroup = std::fs::File::open(cgroup_root)
        .map_err(|source| SensorError::Cgroup { path: cgroup_root.to_path_buf(), source })?;
    // BPF links always have BPF_F_ALLOW_MULTI semantics (the kernel refuses explicit flags for
    // cgroup links): other tools' programs at the root, and other watchers', keep working.
    let mode = CgroupAttachMode::Single;
    let at = cgroup_root.display().to_string();
    let attached = std::time::Instant::now();
    for (prog, hook) in PROGRAMS {
        if bench.backstop && *prog == "egress_guard" {
            continue;
        }
        let hook = match *hook {
            Hook::RawOr(raw, _, _, _) if !fallback.perf(prog) => Hook::Raw(raw),
            Hook::RawOr(_, _, category, name) => Hook::Tracepoint(category, name),
            h => h,
        };
        let prog = fallback.program(prog);
        let link: FdLink = match hook {
            Hook::RawOr(..) => return Err(SensorError::Missing { kind: "attachment for program", name: prog.into() }),
            Hook::Tracepoint(category, name) => {
                let p: &mut TracePoint = program(ebpf, prog)?;
                let id = p
                    .attach(category, name)
                    .map_err(|e| SensorError::kernel(format!("attachment to tracepoint {category}/{name}"), e))?;
                let l = p.take_link(id).map_err(|e| SensorError::kernel(format!("link of {prog}"), e))?;
                l.try_into().map_err(|e| {
                    SensorError::kernel(format!("link of {prog} (perf event links cannot be pinned)"), e)
                })?
            }
            Hook::Raw(name) => {
                let p: &mut RawTracePoint = program(ebpf, prog)?;
                let id = p
                    .attach(name)
                    .map_err(|e| SensorError::kernel(format!("attachment to raw tracepoint {name}"), e))?;
                p.take_link(id).map_err(|e| SensorError::kernel(format!("link of {prog}"), e))?.into()
            }
            Hook::SockAddr => {
                let p: &mut CgroupSockAddr = program(ebpf, prog)?;
                let id = p
                    .attach(cgroup.as_fd(), mode)
                    .map_err(|e| SensorError::kernel(format!("attachment of {prog} to {at}"), e))?;
                let l = p.take_link(id).map_err(|e| SensorError::kernel(format!("link of {prog}"), e))?;
                l.try_into().map_err(|e| SensorError::kernel(format!("link of {prog}"), e))?
            }
            Hook::SockCreate => {
                let p: &mut CgroupSock = program(ebpf, prog)?;
                let id = p
                    .attach(cgroup.as_fd(), mode)
                    .map_err(|e| SensorError::kernel(format!("attachment of {prog} to {at}"), e))?;
                let l = p.take_link(id).map_err(|e| SensorError::kernel(format!("link of {prog}"), e))?;
                l.try_into().map_err(|e| SensorError::kernel(format!("link of {prog}"), e))?
            }
            Hook::Skb(egress) => {
                let p: &mut CgroupSkb = program(ebpf, prog)?;
                let ty = if egress { CgroupSkbAttachType::Egress } else { CgroupSkbAttachType::Ingress };
                let id = p
                    .attach(cgroup.as_fd(), ty, mode)
                    .map_err(|e| SensorError::kernel(format!("attachment of {prog} to {at}"), e))?;
                let l = p.take_link(id).map_err(|e| SensorError::kernel(format!("link of {prog}"), e))?;
                l.try_into().map_err(|e| SensorError::kernel(format!("link of {prog}"), e))?
            }
        };
        links.push(pin(link, pins, prog)?);
    }
    timing::add(Phase::Attach, attached.elapsed());
    // The maps a later watcher needs to clean up after a killed one.
    for name in [names::WATCHED, names::NEW_JOBS, names::CONFIG] {
        let path = pins.path().join(name);
        map_mut(ebpf, name)?.pin(&path).map_err(|e| SensorError::Pin { path, detail: e.to_string() })?;
    }
    states.extend([
        SensorState {
            name: "process".into(),
            active: true,
            detail: Some(
                "raw tracepoints sys_enter (execve/execveat, clone/fork, exit), sched_process_exec/fork/exit".into(),
            ),
        },
        SensorState {
            name: "network".into(),
            active: true,
            detail: Some(format!(
                "cgroup_sock_addr at {at}: connect4/6, sendmsg4/6 (TCP, UDP, io_uring){}",
                if fallback.bounded { "; bounded loops (no bpf_loop: a slower start)" } else { "" }
            )),
        },
        SensorState {
            name: "dns".into(),
            active: true,
            detail: Some("cgroup_skb egress/ingress: port 53 over UDP and TCP, queries and answers".into()),
        },
        SensorState {
            name: "guard".into(),
            active: true,
            detail: Some(
                "packet backstop (cgroup_skb egress), socket kinds (cgroup_sock sock_create, socket()), \
                 unix-socket deputies (connect()), tamper (signals to the agent, bpf, umount, ptrace), \
                 pinned: a killed agent leaves its jobs denied and killed"
                    .into(),
            ),
        },
        super::files::probe_hooks(),
        SensorState {
            name: "fentry/lsm".into(),
            active: false,
            detail: Some("not used: tracepoints and cgroup hooks cover every sensor".into()),
        },
    ]);
    states.extend(super::bench_state(bench));
    Ok(states)
}

/// Which raw tracepoints this kernel cannot take, so their perf-event tracepoint programs are
/// loaded and attached instead (and only those: a program not attached is not verified).
struct Fallback {
    /// No kernel BTF: the raw sched_process_fork cannot find the child's pid.
    fork: bool,
    /// sched_process_exit has no `group_dead` argument (kernels before 6.16).
    exit: bool,
    /// No bpf_loop (kernels before 5.17): the [`BOUNDED`] twins are loaded.
    bounded: bool,
}

impl Fallback {
    fn probe() -> Fallback {
        let format = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .iter()
            .find_map(|d| std::fs::read_to_string(format!("{d}/events/sched/sched_process_exit/format")).ok())
            .unwrap_or_default();
        let forced = std::env::var_os("WATCHER_BOUNDED_LOOPS").is_some_and(|v| v == "1");
        // A probe the kernel refuses to answer is a kernel without the helper.
        let bpf_loop =
            aya::sys::is_helper_supported(aya::programs::ProgramType::CgroupSkb, aya::sys::BpfHelper::BPF_FUNC_loop)
                .unwrap_or(false);
        Fallback {
            fork: super::btf::kernel_offsets().task_tgid.is_none(),
            exit: !format.contains("group_dead"),
            bounded: forced || !bpf_loop,
        }
    }

    /// Whether `prog` (a `Hook::RawOr` program) is replaced by its perf-event tracepoint one.
    fn perf(&self, prog: &str) -> bool {
        match prog {
            "sched_process_fork" => self.fork,
            "sched_process_exit" => self.exit,
            _ => false,
        }
    }

    /// The program loaded for `prog` (attached, or put in a tail-call slot).
    fn program<'a>(&self, prog: &'a str) -> &'a str {
        let fallback = PROGRAMS.iter().find_map(|(p, h)| match h {
            Hook::RawOr(_, tp, _, _) if *p == prog => Some(*tp),
            _ => None,
        });
        match fallback {
            Some(tp) if self.perf(prog) => tp,
            _ => match BOUNDED.iter().find(|(p, _)| *p == prog) {
                Some((_, twin)) if self.bounded => twin,
                _ => prog,
            },
        }
    }

    /// Programs of the object that are not loaded: the variant of each `Hook::RawOr` and of
    /// each [`BOUNDED`] pair not used.
    fn unused(&self, prog: &str) -> bool {
        let raw_or = PROGRAMS.iter().any(|(p, h)| match h {
            Hook::RawOr(_, tp, _, _) => (prog == *tp && !self.perf(p)) || (prog == *p && self.perf(p)),
            _ => false,
        });
        let twin = BOUNDED.iter().any(|(p, b)| prog == if self.bounded { *p } else { *b });
        raw_or || twin
    }
}

/// The programs that cost the verifier most (instructions processed, measured with
/// `WATCHER_LOG=watcher::timing=debug`), heaviest first: they are loaded first, and the
/// lighter ones fill the other threads meanwhile (the verification ends with the longest one,
/// not with an unlucky bucket).
const HEAVY_FIRST: &[&str] = &[
    "sys_enter",
    "stream_first",
    "stream_first_bounded",
    "exec_env_scan_bounded",
    "stream_name_bounded",
    "egress_guard_bounded",
    "dns_ingress_learn_bounded",
    "dns_egress_enforce_bounded",
    "sys_enter_bounded",
    "dns_egress",
    "sched_process_exec_kill",
    "dns_ingress_learn",
    "dns_egress_enforce",
    "stream_capture",
];

/// Load (the kernel verifies) every program of the object that is used, on as many threads as
/// there are CPUs (up to 4), each taking the next program from one queue (heaviest first):
/// the verifier runs per program, so the loads overlap.
fn verify_all(ebpf: &mut Ebpf, fallback: &Fallback) -> Result<(), SensorError> {
    let mut progs: Vec<(&str, &mut Program)> = ebpf.programs_mut().filter(|(n, _)| !fallback.unused(n)).collect();
    let rank = |name: &str| HEAVY_FIRST.iter().position(|h| *h == name).unwrap_or(HEAVY_FIRST.len());
    progs.sort_by_key(|(name, _)| rank(name));
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 4);
    let queue = std::sync::Mutex::new(progs.into_iter());
    let next = || queue.lock().ok().and_then(|mut q| q.next());
    let results: Vec<Result<(), SensorError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                scope.spawn(|| -> Result<(), SensorError> {
                    lower_priority();
                    while let Some((name, p)) = next() {
                        load_one(name, p)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(Err(SensorError::VerifyPanic))).collect()
    });
    results.into_iter().collect()
}

/// The calling thread (a verifier thread) yields the CPU to anything else that runs meanwhile:
/// the package managers asked for their configuration at the same time (npm's
/// `config list` is the other half of the start, and it waited for the CPUs the verifier held).
/// Alone on the machine, the thread still gets every cycle it would have had.
fn lower_priority() {
    // SAFETY: setpriority takes plain integers; with PRIO_PROCESS and 0, Linux changes the
    // nice value of the calling thread only. A failure leaves the priority as it was.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
}

fn load_one(name: &str, p: &mut Program) -> Result<(), SensorError> {
    let t = std::time::Instant::now();
    let (kind, r) = match p {
        Program::TracePoint(p) => ("tracepoint", p.load()),
        Program::RawTracePoint(p) => ("raw tracepoint", p.load()),
        Program::CgroupSkb(p) => ("cgroup_skb", p.load()),
        Program::CgroupSockAddr(p) => ("cgroup_sock_addr", p.load()),
        Program::CgroupSock(p) => ("cgroup_sock", p.load()),
        _ => return Err(SensorError::Missing { kind: "loader for program", name: name.into() }),
    };
    let wall = t.elapsed();
    r.map_err(|e| SensorError::kernel(format!("{kind} program {name}"), e))?;
    timing::verified(name, wall, p.info().ok().as_ref());
    Ok(())
}

/// Unpin and close every link, each from a thread of its own (every close waits for an RCU
/// grace period; in turn, the ~30 links took about a second).
pub fn detach_all(links: Vec<PinnedLink>) {
    // Unpinning removes the bpffs file; the attachment ends when the last fd closes.
    let t0 = std::time::Instant::now();
    let fds: Vec<(String, FdLink)> = links
        .into_iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let name = format!("link {i}");
            l.unpin().map_err(|e| tracing::warn!("unpinning a link: {e}")).ok().map(|fd| (name, fd))
        })
        .collect();
    timing::time(Phase::Detach, || {
        std::thread::scope(|scope| {
            for (name, fd) in fds {
                // If no thread can be made, the closure (and with it the link) is dropped here.
                let _ = std::thread::Builder::new().spawn_scoped(scope, move || {
                    drop(fd);
                    tracing::debug!(target: "watcher::timing", "detached {name} at {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
                });
            }
        })
    });
    timing::report_stop();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without bpf_loop each program of [`BOUNDED`] is replaced by its twin, wherever it is
    /// loaded (attached or in a tail-call slot), and exactly one of each pair is verified.
    #[test]
    fn a_kernel_without_bpf_loop_gets_every_bounded_twin_and_only_those() {
        for bounded in [false, true] {
            let f = Fallback { fork: false, exit: false, bounded };
            for (p, twin) in BOUNDED {
                assert_eq!(f.program(p), if bounded { *twin } else { *p });
                assert_eq!(f.unused(p), bounded, "{p}");
                assert_eq!(f.unused(twin), !bounded, "{twin}");
                let used = PROGRAMS.iter().any(|(q, _)| q == p) || TAIL_CALLS.iter().any(|(q, ..)| q == p);
                assert!(used, "{p} is neither attached nor a tail call");
            }
            assert_eq!(f.program("stream_capture"), "stream_capture");
            assert!(!f.unused("stream_capture"));
        }
    }

    #[test]
    fn the_kernel_object_has_exactly_the_contract_maps_and_its_abi() {
        if EBPF_OBJECT.is_empty() {
            return; // built with AYA_BUILD_SKIP
        }
        check_abi(EBPF_OBJECT).unwrap();
        let obj = aya_obj::Object::parse(EBPF_OBJECT).unwrap();
        let mut have: Vec<&str> = obj.maps.keys().map(String::as_str).filter(|n| !n.starts_with('.')).collect();
        have.sort();
        let mut want: Vec<&str> = names::ALL.to_vec();
        want.sort();
        assert_eq!(have, want);
        for (p, b) in BOUNDED {
            assert!(obj.programs.contains_key(*b), "bounded twin {b} of {p} missing from the object");
        }
        for (p, h) in PROGRAMS {
            assert!(obj.programs.contains_key(*p), "program {p} missing from the object");
            if let Hook::RawOr(_, tp, _, _) = h {
                assert!(obj.programs.contains_key(*tp), "fallback program {tp} missing from the object");
            }
        }
    }
}
