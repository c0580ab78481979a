//! The report as GitHub-flavoured Markdown, for the job summary page (`GITHUB_STEP_SUMMARY`):
//! headings, tables, the process tree in a collapsible `<details>`.
//!
//! Untrusted text (package names, argv, DNS names, messages) only ever appears inside code
//! spans (`code`, which Markdown does not interpret: no links, emphasis or HTML) or
//! HTML-escaped inside `<pre>`; so a package cannot inject markup, links or images.
use std::fmt::Write as _;

use super::{
    advice,
    live::safe,
    model::Report,
    tree::{self, Row},
};

/// Untrusted text as an inline code span, safe in a table cell: the fence is longer than any
/// run of backticks inside, `|` is escaped (GFM splits cells on it even in code spans), and
/// control characters are escaped.
pub fn code(s: &str) -> String {
    code_span(&safe(s).replace('|', "\\|"))
}

/// Untrusted text as a code span outside tables (`|` needs no escape there, and a `\|`
/// would show).
pub fn code_text(s: &str) -> String {
    code_span(&safe(s))
}

fn code_span(s: &str) -> String {
    if s.is_empty() {
        return "—".into();
    }
    let mut longest = 0;
    let mut run = 0;
    for c in s.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    let fence = "`".repeat(longest + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') || s.starts_with(' ') { " " } else { "" };
    format!("{fence}{pad}{s}{pad}{fence}")
}

/// Text for inside `<pre>`: HTML-escaped.
pub fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// The most one call of [`render_all`](super::render_all) writes to a job summary (GitHub
/// takes up to 1 MiB per step, but a summary past a few dozen KiB is not read): details are
/// cut to fit, with a line saying how many rows are not shown; counts stay exact.
pub const SUMMARY_BUDGET: usize = 60 * 1024;

/// Alerts listed one by one (the groups above count them all).
const MAX_ALERT_ROWS: usize = 100;

/// Room kept for each section still to come (its heading and its "not shown" line).
const SECTION_RESERVE: usize = 400;

pub fn render(r: &Report) -> String {
    render_within(r, SUMMARY_BUDGET)
}

/// A Markdown writer that stops adding rows at its limit.
struct Md {
    s: String,
    limit: usize,
}

impl Md {
    /// Write `rows` under `head` while they fit, keeping `reserve` bytes for what follows;
    /// then say how many were left out.
    fn rows(&mut self, rows: impl Iterator<Item = String>, total: usize, what: &str, reserve: usize) {
        let mut shown = 0;
        for row in rows {
            if self.s.len() + row.len() + reserve > self.limit {
                break;
            }
            self.s.push_str(&row);
            shown += 1;
        }
        if shown < total {
            let _ = writeln!(
                self.s,
                "\n*… {} more {what} not shown here (the JSON report and the log have them all)*",
                total - shown
            );
        }
        self.s.push('\n');
    }
}

/// The report within `limit` bytes (for a limit of a few KiB or more).
pub fn render_within(r: &Report, limit: usize) -> String {
    let mut md = Md { s: String::new(), limit };
    let s = &mut md.s;
    let v = r.verdict();
    let icon = match v.as_str() {
        "clean" => "✅",
        "incomplete" => "⚠️",
        _ => "❌",
    };
    let title = match &r.log {
        Some(l) => format!(" for {}", code_text(&super::live::shorten(l, 200))),
        None => String::new(),
    };
    let _ = writeln!(s, "### {icon} watcher: {}{title}\n", v.as_str());
    let policy = match &r.policy {
        Some(p) => format!("policy {} ({} mode)", code_text(&p.pipeline), p.mode),
        None => "no policy".into(),
    };
    let cmd = if r.command.is_empty() {
        String::new()
    } else {
        format!(" · command {}", code_text(&super::live::shorten(&r.command.join(" "), 300)))
    };
    let exit = r.exit_code.map(|c| format!(" · exit code {c}")).unwrap_or_default();
    let _ = writeln!(s, "{policy}{cmd}{exit}\n");
    if !r.workspace_registries.is_empty() {
        let _ = writeln!(s, "Registry hosts named by files of the checkout (allowed by `registries`):\n");
        for h in &r.workspace_registries {
            let _ = writeln!(s, "- {} ({}) from {}", code_text(&h.host), code_text(&h.tool), code_text(&h.from));
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "| processes | execs | destinations | DNS names | DNS queries | alerts | lost events |");
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        s,
        "| {} | {} | {} | {} | {} | {} | {} |\n",
        r.tree.len(),
        r.execs,
        r.destinations.len(),
        r.distinct_names(),
        r.dns_queries,
        r.alerts.len(),
        r.lost_total()
    );
    // Sections still to come after each one, for the room kept.
    let reserve = |after: usize| after * SECTION_RESERVE;
    if !r.alerts.is_empty() {
        let groups = advice::groups(r);
        let _ = writeln!(md.s, "#### Alerts by rule and package\n");
        let _ = writeln!(md.s, "| severity | rule | package | alerts | action | first after script start | example |");
        let _ = writeln!(md.s, "|---|---|---|---:|---|---:|---|");
        let rows = groups.iter().map(|g| {
            format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                code(g.severity),
                code(g.rule),
                g.package.map(code).unwrap_or_else(|| "—".into()),
                g.count,
                g.actions.iter().map(|a| code(a)).collect::<Vec<_>>().join(", "),
                g.since_script.map(super::text::duration).unwrap_or_else(|| "—".into()),
                code(&super::live::shorten(&g.first.alert.message, 300))
            )
        });
        md.rows(rows, groups.len(), "groups", reserve(6));
        let steps = advice::steps(r, &groups);
        if !steps.is_empty() {
            let _ = writeln!(md.s, "#### What to do next\n");
            let rows = steps.iter().map(step_item);
            md.rows(rows, steps.len(), "steps", reserve(5) + 1024);
            let frag = advice::safe_fragment(&steps);
            if !frag.is_empty() && md.s.len() + frag.len() + reserve(5) < md.limit {
                let _ = writeln!(md.s, "To allow everything above that is not marked risky, add to the policy:\n");
                let _ = writeln!(md.s, "```yaml\n{frag}```\n");
            }
        }
    }
    if r.lost_total() > 0 {
        let _ = writeln!(md.s, "#### Lost events\n");
        let _ = writeln!(md.s, "The kernel could not deliver some events: this step cannot be vouched for.\n");
        let _ = writeln!(md.s, "| source | lost |");
        let _ = writeln!(md.s, "|---|---:|");
        let rows = r.lost.iter().map(|(src, n)| format!("| {} | {n} |\n", code(src)));
        md.rows(rows, r.lost.len(), "sources", reserve(4));
    }
    if !r.alerts.is_empty() {
        let _ = writeln!(md.s, "<details><summary>All {} alerts</summary>\n", r.alerts.len());
        let _ = writeln!(md.s, "| severity | action | rule | package | after script start | pid | message |");
        let _ = writeln!(md.s, "|---|---|---|---|---:|---:|---|");
        let rows = r.alerts.iter().map(|a| {
            let a = &a.alert;
            format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                code(&a.severity),
                code(&a.action),
                code(&a.rule),
                a.package.as_deref().map(code).unwrap_or_else(|| "—".into()),
                r.since_install_script(a).map(super::text::duration).unwrap_or_else(|| "—".into()),
                a.pid,
                code(&super::live::shorten(&a.message, 300))
            )
        });
        md.rows(rows.take(MAX_ALERT_ROWS), r.alerts.len(), "alerts", reserve(3) + 20);
        let _ = writeln!(md.s, "</details>\n");
    }
    if !r.destinations.is_empty() {
        let _ = writeln!(md.s, "#### Destinations\n");
        let _ = writeln!(md.s, "| address | port | proto | DNS name | connections | denied |");
        let _ = writeln!(md.s, "|---|---:|---|---|---:|---:|");
        let rows = r.destinations.iter().map(|((ip, port, proto), d)| {
            let names = r.names_for(ip);
            let names = if !names.is_empty() {
                names.iter().take(8).map(|n| code(n)).collect::<Vec<_>>().join(", ")
            } else if r.explain(ip, *port).is_some() {
                "*DNS server*".to_string()
            } else {
                "*no DNS answer*".to_string()
            };
            format!("| `{ip}` | {port} | {} | {names} | {} | {} |\n", proto.as_str(), d.count, d.denied)
        });
        md.rows(rows, r.destinations.len(), "destinations", reserve(2));
    }
    if !r.dns.is_empty() {
        let _ = writeln!(md.s, "#### DNS\n");
        let _ = writeln!(md.s, "| name | types | answers | queries | denied |");
        let _ = writeln!(md.s, "|---|---|---|---:|---:|");
        let rows = r.dns.iter().map(|(name, d)| {
            let types = d.qtypes.iter().map(|t| code(t)).collect::<Vec<_>>().join(", ");
            let answers = if !d.answers.is_empty() {
                d.answers.iter().take(8).map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")
            } else {
                d.rcodes.iter().map(|c| code(c)).collect::<Vec<_>>().join(", ")
            };
            let answers = if answers.is_empty() { "*no answer*".into() } else { answers };
            format!("| {} | {types} | {answers} | {} | {} |\n", code(name), d.queries, d.denied)
        });
        md.rows(rows, r.dns.len(), "DNS names", reserve(1));
    }
    if !r.tree.is_empty() {
        let _ = writeln!(md.s, "<details><summary>Process tree ({} processes)</summary>\n", r.tree.len());
        md.s.push_str("<pre>\n");
        let lines = tree::lines(r);
        let total = lines.len();
        let rows = lines.into_iter().map(|line| match line.row {
            Row::Proc { pid } => {
                let (head, notes) = tree::proc_text(r, pid);
                let notes = if notes.is_empty() { String::new() } else { format!("  {}", notes.join(", ")) };
                format!("{}{}\n", line.prefix, html(&format!("{head}{notes}")))
            }
            Row::Collapsed { count, names } => {
                format!("{}{}\n", line.prefix, html(&tree::collapsed_text(count, &names)))
            }
        });
        let mut shown = 0;
        for row in rows {
            if md.s.len() + row.len() + 200 > md.limit {
                break;
            }
            md.s.push_str(&row);
            shown += 1;
        }
        if shown < total {
            let _ = writeln!(md.s, "… {} more lines not shown here (the JSON report has every process)", total - shown);
        }
        md.s.push_str("</pre>\n\n</details>\n\n");
    }
    md.s
}

/// One "what to do next" item: untrusted parts in code spans, the policy lines a risky step
/// would take shown as such.
fn step_item(st: &advice::Step) -> String {
    let mut s = format!("- {}", code(&st.rule));
    if !st.subject.is_empty() {
        let _ = write!(s, " {}", code(&st.subject));
    }
    if !st.packages.is_empty() {
        let _ = write!(s, " from {}", advice::packages_text(&st.packages, code));
    }
    if st.risky {
        let _ = write!(s, ": ⚠️ **risky**: {}", st.advice);
        if !st.policy.is_empty() {
            let _ = write!(s, ". It would take (not suggested):\n\n  ```yaml\n");
            for l in advice::yaml_fragment(&st.policy).lines() {
                let _ = writeln!(s, "  {l}");
            }
            s.push_str("  ```\n");
        } else {
            s.push('\n');
        }
    } else {
        let _ = write!(s, ": {}", st.advice);
        if !st.policy.is_empty() {
            let _ = write!(s, ":\n\n  ```yaml\n");
            for l in advice::yaml_fragment(&st.policy).lines() {
                let _ = writeln!(s, "  {l}");
            }
            s.push_str("  ```\n");
        } else {
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_spans_neutralise_markup() {
        assert_eq!(code("left-pad"), "`left-pad`");
        assert_eq!(code("[x](https://e.test)"), "`[x](https://e.test)`");
        assert_eq!(code("a`b"), "``a`b``");
        assert_eq!(code("`x`"), "`` `x` ``");
        assert_eq!(code("a|b"), "`a\\|b`");
        assert_eq!(code("a\nb"), "`a\\nb`");
        assert_eq!(code(""), "—");
        assert_eq!(code_text("a|b"), "`a|b`");
        assert_eq!(html("</pre><img src=x>"), "&lt;/pre&gt;&lt;img src=x&gt;");
    }
}

#[cfg(test)]
mod render_tests {
    use super::*;
    use crate::event::{Alert, Ts};

    #[test]
    fn a_hostile_package_name_stays_text() {
        let mut r = Report::default();
        let evil = "x](https://evil.test) <img src=x onerror=alert(1)> | `code` **b**";
        r.add_alert(
            Alert {
                ts: Ts(0),
                rule: "egress-denied".into(),
                action: "flag".into(),
                severity: "high".into(),
                pid: 7,
                package: Some(format!("npm:{evil}@1.0.0 (postinstall)")),
                message: format!("{evil}\nforged line"),
                variable: None,
                redacted: None,
            },
            Some(3),
        );
        let md = render(&r);
        let row = md.lines().find(|l| l.contains("evil.test")).expect("alert row");
        // Every untrusted part is inside a code span; the pipe cannot split the table row.
        assert_eq!(row.matches(" | ").count(), 6, "seven cells: {row}");
        assert!(
            row.contains(
                "``npm:x](https://evil.test) <img src=x onerror=alert(1)> \\| `code` **b**@1.0.0 (postinstall)``"
            ),
            "{row}"
        );
        assert!(!md.contains("\nforged line"), "{md}");
    }
}
