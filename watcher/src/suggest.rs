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
    tree: ProcTree,
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
                    let pkg = self.tree.install_script(x.proc.ppid).map(|(_, a)| a.label()).unwrap_or_default();
                    self.shells.insert(format!("{pkg} ran {}", x.filename));
                }
                self.executables.insert(x.filename.clone());
                self.tree.on_event(e);
            }
            Event::Fork(_) | Event::Exit(_) => self.tree.on_event(e),
            _ => {}
        }
    }

    /// The policy as commented YAML.
    pub fn render(&self, pipeline: &str) -> String {
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
        let extra: Vec<String> = self
            .dns_names
            .iter()
            .filter(|n| !self.hosts.contains_key(*n) && !registry_hosts.contains(n))
            .map(|n| yaml_str(n))
            .collect();
        y.push_str(&format!("  allow: [{}]\n", extra.join(", ")));
        y.push_str("exec:\n  allow:\n");
        for e in &self.executables {
            y.push_str(&format!("    - {}\n", yaml_str(&glob_escape(e))));
        }
        y.push_str("  install_scripts:\n");
        for s in &self.shells {
            y.push_str(&format!("    # RISKY: {s}; allowing it needs `shells: allow`.\n"));
        }
        y.push_str("    shells: deny\n");
        y.push_str("secrets:\n  env: [\"AWS_*\", \"*_TOKEN\", \"*_PASSWORD\", \"*_SECRET\", \"*_KEY\"]\n");
        y
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
            policy: None,
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
