//! The jobs the daemon watches: one per job identity (the value of the first job variable
//! found, e.g. `GITHUB_RUN_ID=4711`), each with its own collector, engine, event log and
//! counters. One identity may span several kernel job ids (each process that starts a job
//! from outside gets one); they all share this job's policy and log.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    rc::Rc,
    time::Instant,
};

use super::job_secrets::{self, JobSecrets};
use crate::{
    error::Doing as _,
    event::{Event, Loss, Start},
    log::LogWriter,
    outfile::OutputError,
    pipeline::{Pipeline, PipelineError, sink::Sink},
    policy::kernel::KernelTables,
    session::Prepared,
};

/// A policy loaded and compiled with the configuration.
pub struct LoadedPolicy {
    pub path: PathBuf,
    pub prepared: Prepared,
    pub tables: KernelTables,
}

/// How a job was recognised.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    /// `NAME=value` of the job variable.
    pub id: String,
    /// Value of the first pipeline variable present ("" when none).
    pub pipeline: String,
}

impl Identity {
    /// From the environment entries captured at exec.
    pub fn from_env(env: &[(String, String)], id_env: &[String], pipeline_env: &[String]) -> Option<Identity> {
        let find = |names: &[String]| {
            names.iter().find_map(|n| env.iter().find(|(k, _)| k == n).map(|(k, v)| (k.clone(), v.clone())))
        };
        let (k, v) = find(id_env)?;
        let pipeline = find(pipeline_env).map(|(_, v)| v).unwrap_or_default();
        Some(Identity { id: format!("{k}={v}"), pipeline })
    }

    /// A file-name-safe name: `<pipeline>_<value>`.
    pub fn file_stem(&self) -> String {
        let value = self.id.split_once('=').map(|(_, v)| v).unwrap_or(&self.id);
        let raw = if self.pipeline.is_empty() { value.to_string() } else { format!("{}_{}", self.pipeline, value) };
        let s: String = raw
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' })
            .take(120)
            .collect();
        let s = s.trim_start_matches('.').to_string();
        if s.is_empty() { "job".into() } else { s }
    }
}

/// A JSONL log bounded in size: past `max_bytes` the file is rotated to `.1` (older
/// segments shift, at most `keep` are kept) and the new segment starts again with the job's
/// `start` record, so each segment can be replayed on its own.
pub struct RotatingLog {
    path: PathBuf,
    writer: LogWriter,
    max_bytes: u64,
    keep: u32,
    start: Event,
    /// Whether this segment's `start` record is written: it is written with the first
    /// event, so the values the job's first process brings are known and redacted in it.
    started: bool,
    pub rotations: u64,
}

impl RotatingLog {
    pub fn create(path: &Path, start: Event, max_bytes: u64, keep: u32) -> Result<RotatingLog, OutputError> {
        let writer = LogWriter::create(path)?;
        Ok(RotatingLog { path: path.to_path_buf(), writer, max_bytes, keep, start, started: false, rotations: 0 })
    }

    /// Take protected values out of the `start` record (before it is written; rotations
    /// repeat the redacted one).
    pub fn redact_start(&mut self, sets: &[crate::secrets::SecretSet]) {
        crate::redact::event(sets, &mut self.start);
    }

    fn ensure_started(&mut self) -> Result<(), OutputError> {
        if !self.started {
            self.writer.write(&self.start)?;
            self.started = true;
        }
        Ok(())
    }

    pub fn write(&mut self, e: &Event) -> Result<(), OutputError> {
        self.ensure_started()?;
        self.writer.write(e)
    }

    /// Flush, and rotate when the file has grown past its bound.
    pub fn flush(&mut self) -> Result<(), OutputError> {
        self.ensure_started()?;
        self.writer.flush()?;
        let len = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if len > self.max_bytes {
            self.writer.finish()?;
            let seg = |i: u32| PathBuf::from(format!("{}.{i}", self.path.display()));
            if self.keep == 0 {
                let _ = std::fs::remove_file(&self.path);
            } else {
                let _ = std::fs::remove_file(seg(self.keep));
                for i in (1..self.keep).rev() {
                    let _ = std::fs::rename(seg(i), seg(i + 1));
                }
                std::fs::rename(&self.path, seg(1)).doing(|| format!("rotating {}", self.path.display()))?;
            }
            self.writer = LogWriter::create(&self.path)?;
            self.writer.write(&self.start)?;
            self.rotations += 1;
        }
        Ok(())
    }

    pub fn finish(&mut self) -> Result<(), OutputError> {
        self.ensure_started()?;
        self.writer.finish()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Sink for RotatingLog {
    fn write(&mut self, e: &Event) -> Result<(), PipelineError> {
        Ok(RotatingLog::write(self, e)?)
    }
    fn flush(&mut self) -> Result<(), PipelineError> {
        Ok(RotatingLog::flush(self)?)
    }
    fn finish(&mut self) -> Result<(), PipelineError> {
        Ok(RotatingLog::finish(self)?)
    }
}

pub struct Job {
    pub identity: Identity,
    pub name: String,
    pub policy: Option<Rc<LoadedPolicy>>,
    pub kernel_ids: BTreeSet<u32>,
    /// records -> events -> log -> engine -> alerts -> sinks, with the job's own report.
    pub pipeline: Pipeline,
    pub log_path: PathBuf,
    pub live: BTreeSet<u32>,
    /// First process (its exit code is the job's).
    pub root_pid: u32,
    pub exit_code: Option<i32>,
    /// When the last process exited (the job is closed out after the grace period).
    pub idle_since: Option<Instant>,
    pub started: crate::event::Ts,
    /// A job recognised by its cgroup: the cgroup's directory.
    pub cgroup: Option<PathBuf>,
    /// The values its secret detection looks for, from its processes' environments.
    pub secrets: JobSecrets,
}

impl Job {
    /// Log an event, judge it, log the alerts. Returns the alerts raised.
    pub fn emit(&mut self, e: Event) -> Result<Vec<crate::event::Alert>, PipelineError> {
        if let Event::Exec(x) = &e {
            self.live.insert(x.proc.pid);
        }
        if let Event::Fork(x) = &e {
            self.live.insert(x.proc.pid);
        }
        if let Event::Exit(x) = &e {
            self.live.remove(&x.proc.pid);
            if x.proc.pid == self.root_pid {
                self.exit_code = x.exit_code;
            }
        }
        self.pipeline.event(e)
    }

    /// A kernel record of this job (live-process bookkeeping, then the pipeline).
    pub fn record(&mut self, rec: crate::record::Record) -> Result<Vec<crate::event::Alert>, PipelineError> {
        let mut events = Vec::new();
        self.pipeline.collector_mut().push(rec, &mut events);
        let mut alerts = Vec::new();
        for e in events {
            alerts.extend(self.emit(e)?);
        }
        Ok(alerts)
    }

    /// Look for the protected values of process `pid`'s environment from now on (its DNS
    /// names, first payloads and exec arguments). `exec_boot_ns`: when it exec'd, to make
    /// sure the process read is that one and not a later one with its pid (None: it is held
    /// stopped). Values are never logged, only names.
    pub fn learn_environ(&mut self, pid: u32, exec_boot_ns: Option<u64>) {
        let Some(environ) = job_secrets::read_environ(pid) else { return };
        let entries = self.secrets.unknown_entries(&environ);
        drop(environ);
        if entries.is_empty() {
            return;
        }
        if let Some(ns) = exec_boot_ns
            && !job_secrets::started_by(pid, ns)
        {
            return;
        }
        let refused_before = self.secrets.refused().len();
        let added = self.secrets.add(entries);
        if self.secrets.refused().len() > refused_before {
            tracing::warn!(job = %self.name, pid, variables = ?self.secrets.refused(),
                "more than {} protected values in this job: further values are not looked for", job_secrets::MAX_VALUES);
        }
        if added.is_empty() {
            return;
        }
        match self.secrets.sets() {
            Ok(sets) => {
                self.pipeline.collector_mut().set_secrets(sets);
                tracing::info!(job = %self.name, pid, variables = ?added, values = self.secrets.len(),
                    "looking for these variables' values (from the job's environment) in its traffic");
            }
            Err(e) => {
                tracing::error!(job = %self.name, "cannot build the secret detector: {}", crate::error::chain(&e))
            }
        }
    }

    pub fn loss(&mut self, l: Loss) -> Result<(), PipelineError> {
        let source = l.source.clone();
        self.emit(Event::Loss(l))?;
        // Shells of this job held for an exec record that was lost cannot be judged: killed.
        let live: Vec<u32> = self.live.iter().copied().collect();
        crate::held::after_loss(self.pipeline.engine(), &source, || live);
        Ok(())
    }

    /// Close the job out: pending DNS queries, the `end` record, the summary.
    pub fn close(&mut self) -> Result<String, PipelineError> {
        let mut ev = Vec::new();
        self.pipeline.collector_mut().finish(&mut ev);
        for e in ev {
            self.emit(e)?;
        }
        self.pipeline.end(self.exit_code)?;
        // The job's values live no longer than the job.
        self.pipeline.collector_mut().set_secrets(Vec::new());
        self.secrets.clear();
        Ok(crate::report::text::render(&self.pipeline.report, crate::report::text::Paint(false)))
    }

    pub fn mode(&self) -> &'static str {
        match &self.policy {
            Some(p) => p.prepared.policy.as_ref().map(|p| p.mode.as_str()).unwrap_or("audit"),
            None => "none",
        }
    }
}

/// Status of one job for `watcher status` and metrics.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct JobStatus {
    pub name: String,
    pub id: String,
    pub pipeline: String,
    pub policy: Option<String>,
    pub mode: String,
    pub state: String,
    pub processes: usize,
    pub events: u64,
    pub alerts: u64,
    pub lost: u64,
    pub log: String,
}

impl Job {
    pub fn status(&self, state: &str) -> JobStatus {
        JobStatus {
            name: self.name.clone(),
            id: self.identity.id.clone(),
            pipeline: self.identity.pipeline.clone(),
            policy: self.policy.as_ref().map(|p| p.path.display().to_string()),
            mode: self.mode().into(),
            state: state.into(),
            processes: self.live.len(),
            events: self.pipeline.events,
            alerts: self.pipeline.alerts,
            lost: self.pipeline.report.lost_total(),
            log: self.log_path.display().to_string(),
        }
    }
}

/// The start record of a daemon job: mode `daemon`, the job's identity and its policy.
pub fn start_record(
    identity: &Identity,
    command: Vec<String>,
    sensors: Vec<crate::event::SensorState>,
    resolvers: Vec<std::net::IpAddr>,
    policy: Option<&LoadedPolicy>,
) -> Start {
    let mut variables = BTreeMap::new();
    if let Some((k, v)) = identity.id.split_once('=') {
        variables.insert(k.to_string(), v.to_string());
    }
    Start {
        ts: crate::session::now_ts(),
        schema: crate::event::SCHEMA_VERSION,
        watcher: env!("CARGO_PKG_VERSION").into(),
        mode: "daemon".into(),
        command,
        pid: std::process::id(),
        sensors,
        resolvers,
        registries: policy.map(|p| p.prepared.registries.clone()).unwrap_or_default(),
        registry_sources: policy.map(|p| p.prepared.registry_sources.clone()).unwrap_or_default(),
        proxy_sources: policy.map(|p| p.prepared.proxy_sources.clone()).unwrap_or_default(),
        policy: policy.and_then(|p| p.prepared.policy.as_ref()).map(|p| crate::event::PolicyInfo {
            source: p.source.clone(),
            pipeline: p.pipeline.clone(),
            mode: p.mode.as_str().to_string(),
        }),
        policy_yaml: policy.and_then(|p| p.prepared.policy.as_ref()).map(|p| p.to_yaml()),
        job: Some(crate::event::JobInfo { id: identity.id.clone(), pipeline: identity.pipeline.clone(), variables }),
        project: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_rotated_past_their_bound_and_each_segment_starts_with_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let identity = Identity { id: "X=1".into(), pipeline: "p".into() };
        let start = Event::Start(start_record(&identity, vec!["sh".into()], vec![], vec![], None));
        let mut log = RotatingLog::create(&path, start, 2048, 2).unwrap();
        let loss = |n| Event::Loss(Loss { ts: crate::event::Ts(n), source: "exec".into(), count: 1, total: n });
        for n in 0..200u64 {
            log.write(&loss(n)).unwrap();
            if n % 10 == 9 {
                log.flush().unwrap();
            }
        }
        log.finish().unwrap();
        assert!(log.rotations >= 3, "{}", log.rotations);
        let seg = |s: &str| std::fs::read_to_string(dir.path().join(s)).unwrap();
        for name in ["j.jsonl", "j.jsonl.1", "j.jsonl.2"] {
            let text = seg(name);
            assert!(text.starts_with("{\"kind\":\"start\""), "{name}: {text}");
            assert!(text.len() < 2048 + 2048, "{name} is not bounded: {}", text.len());
        }
        assert!(!dir.path().join("j.jsonl.3").exists(), "only log_keep segments are kept");
        // Nothing recent is lost: the newest event is in the current or the last segment.
        assert!(seg("j.jsonl").contains("\"total\":199") || seg("j.jsonl.1").contains("\"total\":199"));
    }

    #[test]
    fn identity_from_env_prefers_the_first_configured_variable() {
        let env = vec![
            ("CI_JOB_ID".to_string(), "9".to_string()),
            ("GITHUB_RUN_ID".to_string(), "77".to_string()),
            ("GITHUB_REPOSITORY".to_string(), "acme/web app".to_string()),
        ];
        let ids = vec!["GITHUB_RUN_ID".to_string(), "CI_JOB_ID".to_string()];
        let pipes = vec!["GITHUB_REPOSITORY".to_string()];
        let i = Identity::from_env(&env, &ids, &pipes).unwrap();
        assert_eq!(i.id, "GITHUB_RUN_ID=77");
        assert_eq!(i.pipeline, "acme/web app");
        assert_eq!(i.file_stem(), "acme_web_app_77");
        assert!(Identity::from_env(&env[2..], &ids, &pipes).is_none());
        let evil = Identity { id: "X=../../etc".into(), pipeline: String::new() };
        assert_eq!(evil.file_stem(), "_.._etc");
    }
}
