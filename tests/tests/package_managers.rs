//! Real package managers under `watcher run` with the shipped policies (`policies/*.yaml`):
//!
//! * npm installs packages from a registry served by the test on 127.0.0.1, one of them with a
//!   postinstall script that spawns an interactive shell (`sh -i`, attack-shaped: a plain
//!   `sh -c` is allowed under `shells: suspicious`, see policy_shells.rs);
//! * pip installs an sdist from a "simple" index served by the test on 127.0.0.1, whose build
//!   spawns an interactive shell (legacy `setup.py` and PEP 517 build paths);
//! * cargo builds a path crate offline whose build script spawns an interactive shell.
//!
//! Audit mode must flag the shell (action `flag`, the command's exit code), enforce mode must
//! kill it in the kernel (action `kill`, exit 77; pip builds are only flagged there, see the
//! README's limitations, but still fail the step), and a clean package must pass enforce mode
//! without a single alert. All network traffic goes to loopback servers started here; every
//! run is isolated from the user's and the machine's package-manager configuration (HOME,
//! caches and config files point into temporary directories).
//!
//! Needs root (like every `watcher run` test) and `npm`, `python3` (with `venv` and `pip`)
//! and `cargo` on PATH; a missing tool fails the test with a message saying what is missing.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use watcher_tests::{HttpServer, TempDir, read_jsonl, root_or_skip, watcher_bin};

/// Upper bound for one watched package-manager step (they take seconds).
const STEP_TIMEOUT: Duration = Duration::from_secs(300);

const SHELL_RULE: &str = "shell-from-install-script";

// ============================================================================ helpers

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace dir").to_path_buf()
}

fn shipped_policy(name: &str) -> PathBuf {
    let p = repo_root().join("policies").join(format!("{name}.yaml"));
    assert!(p.is_file(), "shipped policy {} is missing", p.display());
    p
}

/// Fails the test with a clear message when `tool` cannot be run; returns its version line.
fn require_tool(tool: &str, args: &[&str]) -> String {
    match Command::new(tool).args(args).stdin(Stdio::null()).output() {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
            let text = if text.is_empty() { String::from_utf8_lossy(&o.stderr).trim().to_string() } else { text };
            eprintln!("using {tool}: {text}");
            text
        }
        Ok(o) => panic!(
            "this test needs `{tool}`, but `{tool} {}` failed ({}): {}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("this test needs `{tool}` on PATH, but it cannot be run: {e}"),
    }
}

/// Runs a helper command (not watched) and returns its stdout; panics with its output on failure.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write(path: impl AsRef<Path>, text: impl AsRef<[u8]>) {
    let path = path.as_ref();
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
    }
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// `tar -czf OUT -C DIR ENTRY`
fn tar_gz(dir: &Path, entry: &str, out: &Path) {
    run_ok(Command::new("tar").arg("-czf").arg(out).arg("-C").arg(dir).arg(entry));
}

/// Hex digest of `file` by `tool` (`sha1sum`, `sha256sum`, `sha512sum`).
fn digest_hex(tool: &str, file: &Path) -> String {
    let out = run_ok(Command::new(tool).arg(file));
    let hex = out.split_whitespace().next().unwrap_or("").to_string();
    assert!(!hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()), "{tool} printed {out:?}");
    hex
}

fn hex_to_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

/// Standard base64 with padding (for npm's `integrity`).
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_rfc4648_vectors() {
    let cases = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];
    for (plain, enc) in cases {
        assert_eq!(base64(plain.as_bytes()), enc, "{plain:?}");
    }
    assert_eq!(hex_to_bytes("00ff10"), vec![0, 255, 16]);
}

/// The environment of a watched step: the test process's environment without anything that
/// configures npm, pip or cargo (or that cargo set for this test binary), plus `set`.
fn step_env(set: &[(&str, OsString)]) -> Vec<(OsString, Option<OsString>)> {
    let mut env: Vec<(OsString, Option<OsString>)> = Vec::new();
    for (k, _) in std::env::vars_os() {
        let key = k.to_string_lossy().to_ascii_uppercase();
        let configures_a_tool = key.starts_with("NPM_")
            || key.starts_with("PIP_")
            || key.starts_with("PYTHON")
            || key == "VIRTUAL_ENV"
            || (key.starts_with("CARGO") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTDOC")
            || key.starts_with("RUSTFLAGS")
            || key == "OUT_DIR"
            // Variables the watcher uses to attribute work must come from the step only.
            || key.starts_with("GITHUB_")
            || key == "CI_JOB_ID"
            || key == "CI_PROJECT_PATH"
            || key == "BUILDKITE_JOB_ID";
        if configures_a_tool {
            env.push((k, None));
        }
    }
    for (k, v) in set {
        env.push((k.into(), Some(v.clone())));
    }
    env
}

fn os(s: impl AsRef<std::ffi::OsStr>) -> OsString {
    s.as_ref().to_os_string()
}

/// PATH with `dir` in front.
fn path_with(dir: &Path) -> OsString {
    let mut paths = vec![dir.to_path_buf()];
    paths.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    std::env::join_paths(paths).unwrap()
}

/// Kills a still-running `watcher run` when dropped (test failure or timeout): SIGTERM first
/// (watcher forwards it to the command and removes its cgroup), SIGKILL after 15 s.
struct ChildGuard(Child);

impl ChildGuard {
    fn stop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if !matches!(self.0.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One finished `watcher run`.
struct Step {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    events: Vec<Value>,
    elapsed: Duration,
}

impl Step {
    fn alerts(&self) -> Vec<&Value> {
        self.events.iter().filter(|e| e["kind"] == "alert").collect()
    }

    fn alerts_of(&self, rule: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["kind"] == "alert" && e["rule"] == rule).collect()
    }

    fn kind(&self, kind: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["kind"] == kind).collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let v = self.kind(kind);
        assert_eq!(v.len(), 1, "expected exactly one {kind} event, got {v:#?}\n{}", self.context());
        v[0]
    }

    /// The exec event of `pid` (the last one, if it exec'd more than once).
    fn exec_of(&self, pid: &Value) -> &Value {
        self.events
            .iter()
            .rev()
            .find(|e| e["kind"] == "exec" && &e["pid"] == pid)
            .unwrap_or_else(|| panic!("no exec event for pid {pid}\n{}", self.context()))
    }

    /// Exec events whose executable's base name is `name`.
    fn execs_named(&self, name: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| {
                e["kind"] == "exec" && e["filename"].as_str().is_some_and(|f| f.rsplit('/').next() == Some(name))
            })
            .collect()
    }

    /// What to print when an assertion fails: exit code, alerts, and the step's output.
    fn context(&self) -> String {
        let tail = |s: &str| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(60)..].join("\n")
        };
        format!(
            "exit code {:?} after {:.1?}\nalerts: {:#?}\nstdout (tail):\n{}\nstderr (tail):\n{}",
            self.code,
            self.elapsed,
            self.alerts(),
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }

    /// Every connection went to a loopback address, and no DNS query left at all: the package
    /// managers only talked to the servers of this test.
    fn assert_loopback_only(&self) {
        for c in self.kind("connect") {
            let ip: std::net::IpAddr = c["daddr"].as_str().unwrap().parse().unwrap();
            let ip = match ip {
                std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
                v4 => v4,
            };
            assert!(ip.is_loopback(), "a connection left loopback: {c}\n{}", self.context());
        }
        assert!(self.kind("dns").is_empty(), "unexpected DNS queries: {:#?}", self.kind("dns"));
    }

    /// The `end` event carries the command's own exit code.
    fn command_exit_code(&self) -> i64 {
        self.one("end")["exit_code"].as_i64().unwrap_or_else(|| panic!("end without exit_code\n{}", self.context()))
    }
}

/// `watcher run --quiet --policy POLICY --mode MODE --log LOG -- ARGV` in `cwd`, with the
/// environment changes `env`; waits at most [`STEP_TIMEOUT`].
fn watch(policy: &Path, mode: &str, cwd: &Path, env: &[(OsString, Option<OsString>)], argv: &[&OsString]) -> Step {
    let out_dir = TempDir::new("watcher-pm-step");
    let log = out_dir.join("events.jsonl");
    let (out_file, err_file) = (out_dir.join("stdout"), out_dir.join("stderr"));
    let mut cmd = Command::new(watcher_bin());
    cmd.args(["run", "--quiet", "--mode", mode, "--policy"])
        .arg(policy)
        .arg("--log")
        .arg(&log)
        .arg("--")
        .args(argv)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_file).unwrap())
        .stderr(fs::File::create(&err_file).unwrap());
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let started = Instant::now();
    let mut child = ChildGuard(cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", watcher_bin().display())));
    let status: ExitStatus = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > STEP_TIMEOUT {
            child.stop();
            panic!(
                "watcher run -- {argv:?} did not finish within {STEP_TIMEOUT:?}; stderr:\n{}",
                fs::read_to_string(&err_file).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    let stdout = fs::read_to_string(&out_file).unwrap_or_default();
    let stderr = fs::read_to_string(&err_file).unwrap_or_default();
    assert!(log.is_file(), "watcher wrote no log (exit {status}):\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let events = read_jsonl(&log);
    eprintln!("watcher run ({mode}) -- {argv:?}: {status} in {elapsed:.1?}, {} events", events.len());
    Step { code: status.code(), stdout, stderr, events, elapsed }
}

/// The shell-from-install-script alerts of `step`: at least one, every one naming `package`
/// with `action`, each for an exec of a shell whose `held` flag matches the action.
/// Returns the shell exec events.
fn assert_shell_alerts<'a>(step: &'a Step, package: &str, action: &str) -> Vec<&'a Value> {
    assert_shell_alerts_with(step, &|p| p == package, package, action)
}

/// [`assert_shell_alerts`] with a predicate on the `package` field (`what` describes it).
fn assert_shell_alerts_with<'a>(
    step: &'a Step,
    package_ok: &dyn Fn(&str) -> bool,
    what: &str,
    action: &str,
) -> Vec<&'a Value> {
    let alerts = step.alerts_of(SHELL_RULE);
    assert!(!alerts.is_empty(), "no {SHELL_RULE} alert\n{}", step.context());
    let mut execs = Vec::new();
    for a in alerts {
        let package = a["package"].as_str().unwrap_or_else(|| panic!("alert without package: {a}\n{}", step.context()));
        assert!(package_ok(package), "alert names the wrong package (want {what}): {a}\n{}", step.context());
        assert_eq!(a["action"], action, "{a}\n{}", step.context());
        assert_eq!(a["severity"], "high", "{a}");
        let exec = step.exec_of(&a["pid"]);
        let file = exec["filename"].as_str().unwrap();
        assert!(file.ends_with("/sh"), "the alert is not about the shell exec: {exec}");
        // Enforce mode: the kernel held the shell before its first instruction for the verdict
        // (`held`), the verdict killed it.
        assert_eq!(exec["held"] == true, action == "kill", "held flag does not match action {action}: {exec}");
        assert!(exec["facts"].is_object(), "the shell's facts were not recorded: {exec}");
        assert!(a["message"].as_str().unwrap().contains(package), "{a}");
        execs.push(exec);
    }
    execs
}

// ============================================================================ npm

/// A tiny npm registry on 127.0.0.1: packuments at `/<name>`, tarballs at
/// `/<name>/-/<name>-<version>.tgz`. Stopped, and its build directory removed, on drop.
struct NpmRegistry {
    http: HttpServer,
    build: TempDir,
}

impl NpmRegistry {
    fn start() -> NpmRegistry {
        NpmRegistry {
            http: HttpServer::start("127.0.0.1:0".parse().unwrap()).expect("start the npm registry"),
            build: TempDir::new("watcher-pm-npm-build"),
        }
    }

    /// `registry=` value for .npmrc.
    fn url(&self) -> String {
        format!("{}/", self.http.base_url())
    }

    fn packument_path(name: &str) -> String {
        format!("/{name}")
    }

    fn tarball_path(name: &str, version: &str) -> String {
        format!("/{name}/-/{name}-{version}.tgz")
    }

    /// Packs `package/` with `package.json` (`manifest`) and `files`, and publishes it.
    fn publish(&self, manifest: Value, files: &[(&str, &str)]) {
        let name = manifest["name"].as_str().unwrap().to_string();
        let version = manifest["version"].as_str().unwrap().to_string();
        let dir = self.build.join(format!("{name}-{version}"));
        write(dir.join("package/package.json"), serde_json::to_string_pretty(&manifest).unwrap());
        for (path, text) in files {
            write(dir.join("package").join(path), text);
        }
        let tgz = dir.join(format!("{name}-{version}.tgz"));
        tar_gz(&dir, "package", &tgz);
        let shasum = digest_hex("sha1sum", &tgz);
        let integrity = format!("sha512-{}", base64(&hex_to_bytes(&digest_hex("sha512sum", &tgz))));
        let tarball_path = Self::tarball_path(&name, &version);

        let mut doc = manifest.clone();
        doc["_id"] = json!(format!("{name}@{version}"));
        doc["dist"] = json!({
            "tarball": format!("{}{tarball_path}", self.http.base_url()),
            "shasum": shasum,
            "integrity": integrity,
        });
        // What a registry derives from the scripts; npm decides from it whether a dependency
        // has install scripts to run.
        let scripts = manifest["scripts"].as_object().cloned().unwrap_or_default();
        if ["preinstall", "install", "postinstall"].iter().any(|s| scripts.contains_key(*s)) {
            doc["hasInstallScript"] = json!(true);
        }
        let packument = json!({
            "_id": name,
            "name": name,
            "dist-tags": { "latest": version },
            "versions": { version.clone(): doc },
        });
        self.http.route(&Self::packument_path(&name), "application/json", serde_json::to_vec(&packument).unwrap());
        self.http.route(&tarball_path, "application/octet-stream", fs::read(&tgz).unwrap());
    }
}

/// A project that depends on `dep@1.0.0` (with its install scripts approved, for npm versions
/// that ask) and whose .npmrc points npm at `registry`. Also returns the step's environment:
/// HOME, npm's cache and global config all in temporary directories.
fn npm_project(registry: &NpmRegistry, dep: &str) -> (TempDir, TempDir, Vec<(OsString, Option<OsString>)>) {
    let project = TempDir::new("watcher-pm-npm-project");
    write(
        project.join("package.json"),
        serde_json::to_string_pretty(&json!({
            "name": "watched-project",
            "version": "1.0.0",
            "private": true,
            "dependencies": { dep: "1.0.0" },
            "allowScripts": { dep: true },
        }))
        .unwrap(),
    );
    write(project.join(".npmrc"), format!("registry={}\n", registry.url()));
    let home = TempDir::new("watcher-pm-npm-home");
    write(home.join("global-npmrc"), "");
    let env = step_env(&[
        ("HOME", os(home.path())),
        ("npm_config_cache", os(home.join("npm-cache"))),
        ("npm_config_globalconfig", os(home.join("global-npmrc"))),
        ("npm_config_update_notifier", os("false")),
    ]);
    (project, home, env)
}

const EVIL_SPAWN_JS: &str = r#"// Spawns a shell from inside the postinstall script, then records how the shell ended.
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');
const dir = process.env.INIT_CWD || process.cwd();
const r = spawnSync('sh', ['-i', '-c', 'echo SHELL-RAN > shell-ran.txt'], { cwd: dir });
fs.writeFileSync(path.join(dir, 'spawn-result.json'),
  JSON.stringify({ status: r.status, signal: r.signal, error: r.error ? String(r.error) : null }));
"#;

fn publish_evil_pkg(registry: &NpmRegistry) {
    registry.publish(
        json!({
            "name": "evil-pkg",
            "version": "1.0.0",
            "description": "test package whose postinstall spawns a shell",
            "scripts": { "postinstall": "node spawn.js" },
        }),
        &[("spawn.js", EVIL_SPAWN_JS)],
    );
}

fn npm_install(project: &Path, env: &[(OsString, Option<OsString>)], mode: &str) -> Step {
    let argv = ["npm", "install", "--no-audit", "--no-fund"].map(OsString::from);
    watch(&shipped_policy("npm"), mode, project, env, &argv.iter().collect::<Vec<_>>())
}

/// What every npm step here must show: the registry was resolved from the project's .npmrc,
/// npm fetched the packument and the tarball from it, and nothing left loopback.
fn assert_npm_used_test_registry(step: &Step, registry: &NpmRegistry, name: &str) {
    let start = step.one("start");
    assert_eq!(start["registries"]["npm"], json!(["127.0.0.1"]), "registry hosts resolved from npm's config: {start}");
    assert_eq!(start["policy"]["pipeline"], "npm-build", "{start}");
    let (p, t) = (NpmRegistry::packument_path(name), NpmRegistry::tarball_path(name, "1.0.0"));
    assert!(
        registry.http.hits(&p) >= 1 && registry.http.hits(&t) >= 1,
        "npm did not fetch {p} and {t} from the test registry: {:#?}\n{}",
        registry.http.requests(),
        step.context()
    );
    let allowed_to_registry = step
        .kind("connect")
        .iter()
        .any(|c| c["daddr"] == "127.0.0.1" && c["dport"] == registry.http.addr().port() && c["allowed"] == true);
    assert!(allowed_to_registry, "no allowed connect to the registry in the log\n{}", step.context());
    step.assert_loopback_only();
}

#[test]
fn npm_postinstall_shell_is_flagged_in_audit_mode() {
    if !root_or_skip() {
        return;
    }
    require_tool("npm", &["--version"]);
    let registry = NpmRegistry::start();
    publish_evil_pkg(&registry);
    let (project, _home, env) = npm_project(&registry, "evil-pkg");

    let step = npm_install(project.path(), &env, "audit");
    assert_eq!(step.code, Some(0), "audit mode must exit with npm's code\n{}", step.context());
    assert_eq!(step.command_exit_code(), 0);
    assert_npm_used_test_registry(&step, &registry, "evil-pkg");

    let shells = assert_shell_alerts(&step, "npm:evil-pkg@1.0.0 (postinstall)", "flag");
    assert_eq!(shells.len(), 1, "{}", step.context());
    assert_eq!(shells[0]["argv"], json!(["sh", "-i", "-c", "echo SHELL-RAN > shell-ran.txt"]));
    assert_eq!(step.alerts().len(), 1, "only the shell may raise an alert\n{}", step.context());

    // The shell really ran, and npm installed the package.
    assert_eq!(fs::read_to_string(project.join("shell-ran.txt")).ok().as_deref(), Some("SHELL-RAN\n"));
    let result: Value = serde_json::from_str(&fs::read_to_string(project.join("spawn-result.json")).unwrap()).unwrap();
    assert_eq!(result, json!({"status": 0, "signal": null, "error": null}));
    assert!(project.join("node_modules/evil-pkg/package.json").is_file());
}

#[test]
fn npm_postinstall_shell_is_killed_in_enforce_mode() {
    if !root_or_skip() {
        return;
    }
    require_tool("npm", &["--version"]);
    let registry = NpmRegistry::start();
    publish_evil_pkg(&registry);
    let (project, _home, env) = npm_project(&registry, "evil-pkg");

    let step = npm_install(project.path(), &env, "enforce");
    assert_eq!(step.code, Some(77), "enforce mode must fail the step\n{}", step.context());
    // npm itself finished normally: only the shell was stopped.
    assert_eq!(step.command_exit_code(), 0, "{}", step.context());
    assert_npm_used_test_registry(&step, &registry, "evil-pkg");

    let shells = assert_shell_alerts(&step, "npm:evil-pkg@1.0.0 (postinstall)", "kill");
    assert_eq!(shells.len(), 1, "{}", step.context());
    assert_eq!(shells[0]["argv"], json!(["sh", "-i", "-c", "echo SHELL-RAN > shell-ran.txt"]));
    // Every alert is about that one killed exec. (Today the watcher also raises exec-denied for
    // it: see npm_enforce_mode_raises_the_same_alerts_as_audit_mode.)
    for a in step.alerts() {
        assert_eq!(a["pid"], shells[0]["pid"], "an alert about another process: {a}\n{}", step.context());
        assert!(a["rule"] == SHELL_RULE || a["rule"] == "exec-denied", "{a}\n{}", step.context());
    }

    // Killed before it ran: no marker; the script saw its child die of SIGKILL and went on.
    assert!(!project.join("shell-ran.txt").exists(), "the shell ran in enforce mode\n{}", step.context());
    let result: Value = serde_json::from_str(
        &fs::read_to_string(project.join("spawn-result.json"))
            .unwrap_or_else(|e| panic!("spawn-result.json: {e}\n{}", step.context())),
    )
    .unwrap();
    assert_eq!(result, json!({"status": null, "signal": "SIGKILL", "error": null}));
    assert!(project.join("node_modules/evil-pkg/package.json").is_file());
}

#[test]
fn npm_clean_package_installs_in_enforce_mode_without_alerts() {
    if !root_or_skip() {
        return;
    }
    require_tool("npm", &["--version"]);
    let registry = NpmRegistry::start();
    registry.publish(
        json!({
            "name": "clean-pkg",
            "version": "1.0.0",
            "description": "test package with a harmless postinstall",
            "scripts": {
                "postinstall": "node -e \"console.log('ok'); require('fs').writeFileSync(require('path').join(process.env.INIT_CWD, 'postinstall-ran.txt'), 'ok')\"",
            },
            "main": "index.js",
        }),
        &[("index.js", "module.exports = 42;\n")],
    );
    let (project, _home, env) = npm_project(&registry, "clean-pkg");

    let step = npm_install(project.path(), &env, "enforce");
    assert_eq!(step.code, Some(0), "{}", step.context());
    assert_eq!(step.command_exit_code(), 0);
    assert!(step.alerts().is_empty(), "a clean install raised alerts\n{}", step.context());
    assert_npm_used_test_registry(&step, &registry, "clean-pkg");
    // The postinstall script ran, watched: npm's `sh -c` with the lifecycle variables.
    let script_starts: Vec<&Value> = step
        .execs_named("sh")
        .into_iter()
        .filter(|e| e["env"]["npm_lifecycle_event"] == "postinstall" && e["env"]["npm_package_name"] == "clean-pkg")
        .collect();
    assert_eq!(script_starts.len(), 1, "{:#?}", step.execs_named("sh"));
    assert_eq!(script_starts[0]["env"]["npm_package_version"], "1.0.0");
    assert!(script_starts[0]["killed"] != true);
    assert_eq!(fs::read_to_string(project.join("postinstall-ran.txt")).ok().as_deref(), Some("ok"));
    assert!(project.join("node_modules/clean-pkg/index.js").is_file());
}

#[test]
fn npm_enforce_mode_raises_the_same_alerts_as_audit_mode() {
    if !root_or_skip() {
        return;
    }
    require_tool("npm", &["--version"]);
    let registry = NpmRegistry::start();
    publish_evil_pkg(&registry);
    let mut seen = Vec::new();
    for mode in ["audit", "enforce"] {
        let (project, _home, env) = npm_project(&registry, "evil-pkg");
        let step = npm_install(project.path(), &env, mode);
        let alerts: Vec<(String, String)> = step
            .alerts()
            .iter()
            .map(|a| (a["rule"].as_str().unwrap().to_string(), a["package"].as_str().unwrap_or("").to_string()))
            .collect();
        let action = if mode == "audit" { "flag" } else { "kill" };
        let shells = assert_shell_alerts(&step, "npm:evil-pkg@1.0.0 (postinstall)", action);
        let file = shells[0]["filename"].as_str().unwrap().to_string();
        let exists = Path::new(&file).is_file();
        seen.push((mode, alerts, file, exists, step.context()));
    }
    let (audit, enforce) = (&seen[0], &seen[1]);
    assert_eq!(
        audit.1, enforce.1,
        "audit and enforce raise different alerts\naudit: {}\nenforce: {}",
        audit.4, enforce.4
    );
    // The log names the shell that was started, not a PATH candidate that does not exist.
    assert!(enforce.3, "the killed exec names {}, which does not exist (audit mode logged {})", enforce.2, audit.2);
}

// ============================================================================ pip

/// A python3 able to create a venv whose pip can build a wheel from a `setup.py` sdist
/// without network access (setuptools, and wheel or a setuptools with its own bdist_wheel,
/// from the interpreter's site-packages). Tries `python3` on PATH, then /usr/bin/python3.
fn python_for_setup_py_builds() -> String {
    const PROBE: &str = "import importlib.util as u, sys\n\
        def has(m):\n    try:\n        return u.find_spec(m) is not None\n    except Exception:\n        return False\n\
        print(sys.executable)\n\
        print(int(has('venv') and has('ensurepip')), int(has('setuptools')), int(has('wheel') or has('setuptools.command.bdist_wheel')))\n";
    let mut why = Vec::new();
    for candidate in ["python3", "/usr/bin/python3"] {
        let out = match Command::new(candidate).args(["-c", PROBE]).stdin(Stdio::null()).output() {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            Ok(o) => {
                why.push(format!("{candidate}: {}", String::from_utf8_lossy(&o.stderr).trim()));
                continue;
            }
            Err(e) => {
                why.push(format!("{candidate}: {e}"));
                continue;
            }
        };
        let lines: Vec<&str> = out.lines().collect();
        match lines.get(1).map(|l| l.split_whitespace().collect::<Vec<_>>()).as_deref() {
            Some(["1", "1", "1"]) => return lines[0].to_string(),
            Some([venv, st, wheel]) => why.push(format!(
                "{candidate} ({}): venv+ensurepip {}, setuptools {}, wheel building {}",
                lines[0],
                if *venv == "1" { "yes" } else { "MISSING" },
                if *st == "1" { "yes" } else { "MISSING" },
                if *wheel == "1" { "yes" } else { "MISSING (no `wheel` package, setuptools < 70.1)" }
            )),
            _ => why.push(format!("{candidate}: unexpected probe output {out:?}")),
        }
    }
    panic!(
        "this test needs a python3 with venv/ensurepip, setuptools and wheel (Debian: python3-venv \
         python3-setuptools python3-wheel); none found:\n  {}",
        why.join("\n  ")
    );
}

/// A python3 able to create a venv with pip (for the PEP 517 test, which needs nothing else).
fn python_with_venv() -> String {
    for candidate in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(candidate)
            .args(["-c", "import venv, ensurepip, sys; print(sys.executable)"])
            .stdin(Stdio::null())
            .output();
        if let Ok(o) = ok
            && o.status.success()
        {
            return String::from_utf8_lossy(&o.stdout).trim().to_string();
        }
    }
    panic!("this test needs a python3 with the venv and ensurepip modules (Debian: python3-venv)");
}

/// A local PEP 503 "simple" index on 127.0.0.1 serving sdists.
struct PipIndex {
    http: HttpServer,
    build: TempDir,
}

impl PipIndex {
    fn start() -> PipIndex {
        PipIndex {
            http: HttpServer::start("127.0.0.1:0".parse().unwrap()).expect("start the pip index"),
            build: TempDir::new("watcher-pm-pip-build"),
        }
    }

    fn url(&self) -> String {
        format!("{}/simple/", self.http.base_url())
    }

    fn project_path(project: &str) -> String {
        format!("/simple/{project}/")
    }

    fn file_path(file: &str) -> String {
        format!("/packages/{file}")
    }

    /// Packs `<dist>-<version>/` with `files` into `<dist>-<version>.tar.gz` and lists it under
    /// the normalized `project` name.
    fn publish_sdist(&self, project: &str, dist: &str, version: &str, files: &[(&str, &str)]) -> String {
        let top = format!("{dist}-{version}");
        for (path, text) in files {
            write(self.build.join(&top).join(path), text);
        }
        let file = format!("{top}.tar.gz");
        let out = self.build.join(&file);
        tar_gz(self.build.path(), &top, &out);
        let sha256 = digest_hex("sha256sum", &out);
        let html = format!(
            "<!DOCTYPE html>\n<html><body>\n<a href=\"{}#sha256={sha256}\">{file}</a><br/>\n</body></html>\n",
            Self::file_path(&file)
        );
        self.http.route(&Self::project_path(project), "text/html", html);
        self.http.route(&Self::file_path(&file), "application/x-gzip", fs::read(&out).unwrap());
        file
    }
}

/// A fresh venv made by `python`; `--system-site-packages` so that setuptools/wheel of the
/// interpreter are there without network. Returns the venv's bin directory.
fn make_venv(python: &str, dir: &Path) -> PathBuf {
    run_ok(Command::new(python).args(["-m", "venv", "--system-site-packages"]).arg(dir));
    let bin = dir.join("bin");
    assert!(bin.join("pip").is_file(), "the venv has no pip: {}", bin.display());
    bin
}

const EVIL_SETUP_PY: &str = r#"import subprocess
from setuptools import setup

# What a malicious sdist does: run a shell while being built.
subprocess.run(['sh', '-i', '-c', 'echo SHELL-RAN >> "$WATCHER_TEST_MARKER"'], check=False)

setup(name='evil_sdist', version='1.0.0', py_modules=['evil_sdist'])
"#;

const EVIL_SDIST_PKG_INFO: &str =
    "Metadata-Version: 2.1\nName: evil_sdist\nVersion: 1.0.0\nSummary: test sdist whose build spawns a shell\n";

struct PipStep {
    step: Step,
    marker: PathBuf,
    _dirs: (TempDir, TempDir),
}

/// `pip install --no-build-isolation --no-cache-dir --index-url INDEX evil_sdist` in a fresh
/// venv of `python`, under `watcher run --policy policies/pip.yaml --mode MODE`.
fn pip_install_evil(index: &PipIndex, python: &str, mode: &str) -> PipStep {
    let work = TempDir::new("watcher-pm-pip-work");
    let home = TempDir::new("watcher-pm-pip-home");
    let bin = make_venv(python, &work.join("venv"));
    let marker = work.join("shell-ran.txt");
    let env = step_env(&[
        ("HOME", os(home.path())),
        ("PATH", path_with(&bin)),
        ("VIRTUAL_ENV", os(work.join("venv"))),
        // No pip configuration file at all; the index comes from the environment, where the
        // watcher sees it too (a command-line --index-url alone is invisible to it).
        ("PIP_CONFIG_FILE", os("/dev/null")),
        ("PIP_INDEX_URL", os(index.url())),
        ("PIP_DISABLE_PIP_VERSION_CHECK", os("1")),
        ("PIP_NO_INPUT", os("1")),
        ("WATCHER_TEST_MARKER", os(&marker)),
    ]);
    let argv = [
        os(bin.join("pip")),
        os("install"),
        os("--no-build-isolation"),
        os("--no-cache-dir"),
        os("--index-url"),
        os(index.url()),
        os("evil_sdist"),
    ];
    let step = watch(&shipped_policy("pip"), mode, work.path(), &env, &argv.iter().collect::<Vec<_>>());
    PipStep { step, marker, _dirs: (work, home) }
}

/// Checks common to the pip steps: the index was resolved from pip's configuration (the
/// environment), pip downloaded from it, and nothing left loopback.
fn assert_pip_used_test_index(step: &Step, index: &PipIndex, sdist: &str) {
    let start = step.one("start");
    assert_eq!(start["registries"]["pip"], json!(["127.0.0.1"]), "index hosts resolved from pip's config: {start}");
    assert_eq!(start["policy"]["pipeline"], "pip-build", "{start}");
    let (p, f) = (PipIndex::project_path("evil-sdist"), PipIndex::file_path(sdist));
    assert!(
        index.http.hits(&p) >= 1 && index.http.hits(&f) >= 1,
        "pip did not fetch {p} and {f} from the test index: {:#?}\n{}",
        index.http.requests(),
        step.context()
    );
    step.assert_loopback_only();
}

/// The python execs that ran package build code (pip's build runners), for messages.
fn pip_build_runners(step: &Step) -> Vec<String> {
    step.kind("exec")
        .iter()
        .filter(|e| {
            e["filename"].as_str().is_some_and(|f| f.rsplit('/').next().unwrap_or("").starts_with("python"))
                && e["argv"].as_array().is_some_and(|a| {
                    a.iter().any(|s| s.as_str().is_some_and(|s| s.contains("setup.py") || s.contains("_in_process")))
                })
        })
        .map(|e| format!("pid {} argv {} cwd {}", e["pid"], e["argv"], e["cwd"]))
        .collect()
}

/// An index serving the `setup.py` sdist `evil_sdist` 1.0.0 (project name `evil-sdist`).
fn setup_py_index() -> (PipIndex, String) {
    let index = PipIndex::start();
    let sdist = index.publish_sdist(
        "evil-sdist",
        "evil_sdist",
        "1.0.0",
        &[("setup.py", EVIL_SETUP_PY), ("PKG-INFO", EVIL_SDIST_PKG_INFO), ("evil_sdist.py", "VALUE = 1\n")],
    );
    (index, sdist)
}

/// `pip:<something> (build)`: a pip build, whatever package it is attributed to.
fn is_pip_build(p: &str) -> bool {
    p.starts_with("pip:") && p.ends_with(" (build)")
}

/// Audit mode: pip succeeds, every shell of the build is flagged as coming from a pip build,
/// and ran; `package_ok` judges the alerts' `package` field (`what` describes it).
fn pip_audit_checks(pip: &PipStep, index: &PipIndex, sdist: &str, package_ok: &dyn Fn(&str) -> bool, what: &str) {
    let step = &pip.step;
    assert_eq!(step.code, Some(0), "audit mode must exit with pip's code\n{}", step.context());
    assert_eq!(step.command_exit_code(), 0);
    assert_pip_used_test_index(step, index, sdist);
    eprintln!("pip build runners: {:#?}", pip_build_runners(step));
    // setup.py may run more than once (metadata, then the wheel): one alert per shell.
    let shells = assert_shell_alerts_with(step, package_ok, what, "flag");
    assert!(
        shells.iter().all(|e| e["argv"] == json!(["sh", "-i", "-c", "echo SHELL-RAN >> \"$WATCHER_TEST_MARKER\""]))
    );
    let runs = fs::read_to_string(&pip.marker).unwrap_or_else(|e| panic!("no marker: {e}\n{}", step.context()));
    assert_eq!(runs.lines().filter(|l| *l == "SHELL-RAN").count(), shells.len(), "every flagged shell ran: {runs:?}");
    assert_eq!(step.alerts().len(), shells.len(), "only the shells may raise alerts\n{}", step.context());
    assert!(step.stdout.contains("Successfully installed evil_sdist-1.0.0"), "{}", step.context());
}

#[test]
fn pip_setup_py_build_shell_is_flagged_in_audit_mode() {
    if !root_or_skip() {
        return;
    }
    let python = python_for_setup_py_builds();
    eprintln!("using python {python}");
    let (index, sdist) = setup_py_index();
    let pip = pip_install_evil(&index, &python, "audit");
    // Which package is named is checked by pip_setup_py_build_alert_names_the_sdist.
    pip_audit_checks(&pip, &index, &sdist, &is_pip_build, "pip:<package> (build)");
}

#[test]
fn pip_setup_py_build_alert_names_the_sdist() {
    if !root_or_skip() {
        return;
    }
    let python = python_for_setup_py_builds();
    let (index, sdist) = setup_py_index();
    let pip = pip_install_evil(&index, &python, "audit");
    pip_audit_checks(&pip, &index, &sdist, &|p| p == "pip:evil-sdist (build)", "pip:evil-sdist (build)");
}

#[test]
fn pip_setup_py_build_shell_fails_the_step_in_enforce_mode() {
    if !root_or_skip() {
        return;
    }
    let python = python_for_setup_py_builds();
    let (index, sdist) = setup_py_index();
    let pip = pip_install_evil(&index, &python, "enforce");
    let step = &pip.step;
    // Enforce mode fails closed: a shell from a package build fails the step, whether it was
    // killed in the kernel or only seen.
    assert_eq!(step.code, Some(77), "{}", step.context());
    assert_pip_used_test_index(step, &index, &sdist);
    let alerts = step.alerts_of(SHELL_RULE);
    assert!(!alerts.is_empty(), "{}", step.context());
    let action = alerts[0]["action"].as_str().unwrap().to_string();
    // pip build subprocesses are marked in the kernel (pip sets PIP_BUILD_TRACKER for them),
    // so their shells are killed like npm's and cargo's.
    assert_eq!(action, "kill", "{}", step.context());
    // Whatever the action, the alerts and the marker tell the same story.
    let shells = assert_shell_alerts_with(step, &is_pip_build, "pip:<package> (build)", &action);
    assert_eq!(step.alerts().len(), shells.len(), "only the shells may raise alerts\n{}", step.context());
    let runs = fs::read_to_string(&pip.marker).unwrap_or_default();
    let ran = runs.lines().filter(|l| *l == "SHELL-RAN").count();
    if action == "kill" {
        assert_eq!(ran, 0, "a killed shell ran: {runs:?}");
    } else {
        // README, Limitations: pip builds are attributed but not marked in the kernel, so
        // their shells are flagged, not killed.
        assert_eq!(ran, shells.len(), "every flagged shell ran: {runs:?}");
    }
}

/// A PEP 517 backend inside the sdist (`backend-path`), so the build needs nothing but pip:
/// pip runs it through its hook runner (`_in_process.py`), which is how pip builds every sdist
/// with a pyproject.toml and, from pip 23.1 on, also setup.py sdists when `wheel` is absent.
const EVIL_BACKEND_PY: &str = r#"import base64, hashlib, os, subprocess, zipfile

NAME, VERSION = 'evil_sdist', '1.0.0'
DIST_INFO = f'{NAME}-{VERSION}.dist-info'
FILES = {
    f'{NAME}.py': b'VALUE = 1\n',
    f'{DIST_INFO}/METADATA': f'Metadata-Version: 2.1\nName: evil-sdist\nVersion: {VERSION}\n'.encode(),
    f'{DIST_INFO}/WHEEL': b'Wheel-Version: 1.0\nGenerator: evil_backend\nRoot-Is-Purelib: true\nTag: py3-none-any\n',
}


def _shell():
    # What a malicious sdist does: run a shell while being built.
    subprocess.run(['sh', '-i', '-c', 'echo SHELL-RAN >> "$WATCHER_TEST_MARKER"'], check=False)


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _shell()
    name = f'{NAME}-{VERSION}-py3-none-any.whl'
    record = []
    with zipfile.ZipFile(os.path.join(wheel_directory, name), 'w') as z:
        for path, data in FILES.items():
            z.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
            record.append(f'{path},sha256={digest},{len(data)}')
        record.append(f'{DIST_INFO}/RECORD,,')
        z.writestr(f'{DIST_INFO}/RECORD', '\n'.join(record) + '\n')
    return name
"#;

const EVIL_PYPROJECT: &str =
    "[build-system]\nrequires = []\nbuild-backend = \"evil_backend\"\nbackend-path = [\".\"]\n";

/// An index serving the PEP 517 sdist `evil_sdist` 1.0.0 with its in-tree backend.
fn pep517_index() -> (PipIndex, String) {
    let index = PipIndex::start();
    let sdist = index.publish_sdist(
        "evil-sdist",
        "evil_sdist",
        "1.0.0",
        &[
            ("pyproject.toml", EVIL_PYPROJECT),
            ("evil_backend.py", EVIL_BACKEND_PY),
            ("PKG-INFO", "Metadata-Version: 2.1\nName: evil-sdist\nVersion: 1.0.0\n"),
        ],
    );
    (index, sdist)
}

#[test]
fn pip_pep517_build_shell_is_flagged_in_audit_mode() {
    if !root_or_skip() {
        return;
    }
    let python = python_with_venv();
    eprintln!("using python {python}");
    let (index, sdist) = pep517_index();
    let pip = pip_install_evil(&index, &python, "audit");
    let runners = pip_build_runners(&pip.step);
    assert!(
        runners.iter().any(|r| r.contains("_in_process")),
        "pip did not build through its PEP 517 hook runner: {runners:#?}"
    );
    // Which package is named is checked by pip_pep517_build_shell_is_attributed_to_the_sdist.
    pip_audit_checks(&pip, &index, &sdist, &is_pip_build, "pip:<package> (build)");
}

#[test]
fn pip_pep517_build_shell_is_attributed_to_the_sdist() {
    if !root_or_skip() {
        return;
    }
    let python = python_with_venv();
    let (index, sdist) = pep517_index();

    let pip = pip_install_evil(&index, &python, "audit");
    let runners = pip_build_runners(&pip.step);
    assert!(
        runners.iter().any(|r| r.contains("_in_process")),
        "pip did not build through its PEP 517 hook runner: {runners:#?}"
    );
    pip_audit_checks(&pip, &index, &sdist, &|p| p == "pip:evil-sdist (build)", "pip:evil-sdist (build)");
}

// ============================================================================ cargo

/// A path crate `name` 0.1.0 with `build_rs`, in its own workspace, with crates-io replaced by
/// an empty local directory (nothing to download, and no registry host for the watcher to
/// resolve). Returns the project and a directory for the target dir, CARGO_HOME and markers.
fn cargo_project(name: &str, build_rs: &str) -> (TempDir, TempDir) {
    let project = TempDir::new("watcher-pm-cargo-project");
    write(
        project.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\nbuild = \"build.rs\"\n\n[workspace]\n"
        ),
    );
    write(project.join("build.rs"), build_rs);
    write(project.join("src/lib.rs"), "pub fn answer() -> u32 {\n    42\n}\n");
    write(
        project.join(".cargo/config.toml"),
        "[source.crates-io]\nreplace-with = \"local-vendor\"\n\n[source.local-vendor]\ndirectory = \"vendor\"\n",
    );
    fs::create_dir_all(project.join("vendor")).unwrap();
    (project, TempDir::new("watcher-pm-cargo-work"))
}

fn cargo_build(project: &Path, work: &Path, mode: &str, marker: &Path) -> Step {
    fs::create_dir_all(work.join("cargo-home")).unwrap();
    let env = step_env(&[
        ("CARGO_TARGET_DIR", os(work.join("target"))),
        ("CARGO_HOME", os(work.join("cargo-home"))),
        ("CARGO_TERM_COLOR", os("never")),
        ("WATCHER_TEST_MARKER", os(marker)),
    ]);
    let argv = ["cargo", "build", "--offline"].map(OsString::from);
    watch(&shipped_policy("cargo"), mode, project, &env, &argv.iter().collect::<Vec<_>>())
}

const EVIL_BUILD_RS: &str = r#"use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=WATCHER_TEST_MARKER");
    // What a malicious build script does: run a shell.
    let status = Command::new("sh")
        .args(["-i", "-c", "echo SHELL-RAN > \"$WATCHER_TEST_MARKER\""])
        .status()
        .expect("cannot spawn sh");
    assert!(status.success(), "the shell did not succeed: {status}");
}
"#;

/// The start event names the cargo policy and resolved no registry host (crates-io is
/// replaced by a local directory); cargo's build script ran under watch.
fn assert_cargo_step_basics(step: &Step, crate_name: &str) {
    let start = step.one("start");
    assert_eq!(start["registries"]["cargo"], json!([]), "{start}");
    assert_eq!(start["policy"]["pipeline"], "cargo-build", "{start}");
    let scripts: Vec<&Value> = step
        .kind("exec")
        .into_iter()
        .filter(|e| {
            e["filename"].as_str().is_some_and(|f| f.rsplit('/').next().unwrap_or("").starts_with("build-script-"))
                && e["env"]["CARGO_PKG_NAME"] == crate_name
        })
        .collect();
    assert_eq!(scripts.len(), 1, "the build script of {crate_name} was not seen exactly once\n{}", step.context());
    assert_eq!(scripts[0]["env"]["CARGO_PKG_VERSION"], "0.1.0");
    step.assert_loopback_only();
}

#[test]
fn cargo_build_script_shell_is_flagged_in_audit_mode() {
    if !root_or_skip() {
        return;
    }
    require_tool("cargo", &["--version"]);
    let (project, work) = cargo_project("evil-crate", EVIL_BUILD_RS);
    let marker = work.join("shell-ran.txt");

    let step = cargo_build(project.path(), work.path(), "audit", &marker);
    assert_eq!(step.code, Some(0), "audit mode must exit with cargo's code\n{}", step.context());
    assert_eq!(step.command_exit_code(), 0);
    assert_cargo_step_basics(&step, "evil-crate");
    let shells = assert_shell_alerts(&step, "cargo:evil-crate@0.1.0 (build.rs)", "flag");
    assert_eq!(shells.len(), 1, "{}", step.context());
    assert_eq!(step.alerts().len(), 1, "only the shell may raise an alert\n{}", step.context());
    assert_eq!(fs::read_to_string(&marker).ok().as_deref(), Some("SHELL-RAN\n"), "{}", step.context());
    assert!(step.stderr.contains("Finished"), "{}", step.context());
}

#[test]
fn cargo_build_script_shell_is_killed_in_enforce_mode() {
    if !root_or_skip() {
        return;
    }
    require_tool("cargo", &["--version"]);
    let (project, work) = cargo_project("evil-crate", EVIL_BUILD_RS);
    let marker = work.join("shell-ran.txt");

    let step = cargo_build(project.path(), work.path(), "enforce", &marker);
    assert_eq!(step.code, Some(77), "enforce mode must fail the step\n{}", step.context());
    assert_cargo_step_basics(&step, "evil-crate");
    let shells = assert_shell_alerts(&step, "cargo:evil-crate@0.1.0 (build.rs)", "kill");
    assert_eq!(shells.len(), 1, "{}", step.context());
    assert_eq!(step.alerts().len(), 1, "only the shell may raise an alert\n{}", step.context());
    assert!(!marker.exists(), "the shell ran in enforce mode\n{}", step.context());
    // The build script saw its shell die of SIGKILL, so the build failed, and cargo said why.
    assert_eq!(step.command_exit_code(), 101, "{}", step.context());
    assert!(step.stderr.contains("failed to run custom build command for `evil-crate v0.1.0"), "{}", step.context());
    assert!(step.stderr.contains("the shell did not succeed: signal: 9 (SIGKILL)"), "{}", step.context());
}

#[test]
fn cargo_clean_build_script_builds_in_enforce_mode_without_alerts() {
    if !root_or_skip() {
        return;
    }
    require_tool("cargo", &["--version"]);
    let build_rs = "fn main() {\n    println!(\"cargo:rerun-if-changed=build.rs\");\n    \
                    println!(\"cargo:rustc-env=CLEAN_CRATE_BUILT_BY=build.rs\");\n}\n";
    let (project, work) = cargo_project("clean-crate", build_rs);
    let marker = work.join("unused-marker.txt");

    let step = cargo_build(project.path(), work.path(), "enforce", &marker);
    assert_eq!(step.code, Some(0), "{}", step.context());
    assert_eq!(step.command_exit_code(), 0);
    assert!(step.alerts().is_empty(), "a clean build raised alerts\n{}", step.context());
    assert_cargo_step_basics(&step, "clean-crate");
    assert!(step.stderr.contains("Finished"), "{}", step.context());
    let rlibs: Vec<_> = fs::read_dir(work.join("target/debug/deps"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("libclean_crate-"))
        .collect();
    assert!(!rlibs.is_empty(), "no libclean_crate artifact was built");
}

// ============================================================================ clean installs
//
// A realistic clean install with each package manager must pass the shipped policy in enforce
// mode: exit 0, not a single alert, and every connection to the test's registry.

/// Applies a step environment (see [`step_env`]) to a helper command run outside the watcher.
fn with_env<'c>(cmd: &'c mut Command, env: &[(OsString, Option<OsString>)]) -> &'c mut Command {
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd
}

/// No exec of the step was killed and every connect went to `port` on 127.0.0.1 and was
/// allowed (at least one connect when `expect_connects`).
fn assert_all_connects_to_registry(step: &Step, port: u16, expect_connects: bool) {
    let connects = step.kind("connect");
    if expect_connects {
        assert!(
            !connects.is_empty(),
            "no connect event: the package manager did not talk to the registry under watch\n{}",
            step.context()
        );
    }
    for c in &connects {
        assert!(
            c["daddr"] == "127.0.0.1" && c["dport"] == port && c["allowed"] == true,
            "a connect that is not an allowed one to the registry 127.0.0.1:{port}: {c}\n{}",
            step.context()
        );
    }
    for e in step.kind("exec") {
        assert!(e["killed"] != true, "an exec was killed: {e}\n{}", step.context());
    }
    step.assert_loopback_only();
}

/// The policy named by the start event, and its mode.
fn assert_policy_started(step: &Step, pipeline: &str, mode: &str) {
    let start = step.one("start");
    assert_eq!(start["policy"]["pipeline"], pipeline, "{start}");
    assert_eq!(start["policy"]["mode"], mode, "{start}");
}

// ---------------------------------------------------------------------------- npm ci

/// A small dependency tree: `tiny-lib` depends on `tiny-util`, `tiny-hook` has a harmless
/// postinstall script that writes `postinstall-ran` in its package directory.
fn publish_clean_tree(registry: &NpmRegistry) {
    registry.publish(
        json!({
            "name": "tiny-util",
            "version": "1.0.0",
            "description": "test package without dependencies",
            "main": "index.js",
        }),
        &[("index.js", "exports.double = (n) => n * 2;\n")],
    );
    registry.publish(
        json!({
            "name": "tiny-lib",
            "version": "1.0.0",
            "description": "test package depending on tiny-util",
            "main": "index.js",
            "dependencies": { "tiny-util": "^1.0.0" },
        }),
        &[("index.js", "const { double } = require('tiny-util');\nmodule.exports = () => double(21);\n")],
    );
    registry.publish(
        json!({
            "name": "tiny-hook",
            "version": "1.0.0",
            "description": "test package with a harmless postinstall",
            "main": "index.js",
            "scripts": {
                "postinstall": "node -e \"require('fs').writeFileSync('postinstall-ran','1')\"",
            },
        }),
        &[("index.js", "module.exports = 'hooked';\n")],
    );
}

const CLEAN_TREE: [&str; 3] = ["tiny-util", "tiny-lib", "tiny-hook"];

#[test]
fn npm_ci_with_a_lockfile_passes_enforce_mode_without_alerts() {
    if !root_or_skip() {
        return;
    }
    require_tool("npm", &["--version"]);
    require_tool("node", &["--version"]);
    let registry = NpmRegistry::start();
    publish_clean_tree(&registry);
    let (project, home, env) = npm_project(&registry, "tiny-lib");
    write(
        project.join("package.json"),
        serde_json::to_string_pretty(&json!({
            "name": "watched-project",
            "version": "1.0.0",
            "private": true,
            "dependencies": { "tiny-lib": "^1.0.0", "tiny-hook": "^1.0.0" },
            "allowScripts": { "tiny-hook": true },
        }))
        .unwrap(),
    );

    // The lockfile, made outside the watcher against the same registry (as a developer
    // would, before committing it).
    run_ok(with_env(
        Command::new("npm")
            .args(["install", "--package-lock-only", "--no-audit", "--no-fund"])
            .current_dir(project.path()),
        &env,
    ));
    let lock_text = fs::read_to_string(project.join("package-lock.json"))
        .expect("npm install --package-lock-only wrote no package-lock.json");
    let lock: Value = serde_json::from_str(&lock_text).unwrap();
    for name in CLEAN_TREE {
        let entry = &lock["packages"][format!("node_modules/{name}")];
        assert_eq!(
            entry["resolved"],
            format!("{}{}", registry.http.base_url(), NpmRegistry::tarball_path(name, "1.0.0")),
            "lockfile entry of {name}: {entry}\n{lock_text}"
        );
        assert!(entry["integrity"].as_str().is_some_and(|i| i.starts_with("sha512-")), "{entry}");
    }
    assert_eq!(lock["packages"]["node_modules/tiny-hook"]["hasInstallScript"], true);
    assert!(!project.join("node_modules").exists(), "--package-lock-only installed packages");
    // A fresh CI machine: nothing cached, so `npm ci` downloads every tarball under watch.
    let _ = fs::remove_dir_all(home.join("npm-cache"));
    let tarball_hits_before: Vec<usize> =
        CLEAN_TREE.iter().map(|n| registry.http.hits(&NpmRegistry::tarball_path(n, "1.0.0"))).collect();
    let requests_before = registry.http.requests().len();

    let argv = ["npm", "ci", "--no-audit", "--no-fund"].map(OsString::from);
    let step = watch(&shipped_policy("npm"), "enforce", project.path(), &env, &argv.iter().collect::<Vec<_>>());
    assert_eq!(step.code, Some(0), "{}", step.context());
    assert_eq!(step.command_exit_code(), 0, "{}", step.context());
    assert!(step.alerts().is_empty(), "npm ci of a clean tree raised alerts\n{}", step.context());
    assert_policy_started(&step, "npm-build", "enforce");
    assert_eq!(
        step.one("start")["registries"]["npm"],
        json!(["127.0.0.1"]),
        "registry hosts resolved from npm's config"
    );
    assert_all_connects_to_registry(&step, registry.http.addr().port(), true);

    // npm ci downloaded every tarball of the lockfile from the test registry, under watch.
    let during: Vec<_> = registry.http.requests()[requests_before..].to_vec();
    for (name, before) in CLEAN_TREE.iter().zip(tarball_hits_before) {
        let path = NpmRegistry::tarball_path(name, "1.0.0");
        assert!(registry.http.hits(&path) > before, "npm ci did not download {path}: {during:#?}\n{}", step.context());
    }
    assert!(
        during.iter().all(|r| r.status == 200),
        "npm ci asked the registry for something it does not have: {during:#?}"
    );

    // The postinstall ran, watched, started by npm's `sh -c` and not killed.
    let script_starts: Vec<&Value> = step
        .execs_named("sh")
        .into_iter()
        .filter(|e| e["env"]["npm_lifecycle_event"] == "postinstall" && e["env"]["npm_package_name"] == "tiny-hook")
        .collect();
    assert_eq!(script_starts.len(), 1, "{:#?}\n{}", step.execs_named("sh"), step.context());
    assert_eq!(
        fs::read_to_string(project.join("node_modules/tiny-hook/postinstall-ran")).ok().as_deref(),
        Some("1"),
        "the postinstall did not run\n{}",
        step.context()
    );
    for name in CLEAN_TREE {
        assert!(
            project.join(format!("node_modules/{name}/package.json")).is_file(),
            "{name} is not installed\n{}",
            step.context()
        );
    }
    assert_eq!(
        fs::read_to_string(project.join("package-lock.json")).unwrap(),
        lock_text,
        "npm ci changed the lockfile"
    );
    // The installed tree works.
    let out = run_ok(
        Command::new("node")
            .args(["-e", "console.log(require('tiny-lib')(), require('tiny-hook'))"])
            .current_dir(project.path()),
    );
    assert_eq!(out.trim(), "42 hooked");
}

// ---------------------------------------------------------------------------- pip

/// Writes a pure-Python wheel with `files` (paths inside the wheel -> text) plus its RECORD,
/// using the zipfile module of `python` (run outside the watcher).
fn build_wheel(python: &str, out: &Path, dist_info: &str, files: &[(&str, &str)]) {
    const MAKE_WHEEL: &str = r#"import base64, hashlib, json, sys, zipfile
out, dist_info, files = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
record = []
with zipfile.ZipFile(out, 'w', zipfile.ZIP_DEFLATED) as z:
    for path, text in files.items():
        data = text.encode()
        z.writestr(path, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
        record.append(f'{path},sha256={digest},{len(data)}')
    record.append(f'{dist_info}/RECORD,,')
    z.writestr(f'{dist_info}/RECORD', '\n'.join(record) + '\n')
"#;
    let map: serde_json::Map<String, Value> = files.iter().map(|(p, t)| (p.to_string(), json!(t))).collect();
    run_ok(Command::new(python).args(["-c", MAKE_WHEEL]).arg(out).arg(dist_info).arg(Value::Object(map).to_string()));
}

impl PipIndex {
    /// Lists the already built `file` (its bytes in `path`) under the normalized `project`.
    fn publish_built(&self, project: &str, file: &str, path: &Path) {
        let sha256 = digest_hex("sha256sum", path);
        let html = format!(
            "<!DOCTYPE html>\n<html><body>\n<a href=\"{}#sha256={sha256}\">{file}</a><br/>\n</body></html>\n",
            Self::file_path(file)
        );
        self.http.route(&Self::project_path(project), "text/html", html);
        self.http.route(&Self::file_path(file), "application/octet-stream", fs::read(path).unwrap());
    }
}

/// A harmless in-tree PEP 517 backend: builds the wheel of `clean_sdist`, which needs the
/// `clean-wheel` project; runs no other program.
const CLEAN_BACKEND_PY: &str = r#"import base64, hashlib, os, zipfile

NAME, VERSION = 'clean_sdist', '1.0.0'
DIST_INFO = f'{NAME}-{VERSION}.dist-info'
FILES = {
    f'{NAME}/__init__.py': b"from clean_wheel import VALUE as WHEEL_VALUE\nVALUE = 'clean-sdist'\n",
    f'{DIST_INFO}/METADATA': f'Metadata-Version: 2.1\nName: clean-sdist\nVersion: {VERSION}\nRequires-Dist: clean-wheel>=1.0\n'.encode(),
    f'{DIST_INFO}/WHEEL': b'Wheel-Version: 1.0\nGenerator: clean_backend\nRoot-Is-Purelib: true\nTag: py3-none-any\n',
}


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = f'{NAME}-{VERSION}-py3-none-any.whl'
    record = []
    with zipfile.ZipFile(os.path.join(wheel_directory, name), 'w') as z:
        for path, data in FILES.items():
            z.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
            record.append(f'{path},sha256={digest},{len(data)}')
        record.append(f'{DIST_INFO}/RECORD,,')
        z.writestr(f'{DIST_INFO}/RECORD', '\n'.join(record) + '\n')
    return name
"#;

/// `pyproject.toml` of `clean_sdist`: its in-tree backend, and `requires` (the TOML list's
/// contents: build requirements pip installs from the index into the isolated build
/// environment).
fn clean_pyproject(requires: &str) -> String {
    format!("[build-system]\nrequires = [{requires}]\nbuild-backend = \"clean_backend\"\nbackend-path = [\".\"]\n")
}

/// Serves the pure-Python wheel `clean-wheel` 1.0.0 and the sdist `clean-sdist` 1.0.0 (which
/// needs clean-wheel at run time, and `build_requires` to build) from a local index, then runs
/// `pip install clean-sdist` in a fresh venv with pip's default build isolation (the sdist is
/// built in a fresh build environment, as in CI) under
/// `watcher run --policy policies/pip.yaml --mode enforce`, and checks that it passes: exit 0,
/// no alert, every connection to the index, both packages importable.
fn clean_pip_install_passes_enforce_mode(build_requires: &str) {
    let python = python_with_venv();
    eprintln!("using python {python}");
    let index = PipIndex::start();
    // The wheel: `clean-wheel` 1.0.0, pure Python.
    let wheel_file = "clean_wheel-1.0.0-py3-none-any.whl";
    let wheel_path = index.build.join(wheel_file);
    build_wheel(
        &python,
        &wheel_path,
        "clean_wheel-1.0.0.dist-info",
        &[
            ("clean_wheel/__init__.py", "VALUE = 'clean-wheel'\n"),
            (
                "clean_wheel-1.0.0.dist-info/METADATA",
                "Metadata-Version: 2.1\nName: clean-wheel\nVersion: 1.0.0\nSummary: test wheel\n",
            ),
            (
                "clean_wheel-1.0.0.dist-info/WHEEL",
                "Wheel-Version: 1.0\nGenerator: watcher-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
            ),
        ],
    );
    index.publish_built("clean-wheel", wheel_file, &wheel_path);
    // The sdist: `clean-sdist` 1.0.0, built by its in-tree backend, depends on clean-wheel.
    let sdist = index.publish_sdist(
        "clean-sdist",
        "clean_sdist",
        "1.0.0",
        &[
            ("pyproject.toml", &clean_pyproject(build_requires)),
            ("clean_backend.py", CLEAN_BACKEND_PY),
            ("PKG-INFO", "Metadata-Version: 2.1\nName: clean-sdist\nVersion: 1.0.0\nRequires-Dist: clean-wheel>=1.0\n"),
        ],
    );

    let work = TempDir::new("watcher-pm-pip-work");
    let home = TempDir::new("watcher-pm-pip-home");
    let bin = make_venv(&python, &work.join("venv"));
    let env = step_env(&[
        ("HOME", os(home.path())),
        ("PATH", path_with(&bin)),
        ("VIRTUAL_ENV", os(work.join("venv"))),
        ("PIP_CONFIG_FILE", os("/dev/null")),
        ("PIP_INDEX_URL", os(index.url())),
        ("PIP_DISABLE_PIP_VERSION_CHECK", os("1")),
        ("PIP_NO_INPUT", os("1")),
    ]);
    let argv = [
        os(bin.join("pip")),
        os("install"),
        os("--no-cache-dir"),
        os("--index-url"),
        os(index.url()),
        os("clean-sdist"),
    ];
    let step = watch(&shipped_policy("pip"), "enforce", work.path(), &env, &argv.iter().collect::<Vec<_>>());
    assert_eq!(step.code, Some(0), "{}", step.context());
    assert_eq!(step.command_exit_code(), 0, "{}", step.context());
    assert!(step.alerts().is_empty(), "a clean pip install raised alerts\n{}", step.context());
    assert_policy_started(&step, "pip-build", "enforce");
    assert_eq!(step.one("start")["registries"]["pip"], json!(["127.0.0.1"]), "index hosts resolved from pip's config");
    assert_all_connects_to_registry(&step, index.http.addr().port(), true);
    for path in [
        PipIndex::project_path("clean-sdist"),
        PipIndex::file_path(&sdist),
        PipIndex::project_path("clean-wheel"),
        PipIndex::file_path(wheel_file),
    ] {
        assert!(
            index.http.hits(&path) >= 1,
            "pip did not fetch {path} from the test index: {:#?}\n{}",
            index.http.requests(),
            step.context()
        );
    }
    // The sdist was really built, under watch, by pip's PEP 517 hook runner.
    let runners = pip_build_runners(&step);
    assert!(
        runners.iter().any(|r| r.contains("_in_process")),
        "pip did not build the sdist through its PEP 517 hook runner: {runners:#?}\n{}",
        step.context()
    );
    if !build_requires.is_empty() {
        // The build requirements were installed by pip's build-environment subprocess.
        let build_env_pips: Vec<&Value> = step
            .kind("exec")
            .into_iter()
            .filter(|e| {
                e["argv"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|s| s.as_str().is_some_and(|s| s.ends_with("__pip-runner__.py"))))
            })
            .collect();
        assert!(
            !build_env_pips.is_empty(),
            "pip did not install the build requirements in a subprocess\n{}",
            step.context()
        );
    }
    assert!(
        step.stdout.contains("Successfully installed")
            && step.stdout.contains("clean-sdist-1.0.0")
            && step.stdout.contains("clean-wheel-1.0.0"),
        "{}",
        step.context()
    );
    // Both are importable from the venv.
    let out = run_ok(
        with_env(&mut Command::new(bin.join("python")), &env)
            .args([
                "-c",
                "import clean_sdist, clean_wheel; print(clean_sdist.VALUE, clean_wheel.VALUE, clean_sdist.WHEEL_VALUE)",
            ])
            .current_dir(work.path()),
    );
    assert_eq!(out.trim(), "clean-sdist clean-wheel clean-wheel");
}

#[test]
fn pip_clean_sdist_and_wheel_install_passes_enforce_mode_without_alerts() {
    if !root_or_skip() {
        return;
    }
    // No build requirements: pip builds the sdist with its in-tree backend alone.
    clean_pip_install_passes_enforce_mode("");
}

/// The common case of a real sdist: build requirements (`requires = ["setuptools"]` and the
/// like) that pip installs from the index into the isolated build environment, with a pip
/// subprocess. That subprocess is pip itself, not package code: what it runs (on Debian and
/// Ubuntu, `lsb_release -a`, a /bin/sh script, for pip's user agent) must not count as a shell
/// spawned by a package build.
#[test]
fn pip_sdist_with_build_requirements_passes_enforce_mode_without_alerts() {
    if !root_or_skip() {
        return;
    }
    clean_pip_install_passes_enforce_mode("\"clean-wheel\"");
}

// ---------------------------------------------------------------------------- cargo

/// A binary crate `vendored-app` that depends on `tiny-dep = "0.1"` from crates-io, with
/// crates-io replaced by the directory source `vendor/` holding `tiny-dep` 0.1.0 (with a
/// harmless build script) and its `.cargo-checksum.json`.
fn cargo_project_with_vendored_dep() -> (TempDir, TempDir) {
    let project = TempDir::new("watcher-pm-cargo-project");
    write(
        project.join("Cargo.toml"),
        "[package]\nname = \"vendored-app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [dependencies]\ntiny-dep = \"0.1\"\n\n[workspace]\n",
    );
    write(
        project.join("src/main.rs"),
        "fn main() {\n    println!(\"{} {}\", tiny_dep::greeting(), tiny_dep::add(40, 2));\n}\n",
    );
    write(
        project.join(".cargo/config.toml"),
        "[source.crates-io]\nreplace-with = \"local-vendor\"\n\n[source.local-vendor]\ndirectory = \"vendor\"\n",
    );
    let krate = project.join("vendor/tiny-dep");
    let files = [
        (
            "Cargo.toml",
            "[package]\nname = \"tiny-dep\"\nversion = \"0.1.0\"\nedition = \"2021\"\nbuild = \"build.rs\"\n",
        ),
        (
            "build.rs",
            "fn main() {\n    println!(\"cargo:rerun-if-changed=build.rs\");\n    \
             println!(\"cargo:rustc-env=TINY_DEP_GREETING=hello from tiny-dep\");\n}\n",
        ),
        (
            "src/lib.rs",
            "pub fn greeting() -> &'static str {\n    env!(\"TINY_DEP_GREETING\")\n}\n\n\
             pub fn add(a: u32, b: u32) -> u32 {\n    a + b\n}\n",
        ),
    ];
    let mut sums = serde_json::Map::new();
    for (path, text) in files {
        write(krate.join(path), text);
        sums.insert(path.to_string(), json!(digest_hex("sha256sum", &krate.join(path))));
    }
    write(krate.join(".cargo-checksum.json"), json!({ "files": sums, "package": null }).to_string());
    (project, TempDir::new("watcher-pm-cargo-work"))
}

#[test]
fn cargo_build_with_a_dependency_from_a_local_registry_passes_enforce_mode() {
    if !root_or_skip() {
        return;
    }
    require_tool("cargo", &["--version"]);
    let (project, work) = cargo_project_with_vendored_dep();
    let marker = work.join("unused-marker.txt");

    let step = cargo_build(project.path(), work.path(), "enforce", &marker);
    assert_eq!(step.code, Some(0), "{}", step.context());
    assert_eq!(step.command_exit_code(), 0, "{}", step.context());
    assert!(step.alerts().is_empty(), "a clean build with a vendored dependency raised alerts\n{}", step.context());
    assert_policy_started(&step, "cargo-build", "enforce");
    // The registry was resolved from cargo's configuration: crates-io is replaced by a local
    // directory, so there is no host; the dependency's build script ran under watch.
    assert_cargo_step_basics(&step, "tiny-dep");
    // An offline build from a local directory opens no connection at all.
    assert!(step.kind("connect").is_empty(), "cargo build --offline connected somewhere\n{}", step.context());
    assert_all_connects_to_registry(&step, 0, false);
    assert!(
        step.stderr.contains("Compiling tiny-dep v0.1.0") && step.stderr.contains("Finished"),
        "{}",
        step.context()
    );
    // The dependency came from the (replaced) crates-io registry, not a path.
    let lock = fs::read_to_string(project.join("Cargo.lock")).expect("Cargo.lock");
    let entry = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"tiny-dep\""))
        .unwrap_or_else(|| panic!("tiny-dep not in Cargo.lock:\n{lock}"));
    assert!(entry.contains("source = \"registry+"), "tiny-dep is not a registry package in Cargo.lock:\n{lock}");
    // The binary was built and works.
    let app = work.join("target/debug/vendored-app");
    assert!(app.is_file(), "{} was not built\n{}", app.display(), step.context());
    let out = run_ok(&mut Command::new(&app));
    assert_eq!(out.trim(), "hello from tiny-dep 42");
}

/// `watcher policy suggest` on a real npm install: the registry is named by package manager
/// (`registries: [npm]`, never its host), the suggestion is a valid policy, and replaying the
/// same log under it flags nothing. A policy naming a registry the log has no hosts for gets
/// a warning naming that registry.
#[test]
fn npm_install_log_suggests_registry_npm_and_replays_clean_under_it() {
    if !root_or_skip() {
        return;
    }
    require_tool("npm", &["--version"]);
    let registry = NpmRegistry::start();
    registry.publish(
        json!({
            "name": "quiet-pkg",
            "version": "1.0.0",
            "description": "test package with a harmless postinstall",
            "scripts": { "postinstall": "node -e \"console.log('ok')\"" },
            "main": "index.js",
        }),
        &[("index.js", "module.exports = 1;\n")],
    );
    let (project, _home, env) = npm_project(&registry, "quiet-pkg");
    let step = npm_install(project.path(), &env, "audit");
    assert_eq!(step.code, Some(0), "{}", step.context());
    assert_npm_used_test_registry(&step, &registry, "quiet-pkg");

    let dir = TempDir::new("watcher-pm-suggest");
    let log = dir.join("npm.jsonl");
    let lines: String = step.events.iter().map(|e| format!("{e}\n")).collect();
    write(&log, lines);
    let out = Command::new(watcher_bin())
        .args(["policy", "suggest", "--pipeline", "npm-suggested"])
        .arg(&log)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(yaml.contains("registries: [npm]"), "{yaml}");
    let policy = dir.join("suggested.yaml");
    write(&policy, &yaml);
    let check = Command::new(watcher_bin()).args(["policy", "check"]).arg(&policy).output().unwrap();
    assert_eq!(check.status.code(), Some(0), "{yaml}\n{}", String::from_utf8_lossy(&check.stderr));

    let replay = |policy: &Path| {
        Command::new(watcher_bin())
            .args(["replay", "--format", "json", "--policy"])
            .arg(policy)
            .arg(&log)
            .output()
            .unwrap()
    };
    let out = replay(&policy);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(out.status.code(), Some(0), "{yaml}\n{report:#}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(report["logs"][0]["verdict"], "clean", "{report:#}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"), "{}", String::from_utf8_lossy(&out.stderr));

    // Also allowing pip, which this log never recorded hosts for: a warning names it.
    let with_pip = dir.join("with-pip.yaml");
    write(&with_pip, yaml.replace("registries: [npm]", "registries: [npm, pip]"));
    let out = replay(&with_pip);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("warning") && err.contains("registry pip") && !err.contains("registry npm"), "{err}");
}
