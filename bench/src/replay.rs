//! `watcher-bench replay`: how fast `watcher replay` reads and judges big logs, and whether its
//! memory stays flat as logs grow.
//!
//! Generates two logs (a short and a long one) of a plausible build: a process tree that forks,
//! execs and exits (pids recycled as on a real machine), install scripts with npm's
//! environment, DNS queries and answers, connections and first sends. Each measurement runs in
//! a fresh child process so its peak memory (VmHWM) is its own. Figures: events per second and
//! peak memory, for the fast parser (what replay uses) and serde's derive (the reference, the
//! old path), parsing alone and the whole replay (parse + engine + report).
use std::{
    hint::black_box,
    io::{BufWriter, Write as _},
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};
use watcher::{
    event::{Connect, Dns, End, Event, Exec, Exit, Fork, PolicyInfo, Proc, Proto, Send, Start, Ts},
    parse::{generate::Gen, parse_line, parse_reference},
    replay::{Parser, ReplayOptions, for_each_event_with, replay_one_with},
    report::Format,
};

#[derive(clap::Args)]
pub struct Args {
    /// Events in the long log.
    #[arg(long, default_value_t = 3_000_000)]
    events: u64,
    /// Events in the short log (peak memory is compared between the two).
    #[arg(long, default_value_t = 750_000)]
    short: u64,
    /// Skip the (slow) serde reference rows.
    #[arg(long)]
    no_reference: bool,
    /// Write the logs to DIR and keep them (for profiling), instead of a temporary directory.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Internal: measure one case in this process and print it as JSON.
    #[arg(long, hide = true, num_args = 3, value_names = ["LOG", "PARSER", "WHAT"])]
    measure: Option<Vec<String>>,
}

const POLICY: &str = "version: 1
pipeline: bench
mode: audit
egress:
  loopback: true
  allow:
    - host: \"*.bench.test\"
      ports: [443]
dns:
  resolvers: [127.0.0.53]
exec:
  install_scripts:
    shells: allow
";

const PROGRAMS: &[(&str, &str)] = &[
    ("/usr/bin/node", "node"),
    ("/bin/sh", "sh"),
    ("/usr/bin/cc", "cc"),
    ("/usr/lib/gcc/x86_64-linux-gnu/12/cc1", "cc1"),
    ("/usr/bin/ld", "ld"),
    ("/usr/bin/git", "git"),
    ("/usr/bin/python3", "python3"),
    ("/usr/bin/make", "make"),
];

/// Write a plausible log of about `n` events to `path`.
fn generate(path: &Path, policy: &Path, n: u64, seed: u64) -> anyhow::Result<u64> {
    let f = std::fs::File::create(path).with_context(|| format!("{}: cannot write", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, f);
    let mut g = Gen::new(seed);
    let mut ts = 1_795_000_000_000_000_000u64;
    let mut written = 0u64;
    let mut emit = |out: &mut BufWriter<std::fs::File>, e: &Event| -> anyhow::Result<()> {
        serde_json::to_writer(&mut *out, e)?;
        out.write_all(b"\n")?;
        written += 1;
        Ok(())
    };
    let root = 2000u32;
    emit(
        &mut out,
        &Event::Start(Start {
            job: None,
            project: None,
            ts: Ts(ts),
            schema: watcher::event::SCHEMA_VERSION,
            watcher: "bench".into(),
            mode: "run".into(),
            command: vec!["npm".into(), "ci".into()],
            pid: 1999,
            sensors: vec![],
            resolvers: vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53))],
            registries: Default::default(),
            registry_sources: Vec::new(),
            proxy_sources: Vec::new(),
            policy: Some(PolicyInfo {
                source: policy.display().to_string(),
                pipeline: "bench".into(),
                mode: "audit".into(),
            }),
            // Replay judges with the copy the start record carries.
            policy_yaml: Some(std::fs::read_to_string(policy)?),
        }),
    )?;
    let proc = |pid: u32, ppid: u32, comm: &str| Proc { pid, ppid, comm: comm.into(), uid: 1000 };
    emit(
        &mut out,
        &Event::Exec(Exec {
            ts: Ts(ts),
            proc: proc(root, 1999, "npm"),
            filename: "/usr/bin/node".into(),
            argv: vec!["npm".into(), "ci".into()],
            argv_truncated: false,
            argv_redacted: false,
            cgroup_id: 4242,
            env: Default::default(),
            killed: false,
            shell: false,
            cwd: Some("/w".into()),
            held: false,
            script: false,
            facts: None,
        }),
    )?;
    // Live processes: (pid, ppid, comm). Pids are recycled in [2001, 34000).
    let mut live: Vec<(u32, u32, String)> = vec![(root, 1999, "npm".into())];
    let mut next_pid = root + 1;
    let mut count = 2u64;
    while count < n {
        ts += 20_000 + g.below(200_000);
        let t = Ts(ts);
        // Grow the tree while it is small, shrink it when big.
        let grow = live.len() < 8 || (live.len() < 60 && g.chance(50));
        if grow {
            let parent = live[g.below(live.len() as u64) as usize].clone();
            let pid = next_pid;
            next_pid = if next_pid >= 33_999 { root + 1 } else { next_pid + 1 };
            let (file, comm) = PROGRAMS[g.below(PROGRAMS.len() as u64) as usize];
            emit(&mut out, &Event::Fork(Fork { ts: t, proc: proc(pid, parent.0, &parent.2) }))?;
            let pkg = g.below(400);
            let mut env = std::collections::BTreeMap::new();
            if comm == "sh" && g.chance(30) {
                env.insert("npm_lifecycle_event".to_string(), "postinstall".to_string());
                env.insert("npm_package_name".to_string(), format!("pkg-{pkg}"));
                env.insert("npm_package_version".to_string(), "1.0.0".to_string());
            }
            emit(
                &mut out,
                &Event::Exec(Exec {
                    ts: t,
                    proc: proc(pid, parent.0, comm),
                    filename: file.into(),
                    argv: vec![comm.into(), format!("/w/node_modules/pkg-{pkg}/install.js"), "--build".into()],
                    argv_truncated: false,
                    argv_redacted: false,
                    cgroup_id: 4242,
                    env,
                    killed: false,
                    shell: false,
                    cwd: Some(format!("/w/node_modules/pkg-{pkg}")),
                    held: false,
                    script: false,
                    facts: None,
                }),
            )?;
            count += 2;
            live.push((pid, parent.0, comm.into()));
        } else {
            let i = 1 + g.below(live.len() as u64 - 1) as usize;
            let (pid, ppid, comm) = live[i].clone();
            // What it did before exiting: DNS, connections, sends.
            if g.chance(40) {
                let host = g.below(200);
                let ip = IpAddr::V4(Ipv4Addr::new(10, 1, (host / 2) as u8, (host % 2) as u8 + 1));
                emit(
                    &mut out,
                    &Event::Dns(Dns {
                        ts: t,
                        proc: proc(pid, ppid, &comm),
                        qname: format!("cdn-{host}.bench.test"),
                        qtype: "A".into(),
                        server: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53)),
                        server_port: 53,
                        proto: Proto::Udp,
                        id: g.next_u64() as u16,
                        rcode: Some("NOERROR".into()),
                        answers: Some(vec![ip]),
                        cnames: vec![],
                        error: None,
                        payload_len: 40,
                        allowed: true,
                        secrets: vec![],
                    }),
                )?;
                emit(
                    &mut out,
                    &Event::Connect(Connect {
                        ts: t,
                        proc: proc(pid, ppid, &comm),
                        daddr: ip,
                        dport: 443,
                        proto: Proto::Tcp,
                        op: "connect".into(),
                        allowed: true,
                    }),
                )?;
                emit(
                    &mut out,
                    &Event::Send(Send {
                        ts: t,
                        proc: proc(pid, ppid, &comm),
                        daddr: ip,
                        dport: 443,
                        proto: Proto::Tcp,
                        bytes: 517,
                        secrets: vec![],
                        offset: None,
                        target: None,
                        credential_of: vec![],
                    }),
                )?;
                count += 3;
            }
            emit(&mut out, &Event::Exit(Exit { ts: t, proc: proc(pid, ppid, &comm), exit_code: Some(0) }))?;
            count += 1;
            live.swap_remove(i);
        }
    }
    emit(&mut out, &Event::End(End { ts: Ts(ts), exit_code: Some(0), lost: 0 }))?;
    out.flush()?;
    Ok(written)
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Time this thread has spent on a CPU (ns): rates per CPU-second are what one core does,
/// even when other work shares the machine (wall time is printed too).
fn on_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// One measurement in this process: prints `{"events":N,"secs":S,"hwm_kib":K}`.
fn measure(log: &Path, parser: &str, what: &str) -> anyhow::Result<()> {
    let parse: Parser = match parser {
        "fast" => parse_line,
        "serde" => parse_reference,
        _ => bail!("parser is fast or serde"),
    };
    let t = Instant::now();
    let cpu = on_cpu_ns();
    let events = match what {
        "parse" => {
            let mut n = 0u64;
            for_each_event_with(log, parse, |e, _| {
                black_box(&e);
                n += 1;
                Ok(())
            })?;
            n
        }
        "replay" => {
            let opts = ReplayOptions { logs: vec![log.to_path_buf()], policy: None, mode: None, format: Format::Json };
            let r = replay_one_with(log, &opts, parse, |_| {})?;
            black_box(&r.alerts);
            r.report.events
        }
        _ => bail!("what is parse or replay"),
    };
    let secs = t.elapsed().as_secs_f64();
    let cpu_secs = (on_cpu_ns() - cpu) as f64 / 1e9;
    println!(
        "{}",
        serde_json::json!({ "events": events, "secs": secs, "cpu_secs": cpu_secs, "hwm_kib": vm_hwm_kib() })
    );
    Ok(())
}

struct Row {
    what: String,
    parser: String,
    events: u64,
    secs: f64,
    cpu_secs: f64,
    hwm_kib: u64,
}

fn child(log: &Path, parser: &str, what: &str) -> anyhow::Result<Row> {
    let out = Command::new(std::env::current_exe()?)
        .args(["replay", "--measure"])
        .arg(log)
        .args([parser, what])
        .output()
        .context("running the measurement")?;
    if !out.status.success() {
        bail!("measurement failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(Row {
        what: what.into(),
        parser: parser.into(),
        events: v["events"].as_u64().unwrap_or(0),
        secs: v["secs"].as_f64().unwrap_or(0.0),
        cpu_secs: v["cpu_secs"].as_f64().unwrap_or(0.0),
        hwm_kib: v["hwm_kib"].as_u64().unwrap_or(0),
    })
}

/// Removes the generated logs however the benchmark ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn main(a: Args) -> anyhow::Result<()> {
    if let Some(m) = &a.measure {
        return measure(Path::new(&m[0]), &m[1], &m[2]);
    }
    let dir = a
        .keep
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("watcher-bench-replay-{}", std::process::id())));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = a.keep.is_none().then(|| Scratch(dir.clone()));
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY)?;
    let mut logs = Vec::new();
    for (label, n) in [("short", a.short), ("long", a.events)] {
        let path = dir.join(format!("{label}.jsonl"));
        let t = Instant::now();
        let written = generate(&path, &policy, n, 7)?;
        let size = std::fs::metadata(&path)?.len();
        eprintln!(
            "generated {label} log: {written} events, {:.0} MB in {:.1}s",
            size as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
        logs.push((label, path, written, size));
    }
    println!(
        "replay benchmark: one thread; events/s and MB/s per CPU-second on that core; peak memory = VmHWM of a fresh process"
    );
    println!(
        "{:<6} {:<7} {:<6} {:>10} {:>7} {:>7} {:>11} {:>6} {:>9}",
        "log", "what", "parser", "events", "wall s", "cpu s", "events/s", "MB/s", "peak MiB"
    );
    let mut rates: std::collections::BTreeMap<(String, String, String), f64> = Default::default();
    let mut peaks = Vec::new();
    for what in ["parse", "replay"] {
        for parser in if a.no_reference { vec!["fast"] } else { vec!["fast", "serde"] } {
            for (label, path, _, size) in &logs {
                let r = child(path, parser, what)?;
                let rate = r.events as f64 / r.cpu_secs;
                println!(
                    "{:<6} {:<7} {:<6} {:>10} {:>7.2} {:>7.2} {:>11.0} {:>6.0} {:>9.1}",
                    label,
                    r.what,
                    r.parser,
                    r.events,
                    r.secs,
                    r.cpu_secs,
                    rate,
                    *size as f64 / 1e6 / r.cpu_secs,
                    r.hwm_kib as f64 / 1024.0
                );
                rates.insert((label.to_string(), what.to_string(), parser.to_string()), rate);
                if what == "replay" && parser == "fast" {
                    peaks.push(r.hwm_kib as f64 / 1024.0);
                }
            }
        }
    }
    for what in ["parse", "replay"] {
        if let (Some(f), Some(s)) = (
            rates.get(&("long".into(), what.into(), "fast".into())),
            rates.get(&("long".into(), what.into(), "serde".into())),
        ) {
            println!("{what}: fast parser is {:.1}x the serde path", f / s);
        }
    }
    if let Some(r) = rates.get(&("long".into(), "replay".into(), "fast".into())) {
        println!(
            "target: replay of the long log {:.2} M events/s per core, {}",
            r / 1e6,
            crate::util::against(r / 1e6, 1.5, " M events/s", false)
        );
    }
    if let [short, long] = peaks[..] {
        println!("target: flat memory: peak {short:.1} MiB (short log) vs {long:.1} MiB (long log)");
    }
    Ok(())
}
