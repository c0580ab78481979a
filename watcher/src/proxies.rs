//! Forward proxies named outside the policy: the step's `HTTPS_PROXY`, `HTTP_PROXY` and
//! `ALL_PROXY` (upper and lower case) and the package managers' own proxy settings (npm's
//! `https-proxy`/`proxy`, pip's `proxy`). Each is made a proxy exactly as if `egress.proxies`
//! named it: reachable on its port, and every request sent through it judged by its target in
//! the kernel (`CONNECT host:port`, an absolute URI's host, `Host`).
//!
//! Read at run time, never written anywhere but the start record (`proxy_sources`, without the
//! URL's user name or password). Rules:
//! - only `http://` proxies (or a bare `host:port`, which the tools take as one): a TLS
//!   (`https://`) or SOCKS proxy carries its requests where the kernel cannot read their target,
//!   so it is not made reachable (one warning);
//! - the URL must name its port (curl takes 1080 for a proxy without one, most other tools 80:
//!   watcher does not guess);
//! - a host name is resolved when the step starts, with the system's resolver (as the tools
//!   will), at most [`MAX_ADDRESSES`] addresses each; at most [`MAX_PROXIES`] proxies in all;
//! - `NO_PROXY=*` means no tool uses the variables' proxies: then they are not made reachable.
//!   The hosts `NO_PROXY` lists are reached directly and judged as direct connections;
//!   `NO_PROXY` never makes anything reachable;
//! - a proxy named by a file of the step's working directory (the checkout) is not accepted:
//!   the checkout would choose a host the step may send anything to. Name it in the policy.
//!
//! A value that cannot be used gives one warning naming the variable or setting, never an
//! error: the step runs, and that proxy stays unreachable (fail closed).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::{PackageManager, Policy};

/// At most this many proxies from the environment and the package managers' settings (the
/// policy's own `egress.proxies` have their bound); the ones after are warned about and left out.
pub const MAX_PROXIES: usize = 16;

/// At most this many addresses of one proxy host name.
pub const MAX_ADDRESSES: usize = 8;

/// How long resolving one proxy host name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The proxy variables, in the order their proxies are listed.
const VARS: &[&str] = &["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"];

/// npm's proxy settings as variables (read from the environment where npm is not asked: daemon
/// jobs). Compared case-insensitively, as npm does.
const NPM_VARS: &[&str] = &["npm_config_https_proxy", "npm_config_proxy"];

/// One proxy from outside the policy (the start record's `proxy_sources`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProxySource {
    /// `host:port` as the setting names it (never its user name or password).
    pub proxy: String,
    /// What it resolved to when the step started: each address is a proxy on that port.
    pub addresses: Vec<SocketAddr>,
    /// The variable (`HTTPS_PROXY`) or the tool's setting (`` `npm config list --json` in /: https-proxy ``).
    pub from: String,
}

/// Proxies found, and the warnings about the values that could not be used.
#[derive(Debug, Default)]
pub struct Found {
    pub sources: Vec<ProxySource>,
    pub warnings: Vec<String>,
}

/// Every address of `sources`.
pub fn addresses(sources: &[ProxySource]) -> Vec<SocketAddr> {
    sources.iter().flat_map(|s| s.addresses.iter().copied()).collect()
}

/// `policy` with `sources` as proxies.
pub fn apply(policy: Option<Policy>, sources: &[ProxySource]) -> Option<Policy> {
    match policy {
        Some(p) if !sources.is_empty() => Some(p.with_proxies(&addresses(sources))),
        p => p,
    }
}

/// `watcher run` (standalone or daemon-backed, in the step's own environment, which is
/// watcher's): the variables, then npm's and pip's settings when the policy names their
/// registries. Warnings are printed to stderr.
pub fn for_step(policy: Option<&Policy>) -> Vec<ProxySource> {
    let Some(policy) = policy else { return Vec::new() };
    let env: Vec<(String, String)> =
        std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect();
    let mut candidates = from_env(&env, false);
    let regs = policy.registries();
    if regs.iter().any(|r| matches!(r, PackageManager::Npm)) {
        match crate::probe::proxy_settings::npm_here() {
            Ok(s) => candidates.extend(s.into_iter().map(|(u, f, ws)| Candidate { url: u, from: f, workspace: ws })),
            Err(e) => crate::say!("watcher: warning: npm's proxy settings are not read: {e}"),
        }
    }
    if regs.iter().any(|r| matches!(r, PackageManager::Pip)) {
        match crate::probe::proxy_settings::pip_here() {
            Ok(s) => candidates.extend(s.into_iter().map(|(u, f, ws)| Candidate { url: u, from: f, workspace: ws })),
            Err(e) => crate::say!("watcher: warning: pip's proxy settings are not read: {e}"),
        }
    }
    let found = resolve(candidates);
    for w in &found.warnings {
        crate::say!("watcher: warning: {w}");
    }
    found.sources
}

/// `sources` (from [`for_step`]) into `prepared`.
pub fn set(prepared: &mut crate::session::Prepared, sources: Vec<ProxySource>) {
    prepared.policy = apply(prepared.policy.take(), &sources);
    prepared.proxy_sources = sources;
}

/// A daemon job's policy with the proxies of its first process's environment: the shared
/// policy when there are none, else a copy of it with the proxies and its kernel tables
/// compiled again. Warnings go to the daemon's log.
pub fn for_daemon_job(
    policy: Option<std::rc::Rc<crate::daemon::jobs::LoadedPolicy>>,
    first: Option<u32>,
    resolvers: &[IpAddr],
    seed: u64,
) -> Option<std::rc::Rc<crate::daemon::jobs::LoadedPolicy>> {
    let shared = policy?;
    let Some(pol) = shared.prepared.policy.as_ref() else { return Some(shared) };
    let Some(environ) = first.and_then(crate::daemon::job_secrets::read_environ) else { return Some(shared) };
    let found = for_job(&environ);
    drop(environ);
    for w in &found.warnings {
        tracing::warn!(pid = first.unwrap_or(0), "{w}");
    }
    if found.sources.is_empty() {
        return Some(shared);
    }
    let pol = pol.clone().with_proxies(&addresses(&found.sources));
    let hosts: Vec<String> = shared.prepared.registries.values().flatten().cloned().collect();
    let tables = match crate::policy::kernel::compile(&pol, &hosts, resolvers, seed) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(pid = first.unwrap_or(0), "the job's proxies are not used: {e}");
            return Some(shared);
        }
    };
    let p = &shared.prepared;
    Some(std::rc::Rc::new(crate::daemon::jobs::LoadedPolicy {
        path: shared.path.clone(),
        prepared: crate::session::Prepared {
            policy: Some(pol),
            registries: p.registries.clone(),
            registry_sources: p.registry_sources.clone(),
            proxy_sources: found.sources,
            secrets: p.secrets.clone(),
        },
        tables,
    }))
}

/// A daemon job: the variables of its first process's environment (`environ`, NUL-separated),
/// npm's `npm_config_*proxy` and `PIP_PROXY` among them (the tools are not started for a job).
pub fn for_job(environ: &[u8]) -> Found {
    let env: Vec<(String, String)> = environ
        .split(|b| *b == 0)
        .filter_map(|e| {
            let e = std::str::from_utf8(e).ok()?;
            let (k, v) = e.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect();
    resolve(from_env(&env, true))
}

/// A proxy URL and where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub url: String,
    pub from: String,
    pub workspace: bool,
}

/// The proxy variables of `env` (and, with `tools`, `npm_config_*proxy` and `PIP_PROXY`), in
/// [`VARS`] order; none when `NO_PROXY`/`no_proxy` is `*`.
pub(crate) fn from_env(env: &[(String, String)], tools: bool) -> Vec<Candidate> {
    let get = |name: &str| env.iter().rfind(|(k, v)| k == name && !v.trim().is_empty()).map(|(_, v)| v.clone());
    let no_proxy = get("no_proxy").or_else(|| get("NO_PROXY")).unwrap_or_default();
    if no_proxy.split(',').any(|h| h.trim() == "*") {
        return Vec::new();
    }
    let mut out: Vec<Candidate> = VARS
        .iter()
        .filter_map(|v| get(v).map(|url| Candidate { url, from: v.to_string(), workspace: false }))
        .collect();
    if tools {
        for var in NPM_VARS {
            if let Some((k, v)) = env.iter().rfind(|(k, v)| k.eq_ignore_ascii_case(var) && !v.trim().is_empty()) {
                out.push(Candidate { url: v.clone(), from: k.clone(), workspace: false });
            }
        }
        if let Some(url) = get("PIP_PROXY") {
            out.push(Candidate { url, from: "PIP_PROXY".into(), workspace: false });
        }
    }
    out
}

/// Why a proxy URL cannot be a proxy watcher makes reachable (the text completes a warning).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyUrlError {
    #[error(
        "a TLS (https://) proxy: the kernel cannot read the target of a request sent through it, so it is not made reachable"
    )]
    Tls,
    #[error(
        "a SOCKS proxy ({0}://): the kernel cannot read the target of a request sent through it, so it is not made reachable"
    )]
    Socks(String),
    #[error("the scheme {0:?} is not a proxy scheme (http://HOST:PORT)")]
    Scheme(String),
    #[error("an IPv6 address without its closing `]`")]
    Ipv6Bracket,
    #[error("no host name or address")]
    NoHost,
    #[error("no port (curl takes 1080 for a proxy without one, most other tools 80): name it, http://HOST:PORT")]
    NoPort,
    #[error("the port {0:?} is not a port")]
    BadPort(String),
}

/// `host` and `port` of a proxy URL, or why it cannot be a proxy.
pub(crate) fn parse(url: &str) -> Result<(String, u16), ProxyUrlError> {
    let url = url.trim();
    let rest = match url.split_once("://") {
        Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
            "http" => rest,
            "https" => {
                return Err(ProxyUrlError::Tls);
            }
            s if s.starts_with("socks") => {
                return Err(ProxyUrlError::Socks(s.to_string()));
            }
            s => return Err(ProxyUrlError::Scheme(s.to_string())),
        },
        None => url,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or(ProxyUrlError::Ipv6Bracket)?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '[' || c == ']') {
        return Err(ProxyUrlError::NoHost);
    }
    let port = port.filter(|p| !p.is_empty()).ok_or(ProxyUrlError::NoPort)?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| ProxyUrlError::BadPort(port.to_string()))?;
    Ok((host.to_ascii_lowercase(), port))
}

/// Parses, resolves and bounds `candidates`; an address already found is not listed twice.
pub(crate) fn resolve(candidates: Vec<Candidate>) -> Found {
    let mut found = Found::default();
    let mut seen: Vec<SocketAddr> = Vec::new();
    for c in candidates {
        if c.workspace {
            found.warnings.push(format!(
                "the proxy in {} is not used: a file of the working directory (the checkout) cannot choose a proxy the step may send to; name it in the policy's egress.proxies",
                c.from
            ));
            continue;
        }
        let (host, port) = match parse(&c.url) {
            Ok(hp) => hp,
            Err(why) => {
                found.warnings.push(format!("{}: the proxy it names is not used: {why}", c.from));
                continue;
            }
        };
        let addrs = match lookup(&host, port) {
            Ok(a) if a.is_empty() => {
                found.warnings.push(format!("{}: the proxy host {host} has no address: it is not used", c.from));
                continue;
            }
            Ok(a) => a,
            Err(e) => {
                found.warnings.push(format!("{}: cannot resolve the proxy host {host}: {e}: it is not used", c.from));
                continue;
            }
        };
        let new: Vec<SocketAddr> = addrs.into_iter().filter(|a| !seen.contains(a)).collect();
        if new.is_empty() {
            continue;
        }
        if found.sources.len() >= MAX_PROXIES {
            found.warnings.push(format!(
                "{}: more than {MAX_PROXIES} proxies from the environment and the package managers' settings: this one is not used",
                c.from
            ));
            continue;
        }
        seen.extend(&new);
        let shown = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        found.sources.push(ProxySource { proxy: shown, addresses: new, from: c.from });
    }
    found
}

/// Why a proxy host has no addresses (the text completes a warning).
#[derive(Debug, thiserror::Error)]
enum LookupError {
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("{0}")]
    Resolve(std::io::Error),
    #[error("no answer within {0} seconds")]
    Timeout(u64),
}

/// The addresses of `host` (an address, or a name for the system's resolver), IPv4-mapped
/// ones as IPv4, at most [`MAX_ADDRESSES`].
fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, LookupError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip.to_canonical(), port)]);
    }
    let name = host.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("proxy-lookup".into())
        .spawn(move || {
            let _ = tx.send((name.as_str(), port).to_socket_addrs().map(|a| a.collect::<Vec<_>>()));
        })
        .map_err(LookupError::Thread)?;
    let addrs = match rx.recv_timeout(RESOLVE_TIMEOUT) {
        Ok(r) => r.map_err(LookupError::Resolve)?,
        Err(_) => return Err(LookupError::Timeout(RESOLVE_TIMEOUT.as_secs())),
    };
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in addrs {
        let a = SocketAddr::new(a.ip().to_canonical(), a.port());
        if !out.contains(&a) && out.len() < MAX_ADDRESSES {
            out.push(a);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn proxy_urls_are_parsed_and_the_unusable_ones_say_why() {
        assert_eq!(parse("http://127.0.0.1:3128").unwrap(), ("127.0.0.1".into(), 3128));
        assert_eq!(parse("http://user:pw@Proxy.Corp:8080/").unwrap(), ("proxy.corp".into(), 8080));
        assert_eq!(parse("proxy.corp:3128").unwrap(), ("proxy.corp".into(), 3128));
        assert_eq!(parse("HTTP://[::1]:3128").unwrap(), ("::1".into(), 3128));
        assert!(parse("https://proxy:443").unwrap_err().to_string().contains("TLS"));
        assert!(parse("socks5h://proxy:1080").unwrap_err().to_string().contains("SOCKS"));
        assert!(parse("http://proxy").unwrap_err().to_string().contains("no port"));
        assert!(parse("http://proxy:99999").unwrap_err().to_string().contains("not a port"));
        assert!(parse("http://:3128").unwrap_err().to_string().contains("no host"));
        assert!(parse("http://[::1:3128").unwrap_err().to_string().contains("closing"));
        assert!(parse("ftp://x:1").unwrap_err().to_string().contains("not a proxy scheme"));
    }

    #[test]
    fn variables_upper_and_lower_case_no_proxy_star_and_tool_variables_for_jobs() {
        let e = env(&[("https_proxy", "http://127.0.0.1:1"), ("HTTP_PROXY", "http://127.0.0.2:2"), ("ALL_PROXY", "")]);
        let c = from_env(&e, false);
        assert_eq!(c.iter().map(|c| c.from.as_str()).collect::<Vec<_>>(), ["https_proxy", "HTTP_PROXY"]);
        let mut e2 = e.clone();
        e2.push(("NO_PROXY".into(), "localhost, *".into()));
        assert!(from_env(&e2, false).is_empty());
        let e3 = env(&[("NPM_CONFIG_HTTPS_PROXY", "http://127.0.0.3:3"), ("PIP_PROXY", "http://127.0.0.4:4")]);
        assert!(from_env(&e3, false).is_empty());
        assert_eq!(from_env(&e3, true).len(), 2);
    }

    #[test]
    fn resolution_dedups_bounds_and_warns_naming_the_variable_without_credentials() {
        let mut c: Vec<Candidate> = (0..MAX_PROXIES + 2)
            .map(|i| Candidate {
                url: format!("http://u:hunter2@127.0.0.{}:3128", i + 1),
                from: format!("V{i}"),
                workspace: false,
            })
            .collect();
        c.push(Candidate { url: "http://127.0.0.1:3128".into(), from: "again".into(), workspace: false });
        c.push(Candidate { url: "https://127.0.0.1:1".into(), from: "HTTPS_PROXY".into(), workspace: false });
        c.push(Candidate { url: "http://127.0.0.9:1".into(), from: "/w/.npmrc (proxy)".into(), workspace: true });
        let f = resolve(c);
        assert_eq!(f.sources.len(), MAX_PROXIES);
        assert_eq!(f.sources[0].proxy, "127.0.0.1:3128");
        assert_eq!(f.sources[0].from, "V0");
        assert!(!format!("{:?}{:?}", f.sources, f.warnings).contains("hunter2"));
        assert_eq!(f.warnings.len(), 4, "{:#?}", f.warnings);
        assert!(f.warnings.iter().any(|w| w.starts_with("HTTPS_PROXY: ") && w.contains("TLS")));
        assert!(f.warnings.iter().any(|w| w.contains("checkout")));
        let names =
            resolve(vec![Candidate { url: "http://localhost:3128".into(), from: "x".into(), workspace: false }]);
        assert!(names.sources[0].addresses.iter().all(|a| a.ip().is_loopback() && a.port() == 3128), "{names:?}");
    }

    #[test]
    fn a_policy_with_proxies_reaches_them_and_judges_them_as_proxies() {
        let p = crate::policy::parse_str(
            "p.yaml",
            "version: 1\npipeline: t\negress:\n  loopback: false\n  proxies: [\"127.0.0.1:3128\"]\n",
        )
        .unwrap();
        let src = vec![ProxySource {
            proxy: "127.0.0.1:8080".into(),
            addresses: vec!["127.0.0.1:8080".parse().unwrap()],
            from: "HTTPS_PROXY".into(),
        }];
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(!p.ip_allowed(ip, 8080));
        let p = apply(Some(p), &src).unwrap();
        assert!(p.ip_allowed(ip, 8080) && p.ip_allowed(ip, 3128) && !p.ip_allowed(ip, 8081));
        assert!(p.is_proxy(ip, 8080) && p.is_proxy(ip, 3128));
        let t = crate::policy::kernel::compile(&p, &[], &[], 1).unwrap();
        assert_eq!(t.proxies.len(), 1, "one kernel entry for the address");
        assert!(t.proxies[0].2.contains(8080) && t.proxies[0].2.contains(3128) && !t.proxies[0].2.contains(80));
    }
}
