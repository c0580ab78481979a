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

/// `steps:` in the daemon configuration (placed at its line by `config.rs`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepsConfigError {
    #[error("group {0:?} does not exist on this machine")]
    NoGroup(String),
    #[error("max_steps {0}: 1 to 4096")]
    MaxSteps(usize),
}

const ONLY_OPEN: &str = "the step socket only opens a job for the process that connected (op \"open\"); no request ends, pauses or changes a job";

/// Why a step request was refused: the text is the `refused` reply's `error` (and the
/// daemon's warning).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("reading the request: {0}")]
    Read(std::io::Error),
    #[error("the request is not UTF-8")]
    NotUtf8,
    #[error("the request is longer than {kib} KiB (the bound)", kib = .0 >> 10)]
    TooLong(usize),
    #[error("the connection closed before a request")]
    Closed,
    #[error("no request within {0} s")]
    Timeout(u64),
    #[error("bad request: {0}; {ONLY_OPEN}")]
    BadRequest(serde_json::Error),
    #[error("unknown op {0:?}: {ONLY_OPEN}")]
    UnknownOp(String),
    #[error("protocol version {0} (this daemon speaks {v})", v = super::steps::PROTOCOL_VERSION)]
    Protocol(u32),
    #[error("more than 4096 arguments, 64 resolvers or 64 credentials")]
    TooBig,
    #[error("{0} steps are running (the daemon's steps.max_steps): try again later")]
    Busy(usize),
    #[error("the kernel did not give the connecting process's pid")]
    NoPid,
    #[error("the process that connected (pid {0}) is gone")]
    Gone(i32),
    #[error(
        "cannot identify the connecting process (SO_PEERPIDFD, Linux 6.5 or later, is needed so a reused pid can never be made a job): {0}"
    )]
    NoPidfd(std::io::Error),
    #[error("the calling process is in kernel job {0:#x}, which this daemon does not know")]
    UnknownKernelJob(u32),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Intersect(#[from] IntersectError),
    #[error("writing the step's kernel tables: {0}")]
    Tables(SensorError),
    #[error("putting the process in its job: {0}")]
    Watch(SensorError),
    #[error("the process that connected (pid {0}) exited while its job was set up")]
    ExitedDuringSetup(u32),
    /// Creating the job (its log, pipeline): the whole chain.
    #[error("{}", crate::error::chain(.0.as_ref()))]
    Job(Box<DaemonError>),
}

/// A nested step's tables that cannot be the intersection with its enclosing job's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntersectError {
    #[error("the enclosing job's tables use another hash seed")]
    Seed,
    #[error(
        "the intersection with the enclosing job's policy needs more than {} port ranges for one entry",
        watcher_common::MAX_PORT_RANGES
    )]
    PortRanges,
    #[error("more than {} host entries", watcher_common::MAX_HOST_ENTRIES)]
    Hosts,
}
