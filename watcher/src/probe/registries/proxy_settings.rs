//! The package managers' own proxy settings (for [`crate::proxies`]), read the way their
//! registries are: npm's `proxy` and `https-proxy` from `npm config list --json` in `/` (its
//! built-in default, global and user configuration and `npm_config_*` variables; never the
//! checkout's `.npmrc`), pip's `proxy` from its configuration files and `PIP_PROXY`.

use super::{Ctx, RegistryError, python::ini_sections};
use crate::policy::PackageManager;

/// A proxy URL a tool's configuration names: (url, where it came from, named by a file of the
/// step's working directory).
pub(crate) type ProxySetting = (String, String, bool);

/// npm's `https-proxy` and `proxy`, as npm itself answers in `/`.
pub(crate) fn npm(ctx: &Ctx) -> Result<Vec<ProxySetting>, RegistryError> {
    let pm = PackageManager::Npm;
    let tool = ctx.tool(pm, "npm")?;
    let command = "npm config list --json";
    let json = ctx.run(pm, &tool, &["config", "list", "--json"])?;
    let config: serde_json::Value = serde_json::from_str(&json).map_err(|e| RegistryError::CommandFailed {
        command: command.to_string(),
        status: format!("printed invalid JSON: {e}"),
        stderr: String::new(),
        pm,
    })?;
    let mut out = Vec::new();
    for key in ["https-proxy", "proxy"] {
        if let Some(url) = config.get(key).and_then(|v| v.as_str()).map(str::trim)
            && !url.is_empty()
            && url != "null"
            && url != "undefined"
        {
            out.push((url.to_string(), format!("`{command}` in /: {key}"), false));
        }
    }
    Ok(out)
}

/// pip's `proxy` (`[global]` then `[install]` of each file, later files win) and `PIP_PROXY`.
pub(crate) fn pip(ctx: &Ctx) -> Result<Vec<ProxySetting>, RegistryError> {
    let pm = PackageManager::Pip;
    let mut found: Option<ProxySetting> = None;
    for file in super::python::pip_config_files(ctx) {
        let Some(text) = ctx.read_config(pm, &file)? else { continue };
        let entries = ini_sections(&text);
        for wanted in ["global", "install"] {
            for (section, key, value) in entries.iter().filter(|(s, k, _)| s == wanted && k == "proxy") {
                let (from, ws) = ctx.origin(&file, &format!("{section}.{key}"));
                found = Some((value.clone(), from, ws));
            }
        }
    }
    if let Some(v) = ctx.var("PIP_PROXY") {
        found = Some((v, "PIP_PROXY".to_string(), false));
    }
    Ok(found.into_iter().filter(|(u, _, _)| !u.trim().is_empty()).collect())
}

/// [`npm`] and [`pip`] in the process's own environment and working directory.
pub(crate) fn npm_here() -> Result<Vec<ProxySetting>, RegistryError> {
    npm(&Ctx::default())
}

pub(crate) fn pip_here() -> Result<Vec<ProxySetting>, RegistryError> {
    pip(&Ctx::default())
}
