//! Fast reading of event log lines, for replay of big logs. Same schema, same results as
//! `serde_json::from_str::<Event>` (the reference path), only faster: `Event` is an
//! internally tagged enum with flattened process fields, which serde buffers through its
//! generic `Content` tree. Here the `kind` is found first (the writer puts it first), then the
//! line is deserialized straight into that kind's struct: through its flat form
//! ([`crate::event::Flat`]: the process fields inline) for the events that carry a process,
//! through its own derive for the others. Anything unusual (kind not first, an error) goes
//! through the reference path, so accepted input and error messages are exactly the
//! reference's.
//!
//! There is one definition of each event: the flat forms are generated from the event structs
//! themselves (`flat_event!` in `event/flat.rs`), so a field added to an event is read by both
//! paths without a change here. `tests` checks both paths agree over every kind with every
//! optional field set and unset.
use std::io::BufRead;

use crate::event::{Alert, End, Event, Flat, FlatForm, Loss, Start};

/// The reference path: serde's derive for [`Event`].
pub fn parse_reference(line: &[u8]) -> Result<Event, serde_json::Error> {
    serde_json::from_slice(line)
}

/// Parse one log line (without or with its newline).
pub fn parse_line(line: &[u8]) -> Result<Event, serde_json::Error> {
    match fast(line) {
        Some(Ok(e)) => Ok(e),
        _ => parse_reference(line),
    }
}

/// `{"kind":"exec",...` -> `exec`.
fn leading_kind(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"{\"kind\":\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    Some(&rest[..end])
}

fn fast(line: &[u8]) -> Option<Result<Event, serde_json::Error>> {
    let kind = leading_kind(line)?;
    // Validate UTF-8 once for the whole line (serde_json then skips it for every string).
    let line = std::str::from_utf8(line).ok()?;
    Some(match kind {
        b"exec" => flat(line).map(Event::Exec),
        b"fork" => flat(line).map(Event::Fork),
        b"exit" => flat(line).map(Event::Exit),
        b"connect" => flat(line).map(Event::Connect),
        b"dns" => flat(line).map(Event::Dns),
        b"send" => flat(line).map(Event::Send),
        b"socket" => flat(line).map(Event::Socket),
        b"tamper" => flat(line).map(Event::Tamper),
        b"unix" => flat(line).map(Event::Unix),
        b"file" => flat(line).map(Event::File),
        // No flattening in these: their own derives read them directly (`kind` is ignored as
        // an unknown field, as the tagged enum does).
        b"start" => serde_json::from_str::<Start>(line).map(Event::Start),
        b"loss" => serde_json::from_str::<Loss>(line).map(Event::Loss),
        b"alert" => serde_json::from_str::<Alert>(line).map(Event::Alert),
        b"end" => serde_json::from_str::<End>(line).map(Event::End),
        _ => return None,
    })
}

/// One line through `T`'s flat form.
#[inline]
fn flat<T: FlatForm>(line: &str) -> Result<T, serde_json::Error> {
    serde_json::from_str::<Flat<T>>(line).map(|Flat(e)| e)
}

/// The longest log line read (4 MiB): a start record carries the policy (at most 1 MiB of
/// YAML); no other record comes near. A longer line is an error naming it (README, "Bounds").
pub const MAX_LINE_BYTES: usize = 4 << 20;

/// Call `f` for each non-blank line of `r` with its 1-based number. Lines are parsed in place
/// in the reader's buffer; only a line split across two buffer fills is copied. A stream that
/// ends early (a gzip member without its trailer) is a read error.
pub fn for_each_line<E>(
    r: &mut dyn BufRead,
    mut f: impl FnMut(&[u8], u64) -> Result<(), E>,
    mut read_error: impl FnMut(std::io::Error, u64) -> E,
) -> Result<(), E> {
    let end = for_each_line_terminated(r, |l, n, _| f(l, n), &mut read_error)?;
    match end {
        Tail::Complete => Ok(()),
        Tail::StreamCut(n) => Err(read_error(std::io::ErrorKind::UnexpectedEof.into(), n)),
    }
}

/// How a stream of lines ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// At the end of the data.
    Complete,
    /// The decompressor found the data cut short (after line N).
    StreamCut(u64),
}

/// [`for_each_line`], telling `f` whether each line ended with a newline (only the last one
/// may not), and returning how the stream ended instead of failing on a cut stream.
pub fn for_each_line_terminated<E>(
    r: &mut dyn BufRead,
    mut f: impl FnMut(&[u8], u64, bool) -> Result<(), E>,
    mut read_error: impl FnMut(std::io::Error, u64) -> E,
) -> Result<Tail, E> {
    let mut carry: Vec<u8> = Vec::new();
    let mut n = 0u64;
    let mut line = |l: &[u8], n: &mut u64, terminated: bool| -> Result<(), E> {
        *n += 1;
        if l.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(());
        }
        f(l, *n, terminated)
    };
    let too_long = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the line is longer than {} MiB (the limit, see README \"Bounds\")", MAX_LINE_BYTES >> 20),
        )
    };
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                if !carry.is_empty() {
                    line(&carry, &mut n, false)?;
                }
                return Ok(Tail::StreamCut(n));
            }
            Err(e) => return Err(read_error(e, n + 1)),
        };
        if buf.is_empty() {
            if !carry.is_empty() {
                line(&carry, &mut n, false)?;
            }
            return Ok(Tail::Complete);
        }
        let mut start = 0;
        while let Some(i) = memchr::memchr(b'\n', &buf[start..]) {
            let end = start + i;
            if carry.is_empty() {
                if end - start > MAX_LINE_BYTES {
                    return Err(read_error(too_long(), n + 1));
                }
                line(&buf[start..end], &mut n, true)?;
            } else {
                if carry.len() + (end - start) > MAX_LINE_BYTES {
                    return Err(read_error(too_long(), n + 1));
                }
                carry.extend_from_slice(&buf[start..end]);
                line(&carry, &mut n, true)?;
                carry.clear();
            }
            start = end + 1;
        }
        if carry.len() + (buf.len() - start) > MAX_LINE_BYTES {
            return Err(read_error(too_long(), n + 1));
        }
        carry.extend_from_slice(&buf[start..]);
        let len = buf.len();
        r.consume(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both paths over one line: equal events, or both errors.
    fn agree(line: &str) {
        let fast = parse_line(line.as_bytes());
        let reference = parse_reference(line.as_bytes());
        match (&fast, &reference) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{line}"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{line}"),
            _ => panic!("paths disagree on {line}: fast {fast:?}, reference {reference:?}"),
        }
        // And the fast path itself (not its fallback) agrees whenever it answers.
        if let (Some(Ok(a)), Ok(b)) = (fast_only(line), &reference) {
            assert_eq!(&a, b, "{line}");
        }
    }

    fn fast_only(line: &str) -> Option<Result<Event, serde_json::Error>> {
        fast(line.as_bytes())
    }

    /// Every line of the checked-in logs, through both paths; and every line re-serialised is
    /// byte-identical (the writer is untouched).
    #[test]
    fn fixture_logs_read_identically() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/reports");
        let mut lines = 0;
        for f in ["alerts.jsonl", "clean.jsonl"] {
            for line in std::fs::read_to_string(dir.join(f)).unwrap().lines() {
                agree(line);
                let e = fast_only(line).expect("the writer puts kind first").unwrap();
                assert_eq!(serde_json::to_string(&e).unwrap(), line);
                lines += 1;
            }
        }
        assert!(lines > 100);
    }

    #[test]
    fn lines_are_split_alike_across_buffer_fills() {
        let text = "a\n\n  \nbcd\r\nlast-without-newline";
        for cap in [1, 2, 3, 5, 64] {
            let mut r = std::io::BufReader::with_capacity(cap, text.as_bytes());
            let mut got = Vec::new();
            let push = |l: &[u8], n| {
                got.push((String::from_utf8(l.to_vec()).unwrap(), n));
                Ok(())
            };
            for_each_line(&mut r, push, |e: std::io::Error, _| e).unwrap();
            assert_eq!(
                got,
                [("a".into(), 1), ("bcd\r".into(), 4), ("last-without-newline".into(), 5)],
                "capacity {cap}"
            );
        }
    }

    #[test]
    fn unusual_lines_fall_back_or_fail_alike() {
        for line in [
            // kind not first
            r#"{"ts":"2026-11-23T10:00:01Z","kind":"fork","pid":2,"ppid":1,"comm":"sh"}"#,
            // spaces
            r#"{ "kind" : "fork", "ts":"2026-11-23T10:00:01Z","pid":2,"ppid":1,"comm":"sh"}"#,
            // missing field, wrong type, unknown kind, bad timestamp, bad address, trailing junk
            r#"{"kind":"fork","ts":"2026-11-23T10:00:01Z","pid":2,"comm":"sh"}"#,
            r#"{"kind":"fork","ts":"2026-11-23T10:00:01Z","pid":"2","ppid":1,"comm":"sh"}"#,
            r#"{"kind":"teleport","ts":"2026-11-23T10:00:01Z"}"#,
            r#"{"kind":"exit","ts":"yesterday","pid":2,"ppid":1,"comm":"sh"}"#,
            r#"{"kind":"connect","ts":"2026-11-23T10:00:01Z","pid":2,"ppid":1,"comm":"c","daddr":"999.1.1.1","dport":1,"proto":"tcp","op":"connect","allowed":true}"#,
            r#"{"kind":"fork","ts":"2026-11-23T10:00:01Z","pid":2,"ppid":1,"comm":"sh"} x"#,
            // escapes in strings, unknown extra fields (a newer writer), uid absent
            r#"{"kind":"exec","ts":"2026-11-23T10:00:01.5Z","pid":2,"ppid":1,"comm":"s\u0001h","filename":"/bin/\"sh\"","argv":["a\nb"],"future":[1,{"x":2}]}"#,
            r#"{"kind":"dns","ts":"2026-11-23T10:00:01Z","pid":2,"ppid":1,"comm":"d","qname":"","qtype":"?","server":"::1","proto":"udp","id":7,"error":"short","allowed":false}"#,
            r#"{"kind":"end","ts":"2026-11-23T10:00:01Z","lost":0}"#,
            r#"{"kind":"exec"}"#,
            r#"{"kind":"#,
            "",
        ] {
            agree(line);
        }
    }

    /// Generated events of every kind with optional fields set and unset: write, read back
    /// through both paths, identical (property-style: many random combinations).
    #[test]
    fn generated_events_round_trip_through_both_paths() {
        let mut g = crate::parse::generate::Gen::new(42);
        let mut kinds = std::collections::BTreeSet::new();
        for _ in 0..20_000 {
            let e = g.any_event();
            kinds.insert(e.kind());
            let line = serde_json::to_string(&e).unwrap();
            let fast = fast_only(&line).expect("every kind has a fast path").unwrap();
            assert_eq!(fast, e, "{line}");
            assert_eq!(parse_reference(line.as_bytes()).unwrap(), e);
        }
        assert_eq!(kinds.len(), 14, "every kind of Event is generated: {kinds:?}");
    }
}

/// Random but plausible events (for the round-trip test and the replay benchmark): not in the
/// shipped binary (feature `bench-gen`, which only the bench crate turns on).
#[cfg(any(test, feature = "bench-gen"))]
pub mod generate {
    use std::{collections::BTreeMap, net::IpAddr};

    use crate::event::{
        Alert, Connect, Dns, End, Event, Exec, Exit, File, FileClass, FileWhat, Fork, Loss, PolicyInfo, Proc, Proto,
        SecretMatch, Send, SensorState, ShellFacts, Socket, Start, StreamTarget, Tamper, TamperKind, Ts, Unix,
    };

    /// xorshift64*: deterministic, no dependency.
    pub struct Gen {
        s: u64,
    }

    impl Gen {
        pub fn new(seed: u64) -> Gen {
            Gen { s: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 }
        }
        pub fn next_u64(&mut self) -> u64 {
            self.s ^= self.s >> 12;
            self.s ^= self.s << 25;
            self.s ^= self.s >> 27;
            self.s.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        pub fn below(&mut self, n: u64) -> u64 {
            self.next_u64() % n.max(1)
        }
        pub fn chance(&mut self, pct: u64) -> bool {
            self.below(100) < pct
        }
        fn word(&mut self) -> String {
            const W: &[&str] =
                &["node", "sh", "npm", "python3", "cc1", "ld", "git", "curl", "a\"b", "ü\\x", "es\u{1}c"];
            W[self.below(W.len() as u64) as usize].to_string()
        }
        fn ip(&mut self) -> IpAddr {
            if self.chance(30) {
                IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, self.below(65536) as u16))
            } else {
                IpAddr::V4(std::net::Ipv4Addr::from(self.next_u64() as u32))
            }
        }
        fn proc(&mut self) -> Proc {
            Proc {
                pid: self.next_u64() as u32,
                ppid: self.next_u64() as u32,
                comm: self.word(),
                uid: if self.chance(50) { 0 } else { 1000 },
            }
        }
        fn opt<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
            if self.chance(50) { Some(f(self)) } else { None }
        }
        fn vec<T>(&mut self, max: u64, mut f: impl FnMut(&mut Self) -> T) -> Vec<T> {
            (0..self.below(max + 1)).map(|_| f(self)).collect()
        }
        fn secret(&mut self) -> SecretMatch {
            SecretMatch {
                variable: "AWS_SECRET_ACCESS_KEY".into(),
                encoding: "base64".into(),
                redacted: self.opt(|_| "AK…(20 chars)".to_string()),
            }
        }
        fn proto(&mut self) -> Proto {
            [Proto::Tcp, Proto::Udp, Proto::Other][self.below(3) as usize]
        }

        pub fn any_event(&mut self) -> Event {
            let ts = Ts(self.below(4_000_000_000) * 1_000_000_000 + self.below(1_000_000_000));
            match self.below(14) {
                0 => Event::Start(Start {
                    ts,
                    job: None,
                    schema: 1,
                    watcher: "0.1.0".into(),
                    mode: "run".into(),
                    command: self.vec(3, Self::word),
                    pid: self.next_u64() as u32,
                    sensors: vec![SensorState { name: "dns".into(), active: true, detail: self.opt(Self::word) }],
                    resolvers: self.vec(2, Self::ip),
                    registries: if self.chance(50) {
                        BTreeMap::from([("npm".to_string(), vec!["r.test".to_string()])])
                    } else {
                        BTreeMap::new()
                    },
                    registry_sources: Vec::new(),
                    proxy_sources: Vec::new(),
                    policy: self.opt(|g| PolicyInfo { source: g.word(), pipeline: "p".into(), mode: "audit".into() }),
                    policy_yaml: self.opt(|g| g.word()),
                    project: None,
                }),
                1 => Event::Exec(Exec {
                    ts,
                    proc: self.proc(),
                    filename: self.word(),
                    argv: self.vec(4, Self::word),
                    argv_truncated: self.chance(10),
                    argv_redacted: self.chance(10),
                    cgroup_id: self.next_u64(),
                    env: if self.chance(30) {
                        BTreeMap::from([("npm_package_name".to_string(), self.word())])
                    } else {
                        BTreeMap::new()
                    },
                    killed: self.chance(10),
                    shell: self.chance(10),
                    cwd: self.opt(Self::word),
                    held: self.chance(10),
                    script: self.chance(10),
                    facts: self.opt(|g| {
                        Box::new(ShellFacts {
                            exe: g.opt(Self::word),
                            exe_ctime: g.opt(|g| Ts(g.below(1 << 62))),
                            stdio: vec![g.opt(Self::word), None],
                            script: g.opt(Self::word),
                            ..ShellFacts::default()
                        })
                    }),
                }),
                2 => Event::Fork(Fork { ts, proc: self.proc() }),
                3 => Event::Exit(Exit { ts, proc: self.proc(), exit_code: self.opt(|g| g.next_u64() as i32) }),
                4 => Event::Connect(Connect {
                    ts,
                    proc: self.proc(),
                    daddr: self.ip(),
                    dport: self.next_u64() as u16,
                    proto: self.proto(),
                    op: if self.chance(50) { "connect".into() } else { "sendto".into() },
                    allowed: self.chance(90),
                }),
                5 => Event::Dns(Dns {
                    ts,
                    proc: self.proc(),
                    qname: self.word(),
                    qtype: "AAAA".into(),
                    server: self.ip(),
                    server_port: if self.chance(80) { 53 } else { 5353 },
                    proto: self.proto(),
                    id: self.next_u64() as u16,
                    rcode: self.opt(|_| "NOERROR".to_string()),
                    answers: self.opt(|g| g.vec(3, Self::ip)),
                    cnames: self.vec(2, Self::word),
                    error: self.opt(Self::word),
                    payload_len: self.next_u64() as u32,
                    allowed: self.chance(80),
                    secrets: self.vec(1, Self::secret),
                }),
                6 => Event::Send(Send {
                    ts,
                    proc: self.proc(),
                    daddr: self.ip(),
                    dport: self.next_u64() as u16,
                    proto: self.proto(),
                    bytes: self.next_u64() as u32,
                    secrets: self.vec(2, Self::secret),
                    offset: self.opt(|g| g.next_u64() >> 40),
                    credential_of: self.vec(1, |_| "npm:registry.example.test".to_string()),
                    target: self.opt(|g| StreamTarget {
                        how: "tls-sni".into(),
                        host: g.word(),
                        port: g.next_u64() as u16,
                        dropped: g.chance(20),
                    }),
                }),
                7 => Event::Loss(Loss { ts, source: self.word(), count: self.next_u64(), total: self.next_u64() }),
                8 => Event::Alert(Alert {
                    ts,
                    rule: "egress-denied".into(),
                    action: "flag".into(),
                    severity: "high".into(),
                    pid: self.next_u64() as u32,
                    package: self.opt(Self::word),
                    message: self.word(),
                    variable: self.opt(Self::word),
                    redacted: self.opt(Self::word),
                }),
                9 => Event::Socket(Socket {
                    ts,
                    proc: self.proc(),
                    family: "inet".into(),
                    sock_type: if self.chance(50) { "raw".into() } else { "7".into() },
                    protocol: self.below(256) as u32,
                    killed: self.chance(30),
                }),
                10 => Event::Tamper(Tamper {
                    ts,
                    proc: self.proc(),
                    what: [TamperKind::Signal, TamperKind::Bpf, TamperKind::Umount, TamperKind::Ptrace]
                        [self.below(4) as usize],
                    arg: self.next_u64() as u32,
                    target: if self.chance(50) { 0 } else { self.next_u64() as u32 },
                    killed: self.chance(30),
                }),
                11 => Event::Unix(Unix {
                    ts,
                    proc: self.proc(),
                    path: if self.chance(50) { "/run/docker.sock".into() } else { "@x".into() },
                    deputy: self.chance(50),
                    killed: self.chance(30),
                }),
                12 => Event::File(File {
                    ts,
                    proc: self.proc(),
                    what: [FileWhat::Open, FileWhat::Environ, FileWhat::Mem, FileWhat::VmReadv, FileWhat::Ptrace]
                        [self.below(5) as usize],
                    path: self.word(),
                    class: if self.chance(50) { FileClass::Credential } else { FileClass::Tamper },
                    write: self.chance(30),
                    target: if self.chance(50) { 0 } else { self.next_u64() as u32 },
                    killed: self.chance(30),
                }),
                _ => Event::End(End { ts, exit_code: self.opt(|g| g.next_u64() as i32), lost: self.next_u64() }),
            }
        }
    }
}
