//! Decoding of the fixed-layout records the kernel programs put in the ring buffer, beside the
//! layouts it reads (userspace only: the `user` feature).
//!
//! Each record is length-checked and read with `read_unaligned`; the tag is matched against the
//! known [`RecordKind`](crate::RecordKind) values, never transmuted. Pure: no aya, no I/O.
use std::{
    format,
    net::IpAddr,
    string::{String, ToString},
    vec::Vec,
};

use crate as c;

/// Task fields common to every record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    /// Nanoseconds since boot (CLOCK_BOOTTIME).
    pub boot_ns: u64,
    pub cgroup_id: u64,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    /// The kernel's job id of the process (0 for `watcher run`; daemon jobs have
    /// watcher_common::JOB_DAEMON_BIT set).
    pub job: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Exec {
        task: Task,
        ret: i32,
        filename: String,
        argv: Vec<String>,
        argv_truncated: bool,
        killed: bool,
        /// The kernel recognised the executable as a shell by its content.
        shell: bool,
        /// Captured environment entries (only names the agent asked for), in order.
        env: Vec<(String, String)>,
        /// Daemon mode: the kernel stopped the program at exec (SIGSTOP) because its job had
        /// no tables yet; the daemon continues it once they are written.
        stopped: bool,
        /// Enforce mode: the kernel holds this shell (SIGSTOP) for the agent's judgement.
        held: bool,
        /// A `#!` script whose interpreter is a shell binary.
        script: bool,
    },
    Fork {
        task: Task,
        child_pid: u32,
    },
    Exit {
        task: Task,
        exit_code: Option<i32>,
    },
    Connect {
        task: Task,
        daddr: IpAddr,
        dport: u16,
        proto: Proto,
        /// true for an unconnected UDP send (sendto/sendmsg with an address).
        sendmsg: bool,
        /// true for a packet the packet backstop judged (a socket kind the socket-address hooks
        /// do not see: ICMP, raw IP, SCTP).
        packet: bool,
        allowed: bool,
    },
    /// A raw IP, packet or ICMP socket was opened.
    Socket {
        task: Task,
        family: u32,
        sock_type: u32,
        protocol: u32,
        killed: bool,
    },
    /// A watched process went for watcher itself.
    Tamper {
        task: Task,
        what: TamperKind,
        arg: u32,
        target: u32,
        killed: bool,
    },
    /// An install script's open of a credential store or protected path, or its read of
    /// another process's environment or memory (files.rs in the kernel).
    File {
        task: Task,
        what: FileWhat,
        path: String,
        /// The open asked for writing.
        write: bool,
        /// c::FILE_CRED / FILE_TAMPER / FILE_KILL / FILE_PROC of the rule that matched.
        rule: u32,
        /// The process read (environ, mem, process_vm_readv, ptrace), else 0.
        target: u32,
        killed: bool,
    },
    /// A unix-socket connect.
    UnixConnect {
        task: Task,
        /// The path, or `@name` for an abstract socket (non-printable bytes escaped).
        path: String,
        /// The kernel found it in the job's deputy table.
        deputy: bool,
        killed: bool,
    },
    DnsPacket {
        task: Task,
        saddr: IpAddr,
        daddr: IpAddr,
        sport: u16,
        dport: u16,
        proto: Proto,
        egress: bool,
        payload_len: u32,
        payload: Vec<u8>,
        allowed: bool,
    },
    /// The first bytes of the first data packet a watched socket sent.
    Payload {
        task: Task,
        daddr: IpAddr,
        dport: u16,
        proto: Proto,
        payload_len: u32,
        payload: Vec<u8>,
    },
    /// A chunk of what a watched socket sent (payload.rs in the kernel): reassembled per
    /// socket by `stream::Streams`.
    StreamChunk {
        task: Task,
        cookie: u64,
        daddr: IpAddr,
        dport: u16,
        proto: Proto,
        /// Stream offset of `data[0]`.
        offset: u32,
        /// Payload size of the packet the chunk is from.
        packet_len: u32,
        /// c::CHUNK_* flags.
        flags: u8,
        data: Vec<u8>,
    },
}

impl Record {
    /// The task the record is about.
    pub fn task(&self) -> &Task {
        match self {
            Record::Exec { task, .. }
            | Record::Fork { task, .. }
            | Record::Exit { task, .. }
            | Record::Connect { task, .. }
            | Record::DnsPacket { task, .. }
            | Record::Payload { task, .. }
            | Record::StreamChunk { task, .. }
            | Record::Socket { task, .. }
            | Record::Tamper { task, .. }
            | Record::File { task, .. }
            | Record::UnixConnect { task, .. } => task,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    Sctp,
    Other,
}

/// What a tamper record is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, Hash, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TamperKind {
    /// A signal to the agent.
    Signal,
    /// The bpf() system call.
    Bpf,
    /// umount.
    Umount,
    /// ptrace of a process outside the job.
    Ptrace,
}

/// What a file record is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, Hash, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileWhat {
    /// open(2), openat(2), openat2(2), creat(2) of a path a rule names.
    Open,
    /// /proc/PID/environ of a process outside the script's tree.
    Environ,
    /// /proc/PID/mem of a process outside the script's tree.
    Mem,
    /// process_vm_readv(2) of a process outside the script's tree.
    VmReadv,
    /// ptrace(2) of a process of the job outside the script's tree.
    Ptrace,
}

impl FileWhat {
    pub fn as_str(self) -> &'static str {
        match self {
            FileWhat::Open => "open",
            FileWhat::Environ => "environ",
            FileWhat::Mem => "mem",
            FileWhat::VmReadv => "vm_readv",
            FileWhat::Ptrace => "ptrace",
        }
    }
}

impl TamperKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TamperKind::Signal => "signal",
            TamperKind::Bpf => "bpf",
            TamperKind::Umount => "umount",
            TamperKind::Ptrace => "ptrace",
        }
    }
}

impl Proto {
    pub fn from_ip_proto(p: u8) -> Proto {
        match p {
            c::PROTO_TCP => Proto::Tcp,
            c::PROTO_UDP => Proto::Udp,
            c::PROTO_ICMP => Proto::Icmp,
            c::PROTO_ICMPV6 => Proto::Icmpv6,
            c::PROTO_SCTP => Proto::Sctp,
            _ => Proto::Other,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Icmpv6 => "icmpv6",
            Proto::Sctp => "sctp",
            Proto::Other => "other",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than a header")]
    Short(usize),
    #[error("record kind {kind} needs {need} bytes, got {got}")]
    Truncated { kind: u32, need: usize, got: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
}

fn read<T: Copy>(buf: &[u8], kind: u32) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if buf.len() < need {
        return Err(DecodeError::Truncated { kind, need, got: buf.len() });
    }
    // SAFETY: length checked above; T is a repr(C) plain-old-data record for which every bit
    // pattern is valid; read_unaligned makes no alignment assumption.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

/// Bytes up to the first NUL, lossily as UTF-8.
pub fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn task(h: &c::Header) -> Task {
    Task {
        pid: h.pid,
        tid: h.tid,
        ppid: h.ppid,
        boot_ns: h.ts_ns,
        cgroup_id: h.cgroup_id,
        uid: h.uid,
        gid: h.gid,
        comm: cstr(&h.comm),
        job: h.job,
    }
}

fn ip(family: u16, raw: &[u8; 16]) -> IpAddr {
    if family == c::AF_INET { IpAddr::from([raw[0], raw[1], raw[2], raw[3]]) } else { IpAddr::from(*raw) }
}

/// Split the NUL-separated argv blob into at most `argc` strings.
fn split_args(blob: &[u8], argc: u32) -> Vec<String> {
    blob.split(|&b| b == 0).take(argc as usize).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

fn split_env(blob: &[u8]) -> Vec<(String, String)> {
    blob.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

pub fn decode(buf: &[u8]) -> Result<Record, DecodeError> {
    if buf.len() < std::mem::size_of::<c::Header>() {
        return Err(DecodeError::Short(buf.len()));
    }
    let hdr: c::Header = read(buf, 0)?;
    let kind = c::RecordKind::try_from(hdr.kind).map_err(DecodeError::UnknownKind)?;
    match kind {
        c::RecordKind::Exec => {
            let r: c::ExecRecord = read(buf, hdr.kind)?;
            let used = (r.args_len as usize).min(r.args.len());
            let env_used = (r.env_len as usize).min(r.env.len());
            Ok(Record::Exec {
                task: task(&r.hdr),
                ret: r.ret,
                filename: cstr(&r.filename),
                argv: split_args(&r.args[..used], r.argc),
                argv_truncated: r.flags & c::EXEC_ARGS_TRUNCATED != 0,
                killed: r.flags & c::EXEC_KILLED != 0,
                shell: r.flags & c::EXEC_IS_SHELL != 0,
                env: split_env(&r.env[..env_used]),
                stopped: r.flags & c::EXEC_STOPPED != 0,
                held: r.flags & c::EXEC_SHELL_HELD != 0,
                script: r.flags & c::EXEC_SCRIPT != 0,
            })
        }
        c::RecordKind::Fork => {
            let r: c::ForkRecord = read(buf, hdr.kind)?;
            Ok(Record::Fork { task: task(&r.hdr), child_pid: r.child_pid })
        }
        c::RecordKind::Exit => {
            let r: c::ExitRecord = read(buf, hdr.kind)?;
            Ok(Record::Exit { task: task(&r.hdr), exit_code: (r.code_known != 0).then_some(r.exit_code) })
        }
        c::RecordKind::Connect => {
            let r: c::ConnectRecord = read(buf, hdr.kind)?;
            Ok(Record::Connect {
                task: task(&r.hdr),
                daddr: ip(r.family, &r.daddr),
                dport: r.dport,
                proto: Proto::from_ip_proto(r.proto),
                sendmsg: r.op == c::OP_SENDMSG,
                packet: r.op == c::OP_PACKET,
                allowed: r.verdict != c::VERDICT_DENY,
            })
        }
        c::RecordKind::Socket => {
            let r: c::SocketRecord = read(buf, hdr.kind)?;
            Ok(Record::Socket {
                task: task(&r.hdr),
                family: r.family,
                sock_type: r.sock_type,
                protocol: r.protocol,
                killed: r.flags & c::GUARD_KILLED != 0,
            })
        }
        c::RecordKind::Tamper => {
            let r: c::TamperRecord = read(buf, hdr.kind)?;
            let what = match r.what {
                c::TAMPER_SIGNAL => TamperKind::Signal,
                c::TAMPER_BPF => TamperKind::Bpf,
                c::TAMPER_MOUNT => TamperKind::Umount,
                c::TAMPER_PTRACE => TamperKind::Ptrace,
                other => return Err(DecodeError::UnknownKind(other | 0x100)),
            };
            Ok(Record::Tamper {
                task: task(&r.hdr),
                what,
                arg: r.arg,
                target: r.target,
                killed: r.flags & c::GUARD_KILLED != 0,
            })
        }
        c::RecordKind::File => {
            let r: c::FileRecord = read(buf, hdr.kind)?;
            let what = match r.what {
                c::FILE_OPEN => FileWhat::Open,
                c::FILE_PROC_ENVIRON => FileWhat::Environ,
                c::FILE_PROC_MEM => FileWhat::Mem,
                c::FILE_VM_READV => FileWhat::VmReadv,
                c::FILE_PTRACE => FileWhat::Ptrace,
                other => return Err(DecodeError::UnknownKind(other | 0x200)),
            };
            let n = (r.path_len as usize).min(r.path.len());
            Ok(Record::File {
                task: task(&r.hdr),
                what,
                path: cstr(&r.path[..n]),
                write: r.flags & c::FILE_WRITE != 0,
                rule: r.rule,
                target: r.target,
                killed: r.flags & c::GUARD_KILLED != 0,
            })
        }
        c::RecordKind::UnixConnect => {
            let r: c::UnixConnectRecord = read(buf, hdr.kind)?;
            let n = (r.path_len as usize).min(r.path.len());
            let bytes = &r.path[..n];
            let path = if bytes.first() == Some(&0) {
                format!("@{}", String::from_utf8_lossy(&bytes[1..]).trim_end_matches('\0'))
            } else {
                cstr(bytes)
            };
            Ok(Record::UnixConnect {
                task: task(&r.hdr),
                path,
                deputy: r.flags & c::GUARD_DENIED != 0,
                killed: r.flags & c::GUARD_KILLED != 0,
            })
        }
        c::RecordKind::DnsPacket => {
            let r: c::DnsPacketRecord = read(buf, hdr.kind)?;
            let n = (r.captured_len as usize).min(r.payload.len());
            Ok(Record::DnsPacket {
                task: task(&r.hdr),
                saddr: ip(r.family, &r.saddr),
                daddr: ip(r.family, &r.daddr),
                sport: r.sport,
                dport: r.dport,
                proto: Proto::from_ip_proto(r.proto),
                egress: r.direction == c::DIR_EGRESS,
                payload_len: r.payload_len,
                payload: r.payload[..n].to_vec(),
                allowed: r.verdict != c::VERDICT_DENY,
            })
        }
        c::RecordKind::Payload => {
            let r: c::PayloadRecord = read(buf, hdr.kind)?;
            let n = (r.captured_len as usize).min(r.payload.len());
            Ok(Record::Payload {
                task: task(&r.hdr),
                daddr: ip(r.family, &r.daddr),
                dport: r.dport,
                proto: Proto::from_ip_proto(r.proto),
                payload_len: r.payload_len,
                payload: r.payload[..n].to_vec(),
            })
        }
        c::RecordKind::StreamChunk => {
            // Sent with only its used data bytes: read the fixed part, then at most `len`
            // bytes of what the record really holds.
            if buf.len() < c::STREAM_CHUNK_HDR_LEN {
                return Err(DecodeError::Truncated { kind: hdr.kind, need: c::STREAM_CHUNK_HDR_LEN, got: buf.len() });
            }
            let mut fixed = [0u8; std::mem::size_of::<c::StreamChunkRecord>()];
            let n = buf.len().min(fixed.len());
            fixed[..n].copy_from_slice(&buf[..n]);
            let r: c::StreamChunkRecord = read(&fixed, hdr.kind)?;
            let used = (r.len as usize).min(n - c::STREAM_CHUNK_HDR_LEN);
            Ok(Record::StreamChunk {
                task: task(&r.hdr),
                cookie: r.cookie,
                daddr: ip(r.family, &r.daddr),
                dport: r.dport,
                proto: Proto::from_ip_proto(r.proto),
                offset: r.offset,
                packet_len: r.packet_len,
                flags: r.flags,
                data: r.data[..used].to_vec(),
            })
        }
    }
}

/// The event log writes a protocol as its lower-case name.
impl schemars::JsonSchema for Proto {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Proto".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "enum": ["tcp", "udp", "icmp", "icmpv6", "sctp", "other"] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a repr(C) POD value for the test.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }.to_vec()
    }

    fn hdr(kind: u32) -> c::Header {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"node");
        c::Header {
            kind,
            pid: 42,
            tid: 43,
            ppid: 7,
            ts_ns: 1_000,
            cgroup_id: 99,
            uid: 1000,
            gid: 1000,
            comm,
            job: 0,
            _pad: 0,
        }
    }

    #[test]
    fn exec_round_trip() {
        let mut r = c::ExecRecord {
            hdr: hdr(c::RecordKind::Exec as u32),
            ret: 0,
            flags: c::EXEC_ARGS_TRUNCATED,
            argc: 3,
            args_len: 0,
            env_len: 0,
            env_flags: 0,
            envp: 0,
            env_idx: 0,
            filename_len: 7,
            filename: [0; c::FILENAME_LEN],
            args: [0; c::ARGS_BUF_LEN],
            env: [0; c::ENV_BUF_LEN],
        };
        let env = b"npm_package_name=left-pad\0npm_lifecycle_event=postinstall\0";
        r.env[..env.len()].copy_from_slice(env);
        r.env_len = env.len() as u32;
        r.filename[..7].copy_from_slice(b"/bin/sh");
        let blob = b"sh\0-c\0echo hi\0";
        r.args[..blob.len()].copy_from_slice(blob);
        r.args_len = blob.len() as u32;
        let rec = decode(&bytes_of(&r)).unwrap();
        match rec {
            Record::Exec { task, filename, argv, argv_truncated, killed, ret, env, .. } => {
                assert_eq!(
                    env,
                    vec![
                        ("npm_package_name".to_string(), "left-pad".to_string()),
                        ("npm_lifecycle_event".to_string(), "postinstall".to_string())
                    ]
                );
                assert_eq!(task.pid, 42);
                assert_eq!(task.ppid, 7);
                assert_eq!(task.comm, "node");
                assert_eq!(filename, "/bin/sh");
                assert_eq!(argv, vec!["sh", "-c", "echo hi"]);
                assert!(argv_truncated);
                assert!(!killed);
                assert_eq!(ret, 0);
            }
            other => panic!("wrong record {other:?}"),
        }
    }

    #[test]
    fn connect_v4_and_v6() {
        let mut r = c::ConnectRecord { hdr: hdr(c::RecordKind::Connect as u32), ..Default::default() };
        r.family = c::AF_INET;
        r.daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        r.dport = 443;
        r.proto = c::PROTO_TCP;
        r.op = c::OP_CONNECT;
        r.verdict = c::VERDICT_DENY;
        match decode(&bytes_of(&r)).unwrap() {
            Record::Connect { daddr, dport, proto, sendmsg, allowed, .. } => {
                assert_eq!(daddr, "10.1.2.3".parse::<IpAddr>().unwrap());
                assert_eq!(dport, 443);
                assert_eq!(proto, Proto::Tcp);
                assert!(!sendmsg);
                assert!(!allowed);
            }
            other => panic!("wrong record {other:?}"),
        }
        r.family = c::AF_INET6;
        r.daddr = "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().octets();
        r.proto = c::PROTO_UDP;
        r.op = c::OP_SENDMSG;
        r.verdict = c::VERDICT_ALLOW;
        match decode(&bytes_of(&r)).unwrap() {
            Record::Connect { daddr, proto, sendmsg, allowed, .. } => {
                assert_eq!(daddr, "2001:db8::1".parse::<IpAddr>().unwrap());
                assert_eq!(proto, Proto::Udp);
                assert!(sendmsg);
                assert!(allowed);
            }
            other => panic!("wrong record {other:?}"),
        }
    }

    #[test]
    fn dns_packet_payload_is_bounded_by_captured_len() {
        let mut r = c::DnsPacketRecord {
            hdr: hdr(c::RecordKind::DnsPacket as u32),
            saddr: [0; 16],
            daddr: [0; 16],
            family: c::AF_INET,
            sport: 40000,
            dport: 53,
            proto: c::PROTO_UDP,
            direction: c::DIR_EGRESS,
            payload_len: 5000,
            captured_len: 3,
            verdict: c::VERDICT_ALLOW,
            _pad: [0; 7],
            payload: [7; c::DNS_PAYLOAD_LEN],
        };
        r.daddr[..4].copy_from_slice(&[127, 0, 0, 53]);
        match decode(&bytes_of(&r)).unwrap() {
            Record::DnsPacket { payload, payload_len, egress, daddr, .. } => {
                assert_eq!(payload, vec![7, 7, 7]);
                assert_eq!(payload_len, 5000);
                assert!(egress);
                assert_eq!(daddr, "127.0.0.53".parse::<IpAddr>().unwrap());
            }
            other => panic!("wrong record {other:?}"),
        }
        // A lying captured_len can never read past the record.
        r.captured_len = 1_000_000;
        match decode(&bytes_of(&r)).unwrap() {
            Record::DnsPacket { payload, .. } => assert_eq!(payload.len(), c::DNS_PAYLOAD_LEN),
            other => panic!("wrong record {other:?}"),
        }
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert_eq!(decode(&[0u8; 10]), Err(DecodeError::Short(10)));
        let h = hdr(77);
        assert_eq!(decode(&bytes_of(&h)), Err(DecodeError::UnknownKind(77)));
        let h = hdr(c::RecordKind::Exec as u32);
        assert!(matches!(decode(&bytes_of(&h)), Err(DecodeError::Truncated { kind: 1, .. })));
    }

    #[test]
    fn stream_chunks_are_read_with_only_their_used_bytes() {
        let mut r = c::StreamChunkRecord {
            hdr: hdr(c::RecordKind::StreamChunk as u32),
            cookie: 0xabc,
            daddr: [0; 16],
            family: c::AF_INET,
            dport: 8080,
            proto: c::PROTO_TCP,
            flags: c::CHUNK_PACKET_START,
            _pad: [0; 2],
            offset: 700,
            len: 5,
            packet_len: 1400,
            _pad2: 0,
            data: [0; c::STREAM_CHUNK_LEN],
        };
        r.daddr[..4].copy_from_slice(&[198, 18, 0, 2]);
        r.data[..5].copy_from_slice(b"hello");
        let bytes = bytes_of(&r);
        // What the kernel sends: the fixed part and the used bytes only.
        let sent = &bytes[..c::STREAM_CHUNK_HDR_LEN + 5];
        match decode(sent).unwrap() {
            Record::StreamChunk { cookie, daddr, dport, offset, packet_len, flags, data, proto, .. } => {
                assert_eq!((cookie, dport, offset, packet_len, flags), (0xabc, 8080, 700, 1400, c::CHUNK_PACKET_START));
                assert_eq!(daddr, "198.18.0.2".parse::<IpAddr>().unwrap());
                assert_eq!(proto, Proto::Tcp);
                assert_eq!(data, b"hello");
            }
            other => panic!("wrong record {other:?}"),
        }
        // A `len` larger than what arrived is bounded by the record; a cut header is an error.
        r.len = 4000;
        let bytes = bytes_of(&r);
        match decode(&bytes[..c::STREAM_CHUNK_HDR_LEN + 3]).unwrap() {
            Record::StreamChunk { data, .. } => assert_eq!(data, b"hel"),
            other => panic!("wrong record {other:?}"),
        }
        assert!(matches!(decode(&bytes[..100]), Err(DecodeError::Truncated { kind: 10, .. })));
    }

    #[test]
    fn exit_code_known_or_not() {
        let r = c::ExitRecord { hdr: hdr(c::RecordKind::Exit as u32), exit_code: 3, code_known: 1 };
        assert!(matches!(decode(&bytes_of(&r)).unwrap(), Record::Exit { exit_code: Some(3), .. }));
        let r = c::ExitRecord { hdr: hdr(c::RecordKind::Exit as u32), exit_code: 0, code_known: 0 };
        assert!(matches!(decode(&bytes_of(&r)).unwrap(), Record::Exit { exit_code: None, .. }));
    }
}
