//! Which protected variables are a package manager's own credential for one of its
//! registries, from that tool's own configuration (read once, before the step starts).
//!
//! npm: the auth entries of the npmrc files npm reads (the project's, the user's, the
//! global one): `//HOST[:PORT]/PATH/:_authToken=${NPM_TOKEN}` (also `_auth`, `_password`),
//! and the unscoped `_authToken=...` of the default registry. A value written as `${VAR}`
//! names the variable; a literal value names the protected variable that holds the same
//! value. The collector writes these facts into each `send` event that carries such a
//! variable (`credential_of`), so the engine judges a package manager sending its own
//! credential to its own registry the same way live and in replay.
use std::path::{Path, PathBuf};

use crate::policy::PackageManager;

/// One credential: `variable` is `manager`'s credential for registry host `host`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Credential {
    pub variable: String,
    pub manager: String,
    pub host: String,
}

impl Credential {
    /// `npm:registry.example.test`, as written in a `send` event's `credential_of`.
    pub fn label(&self) -> String {
        format!("{}:{}", self.manager, self.host)
    }
}

/// npmrc files npm reads for a step run in `cwd`: the project's (`.npmrc` of the nearest
/// directory with a package.json, else `cwd`), the user's, the global one.
fn npmrc_files(cwd: &Path, env: &[(String, String)]) -> Vec<PathBuf> {
    let var = |k: &str| env.iter().rev().find(|(n, _)| n == k || n.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone());
    let mut files = Vec::new();
    let project = cwd.ancestors().find(|d| d.join("package.json").exists()).unwrap_or(cwd);
    files.push(project.join(".npmrc"));
    match var("NPM_CONFIG_USERCONFIG") {
        Some(p) => files.push(PathBuf::from(p)),
        None => {
            if let Some(home) = var("HOME") {
                files.push(Path::new(&home).join(".npmrc"));
            }
        }
    }
    match var("NPM_CONFIG_GLOBALCONFIG") {
        Some(p) => files.push(PathBuf::from(p)),
        None => {
            let prefix = var("NPM_CONFIG_PREFIX").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr"));
            files.push(prefix.join("etc/npmrc"));
            files.push(PathBuf::from("/etc/npmrc"));
        }
    }
    files
}

/// `${NAME}` / `${NAME?}` in an npmrc value: NAME.
fn env_reference(value: &str) -> Option<&str> {
    let v = value.trim().trim_matches('"').trim_matches('\'');
    let inner = v.strip_prefix("${")?.strip_suffix('}')?;
    let inner = inner.strip_suffix('?').unwrap_or(inner);
    (!inner.is_empty() && inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')).then_some(inner)
}

/// The credentials one npmrc text gives: (variable, host). `protected` are the protected
/// (name, value) pairs of the step's environment; `default_hosts` the hosts of npm's
/// default registry (for unscoped auth keys). Reads at most 1 MiB of text.
pub fn npmrc_credentials(
    text: &str,
    protected: &[(String, String)],
    default_hosts: &[String],
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines().take(100_000) {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        let key = key.trim();
        let (scope, field) = match key.rsplit_once(':') {
            Some((s, f)) if s.starts_with("//") => (Some(s), f),
            _ => (None, key),
        };
        if !matches!(field, "_authToken" | "_auth" | "_password") {
            continue;
        }
        let hosts: Vec<String> = match scope {
            Some(s) => crate::probe::registries::url_host(&format!("http:{s}")).ok().flatten().into_iter().collect(),
            None => default_hosts.to_vec(),
        };
        let vars: Vec<String> = match env_reference(value) {
            Some(name) => vec![name.to_string()],
            None => {
                let v = value.trim().trim_matches('"');
                protected.iter().filter(|(_, pv)| !v.is_empty() && pv == v).map(|(n, _)| n.clone()).collect()
            }
        };
        for h in &hosts {
            for v in &vars {
                out.push((v.clone(), h.clone()));
            }
        }
    }
    out
}

/// The credentials of the package managers a policy names, for a step run in `cwd` with
/// `env`; `protected` are the protected variables' (name, value) pairs; `registries` the
/// hosts resolved per manager. Unreadable files are skipped (npm skips them too).
pub fn for_step(
    managers: &[PackageManager],
    registries: &std::collections::BTreeMap<String, Vec<String>>,
    cwd: &Path,
    env: &[(String, String)],
    protected: &[(String, String)],
) -> Vec<Credential> {
    let mut out = Vec::new();
    for pm in managers {
        if *pm != PackageManager::Npm {
            continue; // npm only, for now
        }
        let hosts = registries.get(pm.as_str()).cloned().unwrap_or_default();
        for f in npmrc_files(cwd, env) {
            let Ok(meta) = std::fs::metadata(&f) else { continue };
            if !meta.is_file() || meta.len() > 1 << 20 {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&f) else { continue };
            for (variable, host) in npmrc_credentials(&text, protected, &hosts) {
                out.push(Credential { variable, manager: pm.as_str().to_string(), host });
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// [`for_step`] for `watcher run`: watcher's own working directory and environment (the
/// command's), the policy's managers, the variables `secrets` protects.
pub fn for_run(
    policy: Option<&crate::policy::Policy>,
    registries: &std::collections::BTreeMap<String, Vec<String>>,
    secrets: &crate::secrets::SecretSet,
) -> Vec<Credential> {
    let Some(policy) = policy else { return Vec::new() };
    let env: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()))
        .collect();
    let protected: Vec<(String, String)> = env.iter().filter(|(k, _)| secrets.redacted(k).is_some()).cloned().collect();
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    for_step(policy.registries(), registries, &cwd, &env, &protected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npmrc_auth_entries_name_their_variable_and_host() {
        let protected = vec![("CI_TOKEN".to_string(), "literal-secret-123".to_string())];
        let text = "registry=http://127.0.0.1:4873/\n\
            //127.0.0.1:4873/:_authToken=${NPM_TOKEN}\n\
            //Registry.Example.Test/npm/:_auth=\"${NPM_AUTH?}\"\n\
            //other.test/:_password=literal-secret-123\n\
            # //commented.test/:_authToken=${NOPE}\n\
            //x.test/:always-auth=true\n\
            _authToken=${DEFAULT_TOKEN}\n";
        let got = npmrc_credentials(text, &protected, &["default.test".to_string()]);
        assert_eq!(
            got,
            vec![
                ("NPM_TOKEN".to_string(), "127.0.0.1".to_string()),
                ("NPM_AUTH".to_string(), "registry.example.test".to_string()),
                ("CI_TOKEN".to_string(), "other.test".to_string()),
                ("DEFAULT_TOKEN".to_string(), "default.test".to_string()),
            ]
        );
        assert_eq!(env_reference("${A_B}"), Some("A_B"));
        assert_eq!(env_reference("x${A}"), None);
        assert_eq!(env_reference("${A-B}"), None);
    }

    #[test]
    fn the_project_and_user_npmrc_are_read() {
        let d = tempfile::tempdir().unwrap();
        let proj = d.path().join("proj");
        std::fs::create_dir_all(proj.join("sub")).unwrap();
        std::fs::write(proj.join("package.json"), "{}").unwrap();
        std::fs::write(proj.join(".npmrc"), "//reg.test/:_authToken=${NPM_TOKEN}\n").unwrap();
        let user = d.path().join("user-npmrc");
        std::fs::write(&user, "//user.test/:_authToken=${USER_TOKEN}\n").unwrap();
        let env = vec![("NPM_CONFIG_USERCONFIG".to_string(), user.display().to_string())];
        let got = for_step(&[PackageManager::Npm], &Default::default(), &proj.join("sub"), &env, &[]);
        let labels: Vec<(String, String)> = got.iter().map(|c| (c.variable.clone(), c.label())).collect();
        assert_eq!(
            labels,
            vec![("NPM_TOKEN".into(), "npm:reg.test".into()), ("USER_TOKEN".into(), "npm:user.test".into())]
        );
    }
}
