//! `watcher drill`: the fire drill passes with the shipped npm policy in audit and in enforce
//! mode (every misdeed detected, and blocked in enforce mode), fails with exit 1 and names the
//! misses under a policy that allows everything the drill does, and leaves nothing behind
//! (network namespace, cgroup, temporary files).
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use watcher_tests::{netns_list, root_or_skip, watcher_bin};

struct Drill {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn shipped_npm_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("policies/npm.yaml")
}

fn drill(args: &[&str]) -> Drill {
    let child = Command::new(watcher_bin())
        .arg("drill")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let d = Drill {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_nothing_left(pid, &d);
    d
}

fn assert_nothing_left(pid: u32, d: &Drill) {
    let ns = format!("watcher-drill-{pid}");
    assert!(!netns_list().contains(&ns), "netns {ns} left behind\n{}\n{}", d.stdout, d.stderr);
    let cg = Path::new("/sys/fs/cgroup/unified").join(format!("watcher-run-{pid}"));
    assert!(!cg.exists(), "cgroup {} left behind", cg.display());
    let tmp = std::env::temp_dir().join(format!("watcher-drill-{pid}"));
    assert!(!tmp.exists(), "{} left behind", tmp.display());
}

/// The result row of one check: [detected, rule, blocked, time to detect...].
fn row<'a>(stdout: &'a str, check: &str) -> Vec<&'a str> {
    let line =
        stdout.lines().find(|l| l.starts_with(check)).unwrap_or_else(|| panic!("no row for {check:?} in:\n{stdout}"));
    line[check.len()..].split_whitespace().collect()
}

const CHECKS: [(&str, &str); 5] = [
    ("canary DNS lookup", "dns-denied"),
    ("connect to canary address", "egress-denied"),
    ("shell from install script", "shell-from-install-script"),
    ("secret in DNS name", "secret-exfil"),
    ("other process's environment", "credential-access"),
];

fn assert_all_detected(d: &Drill, blocked: &str) {
    assert_eq!(d.code, Some(0), "{}\n{}", d.stdout, d.stderr);
    for (check, rule) in CHECKS {
        let r = row(&d.stdout, check);
        assert_eq!(r[0], "yes", "{check} not detected:\n{}", d.stdout);
        assert_eq!(r[1], rule, "{check}:\n{}", d.stdout);
        assert_eq!(r[2], blocked, "{check}:\n{}", d.stdout);
        // "0.123 ms": a measured time, from the kernel timestamp to the alert.
        let ms: f64 = r[3].parse().unwrap_or_else(|_| panic!("{check}: no time to detect:\n{}", d.stdout));
        assert!(ms > 0.0 && r[4] == "ms", "{check}:\n{}", d.stdout);
    }
    assert!(d.stdout.contains("PASS"), "{}", d.stdout);
}

#[test]
fn drill_passes_with_the_shipped_npm_policy_in_audit_mode() {
    if !root_or_skip() {
        return;
    }
    let policy = shipped_npm_policy();
    let d = drill(&["--policy", policy.to_str().unwrap(), "--mode", "audit"]);
    assert!(d.stdout.contains("audit mode"), "{}", d.stdout);
    // Audit: detected, not blocked; the shell the install script spawned ran.
    assert_all_detected(&d, "n/a");
    assert!(d.stdout.contains("a shell from an install script"), "{}", d.stdout);
}

#[test]
fn drill_passes_and_blocks_in_enforce_mode_with_the_built_in_policy() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("drill.jsonl");
    // No --policy: the built-in copy of policies/npm.yaml, whose mode is enforce.
    let d = drill(&["--log", log.to_str().unwrap()]);
    assert!(d.stdout.contains("enforce mode"), "{}", d.stdout);
    assert_all_detected(&d, "yes");
    // Killed before it ran an instruction: its echo never happened.
    assert!(!d.stdout.contains("a shell from an install script"), "{}", d.stdout);
    // The log is the run loop's: the alerts are there; alerts name the variable, and the
    // plain value appears nowhere (only its base32 form, in the query name).
    let text = std::fs::read_to_string(&log).unwrap();
    let events = watcher_tests::read_jsonl(&log);
    for (_, rule) in CHECKS {
        assert!(events.iter().any(|e| e["kind"] == "alert" && e["rule"] == rule), "no {rule} alert in the log");
    }
    assert!(!text.contains("FAKEdrillSECRET"), "the fake secret's value is in the log");
    // Nothing was sent to the real resolver: the step's DNS went to the drill's own responder
    // inside the namespace, and was answered only in audit mode.
    assert!(events.iter().any(|e| e["kind"] == "dns" && e["allowed"] == false));
}

#[test]
fn drill_fails_and_names_the_misses_under_a_permissive_policy() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("permissive.yaml");
    std::fs::write(
        &p,
        "version: 1\npipeline: permissive\nmode: enforce\negress:\n  allow:\n    - cidr: 192.0.2.0/24\n\
         dns:\n  resolvers: [system]\n  allow: [\"*.watcher.test\"]\n\
         exec:\n  install_scripts:\n    shells: allow\nsecrets:\n  env: []\nfiles:\n  allow: [\"/proc/\"]\n",
    )
    .unwrap();
    for mode in ["audit", "enforce"] {
        let d = drill(&["--policy", p.to_str().unwrap(), "--mode", mode]);
        assert_eq!(d.code, Some(1), "{mode}: {}\n{}", d.stdout, d.stderr);
        for (check, rule) in CHECKS {
            let r = row(&d.stdout, check);
            assert_eq!(r[..2], ["NO", rule], "{mode} {check}:\n{}", d.stdout);
        }
        assert!(d.stdout.contains("FAIL: 5 of 5 checks missed"), "{}", d.stdout);
    }
}

#[test]
fn drill_refuses_a_bad_policy_and_leaves_nothing() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.yaml");
    std::fs::write(&p, "version: 1\npipeline: x\nmode: sometimes\n").unwrap();
    let d = drill(&["--policy", p.to_str().unwrap()]);
    assert_eq!(d.code, Some(125), "{}", d.stderr);
    assert!(d.stderr.contains("bad.yaml:3"), "{}", d.stderr);
}
