//! Per-pipeline policies: the YAML allowlist every event (exec, connect, DNS query) is checked
//! against. See docs/POLICY.md for the format.
//!
//! - [`load`] / [`parse_str`] read and validate a policy; errors are `FILE:LINE:COLUMN: message`.
//! - [`Policy`] answers per-event questions (pure, cheap: globs are compiled at load time).
//! - [`registry::resolve`] asks npm / pip / cargo for their configured registry hosts (I/O,
//!   run once before a step); feed the result to [`Policy::with_registry_hosts`].
//! - [`system_resolvers`] reads /etc/resolv.conf.

mod error;
pub mod kernel;
mod matcher;
pub mod registry;
mod resolv;
pub mod schema;

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::path::Path;

pub use error::{Location, PolicyError};
pub use matcher::{AllowedNet, NOT_IN_EXEC_ALLOW};
pub use registry::{RegistryError, resolve, resolve_all};
pub use resolv::{parse_resolv_conf, system_resolvers};
pub use schema::{Mode, PackageManager, ParseNameError, PolicySpec, ShellPolicy};

use matcher::Compiled;

/// A loaded, validated policy with its matchers compiled.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Always 1.
    pub version: u32,
    pub pipeline: String,
    /// From the file (default audit); the CLI's `--mode` may overwrite it.
    pub mode: Mode,
    /// The file name the policy was loaded from (the `source_name` of `parse_str`).
    pub source: String,
    spec: PolicySpec,
    compiled: Compiled,
}

/// Reads and validates a policy file.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError::unlocated(&name, format!("cannot read: {e}")))?;
    parse_str(&name, &text)
}

/// Parses and validates policy text; `source_name` is used in errors and as `Policy::source`.
pub fn parse_str(source_name: &str, text: &str) -> Result<Policy, PolicyError> {
    if is_empty_document(text) {
        return Err(PolicyError::at(
            source_name,
            1,
            1,
            "the policy is empty: expected a mapping with at least `version: 1` and `pipeline: NAME`",
        ));
    }
    let spec = schema::document(serde_yaml::Deserializer::from_str(text))
        .map_err(|e| PolicyError::from_yaml(source_name, &e))?;
    let compiled = Compiled::new(&spec).map_err(|m| PolicyError::unlocated(source_name, m))?;
    Ok(Policy {
        version: spec.version,
        pipeline: spec.pipeline.clone(),
        mode: spec.mode,
        source: source_name.to_string(),
        spec,
        compiled,
    })
}

/// Nothing but blank lines, comments and document markers.
fn is_empty_document(text: &str) -> bool {
    text.trim_start_matches('\u{feff}').lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---" || l == "..."
    })
}

impl Policy {
    /// The validated document, defaults filled in (what the file says, without registry hosts).
    pub fn spec(&self) -> &PolicySpec {
        &self.spec
    }

    /// The effective policy as YAML (defaults written out, `mode` as currently set).
    pub fn to_yaml(&self) -> String {
        let mut spec = self.spec.clone();
        spec.mode = self.mode;
        serde_yaml::to_string(&spec).unwrap_or_else(|e| format!("# cannot render policy: {e}\n"))
    }

    /// `egress.registries`, in file order.
    pub fn registries(&self) -> &[PackageManager] {
        &self.spec.egress.registries
    }

    /// Adds resolved registry host names (from [`registry::resolve`]) to the allowed hosts, on
    /// any port, and to the allowed DNS names. A host that is an IP literal is also allowed as
    /// an IP (any port).
    pub fn with_registry_hosts(mut self, hosts: Vec<String>) -> Policy {
        for h in &hosts {
            self.compiled.add_registry_host(h);
        }
        self
    }

    /// May the step connect to host `name` on `port`? `egress.allow` host entries and registry
    /// hosts. Case-insensitive; one trailing dot is ignored.
    pub fn host_allowed(&self, name: &str, port: u16) -> bool {
        self.compiled.host_allowed(name, port)
    }

    /// May the step connect to `ip` on `port`? `egress.allow` ip/cidr entries, registry hosts
    /// that are IP literals, and loopback (127.0.0.0/8, ::1) when `egress.loopback` is true.
    /// IPv4-mapped IPv6 addresses are treated as IPv4.
    pub fn ip_allowed(&self, ip: IpAddr, port: u16) -> bool {
        self.compiled.ip_allowed(ip, port)
    }

    /// May the step look `name` up? Every `egress.allow` host pattern (whatever its ports),
    /// every registry host and every `dns.allow` pattern.
    pub fn dns_name_allowed(&self, name: &str) -> bool {
        self.compiled.dns_name_allowed(name)
    }

    /// May the step send DNS queries to `ip`? `system_resolvers` is what
    /// [`system_resolvers()`] returned at the start of the run.
    pub fn resolver_allowed(&self, ip: IpAddr, system_resolvers: &[IpAddr]) -> bool {
        self.compiled.resolver_allowed(ip, system_resolvers)
    }

    /// `Some(rule)` if executing `path` is not allowed: the `exec.deny` pattern that matched
    /// (first in file order), or [`NOT_IN_EXEC_ALLOW`] when `exec.allow` is non-empty and no
    /// pattern of it matches. Patterns are tried on the full path and on the basename; deny wins
    /// over allow.
    pub fn exec_denied(&self, path: &str) -> Option<String> {
        self.compiled.exec_denied(path)
    }

    /// Shells started by install scripts are judged: `exec.install_scripts.shells` is
    /// `suspicious` (the default) or `deny`. In enforce mode the kernel holds them for the
    /// engine's verdict.
    pub fn shells_denied_in_install_scripts(&self) -> bool {
        self.compiled.shells() != ShellPolicy::Allow
            || self.spec.packages.iter().any(|r| r.shells.is_some_and(|s| s != ShellPolicy::Allow))
    }

    /// The shell rule for the install scripts of `package` (of package manager `manager`):
    /// the first `packages[]` entry naming it with `shells`, else `exec.install_scripts.shells`.
    pub fn shell_policy_for(&self, manager: &str, package: &str) -> ShellPolicy {
        self.spec
            .packages
            .iter()
            .filter(|r| r.manager.is_none_or(|m| m.as_str() == manager))
            .filter(|r| r.name.matches(package))
            .find_map(|r| r.shells)
            .unwrap_or_else(|| self.compiled.shells())
    }

    /// The `exec.temp_dirs` entry `path` lies in, if any.
    pub fn temp_dir_of(&self, path: &str) -> Option<&str> {
        self.spec.exec.temp_dirs.iter().find(|d| d.contains(path)).map(|d| d.as_str())
    }

    /// `exec.install_scripts.shells`.
    pub fn shell_policy(&self) -> ShellPolicy {
        self.compiled.shells()
    }

    /// `secrets.env`, as written (default: [`schema::DEFAULT_SECRET_ENV`]).
    pub fn secret_env_patterns(&self) -> &[String] {
        self.compiled.secret_env_patterns()
    }

    /// Whether the env var `name` holds a secret per `secrets.env` (case-insensitive).
    pub fn is_secret_env(&self, name: &str) -> bool {
        self.compiled.is_secret_env(name)
    }

    /// Every allowed network with its port ranges (`None` = any port), for kernel maps: ip
    /// entries as /32 or /128, cidr entries (host bits cleared), registry IP literals and,
    /// when `egress.loopback` is true, 127.0.0.0/8 and ::1/128.
    pub fn allowed_cidrs(&self) -> Vec<AllowedNet> {
        self.compiled.allowed_cidrs()
    }
}
