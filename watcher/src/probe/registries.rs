//! Registry resolution for `egress.registries`: asks each package manager's own configuration,
//! at run time, which hosts it downloads packages from. No registry host name is written
//! anywhere in this code: defaults come from the tools themselves (npm's `registry` setting,
//! pip's built-in index, uv's stated default index, cargo's index cache).
//!
//! Discovery never runs code the step's workspace (its working directory) controls:
//! - configuration files are read directly (`.npmrc`, `.yarnrc`, `.yarnrc.yml`, `bunfig.toml`,
//!   `pip.conf`, `uv.toml`, `pyproject.toml`, `.cargo/config.toml`), never evaluated;
//! - a tool is started only to ask for its built-in defaults: found on PATH without relative
//!   entries and without anything inside the working directory (no `./node_modules/.bin/npm`,
//!   no `.venv/bin/python3` of the checkout, no symlink pointing into it), started in `/` with an
//!   environment stripped of the variables that make interpreters load code (`NODE_OPTIONS`,
//!   `PYTHONPATH`, `LD_PRELOAD`, `BASH_ENV`, npm's `node-options`, ...), Python with `-I`,
//!   corepack without network;
//! - a host named by a file inside the working directory is marked as such
//!   ([`RegistrySource::workspace`]), so the start record and the report can say which file
//!   of the checkout allowed it.
//!
//! Registry names of the policy (`registries: [...]`): `npm` is the npm registry ecosystem as
//! configured for every JavaScript package manager present (npm, pnpm, yarn, bun); `pip` the
//! Python package index as configured for pip, uv and poetry; `cargo` cargo's registries.
//! `pnpm`, `yarn`, `bun`, `uv` and `poetry` name one tool alone (then the tool must be there).

mod cargo;
mod js;
pub(crate) mod proxy_settings;
mod python;

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::policy::PackageManager;

#[cfg(test)]
use cargo::toml_strings;
#[cfg(test)]
use python::{PIP_DEFAULT_INDEX_SNIPPET, PipSettings, uv_help_default};

/// How long one `npm config ...` / `python3 -I -c ...` / `uv ... --help` may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Configuration files larger than this are refused (they are a few hundred bytes in practice).
pub const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

/// Why the registry hosts of a package manager could not be determined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("{tool} is not installed or not on PATH{}: cannot resolve the {pm} registry for policy registries: [{pm}]", skipped_suffix(.skipped))]
    ToolMissing { tool: String, pm: PackageManager, skipped: Option<String> },

    #[error(
        "`{command}` failed ({status}){}: cannot resolve the {pm} registry for policy registries: [{pm}]",
        stderr_suffix(.stderr)
    )]
    CommandFailed { command: String, status: String, stderr: String, pm: PackageManager },

    #[error(
        "`{command}` did not finish within {} seconds: cannot resolve the {pm} registry for policy registries: [{pm}]",
        COMMAND_TIMEOUT.as_secs()
    )]
    Timeout { command: String, pm: PackageManager },

    #[error("the {pm} registry URL {url:?} from {origin} is not usable: {reason}")]
    BadUrl { pm: PackageManager, url: String, origin: String, reason: UrlError },

    #[error("{file}: {reason}: cannot resolve the {pm} registry for policy registries: [{pm}]")]
    BadFile { pm: PackageManager, file: String, reason: String },

    /// Nothing configured and no default could be found; the message says how to configure it.
    #[error("{message}")]
    NotConfigured { pm: PackageManager, message: String },
}

fn skipped_suffix(skipped: &Option<String>) -> String {
    match skipped {
        Some(p) => format!(
            " outside the working directory (the one found, {p}, belongs to the checkout, and watcher does not run the workspace's code outside the watch)"
        ),
        None => String::new(),
    }
}

fn stderr_suffix(stderr: &str) -> String {
    let last: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let tail = &last[last.len().saturating_sub(3)..];
    if tail.is_empty() { String::new() } else { format!(": {}", tail.join(" / ")) }
}

impl RegistryError {
    pub fn package_manager(&self) -> PackageManager {
        match self {
            RegistryError::ToolMissing { pm, .. }
            | RegistryError::CommandFailed { pm, .. }
            | RegistryError::Timeout { pm, .. }
            | RegistryError::BadUrl { pm, .. }
            | RegistryError::BadFile { pm, .. }
            | RegistryError::NotConfigured { pm, .. } => *pm,
        }
    }

    /// The same error, about `to` (a tool answer shared by two package managers' queries).
    fn for_pm(mut self, to: PackageManager) -> RegistryError {
        match &mut self {
            RegistryError::ToolMissing { pm, .. }
            | RegistryError::CommandFailed { pm, .. }
            | RegistryError::Timeout { pm, .. }
            | RegistryError::BadUrl { pm, .. }
            | RegistryError::BadFile { pm, .. }
            | RegistryError::NotConfigured { pm, .. } => *pm = to,
        }
        self
    }
}

/// Where one registry host came from (the start record's `registry_sources`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RegistrySource {
    /// The package manager whose configuration named it (`npm`, `yarn`, `uv`, ...).
    pub tool: String,
    pub host: String,
    /// The file (with the key), variable or tool answer that named it.
    pub from: String,
    /// The file lies inside the step's working directory: the checkout chose this host.
    #[serde(default)]
    pub workspace: bool,
}

/// One host with its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hit {
    pub host: String,
    pub from: String,
    pub workspace: bool,
}

/// A URL found somewhere, not yet turned into a host.
#[derive(Debug, Clone)]
pub(crate) struct Url {
    pub url: String,
    pub from: String,
    pub workspace: bool,
}

impl Url {
    pub fn new(url: impl Into<String>, from: impl Into<String>, workspace: bool) -> Url {
        Url { url: url.into(), from: from.into(), workspace }
    }
}

/// The registry host names `pm` is configured to use, asked from the tool's configuration in
/// the current directory and environment. Deduplicated, lowercased, in discovery order.
pub fn resolve(pm: PackageManager) -> Result<Vec<String>, RegistryError> {
    Ok(resolve_sourced(pm)?.into_iter().map(|s| s.host).collect())
}

/// [`resolve`] with the origin of each host.
pub fn resolve_sourced(pm: PackageManager) -> Result<Vec<RegistrySource>, RegistryError> {
    resolve_sources_in(pm, &Ctx::default())
}

/// [`resolve`] for each package manager, concatenated and deduplicated.
pub fn resolve_all(pms: &[PackageManager]) -> Result<Vec<String>, RegistryError> {
    let mut out = Vec::new();
    for &pm in pms {
        for h in resolve(pm)? {
            if !out.contains(&h) {
                out.push(h);
            }
        }
    }
    Ok(out)
}

/// The tools a registry name of the policy stands for: `(tool, required)`. For the ecosystem
/// names (`npm`, `pip`) each tool is asked when it is installed; at least one must be.
fn members(pm: PackageManager) -> &'static [PackageManager] {
    use PackageManager::*;
    match pm {
        Npm => &[Npm, Pnpm, Yarn, Bun],
        Pip => &[Pip, Uv, Poetry],
        Cargo => &[Cargo],
        Pnpm => &[Pnpm],
        Yarn => &[Yarn],
        Bun => &[Bun],
        Uv => &[Uv],
        Poetry => &[Poetry],
    }
}

pub(crate) fn resolve_sources_in(pm: PackageManager, ctx: &Ctx) -> Result<Vec<RegistrySource>, RegistryError> {
    let tools = members(pm);
    let results: Vec<(PackageManager, Result<Vec<Hit>, RegistryError>)> = if tools.len() == 1 {
        vec![(tools[0], resolve_tool(tools[0], ctx))]
    } else {
        // Each tool start is a node or python start (0.2-0.5 s): ask them side by side.
        std::thread::scope(|s| {
            let handles: Vec<_> = tools.iter().map(|&t| (t, s.spawn(move || resolve_tool(t, ctx)))).collect();
            handles
                .into_iter()
                .map(|(t, h)| {
                    let r = h.join().unwrap_or_else(|_| {
                        Err(RegistryError::NotConfigured {
                            pm: t,
                            message: format!("resolving the {t} registry panicked"),
                        })
                    });
                    (t, r)
                })
                .collect()
        })
    };
    let mut out: Vec<RegistrySource> = Vec::new();
    let mut seen = HashSet::new();
    let mut first_missing = None;
    let mut any = false;
    for (tool, result) in results {
        let hits = match result {
            Ok(h) => h,
            Err(e) if tools.len() == 1 => return Err(e),
            // The policy's own tool (npm for `npm`, pip for `pip`) keeps its errors: they are
            // what the user configured. The others are asked because they are installed; one
            // that cannot answer only loses its hosts (fail closed), with a warning.
            Err(e @ RegistryError::ToolMissing { .. }) => {
                if tool == pm {
                    first_missing = Some(e);
                }
                continue;
            }
            Err(e) if tool == pm => return Err(e),
            Err(e) => {
                crate::say!("watcher: warning: {e} (its hosts are not allowed)");
                continue;
            }
        };
        any = true;
        for h in hits {
            if seen.insert(h.host.clone()) {
                out.push(RegistrySource {
                    tool: tool.as_str().to_string(),
                    host: h.host,
                    from: h.from,
                    workspace: h.workspace,
                });
            }
        }
    }
    if !any && let Some(e) = first_missing {
        return Err(e);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) fn resolve_in(pm: PackageManager, ctx: &Ctx) -> Result<Vec<String>, RegistryError> {
    Ok(resolve_sources_in(pm, ctx)?.into_iter().map(|s| s.host).collect())
}

fn resolve_tool(pm: PackageManager, ctx: &Ctx) -> Result<Vec<Hit>, RegistryError> {
    use PackageManager::*;
    let urls = match pm {
        Npm => js::npm(ctx)?,
        Pnpm => js::pnpm(ctx)?,
        Yarn => js::yarn(ctx)?,
        Bun => js::bun(ctx)?,
        Pip => python::pip(ctx)?,
        Uv => python::uv(ctx)?,
        Poetry => python::poetry(ctx)?,
        Cargo => return cargo::cargo_hosts(ctx),
    };
    hosts_of(pm, urls)
}

/// The hosts of `urls`, deduplicated (first origin wins); `file:` URLs need no host.
pub(crate) fn hosts_of(pm: PackageManager, urls: Vec<Url>) -> Result<Vec<Hit>, RegistryError> {
    let mut out: Vec<Hit> = Vec::new();
    for u in urls {
        if let Some(host) = host_of(pm, &u.url, &u.from)?
            && !out.iter().any(|h| h.host == host)
        {
            out.push(Hit { host, from: u.from, workspace: u.workspace });
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Environment, files and commands

/// Variables that make the interpreters and shells discovery starts load code: removed from
/// the environment of every tool watcher starts (compared case-insensitively).
const CODE_LOADING_VARS: &[&str] = &[
    "NODE_OPTIONS",
    "NODE_PATH",
    "NODE_REPL_EXTERNAL_MODULE",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PYTHONHOME",
    "PYTHONUSERBASE",
    "PYTHONINSPECT",
    "LD_PRELOAD",
    "LD_AUDIT",
    "LD_LIBRARY_PATH",
    "BASH_ENV",
    "ENV",
    "PERL5OPT",
    "PERL5LIB",
    "npm_config_node_options",
    "npm_config_onload_script",
    "npm_config_script_shell",
    "npm_config_shell",
    "npm_config_globalconfig_script",
    "YARN_YARN_PATH",
    "YARN_PLUGINS",
    "yarn_yarn_path",
    "COREPACK_HOME_SCRIPT",
];

/// One tool query: what [`Ctx::run`] runs, with everything that can change its answer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RunKey {
    program: PathBuf,
    args: Vec<String>,
    cwd: Option<PathBuf>,
    env: BTreeMap<String, String>,
}

/// The environment resolution runs in: the process environment and current directory, with
/// overrides (tests use these instead of mutating the test process's environment).
#[derive(Debug, Clone, Default)]
pub(crate) struct Ctx {
    /// `Some(v)` sets, `None` removes; later entries win.
    overrides: Vec<(String, Option<String>)>,
    cwd: Option<PathBuf>,
}

#[cfg_attr(not(test), allow(dead_code))]
impl Ctx {
    pub(crate) fn set(mut self, key: &str, value: impl Into<String>) -> Self {
        self.overrides.push((key.to_string(), Some(value.into())));
        self
    }

    pub(crate) fn unset(mut self, key: &str) -> Self {
        self.overrides.push((key.to_string(), None));
        self
    }

    pub(crate) fn in_dir(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    fn var(&self, key: &str) -> Option<String> {
        match self.overrides.iter().rev().find(|(k, _)| k == key) {
            Some((_, v)) => v.clone(),
            None => std::env::var(key).ok(),
        }
        .filter(|v| !v.is_empty())
    }

    /// A variable looked up case-insensitively (npm's `npm_config_*`): the last one set wins.
    fn var_nocase(&self, key: &str) -> Option<(String, String)> {
        self.vars().into_iter().rfind(|(k, v)| k.eq_ignore_ascii_case(key) && !v.is_empty())
    }

    fn vars(&self) -> BTreeMap<String, String> {
        let mut all: BTreeMap<String, String> =
            std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect();
        for (k, v) in &self.overrides {
            match v {
                Some(v) => all.insert(k.clone(), v.clone()),
                None => all.remove(k),
            };
        }
        all
    }

    /// The step's working directory: the project whose configuration files count.
    fn cwd(&self) -> PathBuf {
        self.cwd.clone().or_else(|| std::env::current_dir().ok()).unwrap_or_else(|| PathBuf::from("/"))
    }

    fn home(&self) -> Option<PathBuf> {
        self.var("HOME").map(PathBuf::from)
    }

    /// The workspace: the working directory, resolved, or the top of the git work tree it is
    /// in (a `.git` in it or a parent, other than `/` and `$HOME`). `None` when it is `/` (then
    /// nothing is excluded: there is no checkout to tell apart).
    fn workspace(&self) -> Option<PathBuf> {
        let cwd = self.cwd();
        let cwd = cwd.canonicalize().unwrap_or(cwd);
        let home = self.home().and_then(|h| h.canonicalize().ok());
        let repo = cwd
            .ancestors()
            .find(|d| d.join(".git").exists())
            .filter(|d| *d != Path::new("/") && Some(*d) != home.as_deref())
            .map(Path::to_path_buf);
        let ws = repo.unwrap_or(cwd);
        (ws != Path::new("/")).then_some(ws)
    }

    /// Is `path` (or what it resolves to) inside the workspace?
    fn in_workspace(&self, path: &Path) -> bool {
        let Some(ws) = self.workspace() else { return false };
        let abs = if path.is_absolute() { path.to_path_buf() } else { self.cwd().join(path) };
        if abs.starts_with(&ws) {
            return true;
        }
        // A symlink (or a `..`) may lead into the workspace; so may a parent that is one.
        let real = abs.canonicalize().ok().or_else(|| abs.parent()?.canonicalize().ok());
        real.is_some_and(|r| r.starts_with(&ws))
    }

    /// Reads a configuration file: `Ok(None)` when it does not exist, an error when it cannot
    /// be read, is not valid UTF-8 or is larger than [`MAX_CONFIG_FILE_BYTES`].
    fn read_config(&self, pm: PackageManager, path: &Path) -> Result<Option<String>, RegistryError> {
        let bad = |reason: String| RegistryError::BadFile { pm, file: path.display().to_string(), reason };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => return Ok(None),
            Err(e) => return Err(bad(format!("cannot read it: {e}"))),
        };
        if !meta.is_file() {
            return Ok(None);
        }
        if meta.len() > MAX_CONFIG_FILE_BYTES {
            return Err(bad(format!("larger than {} bytes, which no configuration file is", MAX_CONFIG_FILE_BYTES)));
        }
        let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|_| bad("not valid UTF-8".to_string()))?;
        Ok(Some(text.trim_start_matches('\u{feff}').to_string()))
    }

    /// `tool` on PATH, outside the workspace: absolute PATH entries only, none inside the
    /// working directory, and the file found must not resolve into it either.
    fn find_tool(&self, tool: &str) -> Result<PathBuf, Option<String>> {
        let mut skipped = None;
        for dir in self.var("PATH").unwrap_or_default().split(':') {
            let dir = Path::new(dir);
            if dir.as_os_str().is_empty() || !dir.is_absolute() {
                continue;
            }
            let cand = dir.join(tool);
            let Ok(meta) = std::fs::metadata(&cand) else { continue };
            use std::os::unix::fs::PermissionsExt;
            if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
                continue;
            }
            if self.in_workspace(dir) || self.in_workspace(&cand) {
                skipped.get_or_insert_with(|| cand.display().to_string());
                continue;
            }
            return Ok(cand);
        }
        Err(skipped)
    }

    /// [`Ctx::find_tool`], as the error a missing tool gives.
    fn tool(&self, pm: PackageManager, tool: &str) -> Result<PathBuf, RegistryError> {
        self.find_tool(tool).map_err(|skipped| RegistryError::ToolMissing { tool: tool.to_string(), pm, skipped })
    }

    /// Runs `program args` in `/` with the code-loading variables removed and returns its
    /// stdout. `program` comes from [`Ctx::tool`].
    ///
    /// Identical queries asked at the same time (the registry and the proxy discovery both ask
    /// `npm config list --json`, on two threads, while the kernel verifies the programs) share
    /// one run: the first caller runs the tool, the others wait for its answer. Nothing is kept
    /// once the run is answered, so a later query (the daemon's next job) asks the tool again
    /// and sees a configuration changed in between.
    fn run(&self, pm: PackageManager, program: &Path, args: &[&str]) -> Result<String, RegistryError> {
        type Answer = Arc<OnceLock<Result<String, RegistryError>>>;
        static IN_FLIGHT: Mutex<BTreeMap<RunKey, Answer>> = Mutex::new(BTreeMap::new());
        let key = RunKey {
            program: program.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            cwd: self.cwd.clone(),
            env: self.tool_env(),
        };
        let answer: Answer = match IN_FLIGHT.lock() {
            Ok(mut m) => m.entry(key.clone()).or_default().clone(),
            Err(_) => Answer::default(),
        };
        let r = answer.get_or_init(|| self.run_now(pm, program, args, &key.env)).clone();
        if let Ok(mut m) = IN_FLIGHT.lock()
            && m.get(&key).is_some_and(|a| Arc::ptr_eq(a, &answer))
        {
            m.remove(&key);
        }
        // The answer names the package manager that asked first; the error is this caller's.
        r.map_err(|e| e.for_pm(pm))
    }

    /// The environment a tool runs with: the process's, without the code-loading variables.
    fn tool_env(&self) -> BTreeMap<String, String> {
        self.vars().into_iter().filter(|(k, _)| !CODE_LOADING_VARS.iter().any(|c| c.eq_ignore_ascii_case(k))).collect()
    }

    fn run_now(
        &self,
        pm: PackageManager,
        program: &Path,
        args: &[&str],
        env: &BTreeMap<String, String>,
    ) -> Result<String, RegistryError> {
        let name =
            program.file_name().map_or_else(|| program.display().to_string(), |n| n.to_string_lossy().into_owned());
        let command = std::iter::once(name.as_str()).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
        let failed = |status: String, stderr: String| RegistryError::CommandFailed {
            command: command.clone(),
            status,
            stderr,
            pm,
        };
        if let Some(dir) = &self.cwd
            && !dir.is_dir()
        {
            return Err(failed(format!("directory {} does not exist", dir.display()), String::new()));
        }
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).current_dir("/");
        cmd.env_clear().envs(env);
        // corepack shims (yarn, pnpm) must not download a package manager before the watch.
        cmd.env("COREPACK_ENABLE_NETWORK", "0")
            .env("COREPACK_ENABLE_AUTO_PIN", "0")
            .env("COREPACK_ENABLE_DOWNLOAD_PROMPT", "0");
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RegistryError::ToolMissing { tool: name.clone(), pm, skipped: None });
            }
            Err(e) => return Err(failed(format!("cannot start it: {e}"), String::new())),
        };
        let reader = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(p) = pipe {
                    // Bounded: a tool printing more than this is not answering a config query.
                    let _ = p.take(16 << 20).read_to_end(&mut buf);
                }
                buf
            })
        };
        let out = reader(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let err = reader(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(RegistryError::Timeout { command, pm });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(failed(format!("cannot wait for it: {e}"), String::new())),
            }
        };
        let stdout = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
        let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
        if !status.success() {
            return Err(failed(status.to_string(), stderr));
        }
        Ok(stdout)
    }

    /// `path` for a message and whether the workspace controls it.
    fn origin(&self, path: &Path, key: &str) -> (String, bool) {
        (format!("{} ({key})", path.display()), self.in_workspace(path))
    }
}

// ---------------------------------------------------------------------------------------------
// URLs

/// Why a registry URL has no usable host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("not a URL (expected scheme://host/...)")]
    NotAUrl,
    #[error("invalid URL scheme {0:?}")]
    Scheme(String),
    #[error("unclosed '[' in the host")]
    UnclosedBracket,
    #[error("invalid IPv6 host [{0}]")]
    Ipv6(String),
    #[error("invalid port {0:?}")]
    Port(String),
    #[error("the URL has no host")]
    NoHost,
    #[error("invalid host {0:?}")]
    Host(String),
}

/// The host of `scheme://[user[:pass]@]host[:port][/path]`, lowercased, IPv6 without brackets.
/// Cargo's `sparse+` / `registry+` / `git+` prefixes are accepted. `Ok(None)` for `file:` URLs
/// (no network).
pub(crate) fn url_host(url: &str) -> Result<Option<String>, UrlError> {
    let url = url.trim();
    let rest = ["sparse+", "registry+", "git+"].iter().find_map(|p| url.strip_prefix(p)).unwrap_or(url);
    let Some((scheme, rest)) = rest.split_once("://") else {
        return Err(UrlError::NotAUrl);
    };
    if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
        return Err(UrlError::Scheme(scheme.to_string()));
    }
    if scheme.eq_ignore_ascii_case("file") {
        return Ok(None);
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(r) = host_port.strip_prefix('[') {
        let (h, after) = r.split_once(']').ok_or(UrlError::UnclosedBracket)?;
        h.parse::<Ipv6Addr>().map_err(|_| UrlError::Ipv6(h.to_string()))?;
        (h, after.strip_prefix(':'))
    } else {
        match host_port.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    if let Some(p) = port
        && !p.is_empty()
        && p.parse::<u16>().is_err()
    {
        return Err(UrlError::Port(p.to_string()));
    }
    if host.is_empty() {
        return Err(UrlError::NoHost);
    }
    if !host_port.starts_with('[') && !host.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)) {
        return Err(UrlError::Host(host.to_string()));
    }
    let mut host = host.to_ascii_lowercase();
    if host.ends_with('.') && host.len() > 1 {
        host.pop();
    }
    Ok(Some(host))
}

fn host_of(pm: PackageManager, url: &str, origin: &str) -> Result<Option<String>, RegistryError> {
    url_host(url).map_err(|reason| RegistryError::BadUrl {
        pm,
        url: url.to_string(),
        origin: origin.to_string(),
        reason,
    })
}

/// Parses a TOML configuration file (bunfig.toml, uv.toml, pyproject.toml).
fn parse_toml(pm: PackageManager, path: &Path, text: &str) -> Result<toml::Table, RegistryError> {
    text.parse::<toml::Table>().map_err(|e| RegistryError::BadFile {
        pm,
        file: path.display().to_string(),
        reason: format!("not valid TOML: {}", e.message()),
    })
}

#[cfg(test)]
mod tools_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn npm_available() -> bool {
        Command::new("npm").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
    }

    fn python_available() -> bool {
        Command::new("python3").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
    }

    /// A context isolated from registry settings of the test process's environment.
    pub(super) fn clean_ctx(dir: &Path) -> Ctx {
        let mut ctx = Ctx::default().in_dir(dir);
        for (k, _) in std::env::vars() {
            let k_up = k.to_ascii_uppercase();
            if ["NPM_CONFIG_", "PIP_", "CARGO_REGISTR", "UV_", "YARN_", "BUN_", "POETRY_", "VIRTUAL_ENV"]
                .iter()
                .any(|p| k_up.starts_with(p))
            {
                ctx = ctx.unset(&k);
            }
        }
        ctx
    }

    #[test]
    fn url_hosts() {
        let ok = |u: &str| url_host(u).unwrap();
        assert_eq!(ok("https://registry.test/"), Some("registry.test".into()));
        assert_eq!(ok("http://127.0.0.1:4873/"), Some("127.0.0.1".into()));
        assert_eq!(ok("https://user:p%40ss@Mirror.Test:8443/simple?x=1#f"), Some("mirror.test".into()));
        assert_eq!(ok("sparse+https://index.cargo.test/"), Some("index.cargo.test".into()));
        assert_eq!(ok("registry+https://index.cargo.test/git/index"), Some("index.cargo.test".into()));
        assert_eq!(ok("ssh://git@git.test/org/index.git"), Some("git.test".into()));
        assert_eq!(ok("https://[2001:db8::1]:8080/x"), Some("2001:db8::1".into()));
        assert_eq!(ok("https://host.test."), Some("host.test".into()));
        assert_eq!(ok("file:///srv/index"), None);
        for bad in [
            "registry.test",
            "/opt/wheels",
            "https://",
            "https:///path",
            "https://a b/",
            "https://[::1/",
            "https://h:port/",
            "://h/",
        ] {
            assert!(url_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn npm_registry_matches_npm_config_get_registry() {
        if !npm_available() {
            eprintln!("npm not installed; skipping");
            return;
        }
        // What npm prints, parsed the same way, in the same directory and environment.
        let out = Command::new("npm").args(["config", "get", "registry"]).output().unwrap();
        let printed = String::from_utf8_lossy(&out.stdout);
        let expected = url_host(printed.trim()).unwrap().unwrap();
        let hosts = resolve(PackageManager::Npm).unwrap();
        assert_eq!(hosts.first(), Some(&expected), "{hosts:?}");
    }

    #[test]
    fn npm_registry_from_a_temp_npmrc() {
        if !npm_available() {
            eprintln!("npm not installed; skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let rc = dir.path().join("npmrc");
        std::fs::write(&rc, "registry=http://127.0.0.1:4873/\n@corp:registry=http://10.11.12.13:4874/npm/\n").unwrap();
        let global = dir.path().join("global-npmrc");
        std::fs::write(&global, "").unwrap();
        let ctx = clean_ctx(dir.path())
            .set("NPM_CONFIG_USERCONFIG", rc.to_str().unwrap())
            .set("NPM_CONFIG_GLOBALCONFIG", global.to_str().unwrap());
        let hosts = resolve_in(PackageManager::Npm, &ctx).unwrap();
        assert_eq!(hosts, ["127.0.0.1", "10.11.12.13"]);
    }

    #[test]
    fn missing_tool_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = clean_ctx(dir.path()).set("PATH", dir.path().to_str().unwrap());
        let e = resolve_in(PackageManager::Npm, &ctx).unwrap_err();
        assert_eq!(
            e.to_string(),
            "npm is not installed or not on PATH: cannot resolve the npm registry for policy registries: [npm]"
        );
        let e = resolve_in(PackageManager::Pip, &ctx).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pip is not installed or not on PATH: cannot resolve the pip registry for policy registries: [pip]"
        );
    }

    #[test]
    fn failing_command_reports_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let tools = tempfile::tempdir().unwrap();
        let npm = tools.path().join("npm");
        std::fs::write(&npm, "#!/bin/sh\necho 'npm ERR! config is broken' >&2\nexit 3\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&npm, std::fs::Permissions::from_mode(0o755)).unwrap();
        let ctx = clean_ctx(dir.path()).set("PATH", tools.path().to_str().unwrap());
        let e = resolve_in(PackageManager::Npm, &ctx).unwrap_err().to_string();
        assert!(e.starts_with("`npm config list --json` failed (exit status: 3): npm ERR! config is broken"), "{e}");
    }

    /// The registry and proxy discoveries ask npm the same question at the same time: npm
    /// starts once for both. A question asked after the answer starts the tool again (the
    /// daemon's next job sees a configuration changed in between).
    #[test]
    fn the_same_query_asked_at_once_runs_the_tool_once_and_later_again() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tools = tempfile::tempdir().unwrap();
        let count = tools.path().join("runs");
        let npm = tools.path().join("npm");
        std::fs::write(&npm, format!("#!/bin/sh\necho run >> '{}'\nsleep 0.3\necho '{{}}'\n", count.display()))
            .unwrap();
        std::fs::set_permissions(&npm, std::fs::Permissions::from_mode(0o755)).unwrap();
        let ctx = clean_ctx(dir.path()).set("PATH", tools.path().to_str().unwrap());
        let runs = || std::fs::read_to_string(&count).unwrap_or_default().lines().count();
        let barrier = std::sync::Barrier::new(2);
        let answers: Vec<_> = std::thread::scope(|s| {
            let ask = |pm| {
                let (ctx, barrier, npm) = (&ctx, &barrier, &npm);
                s.spawn(move || {
                    barrier.wait();
                    ctx.run(pm, npm, &["config", "list", "--json"])
                })
            };
            let (a, b) = (ask(PackageManager::Npm), ask(PackageManager::Pnpm));
            vec![a.join().unwrap(), b.join().unwrap()]
        });
        assert_eq!(answers, vec![Ok("{}\n".to_string()), Ok("{}\n".to_string())]);
        assert_eq!(runs(), 1, "two identical queries at once started the tool twice");
        // Another environment is another question.
        let other = ctx.clone().set("npm_config_registry", "http://127.0.0.1:9/");
        other.run(PackageManager::Npm, &npm, &["config", "list", "--json"]).unwrap();
        assert_eq!(runs(), 2);
        ctx.run(PackageManager::Npm, &npm, &["config", "list", "--json"]).unwrap();
        assert_eq!(runs(), 3, "an answered query was served again instead of asking the tool");
    }

    /// A failure shared by two askers names each asker's package manager.
    #[test]
    fn a_shared_failure_is_each_askers_error() {
        let e = RegistryError::Timeout { command: "npm config list --json".into(), pm: PackageManager::Npm };
        assert_eq!(e.for_pm(PackageManager::Pnpm).package_manager(), PackageManager::Pnpm);
    }

    #[test]
    fn pip_index_from_env_replaces_the_default() {
        if !python_available() {
            eprintln!("pip not installed; skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ctx = clean_ctx(dir.path())
            .set("PIP_CONFIG_FILE", "/dev/null")
            .set("PIP_INDEX_URL", "http://127.0.0.1:3141/root/pypi/+simple/")
            .set("PIP_EXTRA_INDEX_URL", "https://extra-one.test/simple https://extra-two.test/simple")
            .set("PIP_FIND_LINKS", "/opt/wheels https://links.test/wheels/");
        match resolve_in(PackageManager::Pip, &ctx) {
            Ok(hosts) => assert_eq!(hosts, ["127.0.0.1", "extra-one.test", "extra-two.test", "links.test"]),
            Err(RegistryError::ToolMissing { .. }) => eprintln!("pip not installed; skipping"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn pip_index_from_pip_config() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("pip.conf");
        std::fs::write(&conf, "[global]\nindex-url = https://idx.test/simple\nextra-index-url =\n    https://x1.test/simple\n    https://x2.test/simple\n").unwrap();
        let ctx = clean_ctx(dir.path()).set("PIP_CONFIG_FILE", conf.to_str().unwrap());
        match resolve_in(PackageManager::Pip, &ctx) {
            Ok(hosts) => assert_eq!(hosts, ["idx.test", "x1.test", "x2.test"]),
            Err(RegistryError::ToolMissing { .. }) => eprintln!("pip not installed; skipping"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn pip_default_index_is_what_pip_reports() {
        if !python_available() {
            eprintln!("python3 not installed; skipping");
            return;
        }
        let out = Command::new("python3").args(["-c", PIP_DEFAULT_INDEX_SNIPPET]).output().unwrap();
        if !out.status.success() {
            eprintln!("pip not importable; skipping");
            return;
        }
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut words = printed.split_whitespace();
        let index_host = url_host(words.next().unwrap()).unwrap().unwrap();
        let files_host = words.next().unwrap().to_ascii_lowercase();
        let dir = tempfile::tempdir().unwrap();
        let ctx = clean_ctx(dir.path()).set("PIP_CONFIG_FILE", "/dev/null");
        let hosts = resolve_in(PackageManager::Pip, &ctx).unwrap();
        assert_eq!(hosts, [index_host, files_host]);
    }

    #[test]
    fn pip_conf_sections_and_precedence() {
        let got = python::ini_sections(
            "# c\n[global]\nindex-url = https://a.test/simple\nextra-index-url =\n    https://b.test/s\n    https://c.test/s\n; c\n[install]\nno_index: true\n",
        );
        assert_eq!(got[0], ("global".into(), "index-url".into(), "https://a.test/simple".into()));
        assert_eq!(got[1].2, "\nhttps://b.test/s\nhttps://c.test/s");
        assert_eq!(got[2], ("install".into(), "no_index".into(), "true".into()));
        let mut s = PipSettings::default();
        s.set("index_url", "https://one.test/", "f1", false);
        s.set("index-url", "https://two.test/", "f2", true);
        let index = s.index.unwrap();
        assert_eq!(
            (index.len(), index[0].url.as_str(), index[0].from.as_str(), index[0].workspace),
            (1, "https://two.test/", "f2", true)
        );
    }

    #[test]
    fn toml_reader() {
        let text = r#"
# comment
[registries.my-reg]
index = "sparse+https://my.test/index/" # trailing comment
[registries]
other = { index = 'https://other.test/git/index', token = "x" }
[source."crates-io"]
replace-with = "mirror"
[source.mirror]
registry = "sparse+https://mirror.test/"
[net]
retry = 3
doc = """
[registries.fake]
index = "https://fake.test/"
"""
[build]
rustflags = ["-C", "x"]
registries.dotted.index = "https://dotted.test/"
"#;
        let got = toml_strings(text);
        let find = |k: &str| got.iter().find(|(key, _)| key.join(".") == k).map(|(_, v)| v.as_str());
        assert_eq!(find("registries.my-reg.index"), Some("sparse+https://my.test/index/"));
        assert_eq!(find("registries.other.index"), Some("https://other.test/git/index"));
        assert_eq!(find("registries.other.token"), Some("x"));
        assert_eq!(find("source.crates-io.replace-with"), Some("mirror"));
        assert_eq!(find("source.mirror.registry"), Some("sparse+https://mirror.test/"));
        assert_eq!(find("build.registries.dotted.index"), Some("https://dotted.test/"));
        assert_eq!(find("registries.fake.index"), None);
    }

    fn fake_cargo_home(root: &Path, dirs: &[(&str, Option<&str>)]) -> PathBuf {
        let home = root.join("cargo-home");
        for (name, dl) in dirs {
            let d = home.join("registry/index").join(name);
            std::fs::create_dir_all(&d).unwrap();
            if let Some(dl) = dl {
                std::fs::write(d.join("config.json"), format!("{{\"dl\": \"{dl}\", \"api\": \"https://api.test\"}}"))
                    .unwrap();
            }
        }
        std::fs::create_dir_all(&home).unwrap();
        home
    }

    #[test]
    fn cargo_default_registry_from_index_cache() {
        let dir = tempfile::tempdir().unwrap();
        let home = fake_cargo_home(
            dir.path(),
            &[("index.default.test-0123456789abcdef", Some("https://dl.default.test/crates")), ("not-a-cache", None)],
        );
        let ctx = clean_ctx(dir.path()).set("CARGO_HOME", home.to_str().unwrap());
        assert_eq!(resolve_in(PackageManager::Cargo, &ctx).unwrap(), ["index.default.test", "dl.default.test"]);
    }

    #[test]
    fn cargo_config_env_and_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let home = fake_cargo_home(
            dir.path(),
            &[
                ("index.default.test-0123456789abcdef", Some("https://dl.default.test/crates")),
                ("mirror.test-fedcba9876543210", None),
            ],
        );
        std::fs::create_dir_all(home.join("registry/index/mirror.test-fedcba9876543210/.cache")).unwrap();
        std::fs::write(
            home.join("registry/index/mirror.test-fedcba9876543210/.cache/config.json"),
            r#"{"dl":"https://mirror-dl.test/{crate}/{version}"}"#,
        )
        .unwrap();
        let project = dir.path().join("work/project");
        std::fs::create_dir_all(project.join(".cargo")).unwrap();
        std::fs::create_dir_all(dir.path().join("work/.cargo")).unwrap();
        std::fs::write(
            dir.path().join("work/.cargo/config.toml"),
            "[source.crates-io]\nreplace-with = \"mirror\"\n[source.mirror]\nregistry = \"sparse+https://mirror.test/\"\n",
        )
        .unwrap();
        std::fs::write(
            project.join(".cargo/config.toml"),
            "[registries.corp]\nindex = \"sparse+https://corp.test/index/\"\n",
        )
        .unwrap();
        let ctx = clean_ctx(&project)
            .set("CARGO_HOME", home.to_str().unwrap())
            .set("CARGO_REGISTRIES_EXTRA_INDEX", "https://extra.test/git/index");
        // crates-io is replaced: the default cache entry is not used; the mirror's dl host is.
        assert_eq!(
            resolve_in(PackageManager::Cargo, &ctx).unwrap(),
            ["corp.test", "mirror.test", "extra.test", "mirror-dl.test"]
        );
    }

    #[test]
    fn cargo_vendored_sources_need_no_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let home = fake_cargo_home(dir.path(), &[]);
        std::fs::create_dir_all(dir.path().join(".cargo")).unwrap();
        std::fs::write(
            dir.path().join(".cargo/config.toml"),
            "[source.crates-io]\nreplace-with = \"vendored-sources\"\n\n[source.vendored-sources]\ndirectory = \"vendor\"\n",
        )
        .unwrap();
        let ctx = clean_ctx(dir.path()).set("CARGO_HOME", home.to_str().unwrap());
        assert_eq!(resolve_in(PackageManager::Cargo, &ctx).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn cargo_without_anything_says_how_to_configure() {
        let dir = tempfile::tempdir().unwrap();
        let home = fake_cargo_home(dir.path(), &[]);
        let ctx = clean_ctx(dir.path()).set("CARGO_HOME", home.to_str().unwrap());
        let e = resolve_in(PackageManager::Cargo, &ctx).unwrap_err().to_string();
        assert!(e.starts_with("cannot find the cargo registry hosts: "), "{e}");
        assert!(e.contains("run `cargo fetch` once"), "{e}");
    }

    #[test]
    fn cargo_on_this_machine_uses_the_cached_index_hosts() {
        let Some(home) = std::env::var("CARGO_HOME")
            .ok()
            .map(PathBuf::from)
            .or_else(|| std::env::var("HOME").ok().map(|h| PathBuf::from(h).join(".cargo")))
        else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(home.join("registry/index")) else {
            eprintln!("no cargo index cache; skipping");
            return;
        };
        let cached: Vec<String> = entries
            .flatten()
            .filter_map(|e| Some(e.file_name().into_string().ok()?.rsplit_once('-')?.0.to_ascii_lowercase()))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let ctx = clean_ctx(dir.path()).set("CARGO_HOME", home.to_str().unwrap());
        match resolve_in(PackageManager::Cargo, &ctx) {
            Ok(hosts) => {
                for h in &cached {
                    assert!(hosts.contains(h), "{h} not in {hosts:?}");
                }
            }
            // A replaced crates-io in the real $CARGO_HOME/config.toml changes the answer.
            Err(e) => panic!("{e}"),
        }
    }
}
