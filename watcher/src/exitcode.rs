//! watcher's exit codes (documented in README.md). When nothing is wrong `watcher run` exits
//! with the command's own code (128+N when the command was killed by signal N).

/// watcher itself failed: bad arguments, an invalid policy, no root, a kernel without a
/// needed feature, an unwritable log.
pub const WATCHER_ERROR: i32 = 125;
/// The command was found but could not be executed.
pub const NOT_EXECUTABLE: i32 = 126;
/// The command was not found.
pub const NOT_FOUND: i32 = 127;
/// Enforce mode: something was denied or killed (the step fails even if the command exited 0).
pub const POLICY_VIOLATION: i32 = 77;
/// Enforce mode: the kernel lost events, so the step cannot be vouched for.
pub const EVENTS_LOST: i32 = 78;
