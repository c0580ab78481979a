//! The file sensor's rules: the shipped credential stores and protected paths, the policy's
//! `files:` additions and exceptions, expanded under every home directory and the project into
//! the prefix table the kernel judges opens with (watcher-ebpf/src/files.rs). Pure except for
//! [`homes`], which reads the environment and /etc/passwd.
use std::path::{Path, PathBuf};

use watcher_common::{FILE_CRED, FILE_KEY_PATH, FILE_KILL, FILE_PROC, FILE_TAMPER};

use crate::event::FileClass;
use crate::policy::PolicySpec;
use crate::policy::files::{Base, FilePattern, FilesSpec};

/// Credential stores under each home directory (a trailing `/`: the whole directory).
pub const HOME_CREDENTIALS: &[&str] = &[
    ".pypirc",
    ".config/pip/",
    ".pip/",
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".aws/",
    ".config/gcloud/",
    ".azure/",
    ".kube/config",
    ".docker/config.json",
    ".ssh/",
    ".gnupg/",
    ".git-credentials",
    ".config/git/credentials",
    ".config/gh/",
    ".config/hub",
    ".netrc",
    ".gem/credentials",
    ".local/share/gem/credentials",
    // Self-hosted runners' own credentials (GitHub Actions runner installed in the home).
    "actions-runner/.credentials",
    "actions-runner/.credentials_rsaparams",
    "actions-runner/.runner",
];

/// The JavaScript package managers' user configuration: many tools an install script runs
/// read it for their settings (cypress, prebuild-install and node-gyp read proxies, mirrors and
/// the cache from it), so it is a credential store only when it holds a credential itself
/// ([`holds_literal_credential`]); a `${NPM_TOKEN}` reference holds none (the value is in the
/// environment, where secret detection looks for it wherever it goes).
pub const HOME_TOOL_CONFIGS: &[&str] = &[".npmrc", ".yarnrc", ".yarnrc.yml"];

/// Bytes of a tool configuration read to decide whether it holds a credential.
pub const CONFIG_READ_LIMIT: u64 = 64 << 10;

/// Whether the npm/yarn configuration at `path` holds a credential value itself: a key naming
/// one (`_authToken`, `_auth`, `_password`, `npmAuthToken`, `npmAuthIdent`, `npmPassword`) whose
/// value is not only a `${VAR}` reference. A missing file holds none; a file that exists but
/// cannot be read counts as holding one (fail closed). Reads at most [`CONFIG_READ_LIMIT`].
pub fn holds_literal_credential(path: &Path) -> bool {
    use std::io::Read as _;
    let text = match std::fs::File::open(path) {
        Ok(f) => {
            let mut buf = Vec::new();
            if f.take(CONFIG_READ_LIMIT).read_to_end(&mut buf).is_err() {
                return true;
            }
            String::from_utf8_lossy(&buf).into_owned()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
        Err(_) => return true,
    };
    text.lines().any(|line| {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') {
            return false;
        }
        // INI (`key=value`, `//host/:_authToken=...`) or YAML (`key: value`): either reading.
        ['=', ':'].iter().filter_map(|sep| line.split_once(*sep)).any(|(key, value)| {
            let key = key.to_ascii_lowercase();
            let key = key.rsplit(':').next().unwrap_or(&key).trim();
            let named =
                ["_authtoken", "_auth", "_password", "npmauthtoken", "npmauthident", "npmpassword"].contains(&key);
            let value = value.trim().trim_matches(['"', '\'']);
            let reference = value.starts_with("${") && value.ends_with('}') && !value[2..].contains('$');
            named && !value.is_empty() && !reference
        })
    })
}

/// Credential stores at fixed places.
pub const SYSTEM_CREDENTIALS: &[&str] = &["/etc/gitlab-runner/config.toml", "/etc/shadow", "/etc/gshadow"];

/// Protected under the project: writes are flagged; `true`: killed in enforce mode too.
pub const PROJECT_PROTECTED: &[(&str, bool)] = &[
    (".github/", true),
    (".gitlab-ci.yml", true),
    (".git/hooks/", true),
    (".git/config", true),
    (".husky/", true),
    ("package.json", false),
    ("package-lock.json", false),
    ("npm-shrinkwrap.json", false),
    ("yarn.lock", false),
    ("pnpm-lock.yaml", false),
    ("Cargo.toml", false),
    ("Cargo.lock", false),
    ("pyproject.toml", false),
    ("poetry.lock", false),
    ("uv.lock", false),
    ("requirements.txt", false),
    ("setup.py", false),
    ("src/", false),
    ("lib/", false),
];

/// Protected under each home: shell profiles (killed in enforce mode) and the package
/// managers' caches and tool directories (flagged).
pub const HOME_PROTECTED: &[(&str, bool)] = &[
    (".bashrc", true),
    (".bash_profile", true),
    (".bash_login", true),
    (".bash_logout", true),
    (".profile", true),
    (".zshrc", true),
    (".zprofile", true),
    (".zshenv", true),
    (".config/fish/config.fish", true),
    (".config/autostart/", true),
    (".config/systemd/user/", true),
    (".npm/", false),
    (".cache/pip/", false),
    (".cache/yarn/", false),
    (".yarn/berry/cache/", false),
    (".local/share/pnpm/", false),
    (".cargo/registry/", false),
    (".cargo/git/", false),
    (".cargo/bin/", false),
];

/// Writes the package managers make on every run, inside protected directories: never judged.
pub const HOME_EXCEPTIONS: &[&str] = &[".npm/_logs/", ".npm/_update-notifier-last-checked"];

/// Protected system paths (persistence): killed in enforce mode.
pub const SYSTEM_PROTECTED: &[&str] = &[
    "/etc/profile",
    "/etc/profile.d/",
    "/etc/bash.bashrc",
    "/etc/environment",
    "/etc/ld.so.preload",
    "/etc/crontab",
    "/etc/cron.d/",
    "/var/spool/cron/",
    "/etc/systemd/system/",
    "/etc/sudoers",
    "/etc/sudoers.d/",
];

/// Most home directories judged (the rest are ignored, in /etc/passwd order).
pub const MAX_HOMES: usize = 32;

/// One entry of the kernel's prefix table: the path bytes (a directory ends with `/`, an exact
/// file with a NUL byte) and its FILE_* flags (0: an exception, never judged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRule {
    pub prefix: Vec<u8>,
    pub flags: u32,
}

/// The home directories whose credential stores are judged: the step's `$HOME`, root's, and
/// every login user's (uid >= 1000) from /etc/passwd, at most [`MAX_HOMES`].
pub fn homes() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut add = |p: PathBuf| {
        if p.is_absolute() && p != Path::new("/") && !out.contains(&p) && out.len() < MAX_HOMES {
            out.push(p);
        }
    };
    if let Some(h) = std::env::var_os("HOME") {
        add(PathBuf::from(h));
    }
    add(PathBuf::from("/root"));
    if let Ok(text) = std::fs::read_to_string("/etc/passwd") {
        for line in text.lines().take(4096) {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() >= 7 && f[2].parse::<u32>().is_ok_and(|u| (1000..65534).contains(&u)) {
                add(PathBuf::from(f[5]));
            }
        }
    }
    out
}

fn push(out: &mut Vec<FileRule>, path: &str, dir: bool, flags: u32) {
    let mut p = path.as_bytes().to_vec();
    if dir {
        if !p.ends_with(b"/") {
            p.push(b'/');
        }
    } else {
        p.push(0);
    }
    if p.len() > FILE_KEY_PATH {
        return;
    }
    match out.iter_mut().find(|r| r.prefix == p) {
        // An exception (0) wins over everything; otherwise the flags add up.
        Some(r) if r.flags != 0 => r.flags = if flags == 0 { 0 } else { r.flags | flags },
        Some(_) => {}
        None => out.push(FileRule { prefix: p, flags }),
    }
}

fn under(base: &Path, rel: &str) -> String {
    format!("{}/{}", base.display().to_string().trim_end_matches('/'), rel)
}

fn expand(p: &FilePattern, homes: &[PathBuf], project: Option<&Path>) -> Vec<String> {
    match p.base {
        Base::Root => vec![format!("/{}", p.rel)],
        Base::Home => homes.iter().map(|h| under(h, &p.rel)).collect(),
        Base::Project => project.map(|d| vec![under(d, &p.rel)]).unwrap_or_default(),
    }
}

/// Per-package `allow`: the entries at or under `path` lose FILE_KILL (the kernel cannot tell
/// packages apart at open entry, so it reports these opens and the engine judges them by
/// package); a path inside a directory entry gets an entry of its own, with the directory's
/// flags less FILE_KILL. Exceptions (flags 0) stay exceptions.
fn unkill(out: &mut Vec<FileRule>, path: &str, dir: bool) {
    let mut p = path.as_bytes().to_vec();
    if dir {
        if !p.ends_with(b"/") {
            p.push(b'/');
        }
    } else {
        p.push(0);
    }
    if p.len() > FILE_KEY_PATH {
        return;
    }
    for r in out.iter_mut() {
        if if dir { r.prefix.starts_with(&p) } else { r.prefix == p } {
            r.flags &= !FILE_KILL;
        }
    }
    if !out.iter().any(|r| r.prefix == p) {
        let parent = out
            .iter()
            .filter(|r| r.prefix.ends_with(b"/") && p.starts_with(&r.prefix))
            .max_by_key(|r| r.prefix.len())
            .map(|r| r.flags);
        if let Some(flags) = parent.filter(|f| *f != 0 && *f & FILE_PROC == 0) {
            out.push(FileRule { prefix: p, flags: flags & !FILE_KILL });
        }
    }
}

/// The kernel table for one job: defaults, then the policy's additions, then its exceptions
/// (an exception is an entry with flags 0: longest match wins, so it works inside a default
/// directory too), then the per-package lists (`packages[].files`: additions reported
/// without a kill, `allow` paths reported without a kill; the engine judges both by package).
/// `project`: the directory the step runs in (None in daemon mode).
pub fn rules(policy: Option<&PolicySpec>, homes: &[PathBuf], project: Option<&Path>) -> Vec<FileRule> {
    let mut out = job_rules(policy.map(|p| &p.files), homes, project);
    let Some(policy) = policy else { return out };
    let lists: Vec<&FilesSpec> = policy.packages.iter().filter_map(|r| r.files.as_ref()).collect();
    for f in &lists {
        for (list, flags) in [(&f.credentials, FILE_CRED), (&f.protect, FILE_TAMPER)] {
            for p in list {
                for path in expand(p, homes, project) {
                    push(&mut out, &path, p.is_dir(), flags);
                }
            }
        }
    }
    for f in &lists {
        for p in &f.allow {
            for path in expand(p, homes, project) {
                unkill(&mut out, &path, p.is_dir());
            }
        }
    }
    out
}

fn job_rules(spec: Option<&FilesSpec>, homes: &[PathBuf], project: Option<&Path>) -> Vec<FileRule> {
    let mut out = Vec::new();
    push(&mut out, "/proc", true, FILE_PROC);
    for h in homes {
        for c in HOME_CREDENTIALS {
            push(&mut out, &under(h, c), c.ends_with('/'), FILE_CRED | FILE_KILL);
        }
        for c in HOME_TOOL_CONFIGS {
            let path = under(h, c);
            if holds_literal_credential(Path::new(&path)) {
                push(&mut out, &path, false, FILE_CRED | FILE_KILL);
            }
        }
        for (c, kill) in HOME_PROTECTED {
            push(&mut out, &under(h, c), c.ends_with('/'), FILE_TAMPER | if *kill { FILE_KILL } else { 0 });
        }
    }
    for c in SYSTEM_CREDENTIALS {
        push(&mut out, c, false, FILE_CRED | FILE_KILL);
    }
    for c in SYSTEM_PROTECTED {
        push(&mut out, c, c.ends_with('/'), FILE_TAMPER | FILE_KILL);
    }
    if let Some(d) = project {
        for (c, kill) in PROJECT_PROTECTED {
            push(&mut out, &under(d, c), c.ends_with('/'), FILE_TAMPER | if *kill { FILE_KILL } else { 0 });
        }
    }
    if let Some(spec) = spec {
        for p in &spec.credentials {
            for path in expand(p, homes, project) {
                push(&mut out, &path, p.is_dir(), FILE_CRED | FILE_KILL);
            }
        }
        for p in &spec.protect {
            for path in expand(p, homes, project) {
                push(&mut out, &path, p.is_dir(), FILE_TAMPER | FILE_KILL);
            }
        }
        for p in &spec.allow {
            for path in expand(p, homes, project) {
                push(&mut out, &path, p.is_dir(), 0);
            }
        }
    }
    for h in homes {
        for c in HOME_EXCEPTIONS {
            push(&mut out, &under(h, c), c.ends_with('/'), 0);
        }
    }
    out
}

/// Whether the policy's `allow` list excludes `path` (the engine's check, so a replay with a
/// narrower policy drops the alert). Homes and the project are not in the log: `~/x` and
/// `./x` match `x` under any directory.
pub fn allowed(spec: &FilesSpec, path: &str) -> bool {
    spec.allow.iter().any(|p| matches(p, path))
}

/// Whether `path` is under pattern `p`, as the engine sees it: `~/x` and `./x` match `x`
/// under any directory (homes and the project are not in the log).
fn matches(p: &FilePattern, path: &str) -> bool {
    let tail = format!("/{}", p.rel);
    match (p.base, p.is_dir()) {
        (Base::Root, true) => path.starts_with(&tail),
        (Base::Root, false) => path == tail,
        (_, true) => path.contains(&tail),
        (_, false) => path.ends_with(&tail),
    }
}

/// The `files:` of the first `packages[]` entry naming this package (of this package manager)
/// with `files`.
pub fn package_spec<'a>(policy: &'a PolicySpec, manager: &str, package: &str) -> Option<&'a FilesSpec> {
    policy
        .packages
        .iter()
        .filter(|r| r.manager.is_none_or(|m| m.as_str() == manager))
        .filter(|r| r.name.matches(package))
        .find_map(|r| r.files.as_ref())
}

/// Whether the shipped lists or the policy's job-wide `files:` hold `path` (tail matching, as
/// [`allowed`]).
fn job_wide(policy: &PolicySpec, class: FileClass, path: &str) -> bool {
    let pattern = |s: String| FilePattern::parse(&s).ok();
    let (home, project, system, added): (Vec<&str>, Vec<&str>, &[&str], &[FilePattern]) = match class {
        FileClass::Credential => (
            HOME_CREDENTIALS.iter().chain(HOME_TOOL_CONFIGS).copied().collect(),
            Vec::new(),
            SYSTEM_CREDENTIALS,
            &policy.files.credentials,
        ),
        FileClass::Tamper => (
            HOME_PROTECTED.iter().map(|(c, _)| *c).collect(),
            PROJECT_PROTECTED.iter().map(|(c, _)| *c).collect(),
            SYSTEM_PROTECTED,
            &policy.files.protect,
        ),
    };
    home.iter()
        .filter_map(|c| pattern(format!("~/{c}")))
        .chain(project.iter().filter_map(|c| pattern(format!("./{c}"))))
        .chain(system.iter().filter_map(|c| pattern(c.to_string())))
        .any(|p| matches(&p, path))
        || added.iter().any(|p| matches(p, path))
}

/// The engine's per-package verdict on an open the kernel reported (after the job-wide
/// `files.allow`): false when the package's own `allow` holds the path, or when the path is
/// judged only because another package's `packages[].files` added it.
pub fn judged_for(policy: &PolicySpec, package: Option<(&str, &str)>, class: FileClass, path: &str) -> bool {
    let own = package.and_then(|(m, p)| package_spec(policy, m, p));
    if own.is_some_and(|f| allowed(f, path)) {
        return false;
    }
    let list = |f: &'_ FilesSpec| -> Vec<FilePattern> {
        match class {
            FileClass::Credential => f.credentials.clone(),
            FileClass::Tamper => f.protect.clone(),
        }
    };
    let in_list = |f: &FilesSpec| list(f).iter().any(|p| matches(p, path));
    if !policy.packages.iter().filter_map(|r| r.files.as_ref()).any(in_list) {
        return true;
    }
    own.is_some_and(in_list) || job_wide(policy, class, path)
}

/// Whether argv is a publish to a package registry (`npm publish`, `twine upload`, ...).
pub fn is_publish(argv: &[String], filename: &str) -> Option<String> {
    let base = |s: &str| s.rsplit('/').next().unwrap_or(s).to_string();
    let tool = base(argv.first().map(String::as_str).unwrap_or(filename));
    let words: Vec<&str> = argv.iter().skip(1).map(String::as_str).filter(|a| !a.starts_with('-')).collect();
    let first = words.first().copied().unwrap_or("");
    let hit = match tool.as_str() {
        "npm" | "pnpm" | "bun" | "cargo" | "poetry" | "uv" | "flit" | "hatch" | "pdm" => first == "publish",
        "yarn" => first == "publish" || (first == "npm" && words.get(1) == Some(&"publish")),
        "twine" => first == "upload",
        "gem" => first == "push",
        t if t.starts_with("python") => argv.windows(3).any(|w| w[0] == "-m" && w[1] == "twine" && w[2] == "upload"),
        "node" => {
            argv.get(1).is_some_and(|s| s.ends_with("npm-cli.js") || s.ends_with("/bin/npm"))
                && words.get(1) == Some(&"publish")
        }
        _ => false,
    };
    hit.then(|| argv.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(y: &str) -> PolicySpec {
        let p = crate::policy::parse_str("p.yml", &format!("version: 1\npipeline: t\n{y}")).unwrap();
        p.spec().clone()
    }

    fn spec(y: &str) -> PolicySpec {
        policy(&format!("files:\n{y}"))
    }

    #[test]
    fn defaults_cover_every_home_and_exceptions_win() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::write(a.join(".npmrc"), "fund=false\n//r.invalid/:_authToken=abc\n").unwrap();
        let homes = vec![a.clone(), PathBuf::from("/root")];
        let r = rules(None, &homes, Some(Path::new("/w/proj")));
        let find = |p: &[u8]| r.iter().find(|x| x.prefix == p).map(|x| x.flags);
        let npmrc = format!("{}/.npmrc\0", a.display());
        assert_eq!(find(npmrc.as_bytes()), Some(FILE_CRED | FILE_KILL));
        assert_eq!(find(b"/root/.aws/"), Some(FILE_CRED | FILE_KILL));
        assert_eq!(find(b"/w/proj/.github/"), Some(FILE_TAMPER | FILE_KILL));
        assert_eq!(find(b"/w/proj/package-lock.json\0"), Some(FILE_TAMPER));
        assert_eq!(find(b"/root/.npm/_logs/"), Some(0));
        assert_eq!(find(b"/proc/"), Some(FILE_PROC));
    }

    #[test]
    fn tool_configs_are_credential_stores_only_with_a_credential_in_them() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join(".npmrc");
        assert!(!holds_literal_credential(&f), "missing");
        for (text, holds) in [
            ("fund=false\nregistry=http://127.0.0.1:4873/\n", false),
            ("//r.invalid/:_authToken=${NPM_TOKEN}\n", false),
            ("# _authToken=abc\n", false),
            ("//r.invalid/:_authToken=npm_abc\n", true),
            ("_auth = dXNlcjpwYXNz\n", true),
            ("//r.invalid/:_password=\"cGFzcw==\"\n", true),
            ("npmAuthToken: \"npm_abc\"\n", true),
            ("npmRegistries:\n  \"//r.invalid\":\n    npmAuthToken: ${NPM_TOKEN}\n", false),
            ("npmAuthIdent: user:pass\n", true),
        ] {
            std::fs::write(&f, text).unwrap();
            assert_eq!(holds_literal_credential(&f), holds, "{text:?}");
        }
        // A config with no credential is not watched at all.
        std::fs::write(&f, "fund=false\n").unwrap();
        let r = rules(None, &[d.path().to_path_buf()], None);
        assert!(!r.iter().any(|x| x.prefix.starts_with(f.display().to_string().as_bytes())));
    }

    #[test]
    fn policy_extends_and_narrows() {
        let s = spec(
            "  credentials: [\"~/.config/acme/token\"]\n  protect: [\"./deploy/\"]\n  allow: [\"~/.ssh/known_hosts\", \"~/.npmrc\"]\n",
        );
        let homes = vec![PathBuf::from("/h")];
        let r = rules(Some(&s), &homes, Some(Path::new("/p")));
        let find = |p: &[u8]| r.iter().find(|x| x.prefix == p).map(|x| x.flags);
        assert_eq!(find(b"/h/.config/acme/token\0"), Some(FILE_CRED | FILE_KILL));
        assert_eq!(find(b"/p/deploy/"), Some(FILE_TAMPER | FILE_KILL));
        assert_eq!(find(b"/h/.ssh/known_hosts\0"), Some(0));
        assert_eq!(find(b"/h/.npmrc\0"), Some(0));
        assert!(allowed(&s.files, "/h/.npmrc"));
        assert!(!allowed(&s.files, "/h/.npmrc.bak"));
        assert!(!allowed(&s.files, "/h/.ssh/id_rsa"));
    }

    #[test]
    fn per_package_lists_are_reported_without_a_kill_and_judged_by_package() {
        let p = policy(
            "packages:\n  - name: gh-helper\n    files:\n      allow: [\"~/.config/gh/hosts.yml\", \"~/.aws/\"]\n\
             \x20 - name: \"@acme/*\"\n    manager: npm\n    files:\n      credentials: [\"~/.acme/key\"]\n      protect: [\"./dist/\"]\n",
        );
        let homes = vec![PathBuf::from("/h")];
        let r = rules(Some(&p), &homes, Some(Path::new("/p")));
        let find = |x: &[u8]| r.iter().find(|e| e.prefix == x).map(|e| e.flags);
        // Allowed for one package: still reported (others are judged), never killed in the kernel.
        assert_eq!(find(b"/h/.config/gh/hosts.yml\0"), Some(FILE_CRED));
        assert_eq!(find(b"/h/.config/gh/"), Some(FILE_CRED | FILE_KILL));
        assert_eq!(find(b"/h/.aws/"), Some(FILE_CRED));
        // Added for one package: reported, not killed.
        assert_eq!(find(b"/h/.acme/key\0"), Some(FILE_CRED));
        assert_eq!(find(b"/p/dist/"), Some(FILE_TAMPER));
        // The engine's side.
        let cred = FileClass::Credential;
        let gh = Some(("npm", "gh-helper"));
        let acme = Some(("npm", "@acme/cli"));
        assert!(!judged_for(&p, gh, cred, "/h/.config/gh/hosts.yml"));
        assert!(judged_for(&p, acme, cred, "/h/.config/gh/hosts.yml"));
        assert!(judged_for(&p, gh, cred, "/h/.config/gh/other"));
        assert!(!judged_for(&p, gh, cred, "/h/.aws/credentials"));
        assert!(judged_for(&p, acme, cred, "/h/.acme/key"));
        assert!(!judged_for(&p, gh, cred, "/h/.acme/key"));
        assert!(!judged_for(&p, Some(("pip", "@acme/cli")), cred, "/h/.acme/key"), "manager: npm only");
        assert!(judged_for(&p, acme, FileClass::Tamper, "/p/dist/x.js"));
        assert!(!judged_for(&p, gh, FileClass::Tamper, "/p/dist/x.js"));
        assert!(judged_for(&p, gh, FileClass::Tamper, "/p/.github/workflows/x.yml"));
        assert!(judged_for(&p, None, cred, "/h/.ssh/id_rsa"));
        // A package's addition that is also a shipped store is judged for everyone.
        let q = policy("packages:\n  - name: a\n    files:\n      credentials: [\"~/.ssh/\"]\n");
        assert!(judged_for(&q, Some(("npm", "b")), cred, "/h/.ssh/id_rsa"));
        assert_eq!(
            rules(Some(&q), &homes, None).iter().find(|e| e.prefix == b"/h/.ssh/").map(|e| e.flags),
            Some(FILE_CRED | FILE_KILL)
        );
        // Bad paths in a package's list are refused like the job-wide ones.
        let e = crate::policy::parse_str(
            "p.yml",
            "version: 1\npipeline: t\npackages:\n  - name: a\n    files:\n      allow: [\"x\"]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("start it with"), "{e}");
    }

    #[test]
    fn bad_paths_are_refused_with_the_reason() {
        for (y, want) in [
            ("  allow: [\"relative\"]\n", "start it with"),
            ("  protect: [\"~/../etc/\"]\n", "no `.`, `..`"),
            ("  credentials: [\"/a/*\"]\n", "no control characters or globs"),
            ("  nonsense: []\n", "unknown field"),
        ] {
            let e = crate::policy::parse_str("p.yml", &format!("version: 1\npipeline: t\nfiles:\n{y}")).unwrap_err();
            assert!(e.to_string().contains(want), "{y}: {e}");
        }
    }

    #[test]
    fn publishes_are_recognised() {
        let v = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(is_publish(&v("npm publish --tag x"), "/usr/bin/npm").is_some());
        assert!(is_publish(&v("python3 -m twine upload dist/*"), "/usr/bin/python3").is_some());
        assert!(is_publish(&v("cargo publish"), "/c/cargo").is_some());
        assert!(is_publish(&v("yarn npm publish"), "/y/yarn").is_some());
        assert!(is_publish(&v("npm run build"), "/usr/bin/npm").is_none());
        assert!(is_publish(&v("node /usr/lib/node_modules/npm/bin/npm-cli.js publish"), "/usr/bin/node").is_some());
    }
}
