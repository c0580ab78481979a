//! The real-world corpus: real installs of real packages from the public registries, through
//! each tool's default configuration, under the shipped policies in enforce mode. Each must
//! pass with zero alerts and exit 0 (issue 12: a policy that fails a clean build gets switched
//! off). The projects are in tests/fixtures/corpus/ with pinned versions:
//!
//! * `npm/`: 24 packages with install scripts (esbuild, sharp, core-js, es5-ext, @swc/core,
//!   protobufjs, bufferutil, utf-8-validate, msgpackr-extract, husky, puppeteer and cypress and
//!   electron with their downloads skipped by their own variables, ...) and the project's own
//!   `postinstall`, installed by `npm ci` under /tmp;
//! * `npm-native/`: better-sqlite3, node-pty and dtrace-provider built from source by node-gyp
//!   (make runs every recipe through /bin/sh) against the system's Node.js headers, under $HOME;
//! * `pip/`: 11 source distributions with setuptools, hatchling, flit-core, poetry-core,
//!   pdm-backend and setuptools-scm backends (two with C extensions), built by pip in a venv
//!   under $HOME;
//! * `cargo/`: 14 crates with build scripts (libc, serde, proc-macro2, ring, zstd-sys,
//!   openssl-sys, libsqlite3-sys bundled, ...) built by cargo under /tmp.
//!
//! Every step runs with a pyenv-style shim directory (`#!/usr/bin/env bash` wrappers that
//! existed before the step) first on PATH. Downloads are cached by the tools' own default
//! caches (~/.npm, ~/.cache/pip, ~/.cargo), so a second run is fast. Network: only the public
//! npm, Python and Rust registries, through the tools' defaults (see HELPER rules).
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use serde_json::Value;
use watcher_tests::{read_jsonl, root_or_skip, watcher_bin};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/corpus").join(name)
}

/// A directory removed on drop (also when the test fails).
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
}

/// Copies fixture `name` to `<base>/watcher-corpus-<name>-<pid>`.
fn project(name: &str, base: &Path) -> Dir {
    project_as(name, name, base)
}

/// Copies fixture `name` to `<base>/watcher-corpus-<tag>-<pid>` (tests that run at the same
/// time use one fixture each in its own directory).
fn project_as(name: &str, tag: &str, base: &Path) -> Dir {
    let dir = base.join(format!("watcher-corpus-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // A fresh machine may have no ~/.cache yet (pip or npm creates it when they first run).
    std::fs::create_dir_all(base).unwrap_or_else(|e| panic!("cannot create {}: {e}", base.display()));
    let st = Command::new("cp").arg("-a").arg(fixture(name)).arg(&dir).status().unwrap();
    assert!(st.success(), "cannot copy the {name} fixture");
    Dir(dir)
}

/// A pyenv-style shim directory: `#!/usr/bin/env bash` wrappers for python3, python and pip
/// that exec the real ones (found on PATH now), written before the step starts.
fn shims() -> (Dir, String) {
    let dir = Dir(home().join(format!(".cache/watcher-corpus-shims-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    for (name, real) in [("python3", "python3"), ("python", "python3")] {
        let out = Command::new("sh").args(["-c", &format!("command -v {real}")]).output().unwrap();
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if path.is_empty() {
            continue;
        }
        let shim = dir.0.join(name);
        std::fs::write(&shim, format!("#!/usr/bin/env bash\nset -e\nexec \"{path}\" \"$@\"\n")).unwrap();
        assert!(Command::new("chmod").arg("755").arg(&shim).status().unwrap().success());
    }
    let path = format!("{}:{}", dir.0.display(), std::env::var("PATH").unwrap_or_default());
    (dir, path)
}

struct Outcome {
    code: Option<i32>,
    alerts: Vec<Value>,
    events: Vec<Value>,
    secs: f64,
    stderr: String,
}

impl Outcome {
    fn context(&self) -> String {
        let tail: Vec<&str> = self.stderr.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
        format!(
            "exit {:?} after {:.0}s\nalerts: {:#?}\nstderr (end):\n{}",
            self.code,
            self.secs,
            self.alerts,
            tail.join("\n")
        )
    }

    /// Packages whose install script started (attributed by the engine's rules).
    fn scripts(&self, manager: &str) -> std::collections::BTreeSet<String> {
        self.events
            .iter()
            .filter(|e| e["kind"] == "exec")
            .filter_map(|e| match manager {
                "npm" => {
                    let ev = e["env"]["npm_lifecycle_event"].as_str()?;
                    let own = e["env"]["npm_package_json"].as_str().is_some_and(|j| !j.contains("/node_modules/"));
                    (["preinstall", "install", "postinstall"].contains(&ev) && !own)
                        .then(|| e["env"]["npm_package_name"].as_str().map(String::from))?
                }
                "cargo" => e["env"]["CARGO_PKG_NAME"]
                    .as_str()
                    .filter(|_| {
                        e["filename"]
                            .as_str()
                            .is_some_and(|f| f.rsplit('/').next().unwrap_or("").starts_with("build-script-"))
                    })
                    .map(String::from),
                _ => None,
            })
            .collect()
    }
}

/// `watcher run --policy policies/<policy>.yaml --mode enforce -- ARGV` in `cwd`.
fn watch(policy: &str, cwd: &Path, path: &str, env: &[(&str, &str)], argv: &[&str]) -> Outcome {
    let log = cwd.join("watcher-corpus.jsonl");
    let t = Instant::now();
    let mut cmd = Command::new(watcher_bin());
    cmd.args(["run", "--quiet", "--mode", "enforce", "--policy"])
        .arg(repo().join("policies").join(format!("{policy}.yaml")))
        .arg("--log")
        .arg(&log)
        .arg("--")
        .args(argv)
        .current_dir(cwd)
        .env("PATH", path)
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let events = if log.exists() { read_jsonl(&log) } else { Vec::new() };
    Outcome {
        code: out.status.code(),
        alerts: events.iter().filter(|e| e["kind"] == "alert").cloned().collect(),
        events,
        secs: t.elapsed().as_secs_f64(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn report(what: &str, o: &Outcome, scripts: usize) {
    eprintln!(
        "corpus: {what}: exit {:?}, {} alerts, {} install scripts, {} held shells judged, {:.0}s",
        o.code,
        o.alerts.len(),
        scripts,
        o.events.iter().filter(|e| e["kind"] == "exec" && e["held"] == true).count(),
        o.secs
    );
}

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn npm_packages_with_install_scripts_install_clean_under_tmp() {
    if !root_or_skip() {
        return;
    }
    let p = project("npm", &std::env::temp_dir());
    let (_shims, path) = shims();
    let o = watch(
        "npm",
        &p.0,
        &path,
        &[("PUPPETEER_SKIP_DOWNLOAD", "1"), ("CYPRESS_INSTALL_BINARY", "0"), ("ELECTRON_SKIP_BINARY_DOWNLOAD", "1")],
        &["npm", "ci", "--no-audit", "--no-fund"],
    );
    let scripts = o.scripts("npm");
    report("npm ci (24 packages with install scripts)", &o, scripts.len());
    assert_eq!(o.code, Some(0), "{}", o.context());
    assert!(o.alerts.is_empty(), "{}", o.context());
    assert!(scripts.len() >= 20, "only {} install scripts ran: {scripts:?}\n{}", scripts.len(), o.context());
    for want in ["esbuild", "sharp", "core-js", "es5-ext", "@swc/core", "protobufjs", "puppeteer", "cypress"] {
        assert!(scripts.contains(want), "{want}'s install script did not run: {scripts:?}");
    }
    // The project's own postinstall ran (its shell too): it is the user's code.
    assert!(p.0.join("own-postinstall-ran").exists(), "{}", o.context());
}

#[test]
fn npm_native_addons_build_from_source_clean_under_home() {
    if !root_or_skip() {
        return;
    }
    let p = project("npm-native", &home().join(".cache"));
    let (_shims, path) = shims();
    // node-gyp builds against the system's Node.js headers (no download); prebuild-install
    // is told to build from source (no download attempt).
    let o = watch(
        "npm",
        &p.0,
        &path,
        &[("npm_config_build_from_source", "true"), ("npm_config_nodedir", "/usr")],
        &["npm", "ci", "--no-audit", "--no-fund"],
    );
    let scripts = o.scripts("npm");
    report("npm ci (native addons from source)", &o, scripts.len());
    assert_eq!(o.code, Some(0), "{}", o.context());
    assert!(o.alerts.is_empty(), "{}", o.context());
    assert!(p.0.join("node_modules/better-sqlite3/build/Release/better_sqlite3.node").exists(), "{}", o.context());
    let shells = o.events.iter().filter(|e| e["kind"] == "exec" && e["held"] == true).count();
    assert!(shells > 10, "make's recipe shells were not held and judged ({shells})\n{}", o.context());
}

#[test]
fn pip_sdists_with_different_build_backends_build_clean_under_home() {
    if !root_or_skip() {
        return;
    }
    let p = project("pip", &home().join(".cache"));
    let (_shims, path) = shims();
    run_ok(
        Command::new("python3").args(["-m", "venv", "venv"]).current_dir(&p.0).env("PATH", &path),
        "python3 -m venv",
    );
    let reqs = std::fs::read_to_string(p.0.join("requirements.txt")).unwrap();
    let names: Vec<&str> = reqs
        .lines()
        .filter_map(|l| l.split('#').next())
        .filter_map(|l| l.trim().split("==").next())
        .filter(|n| !n.is_empty())
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    let no_binary = names.join(",");
    let o = watch(
        "pip",
        &p.0,
        &path,
        &[("PIP_DISABLE_PIP_VERSION_CHECK", "1")],
        &["venv/bin/pip", "install", "--no-deps", "--no-binary", &no_binary, "-r", "requirements.txt"],
    );
    let builds = o
        .events
        .iter()
        .filter(|e| e["kind"] == "exec" && e["env"]["PIP_BUILD_TRACKER"].is_string())
        .filter_map(|e| e["cwd"].as_str())
        .filter(|c| c.contains("pip-install-"))
        .map(|c| c.rsplit('/').next().unwrap_or("").to_string())
        .collect::<std::collections::BTreeSet<_>>();
    report("pip install (11 sdists)", &o, builds.len());
    assert_eq!(o.code, Some(0), "{}", o.context());
    assert!(o.alerts.is_empty(), "{}", o.context());
    let out = Command::new(p.0.join("venv/bin/pip")).args(["list", "--format=freeze"]).output().unwrap();
    let list = String::from_utf8_lossy(&out.stdout).to_lowercase();
    for n in &names {
        assert!(list.contains(&format!("{}==", n.to_lowercase().replace('_', "-"))), "{n} not installed: {list}");
    }
}

#[test]
fn cargo_crates_with_build_scripts_build_clean_under_tmp() {
    if !root_or_skip() {
        return;
    }
    let p = project("cargo", &std::env::temp_dir());
    let (_shims, path) = shims();
    // Resolve and download first (the documented flow: cargo's default registry hosts are
    // known from its cache), then build under the watch.
    run_ok(
        Command::new("cargo").args(["generate-lockfile"]).current_dir(&p.0).env("PATH", &path),
        "cargo generate-lockfile",
    );
    run_ok(Command::new("cargo").args(["fetch", "--locked"]).current_dir(&p.0).env("PATH", &path), "cargo fetch");
    let o = watch("cargo", &p.0, &path, &[], &["cargo", "build", "--locked"]);
    let scripts = o.scripts("cargo");
    report("cargo build (crates with build scripts)", &o, scripts.len());
    assert_eq!(o.code, Some(0), "{}", o.context());
    assert!(o.alerts.is_empty(), "{}", o.context());
    for want in ["libc", "serde", "proc-macro2", "ring", "zstd-sys", "openssl-sys", "libsqlite3-sys", "anyhow"] {
        assert!(scripts.contains(want), "{want}'s build script did not run: {scripts:?}");
    }
    assert!(scripts.len() >= 10, "{scripts:?}");
    let out = Command::new(p.0.join("target/debug/watcher-corpus-cargo")).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("sqlite"), "the binary does not run");
}

/// `pm/bin/<name>` (scripts/install-prereqs.sh installs pnpm, yarn classic and uv there).
fn pm_tool(name: &str) -> PathBuf {
    let p = watcher_tests::lab::tools_dir().join("pm/bin").join(name);
    assert!(p.exists(), "{} is missing: run scripts/install-prereqs.sh", p.display());
    p
}

/// The same 24 packages through pnpm and yarn classic, each from its own default registry
/// configuration (`registries: [npm]` covers every JavaScript package manager's), with the
/// project under /tmp. pnpm 10 runs no dependency's build script unless the project lists it
/// (`onlyBuiltDependencies`): the project lists them all, as a project that needs them does.
#[test]
fn the_npm_corpus_installs_clean_through_pnpm_and_yarn() {
    if !root_or_skip() {
        return;
    }
    let (_shims, path) = shims();
    let skip =
        [("PUPPETEER_SKIP_DOWNLOAD", "1"), ("CYPRESS_INSTALL_BINARY", "0"), ("ELECTRON_SKIP_BINARY_DOWNLOAD", "1")];
    for manager in ["pnpm", "yarn"] {
        let p = project_as("npm", manager, &std::env::temp_dir());
        let _ = std::fs::remove_file(p.0.join("package-lock.json"));
        let tool = pm_tool(manager);
        let path = format!("{}:{path}", tool.parent().unwrap().display());
        let argv: Vec<String> = match manager {
            "pnpm" => {
                let pkg: Value =
                    serde_json::from_str(&std::fs::read_to_string(p.0.join("package.json")).unwrap()).unwrap();
                let mut names: Vec<String> = pkg["dependencies"].as_object().unwrap().keys().cloned().collect();
                names.push("cpu-features".into());
                let list: String = names.iter().map(|n| format!("  - \"{n}\"\n")).collect();
                std::fs::write(p.0.join("pnpm-workspace.yaml"), format!("onlyBuiltDependencies:\n{list}")).unwrap();
                vec![
                    tool.display().to_string(),
                    "install".into(),
                    "--no-frozen-lockfile".into(),
                    // Scripts really run, also when an earlier run cached their results.
                    "--config.side-effects-cache=false".into(),
                    "--reporter=append-only".into(),
                ]
            }
            _ => vec![tool.display().to_string(), "install".into(), "--non-interactive".into(), "--no-progress".into()],
        };
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let o = watch("npm", &p.0, &path, &skip, &argv);
        let scripts = o.scripts("npm");
        report(&format!("{manager} install (24 packages with install scripts)"), &o, scripts.len());
        assert_eq!(o.code, Some(0), "{manager}: {}", o.context());
        assert!(o.alerts.is_empty(), "{manager}: {}", o.context());
        assert!(
            scripts.len() >= 15,
            "{manager}: only {} install scripts ran: {scripts:?}\n{}",
            scripts.len(),
            o.context()
        );
        for want in ["esbuild", "core-js", "es5-ext", "protobufjs"] {
            assert!(scripts.contains(want), "{manager}: {want}'s install script did not run: {scripts:?}");
        }
        assert!(p.0.join("own-postinstall-ran").exists(), "{manager}: {}", o.context());
    }
}

/// The sdists through uv (`uv pip install --no-binary`), under the pip policy, with uv's
/// default index from its own configuration.
#[test]
fn pip_sdists_build_clean_through_uv() {
    if !root_or_skip() {
        return;
    }
    let p = project_as("pip", "uv", &home().join(".cache"));
    let (_shims, path) = shims();
    let uv = pm_tool("uv");
    run_ok(Command::new(&uv).args(["venv", "venv"]).current_dir(&p.0).env("PATH", &path), "uv venv");
    let reqs = std::fs::read_to_string(p.0.join("requirements.txt")).unwrap();
    let names: Vec<&str> = reqs
        .lines()
        .filter_map(|l| l.split('#').next())
        .filter_map(|l| l.trim().split("==").next())
        .filter(|n| !n.is_empty())
        .collect();
    let uv_s = uv.display().to_string();
    let venv_python = p.0.join("venv/bin/python").display().to_string();
    let cache = p.0.join("uv-cache").display().to_string();
    let o = watch(
        "pip",
        &p.0,
        &path,
        // A fresh cache: every sdist is really built under the watch.
        &[("UV_CACHE_DIR", cache.as_str())],
        &[
            uv_s.as_str(),
            "pip",
            "install",
            "--python",
            venv_python.as_str(),
            "--no-deps",
            "--no-binary",
            ":all:",
            "-r",
            "requirements.txt",
        ],
    );
    report("uv pip install (11 sdists)", &o, names.len());
    assert_eq!(o.code, Some(0), "{}", o.context());
    assert!(o.alerts.is_empty(), "{}", o.context());
    let out = Command::new(&uv).args(["pip", "list", "--python", venv_python.as_str()]).output().unwrap();
    let list = String::from_utf8_lossy(&out.stdout).to_lowercase();
    for n in &names {
        assert!(list.contains(&n.to_lowercase().replace('_', "-")), "{n} not installed: {list}");
    }
}
