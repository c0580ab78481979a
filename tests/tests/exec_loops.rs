//! The exec sensor's loops: argv (read_args), the environment scan (exec_env_scan) and the
//! basename a rule is looked up by (basename_key) run through bpf_loop on this kernel and as
//! bounded loops in the `_bounded` twins an older kernel loads (`WATCHER_BOUNDED_LOOPS=1`
//! forces them). Both must record the same argv and environment and reach the same verdicts:
//! argv at and past MAX_ARGS and an over-long argument, an install-script marker behind 100
//! other variables (several chunks of the bounded scan), a denied program exec'd by absolute,
//! relative and bare name, and a shell started by a cargo build script. Nothing here uses
//! the network.
use std::{
    path::Path,
    process::{Command, Stdio},
};

use serde_json::Value;
use watcher_tests::{Loops, read_jsonl, root_or_skip, watcher_bin};

struct Step {
    code: Option<i32>,
    err: String,
    events: Vec<Value>,
}

impl Step {
    fn execs(&self, filename: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["kind"] == "exec" && e["filename"] == filename).collect()
    }
    fn context(&self) -> String {
        let alerts: Vec<&Value> = self.events.iter().filter(|e| e["kind"] == "alert").collect();
        format!("exit {:?}\nalerts: {alerts:#?}\nstderr:\n{}", self.code, self.err)
    }
}

fn run(loops: Loops, dir: &Path, script: &str) -> Step {
    let policy = dir.join("p.yaml");
    std::fs::write(
        &policy,
        "version: 1\npipeline: loops\nmode: enforce\nexec:\n  deny: [id]\n  install_scripts:\n    shells: deny\n",
    )
    .unwrap();
    let log = dir.join(format!("{loops:?}.jsonl"));
    let out = Command::new(watcher_bin())
        .args(["run", "--policy"])
        .arg(&policy)
        .arg("--log")
        .arg(&log)
        .args(["--", "sh", "-c", script])
        .env(loops.env().0, loops.env().1)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let step = Step {
        code: out.status.code(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
        events: read_jsonl(&log),
    };
    loops.assert_loaded(&step.events, &step.err);
    step
}

fn args(n: usize) -> String {
    (1..=n).map(|i| format!("a{i}")).collect::<Vec<_>>().join(" ")
}

#[test]
fn argv_environment_and_exec_verdicts_are_the_same_with_bpf_loop_and_bounded_loops() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::Builder::new().prefix(&format!("watcher-loops-{}-", std::process::id())).tempdir().unwrap();
    let d = dir.path();
    // A cargo build script (by its path) that starts a shell.
    let build = d.join("target/debug/build/evil-1a2b3c/build-script-build");
    std::fs::create_dir_all(build.parent().unwrap()).unwrap();
    std::fs::copy("/usr/bin/env", &build).unwrap();
    let pad: String = (1..=100).map(|i| format!("PAD{i}=x ")).collect();
    let long = "x".repeat(600);
    let script = format!(
        "/bin/echo {a31} >/dev/null\n\
         /bin/echo {a32} >/dev/null\n\
         /bin/echo {long} >/dev/null\n\
         env -i {pad}npm_lifecycle_event=postinstall npm_package_name=evil-pkg npm_package_version=6.6.6 \
            /bin/sh -c '/bin/sh -c \"touch {d}/ran-install-shell\"; exit 0'\n\
         /usr/bin/id >/dev/null && touch {d}/ran-id-abs\n\
         (cd /usr/bin && ./id >/dev/null) && touch {d}/ran-id-rel\n\
         (cd /usr/bin && python3 -c 'import os; os.execv(\"id\", [\"id\"])' >/dev/null) && touch {d}/ran-id-bare\n\
         {build} /bin/sh -c 'touch {d}/ran-build-shell'\n\
         touch {d}/ran-end\n",
        a31 = args(31),
        a32 = args(32),
        d = d.display(),
        build = build.display(),
    );
    let mut seen = Vec::new();
    for loops in [Loops::BpfLoop, Loops::Bounded] {
        for f in ["ran-install-shell", "ran-id-abs", "ran-id-rel", "ran-id-bare", "ran-build-shell", "ran-end"] {
            let _ = std::fs::remove_file(d.join(f));
        }
        let s = run(loops, d, &script);
        let what = format!("{loops:?}: {}", s.context());
        // Violations in enforce mode: exit 77, and the script itself ran to its end.
        assert_eq!(s.code, Some(77), "{what}");
        assert!(d.join("ran-end").exists(), "{what}");

        // argv: 32 entries fit; a 33rd and a 600-byte argument are cut, visibly.
        let echo = s.execs("/bin/echo");
        assert_eq!(echo.len(), 3, "{what}");
        let argv = |e: &Value| {
            e["argv"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect::<Vec<_>>()
        };
        assert_eq!(argv(echo[0]).len(), 32, "{what}");
        assert_eq!(argv(echo[0])[31], "a31", "{what}");
        assert_ne!(echo[0]["argv_truncated"], true, "{what}");
        assert_eq!(argv(echo[1]).len(), 32, "{what}");
        assert_eq!(echo[1]["argv_truncated"], true, "{what}");
        assert_eq!(echo[2]["argv_truncated"], true, "{what}");
        assert!(argv(echo[2])[1].starts_with("xxxxxxxx"), "{what}");

        // The environment scan found the marker behind 100 variables and captured the package.
        let marked: Vec<&Value> =
            s.execs("/bin/sh").into_iter().filter(|e| e["env"]["npm_lifecycle_event"] == "postinstall").collect();
        assert!(!marked.is_empty(), "{what}");
        assert_eq!(marked[0]["env"]["npm_package_name"], "evil-pkg", "{what}");
        assert!(!d.join("ran-install-shell").exists(), "{what}: the install script's shell ran");

        // The denied program, however it was named, and the build script's shell: killed.
        for f in ["ran-id-abs", "ran-id-rel", "ran-id-bare", "ran-build-shell"] {
            assert!(!d.join(f).exists(), "{f}: {what}");
        }
        let mut rules: Vec<String> = s
            .events
            .iter()
            .filter(|e| e["kind"] == "alert" && e["action"] == "kill")
            .map(|e| e["rule"].as_str().unwrap_or("").to_string())
            .collect();
        rules.sort();
        assert_eq!(
            rules,
            ["exec-denied", "exec-denied", "exec-denied", "shell-from-install-script", "shell-from-install-script"],
            "{what}"
        );
        let filenames: Vec<String> =
            s.events.iter().filter(|e| e["kind"] == "exec").map(|e| e["filename"].to_string()).collect();
        seen.push((argv(echo[0]), argv(echo[1]), filenames.len(), rules));
    }
    assert_eq!(seen[0], seen[1], "bpf_loop and bounded loops saw different things");
}
