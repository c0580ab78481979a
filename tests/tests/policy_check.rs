//! `watcher policy check` runs exactly the validation `watcher run` does: for every policy under
//! policies/ and tests/fixtures/, both accept it or both refuse it with the same message
//! (e.g. an enforce-mode host glob the kernel cannot match, which the YAML checks alone accept).
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use watcher_tests::{root_or_skip, watcher_bin};

fn policies(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            policies(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml")
            && std::fs::read_to_string(&p).is_ok_and(|t| t.lines().any(|l| l.starts_with("pipeline:")))
        {
            out.push(p);
        }
    }
}

#[test]
fn policy_check_and_run_agree_on_every_policy() {
    if !root_or_skip() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    policies(&root.join("policies"), &mut files);
    policies(&root.join("tests/fixtures"), &mut files);
    assert!(files.len() >= 5, "{files:?}");
    let mut refused = 0;
    for f in &files {
        let check = Command::new(watcher_bin()).args(["policy", "check"]).arg(f).output().unwrap();
        let run = Command::new(watcher_bin())
            .args(["run", "--quiet", "--policy"])
            .arg(f)
            .args(["--", "true"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let (cerr, rerr) = (String::from_utf8_lossy(&check.stderr), String::from_utf8_lossy(&run.stderr));
        let ok = check.status.code() == Some(0);
        assert_eq!(
            ok,
            run.status.code() == Some(0),
            "{}: check {:?} ({cerr}), run {:?} ({rerr})",
            f.display(),
            check.status,
            run.status
        );
        if !ok {
            refused += 1;
            assert_eq!(run.status.code(), Some(125), "{}: {rerr}", f.display());
            let msg = cerr.trim();
            assert!(!msg.is_empty() && rerr.contains(msg), "{}: check said {msg:?}, run said {rerr:?}", f.display());
        }
    }
    // The enforce-mode glob fixture is refused by both.
    assert!(refused >= 1);
}
