//! Pins: every agent pins its links (and the maps a successor needs) under
//! `/sys/fs/bpf/watcher/<kind>-<pid>-<starttime>/`. While the agent lives it owns them and
//! removes them at its end. If it is killed, the pins keep the programs attached: its jobs are
//! denied all network and killed at their next event (the kernel's "agent gone" state, set
//! when the agent's last thread exits). The next watcher to start removes what a dead agent
//! left: it kills the processes in the dead agent's job table (daemon jobs the kernel holds
//! stopped at their first exec are left for the new daemon to adopt), removes the pins, which
//! detaches the programs, and removes the dead run's cgroup.
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData};
use watcher_common::{ProcInfo, maps::names};

use super::{Instance, SensorError};

pub const BPFFS: &str = "/sys/fs/bpf";
pub const PIN_ROOT: &str = "/sys/fs/bpf/watcher";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Mount bpffs at /sys/fs/bpf when nothing is mounted there (it is not on some machines).
fn ensure_bpffs() -> Result<(), SensorError> {
    let mounted = nix::sys::statfs::statfs(BPFFS).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC);
    if mounted {
        return Ok(());
    }
    nix::mount::mount(Some("bpf"), BPFFS, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>).map_err(|e| {
        SensorError::Pin { path: BPFFS.into(), detail: format!("bpffs is not mounted and mounting it failed: {e}") }
    })
}

/// This process's start time (field 22 of /proc/PID/stat, clock ticks since boot): with the
/// pid, it names one process even when pids are reused.
pub fn start_time(pid: u32) -> Option<u64> {
    crate::procfs::Stat::of(pid).map(|s| s.start_ticks)
}

pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    pub fn create(instance: Instance) -> Result<PinDir, SensorError> {
        ensure_bpffs()?;
        let pid = std::process::id();
        let start = start_time(pid).unwrap_or(0);
        let path = Path::new(PIN_ROOT).join(format!("{}-{pid}-{start}", instance.as_str()));
        let err = |e: std::io::Error| SensorError::Pin { path: path.clone(), detail: e.to_string() };
        if path.exists() {
            // Only this very process could have made it (same pid and start time).
            remove_dir(&path);
        }
        // The last agent to leave removes PIN_ROOT when it is empty: it may vanish between
        // creating it and creating this directory in it; then create it again.
        let mut tries = 0;
        loop {
            std::fs::create_dir_all(PIN_ROOT).map_err(err)?;
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(PinDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 100 => tries += 1,
                Err(e) => return Err(err(e)),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remove every pin left (links are unpinned before) and the directory.
    pub fn remove(&self) {
        remove_dir(&self.path);
        remove_root_if_empty();
    }
}

/// PIN_ROOT goes with the last agent (rmdir refuses a directory that is not empty, so another
/// agent's directory is never touched; one creating its own retries, see [`PinDir::create`]).
fn remove_root_if_empty() {
    let _ = std::fs::remove_dir(PIN_ROOT);
}

fn remove_dir(path: &Path) {
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(path);
}

/// What a killed agent had left.
#[derive(Clone, Debug)]
pub struct Stale {
    pub dir: PathBuf,
    pub pid: u32,
    /// Processes of its jobs this start killed.
    pub killed: usize,
    /// Daemon jobs held stopped at their first exec, left for adoption.
    pub held: usize,
}

/// Remove what dead agents left: see the module comment. Never fails: what cannot be removed
/// is logged and left.
pub fn clean_stale() -> Vec<Stale> {
    let Ok(rd) = std::fs::read_dir(PIN_ROOT) else { return Vec::new() };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let mut parts = name.rsplitn(3, '-');
        let (Some(start), Some(pid), Some(kind)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let (Ok(start), Ok(pid)) = (start.parse::<u64>(), pid.parse::<u32>()) else { continue };
        if start_time(pid) == Some(start) {
            continue; // alive
        }
        let dir = e.path();
        let held: std::collections::HashSet<u32> =
            read_u32_map(&dir.join(names::NEW_JOBS)).into_iter().map(|(_, p)| p).collect();
        let watched: Vec<(u32, ProcInfo)> = read_watched(&dir.join(names::WATCHED));
        // Unpin first: the programs detach, so nothing kills the held processes being adopted.
        remove_dir(&dir);
        let mut killed = 0;
        for (p, _) in &watched {
            if held.contains(p) && kind == Instance::Daemon.as_str() {
                continue;
            }
            if nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p as i32), nix::sys::signal::Signal::SIGKILL).is_ok()
            {
                killed += 1;
            }
        }
        if kind == Instance::Run.as_str() || kind == Instance::Drill.as_str() {
            remove_stale_cgroups(pid);
        }
        tracing::warn!(
            pid,
            killed,
            held = held.len(),
            "removed the kernel programs of a watcher that was killed while watching"
        );
        out.push(Stale { dir, pid, killed, held: held.len() });
    }
    out
}

fn read_watched(path: &Path) -> Vec<(u32, ProcInfo)> {
    let Ok(data) = MapData::from_pin(path) else { return Vec::new() };
    let Ok(m) = HashMap::<_, u32, ProcInfo>::try_from(Map::HashMap(data)) else { return Vec::new() };
    m.iter().filter_map(Result::ok).collect()
}

fn read_u32_map(path: &Path) -> Vec<(u32, u32)> {
    let Ok(data) = MapData::from_pin(path) else { return Vec::new() };
    let Ok(m) = HashMap::<_, u32, u32>::try_from(Map::HashMap(data)) else { return Vec::new() };
    m.iter().filter_map(Result::ok).collect()
}

/// A dead run's cgroups (`watcher-run-PID*`, `watcher-drill-PID*`): what is in them is killed,
/// then they are removed, so a later run with the same pid never meets them.
fn remove_stale_cgroups(pid: u32) {
    let Ok(root) = crate::cgroup::cgroup2_root() else { return };
    let Ok(rd) = std::fs::read_dir(&root) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = [format!("watcher-run-{pid}"), format!("watcher-drill-{pid}")]
            .iter()
            .any(|p| name == *p || name.starts_with(&format!("{p}-")));
        if ours {
            crate::cgroup::remove_stale(&e.path());
        }
    }
}
