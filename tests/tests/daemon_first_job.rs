//! Every rule holds from the first event of the first job after the daemon starts: no window
//! in which a job runs before its tables are complete (issue 10). Each round starts a fresh
//! daemon (enforce) whose very first job is an install script that tries, in turn, a copied
//! shell, a denied program and a connection the policy does not allow; a second job of the
//! same daemon is judged the same. Every destination is on loopback.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use serde_json::Value;
use watcher_tests::{Listener, TempDir, daemon::Daemon, netprobe_bin, root_or_skip};

const VAR: &str = "WDT_FIRST_JOB_ID";

fn config(dir: &TempDir, port: u16) -> PathBuf {
    // Shells denied outright (the rule under test is "holds from the first event", not the
    // shell rule's judgement), `id` denied, the listener's port allowed on 127.0.0.1 only.
    std::fs::write(
        dir.join("p.yaml"),
        format!(
            "version: 1\npipeline: first\nmode: enforce\nexec:\n  deny: [id]\n  install_scripts:\n    shells: deny\n\
             egress:\n  loopback: false\n  allow:\n    - ip: 127.0.0.1\n      ports: [{port}]\ndns:\n  resolvers: []\n"
        ),
    )
    .unwrap();
    let config = dir.join("daemon.yaml");
    std::fs::write(
        &config,
        format!(
            "version: 1\nsocket: run/watcher.sock\nlog_dir: logs\njob_end_grace: 300ms\n\
             jobs:\n  id_env: [{VAR}]\n  pipeline_env: [WDT_FIRST_REPO]\n\
             pipelines:\n  - match: \"acme/first\"\n    policy: p.yaml\n"
        ),
    )
    .unwrap();
    config
}

/// An npm postinstall as the job's first process.
fn install_script(id: &str, script: &str) -> std::process::Output {
    Command::new("sh")
        .args(["-c", script])
        .env(VAR, id)
        .env("WDT_FIRST_REPO", "acme/first")
        .env("npm_lifecycle_event", "postinstall")
        .env("npm_package_name", "evil-first")
        .env("npm_package_version", "1.0.0")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn rules(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["kind"] == "alert")
        .map(|e| (e["rule"].as_str().unwrap_or("").to_string(), e["action"].as_str().unwrap_or("").to_string()))
        .collect()
}

#[test]
fn the_first_job_after_start_is_enforced_like_every_later_one() {
    if !root_or_skip() {
        return;
    }
    let bad = Listener::start("127.0.0.2:0".parse().unwrap()).unwrap();
    let ok = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let np = netprobe_bin().display().to_string();
    for round in 0..3 {
        let dir = TempDir::new(&format!("watcher-first-job-{round}"));
        let copy = dir.join("innocent-tool");
        std::fs::copy("/bin/dash", &copy).unwrap();
        let marker = dir.join("ran");
        let m = marker.display().to_string();
        let d = Daemon::start(&config(&dir, ok.addr().port()), &dir, VAR);
        let attacks = [
            ("copied shell", format!("{} -c 'echo RAN > {m}'", copy.display())),
            ("denied program", format!("id && echo RAN > {m}")),
            // netprobe reports a refused connect and goes on: the listener is the judge here.
            ("denied connect", format!("{np} tcp {}", bad.addr())),
        ];
        // The first job is the first attack; the later ones are later jobs of the same daemon.
        for (i, (what, script)) in attacks.iter().enumerate() {
            let _ = std::fs::remove_file(&marker);
            let id = format!("{round}-{i}");
            let out = install_script(&id, script);
            let job = d.ended(&id);
            let events = d.job_events(&job);
            let got = rules(&events);
            let ctx = format!(
                "round {round}, {what} (job {i} of this daemon): exit {:?}\nalerts {got:?}\nstderr {}\n{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr),
                d.log()
            );
            assert!(!marker.exists(), "{ctx}");
            assert!(!got.is_empty(), "{ctx}");
            assert!(got.iter().all(|(_, a)| a == "kill" || a == "deny"), "{ctx}");
            assert_eq!(job["mode"], "enforce", "{ctx}");
        }
        drop(d);
    }
    assert_eq!(bad.connections(), 0, "a denied connect of a first job reached its host");
}

/// A job's first program is itself one the policy denies. The kernel stopped it at exec before
/// the job had tables, so the kernel could not judge it; the daemon must kill it instead of
/// continuing it (enforce), and the job's log says so. In audit mode it runs and is flagged.
#[test]
fn a_jobs_first_program_that_the_policy_denies_never_runs() {
    if !root_or_skip() {
        return;
    }
    const VAR2: &str = "WDT_FIRST_PROG_ID";
    let ok = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    for mode in ["enforce", "audit"] {
        let dir = TempDir::new(&format!("watcher-first-prog-{mode}"));
        let cfg = config(&dir, ok.addr().port());
        // This test's own job variable and mode (the config helper writes the shared ones).
        let text = std::fs::read_to_string(&cfg).unwrap().replace(VAR, VAR2);
        std::fs::write(&cfg, text).unwrap();
        let p = std::fs::read_to_string(dir.join("p.yaml")).unwrap().replace("mode: enforce", &format!("mode: {mode}"));
        std::fs::write(dir.join("p.yaml"), p).unwrap();
        let d = Daemon::start(&cfg, &dir, VAR2);
        for round in 0..2 {
            let id = format!("{mode}-{round}");
            // `id` is the job's first exec: no shell or wrapper before it.
            let out = Command::new("/usr/bin/id")
                .env(VAR2, &id)
                .env("WDT_FIRST_REPO", "acme/first")
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let job = d.ended(&id);
            let events = d.job_events(&job);
            let got = rules(&events);
            let ctx = format!(
                "{mode}, round {round}: exit {:?} signal {:?}\nstdout {}\nalerts {got:?}\n{}",
                out.status.code(),
                std::os::unix::process::ExitStatusExt::signal(&out.status),
                String::from_utf8_lossy(&out.stdout),
                d.log()
            );
            if mode == "enforce" {
                assert!(out.stdout.is_empty(), "a denied first program ran: {ctx}");
                assert_eq!(std::os::unix::process::ExitStatusExt::signal(&out.status), Some(9), "{ctx}");
                assert!(got.contains(&("exec-denied".to_string(), "kill".to_string())), "{ctx}");
            } else {
                assert!(out.status.success() && !out.stdout.is_empty(), "audit must let it run: {ctx}");
                assert!(got.contains(&("exec-denied".to_string(), "flag".to_string())), "{ctx}");
            }
            assert_eq!(job["mode"], mode, "{ctx}");
        }
        drop(d);
    }
}
