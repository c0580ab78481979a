//! `watcher replay LOG...`: feed recorded events through the same engine `watcher run` uses.
//! No privileges, no eBPF. With the policy used live it gives exactly the live alerts; with
//! another, what that policy would have flagged or blocked.
//!
//! A log is untrusted input: replay opens nothing it names (the policy comes from `--policy`
//! or from the copy the start record carries) and judges a log that cannot be vouched for
//! (no `end` record, cut short, lost events not accounted for, an unknown schema) as
//! `incomplete`, exit 78, with the reason.
use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
};

use crate::{
    engine::Engine,
    event::{Alert, Event, PolicyInfo},
    pipeline::Pipeline,
    policy::{self, Mode, Policy, PolicyError},
    report::{self, Format, Report, event_line},
};

pub struct ReplayOptions {
    /// Log files; `-` is standard input. Plain or gzip-compressed.
    pub logs: Vec<PathBuf>,
    pub policy: Option<PathBuf>,
    pub mode: Option<Mode>,
    /// What goes to standard output.
    pub format: Format,
}

/// The verdicts of one log.
pub struct Replayed {
    pub log: String,
    pub alerts: Vec<Alert>,
    pub report: Report,
}

/// A log that cannot be read or judged, or the report that cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{}: cannot read", .path.display())]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{log}:{line}: cannot read")]
    Read { log: String, line: u64, source: std::io::Error },
    /// A line that is not an event (the parser's message says why).
    #[error("{log}:{line}: {error}")]
    Malformed { log: String, line: u64, error: serde_json::Error },
    #[error("{log}:{line}: the log does not begin with a start record")]
    NoStart { log: String, line: u64 },
    #[error("{log}: the policy recorded in the start record is invalid: {error}")]
    RecordedPolicy { log: String, error: PolicyError },
    #[error(
        "{log}: the log names the policy {policy} but does not carry it (recorded by an older watcher); \
         give it with --policy FILE"
    )]
    PolicyNotCarried { log: String, policy: String },
    #[error("{log}: the log records no policy; give one with --policy FILE")]
    NoPolicy { log: String },
    /// `policy suggest` given a log that cannot be vouched for (exit 78).
    #[error("{log}: incomplete ({why}): no policy is suggested from a log that cannot be vouched for")]
    Incomplete { log: String, why: String },
    #[error("writing the report to standard output: {0}")]
    Stdout(std::io::Error),
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

impl ReplayError {
    /// A log that is incomplete where a complete one is needed (exit 78, as lost events).
    pub fn is_incomplete(&self) -> bool {
        matches!(self, ReplayError::Incomplete { .. })
    }
}

/// Open a log, transparently gunzipping it (by its magic bytes, not its name).
fn open(path: &Path) -> Result<Box<dyn BufRead>, ReplayError> {
    let raw: Box<dyn Read> = if path == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(File::open(path).map_err(|source| ReplayError::Open { path: path.to_path_buf(), source })?)
    };
    let mut r = BufReader::with_capacity(256 * 1024, raw);
    let gz = r.fill_buf().map(|b| b.starts_with(&[0x1f, 0x8b])).unwrap_or(false);
    Ok(if gz {
        Box::new(BufReader::with_capacity(256 * 1024, flate2::bufread::MultiGzDecoder::new(r)))
    } else {
        Box::new(r)
    })
}

/// The policy to judge with: the one given, or the copy of the live one the start record
/// carries. A path in the log is never opened.
fn policy_for(opts: &ReplayOptions, start: &crate::event::Start, log: &str) -> Result<Policy, ReplayError> {
    let mut p = match (&opts.policy, &start.policy_yaml, &start.policy) {
        (Some(path), _, _) => policy::load(path)?,
        (None, Some(text), info) => {
            let source = info.as_ref().map(|i| i.source.as_str()).unwrap_or("recorded policy");
            policy::parse_str(source, text)
                .map_err(|error| ReplayError::RecordedPolicy { log: log.to_string(), error })?
        }
        (None, None, Some(info)) => {
            return Err(ReplayError::PolicyNotCarried { log: log.to_string(), policy: report::safe(&info.source) });
        }
        (None, None, None) => return Err(ReplayError::NoPolicy { log: log.to_string() }),
    };
    // The mode the log was recorded in (`--mode audit` of the live run), unless --mode says.
    if let Some(m) = opts.mode.or(start.policy.as_ref().and_then(|p| p.mode.parse::<Mode>().ok())) {
        p.mode = m;
    }
    Ok(p)
}

/// The name a log is reported under.
pub fn log_name(path: &Path) -> String {
    if path == Path::new("-") { "<stdin>".to_string() } else { path.display().to_string() }
}

/// Call `f` with every event of a log and its line number. Malformed lines are errors
/// (`LOG:LINE: message`): nothing is skipped.
pub fn for_each_event(path: &Path, f: impl FnMut(Event, u64) -> Result<(), ReplayError>) -> Result<(), ReplayError> {
    for_each_event_with(path, crate::parse::parse_line, f)
}

/// A line parser: [`crate::parse::parse_line`], or the reference serde path (benchmarks).
pub type Parser = fn(&[u8]) -> Result<Event, serde_json::Error>;

/// [`for_each_event`] with a given line parser.
pub fn for_each_event_with(
    path: &Path,
    parse: Parser,
    mut f: impl FnMut(Event, u64) -> Result<(), ReplayError>,
) -> Result<(), ReplayError> {
    let name = log_name(path);
    let mut reader = open(path)?;
    crate::parse::for_each_line(
        &mut reader,
        |line, n| {
            let e = parse(line).map_err(|error| ReplayError::Malformed { log: name.clone(), line: n, error })?;
            f(e, n)
        },
        |source, n| ReplayError::Read { log: name.clone(), line: n, source },
    )
}

/// Replay one log.
pub fn replay_one(path: &Path, opts: &ReplayOptions, on_alert: impl FnMut(&Alert)) -> Result<Replayed, ReplayError> {
    replay_one_with(path, opts, crate::parse::parse_line, on_alert)
}

/// [`replay_one`] with a given line parser.
pub fn replay_one_with(
    path: &Path,
    opts: &ReplayOptions,
    parse: Parser,
    mut on_alert: impl FnMut(&Alert),
) -> Result<Replayed, ReplayError> {
    let name = log_name(path);
    let mut pipe: Option<Pipeline> = None;
    let mut alerts = Vec::new();
    let mut check = Completeness::default();
    let mut reader = open(path)?;
    let tail = crate::parse::for_each_line_terminated(
        &mut reader,
        |line, n, terminated| {
            if check.stopped() {
                return Ok(()); // an unknown schema: nothing after the start record is read
            }
            let e = match parse(line) {
                Ok(e) => e,
                Err(_) if !terminated => {
                    check.cut_at(n);
                    return Ok(());
                }
                Err(error) => return Err(ReplayError::Malformed { log: name.clone(), line: n, error }),
            };
            check.see(&e, n);
            if check.stopped() {
                return Ok(());
            }
            if matches!(e, Event::Alert(_)) {
                return Ok(()); // the live run's verdicts: replay makes its own
            }
            if pipe.is_none() {
                let Event::Start(s) = &e else {
                    return Err(ReplayError::NoStart { log: name.clone(), line: n });
                };
                let policy = policy_for(opts, s, &name)?;
                warn_unrecorded_registries(&name, &policy, s);
                // The engine builds the process tree; the report takes it at the end.
                let report = Report {
                    log: Some(name.clone()),
                    engine_tree: true,
                    policy: Some(PolicyInfo {
                        source: policy.source.clone(),
                        pipeline: policy.pipeline.clone(),
                        mode: policy.mode.as_str().to_string(),
                    }),
                    ..Default::default()
                };
                pipe = Some(Pipeline::replay(Engine::new(policy), report));
            }
            let pipe = pipe.as_mut().expect("set above");
            for a in pipe.replayed(&e, n) {
                on_alert(&a);
                alerts.push(a);
            }
            Ok(())
        },
        |source, n| ReplayError::Read { log: name.clone(), line: n, source },
    )?;
    if let crate::parse::Tail::StreamCut(n) = tail {
        check.cut_at(n + 1);
    }
    let mut report = match pipe {
        Some(mut pipe) => {
            let tree = pipe.engine_mut().map(|e| e.take_tree()).unwrap_or_default();
            let mut report = std::mem::take(&mut pipe.report);
            report.tree = tree;
            report
        }
        None => Report { log: Some(name.clone()), ..Default::default() },
    };
    report.incomplete = check.reason();
    report.watcher_exit = Some(report.replay_exit());
    Ok(Replayed { log: name, alerts, report })
}

/// Whether a log can be vouched for: it begins with a start record of a schema this
/// watcher reads, ends with an end record, is not cut short, and its loss records account
/// for every loss the end record counts.
#[derive(Default, Debug)]
pub struct Completeness {
    started: bool,
    unknown_schema: Option<u32>,
    end_lost: Option<u64>,
    /// After an end record, more events (a concatenation, or a forged end).
    after_end: Option<u64>,
    loss_records: u64,
    cut: Option<u64>,
}

impl Completeness {
    /// Take one event (line `n`) into account.
    pub fn see(&mut self, e: &Event, n: u64) {
        if self.end_lost.is_some() && self.after_end.is_none() && !matches!(e, Event::Alert(_)) {
            self.after_end = Some(n);
        }
        match e {
            Event::Start(s) if !self.started => {
                self.started = true;
                if s.schema == 0 || s.schema > crate::event::SCHEMA_VERSION {
                    self.unknown_schema = Some(s.schema);
                }
            }
            Event::Loss(l) => self.loss_records = self.loss_records.saturating_add(l.count),
            Event::End(x) => self.end_lost = Some(x.lost),
            _ => {}
        }
    }

    /// The last line (`n`) is cut short.
    pub fn cut_at(&mut self, n: u64) {
        self.cut.get_or_insert(n);
    }

    /// Nothing more is read (the schema is unknown).
    fn stopped(&self) -> bool {
        self.unknown_schema.is_some()
    }

    /// Why the log cannot be vouched for, in one line; None when it can.
    pub fn reason(&self) -> Option<String> {
        if let Some(v) = self.unknown_schema {
            return Some(format!(
                "schema version {v} is not one this watcher reads (1 to {}); the log was not judged",
                crate::event::SCHEMA_VERSION
            ));
        }
        if let Some(n) = self.cut {
            return Some(format!("the log is cut short at line {n}"));
        }
        if !self.started {
            return Some("the log is empty: no start record".into());
        }
        let Some(lost) = self.end_lost else {
            return Some(
                "the log has no end record: cut short, still being written, or its recorder was killed".into(),
            );
        };
        if let Some(n) = self.after_end {
            return Some(format!("events follow the end record (line {n})"));
        }
        if lost > self.loss_records {
            return Some(format!(
                "the end record counts {lost} lost events but the log's loss records account for {}",
                self.loss_records
            ));
        }
        None
    }
}

/// Call `f` with every event of a log (as [`for_each_event`]) and say whether the log is
/// complete (`policy suggest` learns only from logs that are): Ok(None) when it is, else the
/// reason.
pub fn for_each_event_checked(
    path: &Path,
    mut f: impl FnMut(Event, u64) -> Result<(), ReplayError>,
) -> Result<Option<String>, ReplayError> {
    let mut check = Completeness::default();
    let mut reader = open(path)?;
    let name = log_name(path);
    let tail = crate::parse::for_each_line_terminated(
        &mut reader,
        |line, n, terminated| {
            if check.stopped() {
                return Ok(());
            }
            match crate::parse::parse_line(line) {
                Ok(e) => {
                    check.see(&e, n);
                    if !check.stopped() {
                        f(e, n)?;
                    }
                }
                Err(_) if !terminated => check.cut_at(n),
                Err(error) => return Err(ReplayError::Malformed { log: name.clone(), line: n, error }),
            }
            Ok(())
        },
        |source, n| ReplayError::Read { log: name.clone(), line: n, source },
    )?;
    if let crate::parse::Tail::StreamCut(n) = tail {
        check.cut_at(n + 1);
    }
    Ok(check.reason())
}

/// A registry the policy allows but the log has no hosts for (it was recorded under a policy
/// without it): replay cannot know which hosts that package manager used on the recording
/// machine, so connections to them are judged as unknown destinations. Say so, once per
/// registry.
fn warn_unrecorded_registries(log: &str, policy: &Policy, start: &crate::event::Start) {
    for pm in policy.registries() {
        if !start.registries.contains_key(pm.as_str()) {
            crate::say!(
                "watcher: warning: {log}: the policy allows registry {}, but the log recorded no hosts for it \
                 (it was recorded under a policy without that registry); connections to that registry are judged \
                 as unknown destinations",
                pm.as_str()
            );
        }
    }
}

/// Run the replay command; returns the exit code.
pub fn replay(opts: ReplayOptions) -> crate::Result<i32> {
    use std::io::IsTerminal as _;
    let mut violations = 0usize;
    let mut incomplete = 0usize;
    let mut reports = Vec::new();
    for log in &opts.logs {
        let r = replay_one(log, &opts, |a| {
            if opts.format == Format::Text
                && let Some(l) = event_line(&Event::Alert(a.clone()))
            {
                crate::show!("{l}");
            }
        })?;
        violations += r.alerts.len();
        if let Some(why) = &r.report.incomplete {
            incomplete += 1;
            crate::say!("watcher: {}: incomplete: {why}", report::safe(&r.log));
        }
        reports.push(r.report);
    }
    let colour = report::colour_for(std::io::stdout().is_terminal());
    if let Err(e) = report::write_all(&reports, opts.format, colour, &mut std::io::stdout().lock())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(ReplayError::Stdout(e).into());
    }
    crate::say_text!("{}", report::annotations_all(&reports));
    report::append_step_summary(&reports);
    Ok(if violations > 0 {
        crate::exitcode::POLICY_VIOLATION
    } else if incomplete > 0 || reports.iter().any(|r| r.verdict() == report::Verdict::Incomplete) {
        crate::exitcode::EVENTS_LOST
    } else {
        0
    })
}
