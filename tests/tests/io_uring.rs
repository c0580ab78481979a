//! Connects submitted through io_uring (IORING_OP_CONNECT) make no connect(2) syscall, so
//! syscall tracepoints never see them; the cgroup connect4/connect6 hooks do. These tests
//! prove such connects are logged, and denied with EPERM in enforce mode.
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use watcher_tests::{Listener, netprobe_bin, read_jsonl, root_or_skip, watcher_bin};

const DENY_LOOPBACK: &str = "version: 1\npipeline: t\nmode: enforce\negress:\n  loopback: false\n";

/// `watcher run --quiet [--policy POLICY] --log LOG -- netprobe uring-tcp ADDR`.
fn run_uring(policy: Option<&str>, addr: &str) -> (Output, Vec<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("e.jsonl");
    let mut cmd = Command::new(watcher_bin());
    cmd.args(["run", "--quiet"]);
    if let Some(policy) = policy {
        let p = dir.path().join("p.yaml");
        std::fs::write(&p, policy).unwrap();
        cmd.arg("--policy").arg(p);
    }
    cmd.arg("--log").arg(&log).arg("--").arg(netprobe_bin()).args(["uring-tcp", addr]);
    let out = cmd.stdin(Stdio::null()).output().expect("running watcher");
    let events = if log.exists() { read_jsonl(&log) } else { vec![] };
    (out, events)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `connect` events to `ip`:`port`.
fn connects_to<'a>(events: &'a [Value], ip: &str, port: u16) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["kind"] == "connect" && e["daddr"] == ip && e["dport"].as_u64() == Some(port as u64))
        .collect()
}

fn strace_available() -> bool {
    Command::new("which")
        .arg("strace")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs `netprobe ARGS` under `strace -f` tracing connect(2) and the io_uring syscalls;
/// returns the trace file's text.
fn strace_netprobe(trace: &Path, args: &[&str]) -> String {
    let out = Command::new("strace")
        .args(["-f", "-e", "trace=connect,io_uring_setup,io_uring_enter", "-o"])
        .arg(trace)
        .arg(netprobe_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running strace");
    assert!(out.status.success(), "strace netprobe {args:?}: {}", stderr(&out));
    std::fs::read_to_string(trace).unwrap()
}

#[test]
fn io_uring_connect_is_logged_and_makes_no_connect_syscall() {
    if !root_or_skip() {
        return;
    }
    let l = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = l.addr().port();
    let addr = l.addr().to_string();
    let (out, events) = run_uring(None, &addr);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("connect "), "{err}");
    let c = connects_to(&events, "127.0.0.1", port);
    assert_eq!(c.len(), 1, "{:#?}", events.iter().filter(|e| e["kind"] == "connect").collect::<Vec<_>>());
    assert_eq!(c[0]["proto"], "tcp", "{}", c[0]);
    assert_eq!(c[0]["comm"], "netprobe", "{}", c[0]);
    assert_eq!(c[0]["allowed"], true, "{}", c[0]);
    assert_eq!(l.connections(), 1, "{err}");
    assert_eq!(l.payloads(), vec![b"hello\n".to_vec()]);

    // Evidence that the connect really went through io_uring: no connect(2) at all, but
    // io_uring_enter; and, as a control, the plain `tcp` action does show connect(2).
    if !strace_available() {
        eprintln!("note: strace is not installed; skipping the no-connect-syscall check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let uring = strace_netprobe(&dir.path().join("uring.trace"), &["uring-tcp", &addr]);
    assert!(!uring.contains("connect("), "a connect syscall was made:\n{uring}");
    assert!(uring.contains("io_uring_enter("), "no io_uring_enter:\n{uring}");
    let plain = strace_netprobe(&dir.path().join("plain.trace"), &["tcp", &addr]);
    assert!(plain.contains("connect("), "strace did not record the plain connect:\n{plain}");
    assert_eq!(l.connections(), 3);
}

fn assert_uring_connect_denied(listen: &str, daddr: &str) {
    let l = Listener::start(listen.parse().unwrap()).unwrap();
    let port = l.addr().port();
    let addr = l.addr().to_string();
    let (out, events) = run_uring(Some(DENY_LOOPBACK), &addr);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(77), "{err}");
    assert_eq!(l.connections(), 0, "{err}");
    assert!(err.contains(&format!("connect {addr}: Operation not permitted (EPERM)")), "{err}");
    let c = connects_to(&events, daddr, port);
    assert!(!c.is_empty(), "{:#?}", events.iter().filter(|e| e["kind"] == "connect").collect::<Vec<_>>());
    assert!(c.iter().all(|e| e["allowed"] == false && e["proto"] == "tcp"), "{c:#?}");
    let alert = events
        .iter()
        .find(|e| e["kind"] == "alert" && e["rule"] == "egress-denied")
        .unwrap_or_else(|| panic!("no egress-denied alert: {events:#?}"));
    assert_eq!(alert["action"], "deny", "{alert}");
}

#[test]
fn io_uring_connect_v4_is_denied_in_enforce_mode() {
    if !root_or_skip() {
        return;
    }
    assert_uring_connect_denied("127.0.0.1:0", "127.0.0.1");
}

#[test]
fn io_uring_connect_v6_is_denied_in_enforce_mode() {
    if !root_or_skip() {
        return;
    }
    assert_uring_connect_denied("[::1]:0", "::1");
}
