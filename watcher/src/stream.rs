//! Reassembly of the stream chunks the kernel captures (watcher-ebpf/src/payload.rs) and
//! the search for protected values in them. Pure: tested without a kernel.
//!
//! Per socket, the search runs over each new chunk preceded by the last bytes already
//! searched (an overlap window as long as the longest encoded form the detector looks for,
//! three times over for a percent-encoded one), so a value split across two writes, two
//! TCP segments or two chunks is found. A chunk whose bytes were already seen (the kernel
//! never sends retransmitted bytes twice, but chunks can repeat after a lost record) is
//! trimmed to its new bytes; after a gap (a lost chunk) the window restarts. UDP datagrams
//! are searched one by one (a datagram's chunks are joined, never two datagrams).
//!
//! Bounds: the kernel captures at most 64 KiB per socket; here at most [`MAX_STREAMS`]
//! sockets are followed at once (the least recently seen is forgotten: its next chunk is
//! searched without the window), each holding at most its window (a few hundred bytes to
//! a few KiB) and the set of variables already reported.
use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use crate::{
    event::SecretMatch,
    record::Proto,
    secrets::{SecretHit, SecretSet},
};

/// Sockets followed at once.
pub const MAX_STREAMS: usize = 4096;

/// One find: a protected variable's value at a stream offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Find {
    pub secret: SecretMatch,
    pub offset: u64,
}

/// What a chunk gave: whether it is its socket's first data, and the new finds in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkResult {
    pub first: bool,
    pub finds: Vec<Find>,
}

#[derive(Default)]
struct Stream {
    /// Stream offset of the next new byte.
    next: u64,
    /// The last bytes searched, ending at `next`.
    tail: Vec<u8>,
    /// (variable, encoding) already reported on this socket.
    reported: BTreeSet<(String, String)>,
    last_seen: u64,
}

#[derive(Default)]
pub struct Streams {
    streams: HashMap<u64, Stream>,
    clock: u64,
}

/// A chunk as the collector hands it over.
pub struct Chunk<'a> {
    pub cookie: u64,
    pub proto: Proto,
    pub offset: u64,
    /// The first chunk of its packet (for UDP: of its datagram).
    pub packet_start: bool,
    pub data: &'a [u8],
    pub daddr: IpAddr,
}

impl Streams {
    pub fn new() -> Streams {
        Streams::default()
    }

    /// Sockets followed now.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Search one chunk; `sets` are the protected values (several sets: see Collector).
    pub fn push(&mut self, sets: &[SecretSet], c: &Chunk<'_>) -> ChunkResult {
        self.clock += 1;
        let first = !self.streams.contains_key(&c.cookie);
        if first && self.streams.len() >= MAX_STREAMS {
            self.evict();
        }
        let window = window_for(sets);
        let st = self.streams.entry(c.cookie).or_default();
        st.last_seen = self.clock;
        let end = c.offset + c.data.len() as u64;
        let mut data = c.data;
        let mut offset = c.offset;
        if c.proto == Proto::Udp && c.packet_start {
            // A new datagram: never joined to the one before.
            st.tail.clear();
            st.next = offset;
        } else if end <= st.next && !first {
            return ChunkResult { first, finds: vec![] }; // seen already
        } else if offset < st.next {
            data = &data[(st.next - offset) as usize..];
            offset = st.next;
        } else if offset > st.next {
            st.tail.clear(); // a gap: nothing to join with
        }
        let mut hay = Vec::with_capacity(st.tail.len() + data.len());
        hay.extend_from_slice(&st.tail);
        hay.extend_from_slice(data);
        let hay_start = offset - st.tail.len() as u64;
        let mut finds = Vec::new();
        for set in sets {
            for (hit, at) in set.find_in_payload_at(&hay) {
                let SecretHit { variable, encoding } = hit;
                let key = (variable.clone(), encoding.as_str().to_string());
                if st.reported.contains(&key) {
                    continue;
                }
                st.reported.insert(key);
                finds.push(Find {
                    secret: SecretMatch {
                        redacted: set.redacted(&variable).map(str::to_string),
                        variable,
                        encoding: encoding.as_str().to_string(),
                    },
                    offset: hay_start + at as u64,
                });
            }
        }
        let keep = hay.len().min(window);
        st.tail = hay[hay.len() - keep..].to_vec();
        st.next = end.max(st.next);
        finds.sort_by(|a, b| a.secret.cmp(&b.secret));
        ChunkResult { first, finds }
    }

    /// Forget a socket (its capture is over).
    pub fn forget(&mut self, cookie: u64) {
        self.streams.remove(&cookie);
    }

    fn evict(&mut self) {
        if let Some((&k, _)) = self.streams.iter().min_by_key(|(_, s)| s.last_seen) {
            self.streams.remove(&k);
        }
    }
}

/// Bytes of overlap: a value split anywhere is found whole if the window holds all of it
/// but its last byte; percent-encoding takes up to three bytes per byte.
fn window_for(sets: &[SecretSet]) -> usize {
    let longest = sets.iter().map(SecretSet::longest_payload_needle).max().unwrap_or(0);
    (3 * longest).saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use data_encoding::{BASE64, HEXLOWER};

    use super::*;

    const VALUE: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn sets() -> Vec<SecretSet> {
        vec![
            SecretSet::new(&["AWS_*".to_string()], [("AWS_SECRET_ACCESS_KEY".to_string(), VALUE.to_string())]).unwrap(),
        ]
    }

    fn chunk(cookie: u64, proto: Proto, offset: u64, start: bool, data: &[u8]) -> Chunk<'_> {
        Chunk { cookie, proto, offset, packet_start: start, data, daddr: "198.18.0.2".parse().unwrap() }
    }

    fn tcp_in_pieces(stream: &[u8], cuts: &[usize]) -> Vec<Find> {
        let s = sets();
        let mut st = Streams::new();
        let mut out = Vec::new();
        let mut at = 0;
        for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
            out.extend(st.push(&s, &chunk(1, Proto::Tcp, at as u64, true, &stream[at..cut])).finds);
            at = cut;
        }
        out
    }

    #[test]
    fn a_value_split_anywhere_between_two_chunks_is_found_once_at_its_offset() {
        let pad = "x".repeat(700);
        for (enc, form) in [
            ("raw", VALUE.to_string()),
            ("hex", HEXLOWER.encode(VALUE.as_bytes())),
            ("base64", BASE64.encode(VALUE.as_bytes())),
        ] {
            let stream = format!("POST / HTTP/1.1\r\n\r\n{pad}k={form}&more");
            let at = stream.find(&form).unwrap();
            for cut in at..=at + form.len() {
                let finds = tcp_in_pieces(stream.as_bytes(), &[cut]);
                let f: Vec<&Find> = finds.iter().filter(|f| f.secret.encoding == enc).collect();
                assert_eq!(f.len(), 1, "{enc} cut at {cut}: {finds:?}");
                assert!(f[0].offset <= at as u64 + 2 && f[0].offset + 3 >= at as u64, "{enc}: {} vs {at}", f[0].offset);
                assert_eq!(f[0].secret.redacted.as_deref(), Some("wJ…(40 chars)"));
            }
        }
    }

    #[test]
    fn many_small_writes_and_retransmitted_or_repeated_chunks() {
        let stream = format!("{}{VALUE}{}", "a".repeat(5000), "b".repeat(100));
        // One byte per chunk.
        let cuts: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(tcp_in_pieces(stream.as_bytes(), &cuts).len(), 1);
        // Overlapping and repeated chunks: found once, never twice.
        let s = sets();
        let mut st = Streams::new();
        let b = stream.as_bytes();
        let mut finds = Vec::new();
        for (from, to) in [(0, 5010), (5000, 5020), (0, 5020), (5015, b.len()), (5015, b.len())] {
            finds.extend(st.push(&s, &chunk(9, Proto::Tcp, from as u64, true, &b[from..to])).finds);
        }
        assert_eq!(finds.len(), 1, "{finds:?}");
        assert_eq!(finds[0].offset, 5000);
    }

    #[test]
    fn a_gap_restarts_the_window_and_udp_datagrams_are_not_joined() {
        // A value whose halves are each shorter than a partial-leak window.
        let short = "Zq8LmN4pR7sT2vW9xY3bC6dF";
        let s = vec![SecretSet::new(&["*_TOKEN".to_string()], [("CI_TOKEN".to_string(), short.to_string())]).unwrap()];
        let (a, b) = short.split_at(12);
        // TCP with a lost chunk in between: the halves are not joined across the gap.
        let mut st = Streams::new();
        assert!(st.push(&s, &chunk(1, Proto::Tcp, 0, true, a.as_bytes())).finds.is_empty());
        assert!(st.push(&s, &chunk(1, Proto::Tcp, 100, true, b.as_bytes())).finds.is_empty());
        // UDP: two datagrams carrying the halves are two messages...
        let mut st = Streams::new();
        let r = st.push(&s, &chunk(2, Proto::Udp, 0, true, a.as_bytes()));
        assert!(r.first && r.finds.is_empty());
        assert!(st.push(&s, &chunk(2, Proto::Udp, 12, true, b.as_bytes())).finds.is_empty());
        // ...a value in the second datagram is found, and one split over one datagram's chunks.
        let r = st.push(&s, &chunk(2, Proto::Udp, 24, true, format!("q={short}").as_bytes()));
        assert!(!r.first);
        assert_eq!(r.finds.len(), 1);
        assert_eq!(r.finds[0].offset, 26);
        let mut st = Streams::new();
        assert!(st.push(&s, &chunk(3, Proto::Udp, 0, true, a.as_bytes())).finds.is_empty());
        assert_eq!(st.push(&s, &chunk(3, Proto::Udp, 12, false, b.as_bytes())).finds.len(), 1);
    }

    #[test]
    fn the_number_of_followed_sockets_is_bounded() {
        let s = sets();
        let mut st = Streams::new();
        for cookie in 0..(MAX_STREAMS as u64 + 100) {
            st.push(&s, &chunk(cookie, Proto::Tcp, 0, true, b"GET / HTTP/1.1\r\n"));
        }
        assert_eq!(st.len(), MAX_STREAMS);
        st.forget(MAX_STREAMS as u64 + 99);
        assert_eq!(st.len(), MAX_STREAMS - 1);
        // Nothing protected: the window is empty, nothing is found, nothing kept.
        let mut st = Streams::new();
        let r = st.push(&[], &chunk(1, Proto::Tcp, 0, true, VALUE.as_bytes()));
        assert!(r.first && r.finds.is_empty());
    }
}
