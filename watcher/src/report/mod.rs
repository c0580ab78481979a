//! What people (and machines) read: the live per-event lines of a step ([`live`]), and the
//! report at its end, collected once ([`model::Report`]) and rendered as terminal text,
//! JSON, GitHub Markdown or SARIF. Shared by run, daemon and replay.
pub mod advice;
pub mod github;
pub mod json;
pub mod live;
pub mod locate;
pub mod markdown;
pub mod model;
pub mod sarif;
pub mod text;
pub mod tree;

use std::{io::Write as _, path::Path};

pub use live::{event_line, safe};
pub use model::{Report, Verdict};

/// Output formats of a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Markdown,
    Sarif,
}

impl Format {
    /// The format a report file's name asks for: `.json`, `.sarif`, `.md`, else text (any case).
    pub fn from_path(p: &Path) -> Format {
        match p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("json") => Format::Json,
            Some("sarif") => Format::Sarif,
            Some("md" | "markdown") => Format::Markdown,
            _ => Format::Text,
        }
    }
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Colour for a stream: `FORCE_COLOR` set (non-empty, not `0` or `false`) forces it on, and
/// `FORCE_COLOR=0`/`false` off (<https://force-color.org>); otherwise only on a terminal,
/// and never when `NO_COLOR` is set to anything non-empty (<https://no-color.org>).
pub fn colour_for(is_terminal: bool) -> bool {
    colour_from(is_terminal, std::env::var_os("FORCE_COLOR").as_deref(), std::env::var_os("NO_COLOR").as_deref())
}

fn colour_from(is_terminal: bool, force: Option<&std::ffi::OsStr>, no: Option<&std::ffi::OsStr>) -> bool {
    match force.filter(|v| !v.is_empty()) {
        Some(v) if v == "0" || v == "false" => false,
        Some(_) => true,
        None => is_terminal && no.is_none_or(|v| v.is_empty()),
    }
}

/// Whether live per-event lines are off by default: in CI (`CI=true`, as GitHub Actions,
/// GitLab CI and most others set it) only alerts, lost events and the report are printed
/// unless `--verbose` asks for every line.
pub fn quiet_by_default() -> bool {
    std::env::var_os("CI").is_some_and(|v| v == "true" || v == "1")
}

/// The end-of-step report for stderr (`watcher run`, each line prefixed `watcher: `): the
/// text report; under GitHub Actions folded into a group, followed by one annotation per
/// alert group.
pub fn stderr_report(r: &Report, colour: bool) -> String {
    let text: String = text::render(r, text::Paint(colour)).lines().map(|l| format!("watcher: {l}\n")).collect();
    if github::enabled() {
        let title = format!("watcher: {}", text::headline(r));
        format!("{}{}", github::group(&title, &text), github::annotations(r))
    } else {
        text
    }
}

/// Annotations for the alerts of several reports (`replay` under GitHub Actions, on stderr).
pub fn annotations_all(reports: &[Report]) -> String {
    if !github::enabled() {
        return String::new();
    }
    reports.iter().map(github::annotations).collect()
}

/// Render several reports (one per log) in one format. Text is coloured when `colour`.
pub fn render_all(reports: &[Report], format: Format, colour: bool) -> String {
    match format {
        Format::Text => reports
            .iter()
            .map(|r| {
                let t = text::render(r, text::Paint(colour));
                match &r.log {
                    // Every line says which log it is about.
                    Some(l) => t.lines().map(|line| format!("{}: {line}\n", safe(l))).collect::<String>(),
                    None => t,
                }
            })
            .collect(),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&json::StreamedLogs(reports)).unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Markdown => {
            // The job summary is bounded as a whole: each report gets its share.
            let budget = markdown::SUMMARY_BUDGET / reports.len().max(1);
            reports.iter().map(|r| markdown::render_within(r, budget)).collect()
        }
        Format::Sarif => {
            let runs = reports.iter().map(|r| sarif::run(r, VERSION)).collect();
            let mut s = serde_json::to_string_pretty(&sarif::document(runs)).unwrap_or_default();
            s.push('\n');
            s
        }
    }
}

/// [`render_all`] written to `w` as it is produced: JSON is streamed (its memory does not
/// grow with the number of processes), the other formats are written whole.
pub fn write_all(reports: &[Report], format: Format, colour: bool, w: &mut dyn std::io::Write) -> std::io::Result<()> {
    match format {
        Format::Json => {
            let mut b = std::io::BufWriter::with_capacity(64 * 1024, w);
            serde_json::to_writer_pretty(&mut b, &json::StreamedLogs(reports)).map_err(std::io::Error::from)?;
            b.write_all(b"\n")?;
            b.flush()
        }
        _ => w.write_all(render_all(reports, format, colour).as_bytes()),
    }
}

/// One report in one format (`watcher run --report`): JSON is the report object itself.
pub fn render_one(r: &Report, format: Format, colour: bool) -> String {
    match format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&json::Streamed(r)).unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Text => text::render(r, text::Paint(colour)),
        _ => render_all(std::slice::from_ref(r), format, colour),
    }
}

/// Append the Markdown report to the file `GITHUB_STEP_SUMMARY` names, when it is set. A
/// failure is a warning on stderr: the step's own result is not changed by it.
pub fn append_step_summary(reports: &[Report]) {
    let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|p| !p.is_empty()) else { return };
    let md = render_all(reports, Format::Markdown, false);
    let res =
        std::fs::OpenOptions::new().append(true).create(true).open(&path).and_then(|mut f| f.write_all(md.as_bytes()));
    if let Err(e) = res {
        crate::say!(
            "watcher: warning: cannot append the report to GITHUB_STEP_SUMMARY ({}): {e}",
            Path::new(&path).display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn force_color_and_no_color() {
        let s = |v: &'static str| Some(OsStr::new(v));
        assert!(colour_from(true, None, None));
        assert!(!colour_from(false, None, None));
        assert!(!colour_from(true, None, s("1")));
        assert!(colour_from(true, None, s("")));
        assert!(colour_from(false, s("1"), None));
        assert!(colour_from(false, s("3"), s("1")));
        assert!(!colour_from(true, s("0"), None));
        assert!(!colour_from(true, s("false"), None));
        assert!(!colour_from(false, s(""), None));
    }
}
