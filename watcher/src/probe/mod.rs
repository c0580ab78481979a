//! Everything watcher asks the machine before a step: the hosts of the package managers'
//! registries (`egress.registries`) and the system's DNS resolvers (`dns.resolvers: [system]`).
//!
//! This is the only place that starts package managers or reads their configuration; `policy`
//! and `engine` stay pure. Discovery never runs code the step's workspace controls: tools are
//! found on PATH outside the working directory and started in a neutral directory with an
//! environment that cannot load code; files of the workspace are read, never executed, and the
//! hosts they name are reported with the file (see [`registries`]).

pub mod registries;
pub mod resolv;

use std::collections::BTreeMap;

pub(crate) use registries::proxy_settings;
pub use registries::{RegistryError, RegistrySource, UrlError, resolve, resolve_all, resolve_sourced};
pub use resolv::{parse_resolv_conf, system_resolvers};

use crate::policy::Policy;

/// What watcher could not learn from the machine.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A package manager's registry (its tool or configuration).
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// The registry hosts of a policy, by the policy's registry name, and where each came from.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    pub hosts: BTreeMap<String, Vec<String>>,
    pub sources: Vec<RegistrySource>,
}

/// Registry hosts for a policy's package managers, resolved from the tools' configuration.
/// A host that a file of the step's working directory named is announced on stderr: the
/// checkout chose it.
pub fn resolve_registries(policy: &Policy) -> Result<Registries, ProbeError> {
    let mut out = Registries::default();
    for pm in policy.registries() {
        let sources = resolve_sourced(*pm)?;
        out.hosts.insert(pm.as_str().to_string(), sources.iter().map(|s| s.host.clone()).collect());
        for s in sources {
            if !out.sources.iter().any(|o| o.host == s.host) {
                out.sources.push(s);
            }
        }
    }
    for s in out.sources.iter().filter(|s| s.workspace) {
        crate::say!("watcher: registry host {} ({}) is named by the working directory's {}", s.host, s.tool, s.from);
    }
    Ok(out)
}
