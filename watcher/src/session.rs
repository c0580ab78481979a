//! What a watched step (a `run`, a daemon job, a drill) knows before its first process runs:
//! the policy with the CLI's mode, its registry hosts, the secret detector, the kernel hash
//! seed, and the clocks that turn kernel timestamps into wall time. Shared by every mode, so
//! the daemon imports nothing from the `run` command.
use crate::error::{Doing as _, Failed};

/// What a step cannot be prepared for: its policy, its registries, its secret patterns.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("--mode needs --policy FILE: there is nothing to audit or enforce without a policy")]
    ModeWithoutPolicy,
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Probe(#[from] crate::probe::ProbeError),
    #[error(transparent)]
    Failed(#[from] Failed),
    #[error("watcher's {0} thread panicked")]
    ThreadPanicked(&'static str),
}

use crate::{
    event::Ts,
    policy::{Mode, Policy},
    secrets::SecretSet,
};

/// Variable-name globs whose values are always looked for in DNS names (besides the policy's
/// own), so a log recorded under one policy can be replayed under a stricter one.
pub const SECRET_CANDIDATES: &[&str] = &[
    "AWS_*",
    "*_TOKEN",
    "*TOKEN*",
    "*_KEY",
    "*_KEY_*",
    "*SECRET*",
    "*PASSWORD*",
    "*PASSWD*",
    "*CREDENTIAL*",
    "*PRIVATE*",
    "*_AUTH",
    "*_AUTH_*",
    "*APIKEY*",
    "*API_KEY*",
];

/// What is known before the command starts: the loaded policy (mode applied), its registry
/// hosts and the secrets detector.
pub struct Prepared {
    pub policy: Option<Policy>,
    pub registries: std::collections::BTreeMap<String, Vec<String>>,
    /// Where each registry host came from (the start record's `registry_sources`).
    pub registry_sources: Vec<crate::probe::RegistrySource>,
    /// Proxies from the step's environment and package managers (`crate::proxies`), already
    /// in `policy` (the start record's `proxy_sources`).
    pub proxy_sources: Vec<crate::proxies::ProxySource>,
    pub secrets: SecretSet,
}

/// Load and check everything a user can get wrong before anything runs.
pub fn prepare(policy: Option<&std::path::Path>, mode: Option<Mode>) -> Result<Prepared, SessionError> {
    let policy = load_policy(policy, mode)?;
    let registries = resolve_registries(policy.as_ref())?;
    finish_prepare(policy, registries)
}

/// The policy file, with the CLI's mode applied.
pub fn load_policy(policy: Option<&std::path::Path>, mode: Option<Mode>) -> Result<Option<Policy>, SessionError> {
    match policy {
        Some(p) => {
            let mut pol = crate::policy::load(p)?;
            if let Some(m) = mode {
                pol.mode = m;
            }
            Ok(Some(pol))
        }
        None => {
            if mode.is_some() {
                return Err(SessionError::ModeWithoutPolicy);
            }
            Ok(None)
        }
    }
}

/// The hosts of the policy's registries, from each package manager's own configuration (this
/// starts the package managers: npm alone takes about 0.4 s).
pub fn resolve_registries(policy: Option<&Policy>) -> Result<crate::probe::Registries, SessionError> {
    Ok(match policy {
        Some(p) => crate::probe::resolve_registries(p)?,
        None => Default::default(),
    })
}

/// The package managers' registries and the step's proxies, being found on two threads while
/// the caller goes on (`run`: the kernel verifies the programs meanwhile). Both ask
/// `npm config list` for the npm policy; asked at the same time, npm runs once
/// (`probe::registries`' in-flight sharing). One after the other, the daemon-backed step client
/// ran npm twice before its step could start.
pub struct Discovery {
    registries: std::thread::JoinHandle<Result<crate::probe::Registries, SessionError>>,
    proxies: std::thread::JoinHandle<Vec<crate::proxies::ProxySource>>,
}

/// Start [`Discovery`] for `policy`.
pub fn discover(policy: &Option<Policy>) -> Result<Discovery, SessionError> {
    let p = policy.clone();
    let registries = std::thread::Builder::new()
        .name("registries".into())
        .spawn(move || resolve_registries(p.as_ref()))
        .doing(|| "starting the registry resolution thread".into())?;
    let p = policy.clone();
    let proxies = std::thread::Builder::new()
        .name("proxies".into())
        .spawn(move || crate::proxies::for_step(p.as_ref()))
        .doing(|| "starting the proxy discovery thread".into())?;
    Ok(Discovery { registries, proxies })
}

impl Discovery {
    /// What is known before the command starts, once both are found: [`finish_prepare`] with
    /// the registries, and the proxies applied to the policy.
    pub fn finish(self, policy: Option<Policy>) -> Result<Prepared, SessionError> {
        let registries = self.registries.join().map_err(|_| SessionError::ThreadPanicked("registry resolution"))??;
        let mut prepared = finish_prepare(policy, registries)?;
        let proxies = self.proxies.join().map_err(|_| SessionError::ThreadPanicked("proxy discovery"))?;
        crate::proxies::set(&mut prepared, proxies);
        Ok(prepared)
    }
}

pub fn finish_prepare(policy: Option<Policy>, registries: crate::probe::Registries) -> Result<Prepared, SessionError> {
    let mut patterns: Vec<String> = SECRET_CANDIDATES.iter().map(|s| s.to_string()).collect();
    if let Some(p) = &policy {
        patterns.extend(p.secret_env_patterns().iter().cloned());
    }
    let env = std::env::vars_os().map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()));
    let secrets = SecretSet::new(&patterns, env).doing(|| "compiling secret variable patterns".into())?;
    let crate::probe::Registries { hosts: registries, sources: registry_sources } = registries;
    Ok(Prepared { policy, registries, registry_sources, proxy_sources: Vec::new(), secrets })
}

/// CLOCK_REALTIME - CLOCK_BOOTTIME in nanoseconds: converts kernel timestamps to wall time.
pub fn clock_offset_ns() -> i128 {
    use nix::time::{ClockId, clock_gettime};
    let ns = |c| clock_gettime(c).map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128).unwrap_or(0);
    ns(ClockId::CLOCK_REALTIME) - ns(ClockId::CLOCK_BOOTTIME)
}

pub fn boot_now_ns() -> u64 {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_BOOTTIME).map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64).unwrap_or(0)
}

pub fn now_ts() -> Ts {
    Ts(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0))
}

/// A per-run secret seed for the kernel's DNS name hash.
pub fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    u64::from_ne_bytes(b) ^ boot_now_ns()
}
