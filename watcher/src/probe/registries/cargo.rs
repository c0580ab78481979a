//! cargo: `.cargo/config.toml` of the working directory and its parents and of `$CARGO_HOME`,
//! `CARGO_REGISTRIES_*` variables, and the index hosts cargo has cached. Nothing is run.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{Ctx, Hit, RegistryError, Url, hosts_of, url_host};
use crate::policy::PackageManager;

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
    dir: PathBuf,
    host: String,
    /// Host of the `dl` URL of the index's config.json, where .crate files come from.
    dl_host: Option<String>,
}

impl IndexDir {
    fn config_file(&self) -> String {
        self.dir.join("config.json").display().to_string()
    }
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
            Some(IndexDir { dir, host: host.to_ascii_lowercase(), dl_host })
        })
        .collect();
    dirs.sort_by(|a, b| a.host.cmp(&b.host));
    dirs
}

pub(super) fn cargo_hosts(ctx: &Ctx) -> Result<Vec<Hit>, RegistryError> {
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

    let mut urls: Vec<Url> = Vec::new();
    let mut crates_io_replaced = false;
    for file in &files {
        let Some(text) = ctx.read_config(pm, file)? else {
            continue;
        };
        let workspace = ctx.in_workspace(file);
        for (key, value) in toml_strings(&text) {
            let key: Vec<&str> = key.iter().map(String::as_str).collect();
            let origin = || format!("{} ({})", file.display(), key.join("."));
            match key.as_slice() {
                ["registries", _, "index"] | ["registry", "index"] => urls.push(Url::new(value, origin(), workspace)),
                ["source", _, "registry"] | ["source", _, "git"] => urls.push(Url::new(value, origin(), workspace)),
                ["source", "crates-io", "replace-with"] => crates_io_replaced = true,
                _ => {}
            }
        }
    }
    for (key, value) in ctx.vars() {
        let named = key.starts_with("CARGO_REGISTRIES_") && key.ends_with("_INDEX");
        if named || key == "CARGO_REGISTRY_INDEX" {
            urls.push(Url::new(value, key, false));
        }
    }

    let mut hosts = hosts_of(pm, urls)?;
    let push = |hosts: &mut Vec<Hit>, host: &str, from: String| {
        if !hosts.iter().any(|h| h.host == host) {
            hosts.push(Hit { host: host.to_string(), from, workspace: false });
        }
    };

    let cache = cargo_home.as_deref().map(index_dirs).unwrap_or_default();
    // The download host of every configured registry whose index cargo has cached.
    let configured: HashSet<String> = hosts.iter().map(|h| h.host.clone()).collect();
    for d in cache.iter().filter(|d| configured.contains(&d.host)) {
        if let Some(dl) = &d.dl_host {
            push(&mut hosts, dl, format!("{} (dl)", d.config_file()));
        }
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
            push(&mut hosts, &d.host, format!("{} (the default registry's cached index)", d.dir.display()));
            if let Some(dl) = &d.dl_host {
                push(&mut hosts, dl, format!("{} (dl)", d.config_file()));
            }
        }
    }
    // crates-io replaced by a directory / local registry and nothing else: no network needed.
    Ok(hosts)
}
