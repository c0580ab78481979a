//! Where a job's events go once judged: its event log (plain or rotating), the live lines on
//! stderr, and the report model. The pipeline writes every event to every sink in order.
use crate::{
    event::Event,
    log::LogWriter,
    report::{Report, event_line},
};

pub trait Sink {
    fn write(&mut self, e: &Event) -> anyhow::Result<()>;
    /// Called on every tick (about 200 ms) and at the end.
    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// The end: make it durable.
    fn finish(&mut self) -> anyhow::Result<()> {
        self.flush()
    }
}

impl Sink for LogWriter {
    fn write(&mut self, e: &Event) -> anyhow::Result<()> {
        LogWriter::write(self, e)
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        LogWriter::flush(self)
    }
    fn finish(&mut self) -> anyhow::Result<()> {
        LogWriter::finish(self)
    }
}

/// One readable line per event on stderr (`watcher: ...`); with `quiet`, only alerts and
/// lost events.
pub struct LiveLines {
    pub quiet: bool,
}

impl Sink for LiveLines {
    fn write(&mut self, e: &Event) -> anyhow::Result<()> {
        let show = !self.quiet || matches!(e, Event::Alert(_) | Event::Loss(_));
        if show && let Some(line) = event_line(e) {
            eprintln!("watcher: {line}");
        }
        Ok(())
    }
}

/// Alerts to the daemon's own log (tracing), one line each, untrusted text escaped.
pub struct DaemonLines {
    pub job: String,
}

impl Sink for DaemonLines {
    fn write(&mut self, e: &Event) -> anyhow::Result<()> {
        if let Event::Alert(a) = e {
            tracing::warn!(job = %self.job, rule = %a.rule, action = %a.action, severity = %a.severity, pid = a.pid,
                "alert: {}", crate::report::safe(&a.message));
        }
        Ok(())
    }
}

impl Sink for Report {
    fn write(&mut self, e: &Event) -> anyhow::Result<()> {
        self.add(e);
        Ok(())
    }
}
