//! Compiled matchers: built once when a policy is loaded, queried per event without I/O and
//! (on the allow path) without allocation.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use globset::{GlobMatcher, GlobSet, GlobSetBuilder};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::error::CompileError;
use super::schema::{PolicySpec, PortRange, Resolver, ShellPolicy, Target, ports_allow};

/// An allowed network and its inclusive port ranges (`None` = any port):
/// `(ipnet::IpNet, Option<Vec<(u16, u16)>>)`.
pub type AllowedNet = (IpNet, Option<Vec<(u16, u16)>>);

/// The text `exec_denied` returns when a non-empty `exec.allow` has no matching pattern.
pub const NOT_IN_EXEC_ALLOW: &str = "not in exec.allow";

#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    /// `egress.allow` host entries without `ports`.
    hosts_any_port: GlobSet,
    /// `egress.allow` host entries with `ports`.
    hosts_with_ports: Vec<(GlobMatcher, Vec<PortRange>)>,
    /// Every host pattern of `egress.allow` plus `dns.allow`.
    dns_names: GlobSet,
    /// Registry host names added by `with_registry_hosts`, lowercased, no trailing dot.
    registry_hosts: HashSet<String>,
    /// `ip`/`cidr` entries (ips as /32 or /128) and registry hosts that are IP literals.
    nets: Vec<(IpNet, Option<Vec<PortRange>>)>,
    /// `egress.proxies` (also in `nets`: reachable).
    proxies: Vec<std::net::SocketAddr>,
    /// The built-in deputy sockets with `egress.deputies` applied.
    deputies: Vec<String>,
    loopback: bool,
    system_resolvers: bool,
    resolver_ips: Vec<IpAddr>,
    exec_deny: GlobSet,
    exec_deny_text: Vec<String>,
    exec_allow: Option<GlobSet>,
    shells: ShellPolicy,
    secret_env: GlobSet,
    secret_env_text: Vec<String>,
}

fn build_set<'a>(globs: impl IntoIterator<Item = &'a globset::Glob>) -> Result<GlobSet, CompileError> {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        b.add(g.clone());
    }
    b.build().map_err(CompileError::Patterns)
}

/// Lowercases (only if needed) and drops one trailing dot.
fn normalize_name(name: &str) -> std::borrow::Cow<'_, str> {
    let name = match name.strip_suffix('.') {
        Some(n) if !n.is_empty() => n,
        _ => name,
    };
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(name.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// Events carry IPv4-mapped IPv6 addresses as IPv4 (`to_canonical`), so a `::ffff:a.b.c.d/n`
/// network (n >= 96) is turned into the IPv4 network it covers.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let (Some(v4), true) = (v6.network().to_ipv4_mapped(), v6.prefix_len() >= 96)
        && let Ok(n) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(n);
    }
    net
}

/// [`crate::policy::DEPUTY_SOCKETS`] without `remove`, with `add`: each entry an absolute path
/// or `@name`, at most UNIX_PATH_LEN bytes; `remove` only names built-in sockets (a typo there
/// would silently keep a deputy).
fn deputy_sockets(spec: &super::schema::DeputiesSpec) -> Result<Vec<String>, CompileError> {
    for p in spec.add.iter().chain(&spec.remove) {
        if !(p.starts_with('/') || p.starts_with('@')) || p.len() < 2 || p.len() > watcher_common::UNIX_PATH_LEN {
            return Err(CompileError::DeputyPath(p.clone()));
        }
    }
    for p in &spec.remove {
        if !crate::policy::DEPUTY_SOCKETS.contains(&p.as_str()) {
            return Err(CompileError::DeputyNotBuiltIn(p.clone()));
        }
    }
    let mut out: Vec<String> = crate::policy::DEPUTY_SOCKETS
        .iter()
        .filter(|d| !spec.remove.iter().any(|r| r == *d))
        .map(|d| d.to_string())
        .collect();
    for p in &spec.add {
        if !out.contains(p) {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl Compiled {
    pub(crate) fn new(spec: &PolicySpec) -> Result<Compiled, CompileError> {
        let mut any_port = Vec::new();
        let mut hosts_with_ports = Vec::new();
        let mut nets = Vec::new();
        for entry in &spec.egress.allow {
            match (&entry.target, &entry.ports) {
                (Target::Host(h), None) => any_port.push(h.glob()),
                (Target::Host(h), Some(p)) => hosts_with_ports.push((h.glob().compile_matcher(), p.clone())),
                (Target::Ip(ip), p) => nets.push((IpNet::from(ip.to_canonical()), p.clone())),
                (Target::Cidr(net), p) => nets.push((canonical_net(*net), p.clone())),
            }
        }
        let proxies: Vec<std::net::SocketAddr> =
            spec.egress.proxies.iter().map(|a| std::net::SocketAddr::new(a.ip().to_canonical(), a.port())).collect();
        for a in &proxies {
            nets.push((IpNet::from(a.ip()), Some(vec![PortRange { start: a.port(), end: a.port() }])));
        }
        let deputies = deputy_sockets(&spec.egress.deputies)?;
        let host_globs = spec.egress.allow.iter().filter_map(|e| match &e.target {
            Target::Host(h) => Some(h.glob()),
            _ => None,
        });
        let dns_names = build_set(host_globs.chain(spec.dns.allow.iter().map(|h| h.glob())))?;
        let exec_allow =
            if spec.exec.allow.is_empty() { None } else { Some(build_set(spec.exec.allow.iter().map(|p| p.glob()))?) };
        Ok(Compiled {
            hosts_any_port: build_set(any_port)?,
            hosts_with_ports,
            dns_names,
            registry_hosts: HashSet::new(),
            nets,
            proxies,
            deputies,
            loopback: spec.egress.loopback,
            system_resolvers: spec.dns.resolvers.contains(&Resolver::System),
            resolver_ips: spec
                .dns
                .resolvers
                .iter()
                .filter_map(|r| match r {
                    Resolver::Ip(ip) => Some(ip.to_canonical()),
                    Resolver::System => None,
                })
                .collect(),
            exec_deny: build_set(spec.exec.deny.iter().map(|p| p.glob()))?,
            exec_deny_text: spec.exec.deny.iter().map(|p| p.as_str().to_string()).collect(),
            exec_allow,
            shells: spec.exec.install_scripts.shells,
            secret_env: build_set(spec.secrets.env.iter().map(|p| p.glob()))?,
            secret_env_text: spec.secrets.env.iter().map(|p| p.as_str().to_string()).collect(),
        })
    }

    pub(crate) fn add_registry_host(&mut self, host: &str) {
        let host = host.trim();
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty() {
            return;
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            let net = IpNet::from(ip.to_canonical());
            if !self.nets.iter().any(|(n, p)| *n == net && p.is_none()) {
                self.nets.push((net, None));
            }
        }
        self.registry_hosts.insert(normalize_name(host).into_owned());
    }

    pub(crate) fn host_allowed(&self, name: &str, port: u16) -> bool {
        let name = normalize_name(name);
        let name = name.as_ref();
        if name.is_empty() {
            return false;
        }
        self.registry_hosts.contains(name)
            || self.hosts_any_port.is_match(name)
            || self.hosts_with_ports.iter().any(|(glob, ports)| ports_allow(Some(ports), port) && glob.is_match(name))
    }

    /// One more forward proxy (from the step's environment or a package manager's settings,
    /// `crate::proxies`): reachable on its port and judged by each request's target, as if
    /// `egress.proxies` named it. Adding one already there changes nothing.
    pub(crate) fn add_proxy(&mut self, addr: std::net::SocketAddr) {
        let addr = std::net::SocketAddr::new(addr.ip().to_canonical(), addr.port());
        if self.proxies.contains(&addr) {
            return;
        }
        self.proxies.push(addr);
        let net = IpNet::from(addr.ip());
        let range = PortRange { start: addr.port(), end: addr.port() };
        // One kernel entry per network: a second port on an address joins the first entry.
        match self.nets.iter_mut().find(|(n, p)| *n == net && p.is_some()) {
            Some((_, Some(ports))) => ports.push(range),
            _ => self.nets.push((net, Some(vec![range]))),
        }
    }

    pub(crate) fn is_proxy(&self, ip: IpAddr, port: u16) -> bool {
        let ip = ip.to_canonical();
        self.proxies.iter().any(|a| a.ip() == ip && a.port() == port)
    }

    pub(crate) fn proxies(&self) -> &[std::net::SocketAddr] {
        &self.proxies
    }

    pub(crate) fn deputies(&self) -> &[String] {
        &self.deputies
    }

    pub(crate) fn ip_allowed(&self, ip: IpAddr, port: u16) -> bool {
        let ip = ip.to_canonical();
        (self.loopback && ip.is_loopback())
            || self.nets.iter().any(|(net, ports)| net.contains(&ip) && ports_allow(ports.as_deref(), port))
    }

    pub(crate) fn dns_name_allowed(&self, name: &str) -> bool {
        let name = normalize_name(name);
        let name = name.as_ref();
        !name.is_empty() && (self.registry_hosts.contains(name) || self.dns_names.is_match(name))
    }

    pub(crate) fn resolver_allowed(&self, ip: IpAddr, system_resolvers: &[IpAddr]) -> bool {
        let ip = ip.to_canonical();
        self.resolver_ips.contains(&ip)
            || (self.system_resolvers && system_resolvers.iter().any(|r| r.to_canonical() == ip))
    }

    pub(crate) fn exec_denied(&self, path: &str) -> Option<String> {
        let base = basename(path);
        if self.exec_deny.is_match(path) || self.exec_deny.is_match(base) {
            let mut hits = self.exec_deny.matches(path);
            hits.extend(self.exec_deny.matches(base));
            let first = hits.into_iter().min().unwrap_or(0);
            return Some(self.exec_deny_text.get(first).cloned().unwrap_or_default());
        }
        match &self.exec_allow {
            Some(allow) if !(allow.is_match(path) || allow.is_match(base)) => Some(NOT_IN_EXEC_ALLOW.to_string()),
            _ => None,
        }
    }

    pub(crate) fn shells(&self) -> ShellPolicy {
        self.shells
    }

    pub(crate) fn secret_env_patterns(&self) -> &[String] {
        &self.secret_env_text
    }

    pub(crate) fn is_secret_env(&self, name: &str) -> bool {
        self.secret_env.is_match(name)
    }

    pub(crate) fn allowed_cidrs(&self) -> Vec<AllowedNet> {
        let mut out: Vec<AllowedNet> = self
            .nets
            .iter()
            .map(|(net, ports)| (*net, ports.as_ref().map(|p| p.iter().map(|r| (r.start, r.end)).collect())))
            .collect();
        if self.loopback {
            let v4 = Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).expect("valid prefix");
            let v6 = Ipv6Net::new(Ipv6Addr::LOCALHOST, 128).expect("valid prefix");
            out.push((IpNet::V4(v4), None));
            out.push((IpNet::V6(v6), None));
        }
        out
    }
}
