//! The CI integrations (docs/CI.md) and the release artifacts (scripts/release.sh), run on
//! this machine as the CI systems would run them:
//!
//! - the release is built from target/release/watcher by `scripts/release.sh --binary` (no
//!   second cargo build) and served from a file:// URL or a loopback HTTP server inside the
//!   lab's build namespace, never the internet;
//! - the GitHub Action: a simulated runner reads `action.yml` and `stop/action.yml`, runs their
//!   steps with the inputs mapped as the runner maps them, and implements the file commands
//!   (`GITHUB_ENV`, `GITHUB_PATH`, `GITHUB_OUTPUT`, `GITHUB_STEP_SUMMARY`) between steps; the
//!   workflow's own steps (`npm ci`) run as the runner user (uid 65534), in the lab's build
//!   namespace, against the lab's registries: a clean project passes in enforce mode, the
//!   hijacked patch release is blocked, annotated and fails the job;
//! - the GitLab include: before_script, script and the `.watcher-stop` line in one shell, the
//!   after_script in another, as GitLab's shell executor does, with the CI_* variables;
//! - the Jenkins wrapper: fetched from the release as the Jenkinsfile snippet does, with
//!   BUILD_TAG, JOB_NAME, WORKSPACE, JENKINS_URL, in audit mode with the attack;
//! - install refuses a tarball whose sha256 is wrong; the .deb is installed with dpkg, its
//!   `watcher drill` passes, and it is purged again.
//!
//! The job variable: the integrations recognise jobs by GITHUB_RUN_ID, CI_JOB_ID or BUILD_TAG.
//! A suite running inside GitHub Actions carries GITHUB_RUN_ID in every process, and a daemon
//! of this test would then take the other tests' processes for its job; so each simulated job
//! also sets a variable of its own (`WCIJ_<pid>_<n>`) and points WATCHER_ID_VAR at it (the
//! override the scripts have for exactly this). Everything else is as on the CI system.
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use watcher_tests::lab::{Host, Lab};
use watcher_tests::{TempDir, read_jsonl, root_or_skip, watcher_bin};

/// The runner user of the simulated CI systems (nobody).
const RUNNER_UID: u32 = 65534;
const STEP_TIMEOUT: Duration = Duration::from_secs(300);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

// ============================================================================ the release

static RELEASE: Mutex<Option<Result<TempDir, String>>> = Mutex::new(None);

extern "C" fn drop_shared() {
    RELEASE.lock().unwrap_or_else(|e| e.into_inner()).take();
    LAB.lock().unwrap_or_else(|e| e.into_inner()).take();
}

fn register_atexit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: registering a plain extern "C" function.
    ONCE.call_once(|| unsafe {
        libc::atexit(drop_shared);
    });
}

/// scripts/release.sh over target/release/watcher, once per test process.
fn release() -> PathBuf {
    register_atexit();
    let mut g = RELEASE.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        let dir = TempDir::new("watcher-ci-release");
        // World-readable: the runner user downloads from it.
        fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/release.sh"))
            .arg("--binary")
            .arg(watcher_bin())
            .arg("--out")
            .arg(dir.path())
            .output()
            .expect("run scripts/release.sh");
        *g = Some(if out.status.success() {
            Ok(dir)
        } else {
            Err(format!("release.sh failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr)))
        });
    }
    match g.as_ref().unwrap() {
        Ok(d) => d.path().to_path_buf(),
        Err(e) => panic!("{e}"),
    }
}

fn version() -> String {
    let cargo = fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    cargo.lines().find_map(|l| l.strip_prefix("version = \"")).unwrap().trim_end_matches('"').to_string()
}

fn head_commit() -> String {
    let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).current_dir(repo_root()).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

// ============================================================================ the lab

struct Shared {
    lab: Lab,
    secrets: Vec<(&'static str, String)>,
}

static LAB: Mutex<Option<Result<Shared, String>>> = Mutex::new(None);

fn setup() -> Result<Shared, String> {
    let lab = Lab::start().map_err(|e| format!("{e:#}"))?;
    let fx = repo_root().join("tests/fixtures/lab/npm");
    for (host, pkg) in [
        (Host::Internal, "lab-clean-lib-1.0.0"),
        (Host::Public, "js-formatter-util-1.2.1"),
        (Host::Public, "js-formatter-util-1.2.2"),
    ] {
        lab.npm_publish(host, &fx.join(pkg)).map_err(|e| format!("npm publish {pkg}: {e:#}"))?;
    }
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 ^ u64::from(std::process::id());
    let secrets = vec![
        ("AWS_ACCESS_KEY_ID", format!("AKIAWCI{:016X}", seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))),
        ("AWS_SECRET_ACCESS_KEY", format!("wciSecret{:020}", seed.wrapping_mul(0xbf58_476d_1ce4_e5b9) >> 1)),
    ];
    Ok(Shared { lab, secrets })
}

fn lab() -> MutexGuard<'static, Option<Result<Shared, String>>> {
    register_atexit();
    let mut g = LAB.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        *g = Some(setup());
    }
    g
}

fn shared<'a>(g: &'a MutexGuard<'static, Option<Result<Shared, String>>>) -> &'a Shared {
    match g.as_ref().unwrap() {
        Ok(s) => s,
        Err(e) => panic!("lab setup failed: {e}"),
    }
}

static N: AtomicU32 = AtomicU32::new(0);

fn chown_r(path: &Path, uid: u32) {
    let st = Command::new("chown").arg("-R").arg(format!("{uid}:{uid}")).arg(path).status().unwrap();
    assert!(st.success());
}

/// A project with `deps`, its `.npmrc` pointing at the internal registry (which proxies the
/// public one) and a package-lock.json (resolved unwatched), owned by the runner user.
fn npm_project(sh: &Shared, deps: Value) -> TempDir {
    let p = TempDir::new("watcher-ci-project");
    let allow: serde_json::Map<String, Value> =
        deps.as_object().unwrap().keys().map(|k| (k.clone(), json!(true))).collect();
    fs::write(
        p.join("package.json"),
        serde_json::to_string_pretty(
            &json!({"name": "ci-build", "version": "1.0.0", "private": true, "dependencies": deps, "allowScripts": allow}),
        )
        .unwrap(),
    )
    .unwrap();
    fs::write(p.join(".npmrc"), format!("registry={}\n", sh.lab.npm_url(Host::Internal))).unwrap();
    let home = TempDir::new("watcher-ci-lock-home");
    fs::write(home.join("global-npmrc"), "").unwrap();
    sh.lab
        .run_in_build(
            sh.lab
                .build_cmd("npm")
                .args(["install", "--package-lock-only", "--no-audit", "--no-fund"])
                .current_dir(p.path())
                .env("HOME", home.path())
                .env("npm_config_cache", home.join("cache"))
                .env("npm_config_globalconfig", home.join("global-npmrc"))
                .env("npm_config_update_notifier", "false"),
        )
        .expect("npm install --package-lock-only");
    assert!(p.join("package-lock.json").is_file());
    chown_r(p.path(), RUNNER_UID);
    p
}

/// Removes the root-owned state directory, stopping a daemon a failed test left running
/// (through its supervisor, as the stop step does).
struct StateRoot(PathBuf);

impl StateRoot {
    fn new() -> StateRoot {
        let p = PathBuf::from(format!(
            "/var/lib/watcher-ci-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&p);
        StateRoot(p)
    }
}

impl Drop for StateRoot {
    fn drop(&mut self) {
        // A failed test says what the daemon saw before its log goes with the directory.
        if std::thread::panicking()
            && let Ok(log) = fs::read_to_string(self.0.join("daemon.log"))
        {
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "daemon log ({}), last {} lines:\n{}",
                self.0.display(),
                tail.len(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if let Ok(pid) = fs::read_to_string(self.0.join("daemon.pid")) {
            let pid = pid.trim().to_string();
            if Path::new(&format!("/proc/{pid}")).exists() {
                let _ = fs::write(self.0.join("stop"), "");
                watcher_tests::wait_until(Duration::from_secs(30), || !Path::new(&format!("/proc/{pid}")).exists());
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

struct StepOut {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl StepOut {
    fn all(&self) -> String {
        format!("exit {:?}\nstdout:\n{}\nstderr:\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs `cmd` with a deadline; stdout and stderr are collected through files.
fn run_with_deadline(mut cmd: Command, what: &str) -> StepOut {
    let dir = TempDir::new("watcher-ci-step-out");
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(dir.join("out")).unwrap())
        .stderr(fs::File::create(dir.join("err")).unwrap());
    let mut child: Child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t.elapsed() > STEP_TIMEOUT {
            // What it was waiting on: the processes under it, with their states (`T`: held).
            let ps = Command::new("ps").args(["-eo", "pid,ppid,stat,wchan:24,etimes,args", "--forest"]).output();
            let tree = ps.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
            let pid = child.id().to_string();
            let lines: Vec<&str> = tree.lines().collect();
            let from = lines.iter().position(|l| l.split_whitespace().next() == Some(pid.as_str()));
            eprintln!(
                "{what}: still running after {STEP_TIMEOUT:?}; its processes:\n{}",
                from.map(|i| lines[i..].iter().take(80).copied().collect::<Vec<_>>().join("\n")).unwrap_or(tree)
            );
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {STEP_TIMEOUT:?}\nstderr:\n{}",
                fs::read_to_string(dir.join("err")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = StepOut {
        code: status.code(),
        stdout: fs::read_to_string(dir.join("out")).unwrap_or_default(),
        stderr: fs::read_to_string(dir.join("err")).unwrap_or_default(),
    };
    eprintln!("{what}: exit {:?} in {:.1?}", out.code, t.elapsed());
    out
}

/// A bash script in the build namespace, as `uid` (root: None), with exactly `env`.
fn build_bash(
    sh: &Shared,
    script: &str,
    cwd: &Path,
    env: &BTreeMap<String, String>,
    uid: Option<u32>,
    what: &str,
) -> StepOut {
    let mut cmd = match uid {
        Some(u) => {
            let mut c = sh.lab.build_cmd("setpriv");
            c.args([&format!("--reuid={u}"), &format!("--regid={u}"), "--clear-groups", "bash"]);
            c
        }
        None => sh.lab.build_cmd("bash"),
    };
    cmd.args(["--noprofile", "--norc", "-eo", "pipefail", "-c", script]).current_dir(cwd).env_clear().envs(env);
    run_with_deadline(cmd, what)
}

fn base_env(home: &Path) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".into(), "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into());
    env.insert("HOME".into(), home.display().to_string());
    env.insert("LANG".into(), "C.UTF-8".into());
    env.insert("CI".into(), "true".into());
    env.insert("npm_config_cache".into(), home.join("npm-cache").display().to_string());
    env.insert("npm_config_globalconfig".into(), home.join("global-npmrc").display().to_string());
    env.insert("npm_config_update_notifier".into(), "false".into());
    env
}

fn runner_home() -> TempDir {
    let home = TempDir::new("watcher-ci-home");
    fs::write(home.join("global-npmrc"), "").unwrap();
    chown_r(home.path(), RUNNER_UID);
    home
}

fn job_var() -> (String, String) {
    (
        format!("WCIJ_{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)),
        format!("{}", 9_000_000 + N.fetch_add(1, Ordering::SeqCst)),
    )
}

fn job_logs(dir: &Path) -> Vec<Value> {
    let mut all = Vec::new();
    let mut names: Vec<PathBuf> =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| e.unwrap().path()).collect();
    names.sort();
    assert!(!names.is_empty(), "no job log in {}", dir.display());
    for n in names {
        all.extend(read_jsonl(&n));
    }
    all
}

fn alerts(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["kind"] == "alert").collect()
}

/// The npm ci step's exec (argv `npm ci ...`) is in the job's log: the step was watched.
fn assert_npm_ci_watched(events: &[Value]) {
    assert!(
        events.iter().any(|e| e["kind"] == "exec"
            && e["argv"].as_array().is_some_and(|a| a.iter().any(|x| x == "ci"))
            && e["argv"].as_array().is_some_and(|a| a.iter().any(|x| x.as_str().is_some_and(|s| s.ends_with("npm"))))),
        "no exec of `npm ci` in the job log"
    );
    let start = events.iter().find(|e| e["kind"] == "start").expect("a start record");
    assert_eq!(start["mode"], "daemon", "{start}");
}

fn assert_no_daemon_left(root: &Path) {
    assert!(!root.exists(), "the state directory {} is left behind", root.display());
    let cfg = root.join("daemon.yaml").display().to_string();
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&ps.stdout).contains(&cfg), "a daemon with {cfg} still runs");
}

fn assert_secrets_nowhere(sh: &Shared, texts: &[&str]) {
    for (name, value) in &sh.secrets {
        for t in texts {
            assert!(!t.contains(value.as_str()), "the value of {name} appears in the output");
        }
    }
}

// ============================================================================ GitHub runner

/// What the runner knows of the job: its environment (GITHUB_ENV and GITHUB_PATH applied),
/// and the file commands of the last step.
struct Runner {
    env: BTreeMap<String, String>,
    temp: TempDir,
    summary: String,
    step: u32,
}

struct Outputs(BTreeMap<String, String>);

/// Parses a file-command file: `KEY=VALUE` lines and `KEY<<DELIM` blocks.
fn file_commands(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if let Some((k, delim)) = l.split_once("<<") {
            let mut v = Vec::new();
            for l2 in lines.by_ref() {
                if l2 == delim {
                    break;
                }
                v.push(l2);
            }
            out.insert(k.to_string(), v.join("\n"));
        } else if let Some((k, v)) = l.split_once('=') {
            out.insert(k.to_string(), v.to_string());
        }
    }
    out
}

impl Runner {
    fn new(home: &Path, workspace: &Path, job: &(String, String)) -> Runner {
        let temp = TempDir::new("watcher-ci-runner-temp");
        chown_r(temp.path(), RUNNER_UID);
        let mut env = base_env(home);
        for (k, v) in [
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_RUN_ID", job.1.as_str()),
            ("GITHUB_RUN_NUMBER", "7"),
            ("GITHUB_JOB", "build"),
            ("GITHUB_REPOSITORY", "acme/web"),
            ("GITHUB_WORKFLOW", "ci"),
            ("RUNNER_OS", "Linux"),
            ("RUNNER_ARCH", "X64"),
        ] {
            env.insert(k.into(), v.into());
        }
        env.insert("GITHUB_WORKSPACE".into(), workspace.display().to_string());
        env.insert("RUNNER_TEMP".into(), temp.path().display().to_string());
        env.insert(job.0.clone(), job.1.clone());
        Runner { env, temp, summary: String::new(), step: 0 }
    }

    /// One step: `script` in bash, as root (the action's steps: they use sudo on a hosted
    /// runner, and this machine has none) or as the runner user, with the file commands.
    fn step(
        &mut self,
        sh: &Shared,
        script: &str,
        extra: &BTreeMap<String, String>,
        root: bool,
        what: &str,
    ) -> (StepOut, Outputs) {
        self.step += 1;
        let fc = self.temp.join(format!("_runner_file_commands_{}", self.step));
        fs::create_dir_all(&fc).unwrap();
        let mut env = self.env.clone();
        env.extend(extra.clone());
        for (var, name) in [
            ("GITHUB_ENV", "set_env"),
            ("GITHUB_PATH", "add_path"),
            ("GITHUB_OUTPUT", "set_output"),
            ("GITHUB_STEP_SUMMARY", "step_summary"),
            ("GITHUB_STATE", "save_state"),
        ] {
            fs::write(fc.join(name), "").unwrap();
            env.insert(var.into(), fc.join(name).display().to_string());
        }
        chown_r(&fc, RUNNER_UID);
        let cwd = PathBuf::from(&self.env["GITHUB_WORKSPACE"]);
        let out = build_bash(sh, script, &cwd, &env, if root { None } else { Some(RUNNER_UID) }, what);
        let read = |n: &str| fs::read_to_string(fc.join(n)).unwrap_or_default();
        self.env.extend(file_commands(&read("set_env")));
        for p in read("add_path").lines().filter(|l| !l.is_empty()) {
            let old = self.env["PATH"].clone();
            self.env.insert("PATH".into(), format!("{p}:{old}"));
        }
        self.summary.push_str(&read("step_summary"));
        (out, Outputs(file_commands(&read("set_output"))))
    }

    /// A `uses:` step: the action's composite steps, inputs mapped as the runner maps them
    /// (`${{ inputs.NAME }}` in the step's env from `with`, else the input's default).
    fn uses(
        &mut self,
        sh: &Shared,
        action_dir: &Path,
        with: &[(&str, &str)],
        extra: &BTreeMap<String, String>,
    ) -> (StepOut, Outputs) {
        let yml: serde_yaml::Value =
            serde_yaml::from_str(&fs::read_to_string(action_dir.join("action.yml")).unwrap()).unwrap();
        assert_eq!(yml["runs"]["using"], "composite");
        let inputs = yml["inputs"].as_mapping().cloned().unwrap_or_default();
        for (k, _) in with {
            assert!(inputs.contains_key(*k), "{} has no input {k}", action_dir.display());
        }
        let input = |name: &str| -> String {
            with.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()).unwrap_or_else(|| {
                inputs.get(name).and_then(|i| i.get("default")).and_then(|d| d.as_str()).unwrap_or("").to_string()
            })
        };
        let steps = yml["runs"]["steps"].as_sequence().unwrap();
        let mut last = None;
        for s in steps {
            assert_eq!(s["shell"], "bash");
            let mut env = extra.clone();
            env.insert("GITHUB_ACTION_PATH".into(), action_dir.display().to_string());
            if let Some(m) = s["env"].as_mapping() {
                for (k, v) in m {
                    let v = v.as_str().unwrap_or("");
                    let v = match v.trim().strip_prefix("${{ inputs.").and_then(|r| r.strip_suffix("}}")) {
                        Some(name) => input(name.trim()),
                        None => v.to_string(),
                    };
                    env.insert(k.as_str().unwrap().to_string(), v);
                }
            }
            let run = s["run"].as_str().unwrap();
            last = Some(self.step(sh, run, &env, true, &format!("uses {}", action_dir.display())));
        }
        last.unwrap()
    }
}

/// The watched job of the GitHub scenarios: start, a `watcher --version` step (GITHUB_PATH),
/// `npm ci` as the runner user, stop. Returns (npm step, stop step, stop outputs, summary,
/// the job's logs, the runner).
struct GithubJob {
    npm: StepOut,
    stop: StepOut,
    outputs: BTreeMap<String, String>,
    summary: String,
    events: Vec<Value>,
    runner: Runner,
}

fn github_job(sh: &Shared, project: &Path, mode: &str, root: &StateRoot) -> GithubJob {
    let home = runner_home();
    let job = job_var();
    let mut r = Runner::new(home.path(), project, &job);
    let extra: BTreeMap<String, String> =
        [("WATCHER_ROOT".to_string(), root.0.display().to_string()), ("WATCHER_ID_VAR".to_string(), job.0.clone())]
            .into();
    let release_url = format!("file://{}", release().display());
    let (start, out) = r.uses(
        sh,
        &repo_root(),
        &[("policy", "npm"), ("mode", mode), ("release-url", &release_url), ("allowed-endpoints", "example.test:443")],
        &extra,
    );
    assert_eq!(start.code, Some(0), "start step\n{}", start.all());
    assert_eq!(
        out.0.get("version").map(String::as_str),
        Some(format!("watcher {} (commit {})", version(), head_commit()).as_str()),
        "{}",
        start.all()
    );
    assert!(r.env["PATH"].starts_with(&format!("{}/bin:", root.0.display())), "GITHUB_PATH: {}", r.env["PATH"]);
    let (v, _) = r.step(sh, "watcher --version", &BTreeMap::new(), false, "run: watcher --version");
    assert_eq!(v.code, Some(0), "watcher is on PATH for later steps\n{}", v.all());
    let mut secrets: BTreeMap<String, String> = BTreeMap::new();
    for (k, val) in &sh.secrets {
        secrets.insert(k.to_string(), val.clone());
    }
    let (npm, _) = r.step(sh, "npm ci --no-audit --no-fund", &secrets, false, "run: npm ci (runner user)");
    let (stop, outs) = r.uses(sh, &repo_root().join("stop"), &[], &extra);
    let outputs = outs.0;
    let log_dir = PathBuf::from(outputs.get("log-dir").unwrap_or_else(|| panic!("no log-dir output\n{}", stop.all())));
    assert!(log_dir.starts_with(r.temp.path()), "logs under RUNNER_TEMP: {}", log_dir.display());
    // actions/upload-artifact runs as the runner user: it must be able to read every log.
    let readable = Command::new("setpriv")
        .args([&format!("--reuid={RUNNER_UID}"), &format!("--regid={RUNNER_UID}"), "--clear-groups", "sh", "-c"])
        .arg("cat \"$1\"/* >/dev/null")
        .arg("sh")
        .arg(&log_dir)
        .status()
        .unwrap();
    assert!(readable.success(), "the runner user cannot read the logs in {}", log_dir.display());
    let events = job_logs(&log_dir);
    assert_npm_ci_watched(&events);
    assert_no_daemon_left(&root.0);
    let summary = r.summary.clone();
    GithubJob { npm, stop, outputs, summary, events, runner: r }
}

#[test]
fn github_action_clean_npm_ci_passes_enforce() {
    if !root_or_skip() {
        return;
    }
    let g = lab();
    let sh = shared(&g);
    let project = npm_project(sh, json!({"lab-clean-lib": "^1.0.0", "js-formatter-util": "1.2.1"}));
    let root = StateRoot::new();
    let j = github_job(sh, project.path(), "enforce", &root);
    assert_eq!(j.npm.code, Some(0), "npm ci\n{}", j.npm.all());
    assert!(project.join("node_modules/lab-clean-lib/built.json").is_file(), "the clean postinstall ran");
    assert_eq!(j.stop.code, Some(0), "stop step\n{}", j.stop.all());
    assert_eq!(j.outputs.get("verdict").map(String::as_str), Some("clean"), "{}", j.stop.all());
    assert!(alerts(&j.events).is_empty(), "alerts in a clean job: {:#?}", alerts(&j.events));
    assert!(j.summary.contains("clean"), "the job summary says clean:\n{}", j.summary);
    assert!(!j.stop.stderr.contains("::error"), "{}", j.stop.all());
    // The composed policy: enforce, with the allowed endpoint.
    let start = j.events.iter().find(|e| e["kind"] == "start").unwrap();
    let policy_yaml = start["policy_yaml"].as_str().unwrap_or("");
    assert!(policy_yaml.contains("host: example.test"), "{policy_yaml}");
    assert_eq!(start["policy"]["mode"], "enforce", "{start}");
    assert!(j.runner.temp.join("watcher/watcher.sarif").is_file());
}

#[test]
fn github_action_blocks_hijacked_patch_annotates_and_fails_the_job() {
    if !root_or_skip() {
        return;
    }
    let g = lab();
    let sh = shared(&g);
    let project = npm_project(sh, json!({"js-formatter-util": "1.2.2"}));
    sh.lab.clear_records();
    let root = StateRoot::new();
    let j = github_job(sh, project.path(), "enforce", &root);
    assert_eq!(j.stop.code, Some(77), "the stop step fails the job in enforce mode\n{}", j.stop.all());
    assert_eq!(j.outputs.get("verdict").map(String::as_str), Some("violation"), "{}", j.stop.all());
    let al = alerts(&j.events);
    assert!(
        al.iter().any(|a| a["rule"] == "secret-exfil"
            && a["package"].as_str().is_some_and(|p| p.contains("js-formatter-util@1.2.2"))),
        "no secret-exfil alert for the hijacked package: {al:#?}"
    );
    assert!(
        j.stop.stderr.lines().chain(j.stop.stdout.lines()).any(|l| l.starts_with("::error ") && l.contains("title=")),
        "no ::error annotation\n{}",
        j.stop.all()
    );
    assert!(j.summary.contains("violation"), "the job summary says violation:\n{}", j.summary);
    let rec = sh.lab.attacker();
    assert!(rec.dns.is_empty() && rec.http.is_empty(), "the attacker received something: {:?}", rec.dns);
    assert_secrets_nowhere(sh, &[&j.summary, &j.stop.stdout, &j.stop.stderr, &j.npm.stderr]);
}

// ============================================================================ GitLab

/// A loopback HTTP server (python3 -m http.server) in the build namespace serving `dir`.
struct BuildHttp(Child);

impl Drop for BuildHttp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve_in_build(sh: &Shared, dir: &Path, port: u16) -> BuildHttp {
    let child = sh
        .lab
        .build_cmd("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    let srv = BuildHttp(child);
    let url = format!("http://127.0.0.1:{port}/SHA256SUMS");
    let up = watcher_tests::wait_until(Duration::from_secs(20), || {
        sh.lab.build_cmd("curl").args(["-fs", "-o", "/dev/null", &url]).status().is_ok_and(|s| s.success())
    });
    assert!(up, "the loopback release server did not come up");
    srv
}

fn yaml_lines(v: &serde_yaml::Value) -> Vec<String> {
    v.as_sequence().unwrap().iter().map(|l| l.as_str().unwrap().to_string()).collect()
}

#[test]
fn gitlab_include_installs_over_http_and_watches_npm_ci() {
    if !root_or_skip() {
        return;
    }
    let g = lab();
    let sh = shared(&g);
    let project = npm_project(sh, json!({"lab-clean-lib": "^1.0.0"}));
    let root = StateRoot::new();
    let _srv = serve_in_build(sh, &release(), 8765);
    let inc: serde_yaml::Value =
        serde_yaml::from_str(&fs::read_to_string(repo_root().join("dist/ci/gitlab/watcher.gitlab-ci.yml")).unwrap())
            .unwrap();
    let tmpl = &inc[".watcher"];
    let home = runner_home();
    let job = job_var();
    let mut env = base_env(home.path());
    // The template's variables, then the job's own (they win, as in GitLab).
    for (k, v) in tmpl["variables"].as_mapping().unwrap() {
        env.insert(k.as_str().unwrap().into(), v.as_str().unwrap_or("").into());
    }
    for (k, v) in [
        ("GITLAB_CI", "true"),
        ("CI_JOB_ID", job.1.as_str()),
        ("CI_PIPELINE_ID", "4242"),
        ("CI_PROJECT_PATH", "acme/web"),
        ("CI_JOB_NAME", "npm-build"),
        ("CI_SERVER_URL", "https://gitlab.example.test"),
        ("WATCHER_POLICY", "npm"),
        ("WATCHER_MODE", "enforce"),
        ("WATCHER_RELEASE_URL", "http://127.0.0.1:8765"),
        ("WATCHER_ROOT", &root.0.display().to_string()),
        ("WATCHER_ID_VAR", &job.0),
    ] {
        env.insert(k.into(), v.into());
    }
    env.insert(job.0.clone(), job.1.clone());
    env.insert("CI_PROJECT_DIR".into(), project.path().display().to_string());
    env.insert("CI_BUILDS_DIR".into(), project.path().parent().unwrap().display().to_string());
    // The shell executor: before_script and script in one shell, after_script in another.
    let mut script = yaml_lines(&tmpl["before_script"]);
    script.push("npm ci --no-audit --no-fund".into());
    script.extend(yaml_lines(&inc[".watcher-stop"]["script"]));
    let main = build_bash(sh, &script.join("\n"), project.path(), &env, None, "gitlab: before_script + script");
    let after = build_bash(
        sh,
        &yaml_lines(&tmpl["after_script"]).join("\n"),
        project.path(),
        &env,
        None,
        "gitlab: after_script",
    );
    assert_eq!(main.code, Some(0), "{}", main.all());
    assert_eq!(after.code, Some(0), "{}", after.all());
    assert!(after.stderr.contains("nothing to stop"), "{}", after.all());
    let out = project.join("watcher");
    let md = fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("clean"), "{md}");
    let events = job_logs(&out.join("logs"));
    assert_npm_ci_watched(&events);
    assert!(alerts(&events).is_empty(), "{:#?}", alerts(&events));
    assert!(project.join("node_modules/lab-clean-lib/built.json").is_file());
    assert_no_daemon_left(&root.0);
}

// ============================================================================ Jenkins

#[test]
fn jenkins_wrapper_from_the_release_audits_the_attack_without_failing() {
    if !root_or_skip() {
        return;
    }
    let g = lab();
    let sh = shared(&g);
    let project = npm_project(sh, json!({"js-formatter-util": "1.2.2"}));
    sh.lab.clear_records();
    let root = StateRoot::new();
    let home = runner_home();
    let job = job_var();
    let mut env = base_env(home.path());
    for (k, v) in [
        ("JENKINS_URL", "https://jenkins.example.test/"),
        ("JOB_NAME", "acme/web"),
        ("BUILD_NUMBER", "12"),
        ("BUILD_TAG", &format!("jenkins-acme-web-{}", job.1)),
        ("WATCHER_POLICY", "npm"),
        ("WATCHER_MODE", "audit"),
        ("WATCHER_ROOT", &root.0.display().to_string()),
        ("WATCHER_ID_VAR", &job.0),
    ] {
        env.insert(k.into(), v.into());
    }
    env.insert(job.0.clone(), job.1.clone());
    env.insert("WORKSPACE".into(), project.path().display().to_string());
    env.insert("WATCHER_RELEASE_URL".into(), format!("file://{}", release().display()));
    for (k, v) in &sh.secrets {
        env.insert(k.to_string(), v.clone());
    }
    // The Jenkinsfile line of docs/CI.md.
    let out = build_bash(
        sh,
        r#"curl -fsSLO "$WATCHER_RELEASE_URL/watcher-step.sh" && bash watcher-step.sh npm ci --no-audit --no-fund"#,
        project.path(),
        &env,
        None,
        "jenkins: sh watcher-step.sh npm ci",
    );
    assert_eq!(out.code, Some(0), "audit mode does not fail the build\n{}", out.all());
    assert!(out.stderr.contains("verdict: flagged"), "{}", out.all());
    let events = job_logs(&project.join("watcher/logs"));
    assert_npm_ci_watched(&events);
    assert!(
        alerts(&events).iter().any(|a| a["rule"] == "secret-exfil" && a["action"] == "flag"),
        "{:#?}",
        alerts(&events)
    );
    let md = fs::read_to_string(project.join("watcher/report.md")).unwrap();
    assert!(md.contains("flagged"), "{md}");
    // Audit mode lets the attack through (the lab's attacker saw its queries): what was
    // reported is what happened.
    assert!(!sh.lab.attacker().dns.is_empty(), "the audited attack reached the lab attacker");
    assert_secrets_nowhere(sh, &[&out.stdout, &out.stderr, &md]);
    assert_no_daemon_left(&root.0);
}

// ============================================================================ install checks

#[test]
fn install_refuses_a_tarball_whose_checksum_does_not_match() {
    if !root_or_skip() {
        return;
    }
    let rel = release();
    let bad = TempDir::new("watcher-ci-bad-release");
    for e in fs::read_dir(&rel).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), bad.join(e.file_name())).unwrap();
    }
    let tarball = format!("watcher-{}-x86_64-linux-gnu.tar.gz", version());
    let mut data = fs::read(bad.join(&tarball)).unwrap();
    data.push(0);
    fs::write(bad.join(&tarball), data).unwrap();
    let core = repo_root().join("dist/ci/watcher-ci.sh");
    for (url, pin, want) in [
        (format!("file://{}", bad.path().display()), String::new(), "sha256 mismatch"),
        (format!("file://{}", rel.display()), "0".repeat(64), "pinned WATCHER_SHA256"),
    ] {
        let root = StateRoot::new();
        let out = Command::new("bash")
            .arg(&core)
            .arg("install")
            .env("WATCHER_ROOT", &root.0)
            .env("WATCHER_RELEASE_URL", &url)
            .env("WATCHER_SHA256", &pin)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert!(err.contains(want), "{err}");
        assert!(!root.0.join("bin/watcher").exists(), "a bad release was installed");
        assert!(!root.0.join("release").exists(), "a bad release was unpacked");
    }
}

// ============================================================================ release artifacts

/// Purges the package on drop (also when the test fails).
struct DebInstalled;

impl Drop for DebInstalled {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "watcher"]).status();
    }
}

#[test]
fn release_tarball_and_deb_install_and_the_drill_passes() {
    if !root_or_skip() {
        return;
    }
    let rel = release();
    let v = version();
    let name = format!("watcher-{v}-x86_64-linux-gnu");
    // The tarball's sha256 file checks, and so does SHA256SUMS.
    for f in [format!("{name}.tar.gz.sha256"), "SHA256SUMS".to_string()] {
        let st = Command::new("sha256sum").args(["--quiet", "-c", &f]).current_dir(&rel).status().unwrap();
        assert!(st.success(), "sha256sum -c {f}");
    }
    let x = TempDir::new("watcher-ci-tarball");
    assert!(
        Command::new("tar")
            .arg("-xzf")
            .arg(rel.join(format!("{name}.tar.gz")))
            .arg("-C")
            .arg(x.path())
            .status()
            .unwrap()
            .success()
    );
    let t = x.join(&name);
    for f in [
        "watcher",
        "README.md",
        "BUILDINFO",
        "dist/daemon.yaml",
        "dist/watcher.service",
        "policies/npm.yaml",
        "ci/watcher-ci.sh",
    ] {
        assert!(t.join(f).is_file(), "{f} is in the tarball");
    }
    let want = format!("watcher {v} (commit {})", head_commit());
    let got = Command::new(t.join("watcher")).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), want);
    let info = fs::read_to_string(t.join("BUILDINFO")).unwrap();
    assert!(
        info.contains("glibc >= 2.") && info.contains(&head_commit()) && info.contains("kernel Linux >= 5.8"),
        "{info}"
    );

    // The .deb, installed into this system and purged again.
    let st = Command::new("dpkg-query").args(["-W", "-f=${Status}", "watcher"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&st.stdout).contains("install ok installed"),
        "a watcher package is already installed on this machine; this test will not replace it"
    );
    let deb = rel.join(format!("watcher_{v}_amd64.deb"));
    let guard = DebInstalled;
    let out = Command::new("dpkg").arg("-i").arg(&deb).output().unwrap();
    assert!(out.status.success(), "dpkg -i: {}", String::from_utf8_lossy(&out.stderr));
    let got = Command::new("/usr/bin/watcher").arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), want);
    let unit = fs::read_to_string("/usr/lib/systemd/system/watcher.service").unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/watcher daemon --config /etc/watcher/daemon.yaml"), "{unit}");
    assert!(Path::new("/etc/watcher/daemon.yaml").is_file() && Path::new("/etc/watcher/policies/npm.yaml").is_file());
    assert!(Path::new("/usr/share/man/man1/watcher.1.gz").is_file());
    assert_eq!(fs::metadata("/usr/bin/watcher").unwrap().uid(), 0);
    let drill = run_with_deadline(
        {
            let mut c = Command::new("/usr/bin/watcher");
            c.arg("drill").current_dir("/");
            c
        },
        "/usr/bin/watcher drill",
    );
    assert_eq!(drill.code, Some(0), "the installed watcher's drill\n{}", drill.all());
    drop(guard);
    assert!(!Path::new("/usr/bin/watcher").exists(), "dpkg --purge removed the binary");
    assert!(!Path::new("/etc/watcher/daemon.yaml").exists(), "dpkg --purge removed the configuration");
}
