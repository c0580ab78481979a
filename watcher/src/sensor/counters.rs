//! The kernel's per-CPU loss counters, summed, by `watcher_common::Counter`.
use aya::maps::PerCpuArray;
use watcher_common::{Counter, NUM_COUNTERS, maps::names};

use super::{Sensor, SensorError};

/// Names of the counters by index: the `loss.source` of the log, status and metrics.
pub const COUNTER_NAMES: [&str; NUM_COUNTERS as usize] = {
    let mut out = [""; NUM_COUNTERS as usize];
    let mut i = 0;
    while i < out.len() {
        out[i] = Counter::ALL[i].name();
        i += 1;
    }
    out
};

impl Sensor {
    /// Totals of the kernel's loss counters (summed over CPUs), by counter index.
    pub fn counters(&self) -> Result<[u64; NUM_COUNTERS as usize], SensorError> {
        let map =
            self.ebpf.map(names::COUNTERS).ok_or(SensorError::Missing { kind: "map", name: names::COUNTERS.into() })?;
        let arr = PerCpuArray::<_, u64>::try_from(map).map_err(|e| SensorError::map(names::COUNTERS, "opening", e))?;
        let mut totals = [0u64; NUM_COUNTERS as usize];
        for (i, t) in totals.iter_mut().enumerate() {
            let values = arr.get(&(i as u32), 0).map_err(|e| SensorError::map(names::COUNTERS, "reading", e))?;
            *t = values.iter().sum();
        }
        Ok(totals)
    }
}
