//! The sensor layer's errors: each says what is missing or what the kernel refused, in one
//! sentence. The CLI maps every one of them to exit code 125.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error(
        "watcher needs root to load its eBPF programs (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and \
         CAP_SYS_ADMIN): run it with sudo, or use `watcher replay`, which needs no privileges"
    )]
    NotRoot,
    #[error(
        "this watcher binary was built without its eBPF programs (AYA_BUILD_SKIP was set); rebuild it with scripts/setup.sh"
    )]
    NoObject,
    #[error(
        "watcher's kernel object carries ABI version {object}, but this agent speaks version {agent}: rebuild both from one tree (scripts/setup.sh)"
    )]
    AbiMismatch { object: String, agent: u32 },
    #[error("tracefs is not mounted at /sys/kernel/tracing and mounting it failed ({0}); tracepoints need it")]
    Tracefs(nix::Error),
    #[error(
        "the kernel refused watcher's {what}: {detail}. watcher needs Linux >= 5.8 with BPF ring \
         buffers, syscall and sched tracepoints, cgroup v2, and the cgroup_sock_addr, cgroup_sock and \
         cgroup_skb program types"
    )]
    Kernel { what: String, detail: String },
    #[error("the kernel object has no {kind} {name} (the agent and its kernel object do not match)")]
    Missing { kind: &'static str, name: String },
    #[error("{op} map {map}: {detail}")]
    Map { map: &'static str, op: &'static str, detail: String },
    #[error("cannot open cgroup {path}: {source}")]
    Cgroup { path: PathBuf, source: std::io::Error },
    #[error("pinning watcher's programs under {path}: {detail}")]
    Pin { path: PathBuf, detail: String },
    #[error("registering the ring buffer with the event loop: {0}")]
    Ring(std::io::Error),
    #[error(
        "watcher's kernel programs dispatch syscalls by x86_64 numbers; this machine is {0}, which is not supported yet"
    )]
    Arch(&'static str),
    #[error("a thread loading watcher's programs into the kernel panicked")]
    VerifyPanic,
    #[error("environment variable name {0:?} cannot be captured: 1 to 31 bytes, no '='")]
    EnvName(String),
}

impl SensorError {
    /// A kernel refusal with the whole error chain; a verifier log is cut to its last lines,
    /// which say why.
    pub fn kernel(what: impl Into<String>, e: impl std::error::Error) -> SensorError {
        let mut detail = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            src = s.source();
        }
        let lines: Vec<&str> = detail.lines().collect();
        if lines.len() > 12 {
            detail = format!("{}\n[...]\n{}", lines[0], lines[lines.len() - 10..].join("\n"));
        }
        SensorError::Kernel { what: what.into(), detail }
    }

    pub fn map(map: &'static str, op: &'static str, e: impl std::fmt::Display) -> SensorError {
        SensorError::Map { map, op, detail: e.to_string() }
    }
}
