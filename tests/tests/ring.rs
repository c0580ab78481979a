//! The default ring buffer sizes hold the storms they are chosen for, and every record of a
//! burst larger than one read batch reaches the log (README, Benchmarks: "Ring buffer sizes").
//!
//! - A daemon with its default ring (8M): a job's burst of 1,500 execs and 1,000 loopback
//!   connects made while the daemon is stopped (SIGSTOP: it reads nothing meanwhile) fits in the
//!   ring; once continued, the daemon delivers all of it, in many batches, and the log's loss
//!   count is 0. The daemon's ring mapping is twice the ring (the kernel maps the data pages
//!   twice), which is what its RSS figure counts.
//! - Standalone `watcher run` with its default ring (2M): an exec and a connect storm, 0 lost.
//!
//! Every connection goes to a loopback listener of the test.
use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use watcher_tests::{
    Listener, TempDir, daemon::Daemon, netprobe_bin, read_jsonl, root_or_skip, wait_until, watcher_bin,
};

const EXECS: usize = 1500;
const CONNECTS: usize = 1000;

/// Resident KiB of `pid`'s BPF map mappings (the ring buffer).
fn ring_mapping_kb(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut in_map = false;
    let mut kb = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            in_map = line.contains("bpf-map");
        } else if in_map && let Some(v) = line.strip_prefix("Rss:") {
            kb += v.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap();
        }
    }
    kb
}

fn count(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["kind"] == kind).count()
}

/// The loss a log states: its `end` record's total and its `loss` records.
fn lost(events: &[Value]) -> (u64, usize) {
    let end = events.iter().rev().find(|e| e["kind"] == "end").and_then(|e| e["lost"].as_u64());
    (end.expect("the log has an end record"), count(events, "loss"))
}

/// `sh -c` script: EXECS execs of /bin/true, then netprobe's CONNECTS connects to `to`.
fn storm_script(to: &str) -> String {
    let connects = vec![format!("tcp {to}"); CONNECTS].join(" ");
    format!("i=0; while [ $i -lt {EXECS} ]; do /bin/true; i=$((i+1)); done; {} {connects}", netprobe_bin().display())
}

#[test]
fn a_burst_the_stopped_daemon_does_not_read_fits_its_default_ring_and_all_of_it_is_logged() {
    if !root_or_skip() {
        return;
    }
    let var = format!("WDT_RING_JOB_{}", std::process::id());
    let dir = TempDir::new("watcher-ring-daemon");
    let config = dir.join("daemon.yaml");
    std::fs::write(
        &config,
        format!(
            "version: 1\nsocket: run/watcher.sock\nlog_dir: logs\njob_end_grace: 300ms\njobs:\n  id_env: [{var}]\n"
        ),
    )
    .unwrap();
    let listener = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let d = Daemon::start(&config, &dir, &var);
    let pid = d.child.as_ref().unwrap().id();
    // The default ring is 8M: 16 MiB mapped (the data pages twice) plus its header pages.
    let ring_kb = ring_mapping_kb(pid);
    assert!((16 * 1024..16 * 1024 + 64).contains(&ring_kb), "ring mapping {ring_kb} kB");

    // The job's first process waits on a fifo, so the burst starts only once the daemon is
    // stopped (and the job is set up: its first exec is held until it is).
    let fifo: PathBuf = dir.join("go");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let script = format!("read _ < {}; {}", fifo.display(), storm_script(&listener.addr().to_string()));
    let job = Command::new("sh")
        .args(["-c", &script])
        .env(&var, "burst")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let want = format!("{var}=burst");
    assert!(
        wait_until(Duration::from_secs(20), || d.status()["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == want && j["state"] == "running")),
        "the job did not start: {}",
        d.log()
    );
    // SAFETY: signals to our own child (the daemon).
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    let resume = scopeguard(pid);
    std::fs::OpenOptions::new().write(true).open(&fifo).unwrap().write_all(b"go\n").unwrap();
    let out = job.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(listener.connections(), CONNECTS as u64);
    drop(resume); // SIGCONT: now it reads the ring, BATCH records at a time.

    let events = d.job_events(&d.ended("burst"));
    let execs = events.iter().filter(|e| e["kind"] == "exec" && e["filename"] == "/bin/true").count();
    assert_eq!(execs, EXECS, "every exec of the burst is in the log");
    assert!(count(&events, "connect") >= CONNECTS, "{} connect records", count(&events, "connect"));
    assert_eq!(lost(&events), (0, 0), "nothing of the burst was lost");
}

/// SIGCONT to `pid` when dropped (also when an assertion fails while it is stopped).
fn scopeguard(pid: u32) -> impl Drop {
    struct Cont(u32);
    impl Drop for Cont {
        fn drop(&mut self) {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
        }
    }
    Cont(pid)
}

#[test]
fn standalone_run_with_its_default_ring_loses_nothing_in_an_exec_and_connect_storm() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("watcher-ring-run");
    let listener = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let log = dir.join("storm.jsonl");
    let out = Command::new(watcher_bin())
        .args(["run", "--quiet", "--log"])
        .arg(&log)
        .args(["--", "sh", "-c", &storm_script(&listener.addr().to_string())])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events = read_jsonl(&log);
    let execs = events.iter().filter(|e| e["kind"] == "exec" && e["filename"] == "/bin/true").count();
    assert_eq!(execs, EXECS);
    assert_eq!(listener.connections(), CONNECTS as u64);
    assert!(count(&events, "connect") >= CONNECTS, "{} connect records", count(&events, "connect"));
    assert_eq!(lost(&events), (0, 0));
}
