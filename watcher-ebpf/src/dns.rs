//! DNS sensor on the cgroup packet hooks: every packet to port 53 leaving a watched socket
//! (UDP via sendto/sendmsg/sendmmsg/send/write or io_uring, and TCP) and every packet from
//! port 53 arriving at one. The payload is copied raw; userspace parses it.
use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};
use watcher_common::{
    AF_INET, AF_INET6, CFG_SEED, Counter, DIR_EGRESS, DIR_INGRESS, DNS_MASK_LOOKUP, DNS_PAYLOAD_LEN, DnsPacketRecord,
    JOB_ENFORCE, MAX_LABELS, NAME_WIRE_LEN, PROTO_TCP, PROTO_UDP, RecordKind, SockOwner, VERDICT_ALLOW, VERDICT_DENY,
    job_addr_key, name_hash_step,
};

use crate::{
    common::{count, fill_header, job_flags, watched_current},
    maps::{
        CONFIG, DNS_INGRESS_PROGS, DNS_NAMES, DNS_PROGS, DNS_SUFFIXES, EVENTS, Flow, LEARNED, NAME_SCRATCH,
        PACKET_SCRATCH, PacketScratch, RESOLVERS,
    },
    net::map_key,
    safe::Lookup as _,
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

#[inline(always)]
fn load<T: Copy>(ctx: &SkBuffContext, off: u32) -> Option<T> {
    ctx.load::<T>(off as usize).ok()
}

/// The packet's addresses, protocol, ports and payload offset. Every packet of the machine's
/// sockets goes through here (three programs), so the headers are read in as few helper calls
/// as they allow: the first 20 bytes at once (an IPv4 header, or the start of an IPv6 one),
/// the rest of an IPv6 header, then the ports (and TCP's data offset) at once. Eight calls
/// of a byte or two each before; each call is most of the cost.
#[inline(always)]
fn parse_flow(ctx: &SkBuffContext) -> Option<Flow> {
    let h: [u8; 20] = load(ctx, 0)?;
    let mut f =
        Flow { family: 0, proto: 0, saddr: [0; 16], daddr: [0; 16], sport: 0, dport: 0, payload_off: 0, l4_off: 0 };

    let l4: u32 = match h[0] >> 4 {
        4 => {
            f.family = AF_INET;
            let ihl = ((h[0] & 0x0f) as u32) * 4;
            if ihl < 20 {
                return None;
            }
            if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
                return None; // not the first fragment: no L4 header
            }
            f.proto = h[9];
            f.saddr[..4].copy_from_slice(&h[12..16]);
            f.daddr[..4].copy_from_slice(&h[16..20]);
            ihl
        }
        6 => {
            let rest: [u8; 20] = load(ctx, 20)?;
            f.family = AF_INET6;
            f.proto = h[6];
            f.saddr[..12].copy_from_slice(&h[8..20]);
            f.saddr[12..].copy_from_slice(&rest[..4]);
            f.daddr.copy_from_slice(&rest[4..20]);
            40
        }
        _ => return None,
    };
    f.l4_off = l4;
    if f.proto == PROTO_TCP {
        // Ports, sequence and acknowledgement numbers, data offset.
        let t: [u8; 14] = load(ctx, l4)?;
        f.sport = u16::from_be_bytes([t[0], t[1]]);
        f.dport = u16::from_be_bytes([t[2], t[3]]);
        f.payload_off = l4 + ((t[12] >> 4) as u32) * 4;
    } else if f.proto == PROTO_UDP {
        let u: [u8; 4] = load(ctx, l4)?;
        f.sport = u16::from_be_bytes([u[0], u[1]]);
        f.dport = u16::from_be_bytes([u[2], u[3]]);
        f.payload_off = l4 + 8;
    } else {
        return None;
    }
    Some(f)
}

/// Parse the DNS name at `off` (uncompressed, as in a question) and return (mask of the policy
/// entries allowing it, its length in bytes). None when it is not a well-formed name.
///
/// The name is hashed backwards (name_hash_step, the same function userspace uses) over a
/// fixed 256 iterations without branches: iterations past the name leave the hash unchanged
/// through a mask read back from map memory, and the hash of every suffix is stored by
/// position. Branches per byte made the verifier's states multiply past its budget.
#[inline(always)]
fn name_mask<const LOOP: bool>(ctx: &SkBuffContext, off: u32, job: u32) -> Option<(u64, u32)> {
    let sc = crate::safe::scratch(&NAME_SCRATCH)?;
    let len = ctx.len();
    if len <= off {
        return None;
    }
    let mut n = len - off;
    if n > NAME_WIRE_LEN as u32 {
        n = NAME_WIRE_LEN as u32;
    }
    let n = ((n.wrapping_sub(1)) & (NAME_WIRE_LEN as u32 - 1)) + 1;
    if !crate::safe::skb_load(ctx, off, &mut sc.buf, n) {
        return None;
    }
    let mut pos: u32 = 0;
    let mut nlabels: u32 = 0;
    let mut end: u32 = 0;
    for i in 0..MAX_LABELS as u32 {
        if pos >= n {
            return None;
        }
        let l = sc.buf[(pos as usize) & (NAME_WIRE_LEN - 1)] as u32;
        if l == 0 {
            end = pos + 1;
            break;
        }
        if l > 63 {
            return None;
        }
        sc.starts[(i as usize) & (MAX_LABELS - 1)] = pos;
        nlabels = i + 1;
        pos += l + 1;
    }
    if end == 0 {
        return None;
    }
    crate::safe::park(&mut sc.end, end);
    crate::safe::park(&mut sc.nlabels, nlabels);
    let end = crate::safe::reread(&sc.end) & (NAME_WIRE_LEN as u32 * 2 - 1);
    let nlabels = crate::safe::reread(&sc.nlabels) & (MAX_LABELS as u32 * 2 - 1);

    let mut h = CONFIG.get(CFG_SEED).copied().unwrap_or(0);
    // With bpf_loop only the name's own bytes are hashed; the bounded loop needs a constant
    // count, and its steps past the end change nothing (see hash_step).
    let steps = if LOOP { end } else { NAME_WIRE_LEN as u32 };
    crate::safe::repeat::<LOOP, _>(steps, &mut h, hash_step);
    let mut mask = DNS_NAMES.value(&[h, job as u64]).unwrap_or(0);
    for i in 1..MAX_LABELS as u32 {
        if i >= nlabels {
            break;
        }
        let start = sc.starts[(i as usize) & (MAX_LABELS - 1)] as usize & (NAME_WIRE_LEN - 1);
        let hs = sc.hs[start];
        mask |= DNS_SUFFIXES.value(&[hs, job as u64]).unwrap_or(0);
    }
    Some((mask, end))
}

/// Step `j` of [`name_mask`]'s hash, taken backwards from the name's end: `h` becomes the hash
/// of the name's last j + 1 bytes, kept in `hs` at the position it starts from. Past the end
/// (`live` 0) nothing changes, without a branch: `end` is read afresh each time (LLVM turns
/// the sign test into a branch, and a branch on a value the verifier keeps would split its
/// state once per possible `end`), and `live` is parked in memory so it stays a plain value.
#[inline(always)]
extern "C" fn hash_step(j: u64, h: &mut u64) -> i64 {
    let Some(sc) = crate::safe::scratch(&NAME_SCRATCH) else { return 1 };
    let end = crate::safe::reread(&sc.end) & (NAME_WIRE_LEN as u32 * 2 - 1);
    // live = all ones while j < end, else 0.
    let live = (j.wrapping_sub(end as u64) as i64 >> 63) as u64;
    crate::safe::park(&mut sc.live, live);
    let live = crate::safe::reread(&sc.live);
    let p = (end.wrapping_sub(1).wrapping_sub(j as u32) as usize) & (NAME_WIRE_LEN - 1);
    let hn = name_hash_step(*h, sc.buf[p]);
    *h ^= (*h ^ hn) & live;
    sc.hs[p] = *h;
    0
}

/// Enforce mode, a query leaving: allowed only to an allowed resolver and for an allowed name.
#[inline(always)]
fn query_allowed<const LOOP: bool>(ctx: &SkBuffContext, f: &Flow, job: u32) -> bool {
    let key = job_addr_key(job, &map_key(&f.daddr, f.family));
    if !RESOLVERS.contains(&key) {
        return false;
    }
    let dns = f.payload_off + if f.proto == PROTO_TCP { 2 } else { 0 };
    match load::<u16>(ctx, dns + 4).map(u16::from_be) {
        Some(q) if q > 0 => {}
        _ => return false,
    }
    match name_mask::<LOOP>(ctx, dns + 12, job) {
        Some((mask, _)) => mask & DNS_MASK_LOOKUP != 0,
        None => false,
    }
}

#[inline(always)]
fn on_packet(ctx: &SkBuffContext, direction: u8) -> i32 {
    let Some(f) = parse_flow(ctx) else { return 1 };
    let port = if direction == DIR_EGRESS { f.dport } else { f.sport };
    if port != DNS_PORT {
        if direction == DIR_EGRESS {
            return crate::target::egress(ctx, &f);
        }
        return 1;
    }
    let len = ctx.len();
    if len <= f.payload_off {
        return 1; // e.g. a bare TCP ACK
    }
    let owner: SockOwner = match crate::safe::skb_owner(ctx) {
        Some(o) => o,
        None => {
            // A socket that never went through connect/sendmsg hooks (raw socket): on egress
            // the sender is the current task.
            if direction != DIR_EGRESS {
                return 1;
            }
            let Some(info) = watched_current() else { return 1 };
            SockOwner { ppid: info.ppid, job: info.job, pid: crate::common::current_tgid(), ..Default::default() }
        }
    };
    if direction == DIR_INGRESS && job_flags(owner.job) & JOB_ENFORCE != 0 {
        // Learn the answer's addresses before the application can read it (tail call; if it
        // cannot be made, the agent still learns them from the record, a little later).
        if let Some(sc) = crate::safe::scratch(&PACKET_SCRATCH) {
            sc.flow = f;
            sc.owner = owner;
            crate::safe::tail_call(&DNS_INGRESS_PROGS, ctx, 0);
        }
    }
    if direction == DIR_EGRESS && job_flags(owner.job) & JOB_ENFORCE != 0 {
        // Judging the name is a program of its own (tail call), so the verifier checks it
        // apart from the parsing above. If the call cannot be made: fail closed.
        if let Some(sc) = crate::safe::scratch(&PACKET_SCRATCH) {
            sc.flow = f;
            sc.owner = owner;
            crate::safe::tail_call(&DNS_PROGS, ctx, 0);
        }
        return emit(ctx, &f, &owner, direction, VERDICT_DENY);
    }
    emit(ctx, &f, &owner, direction, VERDICT_ALLOW)
}

/// Enforce mode, egress: is this query allowed? Reached only by tail call from dns_egress,
/// with the flow and owner in PACKET_SCRATCH. Not attached.
#[cgroup_skb(egress)]
pub fn dns_egress_enforce(ctx: SkBuffContext) -> i32 {
    egress_enforce::<true>(&ctx)
}

/// [`dns_egress_enforce`] with bounded loops, for kernels without bpf_loop (see `safe::repeat`).
#[cgroup_skb(egress)]
pub fn dns_egress_enforce_bounded(ctx: SkBuffContext) -> i32 {
    egress_enforce::<false>(&ctx)
}

#[inline(always)]
fn egress_enforce<const LOOP: bool>(ctx: &SkBuffContext) -> i32 {
    let Some(sc) = crate::safe::scratch(&PACKET_SCRATCH) else { return 0 };
    let (f, owner) = (sc.flow, sc.owner);
    let verdict = if query_allowed::<LOOP>(ctx, &f, owner.job) { VERDICT_ALLOW } else { VERDICT_DENY };
    emit(ctx, &f, &owner, DIR_EGRESS, verdict)
}

/// Header of a packet record: the socket owner's task fields (ingress runs in softirq
/// context, where the current task is not the owner).
#[inline(always)]
pub(crate) fn owner_header(hdr: &mut watcher_common::Header, kind: watcher_common::RecordKind, owner: &SockOwner) {
    fill_header(hdr, kind, owner.ppid, owner.job);
    hdr.pid = owner.pid;
    hdr.tid = owner.pid;
    hdr.uid = owner.uid;
    hdr.gid = owner.gid;
    if owner.comm[0] != 0 {
        hdr.comm = owner.comm;
    }
}

/// Bytes to copy of a payload of `len >= 1` bytes into a CAP-byte buffer: in [1, CAP], with a
/// mask the verifier can see (CAP is a power of two).
#[inline(always)]
fn capture_len<const CAP: usize>(len: u32) -> u32 {
    let n = if len > CAP as u32 { CAP as u32 } else { len };
    ((n.wrapping_sub(1)) & (CAP as u32 - 1)) + 1
}

/// Enforce mode, ingress: remember the addresses an answer gives for a name whose policy
/// entries allow egress, then report the packet. Reached only by tail call from dns_ingress.
#[cgroup_skb(ingress)]
pub fn dns_ingress_learn(ctx: SkBuffContext) -> i32 {
    ingress_learn::<true>(&ctx)
}

/// [`dns_ingress_learn`] with bounded loops, for kernels without bpf_loop (see `safe::repeat`).
#[cgroup_skb(ingress)]
pub fn dns_ingress_learn_bounded(ctx: SkBuffContext) -> i32 {
    ingress_learn::<false>(&ctx)
}

#[inline(always)]
fn ingress_learn<const LOOP: bool>(ctx: &SkBuffContext) -> i32 {
    let Some(sc) = crate::safe::scratch(&PACKET_SCRATCH) else { return 1 };
    let (f, owner) = (sc.flow, sc.owner);
    learn_answer::<LOOP>(ctx, &f, owner.job, sc);
    emit(ctx, &f, &owner, DIR_INGRESS, VERDICT_ALLOW);
    1
}

const MAX_ANSWERS: u32 = 8;
const MAX_ANSWER_LABELS: u32 = 8;

#[inline(always)]
fn get_off(sc: &PacketScratch) -> u32 {
    crate::safe::reread(&sc.off) & 0xffff
}

#[inline(always)]
fn set_off(sc: &mut PacketScratch, off: u32) {
    crate::safe::park(&mut sc.off, off)
}

/// The offset lives in map memory between steps: the verifier then does not carry a refined
/// range for it from one answer to the next, which would split its state at every branch.
#[inline(always)]
fn learn_answer<const LOOP: bool>(ctx: &SkBuffContext, f: &Flow, job: u32, sc: &mut PacketScratch) {
    let dns = f.payload_off + if f.proto == PROTO_TCP { 2 } else { 0 };
    let Some(ancount) = load::<u16>(ctx, dns + 6).map(u16::from_be) else { return };
    let Some((mask, name_len)) = name_mask::<LOOP>(ctx, dns + 12, job) else { return };
    let mask = mask & !DNS_MASK_LOOKUP;
    if mask == 0 {
        return;
    }
    set_off(sc, dns + 12 + name_len + 4);
    for a in 0..MAX_ANSWERS {
        if a >= ancount as u32 {
            break;
        }
        // Skip the owner name: a compression pointer, or labels ending in a pointer or root.
        for _ in 0..MAX_ANSWER_LABELS {
            let off = get_off(sc);
            let Some(l) = load::<u8>(ctx, off) else { return };
            if l & 0xc0 == 0xc0 {
                set_off(sc, off + 2);
                break;
            }
            set_off(sc, off + 1 + (l as u32 & 0x3f));
            if l == 0 {
                break;
            }
        }
        let off = get_off(sc);
        let Some(rtype) = load::<u16>(ctx, off).map(u16::from_be) else { return };
        let Some(rdlen) = load::<u16>(ctx, off + 8).map(u16::from_be) else { return };
        let data = off + 10;
        let key = if rtype == 1 && rdlen == 4 {
            load::<[u8; 4]>(ctx, data)
                .map(|v4| map_key(&[v4[0], v4[1], v4[2], v4[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], AF_INET))
        } else if rtype == 28 && rdlen == 16 {
            load::<[u8; 16]>(ctx, data)
        } else {
            None
        };
        if let Some(key) = key {
            let key = job_addr_key(job, &key);
            let old = LEARNED.value(&key).unwrap_or(0);
            let _ = LEARNED.insert(&key, &(old | mask), 0);
        }
        set_off(sc, data + rdlen as u32);
    }
}

/// Send the packet's record to userspace; returns the program's verdict (1 pass, 0 drop).
#[inline(always)]
fn emit(ctx: &SkBuffContext, f: &Flow, owner: &SockOwner, direction: u8, verdict: u8) -> i32 {
    let ret = if verdict == VERDICT_ALLOW { 1 } else { 0 };
    let len = ctx.len();
    if len <= f.payload_off {
        return ret;
    }
    let payload_len = len - f.payload_off;
    let Some(mut entry) = EVENTS.reserve::<DnsPacketRecord>(0) else {
        count(Counter::RingbufFullDns);
        return ret;
    };
    let rec = crate::safe::slot(&mut entry);
    owner_header(&mut rec.hdr, RecordKind::DnsPacket, owner);
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
    let n = capture_len::<DNS_PAYLOAD_LEN>(payload_len);
    let ok = crate::safe::skb_load(ctx, f.payload_off, &mut rec.payload, n);
    rec.captured_len = if ok { n } else { 0 };
    entry.submit(0);
    ret
}
