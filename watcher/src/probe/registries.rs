//! Registry resolution for `egress.registries`: asks each package manager's own configuration,
//! at run time, which hosts it downloads packages from. No registry host name is written
//! anywhere in this code: defaults come from the tools themselves (npm's `registry` setting,
//! pip's built-in index, cargo's index cache).
//!
//! This module does I/O (runs `npm`, `pip`, `python3`; reads cargo config files) and is meant
//! to run once before a step; the result goes to `Policy::with_registry_hosts`.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::policy::PackageManager;

/// How long one `npm config ...` / `pip config list` / `python3 -c ...` may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the registry hosts of a package manager could not be determined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("{tool} is not installed or not on PATH: cannot resolve the {pm} registry for policy registries: [{pm}]")]
    ToolMissing { tool: String, pm: PackageManager },

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
    BadUrl { pm: PackageManager, url: String, origin: String, reason: String },

    /// Nothing configured and no default could be found; the message says how to configure it.
    #[error("{message}")]
    NotConfigured { pm: PackageManager, message: String },
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
            | RegistryError::NotConfigured { pm, .. } => *pm,
        }
    }
}

/// The registry host names `pm` is configured to use, asked from the tool's configuration in
/// the current directory and environment. Deduplicated, lowercased, in discovery order.
pub fn resolve(pm: PackageManager) -> Result<Vec<String>, RegistryError> {
    resolve_in(pm, &Ctx::default())
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

pub(crate) fn resolve_in(pm: PackageManager, ctx: &Ctx) -> Result<Vec<String>, RegistryError> {
    let hosts = match pm {
        PackageManager::Npm => npm_hosts(ctx)?,
        PackageManager::Pip => pip_hosts(ctx)?,
        PackageManager::Cargo => cargo_hosts(ctx)?,
    };
    let mut seen = HashSet::new();
    Ok(hosts.into_iter().filter(|h| seen.insert(h.clone())).collect())
}

// ---------------------------------------------------------------------------------------------
// Environment and commands

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

    fn cwd(&self) -> PathBuf {
        self.cwd.clone().or_else(|| std::env::current_dir().ok()).unwrap_or_else(|| PathBuf::from("/"))
    }

    /// Runs `program args` and returns its stdout; a missing program is `ToolMissing`.
    fn run(&self, pm: PackageManager, program: &str, args: &[&str]) -> Result<String, RegistryError> {
        let command = std::iter::once(program).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
        let failed = |status: String, stderr: String| RegistryError::CommandFailed {
            command: command.clone(),
            status,
            stderr,
            pm,
        };
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in &self.overrides {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        if let Some(dir) = &self.cwd {
            if !dir.is_dir() {
                return Err(failed(format!("directory {} does not exist", dir.display()), String::new()));
            }
            cmd.current_dir(dir);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RegistryError::ToolMissing { tool: program.to_string(), pm });
            }
            Err(e) => return Err(failed(format!("cannot start it: {e}"), String::new())),
        };
        let reader = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut buf);
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
}

// ---------------------------------------------------------------------------------------------
// URLs

/// The host of `scheme://[user[:pass]@]host[:port][/path]`, lowercased, IPv6 without brackets.
/// Cargo's `sparse+` / `registry+` / `git+` prefixes are accepted. `Ok(None)` for `file:` URLs
/// (no network).
pub(crate) fn url_host(url: &str) -> Result<Option<String>, String> {
    let url = url.trim();
    let rest = ["sparse+", "registry+", "git+"].iter().find_map(|p| url.strip_prefix(p)).unwrap_or(url);
    let Some((scheme, rest)) = rest.split_once("://") else {
        return Err("not a URL (expected scheme://host/...)".to_string());
    };
    if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
        return Err(format!("invalid URL scheme {scheme:?}"));
    }
    if scheme.eq_ignore_ascii_case("file") {
        return Ok(None);
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(r) = host_port.strip_prefix('[') {
        let (h, after) = r.split_once(']').ok_or("unclosed '[' in the host")?;
        h.parse::<Ipv6Addr>().map_err(|_| format!("invalid IPv6 host [{h}]"))?;
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
        return Err(format!("invalid port {p:?}"));
    }
    if host.is_empty() {
        return Err("the URL has no host".to_string());
    }
    if !host_port.starts_with('[') && !host.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)) {
        return Err(format!("invalid host {host:?}"));
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

// ---------------------------------------------------------------------------------------------
// npm

fn npm_hosts(ctx: &Ctx) -> Result<Vec<String>, RegistryError> {
    let pm = PackageManager::Npm;
    // One npm start (about 0.4 s of node), not two: `npm config list --json` prints the
    // effective configuration, the default `registry` included, and the scoped registries
    // (`@scope:registry=URL`) of every npmrc npm reads.
    let json = ctx.run(pm, "npm", &["config", "list", "--json"])?;
    let config: serde_json::Value = serde_json::from_str(&json).map_err(|e| RegistryError::CommandFailed {
        command: "npm config list --json".to_string(),
        status: format!("printed invalid JSON: {e}"),
        stderr: String::new(),
        pm,
    })?;
    let url = config.get("registry").and_then(|v| v.as_str()).map(str::trim).unwrap_or("");
    if url.is_empty() || url == "undefined" || url == "null" {
        return Err(RegistryError::NotConfigured {
            pm,
            message: "npm has no registry configured (`npm config list --json` names none): set one with `npm config set registry URL` or in .npmrc".to_string(),
        });
    }
    let mut hosts = Vec::new();
    hosts.extend(host_of(pm, url, "npm config registry")?);
    if let Some(obj) = config.as_object() {
        for (key, value) in obj {
            if let (true, Some(url)) = (key.starts_with('@') && key.ends_with(":registry"), value.as_str()) {
                hosts.extend(host_of(pm, url, &format!("npm config {key}"))?);
            }
        }
    }
    Ok(hosts)
}

// ---------------------------------------------------------------------------------------------
// pip

/// Asks pip for its built-in index: the "simple" index URL and the host wheels and sdists are
/// downloaded from.
const PIP_DEFAULT_INDEX_SNIPPET: &str =
    "from pip._internal.models.index import PyPI; print(PyPI.simple_url, PyPI.file_storage_domain)";

/// Splits a pip setting that may hold several URLs (whitespace or newline separated; `pip
/// config list` prints newlines as `\n`).
fn pip_values(value: &str) -> Vec<String> {
    value.replace("\\n", " ").split_whitespace().map(str::to_string).collect()
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    for q in ['\'', '"'] {
        if let Some(inner) = v.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

fn truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

#[derive(Default)]
struct PipSettings {
    /// (url, where it came from)
    index: Vec<(String, String)>,
    extra: Vec<(String, String)>,
    find_links: Vec<(String, String)>,
    no_index: bool,
}

impl PipSettings {
    fn add(&mut self, name: &str, value: &str, origin: &str) {
        let list = match name {
            "index-url" | "index_url" => &mut self.index,
            "extra-index-url" | "extra_index_url" => &mut self.extra,
            "find-links" | "find_links" => &mut self.find_links,
            "no-index" | "no_index" => {
                self.no_index |= truthy(value);
                return;
            }
            _ => return,
        };
        list.extend(pip_values(value).into_iter().map(|v| (v, origin.to_string())));
    }

    /// Parses `pip config list` output: `section.key='value'` lines.
    fn add_config_list(&mut self, out: &str) {
        for line in out.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let Some((section, name)) = key.trim().rsplit_once('.') else {
                continue;
            };
            if matches!(section, "global" | "install" | "download" | ":env:") {
                self.add(name, unquote(value), &format!("pip config {}", key.trim()));
            }
        }
    }
}

fn pip_hosts(ctx: &Ctx) -> Result<Vec<String>, RegistryError> {
    let pm = PackageManager::Pip;
    let mut s = PipSettings::default();
    for (var, name) in [
        ("PIP_INDEX_URL", "index-url"),
        ("PIP_EXTRA_INDEX_URL", "extra-index-url"),
        ("PIP_FIND_LINKS", "find-links"),
        ("PIP_NO_INDEX", "no-index"),
    ] {
        if let Some(v) = ctx.var(var) {
            s.add(name, &v, var);
        }
    }
    let out = match ctx.run(pm, "pip", &["config", "list"]) {
        Err(RegistryError::ToolMissing { .. }) => match ctx.run(pm, "pip3", &["config", "list"]) {
            Err(RegistryError::ToolMissing { .. }) => {
                return Err(RegistryError::ToolMissing { tool: "pip".to_string(), pm });
            }
            other => other?,
        },
        other => other?,
    };
    s.add_config_list(&out);

    let mut hosts = Vec::new();
    for (url, origin) in s.index.iter().chain(&s.extra) {
        hosts.extend(host_of(pm, url, origin)?);
    }
    // find-links may be local directories; only URLs need the network.
    for (url, origin) in &s.find_links {
        if url.contains("://") {
            hosts.extend(host_of(pm, url, origin)?);
        }
    }
    if s.index.is_empty() && !s.no_index {
        hosts.extend(pip_default_index(ctx)?);
    }
    Ok(hosts)
}

fn pip_default_index(ctx: &Ctx) -> Result<Vec<String>, RegistryError> {
    let pm = PackageManager::Pip;
    let how = "set an index with `pip config set global.index-url URL` or PIP_INDEX_URL, or remove pip from egress.registries and list its hosts under egress.allow";
    let out = match ctx.run(pm, "python3", &["-c", PIP_DEFAULT_INDEX_SNIPPET]) {
        Ok(out) => out,
        Err(RegistryError::ToolMissing { .. }) => {
            return Err(RegistryError::NotConfigured {
                pm,
                message: format!(
                    "python3 is not installed or not on PATH, so pip's default index cannot be asked for: {how}"
                ),
            });
        }
        Err(e) => {
            return Err(RegistryError::NotConfigured {
                pm,
                message: format!(
                    "pip has no index-url configured and asking pip for its default index failed ({e}): {how}"
                ),
            });
        }
    };
    let mut words = out.split_whitespace();
    let (Some(index), Some(files)) = (words.next(), words.next()) else {
        return Err(RegistryError::NotConfigured {
            pm,
            message: format!("pip did not report its default index (python3 printed {:?}): {how}", out.trim()),
        });
    };
    let mut hosts = Vec::new();
    hosts.extend(host_of(pm, index, "pip's default index")?);
    // file_storage_domain is a bare host name.
    let files_url = if files.contains("://") { files.to_string() } else { format!("https://{files}/") };
    hosts.extend(host_of(pm, &files_url, "pip's default file storage domain")?);
    Ok(hosts)
}

// ---------------------------------------------------------------------------------------------
// cargo

/// Every string value of a TOML document with its full dotted key (table path + key path).
/// A small subset reader, enough for cargo config files: `[table]` / `[[array]]` headers,
/// bare/quoted/dotted keys, basic and literal strings, one-line inline tables. Arrays, numbers,
/// booleans and multi-line strings are skipped.
pub(crate) fn toml_strings(text: &str) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    let mut table: Vec<String> = Vec::new();
    let mut in_multiline: Option<&str> = None;
    for line in text.lines() {
        if let Some(delim) = in_multiline {
            if line.contains(delim) {
                in_multiline = None;
            }
            continue;
        }
        let line = line.trim_start();
        if let Some(rest) = line.strip_prefix('[') {
            let rest = rest.strip_prefix('[').unwrap_or(rest);
            if let Some((keys, after)) = toml_key(rest)
                && after.trim_start().starts_with(']')
            {
                table = keys;
            }
            continue;
        }
        let Some((keys, rest)) = toml_key(line) else {
            continue;
        };
        let Some(value) = rest.trim_start().strip_prefix('=') else {
            continue;
        };
        let value = value.trim_start();
        for delim in ["\"\"\"", "'''"] {
            if let Some(after) = value.strip_prefix(delim)
                && !after.contains(delim)
            {
                in_multiline = Some(delim);
            }
        }
        if in_multiline.is_some() || value.starts_with("\"\"\"") || value.starts_with("'''") {
            continue;
        }
        let mut full = table.clone();
        full.extend(keys);
        toml_value(value, full, &mut out);
    }
    out
}

fn toml_value(value: &str, key: Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    if let Some((s, _)) = toml_string(value) {
        out.push((key, s));
    } else if let Some(mut rest) = value.strip_prefix('{') {
        // inline table: k = v, k2 = v2 }
        loop {
            rest = rest.trim_start();
            if rest.is_empty() || rest.starts_with('}') {
                break;
            }
            let Some((k, after)) = toml_key(rest) else {
                break;
            };
            let Some(v) = after.trim_start().strip_prefix('=') else {
                break;
            };
            let v = v.trim_start();
            let mut full = key.clone();
            full.extend(k);
            rest = match toml_string(v) {
                Some((s, after)) => {
                    out.push((full, s));
                    after
                }
                // not a string: skip to the next separator
                None => match v.find([',', '}']) {
                    Some(i) => &v[i..],
                    None => break,
                },
            };
            rest = rest.trim_start();
            match rest.strip_prefix(',') {
                Some(r) => rest = r,
                None => break,
            }
        }
    }
}

/// A dotted key; returns the parts and the text after it.
fn toml_key(s: &str) -> Option<(Vec<String>, &str)> {
    let mut parts = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start();
        if rest.starts_with('"') || rest.starts_with('\'') {
            let (p, after) = toml_string(rest)?;
            parts.push(p);
            rest = after;
        } else {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')).unwrap_or(rest.len());
            if end == 0 {
                return None;
            }
            parts.push(rest[..end].to_string());
            rest = &rest[end..];
        }
        let trimmed = rest.trim_start();
        match trimmed.strip_prefix('.') {
            Some(r) => rest = r,
            None => return Some((parts, rest)),
        }
    }
}

/// A one-line basic (`"..."`, with escapes) or literal (`'...'`) string.
fn toml_string(s: &str) -> Option<(String, &str)> {
    if let Some(body) = s.strip_prefix('\'') {
        let end = body.find('\'')?;
        return Some((body[..end].to_string(), &body[end + 1..]));
    }
    let body = s.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &body[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'u' | 'U' => return None,
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// A registry index cache directory `$CARGO_HOME/registry/index/<host>-<hash>`.
struct IndexDir {
    host: String,
    /// Host of the `dl` URL of the index's config.json, where .crate files come from.
    dl_host: Option<String>,
}

fn index_dirs(cargo_home: &Path) -> Vec<IndexDir> {
    let Ok(entries) = std::fs::read_dir(cargo_home.join("registry").join("index")) else {
        return Vec::new();
    };
    let mut dirs: Vec<IndexDir> = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (host, hash) = name.rsplit_once('-')?;
            if hash.len() < 8 || !hash.chars().all(|c| c.is_ascii_hexdigit()) || host.is_empty() {
                return None;
            }
            let dir = e.path();
            let dl_host = ["config.json", ".cache/config.json"].iter().find_map(|f| {
                let text = std::fs::read_to_string(dir.join(f)).ok()?;
                let v: serde_json::Value = serde_json::from_str(&text).ok()?;
                url_host(v.get("dl")?.as_str()?).ok().flatten()
            });
            Some(IndexDir { host: host.to_ascii_lowercase(), dl_host })
        })
        .collect();
    dirs.sort_by(|a, b| a.host.cmp(&b.host));
    dirs
}

fn cargo_hosts(ctx: &Ctx) -> Result<Vec<String>, RegistryError> {
    let pm = PackageManager::Cargo;
    let cargo_home =
        ctx.var("CARGO_HOME").map(PathBuf::from).or_else(|| ctx.var("HOME").map(|h| PathBuf::from(h).join(".cargo")));

    // Config files: .cargo/config{,.toml} of the current dir and its parents, then $CARGO_HOME.
    let mut files: Vec<PathBuf> = Vec::new();
    let mut seen = HashSet::new();
    let cwd = ctx.cwd();
    let mut dirs: Vec<PathBuf> = cwd.ancestors().map(|d| d.join(".cargo")).collect();
    dirs.extend(cargo_home.clone());
    for dir in dirs {
        for name in ["config.toml", "config"] {
            let path = dir.join(name);
            if path.is_file() {
                let key = path.canonicalize().unwrap_or_else(|_| path.clone());
                if seen.insert(key) {
                    files.push(path);
                }
            }
        }
    }

    let mut urls: Vec<(String, String)> = Vec::new();
    let mut crates_io_replaced = false;
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for (key, value) in toml_strings(&text) {
            let key: Vec<&str> = key.iter().map(String::as_str).collect();
            let origin = || format!("{} ({})", file.display(), key.join("."));
            match key.as_slice() {
                ["registries", _, "index"] | ["registry", "index"] => urls.push((value, origin())),
                ["source", _, "registry"] | ["source", _, "git"] => urls.push((value, origin())),
                ["source", "crates-io", "replace-with"] => crates_io_replaced = true,
                _ => {}
            }
        }
    }
    for (key, value) in ctx.vars() {
        let named = key.starts_with("CARGO_REGISTRIES_") && key.ends_with("_INDEX");
        if named || key == "CARGO_REGISTRY_INDEX" {
            urls.push((value, key));
        }
    }

    let mut hosts = Vec::new();
    for (url, origin) in &urls {
        hosts.extend(host_of(pm, url, origin)?);
    }

    let cache = cargo_home.as_deref().map(index_dirs).unwrap_or_default();
    // The download host of every configured registry whose index cargo has cached.
    let configured: HashSet<String> = hosts.iter().cloned().collect();
    for d in cache.iter().filter(|d| configured.contains(&d.host)) {
        hosts.extend(d.dl_host.clone());
    }
    if !crates_io_replaced {
        // The default registry: cargo records the indexes it used under registry/index/.
        if cache.is_empty() {
            let home = cargo_home.as_deref().map_or_else(|| "$CARGO_HOME".to_string(), |h| h.display().to_string());
            return Err(RegistryError::NotConfigured {
                pm,
                message: format!(
                    "cannot find the cargo registry hosts: {home}/registry/index/ has no registry index yet and no \
                     [source.crates-io] replace-with is configured; run `cargo fetch` once before `watcher run` \
                     (cargo then records its registry there), configure the registry in .cargo/config.toml \
                     ([registries] / [source]) or CARGO_REGISTRIES_<NAME>_INDEX, or remove cargo from \
                     egress.registries and list its hosts under egress.allow"
                ),
            });
        }
        for d in &cache {
            hosts.push(d.host.clone());
            hosts.extend(d.dl_host.clone());
        }
    }
    // crates-io replaced by a directory / local registry and nothing else: no network needed.
    Ok(hosts)
}

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
    fn clean_ctx(dir: &Path) -> Ctx {
        let mut ctx = Ctx::default().in_dir(dir);
        for (k, _) in std::env::vars() {
            let k_up = k.to_ascii_uppercase();
            if k_up.starts_with("NPM_CONFIG_") || k_up.starts_with("PIP_") || k_up.starts_with("CARGO_REGISTR") {
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
        let npm = dir.path().join("npm");
        std::fs::write(&npm, "#!/bin/sh\necho 'npm ERR! config is broken' >&2\nexit 3\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&npm, std::fs::Permissions::from_mode(0o755)).unwrap();
        let ctx = clean_ctx(dir.path()).set("PATH", dir.path().to_str().unwrap());
        let e = resolve_in(PackageManager::Npm, &ctx).unwrap_err().to_string();
        assert!(e.starts_with("`npm config list --json` failed (exit status: 3): npm ERR! config is broken"), "{e}");
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
    fn pip_config_list_parsing() {
        let mut s = PipSettings::default();
        s.add_config_list(
            ":env:.index-url='https://a.test/simple'\nglobal.extra-index-url='https://b.test/s\\nhttps://c.test/s'\nglobal.cert='/etc/ssl/x'\nuser.index-url='https://ignored.test/'\ninstall.no-index='true'\n",
        );
        let urls = |v: &Vec<(String, String)>| v.iter().map(|(u, _)| u.clone()).collect::<Vec<_>>();
        assert_eq!(urls(&s.index), ["https://a.test/simple"]);
        assert_eq!(urls(&s.extra), ["https://b.test/s", "https://c.test/s"]);
        assert!(s.no_index);
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
