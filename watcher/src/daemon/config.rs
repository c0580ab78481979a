//! `watcher daemon --config FILE`: the daemon's YAML configuration. Errors name
//! `FILE:LINE:COLUMN` like policy errors; policies named here are loaded (and checked) with
//! the configuration, so a reload either takes all of it or none.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::policy::PolicyError;

pub const DEFAULT_SOCKET: &str = "/run/watcher/watcher.sock";
pub const DEFAULT_LOG_DIR: &str = "/var/log/watcher";

/// Variables that name a job, in order of preference (the first present wins).
pub const DEFAULT_ID_ENV: &[&str] = &["GITHUB_RUN_ID", "CI_JOB_ID", "BUILDKITE_JOB_ID"];
/// Variables that name the pipeline a job belongs to (matched against `pipelines[].match`).
pub const DEFAULT_PIPELINE_ENV: &[&str] = &["GITHUB_REPOSITORY", "CI_PROJECT_PATH", "BUILDKITE_PIPELINE_SLUG"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    version: u32,
    #[serde(default)]
    socket: Option<PathBuf>,
    #[serde(default)]
    log_dir: Option<PathBuf>,
    #[serde(default)]
    metrics: Option<String>,
    /// Bytes per log segment before it is rotated.
    #[serde(default)]
    log_max_bytes: Option<u64>,
    /// Rotated segments kept per job (besides the current one).
    #[serde(default)]
    log_keep: Option<u32>,
    /// A job whose processes have all exited is closed out after this long (a CI runner
    /// may start the next step of the same job right after).
    #[serde(default)]
    job_end_grace: Option<String>,
    #[serde(default)]
    jobs: Option<RawJobs>,
    #[serde(default)]
    pipelines: Vec<RawPipeline>,
    #[serde(default)]
    cgroups: Vec<RawCgroup>,
    /// Log processes of no job (never enforced) to this file.
    #[serde(default)]
    no_job_log: Option<PathBuf>,
    /// Daemon-backed steps (`watcher run` without root): see [`super::steps`].
    #[serde(default)]
    steps: Option<super::steps::RawSteps>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCgroup {
    /// Glob on the cgroup's path below the cgroup v2 root (`*` stays within one level).
    #[serde(rename = "match")]
    pattern: String,
    /// Pipeline name that chooses the policy; default: the cgroup's path.
    #[serde(default)]
    pipeline: Option<String>,
}

/// A cgroup path pattern: every new cgroup that matches is watched as a job.
#[derive(Debug, Clone)]
pub struct CgroupRule {
    pub pattern: String,
    pub matcher: globset::GlobMatcher,
    pub pipeline: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJobs {
    #[serde(default)]
    id_env: Option<Vec<String>>,
    #[serde(default)]
    pipeline_env: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    #[serde(rename = "match")]
    pattern: String,
    #[serde(default)]
    policy: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub pattern: String,
    pub matcher: globset::GlobMatcher,
    /// None: jobs of this pipeline are logged without a policy.
    pub policy: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub source: PathBuf,
    pub socket: PathBuf,
    pub log_dir: PathBuf,
    pub metrics: Option<SocketAddr>,
    pub log_max_bytes: u64,
    pub log_keep: u32,
    pub job_end_grace: Duration,
    pub id_env: Vec<String>,
    pub pipeline_env: Vec<String>,
    pub pipelines: Vec<Pipeline>,
    pub cgroups: Vec<CgroupRule>,
    /// Where processes of no job are logged (None: they are not).
    pub no_job_log: Option<PathBuf>,
    /// Daemon-backed steps: None when not allowed (no step socket is bound).
    pub steps: Option<super::steps::StepsConfig>,
}

impl Config {
    /// The first cgroup rule matching a path below the cgroup root (no leading '/').
    pub fn cgroup_rule(&self, rel: &str) -> Option<&CgroupRule> {
        self.cgroups.iter().find(|r| r.matcher.is_match(rel))
    }

    /// The policy file for a pipeline name: the first matching entry; None when no entry
    /// matches or the entry has no policy.
    pub fn policy_for(&self, pipeline: &str) -> Option<&Path> {
        self.pipelines.iter().find(|p| p.matcher.is_match(pipeline)).and_then(|p| p.policy.as_deref())
    }
}

fn at(file: &str, line: usize, column: usize, msg: impl Into<String>) -> PolicyError {
    PolicyError { file: file.into(), location: Some(crate::policy::Location { line, column }), message: msg.into() }
}

/// 1-based line of the first line starting (after spaces) with `key:`; for messages about a
/// value serde accepted but we refuse.
fn line_of(text: &str, key: &str) -> (usize, usize) {
    for (i, l) in text.lines().enumerate() {
        let t = l.trim_start();
        let t = t.strip_prefix("- ").unwrap_or(t);
        if t.starts_with(&format!("{key}:")) {
            return (i + 1, l.len() - l.trim_start().len() + 1);
        }
    }
    (1, 1)
}

/// Read and parse the configuration (bounded like a policy: size, UTF-8, nesting depth).
pub fn load(path: &Path) -> Result<Config, PolicyError> {
    let text = crate::policy::limits::read(path, "daemon configuration")?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<Config, PolicyError> {
    let file = path.display().to_string();
    let text = crate::policy::limits::strip_bom(text);
    if text.len() as u64 > crate::policy::limits::MAX_YAML_BYTES {
        return Err(PolicyError {
            file,
            location: None,
            message: "the daemon configuration is larger than 1024 KiB (the limit, see README \"Bounds\")".into(),
        });
    }
    crate::policy::limits::check_depth(&file, text)?;
    let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| {
        let (line, col) = e.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
        let mut msg = e.to_string();
        if let Some(p) = msg.find(" at line ") {
            msg.truncate(p);
        }
        at(&file, line, col, msg)
    })?;
    if raw.version != 1 {
        let (l, c) = line_of(text, "version");
        return Err(at(&file, l, c, format!("unsupported version {}: this watcher reads version 1", raw.version)));
    }
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
    let metrics = match raw.metrics {
        None => None,
        Some(s) => {
            let (l, c) = line_of(text, "metrics");
            let addr: SocketAddr = s.parse().map_err(|_| {
                at(&file, l, c, format!("metrics: {s:?} is not an address:port (example: 127.0.0.1:9464)"))
            })?;
            if !addr.ip().is_loopback() {
                return Err(at(
                    &file,
                    l,
                    c,
                    format!("metrics: {addr} is not a loopback address; metrics are served on loopback only"),
                ));
            }
            Some(addr)
        }
    };
    let job_end_grace = match raw.job_end_grace {
        None => Duration::from_secs(10),
        Some(s) => {
            let (l, c) = line_of(text, "job_end_grace");
            humantime::parse_duration(&s).map_err(|e| at(&file, l, c, format!("job_end_grace: {s:?}: {e}")))?
        }
    };
    let jobs = raw.jobs.unwrap_or(RawJobs { id_env: None, pipeline_env: None });
    let id_env = jobs.id_env.unwrap_or_else(|| DEFAULT_ID_ENV.iter().map(|s| s.to_string()).collect());
    let pipeline_env =
        jobs.pipeline_env.unwrap_or_else(|| DEFAULT_PIPELINE_ENV.iter().map(|s| s.to_string()).collect());
    if id_env.is_empty() {
        let (l, c) = line_of(text, "id_env");
        return Err(at(&file, l, c, "jobs.id_env: at least one variable is needed to recognise jobs"));
    }
    for v in id_env.iter().chain(&pipeline_env) {
        if v.is_empty() || v.len() >= watcher_common::ENV_NAME_LEN || v.contains('=') || v.contains('\0') {
            let (l, c) = line_of(text, if id_env.contains(v) { "id_env" } else { "pipeline_env" });
            return Err(at(
                &file,
                l,
                c,
                format!("variable name {v:?}: 1 to {} bytes, no '='", watcher_common::ENV_NAME_LEN - 1),
            ));
        }
    }
    let mut pipelines = Vec::new();
    let mut search_from = 0;
    for p in raw.pipelines {
        // Position of this entry, for errors about it.
        let (l, c) = {
            let mut pos = (1, 1);
            for (i, line) in text.lines().enumerate().skip(search_from) {
                if line.contains("match:") {
                    pos = (i + 1, line.find("match:").unwrap_or(0) + 1);
                    search_from = i + 1;
                    break;
                }
            }
            pos
        };
        let matcher = globset::GlobBuilder::new(&p.pattern)
            .literal_separator(false)
            .build()
            .map_err(|e| at(&file, l, c, format!("pipelines: pattern {:?}: {e}", p.pattern)))?
            .compile_matcher();
        pipelines.push(Pipeline { pattern: p.pattern, matcher, policy: p.policy.map(rel) });
    }
    let mut cgroups = Vec::new();
    for r in raw.cgroups {
        let (l, c) = line_of(text, "cgroups");
        let pattern = r.pattern.trim_start_matches('/').to_string();
        let matcher = globset::GlobBuilder::new(&pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| at(&file, l, c, format!("cgroups: pattern {:?}: {e}", r.pattern)))?
            .compile_matcher();
        cgroups.push(CgroupRule { pattern, matcher, pipeline: r.pipeline });
    }
    let steps = match raw.steps {
        None => None,
        Some(r) => {
            let (l, c) = line_of(text, "steps");
            super::steps::StepsConfig::from_raw(r, &rel).map_err(|m| at(&file, l, c, format!("steps: {m}")))?
        }
    };
    Ok(Config {
        steps,
        no_job_log: raw.no_job_log.map(|p| if p.is_absolute() { p } else { base.join(p) }),
        cgroups,
        source: path.to_path_buf(),
        socket: raw.socket.map(rel).unwrap_or_else(|| DEFAULT_SOCKET.into()),
        log_dir: raw.log_dir.map(rel).unwrap_or_else(|| DEFAULT_LOG_DIR.into()),
        metrics,
        log_max_bytes: raw.log_max_bytes.unwrap_or(64 * 1024 * 1024).max(4096),
        log_keep: raw.log_keep.unwrap_or(3),
        job_end_grace,
        id_env,
        pipeline_env,
        pipelines,
    })
}

/// Check the log directory at start, so a bad one stops the daemon before any job depends
/// on it: created (0750) when missing; it must be a directory, not a symbolic link, owned by
/// root (watcher's user), not writable by group or others, and writable (a probe file is
/// created and removed).
pub fn prepare_log_dir(dir: &Path) -> Result<(), super::DaemonError> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};

    use super::DaemonError;
    use crate::error::Doing as _;
    let d = dir.display();
    let bad = |why: String| DaemonError::LogDir { dir: dir.to_path_buf(), why };
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .doing(|| format!("log_dir {d}: cannot create it"))?;
    }
    let m = std::fs::symlink_metadata(dir).doing(|| format!("log_dir {d}"))?;
    if m.file_type().is_symlink() {
        return Err(bad("is a symbolic link: give the directory itself".into()));
    }
    if !m.is_dir() {
        return Err(bad("is not a directory".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if m.uid() != me {
        return Err(bad(format!(
            "belongs to uid {}, not to uid {me} that the daemon runs as: job logs there could be replaced by its owner",
            m.uid()
        )));
    }
    if m.mode() & 0o022 != 0 {
        return Err(bad(format!(
            "is writable by others (mode {:o}): job logs there could be replaced; chmod go-w it",
            m.mode() & 0o7777
        )));
    }
    let probe = dir.join(format!(".watcher-probe-{}", std::process::id()));
    crate::outfile::create(&probe, "log_dir probe file").doing(|| format!("log_dir {d} is not writable"))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_relative_paths() {
        let c = parse(
            Path::new("/etc/watcher/daemon.yaml"),
            "version: 1\npipelines:\n  - match: \"acme/*\"\n    policy: web.yaml\n  - match: \"*\"\n",
        )
        .unwrap();
        assert_eq!(c.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!(c.id_env, vec!["GITHUB_RUN_ID", "CI_JOB_ID", "BUILDKITE_JOB_ID"]);
        assert_eq!(c.policy_for("acme/web"), Some(Path::new("/etc/watcher/web.yaml")));
        assert_eq!(c.policy_for("other/x"), None);
        assert!(c.metrics.is_none());
        let c = parse(
            Path::new("d.yaml"),
            "version: 1\ncgroups:\n  - match: /system.slice/runner-*.scope\n    pipeline: acme/ci\n",
        )
        .unwrap();
        assert_eq!(c.cgroup_rule("system.slice/runner-1.scope").and_then(|r| r.pipeline.as_deref()), Some("acme/ci"));
        assert!(c.cgroup_rule("system.slice/runner-1.scope/child").is_none());
        assert!(c.cgroup_rule("other/runner-1.scope").is_none());
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let c = parse(Path::new("/etc/watcher/daemon.yaml"), include_str!("../../../dist/daemon.yaml")).unwrap();
        assert_eq!(c.policy_for("acme/web-shop"), Some(Path::new("/etc/watcher/policies/npm.yaml")));
        assert_eq!(c.policy_for("other/x"), None);
        assert_eq!(c.job_end_grace, Duration::from_secs(10));
        assert_eq!(c.steps.as_ref().map(|s| s.max_steps), Some(64));
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let e = parse(Path::new("d.yaml"), "version: 1\nsockett: /x\n").unwrap_err();
        assert_eq!(e.location.map(|l| l.line), Some(2), "{e}");
        assert!(e.to_string().starts_with("d.yaml:2:"), "{e}");
        let e = parse(Path::new("d.yaml"), "version: 1\nmetrics: 10.0.0.1:9000\n").unwrap_err();
        assert!(e.to_string().starts_with("d.yaml:2:1: metrics: 10.0.0.1:9000 is not a loopback"), "{e}");
        let e = parse(Path::new("d.yaml"), "version: 2\n").unwrap_err();
        assert!(e.to_string().starts_with("d.yaml:1:1: unsupported version 2"), "{e}");
    }
}
