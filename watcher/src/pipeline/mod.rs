//! One pipeline per job, built the same way by `watcher run`, by each daemon job and by
//! `watcher replay`:
//!
//! ```text
//! records ─▶ collector ─▶ enrichment ─▶ sinks (log, live lines, ...) ─▶ engine ─▶ alerts ─▶ sinks
//!                                          └────────── report model ◀──────────────┘
//! ```
//!
//! * the collector ([`crate::collect`]) turns kernel records into events (DNS queries paired
//!   with their answers, secrets found, argv redacted);
//! * enrichment adds what only the live machine knows (the working directory of an exec, the
//!   step's first process's parent), before anything is logged, so replay sees the same facts;
//! * every event is written to the sinks, then judged by the engine (pure: it sees exactly
//!   what was logged, as replay will); its alerts are written to the sinks after the event;
//! * losses are accounted once ([`loss::LossAccount`]) and enter as `loss` events.
//!
//! Replay feeds recorded events (no collector, no enrichment, no log) and gets the same
//! verdicts from the same engine.
pub mod loss;
pub mod sink;

use crate::{
    collect::Collector,
    engine::Engine,
    event::{Alert, End, Event},
    record::Record,
    report::Report,
    sensor::ring::Decoded,
    session::now_ts,
};
pub use sink::PipelineError;
use sink::Sink;

/// One alert and how long it took to raise: from the kernel timestamp of the event that raised
/// it to the wall-clock moment the pipeline emitted it (`watcher drill`, `watcher-bench latency`).
#[derive(Clone, Debug)]
pub struct AlertTiming {
    pub alert: Alert,
    pub latency_ns: u64,
}

/// What the live machine adds to events before they are logged.
#[derive(Clone, Debug, Default)]
pub struct Enrichment {
    /// Read each exec's working directory from /proc (best effort: the process may be gone).
    pub cwd: bool,
    /// `watcher run`: the step's first process, forked by watcher before the kernel knew it:
    /// its parent is `parent`.
    pub root: Option<(u32, u32)>,
}

impl Enrichment {
    fn apply(&self, e: &mut Event) {
        if let Some((root, parent)) = self.root
            && let Some(p) = e.proc_mut()
            && p.pid == root
            && p.ppid == 0
        {
            p.ppid = parent;
        }
        if self.cwd
            && let Event::Exec(x) = e
        {
            x.cwd =
                std::fs::read_link(format!("/proc/{}/cwd", x.proc.pid)).ok().map(|p| p.to_string_lossy().into_owned());
        }
    }
}

pub struct Pipeline {
    collector: Collector,
    enrichment: Enrichment,
    engine: Option<Engine>,
    sinks: Vec<Box<dyn Sink>>,
    /// The report model: every event and alert, for the end-of-step report.
    pub report: Report,
    pub loss: loss::LossAccount,
    /// Events and alerts written.
    pub events: u64,
    pub alerts: u64,
    timings: Vec<AlertTiming>,
    /// The report keeps only the loss totals ([`Pipeline::without_report`]).
    report_off: bool,
}

impl Pipeline {
    pub fn new(collector: Collector, enrichment: Enrichment, engine: Option<Engine>, report: Report) -> Pipeline {
        Pipeline {
            collector,
            enrichment,
            engine,
            sinks: Vec::new(),
            report,
            loss: Default::default(),
            events: 0,
            alerts: 0,
            timings: Vec::new(),
            report_off: false,
        }
    }

    /// A pipeline whose report keeps only the loss totals (for the `end` record): for a log
    /// that has no end-of-step report and lasts as long as the daemon (the no-job log), whose
    /// report would grow without bound.
    pub fn without_report(mut self) -> Pipeline {
        self.report_off = true;
        self
    }

    /// A pipeline for replay: no collector, no enrichment, no sinks.
    pub fn replay(engine: Engine, report: Report) -> Pipeline {
        Pipeline::new(Collector::new(0), Enrichment::default(), Some(engine), report)
    }

    pub fn with_sink(mut self, s: impl Sink + 'static) -> Pipeline {
        self.sinks.push(Box::new(s));
        self
    }

    pub fn collector_mut(&mut self) -> &mut Collector {
        &mut self.collector
    }

    pub fn engine(&self) -> Option<&Engine> {
        self.engine.as_ref()
    }

    pub fn engine_mut(&mut self) -> Option<&mut Engine> {
        self.engine.as_mut()
    }

    pub fn set_root(&mut self, root: u32, parent: u32) {
        self.enrichment.root = Some((root, parent));
    }

    /// Every alert raised so far with its detection latency.
    pub fn take_timings(&mut self) -> Vec<AlertTiming> {
        std::mem::take(&mut self.timings)
    }

    /// A batch of decoded ring-buffer records. Undecodable ones are counted as losses.
    pub fn records(&mut self, batch: &mut Vec<Decoded>) -> Result<Vec<Alert>, PipelineError> {
        let mut events = Vec::with_capacity(batch.len());
        for r in batch.drain(..) {
            match r {
                Ok(rec) => self.collector.push(rec, &mut events),
                Err(e) => {
                    tracing::debug!("undecodable record: {e}");
                    self.loss.decode_error();
                }
            }
        }
        self.events_in(events)
    }

    /// One record.
    pub fn record(&mut self, rec: Record) -> Result<Vec<Alert>, PipelineError> {
        let mut events = Vec::new();
        self.collector.push(rec, &mut events);
        self.events_in(events)
    }

    fn events_in(&mut self, events: Vec<Event>) -> Result<Vec<Alert>, PipelineError> {
        let mut alerts = Vec::new();
        for e in events {
            alerts.extend(self.event(e)?);
        }
        Ok(alerts)
    }

    /// One live event: enriched, written, judged; its alerts written after it.
    pub fn event(&mut self, mut e: Event) -> Result<Vec<Alert>, PipelineError> {
        self.enrichment.apply(&mut e);
        // A shell the kernel holds: its facts, read while it is stopped, for the engine.
        crate::held::before(self.engine.as_ref(), &mut e);
        // Protected values out of every event before any sink sees it (raw, hex, base32,
        // base64, in argv, command, messages): the one place, for run and the daemon.
        crate::redact::event(self.collector.secrets(), &mut e);
        self.write(&e)?;
        let alerts = match &mut self.engine {
            Some(engine) => engine.process(&e),
            None => Vec::new(),
        };
        // ... and killed or continued on the verdict.
        crate::held::after(self.engine.as_ref(), &e);
        for a in &alerts {
            let latency_ns = now_ts().0.saturating_sub(a.ts.0);
            self.timings.push(AlertTiming { alert: a.clone(), latency_ns });
            self.write(&Event::Alert(a.clone()))?;
        }
        Ok(alerts)
    }

    /// Alerts the engine raises outside an event (`judge`), written like an event's alerts.
    pub fn alerts(&mut self, judge: impl FnOnce(&mut Engine) -> Vec<Alert>) -> Result<Vec<Alert>, PipelineError> {
        let alerts = match &mut self.engine {
            Some(engine) => judge(engine),
            None => Vec::new(),
        };
        for a in &alerts {
            self.write(&Event::Alert(a.clone()))?;
        }
        Ok(alerts)
    }

    /// One recorded event (replay), from log line `line`. The log's own alerts are the live
    /// run's verdicts: the caller skips them; replay makes its own.
    pub fn replayed(&mut self, e: &Event, line: u64) -> Vec<Alert> {
        self.report.add(e);
        let alerts = match &mut self.engine {
            Some(engine) => engine.process(e),
            None => Vec::new(),
        };
        for a in &alerts {
            self.report.add_alert(a.clone(), Some(line));
        }
        alerts
    }

    fn write(&mut self, e: &Event) -> Result<(), PipelineError> {
        self.events += 1;
        if matches!(e, Event::Alert(_)) {
            self.alerts += 1;
        }
        if !self.report_off {
            self.report.add(e);
        } else if let Event::Loss(l) = e {
            *self.report.lost.entry(l.source.clone()).or_default() += l.count;
        }
        for s in &mut self.sinks {
            s.write(e)?;
        }
        Ok(())
    }

    /// Losses given the kernel's counter totals (or none: decode errors only). `watched`: the
    /// job's processes, among which shells held for an exec record that was lost are killed
    /// (enforce mode; [`crate::held::after_loss`]).
    pub fn losses(
        &mut self,
        totals: &[u64; watcher_common::NUM_COUNTERS as usize],
        watched: &dyn Fn() -> Vec<u32>,
    ) -> Result<Vec<Alert>, PipelineError> {
        let losses = self.loss.losses(totals);
        let mut alerts = Vec::new();
        for l in losses {
            let source = l.source.clone();
            alerts.extend(self.event(Event::Loss(l))?);
            crate::held::after_loss(self.engine.as_ref(), &source, watched);
        }
        Ok(alerts)
    }

    /// The periodic tick: DNS queries whose answer did not come are logged; sinks flushed.
    pub fn tick(&mut self, now_boot_ns: u64) -> Result<Vec<Alert>, PipelineError> {
        let mut ev = Vec::new();
        self.collector.expire(now_boot_ns, &mut ev);
        let alerts = self.events_in(ev)?;
        self.flush()?;
        Ok(alerts)
    }

    pub fn flush(&mut self) -> Result<(), PipelineError> {
        for s in &mut self.sinks {
            s.flush()?;
        }
        Ok(())
    }

    /// The step is over: what the collector still holds.
    pub fn drain_collector(&mut self) -> Result<Vec<Alert>, PipelineError> {
        let mut ev = Vec::new();
        self.collector.finish(&mut ev);
        self.events_in(ev)
    }

    /// The `end` record; the sinks are made durable. Returns the events lost in all.
    pub fn end(&mut self, exit_code: Option<i32>) -> Result<u64, PipelineError> {
        let lost = self.report.lost_total();
        self.event(Event::End(End { ts: now_ts(), exit_code, lost }))?;
        for s in &mut self.sinks {
            s.finish()?;
        }
        Ok(lost)
    }

    /// Enforce mode fails closed: the exit code the step must have instead of the command's
    /// (a violation: 77; lost events: 78), or None.
    pub fn enforce_failure(&self, lost: u64) -> Option<i32> {
        self.engine.as_ref().and_then(|e| e.enforce_failure(lost))
    }
}
