//! `watcher run -- CMD`: run one command in a fresh cgroup, watch exactly its process tree,
//! log its events, and clean everything up.
use std::{ffi::CString, io::Write as _, os::unix::process::ExitStatusExt as _, path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cgroup::{Cgroup, cgroup2_root},
    collect::Collector,
    engine::Engine,
    event::{End, Event, Loss, PolicyInfo, SCHEMA_VERSION, Start, Ts},
    exitcode,
    log::LogWriter,
    policy::{Mode, Policy},
    record,
    report::{self, Report, event_line},
    secrets::SecretSet,
    sensor::{COUNTER_NAMES, Sensor, SensorConfig},
};

pub struct RunOptions {
    pub command: Vec<String>,
    pub log: Option<PathBuf>,
    pub quiet: bool,
    pub ringbuf_bytes: u32,
    pub policy: Option<PathBuf>,
    /// Overrides the policy's mode.
    pub mode: Option<Mode>,
    /// Write the end-of-step report to this file (stdout belongs to the command).
    pub report: Option<PathBuf>,
    /// Its format; by default from the file's extension (`.json`, `.sarif`, `.md`, else text).
    pub report_format: Option<report::Format>,
}

/// Variable-name globs whose values are always looked for in DNS names (besides the policy's
/// own), so a log recorded under one policy can be replayed under a stricter one.
pub const SECRET_CANDIDATES: &[&str] = &[
    "AWS_*",
    "*_TOKEN",
    "*TOKEN*",
    "*_KEY",
    "*_KEY_*",
    "*SECRET*",
    "*PASSWORD*",
    "*PASSWD*",
    "*CREDENTIAL*",
    "*PRIVATE*",
    "*_AUTH",
    "*_AUTH_*",
    "*APIKEY*",
    "*API_KEY*",
];

/// What is known before the command starts: the loaded policy (mode applied), its registry
/// hosts and the secrets detector.
pub struct Prepared {
    pub policy: Option<Policy>,
    pub registries: std::collections::BTreeMap<String, Vec<String>>,
    pub secrets: SecretSet,
}

/// Load and check everything a user can get wrong before anything runs.
pub fn prepare(policy: Option<&std::path::Path>, mode: Option<Mode>) -> anyhow::Result<Prepared> {
    let policy = load_policy(policy, mode)?;
    let registries = resolve_registries(policy.as_ref())?;
    finish_prepare(policy, registries)
}

/// The policy file, with the CLI's mode applied.
pub fn load_policy(policy: Option<&std::path::Path>, mode: Option<Mode>) -> anyhow::Result<Option<Policy>> {
    match policy {
        Some(p) => {
            let mut pol = crate::policy::load(p).map_err(|e| anyhow::anyhow!("{e}"))?;
            if let Some(m) = mode {
                pol.mode = m;
            }
            Ok(Some(pol))
        }
        None => {
            if mode.is_some() {
                bail!("--mode needs --policy FILE: there is nothing to audit or enforce without a policy");
            }
            Ok(None)
        }
    }
}

/// The hosts of the policy's registries, from each package manager's own configuration (this
/// starts the package managers: npm alone takes about 0.4 s).
pub fn resolve_registries(policy: Option<&Policy>) -> anyhow::Result<std::collections::BTreeMap<String, Vec<String>>> {
    Ok(match policy {
        Some(p) => crate::engine::resolve_registries(p)?,
        None => Default::default(),
    })
}

fn finish_prepare(
    policy: Option<Policy>,
    registries: std::collections::BTreeMap<String, Vec<String>>,
) -> anyhow::Result<Prepared> {
    let mut patterns: Vec<String> = SECRET_CANDIDATES.iter().map(|s| s.to_string()).collect();
    if let Some(p) = &policy {
        patterns.extend(p.secret_env_patterns().iter().cloned());
    }
    let env = std::env::vars_os().map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()));
    let secrets = SecretSet::new(&patterns, env).context("compiling secret variable patterns")?;
    Ok(Prepared { policy, registries, secrets })
}

/// CLOCK_REALTIME - CLOCK_BOOTTIME in nanoseconds: converts kernel timestamps to wall time.
pub fn clock_offset_ns() -> i128 {
    use nix::time::{ClockId, clock_gettime};
    let ns = |c| clock_gettime(c).map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128).unwrap_or(0);
    ns(ClockId::CLOCK_REALTIME) - ns(ClockId::CLOCK_BOOTTIME)
}

pub fn boot_now_ns() -> u64 {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_BOOTTIME).map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64).unwrap_or(0)
}

pub fn now_ts() -> Ts {
    Ts(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0))
}

/// A per-run secret seed for the kernel's DNS name hash.
fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    u64::from_ne_bytes(b) ^ boot_now_ns()
}

/// One alert and how long it took to raise: from the kernel timestamp of the event that raised
/// it to the wall-clock moment the run loop emitted it (`watcher drill`, `watcher-bench latency`).
#[derive(Clone, Debug)]
pub struct AlertTiming {
    pub alert: crate::event::Alert,
    pub latency_ns: u64,
}

/// Everything the run loop feeds events to: log, terminal, summary.
struct Sinks {
    log: Option<LogWriter>,
    quiet: bool,
    summary: Report,
    root_pid: u32,
    watcher_pid: u32,
    engine: Option<Engine>,
    timings: Vec<AlertTiming>,
}

impl Sinks {
    fn emit(&mut self, mut e: Event) -> anyhow::Result<()> {
        // The command itself was forked by us before the kernel knew it: its parent is watcher.
        if let Some(p) = e.proc_mut()
            && p.pid == self.root_pid
            && p.ppid == 0
        {
            p.ppid = self.watcher_pid;
        }
        if let Event::Exec(x) = &mut e {
            // Best effort: the process may already be gone.
            x.cwd =
                std::fs::read_link(format!("/proc/{}/cwd", x.proc.pid)).ok().map(|p| p.to_string_lossy().into_owned());
        }
        crate::held::before(self.engine.as_ref(), &mut e);
        self.write(&e)?;
        // The engine judges exactly what was logged, as replay will.
        let alerts = match &mut self.engine {
            Some(engine) => engine.process(&e),
            None => Vec::new(),
        };
        crate::held::after(self.engine.as_ref(), &e);
        for a in alerts {
            let latency_ns = now_ts().0.saturating_sub(a.ts.0);
            self.timings.push(AlertTiming { alert: a.clone(), latency_ns });
            self.write(&Event::Alert(a))?;
        }
        Ok(())
    }

    fn write(&mut self, e: &Event) -> anyhow::Result<()> {
        let show = !self.quiet || matches!(e, Event::Alert(_) | Event::Loss(_));
        if show && let Some(line) = event_line(e) {
            eprintln!("watcher: {line}");
        }
        self.summary.add(e);
        if let Some(log) = &mut self.log {
            log.write(e)?;
        }
        Ok(())
    }
}

struct LossTracker {
    seen: [u64; COUNTER_NAMES.len()],
    decode_errors: u64,
    decode_reported: u64,
}

impl LossTracker {
    fn check(&mut self, sensor: &Sensor, sinks: &mut Sinks) -> anyhow::Result<()> {
        let totals = sensor.counters()?;
        for (i, &t) in totals.iter().enumerate() {
            if t > self.seen[i] {
                let e = Event::Loss(Loss {
                    ts: now_ts(),
                    source: COUNTER_NAMES[i].into(),
                    count: t - self.seen[i],
                    total: t,
                });
                self.seen[i] = t;
                sinks.emit(e)?;
                crate::held::after_loss(sinks.engine.as_ref(), COUNTER_NAMES[i], || sensor.watched_pids());
            }
        }
        if self.decode_errors > self.decode_reported {
            let e = Event::Loss(Loss {
                ts: now_ts(),
                source: "decode".into(),
                count: self.decode_errors - self.decode_reported,
                total: self.decode_errors,
            });
            self.decode_reported = self.decode_errors;
            sinks.emit(e)?;
        }
        Ok(())
    }
}

fn process(
    batch: &mut Vec<Result<record::Record, record::DecodeError>>,
    collector: &mut Collector,
    loss: &mut LossTracker,
    sinks: &mut Sinks,
) -> anyhow::Result<()> {
    let mut events = Vec::with_capacity(batch.len());
    for r in batch.drain(..) {
        match r {
            Ok(rec) => collector.push(rec, &mut events),
            Err(e) => {
                tracing::debug!("undecodable record: {e}");
                loss.decode_errors += 1;
            }
        }
    }
    for e in events {
        sinks.emit(e)?;
    }
    Ok(())
}

/// Run the command; returns the exit code watcher should exit with.
pub fn run(opts: RunOptions) -> anyhow::Result<i32> {
    run_timed(opts).map(|(code, _)| code)
}

/// [`run`], also returning every alert with its detection latency.
pub fn run_timed(opts: RunOptions) -> anyhow::Result<(i32, Vec<AlertTiming>)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run_async(opts))
}

async fn run_async(opts: RunOptions) -> anyhow::Result<(i32, Vec<AlertTiming>)> {
    if opts.command.is_empty() {
        bail!("no command given: usage is `watcher run [OPTIONS] -- CMD [ARGS...]`");
    }
    let watcher_pid = std::process::id();
    let policy = load_policy(opts.policy.as_deref(), opts.mode)?;
    // The package managers' configuration is read while the kernel verifies the programs: the
    // two are the bulk of watcher's start-up, and neither needs the other.
    let registries = {
        let p = policy.clone();
        std::thread::Builder::new()
            .name("registries".into())
            .spawn(move || resolve_registries(p.as_ref()))
            .context("starting the registry resolution thread")?
    };
    // Open the log first: a bad path is the user's error to hear about before anything runs.
    let log = match &opts.log {
        Some(p) => Some(LogWriter::create(p)?),
        None => None,
    };
    let report_file = match &opts.report {
        Some(p) => Some(std::fs::File::create(p).with_context(|| format!("{}: cannot write the report", p.display()))?),
        None => None,
    };

    let root = cgroup2_root()?;
    if !nix::unistd::geteuid().is_root() {
        // Sensor::load says this precisely; check before creating anything.
        Sensor::load(&SensorConfig::run(opts.ringbuf_bytes, root.clone()))?;
    }
    let mut cgroup = Cgroup::create(&root, &format!("watcher-run-{watcher_pid}"))?;
    let mut sensor = Sensor::load(&SensorConfig::run(opts.ringbuf_bytes, cgroup.path().to_path_buf()))?;
    let registries = registries.join().map_err(|_| anyhow::anyhow!("the registry resolution thread panicked"))??;
    let prepared = finish_prepare(policy, registries)?;
    // Read once: the kernel enforces, and the start record (which the engine and replay judge
    // by) states, the same resolvers.
    let resolvers = crate::policy::system_resolvers();
    if let Some(p) = &prepared.policy {
        let hosts: Vec<String> = prepared.registries.values().flatten().cloned().collect();
        let tables = crate::policy::kernel::compile(p, &hosts, &resolvers, random_seed())
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.source))?;
        sensor.apply_policy(0, &tables)?;
    }
    sensor.watch_cgroup(cgroup.id(), 0)?;

    let policy_info = prepared.policy.as_ref().map(|p| PolicyInfo {
        source: p.source.clone(),
        pipeline: p.pipeline.clone(),
        mode: p.mode.as_str().to_string(),
    });
    let mut sinks = Sinks {
        log,
        quiet: opts.quiet,
        summary: Report { log: opts.log.as_ref().map(|p| p.display().to_string()), ..Default::default() },
        root_pid: 0,
        watcher_pid,
        engine: prepared.policy.clone().map(Engine::new),
        timings: Vec::new(),
    };
    sinks.emit(Event::Start(Start {
        ts: now_ts(),
        schema: SCHEMA_VERSION,
        watcher: env!("CARGO_PKG_VERSION").into(),
        mode: "run".into(),
        command: opts.command.clone(),
        pid: watcher_pid,
        sensors: sensor.states().to_vec(),
        resolvers: resolvers.clone(),
        registries: prepared.registries.clone(),
        policy: policy_info.clone(),
        job: None,
        project: crate::project::detect(),
    }))?;
    if !opts.quiet {
        let active: Vec<&str> = sensor.states().iter().filter(|s| s.active).map(|s| s.name.as_str()).collect();
        eprintln!("watcher: sensors active: {}; watching cgroup {}", active.join(", "), cgroup.path().display());
        if let Some(p) = &policy_info {
            eprintln!("watcher: policy {} (pipeline {}), {} mode", p.source, p.pipeline, p.mode);
        }
    }

    let tty = nix::unistd::isatty(std::io::stdin()).unwrap_or(false);
    let mut child = match spawn(&opts.command, &cgroup, tty) {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => exitcode::NOT_FOUND,
                std::io::ErrorKind::PermissionDenied => exitcode::NOT_EXECUTABLE,
                _ => exitcode::WATCHER_ERROR,
            };
            eprintln!("watcher: cannot run {}: {e}", opts.command[0]);
            sinks.emit(Event::End(End { ts: now_ts(), exit_code: Some(code), lost: 0 }))?;
            if let Some(log) = &mut sinks.log {
                log.finish()?;
            }
            cgroup.remove()?;
            return Ok((code, sinks.timings));
        }
    };
    let child_pid = child.id().unwrap_or(0);
    sinks.root_pid = child_pid;
    sensor.watch_pid(child_pid, watcher_pid, 0)?;

    let mut collector = Collector::new(clock_offset_ns()).with_secrets(prepared.secrets);
    let mut loss = LossTracker { seen: [0; COUNTER_NAMES.len()], decode_errors: 0, decode_reported: 0 };
    let mut batch = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut sigs = Vec::new();
    for k in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
    ] {
        sigs.push((k, signal(k).context("installing signal handlers")?));
    }
    let (sig_tx, mut sig_rx) = tokio::sync::mpsc::unbounded_channel::<i32>();
    for (kind, mut s) in sigs {
        let tx = sig_tx.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                let _ = tx.send(kind.as_raw_value());
            }
        });
    }

    let status = loop {
        tokio::select! {
            r = sensor.wait_and_drain(&mut batch) => {
                r?;
                process(&mut batch, &mut collector, &mut loss, &mut sinks)?;
            }
            st = child.wait() => break st.context("waiting for the command")?,
            Some(sig) = sig_rx.recv() => {
                if let Ok(sig) = nix::sys::signal::Signal::try_from(sig) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child_pid as i32), sig);
                }
            }
            _ = tick.tick() => {
                let mut ev = Vec::new();
                collector.expire(boot_now_ns(), &mut ev);
                for e in ev { sinks.emit(e)?; }
                loss.check(&sensor, &mut sinks)?;
                if let Some(log) = &mut sinks.log { log.flush()?; }
            }
        }
    };
    if tty {
        reclaim_terminal();
    }

    // The command is done: nothing of its tree may outlive the step. Processes that left the
    // cgroup (only root can) are still tracked by pid in the kernel; kill those too.
    let survivors = cgroup.pids();
    if !survivors.is_empty() && !opts.quiet {
        eprintln!("watcher: killing {} process(es) left behind by the command", survivors.len());
    }
    cgroup.kill_all(Duration::from_secs(5))?;
    for pid in sensor.watched_pids() {
        if pid != watcher_pid {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }
    // Sockets outlive their processes: give queued data a moment to leave under watch (audit),
    // then destroy what is left while the programs are still attached. In enforce mode a
    // dropped DNS-over-TCP query would otherwise be retransmitted unfiltered after watcher exits.
    let enforce = prepared.policy.as_ref().is_some_and(|p| p.mode == Mode::Enforce);
    if !enforce {
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while cgroup.socket_count() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if let Err(e) = cgroup.destroy_sockets() {
        eprintln!("watcher: {e:#}");
    }
    // Let the exit records of the killed processes arrive, then take everything left.
    tokio::time::sleep(Duration::from_millis(50)).await;
    sensor.drain(&mut batch);
    process(&mut batch, &mut collector, &mut loss, &mut sinks)?;
    let mut ev = Vec::new();
    collector.finish(&mut ev);
    for e in ev {
        sinks.emit(e)?;
    }
    loss.check(&sensor, &mut sinks)?;

    let cmd_code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => exitcode::WATCHER_ERROR,
    };
    let lost = sinks.summary.lost_total();
    sinks.emit(Event::End(End { ts: now_ts(), exit_code: Some(cmd_code), lost }))?;
    // Enforce mode fails closed: a denial or kill, or lost events, fail the step.
    let code = sinks.engine.as_ref().and_then(|e| e.enforce_failure(lost)).unwrap_or(cmd_code);
    if let Some(log) = &mut sinks.log {
        log.finish()?;
    }
    drop(sensor); // detaches every program (the links are owned by this process)
    cgroup.remove()?;
    sinks.summary.watcher_exit = Some(code);
    write_reports(&sinks.summary, report_file, &opts)?;
    if code != cmd_code {
        eprintln!(
            "watcher: enforce mode: exiting {code} (the command exited {cmd_code}) because {}",
            if code == exitcode::POLICY_VIOLATION { "of policy violations" } else { "events were lost" }
        );
    }
    Ok((code, sinks.timings))
}

/// The end-of-step report: text on stderr, the `--report` file, the GitHub job summary.
fn write_reports(r: &Report, file: Option<std::fs::File>, opts: &RunOptions) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    let colour = report::colour_for(std::io::stderr().is_terminal());
    eprint!("{}", prefix_lines(&report::text::render(r, report::text::Paint(colour)), "watcher: "));
    if let (Some(mut f), Some(path)) = (file, &opts.report) {
        let format = opts.report_format.unwrap_or_else(|| report::Format::from_path(path));
        f.write_all(report::render_one(r, format, false).as_bytes())
            .with_context(|| format!("{}: cannot write the report", path.display()))?;
    }
    report::append_step_summary(std::slice::from_ref(r));
    Ok(())
}

fn prefix_lines(s: &str, p: &str) -> String {
    s.lines().map(|l| format!("{p}{l}\n")).collect()
}

/// Start the command in its own process group inside the cgroup. When stdin is a terminal the
/// child's group becomes the terminal's foreground group, as a shell would do, so the terminal
/// (Ctrl-C, Ctrl-Z, reads) behaves exactly as if the command ran directly.
fn spawn(command: &[String], cgroup: &Cgroup, tty: bool) -> std::io::Result<tokio::process::Child> {
    let procs = CString::new(cgroup.procs_file().into_os_string().into_encoded_bytes())
        .map_err(|_| std::io::Error::other("cgroup path contains NUL"))?;
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]).process_group(0).kill_on_drop(false);
    // SAFETY: only async-signal-safe calls (open, write, close, signal, tcsetpgrp, getpid)
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if !ok {
                return Err(err);
            }
            if tty {
                let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                libc::tcsetpgrp(0, libc::getpid());
                libc::signal(libc::SIGTTOU, old);
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Make watcher's own process group the terminal's foreground group again.
fn reclaim_terminal() {
    // SAFETY: plain libc calls on our own process.
    unsafe {
        let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
        libc::tcsetpgrp(0, libc::getpgrp());
        libc::signal(libc::SIGTTOU, old);
    }
    let _ = std::io::stderr().flush();
}
