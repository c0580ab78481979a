//! What an install script running as root tries in order to get around enforcement: moving
//! to another cgroup, killing watcher, ICMP from a raw socket, a packet socket, a local
//! deputy's unix socket, signals to watcher. Each is tried in audit mode (flagged, let
//! through) and in enforce mode (blocked in the kernel: the peer records nothing, exit 77).
//! Every destination is on loopback (127.0.0.2 is never allowed by these policies) or a path
//! the test creates.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use watcher_tests::{
    Listener, netprobe_bin, read_jsonl, root_or_skip,
    sinks::{IcmpSink, TestCgroup, UnixSink, cgroup_root},
    wait_until, watcher_bin,
};

const DENIED: &str = "127.0.0.2";

fn policy(mode: &str) -> String {
    format!(
        "version: 1\npipeline: guard\nmode: {mode}\negress:\n  loopback: false\n  allow: []\ndns:\n  resolvers: []\n"
    )
}

struct Step {
    code: Option<i32>,
    err: String,
    events: Vec<Value>,
}

fn run(mode: &str, script: &str, install_script: bool) -> Step {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(&p, policy(mode)).unwrap();
    let log = dir.path().join("e.jsonl");
    let mut cmd = Command::new(watcher_bin());
    cmd.args(["run", "--policy"]).arg(&p).arg("--log").arg(&log).args(["--", "sh", "-c", script]);
    if install_script {
        cmd.env("npm_lifecycle_event", "postinstall")
            .env("npm_package_name", "evil-pkg")
            .env("npm_package_version", "6.6.6");
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    Step { code: out.status.code(), err: String::from_utf8_lossy(&out.stderr).into_owned(), events: read_jsonl(&log) }
}

fn alerts<'a>(events: &'a [Value], rule: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == "alert" && e["rule"] == rule).collect()
}

#[test]
fn a_step_that_moves_itself_to_another_cgroup_stays_in_its_job() {
    if !root_or_skip() {
        return;
    }
    let sibling = TestCgroup::new("sibling");
    let np = netprobe_bin().display().to_string();
    for target in [cgroup_root(), sibling.path().to_path_buf()] {
        for mode in ["audit", "enforce"] {
            let l = Listener::start(format!("{DENIED}:0").parse().unwrap()).unwrap();
            let script = format!("{np} cgroup-move {} tcp {}", target.display(), l.addr());
            let s = run(mode, &script, false);
            let what = format!("{mode} after a move to {}: {}", target.display(), s.err);
            let egress = alerts(&s.events, "egress-denied");
            assert_eq!(egress.len(), 1, "{what}");
            if mode == "enforce" {
                assert_eq!(s.code, Some(77), "{what}");
                assert_eq!(l.connections(), 0, "{what}");
                assert_eq!(egress[0]["action"], "deny", "{what}");
            } else {
                assert_eq!(s.code, Some(0), "{what}");
                assert!(wait_until(Duration::from_secs(2), || l.connections() == 1), "{what}");
                assert_eq!(egress[0]["action"], "flag", "{what}");
            }
        }
    }
}

#[test]
fn icmp_from_a_raw_socket_is_killed_in_an_install_script_and_dropped_elsewhere() {
    if !root_or_skip() {
        return;
    }
    let np = netprobe_bin().display().to_string();
    for (mode, install) in [("audit", true), ("enforce", true), ("enforce", false), ("audit", false)] {
        let sink = IcmpSink::new();
        let marker = format!("exfil-{}-{mode}-{install}", std::process::id());
        let s = run(mode, &format!("{np} icmp {DENIED} {marker}"), install);
        let what = format!("{mode}, install script {install}: {}", s.err);
        let arrived = sink.saw(marker.as_bytes(), Duration::from_millis(700));
        let socket =
            s.events.iter().find(|e| e["kind"] == "socket").unwrap_or_else(|| panic!("no socket event: {what}"));
        assert_eq!(socket["type"], "raw", "{what}");
        match (mode, install) {
            ("audit", true) => {
                assert!(arrived, "{what}");
                assert_eq!(alerts(&s.events, "raw-socket")[0]["action"], "flag", "{what}");
                assert_eq!(s.code, Some(0), "{what}");
            }
            ("enforce", true) => {
                assert!(!arrived, "the ICMP payload left in enforce mode: {what}");
                assert_eq!(socket["killed"], true, "{what}");
                let a = alerts(&s.events, "raw-socket");
                assert_eq!(a[0]["action"], "kill", "{what}");
                assert_eq!(a[0]["package"], "npm:evil-pkg@6.6.6 (postinstall)", "{what}");
                assert_eq!(s.code, Some(77), "{what}");
            }
            ("enforce", false) => {
                // Not an install script: the socket may be opened, its packets are judged.
                assert!(!arrived, "the packet backstop let ICMP to a denied host out: {what}");
                let e = alerts(&s.events, "egress-denied");
                assert_eq!(e.len(), 1, "{what}");
                assert_eq!(e[0]["action"], "deny", "{what}");
                let c = s.events.iter().find(|e| e["kind"] == "connect").unwrap();
                assert_eq!((c["op"].as_str(), c["proto"].as_str()), (Some("packet"), Some("icmp")), "{what}");
                assert_eq!(s.code, Some(77), "{what}");
            }
            _ => {
                assert!(arrived, "{what}");
                assert_eq!(alerts(&s.events, "egress-denied")[0]["action"], "flag", "{what}");
                assert!(alerts(&s.events, "raw-socket").is_empty(), "{what}");
            }
        }
    }
}

/// The backstop knows a socket's job from the socket's own storage: no number of other sockets
/// makes it forget. (Owners were kept in an LRU map of 65,536 sockets: 100,000 sockets opened
/// and closed pushed the raw socket's owner out, and its ICMP then left unjudged, the run clean.)
#[test]
fn a_flood_of_sockets_does_not_make_the_backstop_forget_a_raw_socket() {
    if !root_or_skip() {
        return;
    }
    let np = netprobe_bin().display().to_string();
    for mode in ["enforce", "audit"] {
        let sink = IcmpSink::new();
        let marker = format!("exfil-flood-{}-{mode}", std::process::id());
        let s = run(mode, &format!("{np} icmp-after-sockets {DENIED} {marker} 100000"), false);
        let what = format!("{mode}: {}", s.err);
        let arrived = sink.saw(marker.as_bytes(), Duration::from_millis(700));
        let e = alerts(&s.events, "egress-denied");
        assert_eq!(e.len(), 1, "{what}");
        let c = s.events.iter().find(|e| e["kind"] == "connect").unwrap_or_else(|| panic!("no connect: {what}"));
        assert_eq!((c["op"].as_str(), c["proto"].as_str()), (Some("packet"), Some("icmp")), "{what}");
        if mode == "enforce" {
            assert!(!arrived, "the ICMP payload left in enforce mode after the flood: {what}");
            assert_eq!(e[0]["action"], "deny", "{what}");
            assert_eq!(s.code, Some(77), "{what}");
        } else {
            assert!(arrived, "{what}");
            assert_eq!(e[0]["action"], "flag", "{what}");
            assert_eq!(s.code, Some(0), "{what}");
        }
    }
}

#[test]
fn a_packet_socket_from_an_install_script_is_killed_in_enforce_mode() {
    if !root_or_skip() {
        return;
    }
    let np = netprobe_bin().display().to_string();
    let audit = run("audit", &format!("{np} packet-socket"), true);
    assert_eq!(alerts(&audit.events, "raw-socket")[0]["action"], "flag", "{}", audit.err);
    assert_eq!(audit.code, Some(0), "{}", audit.err);
    let enforce = run("enforce", &format!("{np} packet-socket; echo after >&2"), true);
    let a = alerts(&enforce.events, "raw-socket");
    assert_eq!(a[0]["action"], "kill", "{}", enforce.err);
    let socket = enforce.events.iter().find(|e| e["kind"] == "socket").unwrap();
    assert_eq!(socket["family"], "packet");
    assert_eq!(enforce.code, Some(77), "{}", enforce.err);
}

#[test]
fn an_install_script_connecting_to_a_local_deputy_is_killed_before_it_sends() {
    if !root_or_skip() {
        return;
    }
    let path = Path::new("/run/buildkit/buildkitd.sock");
    let Some(sink) = UnixSink::at(path) else {
        eprintln!("skipped: {} exists (a real buildkitd)", path.display());
        return;
    };
    let np = netprobe_bin().display().to_string();
    let audit = run("audit", &format!("{np} unix {}", path.display()), true);
    assert_eq!(alerts(&audit.events, "local-deputy")[0]["action"], "flag", "{}", audit.err);
    assert!(wait_until(Duration::from_secs(3), || sink.received() == 6), "{}", audit.err);
    sink.clear();
    let enforce = run("enforce", &format!("{np} unix {}", path.display()), true);
    assert_eq!(alerts(&enforce.events, "local-deputy")[0]["action"], "kill", "{}", enforce.err);
    assert_eq!(enforce.code, Some(77), "{}", enforce.err);
    std::thread::sleep(Duration::from_millis(300));
    assert!(sink.received() == 0, "the deputy received data in enforce mode");
    // The step itself (not an install script) may use its daemon: flagged nowhere.
    let step = run("enforce", &format!("{np} unix {}", path.display()), false);
    assert!(alerts(&step.events, "local-deputy").is_empty(), "{}", step.err);
    assert!(sink.connections() >= 2);
}

#[test]
fn a_signal_from_the_step_to_watcher_is_tamper() {
    if !root_or_skip() {
        return;
    }
    let np = netprobe_bin().display().to_string();
    // SIGUSR2 (12): watcher forwards it to the command, so the step ends either way.
    let s = run("enforce", &format!("{np} signal $PPID 12 sleep 200"), true);
    let t = alerts(&s.events, "tamper");
    assert_eq!(t.len(), 1, "{}", s.err);
    assert_eq!(t[0]["action"], "kill", "{}", s.err);
    assert_eq!(t[0]["severity"], "critical");
    assert_eq!(s.code, Some(77), "{}", s.err);
    let a = run("audit", &format!("{np} signal $PPID 12 sleep 200"), true);
    assert_eq!(alerts(&a.events, "tamper")[0]["action"], "flag", "{}", a.err);
}

fn pin_dirs() -> Vec<String> {
    std::fs::read_dir("/sys/fs/bpf/watcher")
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn sigkill_of_watcher_leaves_its_step_denied_and_killed_and_the_next_start_cleans_up() {
    if !root_or_skip() {
        return;
    }
    // No other test may start a watcher (which removes what a dead one left) meanwhile.
    let _window = watcher_tests::hard_kill_window();
    let np = netprobe_bin().display().to_string();
    for mode in ["audit", "enforce"] {
        let l = Listener::start(format!("{DENIED}:0").parse().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.yaml");
        std::fs::write(&p, policy(mode)).unwrap();
        let pidfile = dir.path().join("after.pid");
        // A background process (started while watcher lives) connects after watcher is gone;
        // the shell kills watcher in between.
        let script = format!(
            "{np} sleep 900 write-pid {pf} tcp {addr} & sleep 0.3; kill -9 $PPID; wait",
            pf = pidfile.display(),
            addr = l.addr()
        );
        let child = Command::new(watcher_bin())
            .args(["run", "--quiet", "--policy"])
            .arg(&p)
            .args(["--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let watcher_pid = child.id();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), None, "watcher was not killed ({mode})");
        // The background process ran on after watcher died, and was killed at its connect.
        assert!(wait_until(Duration::from_secs(5), || pidfile.exists()), "{mode}");
        let bg: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        assert!(
            wait_until(Duration::from_secs(5), || !Path::new(&format!("/proc/{bg}")).exists()),
            "{mode}: the step's process outlived its killed watcher"
        );
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(l.connections(), 0, "{mode}: a connect after watcher was killed reached its host");
        assert!(
            pin_dirs().iter().any(|d| d.starts_with(&format!("run-{watcher_pid}-"))),
            "{mode}: the killed watcher's pins are gone: {:?}",
            pin_dirs()
        );
        // The next start removes the dead agent's programs and its cgroup.
        let next = Command::new(watcher_bin()).args(["run", "--quiet", "--", "true"]).output().unwrap();
        let err = String::from_utf8_lossy(&next.stderr);
        assert_eq!(next.status.code(), Some(0), "{err}");
        assert!(err.contains(&format!("a previous watcher (pid {watcher_pid}) was killed")), "{err}");
        assert!(!pin_dirs().iter().any(|d| d.contains(&format!("-{watcher_pid}-"))), "{:?}", pin_dirs());
        assert!(!cgroup_root().join(format!("watcher-run-{watcher_pid}")).exists());
    }
}

#[test]
fn loopback_is_not_a_hole_under_the_shipped_policies() {
    if !root_or_skip() {
        return;
    }
    let np = netprobe_bin().display().to_string();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    for name in ["npm.yaml", "pip.yaml", "cargo.yaml"] {
        // A local service (a forward proxy, a database, a daemon's TCP port) on 127.0.0.1.
        let l = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("e.jsonl");
        let out = Command::new(watcher_bin())
            .args(["run", "--quiet", "--policy"])
            .arg(policies.join(name))
            .arg("--log")
            .arg(&log)
            .args(["--", &np, "tcp", &l.addr().to_string()])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let events = read_jsonl(&log);
        assert_eq!(out.status.code(), Some(77), "{name}: {err}");
        assert_eq!(l.connections(), 0, "{name}: a loopback service was reached: {err}");
        assert_eq!(alerts(&events, "egress-denied")[0]["action"], "deny", "{name}");
    }
}
