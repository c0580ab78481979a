//! The file sensor's table (`FILE_RULES`, see watcher-ebpf/src/files.rs) and the start-up
//! probe of the hooks that would close its io_uring gap (fentry, BPF LSM).
use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use watcher_common::{FILE_KEY_LEN, FILE_KEY_PATH, maps::names};

use super::{Sensor, SensorError, load::map_mut};
use crate::{event::SensorState, files::FileRule};

fn key(job: u32, r: &FileRule) -> Option<LpmKey<[u8; FILE_KEY_LEN]>> {
    if r.prefix.is_empty() || r.prefix.len() > FILE_KEY_PATH {
        return None;
    }
    let mut data = [0u8; FILE_KEY_LEN];
    data[..4].copy_from_slice(&job.to_be_bytes());
    data[4..4 + r.prefix.len()].copy_from_slice(&r.prefix);
    Some(LpmKey::new(32 + 8 * r.prefix.len() as u32, data))
}

impl Sensor {
    /// Write a job's file rules (before its first process runs). Rules longer than a key are
    /// refused by `files::rules` already; one that still does not fit is an error here.
    pub fn apply_file_rules(&mut self, job: u32, rules: &[FileRule]) -> Result<(), SensorError> {
        let mut m = LpmTrie::<_, [u8; FILE_KEY_LEN], u32>::try_from(map_mut(&mut self.ebpf, names::FILE_RULES)?)
            .map_err(|e| SensorError::map(names::FILE_RULES, "opening", e))?;
        for r in rules {
            let Some(k) = key(job, r) else {
                return Err(SensorError::map(
                    names::FILE_RULES,
                    "writing",
                    aya::maps::MapError::OutOfBounds {
                        index: r.prefix.len() as u32,
                        max_entries: FILE_KEY_PATH as u32,
                    },
                ));
            };
            m.insert(&k, &r.flags, 0).map_err(|e| SensorError::map(names::FILE_RULES, "writing", e))?;
        }
        Ok(())
    }

    /// Forget a job's file rules (the job ended).
    pub fn remove_file_rules(&mut self, job: u32) -> Result<(), SensorError> {
        let mut m = LpmTrie::<_, [u8; FILE_KEY_LEN], u32>::try_from(map_mut(&mut self.ebpf, names::FILE_RULES)?)
            .map_err(|e| SensorError::map(names::FILE_RULES, "opening", e))?;
        let prefix = job.to_be_bytes();
        let keys: Vec<LpmKey<[u8; FILE_KEY_LEN]>> =
            m.keys().filter_map(Result::ok).filter(|k| k.data()[..4] == prefix).collect();
        for k in keys {
            match m.remove(&k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(SensorError::map(names::FILE_RULES, "removing from", e)),
            }
        }
        Ok(())
    }
}

/// Whether this kernel lets watcher load fentry (tracing) and BPF LSM programs, which see
/// file opens and reads whatever path the kernel takes (io_uring included). Probed once at
/// start and recorded in the start event; watcher ships none yet, so nothing uses them.
pub fn probe_hooks() -> SensorState {
    let (fentry, lsm) = super::hook_probe::probe();
    let yes = |b: bool| if b { "available" } else { "not available" };
    SensorState {
        name: "files".into(),
        active: true,
        detail: Some(format!(
            "sys_enter: openat/openat2/open/creat, process_vm_readv, ptrace (install scripts only, \
             absolute paths, decided in the kernel); io_uring opens are not seen; fentry {}, BPF LSM {} on this \
             kernel (not used)",
            yes(fentry),
            yes(lsm)
        )),
    }
}
