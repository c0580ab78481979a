//! DNS sensor on the cgroup packet hooks: every packet to port 53 leaving a watched socket
//! (UDP via sendto/sendmsg/sendmmsg/send/write or io_uring, and TCP) and every packet from
//! port 53 arriving at one. The payload is copied raw; userspace parses it.
use aya_ebpf::{
    helpers::generated::{bpf_get_socket_cookie, bpf_skb_load_bytes},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use watcher_common::{
    AF_INET, AF_INET6, CNT_RINGBUF_FULL_DNS, DIR_EGRESS, DIR_INGRESS, DNS_PAYLOAD_LEN,
    DnsPacketRecord, JOB_ENFORCE, KIND_DNS_PACKET, PROTO_TCP, PROTO_UDP, SockOwner, VERDICT_ALLOW,
    VERDICT_DENY,
};

use crate::{
    common::{count, fill_header, job_flags, watched_current},
    maps::{EVENTS, RESOLVERS, SOCK_OWNER},
    net::map_key,
};

const DNS_PORT: u16 = 53;

/// Returns 0 to drop a query the policy does not allow (enforce mode): UDP senders get EPERM.
#[cgroup_skb(egress)]
pub fn dns_egress(ctx: SkBuffContext) -> i32 {
    on_packet(&ctx, DIR_EGRESS)
}

/// Never drops; in enforce mode it learns the addresses answered for allowed names.
#[cgroup_skb(ingress)]
pub fn dns_ingress(ctx: SkBuffContext) -> i32 {
    on_packet(&ctx, DIR_INGRESS);
    1
}

struct Flow {
    family: u16,
    proto: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport: u16,
    dport: u16,
    payload_off: u32,
}

#[inline(always)]
fn load<T: Copy>(ctx: &SkBuffContext, off: u32) -> Option<T> {
    ctx.load::<T>(off as usize).ok()
}

#[inline(always)]
fn parse_flow(ctx: &SkBuffContext) -> Option<Flow> {
    let b0: u8 = load(ctx, 0)?;
    let mut f = Flow {
        family: 0,
        proto: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        payload_off: 0,
    };
    let l4: u32;
    match b0 >> 4 {
        4 => {
            f.family = AF_INET;
            let ihl = ((b0 & 0x0f) as u32) * 4;
            if ihl < 20 {
                return None;
            }
            let frag: u16 = u16::from_be(load(ctx, 6)?);
            if frag & 0x1fff != 0 {
                return None; // not the first fragment: no L4 header
            }
            f.proto = load(ctx, 9)?;
            let s: [u8; 4] = load(ctx, 12)?;
            let d: [u8; 4] = load(ctx, 16)?;
            f.saddr[..4].copy_from_slice(&s);
            f.daddr[..4].copy_from_slice(&d);
            l4 = ihl;
        }
        6 => {
            f.family = AF_INET6;
            f.proto = load(ctx, 6)?;
            f.saddr = load(ctx, 8)?;
            f.daddr = load(ctx, 24)?;
            l4 = 40;
        }
        _ => return None,
    }
    f.sport = u16::from_be(load(ctx, l4)?);
    f.dport = u16::from_be(load(ctx, l4 + 2)?);
    if f.proto == PROTO_UDP {
        f.payload_off = l4 + 8;
    } else if f.proto == PROTO_TCP {
        let doff: u8 = load(ctx, l4 + 12)?;
        f.payload_off = l4 + ((doff >> 4) as u32) * 4;
    } else {
        return None;
    }
    Some(f)
}

/// Enforce mode, a query leaving: allowed only to an allowed resolver. (Checking the query
/// name in the kernel is not done yet: see README, "Limitations".)
#[inline(always)]
fn query_allowed(f: &Flow) -> bool {
    let key = map_key(&f.daddr, f.family);
    unsafe { RESOLVERS.get(&key) }.is_some()
}

#[inline(always)]
fn on_packet(ctx: &SkBuffContext, direction: u8) -> i32 {
    let Some(f) = parse_flow(ctx) else { return 1 };
    let port = if direction == DIR_EGRESS { f.dport } else { f.sport };
    if port != DNS_PORT {
        return 1;
    }
    let len = ctx.len();
    if len <= f.payload_off {
        return 1; // e.g. a bare TCP ACK
    }
    let payload_len = len - f.payload_off;

    let skb = aya_ebpf::EbpfContext::as_ptr(ctx);
    let cookie = unsafe { bpf_get_socket_cookie(skb) };
    let owner: SockOwner = match unsafe { SOCK_OWNER.get(&cookie) } {
        Some(o) => *o,
        None => {
            // A socket that never went through connect/sendmsg hooks (raw socket): on egress
            // the sender is the current task.
            if direction != DIR_EGRESS {
                return 1;
            }
            let Some(info) = watched_current() else { return 1 };
            let mut o = SockOwner::default();
            o.ppid = info.ppid;
            o.job = info.job;
            o.pid = crate::common::current_tgid();
            o
        }
    };
    let enforce = job_flags(owner.job) & JOB_ENFORCE != 0;
    let mut verdict = VERDICT_ALLOW;
    if enforce && direction == DIR_EGRESS && !query_allowed(&f) {
        verdict = VERDICT_DENY;
    }
    let ret = if verdict == VERDICT_ALLOW { 1 } else { 0 };

    let Some(mut entry) = EVENTS.reserve::<DnsPacketRecord>(0) else {
        count(CNT_RINGBUF_FULL_DNS);
        return ret;
    };
    let rec = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut rec.hdr, KIND_DNS_PACKET, owner.ppid);
    // Ingress runs in softirq context: the header's task fields are not the owner's.
    rec.hdr.pid = owner.pid;
    rec.hdr.tid = owner.pid;
    rec.hdr.uid = owner.uid;
    rec.hdr.gid = owner.gid;
    if owner.comm[0] != 0 {
        rec.hdr.comm = owner.comm;
    }
    rec.saddr = f.saddr;
    rec.daddr = f.daddr;
    rec.family = f.family;
    rec.sport = f.sport;
    rec.dport = f.dport;
    rec.proto = f.proto;
    rec.direction = direction;
    rec.payload_len = payload_len;
    rec.verdict = verdict;
    rec._pad = [0; 7];
    let mut n = payload_len;
    if n > DNS_PAYLOAD_LEN as u32 {
        n = DNS_PAYLOAD_LEN as u32;
    }
    // payload_len >= 1 here; the mask keeps n in [1, DNS_PAYLOAD_LEN] where the verifier
    // can see it (DNS_PAYLOAD_LEN is a power of two).
    let n = ((n.wrapping_sub(1)) & (DNS_PAYLOAD_LEN as u32 - 1)) + 1;
    let ok = unsafe {
        bpf_skb_load_bytes(skb, f.payload_off, rec.payload.as_mut_ptr().cast(), n)
    } == 0;
    rec.captured_len = if ok { n } else { 0 };
    entry.submit(0);
    ret
}
