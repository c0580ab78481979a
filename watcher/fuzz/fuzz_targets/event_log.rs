//! Feeds arbitrary bytes to the event log reader: lines are split alike whatever the buffer
//! size, the fast line parser agrees with the reference (serde) parser on every line, and a
//! parsed event written back reads as the same event.
//!
//! Run: `AYA_BUILD_SKIP=1 cargo fuzz run event_log fuzz/seeds/event_log` (from watcher/).
#![no_main]

use std::io::BufReader;

use libfuzzer_sys::fuzz_target;
use watcher::parse::{Tail, for_each_line_terminated, parse_line, parse_reference};

fn lines(data: &[u8], cap: usize) -> Vec<(Vec<u8>, u64, bool)> {
    let mut r = BufReader::with_capacity(cap, data);
    let mut out = Vec::new();
    let tail = for_each_line_terminated(
        &mut r,
        |l, n, t| {
            out.push((l.to_vec(), n, t));
            Ok::<(), std::io::Error>(())
        },
        |e, _| e,
    )
    .expect("reading from memory cannot fail");
    assert_eq!(tail, Tail::Complete);
    out
}

fuzz_target!(|data: &[u8]| {
    let a = lines(data, 7);
    assert_eq!(a, lines(data, 64 * 1024));
    for (line, _, _) in &a {
        let fast = parse_line(line);
        let reference = parse_reference(line);
        match (&fast, &reference) {
            (Ok(x), Ok(y)) => assert_eq!(x, y),
            (Err(_), Err(_)) => {}
            _ => panic!("parsers disagree: fast {fast:?}, reference {reference:?}"),
        }
        if let Ok(e) = fast {
            let text = serde_json::to_string(&e).expect("an event serializes");
            assert_eq!(parse_line(text.as_bytes()).expect("a written event reads back"), e);
        }
    }
});
