//! watcher: an eBPF build-sandbox egress and syscall watcher.
//!
//! The library holds everything but the CLI so that tests and benchmarks reach the same code.
//! Only `sensor` touches aya; `record`, `collect`, `event`, `dns`, `policy` and `secrets` are
//! pure and tested without a kernel.
pub mod cgroup;
pub mod collect;
pub mod credentials;
pub mod daemon;
pub mod dns;
pub mod drill;
pub mod engine;
pub mod event;
pub mod event_schema;
pub mod exitcode;
pub mod held;
pub mod log;
pub mod outfile;
pub mod parse;
pub mod pipeline;
pub mod policy;
pub mod probe;
pub mod proctree;
pub mod project;
pub mod record;
pub mod redact;
pub mod replay;
pub mod report;
pub mod run;
pub mod secrets;
pub mod sensor;
pub mod session;
pub mod shell_rule;
pub mod stream;
pub mod stream_target;
pub mod suggest;
