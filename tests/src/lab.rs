//! The attack lab: a hermetic set of network namespaces in which real package managers install
//! real packages from real registries, next to an attacker host that records everything.
//!
//! ```text
//!                       hub namespace: bridge br0 (198.51.100.0/24)
//!   +-----------+-------------+-------------+-------------+--------------+
//!   |           |             |             |             |              |
//! build .10   dns .53     internal .20   public .30    attacker .66
//! (watcher,   lab          verdaccio      verdaccio     DNS server for
//!  npm, pip)  resolver     :4873          :4873         attacker.lab.test,
//!                          pypiserver     pypiserver    HTTP :80, both
//!                          :8080          :8080         recording
//! ```
//!
//! Every host is its own network namespace with one veth into the hub's bridge and only the
//! connected route of 198.51.100.0/24 (TEST-NET-2): nothing in the lab can reach anything
//! outside it, and nothing outside can reach it (no namespace of the lab is linked to the root
//! namespace). Each host's `/etc/netns/<ns>/resolv.conf` names the lab resolver, so programs
//! started with `ip netns exec` resolve lab names: `npm.internal.lab.test`,
//! `npm.public.lab.test`, `pypi.internal.lab.test`, `pypi.public.lab.test`,
//! `attacker.lab.test`. The resolver forwards every name under `attacker.lab.test` to the
//! attacker's DNS server, as a recursive resolver would, so the attacker sees exactly the
//! queries that left the build.
//!
//! The internal verdaccio proxies the "public" one (an uplink, as a company's registry proxies
//! the public registry); pypiserver instances serve a package directory each. The servers run
//! as child processes of the test inside their namespaces; the DNS and attacker servers are
//! threads of the test whose sockets live in their namespaces.
//!
//! [`Lab`]'s Drop kills the servers, deletes the namespaces and their `/etc/netns` entries,
//! also when a test panics; labs left by a test process that was killed are removed by the
//! next [`Lab::start`].

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use simple_dns::rdata::{A, RData};
use simple_dns::{CLASS, Packet, PacketFlag, QTYPE, RCODE, ResourceRecord, TYPE};

use crate::{DnsServer, ReceivedQuery, TempDir, Workers, ip, lock, normalize_name, qtype_text, spawn_accept_loop};

/// Pinned versions installed by `scripts/install-prereqs.sh`.
pub const VERDACCIO_VERSION: &str = "6.8.0";
pub const PYPISERVER_VERSION: &str = "2.4.2";
/// Where `scripts/install-prereqs.sh` installs them (override: `WATCHER_LAB_DIR`).
pub const LAB_TOOLS_DIR: &str = "/opt/watcher-lab";

/// The attacker's domain: every name under it is answered by the attacker's DNS server.
pub const ATTACKER_DOMAIN: &str = "attacker.lab.test";
pub const NPM_INTERNAL: &str = "npm.internal.lab.test";
pub const NPM_PUBLIC: &str = "npm.public.lab.test";
pub const PYPI_INTERNAL: &str = "pypi.internal.lab.test";
pub const PYPI_PUBLIC: &str = "pypi.public.lab.test";
pub const VERDACCIO_PORT: u16 = 4873;
pub const PYPISERVER_PORT: u16 = 8080;

const NS_PREFIX: &str = "wlab-";
const SUBNET_PREFIX: u8 = 24;

fn lab_ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, host)
}

/// The lab's hosts: name suffix of the namespace and address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    Build,
    Dns,
    Internal,
    Public,
    Attacker,
}

impl Host {
    const ALL: [Host; 5] = [Host::Build, Host::Dns, Host::Internal, Host::Public, Host::Attacker];

    fn suffix(self) -> &'static str {
        match self {
            Host::Build => "build",
            Host::Dns => "dns",
            Host::Internal => "int",
            Host::Public => "pub",
            Host::Attacker => "atk",
        }
    }

    /// The host's address in the lab.
    pub fn ip(self) -> Ipv4Addr {
        lab_ip(match self {
            Host::Build => 10,
            Host::Dns => 53,
            Host::Internal => 20,
            Host::Public => 30,
            Host::Attacker => 66,
        })
    }
}

/// The directory with the pinned lab tools.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("WATCHER_LAB_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(LAB_TOOLS_DIR))
}

fn verdaccio_bin() -> PathBuf {
    tools_dir().join(format!("verdaccio-{VERDACCIO_VERSION}")).join("node_modules/verdaccio/bin/verdaccio")
}

fn pypiserver_bin() -> PathBuf {
    tools_dir().join(format!("pypiserver-{PYPISERVER_VERSION}")).join("bin/pypi-server")
}

/// Checks that the pinned lab tools are installed; the error says how to install them.
pub fn check_tools() -> anyhow::Result<()> {
    for p in [verdaccio_bin(), pypiserver_bin()] {
        if !p.is_file() {
            bail!(
                "the attack lab needs {} (verdaccio {VERDACCIO_VERSION} and pypiserver \
                 {PYPISERVER_VERSION}): run scripts/install-prereqs.sh",
                p.display()
            );
        }
    }
    Ok(())
}

// ============================================================================ namespaces

/// Runs `f` on a fresh thread that has joined network namespace `ns`; sockets `f` creates
/// (and threads it spawns) live in that namespace.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = fs::File::open(&path).with_context(|| format!("open {path}"))?;
        // SAFETY: a valid namespace fd; only this (fresh, single-purpose) thread moves.
        let r = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        if r != 0 {
            bail!("setns {path}: {}", io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in netns {ns} panicked"))?
}

/// Deletes the namespaces (and /etc/netns entries) of labs whose test process is gone.
fn cleanup_stale_labs() {
    for name in crate::netns_list() {
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            teardown_ns(&name);
        }
    }
}

fn teardown_ns(name: &str) {
    if let Ok(pids) = ip(&["netns", "pids", name]) {
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
    }
    let _ = ip(&["netns", "del", name]);
    let _ = fs::remove_dir_all(format!("/etc/netns/{name}"));
}

// ============================================================================ lab resolver

/// The lab's recursive resolver (UDP and TCP port 53 on the dns host): answers the lab's own
/// names, forwards everything under [`ATTACKER_DOMAIN`] to the attacker's DNS server (over
/// UDP) and relays its answer, and answers anything else NXDOMAIN. Records every query.
struct LabResolver {
    queries: Arc<Mutex<Vec<ReceivedQuery>>>,
    _workers: Workers,
}

fn resolver_reply(
    zone: &HashMap<String, Ipv4Addr>,
    upstream: &Mutex<UdpSocket>,
    attacker: SocketAddr,
    query: &[u8],
) -> Option<(String, String, Vec<u8>)> {
    let q = Packet::parse(query).ok()?;
    if q.has_flags(PacketFlag::RESPONSE) {
        return None;
    }
    let question = q.questions.first()?.clone();
    let name = normalize_name(&question.qname.to_string());
    let qtype = qtype_text(question.qtype);
    if name == ATTACKER_DOMAIN || name.ends_with(&format!(".{ATTACKER_DOMAIN}")) {
        // Recursion: ask the domain's authoritative server, relay what it says.
        let sock = lock(upstream);
        let _ = sock.send_to(query, attacker);
        let mut buf = vec![0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == attacker => {
                    if Packet::parse(&buf[..n]).is_ok_and(|r| r.id() == q.id()) {
                        return Some((name, qtype, buf[..n].to_vec()));
                    }
                }
                Ok(_) => {}
                Err(e) if crate::is_timeout(&e) => {}
                Err(_) => break,
            }
        }
        let mut fail = Packet::new_reply(q.id());
        fail.questions.push(question);
        *fail.rcode_mut() = RCODE::ServerFailure;
        return Some((name, qtype, fail.build_bytes_vec().ok()?));
    }
    let mut reply = Packet::new_reply(q.id());
    reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
    if q.has_flags(PacketFlag::RECURSION_DESIRED) {
        reply.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    reply.questions.push(question.clone());
    match zone.get(&name) {
        Some(ip) => {
            if question.qtype == QTYPE::TYPE(TYPE::A) {
                reply.answers.push(ResourceRecord::new(question.qname.clone(), CLASS::IN, 60, RData::A(A::from(*ip))));
            }
        }
        None => *reply.rcode_mut() = RCODE::NameError,
    }
    Some((name, qtype, reply.build_bytes_vec().ok()?))
}

impl LabResolver {
    /// Binds in the current network namespace (call through [`in_netns`]).
    fn start(addr: IpAddr, zone: HashMap<String, Ipv4Addr>, attacker: SocketAddr) -> anyhow::Result<Self> {
        let sa = SocketAddr::new(addr, 53);
        let udp = UdpSocket::bind(sa).with_context(|| format!("lab resolver: bind udp {sa}"))?;
        let tcp = TcpListener::bind(sa).with_context(|| format!("lab resolver: bind tcp {sa}"))?;
        let upstream = UdpSocket::bind(SocketAddr::new(addr, 0))?;
        upstream.set_read_timeout(Some(Duration::from_millis(200)))?;
        let upstream = Arc::new(Mutex::new(upstream));
        let zone = Arc::new(zone);
        let queries: Arc<Mutex<Vec<ReceivedQuery>>> = Arc::default();
        let mut workers = Workers::new();

        crate::serve_dns(&mut workers, udp, tcp, queries.clone(), move |msg| {
            resolver_reply(&zone, &upstream, attacker, msg)
        })?;
        Ok(LabResolver { queries, _workers: workers })
    }
}

// ============================================================================ attacker

/// One connection the attacker's HTTP server accepted: who, and every byte it sent (request
/// head and body).
#[derive(Clone, Debug)]
pub struct AttackerConnection {
    pub from: SocketAddr,
    pub data: Vec<u8>,
}

/// The attacker's HTTP server (TCP port 80): accepts anything, records the connection and
/// the whole request (head and `Content-Length` body), answers `200 ok`.
struct AttackerHttp {
    connections: Arc<Mutex<Vec<AttackerConnection>>>,
    _workers: Workers,
}

impl AttackerHttp {
    fn start(addr: SocketAddr) -> anyhow::Result<Self> {
        let tcp = TcpListener::bind(addr).with_context(|| format!("attacker http: bind {addr}"))?;
        let connections: Arc<Mutex<Vec<AttackerConnection>>> = Arc::default();
        let mut workers = Workers::new();
        let conns = connections.clone();
        spawn_accept_loop(&mut workers, tcp, move |mut s, from, stop| {
            let index = {
                let mut c = lock(&conns);
                c.push(AttackerConnection { from, data: Vec::new() });
                c.len() - 1
            };
            let mut data = Vec::new();
            let mut buf = [0u8; 4096];
            let deadline = Instant::now() + Duration::from_secs(5);
            let complete = |d: &[u8]| -> bool {
                let Some(end) = d.windows(4).position(|w| w == b"\r\n\r\n") else {
                    return false;
                };
                let head = String::from_utf8_lossy(&d[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                d.len() >= end + 4 + len
            };
            while Instant::now() < deadline && !stop.load(Ordering::SeqCst) && !complete(&data) {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        data.extend_from_slice(&buf[..n]);
                        lock(&conns)[index].data = data.clone();
                    }
                    Err(e) if crate::is_timeout(&e) => {}
                    Err(_) => break,
                }
            }
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
            );
            let _ = s.flush();
            let _ = s.shutdown(std::net::Shutdown::Write);
        })?;
        Ok(AttackerHttp { connections, _workers: workers })
    }
}

/// Everything the attacker's servers received, at one moment.
#[derive(Clone, Debug, Default)]
pub struct AttackerRecord {
    /// Queries the attacker's DNS server answered (names under [`ATTACKER_DOMAIN`]).
    pub dns: Vec<ReceivedQuery>,
    /// Connections to the attacker's HTTP server, with what they sent.
    pub http: Vec<AttackerConnection>,
}

impl AttackerRecord {
    /// Whether `needle` appears anywhere the attacker recorded: in a query name (raw, or
    /// hex/base32 of the text as the fixtures encode it, labels joined), or in any connection's
    /// bytes (raw or URL-encoded).
    pub fn contains_secret(&self, needle: &str) -> bool {
        let hex: String = needle.bytes().map(|b| format!("{b:02x}")).collect();
        let url = url_encode(needle);
        let dns_hit = self.dns.iter().any(|q| {
            let joined: String = q.name.split('.').collect();
            joined.contains(&needle.to_ascii_lowercase())
                || joined.contains(&hex)
                || base32_decodes_to_contain(&q.name, needle)
        });
        let http_hit = self.http.iter().any(|c| {
            let text = String::from_utf8_lossy(&c.data);
            text.contains(needle) || text.contains(&url)
        });
        dns_hit || http_hit
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Decodes the base32 (RFC 4648, lower case, no padding) labels of `name` in front of
/// `<index>.t.attacker.lab.test` (as the pip fixture sends them) and looks for `needle`.
fn base32_decodes_to_contain(name: &str, needle: &str) -> bool {
    const ABC: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let Some(front) = name.strip_suffix(&format!(".{ATTACKER_DOMAIN}")) else {
        return false;
    };
    let labels: Vec<&str> = front.split('.').collect();
    if labels.len() < 3 {
        return false;
    }
    let data: String = labels[..labels.len() - 2].concat();
    let mut bits: u64 = 0;
    let mut nbits = 0;
    let mut out = Vec::new();
    for b in data.bytes() {
        let Some(v) = ABC.iter().position(|&c| c == b) else {
            return false;
        };
        bits = (bits << 5) | v as u64;
        nbits += 5;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    String::from_utf8_lossy(&out).contains(needle)
}

// ============================================================================ the lab

/// A child process (a registry server) killed with its process group on drop.
struct Server {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Server {
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::SIGKILL);
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

static LAB_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A running lab. See the module documentation.
pub struct Lab {
    id: String,
    dir: TempDir,
    servers: Vec<Server>,
    resolver: Option<LabResolver>,
    attacker_dns: Option<DnsServer>,
    attacker_http: Option<AttackerHttp>,
    /// Names of the namespaces created so far (torn down on drop).
    namespaces: Vec<String>,
    npm_token: HashMap<Host, String>,
}

impl Lab {
    /// Creates the namespaces, starts the resolver, the attacker's servers, two verdaccio and
    /// two pypiserver instances, and creates a publishing user on each verdaccio. Needs root
    /// and the tools of [`check_tools`].
    pub fn start() -> anyhow::Result<Lab> {
        check_tools()?;
        cleanup_stale_labs();
        let n = LAB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let mut lab = Lab {
            id: format!("{NS_PREFIX}{}-{n}", std::process::id()),
            dir: TempDir::new("watcher-lab"),
            servers: Vec::new(),
            resolver: None,
            attacker_dns: None,
            attacker_http: None,
            namespaces: Vec::new(),
            npm_token: HashMap::new(),
        };
        // From here on, an error drops `lab`, which removes whatever was created.
        let t = Instant::now();
        lab.network()?;
        lab.dns_and_attacker()?;
        // The bridge forwards at once (no STP delay): the build host reaches the resolver.
        lab.wait_listening(Host::Dns, 53)?;
        lab.registries()?;
        eprintln!("lab {}: up in {:.1?}", lab.id, t.elapsed());
        Ok(lab)
    }

    /// The namespace of `host`.
    pub fn ns(&self, host: Host) -> String {
        format!("{}-{}", self.id, host.suffix())
    }

    fn hub(&self) -> String {
        format!("{}-hub", self.id)
    }

    /// A scratch directory of the lab (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn network(&mut self) -> anyhow::Result<()> {
        let hub = self.hub();
        ip(&["netns", "add", &hub])?;
        self.namespaces.push(hub.clone());
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        let resolv = format!("# watcher attack lab\nnameserver {}\noptions timeout:1 attempts:1\n", Host::Dns.ip());
        for host in Host::ALL {
            let ns = self.ns(host);
            ip(&["netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            let etc = PathBuf::from(format!("/etc/netns/{ns}"));
            fs::create_dir_all(&etc).with_context(|| format!("mkdir {}", etc.display()))?;
            fs::write(etc.join("resolv.conf"), &resolv)?;
            let port = format!("p{}", host.suffix());
            ip(&["-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &hub, "link", "set", &port, "up"])?;
            let addr = format!("{}/{SUBNET_PREFIX}", host.ip());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    fn dns_and_attacker(&mut self) -> anyhow::Result<()> {
        let attacker = IpAddr::V4(Host::Attacker.ip());
        self.attacker_dns = Some(in_netns(&self.ns(Host::Attacker), move || {
            DnsServer::start(attacker, vec![(ATTACKER_DOMAIN.to_string(), vec![attacker])])
        })?);
        self.attacker_http =
            Some(in_netns(&self.ns(Host::Attacker), move || AttackerHttp::start(SocketAddr::new(attacker, 80)))?);
        let zone: HashMap<String, Ipv4Addr> = [
            (NPM_INTERNAL, Host::Internal.ip()),
            (PYPI_INTERNAL, Host::Internal.ip()),
            (NPM_PUBLIC, Host::Public.ip()),
            (PYPI_PUBLIC, Host::Public.ip()),
        ]
        .into_iter()
        .map(|(n, a)| (n.to_string(), a))
        .collect();
        let dns = IpAddr::V4(Host::Dns.ip());
        self.resolver =
            Some(in_netns(&self.ns(Host::Dns), move || LabResolver::start(dns, zone, SocketAddr::new(attacker, 53)))?);
        Ok(())
    }

    /// `ip netns exec NS PROGRAM` in a new process group, output to `log`.
    fn spawn_server(&mut self, host: Host, name: &str, program: &Path, args: &[&str]) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt;
        let log = self.dir().join(format!("{name}.log"));
        let out = fs::File::create(&log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .arg(program)
            .args(args)
            .env("HOME", self.dir())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("start {name}: {}", program.display()))?;
        self.servers.push(Server { name: name.into(), child, log });
        Ok(())
    }

    fn registries(&mut self) -> anyhow::Result<()> {
        for (host, uplink) in [(Host::Public, None), (Host::Internal, Some(NPM_PUBLIC))] {
            let dir = self.dir().join(format!("verdaccio-{}", host.suffix()));
            fs::create_dir_all(dir.join("storage"))?;
            let proxy = uplink.map(|_| "    proxy: public\n").unwrap_or("");
            let uplinks = uplink
                .map(|u| {
                    format!(
                        "uplinks:\n  public:\n    url: http://{u}:{VERDACCIO_PORT}/\n    timeout: 10s\n    maxage: 0s\n    cache: false\n"
                    )
                })
                .unwrap_or_default();
            let config = format!(
                "storage: {storage}\nauth:\n  htpasswd:\n    file: {htpasswd}\n    max_users: 10\n{uplinks}\
                 packages:\n  '**':\n    access: $all\n    publish: $authenticated\n{proxy}\
                 server:\n  keepAliveTimeout: 5\nlog: {{ type: stdout, format: pretty, level: warn }}\n\
                 publish:\n  allow_offline: true\n",
                storage = dir.join("storage").display(),
                htpasswd = dir.join("htpasswd").display(),
            );
            let config_path = dir.join("config.yaml");
            fs::write(&config_path, config)?;
            let listen = format!("{}:{VERDACCIO_PORT}", host.ip());
            let node = PathBuf::from("node");
            let bin = verdaccio_bin();
            self.spawn_server(
                host,
                &format!("verdaccio-{}", host.suffix()),
                &node,
                &[bin.to_str().unwrap(), "--config", config_path.to_str().unwrap(), "--listen", &listen],
            )?;
        }
        for host in [Host::Internal, Host::Public] {
            let pkgs = self.pip_packages_dir(host);
            fs::create_dir_all(&pkgs)?;
            let port = PYPISERVER_PORT.to_string();
            let ip = host.ip().to_string();
            self.spawn_server(
                host,
                &format!("pypiserver-{}", host.suffix()),
                &pypiserver_bin(),
                &[
                    "run",
                    "-i",
                    &ip,
                    "-p",
                    &port,
                    "-a",
                    ".",
                    "-P",
                    ".",
                    "--disable-fallback",
                    "--hash-algo",
                    "sha256",
                    pkgs.to_str().unwrap(),
                ],
            )?;
        }
        for host in [Host::Internal, Host::Public] {
            for port in [VERDACCIO_PORT, PYPISERVER_PORT] {
                self.wait_listening(host, port)?;
            }
        }
        for host in [Host::Internal, Host::Public] {
            let token = self.npm_user(host)?;
            self.npm_token.insert(host, token);
        }
        Ok(())
    }

    /// Waits until something listens on `host`:`port` (a server that died says so).
    fn wait_listening(&mut self, host: Host, port: u16) -> anyhow::Result<()> {
        let addr = SocketAddr::new(IpAddr::V4(host.ip()), port);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = in_netns(&self.ns(Host::Build), move || {
                Ok(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok())
            })?;
            if ok {
                return Ok(());
            }
            for s in &mut self.servers {
                if let Ok(Some(st)) = s.child.try_wait() {
                    bail!("lab server {} exited ({st}): {}", s.name, fs::read_to_string(&s.log).unwrap_or_default());
                }
            }
            if Instant::now() > deadline {
                bail!("nothing listens on {addr} after 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `cmd` (a program and its arguments) in the build namespace, not watched; returns
    /// stdout, errors with the output on failure.
    pub fn run_in_build(&self, cmd: &mut Command) -> anyhow::Result<String> {
        let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("run {cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A command for PROGRAM in the build host: its network namespace, and a private mount
    /// namespace in which `/etc/resolv.conf` is the lab's. Unlike `ip netns exec`, this keeps
    /// the machine's /sys (cgroup, BPF and tracing file systems) visible, so `watcher run`
    /// works in it. Add arguments to the returned Command.
    pub fn build_cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.host_cmd(Host::Build, program)
    }

    /// [`Lab::build_cmd`] for any lab host.
    pub fn host_cmd(&self, host: Host, program: impl AsRef<std::ffi::OsStr>) -> Command {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::process::CommandExt;
        let ns = self.ns(host);
        let cstr = |s: &str| std::ffi::CString::new(s).expect("no NUL");
        let netns = cstr(&format!("/var/run/netns/{ns}"));
        let resolv = cstr(&format!("/etc/netns/{ns}/resolv.conf"));
        let target = std::ffi::CString::new(
            fs::canonicalize("/etc/resolv.conf")
                .unwrap_or_else(|_| PathBuf::from("/etc/resolv.conf"))
                .as_os_str()
                .as_bytes(),
        )
        .expect("no NUL");
        let mut c = Command::new(program);
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            c.pre_exec(move || {
                let fd = libc::open(netns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::close(fd);
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(io::Error::last_os_error());
                }
                let none = c"none".as_ptr();
                let root = c"/".as_ptr();
                if libc::mount(none, root, std::ptr::null(), libc::MS_REC | libc::MS_SLAVE, std::ptr::null()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::mount(resolv.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c
    }

    /// Creates the user `labpub` on the verdaccio of `host` (its HTTP user API) and returns
    /// its token.
    fn npm_user(&self, host: Host) -> anyhow::Result<String> {
        let body = r#"{"name":"labpub","password":"labpub-password-1","type":"user","roles":[]}"#;
        let url = format!("http://{}:{VERDACCIO_PORT}/-/user/org.couchdb.user:labpub", registry_name(host, "npm"));
        let out = self.run_in_build(
            self.build_cmd("curl")
                .args(["-sS", "-m", "20", "-X", "PUT", "-H", "content-type: application/json", "-d", body])
                .arg(&url),
        )?;
        let v: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("verdaccio adduser answered {out:?}"))?;
        v["token"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("verdaccio adduser answered without a token: {out}"))
    }

    /// The registry URL of `host`'s verdaccio (`http://npm.internal.lab.test:4873/`).
    pub fn npm_url(&self, host: Host) -> String {
        format!("http://{}:{VERDACCIO_PORT}/", registry_name(host, "npm"))
    }

    /// The publishing user's token on `host`'s verdaccio: a lab token, valid only on that lab
    /// registry (the worm scenario plants it in a victim's `~/.npmrc`).
    pub fn npm_token(&self, host: Host) -> Option<&str> {
        self.npm_token.get(&host).map(String::as_str)
    }

    /// The versions of `name` that `host`'s verdaccio has (asked from the build host, not
    /// watched); empty when it has none (404).
    pub fn npm_versions(&self, host: Host, name: &str) -> anyhow::Result<Vec<String>> {
        let url = format!("{}{name}", self.npm_url(host));
        let out = self.build_cmd("curl").args(["-sS", "-m", "20", "-w", "\n%{http_code}"]).arg(&url).output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        match code.trim() {
            "404" => Ok(Vec::new()),
            "200" => {
                let v: serde_json::Value =
                    serde_json::from_str(body).with_context(|| format!("{url} answered {body:?}"))?;
                Ok(v["versions"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default())
            }
            c => bail!("{url} answered {c}: {body} {}", String::from_utf8_lossy(&out.stderr)),
        }
    }

    /// The simple-index URL of `host`'s pypiserver (`http://pypi.public.lab.test:8080/simple/`).
    pub fn pip_url(&self, host: Host) -> String {
        format!("http://{}:{PYPISERVER_PORT}/simple/", registry_name(host, "pypi"))
    }

    fn pip_packages_dir(&self, host: Host) -> PathBuf {
        self.dir().join(format!("pypi-{}", host.suffix()))
    }

    /// `npm publish` of the package directory `src` to `host`'s verdaccio (run in the build
    /// namespace, not watched).
    pub fn npm_publish(&self, host: Host, src: &Path) -> anyhow::Result<()> {
        let work = TempDir::new("watcher-lab-publish");
        let url = self.npm_url(host);
        let auth = url.trim_start_matches("http:");
        let token = self.npm_token.get(&host).context("no npm token")?;
        fs::write(work.join("npmrc"), format!("registry={url}\n{auth}:_authToken={token}\n"))?;
        fs::write(work.join("global-npmrc"), "")?;
        self.run_in_build(
            self.build_cmd("npm")
                .args(["publish", "--no-git-checks", "--access", "public", "--registry", &url])
                .arg("--userconfig")
                .arg(work.join("npmrc"))
                .env("HOME", work.path())
                .env("npm_config_cache", work.join("cache"))
                .env("npm_config_globalconfig", work.join("global-npmrc"))
                .env("npm_config_update_notifier", "false")
                .current_dir(src),
        )?;
        Ok(())
    }

    /// Packs the sdist source directory `src` (with its PKG-INFO) plus `extra` files into
    /// `<dist>-<version>.tar.gz` in `host`'s pypiserver directory; returns the file name.
    pub fn pip_publish_sdist(&self, host: Host, src: &Path, extra: &[&Path]) -> anyhow::Result<String> {
        let pkg_info =
            fs::read_to_string(src.join("PKG-INFO")).with_context(|| format!("{}/PKG-INFO", src.display()))?;
        let field = |k: &str| {
            pkg_info
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}: ")))
                .map(str::trim)
                .map(str::to_string)
                .with_context(|| format!("{}/PKG-INFO has no {k}", src.display()))
        };
        let (name, version) = (field("Name")?, field("Version")?);
        let dist = name.replace(['-', '.'], "_").to_ascii_lowercase();
        let top = format!("{dist}-{version}");
        let stage = TempDir::new("watcher-lab-sdist");
        let root = stage.join(&top);
        copy_tree(src, &root)?;
        for f in extra {
            fs::copy(f, root.join(f.file_name().unwrap()))?;
        }
        let file = format!("{top}.tar.gz");
        let out = self.pip_packages_dir(host).join(&file);
        let st = Command::new("tar")
            .args(["--owner=0", "--group=0", "-czf"])
            .arg(&out)
            .arg("-C")
            .arg(stage.path())
            .arg(&top)
            .status()?;
        if !st.success() {
            bail!("tar {} failed", out.display());
        }
        Ok(file)
    }

    /// What the attacker's DNS and HTTP servers received so far.
    pub fn attacker(&self) -> AttackerRecord {
        AttackerRecord {
            dns: self.attacker_dns.as_ref().map(|d| d.queries()).unwrap_or_default(),
            http: self.attacker_http.as_ref().map(|h| lock(&h.connections).clone()).unwrap_or_default(),
        }
    }

    /// Forgets what the attacker's servers and the resolver recorded so far.
    pub fn clear_records(&self) {
        if let Some(h) = &self.attacker_http {
            lock(&h.connections).clear();
        }
        if let Some(r) = &self.resolver {
            lock(&r.queries).clear();
        }
        if let Some(d) = &self.attacker_dns {
            d.clear();
        }
    }

    /// Queries the lab resolver received so far (from every lab host).
    pub fn resolver_queries(&self) -> Vec<ReceivedQuery> {
        self.resolver.as_ref().map(|r| lock(&r.queries).clone()).unwrap_or_default()
    }

    /// The namespaces of this lab (for checks that they are gone after drop).
    pub fn namespaces(&self) -> Vec<String> {
        self.namespaces.clone()
    }
}

fn registry_name(host: Host, kind: &str) -> &'static str {
    match (host, kind) {
        (Host::Internal, "npm") => NPM_INTERNAL,
        (Host::Public, "npm") => NPM_PUBLIC,
        (Host::Internal, _) => PYPI_INTERNAL,
        _ => PYPI_PUBLIC,
    }
}

fn copy_tree(src: &Path, dst: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dst)?;
    for e in fs::read_dir(src).with_context(|| format!("read {}", src.display()))? {
        let e = e?;
        let to = dst.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &to)?;
        } else {
            fs::copy(e.path(), &to)?;
        }
    }
    Ok(())
}

impl Drop for Lab {
    fn drop(&mut self) {
        for s in &mut self.servers {
            s.stop();
        }
        self.servers.clear();
        self.resolver = None;
        self.attacker_dns = None;
        self.attacker_http = None;
        for ns in self.namespaces.drain(..).rev() {
            teardown_ns(&ns);
        }
    }
}
