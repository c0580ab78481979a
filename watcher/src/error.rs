//! watcher's errors: one `thiserror` enum per layer, wrapped by [`Error`], whose
//! [`Error::exit_code`] is the one place an error becomes an exit code (see
//! docs/ARCHITECTURE.md, "Errors and exit codes"). `anyhow` is used only by the CLI
//! (`main.rs`).
//!
//! Messages are one sentence naming the file, line or missing thing; a layer that adds what it
//! was doing to a lower error ([`Failed`], [`Doing::doing`]) keeps the lower error as its
//! `source`, so `watcher: {:#}` prints the whole chain, outermost first.

use std::fmt;

use crate::{exitcode, policy::PolicyError, sensor::SensorError};

/// What watcher was doing when something below it failed; the failure is the `source`.
/// Displays only what was being done (as anyhow's `context`): the chain is printed by
/// [`chain`] or the CLI.
#[derive(Debug, thiserror::Error)]
#[error("{doing}")]
pub struct Failed {
    pub doing: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl Failed {
    pub fn new(doing: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Failed {
        Failed { doing: doing.into(), source: Box::new(source) }
    }
}

/// Adds what was being done to a failure: `.doing(|| format!("writing {}", p.display()))?`.
pub trait Doing<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, Failed>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Doing<T> for Result<T, E> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, Failed> {
        self.map_err(|e| Failed { doing: what(), source: Box::new(e) })
    }
}

/// The whole chain of an error, outermost first, separated by `: ` (as `anyhow`'s `{:#}`):
/// for log lines that must say why, not only what.
pub fn chain<'a>(e: &'a (dyn std::error::Error + 'static)) -> impl fmt::Display + 'a {
    struct Chain<'a>(&'a (dyn std::error::Error + 'static));
    impl fmt::Display for Chain<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}", self.0)?;
            let mut src = self.0.source();
            while let Some(s) = src {
                write!(f, ": {s}")?;
                src = s.source();
            }
            Ok(())
        }
    }
    Chain(e)
}

/// The command `watcher run` was asked to start could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot run {name}: {error}")]
pub struct CommandError {
    /// The program as the log shows it (redacted, escaped).
    pub name: String,
    /// Why (not a `source`: the message already says it).
    pub error: std::io::Error,
}

impl CommandError {
    /// 127 when the program was not found, 126 when it could not be executed, else 125
    /// (the shell's convention).
    pub fn exit_code(&self) -> i32 {
        match self.error.kind() {
            std::io::ErrorKind::NotFound => exitcode::NOT_FOUND,
            std::io::ErrorKind::PermissionDenied => exitcode::NOT_EXECUTABLE,
            _ => exitcode::WATCHER_ERROR,
        }
    }
}

/// Every error of the library, by layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A policy or daemon configuration that cannot be read, parsed or validated.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The kernel side: loading, attaching, maps, capabilities.
    #[error(transparent)]
    Sensor(#[from] SensorError),
    /// An output file (event log, report, job log).
    #[error(transparent)]
    Output(#[from] crate::outfile::OutputError),
    /// A sink of a job's pipeline.
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    /// What watcher asks the machine: registries, resolvers.
    #[error(transparent)]
    Probe(#[from] crate::probe::ProbeError),
    /// A step's cgroup.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    /// The daemon: configuration, sockets, jobs, status.
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
    /// `watcher run` and what it prepares (session, user, step client).
    #[error(transparent)]
    Run(#[from] crate::run_error::RunError),
    /// The command of `watcher run`.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// `watcher replay`, `policy suggest`, `policy compose`: reading logs, judging them.
    #[error(transparent)]
    Replay(#[from] crate::replay::ReplayError),
    /// `watcher policy compose`.
    #[error(transparent)]
    Compose(#[from] crate::ci_policy::ComposeError),
    /// `watcher drill`.
    #[error(transparent)]
    Drill(#[from] crate::drill::DrillError),
}

impl Error {
    /// The exit code of a command that failed with this error: 125 for every failure of
    /// watcher itself, 126/127 for a command that could not be executed or found, 78 for a
    /// log that is incomplete where a complete one is needed.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Command(c) => c.exit_code(),
            Error::Replay(r) if r.is_incomplete() => exitcode::EVENTS_LOST,
            Error::Policy(_)
            | Error::Sensor(_)
            | Error::Output(_)
            | Error::Pipeline(_)
            | Error::Probe(_)
            | Error::Cgroup(_)
            | Error::Daemon(_)
            | Error::Run(_)
            | Error::Replay(_)
            | Error::Compose(_)
            | Error::Drill(_) => exitcode::WATCHER_ERROR,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::{
        cgroup::CgroupError, ci_policy::ComposeError, daemon::DaemonError, drill::DrillError, outfile::OutputError,
        pipeline::PipelineError, probe::ProbeError, replay::ReplayError, run_error::RunError, session::SessionError,
    };

    fn code(e: impl Into<Error>) -> i32 {
        e.into().exit_code()
    }

    #[test]
    fn every_layer_maps_to_its_exit_code() {
        assert_eq!(code(PolicyError::unlocated("p.yaml", "bad")), 125);
        assert_eq!(code(SensorError::NotRoot), 125);
        assert_eq!(code(OutputError::TooManyLinks), 125);
        let json = serde_json::from_str::<u8>("x").unwrap_err();
        assert_eq!(code(PipelineError::Encode(json)), 125);
        let registry = crate::probe::RegistryError::NotConfigured {
            pm: crate::policy::PackageManager::Npm,
            message: "no npm".into(),
        };
        assert_eq!(code(ProbeError::Registry(registry)), 125);
        assert_eq!(code(CgroupError::NoCgroup2), 125);
        assert_eq!(code(DaemonError::NoPolicy("p.yaml".into())), 125);
        assert_eq!(code(RunError::NoCommand), 125);
        assert_eq!(code(RunError::Session(SessionError::ModeWithoutPolicy)), 125);
        assert_eq!(code(ReplayError::NoPolicy { log: "l".into() }), 125);
        assert_eq!(code(ComposeError::Mode("x".into())), 125);
        assert_eq!(code(DrillError::NotRoot), 125);
        // The command: the shell's codes.
        let cmd = |kind: io::ErrorKind| CommandError { name: "x".into(), error: io::Error::from(kind) };
        assert_eq!(code(cmd(io::ErrorKind::NotFound)), exitcode::NOT_FOUND);
        assert_eq!(code(cmd(io::ErrorKind::PermissionDenied)), exitcode::NOT_EXECUTABLE);
        assert_eq!(code(cmd(io::ErrorKind::InvalidInput)), exitcode::WATCHER_ERROR);
        // A log that cannot be vouched for where a complete one is needed: as lost events.
        assert_eq!(code(ReplayError::Incomplete { log: "l".into(), why: "no end record".into() }), 78);
    }

    #[test]
    fn messages_keep_what_was_done_and_why() {
        let e = Err::<(), _>(io::Error::from(io::ErrorKind::NotFound)).doing(|| "writing x.jsonl".into()).unwrap_err();
        assert_eq!(e.to_string(), "writing x.jsonl");
        assert_eq!(chain(&e).to_string(), "writing x.jsonl: entity not found");
        let e = Error::from(CgroupError::from(e));
        assert_eq!(e.to_string(), "writing x.jsonl");
        assert_eq!(chain(&e).to_string(), "writing x.jsonl: entity not found");
        let cmd = CommandError { name: "nope".into(), error: io::Error::from(io::ErrorKind::NotFound) };
        assert_eq!(cmd.to_string(), "cannot run nope: entity not found");
        let e = Error::from(ReplayError::Incomplete { log: "a.jsonl".into(), why: "no end record".into() });
        assert_eq!(
            e.to_string(),
            "a.jsonl: incomplete (no end record): no policy is suggested from a log that cannot be vouched for"
        );
    }
}
