//! Two concurrent `watcher run`s and a running daemon with a job of its own keep their events
//! apart: every program is attached at the cgroup v2 root by each agent (multi-attach), and
//! membership is each agent's own (its WATCHED table; the daemon's per-job tables). Each
//! step execs programs with its own marker and connects to its own listener, all at the same
//! time; each log must hold exactly its own step's processes and connections.
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use watcher_tests::{Listener, TempDir, netprobe_bin, read_jsonl, root_or_skip, wait_until, watcher_bin};

/// The daemon, killed (and its held jobs continued) on drop, whatever the test did.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        for _ in 0..100 {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A step's script: 15 execs of `/bin/echo MARK-<name>-<i>` and one connect to `port`,
/// spread over about a second so the three steps overlap.
fn script(name: &str, port: u16) -> String {
    let np = netprobe_bin().display().to_string();
    format!(
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do /bin/echo MARK-{name}-$i >/dev/null; sleep 0.06; done; \
         {np} tcp 127.0.0.1:{port} >/dev/null 2>&1; true"
    )
}

/// The markers and listener ports a log's events show.
fn seen(events: &[Value]) -> (Vec<String>, Vec<u64>) {
    let mut marks: Vec<String> = events
        .iter()
        .filter(|e| e["kind"] == "exec")
        .flat_map(|e| e["argv"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().filter(|s| s.starts_with("MARK-")).map(|s| s.split('-').nth(1).unwrap().to_string()))
        .collect();
    marks.sort();
    marks.dedup();
    let mut ports: Vec<u64> =
        events.iter().filter(|e| e["kind"] == "connect").filter_map(|e| e["dport"].as_u64()).collect();
    ports.sort();
    ports.dedup();
    (marks, ports)
}

#[test]
fn two_concurrent_runs_and_a_daemon_job_keep_their_events_apart() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("watcher-isolation");
    let listeners: Vec<Listener> = (0..3).map(|_| Listener::start("127.0.0.1:0".parse().unwrap()).unwrap()).collect();
    let port = |i: usize| listeners[i].addr().port();
    let policy = |i: usize| {
        let p = dir.join(format!("p{i}.yaml"));
        std::fs::write(
            &p,
            format!(
                "version: 1\npipeline: iso{i}\nmode: audit\negress:\n  loopback: false\n  allow:\n    - ip: 127.0.0.1\n      ports: [{}]\n",
                port(i)
            ),
        )
        .unwrap();
        p
    };
    let (pa, pb, pc) = (policy(0), policy(1), policy(2));

    // The daemon: jobs are processes carrying WISO_RUN_ID (a test-only name).
    let config = dir.join("daemon.yaml");
    std::fs::write(
        &config,
        format!(
            "version: 1\nsocket: run/watcher.sock\nlog_dir: logs\njob_end_grace: 300ms\n\
             jobs:\n  id_env: [WISO_RUN_ID]\n  pipeline_env: [WISO_REPO]\n\
             pipelines:\n  - match: \"*\"\n    policy: {}\n",
            pc.display()
        ),
    )
    .unwrap();
    let stderr = dir.join("daemon.stderr");
    let daemon = Daemon(
        Command::new(watcher_bin())
            .args(["daemon", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap(),
    );
    let daemon_log = || std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(30), || daemon_log().contains("watcher daemon started")),
        "{}",
        daemon_log()
    );

    // All three at once.
    let run = |name: &str, policy: &Path, port: u16| {
        Command::new(watcher_bin())
            .args(["run", "--quiet", "--policy"])
            .arg(policy)
            .arg("--log")
            .arg(dir.join(format!("{name}.jsonl")))
            .args(["--", "sh", "-c", &script(name, port)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = run("A", &pa, port(0));
    let b = run("B", &pb, port(1));
    let job_id = format!("{}77", std::process::id());
    let c = Command::new("sh")
        .args(["-c", &script("C", port(2))])
        .env("WISO_RUN_ID", &job_id)
        .env("WISO_REPO", "acme/iso")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let oc = c.wait_with_output().unwrap();
    assert!(oa.status.success(), "A: {}", String::from_utf8_lossy(&oa.stderr));
    assert!(ob.status.success(), "B: {}", String::from_utf8_lossy(&ob.stderr));
    assert!(oc.status.success(), "C");
    // Every step really connected, once.
    for (i, l) in listeners.iter().enumerate() {
        assert_eq!(l.connections(), 1, "listener {i}");
    }

    // The daemon's job log, once the job has ended.
    let job_log = dir.join(format!("logs/acme_iso_{job_id}.jsonl"));
    let ended = || job_log.exists() && read_jsonl(&job_log).last().is_some_and(|e: &Value| e["kind"] == "end");
    assert!(wait_until(Duration::from_secs(20), ended), "the daemon job did not end: {}", daemon_log());
    drop(daemon);

    let logs = [read_jsonl(dir.join("A.jsonl")), read_jsonl(dir.join("B.jsonl")), read_jsonl(&job_log)];
    for (i, (events, name)) in logs.iter().zip(["A", "B", "C"]).enumerate() {
        let (marks, ports) = seen(events);
        assert_eq!(marks, vec![name.to_string()], "{name}'s log holds other steps' execs");
        assert_eq!(ports, vec![port(i) as u64], "{name}'s log holds other steps' connections");
        let execs = events
            .iter()
            .filter(|e| e["kind"] == "exec" && e["argv"][1].as_str().is_some_and(|a| a.starts_with("MARK-")))
            .count();
        assert_eq!(execs, 15, "{name}: every exec of its own, once");
        assert!(events.iter().all(|e| e["kind"] != "alert"), "{name}: {events:#?}");
    }
    // No pid is in two logs.
    let pids = |events: &[Value]| -> std::collections::BTreeSet<u64> {
        events.iter().filter(|e| e["kind"] == "exec").filter_map(|e| e["pid"].as_u64()).collect()
    };
    let (x, y, z) = (pids(&logs[0]), pids(&logs[1]), pids(&logs[2]));
    assert!(x.is_disjoint(&y) && x.is_disjoint(&z) && y.is_disjoint(&z), "{x:?} {y:?} {z:?}");
}
