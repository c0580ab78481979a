//! `watcher run -- CMD`: run one command as one job of the kernel's membership model, log its
//! events through the job's pipeline, and clean everything up.
use std::{ffi::CString, io::Write as _, os::unix::process::ExitStatusExt as _, path::PathBuf, time::Duration};

use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cgroup::{Cgroup, cgroup2_root},
    collect::Collector,
    engine::Engine,
    error::Doing as _,
    event::{Event, PolicyInfo, SCHEMA_VERSION, Start},
    exitcode,
    log::LogWriter,
    pipeline::{Enrichment, Pipeline, sink::LiveLines},
    policy::Mode,
    report::{self, Report},
    run_error::RunError,
    sensor::{Instance, Sensor, SensorConfig},
    session::{self, boot_now_ns, clock_offset_ns, now_ts},
};

pub use crate::pipeline::AlertTiming;

pub struct RunOptions {
    /// Passed to the command unchanged (any bytes but NUL).
    pub command: Vec<std::ffi::OsString>,
    pub log: Option<PathBuf>,
    pub quiet: bool,
    pub ringbuf_bytes: u32,
    pub policy: Option<PathBuf>,
    /// Overrides the policy's mode.
    pub mode: Option<Mode>,
    /// Write the end-of-step report to these files (stdout belongs to the command).
    pub report: Vec<PathBuf>,
    /// Their format; by default from each file's extension (`.json`, `.sarif`, `.md`, else text).
    pub report_format: Option<report::Format>,
    /// `--user USER[:GROUP]`: run the command as this user (standalone only; see run_user).
    pub user: Option<String>,
    /// What the benchmark turns off (hidden `--bench-disable`; standalone only).
    pub bench_disable: crate::sensor::BenchDisable,
}

/// Run the command; returns the exit code watcher should exit with.
pub fn run(opts: RunOptions) -> crate::Result<i32> {
    // Through a running daemon when one is named (or found, without root): no root needed.
    if let Some(socket) = crate::step_client::socket_for_run() {
        if opts.bench_disable != Default::default() {
            return Err(RunError::BenchDisableWithDaemon.into());
        }
        return crate::step_client::run(opts, &socket);
    }
    Ok(run_timed(opts).map(|(code, _)| code)?)
}

/// [`run`], also returning every alert with its detection latency.
pub fn run_timed(opts: RunOptions) -> Result<(i32, Vec<AlertTiming>), RunError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run_async(opts))
}

async fn run_async(opts: RunOptions) -> Result<(i32, Vec<AlertTiming>), RunError> {
    if opts.command.is_empty() {
        return Err(RunError::NoCommand);
    }
    let watcher_pid = std::process::id();
    let run_as = crate::run_user::resolve(opts.user.as_deref(), (None, None))?;
    let policy = session::load_policy(opts.policy.as_deref(), opts.mode)?;
    // The package managers' configuration (registries, proxies) is read while the kernel
    // verifies the programs: the two are the bulk of watcher's start-up, and neither needs the
    // other.
    let discovery = session::discover(&policy)?;
    // Open the log first: a bad path is the user's error to hear about before anything runs.
    crate::outfile::distinct(
        &opts.policy.iter().map(|p| ("policy", p.as_path())).collect::<Vec<_>>(),
        &opts
            .log
            .iter()
            .map(|p| ("event log", p.as_path()))
            .chain(opts.report.iter().map(|p| ("report", p.as_path())))
            .collect::<Vec<_>>(),
    )?;
    let log = match &opts.log {
        Some(p) => Some(LogWriter::create(p)?),
        None => None,
    };
    let report_files =
        opts.report.iter().map(|p| crate::outfile::create(p, "report")).collect::<Result<Vec<_>, _>>()?;
    // The files a step writes are its user's, as if it had run without watcher.
    if let Some(u) = &run_as
        && crate::sensor::load::require_root().is_ok()
    {
        for p in opts.log.iter().chain(&opts.report).filter(|p| p.as_os_str() != "-") {
            std::os::unix::fs::lchown(p, Some(u.uid), Some(u.gid))
                .doing(|| format!("{}: cannot give it to uid {}", p.display(), u.uid))?;
        }
    }

    let root = cgroup2_root()?;
    // Before creating anything.
    crate::sensor::load::require_root()?;
    // The step's own cgroup only finds and kills what is left at the end: membership is the
    // kernel's, by process, from the step's first exec (the programs are attached at the root).
    let mut cgroup = Cgroup::create(&root, &format!("watcher-run-{watcher_pid}"))?;
    if opts.bench_disable != Default::default() {
        let b = opts.bench_disable;
        let off = [(b.backstop, "the packet backstop"), (b.streams, "stream scanning"), (b.files, "the file sensor")]
            .iter()
            .filter_map(|(o, w)| o.then_some(*w))
            .collect::<Vec<_>>()
            .join(" and ");
        crate::say!("watcher: warning: --bench-disable: {off} off (a benchmark's setting, never for a real build)");
    }
    let sensor_cfg =
        SensorConfig { bench_disable: opts.bench_disable, ..SensorConfig::run(Instance::Run, opts.ringbuf_bytes) };
    let mut sensor = Sensor::load(&sensor_cfg, &root)?;
    for s in sensor.stale() {
        crate::say!(
            "watcher: warning: a previous watcher (pid {}) was killed while watching a step: its kernel programs \
             were still enforcing; removed them and killed {} process(es) of its step",
            s.pid,
            s.killed
        );
    }
    let prepared = discovery.finish(policy)?;
    // Read once: the kernel enforces, and the start record (which the engine and replay judge
    // by) states, the same resolvers.
    let resolvers = crate::probe::system_resolvers();
    if let Some(p) = &prepared.policy {
        let hosts: Vec<String> = prepared.registries.values().flatten().cloned().collect();
        let tables = crate::policy::kernel::compile(p, &hosts, &resolvers, session::random_seed())?;
        sensor.apply_policy(0, &tables)?;
    }
    // The file sensor's table: credential stores under every home, the project's (the step's
    // directory) protected paths, the policy's `files:` additions and exceptions.
    let project = std::env::current_dir().ok();
    let file_rules =
        crate::files::rules(prepared.policy.as_ref().map(|p| p.spec()), &crate::files::homes(), project.as_deref());
    sensor.apply_file_rules(0, &file_rules)?;
    // Every rule holds from the first event: the tables are complete before the step's
    // first process is put in the job.
    sensor.watch_cgroup(cgroup.id(), 0)?;

    let policy_info = prepared.policy.as_ref().map(|p| PolicyInfo {
        source: p.source.clone(),
        pipeline: p.pipeline.clone(),
        mode: p.mode.as_str().to_string(),
    });
    let credentials = crate::credentials::for_run(prepared.policy.as_ref(), &prepared.registries, &prepared.secrets);
    let collector =
        Collector::new(clock_offset_ns()).with_secrets(prepared.secrets.clone()).with_credentials(credentials);
    let summary = Report { log: opts.log.as_ref().map(|p| p.display().to_string()), ..Default::default() };
    let mut pipe = Pipeline::new(
        collector,
        Enrichment { cwd: true, root: None },
        prepared.policy.clone().map(Engine::new),
        summary,
    )
    .with_sink(LiveLines { quiet: opts.quiet });
    if let Some(log) = log {
        pipe = pipe.with_sink(log);
    }
    pipe.event(Event::Start(Start {
        ts: now_ts(),
        schema: SCHEMA_VERSION,
        watcher: env!("CARGO_PKG_VERSION").into(),
        mode: "run".into(),
        command: opts.command.iter().map(|a| crate::log::arg_for_log(a)).collect(),
        pid: watcher_pid,
        sensors: sensor.states().to_vec(),
        resolvers: resolvers.clone(),
        registries: prepared.registries.clone(),
        registry_sources: prepared.registry_sources.clone(),
        proxy_sources: prepared.proxy_sources.clone(),
        policy: policy_info.clone(),
        policy_yaml: prepared.policy.as_ref().map(|p| p.to_yaml()),
        job: None,
        project: crate::project::detect(),
    }))?;
    if !opts.quiet {
        let active: Vec<&str> = sensor.states().iter().filter(|s| s.active).map(|s| s.name.as_str()).collect();
        crate::say!("watcher: sensors active: {}; watching cgroup {}", active.join(", "), cgroup.path().display());
        if let Some(p) = &policy_info {
            crate::say!("watcher: policy {} (pipeline {}), {} mode", p.source, p.pipeline, p.mode);
        }
        if let Some(u) = &run_as {
            crate::say!("watcher: running the command as uid {} gid {} ({})", u.uid, u.gid, u.why);
        }
    }

    // Before the command exists: a signal it (or anyone) sends watcher is forwarded, never
    // watcher's default action (which would end watcher and leave the step to the kernel alone).
    let mut sigs = Vec::new();
    for k in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
    ] {
        sigs.push((k, signal(k).doing(|| "installing signal handlers".into())?));
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

    let tty = nix::unistd::isatty(std::io::stdin()).unwrap_or(false);
    let mut child = match spawn(&opts.command, &cgroup, tty, run_as.as_ref()) {
        Ok(c) => c,
        Err(error) => {
            let name = crate::log::arg_for_log(&opts.command[0]);
            let name = report::safe(&crate::redact::text(pipe.collector_mut().secrets(), &name));
            let err = crate::error::CommandError { name, error };
            let code = err.exit_code();
            crate::say!("watcher: {err}");
            pipe.end(Some(code))?;
            drop(sensor);
            cgroup.remove()?;
            return Ok((code, pipe.take_timings()));
        }
    };
    let child_pid = child.id().unwrap_or(0);
    pipe.set_root(child_pid, watcher_pid);
    sensor.watch_pid(child_pid, watcher_pid, 0)?;
    // A command that already exited (`true`) passed the kernel's exit hook before its entry
    // was added: the entry would stay, and at the end watcher would SIGKILL that pid, which
    // another process may have by then. The child is not reaped yet, so its pid is still its.
    if !not_yet_exited(child_pid) {
        sensor.unwatch_pid(child_pid)?;
    }

    let mut batch = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let status = loop {
        tokio::select! {
            r = sensor.wait_and_drain(&mut batch) => {
                r.doing(|| "reading the kernel ring buffer".into())?;
                pipe.records(&mut batch)?;
            }
            st = child.wait() => break st.doing(|| "waiting for the command".into())?,
            Some(sig) = sig_rx.recv() => {
                if let Ok(sig) = nix::sys::signal::Signal::try_from(sig) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child_pid as i32), sig);
                }
            }
            _ = tick.tick() => {
                pipe.tick(boot_now_ns())?;
                pipe.losses(&sensor.counters()?, &|| sensor.watched_pids())?;
            }
        }
    };
    if tty {
        reclaim_terminal();
    }

    // The command is done: nothing of its tree may outlive the step. Processes that left the
    // cgroup are still in the job (tracked by pid in the kernel); kill those too.
    let survivors = cgroup.pids();
    if !survivors.is_empty() && !opts.quiet {
        crate::say!("watcher: killing {} process(es) left behind by the command", survivors.len());
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
    // Audit: every process is gone, so the count only falls; none left, none to destroy.
    let mut left = true;
    if !enforce {
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        loop {
            // Unknown (no usable `ss`): destroy, which says why it cannot.
            left = cgroup.socket_count().map_or(true, |n| n > 0);
            if !left || std::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if left && let Err(e) = cgroup.destroy_sockets() {
        crate::say!("watcher: {}", crate::error::chain(&e));
    }
    // Let the exit records of the killed processes arrive (at most 50 ms), then take
    // everything left. The kernel writes a process's exit record before it drops the process
    // from the job, so an empty job means every record is in the ring: in the common case (the
    // command's tree ended by itself) there is nothing to wait for.
    // A process that is gone or a zombie has passed the kernel's exit hook; its entry may stay
    // (the command's own, when it exited before watcher added its pid), so it does not count.
    let deadline = std::time::Instant::now() + Duration::from_millis(50);
    while sensor.watched_pids().into_iter().any(|p| p != watcher_pid && not_yet_exited(p))
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    sensor.drain(&mut batch);
    pipe.records(&mut batch)?;
    pipe.drain_collector()?;
    pipe.losses(&sensor.counters()?, &|| sensor.watched_pids())?;

    let cmd_code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => exitcode::WATCHER_ERROR,
    };
    let lost = pipe.end(Some(cmd_code))?;
    // Enforce mode fails closed: a denial or kill, or lost events, fail the step.
    let code = pipe.enforce_failure(lost).unwrap_or(cmd_code);
    drop(sensor); // detaches every program (the links are owned by this process)
    cgroup.remove()?;
    pipe.report.watcher_exit = Some(code);
    write_reports(&pipe.report, report_files, &opts)?;
    if code != cmd_code {
        crate::say!(
            "watcher: enforce mode: exiting {code} (the command exited {cmd_code}) because {}",
            if code == exitcode::POLICY_VIOLATION { "of policy violations" } else { "events were lost" }
        );
    }
    Ok((code, pipe.take_timings()))
}

/// Whether process `pid` has not yet reached its exit (it exists and is neither a zombie nor
/// dead): `/proc/PID/stat`'s state, the field after the parenthesised command name.
fn not_yet_exited(pid: u32) -> bool {
    crate::procfs::Stat::of(pid).is_some_and(|s| !s.exited())
}

/// The end-of-step report: text on stderr, the `--report` file, the GitHub job summary.
pub(crate) fn write_reports(r: &Report, files: Vec<std::fs::File>, opts: &RunOptions) -> Result<(), RunError> {
    use std::io::IsTerminal as _;
    let colour = report::colour_for(std::io::stderr().is_terminal());
    crate::say_text!("{}", report::stderr_report(r, colour));
    for (mut f, path) in files.into_iter().zip(&opts.report) {
        let format = opts.report_format.unwrap_or_else(|| report::Format::from_path(path));
        f.write_all(report::render_one(r, format, false).as_bytes())
            .doing(|| format!("{}: cannot write the report", path.display()))?;
    }
    report::append_step_summary(std::slice::from_ref(r));
    Ok(())
}

/// Start the command in its own process group inside the cgroup. When stdin is a terminal the
/// child's group becomes the terminal's foreground group, as a shell would do, so the terminal
/// (Ctrl-C, Ctrl-Z, reads) behaves exactly as if the command ran directly.
fn spawn(
    command: &[std::ffi::OsString],
    cgroup: &Cgroup,
    tty: bool,
    run_as: Option<&crate::run_user::RunAs>,
) -> std::io::Result<tokio::process::Child> {
    let run_as = run_as.cloned();
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
            // Last, once in the cgroup: groups, group, then user (setuid drops the right to
            // change the others).
            if let Some(u) = &run_as
                && (libc::setgroups(u.groups.len(), u.groups.as_ptr()) != 0
                    || libc::setgid(u.gid) != 0
                    || libc::setuid(u.uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
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
