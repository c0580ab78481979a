//! Safe accessors for what the programs do unsafely: map lookups, reads of user and kernel
//! memory, tracepoint fields, per-CPU scratch space, ring-buffer slots and signals. Each one
//! says why it is sound; the other modules call these instead of writing `unsafe` themselves
//! (the few that remain elsewhere carry their own SAFETY comment). All `#[inline(always)]`: the
//! verifier sees the same instructions as before.
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf, bpf_probe_read_user,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_task, bpf_get_socket_cookie, bpf_ktime_get_boot_ns,
            bpf_probe_read_user_str, bpf_send_signal,
        },
    },
    maps::{HashMap, LruHashMap, PerCpuArray, ProgramArray, ring_buf::RingBufEntry},
    programs::TracePointContext,
};

/// Lookups that copy the value out. A map value may be updated (or the entry deleted) by
/// userspace or another CPU while a program holds a reference to it: copying it at once keeps
/// no reference alive, and every value type here is plain data (integers and byte arrays),
/// valid for any bit pattern, so even a torn read is a valid value.
pub trait Lookup<K, V: Copy> {
    fn value(&self, key: &K) -> Option<V>;
    #[inline(always)]
    fn contains(&self, key: &K) -> bool {
        self.value(key).is_some()
    }
}

impl<K, V: Copy> Lookup<K, V> for HashMap<K, V> {
    #[inline(always)]
    fn value(&self, key: &K) -> Option<V> {
        // SAFETY: see the trait: the reference is dropped before this returns.
        unsafe { self.get(key) }.copied()
    }
}

impl<K, V: Copy> Lookup<K, V> for LruHashMap<K, V> {
    #[inline(always)]
    fn value(&self, key: &K) -> Option<V> {
        // SAFETY: see the trait: the reference is dropped before this returns.
        unsafe { self.get(key) }.copied()
    }
}

/// The entry of `key` to update in place, for maps where each entry has one writer at a time
/// (keyed by the current thread or process: an exec in progress, a process's own watch entry).
/// Another CPU can only reach it for the same key, which the kernel serialises per task.
#[inline(always)]
pub fn entry_mut<K, V>(map: &HashMap<K, V>, key: &K) -> Option<&'static mut V> {
    let p = map.get_ptr_mut(key)?;
    // SAFETY: a non-null pointer to a live map value (the map is static, the value stays
    // allocated while the program runs: deletion is RCU-deferred); one writer, see above.
    Some(unsafe { &mut *p })
}

/// Slot 0 of a per-CPU scratch array. BPF programs are not preempted by another program on
/// the same CPU in the contexts these run in, and each program takes the slot once per run,
/// so the reference is exclusive while it lives.
#[inline(always)]
// The map is a static shared by every run; the slot is this CPU's, exclusive as said above.
#[allow(clippy::mut_from_ref)]
pub fn scratch<T>(map: &'static PerCpuArray<T>) -> Option<&'static mut T> {
    let p = map.get_ptr_mut(0)?;
    // SAFETY: see above; the pointer is to this CPU's slot, valid for the program's run.
    Some(unsafe { &mut *p })
}

/// A reserved ring-buffer slot, to fill before `submit`. The record types are plain data
/// (every bit pattern valid), and the caller writes every field it submits.
#[inline(always)]
pub fn slot<T>(entry: &mut RingBufEntry<T>) -> &mut T {
    // SAFETY: the slot is reserved for us alone until submit/discard, sized and aligned for T.
    unsafe { &mut *entry.as_mut_ptr() }
}

/// A field of a per-syscall or sched tracepoint's record at `offset` (from the event's format
/// file). A wrong offset reads wrong data; the read itself cannot fault (bpf_probe_read).
#[inline(always)]
pub fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> Result<T, i32> {
    // SAFETY: read_at is bpf_probe_read_kernel of the record; T is plain data.
    unsafe { ctx.read_at(offset) }
}

/// A value of user memory. bpf_probe_read_user fails (it never faults) on a bad address, and
/// T is plain data (integers, pointers), valid for any bit pattern.
#[inline(always)]
pub fn user<T: Copy>(src: *const T) -> Result<T, i32> {
    // SAFETY: see above.
    unsafe { bpf_probe_read_user(src) }
}

/// A value of kernel memory, as [`user`].
#[inline(always)]
pub fn kernel<T: Copy>(src: *const T) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel never faults; T is plain data.
    unsafe { bpf_probe_read_kernel(src) }
}

/// Kernel bytes at `src` into `dst` (all of it).
#[inline(always)]
pub fn kernel_bytes(src: *const u8, dst: &mut [u8]) -> Result<(), i32> {
    // SAFETY: writes exactly dst.len() bytes into dst; the read never faults.
    unsafe { bpf_probe_read_kernel_buf(src, dst) }
}

/// A NUL-terminated user string into `buf[at..at + max]`; returns its length with the NUL,
/// or a negative error (also when the range is not inside `buf`). Callers mask `at` so the
/// verifier knows the bound too.
#[inline(always)]
pub fn user_str(buf: &mut [u8], at: usize, max: u32, src: *const u8) -> i64 {
    if at > buf.len() || buf.len() - at < max as usize {
        return -1;
    }
    // SAFETY: the destination range is inside buf (checked above); the read never faults.
    unsafe { bpf_probe_read_user_str(buf.as_mut_ptr().wrapping_add(at).cast(), max, src.cast()) }
}

/// [`user_str`] for kernel memory (bpf_probe_read_kernel_str).
#[inline(always)]
pub fn kernel_str(buf: &mut [u8], max: u32, src: *const u8) -> i64 {
    if buf.len() < max as usize {
        return -1;
    }
    // SAFETY: the destination range is inside buf (checked above); the read never faults.
    unsafe { aya_ebpf::helpers::generated::bpf_probe_read_kernel_str(buf.as_mut_ptr().cast(), max, src.cast()) }
}

/// Continue in program `index` of `progs` (no return on success; on failure, such as the
/// tail-call limit, the caller goes on).
#[inline(always)]
pub fn tail_call<C: EbpfContext>(progs: &ProgramArray, ctx: &C, index: u32) {
    // SAFETY: a tail call replaces this program with another of the same type on the same
    // context; it never returns into the caller's frame on success.
    unsafe { progs.tail_call(ctx, index) }
}

/// `step(0, ctx)`, `step(1, ctx)`, ... `step(n - 1, ctx)`, until one returns 1. `ctx` (on the
/// caller's stack) carries the loop's state; `step` returns 0 to go on, 1 to stop.
///
/// With `LOOP` (kernels >= 5.17), by bpf_loop: the verifier checks `step` once, not once per
/// iteration as it does a bounded loop, so a scan of a 1 KiB segment costs it a few hundred
/// instructions instead of 70k (most of the start's verification). Without (older kernels: the
/// loader picks each program's `_bounded` twin), a bounded loop into which `step` is inlined.
#[inline(always)]
pub fn repeat<const LOOP: bool, T>(n: u32, ctx: &mut T, step: extern "C" fn(u64, &mut T) -> i64) {
    if LOOP {
        // SAFETY: bpf_loop calls `step` (a static BPF function, checked by the verifier as a
        // callback) at most n times, each time with the pointer given here, which is `ctx`:
        // valid, exclusive and of type T for the whole call.
        unsafe { aya_ebpf::helpers::generated::bpf_loop(n, step as *mut core::ffi::c_void, (ctx as *mut T).cast(), 0) };
        return;
    }
    let mut i = 0;
    while i < n {
        if step(i as u64, ctx) != 0 {
            break;
        }
        i += 1;
    }
}

/// Signal `sig` to the current process (tracing programs only).
#[inline(always)]
pub fn signal_current(sig: u32) {
    // SAFETY: bpf_send_signal only signals the current task; no memory is touched.
    unsafe { bpf_send_signal(sig) };
}

#[inline(always)]
pub fn boot_ns() -> u64 {
    // SAFETY: no arguments, no memory touched.
    unsafe { bpf_ktime_get_boot_ns() }
}

#[inline(always)]
pub fn current_cgroup_id() -> u64 {
    // SAFETY: no arguments, no memory touched.
    unsafe { bpf_get_current_cgroup_id() }
}

/// The current task_struct, as an address to read with [`kernel`] only.
#[inline(always)]
pub fn current_task() -> *const u8 {
    // SAFETY: no arguments; the result is only ever read through bpf_probe_read_kernel.
    unsafe { bpf_get_current_task() as *const u8 }
}

/// The socket cookie of a program's context (skb, sock, sock_addr): the kernel checks the
/// context type at load.
#[inline(always)]
pub fn socket_cookie<C: EbpfContext>(ctx: &C) -> u64 {
    // SAFETY: the helper takes the program's own context pointer and only reads it.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// The owner entry of socket `sk` (a `struct bpf_sock *` the context gave, possibly null) in
/// `SOCK_OWNER`; with `create`, made (zeroed) when it has none. None for a null or request
/// socket, or when the kernel cannot allocate the entry.
#[inline(always)]
fn owner(sk: *mut aya_ebpf::bindings::bpf_sock, create: bool) -> Option<&'static mut watcher_common::SockOwner> {
    if sk.is_null() {
        return None;
    }
    let flags = if create { aya_ebpf::bindings::BPF_SK_STORAGE_GET_F_CREATE as u64 } else { 0 };
    let map = core::ptr::addr_of!(crate::maps::SOCK_OWNER).cast_mut().cast();
    // SAFETY: the map is socket storage of SockOwner values; the helper checks the socket
    // pointer (the verifier: that it came from the context) and returns null or a pointer to
    // this socket's entry, valid for the program's run.
    let p = unsafe { aya_ebpf::helpers::generated::bpf_sk_storage_get(map, sk.cast(), core::ptr::null_mut(), flags) };
    // SAFETY: null or a valid, aligned SockOwner (see above).
    unsafe { p.cast::<watcher_common::SockOwner>().as_mut() }
}

/// The owner of the socket of a packet program's skb, copied out (None: not a job's socket,
/// or no socket).
#[inline(always)]
pub fn skb_owner(ctx: &aya_ebpf::programs::SkBuffContext) -> Option<watcher_common::SockOwner> {
    let skb = aya_ebpf::EbpfContext::as_ptr(ctx).cast::<aya_ebpf::bindings::__sk_buff>();
    // SAFETY: the kernel passes a valid __sk_buff for the program's whole run; `sk` is one of
    // its fields (the verifier rewrites the read).
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    owner(sk, false).map(|o| *o)
}

/// Record `o` as the owner of socket `sk` (see [`owner`]); false, counted, when the kernel
/// cannot allocate the entry: the caller then refuses the socket (it would send unjudged).
#[inline(always)]
pub fn set_owner(sk: *mut aya_ebpf::bindings::bpf_sock, o: &watcher_common::SockOwner) -> bool {
    match owner(sk, true) {
        Some(e) => {
            *e = *o;
            true
        }
        None => {
            crate::common::count(watcher_common::Counter::SockOwnerFull);
            false
        }
    }
}

/// The socket a cgroup sock_addr program judges.
#[inline(always)]
pub fn addr_sock(ctx: &aya_ebpf::programs::SockAddrContext) -> *mut aya_ebpf::bindings::bpf_sock {
    // SAFETY: the union's `sk` member is the socket (the kernel's context field).
    unsafe { sock_addr(ctx).__bindgen_anon_1.sk }
}

/// `v` read back from memory: the verifier then sees a fresh value, with no range refined
/// from earlier branches (which would split its state), and LLVM cannot fold it away.
#[inline(always)]
pub fn reread<T: Copy>(v: &T) -> T {
    // SAFETY: a reference is valid and aligned for reads.
    unsafe { core::ptr::read_volatile(v) }
}

/// `x` stored into `v` so that a later [`reread`] sees it (see there).
#[inline(always)]
pub fn park<T>(v: &mut T, x: T) {
    // SAFETY: a mutable reference is valid and aligned for writes.
    unsafe { core::ptr::write_volatile(v, x) }
}

/// `n` bytes of the packet at `off` into the start of `dst`; false when the packet is shorter
/// (or `n` exceeds `dst`). Callers mask `n` so the verifier knows the bound too.
#[inline(always)]
pub fn skb_load<C: EbpfContext>(ctx: &C, off: u32, dst: &mut [u8], n: u32) -> bool {
    if n as usize > dst.len() {
        return false;
    }
    // SAFETY: the helper writes at most n <= dst.len() bytes into dst and checks the packet
    // bounds itself; ctx is the program's own skb context.
    unsafe { aya_ebpf::helpers::generated::bpf_skb_load_bytes(ctx.as_ptr(), off, dst.as_mut_ptr().cast(), n) == 0 }
}

/// The socket address a cgroup sock_addr program judges.
#[inline(always)]
pub fn sock_addr(ctx: &aya_ebpf::programs::SockAddrContext) -> &aya_ebpf::bindings::bpf_sock_addr {
    // SAFETY: the kernel passes a valid bpf_sock_addr for the program's whole run.
    unsafe { &*ctx.sock_addr }
}

/// The socket a cgroup sock_create program judges.
#[inline(always)]
pub fn sock(ctx: &aya_ebpf::programs::SockContext) -> &aya_ebpf::bindings::bpf_sock {
    // SAFETY: the kernel passes a valid bpf_sock for the program's whole run.
    unsafe { &*ctx.sock }
}

/// The entry of `key` in an LRU map to update in place, where packets of one socket on two
/// CPUs can race on it: every field is a plain integer, so a race loses an update (the stream
/// state then counts a little off, within its bounds), never memory safety.
#[inline(always)]
pub fn shared_entry_mut<K, V>(map: &LruHashMap<K, V>, key: &K) -> Option<&'static mut V> {
    let p = map.get_ptr_mut(key)?;
    // SAFETY: a non-null pointer to a live map value (deletion is RCU-deferred past the
    // program's run); races see above.
    Some(unsafe { &mut *p })
}

/// The first `size` bytes of a plain-data record (`size` is capped at the record's size).
#[inline(always)]
pub fn record_bytes<T>(rec: &T, size: usize) -> &[u8] {
    let size = if size > core::mem::size_of::<T>() { core::mem::size_of::<T>() } else { size };
    // SAFETY: `size` bytes inside `*rec`, which is borrowed for the slice's lifetime; the
    // record types are repr(C) plain data whose padding is written explicitly.
    unsafe { core::slice::from_raw_parts((rec as *const T).cast::<u8>(), size) }
}
