//! `watcher run --bench-disable` (the benchmark's switch, bench/src/guard.rs): hidden from the
//! help, taken from the command line only (a step's environment cannot set it), named in the
//! run's start record and on stderr, and really off: with `streams` off a protected value sent
//! on loopback is not found, with it on it is. Traffic stays on 127.0.0.1.
use std::process::{Command, Stdio};

use serde_json::Value;
use watcher_tests::{read_jsonl, root_or_skip, watcher_bin};

const SENDER: &str = r#"
import os, socket, threading
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(5)
def srv():
    c, _ = l.accept(); c.recv(4096); c.close()
t = threading.Thread(target=srv); t.start()
s = socket.create_connection(l.getsockname()); s.sendall(b"x=" + os.environ["AWS_SECRET_ACCESS_KEY"].encode()); s.close()
t.join()
"#;

#[test]
fn the_bench_switch_is_hidden_named_and_really_off() {
    if !root_or_skip() {
        return;
    }
    let help = Command::new(watcher_bin()).args(["run", "--help"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains("bench"), "the switch is in the help");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(
        &p,
        "version: 1\npipeline: bench-switch\nmode: audit\negress:\n  loopback: false\n  allow:\n    - cidr: 127.0.0.1/32\ndns:\n  resolvers: []\nsecrets:\n  env: [\"AWS_*\"]\n",
    )
    .unwrap();
    let sender = dir.path().join("s.py");
    std::fs::write(&sender, SENDER).unwrap();
    let log = dir.path().join("e.jsonl");
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(watcher_bin());
        c.args(["run", "--quiet", "--policy"]).arg(&p).arg("--log").arg(&log).args(extra);
        c.args(["--", "/usr/bin/python3"])
            .arg(&sender)
            .env("AWS_SECRET_ACCESS_KEY", "Qw3Er5Ty7Ui9Op1As2Df4Gh6Jk8Lz0Xc");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.stdin(Stdio::null()).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8_lossy(&out.stderr).into_owned(), read_jsonl(&log))
    };
    let found = |events: &[Value]| events.iter().filter(|e| e["rule"] == "secret-exfil").count();
    let bench = |events: &[Value]| {
        events[0]["sensors"].as_array().unwrap().iter().find(|s| s["name"] == "bench-disable").cloned()
    };
    // On (whatever the environment says: nothing reads a variable for it).
    let (_, on) = run(&[], &[("WATCHER_BENCH_DISABLE", "streams"), ("BENCH_DISABLE", "backstop,streams")]);
    assert_eq!(found(&on), 1, "{on:#?}");
    assert!(bench(&on).is_none());
    // Off, from the command line.
    let (err, off) = run(&["--bench-disable", "streams"], &[]);
    assert_eq!(found(&off), 0, "{off:#?}");
    let s = bench(&off).expect("the start record names what is off");
    assert_eq!(s["active"], false);
    assert!(s["detail"].as_str().unwrap().contains("stream scanning"), "{s}");
    assert!(!s["detail"].as_str().unwrap().contains("backstop"), "{s}");
    assert!(err.contains("--bench-disable"), "{err}");
}

/// `--bench-disable files` (the npm-files benchmark's switch) turns the file sensor off, and
/// only from the command line: an install script reading another process's environment is
/// credential access with the sensor on, unseen with it off; the start record says which.
#[test]
fn the_file_sensor_switch_is_named_and_really_off() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(
        &p,
        "version: 1\npipeline: bench-files\nmode: audit\negress:\n  loopback: false\n  allow: []\ndns:\n  resolvers: []\n",
    )
    .unwrap();
    let log = dir.path().join("e.jsonl");
    let mut outside = Command::new("sleep").arg("30").spawn().unwrap();
    let script = format!(
        "npm_lifecycle_event=postinstall npm_package_name=evil-pkg npm_package_version=6.6.6 \
         sh -c 'cat /proc/{}/environ >/dev/null'",
        outside.id()
    );
    let run = |extra: &[&str]| {
        let out = Command::new(watcher_bin())
            .args(["run", "--quiet", "--policy"])
            .arg(&p)
            .arg("--log")
            .arg(&log)
            .args(extra)
            .args(["--", "sh", "-c", &script])
            .env("WATCHER_BENCH_DISABLE", "files")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8_lossy(&out.stderr).into_owned(), read_jsonl(&log))
    };
    let found = |events: &[Value]| events.iter().filter(|e| e["rule"] == "credential-access").count();
    let sensor = |events: &[Value], name: &str| {
        events[0]["sensors"].as_array().unwrap().iter().find(|s| s["name"] == name).cloned()
    };
    let (_, on) = run(&[]);
    let (err, off) = run(&["--bench-disable", "files"]);
    let _ = outside.kill();
    let _ = outside.wait();
    assert_eq!(found(&on), 1, "{on:#?}");
    assert_eq!(sensor(&on, "files").unwrap()["active"], true);
    assert!(sensor(&on, "bench-disable").is_none());
    assert_eq!(found(&off), 0, "{off:#?}");
    assert_eq!(sensor(&off, "files").unwrap()["active"], false);
    let s = sensor(&off, "bench-disable").expect("the start record names what is off");
    assert!(s["detail"].as_str().unwrap().contains("file sensor"), "{s}");
    assert!(err.contains("the file sensor"), "{err}");
}
