//! The errors of `watcher run` (standalone or daemon-backed) and of `--user`: what the user
//! asked for that cannot be done, and the lower layers' errors it meets on the way.
use std::path::PathBuf;

use crate::{
    cgroup::CgroupError, error::Failed, outfile::OutputError, pipeline::PipelineError, policy::PolicyError,
    sensor::SensorError, session::SessionError, step_client::SOCKET_ENV,
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no command given: usage is `watcher run [OPTIONS] -- CMD [ARGS...]`")]
    NoCommand,
    #[error("--bench-disable is for a standalone `watcher run` (as root), not a daemon-backed step")]
    BenchDisableWithDaemon,
    #[error(
        "--user is for standalone `watcher run` (as root); a daemon-backed step ({SOCKET_ENV}={}) always runs as its caller",
        .socket.display()
    )]
    UserWithDaemon { socket: PathBuf },
    /// `--user` or SUDO_UID/SUDO_GID that name no user or group (`what` is the whole sentence's
    /// subject, e.g. `--user alice`, `SUDO_GID="x"`).
    #[error("{what}: {why}")]
    User { what: String, why: String },
    #[error("{var}={value:?} is not a {kind} id")]
    SudoId { var: &'static str, value: String, kind: &'static str },
    #[error("the {0} thread panicked")]
    ThreadPanicked(&'static str),
    #[error(
        "cannot reach a watcher daemon that allows steps at {} ({why}); `watcher run` needs root, or a daemon \
         whose configuration has `steps: {{allow: true}}` ({SOCKET_ENV} names its socket)",
        .socket.display()
    )]
    NoDaemon { socket: PathBuf, why: String },
    #[error("watcher run at {}: {why}", .socket.display())]
    DaemonAnswer { socket: PathBuf, why: String },
    #[error("{SOCKET_ENV}: {path:?} is not a usable socket path (1 to {max} bytes)")]
    SocketPath { path: PathBuf, max: usize },
    #[error(
        "the daemon ended this step's stream before its verdict (stopped, or this client did not read fast \
         enough); the command exited {cmd_code}; the daemon's own log of the step is {daemon_log}"
    )]
    NoVerdict { cmd_code: i32, daemon_log: String },
    #[error("waiting for the command: {0}")]
    Wait(String),
    #[error("no command to wait for")]
    NoChild,
    #[error(transparent)]
    Failed(#[from] Failed),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Sensor(#[from] SensorError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}
