//! DNS message parsing for packets captured by the kernel side.
//!
//! The eBPF programs copy raw DNS payloads (at most the first 1024 bytes of a
//! packet) to userspace; this module turns them into a [`DnsMessage`] holding
//! the parts the watcher reports on: the questions (what the build tried to
//! resolve) and the answer records (which addresses it got back).
//!
//! The parser is written for hostile input. It is pure (no I/O), never panics,
//! and allocates only in proportion to the input (header counts are never used
//! to pre-size anything). It degrades gracefully: a message cut short by the
//! capture limit still yields its questions and every answer that was read
//! completely, with [`DnsMessage::truncated`] set.
//!
//! Why not `simple_dns::Packet::parse`? It is all-or-nothing (a message whose
//! tail is cut off, or that carries a record class it does not know, fails as a
//! whole, so the questions are lost too), its per-record parsers are private,
//! and it pre-allocates each section from the header counts. Reading the few
//! fields we need by hand is short, and `simple_dns` still serves the tests as
//! an independent encoder of the packets we parse.
//!
//! Names are rendered in presentation format with the case kept as sent (a
//! secret can be case-encoded) and no trailing dot; the root name is `"."`.
//! Label bytes outside printable ASCII (`!`..=`~`) are written as `\DDD`
//! (decimal, as dig does) and `.` and `\` inside a label as `\.` and `\\`, so
//! the rendering is lossless and can never carry a control character into a
//! terminal or a log line.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

/// How the payload was carried: over TCP it starts with a 2-byte length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The parts of a DNS message the watcher reports on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsMessage {
    pub id: u16,
    /// The QR bit: false for a query, true for a response.
    pub is_response: bool,
    /// The 4-bit header RCODE: 0 = NOERROR, 2 = SERVFAIL, 3 = NXDOMAIN, ...
    pub rcode: u8,
    pub questions: Vec<Question>,
    /// The answer section; authority and additional records are not kept.
    pub answers: Vec<Answer>,
    /// The message ended (or became unreadable) before every record that its
    /// header announces was read: `questions` and `answers` hold the records
    /// that were read completely. Over TCP, also set when the payload is
    /// shorter than its length prefix says. This is about the capture, not
    /// the TC flag of the header.
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Question {
    /// Presentation format, case as sent, no trailing dot (see module docs).
    pub name: String,
    /// Mnemonic of the type ("A", "AAAA", "TXT", ...) or "TYPE<n>" if unknown.
    pub qtype: String,
    pub qtype_code: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum AnswerData {
    /// The address of an A or AAAA record of class IN.
    Ip(IpAddr),
    /// The target of a CNAME record.
    Name(String),
    /// Any other record, or an A/AAAA/CNAME whose data is malformed.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Answer {
    /// Presentation format, case as sent, no trailing dot (see module docs).
    pub name: String,
    /// Mnemonic of the type, as for [`Question::qtype`].
    pub rtype: String,
    pub ttl: u32,
    pub data: AnswerData,
}

/// Why a payload could not be read as a DNS message at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("TCP DNS payload shorter than its 2-byte length prefix")]
    MissingTcpLength,
    #[error("DNS header shorter than 12 bytes")]
    HeaderTooShort,
    #[error("DNS question section cut short")]
    QuestionTruncated,
    #[error("malformed name in DNS question: {0}")]
    BadQuestionName(NameError),
}

/// What is wrong with an encoded domain name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name runs past the end of the message")]
    Truncated,
    #[error("name longer than 255 bytes")]
    TooLong,
    #[error("too many compression pointers (pointer loop)")]
    PointerLoop,
    #[error("compression pointer outside the message")]
    PointerOutOfRange,
    #[error("reserved label type")]
    BadLabelType,
}

const HEADER_LEN: usize = 12;
/// RFC 1035 2.3.4: a name is at most 255 octets on the wire.
const MAX_NAME_WIRE_LEN: usize = 255;
/// A legal name has at most 127 labels, so it never needs more pointers than
/// that; anything beyond is a loop (or junk). Bounds the work per name.
const MAX_POINTER_HOPS: usize = 128;
const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// Parses one DNS message.
///
/// For [`Transport::Tcp`] the payload starts with the 2-byte big-endian length
/// prefix (RFC 1035 4.2.2); bytes past the length it gives are ignored, and a
/// payload shorter than it gives is parsed as far as it goes.
///
/// Fails only when the header, or the first question if the header announces
/// one, cannot be read. Anything cut short or malformed after that yields
/// `Ok` with what was read completely and [`DnsMessage::truncated`] set.
pub fn parse(payload: &[u8], transport: Transport) -> Result<DnsMessage, DnsError> {
    match transport {
        Transport::Udp => parse_message(payload, false),
        Transport::Tcp => {
            let (prefix, rest) = payload.split_first_chunk::<2>().ok_or(DnsError::MissingTcpLength)?;
            let declared = usize::from(u16::from_be_bytes(*prefix));
            match rest.get(..declared) {
                Some(msg) => parse_message(msg, false),
                None => parse_message(rest, true),
            }
        }
    }
}

/// All addresses of the A and AAAA records in the answer section, in order.
pub fn resolved_ips(msg: &DnsMessage) -> Vec<IpAddr> {
    msg.answers
        .iter()
        .filter_map(|a| match a.data {
            AnswerData::Ip(ip) => Some(ip),
            _ => None,
        })
        .collect()
}

/// The mnemonic of a DNS RR type (IANA registry), or `TYPE<n>` (RFC 3597) for
/// a number without one.
pub fn qtype_name(code: u16) -> String {
    match known_type_name(code) {
        Some(name) => name.to_owned(),
        None => format!("TYPE{code}"),
    }
}

fn known_type_name(code: u16) -> Option<&'static str> {
    Some(match code {
        1 => "A",
        2 => "NS",
        3 => "MD",
        4 => "MF",
        5 => "CNAME",
        6 => "SOA",
        7 => "MB",
        8 => "MG",
        9 => "MR",
        10 => "NULL",
        11 => "WKS",
        12 => "PTR",
        13 => "HINFO",
        14 => "MINFO",
        15 => "MX",
        16 => "TXT",
        17 => "RP",
        18 => "AFSDB",
        19 => "X25",
        20 => "ISDN",
        21 => "RT",
        22 => "NSAP",
        23 => "NSAP-PTR",
        24 => "SIG",
        25 => "KEY",
        26 => "PX",
        27 => "GPOS",
        28 => "AAAA",
        29 => "LOC",
        30 => "NXT",
        31 => "EID",
        32 => "NIMLOC",
        33 => "SRV",
        34 => "ATMA",
        35 => "NAPTR",
        36 => "KX",
        37 => "CERT",
        38 => "A6",
        39 => "DNAME",
        40 => "SINK",
        41 => "OPT",
        42 => "APL",
        43 => "DS",
        44 => "SSHFP",
        45 => "IPSECKEY",
        46 => "RRSIG",
        47 => "NSEC",
        48 => "DNSKEY",
        49 => "DHCID",
        50 => "NSEC3",
        51 => "NSEC3PARAM",
        52 => "TLSA",
        53 => "SMIMEA",
        55 => "HIP",
        56 => "NINFO",
        57 => "RKEY",
        58 => "TALINK",
        59 => "CDS",
        60 => "CDNSKEY",
        61 => "OPENPGPKEY",
        62 => "CSYNC",
        63 => "ZONEMD",
        64 => "SVCB",
        65 => "HTTPS",
        66 => "DSYNC",
        99 => "SPF",
        100 => "UINFO",
        101 => "UID",
        102 => "GID",
        103 => "UNSPEC",
        104 => "NID",
        105 => "L32",
        106 => "L64",
        107 => "LP",
        108 => "EUI48",
        109 => "EUI64",
        249 => "TKEY",
        250 => "TSIG",
        251 => "IXFR",
        252 => "AXFR",
        253 => "MAILB",
        254 => "MAILA",
        255 => "ANY",
        256 => "URI",
        257 => "CAA",
        258 => "AVC",
        259 => "DOA",
        260 => "AMTRELAY",
        261 => "RESINFO",
        262 => "WALLET",
        32768 => "TA",
        32769 => "DLV",
        _ => return None,
    })
}

/// A bounds-checked cursor over one DNS message.
struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let bytes: [u8; N] = self.msg.get(self.pos..)?.first_chunk::<N>().copied()?;
        self.pos += N;
        Some(bytes)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take::<2>().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take::<4>().map(u32::from_be_bytes)
    }

    fn slice(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(len)?;
        let bytes = self.msg.get(self.pos..end)?;
        self.pos = end;
        Some(bytes)
    }

    /// Reads a (possibly compressed) name at the cursor and moves past it.
    fn name(&mut self) -> Result<String, NameError> {
        let (name, end) = read_name(self.msg, self.pos)?;
        self.pos = end;
        Ok(name)
    }
}

/// `truncated_input`: the bytes are known to be only a prefix of the message.
fn parse_message(msg: &[u8], truncated_input: bool) -> Result<DnsMessage, DnsError> {
    let mut r = Reader { msg, pos: 0 };
    let [id, flags, qdcount, ancount, nscount, arcount] = match r.take::<HEADER_LEN>() {
        Some(h) => std::array::from_fn(|i| u16::from_be_bytes([h[2 * i], h[2 * i + 1]])),
        None => return Err(DnsError::HeaderTooShort),
    };

    let mut out = DnsMessage {
        id,
        is_response: flags & 0x8000 != 0,
        rcode: (flags & 0x000f) as u8,
        questions: Vec::new(),
        answers: Vec::new(),
        truncated: truncated_input,
    };

    for _ in 0..qdcount {
        match read_question(&mut r) {
            Ok(q) => out.questions.push(q),
            Err(e) if out.questions.is_empty() => return Err(e),
            Err(_) => {
                out.truncated = true;
                return Ok(out);
            }
        }
    }
    for _ in 0..ancount {
        match read_answer(&mut r) {
            Some(a) => out.answers.push(a),
            None => {
                out.truncated = true;
                return Ok(out);
            }
        }
    }
    // Authority and additional records are not kept, only walked so that a
    // message cut short in them is reported as truncated.
    for _ in 0..u32::from(nscount) + u32::from(arcount) {
        if skip_record(&mut r).is_none() {
            out.truncated = true;
            break;
        }
    }
    Ok(out)
}

fn read_question(r: &mut Reader<'_>) -> Result<Question, DnsError> {
    let name = r.name().map_err(|e| match e {
        NameError::Truncated => DnsError::QuestionTruncated,
        e => DnsError::BadQuestionName(e),
    })?;
    let qtype_code = r.u16().ok_or(DnsError::QuestionTruncated)?;
    let _qclass = r.u16().ok_or(DnsError::QuestionTruncated)?;
    Ok(Question { name, qtype: qtype_name(qtype_code), qtype_code })
}

/// Reads one resource record; `None` if it is cut short or its owner name is
/// malformed (then nothing after it can be located either).
fn read_answer(r: &mut Reader<'_>) -> Option<Answer> {
    let name = r.name().ok()?;
    let rtype = r.u16()?;
    // The top bit of the class is mDNS's cache-flush flag.
    let class = r.u16()? & 0x7fff;
    let ttl = r.u32()?;
    let rdlength = usize::from(r.u16()?);
    let rdata_start = r.pos;
    let rdata = r.slice(rdlength)?;

    let data = match (rtype, class) {
        (TYPE_A, CLASS_IN) => match <[u8; 4]>::try_from(rdata) {
            Ok(b) => AnswerData::Ip(IpAddr::V4(Ipv4Addr::from(b))),
            Err(_) => AnswerData::Other,
        },
        (TYPE_AAAA, CLASS_IN) => match <[u8; 16]>::try_from(rdata) {
            Ok(b) => AnswerData::Ip(IpAddr::V6(Ipv6Addr::from(b))),
            Err(_) => AnswerData::Other,
        },
        // The target may point anywhere earlier in the message, but its own
        // bytes must end within the RDATA.
        (TYPE_CNAME, _) => match read_name(r.msg, rdata_start) {
            Ok((target, end)) if end == r.pos => AnswerData::Name(target),
            _ => AnswerData::Other,
        },
        _ => AnswerData::Other,
    };
    Some(Answer { name, rtype: qtype_name(rtype), ttl, data })
}

/// Moves past one resource record without decoding it.
fn skip_record(r: &mut Reader<'_>) -> Option<()> {
    // Only the bytes of the name at the cursor matter here, not where its
    // compression pointer leads.
    loop {
        let [len] = r.take::<1>()?;
        match len & 0xc0 {
            0x00 if len == 0 => break,
            0x00 => {
                r.slice(usize::from(len))?;
            }
            0xc0 => {
                r.take::<1>()?;
                break;
            }
            _ => return None,
        }
    }
    r.take::<8>()?; // type, class, ttl
    let rdlength = usize::from(r.u16()?);
    r.slice(rdlength)?;
    Some(())
}

/// Decodes the name starting at `start` in `msg`, following compression
/// pointers (RFC 1035 4.1.4). Returns the name and the offset just past its
/// encoding at `start` (after the first pointer, if any).
///
/// Terminates on any input: every step either consumes a label, which adds
/// at least 2 to the wire length capped at 255, or follows a pointer, which
/// is capped at [`MAX_POINTER_HOPS`].
fn read_name(msg: &[u8], start: usize) -> Result<(String, usize), NameError> {
    let mut out = String::new();
    let mut pos = start;
    let mut end = None;
    let mut wire_len = 1; // the terminating root label
    let mut hops = 0;
    loop {
        let len = *msg.get(pos).ok_or(NameError::Truncated)?;
        match len & 0xc0 {
            0x00 if len == 0 => {
                let end = end.unwrap_or(pos + 1);
                if out.is_empty() {
                    out.push('.');
                }
                return Ok((out, end));
            }
            0x00 => {
                let len = usize::from(len);
                wire_len += 1 + len;
                if wire_len > MAX_NAME_WIRE_LEN {
                    return Err(NameError::TooLong);
                }
                let label = msg.get(pos + 1..pos + 1 + len).ok_or(NameError::Truncated)?;
                if !out.is_empty() {
                    out.push('.');
                }
                escape_label(label, &mut out);
                pos += 1 + len;
            }
            0xc0 => {
                let low = *msg.get(pos + 1).ok_or(NameError::Truncated)?;
                end.get_or_insert(pos + 2);
                hops += 1;
                if hops > MAX_POINTER_HOPS {
                    return Err(NameError::PointerLoop);
                }
                let target = usize::from(u16::from_be_bytes([len & 0x3f, low]));
                if target >= msg.len() {
                    return Err(NameError::PointerOutOfRange);
                }
                pos = target;
            }
            // 0x40 (extended label, RFC 6891 deprecated it) and 0x80 are reserved.
            _ => return Err(NameError::BadLabelType),
        }
    }
}

/// Appends a label in presentation format: printable ASCII as is, except `.`
/// and `\` which get a backslash; every other byte as `\DDD` (decimal).
fn escape_label(label: &[u8], out: &mut String) {
    for &b in label {
        match b {
            b'.' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            b'!'..=b'~' => out.push(char::from(b)),
            _ => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\{b:03}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simple_dns::rdata::{A, AAAA, CNAME, RData, SOA, TXT};
    use simple_dns::{CLASS, Name, Packet, PacketFlag, QTYPE, RCODE, ResourceRecord, TYPE};

    fn query(id: u16, name: &str, qtype: QTYPE) -> Vec<u8> {
        let mut p = Packet::new_query(id);
        p.set_flags(PacketFlag::RECURSION_DESIRED);
        p.questions.push(simple_dns::Question::new(Name::new_unchecked(name), qtype, CLASS::IN.into(), false));
        p.build_bytes_vec().unwrap()
    }

    /// A response to `www.Example.com A` with a CNAME, an A and an AAAA
    /// record, name-compressed.
    fn cname_response() -> Vec<u8> {
        let mut p = Packet::new_reply(0xbeef);
        p.set_flags(PacketFlag::RECURSION_DESIRED | PacketFlag::RECURSION_AVAILABLE);
        p.questions.push(simple_dns::Question::new(
            Name::new_unchecked("www.Example.com"),
            TYPE::A.into(),
            CLASS::IN.into(),
            false,
        ));
        p.answers.push(ResourceRecord::new(
            Name::new_unchecked("www.Example.com"),
            CLASS::IN,
            300,
            RData::CNAME(CNAME(Name::new_unchecked("edge.cdn.Example.com"))),
        ));
        p.answers.push(ResourceRecord::new(
            Name::new_unchecked("edge.cdn.Example.com"),
            CLASS::IN,
            60,
            RData::A(A { address: u32::from(Ipv4Addr::new(192, 0, 2, 10)) }),
        ));
        p.answers.push(ResourceRecord::new(
            Name::new_unchecked("edge.cdn.Example.com"),
            CLASS::IN,
            60,
            RData::AAAA(AAAA { address: u128::from("2001:db8::10".parse::<Ipv6Addr>().unwrap()) }),
        ));
        p.build_bytes_vec_compressed().unwrap()
    }

    fn tcp_frame(msg: &[u8]) -> Vec<u8> {
        let mut v = (msg.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(msg);
        v
    }

    fn q(name: &str, qtype: &str, code: u16) -> Question {
        Question { name: name.into(), qtype: qtype.into(), qtype_code: code }
    }

    /// `dig www.example.com A` as sent by a stub resolver, byte by byte.
    const HAND_QUERY: &[u8] = &[
        0x1a, 0x2b, // ID
        0x01, 0x20, // flags: QR=0 opcode=QUERY RD=1 AD=1
        0x00, 0x01, // QDCOUNT 1
        0x00, 0x00, // ANCOUNT 0
        0x00, 0x00, // NSCOUNT 0
        0x00, 0x01, // ARCOUNT 1 (EDNS OPT)
        // offset 12: QNAME www.example.com
        0x03, b'w', b'w', b'w', //
        0x07, b'e', b'x', b'a', b'm', b'p', b'l', b'e', // offset 16
        0x03, b'c', b'o', b'm', //
        0x00, //
        0x00, 0x01, // QTYPE A
        0x00, 0x01, // QCLASS IN
        // OPT pseudo-record (RFC 6891)
        0x00, // root name
        0x00, 0x29, // TYPE OPT (41)
        0x04, 0xd0, // UDP payload size 1232
        0x00, 0x00, 0x00, 0x00, // extended RCODE, version, flags
        0x00, 0x0c, // RDLENGTH 12
        0x00, 0x0a, 0x00, 0x08, // option COOKIE, length 8
        0x5f, 0x3a, 0x91, 0x0e, 0x27, 0xc4, 0x88, 0x01, // client cookie
    ];

    /// The resolver's answer to [`HAND_QUERY`]: a CNAME into a CDN and its A
    /// record, with compression pointers, byte by byte.
    const HAND_RESPONSE: &[u8] = &[
        0x1a, 0x2b, // ID
        0x81, 0x80, // flags: QR=1 opcode=QUERY RD=1 RA=1 RCODE=NOERROR
        0x00, 0x01, // QDCOUNT 1
        0x00, 0x02, // ANCOUNT 2
        0x00, 0x00, // NSCOUNT 0
        0x00, 0x00, // ARCOUNT 0
        // offset 12: QNAME www.example.com
        0x03, b'w', b'w', b'w', //
        0x07, b'e', b'x', b'a', b'm', b'p', b'l', b'e', // offset 16: example.com
        0x03, b'c', b'o', b'm', //
        0x00, //
        0x00, 0x01, // QTYPE A
        0x00, 0x01, // QCLASS IN
        // offset 33: answer 1
        0xc0, 0x0c, // NAME -> offset 12 (www.example.com)
        0x00, 0x05, // TYPE CNAME
        0x00, 0x01, // CLASS IN
        0x00, 0x00, 0x01, 0x2c, // TTL 300
        0x00, 0x0e, // RDLENGTH 14
        // offset 45: edge-01.Cdn.<pointer to example.com>
        0x07, b'e', b'd', b'g', b'e', b'-', b'0', b'1', //
        0x03, b'C', b'd', b'n', //
        0xc0, 0x10, // -> offset 16
        // offset 59: answer 2
        0xc0, 0x2d, // NAME -> offset 45 (edge-01.Cdn.example.com)
        0x00, 0x01, // TYPE A
        0x00, 0x01, // CLASS IN
        0x00, 0x00, 0x00, 0x3c, // TTL 60
        0x00, 0x04, // RDLENGTH 4
        93, 184, 215, 14, // 93.184.215.14
    ];

    #[test]
    fn hand_written_query() {
        let m = parse(HAND_QUERY, Transport::Udp).unwrap();
        assert_eq!(m.id, 0x1a2b);
        assert!(!m.is_response);
        assert_eq!(m.rcode, 0);
        assert_eq!(m.questions, vec![q("www.example.com", "A", 1)]);
        assert!(m.answers.is_empty());
        assert!(!m.truncated);
    }

    #[test]
    fn hand_written_response() {
        let m = parse(HAND_RESPONSE, Transport::Udp).unwrap();
        assert_eq!(m.id, 0x1a2b);
        assert!(m.is_response);
        assert_eq!(m.rcode, 0);
        assert!(!m.truncated);
        assert_eq!(m.questions, vec![q("www.example.com", "A", 1)]);
        assert_eq!(
            m.answers,
            vec![
                Answer {
                    name: "www.example.com".into(),
                    rtype: "CNAME".into(),
                    ttl: 300,
                    data: AnswerData::Name("edge-01.Cdn.example.com".into()),
                },
                Answer {
                    name: "edge-01.Cdn.example.com".into(),
                    rtype: "A".into(),
                    ttl: 60,
                    data: AnswerData::Ip(IpAddr::V4(Ipv4Addr::new(93, 184, 215, 14))),
                },
            ]
        );
        assert_eq!(resolved_ips(&m), vec![IpAddr::V4(Ipv4Addr::new(93, 184, 215, 14))]);
    }

    #[test]
    fn a_query_keeps_case() {
        let m = parse(&query(7, "ExFiL-QmFzZTY0.evil.Example", TYPE::A.into()), Transport::Udp).unwrap();
        assert_eq!(m.id, 7);
        assert!(!m.is_response);
        assert_eq!(m.questions, vec![q("ExFiL-QmFzZTY0.evil.Example", "A", 1)]);
        assert!(m.answers.is_empty());
        assert!(!m.truncated);
    }

    #[test]
    fn aaaa_query() {
        let m = parse(&query(8, "ipv6.example.org", TYPE::AAAA.into()), Transport::Udp).unwrap();
        assert_eq!(m.questions, vec![q("ipv6.example.org", "AAAA", 28)]);
    }

    #[test]
    fn txt_and_any_queries() {
        let m = parse(&query(9, "_dmarc.example.net", TYPE::TXT.into()), Transport::Udp).unwrap();
        assert_eq!(m.questions, vec![q("_dmarc.example.net", "TXT", 16)]);
        let m = parse(&query(9, "example.net", QTYPE::ANY), Transport::Udp).unwrap();
        assert_eq!(m.questions, vec![q("example.net", "ANY", 255)]);
    }

    #[test]
    fn unknown_qtype_and_odd_class_still_parse() {
        let mut pkt = HAND_QUERY.to_vec();
        pkt[29..31].copy_from_slice(&0xff00u16.to_be_bytes()); // QTYPE 65280
        pkt[31..33].copy_from_slice(&0x1234u16.to_be_bytes()); // QCLASS 0x1234
        let m = parse(&pkt, Transport::Udp).unwrap();
        assert_eq!(m.questions, vec![q("www.example.com", "TYPE65280", 0xff00)]);
        assert!(!m.truncated);
    }

    #[test]
    fn response_with_cname_a_and_aaaa() {
        let m = parse(&cname_response(), Transport::Udp).unwrap();
        assert_eq!(m.id, 0xbeef);
        assert!(m.is_response);
        assert!(!m.truncated);
        assert_eq!(m.questions, vec![q("www.Example.com", "A", 1)]);
        let v6: Ipv6Addr = "2001:db8::10".parse().unwrap();
        assert_eq!(
            m.answers,
            vec![
                Answer {
                    name: "www.Example.com".into(),
                    rtype: "CNAME".into(),
                    ttl: 300,
                    data: AnswerData::Name("edge.cdn.Example.com".into()),
                },
                Answer {
                    name: "edge.cdn.Example.com".into(),
                    rtype: "A".into(),
                    ttl: 60,
                    data: AnswerData::Ip(Ipv4Addr::new(192, 0, 2, 10).into()),
                },
                Answer {
                    name: "edge.cdn.Example.com".into(),
                    rtype: "AAAA".into(),
                    ttl: 60,
                    data: AnswerData::Ip(v6.into()),
                },
            ]
        );
        assert_eq!(resolved_ips(&m), vec![IpAddr::from(Ipv4Addr::new(192, 0, 2, 10)), IpAddr::from(v6)]);
    }

    #[test]
    fn other_record_types_are_other() {
        let mut p = Packet::new_reply(1);
        p.questions.push(simple_dns::Question::new(
            Name::new_unchecked("example.com"),
            TYPE::TXT.into(),
            CLASS::IN.into(),
            false,
        ));
        p.answers.push(ResourceRecord::new(
            Name::new_unchecked("example.com"),
            CLASS::IN,
            5,
            RData::TXT(TXT::new().with_string("v=spf1 -all").unwrap()),
        ));
        let m = parse(&p.build_bytes_vec().unwrap(), Transport::Udp).unwrap();
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].rtype, "TXT");
        assert_eq!(m.answers[0].data, AnswerData::Other);
        assert!(resolved_ips(&m).is_empty());
    }

    #[test]
    fn nxdomain_with_soa_in_authority() {
        let mut p = Packet::new_reply(0x4242);
        *p.rcode_mut() = RCODE::NameError;
        p.questions.push(simple_dns::Question::new(
            Name::new_unchecked("nope.example.com"),
            TYPE::A.into(),
            CLASS::IN.into(),
            false,
        ));
        p.name_servers.push(ResourceRecord::new(
            Name::new_unchecked("example.com"),
            CLASS::IN,
            900,
            RData::SOA(SOA {
                mname: Name::new_unchecked("ns.example.com"),
                rname: Name::new_unchecked("hostmaster.example.com"),
                serial: 2024010101,
                refresh: 7200,
                retry: 3600,
                expire: 1209600,
                minimum: 300,
            }),
        ));
        let bytes = p.build_bytes_vec_compressed().unwrap();
        let m = parse(&bytes, Transport::Udp).unwrap();
        assert!(m.is_response);
        assert_eq!(m.rcode, 3);
        assert_eq!(m.questions, vec![q("nope.example.com", "A", 1)]);
        assert!(m.answers.is_empty());
        assert!(resolved_ips(&m).is_empty());
        assert!(!m.truncated);

        // Cut inside the SOA: no answers lost, but the message is incomplete.
        let m = parse(&bytes[..bytes.len() - 3], Transport::Udp).unwrap();
        assert_eq!(m.rcode, 3);
        assert!(m.truncated);
    }

    #[test]
    fn tcp_framing() {
        let msg = cname_response();
        let udp = parse(&msg, Transport::Udp).unwrap();
        let tcp = parse(&tcp_frame(&msg), Transport::Tcp).unwrap();
        assert_eq!(udp, tcp);
        assert!(!tcp.truncated);

        // Two pipelined messages in one segment: only the first is read.
        let mut two = tcp_frame(HAND_QUERY);
        two.extend_from_slice(&tcp_frame(&msg));
        let m = parse(&two, Transport::Tcp).unwrap();
        assert_eq!(m.id, 0x1a2b);
        assert!(!m.truncated);

        // The prefix limits the message: cut right after the question.
        let mut short = tcp_frame(HAND_RESPONSE);
        short[..2].copy_from_slice(&33u16.to_be_bytes());
        let m = parse(&short, Transport::Tcp).unwrap();
        assert_eq!(m.questions, vec![q("www.example.com", "A", 1)]);
        assert!(m.answers.is_empty());
        assert!(m.truncated);

        // Without the prefix the UDP parse of a TCP payload is not the same.
        assert_ne!(parse(&tcp_frame(&msg), Transport::Udp).ok(), Some(udp));
    }

    #[test]
    fn tcp_payload_shorter_than_prefix() {
        // The kernel captures at most 1024 bytes of a segment.
        let frame = tcp_frame(HAND_RESPONSE);
        let m = parse(&frame[..frame.len() - 2], Transport::Tcp).unwrap();
        assert!(m.truncated);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].rtype, "CNAME");
        assert!(resolved_ips(&m).is_empty());

        // Complete in itself but shorter than the prefix says: still flagged.
        let mut frame = tcp_frame(HAND_QUERY);
        frame[..2].copy_from_slice(&2000u16.to_be_bytes());
        let m = parse(&frame, Transport::Tcp).unwrap();
        assert_eq!(m.questions.len(), 1);
        assert!(m.truncated);
    }

    #[test]
    fn truncated_response_keeps_complete_answers() {
        let full = cname_response();
        let all = parse(&full, Transport::Udp).unwrap();
        // Cut inside the AAAA record (the last one): CNAME and A survive.
        let m = parse(&full[..full.len() - 5], Transport::Udp).unwrap();
        assert!(m.truncated);
        assert_eq!(m.questions, all.questions);
        assert_eq!(m.answers, all.answers[..2]);
        assert_eq!(resolved_ips(&m), vec![IpAddr::from(Ipv4Addr::new(192, 0, 2, 10))]);

        // Every cut after the question gives Ok with a prefix of the answers;
        // every cut inside the header or question is an error.
        let question_end = 12 + "www.Example.com".len() + 2 + 4;
        for cut in 0..full.len() {
            let r = parse(&full[..cut], Transport::Udp);
            if cut < question_end {
                assert!(r.is_err(), "cut {cut}");
            } else {
                let m = r.unwrap();
                assert!(m.truncated, "cut {cut}");
                assert_eq!(m.questions, all.questions);
                assert_eq!(m.answers, all.answers[..m.answers.len()]);
            }
        }
    }

    #[test]
    fn short_and_garbage_input() {
        assert_eq!(parse(&[], Transport::Udp), Err(DnsError::HeaderTooShort));
        assert_eq!(parse(&[0; 11], Transport::Udp), Err(DnsError::HeaderTooShort));
        assert_eq!(parse(&[], Transport::Tcp), Err(DnsError::MissingTcpLength));
        assert_eq!(parse(&[0], Transport::Tcp), Err(DnsError::MissingTcpLength));
        // A prefix that declares less than a header.
        assert_eq!(
            parse(&[0, 5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], Transport::Tcp),
            Err(DnsError::HeaderTooShort)
        );
        // A header announcing a question that is not there.
        assert_eq!(parse(&HAND_QUERY[..12], Transport::Udp), Err(DnsError::QuestionTruncated));
        assert_eq!(parse(&HAND_QUERY[..31], Transport::Udp), Err(DnsError::QuestionTruncated));
        // Reserved label type 0x40 in the question.
        let mut bad = HAND_QUERY.to_vec();
        bad[12] = 0x43;
        assert_eq!(parse(&bad, Transport::Udp), Err(DnsError::BadQuestionName(NameError::BadLabelType)));
        // A bare header with no records is a valid (empty) message.
        let m = parse(&[0; 12], Transport::Udp).unwrap();
        assert!(m.questions.is_empty() && !m.truncated);
        // Huge counts with no data behind them: error, no huge allocation.
        assert_eq!(
            parse(&[0, 0, 0x81, 0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], Transport::Udp),
            Err(DnsError::QuestionTruncated)
        );
        let mut many = HAND_RESPONSE.to_vec();
        many[6..12].copy_from_slice(&[0xff; 6]); // AN/NS/AR counts 65535
        let m = parse(&many, Transport::Udp).unwrap();
        assert!(m.truncated);
        assert_eq!(m.answers.len(), 2);

        // Deterministic pseudo-random junk, with and without a plausible
        // header in front, must never panic.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        };
        for round in 0..3000 {
            let len = usize::from(next()) + usize::from(next()) * (round % 4);
            let mut buf: Vec<u8> = (0..len).map(|_| next()).collect();
            if round % 2 == 0 && buf.len() >= 12 {
                buf[4..12].copy_from_slice(&[0, 1, 0, 3, 0, 1, 0, 1]);
            }
            for t in [Transport::Udp, Transport::Tcp] {
                if let Ok(m) = parse(&buf, t) {
                    let _ = resolved_ips(&m);
                    for name in m.questions.iter().map(|q| &q.name) {
                        assert!(name.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{name:?}");
                    }
                }
            }
        }
    }

    /// A header announcing one question, followed by `body`.
    fn one_question(body: &[u8]) -> Vec<u8> {
        let mut v = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn compression_pointer_loops_terminate() {
        // Offset 12 points at itself.
        let self_loop = one_question(&[0xc0, 0x0c, 0, 1, 0, 1]);
        assert_eq!(parse(&self_loop, Transport::Udp), Err(DnsError::BadQuestionName(NameError::PointerLoop)));
        // 12 -> 14 -> 12 ...
        let ping_pong = one_question(&[0xc0, 0x0e, 0xc0, 0x0c, 0, 1, 0, 1]);
        assert_eq!(parse(&ping_pong, Transport::Udp), Err(DnsError::BadQuestionName(NameError::PointerLoop)));
        // A label then a pointer back to it: the name would grow forever.
        let growing = one_question(&[0x01, b'a', 0xc0, 0x0c, 0, 1, 0, 1]);
        assert_eq!(parse(&growing, Transport::Udp), Err(DnsError::BadQuestionName(NameError::TooLong)));
        // A pointer into the header, which reads as junk labels.
        let into_header = one_question(&[0xc0, 0x00, 0, 1, 0, 1]);
        assert!(parse(&into_header, Transport::Udp).is_err());
        // Beyond the message.
        let beyond = one_question(&[0xc3, 0xff, 0, 1, 0, 1]);
        assert_eq!(parse(&beyond, Transport::Udp), Err(DnsError::BadQuestionName(NameError::PointerOutOfRange)));

        // A loop in an answer's name or CNAME target: the question survives.
        let mut resp = HAND_RESPONSE.to_vec();
        resp[59..61].copy_from_slice(&[0xc0, 59]); // answer 2 name -> itself
        let m = parse(&resp, Transport::Udp).unwrap();
        assert!(m.truncated);
        assert_eq!(m.questions.len(), 1);
        assert_eq!(m.answers.len(), 1);

        let mut resp = HAND_RESPONSE.to_vec();
        resp[57..59].copy_from_slice(&[0xc0, 45]); // CNAME target loops on itself
        resp[59..61].copy_from_slice(&[0xc0, 12]); // answer 2 name: www.example.com
        let m = parse(&resp, Transport::Udp).unwrap();
        assert!(!m.truncated); // RDLENGTH still delimits the record
        assert_eq!(m.answers[0].data, AnswerData::Other);
        assert_eq!(m.answers.len(), 2);
    }

    #[test]
    fn longest_legal_name_and_one_byte_more() {
        // Three 63-byte labels and one of `last` bytes, then the root.
        let name = |last: usize| {
            let mut v = Vec::new();
            for len in [63, 63, 63, last] {
                v.push(len as u8);
                v.extend(std::iter::repeat_n(b'x', len));
            }
            v.extend_from_slice(&[0, 0, 1, 0, 1]);
            one_question(&v)
        };
        // 3 * 64 + 62 + 1 = 255 wire bytes: the longest legal name.
        let m = parse(&name(61), Transport::Udp).unwrap();
        assert_eq!(m.questions[0].name.len(), 63 * 3 + 61 + 3);
        assert_eq!(parse(&name(62), Transport::Udp), Err(DnsError::BadQuestionName(NameError::TooLong)));
    }

    #[test]
    fn hostile_label_bytes_are_escaped() {
        let mut body = Vec::new();
        let label: &[u8] = b"a\x1b[2Jb\r\n\x00 \x7f\xff.\\";
        body.push(label.len() as u8);
        body.extend_from_slice(label);
        body.extend_from_slice(&[3, b'c', b'o', b'm', 0, 0, 16, 0, 1]);
        let m = parse(&one_question(&body), Transport::Udp).unwrap();
        let name = &m.questions[0].name;
        assert_eq!(name, r"a\027[2Jb\013\010\000\032\127\255\.\\.com");
        assert!(name.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        assert_eq!(m.questions[0].qtype, "TXT");
    }

    #[test]
    fn root_name() {
        let m = parse(&one_question(&[0, 0, 2, 0, 1]), Transport::Udp).unwrap();
        assert_eq!(m.questions, vec![q(".", "NS", 2)]);
    }

    #[test]
    fn malformed_address_rdata_is_other() {
        let mut resp = HAND_RESPONSE.to_vec();
        // Answer 2: A with RDLENGTH 3 (drop the last address byte).
        resp[69..71].copy_from_slice(&[0, 3]);
        resp.pop();
        let m = parse(&resp, Transport::Udp).unwrap();
        assert!(!m.truncated);
        assert_eq!(m.answers[1].data, AnswerData::Other);
        assert!(resolved_ips(&m).is_empty());
    }

    #[test]
    fn type_names() {
        assert_eq!(qtype_name(1), "A");
        assert_eq!(qtype_name(5), "CNAME");
        assert_eq!(qtype_name(15), "MX");
        assert_eq!(qtype_name(16), "TXT");
        assert_eq!(qtype_name(28), "AAAA");
        assert_eq!(qtype_name(65), "HTTPS");
        assert_eq!(qtype_name(255), "ANY");
        assert_eq!(qtype_name(0), "TYPE0");
        assert_eq!(qtype_name(54), "TYPE54");
        assert_eq!(qtype_name(65280), "TYPE65280");
    }

    #[test]
    fn error_messages() {
        assert_eq!(DnsError::HeaderTooShort.to_string(), "DNS header shorter than 12 bytes");
        assert_eq!(
            DnsError::BadQuestionName(NameError::PointerLoop).to_string(),
            "malformed name in DNS question: too many compression pointers (pointer loop)"
        );
    }
}
