//! Reports people act on: alerts grouped by rule and package (with exact counts), and for
//! each group what to do next: the policy lines that would allow what was flagged, or, where
//! allowing it would be dangerous (a shell from an install script, a secret leaving, an
//! address no DNS answer explains, a resolver of the step's own choosing), why not, marked
//! risky. Every output format renders these same groups and steps.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use super::model::{AlertAt, Report, Subject};
use crate::engine;

/// Distinct subjects kept per group (the count stays exact past it).
pub const MAX_SUBJECTS: usize = 64;

/// Alerts with the same rule and package.
#[derive(Debug)]
pub struct Group<'a> {
    pub rule: &'a str,
    pub package: Option<&'a str>,
    /// The highest severity in the group.
    pub severity: &'a str,
    pub actions: BTreeSet<&'a str>,
    pub count: usize,
    /// The first alert of the group (its message is the example shown).
    pub first: &'a AlertAt,
    /// Up to [`MAX_SUBJECTS`] distinct subjects, with how many alerts each.
    pub subjects: BTreeMap<&'a Subject, usize>,
    /// Alerts whose subject is not among `subjects` (past the cap, or unknown).
    pub other_subjects: usize,
    /// The quickest alert after its install script started (ns).
    pub since_script: Option<u64>,
}

pub fn severity_rank(s: &str) -> u8 {
    match s {
        "critical" => 4,
        "high" => 3,
        "medium" => 2,
        "low" => 1,
        _ => 0,
    }
}

/// The alerts of a report grouped by rule and package: most severe first, then the biggest.
pub fn groups(r: &Report) -> Vec<Group<'_>> {
    let mut by: BTreeMap<(&str, Option<&str>), Group> = BTreeMap::new();
    for a in &r.alerts {
        let al = &a.alert;
        let g = by.entry((al.rule.as_str(), al.package.as_deref())).or_insert_with(|| Group {
            rule: &al.rule,
            package: al.package.as_deref(),
            severity: &al.severity,
            actions: BTreeSet::new(),
            count: 0,
            first: a,
            subjects: BTreeMap::new(),
            other_subjects: 0,
            since_script: None,
        });
        g.count += 1;
        if severity_rank(&al.severity) > severity_rank(g.severity) {
            g.severity = &al.severity;
        }
        g.actions.insert(&al.action);
        match &a.subject {
            Some(s) if g.subjects.contains_key(s) || g.subjects.len() < MAX_SUBJECTS => {
                *g.subjects.entry(s).or_default() += 1
            }
            _ => g.other_subjects += 1,
        }
        if let Some(ns) = r.since_install_script(al) {
            g.since_script = Some(g.since_script.map_or(ns, |m: u64| m.min(ns)));
        }
    }
    let mut v: Vec<Group> = by.into_values().collect();
    v.sort_by(|a, b| {
        severity_rank(b.severity)
            .cmp(&severity_rank(a.severity))
            .then(b.count.cmp(&a.count))
            .then(a.rule.cmp(b.rule))
            .then(a.package.cmp(&b.package))
    });
    v
}

/// One thing to do about a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub rule: String,
    /// The packages whose install scripts did it (empty: the step itself).
    pub packages: Vec<String>,
    /// What it is about (escaped on display).
    pub subject: String,
    /// Allowing it would be dangerous: the text says why, and no policy line is offered
    /// silently (a `RISKY` entry's lines are shown as what it would take, never merged into
    /// the suggested fragment).
    pub risky: bool,
    /// What to do, one sentence (plain text; untrusted parts escaped by the renderer are the
    /// subject and the package, which are not repeated here).
    pub advice: String,
    /// The policy YAML (paths from the top: `egress.allow`, `dns.allow`, ...) that would allow
    /// it.
    pub policy: Vec<PolicyLine>,
}

/// One entry to add to a policy list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PolicyLine {
    /// `egress.allow: - host: NAME` with `ports: [PORT]`.
    Host { host: String, port: u16 },
    /// `egress.allow: - ip: IP` with `ports: [PORT]`.
    Ip { ip: IpAddr, port: u16 },
    /// `dns.allow: [NAME]`.
    DnsName(String),
    /// `dns.resolvers: [IP]`.
    Resolver(IpAddr),
    /// `exec.install_scripts.shells: allow`.
    Shells,
}

impl PolicyLine {
    /// On one line, with its path: `egress.allow: [{ip: 1.2.3.4, ports: [443]}]`.
    pub fn inline(&self) -> String {
        match self {
            PolicyLine::Host { host, port } => format!("egress.allow: [{{host: {}, ports: [{port}]}}]", quote(host)),
            PolicyLine::Ip { ip, port } => format!("egress.allow: [{{ip: {ip}, ports: [{port}]}}]"),
            PolicyLine::DnsName(n) => format!("dns.allow: [{}]", quote(n)),
            PolicyLine::Resolver(ip) => format!("dns.resolvers: [system, {ip}]"),
            PolicyLine::Shells => "exec.install_scripts.shells: allow".into(),
        }
    }

    /// As YAML below its section, e.g. `egress:\n  allow:\n    - host: "x"\n      ports: [443]`.
    pub fn yaml(&self) -> String {
        yaml_fragment(std::slice::from_ref(self))
    }
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The policy lines as one YAML fragment, merged by section.
pub fn yaml_fragment(lines: &[PolicyLine]) -> String {
    let mut hosts: BTreeMap<&str, BTreeSet<u16>> = BTreeMap::new();
    let mut ips: BTreeMap<IpAddr, BTreeSet<u16>> = BTreeMap::new();
    let mut names = BTreeSet::new();
    let mut resolvers = BTreeSet::new();
    let mut shells = false;
    for l in lines {
        match l {
            PolicyLine::Host { host, port } => {
                hosts.entry(host).or_default().insert(*port);
            }
            PolicyLine::Ip { ip, port } => {
                ips.entry(*ip).or_default().insert(*port);
            }
            PolicyLine::DnsName(n) => {
                names.insert(n.as_str());
            }
            PolicyLine::Resolver(ip) => {
                resolvers.insert(*ip);
            }
            PolicyLine::Shells => shells = true,
        }
    }
    let ports = |p: &BTreeSet<u16>| p.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
    let mut s = String::new();
    if !hosts.is_empty() || !ips.is_empty() {
        s.push_str("egress:\n  allow:\n");
        for (h, p) in &hosts {
            s.push_str(&format!("    - host: {}\n      ports: [{}]\n", quote(h), ports(p)));
        }
        for (ip, p) in &ips {
            s.push_str(&format!("    - ip: {ip}\n      ports: [{}]\n", ports(p)));
        }
    }
    if !names.is_empty() || !resolvers.is_empty() {
        s.push_str("dns:\n");
        if !resolvers.is_empty() {
            let r: Vec<String> = resolvers.iter().map(IpAddr::to_string).collect();
            s.push_str(&format!("  resolvers: [system, {}]\n", r.join(", ")));
        }
        if !names.is_empty() {
            let n: Vec<String> = names.iter().map(|n| quote(n)).collect();
            s.push_str(&format!("  allow: [{}]\n", n.join(", ")));
        }
    }
    if shells {
        s.push_str("exec:\n  install_scripts:\n    shells: allow\n");
    }
    s
}

/// A name a policy can carry as a host or DNS name: letters, digits, `-`, `_`, `.`.
fn plain_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !n.starts_with('.')
}

/// A name that looks like it carries data: a long label (encoded bytes), as exfiltration
/// through DNS names does.
fn data_like(n: &str) -> bool {
    n.split('.').any(|l| l.len() >= 32)
}

/// Steps for every group, in group order: one per rule and subject (with the same advice),
/// naming every package it concerns, at most [`MAX_SUBJECTS`] per group.
pub fn steps(r: &Report, groups: &[Group]) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    let mut index: BTreeMap<(String, String, bool, Vec<PolicyLine>), usize> = BTreeMap::new();
    for g in groups {
        let subjects: Vec<Option<&Subject>> =
            if g.subjects.is_empty() { vec![None] } else { g.subjects.keys().map(|s| Some(*s)).collect() };
        for subj in subjects {
            let step = step_for(r, g, subj);
            let key = (step.rule.clone(), step.subject.clone(), step.risky, step.policy.clone());
            match index.get(&key) {
                Some(&i) => {
                    let packages = &mut out[i].packages;
                    for p in step.packages {
                        if !packages.contains(&p) {
                            packages.push(p);
                        }
                    }
                }
                None => {
                    index.insert(key, out.len());
                    out.push(step);
                }
            }
        }
    }
    out
}

/// Packages as one short phrase: the first three, then how many more.
pub fn packages_text(packages: &[String], show: impl Fn(&str) -> String) -> String {
    let mut v: Vec<String> = packages.iter().take(3).map(|p| show(p)).collect();
    if packages.len() > 3 {
        v.push(format!("{} more", packages.len() - 3));
    }
    v.join(", ")
}

fn step_for(r: &Report, g: &Group, subj: Option<&Subject>) -> Step {
    let packages: Vec<String> = g.package.map(str::to_string).into_iter().collect();
    let subject = subj.map(Subject::text).unwrap_or_default();
    let mk = |risky: bool, advice: String, policy: Vec<PolicyLine>| Step {
        rule: g.rule.to_string(),
        packages: packages.clone(),
        subject: subject.clone(),
        risky,
        advice,
        policy,
    };
    let from = match g.package {
        Some(_) => "the package",
        None => "the step",
    };
    match (g.rule, subj) {
        (engine::RULE_EGRESS, Some(Subject::Dest { ip, port, .. })) => {
            let names: Vec<&str> = r.names_for(ip).into_iter().filter(|n| plain_name(n) && !data_like(n)).collect();
            if !names.is_empty() {
                mk(
                    false,
                    format!("if {from} needs this destination, allow its host name on port {port}"),
                    names.iter().map(|n| PolicyLine::Host { host: n.to_string(), port: *port }).collect(),
                )
            } else {
                mk(
                    true,
                    "no DNS answer gave this address: allowing it takes an `ip:` entry; add one only if you know \
                     who runs that address and why the build talks to it"
                        .into(),
                    vec![PolicyLine::Ip { ip: *ip, port: *port }],
                )
            }
        }
        (engine::RULE_DNS_NAME, Some(Subject::Dns { qname, .. })) => {
            if !plain_name(qname) || data_like(qname) {
                mk(
                    true,
                    "the name looks like data encoded into a DNS query (a long or unusual label): do not allow it; \
                     find out what the package sends"
                        .into(),
                    Vec::new(),
                )
            } else {
                mk(
                    false,
                    format!(
                        "if {from} needs to look this name up, allow it (connections to it need an `egress.allow` host entry too)"
                    ),
                    vec![PolicyLine::DnsName(qname.to_ascii_lowercase())],
                )
            }
        }
        (engine::RULE_DNS_RESOLVER, Some(Subject::Dns { server: ip, .. } | Subject::Dest { ip, .. })) => mk(
            true,
            "a step that picks its own DNS server escapes the resolver the policy watches: fix the tool's \
             configuration rather than allowing the server"
                .into(),
            vec![PolicyLine::Resolver(*ip)],
        ),
        (engine::RULE_DNS_MALFORMED, _) => mk(
            true,
            "data that is not DNS went to port 53, a common way to tunnel data out: there is nothing to allow; \
             find what sent it"
                .into(),
            Vec::new(),
        ),
        (engine::RULE_EXEC, _) => mk(
            false,
            "the policy's `exec.deny` names this program: if the build needs it, remove that pattern from \
             `exec.deny` (or narrow it); otherwise find what ran it"
                .into(),
            Vec::new(),
        ),
        (engine::RULE_SHELL, _) => mk(
            true,
            match g.package {
                Some(_) => "an install script started a shell, the usual first step of install-time malware: \
                     `shells: allow` would let every package's script do it. Prefer removing or pinning the \
                     package, or installing it with its scripts disabled (`npm ci --ignore-scripts` and an \
                     explicit rebuild of the packages you trust)"
                    .into(),
                None => "an install script started a shell: `shells: allow` would let every package's script \
                     do it; find the package first"
                    .into(),
            },
            vec![PolicyLine::Shells],
        ),
        (engine::RULE_SECRET, _) => mk(
            true,
            format!(
                "the value of {} left the machine: never allow this. Rotate the secret now, then remove the \
                 package that sent it",
                g.first.alert.variable.as_deref().unwrap_or("a protected variable")
            ),
            Vec::new(),
        ),
        (engine::RULE_LOSS, _) => mk(
            false,
            "the kernel lost events, so the step cannot be vouched for: give `watcher run` a bigger \
             `--ringbuf-size` (the default is 2M; a daemon's `watcher daemon --ringbuf-size`, 8M by default), \
             or reduce the step's process churn"
                .into(),
            Vec::new(),
        ),
        _ => mk(false, "review the alert".into(), Vec::new()),
    }
}

/// The policy lines of the steps that are not risky, merged: what to add to the policy to
/// allow everything that is safe to allow.
pub fn safe_fragment(steps: &[Step]) -> String {
    let lines: Vec<PolicyLine> = steps.iter().filter(|s| !s.risky).flat_map(|s| s.policy.iter().cloned()).collect();
    yaml_fragment(&lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Alert, Connect, Dns, Event, Proc, Proto, Ts};

    fn alert(rule: &str, pid: u32, package: Option<&str>) -> Alert {
        Alert {
            ts: Ts(0),
            rule: rule.into(),
            action: "flag".into(),
            severity: "high".into(),
            pid,
            package: package.map(str::to_string),
            message: format!("{rule} by {pid}"),
            variable: None,
            redacted: None,
        }
    }

    fn dns(qname: &str, answers: &[&str]) -> Event {
        Event::Dns(Dns {
            ts: Ts(0),
            proc: Proc { pid: 9, ..Default::default() },
            qname: qname.into(),
            qtype: "A".into(),
            server: "127.0.0.53".parse().unwrap(),
            server_port: 53,
            proto: Proto::Udp,
            id: 1,
            rcode: Some("NOERROR".into()),
            answers: Some(answers.iter().map(|a| a.parse().unwrap()).collect()),
            cnames: vec![],
            error: None,
            payload_len: 30,
            allowed: true,
            secrets: vec![],
        })
    }

    fn connect(ip: &str, port: u16) -> Event {
        Event::Connect(Connect {
            ts: Ts(0),
            proc: Proc { pid: 9, ..Default::default() },
            daddr: ip.parse().unwrap(),
            dport: port,
            proto: Proto::Tcp,
            op: "connect".into(),
            allowed: true,
        })
    }

    #[test]
    fn groups_count_exactly_and_steps_give_policy_lines() {
        let mut r = Report::default();
        r.add(&dns("cdn.example.test", &["198.51.100.7"]));
        for port in [443, 443, 8443] {
            r.add(&connect("198.51.100.7", port));
            r.add_alert(alert("egress-denied", 9, Some("npm:a@1.0.0 (postinstall)")), None);
        }
        r.add(&connect("203.0.113.9", 443));
        r.add_alert(alert("egress-denied", 9, Some("npm:a@1.0.0 (postinstall)")), None);
        r.add(&dns("x.example.test", &[]));
        r.add_alert(alert("dns-denied", 10, None), None);
        let g = groups(&r);
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].rule, g[0].count, g[0].subjects.len()), ("egress-denied", 4, 3));
        assert_eq!(g.iter().map(|g| g.count).sum::<usize>(), r.alerts.len());
        let s = steps(&r, &g);
        let frag = safe_fragment(&s);
        assert_eq!(
            frag,
            "egress:\n  allow:\n    - host: \"cdn.example.test\"\n      ports: [443, 8443]\ndns:\n  allow: [\"x.example.test\"]\n"
        );
        let risky: Vec<&Step> = s.iter().filter(|s| s.risky).collect();
        assert_eq!(risky.len(), 1, "{s:?}");
        assert_eq!(risky[0].policy, vec![PolicyLine::Ip { ip: "203.0.113.9".parse().unwrap(), port: 443 }]);
        // The fragment is a valid policy section.
        let policy = format!("version: 1\npipeline: t\n{frag}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.yaml");
        std::fs::write(&f, policy).unwrap();
        crate::policy::load(&f).expect("the suggested lines make a valid policy");
    }

    #[test]
    fn risky_things_are_never_in_the_fragment() {
        let mut r = Report::default();
        r.add(&dns("4a5b6c7d8e9f4a5b6c7d8e9f4a5b6c7d8e9f.x.test", &[]));
        r.add_alert(alert("dns-denied", 9, Some("npm:e@1 (postinstall)")), None);
        r.add_alert(alert("secret-exfil", 9, Some("npm:e@1 (postinstall)")), None);
        r.add(&Event::Exec(crate::event::Exec {
            ts: Ts(0),
            proc: Proc { pid: 11, ..Default::default() },
            filename: "/bin/sh".into(),
            argv: vec!["sh".into()],
            argv_truncated: false,
            argv_redacted: false,
            cgroup_id: 0,
            env: Default::default(),
            killed: false,
            shell: false,
            cwd: None,
            held: false,
            script: false,
            facts: None,
        }));
        r.add_alert(alert("shell-from-install-script", 11, Some("npm:e@1 (postinstall)")), None);
        let g = groups(&r);
        let s = steps(&r, &g);
        assert!(s.iter().all(|s| s.risky), "{s:?}");
        assert_eq!(safe_fragment(&s), "");
        assert!(s.iter().any(|s| s.rule == "secret-exfil" && s.policy.is_empty() && s.advice.contains("Rotate")));
    }

    #[test]
    fn subjects_are_capped_but_counts_stay_exact() {
        let mut r = Report::default();
        for port in 1..=200u16 {
            r.add(&connect("203.0.113.9", port));
            r.add_alert(alert("egress-denied", 9, None), None);
        }
        let g = groups(&r);
        assert_eq!(g[0].count, 200);
        assert_eq!(g[0].subjects.len(), MAX_SUBJECTS);
        assert_eq!(g[0].subjects.values().sum::<usize>() + g[0].other_subjects, 200);
    }
}
