//! Daemon-backed steps (`watcher run` without root through a daemon whose configuration
//! allows steps) and standalone `run --user` / the sudo caller.
//!
//! Each test starts its own daemon (socket, log dir and job variable carry this process's
//! pid) and kills it in teardown, whatever happens. The unprivileged caller is `nobody`
//! (setpriv). All traffic goes to loopback listeners of the test.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use serde_json::Value;
use watcher_tests::{Listener, TempDir, netprobe_bin, read_jsonl, root_or_skip, wait_until, watcher_bin};

const NOBODY: u32 = 65534;

struct Daemon {
    child: Option<Child>,
    stderr: PathBuf,
    logs: PathBuf,
    steps: PathBuf,
    status: PathBuf,
    dir: TempDir,
}

impl Daemon {
    /// A daemon with steps allowed (`steps: true`) or not.
    fn start(steps: bool) -> Daemon {
        let dir = TempDir::new("watcher-steps");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let public = dir.join("pub");
        std::fs::create_dir(&public).unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let (logs, steps_sock, status) = (dir.join("logs"), dir.join("steps/steps.sock"), dir.join("run/status.sock"));
        let cfg = dir.join("daemon.yaml");
        let mut text = format!(
            "version: 1\nsocket: {}\nlog_dir: {}\njob_end_grace: 1s\njobs:\n  id_env: [WSTEPS_JOB_{}]\n",
            status.display(),
            logs.display(),
            std::process::id()
        );
        if steps {
            text.push_str(&format!("steps:\n  allow: true\n  socket: {}\n", steps_sock.display()));
        }
        std::fs::write(&cfg, text).unwrap();
        let stderr = dir.join("daemon.stderr");
        let child = Command::new(watcher_bin())
            .args(["daemon", "--config"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let d = Daemon { child: Some(child), stderr, logs, steps: steps_sock, status, dir };
        assert!(
            wait_until(Duration::from_secs(60), || d.log().contains("watcher daemon started")),
            "daemon did not start: {}",
            d.log()
        );
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn public(&self) -> PathBuf {
        self.dir.join("pub")
    }

    /// `watcher ARGS` as nobody, through this daemon's step socket.
    fn as_nobody(&self, args: &[&str]) -> Output {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
            .arg(watcher_bin())
            .args(args)
            .env("WATCHER_SOCKET", &self.steps)
            .current_dir(self.public())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The daemon's own log of the step job whose client printed `out`'s stderr.
    fn job_log(&self, out: &Output) -> PathBuf {
        let err = String::from_utf8_lossy(&out.stderr);
        let line =
            err.lines().find(|l| l.contains("the daemon's log: ")).unwrap_or_else(|| panic!("no job line: {err}"));
        let p = line.split("the daemon's log: ").nth(1).unwrap().trim_end_matches(')');
        let p = PathBuf::from(p);
        assert!(p.starts_with(&self.logs), "{}", p.display());
        p
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: our own child: SIGTERM (it detaches everything), then SIGKILL if needed.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            for _ in 0..100 {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p
}

fn code_and_err(o: &Output) -> (Option<i32>, String) {
    (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// (rule, action) of every alert of a log.
fn alerts(log: &Path) -> Vec<(String, String)> {
    read_jsonl(log)
        .into_iter()
        .filter(|e| e["kind"] == "alert")
        .map(|a| (a["rule"].as_str().unwrap_or("").to_string(), a["action"].as_str().unwrap_or("").to_string()))
        .collect()
}

fn report_facts(path: &Path) -> Value {
    let r: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut alerts: Vec<String> = r["alerts"]
        .as_array()
        .map(|a| a.iter().map(|a| format!("{} {}", a["rule"], a["action"])).collect())
        .unwrap_or_default();
    alerts.sort();
    serde_json::json!({
        "verdict": r["verdict"], "exit_code": r["exit_code"], "watcher_exit_code": r["watcher_exit_code"],
        "alerts": alerts, "lost": r["lost"], "counts": r["counts"],
    })
}

fn standalone(args: &[&str], cwd: &Path) -> Output {
    Command::new(watcher_bin()).args(args).current_dir(cwd).stdin(Stdio::null()).output().unwrap()
}

#[test]
fn a_step_as_nobody_gives_the_same_verdicts_log_report_and_exit_codes_as_standalone() {
    if !root_or_skip() {
        return;
    }
    let d = Daemon::start(true);
    let pubdir = d.public();
    let denied = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let policy = write(&pubdir, "p.yaml", "version: 1\npipeline: t\nmode: enforce\negress:\n  loopback: false\n");
    let probe = netprobe_bin().display().to_string();
    let target = denied.addr().to_string();
    let p = policy.display().to_string();
    // Enforce: a denied connection fails the step with 77, in both modes.
    let mut facts = Vec::new();
    for (who, log, report) in [("root", "a.jsonl", "a.json"), ("nobody", "b.jsonl", "b.json")] {
        let (log, report) = (pubdir.join(log), pubdir.join(report));
        let args = [
            "run",
            "--policy",
            &p,
            "--log",
            log.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
            "--",
            &probe,
            "tcp",
            &target,
        ];
        let out = if who == "root" { standalone(&args, &pubdir) } else { d.as_nobody(&args) };
        let (code, err) = code_and_err(&out);
        assert_eq!(code, Some(77), "{who}: {err}\n{}", d.log());
        assert!(err.contains("egress-denied"), "{who}: the live line: {err}");
        assert!(err.contains("enforce mode: exiting 77"), "{who}: {err}");
        let a = alerts(&log);
        assert!(a.contains(&("egress-denied".into(), "deny".into())), "{who}: {a:?}");
        if who == "nobody" {
            // The client's files are the caller's; its log is the daemon's own, event for event.
            assert_eq!(std::fs::metadata(&log).unwrap().uid(), NOBODY);
            assert_eq!(std::fs::metadata(&report).unwrap().uid(), NOBODY);
            let own = d.job_log(&out);
            assert_eq!(std::fs::read_to_string(&own).unwrap(), std::fs::read_to_string(&log).unwrap());
            let start = &read_jsonl(&own)[0];
            assert_eq!(start["job"]["variables"]["uid"], "65534", "{start}");
            // Replay of the daemon's log gives the same verdict.
            let r = Command::new(watcher_bin()).args(["replay", "--format", "json"]).arg(&own).output().unwrap();
            assert_eq!(r.status.code(), Some(77), "{}", String::from_utf8_lossy(&r.stderr));
        }
        facts.push((a, report_facts(&report)));
    }
    assert_eq!(facts[0], facts[1], "standalone and daemon-backed verdicts differ");
    assert_eq!(denied.connections(), 0, "the kernel denied the connection in both modes");

    // No policy: the command's own code, its files its user's; a missing command is 127.
    let out = d.as_nobody(&["run", "--", "sh", "-c", "touch made-by-step; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", code_and_err(&out).1);
    assert_eq!(std::fs::metadata(pubdir.join("made-by-step")).unwrap().uid(), NOBODY);
    let out = d.as_nobody(&["run", "--", "/nonexistent/command"]);
    assert_eq!(out.status.code(), Some(127), "{}", code_and_err(&out).1);
    let out = standalone(&["run", "--", "/nonexistent/command"], &pubdir);
    assert_eq!(out.status.code(), Some(127));
    // --user is the standalone run's; a step always runs as its caller.
    let out = d.as_nobody(&["run", "--user", "root", "--", "true"]);
    let (code, err) = code_and_err(&out);
    assert_eq!(code, Some(125), "{err}");
    assert!(err.contains("--user is for standalone"), "{err}");
}

#[test]
fn a_nested_step_cannot_widen_its_jobs_policy() {
    if !root_or_skip() {
        return;
    }
    let d = Daemon::start(true);
    let pubdir = d.public();
    let a = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let b = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let pol = |port: u16| {
        format!(
            "version: 1\npipeline: t\nmode: enforce\negress:\n  loopback: false\n  allow:\n    - ip: 127.0.0.1\n      ports: [{port}]\n"
        )
    };
    let outer = write(&pubdir, "outer.yaml", &pol(a.addr().port()));
    // The inner policy allows only B, which the enclosing job does not allow.
    let inner = write(&pubdir, "inner.yaml", &pol(b.addr().port()));
    let probe = netprobe_bin().display().to_string();
    let script = format!(
        "{probe} tcp {a}; {w} run --policy {inner} --log inner.jsonl -- {probe} tcp {a} tcp {b}; echo $? > inner.code",
        a = a.addr(),
        b = b.addr(),
        w = watcher_bin().display(),
        inner = inner.display()
    );
    let out =
        d.as_nobody(&["run", "--policy", outer.to_str().unwrap(), "--log", "outer.jsonl", "--", "sh", "-c", &script]);
    let (code, err) = code_and_err(&out);
    assert_eq!(a.connections(), 1, "the enclosing job reaches A; the nested step does not (its policy lacks A)\n{err}");
    assert_eq!(b.connections(), 0, "the nested step's policy allows B, the enclosing job's does not\n{err}");
    assert_eq!(std::fs::read_to_string(pubdir.join("inner.code")).unwrap().trim(), "77", "{err}");
    assert!(err.contains("nested in job"), "{err}");
    // The enclosing job saw what the nested step did (its own log and verdicts are complete).
    assert_eq!(code, Some(77), "{err}\n{}", d.log());
    let outer_log = read_jsonl(pubdir.join("outer.jsonl"));
    let b_port = b.addr().port();
    assert!(
        outer_log.iter().any(|e| e["kind"] == "connect" && e["dport"] == b_port),
        "the nested step's connect to B is in the enclosing job's log"
    );
    let inner_log = read_jsonl(pubdir.join("inner.jsonl"));
    assert!(inner_log[0]["job"]["variables"]["nested_in"].is_string(), "{}", inner_log[0]);
}

/// A process (forked, so the test itself is never made a job) that connects to `socket`.
/// `send_before_exit`: it writes `request` itself and waits for `hold` to close; otherwise it
/// exits at once and the parent writes the request. Returns (pid, the parent's stream).
fn raw_client(
    socket: &Path,
    request: &str,
    send_before_exit: bool,
) -> (i32, std::os::unix::net::UnixStream, Option<std::fs::File>) {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    let sock = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(sock >= 0);
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(socket.as_os_str().as_encoded_bytes()) {
        *d = *s as libc::c_char;
    }
    let mut line = request.as_bytes().to_vec();
    line.push(b'\n');
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // The child says when it is connected (reading an unconnected socket is EINVAL).
    let mut ack = [0; 2];
    assert_eq!(unsafe { libc::pipe2(ack.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the child only makes async-signal-safe calls, then _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if libc::connect(sock, (&raw const addr).cast(), len) != 0 {
                libc::_exit(1);
            }
            libc::write(ack[1], b"c".as_ptr().cast(), 1);
            if send_before_exit {
                libc::write(sock, line.as_ptr().cast(), line.len());
                let mut b = 0u8;
                libc::close(fds[1]);
                libc::read(fds[0], (&raw mut b).cast(), 1);
            }
            libc::_exit(0);
        }
    }
    unsafe {
        libc::close(fds[0]);
        libc::close(ack[1]);
        let mut c = 0u8;
        assert_eq!(libc::read(ack[0], (&raw mut c).cast(), 1), 1, "the raw client could not connect");
        libc::close(ack[0]);
    }
    let hold = unsafe { std::fs::File::from_raw_fd(fds[1]) };
    let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(sock) };
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    if !send_before_exit {
        let mut st = 0;
        unsafe { libc::waitpid(pid, &mut st, 0) };
        (&stream).write_all(&line).unwrap();
        let _ = stream.as_raw_fd();
        return (pid, stream, None);
    }
    (pid, stream, Some(hold))
}

#[track_caller]
fn read_reply(r: &mut BufReader<&std::os::unix::net::UnixStream>) -> Value {
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    match serde_json::from_str(&l) {
        Ok(v) => v,
        Err(e) => panic!("{e}: {l:?}"),
    }
}

#[test]
fn each_refusal_of_the_step_socket() {
    if !root_or_skip() {
        return;
    }
    let d = Daemon::start(true);
    let open = r#"{"op":"open","version":1,"command":["held"]}"#;
    // No request ends, pauses or changes a job, nor names another process.
    for (req, says) in [
        (r#"{"op":"end","version":1,"command":[]}"#, "unknown op \"end\""),
        (r#"{"op":"pause","version":1,"command":[]}"#, "unknown op \"pause\""),
        (r#"{"op":"open","version":1,"command":[],"pid":1}"#, "unknown field `pid`"),
        (r#"{"op":"open","version":1,"command":[],"job":"step-0-1"}"#, "unknown field `job`"),
        ("not json", "bad request"),
    ] {
        let (pid, s, hold) = raw_client(&d.steps, req, true);
        let mut r = BufReader::new(&s);
        let v = read_reply(&mut r);
        assert_eq!(v["msg"], "refused", "{req}: {v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{req}: {v}");
        drop(hold);
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }
    // The connecting process is gone before its request is handled: a reused pid can never be
    // made a job.
    let (_, s, _) = raw_client(&d.steps, open, false);
    let v = read_reply(&mut BufReader::new(&s));
    assert_eq!(v["msg"], "refused", "{v}");
    assert!(v["error"].as_str().unwrap().contains("is gone"), "{v}");
    // An open step cannot be changed once started: every further request is refused, and the
    // job keeps its (lack of) policy and ends with its process.
    let (pid, s, hold) = raw_client(&d.steps, open, true);
    let mut r = BufReader::new(&s);
    let ready = read_reply(&mut r);
    assert_eq!(ready["msg"], "ready", "{ready}");
    let start = read_reply(&mut r);
    assert_eq!(start["event"]["kind"], "start", "{start}");
    (&s).write_all(b"{\"op\":\"open\",\"version\":1,\"command\":[],\"policy\":{\"source\":\"x\",\"yaml\":\"version: 1\\npipeline: x\\nmode: audit\\n\"}}\n").unwrap();
    let v = read_reply(&mut r);
    assert_eq!(v["msg"], "refused", "{v}");
    assert!(v["error"].as_str().unwrap().contains("cannot be changed"), "{v}");
    drop(hold); // the held process exits (it never exec'd)
    let mut done = Value::Null;
    for _ in 0..50 {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        assert!(!l.is_empty(), "the step's connection closed before done\n{}", d.log());
        let v: Value = serde_json::from_str(&l).unwrap();
        if v["msg"] == "done" {
            done = v;
            break;
        }
    }
    assert_eq!(done["msg"], "done", "{}", d.log());
    assert!(!d.log().contains("stream cut off"), "a client that reads is never cut off\n{}", d.log());
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    let log = std::fs::read_dir(&d.logs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("\"held\"")));
    let log = log.expect("the daemon's own log of the step");
    assert!(read_jsonl(&log)[0]["policy"].is_null(), "the job kept no policy");
    // The status socket is root's: a caller cannot read, let alone touch, other jobs there.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(watcher_bin())
        .args(["status", "--socket"])
        .arg(&d.status)
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the watcher daemon"));
}

#[test]
fn the_step_socket_refuses_when_steps_are_not_allowed() {
    if !root_or_skip() {
        return;
    }
    let d = Daemon::start(false);
    assert!(!d.steps.exists(), "no step socket without steps: allow: true");
    let out = d.as_nobody(&["run", "--", "true"]);
    let (code, err) = code_and_err(&out);
    assert_eq!(code, Some(125), "{err}");
    assert!(err.contains("cannot reach a watcher daemon that allows steps"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn standalone_run_runs_the_command_as_the_invoking_user() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("watcher-steps-user");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let run = |name: &str, extra: &[&str], env: &[(&str, &str)]| {
        let log = dir.join(format!("{name}.jsonl"));
        let mut cmd = Command::new(watcher_bin());
        cmd.arg("run").args(extra).arg("--log").arg(&log);
        cmd.args(["--", "sh", "-c", &format!("id -u > {name}.uid; id -G > {name}.groups; touch {name}.file")]);
        // Not quiet (CI=true makes it so): the start message is checked.
        cmd.current_dir(dir.path())
            .env_remove("SUDO_UID")
            .env_remove("SUDO_GID")
            .env_remove("WATCHER_SOCKET")
            .env_remove("CI");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let uid = |f: &str| std::fs::metadata(dir.join(f)).unwrap().uid();
        let text = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap().trim().to_string();
        (
            uid(&format!("{name}.file")),
            text(&format!("{name}.uid")),
            uid(&format!("{name}.jsonl")),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            text(&format!("{name}.groups")),
        )
    };
    let (file, id, log, err, groups) = run("user", &["--user", "nobody"], &[]);
    assert_eq!((file, id.as_str(), log), (NOBODY, "65534", NOBODY), "{err}");
    assert_eq!(groups, "65534", "nobody's groups only, not root's");
    // Started through sudo: the invoking user by default (sudo is not needed to set these).
    let (file, id, log, err, _) = run("sudo", &[], &[("SUDO_UID", "65534"), ("SUDO_GID", "65534")]);
    assert_eq!((file, id.as_str(), log), (NOBODY, "65534", NOBODY), "{err}");
    assert!(err.contains("running the command as uid 65534"), "{err}");
    // --user root keeps root under sudo; without sudo nothing changes.
    let (file, id, _, _, _) = run("keep", &["--user", "root"], &[("SUDO_UID", "65534")]);
    assert_eq!((file, id.as_str()), (0, "0"));
    let (file, id, _, _, _) = run("plain", &[], &[]);
    assert_eq!((file, id.as_str()), (0, "0"));
    let out =
        Command::new(watcher_bin()).args(["run", "--user", "no-such-user-wsteps", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such user"));
    // Through real sudo when this machine has it.
    if Path::new("/usr/bin/sudo").exists() {
        let out = Command::new("sudo").args(["-n", "-u", "nobody", "true"]).output().unwrap();
        eprintln!("sudo present (exit {:?}); the SUDO_UID path above is what sudo sets", out.status.code());
    }
}

// ============================================================================ the attack lab

/// One npm install in the lab's build host: standalone as root, or daemon-backed as nobody.
/// Returns (exit code, stderr, the client's log).
fn lab_npm(
    lab: &watcher_tests::lab::Lab,
    d: &Daemon,
    secrets: &[(&str, String)],
    deps: Value,
    daemon_backed: bool,
) -> (Option<i32>, String, Vec<Value>) {
    use watcher_tests::lab::Host;
    let work = TempDir::new("watcher-steps-lab");
    let (project, home) = (work.join("project"), work.join("home"));
    std::fs::create_dir_all(&project).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    let names: Vec<String> = deps.as_object().unwrap().keys().cloned().collect();
    let allow: serde_json::Map<String, Value> = names.iter().map(|n| (n.clone(), Value::Bool(true))).collect();
    let pkg = serde_json::json!({"name": "lab-build", "version": "1.0.0", "private": true,
        "dependencies": deps, "allowScripts": allow});
    std::fs::write(project.join("package.json"), pkg.to_string()).unwrap();
    std::fs::write(project.join(".npmrc"), format!("registry={}\n", lab.npm_url(Host::Internal))).unwrap();
    std::fs::write(home.join("global-npmrc"), "").unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = work.join("project/events.jsonl");
    if daemon_backed {
        for p in [work.path(), project.as_path(), home.as_path()] {
            std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        for f in ["package.json", ".npmrc"] {
            std::os::unix::fs::chown(project.join(f), Some(NOBODY), Some(NOBODY)).unwrap();
        }
        std::os::unix::fs::chown(home.join("global-npmrc"), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/npm.yaml");
    let mut cmd = if daemon_backed {
        let mut c = lab.build_cmd("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]).arg(watcher_bin());
        c
    } else {
        lab.build_cmd(watcher_bin())
    };
    cmd.args(["run", "--mode", "enforce", "--policy"])
        .arg(&policy)
        .arg("--log")
        .arg(&log)
        .args(["--", "npm", "install", "--no-audit", "--no-fund"])
        .current_dir(&project)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("HOME", &home)
        .env("LANG", "C.UTF-8")
        .env("CI", "true")
        .env("npm_config_cache", home.join("npm-cache"))
        .env("npm_config_globalconfig", home.join("global-npmrc"))
        .env("npm_config_update_notifier", "false")
        .env("LAB_TRACE_DIR", work.join("project"))
        .stdin(Stdio::null());
    if daemon_backed {
        cmd.env("WATCHER_SOCKET", &d.steps);
    }
    for (k, v) in secrets {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let events = if log.exists() { read_jsonl(&log) } else { Vec::new() };
    if daemon_backed {
        assert_eq!(std::fs::metadata(&log).unwrap().uid(), NOBODY, "{err}");
        if project.join("node_modules").exists() {
            assert_eq!(std::fs::metadata(project.join("node_modules")).unwrap().uid(), NOBODY);
        }
        let own = read_jsonl(d.job_log(&out));
        assert_eq!(own, events, "the client's log is the daemon's own");
    }
    (out.status.code(), err, events)
}

fn lab_alerts(events: &[Value]) -> std::collections::BTreeSet<String> {
    events
        .iter()
        .filter(|e| e["kind"] == "alert")
        .map(|a| format!("{} {} {} {}", a["rule"], a["action"], a["package"], a["variable"]))
        .collect()
}

#[test]
fn lab_attack_and_clean_npm_installs_give_the_same_verdicts_daemon_backed_as_standalone() {
    if !root_or_skip() {
        return;
    }
    use watcher_tests::lab::{ATTACKER_DOMAIN, Host, Lab};
    let lab = Lab::start().expect("the attack lab");
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/lab/npm");
    for (host, pkg) in [
        (Host::Internal, "lab-clean-lib-1.0.0"),
        (Host::Public, "js-formatter-util-1.2.1"),
        (Host::Public, "js-formatter-util-1.2.2"),
    ] {
        lab.npm_publish(host, &fx.join(pkg)).unwrap();
    }
    let d = Daemon::start(true);
    let n = std::process::id();
    let secrets = vec![
        ("AWS_ACCESS_KEY_ID", format!("AKIAWSTEPS{n:010}")),
        ("AWS_SECRET_ACCESS_KEY", format!("wsteps-secret-{n}-{}", n.wrapping_mul(7919))),
    ];
    // The hijacked patch release (DNS exfiltration of AWS_*), enforce mode.
    let mut attack = Vec::new();
    for daemon_backed in [false, true] {
        lab.clear_records();
        let (code, err, events) =
            lab_npm(&lab, &d, &secrets, serde_json::json!({"js-formatter-util": "^1.2.1"}), daemon_backed);
        assert_eq!(code, Some(77), "daemon-backed {daemon_backed}: {err}\n{}", d.log());
        let rec = lab.attacker();
        assert!(rec.dns.is_empty() && rec.http.is_empty(), "the attacker got something: {rec:#?}");
        assert!(!lab.resolver_queries().iter().any(|q| q.name.ends_with(ATTACKER_DOMAIN)));
        let a = lab_alerts(&events);
        assert!(a.iter().any(|a| a.contains("secret-exfil")), "{a:#?}\n{err}");
        for (_, v) in &secrets {
            assert!(!err.contains(v.as_str()) && !events.iter().any(|e| e.to_string().contains(v.as_str())));
        }
        attack.push(a);
    }
    assert_eq!(attack[0], attack[1], "the attack's verdicts differ between standalone and daemon-backed");
    // A clean project: exit 0, no alerts, in both modes.
    for daemon_backed in [false, true] {
        let (code, err, events) =
            lab_npm(&lab, &d, &secrets, serde_json::json!({"lab-clean-lib": "^1.0.0"}), daemon_backed);
        assert_eq!(code, Some(0), "daemon-backed {daemon_backed}: {err}");
        assert!(lab_alerts(&events).is_empty(), "{:#?}", lab_alerts(&events));
    }
}
