//! What the packet backstop and stream scanning cost, side by side with them off, in one run.
//!
//! * A connect storm that sends data: `count` TCP connects to a listener on 127.0.0.1 (in a
//!   private network namespace of the worker), each sending 1 KiB and closing, under an enforce
//!   policy that allows 127.0.0.1 and protects one variable the worker carries (so every
//!   stream's chunks are searched). Run bare, then watched with everything on, with the packet
//!   backstop off, with stream scanning off, and with both off, round-robin `rounds` times.
//! * `npm ci` of the generated graph (npm.rs) under the shipped npm policy, everything on versus
//!   both off, alternating, `runs` times each.
//!
//! "Off" is `watcher run --bench-disable backstop,streams`, a hidden flag only this benchmark
//! passes: `backstop` leaves the cgroup_skb `egress_guard` program unattached, `streams` makes
//! the TCP path of `dns_egress` pass every segment without judging the first one or capturing
//! the stream (CONFIG[CFG_BENCH_NO_STREAMS]). Everything else is as in production.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    npm::{clean, npm_env},
    util::{Row, TempDir, against, count_log, median, require_root, row, watcher_bin},
};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Connects (each sending 1 KiB) per guard storm.
    #[arg(long, default_value_t = 5000)]
    pub guard_count: u64,
    /// Rounds of the guard storm (each: bare and the four watched variants).
    #[arg(long, default_value_t = 5)]
    pub guard_rounds: u32,
    /// Packages of the generated graph for the `npm ci` on/off rows.
    #[arg(long, default_value_t = 400)]
    pub guard_packages: usize,
    /// `npm ci` runs per variant (on, off).
    #[arg(long, default_value_t = 3)]
    pub guard_runs: usize,
}

#[derive(clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub count: u64,
    /// Bytes each connection sends.
    #[arg(long, default_value_t = 1024)]
    pub bytes: usize,
}

/// Connects to a listener of its own on 127.0.0.1 (a private network namespace), sends
/// `bytes`, closes; one thread per CPU. Prints `elapsed_ns=N` (the loop only).
pub fn worker(a: &WorkerArgs) -> anyhow::Result<()> {
    crate::storm::private_netns()?;
    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).max(1);
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    // SAFETY: listen(2) on our own listening socket (a deeper accept queue than std's 128).
    unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), 65535) };
    let addr = l.local_addr()?;
    for _ in 0..jobs {
        let l = l.try_clone()?;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            for mut s in l.incoming().flatten() {
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            }
        });
    }
    let payload: Vec<u8> = (0..a.bytes).map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36]).collect();
    let per = |j: usize| a.count / jobs as u64 + u64::from((j as u64) < a.count % jobs as u64);
    let t = Instant::now();
    let threads: Vec<_> = (0..jobs)
        .map(|j| {
            let (n, payload) = (per(j), payload.clone());
            std::thread::spawn(move || {
                for _ in 0..n {
                    if let Ok(mut s) = TcpStream::connect(addr) {
                        let _ = s.write_all(&payload);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    println!("elapsed_ns={}", t.elapsed().as_nanos());
    Ok(())
}

/// The watched variants, in the order they run and are printed.
const VARIANTS: [(&str, &str); 4] =
    [("all on", ""), ("backstop off", "backstop"), ("streams off", "streams"), ("both off", "backstop,streams")];

const STORM_POLICY: &str = "version: 1\npipeline: bench-guard\nmode: enforce\negress:\n  loopback: false\n  allow:\n    - cidr: 127.0.0.1/32\ndns:\n  resolvers: []\nsecrets:\n  env: [\"WB_*_TOKEN\"]\n";

/// A protected value the worker carries (and never sends), so every chunk is searched.
const TOKEN: &str = "wbT0k3nQ7r9Zx2Lm5Np8Kv4Hs6Jd1Fg3";

fn elapsed(out: &[u8]) -> anyhow::Result<f64> {
    let text = String::from_utf8_lossy(out);
    text.lines()
        .find_map(|l| l.strip_prefix("elapsed_ns="))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .map(|n| Duration::from_nanos(n).as_secs_f64())
        .with_context(|| format!("the guard storm worker printed no elapsed time: {text:?}"))
}

fn disable_args(off: &str) -> Vec<String> {
    if off.is_empty() { Vec::new() } else { vec!["--bench-disable".into(), off.into()] }
}

fn storm(a: &Args, dir: &TempDir) -> anyhow::Result<Vec<Row>> {
    let policy = dir.join("storm.yaml");
    std::fs::write(&policy, STORM_POLICY)?;
    let me = std::env::current_exe()?;
    let worker = |cmd: &mut Command| {
        cmd.arg(&me).args(["__guard_storm", "--count", &a.guard_count.to_string()]);
        cmd.env("WB_BENCH_TOKEN", TOKEN).stdin(Stdio::null()).stderr(Stdio::null());
    };
    let (mut bare, mut watched) = (Vec::new(), vec![Vec::new(); VARIANTS.len()]);
    let (mut lost, mut alerts) = (0u64, 0u64);
    for round in 0..a.guard_rounds.max(1) {
        let mut c = Command::new(&me);
        c.args(["__guard_storm", "--count", &a.guard_count.to_string()]).stdin(Stdio::null());
        let out = c.output()?;
        if !out.status.success() {
            bail!("the bare guard storm failed: {}", out.status);
        }
        bare.push(elapsed(&out.stdout)?);
        // Round-robin, the starting variant rotating every round.
        for k in 0..VARIANTS.len() {
            let v = (k + round as usize) % VARIANTS.len();
            let log = dir.join(&format!("storm-{round}-{v}.jsonl"));
            let mut c = Command::new(watcher_bin()?);
            c.args(["run", "--quiet", "--policy"]).arg(&policy).arg("--log").arg(&log);
            c.args(disable_args(VARIANTS[v].1)).arg("--");
            worker(&mut c);
            let out = c.output()?;
            if !out.status.success() {
                bail!("watcher run (guard storm, {}) failed: {}", VARIANTS[v].0, out.status);
            }
            watched[v].push(elapsed(&out.stdout)?);
            let counts = count_log(&log)?;
            lost += counts.lost();
            alerts += counts.kind("alert");
        }
    }
    let b = "guard storm";
    let m: Vec<f64> = watched.iter().map(|w| median(w)).collect();
    let mb = median(&bare);
    let mut rows = vec![row(
        b,
        &format!("{} connects x 1 KiB, enforce, {} rounds: bare (median)", a.guard_count, bare.len()),
        format!("{mb:.3} s"),
        "",
    )];
    for (i, (name, _)) in VARIANTS.iter().enumerate() {
        rows.push(row(b, &format!("watched, {name} (median; /bare)"), format!("{:.3} s ({:.3})", m[i], m[i] / mb), ""));
    }
    let cost = m[0] / m[3];
    rows.push(row(
        b,
        "backstop + stream scanning: all on / both off",
        format!("{cost:.3}"),
        &against(cost, 1.10, "", true),
    ));
    rows.push(row(b, "backstop alone: all on / backstop off", format!("{:.3}", m[0] / m[1]), ""));
    rows.push(row(b, "stream scanning alone: all on / streams off", format!("{:.3}", m[0] / m[2]), ""));
    rows.push(row(b, "alerts / events lost (all runs)", format!("{alerts} / {lost}"), "0 / 0"));
    Ok(rows)
}

fn npm(a: &Args) -> anyhow::Result<Vec<Row>> {
    let watcher = watcher_bin()?;
    let crate::npm::NpmProject { work, project, home, cache, policy, http: _http } =
        crate::npm::prepare("guard-npm", a.guard_packages)?;

    let variants = [VARIANTS[0], VARIANTS[3]];
    let mut times = vec![Vec::new(); variants.len()];
    let (mut lost, mut alerts) = (0u64, 0u64);
    for i in 0..a.guard_runs.max(1) {
        for k in 0..variants.len() {
            let v = (k + i) % variants.len();
            clean(&project, &cache)?;
            let log = work.join(&format!("npm-{i}-{v}.jsonl"));
            let mut c = Command::new(&watcher);
            c.args(["run", "--quiet", "--policy"]).arg(&policy).arg("--log").arg(&log);
            c.args(disable_args(variants[v].1)).args(["--", "npm", "ci"]);
            c.current_dir(&project).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
            npm_env(&mut c, &home, &cache);
            let t = Instant::now();
            let out = c.output()?;
            let secs = t.elapsed().as_secs_f64();
            if !out.status.success() {
                bail!(
                    "watched npm ci ({}) failed ({}): {}",
                    variants[v].0,
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            times[v].push(secs);
            let counts = count_log(&log)?;
            lost += counts.lost();
            alerts += counts.kind("alert");
            eprintln!("watcher-bench guard: npm ci run {}, {}: {secs:.2} s", i + 1, variants[v].0);
        }
    }
    clean(&project, &cache)?;
    let b = "npm ci (guard)";
    let (on, off) = (median(&times[0]), median(&times[1]));
    Ok(vec![
        row(b, &format!("watched, all on (median of {})", times[0].len()), format!("{on:.2} s"), ""),
        row(b, &format!("watched, backstop and streams off (median of {})", times[1].len()), format!("{off:.2} s"), ""),
        row(
            b,
            "backstop + stream scanning: all on / both off",
            format!("{:.3}", on / off),
            &against(on / off, 1.02, "", true),
        ),
        row(b, "alerts / events lost (all runs)", format!("{alerts} / {lost}"), "0 / 0"),
    ])
}

pub fn run(a: &Args) -> anyhow::Result<Vec<Row>> {
    require_root()?;
    let dir = TempDir::new("watcher-bench-guard")?;
    let mut rows = storm(a, &dir)?;
    rows.extend(npm(a)?);
    Ok(rows)
}
