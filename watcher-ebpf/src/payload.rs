//! Whole-stream capture for secret detection: the first STREAM_MAX_BYTES (64 KiB) each
//! watched socket sends (not port 53), as chunks of up to STREAM_CHUNK_LEN bytes.
//!
//! TCP is captured in stream order from its first data byte: a per-socket state (by socket
//! cookie) keeps the sequence number of the first data byte and of the next new byte, so a
//! retransmitted segment is not captured again and a partly retransmitted one only for its
//! new bytes. A stream whose first bytes are a TLS record header is not captured past its
//! first chunk (its bytes are ciphertext). UDP is captured datagram by datagram, each
//! datagram's chunks flagged from its start. Observe only: never drops.
use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray},
    programs::SkBuffContext,
};
use watcher_common::{
    CHUNK_BUDGET_END, CHUNK_PACKET_START, CHUNK_TLS, Counter, PROTO_TCP, RecordKind, STREAM_CHUNK_HDR_LEN,
    STREAM_CHUNK_LEN, STREAM_CHUNKS_PER_PACKET, STREAM_MAX_BYTES, STREAM_STARTED, STREAM_STOPPED, StreamChunkRecord,
    StreamState,
};

use crate::{
    common::count,
    dns::owner_header,
    maps::{EVENTS, Flow},
    safe::Lookup as _,
};

/// Capture state per socket cookie.
#[map]
pub(crate) static STREAMS: LruHashMap<u64, StreamState> = LruHashMap::with_max_entries(16384, 0);

/// One chunk record per CPU, built here and copied into the ring buffer with only its used
/// bytes (bpf_ringbuf_output), so a 100-byte packet costs about 100 bytes of ring, not 4 KiB.
#[map]
static CHUNK_SCRATCH: PerCpuArray<StreamChunkRecord> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn load<T: Copy>(ctx: &SkBuffContext, off: u32) -> Option<T> {
    ctx.load::<T>(off as usize).ok()
}

/// Loop state of one packet's capture, parked in map memory: the verifier does not track
/// what map memory holds, so the many ways into the chunk loop (TCP or UDP, retransmitted
/// or not, TLS or not) and the branches inside it end in equal states it prunes, instead of
/// one state per path (which blew its budget of a million instructions).
#[repr(C)]
struct Cursor {
    /// Packet offset of the next byte to capture, and of the packet's end.
    pos: u32,
    end: u32,
    /// Bytes the socket may still have captured.
    budget: u32,
    /// Stream offset of the next byte.
    off: u32,
    /// CHUNK_* flags of the next chunk.
    flags: u32,
    _pad: u32,
}

#[map]
static CURSOR: PerCpuArray<Cursor> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn get(v: &u32) -> u32 {
    crate::safe::reread(v)
}

#[inline(always)]
fn put(v: &mut u32, x: u32) {
    crate::safe::park(v, x)
}

/// A data packet leaving a watched socket (egress, not port 53). `extra`: CHUNK_* flags for
/// its chunks (CHUNK_DROPPED).
#[inline(always)]
pub fn on_egress(ctx: &SkBuffContext, f: &Flow, extra: u8) {
    let len = ctx.len();
    if len <= f.payload_off {
        return; // a bare ACK, SYN, FIN
    }
    let cookie = crate::safe::socket_cookie(ctx);
    let Some(owner) = crate::safe::skb_owner(ctx) else { return };
    if !STREAMS.contains(&cookie) {
        let _ = STREAMS.insert(&cookie, &StreamState::default(), 0);
    }
    let Some(st) = crate::safe::shared_entry_mut(&STREAMS, &cookie) else { return };
    if get(&st.flags) & STREAM_STOPPED != 0 {
        return;
    }
    let Some(cur) = crate::safe::scratch(&CURSOR) else { return };
    let packet_len = len - f.payload_off;
    // Packet offset of the first byte to capture, and its stream offset.
    let mut start = f.payload_off;
    let offset: u32;
    let tcp = f.proto == PROTO_TCP;
    if tcp {
        let Some(seq) = load::<u32>(ctx, f.l4_off + 4).map(u32::from_be) else { return };
        if st.flags & STREAM_STARTED == 0 {
            st.isn = seq;
            st.next_seq = seq;
            st.flags |= STREAM_STARTED;
        }
        let next = get(&st.next_seq);
        let end_seq = seq.wrapping_add(packet_len);
        let behind = next.wrapping_sub(seq) as i32;
        if behind > 0 {
            // Starts before the next new byte: a retransmission, perhaps with new bytes.
            if (end_seq.wrapping_sub(next) as i32) <= 0 {
                return;
            }
            start += behind as u32;
            offset = next.wrapping_sub(get(&st.isn));
        } else {
            offset = seq.wrapping_sub(get(&st.isn));
        }
        if (end_seq.wrapping_sub(next) as i32) > 0 {
            put(&mut st.next_seq, end_seq);
        }
    } else {
        offset = get(&st.captured);
        st.flags |= STREAM_STARTED;
    }
    let captured = get(&st.captured);
    if offset >= STREAM_MAX_BYTES || captured >= STREAM_MAX_BYTES {
        st.flags |= STREAM_STOPPED;
        return;
    }
    let mut flags = (CHUNK_PACKET_START | extra) as u32;
    if tcp && offset == 0 {
        // A TLS record header (handshake, version 3.x): ciphertext follows, judged by its SNI.
        if let Some(h) = load::<[u8; 3]>(ctx, start)
            && h[0] == 0x16
            && h[1] == 0x03
            && h[2] <= 0x04
        {
            flags |= CHUNK_TLS as u32;
            st.flags |= STREAM_STOPPED;
        }
    }
    put(&mut cur.pos, start);
    put(&mut cur.end, len);
    put(&mut cur.budget, STREAM_MAX_BYTES - captured);
    put(&mut cur.off, offset);
    put(&mut cur.flags, flags);
    let Some(rec) = crate::safe::scratch(&CHUNK_SCRATCH) else { return };
    owner_header(&mut rec.hdr, RecordKind::StreamChunk, &owner);
    rec.cookie = cookie;
    rec.daddr = f.daddr;
    rec.family = f.family;
    rec.dport = f.dport;
    rec.proto = f.proto;
    rec._pad = [0; 2];
    rec.packet_len = packet_len;
    rec._pad2 = 0;
    for _ in 0..STREAM_CHUNKS_PER_PACKET {
        let (pos, end, budget) = (get(&cur.pos), get(&cur.end), get(&cur.budget));
        if pos >= end || budget == 0 {
            break;
        }
        let mut n = end - pos;
        if n > budget {
            n = budget;
        }
        // In [1, STREAM_CHUNK_LEN], with a mask the verifier can see.
        let n = ((n.wrapping_sub(1)) & (STREAM_CHUNK_LEN as u32 - 1)) + 1;
        if !crate::safe::skb_load(ctx, pos, &mut rec.data, n) {
            break;
        }
        let left = budget.saturating_sub(n);
        let flags = get(&cur.flags);
        rec.offset = get(&cur.off);
        rec.len = n;
        rec.flags = (flags as u8) | if left == 0 { CHUNK_BUDGET_END } else { 0 };
        let size = STREAM_CHUNK_HDR_LEN + n as usize;
        let bytes = crate::safe::record_bytes::<StreamChunkRecord>(rec, size);
        if EVENTS.output(bytes, 0).is_err() {
            count(Counter::RingbufFullPayload);
        }
        let c = get(&st.captured).wrapping_add(n);
        put(&mut st.captured, c);
        put(&mut cur.budget, left);
        put(&mut cur.pos, pos.wrapping_add(n));
        let o = get(&cur.off).wrapping_add(n);
        put(&mut cur.off, o);
        put(&mut cur.flags, flags & !(CHUNK_PACKET_START as u32));
        if flags & CHUNK_TLS as u32 != 0 || left == 0 {
            break;
        }
    }
    if get(&st.captured) >= STREAM_MAX_BYTES {
        st.flags |= STREAM_STOPPED;
    }
}
