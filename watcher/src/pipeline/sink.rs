//! Where a job's events go once judged: its event log (plain or rotating), the live lines on
//! stderr, and the report model. The pipeline writes every event to every sink in order.
use crate::{
    event::Event,
    log::LogWriter,
    outfile::OutputError,
    report::{Report, event_line},
};

/// A sink that cannot take an event: its file cannot be written, or its stream cannot encode.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    Encode(#[from] serde_json::Error),
}

pub trait Sink {
    fn write(&mut self, e: &Event) -> Result<(), PipelineError>;
    /// Called on every tick (about 200 ms) and at the end.
    fn flush(&mut self) -> Result<(), PipelineError> {
        Ok(())
    }
    /// The end: make it durable.
    fn finish(&mut self) -> Result<(), PipelineError> {
        self.flush()
    }
}

impl Sink for LogWriter {
    fn write(&mut self, e: &Event) -> Result<(), PipelineError> {
        Ok(LogWriter::write(self, e)?)
    }
    fn flush(&mut self) -> Result<(), PipelineError> {
        Ok(LogWriter::flush(self)?)
    }
    fn finish(&mut self) -> Result<(), PipelineError> {
        Ok(LogWriter::finish(self)?)
    }
}

/// One readable line per event on stderr (`watcher: ...`); with `quiet`, only alerts and
/// lost events.
pub struct LiveLines {
    pub quiet: bool,
}

impl Sink for LiveLines {
    fn write(&mut self, e: &Event) -> Result<(), PipelineError> {
        let show = !self.quiet || matches!(e, Event::Alert(_) | Event::Loss(_));
        if show && let Some(line) = event_line(e) {
            crate::say!("watcher: {line}");
        }
        Ok(())
    }
}

/// Alerts to the daemon's own log (tracing), one line each, untrusted text escaped.
pub struct DaemonLines {
    pub job: String,
}

impl Sink for DaemonLines {
    fn write(&mut self, e: &Event) -> Result<(), PipelineError> {
        if let Event::Alert(a) = e {
            tracing::warn!(job = %self.job, rule = %a.rule, action = %a.action, severity = %a.severity, pid = a.pid,
                "alert: {}", crate::report::safe(&a.message));
        }
        Ok(())
    }
}

impl Sink for Report {
    fn write(&mut self, e: &Event) -> Result<(), PipelineError> {
        self.add(e);
        Ok(())
    }
}
