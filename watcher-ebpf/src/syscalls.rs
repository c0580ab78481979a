//! The syscall dispatch layer: one raw tracepoint program on `sys_enter` instead of one
//! tracepoint program per syscall entry. It runs on every syscall of the machine and picks the
//! handler by number; everything else returns at once. Detaching a raw tracepoint does not wait
//! for the RCU grace periods that every perf-event tracepoint's close waits for, one after the
//! other (most of the stop before). The price, measured on a 2 vCPU Linux 6.18 guest with
//! `dd bs=1` (2M syscalls): ~20 ns more per syscall of the machine than the per-syscall
//! tracepoints (which also hook every syscall, then test a bitmap); a second program on
//! `sys_exit` doubled that, so the two exits watcher needs (execve, execveat) stay per-syscall
//! tracepoints; `raw_syscalls` perf tracepoints cost ~50 ns per syscall.
//!
//! A handler gets the syscall's arguments in the per-syscall tracepoints' record layout
//! (`long id` @8, arguments @16, 24, ...), copied from `pt_regs`
//! into a record on the stack, so it reads the offsets of its tracepoint's format file. A
//! handler that tail-calls also gets the program's own context (tail calls need it).
//!
//! Adding a syscall: its number below, one arm in `sys_enter` calling the
//! handler, `fn handler(args: TracePointContext) -> u32` marked `#[inline(always)]` in the
//! sensor's own file. Nothing changes in userspace.
//!
//! Numbers are x86_64's (arch/x86/entry/syscalls/syscall_64.tbl); the agent refuses to load on
//! another architecture. A 32-bit (compat) syscall has other numbers: as with the per-syscall
//! tracepoints, it is not dispatched at all (TS_COMPAT in `thread_info.status`).
use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use watcher_common::CFG_OFF_TASK_STATUS;

use crate::{exec, files, guard, maps::CONFIG};

pub const NR_OPEN: i64 = 2;
pub const NR_SOCKET: i64 = 41;
pub const NR_CONNECT: i64 = 42;
pub const NR_CLONE: i64 = 56;
pub const NR_FORK: i64 = 57;
pub const NR_VFORK: i64 = 58;
pub const NR_EXECVE: i64 = 59;
pub const NR_EXIT: i64 = 60;
pub const NR_CREAT: i64 = 85;
pub const NR_PTRACE: i64 = 101;
pub const NR_UMOUNT2: i64 = 166;
pub const NR_EXIT_GROUP: i64 = 231;
pub const NR_OPENAT: i64 = 257;
pub const NR_PROCESS_VM_READV: i64 = 310;
pub const NR_BPF: i64 = 321;
pub const NR_EXECVEAT: i64 = 322;
pub const NR_CLONE3: i64 = 435;
pub const NR_OPENAT2: i64 = 437;

/// x86's TS_COMPAT: the current syscall is a 32-bit one (int 0x80, sysenter, a 32-bit program).
const TS_COMPAT: u32 = 0x0002;

/// x86_64 `struct pt_regs`: where the syscall number and arguments are (di, si, dx, r10, r8, r9).
const REGS_ARGS: [usize; 6] = [112, 104, 96, 56, 72, 64];

/// A per-syscall tracepoint record: 8 bytes of common fields, the id, six arguments.
type Record = [u64; 8];

#[inline(always)]
fn reg(regs: *const u8, off: usize) -> u64 {
    crate::safe::kernel(regs.wrapping_add(off).cast::<u64>()).unwrap_or(0)
}

/// Calls `$h` with the syscall's arguments unless the syscall is a compat one. A macro, not a
/// generic function: each arm must be a direct call inlined into the program (a handler left
/// as a BPF-to-BPF call adds its stack frame to the program's, past the verifier's 512 bytes,
/// and LLVM stops inlining once `dispatch` has two instances).
macro_rules! on {
    ($prog:expr, $id:expr, $h:path) => {{
        if compat() {
            0
        } else {
            let regs: *const u8 = $prog.arg::<*const u8>(0);
            let mut rec: Record = [0; 8];
            rec[1] = $id as u64;
            for (i, off) in REGS_ARGS.iter().enumerate() {
                rec[2 + i] = reg(regs, *off);
            }
            $h(TracePointContext::new(rec.as_mut_ptr().cast()))
        }
    }};
}

/// execve(filename, argv, envp) and execveat(dirfd, filename, argv, envp, flags): the three
/// pointers are read in each arm, then one exec handler runs for both. The arms meet with the
/// same kind of state (three unknown scalars), so the verifier prunes the second arm at the
/// join instead of walking the whole handler twice.
#[inline(always)]
fn on_exec<const LOOP: bool>(prog: &RawTracePointContext, id: i64) -> u32 {
    if compat() {
        return 0;
    }
    let regs: *const u8 = prog.arg::<*const u8>(0);
    let args = if id == NR_EXECVEAT {
        [reg(regs, REGS_ARGS[1]), reg(regs, REGS_ARGS[2]), reg(regs, REGS_ARGS[3])]
    } else {
        [reg(regs, REGS_ARGS[0]), reg(regs, REGS_ARGS[1]), reg(regs, REGS_ARGS[2])]
    };
    exec::exec_enter::<LOOP>(prog, args[0] as *const u8, args[1] as *const *const u8, args[2]);
    0
}

/// The syscall's first three arguments (None for a compat syscall).
#[inline(always)]
fn args(prog: &RawTracePointContext) -> Option<[u64; 3]> {
    if compat() {
        return None;
    }
    let regs: *const u8 = prog.arg::<*const u8>(0);
    Some([reg(regs, REGS_ARGS[0]), reg(regs, REGS_ARGS[1]), reg(regs, REGS_ARGS[2])])
}

#[inline(always)]
fn compat() -> bool {
    // `thread_info` is the first member of `task_struct` on x86; the offset of its `status`
    // comes from the kernel's BTF (0: unknown, every syscall is taken as native).
    let off = CONFIG.get(CFG_OFF_TASK_STATUS).copied().unwrap_or(0);
    if off == 0 {
        return false;
    }
    let task = crate::safe::current_task();
    let status: u32 = crate::safe::kernel(task.wrapping_add(off as usize).cast()).unwrap_or(0);
    status & TS_COMPAT != 0
}

/// sys_enter(struct pt_regs *regs, long id).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    dispatch::<true>(&ctx)
}

/// [`sys_enter`] with bounded loops, for kernels without bpf_loop (see `safe::repeat`).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter_bounded(ctx: RawTracePointContext) -> i32 {
    dispatch::<false>(&ctx)
}

#[inline(always)]
fn dispatch<const LOOP: bool>(p: &RawTracePointContext) -> i32 {
    let id: i64 = p.arg(1);
    (match id {
        NR_EXECVE | NR_EXECVEAT => on_exec::<LOOP>(p, id),
        NR_CLONE => on!(p, id, exec::sys_enter_clone),
        NR_CLONE3 => on!(p, id, exec::sys_enter_clone3),
        NR_FORK => on!(p, id, exec::sys_enter_fork),
        NR_VFORK => on!(p, id, exec::sys_enter_vfork),
        NR_EXIT => on!(p, id, exec::sys_enter_exit),
        NR_EXIT_GROUP => on!(p, id, exec::sys_enter_exit_group),
        NR_SOCKET => on!(p, id, guard::sys_enter_socket),
        NR_CONNECT => on!(p, id, guard::sys_enter_connect),
        NR_BPF => on!(p, id, guard::sys_enter_bpf),
        NR_UMOUNT2 => on!(p, id, guard::sys_enter_umount),
        NR_PTRACE => on!(p, id, guard::sys_enter_ptrace),
        NR_OPENAT | NR_OPENAT2 | NR_OPEN | NR_CREAT => {
            let kind = match id {
                NR_OPENAT => files::OpenCall::At,
                NR_OPENAT2 => files::OpenCall::At2,
                NR_OPEN => files::OpenCall::Plain,
                _ => files::OpenCall::Creat,
            };
            args(p).map_or(0, |a| files::sys_enter_open(kind, a))
        }
        NR_PROCESS_VM_READV => on!(p, id, files::sys_enter_process_vm_readv),
        _ => 0,
    }) as i32
}

/// sched_process_exit(task, group_dead): the process sensor's exit record, then the guard's
/// check for the agent's own exit; one raw tracepoint (its detach does not wait for an RCU
/// grace period, as a perf-event tracepoint's does) instead of two perf-event tracepoints.
/// Kernels whose tracepoint has no `group_dead` get `sched_process_exit_tp` instead.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    let group_dead = ctx.arg::<u64>(1) & 0xff != 0;
    exec::sched_process_exit(group_dead);
    guard::agent_exit(group_dead) as i32
}

/// The perf-event tracepoint sched/sched_process_exit (group_dead @32), where the raw one
/// cannot be used.
#[tracepoint]
pub fn sched_process_exit_tp(ctx: TracePointContext) -> u32 {
    let group_dead = crate::safe::field::<u8>(&ctx, 32).unwrap_or(0) != 0;
    exec::sched_process_exit(group_dead);
    guard::agent_exit(group_dead)
}
