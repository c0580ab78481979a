//! What people read: one line per notable event while a step runs, and the summary at the end.
//! Shared by run, daemon and replay.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use crate::event::{Event, Proto};

/// Make untrusted text (argv, DNS names, comm) safe for one terminal line: control characters
/// are escaped so a hostile package cannot rewrite the screen or forge a line.
pub fn safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// One readable line for an event worth showing while the step runs, or None.
pub fn event_line(e: &Event) -> Option<String> {
    match e {
        Event::Exec(x) => {
            let argv = x.argv.iter().map(|a| safe(a)).collect::<Vec<_>>().join(" ");
            Some(format!("exec    {} [{}←{}] {}", safe(&x.filename), x.proc.pid, x.proc.ppid, shorten(&argv, 160)))
        }
        Event::Connect(x) => Some(format!(
            "{} {} {}:{}/{} [{} {}]",
            if x.op == "sendto" { "sendto " } else { "connect" },
            if x.allowed { "→" } else { "✗ denied" },
            x.daddr,
            x.dport,
            x.proto.as_str(),
            x.proc.pid,
            safe(&x.proc.comm)
        )),
        Event::Dns(x) => {
            let what = if let Some(err) = &x.error {
                format!("non-DNS payload to port 53 ({} bytes): {}", x.payload_len, safe(err))
            } else {
                format!("{} {}", safe(&x.qname), x.qtype)
            };
            let answer = match (&x.rcode, &x.answers) {
                (Some(rc), Some(a)) if !a.is_empty() => {
                    format!(" → {}", a.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", "))
                }
                (Some(rc), _) => format!(" → {rc}"),
                _ => " (no answer)".into(),
            };
            Some(format!("dns     {what}{answer} via {} [{} {}]", x.server, x.proc.pid, safe(&x.proc.comm)))
        }
        Event::Send(x) if !x.secrets.is_empty() => Some(format!(
            "send    {}:{}/{} carries {} [{} {}]",
            x.daddr,
            x.dport,
            x.proto.as_str(),
            x.secrets.iter().map(|s| format!("{} ({})", s.variable, s.encoding)).collect::<Vec<_>>().join(", "),
            x.proc.pid,
            safe(&x.proc.comm)
        )),
        Event::Loss(x) => Some(format!("LOST    {} {} events (total {})", x.count, x.source, x.total)),
        Event::Alert(a) => Some(format!(
            "ALERT   {} {} {}{}: {}",
            a.severity,
            a.action,
            a.rule,
            a.package.as_ref().map(|p| format!(" ({p})")).unwrap_or_default(),
            safe(&a.message)
        )),
        _ => None,
    }
}

/// Running totals for the summary.
#[derive(Default, Debug)]
pub struct Summary {
    pub processes: BTreeSet<u32>,
    pub execs: u64,
    /// destination -> (count, denied count)
    pub destinations: BTreeMap<(IpAddr, u16, Proto), (u64, u64)>,
    /// (qname, qtype) -> answers seen
    pub dns: BTreeMap<(String, String), BTreeSet<IpAddr>>,
    pub dns_queries: u64,
    pub lost: BTreeMap<String, u64>,
    pub alerts: u64,
    pub exit_code: Option<i32>,
}

impl Summary {
    pub fn add(&mut self, e: &Event) {
        match e {
            Event::Exec(x) => {
                self.processes.insert(x.proc.pid);
                self.execs += 1;
            }
            Event::Fork(x) => {
                self.processes.insert(x.proc.pid);
            }
            Event::Connect(x) => {
                let d = self.destinations.entry((x.daddr, x.dport, x.proto)).or_default();
                d.0 += 1;
                if !x.allowed {
                    d.1 += 1;
                }
            }
            Event::Dns(x) => {
                self.dns_queries += 1;
                let entry = self.dns.entry((x.qname.clone(), x.qtype.clone())).or_default();
                if let Some(a) = &x.answers {
                    entry.extend(a.iter().copied());
                }
            }
            Event::Loss(x) => {
                *self.lost.entry(x.source.clone()).or_default() += x.count;
            }
            Event::Alert(_) => self.alerts += 1,
            Event::End(x) => self.exit_code = x.exit_code,
            _ => {}
        }
    }

    pub fn lost_total(&self) -> u64 {
        self.lost.values().sum()
    }

    /// The text summary printed at the end of a step.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let names: BTreeSet<&str> = self.dns.keys().map(|(q, _)| q.as_str()).collect();
        s.push_str(&format!(
            "summary: {} processes ({} execs), {} destinations, {} DNS names ({} queries), {} lost events{}\n",
            self.processes.len(),
            self.execs,
            self.destinations.len(),
            names.len(),
            self.dns_queries,
            self.lost_total(),
            if self.alerts > 0 { format!(", {} alerts", self.alerts) } else { String::new() }
        ));
        for ((ip, port, proto), (n, denied)) in &self.destinations {
            s.push_str(&format!(
                "  destination {ip}:{port}/{} ×{n}{}\n",
                proto.as_str(),
                if *denied > 0 { format!(" ({denied} denied)") } else { String::new() }
            ));
        }
        for ((q, t), answers) in &self.dns {
            let a: Vec<String> = answers.iter().map(|i| i.to_string()).collect();
            s.push_str(&format!(
                "  dns {} {t}{}\n",
                safe(q),
                if a.is_empty() { String::new() } else { format!(" → {}", a.join(", ")) }
            ));
        }
        if self.lost_total() > 0 {
            for (src, n) in &self.lost {
                s.push_str(&format!("  LOST {n} {src} events: the kernel could not deliver them\n"));
            }
        }
        s
    }
}
