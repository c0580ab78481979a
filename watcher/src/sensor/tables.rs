//! A job's compiled policy in the kernel maps: written before the job's first process runs,
//! replaced on reload, removed when the job ends. Every write and removal is checked: a
//! failure is an error, never dropped (a removal of an entry that is not there is fine).
use aya::maps::{
    Array, HashMap, MapError,
    lpm_trie::{Key as LpmKey, LpmTrie},
};
use watcher_common::{
    CFG_SEED, DeputyKey, ExecKey, JOB_ADDR_LEN, NameKey, PortSet, host_ports_key, job_addr_key,
    maps::{deputy_key, names},
};

use super::{Sensor, SensorError, load::map_mut};
use crate::policy::kernel::KernelTables;

fn opened<T>(map: &'static str, r: Result<T, MapError>) -> Result<T, SensorError> {
    r.map_err(|e| SensorError::map(map, "opening", e))
}

fn written(map: &'static str, r: Result<(), MapError>) -> Result<(), SensorError> {
    r.map_err(|e| SensorError::map(map, "writing", e))
}

/// A removal: an entry already gone (ENOENT) is not an error.
fn removed(map: &'static str, r: Result<(), MapError>) -> Result<(), SensorError> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(SensorError::map(map, "removing from", e)),
    }
}

impl Sensor {
    /// Write a compiled policy into the kernel maps for `job`. Must happen before the job's
    /// first process starts (daemon jobs: before the stopped process is continued). The job's
    /// flags are written last, so the kernel never sees a half-written job as set up.
    pub fn apply_policy(&mut self, job: u32, t: &KernelTables) -> Result<(), SensorError> {
        let e = &mut self.ebpf;
        let mut config = opened(names::CONFIG, Array::<_, u64>::try_from(map_mut(e, names::CONFIG)?))?;
        written(names::CONFIG, config.set(CFG_SEED, &t.seed, 0))?;
        let mut m = opened(names::DNS_NAMES, HashMap::<_, NameKey, u64>::try_from(map_mut(e, names::DNS_NAMES)?))?;
        for (h, v) in &t.names {
            written(names::DNS_NAMES, m.insert(&([*h, job as u64]), v, 0))?;
        }
        let mut m =
            opened(names::DNS_SUFFIXES, HashMap::<_, NameKey, u64>::try_from(map_mut(e, names::DNS_SUFFIXES)?))?;
        for (h, v) in &t.suffixes {
            written(names::DNS_SUFFIXES, m.insert(&([*h, job as u64]), v, 0))?;
        }
        let mut m = opened(
            names::ALLOW_NET,
            LpmTrie::<_, [u8; JOB_ADDR_LEN], PortSet>::try_from(map_mut(e, names::ALLOW_NET)?),
        )?;
        for (addr, prefix, ports) in &t.nets {
            written(names::ALLOW_NET, m.insert(&LpmKey::new(32 + *prefix, job_addr_key(job, addr)), ports, 0))?;
        }
        let mut m = opened(
            names::PROXY_NET,
            LpmTrie::<_, [u8; JOB_ADDR_LEN], PortSet>::try_from(map_mut(e, names::PROXY_NET)?),
        )?;
        for (addr, prefix, ports) in &t.proxies {
            written(names::PROXY_NET, m.insert(&LpmKey::new(32 + *prefix, job_addr_key(job, addr)), ports, 0))?;
        }
        let mut m =
            opened(names::RESOLVERS, HashMap::<_, [u8; JOB_ADDR_LEN], u32>::try_from(map_mut(e, names::RESOLVERS)?))?;
        for r in &t.resolvers {
            written(names::RESOLVERS, m.insert(&(job_addr_key(job, r)), &1, 0))?;
        }
        let mut m = opened(names::HOST_PORTS, HashMap::<_, u64, PortSet>::try_from(map_mut(e, names::HOST_PORTS)?))?;
        for (i, p) in t.host_ports.iter().enumerate() {
            written(names::HOST_PORTS, m.insert(&(host_ports_key(job, i as u32)), p, 0))?;
        }
        let mut m = opened(names::EXEC_RULES, HashMap::<_, ExecKey, u32>::try_from(map_mut(e, names::EXEC_RULES)?))?;
        for (k, f) in &t.exec_rules {
            written(names::EXEC_RULES, m.insert(&(ExecKey { job, name: *k }), f, 0))?;
        }
        let mut m = opened(names::DEPUTIES, HashMap::<_, DeputyKey, u32>::try_from(map_mut(e, names::DEPUTIES)?))?;
        for k in t.deputies.iter().filter_map(|p| deputy_key(job, p)) {
            written(names::DEPUTIES, m.insert(&k, &1, 0))?;
        }
        let mut m = opened(names::JOBS, HashMap::<_, u32, u32>::try_from(map_mut(e, names::JOBS)?))?;
        written(names::JOBS, m.insert(&job, &t.job_flags, 0))?;
        Ok(())
    }

    /// Replace a job's policy (SIGHUP reload): the new entries are written first, then the
    /// old ones the new policy does not have are removed, so nothing the new policy allows
    /// is ever denied in between.
    pub fn replace_policy(&mut self, job: u32, old: &KernelTables, new: &KernelTables) -> Result<(), SensorError> {
        self.apply_policy(job, new)?;
        let stale = KernelTables {
            job_flags: 0,
            seed: 0,
            nets: old.nets.iter().filter(|n| !new.nets.iter().any(|m| m.0 == n.0 && m.1 == n.1)).cloned().collect(),
            resolvers: old.resolvers.iter().filter(|r| !new.resolvers.contains(r)).cloned().collect(),
            names: old.names.iter().filter(|n| !new.names.iter().any(|m| m.0 == n.0)).cloned().collect(),
            suffixes: old.suffixes.iter().filter(|n| !new.suffixes.iter().any(|m| m.0 == n.0)).cloned().collect(),
            host_ports: Vec::new(),
            exec_rules: old.exec_rules.iter().filter(|n| !new.exec_rules.iter().any(|m| m.0 == n.0)).cloned().collect(),
            deputies: old.deputies.iter().filter(|d| !new.deputies.contains(d)).cloned().collect(),
            proxies: old
                .proxies
                .iter()
                .filter(|n| !new.proxies.iter().any(|m| m.0 == n.0 && m.1 == n.1))
                .cloned()
                .collect(),
        };
        self.remove_entries(job, &stale, new.host_ports.len()..old.host_ports.len().max(new.host_ports.len()))
    }

    /// Forget a job that ended: its policy entries, the addresses it learned and its flags.
    pub fn remove_job(&mut self, job: u32, t: &KernelTables) -> Result<(), SensorError> {
        self.remove_entries(job, t, 0..t.host_ports.len())?;
        let e = &mut self.ebpf;
        let mut learned =
            opened(names::LEARNED, HashMap::<_, [u8; JOB_ADDR_LEN], u64>::try_from(map_mut(e, names::LEARNED)?))?;
        let prefix = job.to_be_bytes();
        let keys: Vec<[u8; JOB_ADDR_LEN]> =
            learned.keys().filter_map(Result::ok).filter(|k| k[..4] == prefix).collect();
        for k in keys {
            removed(names::LEARNED, learned.remove(&k))?;
        }
        let mut jobs = opened(names::JOBS, HashMap::<_, u32, u32>::try_from(map_mut(e, names::JOBS)?))?;
        removed(names::JOBS, jobs.remove(&job))
    }

    fn remove_entries(
        &mut self,
        job: u32,
        t: &KernelTables,
        host_ports: std::ops::Range<usize>,
    ) -> Result<(), SensorError> {
        let e = &mut self.ebpf;
        let mut m = opened(names::DNS_NAMES, HashMap::<_, NameKey, u64>::try_from(map_mut(e, names::DNS_NAMES)?))?;
        for (h, _) in &t.names {
            removed(names::DNS_NAMES, m.remove(&[*h, job as u64]))?;
        }
        let mut m =
            opened(names::DNS_SUFFIXES, HashMap::<_, NameKey, u64>::try_from(map_mut(e, names::DNS_SUFFIXES)?))?;
        for (h, _) in &t.suffixes {
            removed(names::DNS_SUFFIXES, m.remove(&[*h, job as u64]))?;
        }
        let mut m = opened(
            names::ALLOW_NET,
            LpmTrie::<_, [u8; JOB_ADDR_LEN], PortSet>::try_from(map_mut(e, names::ALLOW_NET)?),
        )?;
        for (addr, prefix, _) in &t.nets {
            removed(names::ALLOW_NET, m.remove(&LpmKey::new(32 + *prefix, job_addr_key(job, addr))))?;
        }
        let mut m = opened(
            names::PROXY_NET,
            LpmTrie::<_, [u8; JOB_ADDR_LEN], PortSet>::try_from(map_mut(e, names::PROXY_NET)?),
        )?;
        for (addr, prefix, _) in &t.proxies {
            removed(names::PROXY_NET, m.remove(&LpmKey::new(32 + *prefix, job_addr_key(job, addr))))?;
        }
        let mut m =
            opened(names::RESOLVERS, HashMap::<_, [u8; JOB_ADDR_LEN], u32>::try_from(map_mut(e, names::RESOLVERS)?))?;
        for r in &t.resolvers {
            removed(names::RESOLVERS, m.remove(&job_addr_key(job, r)))?;
        }
        let mut m = opened(names::HOST_PORTS, HashMap::<_, u64, PortSet>::try_from(map_mut(e, names::HOST_PORTS)?))?;
        for i in host_ports {
            removed(names::HOST_PORTS, m.remove(&host_ports_key(job, i as u32)))?;
        }
        let mut m = opened(names::EXEC_RULES, HashMap::<_, ExecKey, u32>::try_from(map_mut(e, names::EXEC_RULES)?))?;
        for (k, _) in &t.exec_rules {
            removed(names::EXEC_RULES, m.remove(&ExecKey { job, name: *k }))?;
        }
        let mut m = opened(names::DEPUTIES, HashMap::<_, DeputyKey, u32>::try_from(map_mut(e, names::DEPUTIES)?))?;
        for k in t.deputies.iter().filter_map(|p| deputy_key(job, p)) {
            removed(names::DEPUTIES, m.remove(&k))?;
        }
        Ok(())
    }
}
