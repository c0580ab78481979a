//! Per-pipeline policies: the YAML allowlist every event (exec, connect, DNS query) is checked
//! against. See docs/POLICY.md for the format.
//!
//! - [`load`] / [`parse_str`] read and validate a policy; errors are `FILE:LINE:COLUMN: message`.
//! - [`Policy`] answers per-event questions (pure, cheap: globs are compiled at load time).
//!
//! This module does no I/O beyond reading the policy file in [`load`]: asking the machine
//! (package managers' registries, /etc/resolv.conf) is `crate::probe`'s job.

mod error;
pub mod files;
pub mod kernel;
pub mod limits;
mod matcher;
pub mod schema;

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::path::Path;

pub use error::{CompileError, KernelError, Location, NameError, PolicyError, ValueError};
pub use matcher::{AllowedNet, NOT_IN_EXEC_ALLOW};
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

/// Reads and validates a policy file (bounded: see [`limits`]).
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let name = path.display().to_string();
    let text = limits::read(path, "policy")?;
    parse_str(&name, &text)
}

/// Parses and validates policy text; `source_name` is used in errors and as `Policy::source`.
/// The bounds of [`limits`] apply; a leading byte order mark is ignored.
pub fn parse_str(source_name: &str, text: &str) -> Result<Policy, PolicyError> {
    let text = limits::strip_bom(text);
    if text.len() as u64 > limits::MAX_YAML_BYTES {
        return Err(PolicyError::unlocated(
            source_name,
            format!(
                "the policy is larger than {} KiB (the limit, see README \"Bounds\")",
                limits::MAX_YAML_BYTES >> 10
            ),
        ));
    }
    limits::check_depth(source_name, text)?;
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
    let compiled = Compiled::new(&spec).map_err(|m| PolicyError::unlocated(source_name, m.to_string()))?;
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

    /// Adds resolved registry host names (from `crate::probe::registries::resolve`) to the allowed hosts, on
    /// any port, and to the allowed DNS names. A host that is an IP literal is also allowed as
    /// an IP (any port).
    pub fn with_registry_hosts(mut self, hosts: Vec<String>) -> Policy {
        for h in &hosts {
            self.compiled.add_registry_host(h);
        }
        self
    }

    /// Adds forward proxies found outside the policy (the step's `HTTPS_PROXY` and the like,
    /// the package managers' proxy settings: `crate::proxies`) as if `egress.proxies` named them.
    pub fn with_proxies(mut self, addrs: &[std::net::SocketAddr]) -> Policy {
        for a in addrs {
            self.compiled.add_proxy(*a);
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
    /// `crate::probe::system_resolvers()` returned at the start of the run.
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

    /// Is `ip:port` one of `egress.proxies`? Requests through it are judged by their target.
    pub fn is_proxy(&self, ip: IpAddr, port: u16) -> bool {
        self.compiled.is_proxy(ip, port)
    }

    /// The local deputies' sockets for this policy: the built-in list with `egress.deputies`.
    pub fn deputy_sockets(&self) -> &[String] {
        self.compiled.deputies()
    }

    /// Is a unix socket address (a path, or `@name`) a local deputy under this policy?
    pub fn is_deputy(&self, path: &str) -> bool {
        self.compiled.deputies().iter().any(|d| d == path)
    }

    /// `egress.proxies`, IPv4-mapped addresses as IPv4.
    pub fn proxies(&self) -> &[std::net::SocketAddr] {
        self.compiled.proxies()
    }
}

/// Unix sockets of local daemons that connect or start processes for their caller: a step that
/// connects to one could make it do what the policy forbids the step (a container with host
/// networking, a transient systemd unit). Connecting to one is `local-deputy` (killed in
/// enforce mode). Both the /run and the /var/run spelling: the kernel programs see the path as
/// the caller wrote it.
pub const DEPUTY_SOCKETS: &[&str] = &[
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
    "/run/podman/podman.sock",
    "/var/run/podman/podman.sock",
    "/run/buildkit/buildkitd.sock",
    "/var/run/buildkit/buildkitd.sock",
    "/run/systemd/private",
    "/var/run/systemd/private",
    "/run/dbus/system_bus_socket",
    "/var/run/dbus/system_bus_socket",
];

/// Whether a unix socket address (as recorded: a path, or `@name` for an abstract one) is a
/// local deputy's.
pub fn is_deputy_socket(path: &str) -> bool {
    DEPUTY_SOCKETS.contains(&path)
}
