//! The two supply-chain attacks watcher exists for (README, "Attack lab") run for
//! real in the attack lab (`watcher_tests::lab`): real npm and pip installs in a build network
//! namespace whose only routes lead into the lab, from real registries (verdaccio and
//! pypiserver, an internal and a "public" instance of each), next to an attacker host whose DNS
//! and HTTP servers record everything they receive. The build runs under
//! `watcher run --policy policies/{npm,pip}.yaml`, inside the build namespace.
//!
//! 1. Hijacked patch release: `js-formatter-util` / `py-formatter-util` 1.2.2 (a routine
//!    update from 1.2.1) encodes every `AWS_*` variable into DNS query names under
//!    `attacker.lab.test`, resolved through the system resolver.
//! 2. Dependency confusion: `acme-corp-auth-client` is 1.0.0 on the internal registry and
//!    99.99.9 on the "public" one; the build is configured with both (npm: the internal
//!    verdaccio proxies the public one; pip: `--index-url` internal + `--extra-index-url`
//!    public) and picks 99.99.9, whose install step POSTs `AWS_ACCESS_KEY` and `DB_PASSWORD`
//!    to the attacker and spawns `sh -c` to send them again with curl.
//!
//! For each, and each package manager: audit mode completes the install and the alerts name
//! the package, the rule and the variable (redacted; the value is nowhere in the log or on
//! stderr), and the attacker really received the secrets (the attack works); the time from the
//! install script's start to the first alert is printed. Enforce mode: the attacker's servers
//! record nothing (no query under its domain, no connection), and the step exits 77. A clean
//! project with the same registries and policy installs with zero alerts.
//!
//! The lab is started once for this file and shared; the tests take turns (one lock), and each
//! starts from empty attacker records. Needs root, npm, python3 with venv, curl, and the lab
//! tools of `scripts/install-prereqs.sh` (verdaccio, pypiserver).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use watcher_tests::lab::{self as lab_names, ATTACKER_DOMAIN, Host, Lab};
use watcher_tests::{TempDir, read_jsonl, root_or_skip, watcher_bin};

const STEP_TIMEOUT: Duration = Duration::from_secs(240);
const SECRET_RULE: &str = "secret-exfil";
const SHELL_RULE: &str = "shell-from-install-script";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures/lab")
}

fn policy(name: &str) -> PathBuf {
    repo_root().join("policies").join(format!("{name}.yaml"))
}

// ============================================================================ the shared lab

struct Shared {
    lab: Lab,
    /// A venv (python -m venv) copied for each pip step.
    venv_template: PathBuf,
    /// The fake secrets of this run (unique per run, so nothing recorded can be stale).
    secrets: Vec<(&'static str, String)>,
}

static LAB: Mutex<Option<Result<Shared, String>>> = Mutex::new(None);

extern "C" fn drop_lab() {
    // Runs at process exit, after every test: kills the servers, deletes the namespaces.
    let mut g = LAB.lock().unwrap_or_else(|e| e.into_inner());
    g.take();
}

fn setup() -> Result<Shared, String> {
    let t = Instant::now();
    let lab = Lab::start().map_err(|e| format!("{e:#}"))?;
    let fx = fixtures();
    // npm: the internal package first (verdaccio refuses to publish a name its uplink
    // already has), then the public ones.
    for (host, pkg) in [
        (Host::Internal, "acme-corp-auth-client-1.0.0"),
        (Host::Internal, "lab-clean-lib-1.0.0"),
        (Host::Public, "js-formatter-util-1.2.1"),
        (Host::Public, "js-formatter-util-1.2.2"),
        (Host::Public, "acme-corp-auth-client-99.99.9"),
    ] {
        lab.npm_publish(host, &fx.join("npm").join(pkg)).map_err(|e| format!("npm publish {pkg}: {e:#}"))?;
    }
    let backend = fx.join("pip/common/lab_backend.py");
    for (host, pkg) in [
        (Host::Internal, "acme-corp-auth-client-1.0.0"),
        (Host::Public, "py-formatter-util-1.2.1"),
        (Host::Public, "py-formatter-util-1.2.2"),
        (Host::Public, "acme-corp-auth-client-99.99.9"),
    ] {
        lab.pip_publish_sdist(host, &fx.join("pip").join(pkg), &[&backend])
            .map_err(|e| format!("sdist {pkg}: {e:#}"))?;
    }
    let venv_template = lab.dir().join("venv-template");
    let out = Command::new("/usr/bin/python3")
        .args(["-m", "venv"])
        .arg(&venv_template)
        .output()
        .map_err(|e| format!("python3 -m venv: {e}"))?;
    if !out.status.success() {
        return Err(format!("python3 -m venv failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    // Fake secrets, fresh for each run and independent of each other (no shared substring,
    // so a leak of one is never reported as a leak of another).
    let mut rng =
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 ^ (u64::from(std::process::id()) << 40);
    let mut random = |alphabet: &[u8], len: usize| -> String {
        (0..len)
            .map(|_| {
                // splitmix64
                rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = rng;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                alphabet[(z % alphabet.len() as u64) as usize] as char
            })
            .collect()
    };
    const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const MIXED: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let secrets = vec![
        ("AWS_ACCESS_KEY_ID", format!("AKIA{}", random(UPPER, 16))),
        ("AWS_SECRET_ACCESS_KEY", random(MIXED, 40)),
        ("AWS_ACCESS_KEY", format!("AKIA{}", random(UPPER, 16))),
        ("DB_PASSWORD", random(MIXED, 24)),
    ];
    // SAFETY: registering a plain extern "C" function.
    unsafe { libc::atexit(drop_lab) };
    eprintln!("lab ready (fixtures published) in {:.1?}", t.elapsed());
    Ok(Shared { lab, venv_template, secrets })
}

/// The shared lab, started on first use; the guard serializes the tests.
fn lab() -> MutexGuard<'static, Option<Result<Shared, String>>> {
    let mut g = LAB.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        *g = Some(setup());
    }
    if let Some(Err(e)) = g.as_ref() {
        panic!("the attack lab could not start: {e}");
    }
    g.as_ref().unwrap().as_ref().unwrap().lab.clear_records();
    g
}

fn shared<'a>(g: &'a MutexGuard<'static, Option<Result<Shared, String>>>) -> &'a Shared {
    g.as_ref().unwrap().as_ref().unwrap()
}

// ============================================================================ a watched step

struct Step {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// Wall-clock time each stderr line was read.
    stderr_lines: Vec<(SystemTime, String)>,
    log_text: String,
    events: Vec<Value>,
    log: PathBuf,
    trace: PathBuf,
    elapsed: Duration,
    _dir: TempDir,
}

impl Step {
    fn kind(&self, k: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["kind"] == k).collect()
    }

    fn alerts(&self) -> Vec<&Value> {
        self.kind("alert")
    }

    fn alerts_of(&self, rule: &str) -> Vec<&Value> {
        self.alerts().into_iter().filter(|a| a["rule"] == rule).collect()
    }

    fn context(&self) -> String {
        let tail = |s: &str| {
            let l: Vec<&str> = s.lines().collect();
            l[l.len().saturating_sub(40)..].join("\n")
        };
        format!(
            "exit {:?} after {:.1?}\nalerts: {:#?}\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.elapsed,
            self.alerts(),
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }

    fn trace(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.trace.join(name)).ok()
    }
}

/// `watcher run --policy POLICY --mode MODE --log LOG -- ARGV` in the build namespace, with
/// exactly the environment `env`.
fn watch(lab: &Lab, policy: &Path, mode: &str, cwd: &Path, env: &[(String, OsString)], argv: &[OsString]) -> Step {
    let dir = TempDir::new("watcher-lab-step");
    let log = dir.join("events.jsonl");
    let trace = dir.join("trace");
    fs::create_dir_all(&trace).unwrap();
    let mut cmd = lab.build_cmd(watcher_bin());
    cmd.args(["run", "--mode", mode, "--policy"])
        .arg(policy)
        .arg("--log")
        .arg(&log)
        .arg("--")
        .args(argv)
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("LAB_TRACE_DIR", &trace)
        .stdin(Stdio::null())
        .stdout(fs::File::create(dir.join("stdout")).unwrap())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("start watcher in the build namespace");
    let stderr = child.stderr.take().unwrap();
    let lines: Arc<Mutex<Vec<(SystemTime, String)>>> = Arc::default();
    let l2 = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            l2.lock().unwrap().push((SystemTime::now(), line));
        }
    });
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > STEP_TIMEOUT {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGTERM);
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            let _ = child.wait();
            panic!("watcher run -- {argv:?} did not finish within {STEP_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    let _ = reader.join();
    let stderr_lines = std::mem::take(&mut *lines.lock().unwrap());
    let stderr = stderr_lines.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n");
    let stdout = fs::read_to_string(dir.join("stdout")).unwrap_or_default();
    assert!(log.is_file(), "watcher wrote no log ({status}):\n{stderr}");
    let log_text = fs::read_to_string(&log).unwrap();
    let events = read_jsonl(&log);
    eprintln!("watcher run ({mode}) -- {argv:?}: {status} in {elapsed:.1?}, {} events", events.len());
    for a in events.iter().filter(|e| e["kind"] == "alert") {
        eprintln!(
            "  alert {} {} {} {}",
            a["rule"].as_str().unwrap_or(""),
            a["action"].as_str().unwrap_or(""),
            a["package"].as_str().unwrap_or("-"),
            a["variable"]
                .as_str()
                .map(|v| format!("{v} = {}", a["redacted"].as_str().unwrap_or("?")))
                .unwrap_or_default()
        );
    }
    Step { code: status.code(), stdout, stderr, stderr_lines, log_text, events, log, trace, elapsed, _dir: dir }
}

fn os(s: impl AsRef<std::ffi::OsStr>) -> OsString {
    s.as_ref().to_os_string()
}

/// The base environment of a build step: a plain PATH, a temporary HOME, and the fake secrets.
fn base_env(sh: &Shared, home: &Path, path_front: Option<&Path>) -> Vec<(String, OsString)> {
    let mut path = String::new();
    if let Some(p) = path_front {
        path.push_str(&format!("{}:", p.display()));
    }
    path.push_str("/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
    let mut env = vec![
        ("PATH".to_string(), os(path)),
        ("HOME".to_string(), os(home)),
        ("LANG".to_string(), os("C.UTF-8")),
        ("CI".to_string(), os("true")),
    ];
    for (k, v) in &sh.secrets {
        env.push((k.to_string(), os(v)));
    }
    env
}

// ============================================================================ npm steps

struct NpmRun {
    step: Step,
    project: TempDir,
    _home: TempDir,
}

/// `npm install` of a project depending on `deps`, with `.npmrc` pointing at the internal
/// registry (which proxies the public one).
fn npm_install(sh: &Shared, deps: Value, mode: &str) -> NpmRun {
    let project = TempDir::new("watcher-lab-npm-project");
    let names: Vec<String> = deps.as_object().unwrap().keys().cloned().collect();
    let allow: serde_json::Map<String, Value> = names.iter().map(|n| (n.clone(), json!(true))).collect();
    fs::write(
        project.join("package.json"),
        serde_json::to_string_pretty(&json!({
            "name": "lab-build", "version": "1.0.0", "private": true,
            "dependencies": deps, "allowScripts": allow,
        }))
        .unwrap(),
    )
    .unwrap();
    fs::write(project.join(".npmrc"), format!("registry={}\n", sh.lab.npm_url(Host::Internal))).unwrap();
    let home = TempDir::new("watcher-lab-npm-home");
    fs::write(home.join("global-npmrc"), "").unwrap();
    let mut env = base_env(sh, home.path(), None);
    env.push(("npm_config_cache".into(), os(home.join("npm-cache"))));
    env.push(("npm_config_globalconfig".into(), os(home.join("global-npmrc"))));
    env.push(("npm_config_update_notifier".into(), os("false")));
    let argv = ["npm", "install", "--no-audit", "--no-fund"].map(os);
    let step = watch(&sh.lab, &policy("npm"), mode, project.path(), &env, &argv);
    NpmRun { step, project, _home: home }
}

fn npm_installed_version(project: &Path, name: &str) -> Option<String> {
    let text = fs::read_to_string(project.join("node_modules").join(name).join("package.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v["version"].as_str().map(str::to_string)
}

// ============================================================================ pip steps

struct PipRun {
    step: Step,
    venv: PathBuf,
    _work: TempDir,
}

/// `python -m pip install REQ` in a fresh venv, with the internal index as `PIP_INDEX_URL`
/// and the public one as `PIP_EXTRA_INDEX_URL` (pip's default build isolation).
fn pip_install(sh: &Shared, reqs: &[&str], mode: &str) -> PipRun {
    let work = TempDir::new("watcher-lab-pip");
    let venv = work.join("venv");
    let st = Command::new("cp").arg("-a").arg(&sh.venv_template).arg(&venv).status().unwrap();
    assert!(st.success(), "copy the venv");
    let home = work.join("home");
    fs::create_dir_all(&home).unwrap();
    let mut env = base_env(sh, &home, Some(&venv.join("bin")));
    env.extend([
        ("VIRTUAL_ENV".to_string(), os(&venv)),
        ("PIP_CONFIG_FILE".to_string(), os("/dev/null")),
        ("PIP_INDEX_URL".to_string(), os(sh.lab.pip_url(Host::Internal))),
        ("PIP_EXTRA_INDEX_URL".to_string(), os(sh.lab.pip_url(Host::Public))),
        // The lab's indexes are plain HTTP (pip only trusts that for localhost).
        ("PIP_TRUSTED_HOST".to_string(), os(format!("{} {}", lab_names::PYPI_INTERNAL, lab_names::PYPI_PUBLIC))),
        ("PIP_DISABLE_PIP_VERSION_CHECK".to_string(), os("1")),
        ("PIP_NO_INPUT".to_string(), os("1")),
    ]);
    let mut argv = vec![os(venv.join("bin/python")), os("-m"), os("pip"), os("install"), os("--no-cache-dir")];
    argv.extend(reqs.iter().map(os));
    let step = watch(&sh.lab, &policy("pip"), mode, work.path(), &env, &argv);
    PipRun { step, venv, _work: work }
}

fn pip_installed_version(venv: &Path, dist: &str) -> Option<String> {
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))", dist])
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

// ============================================================================ checks

/// What `watcher`'s `secrets::redact` shows for `value`: the first two characters and the
/// length (values of 12 characters or more).
fn redacted(value: &str) -> String {
    let n = value.chars().count();
    format!("{}…({n} chars)", value.chars().take(2).collect::<String>())
}

/// The secret-exfil alerts name `package` (the field contains `pkg_label`), carry the variable
/// and its redacted value; returns the variables.
fn assert_secret_alerts(step: &Step, pkg_label: &str, sh: &Shared, action: &str) -> BTreeSet<String> {
    let alerts = step.alerts_of(SECRET_RULE);
    assert!(!alerts.is_empty(), "no {SECRET_RULE} alert\n{}", step.context());
    let mut vars = BTreeSet::new();
    for a in alerts {
        let package = a["package"].as_str().unwrap_or_default();
        assert!(package.contains(pkg_label), "alert does not name {pkg_label}: {a}\n{}", step.context());
        assert_eq!(a["severity"], "critical", "{a}");
        assert_eq!(a["action"], action, "{a}\n{}", step.context());
        let var = a["variable"].as_str().unwrap_or_else(|| panic!("alert without variable: {a}"));
        let value =
            &sh.secrets.iter().find(|(k, _)| *k == var).unwrap_or_else(|| panic!("unknown variable {var}: {a}")).1;
        assert_eq!(a["redacted"], json!(redacted(value)), "{a}");
        assert!(a["message"].as_str().unwrap().contains(var), "{a}");
        vars.insert(var.to_string());
    }
    vars
}

/// No secret value appears in the log or on stderr (only names and redacted forms).
fn assert_values_nowhere(step: &Step, sh: &Shared) {
    for (k, v) in &sh.secrets {
        assert!(!step.log_text.contains(v.as_str()), "the value of {k} is in the event log");
        assert!(!step.stderr.contains(v.as_str()), "the value of {k} is on watcher's stderr");
        assert!(!step.stdout.contains(v.as_str()), "the value of {k} is on stdout");
    }
}

fn ts_ns(ts: &Value) -> i128 {
    // RFC 3339 UTC with nanoseconds: 2026-11-23T19:20:23.302849462Z
    let s = ts.as_str().unwrap();
    let out = Command::new("date").args(["-u", "-d", s, "+%s%N"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Time to detect: from the exec that started the package's install script (in the log) to
/// the first alert naming the package (in the log), and, wall clock, from the time the
/// malicious script itself wrote at its start to the moment the alert line was read from
/// watcher's stderr. Printed; returned for the summary.
fn report_time_to_alert(step: &Step, scenario: &str, script_start: &Value, pkg_label: &str, trace_name: &str) {
    let first_of = |rule: Option<&str>| {
        step.alerts()
            .into_iter()
            .filter(|a| a["package"].as_str().is_some_and(|p| p.contains(pkg_label)))
            .filter(|a| rule.is_none_or(|r| a["rule"] == r))
            .min_by_key(|a| ts_ns(&a["ts"]))
            .unwrap_or_else(|| panic!("no {rule:?} alert names {pkg_label}\n{}", step.context()))
    };
    let first = first_of(None);
    let first_secret = first_of(Some(SECRET_RULE));
    let ms = |from: &Value, to: &Value| (ts_ns(&to["ts"]) - ts_ns(&from["ts"])) as f64 / 1e6;
    let log_ms = ms(script_start, first);
    assert!(log_ms >= 0.0, "the first alert comes before the install script started: {first} {script_start}");
    // The program that misbehaved: the last exec of the alert's process before the alert.
    let culprit = step
        .kind("exec")
        .into_iter()
        .filter(|e| e["pid"] == first["pid"] && ts_ns(&e["ts"]) <= ts_ns(&first["ts"]))
        .max_by_key(|e| ts_ns(&e["ts"]));
    let wall = step.trace(trace_name).and_then(|t| t.trim().parse::<u128>().ok()).and_then(|start_ms| {
        let (seen, _) =
            step.stderr_lines.iter().find(|(_, l)| l.starts_with("watcher: ALERT") && l.contains(pkg_label))?;
        let seen_ms = seen.duration_since(UNIX_EPOCH).unwrap().as_millis();
        Some(seen_ms as i128 - start_ms as i128)
    });
    eprintln!(
        "TIME-TO-FIRST-ALERT {scenario}: install step exec -> first alert ({} {}) {log_ms:.1} ms; \
         exec of the process that raised it ({}) -> alert {}; install step exec -> first {SECRET_RULE} \
         ({}) {:.1} ms; wall clock, the malicious code's own start -> alert line on watcher's stderr {}",
        first["rule"].as_str().unwrap_or(""),
        first["action"].as_str().unwrap_or(""),
        culprit.and_then(|c| c["argv"][0].as_str()).unwrap_or("?"),
        culprit.map(|c| format!("{:.1} ms", ms(c, first))).unwrap_or_else(|| "n/a".into()),
        first_secret["variable"].as_str().unwrap_or(""),
        ms(script_start, first_secret),
        wall.map(|w| format!("{w} ms")).unwrap_or_else(|| "n/a".into())
    );
}

/// The exec that started npm's lifecycle script `postinstall` of `name`.
fn npm_script_start<'a>(step: &'a Step, name: &str) -> &'a Value {
    step.kind("exec")
        .into_iter()
        .find(|e| e["env"]["npm_lifecycle_event"] == "postinstall" && e["env"]["npm_package_name"] == name)
        .unwrap_or_else(|| panic!("no postinstall of {name} in the log\n{}", step.context()))
}

/// The first exec of pip's PEP 517 hook runner for the sdist of `name`.
fn pip_build_start<'a>(step: &'a Step, name: &str) -> &'a Value {
    step.kind("exec")
        .into_iter()
        .find(|e| {
            e["argv"]
                .as_array()
                .is_some_and(|a| a.iter().any(|s| s.as_str().is_some_and(|s| s.contains("_in_process"))))
                && e["cwd"].as_str().is_some_and(|c| c.contains(name))
        })
        .unwrap_or_else(|| panic!("no build of {name} in the log\n{}", step.context()))
}

/// The attacker received the secret values (audit: the attack works in this lab).
fn assert_attacker_got(lab: &Lab, sh: &Shared, vars: &[&str]) {
    let rec = lab.attacker();
    for var in vars {
        let value = &sh.secrets.iter().find(|(k, _)| k == var).unwrap().1;
        assert!(rec.contains_secret(value), "the attacker did not receive {var}: {rec:#?}");
    }
}

/// The malicious install step really ran (so "nothing reached the attacker" is not vacuous):
/// it wrote its start time, and its attempts failed.
fn assert_malicious_code_ran(step: &Step, trace: &str) {
    assert!(
        step.trace(&format!("{trace}.start")).is_some(),
        "the malicious install step of {trace} never ran\n{}",
        step.context()
    );
}

/// Enforce: nothing reached the attacker, not even a query under its domain.
fn assert_attacker_got_nothing(lab: &Lab, sh: &Shared, step: &Step) {
    let rec = lab.attacker();
    assert!(rec.dns.is_empty(), "the attacker's DNS server got queries: {:#?}\n{}", rec.dns, step.context());
    assert!(rec.http.is_empty(), "the attacker's HTTP server got connections: {:#?}\n{}", rec.http, step.context());
    for (k, v) in &sh.secrets {
        assert!(!rec.contains_secret(v), "the attacker got {k}");
    }
    let leaked: Vec<_> = lab.resolver_queries().into_iter().filter(|q| q.name.ends_with(ATTACKER_DOMAIN)).collect();
    assert!(leaked.is_empty(), "the lab resolver got queries for the attacker's domain: {leaked:#?}");
}

/// Replaying the log gives exactly the live run's alerts.
fn assert_replay_equals_live(step: &Step) {
    let out = Command::new(watcher_bin()).args(["replay", "--format", "json"]).arg(&step.log).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("replay output: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    let live: Vec<Value> = step
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

// ============================================================================ scenario 1

/// The AWS_* variables of the build's environment (scenario 1 sends every one of them).
const AWS_VARS: &[&str] = &["AWS_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"];

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

const JS_HIJACKED: &str = "npm:js-formatter-util@1.2.2 (postinstall)";

#[test]
fn hijacked_patch_npm_audit_flags_dns_exfil_and_install_completes() {
    if !root_or_skip() {
        return;
    }
    let g = lab();
    let sh = shared(&g);
    let r = npm_install(sh, json!({"js-formatter-util": "^1.2.1"}), "audit");
    let step = &r.step;
    assert_eq!(step.code, Some(0), "audit mode: npm's own code\n{}", step.context());
    assert_eq!(
        npm_installed_version(r.project.path(), "js-formatter-util").as_deref(),
        Some("1.2.2"),
        "the routine update picked the hijacked patch release\n{}",
        step.context()
    );
    let vars = assert_secret_alerts(step, JS_HIJACKED, sh, "flag");
    assert_eq!(vars, set(AWS_VARS), "{}", step.context());
    for &v in AWS_VARS {
        assert!(vars.contains(v), "no alert for {v}: {vars:?}\n{}", step.context());
    }
    assert!(!step.alerts_of("dns-denied").is_empty(), "{}", step.context());
    assert_values_nowhere(step, sh);
    assert_attacker_got(&sh.lab, sh, &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY"]);
    assert_replay_equals_live(step);
    report_time_to_alert(
        step,
        "hijacked-patch npm",
        npm_script_start(step, "js-formatter-util"),
        "js-formatter-util",
        "js-formatter-util.start",
    );
}

#[test]
fn hijacked_patch_npm_enforce_leaks_nothing_and_fails_77() {
    if !root_or_skip() {
        return;
    }
    let g = lab();
    let sh = shared(&g);
    let r = npm_install(sh, json!({"js-formatter-util": "^1.2.1"}), "enforce");
    let step = &r.step;
    assert_eq!(step.code, Some(77), "{}", step.context());
    assert_attacker_got_nothing(&sh.lab, sh, step);
    let vars = assert_secret_alerts(step, JS_HIJACKED, sh, "deny");
    assert_eq!(vars, set(AWS_VARS), "{}", step.context());
    for &v in AWS_VARS {
        assert!(vars.contains(v), "no alert for {v}: {vars:?}\n{}", step.context());
    }
    assert_values_nowhere(step, sh);
    npm_script_start(step, "js-formatter-util");
    assert_malicious_code_ran(step, "js-formatter-util");
    // Every lookup failed: the kernel dropped the queries (the resolver never saw them).
    let lookups = step.trace("js-formatter-util.lookups").unwrap_or_default();
    assert!(!lookups.is_empty() && !lookups.contains("resolved"), "lookups: {lookups:?}");
}

const PY_HIJACKED: &str = "pip:py-formatter-util";

#[test]
fn hijacked_patch_pip_audit_flags_dns_exfil_and_install_completes() {
    if !root_or_skip() {
        return;
    }
    let g = lab();
    let sh = shared(&g);
    let r = pip_install(sh, &["py-formatter-util~=1.2.1"], "audit");
    let step = &r.step;
    assert_eq!(step.code, Some(0), "{}", step.context());
    assert_eq!(pip_installed_version(&r.venv, "py-formatter-util").as_deref(), Some("1.2.2"), "{}", step.context());
    let vars = assert_secret_alerts(step, PY_HIJACKED, sh, "flag");
    assert_eq!(vars, set(AWS_VARS), "{}", step.context());
    for &v in AWS_VARS {
        assert!(vars.contains(v), "no alert for {v}: {vars:?}\n{}", step.context());
    }
    assert_values_nowhere(step, sh);
    assert_attacker_got(&sh.lab, sh, &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY"]);
    assert_replay_equals_live(step);
    report_time_to_alert(
        step,
        "hijacked-patch pip",
        pip_build_start(step, "py-formatter-util"),
        "py-formatter-util",
        "py-formatter-util.start",
    );
}

#[test]
fn hijacked_patch_pip_enforce_leaks_nothing_and_fails_77() {
    if !root_or_skip() {
        return;
    }
    let g = lab();
    let sh = shared(&g);
    let r = pip_install(sh, &["py-formatter-util~=1.2.1"], "enforce");
    let step = &r.step;
    assert_eq!(step.code, Some(77), "{}", step.context());
    assert_attacker_got_nothing(&sh.lab, sh, step);
    let vars = assert_secret_alerts(step, PY_HIJACKED, sh, "deny");
    assert_eq!(vars, set(AWS_VARS), "{}", step.context());
    for &v in AWS_VARS {
        assert!(vars.contains(v), "no alert for {v}: {vars:?}\n{}", step.context());
    }
    assert_values_nowhere(step, sh);
    pip_build_start(step, "py-formatter-util");
    assert_malicious_code_ran(step, "py-formatter-util");
    let lookups = step.trace("py-formatter-util.lookups").unwrap_or_default();
    assert!(!lookups.is_empty() && !lookups.contains("resolved"), "lookups: {lookups:?}");
}

// ============================================================================ scenario 2

/// The internal project's dependency spec: any version from 1.0.0 on (npm resolves it to the
/// highest version the registry knows, 99.99.9 from the proxied public registry).
const CONFUSED_SPEC: &str = ">=1.0.0";
const JS_CONFUSED: &str = "npm:acme-corp-auth-client@99.99.9 (postinstall)";
const PY_CONFUSED: &str = "pip:acme-corp-auth-client";

/// In enforce mode a shell spawned by a pip build is killed (see `SHELL_ACTION_PIP_ENFORCE`'s
/// value against the README's limitations if this changes).
const SHELL_ACTION_PIP_ENFORCE: &str = "kill";

/// The shell spawned by the install step is flagged/killed and names the package; curl is
/// denied by name.
fn assert_shell_and_curl(step: &Step, pkg: &str, shell_action: &str) {
    let shells = step.alerts_of(SHELL_RULE);
    assert!(!shells.is_empty(), "no {SHELL_RULE} alert\n{}", step.context());
    for a in &shells {
        assert!(a["package"].as_str().is_some_and(|p| p.contains(pkg)), "{a}");
        assert_eq!(a["action"], shell_action, "{a}");
    }
}

#[test]
fn dependency_confusion_npm_audit_flags_post_and_shell() {
    if !root_or_skip() {
        return;
    }
    let g = lab();
    let sh = shared(&g);
    let r = npm_install(sh, json!({"acme-corp-auth-client": CONFUSED_SPEC}), "audit");
    let step = &r.step;
    assert_eq!(step.code, Some(0), "{}", step.context());
    assert_eq!(
        npm_installed_version(r.project.path(), "acme-corp-auth-client").as_deref(),
        Some("99.99.9"),
        "the resolver picked the public 99.99.9\n{}",
        step.context()
    );
    let vars = assert_secret_alerts(step, JS_CONFUSED, sh, "flag");
    assert_eq!(vars, set(&["AWS_ACCESS_KEY", "DB_PASSWORD"]), "{}", step.context());
    for v in ["AWS_ACCESS_KEY", "DB_PASSWORD"] {
        assert!(vars.contains(v), "no alert for {v}: {vars:?}\n{}", step.context());
    }
    assert_shell_and_curl(step, "acme-corp-auth-client", "flag");
    assert!(
        step.alerts_of("exec-denied").iter().any(|a| a["message"].as_str().unwrap_or("").contains("curl")),
        "{}",
        step.context()
    );
    assert_values_nowhere(step, sh);
    assert_attacker_got(&sh.lab, sh, &["AWS_ACCESS_KEY", "DB_PASSWORD"]);
    assert_eq!(step.trace("acme-corp-auth-client.post").as_deref(), Some("200"));
    assert_replay_equals_live(step);
    report_time_to_alert(
        step,
        "dependency-confusion npm",
        npm_script_start(step, "acme-corp-auth-client"),
        "acme-corp-auth-client",
        "acme-corp-auth-client.start",
    );
}

#[test]
fn dependency_confusion_npm_enforce_leaks_nothing_and_fails_77() {
    if !root_or_skip() {
        return;
    }
    let g = lab();
    let sh = shared(&g);
    let r = npm_install(sh, json!({"acme-corp-auth-client": CONFUSED_SPEC}), "enforce");
    let step = &r.step;
    assert_eq!(step.code, Some(77), "{}", step.context());
    assert_attacker_got_nothing(&sh.lab, sh, step);
    assert_shell_and_curl(step, "acme-corp-auth-client", "kill");
    assert!(
        step.alerts().iter().all(|a| a["package"].as_str().is_some_and(|p| p.contains("acme-corp-auth-client"))),
        "{}",
        step.context()
    );
    assert!(
        !step.alerts_of("dns-denied").is_empty(),
        "the lookup of the attacker's host was not denied\n{}",
        step.context()
    );
    assert_values_nowhere(step, sh);
    assert_malicious_code_ran(step, "acme-corp-auth-client");
    // The POST failed (its lookup was dropped) and the shell was killed before it ran.
    assert_ne!(step.trace("acme-corp-auth-client.post").as_deref(), Some("200"));
    assert_eq!(step.trace("acme-corp-auth-client.shell").as_deref(), Some(r#"{"status":null,"signal":"SIGKILL"}"#));
}

#[test]
fn dependency_confusion_pip_audit_flags_post_and_shell() {
    if !root_or_skip() {
        return;
    }
    let g = lab();
    let sh = shared(&g);
    let r = pip_install(sh, &["acme-corp-auth-client"], "audit");
    let step = &r.step;
    assert_eq!(step.code, Some(0), "{}", step.context());
    assert_eq!(
        pip_installed_version(&r.venv, "acme-corp-auth-client").as_deref(),
        Some("99.99.9"),
        "{}",
        step.context()
    );
    let vars = assert_secret_alerts(step, PY_CONFUSED, sh, "flag");
    assert_eq!(vars, set(&["AWS_ACCESS_KEY", "DB_PASSWORD"]), "{}", step.context());
    for v in ["AWS_ACCESS_KEY", "DB_PASSWORD"] {
        assert!(vars.contains(v), "no alert for {v}: {vars:?}\n{}", step.context());
    }
    assert_shell_and_curl(step, "acme-corp-auth-client", "flag");
    assert_values_nowhere(step, sh);
    assert_attacker_got(&sh.lab, sh, &["AWS_ACCESS_KEY", "DB_PASSWORD"]);
    assert_replay_equals_live(step);
    report_time_to_alert(
        step,
        "dependency-confusion pip",
        pip_build_start(step, "acme-corp-auth-client"),
        "acme-corp-auth-client",
        "acme-corp-auth-client.start",
    );
}

#[test]
fn dependency_confusion_pip_enforce_leaks_nothing_and_fails_77() {
    if !root_or_skip() {
        return;
    }
    let g = lab();
    let sh = shared(&g);
    let r = pip_install(sh, &["acme-corp-auth-client"], "enforce");
    let step = &r.step;
    assert_eq!(step.code, Some(77), "{}", step.context());
    assert_attacker_got_nothing(&sh.lab, sh, step);
    assert!(
        step.alerts().iter().all(|a| a["package"].as_str().is_some_and(|p| p.contains(PY_CONFUSED))),
        "{}",
        step.context()
    );
    assert_shell_and_curl(step, "acme-corp-auth-client", SHELL_ACTION_PIP_ENFORCE);
    assert!(
        !step.alerts_of("dns-denied").is_empty(),
        "the lookup of the attacker's host was not denied\n{}",
        step.context()
    );
    assert_values_nowhere(step, sh);
    pip_build_start(step, "acme-corp-auth-client");
    assert_malicious_code_ran(step, "acme-corp-auth-client");
    assert_ne!(step.trace("acme-corp-auth-client.post").as_deref(), Some("200"));
}

// ============================================================================ clean projects

#[test]
fn clean_npm_project_with_both_registries_passes_enforce_without_alerts() {
    if !root_or_skip() {
        return;
    }
    let g = lab();
    let sh = shared(&g);
    let r = npm_install(
        sh,
        json!({"acme-corp-auth-client": "1.0.0", "js-formatter-util": "1.2.1", "lab-clean-lib": "^1.0.0"}),
        "enforce",
    );
    let step = &r.step;
    assert_eq!(step.code, Some(0), "{}", step.context());
    assert!(step.alerts().is_empty(), "a clean install raised alerts\n{}", step.context());
    assert_eq!(npm_installed_version(r.project.path(), "acme-corp-auth-client").as_deref(), Some("1.0.0"));
    assert_eq!(npm_installed_version(r.project.path(), "js-formatter-util").as_deref(), Some("1.2.1"));
    assert!(
        r.project.join("node_modules/lab-clean-lib/built.json").is_file(),
        "the clean postinstall ran\n{}",
        step.context()
    );
    npm_script_start(step, "lab-clean-lib");
    assert_attacker_got_nothing(&sh.lab, sh, step);
}

#[test]
fn clean_pip_project_with_both_indexes_passes_enforce_without_alerts() {
    if !root_or_skip() {
        return;
    }
    let g = lab();
    let sh = shared(&g);
    let r = pip_install(sh, &["acme-corp-auth-client==1.0.0", "py-formatter-util==1.2.1"], "enforce");
    let step = &r.step;
    assert_eq!(step.code, Some(0), "{}", step.context());
    assert!(step.alerts().is_empty(), "a clean install raised alerts\n{}", step.context());
    assert_eq!(pip_installed_version(&r.venv, "acme-corp-auth-client").as_deref(), Some("1.0.0"));
    assert_eq!(pip_installed_version(&r.venv, "py-formatter-util").as_deref(), Some("1.2.1"));
    pip_build_start(step, "py-formatter-util");
    assert_attacker_got_nothing(&sh.lab, sh, step);
}

// ============================================================================ the lab itself

/// A lab of its own comes up and goes away without a trace: namespaces, their /etc/netns
/// entries and the registry servers.
#[test]
fn lab_tears_down_namespaces_and_servers() {
    if !root_or_skip() {
        return;
    }
    let lab = Lab::start().unwrap_or_else(|e| panic!("{e:#}"));
    let namespaces = lab.namespaces();
    assert_eq!(namespaces.len(), 6, "{namespaces:?}");
    let pids: Vec<String> = namespaces
        .iter()
        .flat_map(|ns| {
            let out = Command::new("ip").args(["netns", "pids", ns]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect::<Vec<_>>()
        })
        .collect();
    assert!(pids.len() >= 4, "verdaccio x2 and pypiserver x2 run in the lab: {pids:?}");
    // The build host reaches the lab's registries by name and nothing else.
    let out = lab
        .build_cmd("curl")
        .args(["-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(lab.pip_url(Host::Public))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{}", String::from_utf8_lossy(&out.stderr));
    let out = lab.build_cmd("ip").args(["route", "show"]).output().unwrap();
    let routes = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(routes.lines().count(), 1, "only the lab's connected route: {routes}");
    assert!(routes.starts_with("198.51.100.0/24 dev eth0"), "{routes}");
    drop(lab);
    let left =
        String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).into_owned();
    for ns in &namespaces {
        assert!(!left.lines().any(|l| l.split_whitespace().next() == Some(ns.as_str())), "{ns} is left");
        assert!(!Path::new(&format!("/etc/netns/{ns}")).exists(), "/etc/netns/{ns} is left");
    }
    for pid in pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "lab process {pid} is left");
    }
}
