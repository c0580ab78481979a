//! The JSON Lines event log: one event per line, flushed regularly so a crash loses little.
//! `-` is standard output; a name ending in `.gz` is written gzip-compressed (each flush ends
//! a deflate block, so a log cut short still decompresses up to its last flush). Files are
//! opened by [`crate::outfile::create`]: no planted link is followed, created `0600`.
use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
};

use crate::{error::Doing as _, outfile::OutputError};
use flate2::{Compression, write::GzEncoder};

use crate::event::Event;

enum Inner {
    File(File),
    Gz(GzEncoder<File>),
    Stdout(std::io::Stdout),
}

impl Write for Inner {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Inner::File(f) => f.write(buf),
            Inner::Gz(g) => g.write(buf),
            Inner::Stdout(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Inner::File(f) => f.flush(),
            Inner::Gz(g) => g.flush(),
            Inner::Stdout(s) => s.flush(),
        }
    }
}

pub struct LogWriter {
    path: PathBuf,
    out: BufWriter<Inner>,
}

/// Whether a log name asks for gzip (`.gz`, any case).
pub fn is_gzip_name(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

impl LogWriter {
    pub fn create(path: &Path) -> Result<LogWriter, OutputError> {
        let inner = if path == Path::new("-") {
            Inner::Stdout(std::io::stdout())
        } else {
            let f = crate::outfile::create(path, "event log")?;
            if is_gzip_name(path) { Inner::Gz(GzEncoder::new(f, Compression::default())) } else { Inner::File(f) }
        };
        Ok(LogWriter { path: path.to_path_buf(), out: BufWriter::with_capacity(64 * 1024, inner) })
    }

    fn name(&self) -> String {
        if self.path == Path::new("-") { "<stdout>".into() } else { self.path.display().to_string() }
    }

    pub fn write(&mut self, e: &Event) -> Result<(), OutputError> {
        serde_json::to_writer(&mut self.out, e)
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"))
            .doing(|| format!("writing event log {}", self.name()))
            .map_err(OutputError::from)
    }

    pub fn flush(&mut self) -> Result<(), OutputError> {
        self.out.flush().doing(|| format!("writing event log {}", self.name())).map_err(OutputError::from)
    }

    /// Flush everything (the gzip trailer too) and sync the file to disk.
    pub fn finish(&mut self) -> Result<(), OutputError> {
        self.flush()?;
        let name = self.name();
        match self.out.get_mut() {
            Inner::File(f) => f.sync_data(),
            Inner::Gz(g) => g.try_finish().and_then(|()| g.get_ref().sync_data()),
            Inner::Stdout(_) => Ok(()),
        }
        .doing(|| format!("syncing event log {name}"))?;
        Ok(())
    }
}

/// An argument as the log records it: valid UTF-8 as it is, each byte that is not part of
/// valid UTF-8 as `\xNN` (the command itself receives the bytes unchanged).
pub fn arg_for_log(a: &std::ffi::OsStr) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let mut out = String::new();
    for chunk in a.as_bytes().utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt as _;

    use super::*;

    #[test]
    fn non_utf8_arguments_are_escaped_for_the_log() {
        assert_eq!(arg_for_log(std::ffi::OsStr::from_bytes(b"caf\xc3\xa9")), "café");
        assert_eq!(arg_for_log(std::ffi::OsStr::from_bytes(b"a\xffb\xfe")), "a\\xffb\\xfe");
    }

    #[test]
    fn gz_names_write_gzip_that_replay_reads() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("e.JSONL.GZ");
        let mut w = LogWriter::create(&p).unwrap();
        let e = Event::End(crate::event::End { ts: crate::event::Ts(0), exit_code: Some(0), lost: 0 });
        w.write(&e).unwrap();
        w.finish().unwrap();
        let raw = std::fs::read(&p).unwrap();
        assert_eq!(&raw[..2], &[0x1f, 0x8b]);
        let mut n = 0;
        crate::replay::for_each_event(&p, |got, _| {
            assert_eq!(got, e);
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 1);
    }
}
