//! The report as GitHub-flavoured Markdown, for the job summary page (`GITHUB_STEP_SUMMARY`):
//! headings, tables, the process tree in a collapsible `<details>`.
//!
//! Untrusted text (package names, argv, DNS names, messages) only ever appears inside code
//! spans (`code`, which Markdown does not interpret: no links, emphasis or HTML) or
//! HTML-escaped inside `<pre>`; so a package cannot inject markup, links or images.
use std::fmt::Write as _;

use super::{
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

pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let v = r.verdict();
    let icon = match v.as_str() {
        "clean" => "✅",
        "incomplete" => "⚠️",
        _ => "❌",
    };
    let title = match &r.log {
        Some(l) => format!(" for {}", code_text(l)),
        None => String::new(),
    };
    let _ = writeln!(s, "### {icon} watcher: {}{title}\n", v.as_str());
    let policy = match &r.policy {
        Some(p) => format!("policy {} ({} mode)", code_text(&p.pipeline), p.mode),
        None => "no policy".into(),
    };
    let cmd =
        if r.command.is_empty() { String::new() } else { format!(" · command {}", code_text(&r.command.join(" "))) };
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
    if !r.alerts.is_empty() {
        let _ = writeln!(s, "#### Alerts\n");
        let _ = writeln!(s, "| severity | action | rule | package | after script start | pid | message |");
        let _ = writeln!(s, "|---|---|---|---|---:|---:|---|");
        for a in &r.alerts {
            let a = &a.alert;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                code(&a.severity),
                code(&a.action),
                code(&a.rule),
                a.package.as_deref().map(code).unwrap_or_else(|| "—".into()),
                r.since_install_script(a).map(super::text::duration).unwrap_or_else(|| "—".into()),
                a.pid,
                code(&a.message)
            );
        }
        s.push('\n');
    }
    if r.lost_total() > 0 {
        let _ = writeln!(s, "#### Lost events\n");
        let _ = writeln!(s, "The kernel could not deliver some events: this step cannot be vouched for.\n");
        let _ = writeln!(s, "| source | lost |");
        let _ = writeln!(s, "|---|---:|");
        for (src, n) in &r.lost {
            let _ = writeln!(s, "| {} | {n} |", code(src));
        }
        s.push('\n');
    }
    if !r.destinations.is_empty() {
        let _ = writeln!(s, "#### Destinations\n");
        let _ = writeln!(s, "| address | port | proto | DNS name | connections | denied |");
        let _ = writeln!(s, "|---|---:|---|---|---:|---:|");
        for ((ip, port, proto), d) in &r.destinations {
            let names = r.names_for(ip);
            let names = if !names.is_empty() {
                names.iter().map(|n| code(n)).collect::<Vec<_>>().join(", ")
            } else if r.explain(ip, *port).is_some() {
                "*DNS server*".to_string()
            } else {
                "*no DNS answer*".to_string()
            };
            let _ = writeln!(s, "| `{ip}` | {port} | {} | {names} | {} | {} |", proto.as_str(), d.count, d.denied);
        }
        s.push('\n');
    }
    if !r.dns.is_empty() {
        let _ = writeln!(s, "#### DNS\n");
        let _ = writeln!(s, "| name | types | answers | queries | denied |");
        let _ = writeln!(s, "|---|---|---|---:|---:|");
        for (name, d) in &r.dns {
            let types = d.qtypes.iter().map(|t| code(t)).collect::<Vec<_>>().join(", ");
            let answers = if !d.answers.is_empty() {
                d.answers.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")
            } else {
                d.rcodes.iter().map(|c| code(c)).collect::<Vec<_>>().join(", ")
            };
            let answers = if answers.is_empty() { "*no answer*".into() } else { answers };
            let _ = writeln!(s, "| {} | {types} | {answers} | {} | {} |", code(name), d.queries, d.denied);
        }
        s.push('\n');
    }
    if !r.tree.is_empty() {
        let _ = writeln!(s, "<details><summary>Process tree ({} processes)</summary>\n", r.tree.len());
        s.push_str("<pre>\n");
        for line in tree::lines(r) {
            match line.row {
                Row::Proc { pid } => {
                    let (head, notes) = tree::proc_text(r, pid);
                    let notes = if notes.is_empty() { String::new() } else { format!("  {}", notes.join(", ")) };
                    let _ = writeln!(s, "{}{}", line.prefix, html(&format!("{head}{notes}")));
                }
                Row::Collapsed { count, names } => {
                    let _ = writeln!(s, "{}{}", line.prefix, html(&tree::collapsed_text(count, &names)));
                }
            }
        }
        s.push_str("</pre>\n\n</details>\n\n");
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
