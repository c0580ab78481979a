//! Every map the programs share with userspace.
//!
//! Hash maps only userspace writes (the policy's tables) are created with BPF_F_NO_PREALLOC:
//! the kernel then allocates an entry when userspace adds it, instead of every possible entry
//! when the map is created (the start paid ~5 ms and a few MiB of kernel memory for tables a
//! policy fills with a few dozen entries). Maps the programs insert into keep preallocation, so
//! an insert in a program never waits on, or fails for, an allocation.
use aya_ebpf::bindings::BPF_F_NO_PREALLOC;
use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use watcher_common::{
    CFG_LEN, DeputyKey, ENV_NAME_LEN, ExecKey, ExecRecord, GuardKey, JOB_ADDR_LEN, MAX_DEPUTIES, MAX_LABELS,
    MAX_WATCHED, NAME_WIRE_LEN, NUM_COUNTERS, NameKey, PortSet, ProcInfo, SockOwner,
};

/// Key of `UDP_SEEN`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpKey {
    pub pid: u32,
    pub port: u16,
    pub family: u16,
    pub addr: [u8; 16],
}

/// A parsed packet flow (packet programs).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Flow {
    pub family: u16,
    pub proto: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub payload_off: u32,
    /// Offset of the TCP/UDP header.
    pub l4_off: u32,
}

/// All records to userspace. Userspace may resize it before load (`--ringbuf-size`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Watched processes, keyed by tgid. A plain hash (not LRU) so nothing is evicted silently:
/// an insert that fails is counted in COUNTERS[Counter::WatchedFull].
#[map]
pub static WATCHED: HashMap<u32, ProcInfo> = HashMap::with_max_entries(MAX_WATCHED, 0);

/// Cgroup v2 ids whose every process is watched (the cgroup of `watcher run`), value = job id.
#[map]
pub static WATCHED_CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(1024, BPF_F_NO_PREALLOC);

/// clone flags of a thread's clone/clone3/fork/vfork in flight, keyed by tid, so that
/// sched_process_fork can tell a new process from a new thread.
#[map]
pub static CLONE_FLAGS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(8192, 0);

/// One scratch record per CPU to build an exec record (too big for the 512-byte stack).
#[map]
pub static EXEC_SCRATCH: PerCpuArray<ExecRecord> = PerCpuArray::with_max_entries(1, 0);

/// Where `exec::basename_key` parks the basename's start and the name's length (see there).
#[map]
pub static BASENAME_PARK: PerCpuArray<[u32; 2]> = PerCpuArray::with_max_entries(1, 0);

/// exec records between exec entry (sys_enter) and the exec's success (sched_process_exec),
/// keyed by the tid at entry. A failed exec's record stays until the thread's next exec or exit.
#[map]
pub static EXEC_PENDING: HashMap<u32, ExecRecord> = HashMap::with_max_entries(4096, 0);

/// Which watched process owns a socket: filled by sock_create and the connect/sendmsg hooks,
/// read by the packet programs, which run without process context on ingress. Socket-local
/// storage (see `safe::owner`): it lives exactly as long as its socket, so no number of other
/// sockets can push a socket's owner out (an LRU map keyed by cookie could be flooded until a
/// raw or ICMP socket's entry was evicted, and its packets then passed the backstop unjudged),
/// and a lookup is a pointer from the socket, not a hash.
#[btf_map]
pub static SOCK_OWNER: SkStorage<SockOwner> = SkStorage::new();

/// Per-CPU counters of what could not be delivered or tracked (indexed by `watcher_common::Counter`).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(NUM_COUNTERS, 0);

/// Unconnected UDP destinations already reported per process, so a chatty UDP sender does not
/// flood the ring buffer with the same destination. Value: unused.
#[map]
pub static UDP_SEEN: LruHashMap<UdpKey, u8> = LruHashMap::with_max_entries(8192, 0);

/// Environment variable names (NUL-padded) whose entries are copied into exec records, with
/// flags. Filled by userspace before anything is watched.
#[map]
pub static ENV_CAPTURE: HashMap<[u8; ENV_NAME_LEN], u32> = HashMap::with_max_entries(64, BPF_F_NO_PREALLOC);

/// The prefilter in front of ENV_CAPTURE (see `watcher_common::ENV_BLOOM_WORDS`). Filled by
/// userspace with ENV_CAPTURE.
#[map]
pub static ENV_BLOOM: Array<u64> = Array::with_max_entries(watcher_common::ENV_BLOOM_WORDS, 0);

/// Slot 0: exec_env_scan, which sys_enter_execve tail-calls to scan the environment in chunks.
#[map]
pub static ENV_SCAN_PROG: ProgramArray = ProgramArray::with_max_entries(1, 0);

// ---- Enforcement: the policy compiled by userspace (sensor::enforce). ----

/// Scalars: CONFIG[CFG_SEED] is the per-run seed of the DNS name hash.
#[map]
pub static CONFIG: Array<u64> = Array::with_max_entries(CFG_LEN, 0);

// Every enforcement table below is keyed by job as well, so jobs with different policies
// (daemon mode) are enforced independently; `watcher run` uses job 0.

/// [name hash, job] of an allowed exact name -> mask (bit i: host entry i; DNS_MASK_LOOKUP).
#[map]
pub static DNS_NAMES: HashMap<NameKey, u64> = HashMap::with_max_entries(16384, BPF_F_NO_PREALLOC);

/// [name hash of the suffix of an allowed `*.suffix` pattern, job] -> mask.
#[map]
pub static DNS_SUFFIXES: HashMap<NameKey, u64> = HashMap::with_max_entries(16384, BPF_F_NO_PREALLOC);

/// Job id -> JOB_* flags (enforce, deny shells).
#[map]
pub static JOBS: HashMap<u32, u32> = HashMap::with_max_entries(1024, BPF_F_NO_PREALLOC);

/// Allowed networks, keyed job_addr_key (job, then the address; IPv4 as IPv4-mapped IPv6, so
/// connect6 to ::ffff:a.b.c.d is judged the same as connect4 to a.b.c.d); prefix 32 + bits.
#[map]
pub static ALLOW_NET: LpmTrie<[u8; JOB_ADDR_LEN], PortSet> = LpmTrie::with_max_entries(16384, 0);

/// Allowed resolvers per job (any port 53 traffic to them is allowed).
#[map]
pub static RESOLVERS: HashMap<[u8; JOB_ADDR_LEN], u32> = HashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// Ports of host entry i of a job (key host_ports_key(job, i)).
#[map]
pub static HOST_PORTS: HashMap<u64, PortSet> = HashMap::with_max_entries(16384, BPF_F_NO_PREALLOC);

/// (job, address) an answer for an allowed name returned -> OR of the names' masks. Filled in
/// the kernel as the answer arrives (dns_ingress_learn), before the application can read it.
#[map]
pub static LEARNED: LruHashMap<[u8; JOB_ADDR_LEN], u64> = LruHashMap::with_max_entries(65536, 0);

/// (job, executable basename) -> EXEC_* flags.
#[map]
pub static EXEC_RULES: HashMap<ExecKey, u32> = HashMap::with_max_entries(16384, BPF_F_NO_PREALLOC);

/// Exact environment entries ("npm_lifecycle_event=postinstall") that mark an install script.
#[map]
pub static ENV_MARKERS: HashMap<[u8; ENV_NAME_LEN], u32> = HashMap::with_max_entries(64, BPF_F_NO_PREALLOC);

#[repr(C)]
pub struct NameScratch {
    pub buf: [u8; NAME_WIRE_LEN],
    pub starts: [u32; MAX_LABELS],
    /// hs[p]: hash of the name's bytes from p to its end (taken backwards).
    pub hs: [u64; NAME_WIRE_LEN],
    /// Values parked in map memory on purpose: the verifier does not track them, so the many
    /// exit states of the label loop merge, and LLVM cannot turn the masks into branches.
    pub end: u32,
    pub nlabels: u32,
    pub live: u64,
}

/// Per-CPU scratch to parse and hash a DNS name.
#[map]
pub static NAME_SCRATCH: PerCpuArray<NameScratch> = PerCpuArray::with_max_entries(1, 0);

/// A packet's parsed flow and owner, handed to the tail-called enforcement program.
#[repr(C)]
pub struct PacketScratch {
    pub flow: Flow,
    pub owner: SockOwner,
    /// Parse offset while walking an answer.
    pub off: u32,
    pub _pad: u32,
}

#[map]
pub static PACKET_SCRATCH: PerCpuArray<PacketScratch> = PerCpuArray::with_max_entries(1, 0);

/// Slot 0: dns_egress_enforce; slots 1-3: stream_first, stream_name, stream_capture (target.rs). (One array per attach type:
/// the kernel ties a program array to the attach type of the first program put in it.)
#[map]
pub static DNS_PROGS: ProgramArray = ProgramArray::with_max_entries(4, 0);

/// Forward proxies a job may use (keyed like ALLOW_NET): the target of every request sent to
/// one is judged (target.rs), not only the proxy's address.
#[map]
pub static PROXY_NET: LpmTrie<[u8; JOB_ADDR_LEN], PortSet> = LpmTrie::with_max_entries(1024, 0);

/// Slot 0: dns_ingress_learn.
#[map]
pub static DNS_INGRESS_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Signatures (shell_signature) of the shell binaries of this machine.
#[map]
pub static SHELL_SIGS: HashMap<u64, u32> = HashMap::with_max_entries(64, BPF_F_NO_PREALLOC);

/// Daemon mode: jobs whose first program the kernel stopped, job id -> pid, until the daemon
/// has set them up. Lets the daemon find a held job even when its exec record was lost.
#[map]
pub static NEW_JOBS: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// Verdicts of the packet backstop per (socket, destination), so each flow is judged (and
/// reported) once.
#[map]
pub static GUARD_SEEN: LruHashMap<GuardKey, u8> = LruHashMap::with_max_entries(65536, 0);

/// (job, local deputy's socket path): connecting to it from an install script is denied.
#[map]
pub static DEPUTIES: HashMap<DeputyKey, u32> = HashMap::with_max_entries(MAX_DEPUTIES, BPF_F_NO_PREALLOC);

/// Carries the ABI version (watcher_common::ABI_VERSION) as its size: the agent reads it from
/// the object before loading and refuses another version. Never used by a program.
#[map]
pub static ABI: Array<u32> = Array::with_max_entries(watcher_common::ABI_VERSION, 0);
