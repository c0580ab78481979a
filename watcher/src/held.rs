//! Shells in install scripts: the agent's side of the kernel's hold. In enforce mode the
//! kernel stops (SIGSTOP at sched_process_exec, before its first instruction) a shell started
//! inside an install script; here the agent reads the facts the engine judges by
//! ([`ShellFacts`]: its binary, its stdin/stdout/stderr, who writes its stdin, the script it
//! runs) into the exec event, and after the engine's verdict kills it or lets it run.
//! Fail closed: a held shell whose facts cannot be read is judged unjudgeable and killed, and
//! one whose exec record was lost is killed by [`kill_unjudged`].
//! In audit mode the same facts are read, best effort, from the running shell.
use std::{collections::HashSet, os::unix::fs::MetadataExt as _, time::Duration};

use crate::{
    event::{Exec, PipeWriter, ShellFacts, Ts},
    proctree::{SHELLS, basename},
};

fn ctime(m: &std::fs::Metadata) -> Ts {
    Ts((m.ctime().max(0) as u64) * 1_000_000_000 + m.ctime_nsec().max(0) as u64)
}

fn link(path: String) -> Option<String> {
    std::fs::read_link(path).ok().map(|p| p.to_string_lossy().into_owned())
}

/// Socket inodes of TCP/UDP/UNIX sockets in the network namespace of `pid` (bounded).
fn inet_inodes(pid: u32) -> HashSet<(u64, &'static str)> {
    let mut out = HashSet::new();
    for (file, kind, col) in
        [("tcp", "tcp", 9), ("tcp6", "tcp", 9), ("udp", "udp", 9), ("udp6", "udp", 9), ("unix", "unix", 6)]
    {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else { continue };
        for line in text.lines().skip(1).take(100_000) {
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode (unix: Num RefCount
            // Protocol Flags Type St Inode Path)
            if let Some(ino) = line.split_whitespace().nth(col).and_then(|s| s.parse().ok()) {
                out.insert((ino, kind));
            }
        }
    }
    out
}

fn socket_inode(l: &str) -> Option<u64> {
    l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

fn pipe_inode(l: &str) -> Option<&str> {
    l.starts_with("pipe:[").then_some(l)
}

/// `socket:[N]` becomes `socket:[N]/tcp`, `/udp` or `/unix` (other families: `/other`).
fn classify_socket(l: String, inet: &HashSet<(u64, &'static str)>) -> String {
    match socket_inode(&l) {
        Some(ino) => {
            let kind = inet.iter().find(|(i, _)| *i == ino).map(|(_, k)| *k).unwrap_or("other");
            format!("{l}/{kind}")
        }
        None => l,
    }
}

/// Open fds of `pid` (bounded).
fn fds(pid: u32) -> Vec<(u32, String)> {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    rd.flatten()
        .take(4096)
        .filter_map(|e| {
            let fd: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((fd, e.path().read_link().ok()?.to_string_lossy().into_owned()))
        })
        .collect()
}

fn writes(pid: u32, fd: u32) -> bool {
    let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else { return false };
    info.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        .is_some_and(|f| f & 3 != 0)
}

fn writer(pid: u32) -> PipeWriter {
    let inet = inet_inodes(pid);
    let inet_sockets = fds(pid)
        .iter()
        .filter_map(|(_, l)| socket_inode(l))
        .filter(|i| inet.iter().any(|(n, k)| n == i && *k != "unix"))
        .count();
    PipeWriter {
        pid,
        comm: std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default(),
        exe: link(format!("/proc/{pid}/exe")),
        inet_sockets: inet_sockets as u32,
    }
}

/// The processes among `candidates` holding the write end of `pipe`. A writer that is still a
/// shell may be a fork about to exec the real writer (`curl | sh`): it is given up to 100 ms.
fn pipe_writers(pipe: &str, me: u32, candidates: &[u32]) -> Vec<PipeWriter> {
    let find = || -> Vec<u32> {
        candidates
            .iter()
            .copied()
            .filter(|&p| p != me)
            .filter(|&p| fds(p).iter().any(|(fd, l)| l == pipe && writes(p, *fd)))
            .collect()
    };
    let mut pids = find();
    for _ in 0..10 {
        let shells =
            pids.iter().any(|&p| link(format!("/proc/{p}/exe")).is_some_and(|e| SHELLS.contains(&basename(&e))));
        if !shells {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        pids = find();
    }
    pids.into_iter().take(16).map(writer).collect()
}

/// Read the facts of a shell exec into the event (see [`crate::engine::Engine::wants_facts`]).
/// `candidates`: the live processes of the step (where a pipe writer is looked for).
pub fn enrich(x: &mut Exec, candidates: &[u32]) {
    let pid = x.proc.pid;
    let mut f = ShellFacts { exe: link(format!("/proc/{pid}/exe")), ..Default::default() };
    match std::fs::metadata(format!("/proc/{pid}/exe")) {
        Ok(m) => {
            f.exe_ctime = Some(ctime(&m));
            f.exe_nlink = Some(m.nlink());
        }
        Err(e) => f.error = Some(format!("cannot read /proc/{pid}/exe: {e}")),
    }
    let inet = inet_inodes(pid);
    f.stdio = (0..3).map(|fd| link(format!("/proc/{pid}/fd/{fd}")).map(|l| classify_socket(l, &inet))).collect();
    if let Some(Some(p)) = f.stdio.first()
        && let Some(pipe) = pipe_inode(p)
    {
        f.stdin_writers = pipe_writers(pipe, pid, candidates);
    }
    let cwd = x.cwd.clone().or_else(|| link(format!("/proc/{pid}/cwd")));
    let script = if x.script { Some(x.filename.clone()) } else { crate::shell_rule::parse_args(&x.argv).script };
    if let Some(s) = script {
        let abs = if s.starts_with('/') {
            s
        } else {
            format!("{}/{}", cwd.as_deref().unwrap_or(""), s.trim_start_matches("./"))
        };
        f.script_ctime = std::fs::metadata(&abs).ok().map(|m| ctime(&m));
        f.script = Some(abs);
    }
    if f.exe.is_none() && f.error.is_none() {
        f.error = Some(format!("process {pid} is gone"));
    }
    x.facts = Some(Box::new(f));
}

/// Before an event is logged and judged: the facts of a shell exec the engine wants them for.
pub fn before(engine: Option<&crate::engine::Engine>, e: &mut crate::event::Event) {
    if let crate::event::Event::Exec(x) = e {
        match engine {
            Some(en) if en.wants_facts(x) => {
                let live: Vec<u32> = en.tree().iter().filter(|(_, n)| !n.exited).map(|(p, _)| *p).collect();
                enrich(x, &live);
            }
            _ => {}
        }
    }
}

/// After the engine judged an event: a held shell is killed or continued on its verdict
/// (without an engine nothing can judge it: killed).
pub fn after(engine: Option<&crate::engine::Engine>, e: &crate::event::Event) {
    if let crate::event::Event::Exec(x) = e {
        release(x, engine.is_none_or(|en| en.last_exec_kill()));
    }
}

/// After the engine's verdict on a held shell: kill it, or let it run.
pub fn release(x: &Exec, kill: bool) {
    if !x.held {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(x.proc.pid as i32);
    let sig = if kill { nix::sys::signal::Signal::SIGKILL } else { nix::sys::signal::Signal::SIGCONT };
    let _ = nix::sys::signal::kill(pid, sig);
}

/// After a loss report: in enforce mode, lost exec records may have been those of held shells
/// (see [`kill_unjudged`]).
pub fn after_loss(engine: Option<&crate::engine::Engine>, source: &str, pids: impl FnOnce() -> Vec<u32>) {
    let enforce = engine.is_some_and(|e| e.policy().mode == crate::policy::Mode::Enforce);
    if enforce && matches!(source, "exec" | "exec-scratch") {
        let n = kill_unjudged(pids());
        if n > 0 {
            tracing::warn!("killed {n} stopped process(es) whose exec record was lost (held shells cannot be judged)");
        }
    }
}

/// Fail closed after lost exec records: a shell the kernel holds whose record never arrived
/// cannot be judged. Every stopped process among `pids` (state `T` in /proc/PID/stat) that
/// nobody continued is killed; returns how many. Only called in enforce mode, when the
/// kernel reported lost exec records (the step fails anyway).
pub fn kill_unjudged(pids: impl IntoIterator<Item = u32>) -> usize {
    let mut n = 0;
    for pid in pids {
        if crate::procfs::Stat::of(pid).is_some_and(|s| s.stopped()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            n += 1;
        }
    }
    n
}
