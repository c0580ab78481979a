//! Kernel-to-alert latency: the run loop of `watcher run` (`watcher::run::run_timed`, in this
//! process, with the real sensors) watches a worker that connects to `count` distinct closed
//! loopback ports in a private network namespace, under an audit policy that does not allow
//! loopback: every connect raises one `egress-denied` alert. The latency of an alert is the
//! time from the kernel timestamp of its connect to the wall-clock moment the run loop emitted
//! it. Measured twice: paced (one connect per millisecond: an idle agent) and as a burst
//! (back to back: alerts queue behind each other). The agent's alert lines on stderr go to
//! /dev/null while it runs, as they would to a CI log pipe.
use std::os::fd::AsRawFd as _;

use anyhow::Context as _;

use crate::util::{Row, TempDir, percentile, require_root, row};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Alerts per measurement.
    #[arg(long = "alerts", default_value_t = 1000)]
    pub alerts: u64,
}

const POLICY: &str = "version: 1\npipeline: bench-latency\nmode: audit\negress:\n  loopback: false\n";

/// Run `f` with stdout and stderr on /dev/null (the worker's and the agent's lines).
fn quiet_stderr<T>(f: impl FnOnce() -> T) -> anyhow::Result<T> {
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    // SAFETY: dup/dup2 of our own descriptors; both are restored before returning.
    let saved = unsafe { [libc::dup(1), libc::dup(2)] };
    if saved.iter().any(|&fd| fd < 0) {
        anyhow::bail!("dup: {}", std::io::Error::last_os_error());
    }
    unsafe {
        libc::dup2(null.as_raw_fd(), 1);
        libc::dup2(null.as_raw_fd(), 2);
    }
    let r = f();
    unsafe {
        libc::dup2(saved[0], 1);
        libc::dup2(saved[1], 2);
        libc::close(saved[0]);
        libc::close(saved[1]);
    }
    Ok(r)
}

fn measure(policy: &std::path::Path, count: u64, pace_us: u64) -> anyhow::Result<Vec<f64>> {
    let exe = std::env::current_exe()?.to_string_lossy().into_owned();
    let command = vec![
        exe,
        "__storm".into(),
        "deny".into(),
        "--count".into(),
        count.to_string(),
        "--pace-us".into(),
        pace_us.to_string(),
    ];
    let (_code, timings) = quiet_stderr(|| {
        watcher::run::run_timed(watcher::run::RunOptions {
            command: command.into_iter().map(Into::into).collect(),
            log: None,
            quiet: true,
            ringbuf_bytes: 16 << 20,
            policy: Some(policy.to_path_buf()),
            report: Vec::new(),
            report_format: None,
            user: None,
            mode: None,
            bench_disable: Default::default(),
        })
    })??;
    Ok(timings
        .iter()
        .filter(|t| t.alert.rule == watcher::engine::RULE_EGRESS)
        .map(|t| t.latency_ns as f64 / 1e6)
        .collect())
}

pub fn run(a: &Args) -> anyhow::Result<Vec<Row>> {
    require_root()?;
    let dir = TempDir::new("watcher-bench-latency")?;
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY).context("writing the latency policy")?;
    let mut rows = Vec::new();
    for (label, pace) in [("paced 1/ms", 1000), ("burst", 0)] {
        let ms = measure(&policy, a.alerts, pace)?;
        let name = format!("latency {label}");
        rows.push(row(&name, "alerts measured", format!("{} of {}", ms.len(), a.alerts), ""));
        rows.push(row(&name, "kernel-to-alert p50", format!("{:.3} ms", percentile(&ms, 50.0)), ""));
        rows.push(row(&name, "kernel-to-alert p99", format!("{:.3} ms", percentile(&ms, 99.0)), ""));
        rows.push(row(&name, "kernel-to-alert max", format!("{:.3} ms", percentile(&ms, 100.0)), ""));
    }
    Ok(rows)
}
