//! The package managers beyond npm and pip, for real, in the attack lab (`watcher_tests::lab`):
//! pnpm, yarn classic, yarn berry and bun install from the lab's internal verdaccio; uv and
//! poetry from its internal pypiserver. Each runs under the shipped policy of its ecosystem
//! (`policies/npm.yaml`, `policies/pip.yaml`) in enforce mode, inside the lab's build network
//! namespace, with the registry configured the tool's own way (.npmrc, .yarnrc, .yarnrc.yml,
//! bunfig.toml, UV_DEFAULT_INDEX, [[tool.poetry.source]]): exit 0, zero alerts, the install
//! script or sdist build attributed to its package in the report, and the registry host named
//! by the project's file reported with that file in the start record.
//!
//! Also, without the lab: discovery at `watcher run` start never runs the workspace's code (a
//! `pip/` package, an npm shim in node_modules/.bin) and never allows its hosts.
//!
//! Needs root, and the tools of `scripts/install-prereqs.sh` (verdaccio, pypiserver, and
//! pnpm, yarn, bun, uv, poetry under /opt/watcher-lab/pm); a test whose client is missing says
//! so and fails, since the install script puts them there.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use watcher_tests::lab::{Host, Lab};
use watcher_tests::{TempDir, read_jsonl, root_or_skip, watcher_bin};

const STEP_TIMEOUT: Duration = Duration::from_secs(240);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn policy(name: &str) -> PathBuf {
    repo_root().join("policies").join(format!("{name}.yaml"))
}

fn pm_dir() -> PathBuf {
    watcher_tests::lab::tools_dir().join("pm")
}

/// `pm/<dir>/<tool>`, which scripts/install-prereqs.sh installs.
fn tool(dir: &str, name: &str) -> PathBuf {
    let p = pm_dir().join(dir).join(name);
    assert!(p.exists(), "{} is missing: run scripts/install-prereqs.sh", p.display());
    p
}

fn os(s: impl AsRef<std::ffi::OsStr>) -> OsString {
    s.as_ref().to_os_string()
}

// ============================================================================ the lab

struct Shared {
    lab: Lab,
}

static LAB: Mutex<Option<Result<Shared, String>>> = Mutex::new(None);

extern "C" fn drop_lab() {
    let mut g = LAB.lock().unwrap_or_else(|e| e.into_inner());
    g.take();
}

fn setup() -> Result<Shared, String> {
    let lab = Lab::start().map_err(|e| format!("{e:#}"))?;
    let fx = repo_root().join("tests/fixtures/lab");
    lab.npm_publish(Host::Internal, &fx.join("npm/lab-clean-lib-1.0.0")).map_err(|e| format!("npm publish: {e:#}"))?;
    lab.pip_publish_sdist(
        Host::Internal,
        &fx.join("pip/py-formatter-util-1.2.1"),
        &[&fx.join("pip/common/lab_backend.py")],
    )
    .map_err(|e| format!("sdist: {e:#}"))?;
    // SAFETY: registering a plain extern "C" function.
    unsafe { libc::atexit(drop_lab) };
    Ok(Shared { lab })
}

fn lab() -> MutexGuard<'static, Option<Result<Shared, String>>> {
    let mut g = LAB.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        *g = Some(setup());
    }
    if let Some(Err(e)) = g.as_ref() {
        panic!("the attack lab could not start: {e}");
    }
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
    events: Vec<Value>,
    report: Value,
    markdown: String,
    _dir: TempDir,
}

impl Step {
    fn alerts(&self) -> Vec<&Value> {
        self.events.iter().filter(|e| e["kind"] == "alert").collect()
    }

    fn start(&self) -> &Value {
        self.events.iter().find(|e| e["kind"] == "start").expect("a start record")
    }

    fn context(&self) -> String {
        let l: Vec<&str> = self.stderr.lines().collect();
        let o: Vec<&str> = self.stdout.lines().collect();
        format!(
            "exit {:?}\nalerts: {:#?}\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.alerts(),
            o[o.len().saturating_sub(20)..].join("\n"),
            l[l.len().saturating_sub(40)..].join("\n")
        )
    }

    /// The report's processes attributed to `label` (`npm:lab-clean-lib@1.0.0 (postinstall)`).
    fn attributed(&self, label: &str) -> Vec<&Value> {
        self.report["processes"].as_array().unwrap().iter().filter(|p| p["package"] == label).collect()
    }

    /// The start record says the registry host came from `file` of the workspace.
    fn assert_source(&self, host: &str, file: &Path) {
        let sources = self.start()["registry_sources"].as_array().cloned().unwrap_or_default();
        let s = sources
            .iter()
            .find(|s| s["host"] == host)
            .unwrap_or_else(|| panic!("{host} not in registry_sources {sources:#?}\n{}", self.context()));
        assert_eq!(s["workspace"], true, "{s}");
        assert!(s["from"].as_str().unwrap().starts_with(&file.display().to_string()), "{s}");
        assert!(
            self.markdown.contains(host) && self.markdown.contains(&file.display().to_string()),
            "{}",
            self.markdown
        );
        assert!(self.stderr.contains(&format!("registry host {host}")), "{}", self.context());
    }
}

/// The base environment: the package managers first on PATH, a temporary HOME.
fn base_env(home: &Path, front: &[PathBuf]) -> Vec<(String, OsString)> {
    let mut path: Vec<String> = front.iter().map(|p| p.display().to_string()).collect();
    path.push("/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into());
    vec![
        ("PATH".into(), os(path.join(":"))),
        ("HOME".into(), os(home)),
        ("LANG".into(), os("C.UTF-8")),
        ("CI".into(), os("true")),
    ]
}

/// `watcher run --policy POLICY --mode enforce --log LOG --report R.json -- ARGV`
/// in `cmd`'s environment (the build namespace, or the host), exactly `env`.
fn watch(mut cmd: Command, policy: &Path, cwd: &Path, env: &[(String, OsString)], argv: &[OsString]) -> Step {
    let dir = TempDir::new("watcher-pm-step");
    let log = dir.join("events.jsonl");
    cmd.args(["run", "--mode", "enforce", "--policy"])
        .arg(policy)
        .arg("--log")
        .arg(&log)
        .arg("--report")
        .arg(dir.join("report.json"))
        .arg("--")
        .args(argv)
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(fs::File::create(dir.join("stdout")).unwrap())
        .stderr(fs::File::create(dir.join("stderr")).unwrap());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("start watcher");
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > STEP_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("watcher run -- {argv:?} did not finish within {STEP_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    let stdout = fs::read_to_string(dir.join("stdout")).unwrap_or_default();
    assert!(log.is_file(), "watcher wrote no log ({status}):\n{stderr}");
    let events = read_jsonl(&log);
    let report = fs::read_to_string(dir.join("report.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    // The Markdown report of the same log (what a GitHub step summary shows).
    let md = Command::new(watcher_bin()).args(["replay", "--format", "markdown"]).arg(&log).output().unwrap();
    let markdown = String::from_utf8_lossy(&md.stdout).into_owned();
    eprintln!("watcher run -- {argv:?}: {status} in {:.1?}, {} events", started.elapsed(), events.len());
    for a in events.iter().filter(|e| e["kind"] == "alert") {
        eprintln!("  alert {} {} {} {}", a["rule"], a["action"], a["package"], a["message"]);
    }
    Step { code: status.code(), stdout, stderr, events, report, markdown, _dir: dir }
}

/// A clean install: exit 0, no alert, the postinstall ran and is attributed.
fn assert_clean_npm_install(step: &Step, project: &Path) {
    assert_eq!(step.code, Some(0), "{}", step.context());
    assert!(step.alerts().is_empty(), "a clean install raised alerts\n{}", step.context());
    let built = project.join("node_modules/lab-clean-lib/built.json");
    assert!(built.is_file(), "the postinstall of lab-clean-lib did not run\n{}", step.context());
    let scripts = step.attributed("npm:lab-clean-lib@1.0.0 (postinstall)");
    assert!(
        scripts.iter().any(|p| p["argv"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().contains("postinstall.js"))),
        "the postinstall is not attributed to lab-clean-lib: {scripts:#?}\n{}",
        serde_json::to_string_pretty(&step.report["processes"]).unwrap()
    );
}

/// A project depending on lab-clean-lib, with its files.
fn js_project(files: &[(&str, String)], extra: Value) -> TempDir {
    let project = TempDir::new("watcher-pm-js");
    let mut pkg =
        json!({"name": "pm-build", "version": "1.0.0", "private": true, "dependencies": {"lab-clean-lib": "^1.0.0"}});
    for (k, v) in extra.as_object().unwrap() {
        pkg[k] = v.clone();
    }
    fs::write(project.join("package.json"), serde_json::to_string_pretty(&pkg).unwrap()).unwrap();
    for (name, text) in files {
        fs::write(project.join(name), text).unwrap();
    }
    project
}

/// A directory outside /tmp (under cargo's target dir), removed on drop.
fn scratch_outside_tmp(name: &str) -> Scratch {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&p);
    fs::create_dir_all(&p).unwrap();
    Scratch(p)
}

struct Scratch(PathBuf);

impl Scratch {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ============================================================================ JavaScript

#[test]
fn pnpm_install_passes_the_npm_policy_in_enforce_mode() {
    if !root_or_skip() {
        return;
    }
    let pnpm = tool("bin", "pnpm");
    let g = lab();
    let sh = shared(&g);
    let url = sh.lab.npm_url(Host::Internal);
    let project = js_project(
        &[
            (".npmrc", format!("registry={url}\n")),
            ("pnpm-workspace.yaml", "onlyBuiltDependencies:\n  - lab-clean-lib\n".into()),
        ],
        json!({}),
    );
    let home = TempDir::new("watcher-pm-home");
    let env = base_env(home.path(), &[pnpm.parent().unwrap().to_path_buf()]);
    let argv = [os(&pnpm), os("install"), os("--reporter=append-only")];
    let step = watch(sh.lab.build_cmd(watcher_bin()), &policy("npm"), project.path(), &env, &argv);
    assert_clean_npm_install(&step, project.path());
    step.assert_source("npm.internal.lab.test", &project.join(".npmrc"));
}

#[test]
fn yarn_classic_install_passes_the_npm_policy_in_enforce_mode() {
    if !root_or_skip() {
        return;
    }
    let yarn = tool("bin", "yarn");
    let g = lab();
    let sh = shared(&g);
    let url = sh.lab.npm_url(Host::Internal);
    let project = js_project(&[(".yarnrc", format!("registry \"{url}\"\n"))], json!({}));
    let home = TempDir::new("watcher-pm-home");
    let mut env = base_env(home.path(), &[yarn.parent().unwrap().to_path_buf()]);
    env.push(("YARN_CACHE_FOLDER".into(), os(home.join("yarn-cache"))));
    // yarn 1 writes `node` and `yarn` wrapper scripts into a fresh $TMPDIR/yarn--<time>/ for
    // every lifecycle script and runs them: under /tmp, the shipped npm.yaml's `/tmp/**` exec
    // rule denies them (issue 12 item 4: temp-dir rules must judge droppers, not the package
    // manager's own files). Until that rule knows them, this step's TMPDIR is elsewhere.
    let tmp = scratch_outside_tmp("yarn-classic");
    env.push(("TMPDIR".into(), os(tmp.path())));
    let argv = [os(&yarn), os("install"), os("--non-interactive"), os("--no-progress")];
    let step = watch(sh.lab.build_cmd(watcher_bin()), &policy("npm"), project.path(), &env, &argv);
    assert_clean_npm_install(&step, project.path());
    step.assert_source("npm.internal.lab.test", &project.join(".yarnrc"));
}

#[test]
fn yarn_berry_install_passes_the_npm_policy_in_enforce_mode() {
    if !root_or_skip() {
        return;
    }
    let yarn = tool("berry-bin", "yarn");
    let g = lab();
    let sh = shared(&g);
    let url = sh.lab.npm_url(Host::Internal);
    let rc = format!(
        "npmRegistryServer: \"{}\"\nunsafeHttpWhitelist:\n  - \"npm.internal.lab.test\"\nnodeLinker: node-modules\nenableScripts: true\nenableTelemetry: false\nenableGlobalCache: false\nnpmMinimalAgeGate: 0\n",
        url.trim_end_matches('/')
    );
    let project = js_project(&[(".yarnrc.yml", rc), ("yarn.lock", String::new())], json!({}));
    let home = TempDir::new("watcher-pm-home");
    let mut env = base_env(home.path(), &[yarn.parent().unwrap().to_path_buf()]);
    env.push(("YARN_ENABLE_IMMUTABLE_INSTALLS".into(), os("false")));
    // yarn 2+ writes its wrappers into $TMPDIR/xfs-<hash>/: see the yarn 1 test.
    let tmp = scratch_outside_tmp("yarn-berry");
    env.push(("TMPDIR".into(), os(tmp.path())));
    let argv = [os(&yarn), os("install")];
    let step = watch(sh.lab.build_cmd(watcher_bin()), &policy("npm"), project.path(), &env, &argv);
    assert_clean_npm_install(&step, project.path());
    step.assert_source("npm.internal.lab.test", &project.join(".yarnrc.yml"));
}

#[test]
fn bun_install_passes_the_npm_policy_in_enforce_mode() {
    if !root_or_skip() {
        return;
    }
    let bun = tool("bin", "bun");
    let g = lab();
    let sh = shared(&g);
    let url = sh.lab.npm_url(Host::Internal);
    let project = js_project(
        &[("bunfig.toml", format!("[install]\nregistry = \"{url}\"\n"))],
        json!({"trustedDependencies": ["lab-clean-lib"]}),
    );
    let home = TempDir::new("watcher-pm-home");
    let mut env = base_env(home.path(), &[bun.parent().unwrap().to_path_buf()]);
    env.push(("BUN_INSTALL_CACHE_DIR".into(), os(home.join("bun-cache"))));
    let argv = [os(&bun), os("install"), os("--no-progress")];
    let step = watch(sh.lab.build_cmd(watcher_bin()), &policy("npm"), project.path(), &env, &argv);
    assert_clean_npm_install(&step, project.path());
    step.assert_source("npm.internal.lab.test", &project.join("bunfig.toml"));
}

// ============================================================================ Python

/// The sdist was built (its package is installed) and the build is attributed to it.
fn assert_clean_python_build(step: &Step, label: &str) {
    assert_eq!(step.code, Some(0), "{}", step.context());
    assert!(step.alerts().is_empty(), "a clean install raised alerts\n{}", step.context());
    assert!(
        !step.attributed(label).is_empty(),
        "no process attributed to {label}: {}",
        serde_json::to_string_pretty(&step.report["processes"]).unwrap()
    );
}

#[test]
fn uv_pip_install_builds_the_sdist_under_the_pip_policy_in_enforce_mode() {
    if !root_or_skip() {
        return;
    }
    let uv = tool("bin", "uv");
    let g = lab();
    let sh = shared(&g);
    let work = TempDir::new("watcher-pm-uv");
    let home = work.join("home");
    fs::create_dir_all(&home).unwrap();
    let venv = work.join("venv");
    let st = Command::new(&uv)
        .args(["venv", "-q", "--python", "/usr/bin/python3"])
        .arg(&venv)
        .env("HOME", &home)
        .status()
        .unwrap();
    assert!(st.success(), "uv venv");
    let mut env = base_env(&home, &[uv.parent().unwrap().to_path_buf()]);
    env.extend([
        ("VIRTUAL_ENV".into(), os(&venv)),
        ("UV_DEFAULT_INDEX".into(), os(sh.lab.pip_url(Host::Internal))),
        ("UV_CACHE_DIR".into(), os(home.join("uv-cache"))),
        ("UV_PYTHON_DOWNLOADS".into(), os("never")),
        ("UV_NO_PROGRESS".into(), os("1")),
    ]);
    let argv = [os(&uv), os("pip"), os("install"), os("--no-binary"), os(":all:"), os("py-formatter-util==1.2.1")];
    let step = watch(sh.lab.build_cmd(watcher_bin()), &policy("pip"), work.path(), &env, &argv);
    assert_clean_python_build(&step, "uv:py-formatter-util (build)");
    let installed = fs::read_dir(venv.join("lib"))
        .unwrap()
        .flatten()
        .any(|d| d.path().join("site-packages/py_formatter_util").is_dir());
    assert!(installed, "py-formatter-util is not installed in the venv\n{}", step.context());
}

#[test]
fn poetry_install_builds_the_sdist_under_the_pip_policy_in_enforce_mode() {
    if !root_or_skip() {
        return;
    }
    let poetry = tool("bin", "poetry");
    let g = lab();
    let sh = shared(&g);
    let project = TempDir::new("watcher-pm-poetry");
    let home = TempDir::new("watcher-pm-home");
    let pyproject = project.join("pyproject.toml");
    fs::write(
        &pyproject,
        format!(
            "[tool.poetry]\nname = \"pm-build\"\nversion = \"0.1.0\"\ndescription = \"\"\nauthors = []\npackage-mode = false\n\n\
             [tool.poetry.dependencies]\npython = \">=3.9\"\npy-formatter-util = \"1.2.1\"\n\n\
             [[tool.poetry.source]]\nname = \"lab\"\nurl = \"{}\"\npriority = \"primary\"\n",
            sh.lab.pip_url(Host::Internal)
        ),
    )
    .unwrap();
    let mut env = base_env(home.path(), &[poetry.parent().unwrap().to_path_buf()]);
    env.extend([
        ("POETRY_VIRTUALENVS_IN_PROJECT".into(), os("true")),
        ("POETRY_CACHE_DIR".into(), os(home.join("poetry-cache"))),
        ("POETRY_NO_INTERACTION".into(), os("1")),
    ]);
    let argv = [os(&poetry), os("install"), os("--no-root"), os("--no-ansi")];
    let step = watch(sh.lab.build_cmd(watcher_bin()), &policy("pip"), project.path(), &env, &argv);
    assert_clean_python_build(&step, "pep517:py_formatter_util (build)");
    step.assert_source("pypi.internal.lab.test", &pyproject);
}

// ============================================================================ hostile workspaces

/// `watcher run` with `registries: [pip]` in a checkout that carries a `pip/` package (what
/// `python3 -c "from pip._internal..."` in the cwd used to import, as root, before the step).
#[test]
fn a_pip_package_in_the_checkout_is_not_imported_and_its_hosts_are_not_allowed() {
    if !root_or_skip() {
        return;
    }
    let ws = TempDir::new("watcher-pm-hostile-pip");
    let marker = ws.join("IMPORTED-AS-ROOT");
    let plant = |rel: &str, text: &str| {
        let p = ws.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    };
    let touch = format!("open({:?}, 'w').write('x')\n", marker.display().to_string());
    plant("pip/__init__.py", &touch);
    plant("pip/_internal/__init__.py", &touch);
    plant("pip/_internal/models/__init__.py", "");
    plant(
        "pip/_internal/models/index.py",
        &format!(
            "{touch}class PyPI:\n    simple_url = 'https://attacker-index.test/simple'\n    file_storage_domain = 'attacker-files.test'\n"
        ),
    );
    let home = TempDir::new("watcher-pm-home");
    let mut env = base_env(home.path(), &[]);
    env.push(("PATH".into(), os(std::env::var("PATH").unwrap())));
    env.push(("PYTHONPATH".into(), os(ws.path())));
    env.push(("PIP_CONFIG_FILE".into(), os("/dev/null")));
    env.push(("HOME".into(), os(std::env::var("HOME").unwrap())));
    let step = watch(Command::new(watcher_bin()), &policy("pip"), ws.path(), &env, &[os("true")]);
    assert_eq!(step.code, Some(0), "{}", step.context());
    assert!(!marker.exists(), "the checkout's pip package ran before the step\n{}", step.context());
    let text = step.start()["registries"].to_string();
    assert!(!text.contains("attacker"), "the checkout's hosts were allowed: {text}");
    assert!(!step.start()["registries"]["pip"].as_array().unwrap().is_empty(), "{text}");
}

/// An npm shim in the checkout's node_modules/.bin, first on PATH: never started by discovery.
#[test]
fn an_npm_shim_in_the_checkout_is_not_run_and_its_hosts_are_not_allowed() {
    if !root_or_skip() {
        return;
    }
    let ws = TempDir::new("watcher-pm-hostile-npm");
    let marker = ws.join("RAN-AS-ROOT");
    let bin = ws.join("node_modules/.bin");
    fs::create_dir_all(&bin).unwrap();
    fs::write(
        bin.join("npm"),
        format!("#!/bin/sh\ntouch {}\necho '{{\"registry\":\"https://attacker.test/\"}}'\n", marker.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(bin.join("npm"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(ws.join("package.json"), "{\"name\":\"w\",\"version\":\"1.0.0\"}").unwrap();
    let home = TempDir::new("watcher-pm-home");
    let env = base_env(home.path(), &[bin.clone(), PathBuf::from("node_modules/.bin")]);
    let step = watch(Command::new(watcher_bin()), &policy("npm"), ws.path(), &env, &[os("true")]);
    assert_eq!(step.code, Some(0), "{}", step.context());
    assert!(!marker.exists(), "the checkout's npm shim ran before the step\n{}", step.context());
    let text = step.start()["registries"].to_string();
    assert!(!text.contains("attacker"), "the checkout's hosts were allowed: {text}");
}
