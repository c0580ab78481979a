//! What people (and machines) read: the live per-event lines of a step ([`live`]), and the
//! report at its end, collected once ([`model::Report`]) and rendered as terminal text,
//! JSON, GitHub Markdown or SARIF. Shared by run, daemon and replay.
pub mod json;
pub mod live;
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

/// Colour for a stream: only a terminal, and never when NO_COLOR is set (to anything
/// non-empty, <https://no-color.org>).
pub fn colour_for(is_terminal: bool) -> bool {
    is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
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
        Format::Markdown => reports.iter().map(markdown::render).collect(),
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
        eprintln!(
            "watcher: warning: cannot append the report to GITHUB_STEP_SUMMARY ({}): {e}",
            Path::new(&path).display()
        );
    }
}
