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
    event::{Alert, Event},
    policy::{self, Mode, Policy},
    report::{Summary, event_line},
};

pub struct ReplayOptions {
    /// Log files; `-` is standard input. Plain or gzip-compressed.
    pub logs: Vec<PathBuf>,
    pub policy: Option<PathBuf>,
    pub mode: Option<Mode>,
    pub json: bool,
}

/// The verdicts of one log.
pub struct Replayed {
    pub log: String,
    pub alerts: Vec<Alert>,
    pub summary: Summary,
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
    Ok(if gz { Box::new(BufReader::with_capacity(256 * 1024, flate2::bufread::MultiGzDecoder::new(r))) } else { Box::new(r) })
}

/// The policy to judge with: the one given, or the one the log says was used live.
fn policy_for(opts: &ReplayOptions, recorded: Option<&str>, log: &str) -> anyhow::Result<Policy> {
    let path = match (&opts.policy, recorded) {
        (Some(p), _) => p.clone(),
        (None, Some(r)) => PathBuf::from(r),
        (None, None) => bail!("{log}: the log records no policy; give one with --policy FILE"),
    };
    let mut p = policy::load(&path).map_err(|e| anyhow!("{e}"))?;
    if let Some(m) = opts.mode {
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
pub fn for_each_event(path: &Path, mut f: impl FnMut(Event, u64) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let name = log_name(path);
    let mut reader = open(path)?;
    let mut line = String::new();
    let mut n = 0u64;
    loop {
        line.clear();
        let read = reader.read_line(&mut line).with_context(|| format!("{name}:{}: cannot read", n + 1))?;
        if read == 0 {
            return Ok(());
        }
        n += 1;
        if line.trim().is_empty() {
            continue;
        }
        let e: Event = serde_json::from_str(&line).map_err(|err| anyhow!("{name}:{n}: {err}"))?;
        f(e, n)?;
    }
}

/// Replay one log.
pub fn replay_one(path: &Path, opts: &ReplayOptions, mut on_alert: impl FnMut(&Alert)) -> anyhow::Result<Replayed> {
    let name = log_name(path);
    let mut engine: Option<Engine> = None;
    let mut alerts = Vec::new();
    let mut summary = Summary::default();
    for_each_event(path, |e, n| {
        if matches!(e, Event::Alert(_)) {
            return Ok(()); // the live run's verdicts: replay makes its own
        }
        if engine.is_none() {
            let Event::Start(s) = &e else { bail!("{name}:{n}: the log does not begin with a start record") };
            let recorded = s.policy.as_ref().map(|p| p.source.as_str());
            engine = Some(Engine::new(policy_for(opts, recorded, &name)?));
        }
        summary.add(&e);
        let engine = engine.as_mut().expect("set above");
        for a in engine.process(&e) {
            on_alert(&a);
            summary.add(&Event::Alert(a.clone()));
            alerts.push(a);
        }
        Ok(())
    })?;
    if engine.is_none() {
        bail!("{name}: empty log");
    }
    Ok(Replayed { log: name, alerts, summary })
}

/// Run the replay command; returns the exit code.
pub fn replay(opts: ReplayOptions) -> anyhow::Result<i32> {
    let mut violations = 0usize;
    let mut reports = Vec::new();
    for log in &opts.logs {
        let r = replay_one(log, &opts, |a| {
            if !opts.json {
                if let Some(l) = event_line(&Event::Alert(a.clone())) {
                    println!("{l}");
                }
            }
        })?;
        violations += r.alerts.len();
        if opts.json {
            reports.push(serde_json::json!({
                "log": r.log,
                "alerts": r.alerts,
                "lost": r.summary.lost_total(),
            }));
        } else {
            print!("{}: {}", r.log, r.summary.render());
        }
    }
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "logs": reports }))?);
    }
    Ok(if violations > 0 { crate::exitcode::POLICY_VIOLATION } else { 0 })
}
