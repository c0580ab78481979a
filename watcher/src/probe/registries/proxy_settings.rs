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

#[cfg(test)]
mod tests {
    use super::super::tests::clean_ctx;
    use super::*;

    fn write(path: &std::path::Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// pip: `[install]` over `[global]`, a later file over an earlier one, `PIP_PROXY` over all;
    /// a site file inside the checkout is marked as the checkout's.
    #[test]
    fn pips_proxy_setting_in_pips_order() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        write(&h.join(".pip/pip.conf"), "[global]\nproxy = http://127.0.0.1:1\n");
        write(
            &h.join(".config/pip/pip.conf"),
            "[install]\nproxy = http://127.0.0.1:3\n[global]\nproxy = http://127.0.0.1:2\n",
        );
        let ctx = clean_ctx(std::path::Path::new("/"))
            .set("HOME", h.display().to_string())
            .set("XDG_CONFIG_DIRS", h.join("none").display().to_string())
            .unset("XDG_CONFIG_HOME")
            .set("PATH", "/nonexistent");
        let got = pip(&ctx).unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "http://127.0.0.1:3");
        assert!(got[0].1.ends_with("pip.conf (install.proxy)") && !got[0].2, "{got:?}");
        let env = pip(&ctx.clone().set("PIP_PROXY", "http://127.0.0.1:4")).unwrap();
        assert_eq!(env, vec![("http://127.0.0.1:4".to_string(), "PIP_PROXY".to_string(), false)]);
        let ws = tempfile::tempdir().unwrap();
        std::fs::create_dir(ws.path().join(".git")).unwrap();
        write(&ws.path().join(".venv/pip.conf"), "[global]\nproxy = http://127.0.0.1:5\n");
        let in_ws =
            pip(&ctx.in_dir(ws.path()).set("VIRTUAL_ENV", ws.path().join(".venv").display().to_string())).unwrap();
        assert_eq!(in_ws[0].0, "http://127.0.0.1:5");
        assert!(in_ws[0].2, "the checkout's site file: {in_ws:?}");
    }

    /// npm: its `https-proxy` and `proxy` as npm answers for the user's .npmrc.
    #[test]
    fn npms_proxy_settings_as_npm_answers() {
        if Ctx::default().find_tool("npm").is_err() {
            eprintln!("npm is not installed: skipped");
            return;
        }
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        write(&h.join(".npmrc"), "https-proxy=http://127.0.0.1:3128/\nproxy=http://127.0.0.1:3129\n");
        let ctx = clean_ctx(h).set("HOME", h.display().to_string());
        let mut ctx = ctx;
        for v in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
            ctx = ctx.unset(v);
        }
        let got = npm(&ctx).unwrap();
        let urls: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(urls, ["http://127.0.0.1:3128/", "http://127.0.0.1:3129"], "{got:?}");
        assert!(got[0].1.ends_with(": https-proxy") && got[1].1.ends_with(": proxy"), "{got:?}");
    }
}
