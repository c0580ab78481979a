//! The kernel's loss counters: one enum, whose names the log (`loss.source`), `watcher status`
//! and the metrics all use.

/// Indexes of the per-CPU `COUNTERS` array: what the kernel could not deliver or track.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Counter {
    /// The ring buffer was full for an exec record.
    RingbufFullExec = 0,
    RingbufFullFork = 1,
    RingbufFullExit = 2,
    RingbufFullConnect = 3,
    RingbufFullDns = 4,
    /// The `WATCHED` map was full: a new process could not be tracked.
    WatchedFull = 5,
    /// The per-thread exec scratch map was full.
    ExecScratchFull = 6,
    /// The ring buffer was full for a payload record.
    RingbufFullPayload = 7,
    /// The ring buffer was full for a socket, tamper, unix-connect or backstop record.
    RingbufFullGuard = 8,
    /// A socket's owner entry could not be allocated: the socket (or its connect) was refused.
    SockOwnerFull = 9,
}

pub const NUM_COUNTERS: u32 = 10;

impl Counter {
    pub const ALL: [Counter; NUM_COUNTERS as usize] = [
        Counter::RingbufFullExec,
        Counter::RingbufFullFork,
        Counter::RingbufFullExit,
        Counter::RingbufFullConnect,
        Counter::RingbufFullDns,
        Counter::WatchedFull,
        Counter::ExecScratchFull,
        Counter::RingbufFullPayload,
        Counter::RingbufFullGuard,
        Counter::SockOwnerFull,
    ];

    /// The name in logs, status and metrics (a contract: never renamed).
    pub const fn name(self) -> &'static str {
        match self {
            Counter::RingbufFullExec => "exec",
            Counter::RingbufFullFork => "fork",
            Counter::RingbufFullExit => "exit",
            Counter::RingbufFullConnect => "connect",
            Counter::RingbufFullDns => "dns",
            Counter::WatchedFull => "watch",
            Counter::ExecScratchFull => "exec-scratch",
            Counter::RingbufFullPayload => "payload",
            Counter::RingbufFullGuard => "guard",
            Counter::SockOwnerFull => "socket-owner",
        }
    }

    pub const fn index(self) -> u32 {
        self as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_dense_and_names_unique() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index() as usize, i);
            assert_eq!(Counter::ALL.iter().filter(|d| d.name() == c.name()).count(), 1);
        }
    }
}
