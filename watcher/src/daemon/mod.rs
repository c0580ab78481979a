//! `watcher daemon`: a long-lived service for self-hosted runners. It watches every CI job on
//! the host, recognised in the kernel at exec by a job variable in the environment, and
//! applies each job's own pipeline policy, with one event log per job.
//!
//! The kernel side (see watcher-ebpf exec.rs): an unwatched process whose exec environment
//! carries a configured job variable becomes the first process of a new kernel job; its
//! children inherit the job at fork. Until the daemon has written the job's tables, the job is
//! enforced with empty tables (everything denied) and its program is stopped (SIGSTOP at
//! sched_process_exec, before its first instruction); the daemon writes the tables, then
//! continues it (SIGCONT). Fail closed: a job the daemon never set up never runs.
pub mod config;
mod error;
pub mod job_secrets;
pub mod jobs;
pub mod metrics;
pub mod status;
pub mod steps;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    rc::Rc,
    time::{Duration, Instant},
};

use tokio::signal::unix::{SignalKind, signal};
use watcher_common::{JOB_DAEMON_BIT, JOB_NONE};

use crate::{
    cgroup::cgroup2_root,
    collect::Collector,
    engine::Engine,
    error::Doing as _,
    event::{Event, Loss},
    pipeline::{Enrichment, Pipeline},
    record::Record,
    report::Report,
    sensor::{Sensor, SensorConfig},
    session::{boot_now_ns, clock_offset_ns, now_ts},
};
use config::Config;
pub use error::{DaemonError, IntersectError, StepError, StepsConfigError};
use jobs::{Identity, Job, JobStatus, LoadedPolicy, RotatingLog};

pub struct DaemonOptions {
    pub config: PathBuf,
    pub ringbuf_bytes: u32,
}

/// Counters shown by `watcher status` and the metrics endpoint.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Kernel loss counters by source (ring buffer full, process table full, ...), plus
    /// `decode` (records that could not be decoded).
    pub lost: BTreeMap<String, u64>,
    /// Records of a kernel job the daemon does not know (counted, never silently dropped).
    pub unrouted: u64,
    pub jobs_started: u64,
    pub jobs_ended: u64,
    pub events: u64,
    pub alerts: u64,
    pub reloads: u64,
    pub reload_errors: u64,
    pub last_reload_error: Option<String>,
    /// Held jobs set up from /proc because their exec record was lost.
    #[serde(default)]
    pub recovered_jobs: u64,
    /// Jobs a previous daemon left held (killed while their first program was stopped at
    /// exec), adopted at start.
    #[serde(default)]
    pub adopted_jobs: u64,
    /// Events of processes of no job written to `no_job_log`.
    #[serde(default)]
    pub no_job_events: u64,
}

/// What `watcher status` receives (JSON over the socket).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct StatusReport {
    pub pid: u32,
    pub config: String,
    pub log_dir: String,
    pub jobs: Vec<JobStatus>,
    pub counters: Counters,
}

/// Load every policy the configuration names, and compile it for the kernel: all or nothing.
fn load_policies(
    cfg: &Config,
    resolvers: &[std::net::IpAddr],
    seed: u64,
) -> Result<BTreeMap<PathBuf, Rc<LoadedPolicy>>, DaemonError> {
    Ok(load_policies_send(cfg, resolvers, seed)?.into_iter().map(|(k, v)| (k, Rc::new(v))).collect())
}

/// What a SIGHUP reload reads and compiles: run on a blocking thread, so parsing (and the
/// package managers it starts) never stalls the event loop.
type Reloaded = Result<(Config, BTreeMap<PathBuf, LoadedPolicy>), DaemonError>;

fn load_for_reload(source: PathBuf, resolvers: Vec<std::net::IpAddr>, seed: u64) -> Reloaded {
    let cfg = config::load(&source)?;
    let policies = load_policies_send(&cfg, &resolvers, seed)?;
    Ok((cfg, policies))
}

fn load_policies_send(
    cfg: &Config,
    resolvers: &[std::net::IpAddr],
    seed: u64,
) -> Result<BTreeMap<PathBuf, LoadedPolicy>, DaemonError> {
    let mut out = BTreeMap::new();
    for p in &cfg.pipelines {
        let Some(path) = &p.policy else { continue };
        if out.contains_key(path) {
            continue;
        }
        let prepared = crate::session::prepare(Some(path), None)?;
        let pol = prepared.policy.as_ref().ok_or_else(|| DaemonError::NoPolicy(path.clone()))?;
        let hosts: Vec<String> = prepared.registries.values().flatten().cloned().collect();
        let tables = crate::policy::kernel::compile(pol, &hosts, resolvers, seed)?;
        out.insert(path.clone(), LoadedPolicy { path: path.clone(), prepared, tables });
    }
    Ok(out)
}

/// A closed job's exit code and its enforce-mode verdict (77/78).
type Closed = (Option<i32>, Option<i32>);

struct Daemon {
    cfg: Config,
    policies: BTreeMap<PathBuf, Rc<LoadedPolicy>>,
    seed: u64,
    resolvers: Vec<std::net::IpAddr>,
    sensor: Sensor,
    /// Live jobs by identity id.
    jobs: BTreeMap<String, Job>,
    by_kernel: HashMap<u32, String>,
    ended: Vec<JobStatus>,
    used_names: std::collections::BTreeSet<String>,
    counters: Counters,
    /// Kernel losses cannot be attributed to a job: accounted once, given to every job.
    loss: crate::pipeline::loss::LossAccount,
    cgroup_root: PathBuf,
    /// Watched cgroups (path below the root) -> (cgroup id, kernel job id).
    cgroup_jobs: HashMap<String, (u64, u32)>,
    next_cgroup_job: u32,
    last_cgroup_scan: Option<Instant>,
    held_seen: std::collections::HashSet<u32>,
    /// Processes of no job (`no_job_log`): their own pipeline (collector and log), no policy,
    /// no report.
    no_job: Option<Pipeline>,
    /// Losses counted while a kernel job was held and not yet set up.
    pending_loss: HashMap<u32, Vec<Loss>>,
    /// Daemon-backed steps (`watcher run` through the step socket).
    steps: steps::Steps,
}

impl Daemon {
    fn status(&self) -> StatusReport {
        let mut jobs: Vec<JobStatus> = self.jobs.values().map(|j| j.status("running")).collect();
        jobs.extend(self.ended.iter().cloned());
        StatusReport {
            pid: std::process::id(),
            config: self.cfg.source.display().to_string(),
            log_dir: self.cfg.log_dir.display().to_string(),
            jobs,
            counters: self.counters.clone(),
        }
    }

    fn policy_for(&self, pipeline: &str) -> Option<Rc<LoadedPolicy>> {
        self.cfg.policy_for(pipeline).and_then(|p| self.policies.get(p).cloned())
    }

    /// The daemon job of an identity, created (log opened, policy chosen) when new.
    /// `first`: the job's first process (its environment gives the values to redact from the
    /// `start` record's command before anything is written).
    fn ensure_job(
        &mut self,
        identity: Identity,
        command: &[String],
        first: Option<u32>,
    ) -> Result<String, DaemonError> {
        if !self.jobs.contains_key(&identity.id) {
            let policy =
                crate::proxies::for_daemon_job(self.policy_for(&identity.pipeline), first, &self.resolvers, self.seed);
            let mut name = identity.file_stem();
            let mut n = 2;
            while self.used_names.contains(&name) || self.cfg.log_dir.join(format!("{name}.jsonl")).exists() {
                name = format!("{}.{n}", identity.file_stem());
                n += 1;
            }
            self.used_names.insert(name.clone());
            let path = self.cfg.log_dir.join(format!("{name}.jsonl"));
            let start = jobs::start_record(
                &identity,
                command.to_vec(),
                self.sensor.states().to_vec(),
                self.resolvers.clone(),
                policy.as_deref(),
            );
            let started = start.ts;
            // The engine learns the resolvers and registry hosts from the start record, as in
            // `run` and replay (without it every registry connection and DNS query is flagged).
            let mut engine = policy.as_ref().and_then(|p| p.prepared.policy.clone()).map(Engine::new);
            if let Some(e) = engine.as_mut() {
                e.process(&Event::Start(start.clone()));
            }
            let mut log = RotatingLog::create(&path, Event::Start(start), self.cfg.log_max_bytes, self.cfg.log_keep)?;
            // The job's values come from its own processes' environments (learn_environ), never
            // from the daemon's.
            let mut secrets = job_secrets::JobSecrets::new(policy.as_ref().and_then(|p| p.prepared.policy.as_ref()))?;
            let first_sets = job_secrets::learn_first(&mut secrets, first)?;
            log.redact_start(&first_sets);
            let mut collector = Collector::new(clock_offset_ns());
            collector.set_secrets(first_sets);
            let pipeline = crate::pipeline::Pipeline::new(
                collector,
                crate::pipeline::Enrichment { cwd: true, root: None },
                engine,
                Report::default(),
            )
            .with_sink(log)
            .with_sink(crate::pipeline::sink::DaemonLines { job: name.clone() });
            let job = Job {
                identity: identity.clone(),
                name: name.clone(),
                policy: policy.clone(),
                kernel_ids: Default::default(),
                pipeline,
                log_path: path.clone(),
                live: Default::default(),
                root_pid: 0,
                exit_code: None,
                idle_since: None,
                started,
                cgroup: None,
                secrets,
            };
            tracing::info!(job = %name, id = %identity.id, pipeline = %identity.pipeline,
                policy = %policy.as_ref().map(|p| p.path.display().to_string()).unwrap_or_else(|| "none".into()),
                mode = %job.mode(), log = %path.display(), "job started");
            self.counters.jobs_started += 1;
            self.jobs.insert(identity.id.clone(), job);
        }
        Ok(identity.id)
    }

    /// Write a job's tables for a kernel job id and route that id to it.
    fn attach_kernel_job(&mut self, id: &str, kid: u32) -> Result<(), DaemonError> {
        let job = self.jobs.get_mut(id).ok_or_else(|| DaemonError::NoJob { id: id.to_string(), kid })?;
        let tables = job.policy.as_ref().map(|p| p.tables.clone()).unwrap_or_default();
        self.sensor.apply_policy(kid, &tables)?;
        let files = job.policy.as_ref().and_then(|p| p.prepared.policy.as_ref()).map(|p| p.spec());
        self.sensor.apply_file_rules(kid, &crate::files::rules(files, &crate::files::homes(), None))?;
        job.kernel_ids.insert(kid);
        self.by_kernel.insert(kid, id.to_string());
        for l in self.pending_loss.remove(&kid).unwrap_or_default() {
            job.loss(l)?;
        }
        Ok(())
    }

    /// A new kernel job: find (or create) its daemon job, write its tables (the caller then
    /// continues the stopped process).
    fn new_kernel_job(
        &mut self,
        kid: u32,
        pid: u32,
        env: &[(String, String)],
        argv: &[String],
    ) -> Result<(), DaemonError> {
        let identity = Identity::from_env(env, &self.cfg.id_env, &self.cfg.pipeline_env)
            .unwrap_or_else(|| Identity { id: format!("kernel-job={kid:#x}"), pipeline: String::new() });
        let id = self.ensure_job(identity, argv, Some(pid))?;
        self.attach_kernel_job(&id, kid)
    }

    /// Cgroup path patterns: every new cgroup that matches becomes a job (its tables written
    /// first, then the cgroup put in the kernel's watch map: from then on each of its
    /// processes is in the job at its next exec, fork, connect or packet).
    fn scan_cgroups(&mut self) {
        if self.cfg.cgroups.is_empty() {
            return;
        }
        let mut found = Vec::new();
        let mut stack = vec![(self.cgroup_root.clone(), 0)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    continue;
                }
                let p = e.path();
                let rel = p.strip_prefix(&self.cgroup_root).unwrap_or(&p).to_string_lossy().into_owned();
                if !self.cgroup_jobs.contains_key(&rel)
                    && let Some(rule) = self.cfg.cgroup_rule(&rel)
                {
                    found.push((rel.clone(), p.clone(), rule.pipeline.clone()));
                }
                if depth < 8 {
                    stack.push((p, depth + 1));
                }
            }
        }
        for (rel, path, pipeline) in found {
            use std::os::unix::fs::MetadataExt as _;
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            let cgid = meta.ino();
            self.next_cgroup_job = self.next_cgroup_job.wrapping_add(1);
            // Bit 30 as well: never a pid-named kernel job (pids stay below 2^22).
            let kid = JOB_DAEMON_BIT | 0x4000_0000 | (self.next_cgroup_job % 0x3fff_ffff);
            let identity = Identity { id: format!("cgroup={rel}"), pipeline: pipeline.unwrap_or_else(|| rel.clone()) };
            let r = self.ensure_job(identity, &[], None).and_then(|id| {
                self.attach_kernel_job(&id, kid)?;
                self.sensor.watch_cgroup(cgid, kid)?;
                if let Some(j) = self.jobs.get_mut(&id) {
                    j.cgroup = Some(path.clone());
                }
                Ok(())
            });
            match r {
                Ok(()) => {
                    tracing::info!(cgroup = %rel, kernel_job = kid, "watching cgroup as a job");
                    self.cgroup_jobs.insert(rel, (cgid, kid));
                }
                Err(e) => tracing::error!(cgroup = %rel, "cannot watch cgroup: {}", crate::error::chain(&e)),
            }
        }
        // Cgroups that are gone: out of the watch map (their job ends when its processes have).
        let gone: Vec<String> =
            self.cgroup_jobs.keys().filter(|rel| !self.cgroup_root.join(rel).exists()).cloned().collect();
        for rel in gone {
            if let Some((cgid, _)) = self.cgroup_jobs.remove(&rel)
                && let Err(e) = self.sensor.unwatch_cgroup(cgid)
            {
                tracing::error!(cgroup = %rel, "{e}");
            }
        }
    }

    fn handle(&mut self, mut rec: Record) -> Result<(), DaemonError> {
        let kid = rec.task().job;
        if kid == JOB_NONE {
            let Some(pipe) = &mut self.no_job else {
                self.counters.unrouted += 1;
                return Ok(());
            };
            let before = pipe.events;
            pipe.record(rec)?;
            self.counters.no_job_events += pipe.events - before;
            return Ok(());
        }
        if kid & JOB_DAEMON_BIT == 0 {
            self.counters.unrouted += 1;
            return Ok(());
        }
        if !self.by_kernel.contains_key(&kid) {
            if let Record::Exec { env, argv, .. } = &rec {
                if let Err(e) = self.new_kernel_job(kid, rec.task().pid, env, argv) {
                    // Fail closed: a job whose policy cannot be written must not run.
                    tracing::error!(
                        kernel_job = kid,
                        pid = rec.task().pid,
                        "cannot set up job, killing its process: {}",
                        crate::error::chain(&e)
                    );
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(rec.task().pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    return Ok(());
                }
            } else {
                self.counters.unrouted += 1;
                return Ok(());
            }
        }
        self.feed_outer(kid, &rec)?;
        // A route without its job would be a bookkeeping bug: count it, never take the daemon
        // (and every job it enforces) down for it.
        let Some(job) = self.by_kernel.get(&kid).and_then(|id| self.jobs.get_mut(id)) else {
            self.counters.unrouted += 1;
            return Ok(());
        };
        if let Record::Exec { task, ret: 0, stopped, .. } = &rec {
            // The values to look for, before this exec's arguments are logged. A stopped
            // process (a job's first) is read as it is held: complete and stable.
            job.learn_environ(task.pid, (!stopped).then_some(task.boot_ns));
        }
        if let Record::Exec { stopped: true, task, filename, killed, .. } = &mut rec {
            // Its tables are written: let it run, unless the program itself is one the
            // policy denies (the kernel could not judge it: the job had no tables at its
            // exec). Then it is killed before its first instruction, and logged as killed.
            if release_first(job.pipeline.engine(), kid, task.pid, filename).is_some() {
                *killed = true;
            }
            if let Err(e) = self.sensor.forget_held_job(kid) {
                tracing::error!(kernel_job = kid, "{e}");
            }
        }
        if let Record::Exec { task, ret: 0, .. } = &rec
            && job.root_pid == 0
        {
            job.root_pid = task.pid;
        }
        let before = job.pipeline.events - job.pipeline.alerts;
        let alerts = job.record(rec)?;
        self.counters.events += (job.pipeline.events - job.pipeline.alerts) - before;
        self.counters.alerts += alerts.len() as u64;
        Ok(())
    }

    /// Loss counters: a kernel loss cannot be attributed to a job, so every running job's log
    /// gets the `loss` record (its events may be among those lost).
    fn check_loss(&mut self) -> Result<(), DaemonError> {
        let totals = self.sensor.counters()?;
        let losses = self.loss.losses(&totals);
        for l in &losses {
            self.counters.lost.insert(l.source.clone(), l.total);
        }
        let held: Vec<u32> = if losses.is_empty() {
            Vec::new()
        } else {
            self.sensor.held_jobs().into_iter().map(|(k, _)| k).filter(|k| !self.by_kernel.contains_key(k)).collect()
        };
        for l in losses {
            tracing::warn!(source = %l.source, count = l.count, total = l.total, "kernel events lost");
            for job in self.jobs.values_mut() {
                job.loss(l.clone())?;
            }
            // Jobs the kernel holds that the daemon has not set up yet get it when they are.
            for k in &held {
                self.pending_loss.entry(*k).or_default().push(l.clone());
            }
            if let Some(pipe) = &mut self.no_job {
                pipe.event(Event::Loss(l.clone()))?;
            }
        }
        Ok(())
    }

    /// Jobs the kernel holds stopped whose exec record never arrived (lost when the ring
    /// buffer was full): set them up from /proc (the exec's environment and argv), then
    /// continue them. Without this a lost record would leave the job stopped for good.
    fn recover_held_jobs(&mut self) {
        let held = self.sensor.held_jobs();
        // Only what was already held at the previous tick: a record still in the ring
        // buffer is handled by the normal path.
        let previous = std::mem::replace(&mut self.held_seen, held.iter().map(|(k, _)| *k).collect());
        for (kid, pid) in held {
            if !previous.contains(&kid) {
                continue;
            }
            if self.by_kernel.contains_key(&kid) {
                // Set up already; the record may still be on its way: judge it by its
                // executable and continue (or kill) it anyway.
                self.release_from_proc(kid, pid);
                if let Err(e) = self.sensor.forget_held_job(kid) {
                    tracing::error!(kernel_job = kid, "{e}");
                }
                continue;
            }
            let split = |b: Vec<u8>| -> Vec<String> {
                b.split(|&c| c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            };
            let (Ok(environ), Ok(cmdline)) =
                (std::fs::read(format!("/proc/{pid}/environ")), std::fs::read(format!("/proc/{pid}/cmdline")))
            else {
                let _ = self.sensor.forget_held_job(kid); // gone: nothing to forget is fine
                continue;
            };
            let wanted: Vec<&String> = self.cfg.id_env.iter().chain(&self.cfg.pipeline_env).collect();
            let env: Vec<(String, String)> = split(environ)
                .into_iter()
                .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                .filter(|(k, _)| wanted.contains(&k))
                .collect();
            match self.new_kernel_job(kid, pid, &env, &split(cmdline)) {
                Ok(()) => {
                    self.counters.recovered_jobs += 1;
                    // This job's own exec record is among the lost ones: say so in its log.
                    let total = self.sensor.counters().map(|c| c[0]).unwrap_or(0);
                    if let Some(job) = self.by_kernel.get(&kid).and_then(|id| self.jobs.get_mut(id)) {
                        let _ = job.loss(Loss { ts: now_ts(), source: "exec".into(), count: 1, total });
                        job.learn_environ(pid, None);
                        job.live.insert(pid);
                        if job.root_pid == 0 {
                            job.root_pid = pid;
                        }
                    }
                    tracing::warn!(kernel_job = kid, pid, "job set up from /proc: its exec record was lost");
                    self.release_from_proc(kid, pid);
                }
                Err(e) => {
                    tracing::error!(
                        kernel_job = kid,
                        pid,
                        "cannot set up job, killing its process: {}",
                        crate::error::chain(&e)
                    );
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            if let Err(e) = self.sensor.forget_held_job(kid) {
                tracing::error!(kernel_job = kid, "{e}");
            }
        }
    }

    /// A held first program whose exec record is not at hand (lost, or under a previous
    /// daemon): judged by its executable's path, then continued or killed. A kill is the
    /// job's verdict, so its log gets the `exec-denied` alert (action `kill`) the record would
    /// have carried.
    fn release_from_proc(&mut self, kid: u32, pid: u32) {
        let filename = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let job = self.by_kernel.get(&kid).and_then(|id| self.jobs.get_mut(id));
        let Some(job) = job else {
            release_first(None, kid, pid, &filename);
            return;
        };
        let Some(rule) = release_first(job.pipeline.engine(), kid, pid, &filename) else { return };
        match job.pipeline.alerts(|e| e.first_exec_killed(now_ts(), pid, &filename, &rule)) {
            Ok(a) => self.counters.alerts += a.len() as u64,
            Err(e) => tracing::error!(job = %job.name, "{}", crate::error::chain(&e)),
        }
    }

    /// At start (the programs are attached, so nothing new escapes): processes a previous
    /// daemon left held. A daemon killed hard (SIGKILL, crash) while a job's first program was
    /// stopped at exec leaves it stopped for good, and this daemon's kernel maps do not know
    /// it. Conservative: only a process in state `T`, with one thread and no children (held
    /// before its first instruction), whose environment carries a configured job variable and
    /// that this daemon's kernel does not watch. Each one is set up like a held job: watched
    /// under its kernel job id, its tables written, then continued.
    fn adopt_held_processes(&mut self) {
        let watched: std::collections::HashSet<u32> = self.sensor.watched_pids().into_iter().collect();
        let Ok(rd) = std::fs::read_dir("/proc") else { return };
        let own = std::process::id();
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            if pid == own || watched.contains(&pid) {
                continue;
            }
            let Some(stat) = crate::procfs::Stat::of(pid) else { continue };
            if !stat.stopped() || stat.threads != 1 {
                continue;
            }
            // Held at its first exec: it has started nothing yet.
            if std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).is_ok_and(|c| !c.trim().is_empty()) {
                continue;
            }
            let Some(environ) = job_secrets::read_environ(pid) else { continue };
            let wanted: Vec<&String> = self.cfg.id_env.iter().chain(&self.cfg.pipeline_env).collect();
            let env: Vec<(String, String)> = environ
                .split(|&c| c == 0)
                .filter_map(|e| {
                    std::str::from_utf8(e).ok()?.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .filter(|(k, _)| wanted.contains(&k))
                .collect();
            if !env.iter().any(|(k, _)| self.cfg.id_env.contains(k)) {
                continue;
            }
            // Asked again now that it is seen stopped: a job this daemon's kernel holds was
            // put in its watch map before it was stopped, so it is found here (and is set up
            // by the normal path).
            if self.sensor.watched_pids().contains(&pid) {
                continue;
            }
            let argv: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            let kid = JOB_DAEMON_BIT | (pid & !JOB_DAEMON_BIT);
            if self.by_kernel.contains_key(&kid) {
                continue;
            }
            // Watched first (with no tables the kernel denies everything for it), then its
            // tables, then it runs.
            let r = self
                .sensor
                .watch_pid(pid, stat.ppid, kid)
                .map_err(DaemonError::from)
                .and_then(|()| self.new_kernel_job(kid, pid, &env, &argv));
            match r {
                Ok(()) => {
                    self.counters.adopted_jobs += 1;
                    let total = self.counters.adopted_jobs;
                    if let Some(job) = self.by_kernel.get(&kid).and_then(|id| self.jobs.get_mut(id)) {
                        // Its exec happened under the previous daemon: not in this log.
                        let _ = job.loss(Loss { ts: now_ts(), source: "restart".into(), count: 1, total });
                        job.learn_environ(pid, None);
                        job.live.insert(pid);
                        if job.root_pid == 0 {
                            job.root_pid = pid;
                        }
                        tracing::info!(pid, kernel_job = kid, job = %job.name, id = %job.identity.id,
                            "adopted a job a previous daemon left held at its first exec");
                    }
                    self.release_from_proc(kid, pid);
                }
                Err(e) => {
                    // Fail closed, as for any job that cannot be set up.
                    tracing::error!(
                        kernel_job = kid,
                        pid,
                        "cannot adopt held job, killing its process: {}",
                        crate::error::chain(&e)
                    );
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }

    fn tick(&mut self) -> Result<(), DaemonError> {
        self.recover_held_jobs();
        if self.last_cgroup_scan.is_none_or(|t| t.elapsed() >= Duration::from_millis(500)) {
            self.scan_cgroups();
            self.last_cgroup_scan = Some(Instant::now());
        }
        let now = boot_now_ns();
        for job in self.jobs.values_mut() {
            let mut ev = Vec::new();
            job.pipeline.collector_mut().expire(now, &mut ev);
            for e in ev {
                self.counters.events += 1;
                self.counters.alerts += job.emit(e)?.len() as u64;
            }
            // A process whose exit record was lost must not keep the job open forever.
            job.live.retain(|pid| Path::new(&format!("/proc/{pid}")).exists());
        }
        if let Some(pipe) = &mut self.no_job {
            pipe.tick(now)?;
        }
        self.check_loss()?;
        let grace = self.cfg.job_end_grace;
        let mut done = Vec::new();
        for (id, job) in self.jobs.iter_mut() {
            job.pipeline.flush()?;
            // A job recognised by its cgroup lasts as long as the cgroup.
            let cgroup_busy = job.cgroup.as_ref().is_some_and(|c| c.exists());
            // Step jobs end with their first process (reap_steps).
            if job.live.is_empty() && !cgroup_busy && !self.steps.is_step(id) {
                let since = *job.idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= grace {
                    done.push(id.clone());
                }
            } else {
                job.idle_since = None;
            }
        }
        for id in done {
            self.close_job(&id)?;
        }
        self.reap_steps()
    }

    /// Returns the job's exit code and its enforce-mode verdict (77/78), if it was open.
    fn close_job(&mut self, id: &str) -> Result<Option<Closed>, DaemonError> {
        let Some(mut job) = self.jobs.remove(id) else { return Ok(None) };
        let summary = job.close()?;
        let verdict = job.pipeline.enforce_failure(job.pipeline.report.lost_total());
        let tables = job.policy.as_ref().map(|p| p.tables.clone()).unwrap_or_default();
        for kid in &job.kernel_ids {
            if let Err(e) = self.sensor.remove_job(*kid, &tables) {
                tracing::error!(kernel_job = kid, "forgetting the job's kernel tables: {e}");
            }
            if let Err(e) = self.sensor.remove_file_rules(*kid) {
                tracing::error!(kernel_job = kid, "forgetting the job's file rules: {e}");
            }
            self.by_kernel.remove(kid);
        }
        self.counters.jobs_ended += 1;
        tracing::info!(job = %job.name, id = %job.identity.id, events = job.pipeline.events, alerts = job.pipeline.alerts,
            lost = job.pipeline.report.lost_total(), "job ended: {}", summary.lines().next().unwrap_or(""));
        self.ended.push(job.status("ended"));
        if self.ended.len() > 100 {
            self.ended.remove(0);
        }
        Ok(Some((job.exit_code, verdict)))
    }

    /// SIGHUP: re-read the configuration and every policy it names. All or nothing: on any
    /// error the previous ones stay in force. Running jobs keep the policy they started with
    /// (their log's start record names it, so replay gives the same verdicts); jobs that
    /// start after the reload get the new one.
    fn start_reload(&mut self) -> tokio::task::JoinHandle<Reloaded> {
        self.counters.reloads += 1;
        let (source, resolvers, seed) = (self.cfg.source.clone(), self.resolvers.clone(), self.seed);
        tokio::task::spawn_blocking(move || load_for_reload(source, resolvers, seed))
    }

    fn reload(&mut self, result: Result<Reloaded, tokio::task::JoinError>) {
        let result = result
            .map_err(|e| DaemonError::ReloadThread(e.to_string()))
            .and_then(|r| r)
            .map(|(cfg, p)| (cfg, p.into_iter().map(|(k, v)| (k, Rc::new(v))).collect::<BTreeMap<_, _>>()));
        match result {
            Ok((mut cfg, policies)) => {
                if cfg.id_env != self.cfg.id_env
                    || cfg.pipeline_env != self.cfg.pipeline_env
                    || cfg.socket != self.cfg.socket
                    || cfg.metrics != self.cfg.metrics
                    || cfg.log_dir != self.cfg.log_dir
                    || cfg.no_job_log != self.cfg.no_job_log
                    || cfg.steps != self.cfg.steps
                {
                    tracing::warn!(
                        "jobs.id_env, jobs.pipeline_env, socket, metrics, log_dir, no_job_log and steps take effect at restart only; keeping the current values"
                    );
                    cfg.id_env = self.cfg.id_env.clone();
                    cfg.pipeline_env = self.cfg.pipeline_env.clone();
                    cfg.socket = self.cfg.socket.clone();
                    cfg.metrics = self.cfg.metrics;
                    cfg.log_dir = self.cfg.log_dir.clone();
                    cfg.no_job_log = self.cfg.no_job_log.clone();
                    cfg.steps = self.cfg.steps.clone();
                }
                tracing::info!(config = %cfg.source.display(), policies = policies.len(), "configuration reloaded");
                self.cfg = cfg;
                self.policies = policies;
                self.counters.last_reload_error = None;
            }
            Err(e) => {
                self.counters.reload_errors += 1;
                let msg = crate::error::chain(&e).to_string();
                tracing::error!(error = %msg, "reload failed; the previous configuration and policies stay in force");
                self.counters.last_reload_error = Some(msg);
            }
        }
    }
}

/// A job's first program, held stopped at exec while its tables were written: continued, or
/// killed (SIGKILL; the rule that denies it is returned) when the job's policy denies the program itself in enforce mode (the
/// kernel could not judge that exec: the job had no tables yet).
fn release_first(engine: Option<&crate::engine::Engine>, kid: u32, pid: u32, filename: &str) -> Option<String> {
    let target = nix::unistd::Pid::from_raw(pid as i32);
    if let Some(rule) = engine.and_then(|e| e.first_exec_denied(filename)) {
        tracing::info!(kernel_job = kid, pid, %filename, %rule, "a job's first program is denied: killed at exec");
        let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
        return Some(rule);
    }
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGCONT);
    None
}

pub fn run(opts: DaemonOptions) -> crate::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(DaemonError::from)?;
    Ok(rt.block_on(run_async(opts))?)
}

async fn run_async(opts: DaemonOptions) -> Result<i32, DaemonError> {
    let cfg = config::load(&opts.config)?;
    let resolvers = crate::probe::system_resolvers();
    let seed = crate::session::random_seed();
    let policies = load_policies(&cfg, &resolvers, seed)?;
    config::prepare_log_dir(&cfg.log_dir)?;
    let root = cgroup2_root()?;
    let sensor = Sensor::load(
        &SensorConfig {
            instance: crate::sensor::Instance::Daemon,
            ringbuf_bytes: opts.ringbuf_bytes,
            daemon: true,
            log_no_job: cfg.no_job_log.is_some(),
            job_env: cfg.id_env.clone(),
            extra_env: cfg.pipeline_env.clone(),
            bench_disable: Default::default(),
        },
        &root,
    )?;
    let status_listener = status::bind(&cfg.socket)?;
    let step_listener = cfg.steps.as_ref().map(steps::bind).transpose()?;
    let (step_tx, mut step_rx) = tokio::sync::mpsc::unbounded_channel();
    let metrics_listener = match cfg.metrics {
        Some(addr) => {
            Some(metrics::Metrics::bind(addr).await.doing(|| format!("cannot listen for metrics on {addr}"))?)
        }
        None => None,
    };
    let active: Vec<&str> = sensor.states().iter().filter(|s| s.active).map(|s| s.name.as_str()).collect();
    tracing::info!(pid = std::process::id(), config = %cfg.source.display(), cgroup = %root.display(),
        socket = %cfg.socket.display(), log_dir = %cfg.log_dir.display(),
        metrics = %cfg.metrics.map(|m| m.to_string()).unwrap_or_else(|| "off".into()),
        sensors = %active.join(","), job_variables = %cfg.id_env.join(","), "watcher daemon started");
    let mut d = Daemon {
        cfg,
        policies,
        seed,
        resolvers,
        sensor,
        jobs: BTreeMap::new(),
        by_kernel: HashMap::new(),
        ended: Vec::new(),
        used_names: Default::default(),
        counters: Counters::default(),
        loss: Default::default(),
        cgroup_root: root.clone(),
        cgroup_jobs: HashMap::new(),
        next_cgroup_job: 0,
        last_cgroup_scan: None,
        held_seen: Default::default(),
        no_job: None,
        pending_loss: HashMap::new(),
        steps: Default::default(),
    };
    if let Some(path) = d.cfg.no_job_log.clone() {
        let identity = Identity { id: "none".into(), pipeline: String::new() };
        let start = jobs::start_record(&identity, Vec::new(), d.sensor.states().to_vec(), d.resolvers.clone(), None);
        let log = RotatingLog::create(&path, Event::Start(start), d.cfg.log_max_bytes, d.cfg.log_keep)?;
        let pipe = Pipeline::new(Collector::new(clock_offset_ns()), Enrichment::default(), None, Report::default());
        d.no_job = Some(pipe.without_report().with_sink(log));
    }
    d.adopt_held_processes();
    d.scan_cgroups();
    let mut hup = signal(SignalKind::hangup()).doing(|| "installing signal handlers".into())?;
    let mut term = signal(SignalKind::terminate()).doing(|| "installing signal handlers".into())?;
    let mut int = signal(SignalKind::interrupt()).doing(|| "installing signal handlers".into())?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut batch = Vec::new();
    let mut reloading: Option<tokio::task::JoinHandle<Reloaded>> = None;
    let mut reload_again = false;
    let result: Result<(), DaemonError> = async {
        loop {
            tokio::select! {
                r = d.sensor.wait_and_drain(&mut batch) => {
                    r?;
                    for r in batch.drain(..) {
                        match r {
                            Ok(rec) => d.handle(rec)?,
                            Err(e) => {
                                tracing::debug!("undecodable record: {e}");
                                d.loss.decode_error();
                            }
                        }
                    }
                    d.reap_steps()?;
                }
                c = async { match &step_listener { Some(l) => l.accept().await, None => std::future::pending().await } } => {
                    if let Ok((stream, _)) = c {
                        steps::accept(&d.steps, stream, step_tx.clone());
                    }
                }
                Some(inc) = step_rx.recv() => d.open_step(inc),
                _ = tick.tick() => d.tick()?,
                _ = hup.recv() => match reloading {
                    None => reloading = Some(d.start_reload()),
                    Some(_) => reload_again = true,
                },
                r = async { reloading.as_mut().expect("guarded").await }, if reloading.is_some() => {
                    reloading = None;
                    d.reload(r);
                    if std::mem::take(&mut reload_again) {
                        reloading = Some(d.start_reload());
                    }
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
                c = status_listener.accept() => {
                    if let Ok((stream, _)) = c {
                        status::serve(stream, serde_json::to_string(&d.status())?);
                    }
                }
                c = async { match &metrics_listener { Some(l) => l.accept().await, None => std::future::pending().await } } => {
                    if let Ok(conn) = c {
                        metrics::serve(conn, metrics::render(&d.status()));
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    // Stop: detach the programs, take what they sent, close every job out. Detached first:
    // closing a job removes its tables, and a process of it exec'ing after that, with the
    // programs still attached, would be held as the first of a job nobody sets up, for good.
    tracing::info!(jobs = d.jobs.len(), "stopping: detaching and closing out running jobs");
    let mut rest = Vec::new();
    d.sensor.drain(&mut rest);
    d.sensor.detach();
    d.sensor.drain(&mut rest);
    for r in rest.into_iter().flatten() {
        let _ = d.handle(r);
    }
    // Jobs the kernel still holds are set up and continued like the others (after exit no
    // job is watched any more; a held one would otherwise stay stopped for good).
    d.held_seen = d.sensor.held_jobs().into_iter().map(|(k, _)| k).collect();
    d.recover_held_jobs();
    let _ = d.check_loss();
    let ids: Vec<String> = d.jobs.keys().cloned().collect();
    for id in ids {
        if let Err(e) = d.close_job(&id) {
            tracing::error!("closing job {id}: {}", crate::error::chain(&e));
        }
    }
    if let Some(pipe) = &mut d.no_job {
        // Its `end` record counts every loss it logged: all of the daemon's.
        let r = pipe.drain_collector().and_then(|_| pipe.end(None));
        if let Err(e) = r {
            tracing::error!("closing the no-job log: {}", crate::error::chain(&e));
        }
    }
    let socket = d.cfg.socket.clone();
    let step_socket = d.cfg.steps.as_ref().map(|s| s.socket.clone());
    drop(d); // the sensor: every program and link is detached here
    let _ = std::fs::remove_file(&socket);
    if let Some(s) = step_socket {
        let _ = std::fs::remove_file(s);
    }
    result?;
    tracing::info!("watcher daemon stopped");
    Ok(0)
}

/// `watcher status`: ask the running daemon.
pub fn status_command(socket: &Path, json: bool) -> crate::Result<i32> {
    let text = status::query(socket)?;
    if json {
        crate::show!("{text}");
        return Ok(0);
    }
    let r: StatusReport = serde_json::from_str(&text)
        .doing(|| format!("unexpected answer from {}", socket.display()))
        .map_err(DaemonError::from)?;
    crate::show_text!("{}", status::render(&r));
    Ok(0)
}
