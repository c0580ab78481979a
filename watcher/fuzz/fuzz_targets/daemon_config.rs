//! Feeds arbitrary text to the daemon configuration parser: never a panic, bounded time.
//!
//! Run: `AYA_BUILD_SKIP=1 cargo fuzz run daemon_config fuzz/seeds/daemon_config` (from watcher/).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = std::path::Path::new("/etc/watcher/fuzz.yaml");
    if let Err(e) = watcher::daemon::config::parse(path, text) {
        assert_eq!(e.file, "/etc/watcher/fuzz.yaml");
    }
});
