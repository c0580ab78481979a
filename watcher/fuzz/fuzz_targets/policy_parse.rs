//! Feeds arbitrary text to the policy parser: never a panic, bounded time (the depth and
//! size bounds run first), errors inside the text, and a valid policy renders to YAML that
//! parses back to the same policy.
//!
//! Run: `AYA_BUILD_SKIP=1 cargo fuzz run policy_parse fuzz/seeds/policy_parse` (from watcher/).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match watcher::policy::parse_str("fuzz.yaml", text) {
        Ok(p) => {
            let yaml = p.to_yaml();
            let again = watcher::policy::parse_str("fuzz.yaml", &yaml).expect("a rendered policy parses");
            assert_eq!(again.to_yaml(), yaml);
        }
        Err(e) => {
            assert_eq!(e.file, "fuzz.yaml");
            if let Some(l) = e.location {
                // YAML breaks lines at \n, \r\n and a lone \r (regression seed cr-line-breaks).
                let breaks = text.matches('\n').count() + text.matches('\r').count();
                assert!(l.line >= 1 && l.line <= breaks + 2, "{e}");
            }
        }
    }
});
