//! One readable line per notable event while a step runs (stderr of `watcher run`).
use crate::event::Event;

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

pub fn shorten(s: &str, max: usize) -> String {
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
        Event::Socket(x) => Some(format!(
            "socket  {} {} protocol {}{} [{} {}]",
            x.family,
            x.sock_type,
            x.protocol,
            if x.killed { " ✗ killed" } else { "" },
            x.proc.pid,
            safe(&x.proc.comm)
        )),
        Event::Tamper(x) => Some(format!(
            "TAMPER  {} {} target {}{} [{} {}]",
            x.what.as_str(),
            x.arg,
            x.target,
            if x.killed { " ✗ killed" } else { "" },
            x.proc.pid,
            safe(&x.proc.comm)
        )),
        Event::File(x) => Some(format!(
            "FILE    {} {}{}{}{} [{} {}]",
            match x.class {
                crate::event::FileClass::Credential => "credential",
                crate::event::FileClass::Tamper => "tamper",
            },
            x.what.as_str(),
            if x.path.is_empty() { String::new() } else { format!(" {}", safe(&x.path)) },
            if x.target != 0 { format!(" of process {}", x.target) } else { String::new() },
            if x.killed { " ✗ killed" } else { "" },
            x.proc.pid,
            safe(&x.proc.comm)
        )),
        Event::Unix(x) if x.deputy => Some(format!(
            "unix    {} (local deputy){} [{} {}]",
            safe(&x.path),
            if x.killed { " ✗ killed" } else { "" },
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
