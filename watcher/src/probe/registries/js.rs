//! The JavaScript package managers: npm, pnpm, yarn (classic and berry) and bun.
//!
//! Each tool is asked only for what it alone knows (its built-in default and its user and
//! global configuration), in `/`; the project's own files (`.npmrc`, `.yarnrc`,
//! `.yarnrc.yml`, `bunfig.toml`) are read here, so a host they name is attributed to them.

use std::path::{Path, PathBuf};

use super::{Ctx, RegistryError, Url, parse_toml};
use crate::policy::PackageManager;

/// The configured default registry and the scoped ones (`@scope:registry`).
#[derive(Default)]
struct Registries {
    default: Option<Url>,
    /// (key, url): a later entry with the same key replaces the earlier one.
    scoped: Vec<(String, Url)>,
}

impl Registries {
    fn scope(&mut self, key: &str, url: Url) {
        self.scoped.retain(|(k, _)| k != key);
        self.scoped.push((key.to_string(), url));
    }

    fn into_urls(self) -> Vec<Url> {
        self.default.into_iter().chain(self.scoped.into_iter().map(|(_, u)| u)).collect()
    }
}

/// `key=value` lines of an npmrc (`;`/`#` comments, quoted values, `${VAR}` expanded from the
/// environment as npm does).
pub(super) fn npmrc_entries(text: &str, ctx: &Ctx) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else { continue };
        let v = super::python::unquote(v.trim());
        out.push((expand(k.trim(), ctx), expand(v, ctx)));
    }
    out
}

/// npm's `${VAR}` / `${VAR?}` expansion (an unset variable stays as written, `?` makes it empty).
fn expand(s: &str, ctx: &Ctx) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[i..]);
            return out;
        };
        let name = &after[..end];
        let (name, optional) = match name.strip_suffix('?') {
            Some(n) => (n, true),
            None => (name, false),
        };
        match ctx.var(name) {
            Some(v) => out.push_str(&v),
            None if optional => {}
            None => out.push_str(&rest[i..i + 3 + end]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn is_scoped_registry_key(k: &str) -> bool {
    k.starts_with('@') && k.ends_with(":registry")
}

/// The directory npm takes as the project (its `localPrefix`): the nearest directory from the
/// working directory up with a package.json or node_modules, or the root of the npm workspace
/// that contains it.
fn npm_project_dir(ctx: &Ctx) -> Option<PathBuf> {
    let cwd = ctx.cwd();
    let local = cwd.ancestors().find(|d| d.join("package.json").is_file() || d.join("node_modules").is_dir())?;
    let root = local.ancestors().skip(1).find(|d| {
        std::fs::read_to_string(d.join("package.json")).is_ok_and(|t| t.len() < 1 << 20 && t.contains("\"workspaces\""))
    });
    Some(root.unwrap_or(local).to_path_buf())
}

/// pnpm reads the .npmrc of the workspace root (pnpm-workspace.yaml) and of the package.
fn pnpm_project_dirs(ctx: &Ctx) -> Vec<PathBuf> {
    let cwd = ctx.cwd();
    let mut dirs = Vec::new();
    if let Some(root) = cwd.ancestors().find(|d| d.join("pnpm-workspace.yaml").is_file()) {
        dirs.push(root.to_path_buf());
    }
    if let Some(pkg) = cwd.ancestors().find(|d| d.join("package.json").is_file())
        && !dirs.iter().any(|d| d == pkg)
    {
        dirs.push(pkg.to_path_buf());
    }
    dirs
}

/// npm and pnpm (and bun's fallback): `TOOL config list --json` in `/` for the built-in
/// default, user and global configuration and `npm_config_*` variables; the project's
/// `.npmrc` files (`project_dirs`, lowest precedence first) read directly.
fn npmrc_family(
    ctx: &Ctx,
    pm: PackageManager,
    tool_name: &str,
    project_dirs: &[PathBuf],
) -> Result<Registries, RegistryError> {
    let tool = ctx.tool(pm, tool_name)?;
    let command = format!("{tool_name} config list --json");
    let json = ctx.run(pm, &tool, &["config", "list", "--json"])?;
    let config: serde_json::Value = serde_json::from_str(&json).map_err(|e| RegistryError::CommandFailed {
        command: command.clone(),
        status: format!("printed invalid JSON: {e}"),
        stderr: String::new(),
        pm,
    })?;
    let from = format!("`{command}` in / (built-in default, global and user config, npm_config_* variables)");
    let mut r = Registries::default();
    if let Some(url) = config.get("registry").and_then(|v| v.as_str()).map(str::trim)
        && !url.is_empty()
        && url != "undefined"
        && url != "null"
    {
        r.default = Some(Url::new(url, format!("{from}: registry"), false));
    }
    if let Some(obj) = config.as_object() {
        for (key, value) in obj {
            if let (true, Some(url)) = (is_scoped_registry_key(key), value.as_str()) {
                r.scope(key, Url::new(url, format!("{from}: {key}"), false));
            }
        }
    }
    // The environment outranks the project's file.
    let env_registry = ctx.var_nocase("npm_config_registry").is_some();
    for dir in project_dirs {
        let file = dir.join(".npmrc");
        let Some(text) = ctx.read_config(pm, &file)? else { continue };
        for (key, value) in npmrc_entries(&text, ctx) {
            let (from, ws) = ctx.origin(&file, &key);
            if key == "registry" && !env_registry {
                r.default = Some(Url::new(value, from, ws));
            } else if is_scoped_registry_key(&key) {
                r.scope(&key, Url::new(value, from, ws));
            }
        }
    }
    if r.default.is_none() {
        return Err(RegistryError::NotConfigured {
            pm,
            message: format!(
                "{tool_name} has no registry configured (`{command}` names none): set one with `{tool_name} config set registry URL` or in .npmrc"
            ),
        });
    }
    Ok(r)
}

pub(super) fn npm(ctx: &Ctx) -> Result<Vec<Url>, RegistryError> {
    let dirs: Vec<PathBuf> = npm_project_dir(ctx).into_iter().collect();
    Ok(npmrc_family(ctx, PackageManager::Npm, "npm", &dirs)?.into_urls())
}

pub(super) fn pnpm(ctx: &Ctx) -> Result<Vec<Url>, RegistryError> {
    Ok(npmrc_family(ctx, PackageManager::Pnpm, "pnpm", &pnpm_project_dirs(ctx))?.into_urls())
}

// ---------------------------------------------------------------------------------------------
// yarn

/// Directories from the filesystem root down to the working directory (yarn reads the rc
/// files of each; the closer one wins).
fn root_to_cwd(ctx: &Ctx) -> Vec<PathBuf> {
    let cwd = ctx.cwd();
    let mut dirs: Vec<PathBuf> = cwd.ancestors().map(Path::to_path_buf).collect();
    dirs.reverse();
    dirs
}

/// The major version of `packageManager: "yarn@X..."` in the nearest package.json.
fn package_manager_yarn_major(ctx: &Ctx) -> Option<u32> {
    let cwd = ctx.cwd();
    let file = cwd.ancestors().map(|d| d.join("package.json")).find(|f| f.is_file())?;
    let text = std::fs::read_to_string(file).ok().filter(|t| t.len() < 1 << 20)?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let spec = v.get("packageManager")?.as_str()?.strip_prefix("yarn@")?;
    spec.split('.').next()?.parse().ok()
}

pub(super) fn yarn(ctx: &Ctx) -> Result<Vec<Url>, RegistryError> {
    let pm = PackageManager::Yarn;
    let yarn = ctx.tool(pm, "yarn")?;
    let version = ctx.run(pm, &yarn, &["--version"])?.trim().to_string();
    let major: u32 = version.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(1);
    let dirs = root_to_cwd(ctx);
    let berry_rc = dirs.iter().rev().map(|d| d.join(".yarnrc.yml")).find(|f| f.is_file());
    let berry = match (berry_rc.is_some(), package_manager_yarn_major(ctx)) {
        (true, _) => true,
        (false, Some(m)) => m >= 2,
        (false, None) => major >= 2,
    };
    if berry { yarn_berry(ctx, &yarn, &version, major, &dirs) } else { yarn_classic(ctx, &yarn, &version, &dirs) }
}

/// yarn 2+: `npmRegistryServer` and `npmScopes.*.npmRegistryServer` of every `.yarnrc.yml`
/// (home, then the filesystem root down to the working directory), `YARN_NPM_REGISTRY_SERVER`,
/// else the yarn on PATH's default. The project's own yarn (`yarnPath`) is never started.
fn yarn_berry(ctx: &Ctx, yarn: &Path, version: &str, major: u32, dirs: &[PathBuf]) -> Result<Vec<Url>, RegistryError> {
    let pm = PackageManager::Yarn;
    let mut r = Registries::default();
    let mut files: Vec<PathBuf> = ctx.home().map(|h| h.join(".yarnrc.yml")).into_iter().collect();
    files.extend(dirs.iter().map(|d| d.join(".yarnrc.yml")));
    files.dedup();
    for file in &files {
        let Some(text) = ctx.read_config(pm, file)? else { continue };
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| RegistryError::BadFile {
            pm,
            file: file.display().to_string(),
            reason: format!("not valid YAML: {e}"),
        })?;
        let ws = ctx.in_workspace(file);
        if let Some(url) = doc.get("npmRegistryServer").and_then(|v| v.as_str()) {
            r.default = Some(Url::new(url, format!("{} (npmRegistryServer)", file.display()), ws));
        }
        if let Some(scopes) = doc.get("npmScopes").and_then(|v| v.as_mapping()) {
            for (name, scope) in scopes {
                let (Some(name), Some(url)) = (name.as_str(), scope.get("npmRegistryServer").and_then(|v| v.as_str()))
                else {
                    continue;
                };
                let from = format!("{} (npmScopes.{name}.npmRegistryServer)", file.display());
                r.scope(name, Url::new(url, from, ws));
            }
        }
    }
    if let Some(url) = ctx.var("YARN_NPM_REGISTRY_SERVER") {
        r.default = Some(Url::new(url, "YARN_NPM_REGISTRY_SERVER", false));
    }
    if r.default.is_none() {
        if major < 2 {
            let rc = files
                .iter()
                .rev()
                .find(|f| f.is_file())
                .map_or_else(|| "its package.json packageManager field".to_string(), |f| f.display().to_string());
            return Err(RegistryError::NotConfigured {
                pm,
                message: format!(
                    "this is a yarn 2+ project ({rc}), but the yarn on PATH is {version} and watcher does not run the \
                     project's own yarn outside the watch, so yarn's default registry is unknown: set npmRegistryServer \
                     in .yarnrc.yml or YARN_NPM_REGISTRY_SERVER, or put a yarn 2+ on PATH"
                ),
            });
        }
        let url = ctx.run(pm, yarn, &["config", "get", "npmRegistryServer"])?;
        let url = url.trim();
        if url.is_empty() || url == "undefined" {
            return Err(RegistryError::NotConfigured {
                pm,
                message: "yarn names no npmRegistryServer (`yarn config get npmRegistryServer` printed nothing): set one in .yarnrc.yml".to_string(),
            });
        }
        r.default =
            Some(Url::new(url, format!("`yarn config get npmRegistryServer` in / (yarn {version}'s default)"), false));
    }
    Ok(r.into_urls())
}

/// `key "value"` / `key value` lines of a yarn classic `.yarnrc`.
fn yarnrc_entries(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = if let Some(rest) = line.strip_prefix('"') {
            match rest.split_once('"') {
                Some((k, v)) => (k, v),
                None => continue,
            }
        } else {
            match line.split_once(char::is_whitespace) {
                Some((k, v)) => (k, v),
                None => continue,
            }
        };
        out.push((k.to_string(), super::python::unquote(v.trim()).to_string()));
    }
    out
}

/// yarn 1: `yarn config list --json` in `/` (yarn's default, ~/.yarnrc, ~/.npmrc, `yarn_*` and
/// `npm_config_*` variables), then the `.yarnrc` and `.npmrc` of the filesystem root down to the
/// working directory. Yarn 1 requests from its own `registry` and honours the npm one too: both
/// are allowed.
fn yarn_classic(ctx: &Ctx, yarn: &Path, version: &str, dirs: &[PathBuf]) -> Result<Vec<Url>, RegistryError> {
    let pm = PackageManager::Yarn;
    let out = ctx.run(pm, yarn, &["config", "list", "--json"])?;
    let from = format!("`yarn config list --json` in / (yarn {version}'s default, user config, variables)");
    let mut yarn_side = Registries::default();
    let mut npm_side = Registries::default();
    let inspects: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("type").and_then(|t| t.as_str()) == Some("inspect"))
        .filter_map(|v| v.get("data").cloned())
        .collect();
    for (i, data) in inspects.iter().enumerate() {
        let side = if i == 0 { &mut yarn_side } else { &mut npm_side };
        let Some(obj) = data.as_object() else { continue };
        for (key, value) in obj {
            let Some(url) = value.as_str() else { continue };
            if key == "registry" {
                side.default = Some(Url::new(url, format!("{from}: registry"), false));
            } else if is_scoped_registry_key(key) {
                side.scope(key, Url::new(url, format!("{from}: {key}"), false));
            }
        }
    }
    if yarn_side.default.is_none() {
        return Err(RegistryError::CommandFailed {
            command: "yarn config list --json".to_string(),
            status: "named no registry".to_string(),
            stderr: String::new(),
            pm,
        });
    }
    let env_yarn = ctx.var_nocase("yarn_registry").is_some();
    let env_npm = ctx.var_nocase("npm_config_registry").is_some();
    for dir in dirs {
        for (name, side, env_set) in [(".yarnrc", &mut yarn_side, env_yarn), (".npmrc", &mut npm_side, env_npm)] {
            let file = dir.join(name);
            let Some(text) = ctx.read_config(pm, &file)? else { continue };
            let entries = if name == ".npmrc" { npmrc_entries(&text, ctx) } else { yarnrc_entries(&text) };
            for (key, value) in entries {
                let (from, ws) = ctx.origin(&file, &key);
                if key == "registry" && !env_set {
                    side.default = Some(Url::new(value, from, ws));
                } else if is_scoped_registry_key(&key) {
                    side.scope(&key, Url::new(value, from, ws));
                }
            }
        }
    }
    let mut urls = yarn_side.into_urls();
    urls.extend(npm_side.into_urls());
    Ok(urls)
}

// ---------------------------------------------------------------------------------------------
// bun

/// A bunfig registry value: `"URL"` or `{ url = "URL", ... }`.
fn bunfig_url(v: &toml::Value) -> Option<&str> {
    v.as_str().or_else(|| v.get("url")?.as_str())
}

/// bun: `[install] registry` and `[install.scopes]` of the global and the project's
/// bunfig.toml, `BUN_CONFIG_REGISTRY`; bun also reads .npmrc, and without a registry of its own
/// it uses npm's configuration (asked from npm as for `npm`).
pub(super) fn bun(ctx: &Ctx) -> Result<Vec<Url>, RegistryError> {
    let pm = PackageManager::Bun;
    ctx.tool(pm, "bun")?;
    let global = ctx
        .var("XDG_CONFIG_HOME")
        .map(|x| PathBuf::from(x).join(".bunfig.toml"))
        .filter(|p| p.is_file())
        .or_else(|| ctx.home().map(|h| h.join(".bunfig.toml")));
    let files: Vec<PathBuf> = global.into_iter().chain([ctx.cwd().join("bunfig.toml")]).collect();
    let mut own = Registries::default();
    for file in &files {
        let Some(text) = ctx.read_config(pm, file)? else { continue };
        let doc = parse_toml(pm, file, &text)?;
        let ws = ctx.in_workspace(file);
        let Some(install) = doc.get("install") else { continue };
        if let Some(url) = install.get("registry").and_then(bunfig_url) {
            own.default = Some(Url::new(url, format!("{} (install.registry)", file.display()), ws));
        }
        if let Some(scopes) = install.get("scopes").and_then(|s| s.as_table()) {
            for (name, v) in scopes {
                if let Some(url) = bunfig_url(v) {
                    own.scope(name, Url::new(url, format!("{} (install.scopes.{name})", file.display()), ws));
                }
            }
        }
    }
    if let Some(url) = ctx.var("BUN_CONFIG_REGISTRY") {
        own.default = Some(Url::new(url, "BUN_CONFIG_REGISTRY", false));
    }
    let dirs: Vec<PathBuf> = npm_project_dir(ctx).into_iter().collect();
    let npm = match npmrc_family(ctx, pm, "npm", &dirs) {
        Ok(r) => Some(r),
        Err(RegistryError::ToolMissing { .. }) if own.default.is_some() => None,
        Err(RegistryError::ToolMissing { .. }) => {
            return Err(RegistryError::NotConfigured {
                pm,
                message: "bun names no registry (bunfig.toml [install] registry, BUN_CONFIG_REGISTRY) and its default is \
                          npm's configuration, which watcher reads with npm: npm is not on PATH; set [install] registry in bunfig.toml"
                    .to_string(),
            });
        }
        Err(e) => return Err(e),
    };
    let mut urls = Vec::new();
    if let Some(npm) = npm {
        if own.default.is_none() {
            urls.extend(npm.default);
        }
        urls.extend(npm.scoped.into_iter().map(|(_, u)| u));
    }
    urls.extend(own.into_urls());
    Ok(urls)
}
