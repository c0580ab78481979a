//! Records shared by the kernel programs (`watcher-ebpf`) and the agent (`watcher`).
//!
//! Every record that crosses the ring buffer starts with a [`Header`] whose `kind` is one of the
//! [`RecordKind`]s (`repr(u32)`, read back with `TryFrom<u32>`). All structs are `#[repr(C)]` with explicit padding and no `bool`, so the layout
//! is the same on both sides; the size assertions at the bottom keep it that way. Userspace
//! decodes by checking the length, reading the header with `read_unaligned`, then the body.
#![no_std]

/// Bumped whenever a record layout changes; the agent refuses programs of another version.
pub const ABI_VERSION: u32 = 5;
pub mod counters;
pub mod kinds;
pub mod maps;
/// The decoder of these layouts (userspace).
#[cfg(feature = "user")]
pub mod record;
#[cfg(feature = "user")]
extern crate std;
pub use kinds::RecordKind;

pub const COMM_LEN: usize = 16;
pub const FILENAME_LEN: usize = 256;
/// argv is copied as NUL-separated strings into this many bytes.
pub const ARGS_LEN: usize = 2048;
/// Each argument is read with at most this many bytes (the rest is truncated).
pub const ARG_MAX_LEN: usize = 512;
/// Room for one argument past ARGS_LEN so the verifier sees every write in bounds.
pub const ARGS_BUF_LEN: usize = ARGS_LEN + ARG_MAX_LEN;
/// At most this many arguments are read.
pub const MAX_ARGS: usize = 32;
/// Selected environment entries ("NAME=value", NUL-separated) captured at exec: only names
/// in the `ENV_CAPTURE` map (package-manager context such as `npm_package_name`, CI job ids),
/// never the whole environment.
pub const ENV_LEN: usize = 512;
/// Each captured entry is read with at most this many bytes.
pub const ENV_ENTRY_MAX_LEN: usize = 128;
/// The buffer has room for one entry past ENV_LEN so the verifier sees every write in bounds.
pub const ENV_BUF_LEN: usize = ENV_LEN + ENV_ENTRY_MAX_LEN;
/// Environment entries examined per exec: ENV_SCAN_CHUNK per program run, chained by tail
/// calls (each run is verified separately, which keeps the verifier's work small).
pub const ENV_SCAN_CHUNK: usize = 16;
pub const MAX_ENV_SCAN: usize = 512;
/// Key of the `ENV_CAPTURE` map: a variable name, NUL-padded.
pub const ENV_NAME_LEN: usize = 32;
/// The environment scan's prefilter, `ENV_BLOOM`: a set of 64 * ENV_BLOOM_WORDS bits with the
/// bit [`env_bloom_bit`] of every `ENV_CAPTURE` name's [`env_name_prefix`] set. An entry whose
/// bit is clear names no captured variable: it costs one 8-byte read, not a 32-byte string
/// read and a hash lookup. A set bit only sends the entry on to the lookup (no false negative:
/// the kernel computes the same prefix from the entry's first 8 bytes).
pub const ENV_BLOOM_WORDS: u32 = 16;

/// The bit of [`ENV_BLOOM_WORDS`] * 64 a name prefix selects (Fibonacci hashing: the top bits
/// of one multiplication).
#[inline(always)]
pub fn env_bloom_bit(prefix: u64) -> u32 {
    (prefix.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as u32
}

/// A variable name's prefix as the kernel reads it from an entry: the name's first 8 bytes,
/// zero-padded when it is shorter, little-endian.
pub fn env_name_prefix(name: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = name.len().min(8);
    b[..n].copy_from_slice(&name[..n]);
    u64::from_le_bytes(b)
}

/// The prefix of the entry whose first 8 bytes, read little-endian, are `raw`: every byte from
/// the first '=' on is zeroed (branch-free, for the verifier).
#[inline(always)]
pub fn env_entry_prefix(raw: u64) -> u64 {
    let mut seen = 0u64;
    let mut x = raw;
    let mut i = 0;
    while i < 8 {
        let b = (raw >> (i * 8)) & 0xff;
        seen |= (b ^ b'=' as u64).wrapping_sub(1) >> 63;
        x &= !((seen * 0xff) << (i * 8));
        i += 1;
    }
    x
}
/// `ENV_CAPTURE` value flags.
pub const ENV_FLAG_CAPTURE: u32 = 1;
/// `ENV_MARKERS` value flag: this exact entry (e.g. `npm_lifecycle_event=postinstall`) means
/// the process starts an install script.
pub const ENV_FLAG_INSTALL: u32 = 2;
/// `ENV_CAPTURE` value flag (daemon mode): this variable names a CI job; an unwatched process
/// whose exec environment carries it starts a new job.
pub const ENV_FLAG_JOB: u32 = 4;

/// `ProcInfo::flags`: the process runs inside an install script (inherited by its children).
pub const PROC_INSTALL: u32 = 1;

/// `EXEC_RULES` value flags, keyed by executable basename (NUL-padded to EXEC_NAME_LEN).
pub const EXEC_DENY: u32 = 1;
/// A shell: killed when started from inside an install script (enforce mode).
pub const EXEC_SHELL: u32 = 2;
pub const EXEC_NAME_LEN: usize = 32;

/// `JOBS` value flags.
pub const JOB_ENFORCE: u32 = 1;
/// Shells spawned from install scripts are killed (policy `shells: deny`).
pub const JOB_DENY_SHELLS: u32 = 2;
/// Job ids the kernel creates in daemon mode have this bit set (`watcher run` uses 0). A
/// daemon job with no `JOBS` entry yet is treated as enforce mode with empty tables: fail
/// closed until the daemon has written its policy.
pub const JOB_DAEMON_BIT: u32 = 0x8000_0000;
/// Daemon mode with logging of processes of no job (CONFIG[CFG_DAEMON] == DAEMON_LOG_ALL):
/// the pseudo-job every other process that execs is put in. Never enforced (the daemon writes
/// its JOBS entry, flags 0, before turning this on), and a process in it that execs with a job
/// variable still starts a job.
pub const JOB_NONE: u32 = 0xffff_ffff;
/// CONFIG[CFG_DAEMON] values.
pub const DAEMON_ON: u64 = 1;
pub const DAEMON_LOG_ALL: u64 = 2;

pub use maps::{DeputyKey, ExecKey, GuardKey, JOB_ADDR_LEN, NameKey, host_ports_key, job_addr_key};

/// Port ranges of one allow entry; `count == 0` means any port.
pub const MAX_PORT_RANGES: usize = 8;
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSet {
    pub count: u32,
    pub _pad: u32,
    /// `lo << 16 | hi`, inclusive.
    pub ranges: [u32; MAX_PORT_RANGES],
}

impl PortSet {
    #[inline(always)]
    pub fn contains(&self, port: u16) -> bool {
        if self.count == 0 {
            return true;
        }
        let p = port as u32;
        let mut i = 0;
        while i < MAX_PORT_RANGES {
            if (i as u32) < self.count {
                let r = self.ranges[i];
                if p >= (r >> 16) && p <= (r & 0xffff) {
                    return true;
                }
            }
            i += 1;
        }
        false
    }
}

/// Allowed host entries are numbered 0..MAX_HOST_ENTRIES; a DNS name's mask has bit i set
/// when entry i allows it, and DNS_MASK_LOOKUP when it may be looked up at all.
pub const MAX_HOST_ENTRIES: u32 = 63;
pub const DNS_MASK_LOOKUP: u64 = 1 << 63;
/// Longest DNS name in wire form.
pub const NAME_WIRE_LEN: usize = 256;
/// Most labels examined in a name.
pub const MAX_LABELS: usize = 32;

pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// One step of the name hash, shared by kernel and user space so both compute the same value:
/// FNV-1a over the lowercased wire-form bytes of a name suffix, taken from the end backwards,
/// starting from a per-run random seed (so a hostile name cannot be built to collide).
///
/// Lowercasing is arithmetic, not a comparison: BPF has no set-on-condition instruction, so a
/// comparison per byte becomes a branch per byte in the kernel program.
#[inline(always)]
pub fn name_hash_step(h: u64, b: u8) -> u64 {
    let x = b as u64;
    let ge_a = ((x + 0x100 - b'A' as u64) >> 8) & 1; // x >= 'A'
    let le_z = ((b'Z' as u64 + 0x100 - x) >> 8) & 1; // x <= 'Z'
    let lower = x | ((ge_a & le_z) << 5);
    (h ^ lower).wrapping_mul(FNV_PRIME)
}

/// Hash of a dotted name (`a.example.com`, no trailing dot needed) in wire form: what the
/// kernel computes for the suffix starting at that name's first label.
pub fn name_hash(seed: u64, name: &str) -> Option<u64> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut wire = [0u8; NAME_WIRE_LEN];
    let mut n = 0;
    if !name.is_empty() {
        for label in name.split('.') {
            let l = label.len();
            if l == 0 || l > 63 || n + l + 2 > NAME_WIRE_LEN {
                return None;
            }
            wire[n] = l as u8;
            wire[n + 1..n + 1 + l].copy_from_slice(label.as_bytes());
            n += l + 1;
        }
    }
    wire[n] = 0;
    n += 1;
    let mut h = seed;
    let mut i = n;
    while i > 0 {
        i -= 1;
        h = name_hash_step(h, wire[i]);
    }
    Some(h)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn hash_step_lowercases_exactly_ascii_letters() {
        for b in 0..=255u8 {
            let want = if b.is_ascii_uppercase() { b + 32 } else { b };
            assert_eq!(name_hash_step(7, b), name_hash_step(7, want), "byte {b}");
            if !b.is_ascii_uppercase() {
                assert_eq!(name_hash_step(7, b), (7u64 ^ b as u64).wrapping_mul(FNV_PRIME), "byte {b}");
            }
        }
    }

    /// The first 8 bytes of an entry, as the kernel reads them (what follows a short string
    /// in memory is whatever is there: here 0xAA).
    fn raw(entry: &[u8]) -> u64 {
        let mut b = [0xAAu8; 8];
        let n = entry.len().min(8);
        b[..n].copy_from_slice(&entry[..n]);
        u64::from_le_bytes(b)
    }

    #[test]
    fn an_entry_of_a_name_has_that_names_prefix() {
        for (name, value) in [
            ("A", "1"),
            ("WDS", "1234509"),
            ("CI_JOB", ""),
            ("CI_JOBID", "7"),
            ("CI_JOB_ID", "12345"),
            ("npm_lifecycle_event", "postinstall"),
            ("X", "a=b=c"),
        ] {
            let entry = std::format!("{name}={value}\0");
            assert_eq!(env_entry_prefix(raw(entry.as_bytes())), env_name_prefix(name.as_bytes()), "{entry:?}");
        }
        // Different names of one 8-byte prefix share it (the lookup tells them apart).
        assert_eq!(env_name_prefix(b"npm_package_name"), env_name_prefix(b"npm_package_json"));
        assert_ne!(env_name_prefix(b"CI_JOB"), env_name_prefix(b"CI_JOB_ID"));
        assert!(env_bloom_bit(u64::MAX) < ENV_BLOOM_WORDS * 64 && env_bloom_bit(0) < ENV_BLOOM_WORDS * 64);
    }
}

/// Indexes of the `CONFIG` array.
pub const CFG_SEED: u32 = 0;
/// Byte offsets in kernel structs, from the kernel's BTF (0 = unknown: feature off).
pub const CFG_OFF_BPRM_FILE: u32 = 1;
pub const CFG_OFF_BPRM_BUF: u32 = 2;
pub const CFG_OFF_FILE_INODE: u32 = 3;
pub const CFG_OFF_INODE_SIZE: u32 = 4;
pub const CFG_OFF_BPRM_FILENAME: u32 = 5;
pub const CFG_OFF_BPRM_INTERP: u32 = 6;
/// Non-zero in daemon mode: unwatched processes are scanned at exec for job variables.
pub const CFG_DAEMON: u32 = 7;
/// The agent's process id: signals to it from a watched process are tampering, and its exit
/// (group dead) sets CFG_AGENT_GONE.
pub const CFG_AGENT_PID: u32 = 8;
/// Non-zero once the agent has died while its programs stay attached (pinned): every watched
/// process is then denied all network and killed at its next exec, fork, socket or connect.
pub const CFG_AGENT_GONE: u32 = 9;
/// `task_struct.tgid` offset, from the kernel's BTF (0: signals to the agent are recognised by
/// the target pid only).
pub const CFG_OFF_TASK_TGID: u32 = 10;
/// Offset of `thread_info.status` in `task_struct` (x86), from the kernel's BTF: the syscall
/// dispatcher leaves 32-bit syscalls alone (0: unknown, every syscall is taken as native).
pub const CFG_OFF_TASK_STATUS: u32 = 11;
/// Non-zero only under `watcher run --bench-disable streams` (the benchmark's hidden flag, set
/// from argv, never from the step's environment): TCP streams are neither judged by their first
/// segment nor captured for secret search. Measures what stream scanning costs.
pub const CFG_BENCH_NO_STREAMS: u32 = 12;
/// Non-zero: the file sensor is off (`SensorConfig::file_sensor`, for the bench's side-by-side
/// comparison only; nothing a step can reach sets it).
pub const CFG_FILES_OFF: u32 = 13;
/// `file.f_path.dentry` and `dentry.d_name.name` offsets, from the kernel's BTF: an exec through
/// a file descriptor (fexecve, `execveat(fd, "", AT_EMPTY_PATH)`) passes no path, so the
/// program is named by its file's name, read from `bprm->file` (0: unknown, left unnamed).
pub const CFG_OFF_FILE_DENTRY: u32 = 14;
pub const CFG_OFF_DENTRY_NAME: u32 = 15;
pub const CFG_LEN: u32 = 16;

/// DNS payload bytes captured per packet.
pub const DNS_PAYLOAD_LEN: usize = 1024;

/// Maximum number of watched processes tracked in the kernel at once.
pub const MAX_WATCHED: u32 = 65536;

/// Most local-deputy socket paths (all jobs together).
pub const MAX_DEPUTIES: u32 = 1024;

/// Common to every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Header {
    pub kind: u32,
    /// Process id (thread-group id) of the task that caused the record.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Parent process id as the watcher knows it (the parent at fork time).
    pub ppid: u32,
    /// `bpf_ktime_get_boot_ns()` at the event.
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub uid: u32,
    pub gid: u32,
    pub comm: [u8; COMM_LEN],
    /// The job the process belongs to (`ProcInfo::job`): 0 for `watcher run`, a
    /// JOB_DAEMON_BIT id for a job the daemon recognised.
    pub job: u32,
    pub _pad: u32,
}

/// Flags in [`ExecRecord::flags`].
pub const EXEC_ARGS_TRUNCATED: u32 = 1;
pub const EXEC_FILENAME_TRUNCATED: u32 = 2;
/// The kernel sent SIGKILL at exec entry (enforce mode).
pub const EXEC_KILLED: u32 = 4;
/// The executable loaded is a shell by content (size and first bytes match a shell binary of
/// this machine), whatever its name.
pub const EXEC_IS_SHELL: u32 = 8;

/// Enforce mode decided at exec entry that this program must not run: it is killed when the
/// exec succeeds (sched_process_exec), before its first instruction. Failed attempts of a PATH
/// search are not killed, so the log names the program that would really have run.
pub const EXEC_KILL_PENDING: u32 = 16;
/// Daemon mode: this exec made an unwatched process the first of a new job (a job variable
/// was in its environment); the record's `hdr.job` is the new job's id.
pub const EXEC_JOB_START: u32 = 32;
/// Daemon mode, decided at exec entry: the job has no tables yet, stop the new program at
/// sched_process_exec (before its first instruction) until the daemon continues it.
pub const EXEC_STOP_PENDING: u32 = 64;
/// The kernel sent SIGSTOP at exec (see EXEC_STOP_PENDING): the daemon must write the job's
/// tables and then send SIGCONT.
pub const EXEC_STOPPED: u32 = 128;
/// Kernel-internal: the exec entry of a process that is not (yet) watched, scanned only for
/// job variables (daemon mode).
pub const EXEC_UNWATCHED: u32 = 256;
/// Enforce mode, decided at exec entry: a shell started inside an install script; it is
/// held (SIGSTOP at sched_process_exec, before its first instruction) for the agent to judge.
pub const EXEC_HOLD_PENDING: u32 = 512;
/// The kernel sent SIGSTOP to this shell (see EXEC_HOLD_PENDING): the agent reads its facts
/// while it is held, then sends SIGKILL or SIGCONT. A held shell nobody judges never runs.
pub const EXEC_SHELL_HELD: u32 = 1024;
/// The executable is a `#!` script whose interpreter is a shell binary (by content).
pub const EXEC_SCRIPT: u32 = 2048;

/// Bytes of an executable's start that, with its size, identify it as a known shell.
pub const SHELL_SIG_BYTES: usize = 64;

/// Signature of an executable for shell recognition: FNV-1a over its size (8 bytes, little
/// endian) and its first SHELL_SIG_BYTES bytes. Computed the same way in the kernel.
#[inline(always)]
pub fn sig_step(h: u64, b: u8) -> u64 {
    (h ^ b as u64).wrapping_mul(FNV_PRIME)
}

pub fn shell_signature(size: u64, head: &[u8; SHELL_SIG_BYTES]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in size.to_le_bytes() {
        h = sig_step(h, b);
    }
    for b in head {
        h = sig_step(h, *b);
    }
    h
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecRecord {
    pub hdr: Header,
    /// Return value of execve (0 on success, -errno on failure).
    pub ret: i32,
    pub flags: u32,
    pub argc: u32,
    /// Bytes used in `args`.
    pub args_len: u32,
    /// Bytes used in `env`.
    pub env_len: u32,
    /// OR of the `ENV_CAPTURE` flags of the captured entries.
    pub env_flags: u32,
    /// Kernel-internal scan state: the user pointer to envp and the next index to examine.
    pub envp: u64,
    pub env_idx: u32,
    /// Length of `filename` without its NUL.
    pub filename_len: u32,
    pub filename: [u8; FILENAME_LEN],
    pub args: [u8; ARGS_BUF_LEN],
    pub env: [u8; ENV_BUF_LEN],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ForkRecord {
    pub hdr: Header,
    pub child_pid: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitRecord {
    pub hdr: Header,
    /// The status passed to exit/exit_group, when `code_known` is 1. A process killed by a
    /// signal never calls them; then `code_known` is 0.
    pub exit_code: i32,
    pub code_known: u32,
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// `ConnectRecord::op`
pub const OP_CONNECT: u8 = 1;
/// An unconnected UDP send (sendto/sendmsg with an address).
pub const OP_SENDMSG: u8 = 2;
/// A packet the packet backstop (cgroup_skb egress) judged: a socket kind the socket-address
/// hooks do not see (ICMP, raw IP, SCTP), or traffic after the agent died.
pub const OP_PACKET: u8 = 3;

pub const VERDICT_ALLOW: u8 = 1;
pub const VERDICT_DENY: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectRecord {
    pub hdr: Header,
    /// IPv4 addresses use the first 4 bytes; network byte order.
    pub daddr: [u8; 16],
    pub family: u16,
    /// Host byte order.
    pub dport: u16,
    pub proto: u8,
    pub op: u8,
    pub verdict: u8,
    pub _pad: u8,
}

/// `DnsPacketRecord::direction`
pub const DIR_EGRESS: u8 = 1;
pub const DIR_INGRESS: u8 = 2;

/// A DNS packet (query leaving or answer arriving) seen by the cgroup_skb programs.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DnsPacketRecord {
    pub hdr: Header,
    /// Source and destination addresses, network byte order; IPv4 in the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub direction: u8,
    /// Length of the DNS payload on the wire (TCP: after the 2-byte length prefix is *not*
    /// stripped; the agent strips it).
    pub payload_len: u32,
    /// How many bytes of `payload` are valid.
    pub captured_len: u32,
    pub verdict: u8,
    pub _pad: [u8; 7],
    pub payload: [u8; DNS_PAYLOAD_LEN],
}

/// First bytes captured of the first data packet a watched socket sends (not port 53), so the
/// agent can look for secret values in plaintext leaving the machine.
pub const PAYLOAD_LEN: usize = 512;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PayloadRecord {
    pub hdr: Header,
    pub daddr: [u8; 16],
    pub family: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
    pub payload_len: u32,
    pub captured_len: u32,
    pub _pad2: u32,
    pub payload: [u8; PAYLOAD_LEN],
}

/// Value of the `WATCHED` map: one entry per watched process (keyed by tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcInfo {
    pub ppid: u32,
    /// Which job (run or daemon job) the process belongs to; 0 for `watcher run`.
    pub job: u32,
    /// Set by exit/exit_group: the status the process asked for.
    pub exit_code: i32,
    pub code_known: u32,
    /// PROC_* flags, inherited through fork.
    pub flags: u32,
    pub _pad: u32,
}

/// Value of the `SOCK_OWNER` map (keyed by socket cookie): which process uses a socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockOwner {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub job: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

pub use counters::{Counter, NUM_COUNTERS};

pub const AF_UNIX: u16 = 1;
pub const AF_PACKET: u16 = 17;
pub const SOCK_STREAM: u32 = 1;
pub const SOCK_DGRAM: u32 = 2;
pub const SOCK_RAW: u32 = 3;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_SCTP: u8 = 132;
pub const PROTO_ICMPV6: u8 = 58;

/// `SocketRecord::flags`, `TamperRecord::flags`, `UnixConnectRecord::flags`: the kernel sent
/// SIGKILL to the process (enforce mode).
pub const GUARD_KILLED: u32 = 1;
/// The kernel refused the operation itself (socket creation failed with EPERM).
pub const GUARD_DENIED: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SocketRecord {
    pub hdr: Header,
    pub family: u32,
    /// SOCK_* type without the SOCK_NONBLOCK/SOCK_CLOEXEC flags.
    pub sock_type: u32,
    pub protocol: u32,
    pub flags: u32,
}

/// `TamperRecord::what`
pub const TAMPER_SIGNAL: u32 = 1;
pub const TAMPER_BPF: u32 = 2;
pub const TAMPER_MOUNT: u32 = 3;
pub const TAMPER_PTRACE: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TamperRecord {
    pub hdr: Header,
    pub what: u32,
    /// The signal number, bpf command, ptrace request or mount flags.
    pub arg: u32,
    /// The target process (signal, ptrace), else 0.
    pub target: u32,
    pub flags: u32,
}

/// Bytes of a unix socket address's path (sun_path).
pub const UNIX_PATH_LEN: usize = 108;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct UnixConnectRecord {
    pub hdr: Header,
    pub flags: u32,
    /// Bytes of `path` that are valid (an abstract name starts with a NUL byte).
    pub path_len: u32,
    pub path: [u8; UNIX_PATH_LEN],
    pub _pad: [u8; 4],
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: plain-old-data, repr(C), explicit padding, every bit pattern valid.
    unsafe impl aya::Pod for ProcInfo {}
    unsafe impl aya::Pod for SockOwner {}
    unsafe impl aya::Pod for PortSet {}
    unsafe impl aya::Pod for ExecKey {}
    unsafe impl aya::Pod for crate::maps::DeputyKey {}
}

const _: () = {
    assert!(core::mem::size_of::<Header>() == 64);
    assert!(core::mem::size_of::<ExecRecord>() == 64 + 40 + FILENAME_LEN + ARGS_BUF_LEN + ENV_BUF_LEN);
    assert!(core::mem::size_of::<ForkRecord>() == 72);
    assert!(core::mem::size_of::<ExitRecord>() == 72);
    assert!(core::mem::size_of::<ConnectRecord>() == 64 + 24);
    assert!(core::mem::size_of::<DnsPacketRecord>() == 120 + DNS_PAYLOAD_LEN);
    assert!(core::mem::size_of::<ProcInfo>() == 24);
    assert!(core::mem::size_of::<PayloadRecord>() == 64 + 40 + PAYLOAD_LEN);
    assert!(core::mem::size_of::<ExecKey>() == 4 + EXEC_NAME_LEN);
    assert!(core::mem::size_of::<SockOwner>() == 40);
    assert!(core::mem::size_of::<PortSet>() == 40);
    assert!(core::mem::size_of::<SocketRecord>() == 80);
    assert!(core::mem::size_of::<TamperRecord>() == 80);
    assert!(core::mem::size_of::<UnixConnectRecord>() == 64 + 8 + UNIX_PATH_LEN + 4);
};

// ---- Whole-stream capture for secret detection (watcher-ebpf/src/payload.rs) ----

/// A chunk of the data a watched socket sends (not port 53): TCP in stream order from the
/// first data byte (retransmitted bytes are not sent twice), UDP datagram by datagram.
/// (10: main took 7, 8 and 9 for Socket, Tamper and UnixConnect.)
/// Data bytes per chunk record, at most.
pub const STREAM_CHUNK_LEN: usize = 4096;
/// Bytes captured per socket, at most (then the socket is no longer captured).
pub const STREAM_MAX_BYTES: u32 = 65536;
/// Chunks taken from one packet, at most (a GSO packet can carry 64 KiB).
pub const STREAM_CHUNKS_PER_PACKET: u32 = 16;
/// `StreamChunkRecord::flags`: the first chunk of its packet (a UDP datagram starts here).
pub const CHUNK_PACKET_START: u8 = 1;
/// The stream starts with a TLS record header: this is its only chunk.
pub const CHUNK_TLS: u8 = 2;
/// The socket's capture budget (STREAM_MAX_BYTES) ends with this chunk.
pub const CHUNK_BUDGET_END: u8 = 4;
/// The kernel dropped this packet: the target its first bytes name (TLS SNI, HTTP `Host`,
/// a proxy's `CONNECT` or absolute URI) is not allowed (enforce mode). Every later packet of
/// the socket is dropped too.
pub const CHUNK_DROPPED: u8 = 8;

/// Bytes of a TCP stream's first data segment examined for the name it targets (TLS SNI,
/// HTTP `Host`, `CONNECT host:port`, `GET http://host/`), by the kernel and by userspace.
pub const TARGET_SCAN_LEN: usize = 1024;
/// TLS ClientHello extensions walked to find the server name, at most.
pub const TARGET_TLS_EXTENSIONS: usize = 32;
/// Longest host name taken from a stream (longer: not judged by name).
pub const TARGET_NAME_LEN: usize = 253;

/// Sent with only `STREAM_CHUNK_HDR_LEN + len` bytes (the rest of `data` is not in the ring
/// buffer): userspace must read the fixed part and then `len` data bytes, bounded by the
/// record's real length.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StreamChunkRecord {
    pub hdr: Header,
    /// The socket's cookie: chunks of one socket are reassembled by it.
    pub cookie: u64,
    pub daddr: [u8; 16],
    pub family: u16,
    pub dport: u16,
    pub proto: u8,
    pub flags: u8,
    pub _pad: [u8; 2],
    /// Stream offset of `data[0]`: TCP bytes from the first data byte seen on the socket;
    /// UDP: bytes captured on the socket before this chunk.
    pub offset: u32,
    /// Valid bytes in `data`.
    pub len: u32,
    /// Payload bytes of the packet this chunk is from.
    pub packet_len: u32,
    pub _pad2: u32,
    pub data: [u8; STREAM_CHUNK_LEN],
}

pub const STREAM_CHUNK_HDR_LEN: usize = 112;

/// Per-socket capture state (kernel-internal map value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamState {
    /// TCP: the sequence number of the first data byte seen, and of the next new byte.
    pub isn: u32,
    pub next_seq: u32,
    /// Bytes captured so far.
    pub captured: u32,
    /// STREAM_* flags.
    pub flags: u32,
}
/// `StreamState::flags`
pub const STREAM_STARTED: u32 = 1;
/// No more capture on this socket (TLS, or the budget is spent).
pub const STREAM_STOPPED: u32 = 2;
/// The socket's target name was denied (enforce): every packet it sends is dropped.
pub const STREAM_DENIED: u32 = 4;

const _: () = {
    assert!(core::mem::size_of::<StreamChunkRecord>() == STREAM_CHUNK_HDR_LEN + STREAM_CHUNK_LEN);
    assert!(core::mem::offset_of!(StreamChunkRecord, data) == STREAM_CHUNK_HDR_LEN);
    assert!(core::mem::size_of::<StreamState>() == 16);
    assert!(STREAM_CHUNK_LEN.is_power_of_two());
    assert!(STREAM_CHUNKS_PER_PACKET as usize * STREAM_CHUNK_LEN >= STREAM_MAX_BYTES as usize);
};

// ---- File sensor (watcher-ebpf/src/files.rs) ----

/// Path bytes of a `FILE_RULES` key (after the 4-byte job): longer paths are judged by their
/// first FILE_KEY_PATH bytes (directory prefixes still match; exact files do not).
pub const FILE_KEY_PATH: usize = 248;
/// `FILE_RULES` key data: job (big-endian), then the path bytes. A rule is a prefix: a
/// directory ends with `/`, an exact file with its NUL byte.
pub const FILE_KEY_LEN: usize = 4 + FILE_KEY_PATH;
/// Most `FILE_RULES` entries (all jobs together).
pub const MAX_FILE_RULES: u32 = 8192;
/// `FILE_RULES` value flags. A credential store: any open by an install script is reported.
pub const FILE_CRED: u32 = 1;
/// A protected path: an open for writing (O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_APPEND) by an
/// install script is reported.
pub const FILE_TAMPER: u32 = 2;
/// Killed in enforce mode (every credential store; the protected paths the policy marks).
pub const FILE_KILL: u32 = 4;
/// `/proc/`: `/proc/PID/environ` and `/proc/PID/mem` of a process outside the script's tree.
pub const FILE_PROC: u32 = 8;

/// `FileRecord::what`
pub const FILE_OPEN: u32 = 1;
pub const FILE_PROC_ENVIRON: u32 = 2;
pub const FILE_PROC_MEM: u32 = 3;
pub const FILE_VM_READV: u32 = 4;
pub const FILE_PTRACE: u32 = 5;
/// `FileRecord::flags` (besides GUARD_KILLED): the open asked for writing.
pub const FILE_WRITE: u32 = 8;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileRecord {
    pub hdr: Header,
    /// FILE_OPEN, FILE_PROC_*, FILE_VM_READV, FILE_PTRACE.
    pub what: u32,
    /// The FILE_RULES flags that matched (FILE_OPEN), else 0.
    pub rule: u32,
    /// open(2) flags (FILE_OPEN), the ptrace request (FILE_PTRACE), else 0.
    pub open_flags: u32,
    /// The process whose environment or memory was read, else 0.
    pub target: u32,
    /// GUARD_KILLED, FILE_WRITE.
    pub flags: u32,
    /// Bytes of `path` before its NUL.
    pub path_len: u32,
    pub path: [u8; FILE_PATH_LEN],
}

/// Path bytes copied into a file record.
pub const FILE_PATH_LEN: usize = 256;

const _: () = {
    assert!(core::mem::size_of::<FileRecord>() == 64 + 24 + FILE_PATH_LEN);
    assert!(FILE_KEY_LEN <= 256);
};
