//! The daemon's errors: its configuration, log directory and sockets, its jobs, and the lower
//! layers' errors it meets (policy, session, sensor, pipeline, cgroups, output files).
use std::path::PathBuf;

use crate::{
    cgroup::CgroupError, error::Failed, outfile::OutputError, pipeline::PipelineError, policy::PolicyError,
    sensor::SensorError, session::SessionError,
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A pipeline's policy file that holds no policy.
    #[error("{}: no policy", .0.display())]
    NoPolicy(PathBuf),
    /// `log_dir` that the daemon will not write job logs into (`why` completes the sentence).
    #[error("log_dir {} {why}", .dir.display())]
    LogDir { dir: PathBuf, why: String },
    /// A socket path a live daemon already listens on.
    #[error("{} is in use: another watcher daemon is running", .0.display())]
    SocketInUse(PathBuf),
    #[error("no job {id} to attach kernel job {kid} to")]
    NoJob { id: String, kid: u32 },
    #[error("the reload thread failed: {0}")]
    ReloadThread(String),
    #[error("compiling secret variable patterns: {0}")]
    SecretPatterns(globset::Error),
    #[error(transparent)]
    Failed(#[from] Failed),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Sensor(#[from] SensorError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}
