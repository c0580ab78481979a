//! The ring buffer: every record the kernel programs send, decoded (length-checked, tag
//! matched) by `record::decode`.
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use tokio::io::unix::AsyncFd;
use watcher_common::maps::names;

use super::{Sensor, SensorError};
use crate::record;

pub type Decoded = Result<record::Record, record::DecodeError>;

pub fn open(ebpf: &mut Ebpf) -> Result<AsyncFd<RingBuf<MapData>>, SensorError> {
    let map = ebpf.take_map(names::EVENTS).ok_or(SensorError::Missing { kind: "map", name: names::EVENTS.into() })?;
    let ring = RingBuf::try_from(map).map_err(|e| SensorError::map(names::EVENTS, "opening", e))?;
    // SAFETY: the ring buffer's fd is owned by `ring`, which the AsyncFd owns and keeps open
    // (as the same file description) for as long as it is registered.
    unsafe { AsyncFd::register(ring) }.map_err(|e| SensorError::Ring(std::io::Error::other(e.to_string())))
}

/// Records decoded per wake-up at most. A full 8 MiB ring holds ~95,000 connect records:
/// decoded at once they took ~10 MiB of heap (and the batch kept that capacity); in batches
/// the agent's memory does not grow with the ring's fill, and the other work of the loop (the
/// daemon's sockets, ticks) runs in between.
pub const BATCH: usize = 1024;

/// The shortest time between two wake-ups that emptied the ring. The kernel wakes the reader
/// at the first record after it had caught up; a reader that drains and sleeps again at once is
/// woken for nearly every record of a storm (a cross-CPU wake-up and an interrupt each: ~7
/// records per wake-up in a 10,000-connect storm, a quarter of its watched overhead on a VM).
/// Reading again only after this pause lets a busy moment's records pile up, and be taken in
/// one pass: the kernel wakes the reader once per pause at most. A record waits at most this
/// long more; an idle agent is woken at the first record as before. The kernel decides every
/// verdict itself, so the pause delays only what the agent does (the log, a held shell's
/// judgement, a daemon job's start).
pub const PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

impl Sensor {
    /// Wait until records are available, then decode up to [`BATCH`] of them into `out`. When
    /// more are left, the ring stays ready and the next call takes them without waiting (the
    /// kernel wakes a reader only when it had caught up, so readiness must not be cleared then).
    /// Waits [`PAUSE`] after the previous drain emptied the ring before it reads again.
    /// Cancel-safe: a call dropped while it waits leaves nothing behind.
    pub async fn wait_and_drain(&mut self, out: &mut Vec<Decoded>) -> std::io::Result<()> {
        if let Some(at) = self.next_read {
            tokio::time::sleep_until(at).await;
        }
        let mut guard = self.ring.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let mut taken = 0;
        while taken < BATCH {
            let Some(item) = ring.next() else {
                guard.clear_ready();
                self.next_read = Some(tokio::time::Instant::now() + PAUSE);
                return Ok(());
            };
            out.push(record::decode(&item));
            taken += 1;
        }
        // More are left: the next call takes them at once.
        self.next_read = None;
        Ok(())
    }

    /// Decode whatever is in the ring buffer now, without waiting.
    pub fn drain(&mut self, out: &mut Vec<Decoded>) {
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            out.push(record::decode(&item));
        }
    }
}
