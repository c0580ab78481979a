//! Record kinds: the tag in every ring-buffer record's header.

/// `Header::kind`. Userspace matches it with `TryFrom<u32>`, never by transmuting.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    Exec = 1,
    Fork = 2,
    Exit = 3,
    Connect = 4,
    DnsPacket = 5,
    Payload = 6,
    /// A watched process opened a raw IP socket, a packet socket or an ICMP socket.
    Socket = 7,
    /// A watched process went for watcher itself: a signal to the agent, bpf(), umount, ptrace.
    Tamper = 8,
    /// A watched process connected a unix socket (path or abstract name).
    UnixConnect = 9,
    /// Bytes a watched socket sent (up to 64 KiB per TCP connection, every UDP datagram).
    StreamChunk = 10,
    /// An install script opened a credential store or a protected path, or read another
    /// process's environment or memory (watcher-ebpf/src/files.rs).
    File = 11,
}

impl TryFrom<u32> for RecordKind {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        Ok(match v {
            1 => RecordKind::Exec,
            2 => RecordKind::Fork,
            3 => RecordKind::Exit,
            4 => RecordKind::Connect,
            5 => RecordKind::DnsPacket,
            6 => RecordKind::Payload,
            7 => RecordKind::Socket,
            8 => RecordKind::Tamper,
            9 => RecordKind::UnixConnect,
            10 => RecordKind::StreamChunk,
            11 => RecordKind::File,
            other => return Err(other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_from_round_trips_and_refuses_unknown_tags() {
        for k in 0..20u32 {
            match RecordKind::try_from(k) {
                Ok(kind) => assert_eq!(kind as u32, k),
                Err(v) => assert!(v == 0 || v > 11, "{v}"),
            }
        }
    }
}
