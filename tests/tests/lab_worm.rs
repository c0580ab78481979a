//! The worm (SCENARIOS.md, "The worm"; issue 16 item 7) in the attack lab
//! (`watcher_tests::lab`): a real `npm install` in the lab's build namespace, under
//! `watcher run --policy policies/npm.yaml`, of a project depending on `lab-worm` from the lab's
//! "public" registry (through the internal one, which proxies it). The victim's `~/.npmrc` holds
//! a lab npm token (the lab registry's publishing user: valid nowhere else); a fake CI runner
//! agent runs outside the step with a fake secret in its environment.
//!
//! lab-worm's postinstall (tests/fixtures/lab/npm/lab-worm-1.0.0/worm.js):
//! 1. reads `~/.npmrc` and takes the token,
//! 2. reads the runner's `/proc/PID/environ` (a process outside its tree),
//! 3. scans the home directory for tokens (reading `~/.aws/credentials`, `~/.config/gh/`),
//! 4. runs `npm publish` of the victim project, one patch version up, to the lab registry
//!    with the stolen token,
//! 5. writes `.github/workflows/x.yml` into the project,
//! 6. POSTs everything to the lab's attacker.
//!
//! Audit mode: the worm gets everything done (the registry has the infected version, the
//! attacker has the token and the runner's secret, the workflow file exists: the attack works
//! in this lab) and every step is an alert naming `npm:lab-worm@1.0.0 (postinstall)`. Enforce
//! mode: the worm is killed at its first read (`~/.npmrc`), before a byte: the registry has no
//! new version, the attacker received nothing, the workflow file was never written, the step
//! fails with 77. In both, no secret value is in the log, and replay gives the live alerts.
//!
//! Needs root, npm, curl and the lab tools of `scripts/install-prereqs.sh`.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use watcher_tests::lab::{ATTACKER_DOMAIN, Host, Lab};
use watcher_tests::{TempDir, read_jsonl, root_or_skip, watcher_bin};

const STEP_TIMEOUT: Duration = Duration::from_secs(240);
const WORM: &str = "npm:lab-worm@1.0.0 (postinstall)";
/// `watcher run` in enforce mode when the policy was violated.
const VIOLATION: i32 = 77;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

static LAB: Mutex<Option<Result<Lab, String>>> = Mutex::new(None);

extern "C" fn drop_lab() {
    let mut g = LAB.lock().unwrap_or_else(|e| e.into_inner());
    g.take();
}

/// The lab, started on first use with lab-worm published on the public registry; the guard
/// serializes the tests.
fn lab() -> MutexGuard<'static, Option<Result<Lab, String>>> {
    let mut g = LAB.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        let setup = || -> Result<Lab, String> {
            let lab = Lab::start().map_err(|e| format!("{e:#}"))?;
            lab.npm_publish(Host::Public, &repo_root().join("tests/fixtures/lab/npm/lab-worm-1.0.0"))
                .map_err(|e| format!("npm publish lab-worm: {e:#}"))?;
            Ok(lab)
        };
        *g = Some(setup());
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(drop_lab) };
    }
    if let Some(Err(e)) = g.as_ref() {
        panic!("the attack lab could not start: {e}");
    }
    g.as_ref().unwrap().as_ref().unwrap().clear_records();
    g
}

/// A per-run value no test run shares with another (fake secrets, victim names).
fn unique(prefix: &str) -> String {
    let ns = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}{:x}{:x}", std::process::id(), ns & 0xffff_ffff)
}

/// The fake CI runner agent: a process outside the step holding a secret in its environment.
struct Runner {
    child: Child,
    secret: String,
}

impl Runner {
    fn start() -> Runner {
        let secret = unique("lab-runner-secret-");
        let child = Command::new("sleep")
            .arg("600")
            .env_clear()
            .env("ACTIONS_RUNTIME_TOKEN", &secret)
            .stdin(Stdio::null())
            .spawn()
            .expect("start the fake runner");
        Runner { child, secret }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct WormRun {
    code: Option<i32>,
    stderr: String,
    log: PathBuf,
    log_text: String,
    events: Vec<Value>,
    trace: PathBuf,
    project: TempDir,
    victim: String,
    token: String,
    runner: Runner,
    fake_aws: String,
    _home: TempDir,
    _dir: TempDir,
}

impl WormRun {
    fn alerts(&self) -> Vec<&Value> {
        self.events.iter().filter(|e| e["kind"] == "alert").collect()
    }

    fn alerts_of(&self, rule: &str) -> Vec<&Value> {
        self.alerts().into_iter().filter(|a| a["rule"] == rule).collect()
    }

    fn alert(&self, rule: &str, needle: &str) -> &Value {
        self.alerts_of(rule)
            .into_iter()
            .find(|a| a["message"].as_str().unwrap_or("").contains(needle))
            .unwrap_or_else(|| panic!("no {rule} alert naming {needle:?}\n{}", self.context()))
    }

    fn steps(&self) -> String {
        fs::read_to_string(self.trace.join("lab-worm.steps")).unwrap_or_default()
    }

    fn context(&self) -> String {
        let tail: Vec<&str> = self.stderr.lines().collect();
        format!(
            "exit {:?}\nworm steps:\n{}\nalerts: {:#?}\nstderr:\n{}",
            self.code,
            self.steps(),
            self.alerts(),
            tail[tail.len().saturating_sub(40)..].join("\n")
        )
    }
}

/// `npm install` of the victim project (`lab-victim-*`, depending on lab-worm) under
/// `watcher run --policy policies/npm.yaml --mode MODE` in the build namespace.
fn worm_install(lab: &Lab, mode: &str) -> WormRun {
    let dir = TempDir::new("watcher-lab-worm");
    let project = TempDir::new("watcher-lab-worm-project");
    let home = TempDir::new("watcher-lab-worm-home");
    let victim = unique(&format!("lab-victim-{mode}-"));
    fs::write(
        project.join("package.json"),
        serde_json::to_string_pretty(&json!({
            "name": victim, "version": "1.0.0", "license": "MIT",
            "dependencies": {"lab-worm": "^1.0.0"}, "allowScripts": {"lab-worm": true},
        }))
        .unwrap(),
    )
    .unwrap();
    let registry = lab.npm_url(Host::Internal);
    fs::write(project.join(".npmrc"), format!("registry={registry}\n")).unwrap();
    // The victim's own npm login: a literal token in ~/.npmrc (npm itself reads it).
    let token = lab.npm_token(Host::Internal).expect("the lab's npm token").to_string();
    fs::write(home.join(".npmrc"), format!("{}:_authToken={token}\n", registry.trim_start_matches("http:"))).unwrap();
    // Other credentials the home scan finds (fake, lab-only values).
    let ns = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let fake_aws = format!("AKIALAB{:013X}", ns & 0xf_ffff_ffff_ffff);
    fs::create_dir_all(home.join(".aws")).unwrap();
    fs::write(home.join(".aws/credentials"), format!("[default]\naws_access_key_id = {fake_aws}\n")).unwrap();
    fs::create_dir_all(home.join(".config/gh")).unwrap();
    fs::write(home.join(".config/gh/hosts.yml"), "github.com:\n  oauth_token: ghp_labFakeTokenNotReal0000\n").unwrap();
    fs::write(home.join("global-npmrc"), "").unwrap();
    let runner = Runner::start();

    let log = dir.join("events.jsonl");
    let trace = dir.join("trace");
    fs::create_dir_all(&trace).unwrap();
    let env: Vec<(&str, OsString)> = vec![
        ("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into()),
        ("HOME", home.path().into()),
        ("LANG", "C.UTF-8".into()),
        ("CI", "true".into()),
        ("npm_config_cache", home.join("npm-cache").into()),
        ("npm_config_globalconfig", home.join("global-npmrc").into()),
        ("npm_config_update_notifier", "false".into()),
        ("LAB_RUNNER_PID", runner.child.id().to_string().into()),
        ("LAB_TRACE_DIR", trace.clone().into()),
    ];
    let mut cmd = lab.build_cmd(watcher_bin());
    cmd.args(["run", "--mode", mode, "--policy"])
        .arg(repo_root().join("policies/npm.yaml"))
        .arg("--log")
        .arg(&log)
        .args(["--", "npm", "install", "--no-audit", "--no-fund"])
        .current_dir(project.path())
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("stderr")).unwrap());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("start watcher in the build namespace");
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > STEP_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("watcher run -- npm install did not finish within {STEP_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    assert!(log.is_file(), "watcher wrote no log ({status}):\n{stderr}");
    let log_text = fs::read_to_string(&log).unwrap();
    let events = read_jsonl(&log);
    eprintln!("watcher run ({mode}) -- npm install: {status} in {:.1?}, {} events", started.elapsed(), events.len());
    for a in events.iter().filter(|e| e["kind"] == "alert") {
        eprintln!("  alert {} {} {}", a["rule"], a["action"], a["message"]);
    }
    WormRun {
        code: status.code(),
        stderr,
        log,
        log_text,
        events,
        trace,
        project,
        victim,
        token,
        runner,
        fake_aws,
        _home: home,
        _dir: dir,
    }
}

/// No secret value is in the log or in watcher's messages (the token, the runner's secret,
/// the fake AWS key).
fn assert_values_nowhere(r: &WormRun) {
    for (what, v) in [("npm token", &r.token), ("runner secret", &r.runner.secret), ("AWS key", &r.fake_aws)] {
        assert!(!r.log_text.contains(v.as_str()), "the {what} is in the event log");
        assert!(!r.stderr.contains(v.as_str()), "the {what} is on watcher's stderr");
    }
}

/// Every alert names the worm's package (npm's own reading of ~/.npmrc, its registry traffic
/// with the token and the victim's install are not alerts).
fn assert_all_name_the_worm(r: &WormRun) {
    assert!(!r.alerts().is_empty(), "{}", r.context());
    for a in r.alerts() {
        assert_eq!(a["package"], WORM, "{a}\n{}", r.context());
    }
}

/// Replaying the log gives exactly the live run's alerts.
fn assert_replay_equals_live(r: &WormRun) {
    let out = Command::new(watcher_bin()).args(["replay", "--format", "json"]).arg(&r.log).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("replay output: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    let live: Vec<Value> = r
        .alerts()
        .into_iter()
        .map(|a| {
            let mut a = a.clone();
            a.as_object_mut().unwrap().remove("kind");
            a
        })
        .collect();
    assert_eq!(v["logs"][0]["alerts"], json!(live), "replay differs from the live run");
}

#[test]
fn worm_audit_flags_every_step_naming_the_package() {
    if !root_or_skip() {
        return;
    }
    let g = lab();
    let lab = g.as_ref().unwrap().as_ref().unwrap();
    let r = worm_install(lab, "audit");
    assert_eq!(r.code, Some(0), "audit mode completes the install\n{}", r.context());
    // The attack works in this lab: every step got done.
    let steps = r.steps();
    for s in ["npmrc ok 1", "environ ok", "scan ok", "publish ok", "workflow ok", "exfil 200"] {
        assert!(steps.contains(s), "the worm's step {s:?} did not happen: {steps}\n{}", r.context());
    }
    assert_eq!(
        lab.npm_versions(Host::Internal, &r.victim).unwrap(),
        vec!["1.0.1".to_string()],
        "the worm published the victim with the stolen token"
    );
    assert!(r.project.join(".github/workflows/x.yml").is_file());
    let rec = lab.attacker();
    assert!(rec.contains_secret(&r.token), "the attacker did not get the npm token: {rec:#?}");
    assert!(rec.contains_secret(&r.runner.secret), "the attacker did not get the runner's secret");
    assert!(rec.contains_secret(&r.fake_aws), "the attacker did not get the scanned AWS key");

    // Every step is an alert naming the package.
    let npmrc = r.alert("credential-access", "/.npmrc");
    assert_eq!(npmrc["severity"], "critical");
    assert_eq!(npmrc["action"], "flag");
    let environ = r.alert("credential-access", &format!("environment of process {}", r.runner.child.id()));
    assert_eq!(environ["action"], "flag");
    r.alert("credential-access", "/.aws/credentials");
    r.alert("credential-access", "/.config/gh/hosts.yml");
    let publish = r.alerts_of("publish-from-install-script");
    assert_eq!(publish.len(), 1, "{}", r.context());
    assert!(publish[0]["message"].as_str().unwrap().contains("npm publish"), "{}", publish[0]);
    r.alert("file-tamper", "/.github/workflows/x.yml");
    assert!(
        r.alerts_of("dns-denied").iter().any(|a| a["message"].as_str().unwrap_or("").contains(ATTACKER_DOMAIN)),
        "the lookup of the attacker was not flagged\n{}",
        r.context()
    );
    assert_all_name_the_worm(&r);
    // The file events name what was opened (the kernel's record), the environ one the runner.
    let files: Vec<&Value> = r.events.iter().filter(|e| e["kind"] == "file").collect();
    assert!(files.iter().any(|f| f["what"] == "environ" && f["target"] == r.runner.child.id()), "{files:#?}");
    assert!(files.iter().all(|f| f["killed"] != true), "{files:#?}");
    assert_values_nowhere(&r);
    assert_replay_equals_live(&r);
}

#[test]
fn worm_enforce_is_stopped_at_its_first_read() {
    if !root_or_skip() {
        return;
    }
    let g = lab();
    let lab = g.as_ref().unwrap().as_ref().unwrap();
    let r = worm_install(lab, "enforce");
    assert_eq!(r.code, Some(VIOLATION), "{}", r.context());
    // The worm ran, and was killed opening ~/.npmrc: no step completed.
    assert!(r.trace.join("lab-worm.start").is_file(), "the worm never ran\n{}", r.context());
    assert_eq!(r.steps(), "", "the worm got past its first read\n{}", r.context());
    let npmrc = r.alert("credential-access", "/.npmrc");
    assert_eq!(npmrc["action"], "kill", "{npmrc}");
    assert_eq!(npmrc["package"], WORM);
    assert_eq!(r.alerts().len(), 1, "one alert: the first read\n{}", r.context());
    let files: Vec<&Value> = r.events.iter().filter(|e| e["kind"] == "file").collect();
    assert_eq!(files.len(), 1, "{files:#?}");
    assert_eq!(files[0]["killed"], true);
    assert!(!files.iter().any(|f| f["what"] == "environ"), "{files:#?}");
    // Nothing reached the registry, nothing the attacker, nothing was written.
    assert_eq!(lab.npm_versions(Host::Internal, &r.victim).unwrap(), Vec::<String>::new(), "published");
    assert_eq!(lab.npm_versions(Host::Public, &r.victim).unwrap(), Vec::<String>::new(), "published");
    assert!(!r.project.join(".github").exists(), "the worm wrote into the project");
    let rec = lab.attacker();
    assert!(rec.dns.is_empty() && rec.http.is_empty(), "the attacker got something: {rec:#?}");
    let leaked: Vec<_> = lab.resolver_queries().into_iter().filter(|q| q.name.ends_with(ATTACKER_DOMAIN)).collect();
    assert!(leaked.is_empty(), "the lab resolver got queries for the attacker: {leaked:#?}");
    assert!(
        !r.events.iter().any(|e| e["kind"] == "exec" && e["argv"][1] == "publish"),
        "npm publish ran\n{}",
        r.context()
    );
    assert_all_name_the_worm(&r);
    assert_values_nowhere(&r);
    assert_replay_equals_live(&r);
}
