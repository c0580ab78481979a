//! Daemon-backed steps (`watcher run` through a daemon's step socket): the start+stop cost of
//! `run -- true` (whole client process, median), the daemon's resident memory while 10 steps
//! run at once (and how much of it is the kernel's ring buffer mapping), and an exec and a
//! connect storm through a daemon job with the daemon's default ring size: the events in the
//! job's log and the events lost (target 0). The daemon is this benchmark's own (socket and log
//! dir named with its pid) and is stopped at the end, whatever happens.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::bail;

use crate::util::{
    Row, StepDaemon, TempDir, count_log, median, ring_mapping_kb, row, rss_text, status_kb, watcher_bin,
};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Daemon-backed `run -- true` repetitions (the median is printed).
    #[arg(long, default_value_t = 9)]
    pub step_runs: usize,
    /// Steps running at once for the daemon's memory figure.
    #[arg(long, default_value_t = 10)]
    pub step_jobs: usize,
    /// Execs of the exec storm through a daemon job (the connect storm makes twice as many
    /// connects); 0: no storms.
    #[arg(long, default_value_t = 5000)]
    pub step_storm_count: u64,
}

/// "value (met)" or "value (missed by X)".
fn against(value: f64, target: f64, unit: &str) -> String {
    if value <= target {
        format!("{value:.1} {unit} (met)")
    } else {
        format!("{value:.1} {unit} (missed by {:.1} {unit})", value - target)
    }
}

pub fn run(a: &Args) -> anyhow::Result<Vec<Row>> {
    crate::util::require_root()?;
    let watcher = watcher_bin()?;
    let dir = TempDir::new("watcher-bench-steps")?;
    let daemon = StepDaemon::start(&watcher, &dir.0)?;
    let (pid, socket) = (daemon.pid, daemon.socket.clone());
    let step = |args: &[&str]| {
        let mut c = Command::new(&watcher);
        c.args(["run", "--quiet", "--"]).args(args).env("WATCHER_SOCKET", &socket).stdin(Stdio::null());
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        c
    };
    let mut times = Vec::new();
    for _ in 0..a.step_runs.max(1) {
        let t = Instant::now();
        let out = step(&["true"]).output()?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if !out.status.success() {
            bail!("daemon-backed `run -- true` failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        times.push(ms);
    }
    let start_stop = median(&times);
    // N steps at once: the daemon's resident memory while all are open.
    let idle_kb = status_kb(pid, "VmRSS:");
    let mut kids = Vec::new();
    for _ in 0..a.step_jobs {
        kids.push(step(&["sleep", "2"]).spawn()?);
    }
    let logs = dir.join("logs");
    let t = Instant::now();
    while std::fs::read_dir(&logs).map(|d| d.count()).unwrap_or(0) < a.step_jobs
        && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let busy_kb = status_kb(pid, "VmRSS:");
    for k in &mut kids {
        let st = k.wait()?;
        if !st.success() {
            bail!("a concurrent daemon-backed step failed ({st})");
        }
    }
    let peak_kb = status_kb(pid, "VmHWM:");
    let ring_kb = ring_mapping_kb(pid);
    let mib = |kb: u64| kb as f64 / 1024.0;
    let mut rows = vec![
        row("steps", "`run -- true` start+stop, daemon-backed (median)", against(start_stop, 20.0, "ms"), "<= 20 ms"),
        row(
            "steps",
            &format!("daemon RSS with {} concurrent jobs", a.step_jobs),
            format!(
                "{} (of which ring mapping {:.1} MiB; idle {:.1} MiB, peak {:.1} MiB)",
                against(mib(busy_kb), 40.0, "MiB"),
                mib(ring_kb),
                mib(idle_kb),
                mib(peak_kb)
            ),
            "<= 40 MiB",
        ),
    ];
    if a.step_storm_count == 0 {
        return Ok(rows);
    }
    // Storms through one daemon job, with the daemon's default ring: nothing may be lost.
    let me = std::env::current_exe()?;
    for (kind, count, event) in [("exec", a.step_storm_count, "exec"), ("connect", 2 * a.step_storm_count, "connect")] {
        let log = dir.join(&format!("storm-{kind}.jsonl"));
        let mut c = Command::new(&watcher);
        c.args(["run", "--quiet", "--log"]).arg(&log).arg("--").arg(&me);
        c.args(["__storm", kind, "--count", &count.to_string()]);
        c.env("WATCHER_SOCKET", &socket).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let out = c.output()?;
        if !out.status.success() {
            bail!(
                "{kind} storm through a daemon job failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let counts = count_log(&log)?;
        // The worker's own exec is in the log too.
        let n = counts.kind(event) - u64::from(kind == "exec");
        let lost = counts.lost();
        rows.push(row(
            "steps",
            &format!("{kind} storm through a daemon job: {event} records in log, lost"),
            format!("{n} of {count}, {lost} lost{}", if lost == 0 { " (met)" } else { " (MISSED)" }),
            "0 lost",
        ));
    }
    rows.push(row(
        "steps",
        "daemon peak RSS after the storms (VmHWM)",
        rss_text(status_kb(pid, "VmHWM:"), ring_mapping_kb(pid)),
        "",
    ));
    Ok(rows)
}
