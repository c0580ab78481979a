//! Process sensors: exec (filename + argv), fork (new processes, not threads) and exit.
//! Offsets come from /sys/kernel/tracing/events/{syscalls,sched}/*/format.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use watcher_common::{
    ARG_MAX_LEN, ARGS_LEN, CFG_OFF_BPRM_BUF, CFG_OFF_BPRM_FILE, CFG_OFF_BPRM_FILENAME, CFG_OFF_BPRM_INTERP,
    CFG_OFF_DENTRY_NAME, CFG_OFF_FILE_DENTRY, CFG_OFF_FILE_INODE, CFG_OFF_INODE_SIZE, CFG_OFF_TASK_TGID, Counter,
    DAEMON_LOG_ALL, ENV_ENTRY_MAX_LEN, ENV_FLAG_INSTALL, ENV_FLAG_JOB, ENV_LEN, ENV_NAME_LEN, ENV_SCAN_CHUNK,
    EXEC_ARGS_TRUNCATED, EXEC_DENY, EXEC_FILENAME_TRUNCATED, EXEC_HOLD_PENDING, EXEC_IS_SHELL, EXEC_JOB_START,
    EXEC_KILL_PENDING, EXEC_KILLED, EXEC_NAME_LEN, EXEC_SCRIPT, EXEC_SHELL, EXEC_SHELL_HELD, EXEC_STOP_PENDING,
    EXEC_STOPPED, EXEC_UNWATCHED, ExecKey, ExitRecord, FILENAME_LEN, ForkRecord, JOB_DAEMON_BIT, JOB_DENY_SHELLS,
    JOB_ENFORCE, JOB_NONE, MAX_ARGS, MAX_ENV_SCAN, PROC_INSTALL, ProcInfo, RecordKind, SHELL_SIG_BYTES, sig_step,
};

use crate::{
    common::{count, current_tgid, daemon_mode, fill_header, job_flags, job_unknown, watched_current},
    maps::{
        BASENAME_PARK, CLONE_FLAGS, CONFIG, ENV_BLOOM, ENV_CAPTURE, ENV_MARKERS, ENV_SCAN_PROG, EVENTS, EXEC_PENDING,
        EXEC_RULES, EXEC_SCRATCH, NEW_JOBS, SHELL_SIGS, WATCHED,
    },
    safe::Lookup as _,
};

const CLONE_THREAD: u64 = 0x0001_0000;

/// execve and execveat, called once for both by `syscalls::sys_enter` with the syscall's
/// `filename`, `argv` and `envp`; `prog` is the running program's own context (tail calls).
/// (One handler picking the ctx offsets by syscall number doubled the verifier's work:
/// 158k -> 275k instructions processed. Reading the pointers in each arm lets it prune.)
#[inline(always)]
pub fn exec_enter<const LOOP: bool>(
    prog: &RawTracePointContext,
    filename: *const u8,
    argv: *const *const u8,
    envp: u64,
) {
    // A failed exec of this thread left its record (a PATH search's ENOENT): this exec has a
    // new one, or none.
    let _ = EXEC_PENDING.remove(&(bpf_get_current_pid_tgid() as u32));
    // Daemon mode: an unwatched process is read as well, to see whether a job variable in its
    // environment makes it the first process of a job (finish_exec_enter decides).
    // A process in the no-job pseudo-job is looked at the same way.
    // The agent is gone (killed while its programs stay pinned): its jobs fail closed.
    if crate::common::agent_gone() && watched_current().is_some_and(|i| i.job != JOB_NONE) {
        crate::common::kill_current();
        return;
    }
    let (info, unwatched) = match watched_current() {
        Some(i) if i.job == JOB_NONE => (i, EXEC_UNWATCHED),
        Some(i) => (i, 0),
        None if daemon_mode() != 0 => (ProcInfo::default(), EXEC_UNWATCHED),
        None => return,
    };
    let Some(rec) = crate::safe::scratch(&EXEC_SCRATCH) else { return };
    fill_header(&mut rec.hdr, RecordKind::Exec, info.ppid, info.job);
    rec.ret = 0;
    rec.flags = unwatched;
    rec.argc = 0;
    rec.args_len = 0;

    let n = crate::safe::user_str(&mut rec.filename, 0, FILENAME_LEN as u32, filename);
    rec.filename_len = 0;
    if n <= 0 {
        rec.filename[0] = 0;
    } else {
        rec.filename_len = (n - 1) as u32;
        if n as usize >= FILENAME_LEN {
            rec.flags |= EXEC_FILENAME_TRUNCATED;
        }
    }

    enforce_exec(rec, &info);
    if !argv.is_null() {
        read_args::<LOOP>(argv);
    }
    rec.env_len = 0;
    rec.env_flags = 0;
    rec.env_idx = 0;
    rec.envp = envp;
    // Continue in exec_env_scan (tail calls); if that is impossible, keep what we have.
    if rec.envp != 0 {
        crate::safe::tail_call(&ENV_SCAN_PROG, prog, 0);
    }
    finish_exec_enter(rec);
}

#[inline(always)]
fn finish_exec_enter(rec: &mut watcher_common::ExecRecord) {
    if rec.flags & EXEC_UNWATCHED != 0 {
        // Daemon mode. With a job variable the process starts a new job here,
        // before its new program runs: its children inherit the job at fork.
        let tgid = current_tgid();
        if rec.env_flags & ENV_FLAG_JOB == 0 {
            // Not a job. With logging of no-job processes on, it goes in the pseudo-job
            // (children inherit it) and its exec is reported; else it is not ours.
            if daemon_mode() != DAEMON_LOG_ALL {
                return;
            }
            if rec.hdr.job != JOB_NONE {
                let info = ProcInfo { ppid: 0, job: JOB_NONE, exit_code: 0, code_known: 0, flags: 0, _pad: 0 };
                if WATCHED.insert(&tgid, &info, 0).is_err() {
                    count(Counter::WatchedFull);
                    return;
                }
                rec.hdr.job = JOB_NONE;
            }
            rec.flags &= !EXEC_UNWATCHED;
            let tid = bpf_get_current_pid_tgid() as u32;
            if EXEC_PENDING.insert(&tid, rec, 0).is_err() {
                count(Counter::ExecScratchFull);
            }
            return;
        }
        // Unique among live jobs as long as the first process's pid is not reused while the
        // job lives on (the daemon reports a clash).
        let job = JOB_DAEMON_BIT | (tgid & !JOB_DAEMON_BIT);
        let info = ProcInfo { ppid: 0, job, exit_code: 0, code_known: 0, flags: 0, _pad: 0 };
        if WATCHED.insert(&tgid, &info, 0).is_err() {
            count(Counter::WatchedFull);
            return;
        }
        rec.hdr.job = job;
        rec.flags = (rec.flags & !EXEC_UNWATCHED) | EXEC_JOB_START;
    }
    // A daemon job the daemon has not set up yet: stop the program when the exec succeeds.
    if job_unknown(rec.hdr.job) {
        rec.flags |= EXEC_STOP_PENDING;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    if EXEC_PENDING.insert(&tid, rec, 0).is_err() {
        count(Counter::ExecScratchFull);
    }
}

/// Enforce mode: decide at exec entry what happens when the exec succeeds
/// (sched_process_exec, before the program runs a single instruction): a denied basename is
/// killed; a shell started inside an install script is held (stopped) for the agent to judge
/// (the agent kills it or lets it run; see watcher/src/held.rs).
#[inline(always)]
fn enforce_exec(rec: &mut watcher_common::ExecRecord, info: &ProcInfo) {
    let flags = job_flags(info.job);
    if flags & JOB_ENFORCE == 0 || rec.flags & EXEC_UNWATCHED != 0 {
        return;
    }
    let Some(name) = basename_key(&rec.filename, rec.filename_len) else { return };
    judge_name(rec, info, name);
}

/// The exec rules for program `name` (a basename, NUL-padded), in an enforcing job.
#[inline(always)]
fn judge_name(rec: &mut watcher_common::ExecRecord, info: &ProcInfo, name: [u8; EXEC_NAME_LEN]) {
    let flags = job_flags(info.job);
    let key = ExecKey { job: info.job, name };
    let Some(rule) = EXEC_RULES.value(&key) else { return };
    if rule & EXEC_DENY != 0 {
        rec.flags |= EXEC_KILL_PENDING;
    } else if rule & EXEC_SHELL != 0 && info.flags & PROC_INSTALL != 0 && flags & JOB_DENY_SHELLS != 0 {
        rec.flags |= EXEC_HOLD_PENDING;
    }
}

/// Examines the environment's entries, a chunk per run, and tail-calls itself for the next
/// chunk; copies the entries whose names are in ENV_CAPTURE. Not attached: reached only by
/// tail call from sys_enter (execve, execveat). With bpf_loop a chunk is the whole scan
/// (MAX_ENV_SCAN entries, no further tail call); `exec_env_scan_bounded`, for kernels without
/// it, takes ENV_SCAN_CHUNK entries per run.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn exec_env_scan(ctx: RawTracePointContext) -> i32 {
    env_scan::<true>(&ctx)
}

/// [`exec_env_scan`] with bounded loops (see `safe::repeat`).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn exec_env_scan_bounded(ctx: RawTracePointContext) -> i32 {
    env_scan::<false>(&ctx)
}

#[inline(always)]
fn env_scan<const LOOP: bool>(ctx: &RawTracePointContext) -> i32 {
    let Some(rec) = crate::safe::scratch(&EXEC_SCRATCH) else { return 0 };
    let more = scan_env_chunk::<LOOP>(rec);
    if more && (rec.env_idx as usize) < MAX_ENV_SCAN {
        crate::safe::tail_call(&ENV_SCAN_PROG, ctx, 0);
    }
    finish_exec_enter(rec);
    0
}

/// What one step of [`scan_env_chunk`] hands the next: where the environment is, the index of
/// the chunk's first entry, how much of `ExecRecord::env` is filled, the flags found so far,
/// and whether the end (or an unreadable entry) was reached.
#[repr(C)]
struct EnvWalk {
    envp: u64,
    start: u64,
    off: u64,
    flags: u32,
    done: u32,
}

/// Returns true when entries remain.
#[inline(always)]
fn scan_env_chunk<const LOOP: bool>(rec: &mut watcher_common::ExecRecord) -> bool {
    let chunk = if LOOP { MAX_ENV_SCAN } else { ENV_SCAN_CHUNK };
    let start = rec.env_idx as u64;
    let mut w = EnvWalk { envp: rec.envp, start, off: rec.env_len as u64, flags: 0, done: 0 };
    crate::safe::repeat::<LOOP, _>(chunk as u32, &mut w, env_step);
    rec.env_flags |= w.flags;
    rec.env_len = w.off as u32;
    if w.done != 0 {
        return false;
    }
    rec.env_idx = (start + chunk as u64) as u32;
    true
}

/// Environment entry `start + i` of [`scan_env_chunk`]: 1 (stop) at the end of the
/// environment or an unreadable entry, else 0. It writes only `ExecRecord::env` (this CPU's
/// scratch record); everything else goes back through `w`.
#[inline(always)]
extern "C" fn env_step(i: u64, w: &mut EnvWalk) -> i64 {
    let Some(rec) = crate::safe::scratch(&EXEC_SCRATCH) else {
        w.done = 1;
        return 1;
    };
    let envp = w.envp as *const *const u8;
    let p: *const u8 = match crate::safe::user(envp.wrapping_add((w.start + i) as usize)) {
        Ok(p) if !p.is_null() => p,
        _ => {
            w.done = 1;
            return 1;
        }
    };
    // The prefilter: an entry whose name cannot be captured costs this 8-byte read. One that
    // cannot be read as 8 bytes (a short entry at the end of a mapping) takes the full path.
    if let Ok(raw) = crate::safe::user(p as *const u64) {
        let bit = watcher_common::env_bloom_bit(watcher_common::env_entry_prefix(raw));
        let word = ENV_BLOOM.get(bit >> 6).copied().unwrap_or(!0);
        if (word >> (bit & 63)) & 1 == 0 {
            return 0;
        }
    }
    let mut key = [0u8; ENV_NAME_LEN];
    let n = crate::safe::user_str(&mut key, 0, ENV_NAME_LEN as u32, p);
    if n <= 0 {
        return 0;
    }
    let whole = key;
    // Keep the name only: zero from '=' on, without branches (a branch per byte would
    // multiply the verifier's states). A name longer than the key never matches.
    let mut seen: u8 = 0;
    for b in key.iter_mut() {
        let x = (*b ^ b'=') as u32;
        seen |= (x.wrapping_sub(1) >> 31) as u8;
        *b &= seen.wrapping_sub(1);
    }
    if seen == 0 {
        return 0;
    }
    let Some(flags) = ENV_CAPTURE.value(&key) else { return 0 };
    w.flags |= flags;
    // A short entry may be a marker as a whole ("npm_lifecycle_event=postinstall"). Every
    // marker's name is captured (`sensor::CAPTURED_ENV`, checked by a unit test), so the
    // entries whose names are not (nearly all) cost one lookup, not two.
    if (n as usize) <= ENV_NAME_LEN
        && let Some(m) = ENV_MARKERS.value(&whole)
    {
        w.flags |= m;
    }
    let off = w.off as usize;
    let at = off & (ENV_LEN * 2 - 1);
    if off > ENV_LEN || at > ENV_LEN {
        return 0;
    }
    let m = crate::safe::user_str(&mut rec.env, at, ENV_ENTRY_MAX_LEN as u32, p);
    if m > 0 {
        w.off = (off + m as usize) as u64;
    }
    0
}

/// The arguments, NUL-separated into `ExecRecord::args` of this CPU's scratch record (whose
/// `argc` and `args_len` start at 0).
#[inline(always)]
fn read_args<const LOOP: bool>(argv: *const *const u8) {
    let mut argv = argv as u64;
    crate::safe::repeat::<LOOP, _>(MAX_ARGS as u32, &mut argv, arg_step);
    let Some(rec) = crate::safe::scratch(&EXEC_SCRATCH) else { return };
    if rec.argc as usize == MAX_ARGS {
        // There may be more arguments than we read.
        let more: *const u8 =
            crate::safe::user((argv as *const *const u8).wrapping_add(MAX_ARGS)).unwrap_or(core::ptr::null());
        if !more.is_null() {
            rec.flags |= EXEC_ARGS_TRUNCATED;
        }
    }
}

/// Argument `i` of [`read_args`]: 1 (stop) after the last one, else 0. The running counts are
/// the record's `argc` and `args_len`, in map memory, not on the stack: the verifier tracks no
/// range for a value it loads from there, so every step looks the same to it and bpf_loop's
/// callback is checked a few times, not once per argument. A read of at most ARG_MAX_LEN bytes
/// starts at an offset <= ARGS_LEN, so it fits in ARGS_BUF_LEN; the verifier sees the mask
/// and the check.
#[inline(always)]
extern "C" fn arg_step(i: u64, argv: &mut u64) -> i64 {
    let Some(rec) = crate::safe::scratch(&EXEC_SCRATCH) else { return 1 };
    let p: *const u8 = match crate::safe::user((*argv as *const *const u8).wrapping_add(i as usize)) {
        Ok(p) if !p.is_null() => p,
        _ => return 1,
    };
    let off = rec.args_len as usize;
    let at = off & (ARGS_LEN * 2 - 1);
    if off > ARGS_LEN || at > ARGS_LEN {
        rec.flags |= EXEC_ARGS_TRUNCATED;
        return 1;
    }
    let n = crate::safe::user_str(&mut rec.args, at, ARG_MAX_LEN as u32, p);
    if n <= 0 {
        return 1;
    }
    if n as usize >= ARG_MAX_LEN {
        rec.flags |= EXEC_ARGS_TRUNCATED;
    }
    rec.args_len = (off + n as usize) as u32;
    rec.argc += 1;
    0
}

/// The exec succeeded (sched_process_exec, after the decisions of exec entry were carried out):
/// the record is completed and sent. `old_tid` keyed it at exec entry; a non-leader thread that
/// exec'd has become the leader since. A failed exec sends nothing (a PATH search's ENOENT is not
/// an event): its record is dropped at the thread's next exec or exit. No program on the
/// syscall's exit (a perf-event tracepoint's detach waits for an RCU grace period).
#[inline(always)]
fn exec_done(rec: &mut watcher_common::ExecRecord, old_tid: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    rec.ret = 0;
    // After a successful exec the comm is the new program's.
    rec.hdr.comm = bpf_get_current_comm().unwrap_or(rec.hdr.comm);
    rec.hdr.pid = (pid_tgid >> 32) as u32;
    rec.hdr.tid = pid_tgid as u32;
    // The process that starts an install script (npm's `sh -c`, a cargo build script):
    // from now on it and its children are inside the script.
    let starts_script = rec.env_flags & ENV_FLAG_INSTALL != 0 || is_build_script(&rec.filename, rec.filename_len);
    if starts_script {
        let tgid = (pid_tgid >> 32) as u32;
        if let Some(info) = crate::safe::entry_mut(&WATCHED, &tgid) {
            info.flags |= PROC_INSTALL;
        }
    }
    if EVENTS.output(rec, 0).is_err() {
        count(Counter::RingbufFullExec);
    }
    let _ = EXEC_PENDING.remove(&old_tid);
}

/// The basename (after the last '/') as a NUL-padded key; None when it is longer than a key
/// (then no rule can match it). Scans back from the end at most EXEC_NAME_LEN bytes, which
/// keeps the verifier's work small.
#[inline(always)]
fn basename_key(filename: &[u8; FILENAME_LEN], len: u32) -> Option<[u8; EXEC_NAME_LEN]> {
    let len = (len as usize) & (FILENAME_LEN - 1);
    let mut start = usize::MAX;
    for j in 0..EXEC_NAME_LEN {
        if j >= len {
            start = 0;
            break;
        }
        let i = len - 1 - j;
        if filename[i & (FILENAME_LEN - 1)] == b'/' {
            start = i + 1;
            break;
        }
    }
    if start == usize::MAX {
        return None;
    }
    // The scan above leaves by one of EXEC_NAME_LEN + 1 exits, each with its own exact `start`;
    // carried on in a register, the copy below would be checked once per exit (115k of the
    // 140k instructions the verifier processed for sys_enter). Parked in map memory and read
    // back, `start` and `len` are plain values: the exits meet in one state, checked once.
    let park = crate::safe::scratch(&BASENAME_PARK)?;
    crate::safe::park(&mut park[0], start as u32);
    crate::safe::park(&mut park[1], len as u32);
    let start = crate::safe::reread(&park[0]) as usize & (FILENAME_LEN - 1);
    let len = crate::safe::reread(&park[1]) as usize & (FILENAME_LEN - 1);
    let mut key = [0u8; EXEC_NAME_LEN];
    for j in 0..EXEC_NAME_LEN - 1 {
        if start + j >= len {
            break;
        }
        key[j] = filename[(start + j) & (FILENAME_LEN - 1)];
    }
    Some(key)
}

/// cargo build scripts: `.../build/<crate>-<hash>/build-script-*`.
#[inline(always)]
fn is_build_script(filename: &[u8; FILENAME_LEN], len: u32) -> bool {
    const PREFIX: &[u8; 13] = b"build-script-";
    let Some(key) = basename_key(filename, len) else { return false };
    for j in 0..PREFIX.len() {
        if key[j] != PREFIX[j] {
            return false;
        }
    }
    true
}

// clone flags, so sched_process_fork can tell processes from threads.
/// Called by `syscalls::sys_enter` (the ctx has the per-syscall tracepoint's layout).
#[inline(always)]
pub fn sys_enter_clone(ctx: TracePointContext) -> u32 {
    let flags: u64 = crate::safe::field(&ctx, 16).unwrap_or(CLONE_THREAD);
    note_clone(flags);
    0
}

/// Called by `syscalls::sys_enter` (the ctx has the per-syscall tracepoint's layout).
#[inline(always)]
pub fn sys_enter_clone3(ctx: TracePointContext) -> u32 {
    // struct clone_args starts with `u64 flags`.
    let uargs: *const u64 = crate::safe::field(&ctx, 16).unwrap_or(core::ptr::null());
    let flags = crate::safe::user(uargs).unwrap_or(CLONE_THREAD);
    note_clone(flags);
    0
}

/// Called by `syscalls::sys_enter` (the ctx has the per-syscall tracepoint's layout).
#[inline(always)]
pub fn sys_enter_fork(_ctx: TracePointContext) -> u32 {
    note_clone(0);
    0
}

/// Called by `syscalls::sys_enter` (the ctx has the per-syscall tracepoint's layout).
#[inline(always)]
pub fn sys_enter_vfork(_ctx: TracePointContext) -> u32 {
    note_clone(0);
    0
}

#[inline(always)]
fn note_clone(flags: u64) {
    let tgid = current_tgid();
    if !WATCHED.contains(&tgid) {
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = CLONE_FLAGS.insert(&tid, &flags, 0);
}

/// sched_process_fork(parent, child), a raw tracepoint (its detach does not wait for an RCU
/// grace period as a perf-event tracepoint's does). Runs in the parent. The child's pid is its
/// `tgid` (a new process, not a thread: threads are left out first), at the BTF offset in
/// CONFIG; without BTF the agent attaches `sched_process_fork_tp` instead.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let child: *const u8 = ctx.arg(1);
    let off = CONFIG.get(CFG_OFF_TASK_TGID).copied().unwrap_or(0) as usize;
    if off == 0 {
        return 0;
    }
    on_fork(|| crate::safe::kernel(child.wrapping_add(off).cast::<i32>()).unwrap_or(0));
    0
}

/// The perf-event tracepoint sched/sched_process_fork (child_pid @20), for kernels without BTF.
#[tracepoint]
pub fn sched_process_fork_tp(ctx: TracePointContext) -> u32 {
    on_fork(|| crate::safe::field(&ctx, 20).unwrap_or(0));
    0
}

/// A fork in the current (parent) process; `child` reads the child's pid.
#[inline(always)]
fn on_fork(child: impl FnOnce() -> i32) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let flags = match CLONE_FLAGS.value(&tid) {
        Some(f) => f,
        // No clone syscall in flight: a kernel-created thread (io_uring worker, ...).
        None => return,
    };
    let _ = CLONE_FLAGS.remove(&tid);
    if flags & CLONE_THREAD != 0 {
        return;
    }
    let Some(info) = watched_current() else { return };
    if crate::common::agent_gone() && info.job != JOB_NONE {
        crate::common::kill_current();
    }
    let child = child();
    if child <= 0 {
        return;
    }
    let child = child as u32;
    let parent = current_tgid();
    let child_info = ProcInfo { ppid: parent, job: info.job, exit_code: 0, code_known: 0, flags: info.flags, _pad: 0 };
    if WATCHED.insert(&child, &child_info, 0).is_err() {
        count(Counter::WatchedFull);
    }
    match EVENTS.reserve::<ForkRecord>(0) {
        Some(mut entry) => {
            let rec = crate::safe::slot(&mut entry);
            fill_header(&mut rec.hdr, RecordKind::Fork, info.ppid, info.job);
            rec.child_pid = child;
            rec._pad = 0;
            entry.submit(0);
        }
        None => count(Counter::RingbufFullFork),
    }
}

// sched_process_exit(task, group_dead). Runs in the exiting task (each thread). Called by
// `syscalls::sched_process_exit{,_tp}`, which also run the guard's `agent_exit` (one attachment).
#[inline(always)]
pub fn sched_process_exit(group_dead: bool) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    let _ = CLONE_FLAGS.remove(&tid);
    // The record of a failed exec of this thread, if any.
    let _ = EXEC_PENDING.remove(&tid);
    if !group_dead {
        return 0;
    }
    let Some(info) = WATCHED.value(&tgid) else { return 0 };
    match EVENTS.reserve::<ExitRecord>(0) {
        Some(mut entry) => {
            let rec = crate::safe::slot(&mut entry);
            fill_header(&mut rec.hdr, RecordKind::Exit, info.ppid, info.job);
            rec.exit_code = info.exit_code;
            rec.code_known = info.code_known;
            entry.submit(0);
        }
        None => count(Counter::RingbufFullExit),
    }
    let _ = WATCHED.remove(&tgid);
    0
}

// sys_enter_exit / sys_enter_exit_group: error_code @16.
/// Called by `syscalls::sys_enter` (the ctx has the per-syscall tracepoint's layout).
#[inline(always)]
pub fn sys_enter_exit_group(ctx: TracePointContext) -> u32 {
    note_exit_code(&ctx);
    0
}

/// Called by `syscalls::sys_enter` (the ctx has the per-syscall tracepoint's layout).
#[inline(always)]
pub fn sys_enter_exit(ctx: TracePointContext) -> u32 {
    note_exit_code(&ctx);
    0
}

#[inline(always)]
fn note_exit_code(ctx: &TracePointContext) {
    let tgid = current_tgid();
    if let Some(info) = crate::safe::entry_mut(&WATCHED, &tgid) {
        let code: i64 = crate::safe::field(ctx, 16).unwrap_or(0);
        info.exit_code = (code & 0xff) as i32;
        info.code_known = 1;
    }
}

/// At sched_process_exec the new program is loaded but has not run an instruction. A shell
/// copied under another name (or a script whose interpreter is a shell) is recognised here by
/// content: the executable's size and first bytes (bprm->buf) against the shells of this
/// machine (binaries only: a #! script interpreted by a shell is not counted). Struct offsets come from the kernel's BTF via CONFIG; without them this is off.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    let Some(info) = watched_current() else { return 0 };
    let off = |i: u32| CONFIG.get(i).copied().unwrap_or(0) as usize;
    let (o_file, o_buf, o_inode, o_size) =
        (off(CFG_OFF_BPRM_FILE), off(CFG_OFF_BPRM_BUF), off(CFG_OFF_FILE_INODE), off(CFG_OFF_INODE_SIZE));
    if o_file == 0 || o_buf == 0 || o_inode == 0 || o_size == 0 {
        return 0;
    }
    let bprm: *const u8 = ctx.arg(2);
    // A `#!` script: after binfmt_script, bprm->interp points elsewhere than bprm->filename,
    // and bprm->file/buf are the interpreter's (the ELF binary finally loaded). A script whose
    // interpreter is a shell is a shell run, whichever way its #! line names it
    // (`#!/bin/sh` here, `#!/usr/bin/env sh` as a second exec of sh): marked EXEC_SCRIPT so
    // the agent knows the script file is the filename.
    let (o_name, o_interp) = (off(CFG_OFF_BPRM_FILENAME), off(CFG_OFF_BPRM_INTERP));
    if o_name == 0 || o_interp == 0 {
        return 0;
    }
    let name: u64 = crate::safe::kernel(bprm.wrapping_add(o_name).cast::<u64>()).unwrap_or(0);
    let interp: u64 = crate::safe::kernel(bprm.wrapping_add(o_interp).cast::<u64>()).unwrap_or(1);
    let script = name != interp;
    let Ok(file) = crate::safe::kernel(bprm.wrapping_add(o_file).cast::<*const u8>()) else { return 0 };
    let Ok(inode) = crate::safe::kernel(file.wrapping_add(o_inode).cast::<*const u8>()) else {
        return 0;
    };
    let Ok(size) = crate::safe::kernel(inode.wrapping_add(o_size).cast::<u64>()) else { return 0 };
    let mut head = [0u8; SHELL_SIG_BYTES];
    if crate::safe::kernel_bytes(bprm.wrapping_add(o_buf), &mut head).is_err() {
        return 0;
    }
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in size.to_le_bytes() {
        h = sig_step(h, b);
    }
    for b in head {
        h = sig_step(h, b);
    }
    if !SHELL_SIGS.contains(&h) {
        return 0;
    }
    let old_tid: i32 = ctx.arg(1);
    let mut pending = crate::safe::entry_mut(&EXEC_PENDING, &(old_tid as u32));
    if let Some(rec) = &mut pending {
        rec.flags |= EXEC_IS_SHELL | if script { EXEC_SCRIPT } else { 0 };
    }
    let flags = job_flags(info.job);
    if flags & JOB_ENFORCE != 0 && flags & JOB_DENY_SHELLS != 0 && info.flags & PROC_INSTALL != 0 {
        // Held for the agent's judgement (fail closed: without a record it never runs).
        // Without an exec record to carry the flag the agent could not know it holds it:
        // kill then.
        match pending {
            Some(rec) => {
                crate::safe::signal_current(19);
                rec.flags |= EXEC_SHELL_HELD;
            }
            None => crate::safe::signal_current(9),
        }
    }
    0
}

/// An exec through a file descriptor (fexecve, `execveat(fd, "", AT_EMPTY_PATH)`) passed no
/// path: the program is named by its file's name (`bprm->file->f_path.dentry->d_name`, no
/// directory) and judged by the exec rules now, before its first instruction, as exec entry
/// judges a path. Without the offsets (no BTF) it stays unnamed.
#[inline(always)]
fn name_from_file(rec: &mut watcher_common::ExecRecord, bprm: *const u8) {
    let off = |i: u32| CONFIG.get(i).copied().unwrap_or(0) as usize;
    let (o_file, o_dentry, o_name) = (off(CFG_OFF_BPRM_FILE), off(CFG_OFF_FILE_DENTRY), off(CFG_OFF_DENTRY_NAME));
    if o_file == 0 || o_dentry == 0 || o_name == 0 {
        return;
    }
    let Ok(file) = crate::safe::kernel(bprm.wrapping_add(o_file).cast::<*const u8>()) else { return };
    let Ok(dentry) = crate::safe::kernel(file.wrapping_add(o_dentry).cast::<*const u8>()) else { return };
    let Ok(name) = crate::safe::kernel(dentry.wrapping_add(o_name).cast::<*const u8>()) else { return };
    let n = crate::safe::kernel_str(&mut rec.filename, FILENAME_LEN as u32, name);
    if n <= 1 {
        rec.filename[0] = 0;
        return;
    }
    let len = (n - 1) as usize;
    rec.filename_len = len as u32;
    // The name is a basename already: its key is its bytes, NUL-padded, taken from the one
    // read above without a branch per byte (no scan: the verifier's work stays small). One
    // longer than a key is named by no rule, as at exec entry.
    let Some(info) = watched_current() else { return };
    if job_flags(info.job) & JOB_ENFORCE == 0 || rec.flags & EXEC_UNWATCHED != 0 || len >= EXEC_NAME_LEN {
        return;
    }
    let mut key = [0u8; EXEC_NAME_LEN];
    for (j, k) in key.iter_mut().enumerate() {
        // 0xff while j < len, then 0.
        let keep = ((j as i64 - len as i64) >> 63) as u8;
        *k = rec.filename[j] & keep;
    }
    judge_name(rec, &info, key);
}

/// The exec succeeded and the new program is loaded; kill it now if exec entry decided so,
/// then send the exec record.
/// A raw tracepoint (its detach does not wait for an RCU grace period, as a perf-event
/// tracepoint's does): sched_process_exec(task, old_pid, bprm), old_pid = the thread id before exec.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec_kill(ctx: RawTracePointContext) -> i32 {
    let old_tid: i32 = ctx.arg(1);
    let Some(rec) = crate::safe::entry_mut(&EXEC_PENDING, &(old_tid as u32)) else { return 0 };
    if rec.filename_len == 0 {
        name_from_file(rec, ctx.arg(2));
    }
    let flags = rec.flags;
    if flags & EXEC_KILL_PENDING != 0 {
        crate::safe::signal_current(9);
        rec.flags |= EXEC_KILLED;
    } else if flags & EXEC_HOLD_PENDING != 0 && flags & EXEC_SHELL_HELD == 0 {
        // A shell in an install script, by name: held before its first instruction until
        // the agent has judged it (SIGKILL or SIGCONT).
        crate::safe::signal_current(19);
        rec.flags |= EXEC_SHELL_HELD;
    } else if flags & EXEC_STOP_PENDING != 0 {
        // Held before its first instruction until the daemon has written the job's tables
        // and sends SIGCONT (which also discards this stop if it comes first).
        crate::safe::signal_current(19);
        rec.flags |= EXEC_STOPPED;
        let _ = NEW_JOBS.insert(&rec.hdr.job, &current_tgid(), 0);
    }
    exec_done(rec, old_tid as u32);
    0
}
