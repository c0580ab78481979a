//! The guard in daemon mode: what a daemon job writes about a command line that carries a
//! protected value. Every destination is on loopback or a path the test creates.
use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use watcher_tests::{TempDir, read_jsonl, root_or_skip, wait_until, watcher_bin};

struct Daemon {
    child: Option<Child>,
    stderr: PathBuf,
    socket: PathBuf,
    /// This test's job variable: tests run side by side, and a daemon takes every process
    /// that carries one of its job variables, whoever started it.
    var: String,
}

impl Daemon {
    fn start(config: &Path, dir: &TempDir, var: &str) -> Daemon {
        let stderr = dir.join("daemon.stderr");
        let child = Command::new(watcher_bin())
            .args(["daemon", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let d = Daemon { child: Some(child), stderr, socket: dir.join("run/watcher.sock"), var: var.to_string() };
        assert!(
            wait_until(Duration::from_secs(30), || d.log().contains("watcher daemon started")),
            "daemon did not start: {}",
            d.log()
        );
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn status(&self) -> Value {
        let out =
            Command::new(watcher_bin()).args(["status", "--json", "--socket"]).arg(&self.socket).output().unwrap();
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The ended job of `VAR=id`.
    fn ended(&self, id: &str) -> Value {
        let mut last = Value::Null;
        let find = |st: &Value| {
            st["jobs"].as_array().unwrap().iter().find(|j| j["id"] == format!("{}={id}", self.var)).cloned()
        };
        let ok = wait_until(Duration::from_secs(20), || {
            last = self.status();
            find(&last).is_some_and(|j| j["state"] == "ended")
        });
        assert!(ok, "job {id} did not end: {last:#}\n{}", self.log());
        find(&last).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn config(dir: &TempDir, mode: &str, var: &str) -> PathBuf {
    std::fs::write(
        dir.join("p.yaml"),
        format!(
            "version: 1\npipeline: g2\nmode: {mode}\negress:\n  loopback: false\n  allow: []\ndns:\n  resolvers: []\n"
        ),
    )
    .unwrap();
    let config = dir.join("daemon.yaml");
    std::fs::write(
        &config,
        format!(
            "version: 1\nsocket: run/watcher.sock\nlog_dir: logs\njob_end_grace: 300ms\n\
             jobs:\n  id_env: [{var}]\n  pipeline_env: [WDT_REPO]\n\
             pipelines:\n  - match: \"acme/g2\"\n    policy: p.yaml\n"
        ),
    )
    .unwrap();
    config
}

/// A value that looks like a secret (40 letters and digits after `prefix`).
fn fake_secret(prefix: &str) -> String {
    let mut b = [0u8; 64];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut b).unwrap();
    let abc = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let tail: String = b.iter().map(|x| abc[*x as usize % abc.len()] as char).take(40 - prefix.len()).collect();
    format!("{prefix}{tail}")
}

fn redacted(v: &str) -> String {
    format!("{}…({} chars)", &v[..2], v.chars().count())
}

/// The job's first command line holds the value itself: its `start` record (written before
/// any other event of the job) carries it redacted, and no file the daemon writes has it.
#[test]
fn a_daemon_jobs_start_record_never_holds_a_protected_value() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("watcher-g2-start");
    let var = "WDT_G2_START_ID";
    let config = config(&dir, "audit", var);
    let d = Daemon::start(&config, &dir, var);
    let v = fake_secret("Ss");
    let hex: String = v.bytes().map(|b| format!("{b:02x}")).collect();
    let script = format!(": {v} {hex}; /bin/true");
    let out = Command::new("sh")
        .args(["-c", &script])
        .env(var, "start")
        .env("WDT_REPO", "acme/g2")
        .env("AWS_SECRET_ACCESS_KEY", &v)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let job = d.ended("start");
    let log = dir.join(job["log"].as_str().unwrap());
    let text = std::fs::read_to_string(&log).unwrap();
    let events = read_jsonl(&log);
    let start = &events[0];
    assert_eq!(start["kind"], "start", "{text}");
    let command: Vec<String> =
        start["command"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
    assert_eq!(command.len(), 3, "{start}");
    assert!(command[2].contains(&redacted(&v)), "the value is replaced in the start record: {start}");
    assert!(!text.contains(&v) && !text.to_ascii_lowercase().contains(&hex), "a value is in the job's log:\n{text}");
    assert!(!d.log().contains(&v), "a value is in the daemon's output");
    for e in std::fs::read_dir(dir.join("logs")).unwrap().flatten() {
        let t = std::fs::read_to_string(e.path()).unwrap_or_default();
        assert!(!t.contains(&v), "a value is in {}", e.path().display());
    }
}

fn pin_dirs() -> Vec<String> {
    std::fs::read_dir("/sys/fs/bpf/watcher")
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// SIGKILL of the daemon in the middle of an enforced job: the job's process that connects
/// afterwards is killed at its connect and nothing reaches the (loopback, never allowed)
/// destination; the next daemon start removes the dead daemon's pinned programs.
#[test]
fn sigkill_of_the_daemon_leaves_its_jobs_denied_and_killed_and_the_next_start_cleans_up() {
    if !root_or_skip() {
        return;
    }
    // No other test may start a watcher (which removes what a dead one left) meanwhile.
    let _window = watcher_tests::hard_kill_window();
    let dir = TempDir::new("watcher-g2-kill");
    let var = "WDT_G2_KILL_ID";
    let cfg = config(&dir, "enforce", var);
    let mut d = Daemon::start(&cfg, &dir, var);
    let daemon_pid = d.child.as_ref().unwrap().id();
    let l = watcher_tests::Listener::start("127.0.0.2:0".parse().unwrap()).unwrap();
    let np = watcher_tests::netprobe_bin().display().to_string();
    let (ready, pidfile) = (dir.join("ready"), dir.join("after.pid"));
    // The job: a process started while the daemon lives that connects 1.5 s later, when the
    // daemon is gone.
    let script = format!(
        "{np} sleep 1500 write-pid {pf} tcp {addr} & sleep 0.5; touch {ready}; wait",
        ready = ready.display(),
        pf = pidfile.display(),
        addr = l.addr()
    );
    let mut job = Command::new("sh")
        .args(["-c", &script])
        .env(var, "kill")
        .env("WDT_REPO", "acme/g2")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(20), || ready.exists()), "the job did not start: {}", d.log());
    let mut child = d.child.take().unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    let _ = job.wait();
    assert!(wait_until(Duration::from_secs(5), || pidfile.exists()), "the job's process did not run on");
    let bg: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !Path::new(&format!("/proc/{bg}")).exists()),
        "the job's process outlived the killed daemon"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(l.connections(), 0, "a connect after the daemon was killed reached its host");
    assert!(
        pin_dirs().iter().any(|p| p.starts_with(&format!("daemon-{daemon_pid}-"))),
        "the killed daemon's programs stayed attached (pinned): {:?}",
        pin_dirs()
    );
    // The next daemon removes them.
    let dir2 = TempDir::new("watcher-g2-kill2");
    let config2 = config(&dir2, "enforce", var);
    let d2 = Daemon::start(&config2, &dir2, var);
    assert!(
        !pin_dirs().iter().any(|p| p.starts_with(&format!("daemon-{daemon_pid}-"))),
        "{:?}\n{}",
        pin_dirs(),
        d2.log()
    );
    drop(d2);
}

/// In a daemon job as under `watcher run`: a raw ICMP socket opened by an install script is
/// killed in enforce mode (its job's log carries the alert), flagged in audit mode.
#[test]
fn a_raw_socket_in_a_daemon_jobs_install_script_is_killed_in_enforce_mode() {
    if !root_or_skip() {
        return;
    }
    let np = watcher_tests::netprobe_bin().display().to_string();
    for mode in ["audit", "enforce"] {
        let dir = TempDir::new(&format!("watcher-g2-raw-{mode}"));
        let var = "WDT_G2_RAW_ID";
        let cfg = config(&dir, mode, var);
        let d = Daemon::start(&cfg, &dir, var);
        let marker = format!("g2-{}-{mode}", std::process::id());
        let out = Command::new("sh")
            .args(["-c", &format!("{np} icmp 127.0.0.2 {marker}")])
            .env(var, mode)
            .env("WDT_REPO", "acme/g2")
            .env("npm_lifecycle_event", "postinstall")
            .env("npm_package_name", "evil-pkg")
            .env("npm_package_version", "6.6.6")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let job = d.ended(mode);
        let events = read_jsonl(dir.join(job["log"].as_str().unwrap()));
        let raw: Vec<&Value> = events.iter().filter(|e| e["kind"] == "alert" && e["rule"] == "raw-socket").collect();
        assert_eq!(raw.len(), 1, "{mode}: {events:#?}\n{}", d.log());
        if mode == "enforce" {
            assert_eq!(raw[0]["action"], "kill", "{mode}");
            assert!(out.status.code() != Some(0), "{mode}: the install script was not killed");
        } else {
            assert_eq!(raw[0]["action"], "flag", "{mode}");
            assert_eq!(out.status.code(), Some(0), "{mode}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}
