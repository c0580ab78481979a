//! Network sensors on the cgroup socket-address hooks: TCP/UDP connect and unconnected UDP
//! sends, IPv4 and IPv6. Returning 1 lets the call proceed; 0 makes it fail with EPERM
//! inside the kernel, before anything leaves the socket.
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use watcher_common::{
    AF_INET, AF_INET6, ConnectRecord, Counter, JOB_ENFORCE, MAX_HOST_ENTRIES, OP_CONNECT, OP_SENDMSG, PROTO_TCP,
    PROTO_UDP, RecordKind, SOCK_DGRAM, SOCK_STREAM, SockOwner, VERDICT_ALLOW, VERDICT_DENY, host_ports_key,
    job_addr_key,
};

use crate::{
    common::{agent_gone, count, fill_header, job_flags, watched_current},
    maps::{ALLOW_NET, EVENTS, HOST_PORTS, LEARNED, RESOLVERS, UDP_SEEN, UdpKey},
    safe::Lookup as _,
};

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    on_sock_addr::<true>(&ctx, AF_INET, OP_CONNECT)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    on_sock_addr::<true>(&ctx, AF_INET6, OP_CONNECT)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    on_sock_addr::<true>(&ctx, AF_INET, OP_SENDMSG)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    on_sock_addr::<true>(&ctx, AF_INET6, OP_SENDMSG)
}

// The same programs with bounded loops, for kernels without bpf_loop (see `safe::repeat`).
#[cgroup_sock_addr(connect4)]
pub fn connect4_bounded(ctx: SockAddrContext) -> i32 {
    on_sock_addr::<false>(&ctx, AF_INET, OP_CONNECT)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6_bounded(ctx: SockAddrContext) -> i32 {
    on_sock_addr::<false>(&ctx, AF_INET6, OP_CONNECT)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4_bounded(ctx: SockAddrContext) -> i32 {
    on_sock_addr::<false>(&ctx, AF_INET, OP_SENDMSG)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6_bounded(ctx: SockAddrContext) -> i32 {
    on_sock_addr::<false>(&ctx, AF_INET6, OP_SENDMSG)
}

#[inline(always)]
fn on_sock_addr<const LOOP: bool>(ctx: &SockAddrContext, family: u16, op: u8) -> i32 {
    let Some(info) = watched_current() else { return 1 };
    if agent_gone() {
        return 0;
    }
    let sa = crate::safe::sock_addr(ctx);

    let mut daddr = [0u8; 16];
    if family == AF_INET {
        daddr[..4].copy_from_slice(&sa.user_ip4.to_ne_bytes());
    } else {
        let ip6 = sa.user_ip6;
        daddr[0..4].copy_from_slice(&ip6[0].to_ne_bytes());
        daddr[4..8].copy_from_slice(&ip6[1].to_ne_bytes());
        daddr[8..12].copy_from_slice(&ip6[2].to_ne_bytes());
        daddr[12..16].copy_from_slice(&ip6[3].to_ne_bytes());
    }
    // user_port holds the port in network byte order in its low 16 bits.
    let dport = u16::from_be(sa.user_port as u16);
    let proto = sa.protocol as u8;
    let enforce = job_flags(info.job) & JOB_ENFORCE != 0;
    let verdict =
        if !enforce || egress_allowed::<LOOP>(info.job, &daddr, family, dport) { VERDICT_ALLOW } else { VERDICT_DENY };

    let mut owner = SockOwner::default();
    fill_owner(&mut owner, info.ppid);
    owner.job = info.job;
    // A TCP or UDP socket sends only packets of its own protocol to destinations these hooks
    // judge: the backstop lets them pass without reading the packet (OWNER_L4).
    let l4 = (sa.type_ == SOCK_STREAM && sa.protocol == PROTO_TCP as u32)
        || (sa.type_ == SOCK_DGRAM && sa.protocol == PROTO_UDP as u32);
    owner._pad = crate::guard::OWNER_JUDGED | if l4 { crate::guard::OWNER_L4 } else { 0 };
    if !crate::safe::set_owner(crate::safe::addr_sock(ctx), &owner) {
        return 0;
    }

    if op == OP_SENDMSG && verdict == VERDICT_ALLOW {
        // Report each allowed destination of unconnected UDP once per process.
        let key = UdpKey { pid: owner.pid, port: dport, family, addr: daddr };
        if UDP_SEEN.contains(&key) {
            return 1;
        }
        let _ = UDP_SEEN.insert(&key, &1, 0);
    }

    match EVENTS.reserve::<ConnectRecord>(0) {
        Some(mut entry) => {
            let rec = crate::safe::slot(&mut entry);
            fill_header(&mut rec.hdr, RecordKind::Connect, info.ppid, info.job);
            rec.daddr = daddr;
            rec.family = family;
            rec.dport = dport;
            rec.proto = proto;
            rec.op = op;
            rec.verdict = verdict;
            rec._pad = 0;
            entry.submit(0);
        }
        None => count(Counter::RingbufFullConnect),
    }
    if verdict == VERDICT_ALLOW { 1 } else { 0 }
}

/// The address as the enforcement maps key it: IPv4 as IPv4-mapped IPv6.
#[inline(always)]
pub fn map_key(addr: &[u8; 16], family: u16) -> [u8; 16] {
    if family == AF_INET {
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3]]
    } else {
        *addr
    }
}

/// Allowed: port 53 to an allowed resolver, an allowed network with that port, or an address
/// an answer for an allowed name returned, with a port that name's entry allows.
#[inline(always)]
pub fn egress_allowed<const LOOP: bool>(job: u32, addr: &[u8; 16], family: u16, dport: u16) -> bool {
    let key = job_addr_key(job, &map_key(addr, family));
    if dport == 53 && RESOLVERS.contains(&key) {
        return true;
    }
    if let Some(ports) = ALLOW_NET.get(&Key::new(160, key))
        && ports.contains(dport)
    {
        return true;
    }
    let Some(mask) = LEARNED.value(&key) else { return false };
    hosts_allow::<LOOP>(job, mask, dport)
}

/// What [`hosts_allow`] asks, and its answer.
#[repr(C)]
struct HostQuery {
    mask: u64,
    job: u32,
    port: u32,
    allowed: u32,
    _pad: u32,
}

/// Whether one of the allowed host entries in `mask` (bits 0..MAX_HOST_ENTRIES) allows `port`
/// for `job`.
#[inline(always)]
pub fn hosts_allow<const LOOP: bool>(job: u32, mask: u64, port: u16) -> bool {
    let mut q = HostQuery { mask, job, port: port as u32, allowed: 0, _pad: 0 };
    crate::safe::repeat::<LOOP, _>(MAX_HOST_ENTRIES, &mut q, host_allows);
    q.allowed != 0
}

/// Host entry `i` of [`hosts_allow`]'s query: 1 (stop) once an entry allows the port.
#[inline(always)]
extern "C" fn host_allows(i: u64, q: &mut HostQuery) -> i64 {
    let i = (i & 63) as u32;
    if q.mask & (1u64 << i) != 0
        && let Some(ports) = HOST_PORTS.value(&host_ports_key(q.job, i))
        && ports.contains(q.port as u16)
    {
        q.allowed = 1;
        return 1;
    }
    0
}

#[inline(always)]
pub fn fill_owner(owner: &mut SockOwner, ppid: u32) {
    use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid};
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    owner.pid = (pid_tgid >> 32) as u32;
    owner.ppid = ppid;
    owner.uid = uid_gid as u32;
    owner.gid = (uid_gid >> 32) as u32;
    owner.comm = bpf_get_current_comm().unwrap_or([0u8; 16]);
}
