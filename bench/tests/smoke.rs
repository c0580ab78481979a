//! The benchmarks must not rot: tiny storm, latency and npm runs (root) through the real binary.
//! Only that they run and report is checked; the figures themselves are never asserted.
use std::process::Command;

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("WATCHER_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        eprintln!("skipping: needs root");
        return false;
    }
    panic!("the bench smoke test needs root; set WATCHER_SKIP_ROOT_TESTS=1 to skip it explicitly");
}

fn bench(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_watcher-bench")).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "watcher-bench {args:?}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn tiny_storm_and_latency_runs_print_their_tables() {
    if !root() {
        return;
    }
    let s = bench(&["storm", "--count", "200", "--rounds", "1"]);
    for metric in ["exec storm", "connect storm", "events/s delivered", "events lost"] {
        assert!(s.contains(metric), "no {metric:?} in:\n{s}");
    }
    // Every exec and connect of the workload reached the log.
    assert!(s.contains("200 of 200"), "{s}");
    let l = bench(&["latency", "--alerts", "50"]);
    assert!(l.contains("kernel-to-alert p99") && l.contains("50 of 50"), "{l}");
}

#[test]
fn tiny_npm_run_prints_its_table() {
    if !root() {
        return;
    }
    let s = bench(&["npm", "--packages", "30", "--runs", "1"]);
    for metric in [
        "packages installed",
        "watched/bare (ratio of medians)",
        "daemon-backed/bare (ratio of medians)",
        "watched/bare paired by round",
        "daemon-backed/bare paired by round",
        "agent peak memory",
    ] {
        assert!(s.contains(metric), "no {metric:?} in:\n{s}");
    }
    // The generated graph installed, watched under the shipped policy: no alert, nothing lost.
    let line = s.lines().find(|l| l.contains("alerts / events lost")).unwrap();
    let t: Vec<&str> = line.split_whitespace().collect();
    // "... ALERTS / LOST  0 / 0" (value, then the target column)
    assert_eq!((t[t.len() - 6], t[t.len() - 4]), ("0", "0"), "{s}");
    // The same install through a daemon's step socket: no alert, nothing lost either.
    let line = s.lines().find(|l| l.contains("alerts / events lost, daemon-backed")).unwrap();
    let t: Vec<&str> = line.split_whitespace().collect();
    assert_eq!((t[t.len() - 6], t[t.len() - 4]), ("0", "0"), "{s}");
}

#[test]
fn tiny_daemon_backed_steps_run_prints_its_rows() {
    if !root() {
        return;
    }
    let s = bench(&["steps", "--step-runs", "2", "--step-jobs", "3", "--step-storm-count", "200"]);
    for metric in [
        "start+stop, daemon-backed",
        "daemon RSS with 3 concurrent jobs",
        "of which ring mapping",
        "<= 20 ms",
        "<= 40 MiB",
        "daemon peak RSS after the storms",
    ] {
        assert!(s.contains(metric), "no {metric:?} in:\n{s}");
    }
    // Both storms ran through a daemon job; every exec reached the job's log, nothing was lost.
    for kind in ["exec", "connect"] {
        let line = s.lines().find(|l| l.contains(&format!("{kind} storm through a daemon job"))).unwrap();
        assert!(line.contains(", 0 lost (met)"), "{s}");
    }
    assert!(s.contains("200 of 200, 0 lost"), "{s}");
}

#[test]
fn tiny_guard_run_prints_its_on_and_off_rows() {
    if !root() {
        return;
    }
    let s =
        bench(&["guard", "--guard-count", "200", "--guard-rounds", "1", "--guard-packages", "20", "--guard-runs", "1"]);
    for metric in ["watched, all on", "watched, both off", "backstop + stream scanning: all on / both off", "<= 1.02"] {
        assert!(s.contains(metric), "no {metric:?} in:\n{s}");
    }
    // Neither the storm (allowed, carrying a value it never sends) nor npm raised an alert.
    for line in s.lines().filter(|l| l.contains("alerts / events lost")) {
        assert!(line.contains("0 / 0  0 / 0"), "{s}");
    }
}

/// The file sensor's side-by-side comparison: both watched sides run, and each log's start
/// event says the sensor was on or off as asked (the bench fails otherwise).
#[test]
fn tiny_npm_files_run_prints_both_sides() {
    if !root() {
        return;
    }
    let s = bench(&["npm-files", "--packages", "20", "--runs", "1"]);
    for metric in ["watched/bare, sensor on", "watched/bare, sensor off", "on minus off", "file records per run"] {
        assert!(s.contains(metric), "no {metric:?} in:\n{s}");
    }
}
