//! The summary people read in a terminal at the end of a step. Colour only when asked for
//! (the caller decides: a terminal, and NO_COLOR unset); untrusted text is always escaped.
use std::fmt::Write as _;

use super::{
    live::safe,
    model::{Report, Verdict},
    tree::{self, Row},
};

#[derive(Clone, Copy)]
pub struct Paint(pub bool);

impl Paint {
    fn wrap(self, code: &str, s: &str) -> String {
        if self.0 { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() }
    }
    pub fn bold(self, s: &str) -> String {
        self.wrap("1", s)
    }
    pub fn red(self, s: &str) -> String {
        self.wrap("1;31", s)
    }
    pub fn yellow(self, s: &str) -> String {
        self.wrap("33", s)
    }
    pub fn green(self, s: &str) -> String {
        self.wrap("32", s)
    }
    pub fn dim(self, s: &str) -> String {
        self.wrap("2", s)
    }
}

/// The headline: `summary: 7 processes (6 execs), 2 destinations, ...` (kept stable: scripts
/// grep it).
pub fn headline(r: &Report) -> String {
    format!(
        "summary: {} processes ({} execs), {} destinations, {} DNS names ({} queries), {} lost events{}",
        r.tree.len(),
        r.execs,
        r.destinations.len(),
        r.distinct_names(),
        r.dns_queries,
        r.lost_total(),
        if r.alerts.is_empty() { String::new() } else { format!(", {} alerts", r.alerts.len()) }
    )
}

pub fn verdict_line(r: &Report, p: Paint) -> String {
    let v = r.verdict();
    let word = match v {
        Verdict::Clean => p.green(v.as_str()),
        Verdict::Flagged | Verdict::Incomplete => p.yellow(v.as_str()),
        Verdict::Violation => p.red(v.as_str()),
    };
    let policy = match &r.policy {
        Some(pi) => format!(" under policy {} ({} mode)", safe(&pi.pipeline), pi.mode),
        None => " (no policy)".into(),
    };
    let exit = match r.exit_code {
        Some(c) => format!("; the command exited {c}"),
        None => String::new(),
    };
    let why = match &r.incomplete {
        Some(w) => format!(" ({})", safe(w)),
        None => String::new(),
    };
    format!("verdict: {word}{why}{policy}{exit}")
}

pub fn render(r: &Report, p: Paint) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", p.bold(&headline(r)));
    let _ = writeln!(s, "{}", verdict_line(r, p));
    if !r.workspace_registries.is_empty() {
        let _ = writeln!(s, "{}", p.bold("registry hosts named by the checkout:"));
        for h in &r.workspace_registries {
            let _ = writeln!(s, "  {} ({}) from {}", safe(&h.host), safe(&h.tool), safe(&h.from));
        }
    }
    if !r.tree.is_empty() {
        let _ = writeln!(s, "{}", p.bold("processes:"));
        for line in tree::lines(r) {
            match line.row {
                Row::Proc { pid } => {
                    let (head, notes) = tree::proc_text(r, pid);
                    let alerted = r.procs.get(&pid).is_some_and(|st| st.alerts > 0);
                    let notes = if notes.is_empty() {
                        String::new()
                    } else if alerted {
                        format!("  {}", p.red(&notes.join(", ")))
                    } else {
                        format!("  {}", p.dim(&notes.join(", ")))
                    };
                    let _ = writeln!(s, "  {}{head}{notes}", line.prefix);
                }
                Row::Collapsed { count, names } => {
                    let _ = writeln!(s, "  {}{}", line.prefix, p.dim(&tree::collapsed_text(count, &names)));
                }
            }
        }
    }
    if !r.destinations.is_empty() {
        let _ = writeln!(s, "{}", p.bold("destinations:"));
        for ((ip, port, proto), d) in &r.destinations {
            let why = match r.explain(ip, *port) {
                Some(w) => safe(&w),
                None => "no DNS answer gave this address".to_string(),
            };
            let denied =
                if d.denied > 0 { format!(" {}", p.red(&format!("({} denied)", d.denied))) } else { String::new() };
            let _ = writeln!(s, "  destination {ip}:{port}/{} ×{}{denied}  {}", proto.as_str(), d.count, p.dim(&why));
        }
    }
    if !r.dns.is_empty() {
        let _ = writeln!(s, "{}", p.bold("dns:"));
        for (name, d) in &r.dns {
            let types: Vec<&str> = d.qtypes.iter().map(String::as_str).collect();
            let answer = if !d.answers.is_empty() {
                format!(" → {}", d.answers.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", "))
            } else if !d.rcodes.is_empty() {
                format!(" → {}", d.rcodes.iter().map(|c| safe(c)).collect::<Vec<_>>().join(", "))
            } else {
                " (no answer)".into()
            };
            let denied =
                if d.denied > 0 { format!(" {}", p.red(&format!("({} denied)", d.denied))) } else { String::new() };
            let _ = writeln!(s, "  dns {} {}{answer} ×{}{denied}", safe(name), safe(&types.join(",")), d.queries);
        }
    }
    if !r.alerts.is_empty() {
        let _ = writeln!(s, "{}", p.bold("alerts:"));
        for a in &r.alerts {
            let a = &a.alert;
            let _ = writeln!(
                s,
                "  {} {} {} [pid {}{}{}]: {}",
                p.red(&a.severity),
                a.action,
                p.bold(&a.rule),
                a.pid,
                a.package.as_ref().map(|x| format!(" {}", safe(x))).unwrap_or_default(),
                r.since_install_script(a)
                    .map(|ns| format!(", {} after the script started", duration(ns)))
                    .unwrap_or_default(),
                safe(&a.message)
            );
        }
    }
    if !r.lost.is_empty() {
        let _ = writeln!(s, "{}", p.bold("lost events:"));
    }
    for (src, n) in &r.lost {
        let _ =
            writeln!(s, "  {}", p.red(&format!("LOST {n} {} events: the kernel could not deliver them", safe(src))));
    }
    s
}

/// A short human duration: `850 µs`, `48.2 ms`, `3.41 s`.
pub fn duration(ns: u64) -> String {
    if ns < 1_000_000 {
        format!("{} µs", ns / 1000)
    } else if ns < 1_000_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else {
        format!("{:.2} s", ns as f64 / 1e9)
    }
}
