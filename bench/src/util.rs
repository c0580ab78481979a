//! What every benchmark shares: the result table, statistics, binaries, the agent's memory.
use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};

/// One line of the result table.
pub struct Row {
    pub bench: String,
    pub metric: String,
    pub value: String,
    pub target: String,
}

pub fn row(bench: &str, metric: &str, value: String, target: &str) -> Row {
    Row { bench: bench.into(), metric: metric.into(), value, target: target.into() }
}

pub fn print_table(rows: &[Row]) {
    let w = |f: fn(&Row) -> &str, h: &str| rows.iter().map(|r| f(r).len()).max().unwrap_or(0).max(h.len());
    let (wb, wm, wv) = (w(|r| &r.bench, "bench"), w(|r| &r.metric, "metric"), w(|r| &r.value, "value"));
    println!("{:<wb$}  {:<wm$}  {:>wv$}  target", "bench", "metric", "value");
    println!("{}", "-".repeat(wb + wm + wv + 14));
    for r in rows {
        println!("{:<wb$}  {:<wm$}  {:>wv$}  {}", r.bench, r.metric, r.value, r.target);
    }
}

/// The target column: the target and whether the measured value meets it, or by how much it
/// misses. `at_most`: lower is better.
pub fn against(value: f64, target: f64, unit: &str, at_most: bool) -> String {
    let (sign, met) = if at_most { ("<=", value <= target) } else { (">=", value >= target) };
    if met {
        format!("{sign} {target}{unit}: met")
    } else {
        format!("{sign} {target}{unit}: MISSED by {:.3}{unit} ({:.2}x)", (value - target).abs(), value / target)
    }
}

/// Where `watcher run`'s start and stop went, from its `watcher::timing` lines
/// (`WATCHER_LOG=watcher::timing=info`): object, verify, attach, detach in ms.
pub fn parse_timing(stderr: &str) -> Option<[f64; 4]> {
    let num = |line: &str, key: &str| -> Option<f64> {
        let at = line.find(key)? + key.len();
        line[at..].trim_start().split(' ').next()?.parse().ok()
    };
    let start = stderr.lines().find(|l| l.contains("watcher::timing") && l.contains("start:"))?;
    let stop = stderr.lines().find(|l| l.contains("watcher::timing") && l.contains("stop:"))?;
    Some([num(start, "object")?, num(start, "verify")?, num(start, "attach")?, num(stop, "detach")?])
}

pub fn median(v: &[f64]) -> f64 {
    percentile(v, 50.0)
}

/// Nearest-rank percentile (`p` in 0..=100) of unsorted values; NaN when empty.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

/// `watcher`: `$WATCHER_BIN`, else next to this executable (target/release).
pub fn watcher_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("WATCHER_BIN") {
        return Ok(p.into());
    }
    let me = std::env::current_exe()?;
    let p = me.parent().context("no parent dir")?.join("watcher");
    if !p.is_file() {
        bail!("{} not found: build it (`cargo build --release --bins`) or set WATCHER_BIN", p.display());
    }
    Ok(p)
}

pub fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmarks run `watcher run`, which needs root");
    }
    Ok(())
}

/// A `kB` field of /proc/PID/status (`VmRSS:`, `VmHWM:`), 0 when the process is gone.
pub fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Resident KiB of a process's BPF map mappings (/proc/PID/smaps, `anon_inode:bpf-map`): the
/// ring buffer, whose data pages the kernel maps twice (so a ring of N MiB is 2N MiB of RSS,
/// all resident from the mmap on). The part of watcher's RSS that is the kernel's ring, not
/// the agent's own memory.
pub fn ring_mapping_kb(pid: u32) -> u64 {
    let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else { return 0 };
    let mut in_map = false;
    let mut kb = 0;
    for line in smaps.lines() {
        // A mapping's header: "START-END PERMS OFFSET DEV INODE [PATH]".
        if line
            .split_whitespace()
            .next()
            .is_some_and(|f| f.contains('-') && f.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
        {
            in_map = line.contains("bpf-map");
        } else if in_map && let Some(v) = line.strip_prefix("Rss:") {
            kb += v.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap_or(0);
        }
    }
    kb
}

/// "X MiB (of which ring mapping Y MiB)".
pub fn rss_text(kb: u64, ring_kb: u64) -> String {
    format!("{:.1} MiB (of which ring mapping {:.1} MiB)", kb as f64 / 1024.0, ring_kb as f64 / 1024.0)
}

/// Samples VmHWM (peak resident memory) of a process every 10 ms until it exits; the
/// high-water mark is monotonic, so the last reading is the peak up to 10 ms before the end.
/// Also the resident size of its ring buffer mapping (read from smaps until first seen: it
/// does not change once mapped).
pub struct HwmSampler {
    stop: Arc<AtomicBool>,
    peak_kb: Arc<AtomicU64>,
    ring_kb: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HwmSampler {
    pub fn start(pid: u32) -> HwmSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_kb = Arc::new(AtomicU64::new(0));
        let ring_kb = Arc::new(AtomicU64::new(0));
        let (s, p, r) = (stop.clone(), peak_kb.clone(), ring_kb.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { break };
                if let Some(kb) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    p.fetch_max(kb, Ordering::Relaxed);
                }
                if r.load(Ordering::Relaxed) == 0 {
                    r.store(ring_mapping_kb(pid), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        HwmSampler { stop, peak_kb, ring_kb, thread: Some(thread) }
    }

    /// Stops sampling; the peak and the ring buffer mapping, in KiB.
    pub fn finish_with_ring(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (self.peak_kb.load(Ordering::Relaxed), self.ring_kb.load(Ordering::Relaxed))
    }
}

/// Events in a `watcher run` log: (count of `kind`, lost total from the `end` record, sum of
/// `loss` counts).
pub struct LogCounts {
    pub by_kind: std::collections::BTreeMap<String, u64>,
    pub end_lost: Option<u64>,
    pub loss_records: u64,
}

pub fn count_log(path: &std::path::Path) -> anyhow::Result<LogCounts> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut c = LogCounts { by_kind: Default::default(), end_lost: None, loss_records: 0 };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        let kind = v["kind"].as_str().unwrap_or("?").to_string();
        if kind == "end" {
            c.end_lost = v["lost"].as_u64();
        }
        if kind == "loss" {
            c.loss_records += v["count"].as_u64().unwrap_or(0);
        }
        *c.by_kind.entry(kind).or_default() += 1;
    }
    Ok(c)
}

impl LogCounts {
    pub fn kind(&self, k: &str) -> u64 {
        self.by_kind.get(k).copied().unwrap_or(0)
    }
    /// Lost events as the log states them (the end record's total, else the loss records).
    pub fn lost(&self) -> u64 {
        self.end_lost.unwrap_or(0).max(self.loss_records)
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> anyhow::Result<TempDir> {
        let p = std::env::temp_dir().join(format!("{prefix}-{}-{}", std::process::id(), nanos()));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// A watcher daemon of the benchmark's own that allows steps (socket, log dir and job variable
/// named with the bench's pid, in `dir`), stopped (SIGTERM, then SIGKILL) when dropped,
/// whatever happened meanwhile.
pub struct StepDaemon {
    pub pid: u32,
    pub socket: PathBuf,
    child: Option<std::process::Child>,
}

impl StepDaemon {
    pub fn start(watcher: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<StepDaemon> {
        use std::{
            process::{Command, Stdio},
            time::{Duration, Instant},
        };
        let socket = dir.join("steps/steps.sock");
        let cfg = dir.join("daemon.yaml");
        std::fs::write(
            &cfg,
            format!(
                "version: 1\nsocket: {}\nlog_dir: {}\njobs:\n  id_env: [WATCHER_BENCH_JOB_{}]\nsteps:\n  allow: true\n  socket: {}\n",
                dir.join("run/status.sock").display(),
                dir.join("logs").display(),
                std::process::id(),
                socket.display()
            ),
        )?;
        let stderr = dir.join("daemon.stderr");
        let child = Command::new(watcher)
            .args(["daemon", "--config"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()
            .context("starting the daemon")?;
        let d = StepDaemon { pid: child.id(), socket, child: Some(child) };
        let t = Instant::now();
        while !std::fs::read_to_string(&stderr).unwrap_or_default().contains("watcher daemon started") {
            if t.elapsed() > Duration::from_secs(60) {
                bail!("the daemon did not start: {}", std::fs::read_to_string(&stderr).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }
}

impl Drop for StepDaemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill takes plain integers; the pid is our own child's, not yet reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            for _ in 0..100 {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
