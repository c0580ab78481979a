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

pub use registries::{RegistryError, resolve, resolve_all};
pub use resolv::{parse_resolv_conf, system_resolvers};

use crate::policy::Policy;

/// Registry hosts for a policy's package managers, resolved from the tools' configuration.
pub fn resolve_registries(policy: &Policy) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::new();
    for pm in policy.registries() {
        let hosts = resolve(*pm).map_err(|e| anyhow::anyhow!("{e}"))?;
        out.insert(pm.as_str().to_string(), hosts);
    }
    Ok(out)
}
