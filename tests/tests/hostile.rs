//! Hostile workspaces and hostile input (issue 13, items 2-7): files root writes are never
//! redirected by a planted link nor reused from another user; replay reads only what it is
//! given; incomplete logs are not clean; every input is bounded in time and memory; the
//! daemon withstands a metrics flood and forged job variables; non-UTF-8 arguments pass.
use std::{
    io::Write as _,
    os::unix::{ffi::OsStrExt as _, fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use watcher_tests::{TempDir, read_jsonl, root_or_skip, wait_until, watcher_bin};

const NOBODY: u32 = 65534;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/reports").join(name)
}

/// A command run as the unprivileged user `nobody`.
fn as_nobody(program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", program]);
    c
}

fn ok(c: &mut Command) {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{c:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A workspace directory owned by `nobody` (a build user's checkout), inside a root-only dir.
fn workspace(dir: &TempDir) -> PathBuf {
    let ws = dir.join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::os::unix::fs::chown(&ws, Some(NOBODY), Some(NOBODY)).unwrap();
    ws
}

fn watcher(args: &[&std::ffi::OsStr]) -> (Option<i32>, Vec<u8>, String) {
    let out = Command::new(watcher_bin()).args(args).stdin(Stdio::null()).output().unwrap();
    (out.status.code(), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn links_planted_by_the_build_user_are_never_followed_and_their_files_never_reused() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("watcher-hostile-links");
    // Root's private file, somewhere the build user cannot write.
    let private = dir.join("root-only/authorized_keys");
    std::fs::create_dir(dir.join("root-only")).unwrap();
    std::fs::write(&private, "ssh-ed25519 AAAA root\n").unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ws = workspace(&dir);
    // The build user plants links at the log and report paths, and a link to root's directory.
    ok(as_nobody("ln").arg("-s").arg(&private).arg(ws.join("events.jsonl")));
    ok(as_nobody("ln").arg("-s").arg(&private).arg(ws.join("report.md")));
    ok(as_nobody("ln").arg("-s").arg(dir.join("root-only")).arg(ws.join("out")));
    let cases: [(&str, PathBuf, &str); 3] = [
        ("--log", ws.join("events.jsonl"), "it is a symbolic link"),
        ("--report", ws.join("report.md"), "it is a symbolic link"),
        ("--log", ws.join("out/authorized_keys"), "is a symbolic link owned by uid 65534"),
    ];
    for (flag, path, why) in cases {
        let (code, _, err) =
            watcher(&["run".as_ref(), flag.as_ref(), path.as_os_str(), "--".as_ref(), "true".as_ref()]);
        assert_eq!(code, Some(125), "{flag} {}: {err}", path.display());
        assert!(err.contains(why), "{flag} {}: {err}", path.display());
        assert_eq!(std::fs::read_to_string(&private).unwrap(), "ssh-ed25519 AAAA root\n", "root's file was written");
        assert_eq!(mode(&private), 0o600);
    }
    // A log the build user created beforehand (so it could edit the evidence afterwards):
    // world-writable, or merely its own, is refused and left as it was.
    let ww = ws.join("ww.jsonl");
    ok(as_nobody("sh").arg("-c").arg(format!("umask 0; echo planted > {}", ww.display())));
    assert_eq!(mode(&ww), 0o666);
    let owned = ws.join("owned.jsonl");
    ok(as_nobody("sh").arg("-c").arg(format!("umask 022; echo planted > {}", owned.display())));
    for (p, why) in [(&ww, "others can write it"), (&owned, "belongs to uid 65534")] {
        let (code, _, err) =
            watcher(&["run".as_ref(), "--log".as_ref(), p.as_os_str(), "--".as_ref(), "true".as_ref()]);
        assert_eq!(code, Some(125), "{err}");
        assert!(err.contains(why), "{err}");
        assert_eq!(std::fs::read_to_string(p).unwrap(), "planted\n");
    }
    // A file of the build user's at the report path is refused the same way.
    let (code, _, err) =
        watcher(&["run".as_ref(), "--report".as_ref(), owned.as_os_str(), "--".as_ref(), "true".as_ref()]);
    assert_eq!(code, Some(125), "{err}");
    // What watcher creates is root's and private, in the build user's directory too.
    let log = ws.join("new.jsonl");
    let report = ws.join("new.json");
    let (code, _, err) = watcher(&[
        "run".as_ref(),
        "--log".as_ref(),
        log.as_os_str(),
        "--report".as_ref(),
        report.as_os_str(),
        "--".as_ref(),
        "true".as_ref(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    for p in [&log, &report] {
        let m = std::fs::metadata(p).unwrap();
        assert_eq!((mode(p), std::os::unix::fs::MetadataExt::uid(&m)), (0o600, 0), "{}", p.display());
    }
    // An own, private file is reused (truncated) and made private.
    let again = dir.join("again.jsonl");
    std::fs::write(&again, "x".repeat(100_000)).unwrap();
    std::fs::set_permissions(&again, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) =
        watcher(&["run".as_ref(), "--log".as_ref(), again.as_os_str(), "--".as_ref(), "true".as_ref()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(mode(&again), 0o600);
    assert_eq!(read_jsonl(&again)[0]["kind"], "start");
}

#[test]
fn a_log_that_is_also_the_policy_or_a_report_is_an_error() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("watcher-hostile-same");
    let pol = dir.join("p.yaml");
    let text = "version: 1\npipeline: same\n";
    std::fs::write(&pol, text).unwrap();
    let d = dir.path().display();
    for args in [
        vec!["--policy".to_string(), format!("{d}/p.yaml"), "--log".into(), format!("{d}/./p.yaml")],
        vec!["--policy".to_string(), format!("{d}/p.yaml"), "--report".into(), format!("{d}/p.yaml")],
        vec!["--log".to_string(), format!("{d}/x.json"), "--report".into(), format!("{d}/sub/../x.json")],
        vec!["--report".to_string(), format!("{d}/r.md"), "--report".into(), format!("{d}/r.md")],
    ] {
        let mut a: Vec<&std::ffi::OsStr> = vec!["run".as_ref()];
        a.extend(args.iter().map(std::ffi::OsStr::new));
        a.extend([std::ffi::OsStr::new("--"), std::ffi::OsStr::new("true")]);
        let (code, _, err) = watcher(&a);
        assert_eq!(code, Some(125), "{args:?}: {err}");
        assert!(err.contains("is the same file as the"), "{args:?}: {err}");
        assert_eq!(std::fs::read_to_string(&pol).unwrap(), text);
    }
}

#[test]
fn log_to_stdout_gzip_logs_repeated_reports_and_extensions_in_any_case() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("watcher-hostile-cli");
    // `--log -`: JSON Lines on standard output (after the command's own output), no file `-`.
    let out = Command::new(watcher_bin())
        .current_dir(dir.path())
        .args(["run", "-q", "--log", "-", "--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.first().unwrap()["kind"], "start");
    assert_eq!(lines.last().unwrap()["kind"], "end");
    assert!(!dir.join("-").exists());
    // `.gz`: gzip that replay reads; reports repeated, `.JSON` and `.Md` by extension.
    let log = dir.join("events.jsonl.gz");
    let (rj, rm, rt) = (dir.join("r.JSON"), dir.join("r.Md"), dir.join("r.txt"));
    let pol = dir.join("p.yaml");
    std::fs::write(&pol, "version: 1\npipeline: cli\n").unwrap();
    let (code, _, err) = watcher(&[
        "run".as_ref(),
        "-q".as_ref(),
        "--policy".as_ref(),
        pol.as_os_str(),
        "--log".as_ref(),
        log.as_os_str(),
        "--report".as_ref(),
        rj.as_os_str(),
        "--report".as_ref(),
        rm.as_os_str(),
        "--report".as_ref(),
        rt.as_os_str(),
        "--".as_ref(),
        "true".as_ref(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let raw = std::fs::read(&log).unwrap();
    assert_eq!(&raw[..2], &[0x1f, 0x8b], "not gzip");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&raw[..]), &mut text).unwrap();
    assert!(text.lines().last().unwrap().contains("\"kind\":\"end\""), "{text}");
    let (code, _, err) = watcher(&["replay".as_ref(), log.as_os_str()]);
    assert_eq!(code, Some(0), "{err}");
    let j: Value = serde_json::from_slice(&std::fs::read(&rj).unwrap()).expect("r.JSON is JSON");
    assert_eq!(j["verdict"], "clean");
    assert!(std::fs::read_to_string(&rm).unwrap().contains("| "), "r.Md is Markdown");
    assert!(std::fs::read_to_string(&rt).unwrap().contains("verdict: clean"));
}

#[test]
fn non_utf8_arguments_reach_the_command_unchanged_and_are_escaped_in_the_log() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("watcher-hostile-argv");
    let log = dir.join("argv.jsonl");
    let arg = std::ffi::OsStr::from_bytes(b"caf\xc3\xa9-\xff\xfe\x1b[2J");
    let (code, stdout, err) = watcher(&[
        "run".as_ref(),
        "-q".as_ref(),
        "--log".as_ref(),
        log.as_os_str(),
        "--".as_ref(),
        "printf".as_ref(),
        "%s".as_ref(),
        arg,
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(stdout, arg.as_bytes(), "the command got other bytes");
    let events = read_jsonl(&log);
    assert_eq!(events[0]["command"], serde_json::json!(["printf", "%s", "café-\\xff\\xfe\u{1b}[2J"]));
    // The live lines escape what is left of it (no raw ESC on the terminal).
    assert!(!err.contains('\u{1b}'), "{err:?}");
}

#[test]
fn replay_opens_no_path_named_in_a_log_and_judges_with_the_recorded_policy() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("watcher-hostile-replay");
    // A private key, and a FIFO that would hang anyone who opened it for reading.
    let key = dir.join("id_ed25519");
    std::fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAE\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let fifo = dir.join("fifo.yaml");
    assert_eq!(
        unsafe { libc::mkfifo(std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap().as_ptr(), 0o600) },
        0
    );
    let base = std::fs::read_to_string(fixture("clean.jsonl")).unwrap();
    let (first, rest) = base.split_once('\n').unwrap();
    for target in [&key, &fifo, &PathBuf::from("/dev/zero")] {
        let mut start: Value = serde_json::from_str(first).unwrap();
        start["policy"] = serde_json::json!({"source": target, "pipeline": "x", "mode": "audit"});
        let log = dir.join("named.jsonl");
        std::fs::write(&log, format!("{start}\n{rest}")).unwrap();
        let t = Instant::now();
        let mut child = Command::new(watcher_bin())
            .arg("replay")
            .arg(&log)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let done = wait_until(Duration::from_secs(10), || child.try_wait().unwrap().is_some());
        if !done {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        assert!(done, "replay hung on {} (it opened the path from the log)", target.display());
        assert!(t.elapsed() < Duration::from_secs(5));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert!(err.contains("does not carry it") && err.contains("--policy FILE"), "{err}");
        assert!(!err.contains("BEGIN OPENSSH") && !err.contains("b3Blbn"), "the key was echoed: {err}");
    }
    // A policy file given by mistake is never echoed either.
    let (code, _, err) =
        watcher(&["replay".as_ref(), "--policy".as_ref(), key.as_os_str(), fixture("clean.jsonl").as_os_str()]);
    assert_eq!(code, Some(125), "{err}");
    assert!(!err.contains("BEGIN OPENSSH") && !err.contains("b3Blbn"), "the key was echoed: {err}");
    // A live log carries its policy: replay judges with it even when the file has changed.
    let pol = dir.join("p.yaml");
    std::fs::write(&pol, "version: 1\npipeline: carried\nexec:\n  deny: [\"sleep\"]\n").unwrap();
    let log = dir.join("live.jsonl");
    let out = Command::new(watcher_bin())
        .args(["run", "-q", "--policy"])
        .arg(&pol)
        .arg("--log")
        .arg(&log)
        .args(["--", "sh", "-c", "sleep 0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(read_jsonl(&log)[0]["policy_yaml"].as_str().unwrap().contains("pipeline: carried"));
    std::fs::write(&pol, "not: a policy\n").unwrap();
    let (code, stdout, err) = watcher(&["replay".as_ref(), "--format".as_ref(), "json".as_ref(), log.as_os_str()]);
    assert_eq!(code, Some(77), "{err}");
    let v: Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(v["logs"][0]["policy"]["pipeline"], "carried");
    assert_eq!(v["logs"][0]["alerts"][0]["rule"], "exec-denied", "{v:#}");
}

fn replay_text(log: &Path) -> (Option<i32>, String, String) {
    let out =
        Command::new(watcher_bin()).args(["replay", "--policy"]).arg(fixture("policy.yaml")).arg(log).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn incomplete_logs_are_not_clean() {
    let dir = TempDir::new("watcher-hostile-incomplete");
    let base = std::fs::read_to_string(fixture("clean.jsonl")).unwrap();
    let lines: Vec<&str> = base.lines().collect();
    assert!(lines.len() > 8 && lines.last().unwrap().contains("\"kind\":\"end\""));
    let (code, out, err) = replay_text(&fixture("clean.jsonl"));
    assert_eq!(code, Some(0), "{out}{err}");
    let with_end = |l: &[&str]| l.join("\n") + "\n";
    let gz = |text: &str| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    };
    let full_gz = gz(&base);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("cut after 8 lines", with_end(&lines[..8]).into_bytes(), "no end record"),
        ("killed mid-line", base.as_bytes()[..base.len() / 2].to_vec(), "cut short at line"),
        ("gzip cut short", full_gz[..full_gz.len() * 2 / 3].to_vec(), "cut short at line"),
        (
            "end.lost without loss records",
            with_end(
                &[&lines[..lines.len() - 1], &[&lines[lines.len() - 1].replace("\"lost\":0", "\"lost\":100")]].concat(),
            )
            .into_bytes(),
            "the end record counts 100 lost events but the log's loss records account for 0",
        ),
        ("schema 2", base.replacen("\"schema\":1", "\"schema\":2", 1).into_bytes(), "schema version 2"),
        ("empty", Vec::new(), "the log is empty"),
    ];
    for (what, bytes, why) in cases {
        let log = dir.join("log");
        std::fs::write(&log, &bytes).unwrap();
        let (code, out, err) = replay_text(&log);
        assert_eq!(code, Some(78), "{what}: {out}{err}");
        assert!(out.contains("verdict: incomplete") && out.contains(why), "{what}: {out}");
        assert!(err.contains(why), "{what}: {err}");
        // And policy suggest learns nothing from it.
        let s = Command::new(watcher_bin()).args(["policy", "suggest"]).arg(&log).output().unwrap();
        let serr = String::from_utf8_lossy(&s.stderr);
        assert_eq!(s.status.code(), Some(78), "{what}: {serr}");
        assert!(s.stdout.is_empty() && serr.contains("incomplete") && serr.contains(why), "{what}: {serr}");
    }
    let s = Command::new(watcher_bin()).args(["policy", "suggest", "/dev/null"]).output().unwrap();
    assert_eq!(s.status.code(), Some(78));
    assert!(s.stdout.is_empty());
}

/// Run `cmd` with stdout and stderr to files; returns (exit code, stdout, stderr, max RSS in
/// KiB, wall time). The peak is measured by GNU time, which forks the command from its own
/// small process (a child spawned from this big test process would inherit its peak).
fn measured(cmd: Command, dir: &TempDir) -> (Option<i32>, String, String, i64, Duration) {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tag = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let (o, e, m) = (dir.join(format!("{tag}.out")), dir.join(format!("{tag}.err")), dir.join(format!("{tag}.rss")));
    let mut c = Command::new("/usr/bin/time");
    c.args(["-f", "%M", "-o"]).arg(&m).arg(cmd.get_program()).args(cmd.get_args());
    c.stdin(Stdio::null()).stdout(std::fs::File::create(&o).unwrap()).stderr(std::fs::File::create(&e).unwrap());
    let t = Instant::now();
    let status = c.status().expect("GNU time (/usr/bin/time, Debian package time) is needed");
    let elapsed = t.elapsed();
    let rss: i64 = std::fs::read_to_string(&m).unwrap().lines().last().unwrap().trim().parse().unwrap();
    let out = String::from_utf8_lossy(&std::fs::read(&o).unwrap()).into_owned();
    let err = String::from_utf8_lossy(&std::fs::read(&e).unwrap()).into_owned();
    (status.code(), out, err, rss, elapsed)
}

#[test]
fn bomb_inputs_are_refused_in_bounded_time_and_memory() {
    let dir = TempDir::new("watcher-hostile-bombs");
    let check = |path: &Path| {
        let mut c = Command::new(watcher_bin());
        c.args(["policy", "check"]).arg(path);
        measured(c, &dir)
    };
    // 200 KB of nested brackets (43 s of CPU before), a 50 MB policy (4 GB), /dev/zero.
    let deep = dir.join("deep.yaml");
    std::fs::write(
        &deep,
        format!("version: 1\npipeline: x\nexec:\n  deny: {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
    )
    .unwrap();
    let big = dir.join("big.yaml");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
        write!(f, "version: 1\npipeline: x\nexec:\n  deny:\n").unwrap();
        let mut i = 0u64;
        while f.get_ref().metadata().unwrap().len() < 50 << 20 {
            for _ in 0..10_000 {
                writeln!(f, "    - /usr/bin/tool-{i}").unwrap();
                i += 1;
            }
            f.flush().unwrap();
        }
    }
    let hosts = dir.join("hosts.yaml");
    std::fs::write(
        &hosts,
        format!(
            "version: 1\npipeline: x\negress:\n  allow:\n{}",
            (0..10_000).map(|i| format!("    - host: \"*.h{i}.example.test\"\n")).collect::<String>()
        ),
    )
    .unwrap();
    let deep_block = dir.join("deep-block.yaml");
    std::fs::write(&deep_block, (0..300).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect::<String>()).unwrap();
    for (p, line, why) in [
        (&deep, ":4:", "nested more than 32 levels deep"),
        (&deep_block, ":33:", "nested more than 32 levels deep"),
        (&big, "", "the policy is larger than 1024 KiB"),
        (&PathBuf::from("/dev/zero"), "", "the policy is larger than 1024 KiB"),
        (&hosts, ":5:", "more than 2048 entries in this list"),
    ] {
        let (code, out, err, rss, t) = check(p);
        assert_eq!(code, Some(1), "{}: {out}{err}", p.display());
        assert!(err.contains(&format!("{}{line}", p.display())) && err.contains(why), "{}: {err}", p.display());
        assert!(!err.contains("NFA"), "{err}");
        assert_eq!(err.lines().count(), 1, "one error: {err}");
        assert!(t < Duration::from_secs(3), "{}: took {t:?}", p.display());
        assert!(rss < 64 << 10, "{}: took {rss} KiB", p.display());
    }
    // The largest policy accepted still loads quickly: a list at its bound (2048 DNS names) and
    // as many allowed hosts as the kernel can enforce (63; `policy check` refuses what `run`
    // would, so one more is refused).
    let near_text = |hosts: usize| {
        format!(
            "version: 1\npipeline: x\negress:\n  allow:\n{}dns:\n  allow:\n{}",
            (0..hosts).map(|i| format!("    - host: \"*.h{i}.example.test\"\n")).collect::<String>(),
            (0..2048).map(|i| format!("    - \"n{i}.example.test\"\n")).collect::<String>()
        )
    };
    let over = dir.join("over.yaml");
    std::fs::write(&over, near_text(64)).unwrap();
    let (code, _, err, _, _) = check(&over);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("at most 63 allowed hosts"), "{err}");
    let near = dir.join("near.yaml");
    std::fs::write(&near, near_text(63)).unwrap();
    let (code, _, err, _, t) = check(&near);
    assert_eq!(code, Some(0), "{err}");
    assert!(t < Duration::from_secs(5), "{t:?}");

    // One 3 GB log line through standard input (2.9 GB of memory before): refused at 4 MiB.
    let first = std::fs::read_to_string(fixture("clean.jsonl")).unwrap().lines().next().unwrap().to_string();
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!(
        "{{ printf '%s\\n' '{first}'; head -c 3000000000 /dev/zero | tr '\\0' a; }} | {} replay --policy {} -",
        watcher_bin().display(),
        fixture("policy.yaml").display()
    ));
    let (code, _, err, _, t) = measured(c, &dir);
    assert_eq!(code, Some(125), "{err}");
    assert!(err.contains("<stdin>:2: cannot read: the line is longer than 4 MiB"), "{err}");
    assert!(t < Duration::from_secs(20), "{t:?}");
}

#[test]
fn a_json_report_over_200k_processes_takes_flat_memory() {
    let dir = TempDir::new("watcher-hostile-procs");
    let base = std::fs::read_to_string(fixture("clean.jsonl")).unwrap();
    let start = base.lines().next().unwrap();
    let log = dir.join("procs.jsonl");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&log).unwrap());
        writeln!(f, "{start}").unwrap();
        let ts = "2026-11-23T22:19:52.000000000Z";
        for i in 0..200_000u32 {
            let pid = 100_000 + i;
            writeln!(f, r#"{{"kind":"fork","ts":"{ts}","pid":{pid},"ppid":99999,"comm":"sh","uid":0}}"#).unwrap();
            writeln!(f, r#"{{"kind":"exec","ts":"{ts}","pid":{pid},"ppid":99999,"comm":"true","uid":0,"filename":"/usr/bin/true","argv":["true","arg{i}"],"cgroup_id":1}}"#).unwrap();
            writeln!(
                f,
                r#"{{"kind":"exit","ts":"{ts}","pid":{pid},"ppid":99999,"comm":"true","uid":0,"exit_code":0}}"#
            )
            .unwrap();
        }
        writeln!(f, r#"{{"kind":"end","ts":"{ts}","exit_code":0,"lost":0}}"#).unwrap();
    }
    let run = |format: &str| {
        let mut c = Command::new(watcher_bin());
        c.args(["replay", "--policy"]).arg(fixture("policy.yaml")).args(["--format", format]).arg(&log);
        let (code, out, err, rss, _) = measured(c, &dir);
        assert_eq!(code, Some(0), "{format}: {err}");
        (out, rss)
    };
    let (text, text_rss) = run("text");
    assert!(text.contains("verdict: clean"), "{}", &text[..text.len().min(2000)]);
    let (json, json_rss) = run("json");
    // Checked without building the document here (this process stays small).
    assert!(json.starts_with("{\n  \"logs\": [") && json.ends_with("]\n}\n"), "{}", &json[..200]);
    assert!(json.matches("\"ppid\": 99999").count() >= 200_000);
    drop(json);
    // Before: 1.1 GB for JSON against 150 MB for text. The report model is the same for
    // every format; JSON must not add a per-process document on top of it.
    eprintln!("max RSS: text {text_rss} KiB, json {json_rss} KiB");
    assert!(json_rss < text_rss + (64 << 10), "json took {json_rss} KiB, text {text_rss} KiB");
    for format in ["markdown", "sarif"] {
        let (_, rss) = run(format);
        assert!(rss < text_rss + (64 << 10), "{format} took {rss} KiB, text {text_rss} KiB");
    }
}

#[test]
fn a_policy_with_a_byte_order_mark_is_accepted() {
    let dir = TempDir::new("watcher-hostile-bom");
    let p = dir.join("bom.yaml");
    std::fs::write(&p, b"\xef\xbb\xbfversion: 1\npipeline: bom\nmode: enforce\n").unwrap();
    let out = Command::new(watcher_bin()).args(["policy", "check"]).arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("pipeline bom, enforce mode"));
}

// ------------------------------------------------------------------------------ daemon

struct Daemon {
    child: Option<std::process::Child>,
    stderr: PathBuf,
}

impl Daemon {
    fn start(config: &Path, dir: &TempDir, nofile: Option<u64>) -> Daemon {
        let stderr = dir.join("daemon.stderr");
        let mut cmd = Command::new(watcher_bin());
        cmd.args(["daemon", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        if let Some(n) = nofile {
            // SAFETY: setrlimit only, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let l = libc::rlimit { rlim_cur: n, rlim_max: n };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().unwrap();
        let d = Daemon { child: Some(child), stderr };
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
        String::from_utf8_lossy(&std::fs::read(&self.stderr).unwrap_or_default()).into_owned()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            if !wait_until(Duration::from_secs(10), || c.try_wait().unwrap().is_some()) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn config(dir: &TempDir, extra: &str) -> PathBuf {
    std::fs::write(dir.join("open.yaml"), "version: 1\npipeline: open\n").unwrap();
    let c = dir.join("daemon.yaml");
    std::fs::write(
        &c,
        format!(
            "version: 1\nsocket: run/watcher.sock\nlog_dir: logs\njob_end_grace: 300ms\n{extra}\
             jobs:\n  id_env: [WDH_RUN_ID]\n  pipeline_env: [WDH_REPO]\n\
             pipelines:\n  - match: \"*\"\n    policy: open.yaml\n"
        ),
    )
    .unwrap();
    c
}

fn job(id: &str, script: &str) -> std::process::Output {
    Command::new("sh")
        .args(["-c", script])
        .env("WDH_RUN_ID", id)
        .env("WDH_REPO", "acme/app")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn a_metrics_flood_does_not_starve_a_daemon_with_a_low_fd_limit() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("watcher-hostile-flood");
    let port = free_port();
    let cfg = config(&dir, &format!("metrics: 127.0.0.1:{port}\n"));
    // Measure what the daemon needs, then give it little more than that.
    let base = {
        let d = Daemon::start(&cfg, &dir, None);
        fd_count(d.pid())
    };
    let limit = base as u64 + 24;
    let d = Daemon::start(&cfg, &dir, Some(limit));
    // A local user opens many connections and never sends a request.
    let flood: Vec<std::net::TcpStream> =
        (0..300).filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok()).collect();
    assert!(flood.len() > limit as usize, "the flood did not get going: {} connections", flood.len());
    std::thread::sleep(Duration::from_millis(500));
    assert!(fd_count(d.pid()) < limit as usize - 4, "the daemon holds {} of {limit} fds", fd_count(d.pid()));
    // A job starts during the flood and is watched, not killed.
    let id = format!("{}77", std::process::id());
    let out = job(&id, "echo flood-job-ran");
    assert_eq!(out.status.code(), Some(0), "{}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "flood-job-ran\n");
    let log = dir.join(format!("logs/acme_app_{id}.jsonl"));
    assert!(wait_until(Duration::from_secs(10), || log.exists()), "no job log: {}", d.log());
    // Connections that never send anything are closed by the daemon (timeout).
    let mut closed = 0;
    for mut s in flood.into_iter().take(8) {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 4096];
        if std::io::Read::read(&mut s, &mut b).is_ok() {
            closed += 1;
        }
    }
    assert_eq!(closed, 8, "held connections were not timed out");
    // Metrics still answer once the flood is gone.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut body);
    assert!(body.contains("watcher_jobs_started_total"), "{body}");
    let log_text = d.log();
    assert!(!log_text.contains("Too many open files"), "{log_text}");
}

#[test]
fn a_forged_job_variable_cannot_forge_daemon_log_lines() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("watcher-hostile-forge");
    let cfg = config(&dir, "");
    let mut d = Daemon::start(&cfg, &dir, None);
    let id = format!("{}88\nwatcher daemon started forged=1\u{1b}[2J", std::process::id());
    let out = job(&id, "true");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(wait_until(Duration::from_secs(20), || d.log().contains("job ended")), "{}", d.log());
    d.stop();
    let raw = std::fs::read(&d.stderr).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains(&format!("{}88\\nwatcher daemon started", std::process::id())), "{text}");
    assert!(!raw.contains(&0x1b), "a raw ESC reached the daemon's log: {text}");
    for line in text.lines() {
        assert!(!line.starts_with("watcher daemon started forged"), "forged line: {text}");
    }
}

#[test]
fn a_bad_log_dir_stops_the_daemon_at_start() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("watcher-hostile-logdir");
    let cfg = config(&dir, "");
    let logs = dir.join("logs");
    let run = || {
        let out =
            Command::new(watcher_bin()).args(["daemon", "--config"]).arg(&cfg).stdin(Stdio::null()).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // A link, a world-writable directory, another user's directory, a read-only one.
    std::fs::create_dir(dir.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(dir.join("elsewhere"), &logs).unwrap();
    let (code, err) = run();
    assert_eq!(code, Some(125), "{err}");
    assert!(err.contains("is a symbolic link"), "{err}");
    std::fs::remove_file(&logs).unwrap();
    std::fs::create_dir(&logs).unwrap();
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, err) = run();
    assert_eq!(code, Some(125), "{err}");
    assert!(err.contains("is writable by others"), "{err}");
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&logs, Some(NOBODY), Some(NOBODY)).unwrap();
    let (code, err) = run();
    assert_eq!(code, Some(125), "{err}");
    assert!(err.contains("belongs to uid 65534"), "{err}");
    std::os::unix::fs::chown(&logs, Some(0), Some(0)).unwrap();
    // Read-only for root too: a read-only bind mount of the directory.
    let ro = Command::new("mount").args(["--bind", "-o", "ro"]).arg(&logs).arg(&logs).status().unwrap();
    if ro.success() {
        let _ = Command::new("mount").args(["-o", "remount,bind,ro"]).arg(&logs).status();
        let (code, err) = run();
        let _ = Command::new("umount").arg(&logs).status();
        assert_eq!(code, Some(125), "{err}");
        assert!(err.contains("is not writable"), "{err}");
    }
}

// ------------------------------------------------------------------------------ drill

fn drill_leftovers(pid: u32) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        let cg = Path::new(root).join(format!("watcher-run-{pid}"));
        if cg.exists() {
            found.push(cg);
        }
    }
    for e in std::fs::read_dir(std::env::temp_dir()).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with(&format!("watcher-drill-{pid}-")) {
            found.push(e.path());
        }
    }
    if Path::new(&format!("/run/netns/watcher-drill-{pid}")).exists() {
        found.push(format!("/run/netns/watcher-drill-{pid}").into());
    }
    found
}

#[test]
fn a_drill_killed_with_sigkill_leaves_nothing_after_the_next_drill() {
    if !root_or_skip() {
        return;
    }
    // No other test may start a watcher (which removes what a dead one left) meanwhile.
    let _window = watcher_tests::hard_kill_window();
    let mut first = Command::new(watcher_bin())
        .arg("drill")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = first.id();
    // Killed while it runs: its temporary directory, namespace or cgroup exist.
    let all_there = wait_until(Duration::from_secs(30), || drill_leftovers(pid).len() >= 2);
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(all_there, "the drill never got going: {:?}", drill_leftovers(pid));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!drill_leftovers(pid).is_empty(), "nothing was left to clean up");
    let out = Command::new(watcher_bin()).arg("drill").stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(drill_leftovers(pid), Vec::<PathBuf>::new(), "the next drill left the killed one's leftovers");
}
