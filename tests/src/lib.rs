//! Test support for the watcher integration tests (`tests/tests/*.rs`).
//!
//! * [`DnsServer`]: a tiny authoritative DNS server (UDP + TCP port 53) on a loopback address.
//! * [`Listener`]: a TCP + UDP sink on a socket address that counts what it receives.
//! * [`Netns`]: a network namespace joined to the root namespace by a veth pair.
//! * [`HttpServer`]: a minimal HTTP/1.1 server serving fixed documents (a local package registry).
//! * [`netprobe_bin`], [`watcher_bin`], [`root_or_skip`], [`read_jsonl`], [`wait_until`], [`TempDir`].
//!
//! Everything here only talks to loopback addresses or to addresses the test passes in.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use simple_dns::rdata::{A, AAAA, RData};
use simple_dns::{CLASS, Packet, PacketFlag, QTYPE, RCODE, ResourceRecord, TYPE};

pub mod daemon;
pub mod lab;
pub mod proxy;
pub mod schema;
pub mod sinks;

/// How often background threads look at their stop flag.
const POLL_MS: i32 = 50;
/// Payload bytes kept per connection/datagram by [`Listener`].
const PAYLOAD_KEEP: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not make the helpers panic too.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until `fd` is readable or `timeout_ms` passes.
fn readable(fd: RawFd, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    n > 0
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted)
}

/// Background threads sharing a stop flag; stopped and joined on drop.
struct Workers {
    stop: Arc<AtomicBool>,
    /// Long-lived threads (accept loop, UDP loop).
    main: Vec<JoinHandle<()>>,
    /// Per-connection threads, spawned by the accept loop.
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Workers {
    fn new() -> Workers {
        Workers { stop: Arc::new(AtomicBool::new(false)), main: Vec::new(), conns: Arc::default() }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.main.drain(..) {
            let _ = h.join();
        }
        // The accept loops have ended, so no new connection threads appear.
        let conns: Vec<_> = lock(&self.conns).drain(..).collect();
        for h in conns {
            let _ = h.join();
        }
    }
}

/// Accepts connections on `listener` until stopped, running `handle` for each in its own thread.
fn spawn_accept_loop(
    w: &mut Workers,
    listener: TcpListener,
    handle: impl Fn(TcpStream, SocketAddr, &AtomicBool) + Send + Sync + 'static,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let stop = w.stop.clone();
    let conns = w.conns.clone();
    let handle = Arc::new(handle);
    w.main.push(std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            if !readable(listener.as_raw_fd(), POLL_MS) {
                continue;
            }
            let (stream, peer) = match listener.accept() {
                Ok(x) => x,
                Err(_) => continue,
            };
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_millis(POLL_MS as u64)));
            let (stop2, handle2) = (stop.clone(), handle.clone());
            let h = std::thread::spawn(move || handle2(stream, peer, &stop2));
            let mut c = lock(&conns);
            c.retain(|h| !h.is_finished());
            c.push(h);
        }
    }));
    Ok(())
}

/// Runs `handle` for every datagram on `sock` until stopped.
fn spawn_udp_loop(
    w: &mut Workers,
    sock: UdpSocket,
    mut handle: impl FnMut(&UdpSocket, &[u8], SocketAddr) + Send + 'static,
) -> io::Result<()> {
    sock.set_read_timeout(Some(Duration::from_millis(POLL_MS as u64)))?;
    let stop = w.stop.clone();
    w.main.push(std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::SeqCst) {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => handle(&sock, &buf[..n], from),
                Err(e) if is_timeout(&e) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }));
    Ok(())
}

/// Reads exactly `buf.len()` bytes; false on EOF, stop or error.
fn read_full(s: &mut TcpStream, buf: &mut [u8], stop: &AtomicBool) -> bool {
    let mut got = 0;
    while got < buf.len() {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        match s.read(&mut buf[got..]) {
            Ok(0) => return false,
            Ok(n) => got += n,
            Err(e) if is_timeout(&e) => {}
            Err(_) => return false,
        }
    }
    true
}

// ============================================================================ DNS server

/// One query received by a [`DnsServer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedQuery {
    /// Query name, lowercase, without the trailing dot.
    pub name: String,
    /// "A", "AAAA", "TXT", ... or "TYPE<n>" for types without a name here.
    pub qtype: String,
    /// "udp" or "tcp".
    pub transport: &'static str,
    /// Source address of the query.
    pub from: SocketAddr,
}

/// A DNS server on UDP and TCP port 53 of one address, answering from a fixed zone.
///
/// A/AAAA queries for names in the zone get the zone's addresses of the matching family
/// (TTL 60; none of that family: NOERROR without answers); other names get NXDOMAIN;
/// TXT queries always get NXDOMAIN. Every query is recorded, see [`DnsServer::queries`].
/// Stops (threads joined, sockets closed) on drop.
pub struct DnsServer {
    addr: IpAddr,
    queries: Arc<Mutex<Vec<ReceivedQuery>>>,
    _workers: Workers,
}

fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn qtype_text(q: QTYPE) -> String {
    match q {
        QTYPE::TYPE(TYPE::A) => "A".into(),
        QTYPE::TYPE(TYPE::AAAA) => "AAAA".into(),
        QTYPE::TYPE(TYPE::TXT) => "TXT".into(),
        QTYPE::TYPE(TYPE::CNAME) => "CNAME".into(),
        QTYPE::TYPE(TYPE::MX) => "MX".into(),
        QTYPE::TYPE(TYPE::NS) => "NS".into(),
        QTYPE::TYPE(TYPE::PTR) => "PTR".into(),
        QTYPE::TYPE(TYPE::SRV) => "SRV".into(),
        QTYPE::ANY => "ANY".into(),
        other => format!("TYPE{}", u16::from(other)),
    }
}

/// Builds the reply to `query`; also returns the (name, qtype) asked for.
fn dns_reply(zone: &HashMap<String, Vec<IpAddr>>, query: &[u8]) -> Option<(String, String, Vec<u8>)> {
    let q = Packet::parse(query).ok()?;
    if q.has_flags(PacketFlag::RESPONSE) {
        return None;
    }
    let question = q.questions.first()?.clone();
    let name = normalize_name(&question.qname.to_string());
    let qtype = qtype_text(question.qtype);

    let mut reply = Packet::new_reply(q.id());
    reply.set_flags(PacketFlag::AUTHORITATIVE_ANSWER);
    if q.has_flags(PacketFlag::RECURSION_DESIRED) {
        reply.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    reply.questions.push(question.clone());
    match zone.get(&name) {
        Some(addrs) if question.qtype != QTYPE::TYPE(TYPE::TXT) => {
            for ip in addrs {
                let rdata = match (question.qtype, ip) {
                    (QTYPE::TYPE(TYPE::A), IpAddr::V4(v4)) => RData::A(A::from(*v4)),
                    (QTYPE::TYPE(TYPE::AAAA), IpAddr::V6(v6)) => RData::AAAA(AAAA::from(*v6)),
                    _ => continue,
                };
                reply.answers.push(ResourceRecord::new(question.qname.clone(), CLASS::IN, 60, rdata));
            }
        }
        _ => *reply.rcode_mut() = RCODE::NameError,
    }
    let bytes = reply.build_bytes_vec().ok()?;
    Some((name, qtype, bytes))
}

/// Serves DNS on `udp` and `tcp` (length-prefixed) with `respond`, which gives the query's
/// name and type and the reply for a message (None: no reply). Every answered query is
/// recorded in `queries`. Shared by [`DnsServer`] and the attack lab's resolver.
pub(crate) fn serve_dns(
    workers: &mut Workers,
    udp: UdpSocket,
    tcp: TcpListener,
    queries: Arc<Mutex<Vec<ReceivedQuery>>>,
    respond: impl Fn(&[u8]) -> Option<(String, String, Vec<u8>)> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let respond = Arc::new(respond);
    let (r, qs) = (respond.clone(), queries.clone());
    spawn_udp_loop(workers, udp, move |sock, data, from| {
        if let Some((name, qtype, reply)) = r(data) {
            lock(&qs).push(ReceivedQuery { name, qtype, transport: "udp", from });
            let _ = sock.send_to(&reply, from);
        }
    })?;
    spawn_accept_loop(workers, tcp, move |mut s, from, stop| {
        let mut len = [0u8; 2];
        while read_full(&mut s, &mut len, stop) {
            let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
            if !read_full(&mut s, &mut msg, stop) {
                return;
            }
            let Some((name, qtype, reply)) = respond(&msg) else {
                return;
            };
            lock(&queries).push(ReceivedQuery { name, qtype, transport: "tcp", from });
            let mut out = (reply.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(&reply);
            if s.write_all(&out).is_err() {
                return;
            }
        }
    })?;
    Ok(())
}

impl DnsServer {
    /// Starts a server on UDP and TCP `addr`:53 (needs root). `zone` maps lowercase names
    /// (no trailing dot) to their addresses. Use a distinct address per test, e.g.
    /// 127.53.0.X or ::1; binding fails if a server already listens there.
    pub fn start(addr: IpAddr, zone: Vec<(String, Vec<IpAddr>)>) -> anyhow::Result<DnsServer> {
        let sa = SocketAddr::new(addr, 53);
        // std sets SO_REUSEADDR on TCP listeners (so a TIME_WAIT left by an earlier test
        // does not block the bind) while still refusing a second listener on the address.
        // The UDP socket deliberately does not get SO_REUSEADDR: on Linux that would let
        // two servers share the address silently instead of failing.
        // Retry EADDRINUSE briefly: a child being forked by a parallel test may still hold
        // a copy of the previous server's socket until its exec closes it.
        let deadline = Instant::now() + Duration::from_secs(1);
        let tcp = loop {
            match TcpListener::bind(sa) {
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => break r,
            }
        }
        .with_context(|| format!("DnsServer: bind tcp {sa} (needs root; address already in use?)"))?;
        let udp = UdpSocket::bind(sa)
            .with_context(|| format!("DnsServer: bind udp {sa} (needs root; address already in use?)"))?;

        let zone: Arc<HashMap<String, Vec<IpAddr>>> =
            Arc::new(zone.into_iter().map(|(n, a)| (normalize_name(&n), a)).collect());
        let queries: Arc<Mutex<Vec<ReceivedQuery>>> = Arc::default();
        let mut workers = Workers::new();

        let z = zone;
        serve_dns(&mut workers, udp, tcp, queries.clone(), move |msg| dns_reply(&z, msg))?;

        Ok(DnsServer { addr, queries, _workers: workers })
    }

    /// The address the server listens on (port 53).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// All queries received so far, in arrival order.
    pub fn queries(&self) -> Vec<ReceivedQuery> {
        lock(&self.queries).clone()
    }

    /// Forgets the queries received so far.
    pub fn clear(&self) {
        lock(&self.queries).clear();
    }
}

// ============================================================================ Listener

#[derive(Default)]
struct ListenerStats {
    connections: AtomicU64,
    bytes: AtomicU64,
    datagrams: AtomicU64,
    payloads: Mutex<Vec<Vec<u8>>>,
    /// Number of the poll-loop iteration that started last.
    started: AtomicU64,
    /// Number of the last iteration that found nothing pending on any socket.
    quiet: AtomicU64,
}

/// A TCP and UDP listener on one address and port that counts what it receives.
///
/// One background thread polls the listening, UDP and connection sockets. The getters
/// first wait (up to 2 s) until that thread has consumed everything the kernel had
/// queued on those sockets when the getter was called, so traffic that completed before
/// the call (e.g. a finished `netprobe` run) is always counted; no polling needed.
/// Stops (thread joined, sockets closed) on drop.
pub struct Listener {
    addr: SocketAddr,
    stats: Arc<ListenerStats>,
    _workers: Workers,
}

fn listener_loop(tcp: TcpListener, udp: UdpSocket, st: &ListenerStats, stop: &AtomicBool) {
    let mut conns: Vec<(TcpStream, usize)> = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut iter: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        iter += 1;
        st.started.store(iter, Ordering::SeqCst);
        let mut fds: Vec<libc::pollfd> = [tcp.as_raw_fd(), udp.as_raw_fd()]
            .into_iter()
            .chain(conns.iter().map(|(c, _)| c.as_raw_fd()))
            .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();
        // SAFETY: fds is a valid array of pollfd.
        let mut n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
        if n == 0 {
            st.quiet.store(iter, Ordering::SeqCst);
            // SAFETY: as above.
            n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_MS) };
        }
        if n <= 0 {
            continue;
        }
        let ready = |i: usize| fds[i].revents != 0;
        if ready(0) {
            while let Ok((c, _)) = tcp.accept() {
                if c.set_nonblocking(true).is_err() {
                    continue;
                }
                let mut p = lock(&st.payloads);
                p.push(Vec::new());
                conns.push((c, p.len() - 1));
                st.connections.fetch_add(1, Ordering::SeqCst);
            }
        }
        if ready(1) {
            while let Ok((len, _)) = udp.recv_from(&mut buf) {
                st.datagrams.fetch_add(1, Ordering::SeqCst);
                st.bytes.fetch_add(len as u64, Ordering::SeqCst);
                lock(&st.payloads).push(buf[..len.min(PAYLOAD_KEEP)].to_vec());
            }
        }
        // Connections accepted in this iteration are not in `fds`; the next iteration reads them.
        let polled = fds.len() - 2;
        let mut closed = Vec::new();
        for (i, (c, index)) in conns.iter_mut().enumerate().take(polled) {
            if !ready(i + 2) {
                continue;
            }
            loop {
                match c.read(&mut buf) {
                    Ok(0) => {
                        closed.push(i);
                        break;
                    }
                    Ok(len) => {
                        st.bytes.fetch_add(len as u64, Ordering::SeqCst);
                        let mut p = lock(&st.payloads);
                        let kept = &mut p[*index];
                        let room = PAYLOAD_KEEP - kept.len();
                        kept.extend_from_slice(&buf[..len.min(room)]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed.push(i);
                        break;
                    }
                }
            }
        }
        for i in closed.into_iter().rev() {
            conns.swap_remove(i);
        }
    }
}

impl Listener {
    /// Listens on TCP and UDP `addr`; port 0 picks a free port that both protocols
    /// share (see [`Listener::addr`]).
    pub fn start(addr: SocketAddr) -> anyhow::Result<Listener> {
        let mut attempt = 0;
        let (tcp, udp) = loop {
            attempt += 1;
            let tcp = TcpListener::bind(addr).with_context(|| format!("Listener: bind tcp {addr}"))?;
            let real = tcp.local_addr()?;
            match UdpSocket::bind(real) {
                Ok(udp) => break (tcp, udp),
                Err(e) if addr.port() == 0 && attempt < 20 => drop(e),
                Err(e) => return Err(e).with_context(|| format!("Listener: bind udp {real}")),
            }
        };
        let real = tcp.local_addr()?;
        tcp.set_nonblocking(true)?;
        udp.set_nonblocking(true)?;
        let stats = Arc::new(ListenerStats::default());
        let mut workers = Workers::new();
        let (st, stop) = (stats.clone(), workers.stop.clone());
        workers.main.push(std::thread::spawn(move || listener_loop(tcp, udp, &st, &stop)));
        Ok(Listener { addr: real, stats, _workers: workers })
    }

    /// Waits until the background thread has drained what was queued before this call.
    fn settle(&self) {
        let since = self.stats.started.load(Ordering::SeqCst);
        wait_until(Duration::from_secs(2), || self.stats.quiet.load(Ordering::SeqCst) > since);
    }

    /// The address listened on, with the real port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accepted TCP connections.
    pub fn connections(&self) -> u64 {
        self.settle();
        self.stats.connections.load(Ordering::SeqCst)
    }

    /// Bytes received, over TCP connections and UDP datagrams together.
    pub fn bytes(&self) -> u64 {
        self.settle();
        self.stats.bytes.load(Ordering::SeqCst)
    }

    /// UDP datagrams received.
    pub fn datagrams(&self) -> u64 {
        self.settle();
        self.stats.datagrams.load(Ordering::SeqCst)
    }

    /// First 4 KiB of each TCP connection (received so far) and UDP datagram, in arrival order.
    pub fn payloads(&self) -> Vec<Vec<u8>> {
        self.settle();
        lock(&self.stats.payloads).clone()
    }
}

// ============================================================================ HTTP server

/// One request received by an [`HttpServer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The request target as sent, e.g. `/evil-pkg` (query string included).
    pub path: String,
    /// Status code of the reply (200 or 404).
    pub status: u16,
}

/// A minimal HTTP/1.1 server on one address, serving fixed bodies by exact path.
///
/// Routes are added with [`HttpServer::route`] (also after start, e.g. to put the server's
/// own port in a document). `GET` and `HEAD` of a routed path get `200` with the body (and
/// its Content-Type); anything else gets `404`. Every reply has `Connection: close`, so each
/// request is its own connection. Every request is recorded, see [`HttpServer::requests`].
/// Stops (threads joined, sockets closed) on drop.
pub struct HttpServer {
    addr: SocketAddr,
    routes: HttpRoutes,
    requests: Arc<Mutex<Vec<HttpRequest>>>,
    _workers: Workers,
}

/// Path -> (Content-Type, body) of an [`HttpServer`].
type HttpRoutes = Arc<Mutex<HashMap<String, (String, Arc<Vec<u8>>)>>>;

/// Largest request head (request line + headers) an [`HttpServer`] reads.
const HTTP_HEAD_MAX: usize = 64 * 1024;

/// Reads a request head (up to and including the blank line); None on EOF, stop, error or
/// an oversized head.
fn read_http_head(s: &mut TcpStream, stop: &AtomicBool) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if stop.load(Ordering::SeqCst) || Instant::now() > deadline || head.len() > HTTP_HEAD_MAX {
            return None;
        }
        match s.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if is_timeout(&e) => {}
            Err(_) => return None,
        }
    }
    Some(head)
}

impl HttpServer {
    /// Listens on TCP `addr` (port 0 picks a free port, see [`HttpServer::addr`]).
    pub fn start(addr: SocketAddr) -> anyhow::Result<HttpServer> {
        let tcp = TcpListener::bind(addr).with_context(|| format!("HttpServer: bind tcp {addr}"))?;
        let real = tcp.local_addr()?;
        let routes: HttpRoutes = Arc::default();
        let requests: Arc<Mutex<Vec<HttpRequest>>> = Arc::default();
        let mut workers = Workers::new();
        let (rt, rq) = (routes.clone(), requests.clone());
        spawn_accept_loop(&mut workers, tcp, move |mut s, _peer, stop| {
            let Some(head) = read_http_head(&mut s, stop) else {
                return;
            };
            let head = String::from_utf8_lossy(&head);
            let mut parts = head.lines().next().unwrap_or("").split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("").to_string();
            let found = if method == "GET" || method == "HEAD" { lock(&rt).get(&path).cloned() } else { None };
            let status = if found.is_some() { 200 } else { 404 };
            lock(&rq).push(HttpRequest { method: method.clone(), path, status });
            let (ctype, body) = found.unwrap_or_else(|| ("text/plain".to_string(), Arc::new(b"not found\n".to_vec())));
            let reason = if status == 200 { "OK" } else { "Not Found" };
            let mut out = format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            if method != "HEAD" {
                out.extend_from_slice(&body);
            }
            if s.write_all(&out).is_ok() {
                let _ = s.flush();
                let _ = s.shutdown(std::net::Shutdown::Write);
                // Let the client read everything and close first (no RST on unread input).
                let mut sink = [0u8; 1024];
                let deadline = Instant::now() + Duration::from_secs(2);
                while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
                    match s.read(&mut sink) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) if is_timeout(&e) => {}
                        Err(_) => break,
                    }
                }
            }
        })?;
        Ok(HttpServer { addr: real, routes, requests, _workers: workers })
    }

    /// The address listened on, with the real port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` (no trailing slash), for building URLs.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves `body` with `content_type` at exactly `path` (e.g. `/evil-pkg`); replaces an
    /// earlier route for the same path.
    pub fn route(&self, path: &str, content_type: &str, body: impl Into<Vec<u8>>) {
        lock(&self.routes).insert(path.to_string(), (content_type.to_string(), Arc::new(body.into())));
    }

    /// All requests received so far, in arrival order.
    pub fn requests(&self) -> Vec<HttpRequest> {
        lock(&self.requests).clone()
    }

    /// How many `GET` requests for exactly `path` were answered with 200.
    pub fn hits(&self, path: &str) -> usize {
        lock(&self.requests).iter().filter(|r| r.method == "GET" && r.path == path && r.status == 200).count()
    }
}

// ============================================================================ misc helpers

fn locate_bin(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{env}={} does not name an existing file", p.display());
        return p;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace dir");
    let p = workspace.join("target").join("release").join(name);
    assert!(
        p.is_file(),
        "{name} binary not found at {}: run `cargo build --release` in {} first, \
         or set {env} to the binary",
        p.display(),
        workspace.display()
    );
    p
}

/// The `netprobe` binary: `$NETPROBE_BIN`, else `<workspace>/target/release/netprobe`.
/// Panics with instructions if it does not exist.
pub fn netprobe_bin() -> PathBuf {
    locate_bin("netprobe", "NETPROBE_BIN")
}

/// The `watcher` binary: `$WATCHER_BIN`, else `<workspace>/target/release/watcher`.
/// Panics with instructions if it does not exist.
pub fn watcher_bin() -> PathBuf {
    wait_out_hard_kill_window();
    locate_bin("watcher", "WATCHER_BIN")
}

/// The thread of the test that holds the hard-kill window, if any.
static HARD_KILL: std::sync::Mutex<Option<std::thread::ThreadId>> = std::sync::Mutex::new(None);
static HARD_KILL_DONE: std::sync::Condvar = std::sync::Condvar::new();

/// Held by a test that kills an agent hard (SIGKILL) and then watches what its programs,
/// left attached, still enforce. Every watcher start removes what a dead agent left, so no
/// other test of the same binary may start one meanwhile: [`watcher_bin`] (which every test
/// starts watcher through) waits while another thread holds the window.
pub struct HardKillWindow(());

pub fn hard_kill_window() -> HardKillWindow {
    let me = std::thread::current().id();
    let mut holder = HARD_KILL.lock().unwrap_or_else(|e| e.into_inner());
    while holder.is_some_and(|t| t != me) {
        holder = HARD_KILL_DONE.wait(holder).unwrap_or_else(|e| e.into_inner());
    }
    *holder = Some(me);
    HardKillWindow(())
}

impl Drop for HardKillWindow {
    fn drop(&mut self) {
        *HARD_KILL.lock().unwrap_or_else(|e| e.into_inner()) = None;
        HARD_KILL_DONE.notify_all();
    }
}

fn wait_out_hard_kill_window() {
    let me = std::thread::current().id();
    let mut holder = HARD_KILL.lock().unwrap_or_else(|e| e.into_inner());
    while holder.is_some_and(|t| t != me) {
        holder = HARD_KILL_DONE.wait(holder).unwrap_or_else(|e| e.into_inner());
    }
}

/// True when running as euid 0. Otherwise: with `WATCHER_SKIP_ROOT_TESTS=1` prints
/// "skipping: needs root" and returns false; without it, panics.
pub fn root_or_skip() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("WATCHER_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        eprintln!("skipping: needs root");
        return false;
    }
    panic!("root integration tests need root; set WATCHER_SKIP_ROOT_TESTS=1 to skip them explicitly");
}

/// How the kernel programs loop: through bpf_loop (this kernel has it), or the bounded-loop
/// twins an older kernel loads (`WATCHER_BOUNDED_LOOPS=1` forces them). Both must give the
/// same records and verdicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loops {
    BpfLoop,
    Bounded,
}

impl Loops {
    /// The variable that picks them, to set on `watcher run`.
    pub fn env(self) -> (&'static str, &'static str) {
        ("WATCHER_BOUNDED_LOOPS", if self == Loops::Bounded { "1" } else { "0" })
    }

    /// For `Bounded`: panics unless the log's start record says the twins were loaded (its
    /// `network` sensor names "bounded loops"). `BpfLoop` is what the kernel allows: on one
    /// without bpf_loop both runs are bounded, still a valid pair.
    pub fn assert_loaded(self, events: &[serde_json::Value], stderr: &str) {
        if self != Loops::Bounded {
            return;
        }
        let network = events.first().and_then(|e| e["sensors"].as_array()).and_then(|s| {
            s.iter().find(|s| s["name"] == "network").and_then(|s| s["detail"].as_str().map(str::to_string))
        });
        let bounded = network.as_deref().is_some_and(|d| d.contains("bounded loops"));
        assert!(bounded, "the bounded twins were not loaded: {network:?}\n{stderr}");
    }
}

/// Parses a JSONL file (blank lines are skipped). Panics with `file:line` on a malformed line.
pub fn read_jsonl(path: impl AsRef<Path>) -> Vec<serde_json::Value> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let lines: Vec<(usize, serde_json::Value)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}:{}: malformed JSON line: {e}: {l:?}", path.display(), i + 1));
            (i + 1, v)
        })
        .collect();
    let values: Vec<serde_json::Value> = lines.iter().map(|(_, v)| v.clone()).collect();
    if schema::is_event_log(&values) {
        schema::check(path, &lines).unwrap_or_else(|e| panic!("{e}"));
    }
    values
}

/// Polls `cond` every 20 ms until it returns true (-> true) or `timeout` passes (-> false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system temp dir, removed (recursively) on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/<prefix>-<pid>-<n>`.
    pub fn new(prefix: &str) -> TempDir {
        let n = UNIQUE.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(name)`.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ============================================================================ Netns

fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip").args(args).output().context("cannot run `ip` (iproute2)")?;
    if !out.status.success() {
        bail!("`ip {}` failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

const NETNS_PREFIX: &str = "watcher-test-";

/// Names of all network namespaces (`ip netns list`).
pub fn netns_list() -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Kills the processes inside namespace `name`, then deletes it and `host_if`.
fn netns_teardown(name: &str, host_if: Option<&str>) {
    if let Ok(pids) = ip(&["netns", "pids", name]) {
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
    }
    if let Some(h) = host_if {
        let _ = ip(&["link", "del", h]);
    }
    let _ = ip(&["netns", "del", name]);
}

/// Deletes namespaces left behind by test processes that no longer exist (e.g. SIGKILLed).
fn cleanup_stale_netns() {
    for name in netns_list() {
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            netns_teardown(&name, None);
        }
    }
}

/// A network namespace `watcher-test-<pid>-<n>` with a veth pair to the root namespace.
///
/// `Netns::new(subnet)` uses the /30 `198.18.0.0 + 4*subnet` (root side `.1`, namespace
/// side `.2`) and the /126 `fd00:5741:: + 4*subnet` (`::…1` / `::…2`) in
/// fd00:5741::/64. Only those connected routes exist; the namespace has no default route.
/// Use a distinct `subnet` per test. Drop kills processes still inside, deletes the veth
/// pair and the namespace (also when the test panics).
pub struct Netns {
    name: String,
    host_if: String,
    ns_if: String,
    subnet: u16,
}

static NETNS_COUNTER: AtomicU64 = AtomicU64::new(0);
static NETNS_CLEANUP: std::sync::Once = std::sync::Once::new();

impl Netns {
    /// Creates the namespace and veth pair; `subnet` must be below 32768
    /// (198.18.0.0/15 holds 32768 /30s).
    pub fn new(subnet: u16) -> anyhow::Result<Netns> {
        if subnet >= 32768 {
            bail!("Netns subnet {subnet} out of range (0..32768)");
        }
        NETNS_CLEANUP.call_once(cleanup_stale_netns);
        let n = NETNS_COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let ns = Netns {
            name: format!("{NETNS_PREFIX}{pid}-{n}"),
            // "wt" + pid (<= 7 digits) + h/n + counter stays within 15 characters
            // for up to 1000 namespaces per process.
            host_if: format!("wt{pid}h{n}"),
            ns_if: format!("wt{pid}n{n}"),
            subnet,
        };
        if ns.host_if.len() > 15 {
            bail!("veth name {} too long", ns.host_if);
        }
        // From here on, an error drops `ns`, which removes whatever was created.
        ns.setup()?;
        Ok(ns)
    }

    fn setup(&self) -> anyhow::Result<()> {
        let (name, h, n) = (self.name.as_str(), self.host_if.as_str(), self.ns_if.as_str());
        let hv4 = format!("{}/30", self.host_v4());
        let nv4 = format!("{}/30", self.ns_v4());
        let hv6 = format!("{}/126", self.host_v6());
        let nv6 = format!("{}/126", self.ns_v6());
        ip(&["netns", "add", name])?;
        ip(&["link", "add", h, "type", "veth", "peer", "name", n, "netns", name])?;
        ip(&["addr", "add", &hv4, "dev", h])?;
        ip(&["-6", "addr", "add", &hv6, "dev", h, "nodad"])?;
        ip(&["link", "set", h, "up"])?;
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        ip(&["-n", name, "addr", "add", &nv4, "dev", n])?;
        ip(&["-n", name, "-6", "addr", "add", &nv6, "dev", n, "nodad"])?;
        ip(&["-n", name, "link", "set", n, "up"])?;
        let oper = format!("/sys/class/net/{h}/operstate");
        if !wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(&oper).map(|s| s.trim() == "up").unwrap_or(false)
        }) {
            bail!("veth {h} did not come up");
        }
        Ok(())
    }

    /// Namespace name (for `ip netns exec`, `ip -n`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The veth end in the root namespace.
    pub fn host_if(&self) -> &str {
        &self.host_if
    }

    /// The veth end inside the namespace.
    pub fn ns_if(&self) -> &str {
        &self.ns_if
    }

    fn v4(&self, host: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + 4 * u32::from(self.subnet) + host)
    }

    fn v6(&self, host: u128) -> Ipv6Addr {
        let base = u128::from("fd00:5741::".parse::<Ipv6Addr>().unwrap());
        Ipv6Addr::from(base + 4 * u128::from(self.subnet) + host)
    }

    /// Root-namespace side IPv4 address (198.18.x.y+1).
    pub fn host_v4(&self) -> Ipv4Addr {
        self.v4(1)
    }

    /// Namespace side IPv4 address (198.18.x.y+2).
    pub fn ns_v4(&self) -> Ipv4Addr {
        self.v4(2)
    }

    /// Root-namespace side IPv6 address (in fd00:5741::/64).
    pub fn host_v6(&self) -> Ipv6Addr {
        self.v6(1)
    }

    /// Namespace side IPv6 address (in fd00:5741::/64).
    pub fn ns_v6(&self) -> Ipv6Addr {
        self.v6(2)
    }

    /// `ip netns exec NAME PROGRAM`; add the program's arguments to the returned Command.
    /// (`ip netns exec` execs PROGRAM directly, so the child's pid is PROGRAM's pid.)
    pub fn exec_in(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        netns_teardown(&self.name, Some(&self.host_if));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_jsonl_parses_and_skips_blank_lines() {
        let d = TempDir::new("watcher-tests-jsonl");
        let p = d.join("log.jsonl");
        std::fs::write(&p, "{\"a\":1}\n\n{\"b\":[2]}\n").unwrap();
        let v = read_jsonl(&p);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0]["a"], 1);
        assert_eq!(v[1]["b"][0], 2);
    }

    #[test]
    fn read_jsonl_reports_file_and_line() {
        let d = TempDir::new("watcher-tests-jsonl");
        let p = d.join("bad.jsonl");
        std::fs::write(&p, "{\"a\":1}\n{oops\n").unwrap();
        let err = std::panic::catch_unwind(|| read_jsonl(&p)).unwrap_err();
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains(&format!("{}:2:", p.display())), "{msg}");
    }

    #[test]
    fn dns_reply_answers_from_zone() {
        let zone: HashMap<String, Vec<IpAddr>> =
            [("ok.test".to_string(), vec!["127.1.1.1".parse().unwrap(), "::1".parse().unwrap()])].into();
        let query = |name: &str, t: TYPE| {
            let mut p = Packet::new_query(7);
            p.questions.push(simple_dns::Question::new(
                simple_dns::Name::new(name).unwrap(),
                QTYPE::TYPE(t),
                simple_dns::QCLASS::CLASS(CLASS::IN),
                false,
            ));
            p.build_bytes_vec().unwrap()
        };
        let (name, qtype, r) = dns_reply(&zone, &query("OK.test", TYPE::A)).unwrap();
        assert_eq!((name.as_str(), qtype.as_str()), ("ok.test", "A"));
        let r = Packet::parse(&r).unwrap();
        assert_eq!(r.id(), 7);
        assert_eq!(r.rcode(), RCODE::NoError);
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].ttl, 60);
        assert!(matches!(&r.answers[0].rdata, RData::A(a) if Ipv4Addr::from(a.address) == Ipv4Addr::new(127, 1, 1, 1)));

        let (_, _, r) = dns_reply(&zone, &query("ok.test", TYPE::AAAA)).unwrap();
        let r = Packet::parse(&r).unwrap();
        assert!(
            matches!(&r.answers[..], [rr] if matches!(&rr.rdata, RData::AAAA(a) if Ipv6Addr::from(a.address) == Ipv6Addr::LOCALHOST))
        );

        for (n, t) in [("nope.test", TYPE::A), ("ok.test", TYPE::TXT)] {
            let (_, _, r) = dns_reply(&zone, &query(n, t)).unwrap();
            let r = Packet::parse(&r).unwrap();
            assert_eq!(r.rcode(), RCODE::NameError, "{n} {t:?}");
            assert!(r.answers.is_empty());
        }
    }
}
