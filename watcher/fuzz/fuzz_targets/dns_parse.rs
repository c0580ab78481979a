//! Feeds arbitrary bytes to the DNS parser on both transports.
//!
//! Run: `AYA_BUILD_SKIP=1 cargo fuzz run dns_parse fuzz/seeds/dns_parse` (from watcher/),
//! or with the corpus directory only. libFuzzer flags the panics, hangs and
//! oversized allocations; the checks below add the parser's own promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use watcher::dns::{self, AnswerData, Transport};

fn printable(s: &str) -> bool {
    s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

fuzz_target!(|data: &[u8]| {
    for transport in [Transport::Udp, Transport::Tcp] {
        let Ok(msg) = dns::parse(data, transport) else {
            continue;
        };
        let ips = dns::resolved_ips(&msg);
        assert!(ips.len() <= msg.answers.len());
        // Rendered names never carry control characters (or spaces).
        for q in &msg.questions {
            assert!(printable(&q.name) && !q.name.is_empty(), "{:?}", q.name);
            assert!(q.name.len() <= 4 * 255, "{}", q.name.len());
            assert_eq!(q.qtype, dns::qtype_name(q.qtype_code));
        }
        for a in &msg.answers {
            assert!(printable(&a.name), "{:?}", a.name);
            if let AnswerData::Name(target) = &a.data {
                assert!(printable(target), "{target:?}");
            }
        }
        // Each question takes at least 5 bytes and each answer at least 11.
        assert!(msg.questions.len() * 5 + msg.answers.len() * 11 <= data.len());
    }
    // The TCP parse of a framed message is the UDP parse of the message.
    if let Ok(len) = u16::try_from(data.len()) {
        let mut framed = Vec::with_capacity(data.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(data);
        assert_eq!(
            dns::parse(data, Transport::Udp),
            dns::parse(&framed, Transport::Tcp)
        );
    }
});
