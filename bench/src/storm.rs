//! Exec and connect storms: a tight loop of `count` execs of /bin/true, or of `count` TCP
//! connects to a loopback listener, run bare and under `watcher run --log` (no policy: pure
//! watching), alternating. Reports the watched/bare time ratio (medians), the events per
//! second the agent delivered to the log, and the events lost (the log's `loss`/`end` records).
//!
//! The workload is this binary's hidden `__storm` subcommand; it spreads the count over one
//! thread per CPU (the highest rate the machine produces) and prints its own loop time, so
//! watcher's start and stop are not part of the ratio. Connect storms run in a private network
//! namespace of the worker, so they never touch another program's listeners.
use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::util::{Row, TempDir, against, count_log, median, require_root, row, watcher_bin};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Execs and connects per storm (default: 5000 execs, 10000 connects).
    #[arg(long)]
    pub count: Option<u64>,
    /// Bare/watched pairs per storm (alternating order).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
}

#[derive(clap::Args)]
pub struct WorkerArgs {
    /// exec | connect | deny (connects to `count` distinct closed loopback ports).
    pub kind: String,
    #[arg(long)]
    pub count: u64,
    /// Worker threads (default: one per CPU; `deny` always uses one).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Pause between two connects of `deny`, in microseconds.
    #[arg(long, default_value_t = 0)]
    pub pace_us: u64,
}

/// Bring `lo` up in the current (new) network namespace.
fn loopback_up() -> anyhow::Result<()> {
    // SAFETY: plain ioctls on a socket we own, with a zeroed, NUL-terminated ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        let r = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr);
        if r == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut ifr);
        }
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if r != 0 {
            bail!("bringing lo up: {err}");
        }
    }
    Ok(())
}

pub(crate) fn private_netns() -> anyhow::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET) (needs root)")?;
    loopback_up()
}

/// The workload. Prints `elapsed_ns=N` (the loop only) on stdout.
pub fn worker(a: &WorkerArgs) -> anyhow::Result<()> {
    let jobs = a.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).max(1);
    let per = |j: usize| a.count / jobs as u64 + u64::from((j as u64) < a.count % jobs as u64);
    let elapsed = match a.kind.as_str() {
        "exec" => {
            let t = Instant::now();
            let threads: Vec<_> = (0..jobs)
                .map(|j| {
                    let n = per(j);
                    std::thread::spawn(move || {
                        for _ in 0..n {
                            let _ = Command::new("/bin/true").status();
                        }
                    })
                })
                .collect();
            for t in threads {
                let _ = t.join();
            }
            t.elapsed()
        }
        "connect" => {
            private_netns()?;
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            // std listens with a backlog of 128: a full accept queue drops SYNs, and each drop
            // costs the client a one-second retransmission. Raise it (listen again).
            // SAFETY: listen(2) on our own listening socket.
            unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), 65535) };
            let addr = l.local_addr()?;
            let accepted = Arc::new(AtomicU64::new(0));
            for _ in 0..jobs {
                let (l, acc) = (l.try_clone()?, accepted.clone());
                std::thread::spawn(move || {
                    for s in l.incoming() {
                        drop(s);
                        acc.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            let t = Instant::now();
            let threads: Vec<_> = (0..jobs)
                .map(|j| {
                    let n = per(j);
                    std::thread::spawn(move || {
                        for _ in 0..n {
                            let _ = TcpStream::connect(addr);
                        }
                    })
                })
                .collect();
            for t in threads {
                let _ = t.join();
            }
            t.elapsed()
        }
        "deny" => {
            private_netns()?;
            let t = Instant::now();
            for i in 0..a.count {
                let port = 20000 + (i % 40000) as u16;
                let _ = TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
                if a.pace_us > 0 {
                    std::thread::sleep(Duration::from_micros(a.pace_us));
                }
            }
            t.elapsed()
        }
        k => bail!("unknown storm kind {k:?}: exec, connect or deny"),
    };
    println!("elapsed_ns={}", elapsed.as_nanos());
    Ok(())
}

fn parse_elapsed(out: &[u8]) -> anyhow::Result<Duration> {
    let text = String::from_utf8_lossy(out);
    text.lines()
        .find_map(|l| l.strip_prefix("elapsed_ns="))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .map(Duration::from_nanos)
        .with_context(|| format!("the storm worker printed no elapsed time: {text:?}"))
}

fn worker_cmd(kind: &str, count: u64) -> anyhow::Result<Vec<String>> {
    Ok(vec![
        std::env::current_exe()?.to_string_lossy().into_owned(),
        "__storm".into(),
        kind.into(),
        "--count".into(),
        count.to_string(),
    ])
}

fn bare(cmd: &[String]) -> anyhow::Result<Duration> {
    let out = Command::new(&cmd[0]).args(&cmd[1..]).stdin(Stdio::null()).stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("{} failed: {}", cmd.join(" "), out.status);
    }
    parse_elapsed(&out.stdout)
}

/// `watcher run --quiet --log LOG -- CMD`; the worker's loop time.
pub fn watched(cmd: &[String], log: &std::path::Path, extra: &[&str]) -> anyhow::Result<Duration> {
    let out = Command::new(watcher_bin()?)
        .args(["run", "--quiet", "--log"])
        .arg(log)
        .args(extra)
        .arg("--")
        .args(cmd)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!("watcher run -- {} failed: {}", cmd.join(" "), out.status);
    }
    parse_elapsed(&out.stdout)
}

pub fn run(a: &Args) -> anyhow::Result<Vec<Row>> {
    require_root()?;
    let dir = TempDir::new("watcher-bench-storm")?;
    let mut rows = Vec::new();
    for (kind, default, event) in [("exec", 5000, "exec"), ("connect", 10000, "connect")] {
        let count = a.count.unwrap_or(default);
        let cmd = worker_cmd(kind, count)?;
        let (mut b, mut w, mut rates) = (Vec::new(), Vec::new(), Vec::new());
        let (mut lost, mut delivered_min) = (0u64, u64::MAX);
        for round in 0..a.rounds.max(1) {
            let log = dir.join(&format!("{kind}-{round}.jsonl"));
            let mut one_watched = || -> anyhow::Result<()> {
                let t = watched(&cmd, &log, &[])?;
                let c = count_log(&log)?;
                // The worker's own exec is in the log too.
                let n = c.kind(event) - u64::from(kind == "exec");
                delivered_min = delivered_min.min(n);
                lost += c.lost();
                rates.push(n as f64 / t.as_secs_f64());
                w.push(t.as_secs_f64());
                Ok(())
            };
            if round % 2 == 0 {
                b.push(bare(&cmd)?.as_secs_f64());
                one_watched()?;
            } else {
                one_watched()?;
                b.push(bare(&cmd)?.as_secs_f64());
            }
        }
        let name = format!("{kind} storm");
        let (mb, mw) = (median(&b), median(&w));
        rows.push(row(
            &name,
            &format!("{count} {kind}s, {} rounds: bare / watched", b.len()),
            format!("{:.3} s / {:.3} s", mb, mw),
            "",
        ));
        let target = if kind == "exec" { 1.10 } else { 1.25 };
        rows.push(row(&name, "watched/bare (medians)", format!("{:.3}", mw / mb), &against(mw / mb, target, "", true)));
        rows.push(row(&name, &format!("{event} events/s delivered (median)"), format!("{:.0}", median(&rates)), ""));
        rows.push(row(
            &name,
            &format!("{event} events in log (min of rounds)"),
            format!("{delivered_min} of {count}"),
            &format!("{count}"),
        ));
        rows.push(row(&name, "events lost (all rounds)", lost.to_string(), "0"));
    }
    Ok(rows)
}
