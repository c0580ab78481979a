//! The summary people read in a terminal at the end of a step. Colour only when asked for
//! (the caller decides: a terminal, and NO_COLOR unset); untrusted text is always escaped.
use std::fmt::Write as _;

use super::{
    advice,
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
        render_groups(&mut s, r, p);
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

/// Alerts grouped by rule and package, with counts and subjects but not the messages: each
/// alert was printed on its own line as it was found (`run` on stderr, `replay` on stdout),
/// so none is printed twice. Then what to do next.
fn render_groups(s: &mut String, r: &Report, p: Paint) {
    let groups = advice::groups(r);
    let _ = writeln!(
        s,
        "{}",
        p.bold(&format!(
            "alerts: {} in {} group{} (by rule and package):",
            r.alerts.len(),
            groups.len(),
            plural(groups.len())
        ))
    );
    for g in &groups {
        let mut subjects: Vec<String> = g.subjects.keys().take(3).map(|x| safe(&x.text())).collect();
        let rest = g.subjects.len().saturating_sub(3);
        if rest > 0 {
            subjects.push(format!("{rest} more"));
        }
        if g.other_subjects > 0 && !subjects.is_empty() {
            subjects.push("…".into());
        }
        let _ = writeln!(
            s,
            "  {} {} {} ×{} [{}]{}{}",
            p.red(g.severity),
            g.actions.iter().copied().collect::<Vec<_>>().join("/"),
            p.bold(g.rule),
            g.count,
            g.package.map(safe).unwrap_or_else(|| "no package".into()),
            if subjects.is_empty() { String::new() } else { format!(": {}", subjects.join(", ")) },
            g.since_script.map(|ns| format!(" (first {} after the script started)", duration(ns))).unwrap_or_default(),
        );
    }
    let steps = advice::steps(r, &groups);
    if steps.is_empty() {
        return;
    }
    let _ = writeln!(s, "{}", p.bold("what to do next:"));
    for st in steps.iter().take(TEXT_STEPS) {
        let what = if st.subject.is_empty() { String::new() } else { format!(" {}", safe(&st.subject)) };
        let pkg = if st.packages.is_empty() {
            String::new()
        } else {
            format!(" [{}]", advice::packages_text(&st.packages, safe))
        };
        let risky = if st.risky { format!("{} ", p.red("RISKY:")) } else { String::new() };
        let _ = writeln!(s, "  {}{what}{pkg}: {risky}{}", st.rule, st.advice);
        if st.risky && !st.policy.is_empty() {
            let lines: Vec<String> = st.policy.iter().map(|l| safe(&l.inline())).collect();
            let _ = writeln!(s, "    (it would take {}; not suggested)", lines.join(" and "));
        }
    }
    if steps.len() > TEXT_STEPS {
        let _ = writeln!(s, "  … {} more (see the JSON or Markdown report)", steps.len() - TEXT_STEPS);
    }
    let frag = advice::safe_fragment(&steps);
    if !frag.is_empty() {
        let _ = writeln!(s, "  to allow what is not risky, add to the policy:");
        for l in frag.lines() {
            let _ = writeln!(s, "    {}", safe(l));
        }
    }
}

/// Steps listed in the terminal report.
const TEXT_STEPS: usize = 20;

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
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
