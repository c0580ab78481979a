//! Membership in the kernel: which processes and cgroups are in which job, and the daemon jobs
//! the kernel holds stopped at their first exec until their tables are written.
use aya::maps::{HashMap, MapError};
use watcher_common::{ProcInfo, maps::names};

use super::{Sensor, SensorError, load::map_mut};

impl Sensor {
    /// Every process of cgroup `cgroup_id` joins `job` at its next exec, fork, connect or packet
    /// (then it stays in the job wherever it moves).
    pub fn watch_cgroup(&mut self, cgroup_id: u64, job: u32) -> Result<(), SensorError> {
        let mut m = HashMap::<_, u64, u32>::try_from(map_mut(&mut self.ebpf, names::WATCHED_CGROUPS)?)
            .map_err(|e| SensorError::map(names::WATCHED_CGROUPS, "opening", e))?;
        m.insert(&cgroup_id, &job, 0).map_err(|e| SensorError::map(names::WATCHED_CGROUPS, "writing", e))
    }

    pub fn unwatch_cgroup(&mut self, cgroup_id: u64) -> Result<(), SensorError> {
        let mut m = HashMap::<_, u64, u32>::try_from(map_mut(&mut self.ebpf, names::WATCHED_CGROUPS)?)
            .map_err(|e| SensorError::map(names::WATCHED_CGROUPS, "opening", e))?;
        match m.remove(&cgroup_id) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(SensorError::map(names::WATCHED_CGROUPS, "removing from", e)),
        }
    }

    pub fn watch_pid(&mut self, pid: u32, ppid: u32, job: u32) -> Result<(), SensorError> {
        let mut m = HashMap::<_, u32, ProcInfo>::try_from(map_mut(&mut self.ebpf, names::WATCHED)?)
            .map_err(|e| SensorError::map(names::WATCHED, "opening", e))?;
        // BPF_NOEXIST: if the kernel already added it (through its cgroup), keep what the
        // kernel knows (its flags may already say it starts an install script). That case is
        // EEXIST, and only that one, even when the process has exited and left the map since
        // (asking the map again then found nothing: a short step failed to start, exit 125).
        const BPF_NOEXIST: u64 = 1;
        match m.insert(&pid, &(ProcInfo { ppid, job, exit_code: 0, code_known: 0, flags: 0, _pad: 0 }), BPF_NOEXIST) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(SensorError::map(names::WATCHED, "writing", e)),
        }
    }

    /// Daemon mode: (job, pid) of the jobs whose first program the kernel holds stopped.
    pub fn held_jobs(&self) -> Vec<(u32, u32)> {
        let Some(map) = self.ebpf.map(names::NEW_JOBS) else { return vec![] };
        let Ok(m) = HashMap::<_, u32, u32>::try_from(map) else { return vec![] };
        m.iter().filter_map(Result::ok).collect()
    }

    pub fn forget_held_job(&mut self, job: u32) -> Result<(), SensorError> {
        let mut m = HashMap::<_, u32, u32>::try_from(map_mut(&mut self.ebpf, names::NEW_JOBS)?)
            .map_err(|e| SensorError::map(names::NEW_JOBS, "opening", e))?;
        match m.remove(&job) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(SensorError::map(names::NEW_JOBS, "removing from", e)),
        }
    }

    /// Processes the kernel still tracks as watched.
    pub fn watched_pids(&self) -> Vec<u32> {
        let Some(map) = self.ebpf.map(names::WATCHED) else { return vec![] };
        let Ok(m) = HashMap::<_, u32, ProcInfo>::try_from(map) else { return vec![] };
        m.keys().filter_map(Result::ok).collect()
    }
}

/// Daemon-backed steps (daemon/steps.rs): a process's kernel job entry, read and replaced.
impl Sensor {
    pub fn watched_info(&self, pid: u32) -> Option<ProcInfo> {
        let m = HashMap::<_, u32, ProcInfo>::try_from(self.ebpf.map(names::WATCHED)?).ok()?;
        m.get(&pid, 0).ok()
    }

    /// Every watched process with its entry.
    pub fn watched_entries(&self) -> Vec<(u32, ProcInfo)> {
        let Some(map) = self.ebpf.map(names::WATCHED) else { return vec![] };
        let Ok(m) = HashMap::<_, u32, ProcInfo>::try_from(map) else { return vec![] };
        m.iter().filter_map(Result::ok).collect()
    }

    /// Put `pid` in the job of `info` (replacing any entry it has).
    pub fn set_watched(&mut self, pid: u32, info: ProcInfo) -> Result<(), SensorError> {
        let mut m = HashMap::<_, u32, ProcInfo>::try_from(map_mut(&mut self.ebpf, names::WATCHED)?)
            .map_err(|e| SensorError::map(names::WATCHED, "opening", e))?;
        m.insert(&pid, &info, 0).map_err(|e| SensorError::map(names::WATCHED, "writing", e))
    }

    pub fn unwatch_pid(&mut self, pid: u32) -> Result<(), SensorError> {
        let mut m = HashMap::<_, u32, ProcInfo>::try_from(map_mut(&mut self.ebpf, names::WATCHED)?)
            .map_err(|e| SensorError::map(names::WATCHED, "opening", e))?;
        match m.remove(&pid) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(SensorError::map(names::WATCHED, "removing from", e)),
        }
    }
}
