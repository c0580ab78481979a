//! Helpers shared by the programs: who is watched, headers, counters.
use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid};
use watcher_common::{CFG_AGENT_GONE, CFG_DAEMON, Counter, Header, JOB_DAEMON_BIT, JOB_ENFORCE, ProcInfo, RecordKind};

use crate::{
    maps::{CONFIG, COUNTERS, JOBS, WATCHED, WATCHED_CGROUPS},
    safe::Lookup as _,
};

#[inline(always)]
pub fn count(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: this CPU's slot of a per-CPU array: no other writer while the program runs.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// The watch entry of the current process, adding it when its cgroup is a watched one.
#[inline(always)]
pub fn watched_current() -> Option<ProcInfo> {
    let tgid = current_tgid();
    if let Some(info) = WATCHED.value(&tgid) {
        return Some(info);
    }
    let cg = crate::safe::current_cgroup_id();
    let job = WATCHED_CGROUPS.value(&cg)?;
    let info = ProcInfo { ppid: 0, job, exit_code: 0, code_known: 0, flags: 0, _pad: 0 };
    if WATCHED.insert(&tgid, &info, 0).is_err() {
        count(Counter::WatchedFull);
    }
    Some(info)
}

/// Fill a header for the current task.
#[inline(always)]
pub fn fill_header(hdr: &mut Header, kind: RecordKind, ppid: u32, job: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    hdr.kind = kind as u32;
    hdr.pid = (pid_tgid >> 32) as u32;
    hdr.tid = pid_tgid as u32;
    hdr.ppid = ppid;
    hdr.ts_ns = crate::safe::boot_ns();
    hdr.cgroup_id = crate::safe::current_cgroup_id();
    hdr.uid = uid_gid as u32;
    hdr.gid = (uid_gid >> 32) as u32;
    hdr.comm = bpf_get_current_comm().unwrap_or([0u8; 16]);
    hdr.job = job;
    hdr._pad = 0;
}

/// JOB_* flags of a job (0 when it has no policy). A daemon job whose tables the daemon has
/// not written yet is enforced with empty tables: everything denied (fail closed).
#[inline(always)]
pub fn job_flags(job: u32) -> u32 {
    match JOBS.value(&job) {
        Some(f) => f,
        None if job & JOB_DAEMON_BIT != 0 => JOB_ENFORCE,
        None => 0,
    }
}

/// Daemon mode (0: off): unwatched processes are scanned at exec for job variables.
#[inline(always)]
pub fn daemon_mode() -> u64 {
    CONFIG.get(CFG_DAEMON).copied().unwrap_or(0)
}

/// A daemon job that has no tables yet (its processes are stopped at exec).
#[inline(always)]
pub fn job_unknown(job: u32) -> bool {
    job & JOB_DAEMON_BIT != 0 && !JOBS.contains(&job)
}

/// `watcher run --bench-disable streams` (the benchmark only): streams are not scanned.
#[inline(always)]
pub fn bench_no_streams() -> bool {
    CONFIG.get(watcher_common::CFG_BENCH_NO_STREAMS).copied().unwrap_or(0) != 0
}

/// The agent died while its programs stayed attached: its jobs fail closed.
#[inline(always)]
pub fn agent_gone() -> bool {
    CONFIG.get(CFG_AGENT_GONE).copied().unwrap_or(0) != 0
}

/// SIGKILL to the current process (tracing programs only). It dies before returning to user
/// space, so it cannot use what the syscall in progress gives it.
#[inline(always)]
pub fn kill_current() {
    crate::safe::signal_current(9);
}
