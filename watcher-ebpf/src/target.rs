//! Names, not only addresses: the first data segment of every TCP connection of an enforced
//! job is judged by the host name it targets before it leaves.
//!
//! * a TLS ClientHello: its server name (SNI);
//! * an HTTP request: `CONNECT host:port` and absolute URIs (`GET http://host:port/...`, what a
//!   forward proxy is sent), else its `Host` header.
//!
//! A name is allowed when an allowed host entry (exact or `*.suffix`, the DNS tables) allows it
//! with the port (the CONNECT/URI port, else the connection's); an IPv4 literal when the address
//! is allowed. A connection to an address an `allow` ip/cidr entry names (not a proxy) is the
//! policy's own choice and is not judged by name; one to a proxy (`egress.proxies`) always is.
//! A first segment naming nothing is let through (its address was judged at connect).
//! Not allowed: the segment is dropped and the socket marked, so every later packet of it
//! (retransmissions included) is dropped too: nothing reaches the peer (or a proxy's upstream).
//!
//! Reached by tail call from dns_egress (DNS_PROGS slot 1) with its own verifier budget; the
//! loops keep their state in map memory (TARGET_SCRATCH) so their paths merge. Three programs,
//! each verified once from one entry state (one program verified every later step once per
//! way out of the one before: 640k instructions processed, half the start's verification):
//! `stream_first` finds the name (slot 1), `stream_name` judges it (slot 2), `stream_capture`
//! captures the segment and carries out the verdict (slot 3). They pass what they found on in
//! TARGET_SCRATCH (same CPU: a tail call does not migrate).
use aya_ebpf::{
    macros::{cgroup_skb, map},
    maps::{PerCpuArray, lpm_trie::Key},
    programs::SkBuffContext,
};
use watcher_common::{
    AF_INET, CFG_SEED, CHUNK_DROPPED, DNS_MASK_LOOKUP, JOB_ENFORCE, PROTO_TCP, STREAM_DENIED, STREAM_STARTED,
    SockOwner, StreamState, TARGET_NAME_LEN, TARGET_SCAN_LEN, TARGET_TLS_EXTENSIONS, job_addr_key, name_hash_step,
};

use crate::{
    common::job_flags,
    maps::{ALLOW_NET, CONFIG, DNS_NAMES, DNS_PROGS, DNS_SUFFIXES, Flow, PROXY_NET},
    net::{egress_allowed, hosts_allow, map_key},
    payload::{STREAMS, on_egress},
    safe::Lookup as _,
};

#[repr(C)]
pub struct TargetScratch {
    flow: Flow,
    owner: SockOwner,
    buf: [u8; TARGET_SCAN_LEN],
    /// Bytes in `buf`.
    n: u32,
    /// Loop cursor.
    pos: u32,
    name_off: u32,
    name_len: u32,
    port: u32,
    label: u32,
    /// IPv4 literal: address so far, current octet, dots seen, non-digit seen.
    addr: u32,
    octet: u32,
    dots: u32,
    other: u32,
    h: u64,
    mask: u64,
    /// The verdict (1 allowed, 0 denied) for stream_capture.
    verdict: u32,
    _pad: u32,
}

#[map]
static TARGET_SCRATCH: PerCpuArray<TargetScratch> = PerCpuArray::with_max_entries(1, 0);

const M: u32 = TARGET_SCAN_LEN as u32 - 1;

#[inline(always)]
fn rd(v: &u32) -> u32 {
    crate::safe::reread(v)
}

#[inline(always)]
fn wr(v: &mut u32, x: u32) {
    crate::safe::park(v, x)
}

#[inline(always)]
fn rd64(v: &u64) -> u64 {
    crate::safe::reread(v)
}

#[inline(always)]
fn wr64(v: &mut u64, x: u64) {
    crate::safe::park(v, x)
}

/// Byte `i` of the segment, 0 past its end.
#[inline(always)]
fn byte(sc: &TargetScratch, i: u32) -> u32 {
    if i >= rd(&sc.n) {
        return 0;
    }
    sc.buf[(i & M) as usize] as u32
}

/// Byte `i & M` of the buffer, unchecked against the segment's end: for loops whose bounds
/// were checked (a branch per byte made the verifier's jump history overflow). The byte
/// right after the segment is set to 0 (a delimiter).
#[inline(always)]
fn raw(sc: &TargetScratch, i: u32) -> u32 {
    sc.buf[(i & M) as usize] as u32
}

/// Bit c set for each delimiter byte c (< 64) that ends a name: NUL, tab, LF, CR, space, `#`,
/// `/`, `:`, `?`.
const DELIMS: u64 = 1
    | (1 << b'\t')
    | (1 << b'\n')
    | (1 << b'\r')
    | (1 << b' ')
    | (1 << b'#')
    | (1 << b'/')
    | (1 << b':')
    | (1 << b'?');

#[inline(always)]
fn be16(sc: &TargetScratch, i: u32) -> u32 {
    (byte(sc, i) << 8) | byte(sc, i + 1)
}

#[inline(always)]
fn lower(c: u32) -> u32 {
    if (b'A' as u32..=b'Z' as u32).contains(&c) { c | 0x20 } else { c }
}

/// A TCP data packet leaving a watched socket (not port 53), from dns_egress: the first
/// segment of a stream of an enforced job goes to stream_first; a denied socket's packets are
/// dropped; the rest is captured (payload.rs) and passes.
#[inline(always)]
pub fn egress(ctx: &SkBuffContext, f: &Flow) -> i32 {
    if crate::common::bench_no_streams() {
        return 1;
    }
    if f.proto == PROTO_TCP && ctx.len() > f.payload_off {
        let cookie = crate::safe::socket_cookie(ctx);
        if let Some(owner) = crate::safe::skb_owner(ctx) {
            let flags = STREAMS.value(&cookie).map(|s| s.flags);
            if flags.is_some_and(|fl| fl & STREAM_DENIED != 0) {
                return 0;
            }
            let first = flags.is_none_or(|fl| fl & STREAM_STARTED == 0);
            if first && job_flags(owner.job) & JOB_ENFORCE != 0 {
                if let Some(sc) = crate::safe::scratch(&TARGET_SCRATCH) {
                    // The tail call runs on the same CPU and finds them in this slot.
                    sc.flow = *f;
                    sc.owner = owner;
                    crate::safe::tail_call(&DNS_PROGS, ctx, 1);
                }
                // The judge could not be reached: fail closed.
                return 0;
            }
        }
    }
    on_egress(ctx, f, 0);
    1
}

const SLOT_NAME: u32 = 2;
const SLOT_CAPTURE: u32 = 3;

/// find(): denied, allowed, or a name to judge (in TARGET_SCRATCH: name_off, name_len, port).
const FOUND_DENY: u32 = 0;
const FOUND_ALLOW: u32 = 1;
const FOUND_NAME: u32 = 2;

/// The first data segment of a TCP stream of an enforced job (tail call from dns_egress): the
/// name it targets. If a tail call cannot be made: fail closed (dropped).
#[cgroup_skb(egress)]
pub fn stream_first(ctx: SkBuffContext) -> i32 {
    first::<true>(&ctx)
}

/// The name stream_first found, judged (tail call from stream_first).
#[cgroup_skb(egress)]
pub fn stream_name(ctx: SkBuffContext) -> i32 {
    name::<true>(&ctx)
}

// The same two with bounded loops, for kernels without bpf_loop (see `safe::repeat`): the
// loader puts them in the same slots.
#[cgroup_skb(egress)]
pub fn stream_first_bounded(ctx: SkBuffContext) -> i32 {
    first::<false>(&ctx)
}

#[cgroup_skb(egress)]
pub fn stream_name_bounded(ctx: SkBuffContext) -> i32 {
    name::<false>(&ctx)
}

#[inline(always)]
fn first<const LOOP: bool>(ctx: &SkBuffContext) -> i32 {
    let Some(sc) = crate::safe::scratch(&TARGET_SCRATCH) else { return 0 };
    let f = sc.flow;
    let job = sc.owner.job;
    let found = find::<LOOP>(ctx, sc, &f, job);
    if found == FOUND_NAME {
        crate::safe::tail_call(&DNS_PROGS, ctx, SLOT_NAME);
        return 0;
    }
    wr(&mut sc.verdict, found);
    crate::safe::tail_call(&DNS_PROGS, ctx, SLOT_CAPTURE);
    0
}

#[inline(always)]
fn name<const LOOP: bool>(ctx: &SkBuffContext) -> i32 {
    let Some(sc) = crate::safe::scratch(&TARGET_SCRATCH) else { return 0 };
    let job = sc.owner.job;
    let allowed = judge_name::<LOOP>(sc, job);
    wr(&mut sc.verdict, allowed as u32);
    crate::safe::tail_call(&DNS_PROGS, ctx, SLOT_CAPTURE);
    0
}

/// The segment captured (payload.rs) and the verdict carried out: a denied socket is marked,
/// so every later packet of it is dropped (tail call from stream_first or stream_name).
#[cgroup_skb(egress)]
pub fn stream_capture(ctx: SkBuffContext) -> i32 {
    let Some(sc) = crate::safe::scratch(&TARGET_SCRATCH) else { return 0 };
    let f = sc.flow;
    let allowed = rd(&sc.verdict) & 1;
    on_egress(&ctx, &f, ((allowed ^ 1) as u8) * CHUNK_DROPPED);
    if allowed != 0 {
        return 1;
    }
    let cookie = crate::safe::socket_cookie(&ctx);
    if !STREAMS.contains(&cookie) {
        let _ = STREAMS.insert(&cookie, &StreamState::default(), 0);
    }
    if let Some(st) = crate::safe::shared_entry_mut(&STREAMS, &cookie) {
        st.flags |= STREAM_DENIED | STREAM_STARTED;
    }
    0
}

/// FOUND_ALLOW or FOUND_DENY when the verdict needs no name, else FOUND_NAME.
#[inline(always)]
fn find<const LOOP: bool>(ctx: &SkBuffContext, sc: &mut TargetScratch, f: &Flow, job: u32) -> u32 {
    let key = job_addr_key(job, &map_key(&f.daddr, f.family));
    let proxy = PROXY_NET.get(&Key::new(160, key)).is_some_and(|p| p.contains(f.dport));
    if !proxy && ALLOW_NET.get(&Key::new(160, key)).is_some_and(|p| p.contains(f.dport)) {
        return FOUND_ALLOW;
    }
    // A proxy request must name an allowed target; elsewhere a segment naming nothing passes.
    let nothing = if proxy { FOUND_DENY } else { FOUND_ALLOW };
    let len = ctx.len();
    if len <= f.payload_off {
        return FOUND_ALLOW;
    }
    let n = len - f.payload_off;
    let n = if n > TARGET_SCAN_LEN as u32 { TARGET_SCAN_LEN as u32 } else { n };
    let n = ((n.wrapping_sub(1)) & M) + 1;
    if !crate::safe::skb_load(ctx, f.payload_off, &mut sc.buf, n) {
        return nothing;
    }
    wr(&mut sc.n, n);
    if n < TARGET_SCAN_LEN as u32 {
        sc.buf[(n & M) as usize] = 0;
    }
    wr(&mut sc.name_len, 0);
    wr(&mut sc.port, f.dport as u32);
    if !find_tls(sc) {
        if !find_http::<LOOP>(sc) {
            return FOUND_ALLOW;
        }
        let start = rd(&sc.name_off);
        name_at::<LOOP>(sc, start);
        let default = rd(&sc.other);
        if default != 0 {
            port_after(sc, default);
        }
    }
    let mut nlen = rd(&sc.name_len);
    let off = rd(&sc.name_off);
    if nlen > 0 && byte(sc, off + nlen - 1) == b'.' as u32 {
        nlen -= 1;
    }
    if nlen == 0 || nlen > TARGET_NAME_LEN as u32 || off + nlen > n {
        // Nothing usable.
        return nothing;
    }
    wr(&mut sc.name_len, nlen);
    FOUND_NAME
}

/// Whether the name in TARGET_SCRATCH (name_off, name_len, port) is allowed for `job`.
#[inline(always)]
fn judge_name<const LOOP: bool>(sc: &mut TargetScratch, job: u32) -> bool {
    let port = rd(&sc.port) as u16;
    if let Some(a) = ipv4_literal(sc) {
        let mut d = [0u8; 16];
        d[..4].copy_from_slice(&a.to_be_bytes());
        return egress_allowed::<LOOP>(job, &d, AF_INET, port);
    }
    let mask = name_mask::<LOOP>(sc, job) & !DNS_MASK_LOOKUP;
    mask != 0 && hosts_allow::<LOOP>(job, mask, port)
}

/// A TLS ClientHello's server name: name_off/name_len set, true.
#[inline(always)]
fn find_tls(sc: &mut TargetScratch) -> bool {
    if byte(sc, 0) != 0x16 || byte(sc, 1) != 3 || byte(sc, 5) != 1 {
        return false;
    }
    // record header 5, handshake header 4, version 2, random 32
    let mut off = 43;
    off += 1 + byte(sc, off); // session id
    off += 2 + be16(sc, off); // cipher suites
    off += 1 + byte(sc, off); // compression methods
    off += 2; // extensions length
    wr(&mut sc.pos, off);
    for _ in 0..TARGET_TLS_EXTENSIONS {
        let off = rd(&sc.pos);
        if off + 4 > rd(&sc.n) {
            return false;
        }
        let t = be16(sc, off);
        let l = be16(sc, off + 2);
        if t == 0 {
            // server_name: list length 2, name type 1 (0: host name), name length 2, name
            if byte(sc, off + 6) != 0 {
                return false;
            }
            let v = be16(sc, off + 7);
            wr(&mut sc.name_len, v);
            wr(&mut sc.name_off, off + 9);
            return true;
        }
        wr(&mut sc.pos, off + 4 + l);
    }
    false
}

/// Length of the name at `start`: up to a delimiter (`:`, `/`, space, CR, LF, tab, `?`, `#`,
/// the segment's end), at most TARGET_NAME_LEN + 1.
#[inline(always)]
fn name_at<const LOOP: bool>(sc: &mut TargetScratch, start: u32) {
    wr(&mut sc.name_off, start);
    wr(&mut sc.pos, 0);
    crate::safe::repeat::<LOOP, _>(TARGET_NAME_LEN as u32 + 1, &mut 0u32, name_step);
    let v = rd(&sc.pos);
    wr(&mut sc.name_len, v);
}

/// One byte of [`name_at`]: 1 (stop) at a delimiter, else `pos` + 1.
#[inline(always)]
extern "C" fn name_step(_: u64, _: &mut u32) -> i64 {
    let Some(sc) = crate::safe::scratch(&TARGET_SCRATCH) else { return 1 };
    let i = rd(&sc.pos);
    let c = raw(sc, rd(&sc.name_off) + i) as u64;
    // A delimiter: below 64 and its bit in DELIMS, without a branch per test.
    let small = ((c >> 6) == 0) as u64;
    if (DELIMS >> (c & 63)) & small & 1 != 0 {
        return 1;
    }
    wr(&mut sc.pos, i + 1);
    0
}

/// `:digits` right after the name: the port (else `default`).
#[inline(always)]
fn port_after(sc: &mut TargetScratch, default: u32) {
    let at = rd(&sc.name_off) + rd(&sc.name_len);
    if byte(sc, at) != b':' as u32 {
        wr(&mut sc.port, default);
        return;
    }
    wr(&mut sc.label, 0);
    for j in 1..6u32 {
        let c = byte(sc, at + j);
        if !(b'0' as u32..=b'9' as u32).contains(&c) {
            break;
        }
        let p = rd(&sc.label);
        wr(&mut sc.label, p * 10 + (c - b'0' as u32));
    }
    let p = rd(&sc.label);
    wr(&mut sc.port, if p == 0 || p > 65535 { default } else { p });
}

/// An HTTP request: CONNECT target, absolute URI host, else the Host header.
#[inline(always)]
fn find_http<const LOOP: bool>(sc: &mut TargetScratch) -> bool {
    // The method: 1-15 capital letters, then a space.
    let mut sp = 0;
    for i in 0..16u32 {
        let c = byte(sc, i);
        if c == b' ' as u32 {
            sp = i;
            break;
        }
        if !(b'A' as u32..=b'Z' as u32).contains(&c) {
            return false;
        }
    }
    if sp == 0 {
        return false;
    }
    // Parked: the verifier then follows one path on, not one per method length.
    wr(&mut sc.pos, sp);
    let sp = rd(&sc.pos);
    let is = |sc: &TargetScratch, at: u32, s: &[u8]| {
        let mut ok = true;
        for (k, b) in s.iter().enumerate() {
            ok &= lower(byte(sc, at + k as u32)) == *b as u32;
        }
        ok
    };
    // Where the name starts and the default port (0: the connection's), in map memory; the
    // caller measures the name once (one copy of that loop for the verifier).
    if sp == 7 && is(sc, 0, b"connect") {
        wr(&mut sc.name_off, 8);
        wr(&mut sc.other, 443);
        return true;
    }
    let u = sp + 1;
    if is(sc, u, b"http://") {
        wr(&mut sc.name_off, u + 7);
        wr(&mut sc.other, 80);
        return true;
    }
    if is(sc, u, b"https://") {
        wr(&mut sc.name_off, u + 8);
        wr(&mut sc.other, 443);
        return true;
    }
    // "\nHost:" anywhere in the examined bytes.
    wr(&mut sc.pos, u);
    crate::safe::repeat::<LOOP, _>(TARGET_SCAN_LEN as u32, &mut 0u32, host_step);
    if rd(&sc.pos) + 6 > rd(&sc.n) {
        return false;
    }
    let mut at = rd(&sc.pos) + 6;
    for _ in 0..8 {
        let c = byte(sc, at);
        if c != b' ' as u32 && c != b'\t' as u32 {
            break;
        }
        at += 1;
    }
    wr(&mut sc.name_off, at);
    // The connection's own port (set by the caller) is the one judged.
    wr(&mut sc.other, 0);
    true
}

/// One step of the search for "\nHost:" (from `pos`, in any case, as one test): 1 with `pos`
/// at the match, or once fewer than 6 bytes are left; else `pos` + 1. Its state is in
/// TARGET_SCRATCH.
#[inline(always)]
extern "C" fn host_step(_: u64, _: &mut u32) -> i64 {
    let Some(sc) = crate::safe::scratch(&TARGET_SCRATCH) else { return 1 };
    let i = rd(&sc.pos);
    if i + 6 > rd(&sc.n) {
        return 1;
    }
    let w = ((raw(sc, i + 1) << 24) | (raw(sc, i + 2) << 16) | (raw(sc, i + 3) << 8) | raw(sc, i + 4)) | 0x2020_2020;
    let hit = (raw(sc, i) ^ b'\n' as u32) | (w ^ u32::from_be_bytes(*b"host")) | (raw(sc, i + 5) ^ b':' as u32);
    if hit == 0 {
        return 1;
    }
    wr(&mut sc.pos, i + 1);
    0
}

/// The name as an IPv4 literal (a.b.c.d), if it is one.
#[inline(always)]
fn ipv4_literal(sc: &mut TargetScratch) -> Option<u32> {
    let len = rd(&sc.name_len);
    if len > 15 {
        return None;
    }
    let off = rd(&sc.name_off);
    wr(&mut sc.addr, 0);
    wr(&mut sc.octet, 0);
    wr(&mut sc.dots, 0);
    wr(&mut sc.other, 0);
    for j in 0..15u32 {
        if j >= len {
            break;
        }
        let c = byte(sc, off + j);
        if c == b'.' as u32 {
            let a = rd(&sc.addr);
            let v = (a << 8) | (rd(&sc.octet) & 0xff);
            wr(&mut sc.addr, v);
            let v = rd(&sc.other) | (rd(&sc.octet) >> 8);
            wr(&mut sc.other, v);
            wr(&mut sc.octet, 0);
            let v = rd(&sc.dots) + 1;
            wr(&mut sc.dots, v);
        } else if (b'0' as u32..=b'9' as u32).contains(&c) {
            let o = rd(&sc.octet);
            wr(&mut sc.octet, (o * 10 + (c - b'0' as u32)) & 0xfff);
        } else {
            return None;
        }
    }
    let o = rd(&sc.octet);
    if rd(&sc.dots) != 3 || rd(&sc.other) != 0 || o > 255 {
        return None;
    }
    Some((rd(&sc.addr) << 8) | o)
}

/// OR of the masks the DNS tables give the name (exact) and each of its proper suffixes
/// (`*.suffix`): the name hashed backwards in wire form, as name_hash does.
#[inline(always)]
fn name_mask<const LOOP: bool>(sc: &mut TargetScratch, job: u32) -> u64 {
    let seed = CONFIG.get(CFG_SEED).copied().unwrap_or(0);
    wr64(&mut sc.h, name_hash_step(seed, 0));
    wr64(&mut sc.mask, 0);
    wr(&mut sc.label, 0);
    let mut j = job;
    crate::safe::repeat::<LOOP, _>(TARGET_NAME_LEN as u32, &mut j, suffix_step);
    let h = name_hash_step(rd64(&sc.h), rd(&sc.label) as u8);
    let m = DNS_NAMES.value(&[h, job as u64]).unwrap_or(0);
    rd64(&sc.mask) | m
}

/// Byte `j` from the end of the name, for [`name_mask`] (`job` its context): hashed into `h`;
/// at a dot, the suffix after it looked up and its mask added. 1 (stop) past the name's start.
#[inline(always)]
extern "C" fn suffix_step(j: u64, job: &mut u32) -> i64 {
    let Some(sc) = crate::safe::scratch(&TARGET_SCRATCH) else { return 1 };
    let j = j as u32;
    let len = rd(&sc.name_len);
    if j >= len {
        return 1;
    }
    let c = raw(sc, rd(&sc.name_off) + len - 1 - j);
    let h = rd64(&sc.h);
    if c == b'.' as u32 {
        let h = name_hash_step(h, rd(&sc.label) as u8);
        wr64(&mut sc.h, h);
        let m = DNS_SUFFIXES.value(&[h, *job as u64]).unwrap_or(0);
        let v = rd64(&sc.mask) | m;
        wr64(&mut sc.mask, v);
        wr(&mut sc.label, 0);
    } else {
        wr64(&mut sc.h, name_hash_step(h, c as u8));
        let v = rd(&sc.label) + 1;
        wr(&mut sc.label, v);
    }
    0
}
