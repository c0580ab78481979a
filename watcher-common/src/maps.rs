//! The maps the kernel programs share with the agent: their names (the agent opens them by
//! these; a test checks the kernel object has exactly these maps) and the key types and
//! encoders both sides use.
use crate::EXEC_NAME_LEN;

/// Names of every map in the kernel object (each is a `#[map]` static of that name in
/// `watcher-ebpf/src/maps.rs`).
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const WATCHED: &str = "WATCHED";
    pub const WATCHED_CGROUPS: &str = "WATCHED_CGROUPS";
    pub const CLONE_FLAGS: &str = "CLONE_FLAGS";
    pub const EXEC_SCRATCH: &str = "EXEC_SCRATCH";
    pub const BASENAME_PARK: &str = "BASENAME_PARK";
    pub const EXEC_PENDING: &str = "EXEC_PENDING";
    pub const SOCK_OWNER: &str = "SOCK_OWNER";
    pub const COUNTERS: &str = "COUNTERS";
    pub const UDP_SEEN: &str = "UDP_SEEN";
    pub const ENV_CAPTURE: &str = "ENV_CAPTURE";
    pub const ENV_BLOOM: &str = "ENV_BLOOM";
    pub const ENV_SCAN_PROG: &str = "ENV_SCAN_PROG";
    pub const CONFIG: &str = "CONFIG";
    pub const DNS_NAMES: &str = "DNS_NAMES";
    pub const DNS_SUFFIXES: &str = "DNS_SUFFIXES";
    pub const JOBS: &str = "JOBS";
    pub const ALLOW_NET: &str = "ALLOW_NET";
    pub const RESOLVERS: &str = "RESOLVERS";
    pub const HOST_PORTS: &str = "HOST_PORTS";
    pub const LEARNED: &str = "LEARNED";
    pub const EXEC_RULES: &str = "EXEC_RULES";
    pub const ENV_MARKERS: &str = "ENV_MARKERS";
    pub const NAME_SCRATCH: &str = "NAME_SCRATCH";
    pub const PACKET_SCRATCH: &str = "PACKET_SCRATCH";
    pub const DNS_PROGS: &str = "DNS_PROGS";
    pub const DNS_INGRESS_PROGS: &str = "DNS_INGRESS_PROGS";
    pub const SHELL_SIGS: &str = "SHELL_SIGS";
    pub const NEW_JOBS: &str = "NEW_JOBS";
    pub const GUARD_SEEN: &str = "GUARD_SEEN";
    pub const DEPUTIES: &str = "DEPUTIES";
    pub const STREAMS: &str = "STREAMS";
    pub const CHUNK_SCRATCH: &str = "CHUNK_SCRATCH";
    pub const CURSOR: &str = "CURSOR";
    pub const FILE_RULES: &str = "FILE_RULES";
    pub const FILE_SCRATCH: &str = "FILE_SCRATCH";
    pub const PROXY_NET: &str = "PROXY_NET";
    pub const TARGET_SCRATCH: &str = "TARGET_SCRATCH";
    /// Its size is the ABI version.
    pub const ABI: &str = "ABI";

    /// Every map name, for the object check.
    pub const ALL: &[&str] = &[
        EVENTS,
        WATCHED,
        WATCHED_CGROUPS,
        CLONE_FLAGS,
        EXEC_SCRATCH,
        BASENAME_PARK,
        EXEC_PENDING,
        SOCK_OWNER,
        COUNTERS,
        UDP_SEEN,
        ENV_CAPTURE,
        ENV_BLOOM,
        ENV_SCAN_PROG,
        CONFIG,
        DNS_NAMES,
        DNS_SUFFIXES,
        JOBS,
        ALLOW_NET,
        RESOLVERS,
        HOST_PORTS,
        LEARNED,
        EXEC_RULES,
        ENV_MARKERS,
        NAME_SCRATCH,
        PACKET_SCRATCH,
        DNS_PROGS,
        DNS_INGRESS_PROGS,
        SHELL_SIGS,
        NEW_JOBS,
        GUARD_SEEN,
        DEPUTIES,
        STREAMS,
        CHUNK_SCRATCH,
        CURSOR,
        FILE_RULES,
        FILE_SCRATCH,
        PROXY_NET,
        TARGET_SCRATCH,
        ABI,
    ];
}

/// Key of the per-job address maps (`RESOLVERS`, `LEARNED`, and `ALLOW_NET` with prefix
/// length 32 + the address prefix): the job id (big endian, so it is the LPM key's leading
/// bits) then the IPv4-mapped or IPv6 address.
pub const JOB_ADDR_LEN: usize = 20;
#[inline(always)]
pub fn job_addr_key(job: u32, addr: &[u8; 16]) -> [u8; JOB_ADDR_LEN] {
    let j = job.to_be_bytes();
    let mut k = [0u8; JOB_ADDR_LEN];
    k[0] = j[0];
    k[1] = j[1];
    k[2] = j[2];
    k[3] = j[3];
    let mut i = 0;
    while i < 16 {
        k[4 + i] = addr[i];
        i += 1;
    }
    k
}

/// Key of `EXEC_RULES`: the job and an executable basename (NUL-padded).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecKey {
    pub job: u32,
    pub name: [u8; EXEC_NAME_LEN],
}

/// Key of `DNS_NAMES` / `DNS_SUFFIXES`: [name hash, job].
pub type NameKey = [u64; 2];
/// Key of `HOST_PORTS`: job << 32 | host entry index.
#[inline(always)]
pub fn host_ports_key(job: u32, i: u32) -> u64 {
    ((job as u64) << 32) | i as u64
}

/// Key of `GUARD_SEEN`: one socket and one destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardKey {
    pub cookie: u64,
    pub daddr: [u8; 16],
    pub dport: u16,
    pub proto: u8,
    pub _pad: u8,
    pub family: u16,
    pub _pad2: u16,
}

/// Key of `DEPUTIES`: the job and a unix socket path, NUL-padded (an abstract name, whose
/// first byte is NUL, as it is).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeputyKey {
    pub job: u32,
    pub path: [u8; crate::UNIX_PATH_LEN],
}

/// The `DEPUTIES` key of a socket path (`@name` for an abstract one); None when it is too long.
pub fn deputy_key(job: u32, path: &str) -> Option<DeputyKey> {
    let mut k = DeputyKey { job, path: [0; crate::UNIX_PATH_LEN] };
    let bytes = match path.strip_prefix('@') {
        Some(name) => {
            if name.len() + 1 > k.path.len() {
                return None;
            }
            k.path[1..1 + name.len()].copy_from_slice(name.as_bytes());
            return Some(k);
        }
        None => path.as_bytes(),
    };
    if bytes.len() >= k.path.len() || bytes.contains(&0) {
        return None;
    }
    k.path[..bytes.len()].copy_from_slice(bytes);
    Some(k)
}

const _: () = {
    assert!(core::mem::size_of::<GuardKey>() == 32);
    assert!(core::mem::size_of::<ExecKey>() == 4 + EXEC_NAME_LEN);
    assert!(core::mem::size_of::<DeputyKey>() == 4 + crate::UNIX_PATH_LEN);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_addr_key_puts_the_job_first_big_endian() {
        let k = job_addr_key(0x0102_0304, &[9; 16]);
        assert_eq!(&k[..4], &[1, 2, 3, 4]);
        assert_eq!(&k[4..], &[9; 16]);
        assert_eq!(host_ports_key(2, 5), (2u64 << 32) | 5);
        let k = deputy_key(3, "/run/docker.sock").unwrap();
        assert_eq!((k.job, &k.path[..4], k.path[16]), (3, &b"/run"[..], 0));
        assert_eq!(deputy_key(1, "@x").unwrap().path[..3], [0, b'x', 0]);
    }
}
