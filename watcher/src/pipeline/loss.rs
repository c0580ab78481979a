//! One loss accounting for every mode: the kernel's counters (by `watcher_common::Counter`)
//! and the records that could not be decoded, turned into `loss` events as they grow.
use watcher_common::{Counter, NUM_COUNTERS};

use crate::{event::Loss, session::now_ts};

#[derive(Default)]
pub struct LossAccount {
    seen: [u64; NUM_COUNTERS as usize],
    decode_errors: u64,
    decode_reported: u64,
}

impl LossAccount {
    /// A ring-buffer record that could not be decoded.
    pub fn decode_error(&mut self) {
        self.decode_errors += 1;
    }

    /// The `loss` events for what was lost since the last call, given the kernel's totals.
    pub fn losses(&mut self, totals: &[u64; NUM_COUNTERS as usize]) -> Vec<Loss> {
        let mut out = Vec::new();
        for c in Counter::ALL {
            let (i, t) = (c.index() as usize, totals[c.index() as usize]);
            if t > self.seen[i] {
                out.push(Loss { ts: now_ts(), source: c.name().into(), count: t - self.seen[i], total: t });
                self.seen[i] = t;
            }
        }
        if self.decode_errors > self.decode_reported {
            out.push(Loss {
                ts: now_ts(),
                source: "decode".into(),
                count: self.decode_errors - self.decode_reported,
                total: self.decode_errors,
            });
            self.decode_reported = self.decode_errors;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_increase_is_reported_once_with_its_total() {
        let mut a = LossAccount::default();
        let mut t = [0u64; NUM_COUNTERS as usize];
        assert!(a.losses(&t).is_empty());
        t[Counter::RingbufFullDns.index() as usize] = 3;
        a.decode_error();
        let l = a.losses(&t);
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].source.as_str(), l[0].count, l[0].total), ("dns", 3, 3));
        assert_eq!((l[1].source.as_str(), l[1].count), ("decode", 1));
        t[Counter::RingbufFullDns.index() as usize] = 5;
        let l = a.losses(&t);
        assert_eq!((l.len(), l[0].count, l[0].total), (1, 2, 5));
        assert!(a.losses(&t).is_empty());
    }
}
