//! The Python package managers: pip, uv and poetry.
//!
//! Their configuration files are read here (pip.conf, uv.toml, pyproject.toml); a tool is only
//! started for its built-in default: `python3 -I` (isolated: no working directory, user site
//! or PYTHON* variables on its path) in `/` for pip's, `uv pip install --help` for uv's.

use std::path::{Path, PathBuf};

use super::{Ctx, RegistryError, Url, parse_toml, url_host};
use crate::policy::PackageManager;

/// Asks pip for its built-in index: the "simple" index URL and the host wheels and sdists are
/// downloaded from.
pub(crate) const PIP_DEFAULT_INDEX_SNIPPET: &str =
    "from pip._internal.models.index import PyPI; print(PyPI.simple_url, PyPI.file_storage_domain)";

/// Splits a pip setting that may hold several URLs (whitespace or newline separated).
fn pip_values(value: &str) -> Vec<String> {
    value.replace("\\n", " ").split_whitespace().map(str::to_string).collect()
}

pub(super) fn unquote(v: &str) -> &str {
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

/// pip's index settings; each is replaced by a later source, as pip's options are.
#[derive(Default)]
pub(crate) struct PipSettings {
    pub index: Option<Vec<Url>>,
    pub extra: Option<Vec<Url>>,
    pub find_links: Option<Vec<Url>>,
    pub no_index: bool,
}

impl PipSettings {
    pub fn set(&mut self, name: &str, value: &str, from: &str, workspace: bool) {
        let name = name.trim().to_ascii_lowercase().replace('_', "-");
        let slot = match name.as_str() {
            "index-url" | "i" => &mut self.index,
            "extra-index-url" => &mut self.extra,
            "find-links" | "f" => &mut self.find_links,
            "no-index" => {
                self.no_index = truthy(value);
                return;
            }
            _ => return,
        };
        *slot = Some(pip_values(value).into_iter().map(|v| Url::new(v, from, workspace)).collect());
    }
}

/// The sections of an INI file (pip.conf): `[section]`, `key = value` or `key: value`,
/// indented continuation lines, `#`/`;` comment lines.
pub(crate) fn ini_sections(text: &str) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = Vec::new();
    let mut section = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.2.push('\n');
                last.2.push_str(trimmed);
            }
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        let Some(i) = trimmed.find(['=', ':']) else { continue };
        out.push((section.clone(), trimmed[..i].trim().to_string(), trimmed[i + 1..].trim().to_string()));
    }
    out
}

/// pip's configuration files in pip's order (later wins): global, user, site, PIP_CONFIG_FILE.
pub(super) fn pip_config_files(ctx: &Ctx) -> Vec<PathBuf> {
    let env_file = ctx.var("PIP_CONFIG_FILE");
    if env_file.as_deref() == Some("/dev/null") {
        return Vec::new();
    }
    let mut files = Vec::new();
    let xdg_dirs = ctx.var("XDG_CONFIG_DIRS").unwrap_or_else(|| "/etc/xdg".to_string());
    files.extend(xdg_dirs.split(':').filter(|d| !d.is_empty()).map(|d| Path::new(d).join("pip/pip.conf")));
    files.push(PathBuf::from("/etc/pip.conf"));
    if !env_file.as_deref().is_some_and(|f| Path::new(f).exists())
        && let Some(home) = ctx.home()
    {
        files.push(home.join(".pip/pip.conf"));
        let xdg = ctx.var("XDG_CONFIG_HOME").map(PathBuf::from).unwrap_or_else(|| home.join(".config"));
        files.push(xdg.join("pip/pip.conf"));
    }
    // The site file belongs to the interpreter the step's pip runs in: the active virtual
    // environment, or the one whose pip comes first on PATH (it may be the checkout's .venv:
    // read, never run).
    if let Some(venv) = ctx.var("VIRTUAL_ENV") {
        files.push(Path::new(&venv).join("pip.conf"));
    } else if let Some(prefix) = first_venv_on_path(ctx) {
        files.push(prefix.join("pip.conf"));
    }
    files.extend(env_file.map(PathBuf::from));
    files
}

/// The virtual environment (a directory with pyvenv.cfg) of the first pip on PATH.
fn first_venv_on_path(ctx: &Ctx) -> Option<PathBuf> {
    for dir in ctx.var("PATH").unwrap_or_default().split(':').filter(|d| !d.is_empty()) {
        let dir = if Path::new(dir).is_absolute() { PathBuf::from(dir) } else { ctx.cwd().join(dir) };
        if ["pip", "pip3"].iter().any(|t| dir.join(t).is_file()) {
            let prefix = dir.parent()?;
            return prefix.join("pyvenv.cfg").is_file().then(|| prefix.to_path_buf());
        }
    }
    None
}

pub(super) fn pip(ctx: &Ctx) -> Result<Vec<Url>, RegistryError> {
    let pm = PackageManager::Pip;
    if ["pip", "pip3", "python3"].iter().all(|t| ctx.find_tool(t).is_err()) {
        let skipped = ctx.find_tool("pip").err().flatten();
        return Err(RegistryError::ToolMissing { tool: "pip".to_string(), pm, skipped });
    }
    let mut s = PipSettings::default();
    let mut parsed = Vec::new();
    for file in pip_config_files(ctx) {
        if let Some(text) = ctx.read_config(pm, &file)? {
            parsed.push((file, ini_sections(&text)));
        }
    }
    // pip applies [global] first, then the command's section ([install]), whatever the file.
    for wanted in ["global", "install"] {
        for (file, entries) in &parsed {
            for (section, key, value) in entries.iter().filter(|(sec, _, _)| sec == wanted) {
                let (from, ws) = ctx.origin(file, &format!("{section}.{key}"));
                s.set(key, value, &from, ws);
            }
        }
    }
    for (var, name) in [
        ("PIP_INDEX_URL", "index-url"),
        ("PIP_EXTRA_INDEX_URL", "extra-index-url"),
        ("PIP_FIND_LINKS", "find-links"),
        ("PIP_NO_INDEX", "no-index"),
    ] {
        if let Some(v) = ctx.var(var) {
            s.set(name, &v, var, false);
        }
    }
    let use_default = s.index.is_none() && !s.no_index;
    let mut urls: Vec<Url> = s.index.into_iter().flatten().chain(s.extra.into_iter().flatten()).collect();
    // find-links may be local directories; only URLs need the network.
    urls.extend(s.find_links.into_iter().flatten().filter(|u| u.url.contains("://")));
    if use_default {
        urls.extend(pip_default(ctx, pm, "pip's default index")?);
    }
    Ok(urls)
}

/// pip's built-in index and file host, from `python3 -I` in `/` (a python3 outside the
/// working directory).
fn pip_default(ctx: &Ctx, pm: PackageManager, what: &str) -> Result<Vec<Url>, RegistryError> {
    let how = format!(
        "set an index ({}), or remove {pm} from egress.registries and list its hosts under egress.allow",
        match pm {
            PackageManager::Uv => "UV_DEFAULT_INDEX or index-url in uv.toml",
            PackageManager::Poetry => "a primary [[tool.poetry.source]] in pyproject.toml",
            _ => "`pip config set global.index-url URL` or PIP_INDEX_URL",
        }
    );
    let python = ctx.tool(pm, "python3").map_err(|e| RegistryError::NotConfigured {
        pm,
        message: format!("{e}, so pip's default index cannot be asked for: {how}"),
    })?;
    let out =
        ctx.run(pm, &python, &["-I", "-c", PIP_DEFAULT_INDEX_SNIPPET]).map_err(|e| RegistryError::NotConfigured {
            pm,
            message: format!("no index is configured and asking pip for its default index failed ({e}): {how}"),
        })?;
    let mut words = out.split_whitespace();
    let (Some(index), Some(files)) = (words.next(), words.next()) else {
        return Err(RegistryError::NotConfigured {
            pm,
            message: format!("pip did not report its default index (python3 printed {:?}): {how}", out.trim()),
        });
    };
    // file_storage_domain is a bare host name.
    let files_url = if files.contains("://") { files.to_string() } else { format!("https://{files}/") };
    Ok(vec![
        Url::new(index, format!("{what} (`python3 -I` in /: pip's PyPI.simple_url)"), false),
        Url::new(files_url, format!("{what} (`python3 -I` in /: pip's PyPI.file_storage_domain)"), false),
    ])
}

// ---------------------------------------------------------------------------------------------
// uv

fn toml_str_list(v: Option<&toml::Value>) -> Vec<String> {
    match v {
        Some(toml::Value::String(s)) => vec![s.clone()],
        Some(toml::Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    }
}

/// One uv settings table (uv.toml, `[tool.uv]`, or their `[pip]` part).
#[derive(Default)]
struct UvSettings {
    default: Option<Url>,
    extra: Vec<Url>,
    no_index: bool,
}

fn uv_table(t: &toml::Table, file: &Path, prefix: &str, ws: bool, out: &mut UvSettings) {
    let from = |k: &str| format!("{} ({prefix}{k})", file.display());
    if let Some(url) = t.get("index-url").and_then(|v| v.as_str())
        && out.default.is_none()
    {
        out.default = Some(Url::new(url, from("index-url"), ws));
    }
    for url in toml_str_list(t.get("extra-index-url")) {
        out.extra.push(Url::new(url, from("extra-index-url"), ws));
    }
    for url in toml_str_list(t.get("find-links")).into_iter().filter(|u| u.contains("://")) {
        out.extra.push(Url::new(url, from("find-links"), ws));
    }
    if let Some(indexes) = t.get("index").and_then(|v| v.as_array()) {
        for (i, index) in indexes.iter().enumerate() {
            let Some(url) = index.get("url").and_then(|v| v.as_str()) else { continue };
            let u = Url::new(url, from(&format!("index[{i}].url")), ws);
            if index.get("default").and_then(|v| v.as_bool()) == Some(true) && out.default.is_none() {
                out.default = Some(u);
            } else {
                out.extra.push(u);
            }
        }
    }
    if t.get("no-index").and_then(|v| v.as_bool()) == Some(true) {
        out.no_index = true;
    }
}

/// uv's configuration files, highest precedence first: the project's (the nearest uv.toml or
/// pyproject.toml with `[tool.uv]`), the user's, the system's; or `UV_CONFIG_FILE` alone.
fn uv_config(ctx: &Ctx, pm: PackageManager) -> Result<Vec<(PathBuf, toml::Table)>, RegistryError> {
    if ctx.var("UV_NO_CONFIG").is_some_and(|v| truthy(&v)) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut load = |file: PathBuf, pyproject: bool| -> Result<bool, RegistryError> {
        let Some(text) = ctx.read_config(pm, &file)? else { return Ok(false) };
        let doc = parse_toml(pm, &file, &text)?;
        let table = if pyproject {
            match doc.get("tool").and_then(|t| t.get("uv")).and_then(|u| u.as_table()) {
                Some(t) => t.clone(),
                None => return Ok(false),
            }
        } else {
            doc
        };
        out.push((file, table));
        Ok(true)
    };
    if let Some(f) = ctx.var("UV_CONFIG_FILE") {
        load(PathBuf::from(f), false)?;
        return Ok(out);
    }
    for dir in ctx.cwd().ancestors() {
        if load(dir.join("uv.toml"), false)? || load(dir.join("pyproject.toml"), true)? {
            break;
        }
    }
    let user = ctx.var("XDG_CONFIG_HOME").map(PathBuf::from).or_else(|| ctx.home().map(|h| h.join(".config")));
    if let Some(u) = user {
        load(u.join("uv/uv.toml"), false)?;
    }
    let dirs = ctx.var("XDG_CONFIG_DIRS").unwrap_or_else(|| "/etc/xdg".to_string());
    for d in dirs.split(':').filter(|d| !d.is_empty()) {
        load(Path::new(d).join("uv/uv.toml"), false)?;
    }
    load(PathBuf::from("/etc/uv/uv.toml"), false)?;
    Ok(out)
}

/// uv's stated default index: the `(by default: <URL>)` of `--default-index` (or
/// `--index-url`) in `uv pip install --help`.
pub(crate) fn uv_help_default(help: &str) -> Option<String> {
    for flag in ["--default-index", "--index-url"] {
        let Some(i) = help.find(flag) else { continue };
        let after = &help[i..];
        let end = after[flag.len()..].find("\n  -").map_or(after.len(), |e| e + flag.len());
        let para = &after[..end];
        if let Some(j) = para.find("by default: <") {
            let url = &para[j + "by default: <".len()..];
            if let Some(k) = url.find('>') {
                return Some(url[..k].trim().to_string());
            }
        }
    }
    None
}

pub(super) fn uv(ctx: &Ctx) -> Result<Vec<Url>, RegistryError> {
    let pm = PackageManager::Uv;
    let uv = ctx.tool(pm, "uv")?;
    let mut s = UvSettings::default();
    for var in ["UV_DEFAULT_INDEX", "UV_INDEX_URL"] {
        if let Some(url) = ctx.var(var)
            && s.default.is_none()
        {
            s.default = Some(Url::new(url, var, false));
        }
    }
    for var in ["UV_INDEX", "UV_EXTRA_INDEX_URL", "UV_FIND_LINKS"] {
        for item in ctx.var(var).unwrap_or_default().split([' ', ',', '\n']).filter(|i| !i.is_empty()) {
            // UV_INDEX entries may be `name=URL`.
            let url = match item.split_once('=') {
                Some((name, url)) if !name.contains("://") => url,
                _ => item,
            };
            if url.contains("://") {
                s.extra.push(Url::new(url, var, false));
            }
        }
    }
    if ctx.var("UV_NO_INDEX").is_some_and(|v| truthy(&v)) {
        s.no_index = true;
    }
    for (file, table) in uv_config(ctx, pm)? {
        let ws = ctx.in_workspace(&file);
        uv_table(&table, &file, "", ws, &mut s);
        if let Some(pip) = table.get("pip").and_then(|p| p.as_table()) {
            uv_table(pip, &file, "pip.", ws, &mut s);
        }
    }
    let mut urls: Vec<Url> = Vec::new();
    if s.default.is_none() && !s.no_index {
        let help = ctx.run(pm, &uv, &["pip", "install", "--help"])?;
        let Some(url) = uv_help_default(&help) else {
            return Err(RegistryError::NotConfigured {
                pm,
                message: "uv did not state its default index (`uv pip install --help` names none): set UV_DEFAULT_INDEX or index-url in uv.toml".to_string(),
            });
        };
        // The index lists files on another host, which uv's configuration does not name. For
        // PyPI, pip's built-in model does: use it when uv's default index is pip's.
        let pip = pip_default(ctx, pm, "uv's default index is pip's")?;
        let same = url_host(&url).ok().flatten() == url_host(&pip[0].url).ok().flatten();
        urls.push(Url::new(url, "`uv pip install --help` in / (uv's stated default index)", false));
        if same {
            urls.extend(pip.into_iter().skip(1));
        }
    }
    urls.extend(s.default);
    urls.extend(s.extra);
    Ok(urls)
}

// ---------------------------------------------------------------------------------------------
// poetry

/// poetry: the `[[tool.poetry.source]]` entries of the nearest pyproject.toml, and PyPI (its
/// hosts as pip's built-in index names them) unless a primary source replaces it.
pub(super) fn poetry(ctx: &Ctx) -> Result<Vec<Url>, RegistryError> {
    let pm = PackageManager::Poetry;
    ctx.tool(pm, "poetry")?;
    let mut urls = Vec::new();
    let mut primary = false;
    let mut pypi_named = false;
    let cwd = ctx.cwd();
    if let Some(file) = cwd.ancestors().map(|d| d.join("pyproject.toml")).find(|f| f.is_file())
        && let Some(text) = ctx.read_config(pm, &file)?
    {
        let doc = parse_toml(pm, &file, &text)?;
        let ws = ctx.in_workspace(&file);
        let sources =
            doc.get("tool").and_then(|t| t.get("poetry")).and_then(|p| p.get("source")).and_then(|s| s.as_array());
        for (i, src) in sources.into_iter().flatten().enumerate() {
            let name = src.get("name").and_then(|v| v.as_str()).unwrap_or("");
            if name.eq_ignore_ascii_case("pypi") {
                pypi_named = true;
                continue;
            }
            let Some(url) = src.get("url").and_then(|v| v.as_str()) else { continue };
            let priority = src.get("priority").and_then(|v| v.as_str());
            let legacy_default = src.get("default").and_then(|v| v.as_bool()) == Some(true);
            let legacy_secondary = src.get("secondary").and_then(|v| v.as_bool()) == Some(true);
            if legacy_default || (!legacy_secondary && matches!(priority, None | Some("primary") | Some("default"))) {
                primary = true;
            }
            urls.push(Url::new(url, format!("{} (tool.poetry.source[{i}] {name})", file.display()), ws));
        }
    }
    if !primary || pypi_named {
        urls.extend(pip_default(ctx, pm, "PyPI, poetry's implicit source")?);
    }
    Ok(urls)
}
