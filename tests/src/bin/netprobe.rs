//! `netprobe`: performs the network actions given as arguments, in order.
//!
//! Used by the watcher integration tests as a well-defined workload. All
//! traffic goes only to the addresses given on the command line.
//!
//! Actions (one word followed by its parameters):
//!   tcp ADDR:PORT                 TCP connect, send "hello\n", close
//!   uring-tcp ADDR:PORT           like tcp, but the connect is submitted through io_uring
//!                                 (IORING_OP_CONNECT); the send is a plain write(2)
//!   uring-read PATH               open PATH and read it through io_uring (IORING_OP_OPENAT,
//!                                 IORING_OP_READ: no open(2)/read(2) call); prints
//!                                 `uring-read PATH: TEXT` (its first 4 KiB, trailing space cut)
//!   udp-connect ADDR:PORT         UDP connect() + send("ping")
//!   udp-sendto ADDR:PORT          unconnected UDP sendto("ping")
//!   dns-sendto SERVER NAME TYPE   DNS query via sendto/recvfrom
//!   dns-sendmsg SERVER NAME TYPE  DNS query via sendmsg/recvmsg
//!   dns-sendmmsg SERVER N1,N2 TYPE  two queries in one sendmmsg call
//!   dns-connected SERVER NAME TYPE  UDP connect() + send/recv
//!   dns-tcp SERVER NAME TYPE      DNS over TCP (length prefix + query in one write)
//!   icmp ADDR TEXT                ICMP echo request carrying TEXT, from a raw socket
//!   icmp-after-sockets ADDR TEXT N  like icmp, but between opening the raw socket and sending
//!                                 it opens and closes N UDP sockets (a flood of socket entries)
//!   packet-socket                 open an AF_PACKET socket (and send nothing)
//!   unix PATH                     connect to a unix socket at PATH, send "hello\n"
//!   cgroup-move DIR               write this process's pid into DIR/cgroup.procs
//!   signal PID SIG                kill(PID, SIG)
//!   sleep MS
//!   daemonize                     double fork; the grandchild runs the rest
//!   write-pid FILE
//!   exec PROGRAM ARGS...          must be last
//!   fexec PATH ARGS...            open PATH and exec it through the descriptor (fexecve:
//!                                 `execveat(fd, "", AT_EMPTY_PATH)`, no path); must be last
//!
//! SERVER is an IPv4/IPv6 literal; the port is always 53. TYPE is A, AAAA or TXT.
//!
//! stdout carries only `answer NAME: ip1,ip2` / `answer NAME: RCODE` /
//! `no answer NAME` lines (one per queried name, in argument order). Failed
//! network calls are reported on stderr as one line `OP ADDR: <strerror> (<ERRNO>)`,
//! e.g. `connect 127.0.0.1:80: Operation not permitted (EPERM)`, with OP one of
//! connect, send, sendto, sendmsg, sendmmsg, recv; they are not fatal (tests of
//! enforcement expect EPERM). All arguments are validated before the first action;
//! usage and setup errors print `netprobe: ...` and exit 2 (a failed `exec`: 127).
//! connect(2) is a plain blocking call bounded by a 5 s SO_SNDTIMEO. The io_uring
//! connect makes no connect(2) call at all; it is bounded by a 5 s linked timeout
//! (IORING_OP_LINK_TIMEOUT), reported as ETIMEDOUT. A failure to set up the ring
//! (io_uring disabled, ENOSYS) is a setup error (exit 2).

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::mem;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::exit;
use std::time::{Duration, Instant};

use simple_dns::rdata::RData;
use simple_dns::{CLASS, Name, Packet, PacketFlag, QCLASS, QTYPE, Question, RCODE, TYPE};

const DNS_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Prints one line to stderr with a single write(2), so lines of concurrent
/// processes sharing stderr do not interleave.
fn warn(msg: impl std::fmt::Display) {
    let _ = io::stderr().write_all(format!("{msg}\n").as_bytes());
}

/// Setup / usage error: print and exit non-zero.
fn fail(msg: impl std::fmt::Display) -> ! {
    let _ = io::stdout().flush();
    warn(format_args!("netprobe: {msg}"));
    exit(2);
}

/// Text for an I/O error: "Operation not permitted (EPERM)" when it has an errno.
fn err_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => {
            let errno = nix::errno::Errno::from_raw(n);
            format!("{} ({errno:?})", errno.desc())
        }
        None => e.to_string(),
    }
}

enum Action {
    Tcp(SocketAddr),
    UringTcp(SocketAddr),
    UringRead(String),
    UdpConnect(SocketAddr),
    UdpSendto(SocketAddr),
    /// (mode, server, names, type)
    Dns(String, SocketAddr, Vec<String>, TYPE),
    Icmp(IpAddr, String),
    IcmpAfterSockets(IpAddr, String, u32),
    PacketSocket,
    Unix(String),
    CgroupMove(String),
    Signal(i32, i32),
    Sleep(Duration),
    Daemonize,
    WritePid(String),
    Exec(Vec<String>),
    Fexec(Vec<String>),
}

/// Parses all actions up front so that usage errors happen before any side effect.
fn parse_actions(args: Vec<String>) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut it = args.into_iter();
    while let Some(action) = it.next() {
        let mut param =
            |what: &str| -> String { it.next().unwrap_or_else(|| fail(format!("{action}: missing parameter {what}"))) };
        let a = match action.as_str() {
            "tcp" => Action::Tcp(parse_sockaddr(&param("ADDR:PORT"))),
            "uring-tcp" => Action::UringTcp(parse_sockaddr(&param("ADDR:PORT"))),
            "uring-read" => Action::UringRead(param("PATH")),
            "udp-connect" => Action::UdpConnect(parse_sockaddr(&param("ADDR:PORT"))),
            "udp-sendto" => Action::UdpSendto(parse_sockaddr(&param("ADDR:PORT"))),
            "dns-sendto" | "dns-sendmsg" | "dns-sendmmsg" | "dns-connected" | "dns-tcp" => {
                let server = SocketAddr::new(parse_ip(&param("SERVER")), 53);
                let names: Vec<String> = if action == "dns-sendmmsg" {
                    let list: Vec<String> = param("NAME1,NAME2").split(',').map(String::from).collect();
                    if list.len() != 2 || list.iter().any(|n| n.is_empty()) {
                        fail("dns-sendmmsg: NAME must be NAME1,NAME2");
                    }
                    list
                } else {
                    vec![param("NAME")]
                };
                let qtype = parse_qtype(&param("TYPE"));
                for n in &names {
                    // Validate now; build_query cannot fail later.
                    build_query(0, n, qtype);
                }
                Action::Dns(action.clone(), server, names, qtype)
            }
            "icmp" => Action::Icmp(parse_ip(&param("ADDR")), param("TEXT")),
            "icmp-after-sockets" => {
                let (addr, text) = (parse_ip(&param("ADDR")), param("TEXT"));
                let n = param("N").parse().unwrap_or_else(|e| fail(format!("icmp-after-sockets: bad N: {e}")));
                Action::IcmpAfterSockets(addr, text, n)
            }
            "packet-socket" => Action::PacketSocket,
            "unix" => Action::Unix(param("PATH")),
            "cgroup-move" => Action::CgroupMove(param("DIR")),
            "signal" => {
                let pid: i32 = param("PID").parse().unwrap_or_else(|e| fail(format!("signal: bad PID: {e}")));
                let sig: i32 = param("SIG").parse().unwrap_or_else(|e| fail(format!("signal: bad SIG: {e}")));
                Action::Signal(pid, sig)
            }
            "sleep" => {
                let ms: u64 = param("MS").parse().unwrap_or_else(|e| fail(format!("sleep: bad MS: {e}")));
                Action::Sleep(Duration::from_millis(ms))
            }
            "daemonize" => Action::Daemonize,
            "write-pid" => Action::WritePid(param("FILE")),
            "exec" => {
                let rest: Vec<String> = it.by_ref().collect();
                if rest.is_empty() {
                    fail("exec: missing PROGRAM");
                }
                Action::Exec(rest)
            }
            "fexec" => {
                let rest: Vec<String> = it.by_ref().collect();
                if rest.len() < 2 {
                    fail("fexec: needs PATH and ARGV0");
                }
                Action::Fexec(rest)
            }
            other => fail(format!("unknown action {other:?}")),
        };
        actions.push(a);
    }
    actions
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        fail("usage: netprobe ACTION [PARAMS...] [ACTION ...] (see source for actions)");
    }
    for action in parse_actions(args) {
        match action {
            Action::Tcp(a) => tcp(a),
            Action::UringTcp(a) => uring_tcp(a),
            Action::UringRead(p) => uring_read(&p),
            Action::UdpConnect(a) => udp_connect(a),
            Action::UdpSendto(a) => udp_sendto(a),
            Action::Dns(mode, server, names, qtype) => match mode.as_str() {
                "dns-sendto" => dns_sendto(server, &names[0], qtype),
                "dns-sendmsg" => dns_sendmsg(server, &names[0], qtype),
                "dns-sendmmsg" => dns_sendmmsg(server, [&names[0], &names[1]], qtype),
                "dns-connected" => dns_connected(server, &names[0], qtype),
                _ => dns_tcp(server, &names[0], qtype),
            },
            Action::Icmp(a, text) => icmp(a, &text, 0),
            Action::IcmpAfterSockets(a, text, n) => icmp(a, &text, n),
            Action::PacketSocket => packet_socket(),
            Action::Unix(path) => unix(&path),
            Action::CgroupMove(dir) => cgroup_move(&dir),
            Action::Signal(pid, sig) => {
                // SAFETY: a plain kill(2).
                if unsafe { libc::kill(pid, sig) } != 0 {
                    warn(format!("kill {pid}: {}", err_text(&io::Error::last_os_error())));
                }
            }
            Action::Sleep(d) => std::thread::sleep(d),
            Action::Daemonize => daemonize(),
            Action::WritePid(f) => write_pid(Path::new(&f)),
            Action::Exec(rest) => do_exec(rest),
            Action::Fexec(rest) => do_fexec(rest),
        }
    }
    let _ = io::stdout().flush();
}

fn parse_sockaddr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| fail(format!("bad address {s:?} (want IP:PORT or [IPv6]:PORT): {e}")))
}

fn parse_ip(s: &str) -> IpAddr {
    let t = s.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(s);
    t.parse().unwrap_or_else(|e| fail(format!("bad server address {s:?} (want an IP literal): {e}")))
}

fn parse_qtype(s: &str) -> TYPE {
    match s.to_ascii_uppercase().as_str() {
        "A" => TYPE::A,
        "AAAA" => TYPE::AAAA,
        "TXT" => TYPE::TXT,
        _ => fail(format!("bad query type {s:?} (want A, AAAA or TXT)")),
    }
}

fn unspecified_for(addr: &SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
        SocketAddr::V6(_) => "[::]:0".parse().unwrap(),
    }
}

fn udp_socket(dest: &SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind(unspecified_for(dest)).unwrap_or_else(|e| fail(format!("cannot create UDP socket: {e}")));
    s.set_read_timeout(Some(DNS_TIMEOUT)).unwrap_or_else(|e| fail(format!("SO_RCVTIMEO: {e}")));
    s
}

// ---------------------------------------------------------------- plain traffic

/// A fresh blocking TCP socket of `addr`'s family (setup error if that fails).
fn tcp_socket(addr: &SocketAddr) -> OwnedFd {
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        fail(format!("cannot create TCP socket: {}", io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A plain blocking connect(2) (returns 0 or the errno directly, no EINPROGRESS),
/// bounded by SO_SNDTIMEO so a black-holed address cannot hang the test.
fn tcp_connect(addr: &SocketAddr) -> io::Result<TcpStream> {
    let fd = tcp_socket(addr);
    let tv = libc::timeval { tv_sec: CONNECT_TIMEOUT.as_secs() as libc::time_t, tv_usec: 0 };
    // SAFETY: tv is a valid timeval of the given size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const tv).cast(),
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        fail(format!("SO_SNDTIMEO: {}", io::Error::last_os_error()));
    }
    let dest = RawAddr::new(addr);
    loop {
        // SAFETY: dest holds a valid sockaddr of dest.len bytes.
        let r = unsafe { libc::connect(fd.as_raw_fd(), (&raw const dest.storage).cast(), dest.len) };
        if r == 0 {
            return Ok(TcpStream::from(fd));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Connects through io_uring: one IORING_OP_CONNECT linked to a CONNECT_TIMEOUT
/// IORING_OP_LINK_TIMEOUT, submitted with io_uring_enter(2); no connect(2) call is made.
/// Returns the connected stream or the completion's errno.
fn uring_connect(addr: &SocketAddr) -> io::Result<TcpStream> {
    use io_uring::{IoUring, opcode, squeue, types};
    const CONNECT: u64 = 1;
    const TIMEOUT: u64 = 2;

    let mut ring: IoUring =
        IoUring::new(4).unwrap_or_else(|e| fail(format!("cannot set up io_uring: {}", err_text(&e))));
    let fd = tcp_socket(addr);
    // `dest` and `ts` must stay alive (and unmoved) until the kernel is done with them;
    // both live until the end of this function, after the connect has completed.
    let dest = RawAddr::new(addr);
    let ts = types::Timespec::new().sec(CONNECT_TIMEOUT.as_secs()).nsec(CONNECT_TIMEOUT.subsec_nanos());
    let connect = opcode::Connect::new(types::Fd(fd.as_raw_fd()), (&raw const dest.storage).cast(), dest.len)
        .build()
        .flags(squeue::Flags::IO_LINK)
        .user_data(CONNECT);
    let timeout = opcode::LinkTimeout::new(&ts).build().user_data(TIMEOUT);
    // SAFETY: the entries point to `dest` and `ts`, which outlive their completion
    // (we wait for the connect's completion below; dropping the ring cancels the timeout).
    unsafe {
        ring.submission()
            .push_multiple(&[connect, timeout])
            .unwrap_or_else(|_| fail("io_uring: submission queue full"));
    }
    let mut submitted = false;
    loop {
        let r = if submitted { ring.submitter().submit_and_wait(1) } else { ring.submit_and_wait(1) };
        match r {
            Ok(_) => submitted = true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                // The entries were consumed if the submission queue is now empty.
                submitted = ring.submission().is_empty();
                continue;
            }
            Err(e) => fail(format!("io_uring_enter: {}", err_text(&e))),
        }
        let res = ring.completion().find(|c| c.user_data() == CONNECT).map(|c| c.result());
        match res {
            None => continue,
            Some(0) => return Ok(TcpStream::from(fd)),
            // The linked timeout fired and cancelled the connect.
            Some(r) if -r == libc::ECANCELED => {
                return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
            }
            Some(r) => return Err(io::Error::from_raw_os_error(-r)),
        }
    }
}

/// Submits one entry and waits for its completion's result (a negative errno on failure).
fn uring_one(ring: &mut io_uring::IoUring, entry: &io_uring::squeue::Entry) -> i32 {
    // SAFETY: the callers keep what the entry points to alive until this returns, and this
    // returns only after its completion.
    unsafe { ring.submission().push(entry).unwrap_or_else(|_| fail("io_uring: submission queue full")) };
    let mut submitted = false;
    loop {
        let r = if submitted { ring.submitter().submit_and_wait(1) } else { ring.submit_and_wait(1) };
        match r {
            Ok(_) => submitted = true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                submitted = ring.submission().is_empty();
                continue;
            }
            Err(e) => fail(format!("io_uring_enter: {}", err_text(&e))),
        }
        if let Some(c) = ring.completion().next() {
            return c.result();
        }
    }
}

/// Opens and reads PATH through io_uring only, prints what it read.
fn uring_read(path: &str) {
    use io_uring::{IoUring, opcode, types};
    let mut ring: IoUring =
        IoUring::new(4).unwrap_or_else(|e| fail(format!("cannot set up io_uring: {}", err_text(&e))));
    let c = CString::new(path).unwrap_or_else(|_| fail("uring-read: PATH contains a NUL byte"));
    let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), c.as_ptr())
        .flags(libc::O_RDONLY | libc::O_CLOEXEC)
        .build()
        .user_data(1);
    let fd = uring_one(&mut ring, &open);
    if fd < 0 {
        warn(format_args!("open {path}: {}", err_text(&io::Error::from_raw_os_error(-fd))));
        return;
    }
    // SAFETY: the fd the open completion returned, owned from here on.
    let file = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut buf = vec![0u8; 4096];
    let read = opcode::Read::new(types::Fd(file.as_raw_fd()), buf.as_mut_ptr(), buf.len() as u32).build().user_data(2);
    let n = uring_one(&mut ring, &read);
    if n < 0 {
        warn(format_args!("read {path}: {}", err_text(&io::Error::from_raw_os_error(-n))));
        return;
    }
    println!("uring-read {path}: {}", String::from_utf8_lossy(&buf[..n as usize]).trim_end());
}

/// Sends "hello\n" on a connected stream, or reports the failed connect.
fn say_hello(addr: SocketAddr, conn: io::Result<TcpStream>) {
    match conn {
        Ok(mut s) => {
            if let Err(e) = s.write_all(b"hello\n") {
                warn(format_args!("send {addr}: {}", err_text(&e)));
            }
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        Err(e) => warn(format_args!("connect {addr}: {}", err_text(&e))),
    }
}

fn tcp(addr: SocketAddr) {
    say_hello(addr, tcp_connect(&addr));
}

fn uring_tcp(addr: SocketAddr) {
    say_hello(addr, uring_connect(&addr));
}

fn udp_connect(addr: SocketAddr) {
    let s = udp_socket(&addr);
    if let Err(e) = s.connect(addr) {
        warn(format_args!("connect {addr}: {}", err_text(&e)));
        return;
    }
    if let Err(e) = s.send(b"ping") {
        warn(format_args!("send {addr}: {}", err_text(&e)));
    }
}

fn udp_sendto(addr: SocketAddr) {
    let s = udp_socket(&addr);
    if let Err(e) = s.send_to(b"ping", addr) {
        warn(format_args!("sendto {addr}: {}", err_text(&e)));
    }
}

// ---------------------------------------------------------------- DNS

fn random_u16() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: writes at most 2 bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 2, 0) };
    if n != 2 {
        // Fallback: time-based; the id only has to be unpredictable-ish.
        let t =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        return (t ^ (std::process::id() << 7)) as u16;
    }
    u16::from_ne_bytes(b)
}

fn build_query(id: u16, name: &str, qtype: TYPE) -> Vec<u8> {
    let qname = Name::new(name).unwrap_or_else(|e| fail(format!("bad DNS name {name:?}: {e}")));
    let mut p = Packet::new_query(id);
    p.set_flags(PacketFlag::RECURSION_DESIRED);
    p.questions.push(Question::new(qname, QTYPE::TYPE(qtype), QCLASS::CLASS(CLASS::IN), false));
    p.build_bytes_vec().unwrap_or_else(|e| fail(format!("cannot build DNS query for {name:?}: {e}")))
}

fn rcode_text(r: RCODE) -> String {
    match r {
        RCODE::NoError => "NOERROR".into(),
        RCODE::FormatError => "FORMERR".into(),
        RCODE::ServerFailure => "SERVFAIL".into(),
        RCODE::NameError => "NXDOMAIN".into(),
        RCODE::NotImplemented => "NOTIMP".into(),
        RCODE::Refused => "REFUSED".into(),
        other => format!("{other:?}").to_uppercase(),
    }
}

/// Returns the packet id and the `answer ...` text if `buf` is a DNS response.
fn parse_answer(buf: &[u8]) -> Option<(u16, String)> {
    let p = Packet::parse(buf).ok()?;
    if !p.has_flags(PacketFlag::RESPONSE) {
        return None;
    }
    if p.rcode() != RCODE::NoError {
        return Some((p.id(), rcode_text(p.rcode())));
    }
    let ips: Vec<String> = p
        .answers
        .iter()
        .filter_map(|rr| match &rr.rdata {
            RData::A(a) => Some(std::net::Ipv4Addr::from(a.address).to_string()),
            RData::AAAA(a) => Some(std::net::Ipv6Addr::from(a.address).to_string()),
            _ => None,
        })
        .collect();
    let text = if ips.is_empty() { "NOERROR".to_string() } else { ips.join(",") };
    Some((p.id(), text))
}

fn print_answer(name: &str, answer: Option<String>) {
    match answer {
        Some(a) => println!("answer {name}: {a}"),
        None => println!("no answer {name}"),
    }
}

/// Receive with `recv` until a response with id `id` arrives or the deadline passes.
fn wait_answer(
    server: SocketAddr,
    mut recv: impl FnMut(&mut [u8]) -> io::Result<usize>,
    ids: &[u16],
) -> Vec<Option<String>> {
    let deadline = Instant::now() + DNS_TIMEOUT;
    let mut out: Vec<Option<String>> = vec![None; ids.len()];
    let mut buf = vec![0u8; 65535];
    while out.iter().any(Option::is_none) && Instant::now() < deadline {
        match recv(&mut buf) {
            Ok(n) => {
                if let Some((id, text)) = parse_answer(&buf[..n]) {
                    for (i, want) in ids.iter().enumerate() {
                        if *want == id && out[i].is_none() {
                            out[i] = Some(text);
                            break;
                        }
                    }
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                warn(format_args!("recv {server}: {}", err_text(&e)));
                break;
            }
        }
    }
    out
}

fn dns_sendto(server: SocketAddr, name: &str, qtype: TYPE) {
    let id = random_u16();
    let q = build_query(id, name, qtype);
    let s = udp_socket(&server);
    if let Err(e) = s.send_to(&q, server) {
        warn(format_args!("sendto {server}: {}", err_text(&e)));
        print_answer(name, None);
        return;
    }
    let ans = wait_answer(server, |buf| s.recv_from(buf).map(|(n, _)| n), &[id]);
    print_answer(name, ans.into_iter().next().flatten());
}

/// A sockaddr in the form libc wants it.
struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    fn new(addr: &SocketAddr) -> RawAddr {
        // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
                mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: as above, for sockaddr_in6.
                unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
                mem::size_of::<libc::sockaddr_in6>()
            }
        };
        RawAddr { storage, len: len as libc::socklen_t }
    }
}

fn dns_sendmsg(server: SocketAddr, name: &str, qtype: TYPE) {
    let id = random_u16();
    let mut q = build_query(id, name, qtype);
    let s = udp_socket(&server);
    let fd = s.as_raw_fd();
    let mut dest = RawAddr::new(&server);
    let mut iov = libc::iovec { iov_base: q.as_mut_ptr().cast(), iov_len: q.len() };
    // SAFETY: msghdr is plain old data; zero is a valid "empty" value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&raw mut dest.storage).cast();
    msg.msg_namelen = dest.len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: all pointers in msg point to live buffers of the stated sizes.
    let n = unsafe { libc::sendmsg(fd, &msg, 0) };
    if n < 0 {
        warn(format_args!("sendmsg {server}: {}", err_text(&io::Error::last_os_error())));
        print_answer(name, None);
        return;
    }
    let ans = wait_answer(
        server,
        |buf| {
            // SAFETY: zeroed sockaddr_storage / msghdr are valid.
            let mut from: libc::sockaddr_storage = unsafe { mem::zeroed() };
            let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
            let mut msg: libc::msghdr = unsafe { mem::zeroed() };
            msg.msg_name = (&raw mut from).cast();
            msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            // SAFETY: buffers outlive the call; sizes are correct.
            let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
            if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
        },
        &[id],
    );
    print_answer(name, ans.into_iter().next().flatten());
}

fn dns_sendmmsg(server: SocketAddr, names: [&str; 2], qtype: TYPE) {
    let id0 = random_u16();
    let id1 = id0.wrapping_add(1 + random_u16() % 1000);
    let mut queries = [build_query(id0, names[0], qtype), build_query(id1, names[1], qtype)];
    let s = udp_socket(&server);
    let fd = s.as_raw_fd();
    let mut dests = [RawAddr::new(&server), RawAddr::new(&server)];
    let mut iovs: Vec<libc::iovec> =
        queries.iter_mut().map(|q| libc::iovec { iov_base: q.as_mut_ptr().cast(), iov_len: q.len() }).collect();
    // SAFETY: mmsghdr is plain old data; zero is valid.
    let mut msgs: [libc::mmsghdr; 2] = unsafe { mem::zeroed() };
    for i in 0..2 {
        msgs[i].msg_hdr.msg_name = (&raw mut dests[i].storage).cast();
        msgs[i].msg_hdr.msg_namelen = dests[i].len;
        msgs[i].msg_hdr.msg_iov = &mut iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: both headers point to live buffers of the stated sizes.
    let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), 2, 0) };
    if n < 0 {
        warn(format_args!("sendmmsg {server}: {}", err_text(&io::Error::last_os_error())));
    } else if n < 2 {
        warn(format_args!("sendmmsg {server}: only {n} of 2 messages sent"));
    }
    let ids = [id0, id1];
    let sent = n.max(0) as usize;
    let ans = if sent == 0 {
        vec![None, None]
    } else {
        let mut a = wait_answer(server, |buf| s.recv_from(buf).map(|(n, _)| n), &ids[..sent]);
        a.resize(2, None);
        a
    };
    for (name, a) in names.iter().zip(ans) {
        print_answer(name, a);
    }
}

fn dns_connected(server: SocketAddr, name: &str, qtype: TYPE) {
    let id = random_u16();
    let q = build_query(id, name, qtype);
    let s = udp_socket(&server);
    if let Err(e) = s.connect(server) {
        warn(format_args!("connect {server}: {}", err_text(&e)));
        print_answer(name, None);
        return;
    }
    let fd = s.as_raw_fd();
    // SAFETY: q is a live buffer of q.len() bytes.
    let n = unsafe { libc::send(fd, q.as_ptr().cast(), q.len(), 0) };
    if n < 0 {
        warn(format_args!("send {server}: {}", err_text(&io::Error::last_os_error())));
        print_answer(name, None);
        return;
    }
    let ans = wait_answer(
        server,
        |buf| {
            // SAFETY: buf is a live, writable buffer of buf.len() bytes.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
        },
        &[id],
    );
    print_answer(name, ans.into_iter().next().flatten());
}

fn dns_tcp(server: SocketAddr, name: &str, qtype: TYPE) {
    let id = random_u16();
    let q = build_query(id, name, qtype);
    let mut s = match tcp_connect(&server) {
        Ok(s) => s,
        Err(e) => {
            warn(format_args!("connect {server}: {}", err_text(&e)));
            print_answer(name, None);
            return;
        }
    };
    let _ = s.set_read_timeout(Some(DNS_TIMEOUT));
    let mut msg = Vec::with_capacity(q.len() + 2);
    msg.extend_from_slice(&(q.len() as u16).to_be_bytes());
    msg.extend_from_slice(&q);
    // One write(2) call with the prefix and the query.
    match s.write(&msg) {
        Ok(n) if n == msg.len() => {}
        Ok(n) => {
            warn(format_args!("send {server}: short write {n} of {}", msg.len()));
            print_answer(name, None);
            return;
        }
        Err(e) => {
            warn(format_args!("send {server}: {}", err_text(&e)));
            print_answer(name, None);
            return;
        }
    }
    let mut len = [0u8; 2];
    let answer = s.read_exact(&mut len).and_then(|()| {
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).map(|()| buf)
    });
    match answer {
        Ok(buf) => match parse_answer(&buf) {
            Some((rid, text)) if rid == id => print_answer(name, Some(text)),
            _ => {
                warn(format_args!("recv {server}: unexpected response"));
                print_answer(name, None);
            }
        },
        Err(e) => {
            warn(format_args!("recv {server}: {}", err_text(&e)));
            print_answer(name, None);
        }
    }
}

// ---------------------------------------------------------------- processes

fn write_pid(path: &Path) {
    let pid = std::process::id();
    // Write to a temporary file and rename it so readers never see a partial pid.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{pid}"));
    let res = std::fs::write(&tmp, format!("{pid}\n")).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        fail(format!("cannot write pid file {}: {e}", path.display()));
    }
}

fn daemonize() {
    use nix::unistd::{ForkResult, fork, setsid};
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    // SAFETY: netprobe is single-threaded, so fork is safe.
    match unsafe { fork() } {
        Err(e) => fail(format!("daemonize: fork: {e}")),
        Ok(ForkResult::Parent { .. }) => exit(0),
        Ok(ForkResult::Child) => {}
    }
    if let Err(e) = setsid() {
        fail(format!("daemonize: setsid: {e}"));
    }
    // SAFETY: still single-threaded.
    match unsafe { fork() } {
        Err(e) => fail(format!("daemonize: second fork: {e}")),
        // SAFETY: _exit is always safe; skip atexit handlers in the middle child.
        Ok(ForkResult::Parent { .. }) => unsafe { libc::_exit(0) },
        Ok(ForkResult::Child) => {}
    }
    // stdin from /dev/null; stdout and stderr stay so tests see answers and errors.
    match std::fs::File::open("/dev/null") {
        // SAFETY: dup2 onto fd 0 of a valid descriptor.
        Ok(f) => unsafe {
            libc::dup2(f.as_raw_fd(), 0);
        },
        Err(e) => fail(format!("daemonize: /dev/null: {e}")),
    }
    if let Some(p) = std::env::var_os("NETPROBE_PIDFILE") {
        write_pid(Path::new(&p));
    }
}

fn do_exec(args: Vec<String>) -> ! {
    let cargs: Vec<CString> =
        args.iter().map(|a| CString::new(a.as_bytes()).unwrap_or_else(|_| fail("exec: NUL in argument"))).collect();
    let _ = io::stdout().flush();
    let err = nix::unistd::execvp(&cargs[0], &cargs).unwrap_err();
    warn(format_args!("netprobe: exec {}: {}", args[0], err.desc()));
    exit(127);
}

fn do_fexec(args: Vec<String>) -> ! {
    let cstr = |a: &String| CString::new(a.as_bytes()).unwrap_or_else(|_| fail("fexec: NUL in argument"));
    let path = cstr(&args[0]);
    let argv: Vec<CString> = args[1..].iter().map(cstr).collect();
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| CString::new(format!("{}={}", k.to_string_lossy(), v.to_string_lossy())).ok())
        .collect();
    let _ = io::stdout().flush();
    // SAFETY: open(2) of a NUL-terminated path; the descriptor is handed to fexecve.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        fail(format!("fexec: open {}: {}", args[0], err_text(&io::Error::last_os_error())));
    }
    // SAFETY: fd is open for as long as the call; on success it does not return.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let err = nix::unistd::fexecve(fd, &argv, &env).unwrap_err();
    warn(format_args!("netprobe: fexec {}: {}", args[0], err.desc()));
    exit(127);
}

/// An ICMP echo carrying `text` to `addr`; `churn` UDP sockets are opened and closed between
/// the raw socket's creation and the send.
fn icmp(addr: IpAddr, text: &str, churn: u32) {
    let IpAddr::V4(v4) = addr else { fail("icmp: IPv4 only") };
    // SAFETY: socket(2) with constant arguments; the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    if fd < 0 {
        warn(format!("socket raw icmp: {}", err_text(&io::Error::last_os_error())));
        return;
    }
    // SAFETY: fd is a fresh, valid descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    for _ in 0..churn {
        // SAFETY: socket(2) with constant arguments, closed at once.
        let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        if s < 0 {
            warn(format!("socket udp: {}", err_text(&io::Error::last_os_error())));
            return;
        }
        // SAFETY: our own fresh descriptor.
        unsafe { libc::close(s) };
    }
    let mut pkt = vec![8u8, 0, 0, 0, 0x12, 0x34, 0, 1];
    pkt.extend_from_slice(text.as_bytes());
    let mut sum: u32 = 0;
    for c in pkt.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let ck = !(sum as u16);
    pkt[2..4].copy_from_slice(&ck.to_be_bytes());
    // SAFETY: a zeroed sockaddr_in, then its fields.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    sa.sin_family = libc::AF_INET as u16;
    sa.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
    // SAFETY: valid buffer and address of the sizes given.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&sa as *const libc::sockaddr_in).cast(),
            mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if n < 0 {
        warn(format!("sendto {addr}: {}", err_text(&io::Error::last_os_error())));
    }
}

fn packet_socket() {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (libc::ETH_P_ALL as u16).to_be() as i32) };
    if fd < 0 {
        warn(format!("socket packet: {}", err_text(&io::Error::last_os_error())));
        return;
    }
    // SAFETY: our own fresh descriptor.
    unsafe { libc::close(fd) };
}

fn unix(path: &str) {
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(mut s) => {
            if let Err(e) = s.write_all(b"hello\n") {
                warn(format!("send {path}: {}", err_text(&e)));
            }
        }
        Err(e) => warn(format!("connect {path}: {}", err_text(&e))),
    }
}

fn cgroup_move(dir: &str) {
    let procs = Path::new(dir).join("cgroup.procs");
    if let Err(e) = std::fs::write(&procs, std::process::id().to_string()) {
        fail(format!("cgroup-move {}: {e}", procs.display()));
    }
}
