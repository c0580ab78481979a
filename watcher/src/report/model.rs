//! What a report says, collected from the events of one step (live or replayed). Every output
//! format (text, JSON, Markdown, SARIF) renders this one model, so they cannot disagree.
//!
//! Memory is bounded by what the step did, not by how long its log is: per process id, per
//! destination, per DNS name and per alert (a recycled pid reuses its entry).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use crate::{
    event::{Alert, Event, PolicyInfo, Proto, Ts},
    exitcode,
    proctree::{ProcTree, basename},
};

/// What the tree does not know about a process: when it was first seen (display order) and
/// what it did.
#[derive(Clone, Debug, Default)]
pub struct ProcStats {
    pub order: u64,
    pub connects: u32,
    pub dns: u32,
    pub alerts: u32,
    pub exit_code: Option<i32>,
    pub killed: bool,
    /// When the process last exec'd: for an install script's first process, when the script
    /// started (alerts say how long after that they came).
    pub exec_ts: Option<Ts>,
}

#[derive(Clone, Debug, Default)]
pub struct Destination {
    pub count: u64,
    pub denied: u64,
    pub pids: BTreeSet<u32>,
}

#[derive(Clone, Debug, Default)]
pub struct DnsName {
    pub qtypes: BTreeSet<String>,
    pub answers: BTreeSet<IpAddr>,
    pub rcodes: BTreeSet<String>,
    pub queries: u64,
    pub denied: u64,
}

/// An alert and the log line it was raised at (the event that caused it in a replay, the
/// alert record itself in a live log).
#[derive(Clone, Debug)]
pub struct AlertAt {
    pub alert: Alert,
    pub line: Option<u64>,
    /// What the event that raised it was about (a destination, a DNS name, a program).
    pub subject: Option<Subject>,
}

/// What an alert is about, taken from the event that raised it (the one just before the
/// alert: the engine judges each event as it is logged). Advice and grouping use it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subject {
    /// A connection or a first data packet.
    Dest { ip: IpAddr, port: u16, proto: Proto },
    /// A DNS query (or a non-DNS payload to port 53 when `error`).
    Dns { qname: String, server: IpAddr, error: bool },
    /// An executed program.
    Exec { filename: String },
    /// Lost events of one source.
    Loss { source: String },
}

impl Subject {
    fn of(e: &Event) -> Option<Subject> {
        Some(match e {
            Event::Connect(x) => Subject::Dest { ip: x.daddr, port: x.dport, proto: x.proto },
            Event::Send(x) => Subject::Dest { ip: x.daddr, port: x.dport, proto: x.proto },
            Event::Dns(x) => Subject::Dns { qname: x.qname.clone(), server: x.server, error: x.error.is_some() },
            Event::Exec(x) => Subject::Exec { filename: x.filename.clone() },
            Event::Loss(x) => Subject::Loss { source: x.source.clone() },
            _ => return None,
        })
    }

    /// One short line naming it (untrusted text: escape before display).
    pub fn text(&self) -> String {
        match self {
            Subject::Dest { ip, port, proto } => match ip {
                IpAddr::V6(_) => format!("[{ip}]:{port}/{}", proto.as_str()),
                IpAddr::V4(_) => format!("{ip}:{port}/{}", proto.as_str()),
            },
            Subject::Dns { error: true, server, .. } => format!("port 53 of {server}"),
            Subject::Dns { qname, .. } => qname.clone(),
            Subject::Exec { filename } => filename.clone(),
            Subject::Loss { source } => format!("{source} events"),
        }
    }
}

#[derive(Default, Debug)]
pub struct Report {
    /// The log the report is about (replay), or the log a run wrote.
    pub log: Option<String>,
    pub watcher: Option<String>,
    pub command: Vec<String>,
    /// The policy the verdicts come from (mode as applied), if any.
    pub policy: Option<PolicyInfo>,
    /// Registry hosts that a file of the step's checkout named (from the start record).
    pub workspace_registries: Vec<crate::probe::RegistrySource>,
    pub tree: ProcTree,
    /// The tree is the engine's (replay hands it over at the end): do not build a second one.
    pub engine_tree: bool,
    pub procs: HashMap<u32, ProcStats, foldhash::fast::RandomState>,
    /// Display order of the next new process.
    pub seq: u64,
    pub execs: u64,
    pub destinations: BTreeMap<(IpAddr, u16, Proto), Destination>,
    pub dns: BTreeMap<String, DnsName>,
    pub dns_queries: u64,
    /// Address -> the names whose answers gave it.
    pub answered: HashMap<IpAddr, BTreeSet<String>>,
    /// DNS servers queries went to (explains connections to port 53).
    pub dns_servers: BTreeSet<IpAddr>,
    pub lost: BTreeMap<String, u64>,
    pub alerts: Vec<AlertAt>,
    /// The command's exit code (the `end` record).
    pub exit_code: Option<i32>,
    /// What watcher exits with (run: the command's code or 77/78; replay: 0 or 77).
    pub watcher_exit: Option<i32>,
    pub first_ts: Option<Ts>,
    pub last_ts: Option<Ts>,
    /// Events read or written.
    pub events: u64,
    /// Replay: why the log cannot be vouched for (no end record, cut short, losses not
    /// accounted for, unknown schema); the verdict is then at best `incomplete`.
    pub incomplete: Option<String>,
    /// What the last event was about: the subject of the alerts it raises.
    pub last_subject: Option<Subject>,
    /// The step's working directory: the first exec's `cwd` (manifests and lockfiles are
    /// looked for from there).
    pub step_cwd: Option<String>,
    /// Working directory of each install script's first process (npm runs a package's
    /// scripts in its directory: `node_modules/a/node_modules/b`), by pid.
    pub script_cwd: HashMap<u32, String>,
}

/// The one-word outcome of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing flagged, nothing lost.
    Clean,
    /// Audit mode: the policy flags something.
    Flagged,
    /// Enforce mode: something was denied, killed or seen that the policy forbids.
    Violation,
    /// Nothing flagged, but the kernel lost events: the step cannot be vouched for.
    Incomplete,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Flagged => "flagged",
            Verdict::Violation => "violation",
            Verdict::Incomplete => "incomplete",
        }
    }
}

impl Report {
    fn stats(&mut self, pid: u32) -> &mut ProcStats {
        let seq = &mut self.seq;
        self.procs.entry(pid).or_insert_with(|| {
            *seq += 1;
            ProcStats { order: *seq, ..Default::default() }
        })
    }

    /// Take one event into account. Alerts go through [`Report::add_alert`] when their line is
    /// known; here they count as the line they are on.
    pub fn add(&mut self, e: &Event) {
        self.events += 1;
        let ts = e.ts();
        if self.first_ts.is_none() {
            self.first_ts = Some(ts);
        }
        self.last_ts = Some(ts);
        if !matches!(e, Event::Alert(_)) {
            self.last_subject = Subject::of(e);
        }
        match e {
            Event::Start(s) => {
                self.watcher = Some(s.watcher.clone());
                self.command = s.command.clone();
                if self.policy.is_none() {
                    self.policy = s.policy.clone();
                }
                self.workspace_registries = s.registry_sources.iter().filter(|r| r.workspace).cloned().collect();
            }
            Event::Exec(x) => {
                self.execs += 1;
                if !self.engine_tree {
                    self.tree.on_event(e);
                }
                if let Some(cwd) = &x.cwd {
                    if self.step_cwd.is_none() {
                        self.step_cwd = Some(cwd.clone());
                    }
                    if x.env.contains_key("npm_lifecycle_event") && self.script_cwd.len() < 4096 {
                        self.script_cwd.insert(x.proc.pid, cwd.clone());
                    }
                }
                let st = self.stats(x.proc.pid);
                st.killed |= x.killed;
                st.exec_ts = Some(x.ts);
            }
            Event::Fork(x) => {
                // A recycled pid is a new process.
                let seq = self.seq + 1;
                self.seq = seq;
                self.procs.insert(x.proc.pid, ProcStats { order: seq, ..Default::default() });
                if !self.engine_tree {
                    self.tree.on_event(e);
                }
            }
            Event::Exit(x) => {
                if !self.engine_tree {
                    self.tree.on_event(e);
                }
                self.stats(x.proc.pid).exit_code = x.exit_code;
            }
            Event::Connect(x) => {
                let d = self.destinations.entry((x.daddr, x.dport, x.proto)).or_default();
                d.count += 1;
                if !x.allowed {
                    d.denied += 1;
                }
                if d.pids.len() < 64 {
                    d.pids.insert(x.proc.pid);
                }
                self.stats(x.proc.pid).connects += 1;
            }
            Event::Dns(x) => {
                self.dns_queries += 1;
                self.dns_servers.insert(x.server);
                self.stats(x.proc.pid).dns += 1;
                let name =
                    if x.error.is_some() { format!("<non-DNS payload to {}>", x.server) } else { x.qname.clone() };
                if !self.dns.contains_key(&name) {
                    self.dns.insert(name.clone(), DnsName::default());
                }
                let entry = self.dns.get_mut(&name).expect("inserted above");
                entry.queries += 1;
                if !x.allowed {
                    entry.denied += 1;
                }
                if !entry.qtypes.contains(&x.qtype) {
                    entry.qtypes.insert(x.qtype.clone());
                }
                if let Some(rc) = &x.rcode
                    && !entry.rcodes.contains(rc)
                {
                    entry.rcodes.insert(rc.clone());
                }
                if let Some(a) = &x.answers {
                    for ip in a {
                        entry.answers.insert(*ip);
                        let names = self.answered.entry(*ip).or_default();
                        if !names.contains(&name) {
                            names.insert(name.clone());
                        }
                    }
                }
            }
            Event::Loss(x) => *self.lost.entry(x.source.clone()).or_default() += x.count,
            Event::Alert(a) => {
                let line = self.events;
                self.add_alert(a.clone(), Some(line));
            }
            Event::End(x) => self.exit_code = x.exit_code,
            Event::Send(_) | Event::Socket(_) | Event::Tamper(_) | Event::Unix(_) | Event::File(_) => {}
        }
    }

    /// An alert the engine raised at log line `line`.
    pub fn add_alert(&mut self, a: Alert, line: Option<u64>) {
        self.stats(a.pid).alerts += 1;
        let subject = self.last_subject.clone();
        self.alerts.push(AlertAt { alert: a, line, subject });
    }

    /// How long after its install script started an alert came, in nanoseconds: from the
    /// exec of the script's first process (npm's `sh -c`, a build script, pip's build hook) to
    /// the event that raised the alert. None when the alert is not about an install script.
    pub fn since_install_script(&self, a: &Alert) -> Option<u64> {
        let (script, _) = self.tree.install_script(a.pid)?;
        let start = self.procs.get(&script)?.exec_ts?;
        Some(a.ts.0.saturating_sub(start.0))
    }

    /// The quickest detection: the smallest [`Report::since_install_script`] over all alerts.
    pub fn first_alert_after_install_script(&self) -> Option<u64> {
        self.alerts.iter().filter_map(|a| self.since_install_script(&a.alert)).min()
    }

    pub fn lost_total(&self) -> u64 {
        self.lost.values().sum()
    }

    pub fn enforce(&self) -> bool {
        self.policy.as_ref().is_some_and(|p| p.mode == "enforce")
    }

    pub fn verdict(&self) -> Verdict {
        if !self.alerts.is_empty() {
            if self.enforce() { Verdict::Violation } else { Verdict::Flagged }
        } else if self.lost_total() > 0 || self.incomplete.is_some() {
            Verdict::Incomplete
        } else {
            Verdict::Clean
        }
    }

    /// What replay exits with for this log: 77 for alerts, 78 when incomplete, else 0.
    pub fn replay_exit(&self) -> i32 {
        match self.verdict() {
            Verdict::Flagged | Verdict::Violation => exitcode::POLICY_VIOLATION,
            Verdict::Incomplete => exitcode::EVENTS_LOST,
            Verdict::Clean => 0,
        }
    }

    /// The package whose install script `pid` works for (`npm:left-pad@1.3.0 (postinstall)`).
    pub fn package(&self, pid: u32) -> Option<String> {
        self.tree.install_script(pid).map(|(_, a)| a.label())
    }

    /// Why a destination was contacted, as far as DNS tells: the names whose answers gave the
    /// address, `DNS server` for a resolver, or None.
    pub fn explain(&self, ip: &IpAddr, port: u16) -> Option<String> {
        let names = self.names_for(ip);
        if !names.is_empty() {
            Some(names.join(", "))
        } else if port == 53 && self.dns_servers.contains(ip) {
            Some("DNS server".into())
        } else {
            None
        }
    }

    /// The names whose DNS answers gave `ip`.
    pub fn names_for(&self, ip: &IpAddr) -> Vec<&str> {
        self.answered.get(ip).map(|s| s.iter().map(String::as_str).collect()).unwrap_or_default()
    }

    /// A process's display name: the program's base name, else its comm.
    pub fn proc_name(&self, pid: u32) -> String {
        match self.tree.get(pid) {
            Some(n) => n.filename.as_deref().map(basename).unwrap_or(&n.comm).to_string(),
            None => String::new(),
        }
    }

    pub fn distinct_names(&self) -> usize {
        self.dns.len()
    }

    /// Counts per rule, for headlines.
    pub fn alerts_by_rule(&self) -> BTreeMap<&str, usize> {
        let mut m = BTreeMap::new();
        for a in &self.alerts {
            *m.entry(a.alert.rule.as_str()).or_default() += 1;
        }
        m
    }
}
