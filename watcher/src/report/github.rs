//! GitHub Actions workflow commands (when `GITHUB_ACTIONS=true`): one annotation per alert
//! group (`::error title=...::message`, with `file=` and `line=` at the package's lockfile
//! entry when known), and the report folded into `::group::`. Untrusted text is escaped as
//! the runner requires (`%`, CR and LF in messages; also `:` and `,` in properties), and the
//! report itself is printed between `::stop-commands::` markers so nothing in it (a package
//! name, a DNS name) can be taken for a command.
use std::fmt::Write as _;

use super::{
    advice,
    locate::{self, Locator},
    model::Report,
};

/// Annotations written per report (the runner shows only the first few per step anyway);
/// past it, one notice says how many groups were not annotated.
pub const MAX_ANNOTATIONS: usize = 20;

/// Whether workflow commands are wanted: `GITHUB_ACTIONS=true`.
pub fn enabled() -> bool {
    std::env::var_os("GITHUB_ACTIONS").is_some_and(|v| v == "true")
}

/// A command's message: `%`, CR and LF escaped.
pub fn escape_data(s: &str) -> String {
    s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// A command's property value: also `:` and `,`.
pub fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// One annotation per alert group, most severe first.
pub fn annotations(r: &Report) -> String {
    let mut out = String::new();
    let groups = advice::groups(r);
    let mut loc = Locator::new(r);
    for g in groups.iter().take(MAX_ANNOTATIONS) {
        let level = if advice::severity_rank(g.severity) >= 3 { "error" } else { "warning" };
        let title = match g.package {
            Some(p) => format!("watcher {} ×{} ({p})", g.rule, g.count),
            None => format!("watcher {} ×{}", g.rule, g.count),
        };
        let place = loc
            .package(r, g.first.alert.pid)
            .or_else(|| r.policy.as_ref().and_then(|p| loc.policy(&p.source, locate::section(g.rule))));
        let mut props = format!("title={}", escape_property(&title));
        if let Some(l) = place {
            let _ = write!(props, ",file={},line={}", escape_property(&l.uri), l.line);
        }
        // Not the alerts' messages (each was printed once, as it was found): what they are
        // about and what to do.
        let subjects: Vec<String> = g.subjects.keys().take(3).map(|x| x.text()).collect();
        let more = g.subjects.len().saturating_sub(3);
        let about = match (subjects.is_empty(), more) {
            (true, _) => String::new(),
            (false, 0) => format!(": {}", subjects.join(", ")),
            (false, n) => format!(": {} and {n} more", subjects.join(", ")),
        };
        let advice = advice::steps(r, std::slice::from_ref(g))
            .first()
            .map(|st| format!(". {}{}", if st.risky { "RISKY: " } else { "" }, st.advice))
            .unwrap_or_default();
        let msg =
            super::safe(&format!("{} {} alert{}{about}{advice}", g.count, g.rule, if g.count == 1 { "" } else { "s" }));
        let _ = writeln!(out, "::{level} {props}::{}", escape_data(&msg));
    }
    if groups.len() > MAX_ANNOTATIONS {
        let _ = writeln!(
            out,
            "::notice title=watcher::{}",
            escape_data(&format!(
                "{} more alert groups are not annotated: see the job summary or the report",
                groups.len() - MAX_ANNOTATIONS
            ))
        );
    }
    out
}

/// `text` folded into a group titled `title`, commands in it disabled.
pub fn group(title: &str, text: &str) -> String {
    let token = stop_token();
    format!("::group::{}\n::stop-commands::{token}\n{text}::{token}::\n::endgroup::\n", escape_data(title))
}

/// A token nobody can guess (the runner resumes commands only at `::TOKEN::`).
fn stop_token() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    let t = b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!("watcher-{t}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_as_the_runner_requires() {
        assert_eq!(escape_data("50% a\r\nb"), "50%25 a%0D%0Ab");
        assert_eq!(escape_property("npm:a@1, b"), "npm%3Aa@1%2C b");
        let g = group("watcher report", "x\n");
        let token = g.lines().nth(1).unwrap().strip_prefix("::stop-commands::").unwrap().to_string();
        assert!(token.len() > 30);
        assert!(g.ends_with(&format!("x\n::{token}::\n::endgroup::\n")), "{g}");
    }
}
