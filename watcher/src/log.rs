//! The JSON Lines event log: one event per line, flushed regularly so a crash loses little.
use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use crate::event::Event;

pub struct LogWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl LogWriter {
    pub fn create(path: &Path) -> anyhow::Result<LogWriter> {
        let f = File::create(path).with_context(|| format!("cannot write event log {}", path.display()))?;
        Ok(LogWriter { path: path.to_path_buf(), out: BufWriter::with_capacity(64 * 1024, f) })
    }

    pub fn write(&mut self, e: &Event) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.out, e)
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"))
            .with_context(|| format!("writing event log {}", self.path.display()))
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.out.flush().with_context(|| format!("writing event log {}", self.path.display()))
    }

    pub fn finish(&mut self) -> anyhow::Result<()> {
        self.flush()?;
        self.out.get_ref().sync_data().with_context(|| format!("syncing event log {}", self.path.display()))
    }
}
