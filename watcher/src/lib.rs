//! watcher: an eBPF build-sandbox egress and syscall watcher.
//!
//! The library holds everything but the CLI so that tests and benchmarks reach the same code.
//! Only `sensor` touches aya; `record`, `collect`, `event`, `dns`, `policy` and `secrets` are
//! pure and tested without a kernel.
/// `watcher --version`: the crate version and the commit it was built from (build.rs).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("WATCHER_COMMIT"), ")");

/// A line for the user on stderr, like `eprintln!` but never a panic: when stderr is closed
/// (`watcher run ... 2>&1 | head`) the line is dropped, and the watch, its log and its report
/// go on.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr(), $($arg)*);
    }};
}

/// [`say!`] without the newline.
#[macro_export]
macro_rules! say_text {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::write!(::std::io::stderr(), $($arg)*);
    }};
}

/// A line on stdout (reports, status, schema), like `println!` but never a panic: a reader
/// that went away (`watcher replay ... | head`) ends the output quietly, and the exit code is
/// still the verdict's.
#[macro_export]
macro_rules! show {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stdout(), $($arg)*);
    }};
}

/// [`show!`] without the newline.
#[macro_export]
macro_rules! show_text {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::write!(::std::io::stdout(), $($arg)*);
    }};
}

pub mod cgroup;
pub mod ci_policy;
pub mod collect;
pub mod credentials;
pub mod daemon;
pub mod dns;
pub mod drill;
pub mod engine;
#[cfg(test)]
mod engine_tests;
pub mod error;
pub mod event;
pub mod event_schema;
pub mod exitcode;
pub mod files;
pub mod held;
pub mod log;
pub mod outfile;
pub mod parse;
pub mod pipeline;
pub mod policy;
pub mod probe;
pub mod procfs;
pub mod proctree;
pub mod project;
pub mod proxies;
pub use watcher_common::record;
pub mod redact;
pub mod replay;
pub mod report;
pub mod run;
pub mod run_error;
pub mod run_user;
pub mod secrets;
pub mod sensor;
pub mod session;
pub mod shell_rule;
pub mod step_client;
pub mod stream;
pub mod stream_target;
pub mod suggest;
pub mod system_tool;
pub use error::{Error, Result};
