//! The file sensor: an install script that opens a credential store, reads another process's
//! environment or memory, or writes a protected path is flagged in audit mode and killed in the
//! kernel in enforce mode, before it reads a byte; the package manager's own reads and a normal
//! build's writes raise nothing. Every run uses a temporary HOME and project named with the
//! test's pid; nothing touches the network.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;
use watcher_tests::{netprobe_bin, read_jsonl, root_or_skip, watcher_bin};

const PKG: &str = "npm:evil-pkg@6.6.6 (postinstall)";
/// Exit code of `watcher run` in enforce mode when the policy was violated.
const VIOLATION: i32 = 77;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new(name: &str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix(&format!("watcher-files-{}-{name}-", std::process::id()))
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        std::fs::create_dir_all(dir.path().join("proj")).unwrap();
        Env { dir }
    }
    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }
    fn proj(&self) -> PathBuf {
        self.dir.path().join("proj")
    }
    fn write(&self, path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

struct Step {
    code: Option<i32>,
    out: String,
    err: String,
    events: Vec<Value>,
    log: PathBuf,
    policy: PathBuf,
}

fn policy(mode: &str, files: &str) -> String {
    format!("version: 1\npipeline: files\nmode: {mode}\nfiles:\n{files}")
}

/// `sh -c script` under watcher in the project directory with HOME set to the temporary home;
/// `install_script`: the whole script runs as evil-pkg's postinstall.
fn run(env: &Env, mode: &str, files: &str, script: &str, install_script: bool) -> Step {
    let p = env.dir.path().join(format!("p-{mode}.yaml"));
    std::fs::write(&p, policy(mode, files)).unwrap();
    let log = env.dir.path().join(format!("e-{mode}.jsonl"));
    let mut cmd = Command::new(watcher_bin());
    cmd.args(["run", "--policy"]).arg(&p).arg("--log").arg(&log).args(["--", "sh", "-c", script]);
    cmd.current_dir(env.proj()).env("HOME", env.home());
    if install_script {
        cmd.env("npm_lifecycle_event", "postinstall")
            .env("npm_package_name", "evil-pkg")
            .env("npm_package_version", "6.6.6");
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    Step {
        code: out.status.code(),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
        events: read_jsonl(&log),
        log,
        policy: p,
    }
}

/// The Python interpreter itself (a version manager's shim is a shell script, which enforce mode
/// kills when an install script starts it).
fn python() -> String {
    let out = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn alerts<'a>(events: &'a [Value], rule: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == "alert" && e["rule"] == rule).collect()
}

fn alert_for<'a>(s: &'a Step, rule: &str, needle: &str) -> &'a Value {
    let a = alerts(&s.events, rule);
    a.iter().find(|a| a["message"].as_str().unwrap().contains(needle)).copied().unwrap_or_else(|| {
        panic!("no {rule} alert naming {needle}; alerts: {a:#?}\nstderr:\n{}", s.err);
    })
}

/// Every shipped credential store (a file inside each directory one), opened by `cat`, by
/// Python and by Node.
#[test]
fn every_credential_store_is_flagged_in_audit_and_killed_before_a_read_in_enforce() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new("cred");
    let mut paths = Vec::new();
    for (i, c) in [
        ".npmrc",
        ".yarnrc.yml",
        ".pypirc",
        ".config/pip/",
        ".cargo/credentials",
        ".cargo/credentials.toml",
        ".aws/",
        ".config/gcloud/",
        ".azure/",
        ".kube/config",
        ".docker/config.json",
        ".ssh/",
        ".git-credentials",
        ".config/gh/",
        ".netrc",
        "actions-runner/.credentials",
    ]
    .iter()
    .enumerate()
    {
        let p = if c.ends_with('/') { env.home().join(c).join("stored") } else { env.home().join(c) };
        // npm's and yarn's configuration is a credential store when it holds a credential.
        let text = match *c {
            ".npmrc" => format!("_auth=marker-{i}\n"),
            ".yarnrc.yml" => format!("npmAuthToken: \"marker-{i}\"\n"),
            _ => format!("marker-{i}\n"),
        };
        env.write(&p, &text);
        paths.push(p);
    }
    let py = python();
    let mut script = String::new();
    for (i, p) in paths.iter().enumerate() {
        match i % 3 {
            0 => script.push_str(&format!("cat '{}'; ", p.display())),
            1 => script.push_str(&format!("{py} -c 'import sys; print(open(sys.argv[1]).read())' '{}'; ", p.display())),
            _ => script.push_str(&format!(
                "node -e 'process.stdout.write(require(\"fs\").readFileSync(process.argv[1]))' '{}'; ",
                p.display()
            )),
        }
    }
    script.push_str("echo finished");
    for mode in ["audit", "enforce"] {
        let s = run(&env, mode, "", &script, true);
        for (i, p) in paths.iter().enumerate() {
            let a = alert_for(&s, "credential-access", &p.display().to_string());
            assert_eq!(a["package"], PKG, "{mode}: {p:?}");
            assert_eq!(a["severity"], "critical");
            let f = s.events.iter().find(|e| e["kind"] == "file" && e["path"] == p.display().to_string()).unwrap();
            assert_eq!(f["class"], "credential");
            let marker = format!("marker-{i}");
            if mode == "audit" {
                assert_eq!(a["action"], "flag", "{p:?}");
                assert!(s.out.contains(&marker), "audit: {p:?} was not read: {}", s.out);
            } else {
                assert_eq!(a["action"], "kill", "{p:?}");
                assert_eq!(f["killed"], true);
                assert!(!s.out.contains(&marker), "enforce: {p:?} was read before the kill: {}", s.out);
            }
        }
        assert!(s.out.contains("finished"), "{mode}: {}", s.err);
        assert_eq!(s.code, Some(if mode == "audit" { 0 } else { VIOLATION }), "{mode}: {}", s.err);
    }
}

/// /proc/PID/environ, /proc/PID/mem, process_vm_readv and ptrace of a process outside the
/// script's tree (one outside watcher, one of the same step that is not in the script) are
/// credential access; the script's own environment is not.
#[test]
fn other_processes_environment_and_memory_are_credential_access() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new("proc");
    let mut outside = Command::new("sleep").arg("60").spawn().unwrap();
    let op = outside.id();
    // The step's first shell is not an install script; its `sleep` is in the job but outside
    // the script the inner shell starts.
    let py = python();
    let inner = format!(
        "cat /proc/self/environ >/dev/null; cat /proc/$$/environ >/dev/null; \
         cat /proc/{op}/environ >/dev/null; cat /proc/$S/environ >/dev/null; \
         {py} -c 'open(\"/proc/{op}/mem\",\"rb\")' ; \
         {py} -c 'import ctypes,sys; l=ctypes.CDLL(None,use_errno=True); b=ctypes.create_string_buffer(8); \
         iov=(ctypes.c_void_p*2)(ctypes.addressof(b),8); r=(ctypes.c_void_p*2)(0x400000,8); \
         l.process_vm_readv(int(sys.argv[1]),iov,1,r,1,0)' $S; \
         {py} -c 'import ctypes,sys; l=ctypes.CDLL(None); l.ptrace(16,int(sys.argv[1]),0,0)' $S; \
         echo finished"
    );
    let script = format!(
        "sleep 30 & S=$!; export S; env npm_lifecycle_event=postinstall npm_package_name=evil-pkg \
         npm_package_version=6.6.6 sh -c '{}'; kill $S",
        inner.replace('\'', "'\\''")
    );
    for mode in ["audit", "enforce"] {
        let s = run(&env, mode, "", &script, false);
        let a = alerts(&s.events, "credential-access");
        let inner_sleep = s
            .events
            .iter()
            .find(|e| e["kind"] == "exec" && e["argv"] == serde_json::json!(["sleep", "30"]))
            .map(|e| e["pid"].as_u64().unwrap())
            .unwrap();
        for (what, target) in [("environ", op as u64), ("environ", inner_sleep), ("mem", op as u64)] {
            let f = s
                .events
                .iter()
                .find(|e| e["kind"] == "file" && e["what"] == what && e["target"] == target)
                .unwrap_or_else(|| panic!("{mode}: no {what} event for {target}: {a:#?}"));
            assert_eq!(f["killed"] == true, mode == "enforce", "{mode} {what} {target}");
        }
        for what in ["vm_readv", "ptrace"] {
            let f = s
                .events
                .iter()
                .find(|e| e["kind"] == "file" && e["what"] == what && e["target"] == inner_sleep)
                .unwrap_or_else(|| panic!("{mode}: no {what} event: {a:#?}\n{}", s.err));
            assert_eq!(f["killed"] == true, mode == "enforce", "{mode} {what}");
        }
        // Its own environment (self, or its own pid) is not credential access.
        assert_eq!(a.len(), 5, "{mode}: {a:#?}");
        assert!(a.iter().all(|x| x["package"] == PKG), "{a:#?}");
        assert!(s.out.contains("finished"), "{mode}: {}", s.err);
    }
    let _ = outside.kill();
    let _ = outside.wait();
}

/// Writes to protected paths: flagged in audit; in enforce mode the paths marked to kill are
/// killed at open (the written bytes never land), the others are flagged. Reads of them are
/// nothing.
#[test]
fn writes_to_protected_paths_are_tamper_and_the_marked_ones_are_killed() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new("tamper");
    let (h, p) = (env.home(), env.proj());
    let killed = [
        p.join(".github/workflows/x.yml"),
        p.join(".git/hooks/pre-commit"),
        p.join(".git/config"),
        h.join(".bashrc"),
        h.join(".profile"),
    ];
    let flagged = [p.join("package-lock.json"), h.join(".npm/_cacache/index"), h.join(".cargo/bin/cargo-evil")];
    let mut script = String::new();
    for f in killed.iter().chain(flagged.iter()) {
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        script.push_str(&format!("cat '{}' >/dev/null 2>&1; (printf planted >> '{}'); ", f.display(), f.display()));
    }
    script.push_str("echo finished");
    for mode in ["audit", "enforce"] {
        for f in killed.iter().chain(flagged.iter()) {
            let _ = std::fs::remove_file(f);
        }
        let s = run(&env, mode, "", &script, true);
        for f in killed.iter().chain(flagged.iter()) {
            let a = alert_for(&s, "file-tamper", &f.display().to_string());
            assert_eq!(a["package"], PKG);
            let content = std::fs::read_to_string(f).unwrap_or_default();
            let kill = mode == "enforce" && killed.contains(f);
            assert_eq!(a["action"], if kill { "kill" } else { "flag" }, "{mode} {f:?}");
            assert_eq!(content.contains("planted"), !kill, "{mode} {f:?}: {content:?}");
        }
        // One alert per path: the reads before each write raised nothing.
        assert_eq!(alerts(&s.events, "file-tamper").len(), killed.len() + flagged.len(), "{mode}");
        assert!(s.out.contains("finished"), "{mode}: {}", s.err);
    }
}

/// The policy adds a credential store and excludes a default one; replay with the same policy
/// gives the live alerts, with a narrower one drops what it excludes; a bad path is one
/// located error.
#[test]
fn the_policy_extends_and_narrows_the_lists_and_replay_gives_the_same_verdicts() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new("policy");
    let token = env.home().join(".config/acme/token");
    env.write(&token, "t\n");
    env.write(&env.home().join(".netrc"), "n\n");
    env.write(&env.home().join(".npmrc"), "_authToken=r\n");
    let files = "  credentials: [\"~/.config/acme/token\"]\n  allow: [\"~/.netrc\"]\n";
    let script = "cat ~/.config/acme/token ~/.netrc ~/.npmrc >/dev/null";
    let s = run(&env, "audit", files, script, true);
    alert_for(&s, "credential-access", ".config/acme/token");
    alert_for(&s, "credential-access", ".npmrc");
    let live: Vec<Value> = alerts(&s.events, "credential-access").into_iter().cloned().collect();
    assert_eq!(live.len(), 2, "{live:#?}");
    assert!(!s.events.iter().any(|e| e["kind"] == "file" && e["path"].as_str().unwrap().ends_with(".netrc")));

    let replay = |policy: &Path| -> Vec<Value> {
        let out = Command::new(watcher_bin())
            .args(["replay", "--format", "json", "--policy"])
            .arg(policy)
            .arg(&s.log)
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        v["logs"][0]["alerts"].as_array().unwrap().clone()
    };
    let again = replay(&s.policy);
    let again: Vec<&Value> = again.iter().filter(|a| a["rule"] == "credential-access").collect();
    assert_eq!(again.len(), 2);
    for (a, b) in again.iter().zip(live.iter()) {
        for k in ["rule", "action", "severity", "pid", "package", "message"] {
            assert_eq!(a[k], b[k], "{k}");
        }
    }
    let narrower = env.dir.path().join("narrower.yaml");
    std::fs::write(&narrower, policy("audit", "  allow: [\"~/.npmrc\", \"~/.config/acme/\"]\n")).unwrap();
    assert!(replay(&narrower).iter().all(|a| a["rule"] != "credential-access"));

    let bad = env.dir.path().join("bad.yaml");
    std::fs::write(&bad, policy("audit", "  allow: [\"relative/path\"]\n")).unwrap();
    let out = Command::new(watcher_bin()).args(["run", "--policy"]).arg(&bad).args(["--", "true"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("bad.yaml:5") && err.contains("start it with"), "{err}");
}

/// `npm publish` from an install script is a critical alert (it fails at once here: there is
/// nothing to publish, so nothing is sent anywhere).
#[test]
fn publishing_from_an_install_script_is_critical() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new("publish");
    let s = run(&env, "audit", "", "npm publish ./nothing-here >/dev/null 2>&1; true", true);
    let a = alerts(&s.events, "publish-from-install-script");
    assert_eq!(a.len(), 1, "{a:#?}\n{}", s.err);
    assert_eq!(a[0]["severity"], "critical");
    assert_eq!(a[0]["package"], PKG);
    // The same command outside an install script is the user's own publish.
    let s = run(&env, "audit", "", "npm publish ./nothing-here >/dev/null 2>&1; true", false);
    assert!(alerts(&s.events, "publish-from-install-script").is_empty());
}

/// npm reading its own ~/.npmrc, an install script writing its own build output (node-gyp's
/// build/) and a cargo build script writing OUT_DIR raise nothing.
#[test]
fn the_package_managers_own_reads_and_normal_build_writes_raise_nothing() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new("quiet");
    let (h, p) = (env.home(), env.proj());
    env.write(&h.join(".npmrc"), "fund=false\naudit=false\nupdate-notifier=false\n");
    // npm: a dependency packed to a tarball, whose postinstall writes build/ in its own dir.
    let dep = env.dir.path().join("dep");
    env.write(
        &dep.join("package.json"),
        r#"{"name":"quiet-dep","version":"1.0.0","scripts":{"postinstall":"node build.js"}}"#,
    );
    env.write(
        &dep.join("build.js"),
        "const fs=require('fs');fs.mkdirSync('build/Release',{recursive:true});\
         fs.writeFileSync('build/Release/addon.node','x');fs.writeFileSync(require('os').tmpdir()+'/quiet-dep-'+process.pid,'x');\n",
    );
    let pack = Command::new("npm").arg("pack").arg(&dep).current_dir(env.dir.path()).env("HOME", &h).output().unwrap();
    assert!(pack.status.success(), "{}", String::from_utf8_lossy(&pack.stderr));
    env.write(
        &p.join("package.json"),
        &format!(
            r#"{{"name":"quiet-app","version":"1.0.0","dependencies":{{"quiet-dep":"file:{}"}}}}"#,
            env.dir.path().join("quiet-dep-1.0.0.tgz").display()
        ),
    );
    // cargo: a crate whose build script writes OUT_DIR.
    let krate = p.join("crate");
    env.write(&krate.join("Cargo.toml"), "[package]\nname = \"quiet\"\nversion = \"0.1.0\"\nedition = \"2021\"\n");
    env.write(
        &krate.join("build.rs"),
        "fn main() { let o = std::env::var(\"OUT_DIR\").unwrap(); std::fs::write(format!(\"{o}/gen.rs\"), \"pub const X: u8 = 1;\").unwrap(); }\n",
    );
    env.write(
        &krate.join("src/main.rs"),
        "include!(concat!(env!(\"OUT_DIR\"), \"/gen.rs\"));\nfn main() { println!(\"{X}\"); }\n",
    );
    let rustup = std::env::var("RUSTUP_HOME").unwrap_or_else(|_| "/root/.rustup".into());
    let cargo_home = std::env::var("CARGO_HOME").unwrap_or_else(|_| "/root/.cargo".into());
    let script = format!(
        "npm install --offline --no-audit --no-fund >/dev/null && \
         RUSTUP_HOME={rustup} CARGO_HOME={cargo_home} cargo build --offline --quiet --manifest-path crate/Cargo.toml && echo built"
    );
    let s = run(&env, "audit", "", &script, false);
    assert!(s.out.contains("built"), "{}\n{}", s.out, s.err);
    assert!(p.join("node_modules/quiet-dep/build/Release/addon.node").exists());
    // The install scripts were recognised as such (so the sensor was judging them).
    assert!(
        s.events.iter().any(|e| e["kind"] == "exec" && e["env"]["npm_lifecycle_event"] == "postinstall"),
        "npm's postinstall was not seen"
    );
    let noise: Vec<&Value> = s.events.iter().filter(|e| e["kind"] == "alert" || e["kind"] == "file").collect();
    assert!(noise.is_empty(), "{noise:#?}");
}

/// Tools an install script runs read npm's and yarn's configuration for their settings
/// (cypress under pnpm reads ~/.npmrc for its proxy): a configuration without a credential
/// in it (a `${NPM_TOKEN}` reference is none) is not a credential store; with one, it is.
#[test]
fn a_package_manager_configuration_without_a_credential_is_read_freely() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new("npmrc");
    env.write(&env.home().join(".npmrc"), "fund=false\n//r.invalid/:_authToken=${NPM_TOKEN}\n");
    env.write(&env.home().join(".yarnrc.yml"), "enableTelemetry: false\n");
    let s = run(&env, "enforce", "", "cat ~/.npmrc ~/.yarnrc.yml; echo read-ok", true);
    assert_eq!(s.code, Some(0), "{}", s.err);
    assert!(s.out.contains("read-ok") && s.out.contains("fund=false"), "{}", s.out);
    assert!(alerts(&s.events, "credential-access").is_empty(), "{:#?}", s.events);
    // The same file with the token itself in it: killed before the read.
    env.write(&env.home().join(".npmrc"), "fund=false\n//r.invalid/:_authToken=npm_literal\n");
    let s = run(&env, "enforce", "", "cat ~/.npmrc; echo read-ok", true);
    assert_eq!(s.code, Some(77), "{}", s.err);
    assert!(!s.out.contains("npm_literal"), "{}", s.out);
    alert_for(&s, "credential-access", ".npmrc");
}

/// Per-package lists (`packages[].files`): a path one package may read is read by it freely,
/// and is still flagged for every other package (reported, not killed: the kernel cannot tell
/// packages apart at open entry; enforce mode fails the step); a path added for one package
/// is judged for that package alone.
#[test]
fn per_package_lists_narrow_and_extend_for_one_package() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new("pkg");
    let hosts = env.home().join(".config/gh/hosts.yml");
    let other = env.home().join(".config/gh/config.yml");
    let key = env.home().join(".acme/key");
    env.write(&hosts, "hosts-marker\n");
    env.write(&other, "other-marker\n");
    env.write(&key, "key-marker\n");
    let files = "  allow: []\npackages:\n  - name: gh-helper\n    files:\n      allow: [\"~/.config/gh/hosts.yml\"]\n\
                 \x20 - name: evil-pkg\n    files:\n      credentials: [\"~/.acme/key\"]\n";
    let as_pkg = |name: &str, inner: &str| {
        format!(
            "env npm_lifecycle_event=postinstall npm_package_name={name} npm_package_version=1.0.0 sh -c '{}'; ",
            inner.replace('\'', "'\\''")
        )
    };
    let script = format!(
        "{}{}{}echo finished",
        as_pkg("gh-helper", &format!("cat {} {}; echo gh-read:", hosts.display(), key.display())),
        as_pkg("evil-pkg", &format!("cat {}; cat {}", hosts.display(), key.display())),
        as_pkg("gh-helper", &format!("cat {}", other.display())),
    );
    for mode in ["audit", "enforce"] {
        let s = run(&env, mode, files, &script, false);
        let cred = alerts(&s.events, "credential-access");
        let of = |pkg: &str, path: &Path| {
            cred.iter()
                .find(|a| {
                    a["package"] == format!("npm:{pkg}@1.0.0 (postinstall)")
                        && a["message"].as_str().unwrap().contains(&path.display().to_string())
                })
                .copied()
        };
        // gh-helper: hosts.yml is its own to read; the key is evil-pkg's addition only.
        assert!(of("gh-helper", &hosts).is_none(), "{mode}: {cred:#?}");
        assert!(of("gh-helper", &key).is_none(), "{mode}: {cred:#?}");
        assert!(s.out.contains("hosts-marker") && s.out.contains("gh-read:"), "{mode}: {}\n{}", s.out, s.err);
        // evil-pkg: hosts.yml is flagged (not killed: the kernel does not kill a path some
        // package may read), the key (its addition) too.
        let a = of("evil-pkg", &hosts).unwrap_or_else(|| panic!("{mode}: {cred:#?}\n{}", s.err));
        assert_eq!(a["action"], "flag", "{mode}");
        let k = of("evil-pkg", &key).unwrap_or_else(|| panic!("{mode}: {cred:#?}"));
        assert_eq!(k["action"], "flag", "{mode}");
        // The rest of gh's directory stays a killed credential store for gh-helper too.
        let o = of("gh-helper", &other).unwrap_or_else(|| panic!("{mode}: {cred:#?}"));
        assert_eq!(o["action"], if mode == "enforce" { "kill" } else { "flag" }, "{mode}");
        assert_eq!(s.out.contains("other-marker"), mode == "audit", "{mode}: {}", s.out);
        assert_eq!(cred.len(), 3, "{mode}: {cred:#?}");
        assert_eq!(s.code, Some(if mode == "audit" { 0 } else { VIOLATION }), "{mode}: {}", s.err);
        assert!(s.out.contains("finished"), "{mode}: {}", s.err);
    }
}

/// io_uring (README, "File sensor", not covered on this kernel): an install script that opens
/// and reads a credential store through io_uring makes no open(2) call, so the kernel neither
/// reports nor kills it, while the same script's plain open of it is killed in enforce mode.
/// This pins what README says; when it fails, io_uring opens are seen: update README.
#[test]
fn io_uring_opens_are_not_seen_as_readme_says() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new("uring");
    let npmrc = env.home().join(".npmrc");
    env.write(&npmrc, "_authToken=uring-marker\n");
    let script = format!(
        "{} uring-read '{}'; cat '{}'; echo finished",
        netprobe_bin().display(),
        npmrc.display(),
        npmrc.display()
    );
    let s = run(&env, "enforce", "", &script, true);
    assert!(
        s.out.contains(&format!("uring-read {}: _authToken=uring-marker", npmrc.display())),
        "{}\n{}",
        s.out,
        s.err
    );
    assert_eq!(s.out.matches("uring-marker").count(), 1, "cat was not killed: {}", s.out);
    let files: Vec<&Value> = s.events.iter().filter(|e| e["kind"] == "file").collect();
    assert_eq!(files.len(), 1, "only the plain open is seen: {files:#?}");
    assert_eq!(files[0]["killed"], true);
    let a = alert_for(&s, "credential-access", &npmrc.display().to_string());
    assert_eq!(a["action"], "kill");
    assert!(s.out.contains("finished"), "{}", s.err);
}
