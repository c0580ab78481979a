//! `watcher policy suggest LOG...`: the smallest policy that allows what clean runs did.
//! Hosts by name when a DNS answer explains the address, registries by package manager,
//! executables by path. What looks risky (a raw IP, a shell from an install script) is
//! written as a comment, never allowed silently.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use crate::{
    event::Event,
    proctree::{ProcTree, is_shell},
};

#[derive(Default)]
pub struct Suggester {
    registries: BTreeMap<String, BTreeSet<String>>,
    /// Package managers whose registry hosts the runs connected to.
    used_registries: BTreeSet<String>,
    resolvers: BTreeSet<IpAddr>,
    answered: BTreeMap<IpAddr, BTreeSet<String>>,
    hosts: BTreeMap<String, BTreeSet<u16>>,
    raw_ips: BTreeMap<IpAddr, BTreeSet<u16>>,
    loopback: bool,
    dns_names: BTreeSet<String>,
    dns_servers: BTreeSet<IpAddr>,
    executables: BTreeSet<String>,
    shells: BTreeSet<String>,
    /// Packages whose install scripts started shells.
    shell_packages: BTreeSet<(String, String)>,
    tree: ProcTree,
    /// The step's working directory (start record): paths below it become `**/...`.
    cwd: Option<String>,
    /// Per log: alerts, lost events, whether it ended (see [`Suggester::check_clean`]).
    alerts: u64,
    lost: u64,
    starts: u64,
    ends: u64,
}

/// Characters a DNS name never has but a glob gives meaning to.
const GLOB_CHARS: &str = "*?[]{},!^\\";

/// A name that can be written as an exact `host:` / `dns.allow` entry.
fn plain_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        && !n.contains(|c| GLOB_CHARS.contains(c))
}

/// A path component that is random per machine or per run (a hash, a version, a temp name).
fn variable_component(c: &str) -> Option<String> {
    for prefix in ["pip-build-env-", "pip-install-", "pip-req-build-", "pip-wheel-", "cargo-install"] {
        if c.starts_with(prefix) && c.len() > prefix.len() {
            return Some(format!("{prefix}*"));
        }
    }
    // `<crate>-<16 hex>` build directories of cargo.
    if let Some((name, hash)) = c.rsplit_once('-')
        && hash.len() == 16
        && hash.chars().all(|h| h.is_ascii_hexdigit())
        && !name.is_empty()
    {
        return Some("*".into());
    }
    // `tmpXXXXXXXX` temp dirs.
    if c.starts_with("tmp") && c.len() >= 9 && c[3..].chars().all(|h| h.is_ascii_alphanumeric() || h == '_') {
        return Some("tmp*".into());
    }
    None
}

/// Toolchain directories whose next component is a version or a toolchain name.
const VERSIONED_DIRS: &[&str] = &["versions", "toolchains", "installs", "node"];

/// An `exec.allow` pattern for `path` that holds on the next run and machine: the working
/// directory becomes `**`, hashed and temporary components `*`, versioned toolchain
/// directories (`.pyenv/versions/3.11.7`, `.rustup/toolchains/<name>`, gcc's
/// `/usr/lib/gcc/<triple>/<version>`) `*`, a cargo build script `**/build/*/build-script-*`.
pub fn portable(path: &str, cwd: Option<&str>) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    if base.starts_with("build-script-") && path.contains("/build/") {
        return "**/build/*/build-script-*".into();
    }
    let (mut out, rest) = match cwd {
        Some(c) if c != "/" && path.starts_with(c) && path[c.len()..].starts_with('/') => {
            ("**".to_string(), &path[c.len()..])
        }
        _ => (String::new(), path),
    };
    let comps: Vec<&str> = rest.split('/').collect();
    let home_like = comps.iter().position(|c| c.starts_with('.') && c.len() > 1);
    for (i, c) in comps.iter().enumerate() {
        if i == 0 && c.is_empty() {
            continue;
        }
        out.push('/');
        let prev = if i > 0 { comps[i - 1] } else { "" };
        let versioned = (VERSIONED_DIRS.contains(&prev) && home_like.is_some_and(|h| h < i))
            || (i >= 2 && comps[i - 2] == "gcc" && comps.get(i - 3) == Some(&"lib"))
            || (prev == "gcc" && comps.get(i.wrapping_sub(2)) == Some(&"lib") && i + 1 < comps.len());
        if let Some(v) = variable_component(c) {
            out.push_str(&v);
        } else if versioned && i + 1 < comps.len() {
            out.push('*');
        } else {
            out.push_str(&glob_escape(c));
        }
    }
    // Everything before a dot directory of $HOME (`/root/.pyenv`, `/home/ci/.cargo`) is the
    // user's home: any.
    if let Some(h) = home_like
        && !out.starts_with("**")
        && h >= 1
    {
        let tail: Vec<&str> = out.trim_start_matches('/').splitn(h, '/').collect();
        if let Some(t) = tail.last() {
            return format!("**/{t}");
        }
    }
    out
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default() // a JSON string is a valid YAML scalar
}

fn glob_escape(path: &str) -> String {
    path.chars().map(|c| if "*?[]{}\\".contains(c) { format!("[{c}]") } else { c.to_string() }).collect()
}

impl Suggester {
    pub fn add(&mut self, e: &Event) {
        match e {
            Event::Start(s) => {
                self.starts += 1;
                if self.cwd.is_none() {
                    self.cwd = s.project.as_ref().map(|p| p.cwd.clone());
                }
                self.tree.on_event(e);
                for (pm, hosts) in &s.registries {
                    self.registries.entry(pm.clone()).or_default().extend(hosts.iter().map(|h| h.to_ascii_lowercase()));
                }
                self.resolvers.extend(s.resolvers.iter().copied());
            }
            Event::Dns(d) => {
                if d.error.is_none() && !d.qname.is_empty() {
                    self.dns_names.insert(d.qname.to_ascii_lowercase());
                }
                self.dns_servers.insert(d.server);
                for ip in d.answers.iter().flatten() {
                    self.answered.entry(*ip).or_default().insert(d.qname.to_ascii_lowercase());
                }
            }
            Event::Connect(c) if c.dport != 53 => {
                // A registry is used when a connection goes to one of its hosts: an address
                // literal (a registry configured by IP, e.g. a mirror on loopback) or a name
                // whose DNS answer gave the address.
                let literal = c.daddr.to_string();
                let names = self.answered.get(&c.daddr);
                for (pm, hosts) in &self.registries {
                    if hosts.contains(&literal) || names.is_some_and(|n| n.iter().any(|n| hosts.contains(n))) {
                        self.used_registries.insert(pm.clone());
                    }
                }
                if c.daddr.is_loopback() {
                    self.loopback = true;
                } else if let Some(names) = self.answered.get(&c.daddr) {
                    for n in names {
                        self.hosts.entry(n.clone()).or_default().insert(c.dport);
                    }
                } else {
                    self.raw_ips.entry(c.daddr).or_default().insert(c.dport);
                }
            }
            Event::Exec(x) => {
                if (is_shell(&x.filename) || x.shell) && self.tree.install_script(x.proc.ppid).is_some() {
                    if let Some((_, a)) = self.tree.install_script(x.proc.ppid) {
                        self.shell_packages.insert((a.manager.clone(), a.package.clone()));
                    }
                    let pkg = self.tree.install_script(x.proc.ppid).map(|(_, a)| a.label()).unwrap_or_default();
                    self.shells.insert(format!("{pkg} ran {}", x.filename));
                }
                self.executables.insert(x.filename.clone());
                self.tree.on_event(e);
            }
            Event::Fork(_) | Event::Exit(_) => self.tree.on_event(e),
            Event::Alert(_) => self.alerts += 1,
            Event::Loss(l) => self.lost += l.count,
            Event::End(_) => self.ends += 1,
            _ => {}
        }
    }

    /// A policy is suggested from clean, complete runs only: no alerts, no lost events, an
    /// `end` record for every `start` (`--allow-flagged` overrides).
    pub fn check_clean(&self) -> Result<(), NotClean> {
        let e = NotClean { alerts: self.alerts, lost: self.lost, unfinished: self.ends < self.starts.max(1) };
        if e.alerts == 0 && e.lost == 0 && !e.unfinished { Ok(()) } else { Err(e) }
    }

    /// The policy as commented YAML.
    pub fn render(&self, pipeline: &str) -> String {
        self.render_with_base(pipeline, None)
    }

    /// [`Suggester::render`], keeping `base`'s deny lists, temp dirs, shell rule, per-package
    /// rules and secret patterns (`--base POLICY`).
    pub fn render_with_base(&self, pipeline: &str, base: Option<&crate::policy::Policy>) -> String {
        let registry_hosts: BTreeSet<&String> = self.registries.values().flatten().collect();
        let mut y = String::new();
        y.push_str("# Suggested by `watcher policy suggest` from clean runs: it allows what they did.\n");
        y.push_str("# Review it, then switch mode to enforce. Risky things are comments, not allowed.\n");
        y.push_str(&format!("version: 1\npipeline: {}\nmode: audit\n", yaml_str(pipeline)));
        y.push_str("egress:\n");
        let used: Vec<&String> = self
            .registries
            .iter()
            .filter(|(pm, hosts)| {
                self.used_registries.contains(*pm) || hosts.iter().any(|h| self.hosts.contains_key(h))
            })
            .map(|(pm, _)| pm)
            .collect();
        y.push_str(&format!("  registries: [{}]\n", used.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")));
        y.push_str("  allow:\n");
        let mut any = false;
        for (host, ports) in &self.hosts {
            if registry_hosts.contains(host) {
                continue;
            }
            if !plain_name(host) {
                y.push_str(&format!(
                    "    # RISKY: connections to a name that is not a plain host name: {}\n",
                    yaml_str(host)
                ));
                continue;
            }
            any = true;
            let p: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
            y.push_str(&format!("    - host: {}\n      ports: [{}]\n", yaml_str(host), p.join(", ")));
        }
        for (ip, ports) in &self.raw_ips {
            let p: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
            y.push_str(&format!(
                "    # RISKY: connections to {ip} (ports {}) no DNS answer explains: a hard-coded address.\n    #   To allow: - ip: {ip}\n    #               ports: [{}]\n",
                p.join(", "),
                p.join(", ")
            ));
        }
        if !any {
            y.push_str("    []\n".replace("    []", "    # (no other hosts)").as_str());
        }
        y.push_str(&format!("  loopback: {}\n", self.loopback));
        y.push_str("dns:\n");
        let system = self.dns_servers.iter().all(|s| self.resolvers.contains(s));
        if system {
            y.push_str("  resolvers: [system]\n");
        } else {
            let r: Vec<String> = self.dns_servers.iter().map(|s| yaml_str(&s.to_string())).collect();
            y.push_str(&format!("  resolvers: [{}]\n", r.join(", ")));
        }
        let (extra, odd): (Vec<&String>, Vec<&String>) = self
            .dns_names
            .iter()
            .filter(|n| !self.hosts.contains_key(*n) && !registry_hosts.contains(n))
            .partition(|n| plain_name(n));
        for n in odd {
            y.push_str(&format!("  # RISKY: a DNS query for a name that is not a plain host name: {}\n", yaml_str(n)));
        }
        let extra: Vec<String> = extra.into_iter().map(|n| yaml_str(n)).collect();
        y.push_str(&format!("  allow: [{}]\n", extra.join(", ")));
        let spec = base.map(|b| b.spec());
        y.push_str("exec:\n");
        if let Some(s) = spec {
            let d: Vec<String> = s.exec.deny.iter().map(|p| yaml_str(p.as_str())).collect();
            y.push_str(&format!("  deny: [{}]\n", d.join(", ")));
            let t: Vec<String> = s.exec.temp_dirs.iter().map(|p| yaml_str(p.as_str())).collect();
            y.push_str(&format!("  temp_dirs: [{}]\n", t.join(", ")));
        }
        y.push_str("  allow:\n");
        let allow: BTreeSet<String> = self.executables.iter().map(|e| portable(e, self.cwd.as_deref())).collect();
        for e in &allow {
            y.push_str(&format!("    - {}\n", yaml_str(e)));
        }
        y.push_str("  install_scripts:\n");
        for s in &self.shells {
            y.push_str(&format!(
                "    # shell in an install script: {s} (`suspicious` kills it only if it looks like an attack)\n"
            ));
        }
        let shells = spec.map(|s| s.exec.install_scripts.shells.as_str()).unwrap_or("suspicious");
        y.push_str(&format!("    shells: {shells}\n"));
        y.push_str("secrets:\n");
        match spec {
            Some(s) => {
                let e: Vec<String> = s.secrets.env.iter().map(|p| yaml_str(p.as_str())).collect();
                y.push_str(&format!("  env: [{}]\n", e.join(", ")));
            }
            None => y.push_str("  env: [\"AWS_*\", \"*_TOKEN\", \"*_PASSWORD\", \"*_SECRET\", \"*_KEY\"]\n"),
        }
        y.push_str("packages:\n");
        let mut rules = 0;
        if let Some(s) = spec {
            for r in &s.packages {
                rules += 1;
                y.push_str(&format!("  - name: {}\n", yaml_str(r.name.as_str())));
                if let Some(m) = r.manager {
                    y.push_str(&format!("    manager: {}\n", m.as_str()));
                }
                if let Some(sh) = r.shells {
                    y.push_str(&format!("    shells: {}\n", sh.as_str()));
                }
            }
        }
        for (m, p) in &self.shell_packages {
            y.push_str(&format!(
                "  # proposed: the install scripts of {m} package {} started shells; to allow all of them:\n  # - name: {}\n  #   manager: {m}\n  #   shells: allow\n",
                yaml_str(p),
                yaml_str(&glob_escape(p))
            ));
        }
        if rules == 0 {
            y.push_str("  []\n");
        }
        y
    }
}

/// Logs `policy suggest` does not learn from (see [`Suggester::check_clean`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the logs are not of clean, complete runs ({}): a policy suggested from them would allow what was flagged; pass --allow-flagged to suggest one anyway",
    self.why()
)]
pub struct NotClean {
    pub alerts: u64,
    pub lost: u64,
    /// Fewer `end` records than `start` records (or none).
    pub unfinished: bool,
}

impl NotClean {
    fn why(&self) -> String {
        let mut why = Vec::new();
        if self.alerts > 0 {
            why.push(format!("{} alerts", self.alerts));
        }
        if self.lost > 0 {
            why.push(format!("{} lost events", self.lost));
        }
        if self.unfinished {
            why.push("no `end` record (the run did not finish)".to_string());
        }
        why.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Connect, Proc, Proto, Start, Ts};

    fn start(registries: &[(&str, &str)]) -> Event {
        Event::Start(Start {
            ts: Ts(0),
            job: None,
            schema: 1,
            watcher: "t".into(),
            mode: "run".into(),
            command: vec![],
            pid: 1,
            sensors: vec![],
            resolvers: vec![],
            registries: registries.iter().map(|(pm, h)| (pm.to_string(), vec![h.to_string()])).collect(),
            registry_sources: vec![],
            proxy_sources: Vec::new(),
            policy: None,
            policy_yaml: None,
            project: None,
        })
    }

    fn connect(ip: &str, port: u16) -> Event {
        Event::Connect(Connect {
            ts: Ts(1),
            proc: Proc { pid: 2, ppid: 1, comm: "npm".into(), uid: 0 },
            daddr: ip.parse().unwrap(),
            dport: port,
            proto: Proto::Tcp,
            op: "connect".into(),
            allowed: true,
        })
    }

    #[test]
    fn a_registry_configured_by_address_is_named_when_it_was_used() {
        let mut s = Suggester::default();
        s.add(&start(&[("npm", "127.0.0.1"), ("pip", "127.0.0.9")]));
        s.add(&connect("127.0.0.1", 4873));
        let y = s.render("p");
        assert!(y.contains("registries: [npm]\n"), "{y}");
        let mut s = Suggester::default();
        s.add(&start(&[("npm", "127.0.0.1")]));
        s.add(&connect("127.0.0.2", 4873));
        assert!(s.render("p").contains("registries: []\n"));
    }
}

#[cfg(test)]
mod portability {
    use super::*;

    #[test]
    fn machine_specific_paths_become_globs() {
        assert_eq!(
            portable("/w/target/debug/build/anyhow-0123456789abcdef/build-script-build", None),
            "**/build/*/build-script-*"
        );
        assert_eq!(
            portable("/root/.pyenv/versions/3.11.7/bin/python3.11", None),
            "**/.pyenv/versions/*/bin/python3.11"
        );
        assert_eq!(portable("/usr/lib/gcc/x86_64-linux-gnu/12/cc1", None), "/usr/lib/gcc/*/*/cc1");
        assert_eq!(
            portable("/home/ci/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/bin/rustc", None),
            "**/.rustup/toolchains/*/bin/rustc"
        );
        assert_eq!(
            portable("/tmp/pip-build-env-abc123/overlay/bin/ninja", None),
            "/tmp/pip-build-env-*/overlay/bin/ninja"
        );
        assert_eq!(portable("/tmp/proj/node_modules/.bin/esbuild", Some("/tmp/proj")), "**/node_modules/.bin/esbuild");
        assert_eq!(portable("/usr/bin/node", Some("/tmp/proj")), "/usr/bin/node");
        assert_eq!(portable("/opt/we[ird]/x", None), "/opt/we[[]ird[]]/x");
    }

    #[test]
    fn glob_names_are_never_allowed_and_flagged_logs_are_refused() {
        let mut s = Suggester::default();
        s.add(&Event::Dns(crate::event::Dns {
            ts: crate::event::Ts(1),
            proc: crate::event::Proc::default(),
            qname: "*".into(),
            qtype: "A".into(),
            server: "127.0.0.53".parse().unwrap(),
            server_port: 53,
            proto: crate::event::Proto::Udp,
            id: 1,
            rcode: None,
            answers: None,
            cnames: vec![],
            error: None,
            payload_len: 17,
            allowed: true,
            secrets: vec![],
        }));
        let y = s.render("p");
        assert!(y.contains("allow: []"), "{y}");
        assert!(y.contains("# RISKY: a DNS query for a name that is not a plain host name: \"*\""), "{y}");
        crate::policy::parse_str("s.yaml", &y).unwrap();
        // No start/end: not a complete run.
        assert!(s.check_clean().unwrap_err().to_string().contains("no `end` record"));
    }
}
