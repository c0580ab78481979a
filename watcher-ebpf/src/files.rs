//! The file sensor: install scripts that go after credentials or tamper with the build.
//!
//! Decided in the kernel at open entry, for processes inside an install script only
//! (`PROC_INSTALL`): the path the process passes is looked up in `FILE_RULES`, a longest-prefix
//! table per job that userspace fills at start (the credential stores under every home, the
//! project's protected paths, the policy's additions and exceptions). Only an open that matches
//! a rule reaches userspace; every other open costs one string copy and one lookup. In enforce
//! mode the process is killed (SIGKILL at open entry): it dies before the open returns to it,
//! so it never reads a byte. The open itself still runs (tracepoints cannot refuse a syscall):
//! O_CREAT creates an empty file, O_TRUNC truncates one (README "File sensor").
//!
//! `/proc/PID/environ`, `/proc/PID/mem` and `process_vm_readv` of a process outside the
//! script's tree (not itself, not an install-script process of its job) are credential access
//! too; `ptrace` is seen by guard.rs, which calls [`proc_access`].
//!
//! Limits (README "File sensor"): a relative path, or one relative to a directory fd, is not
//! resolved (only absolute paths are judged); `..`, `//` and symbolic links are not
//! normalised; opens through io_uring are not seen (no syscall runs).
//!
//! The handlers are plain functions of the syscall's arguments, so a dispatcher on
//! the `sys_enter` dispatcher (`syscalls.rs`) calls the handlers below.
use aya_ebpf::{
    helpers::{bpf_probe_read_user, generated::bpf_probe_read_user_str},
    macros::map,
    maps::{LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::TracePointContext,
};
use watcher_common::{
    CFG_FILES_OFF, Counter, FILE_CRED, FILE_KEY_LEN, FILE_KEY_PATH, FILE_KILL, FILE_OPEN, FILE_PATH_LEN, FILE_PROC,
    FILE_PROC_ENVIRON, FILE_PROC_MEM, FILE_TAMPER, FILE_VM_READV, FILE_WRITE, FileRecord, GUARD_KILLED, JOB_ENFORCE,
    MAX_FILE_RULES, PROC_INSTALL, ProcInfo, RecordKind,
};

use crate::{
    common::{count, current_tgid, fill_header, job_flags, kill_current, watched_current},
    maps::{CONFIG, EVENTS, WATCHED},
};

/// (job, path prefix) -> FILE_* flags. Filled by userspace (sensor::files).
#[map]
pub static FILE_RULES: LpmTrie<[u8; FILE_KEY_LEN], u32> = LpmTrie::with_max_entries(MAX_FILE_RULES, 0);

/// The lookup key of the open being judged (too big for the stack).
#[map]
pub static FILE_SCRATCH: PerCpuArray<Key<[u8; FILE_KEY_LEN]>> = PerCpuArray::with_max_entries(1, 0);

const O_WRONLY: u32 = 0o1;
const O_RDWR: u32 = 0o2;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;
const O_APPEND: u32 = 0o2000;
const WRITE_FLAGS: u32 = O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND;

#[inline(always)]
fn in_script() -> Option<ProcInfo> {
    if CONFIG.get(CFG_FILES_OFF).copied().unwrap_or(0) != 0 {
        return None;
    }
    let info = watched_current()?;
    (info.flags & PROC_INSTALL != 0).then_some(info)
}

#[inline(always)]
fn enforced(info: &ProcInfo) -> bool {
    job_flags(info.job) & JOB_ENFORCE != 0
}

/// Whether reading `target`'s environment or memory is reaching outside the script's tree:
/// not the process itself, not a process of the same job that is inside an install script.
#[inline(always)]
fn outside_tree(info: &ProcInfo, target: u32) -> bool {
    if target == 0 || target == current_tgid() {
        return false;
    }
    // SAFETY: copied out at once.
    match unsafe { WATCHED.get(&target) } {
        Some(t) => !(t.job == info.job && t.flags & PROC_INSTALL != 0),
        None => true,
    }
}

/// An open of `filename` with `flags` (openat, openat2, open, creat). `filename` is the user
/// pointer the syscall got.
#[inline(always)]
pub fn on_open(filename: *const u8, flags: u32) {
    let Some(info) = in_script() else { return };
    if filename.is_null() {
        return;
    }
    let Some(key) = FILE_SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's scratch slot; no other program on this CPU runs meanwhile.
    let key = unsafe { &mut *key };
    let job = info.job.to_be_bytes();
    key.data[0] = job[0];
    key.data[1] = job[1];
    key.data[2] = job[2];
    key.data[3] = job[3];
    // SAFETY: reads at most FILE_KEY_PATH bytes of user memory into the key.
    let n = unsafe {
        bpf_probe_read_user_str(key.data.as_mut_ptr().wrapping_add(4).cast(), FILE_KEY_PATH as u32, filename.cast())
    };
    // Relative paths are not resolved (see the module comment).
    if n <= 1 || key.data[4] != b'/' {
        return;
    }
    // n counts the NUL: an exact-file rule (which ends with its NUL) matches only the whole path.
    key.prefix_len = 32 + 8 * (n as u32 & 0x1ff);
    let Some(rule) = FILE_RULES.get(key).copied() else { return };
    let write = flags & WRITE_FLAGS != 0;
    let (what, target) = if rule & FILE_PROC != 0 {
        match proc_target(&key.data) {
            Some((what, target)) if outside_tree(&info, target) => (what, target),
            _ => return,
        }
    } else if rule & FILE_CRED != 0 || (rule & FILE_TAMPER != 0 && write) {
        (FILE_OPEN, 0)
    } else {
        return;
    };
    let mut out = if write { FILE_WRITE } else { 0 };
    let kill = enforced(&info) && (what != FILE_OPEN || rule & FILE_KILL != 0);
    if kill {
        kill_current();
        out |= GUARD_KILLED;
    }
    report(&info, what, rule, flags, target, out, Some((&key.data, (n as u32).saturating_sub(1))));
}

/// Report one file record, with the path from the lookup key (already copied from user
/// memory), if any.
#[inline(always)]
fn report(
    info: &ProcInfo,
    what: u32,
    rule: u32,
    open_flags: u32,
    target: u32,
    flags: u32,
    key: Option<(&[u8; FILE_KEY_LEN], u32)>,
) {
    let Some(mut entry) = EVENTS.reserve::<FileRecord>(0) else {
        count(Counter::RingbufFullGuard);
        return;
    };
    // SAFETY: a FileRecord-sized, writable ring-buffer slot.
    let rec = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut rec.hdr, RecordKind::File, info.ppid, info.job);
    rec.what = what;
    rec.rule = rule;
    rec.open_flags = open_flags;
    rec.target = target;
    rec.flags = flags;
    let mut len = 0;
    let mut i = 0;
    while i < FILE_PATH_LEN {
        rec.path[i] = 0;
        i += 1;
    }
    if let Some((data, n)) = key {
        // SAFETY: a kernel-to-kernel copy of FILE_KEY_PATH bytes from this CPU's scratch key into
        // the record (both sized for it).
        let ok = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                rec.path.as_mut_ptr().cast(),
                FILE_KEY_PATH as u32,
                data.as_ptr().wrapping_add(4).cast(),
            )
        } == 0;
        if ok {
            len = n.min(FILE_KEY_PATH as u32);
        }
    }
    rec.path_len = len;
    entry.submit(0);
}

/// `/proc/PID/environ` or `/proc/PID/mem` in a key (job, then the path): (what, PID). `self`,
/// `thread-self` and anything else give None.
#[inline(always)]
fn proc_target(data: &[u8; FILE_KEY_LEN]) -> Option<(u32, u32)> {
    // data[4..10] is "/proc/".
    let mut pid: u32 = 0;
    let mut end = 10;
    let mut i = 10;
    while i < 20 {
        let b = data[i];
        if !b.is_ascii_digit() {
            break;
        }
        pid = pid.wrapping_mul(10).wrapping_add((b - b'0') as u32);
        i += 1;
        end = i;
    }
    if end == 10 || end >= 20 {
        return None;
    }
    let tail = |s: &[u8]| {
        let mut k = 0;
        while k < s.len() {
            if data.get(end + k).copied() != Some(s[k]) {
                return false;
            }
            k += 1;
        }
        true
    };
    if tail(b"/environ\0") {
        Some((FILE_PROC_ENVIRON, pid))
    } else if tail(b"/mem\0") {
        Some((FILE_PROC_MEM, pid))
    } else {
        None
    }
}

/// Reading another process's memory (process_vm_readv) or tracing it (ptrace, from guard.rs):
/// credential access when the target is outside the script's tree. `arg` is the ptrace
/// request (0 for process_vm_readv). Returns whether it was reported.
#[inline(always)]
pub fn proc_access(what: u32, target: u32, arg: u32) -> bool {
    let Some(info) = in_script() else { return false };
    if !outside_tree(&info, target) {
        return false;
    }
    let mut flags = 0;
    if enforced(&info) {
        kill_current();
        flags |= GUARD_KILLED;
    }
    report(&info, what, 0, arg, target, flags, None);
    true
}

/// The open-like syscalls, told apart by `syscalls::sys_enter`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum OpenCall {
    /// openat(dfd, filename, flags)
    At,
    /// openat2(dfd, filename, how): struct open_how has the flags first (u64).
    At2,
    /// open(filename, flags)
    Plain,
    /// creat(pathname): open with O_CREAT|O_WRONLY|O_TRUNC.
    Creat,
}

/// An open-like syscall with its first three arguments `a`. Each kind picks its pathname and
/// flags, then one `on_open` runs for all four: the verifier walks it once, not four times.
#[inline(always)]
pub fn sys_enter_open(kind: OpenCall, a: [u64; 3]) -> u32 {
    let (name, flags) = match kind {
        OpenCall::At => (a[1], a[2] as u32),
        OpenCall::At2 => {
            let how = a[2];
            // SAFETY: a user pointer read with the probe helper (a fault gives an error).
            let flags: u64 = if how == 0 { 0 } else { unsafe { bpf_probe_read_user(how as *const u64) }.unwrap_or(0) };
            (a[1], flags as u32)
        }
        OpenCall::Plain => (a[0], a[1] as u32),
        OpenCall::Creat => (a[0], O_CREAT | O_WRONLY | O_TRUNC),
    };
    on_open(name as *const u8, flags);
    0
}

/// sys_enter_process_vm_readv: pid @16.
#[inline(always)]
pub fn sys_enter_process_vm_readv(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from the tracepoint's format file.
    let pid = unsafe { ctx.read_at::<u64>(16).unwrap_or(0) } as u32;
    proc_access(FILE_VM_READV, pid, 0);
    0
}
