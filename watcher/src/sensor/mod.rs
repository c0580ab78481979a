//! The only module that touches aya: loads the kernel programs, attaches them at the cgroup v2
//! root (every mode: a job is kept in the kernel by process, from its first exec and through
//! fork, never by cgroup alone), pins them so that a killed agent leaves its jobs failing
//! closed, and gives the pipeline typed access to the kernel's tables, ring buffer and counters.
//!
//! * [`load`]: the programs and how each is attached; the ABI check.
//! * [`pins`]: bpffs pins per agent instance, and removal of what a killed agent left.
//! * [`shell_identity`]: shells recognised by content at exec.
//! * [`tables`]: a job's compiled policy written to (and removed from) the kernel maps.
//! * [`held_jobs`]: membership: watched processes, cgroups and jobs held at their first exec.
//! * [`ring`]: the ring buffer, decoded into records.
//! * [`counters`]: the kernel's loss counters.
pub mod btf;
pub mod counters;
pub mod error;
pub mod files;
pub mod held_jobs;
pub mod hook_probe;
pub mod load;
pub mod pins;
pub mod ring;
pub mod shell_identity;
pub mod tables;
pub mod timing;

use std::path::PathBuf;

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, RingBuf},
    programs::links::PinnedLink,
};
use tokio::io::unix::AsyncFd;
use watcher_common::{
    CFG_AGENT_PID, CFG_DAEMON, CFG_FILES_OFF, DAEMON_LOG_ALL, DAEMON_ON, ENV_BLOOM_WORDS, ENV_FLAG_CAPTURE,
    ENV_FLAG_INSTALL, ENV_FLAG_JOB, ENV_NAME_LEN, JOB_NONE, env_bloom_bit, env_name_prefix, maps::names,
};

pub use counters::COUNTER_NAMES;
pub use error::SensorError;

use crate::event::SensorState;

/// Environment variables captured at exec (never secrets): who runs this — which package's
/// install script, which CI job.
pub const CAPTURED_ENV: &[(&str, u32)] = &[
    ("npm_package_name", ENV_FLAG_CAPTURE),
    ("npm_package_version", ENV_FLAG_CAPTURE),
    ("npm_lifecycle_event", ENV_FLAG_CAPTURE),
    ("npm_package_json", ENV_FLAG_CAPTURE),
    ("CARGO_PKG_NAME", ENV_FLAG_CAPTURE),
    ("CARGO_PKG_VERSION", ENV_FLAG_CAPTURE),
    ("CARGO_MANIFEST_DIR", ENV_FLAG_CAPTURE),
    // pip sets it for the subprocesses that build sdists: their start is an install script.
    ("PIP_BUILD_TRACKER", ENV_FLAG_CAPTURE | ENV_FLAG_INSTALL),
    // uv's PEP 517 build subprocesses, and the hook runner of pyproject_hooks (poetry,
    // python -m build, pip's own): their start is an install script too.
    ("UV_INTERNAL__BUILD_DIR", ENV_FLAG_CAPTURE | ENV_FLAG_INSTALL),
    ("_PYPROJECT_HOOKS_BUILD_BACKEND", ENV_FLAG_CAPTURE | ENV_FLAG_INSTALL),
    ("GITHUB_RUN_ID", ENV_FLAG_CAPTURE),
    ("GITHUB_JOB", ENV_FLAG_CAPTURE),
    ("GITHUB_REPOSITORY", ENV_FLAG_CAPTURE),
    ("CI_JOB_ID", ENV_FLAG_CAPTURE),
    ("CI_PROJECT_PATH", ENV_FLAG_CAPTURE),
    ("BUILDKITE_JOB_ID", ENV_FLAG_CAPTURE),
];

/// Which agent this is: names its pin directory (`/sys/fs/bpf/watcher/<kind>-<pid>-<start>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Instance {
    Run,
    Daemon,
    Drill,
}

impl Instance {
    pub fn as_str(self) -> &'static str {
        match self {
            Instance::Run => "run",
            Instance::Daemon => "daemon",
            Instance::Drill => "drill",
        }
    }
}

pub struct SensorConfig {
    pub instance: Instance,
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ringbuf_bytes: u32,
    /// Daemon mode: unwatched processes whose exec environment carries one of `job_env` start
    /// a job.
    pub daemon: bool,
    /// Variables that name a job (daemon mode), captured at exec with ENV_FLAG_JOB.
    pub job_env: Vec<String>,
    /// More variables to capture at exec (daemon mode: the pipeline variables).
    pub extra_env: Vec<String>,
    /// Daemon mode: also report processes of no job (in the pseudo-job JOB_NONE, never
    /// enforced).
    pub log_no_job: bool,
    /// What the benchmark turns off (`watcher run --bench-disable`, a hidden flag set only from
    /// argv): all off by default and in the daemon.
    pub bench_disable: BenchDisable,
}

/// Protections `watcher-bench` turns off to measure their cost, side by side with them on.
/// Set only from `watcher run`'s command line (never from the step's environment or a policy);
/// the run's start record names them among its sensors and watcher warns on stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BenchDisable {
    /// The packet backstop (`egress_guard`, cgroup_skb egress) is not attached.
    pub backstop: bool,
    /// TCP streams are neither judged by their first segment nor captured for secrets.
    pub streams: bool,
    /// The file sensor: every open passes unjudged (CONFIG[CFG_FILES_OFF], checked first).
    pub files: bool,
}

/// The start record's word for what `--bench-disable` turned off (none: nothing).
fn bench_state(b: BenchDisable) -> Option<SensorState> {
    let off: Vec<&str> = [(b.backstop, "packet backstop"), (b.streams, "stream scanning"), (b.files, "file sensor")]
        .into_iter()
        .filter_map(|(o, w)| o.then_some(w))
        .collect();
    (!off.is_empty()).then(|| SensorState {
        name: "bench-disable".into(),
        active: false,
        detail: Some(format!("turned off by watcher-bench (--bench-disable): {}", off.join(", "))),
    })
}

impl SensorConfig {
    pub fn run(instance: Instance, ringbuf_bytes: u32) -> SensorConfig {
        SensorConfig {
            instance,
            ringbuf_bytes,
            daemon: false,
            job_env: Vec::new(),
            extra_env: Vec::new(),
            log_no_job: false,
            bench_disable: BenchDisable::default(),
        }
    }
}

pub struct Sensor {
    ebpf: Ebpf,
    /// Every attachment, pinned: a killed agent leaves them attached (its jobs fail closed).
    links: Vec<PinnedLink>,
    pins: pins::PinDir,
    ring: AsyncFd<RingBuf<MapData>>,
    /// When the ring may be read again after a drain that emptied it (see `ring::PAUSE`).
    next_read: Option<tokio::time::Instant>,
    states: Vec<SensorState>,
    /// What the previous, killed agents left behind and this start removed.
    stale: Vec<pins::Stale>,
}

impl Drop for Sensor {
    /// Detach everything. Closing a tracepoint or cgroup link waits for an RCU grace period
    /// (tens of milliseconds on a busy machine); closed from one thread each, the waits overlap.
    fn drop(&mut self) {
        if !self.links.is_empty() {
            load::detach_all(std::mem::take(&mut self.links));
        }
        self.pins.remove();
    }
}

impl Sensor {
    /// Detach every program now, keeping the maps and the ring buffer: what the programs sent
    /// before can still be read and their maps still answer, and nothing new happens in the
    /// kernel. Returns when no program is running any more (a raw tracepoint's program may
    /// still be running when its link is closed: one RCU grace period, which
    /// `membarrier(MEMBARRIER_CMD_GLOBAL)` waits for; 50 ms where it cannot).
    pub fn detach(&mut self) {
        load::detach_all(std::mem::take(&mut self.links));
        const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
        // SAFETY: membarrier takes no pointers; it only waits.
        let r =
            unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0 as libc::c_long, 0 as libc::c_long) };
        if r != 0 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Load, pin and attach everything at the cgroup v2 root. Fails with one sentence naming
    /// what is missing. Removes first what killed agents left (pins, their jobs' processes).
    pub fn load(cfg: &SensorConfig, cgroup_root: &std::path::Path) -> Result<Sensor, SensorError> {
        load::require_root()?;
        let stale = pins::clean_stale();
        let pins = pins::PinDir::create(cfg.instance)?;
        let (mut ebpf, links, mut states) = match load::load_and_attach(cfg, cgroup_root, &pins) {
            Ok(v) => v,
            Err(e) => {
                pins.remove();
                return Err(e);
            }
        };
        let mut sensor_cfg = || -> Result<AsyncFd<RingBuf<MapData>>, SensorError> {
            fill_env_capture(&mut ebpf, cfg)?;
            fill_env_markers(&mut ebpf)?;
            let mut config = Array::<_, u64>::try_from(load::map_mut(&mut ebpf, names::CONFIG)?)
                .map_err(|e| SensorError::map(names::CONFIG, "opening", e))?;
            config
                .set(CFG_AGENT_PID, &(std::process::id() as u64), 0)
                .map_err(|e| SensorError::map(names::CONFIG, "writing", e))?;
            if cfg.bench_disable.streams {
                config
                    .set(watcher_common::CFG_BENCH_NO_STREAMS, &1, 0)
                    .map_err(|e| SensorError::map(names::CONFIG, "writing", e))?;
            }
            for (slot, off) in btf::config_offsets() {
                config.set(slot, &(off as u64), 0).map_err(|e| SensorError::map(names::CONFIG, "writing", e))?;
            }
            if cfg.bench_disable.files {
                config.set(CFG_FILES_OFF, &1, 0).map_err(|e| SensorError::map(names::CONFIG, "writing", e))?;
            }
            if cfg.daemon {
                if cfg.log_no_job {
                    // The pseudo-job of processes of no job: known, never enforced.
                    let mut jobs = HashMap::<_, u32, u32>::try_from(load::map_mut(&mut ebpf, names::JOBS)?)
                        .map_err(|e| SensorError::map(names::JOBS, "opening", e))?;
                    jobs.insert(&JOB_NONE, &0, 0).map_err(|e| SensorError::map(names::JOBS, "writing", e))?;
                }
                // Last: from here on every exec on the host is looked at for job variables.
                let mut config = Array::<_, u64>::try_from(load::map_mut(&mut ebpf, names::CONFIG)?)
                    .map_err(|e| SensorError::map(names::CONFIG, "opening", e))?;
                let mode = if cfg.log_no_job { DAEMON_LOG_ALL } else { DAEMON_ON };
                config.set(CFG_DAEMON, &mode, 0).map_err(|e| SensorError::map(names::CONFIG, "writing", e))?;
            }
            ring::open(&mut ebpf)
        };
        let ring = match sensor_cfg() {
            Ok(r) => r,
            Err(e) => {
                load::detach_all(links);
                pins.remove();
                return Err(e);
            }
        };
        if cfg.bench_disable.files {
            for s in states.iter_mut().filter(|s| s.name == "files") {
                s.active = false;
                s.detail = Some("off (watcher-bench's comparison run: --bench-disable files)".into());
            }
        }
        Ok(Sensor { ebpf, links, pins, ring, next_read: None, states, stale })
    }

    pub fn states(&self) -> &[SensorState] {
        &self.states
    }

    /// What killed agents had left and this start removed (for a warning).
    pub fn stale(&self) -> &[pins::Stale] {
        &self.stale
    }

    pub fn pin_dir(&self) -> PathBuf {
        self.pins.path().to_path_buf()
    }
}

/// The environment entries that mark the start of an install script, for every job from
/// the first exec on: written at load, before anything is watched (a daemon's first job
/// starts before any policy is written).
fn fill_env_markers(ebpf: &mut Ebpf) -> Result<(), SensorError> {
    let mut m: HashMap<_, [u8; ENV_NAME_LEN], u32> = HashMap::try_from(load::map_mut(ebpf, names::ENV_MARKERS)?)
        .map_err(|e| SensorError::map(names::ENV_MARKERS, "opening", e))?;
    for (k, f) in crate::policy::kernel::install_markers() {
        m.insert(&k, &f, 0).map_err(|e| SensorError::map(names::ENV_MARKERS, "writing", e))?;
    }
    Ok(())
}

fn fill_env_capture(ebpf: &mut Ebpf, cfg: &SensorConfig) -> Result<(), SensorError> {
    let mut capture: HashMap<_, [u8; ENV_NAME_LEN], u32> = HashMap::try_from(load::map_mut(ebpf, names::ENV_CAPTURE)?)
        .map_err(|e| SensorError::map(names::ENV_CAPTURE, "opening", e))?;
    let mut all: Vec<(String, u32)> = CAPTURED_ENV.iter().map(|(n, f)| (n.to_string(), *f)).collect();
    for (names, flag) in [(&cfg.job_env, ENV_FLAG_JOB), (&cfg.extra_env, 0)] {
        for name in names {
            match all.iter_mut().find(|(n, _)| n == name) {
                Some((_, f)) => *f |= flag,
                None => all.push((name.clone(), ENV_FLAG_CAPTURE | flag)),
            }
        }
    }
    let mut bloom = [0u64; ENV_BLOOM_WORDS as usize];
    for (name, flags) in &all {
        if name.is_empty() || name.len() >= ENV_NAME_LEN || name.contains('=') {
            return Err(SensorError::EnvName(name.clone()));
        }
        let mut key = [0u8; ENV_NAME_LEN];
        key[..name.len()].copy_from_slice(name.as_bytes());
        capture.insert(&key, flags, 0).map_err(|e| SensorError::map(names::ENV_CAPTURE, "writing", e))?;
        let bit = env_bloom_bit(env_name_prefix(name.as_bytes()));
        bloom[(bit >> 6) as usize] |= 1 << (bit & 63);
    }
    let mut m = Array::<_, u64>::try_from(load::map_mut(ebpf, names::ENV_BLOOM)?)
        .map_err(|e| SensorError::map(names::ENV_BLOOM, "opening", e))?;
    for (i, w) in bloom.iter().enumerate() {
        m.set(i as u32, w, 0).map_err(|e| SensorError::map(names::ENV_BLOOM, "writing", e))?;
    }
    Ok(())
}
