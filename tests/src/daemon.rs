//! A `watcher daemon` under test: started with a config file, its stderr in the test's
//! directory, asked through `watcher status`, stopped (SIGTERM, else SIGKILL) when dropped.
//! Tests of one binary run side by side: give each daemon a job variable of its own (a daemon
//! takes every process that carries one of its job variables, whoever started it).
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{TempDir, wait_until, watcher_bin};

pub struct Daemon {
    pub child: Option<Child>,
    pub stderr: PathBuf,
    pub socket: PathBuf,
    /// The job variable the tests' jobs carry (`jobs.id_env` of its config).
    pub var: String,
    /// Where relative paths in its status (job logs) are relative to.
    pub dir: PathBuf,
}

impl Daemon {
    /// Starts `watcher daemon --config CONFIG` (whose `socket:` is `run/watcher.sock` relative
    /// to `dir`) and waits for it to say it started.
    pub fn start(config: &Path, dir: &TempDir, var: &str) -> Daemon {
        let stderr = dir.join("daemon.stderr");
        let child = Command::new(watcher_bin())
            .args(["daemon", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let d = Daemon {
            child: Some(child),
            stderr,
            socket: dir.join("run/watcher.sock"),
            var: var.to_string(),
            dir: dir.path().to_path_buf(),
        };
        assert!(
            wait_until(Duration::from_secs(30), || d.log().contains("watcher daemon started")),
            "daemon did not start: {}",
            d.log()
        );
        d
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Whether the daemon process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn status(&self) -> Value {
        let out =
            Command::new(watcher_bin()).args(["status", "--json", "--socket"]).arg(&self.socket).output().unwrap();
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The status entry of the job `VAR=id` once it has ended (waits up to 30 s).
    pub fn ended(&self, id: &str) -> Value {
        let mut last = Value::Null;
        let want = format!("{}={id}", self.var);
        let find = |st: &Value| st["jobs"].as_array().unwrap().iter().find(|j| j["id"] == want).cloned();
        let ok = wait_until(Duration::from_secs(30), || {
            last = self.status();
            find(&last).is_some_and(|j| j["state"] == "ended")
        });
        assert!(ok, "job {want} did not end: {last:#}\n{}", self.log());
        find(&last).unwrap()
    }

    /// The events of an ended job's log.
    pub fn job_events(&self, job: &Value) -> Vec<Value> {
        let p = job["log"].as_str().unwrap();
        let p = if Path::new(p).is_absolute() { PathBuf::from(p) } else { self.dir.join(p) };
        crate::read_jsonl(p)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            if !wait_until(Duration::from_secs(10), || c.try_wait().is_ok_and(|s| s.is_some())) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}
