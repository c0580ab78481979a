//! Root integration tests of `watcher run`: the real kernel programs, real commands, real
//! servers on loopback; assertions on the JSONL event log.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use watcher_tests::{DnsServer, Listener, netprobe_bin, read_jsonl, root_or_skip, watcher_bin};

struct Run {
    out: Output,
    events: Vec<Value>,
    _dir: tempfile::TempDir,
}

impl Run {
    fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    fn kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.events.iter().filter(move |e| e["kind"] == kind)
    }
    fn execs_of(&self, filename_suffix: &str) -> Vec<&Value> {
        self.kind("exec").filter(|e| e["filename"].as_str().unwrap_or("").ends_with(filename_suffix)).collect()
    }
    fn dns_for(&self, qname: &str) -> Vec<&Value> {
        self.kind("dns").filter(|e| e["qname"] == qname).collect()
    }
}

/// `watcher run --log LOG [extra] -- cmd...`
fn watch(extra: &[&str], cmd: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    let out = Command::new(watcher_bin())
        .arg("run")
        .arg("--log")
        .arg(&log)
        .args(extra)
        .arg("--")
        .args(cmd)
        .stdin(Stdio::null())
        .output()
        .expect("running watcher");
    let events = if log.exists() { read_jsonl(&log) } else { vec![] };
    Run { out, events, _dir: dir }
}

fn probe() -> String {
    netprobe_bin().display().to_string()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| !s.contains(") Z ")).unwrap_or(false)
}

/// The cgroup `watcher run` (process `pid`) would have created, wherever cgroup v2 is mounted.
fn cgroup_of_run(pid: u32) -> Vec<PathBuf> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(|r| Path::new(r).join(format!("watcher-run-{pid}")))
        .collect()
}

#[test]
fn exec_events_carry_full_argv_and_ancestry() {
    if !root_or_skip() {
        return;
    }
    let r = watch(&[], &["sh", "-c", "/bin/echo one 'two words' three >/dev/null; exit 0"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let start = r.kind("start").next().expect("a start record");
    assert_eq!(start["schema"], 1);
    let sh = r.execs_of("/sh").into_iter().next().expect("exec of sh").clone();
    assert_eq!(sh["ppid"].as_u64().unwrap(), start["pid"].as_u64().unwrap(), "the command's parent is watcher");
    let echo = r.execs_of("/echo");
    assert_eq!(echo.len(), 1, "{:#?}", r.events);
    assert_eq!(echo[0]["argv"], serde_json::json!(["/bin/echo", "one", "two words", "three"]));
    assert_eq!(echo[0]["ppid"], sh["pid"], "echo was forked by the shell");
    assert!(echo[0]["uid"].is_u64());
    assert!(echo[0]["ts"].as_str().unwrap().ends_with('Z'));
    // exit of echo is logged with its status
    let exit = r.kind("exit").find(|e| e["pid"] == echo[0]["pid"]).expect("exit of echo");
    assert_eq!(exit["exit_code"], 0);
    assert_eq!(r.kind("end").next().unwrap()["exit_code"], 0);
}

#[test]
fn long_argv_is_truncated_visibly() {
    if !root_or_skip() {
        return;
    }
    let many: Vec<String> = (0..60).map(|i| format!("arg{i}")).collect();
    let mut cmd = vec!["/bin/true"];
    cmd.extend(many.iter().map(String::as_str));
    let r = watch(&[], &cmd);
    let t = r.execs_of("/true");
    assert_eq!(t.len(), 1);
    assert_eq!(t[0]["argv_truncated"], true);
    assert_eq!(t[0]["argv"][1], "arg0");
}

#[test]
fn tcp_udp_ipv4_ipv6_connects_are_logged() {
    if !root_or_skip() {
        return;
    }
    let l4 = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let l6 = Listener::start("[::1]:0".parse().unwrap()).unwrap();
    let a4 = l4.addr().to_string();
    let a6 = l6.addr().to_string();
    let p = probe();
    let r = watch(
        &[],
        &[&p, "tcp", &a4, "tcp", &a6, "udp-connect", &a4, "udp-sendto", &a4, "udp-sendto", &a6, "udp-sendto", &a6],
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let conns: Vec<(String, u64, String, String)> = r
        .kind("connect")
        .map(|e| {
            (
                e["daddr"].as_str().unwrap().to_string(),
                e["dport"].as_u64().unwrap(),
                e["proto"].as_str().unwrap().to_string(),
                e["op"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let p4 = l4.addr().port() as u64;
    let p6 = l6.addr().port() as u64;
    for want in [
        ("127.0.0.1".to_string(), p4, "tcp".to_string(), "connect".to_string()),
        ("::1".to_string(), p6, "tcp".to_string(), "connect".to_string()),
        ("127.0.0.1".to_string(), p4, "udp".to_string(), "connect".to_string()),
        ("127.0.0.1".to_string(), p4, "udp".to_string(), "sendto".to_string()),
        ("::1".to_string(), p6, "udp".to_string(), "sendto".to_string()),
    ] {
        assert!(conns.contains(&want), "missing {want:?} in {conns:?}");
    }
    // The same unconnected UDP destination is reported once per process.
    let v6_sendto = conns.iter().filter(|c| c.0 == "::1" && c.3 == "sendto").count();
    assert_eq!(v6_sendto, 1, "{conns:?}");
    assert!(r.kind("connect").all(|e| e["allowed"] == true && e["comm"] == "netprobe"));
    assert!(l4.connections() >= 1 && l6.connections() >= 1);
}

#[test]
fn dns_queries_over_every_send_path_with_answers() {
    if !root_or_skip() {
        return;
    }
    let server_ip: IpAddr = "127.53.0.11".parse().unwrap();
    let dns = DnsServer::start(
        server_ip,
        vec![
            ("a.watcher.test".into(), vec!["198.18.0.1".parse().unwrap()]),
            ("b.watcher.test".into(), vec!["198.18.0.2".parse().unwrap(), "fd00:5741::2".parse().unwrap()]),
            ("c.watcher.test".into(), vec!["198.18.0.3".parse().unwrap()]),
            ("d.watcher.test".into(), vec!["198.18.0.4".parse().unwrap()]),
            ("e.watcher.test".into(), vec!["198.18.0.5".parse().unwrap()]),
            ("f.watcher.test".into(), vec!["198.18.0.6".parse().unwrap()]),
        ],
    )
    .unwrap();
    let s = server_ip.to_string();
    let p = probe();
    let r = watch(
        &[],
        &[
            &p,
            "dns-sendto",
            &s,
            "a.watcher.test",
            "A",
            "dns-sendmsg",
            &s,
            "b.watcher.test",
            "AAAA",
            "dns-sendmmsg",
            &s,
            "c.watcher.test,d.watcher.test",
            "A",
            "dns-connected",
            &s,
            "e.watcher.test",
            "A",
            "dns-tcp",
            &s,
            "f.watcher.test",
            "A",
            "dns-sendto",
            &s,
            "Missing.Watcher.Test",
            "TXT",
        ],
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    // The server really got them all (so the test would see a broken probe).
    assert_eq!(dns.queries().len(), 7, "{:?}", dns.queries());
    for (name, qtype, answer, proto) in [
        ("a.watcher.test", "A", Some("198.18.0.1"), "udp"),
        ("b.watcher.test", "AAAA", Some("fd00:5741::2"), "udp"),
        ("c.watcher.test", "A", Some("198.18.0.3"), "udp"),
        ("d.watcher.test", "A", Some("198.18.0.4"), "udp"),
        ("e.watcher.test", "A", Some("198.18.0.5"), "udp"),
        ("f.watcher.test", "A", Some("198.18.0.6"), "tcp"),
        ("Missing.Watcher.Test", "TXT", None, "udp"),
    ] {
        let d = r.dns_for(name);
        assert_eq!(d.len(), 1, "{name}: {:#?}", r.kind("dns").collect::<Vec<_>>());
        let d = d[0];
        assert_eq!(d["qtype"], qtype, "{d}");
        assert_eq!(d["server"], s, "{d}");
        assert_eq!(d["proto"], proto, "{d}");
        assert_eq!(d["comm"], "netprobe", "{d}");
        match answer {
            Some(ip) => {
                assert_eq!(d["rcode"], "NOERROR", "{d}");
                assert_eq!(d["answers"], serde_json::json!([ip]), "{d}");
            }
            None => {
                assert_eq!(d["rcode"], "NXDOMAIN", "{d}");
                assert_eq!(d["answers"], serde_json::json!([]), "{d}");
            }
        }
    }
}

#[test]
fn dns_over_ipv6_resolver() {
    if !root_or_skip() {
        return;
    }
    let dns = DnsServer::start(
        "::1".parse().unwrap(),
        vec![("six.watcher.test".into(), vec!["fd00:5741::6".parse().unwrap()])],
    )
    .unwrap();
    let p = probe();
    let r = watch(&[], &[&p, "dns-sendto", "::1", "six.watcher.test", "AAAA"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(dns.queries().len(), 1);
    let d = r.dns_for("six.watcher.test");
    assert_eq!(d.len(), 1, "{:#?}", r.events);
    assert_eq!(d[0]["server"], "::1");
    assert_eq!(d[0]["answers"], serde_json::json!(["fd00:5741::6"]));
}

#[test]
fn double_forked_daemon_is_watched_and_killed_at_the_end() {
    if !root_or_skip() {
        return;
    }
    let l = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("daemon.pid");
    let a = l.addr().to_string();
    let p = probe();
    // The command returns at once; its grandchild (setsid, reparented) connects a bit later
    // and then would sleep for a minute.
    let started = Instant::now();
    let dir2 = tempfile::tempdir().unwrap();
    let log = dir2.path().join("e.jsonl");
    let out = Command::new(watcher_bin())
        .args(["run", "--log"])
        .arg(&log)
        .arg("--")
        .arg("sh")
        .arg("-c")
        .arg(format!("{p} daemonize sleep 300 tcp {a} sleep 60000 & sleep 1"))
        .env("NETPROBE_PIDFILE", &pidfile)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(30));
    let daemon: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let events = read_jsonl(&log);
    let conn = events
        .iter()
        .find(|e| e["kind"] == "connect" && e["dport"].as_u64() == Some(l.addr().port() as u64))
        .unwrap_or_else(|| panic!("the daemon's connect was not logged: {events:#?}"));
    assert_eq!(conn["pid"].as_u64(), Some(daemon as u64));
    // Its ancestry goes back to the command even though it was reparented.
    let forks: Vec<&Value> = events.iter().filter(|e| e["kind"] == "fork").collect();
    let parent_of = |pid: u64| forks.iter().find(|f| f["pid"].as_u64() == Some(pid)).and_then(|f| f["ppid"].as_u64());
    let mut chain = vec![daemon as u64];
    while let Some(pp) = parent_of(*chain.last().unwrap()) {
        chain.push(pp);
    }
    let root = events.iter().find(|e| e["kind"] == "exec").unwrap()["pid"].as_u64().unwrap();
    assert!(chain.contains(&root), "ancestry {chain:?} does not reach the command {root}");
    // Nothing of the tree survives the step.
    std::thread::sleep(Duration::from_millis(200));
    assert!(!pid_alive(daemon), "daemon {daemon} survived the step");
    let exit = events.iter().find(|e| e["kind"] == "exit" && e["pid"].as_u64() == Some(daemon as u64));
    assert!(exit.is_some(), "the daemon's exit (killed) is logged");
    assert!(exit.unwrap().get("exit_code").is_none(), "killed by a signal: no exit code");
}

#[test]
fn processes_outside_the_tree_are_never_logged() {
    if !root_or_skip() {
        return;
    }
    let l = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let a = l.addr().to_string();
    let p = probe();
    // A busy neighbour outside the watched tree, connecting all the time.
    let mut args = vec![];
    for _ in 0..40 {
        args.extend(["tcp".to_string(), a.clone(), "sleep".to_string(), "25".to_string()]);
    }
    let mut outsider = Command::new(&p).args(&args).stderr(Stdio::null()).spawn().unwrap();
    let r = watch(&[], &["sh", "-c", &format!("sleep 0.3; {p} tcp {a}; sleep 0.3")]);
    let outsider_pid = outsider.id() as u64;
    outsider.wait().unwrap();
    assert_eq!(r.code(), 0);
    assert!(r.events.iter().all(|e| e["pid"].as_u64() != Some(outsider_pid)), "outsider logged");
    let conns: Vec<&Value> = r.kind("connect").collect();
    assert_eq!(conns.len(), 1, "only the watched connect: {conns:#?}");
    assert!(l.connections() > 5, "the outsider did run");
}

#[test]
fn exit_code_stdio_and_signals_pass_through() {
    if !root_or_skip() {
        return;
    }
    let r = watch(&["--quiet"], &["sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(r.code(), 7);
    assert_eq!(r.stdout(), "out\n");
    assert!(r.stderr().contains("err\n"));
    assert_eq!(r.kind("end").next().unwrap()["exit_code"], 7);

    let r = watch(&["--quiet"], &["sh", "-c", "kill -TERM $$"]);
    assert_eq!(r.code(), 128 + 15);

    // stdin reaches the command.
    let mut child = Command::new(watcher_bin())
        .args(["run", "--quiet", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(b"through stdin\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through stdin\n");
    assert_eq!(out.status.code(), Some(0));

    // SIGTERM to watcher reaches the command, whose own exit code comes back.
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let mut child = Command::new(watcher_bin())
        .args(["run", "--quiet", "--", "sh", "-c"])
        .arg(format!("trap 'exit 42' TERM; touch {}; while :; do sleep 0.05; done", ready.display()))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !ready.exists() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(42));
}

#[test]
fn command_not_found_is_127() {
    if !root_or_skip() {
        return;
    }
    let r = watch(&[], &["/nonexistent/watcher-no-such-command"]);
    assert_eq!(r.code(), 127, "{}", r.stderr());
    assert!(r.stderr().contains("/nonexistent/watcher-no-such-command"));
}

#[test]
fn without_root_one_clear_sentence_and_nothing_left_behind() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("x.jsonl");
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(watcher_bin())
        .args(["run", "--log"])
        .arg(&log)
        .args(["--", "true"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id(); // setpriv execs watcher: same pid
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("needs root"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    assert!(!err.contains("panicked"));
    for cg in cgroup_of_run(pid) {
        assert!(!cg.exists(), "{} left behind", cg.display());
    }
}

#[test]
fn ring_buffer_overflow_is_counted_and_reported() {
    if !root_or_skip() {
        return;
    }
    // A one-page ring buffer holds a single exec record: a burst of parallel execs must lose
    // some, and the loss must show up as loss events, in the end record and in the summary.
    let r = watch(&["--ringbuf-size", "4K", "--quiet"], &["sh", "-c", "seq 400 | xargs -P 8 -n 1 /bin/true"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let lost: u64 = r.kind("loss").map(|e| e["count"].as_u64().unwrap()).sum();
    assert!(lost > 0, "no loss reported from a 4 KiB ring buffer");
    assert_eq!(r.kind("end").next().unwrap()["lost"].as_u64().unwrap(), lost);
    assert!(r.stderr().contains(&format!("{lost} lost events")), "{}", r.stderr());
    let execs = r.execs_of("/true").len() as u64;
    assert!(execs < 400, "every exec arrived, yet loss was reported");
}

/// A guard that kills a tmux server (its own socket) even if the test fails.
struct Tmux(String);

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.0]);
        c
    }
    fn screen(&self) -> String {
        let out = self.cmd().args(["capture-pane", "-t", "w", "-p"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

#[test]
fn the_command_gets_the_terminal_and_ctrl_c_reaches_it() {
    if !root_or_skip() {
        return;
    }
    let t = Tmux(format!("watcher-test-{}", std::process::id()));
    let inner = "printf 'name? '; read x; echo \"got $x\"; sleep 60";
    let shell_cmd = format!(
        "{} run -q -- sh -c '{}'; echo EXIT=$?; sleep 60",
        watcher_bin().display(),
        inner.replace('\'', "'\\''")
    );
    let st = t.cmd().args(["new-session", "-d", "-s", "w", "-x", "120", "-y", "20", &shell_cmd]).status().unwrap();
    assert!(st.success());
    let wait_for = |what: &str| {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if t.screen().contains(what) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{what:?} never appeared:\n{}", t.screen());
    };
    wait_for("name?");
    t.cmd().args(["send-keys", "-t", "w", "hello", "Enter"]).status().unwrap();
    wait_for("got hello");
    t.cmd().args(["send-keys", "-t", "w", "C-c"]).status().unwrap();
    // SIGINT from the terminal stops the command (128+2); watcher survives to summarise.
    wait_for("EXIT=130");
    assert!(t.screen().contains("summary:"), "{}", t.screen());
}

/// A CI job's `PATH` is not the system's: an earlier step can put a directory first on it
/// (GitHub's `$GITHUB_PATH`), and `.` resolves into the checkout. watcher runs `ss` as root
/// after the command ends, outside the watch (in audit mode to count the step's leftover
/// sockets, in enforce mode to destroy them): never a copy planted on `PATH`.
#[test]
fn a_system_tool_planted_on_path_never_runs_as_root() {
    if !root_or_skip() {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let planted = tempfile::tempdir().unwrap();
    let marker = planted.path().join("ran");
    for tool in ["ss", "ip"] {
        let p = planted.path().join(tool);
        std::fs::write(&p, format!("#!/bin/sh\necho \"$0 $*\" >> '{}'\n", marker.display())).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let policy = planted.path().join("p.yaml");
    std::fs::write(&policy, "version: 1\npipeline: planted\nmode: enforce\n").unwrap();
    let path = format!("{}:{}", planted.path().display(), std::env::var("PATH").unwrap_or_default());
    let l = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let p = probe();
    // A socket left open to the end, so the enforce run has one to destroy.
    let cmd = format!("{p} tcp {} & sleep 0.3", l.addr());
    for extra in [vec![], vec!["--policy".to_string(), policy.display().to_string()]] {
        let out = Command::new(watcher_bin())
            .arg("run")
            .args(&extra)
            .args(["--", "sh", "-c", &cmd])
            .env("PATH", &path)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.code().is_some(), "{stderr}");
        assert!(
            !marker.exists(),
            "watcher ran a planted tool as root ({extra:?}): {}\n{stderr}",
            std::fs::read_to_string(&marker).unwrap_or_default()
        );
    }
    // The planted tool works when its directory is first on PATH: the test can fail.
    Command::new("sh").arg("-c").arg("ss -h").env("PATH", &path).status().unwrap();
    assert!(marker.exists(), "the planted ss is not what PATH finds");
}

/// A pipe whose reader is already gone: writing to it fails with EPIPE (watcher ignores
/// SIGPIPE, as every Rust program does).
fn closed_pipe() -> std::fs::File {
    let (r, w) = nix::unistd::pipe().unwrap();
    drop(r);
    std::fs::File::from(w)
}

/// `watcher run ... 2>&1 | head` closes watcher's stderr while the step runs. Its own lines to
/// the user are then dropped, never a panic: the step runs to its end with its exit code, and
/// the log is complete. Replay to a closed stdout ends its output quietly with the verdict's
/// exit code.
#[test]
fn a_closed_stderr_or_stdout_never_makes_watcher_panic() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    let out = Command::new(watcher_bin())
        .arg("run")
        .arg("--log")
        .arg(&log)
        .args(["--", "sh", "-c", "id >/dev/null; id >/dev/null; exit 3"])
        // Not quiet (CI=true makes it so): a live line per event is written to the closed pipe,
        // and with debug logging so is every tracing line.
        .env_remove("CI")
        .env("WATCHER_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(closed_pipe())
        .stderr(closed_pipe())
        .status()
        .unwrap();
    assert_eq!(out.code(), Some(3), "the command's exit code, not a panic (101)");
    let events = read_jsonl(&log);
    assert_eq!(
        events
            .iter()
            .filter(|e| e["kind"] == "exec" && e["filename"].as_str().is_some_and(|f| f.ends_with("/id")))
            .count(),
        2
    );
    assert_eq!(events.last().unwrap()["kind"], "end", "the log is complete");

    let replay = |stdout: Stdio, stderr: Stdio| {
        Command::new(watcher_bin())
            .args(["replay", "--policy", "policies/npm.yaml"])
            .arg(&log)
            .current_dir(env!("CARGO_MANIFEST_DIR").to_owned() + "/..")
            .stdout(stdout)
            .stderr(stderr)
            .status()
            .unwrap()
            .code()
    };
    let open = replay(Stdio::null(), Stdio::null());
    assert!(matches!(open, Some(0 | 77)), "{open:?}");
    assert_eq!(replay(Stdio::from(closed_pipe()), Stdio::from(closed_pipe())), open);
}

/// The kernel's table of watched processes holds the living, not every process that ever ran:
/// an exiting process's SIGCHLD (sent after its exit was recorded) used to add it back, one
/// entry for good per process, until the table (65,536) was full and every later process of
/// the step (or, in a daemon, of every job after it) went unwatched as a loss.
#[test]
fn exited_processes_leave_no_entries_in_the_kernel_table() {
    if !root_or_skip() {
        return;
    }
    if Command::new("bpftool").arg("version").output().map_or(true, |o| !o.status.success()) {
        panic!("bpftool is needed (scripts/install-prereqs.sh installs it)");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("count");
    let script = format!(
        "for i in $(seq 300); do /bin/true; done; \
         bpftool -j map dump pinned /sys/fs/bpf/watcher/run-$PPID-*/WATCHED > {}",
        out.display()
    );
    let r = watch(&[], &["sh", "-c", &script]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let dump: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let n = dump.as_array().map_or(0, Vec::len);
    // Living: sh and bpftool (and nothing of the 300 /bin/true).
    assert!(n <= 4, "{n} entries left in WATCHED after 300 processes exited:\n{dump:#}");
    assert_eq!(r.execs_of("/true").len(), 300);
}
