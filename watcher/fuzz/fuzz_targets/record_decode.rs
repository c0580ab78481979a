//! Feeds arbitrary bytes to the kernel record decoder (what the ring buffer hands over):
//! never a panic, whatever the length or tag.
//!
//! Run: `AYA_BUILD_SKIP=1 cargo fuzz run record_decode fuzz/seeds/record_decode` (from watcher/).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = watcher::record::decode(data);
});
