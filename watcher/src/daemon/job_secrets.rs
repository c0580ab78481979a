//! The protected values a daemon job's secret detection looks for. `watcher run` gives the
//! command its own environment, so its own environment is the step's; the daemon's is not:
//! a job's values are in its processes' environments. They are read from
//! `/proc/PID/environ` of the job's first process when the job is set up (the kernel holds it
//! stopped at exec until the daemon has written the job's tables, so its environment is
//! there and stable), and again at each exec of a job process (a step that exports a new
//! value, a later step of the same job started with its own environment), best effort: a
//! process that is gone before the daemon handles its exec is not read.
//!
//! Bounded: at most [`MAX_ENVIRON_BYTES`] of an environment are read, at most [`MAX_VALUES`]
//! distinct values are kept per job, and an environment already seen (hashed) is not parsed
//! twice. Values are never logged (names are); they live only as long as the job
//! ([`JobSecrets::clear`] at close).
use std::{
    collections::{BTreeMap, BTreeSet, HashSet, hash_map::RandomState},
    hash::BuildHasher as _,
    io::Read as _,
};

use crate::{
    policy::Policy,
    secrets::{SecretNames, SecretSet},
};

/// At most this many bytes of a process's environment are read.
pub const MAX_ENVIRON_BYTES: u64 = 1 << 20;
/// At most this many distinct protected values per job.
pub const MAX_VALUES: usize = 64;
/// Hashes of environments already looked at, kept to skip re-parsing (forgotten when full).
const MAX_SEEN: usize = 4096;

pub struct JobSecrets {
    patterns: Vec<String>,
    names: SecretNames,
    /// Protected variable -> its distinct values, in the order they were found.
    values: BTreeMap<String, Vec<String>>,
    count: usize,
    /// Names of values not kept because the job has [`MAX_VALUES`] already.
    refused: BTreeSet<String>,
    seen: HashSet<u64>,
    hasher: RandomState,
}

/// The values of a job's first process (`pid`, held or just exec'd), learned before its
/// `start` record is written so that the command line it carries is redacted; the
/// detectors to use from the start.
pub fn learn_first(secrets: &mut JobSecrets, pid: Option<u32>) -> Result<Vec<SecretSet>, super::DaemonError> {
    let Some(environ) = pid.and_then(read_environ) else { return Ok(Vec::new()) };
    let entries = secrets.unknown_entries(&environ);
    drop(environ);
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    secrets.add(entries);
    secrets.sets()
}

impl JobSecrets {
    /// The variables protected for a job under `policy`: its `secrets.env` globs plus
    /// [`crate::session::SECRET_CANDIDATES`] (as `watcher run` does, so a replay under a stricter
    /// policy finds the same).
    pub fn new(policy: Option<&Policy>) -> Result<JobSecrets, super::DaemonError> {
        let mut patterns: Vec<String> = crate::session::SECRET_CANDIDATES.iter().map(|s| s.to_string()).collect();
        if let Some(p) = policy {
            patterns.extend(p.secret_env_patterns().iter().cloned());
        }
        let names = SecretNames::new(&patterns).map_err(super::DaemonError::SecretPatterns)?;
        Ok(JobSecrets {
            patterns,
            names,
            values: BTreeMap::new(),
            count: 0,
            refused: BTreeSet::new(),
            seen: HashSet::new(),
            hasher: RandomState::new(),
        })
    }

    /// The protected entries of `environ` (NUL-separated `NAME=value`) this job does not
    /// know yet; empty for an environment already looked at.
    pub fn unknown_entries(&mut self, environ: &[u8]) -> Vec<(String, String)> {
        let h = self.hasher.hash_one(environ);
        if !self.seen.insert(h) {
            return Vec::new();
        }
        if self.seen.len() > MAX_SEEN {
            self.seen.clear();
            self.seen.insert(h);
        }
        let mut out: Vec<(String, String)> = Vec::new();
        for entry in environ.split(|&b| b == 0) {
            let Some(eq) = entry.iter().position(|&b| b == b'=') else { continue };
            let (Ok(name), Ok(value)) = (std::str::from_utf8(&entry[..eq]), std::str::from_utf8(&entry[eq + 1..]))
            else {
                continue;
            };
            if !self.names.protects(name, value) {
                continue;
            }
            if self.values.get(name).is_some_and(|vs| vs.iter().any(|v| v == value)) {
                continue;
            }
            if !out.iter().any(|(n, v)| n == name && v == value) {
                out.push((name.to_string(), value.to_string()));
            }
        }
        out
    }

    /// Keep `entries` (from [`JobSecrets::unknown_entries`]); returns the names of those kept.
    pub fn add(&mut self, entries: Vec<(String, String)>) -> Vec<String> {
        let mut added = Vec::new();
        for (name, value) in entries {
            let vs = self.values.entry(name.clone()).or_default();
            if vs.contains(&value) {
                continue;
            }
            if self.count >= MAX_VALUES {
                self.refused.insert(name);
                continue;
            }
            vs.push(value);
            self.count += 1;
            added.push(name);
        }
        added
    }

    /// Names whose values were not kept (the job reached [`MAX_VALUES`]).
    pub fn refused(&self) -> &BTreeSet<String> {
        &self.refused
    }

    /// The detectors: set `i` holds the `i`-th value of each variable (one set unless a
    /// variable has had several values).
    pub fn sets(&self) -> Result<Vec<SecretSet>, super::DaemonError> {
        let layers = self.values.values().map(Vec::len).max().unwrap_or(0);
        (0..layers)
            .map(|i| {
                let env = self.values.iter().filter_map(|(n, vs)| vs.get(i).map(|v| (n.clone(), v.clone())));
                SecretSet::new(&self.patterns, env).map_err(super::DaemonError::SecretPatterns)
            })
            .collect()
    }

    /// Number of values kept.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Drop every value (the job is over).
    pub fn clear(&mut self) {
        self.values.clear();
        self.count = 0;
        self.seen.clear();
    }
}

/// The environment of process `pid` (at most [`MAX_ENVIRON_BYTES`]), None when it is gone
/// or unreadable.
pub fn read_environ(pid: u32) -> Option<Vec<u8>> {
    let f = std::fs::File::open(format!("/proc/{pid}/environ")).ok()?;
    let mut buf = Vec::new();
    f.take(MAX_ENVIRON_BYTES).read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// Whether process `pid` started (forked) no later than `boot_ns` (CLOCK_BOOTTIME): the
/// process that exec'd then, not a later one that reused its pid. Read after the environment:
/// if this is still the same process, the environment read before was its own.
pub fn started_by(pid: u32, boot_ns: u64) -> bool {
    let Some(s) = crate::procfs::Stat::of(pid) else { return false };
    s.start_ticks.saturating_mul(1_000_000_000 / crate::procfs::clock_ticks()) <= boot_ns
}

#[cfg(test)]
mod tests {
    use super::*;

    fn environ(entries: &[&str]) -> Vec<u8> {
        entries.iter().flat_map(|e| e.bytes().chain([0])).collect()
    }

    #[test]
    fn protected_values_are_learned_once_each_and_every_value_of_a_variable_is_searched() {
        let mut js = JobSecrets::new(None).unwrap();
        let first = environ(&[
            "PATH=/usr/bin",
            "AWS_SECRET_ACCESS_KEY=Ak1q9Zr7Vt4Kw2Lp8Xm3Hd6Jn5",
            "SHORT_TOKEN=abc",
            "HOME=/root",
        ]);
        let e = js.unknown_entries(&first);
        assert_eq!(e.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["AWS_SECRET_ACCESS_KEY"]);
        assert_eq!(js.add(e), ["AWS_SECRET_ACCESS_KEY"]);
        assert!(js.unknown_entries(&first).is_empty(), "an environment already seen is not parsed again");
        // A later step: the same variable with another value, and a new one.
        let later =
            environ(&["AWS_SECRET_ACCESS_KEY=Bz2Ug5Wy1Ce7Tf3Ra9Sb4Qo8Mi", "NPM_TOKEN=npm_Q7rT9vX2kL5mN8pR", "X=1"]);
        let e = js.unknown_entries(&later);
        assert_eq!(js.add(e).len(), 2);
        assert_eq!(js.len(), 3);
        let sets = js.sets().unwrap();
        assert_eq!(sets.len(), 2);
        let hex = |v: &str| v.bytes().map(|b| format!("{b:02x}")).collect::<String>();
        for (v, red) in
            [("Ak1q9Zr7Vt4Kw2Lp8Xm3Hd6Jn5", "Ak…(26 chars)"), ("Bz2Ug5Wy1Ce7Tf3Ra9Sb4Qo8Mi", "Bz…(26 chars)")]
        {
            let name = format!("{}.x.test", hex(v));
            let found: Vec<&str> = sets
                .iter()
                .filter(|s| !s.find_in_dns_name(&name).is_empty())
                .filter_map(|s| s.redacted("AWS_SECRET_ACCESS_KEY"))
                .collect();
            assert_eq!(found, [red]);
        }
        let argv = "k=Ak1q9Zr7Vt4Kw2Lp8Xm3Hd6Jn5,Bz2Ug5Wy1Ce7Tf3Ra9Sb4Qo8Mi";
        let r = SecretSet::redact_values_in_all(&sets, argv).unwrap();
        assert_eq!(r, "k=Ak…(26 chars),Bz…(26 chars)");
        js.clear();
        assert!(js.is_empty() && js.sets().unwrap().is_empty());
    }

    #[test]
    fn the_number_of_values_per_job_is_bounded() {
        let mut js = JobSecrets::new(None).unwrap();
        for i in 0..(MAX_VALUES + 5) {
            let env = environ(&[&format!("CI_TOKEN=tok-{i:04}-Zq9Vt4Kw7")]);
            let e = js.unknown_entries(&env);
            js.add(e);
        }
        assert_eq!(js.len(), MAX_VALUES);
        assert_eq!(js.refused().iter().collect::<Vec<_>>(), ["CI_TOKEN"]);
    }

    #[test]
    fn a_policy_glob_protects_more_names() {
        let pol =
            crate::policy::parse_str("p.yaml", "version: 1\npipeline: p\nsecrets:\n  env: [\"DEPLOY_*\"]\n").unwrap();
        let mut js = JobSecrets::new(Some(&pol)).unwrap();
        let e = js.unknown_entries(&environ(&["DEPLOY_HOOK=https://h.test/Zq9Vt4Kw7"]));
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn the_own_process_started_before_now_and_a_gone_one_did_not() {
        assert!(started_by(std::process::id(), crate::session::boot_now_ns()));
        assert!(!started_by(std::process::id(), 0));
        assert!(read_environ(std::process::id()).is_some());
        assert!(read_environ(u32::MAX).is_none());
    }
}
