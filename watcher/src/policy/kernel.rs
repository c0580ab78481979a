//! Compile a policy into the tables the kernel programs enforce with (pure; the sensor writes
//! them into maps). Only what the kernel can decide exactly is compiled: exact host names and
//! `*.suffix` wildcards, IPs and CIDRs with ports, resolvers, executable basenames. Anything
//! else in an enforce-mode policy is refused with a clear message rather than enforced
//! differently from what the engine judges.
use std::net::IpAddr;

use watcher_common::{
    DNS_MASK_LOOKUP, ENV_FLAG_INSTALL, ENV_NAME_LEN, EXEC_DENY, EXEC_NAME_LEN, EXEC_SHELL, JOB_DENY_SHELLS,
    JOB_ENFORCE, MAX_HOST_ENTRIES, MAX_PORT_RANGES, PortSet, name_hash,
};

use super::{
    Mode, Policy, PolicyError,
    error::{KernelError, NameError},
    schema::{Resolver, Target},
};
use crate::proctree::SHELLS;

/// npm lifecycle events that start an install script (kept in step with proctree).
const NPM_INSTALL_MARKERS: &[&str] = &[
    "npm_lifecycle_event=preinstall",
    "npm_lifecycle_event=install",
    "npm_lifecycle_event=postinstall",
    "npm_lifecycle_event=prepare",
    "npm_lifecycle_event=preprepare",
    "npm_lifecycle_event=postprepare",
];

#[derive(Debug, Default, Clone, PartialEq)]
pub struct KernelTables {
    pub job_flags: u32,
    pub seed: u64,
    /// (IPv4-mapped or IPv6 address, prefix length over 128 bits, ports)
    pub nets: Vec<([u8; 16], u32, PortSet)>,
    pub resolvers: Vec<[u8; 16]>,
    pub names: Vec<(u64, u64)>,
    pub suffixes: Vec<(u64, u64)>,
    pub host_ports: Vec<PortSet>,
    pub exec_rules: Vec<([u8; EXEC_NAME_LEN], u32)>,
    /// Every local-deputy socket path (see [`crate::policy::DEPUTY_SOCKETS`]).
    pub deputies: Vec<String>,
    /// `egress.proxies`: (address, prefix 128, the port).
    pub proxies: Vec<([u8; 16], u32, PortSet)>,
}

pub fn map_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn port_set(ports: Option<&[(u16, u16)]>) -> Result<PortSet, KernelError> {
    let mut ps = PortSet::default();
    if let Some(ranges) = ports {
        if ranges.len() > MAX_PORT_RANGES {
            return Err(KernelError::PortRanges);
        }
        for (i, (lo, hi)) in ranges.iter().enumerate() {
            ps.ranges[i] = (*lo as u32) << 16 | *hi as u32;
        }
        ps.count = ranges.len() as u32;
    }
    Ok(ps)
}

fn padded<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() >= N {
        return None;
    }
    let mut k = [0u8; N];
    k[..s.len()].copy_from_slice(s.as_bytes());
    Some(k)
}

struct Names<'a> {
    t: &'a mut KernelTables,
    seed: u64,
    errors: Vec<NameError>,
}

impl Names<'_> {
    fn add(&mut self, pattern: &str, mask: u64) {
        let p = pattern.trim_end_matches('.').to_ascii_lowercase();
        let (table, name) = match p.strip_prefix("*.") {
            Some(suffix) => (&mut self.t.suffixes, suffix.to_string()),
            None => (&mut self.t.names, p.clone()),
        };
        if name.contains(['*', '?', '[', '{']) {
            self.errors.push(NameError::Glob(pattern.to_string()));
            return;
        }
        match name_hash(self.seed, &name) {
            Some(h) => match table.iter_mut().find(|(k, _)| *k == h) {
                Some((_, m)) => *m |= mask,
                None => table.push((h, mask)),
            },
            None => self.errors.push(NameError::NotDns(pattern.to_string())),
        }
    }
}

/// `registry_hosts`: the hosts of the policy's registries resolved for this run.
/// Everything `watcher run` checks about a loaded policy before it starts (what `policy check`
/// runs too, so the two never disagree): the kernel tables compile in the policy's mode.
/// Registry hosts and resolvers are only known at run time and are not part of it.
pub fn validate(policy: &Policy) -> Result<(), PolicyError> {
    compile(policy, &[], &[], 0).map(|_| ())
}

/// The kernel tables of `policy`; an error names the policy file (`FILE: message`).
pub fn compile(
    policy: &Policy,
    registry_hosts: &[String],
    system_resolvers: &[IpAddr],
    seed: u64,
) -> Result<KernelTables, PolicyError> {
    tables(policy, registry_hosts, system_resolvers, seed)
        .map_err(|e| PolicyError::unlocated(&policy.source, e.to_string()))
}

fn tables(
    policy: &Policy,
    registry_hosts: &[String],
    system_resolvers: &[IpAddr],
    seed: u64,
) -> Result<KernelTables, KernelError> {
    let spec = policy.spec();
    let mut t = KernelTables { seed, ..Default::default() };
    t.deputies = policy.deputy_sockets().to_vec();
    if policy.mode == Mode::Enforce {
        t.job_flags |= JOB_ENFORCE;
    }
    if policy.shells_denied_in_install_scripts() {
        t.job_flags |= JOB_DENY_SHELLS;
    }
    for (net, ports) in policy.allowed_cidrs() {
        let prefix = match net {
            ipnet::IpNet::V4(n) => 96 + n.prefix_len() as u32,
            ipnet::IpNet::V6(n) => n.prefix_len() as u32,
        };
        t.nets.push((map_key(net.network()), prefix, port_set(ports.as_deref())?));
    }
    for a in policy.proxies() {
        let (key, range) = (map_key(a.ip()), (a.port() as u32) << 16 | a.port() as u32);
        // One kernel entry per address: proxies on several ports of one address share it.
        match t.proxies.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, _, ps)) if (ps.count as usize) < MAX_PORT_RANGES => {
                ps.ranges[ps.count as usize] = range;
                ps.count += 1;
            }
            Some(_) => return Err(KernelError::Proxies(a.ip())),
            None => {
                let mut ps = PortSet { count: 1, ..Default::default() };
                ps.ranges[0] = range;
                t.proxies.push((key, 128, ps));
            }
        }
    }
    for r in &spec.dns.resolvers {
        match r {
            Resolver::System => t.resolvers.extend(system_resolvers.iter().map(|ip| map_key(*ip))),
            Resolver::Ip(ip) => t.resolvers.push(map_key(*ip)),
        }
    }
    let mut names = Names { t: &mut t, seed, errors: Vec::new() };
    let mut entries: Vec<(String, PortSet)> = Vec::new();
    for e in &spec.egress.allow {
        if let Target::Host(h) = &e.target {
            let ports: Option<Vec<(u16, u16)>> = e.ports.as_ref().map(|v| v.iter().map(|r| (r.start, r.end)).collect());
            entries.push((h.as_str().to_string(), port_set(ports.as_deref())?));
        }
    }
    for h in registry_hosts {
        match h.parse::<IpAddr>() {
            Ok(ip) => names.t.nets.push((map_key(ip), 128, PortSet::default())),
            Err(_) => entries.push((h.clone(), PortSet::default())),
        }
    }
    if entries.len() > MAX_HOST_ENTRIES as usize {
        return Err(KernelError::Hosts);
    }
    for (i, (pattern, ports)) in entries.iter().enumerate() {
        names.add(pattern, (1u64 << i) | DNS_MASK_LOOKUP);
        names.t.host_ports.push(*ports);
    }
    for h in &spec.dns.allow {
        names.add(h.as_str(), DNS_MASK_LOOKUP);
    }
    let errors = std::mem::take(&mut names.errors);
    if policy.mode == Mode::Enforce && !errors.is_empty() {
        return Err(KernelError::Names(errors));
    }
    // Executables: plain names are killed at exec entry; shells only inside install scripts.
    for p in &spec.exec.deny {
        let s = p.as_str();
        if !s.contains(['/', '*', '?', '[', '{'])
            && let Some(k) = padded::<EXEC_NAME_LEN>(s)
        {
            t.exec_rules.push((k, EXEC_DENY));
        }
    }
    for sh in SHELLS {
        if let Some(k) = padded::<EXEC_NAME_LEN>(sh) {
            match t.exec_rules.iter_mut().find(|(n, _)| *n == k) {
                Some((_, f)) => *f |= EXEC_SHELL,
                None => t.exec_rules.push((k, EXEC_SHELL)),
            }
        }
    }
    Ok(t)
}

/// The environment entries that mark the start of an install script (the kernel sets
/// PROC_INSTALL from them; the file sensor judges only install scripts).
pub fn install_markers() -> Vec<([u8; ENV_NAME_LEN], u32)> {
    NPM_INSTALL_MARKERS.iter().filter_map(|m| padded::<ENV_NAME_LEN>(m)).map(|k| (k, ENV_FLAG_INSTALL)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel looks a marker up only for an entry whose name it captures
    /// (exec.rs `env_step`): every marker's name must be captured.
    #[test]
    fn every_install_marker_is_a_captured_variable() {
        for m in NPM_INSTALL_MARKERS {
            let name = m.split('=').next().unwrap();
            assert!(crate::sensor::CAPTURED_ENV.iter().any(|(n, _)| *n == name), "{m}: {name} is not captured");
        }
    }

    fn pol(yaml: &str) -> Policy {
        crate::policy::parse_str("t.yaml", yaml).unwrap()
    }

    #[test]
    fn hosts_become_name_and_suffix_hashes_with_ports() {
        let p = pol(
            "version: 1\npipeline: t\nmode: enforce\negress:\n  allow:\n    - host: a.test\n      ports: [443, 8000-8100]\n    - host: \"*.cdn.test\"\ndns:\n  resolvers: [127.0.0.53]\n  allow: [only-dns.test]\n",
        );
        let t = compile(&p, &["reg.test".into()], &[], 7).unwrap();
        assert_eq!(t.job_flags & JOB_ENFORCE, JOB_ENFORCE);
        let h = |n: &str| name_hash(7, n).unwrap();
        let names: std::collections::HashMap<u64, u64> = t.names.iter().copied().collect();
        let sufs: std::collections::HashMap<u64, u64> = t.suffixes.iter().copied().collect();
        assert_eq!(names[&h("a.test")], 1 | DNS_MASK_LOOKUP);
        assert_eq!(sufs[&h("cdn.test")], 2 | DNS_MASK_LOOKUP);
        assert_eq!(names[&h("reg.test")], 4 | DNS_MASK_LOOKUP);
        assert_eq!(names[&h("only-dns.test")], DNS_MASK_LOOKUP);
        assert!(!names.contains_key(&h("cdn.test")), "*.cdn.test does not allow cdn.test itself");

        assert!(t.host_ports[0].contains(443) && t.host_ports[0].contains(8050) && !t.host_ports[0].contains(80));
        assert!(t.host_ports[1].contains(1));
        assert_eq!(t.resolvers, vec![map_key("127.0.0.53".parse().unwrap())]);
        // loopback is not allowed by default (only registries, resolvers and allow entries)
        assert!(!t.nets.iter().any(|(a, p, _)| *p == 104 && a[12] == 127));
    }

    #[test]
    fn deputies_are_extended_and_narrowed_by_the_policy_and_proxies_are_tables_of_their_own() {
        let p = pol(
            "version: 1\npipeline: t\negress:\n  proxies: [\"127.0.0.1:3128\"]\n  deputies:\n    add: [/srv/agent.sock, \"@ctl\"]\n    remove: [/run/docker.sock]\n",
        );
        let t = compile(&p, &[], &[], 1).unwrap();
        assert!(t.deputies.contains(&"/srv/agent.sock".to_string()) && t.deputies.contains(&"@ctl".to_string()));
        assert!(!t.deputies.contains(&"/run/docker.sock".to_string()));
        assert!(t.deputies.contains(&"/var/run/docker.sock".to_string()), "only what is named is removed");
        assert!(p.is_deputy("/srv/agent.sock") && !p.is_deputy("/run/docker.sock"));
        let key = map_key("127.0.0.1".parse().unwrap());
        assert_eq!(t.proxies.len(), 1);
        assert!(t.proxies[0].0 == key && t.proxies[0].2.contains(3128) && !t.proxies[0].2.contains(80));
        assert!(t.nets.iter().any(|(a, pre, ports)| *a == key && *pre == 128 && ports.contains(3128)), "reachable");
        assert!(p.is_proxy("::ffff:127.0.0.1".parse().unwrap(), 3128) && !p.is_proxy("127.0.0.1".parse().unwrap(), 80));
        for bad in ["add: [relative.sock]", "remove: [/run/nope.sock]"] {
            let y = format!("version: 1\npipeline: t\negress:\n  deputies:\n    {bad}\n");
            let e = crate::policy::parse_str("t.yaml", &y).unwrap_err().to_string();
            assert!(e.contains("egress.deputies") && e.contains("t.yaml"), "{e}");
        }
    }

    #[test]
    fn name_hash_is_case_insensitive_and_seeded() {
        assert_eq!(name_hash(1, "A.Test"), name_hash(1, "a.test"));
        assert_eq!(name_hash(1, "a.test."), name_hash(1, "a.test"));
        assert_ne!(name_hash(1, "a.test"), name_hash(2, "a.test"));
        assert_ne!(name_hash(1, "ab.test"), name_hash(1, "a.btest"));
    }

    #[test]
    fn unenforceable_patterns_are_refused_in_enforce_mode_only() {
        let y = "version: 1\npipeline: t\nmode: MODE\negress:\n  allow:\n    - host: \"reg-*.test\"\n";
        let e = compile(&pol(&y.replace("MODE", "enforce")), &[], &[], 1).unwrap_err();
        assert!(e.message.contains("reg-*.test"), "{e}");
        assert!(compile(&pol(&y.replace("MODE", "audit")), &[], &[], 1).is_ok());
    }

    #[test]
    fn exec_rules_deny_plain_names_and_mark_shells() {
        let p = pol("version: 1\npipeline: t\nexec:\n  deny: [nc, sh, \"/tmp/**\"]\n");
        let t = compile(&p, &[], &[], 1).unwrap();
        let get = |n: &str| t.exec_rules.iter().find(|(k, _)| *k == padded::<EXEC_NAME_LEN>(n).unwrap()).map(|r| r.1);
        assert_eq!(get("nc"), Some(EXEC_DENY));
        assert_eq!(get("sh"), Some(EXEC_DENY | EXEC_SHELL));
        assert_eq!(get("bash"), Some(EXEC_SHELL));
        assert_eq!(get("tmp"), None);
    }
}
