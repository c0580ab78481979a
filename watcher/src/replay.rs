//! `watcher replay LOG...`: feed recorded events through the same engine `watcher run` uses.
//! No privileges, no eBPF. With the policy used live it gives exactly the live alerts; with
//! another, what that policy would have flagged or blocked.
use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};

use crate::{
    engine::Engine,
    event::{Alert, Event, PolicyInfo},
    policy::{self, Mode, Policy},
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

/// Open a log, transparently gunzipping it (by its magic bytes, not its name).
fn open(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    let raw: Box<dyn Read> = if path == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(File::open(path).with_context(|| format!("{}: cannot read", path.display()))?)
    };
    let mut r = BufReader::with_capacity(256 * 1024, raw);
    let gz = r.fill_buf().map(|b| b.starts_with(&[0x1f, 0x8b])).unwrap_or(false);
    Ok(if gz {
        Box::new(BufReader::with_capacity(256 * 1024, flate2::bufread::MultiGzDecoder::new(r)))
    } else {
        Box::new(r)
    })
}

/// The policy to judge with: the one given, or the one the log says was used live.
fn policy_for(
    opts: &ReplayOptions,
    recorded: Option<&str>,
    recorded_mode: Option<Mode>,
    log: &str,
) -> anyhow::Result<Policy> {
    let path = match (&opts.policy, recorded) {
        (Some(p), _) => p.clone(),
        (None, Some(r)) => PathBuf::from(r),
        (None, None) => bail!("{log}: the log records no policy; give one with --policy FILE"),
    };
    let mut p = policy::load(&path).map_err(|e| anyhow!("{e}"))?;
    // The mode the log was recorded in (`--mode audit` of the live run), unless --mode says.
    if let Some(m) = opts.mode.or(recorded_mode) {
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
pub fn for_each_event(path: &Path, f: impl FnMut(Event, u64) -> anyhow::Result<()>) -> anyhow::Result<()> {
    for_each_event_with(path, crate::parse::parse_line, f)
}

/// A line parser: [`crate::parse::parse_line`], or the reference serde path (benchmarks).
pub type Parser = fn(&[u8]) -> Result<Event, serde_json::Error>;

/// [`for_each_event`] with a given line parser.
pub fn for_each_event_with(
    path: &Path,
    parse: Parser,
    mut f: impl FnMut(Event, u64) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let name = log_name(path);
    let mut reader = open(path)?;
    crate::parse::for_each_line(
        &mut reader,
        |line, n| {
            let e = parse(line).map_err(|err| anyhow!("{name}:{n}: {err}"))?;
            f(e, n)
        },
        |err, n| anyhow::Error::new(err).context(format!("{name}:{n}: cannot read")),
    )
}

/// Replay one log.
pub fn replay_one(path: &Path, opts: &ReplayOptions, on_alert: impl FnMut(&Alert)) -> anyhow::Result<Replayed> {
    replay_one_with(path, opts, crate::parse::parse_line, on_alert)
}

/// [`replay_one`] with a given line parser.
pub fn replay_one_with(
    path: &Path,
    opts: &ReplayOptions,
    parse: Parser,
    mut on_alert: impl FnMut(&Alert),
) -> anyhow::Result<Replayed> {
    let name = log_name(path);
    let mut engine: Option<Engine> = None;
    let mut alerts = Vec::new();
    // The engine builds the process tree; the report takes it at the end.
    let mut report = Report { log: Some(name.clone()), engine_tree: true, ..Default::default() };
    for_each_event_with(path, parse, |e, n| {
        if matches!(e, Event::Alert(_)) {
            return Ok(()); // the live run's verdicts: replay makes its own
        }
        if engine.is_none() {
            let Event::Start(s) = &e else { bail!("{name}:{n}: the log does not begin with a start record") };
            let recorded = s.policy.as_ref().map(|p| p.source.as_str());
            let mode = s.policy.as_ref().and_then(|p| p.mode.parse::<Mode>().ok());
            let policy = policy_for(opts, recorded, mode, &name)?;
            warn_unrecorded_registries(&name, &policy, s);
            report.policy = Some(PolicyInfo {
                source: policy.source.clone(),
                pipeline: policy.pipeline.clone(),
                mode: policy.mode.as_str().to_string(),
            });
            engine = Some(Engine::new(policy));
        }
        report.add(&e);
        let engine = engine.as_mut().expect("set above");
        for a in engine.process(&e) {
            on_alert(&a);
            report.add_alert(a.clone(), Some(n));
            alerts.push(a);
        }
        Ok(())
    })?;
    let Some(mut engine) = engine else { bail!("{name}: empty log") };
    report.tree = engine.take_tree();
    report.watcher_exit = Some(report.replay_exit());
    Ok(Replayed { log: name, alerts, report })
}

/// A registry the policy allows but the log has no hosts for (it was recorded under a policy
/// without it): replay cannot know which hosts that package manager used on the recording
/// machine, so connections to them are judged as unknown destinations. Say so, once per
/// registry.
fn warn_unrecorded_registries(log: &str, policy: &Policy, start: &crate::event::Start) {
    for pm in policy.registries() {
        if !start.registries.contains_key(pm.as_str()) {
            eprintln!(
                "watcher: warning: {log}: the policy allows registry {}, but the log recorded no hosts for it \
                 (it was recorded under a policy without that registry); connections to that registry are judged \
                 as unknown destinations",
                pm.as_str()
            );
        }
    }
}

/// Run the replay command; returns the exit code.
pub fn replay(opts: ReplayOptions) -> anyhow::Result<i32> {
    use std::io::IsTerminal as _;
    let mut violations = 0usize;
    let mut reports = Vec::new();
    for log in &opts.logs {
        let r = replay_one(log, &opts, |a| {
            if opts.format == Format::Text
                && let Some(l) = event_line(&Event::Alert(a.clone()))
            {
                println!("{l}");
            }
        })?;
        violations += r.alerts.len();
        reports.push(r.report);
    }
    let colour = report::colour_for(std::io::stdout().is_terminal());
    print!("{}", report::render_all(&reports, opts.format, colour));
    eprint!("{}", report::annotations_all(&reports));
    report::append_step_summary(&reports);
    Ok(if violations > 0 { crate::exitcode::POLICY_VIOLATION } else { 0 })
}
