//! Where in the repository an alert belongs: the lockfile or manifest line of the package
//! whose install script raised it (`package-lock.json`, `npm-shrinkwrap.json`, `package.json`,
//! `Cargo.lock`, `Cargo.toml`, `requirements*.txt`), else the policy file. Paths are relative to
//! the repository root (SARIF `uriBaseId` `%SRCROOT%`, GitHub annotation `file=`).
//!
//! The step's directory is the first exec's `cwd` in the log. When it exists on this machine
//! (a live run, a replay in the same checkout) the files are read there; otherwise (a log
//! replayed elsewhere) from the current directory. The repository root is the nearest
//! directory above with a `.git`, else the step's directory itself.
//!
//! The workspace is untrusted: files are opened without following a final symlink, must be
//! regular files (never a FIFO that would block), and at most [`MAX_FILE`] bytes are read;
//! nothing read is copied into a report, only a line number.
use std::{
    collections::HashMap,
    io::Read as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use super::model::Report;
use crate::proctree::Attribution;

/// The most read of one manifest or lockfile.
pub const MAX_FILE: u64 = 32 << 20;

/// A place in the repository: a relative path with `/` separators, and a 1-based line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub uri: String,
    pub line: u64,
}

pub struct Locator {
    /// The local directory standing for the step's directory.
    dir: PathBuf,
    /// The step's directory as recorded (to map recorded paths below it onto `dir`).
    recorded: Option<PathBuf>,
    /// The repository root (`dir` or a directory above it).
    root: PathBuf,
    files: HashMap<PathBuf, Option<String>>,
}

fn read_bounded(p: &Path) -> Option<String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(p)
        .ok()?;
    let md = f.metadata().ok()?;
    if !md.is_file() {
        return None;
    }
    let mut s = String::new();
    f.take(MAX_FILE).read_to_string(&mut s).ok()?;
    Some(s)
}

impl Locator {
    pub fn new(r: &Report) -> Locator {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let recorded = r.step_cwd.as_ref().map(PathBuf::from);
        let dir = match &recorded {
            Some(p) if p.is_absolute() && p.is_dir() => p.clone(),
            _ => cwd,
        };
        let root = dir.ancestors().take(64).find(|a| a.join(".git").exists()).unwrap_or(&dir).to_path_buf();
        Locator { dir, recorded, root, files: HashMap::new() }
    }

    /// A locator over `dir` (tests).
    pub fn at(dir: &Path) -> Locator {
        Locator { dir: dir.to_path_buf(), recorded: None, root: dir.to_path_buf(), files: HashMap::new() }
    }

    fn file(&mut self, p: &Path) -> Option<&str> {
        self.files.entry(p.to_path_buf()).or_insert_with(|| read_bounded(p)).as_deref()
    }

    fn relative(&self, p: &Path) -> Option<String> {
        let rel = p.strip_prefix(&self.root).ok()?;
        let parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        if parts.is_empty() || parts.iter().any(|c| c == ".." || c.contains('\\')) {
            return None;
        }
        Some(parts.join("/"))
    }

    /// Map a directory recorded in the log onto this machine (below the step's directory).
    fn local(&self, recorded_dir: &str) -> PathBuf {
        let p = Path::new(recorded_dir);
        if let Some(rec) = &self.recorded
            && let Ok(rel) = p.strip_prefix(rec)
        {
            return self.dir.join(rel);
        }
        if p.is_dir() { p.to_path_buf() } else { self.dir.clone() }
    }

    /// The first line of `file` (in `dir`) for which `pred` holds.
    fn find(&mut self, dir: &Path, file: &str, pred: impl Fn(&str) -> bool) -> Option<Location> {
        let path = dir.join(file);
        let rel = self.relative(&path)?;
        let text = self.file(&path)?;
        let line = text.lines().position(pred)? as u64 + 1;
        Some(Location { uri: rel, line })
    }

    /// The lockfile or manifest entry of the package whose install script `pid` belongs to.
    pub fn package(&mut self, r: &Report, pid: u32) -> Option<Location> {
        let (script, a) = r.tree.install_script(pid)?;
        let a = a.clone();
        let script_cwd = r.script_cwd.get(&script).cloned();
        match a.manager.as_str() {
            "npm" => self.npm(&a, script_cwd.as_deref()),
            "cargo" => self.cargo(&a),
            "pip" => self.pip(&a),
            _ => None,
        }
    }

    fn npm(&mut self, a: &Attribution, script_cwd: Option<&str>) -> Option<Location> {
        // npm runs a package's scripts in its directory: the project is above `node_modules`,
        // and the lockfile key is the path from there (`node_modules/a/node_modules/b`).
        let (project, key) = match script_cwd.and_then(|c| c.find("/node_modules/").map(|i| (c, i))) {
            Some((c, i)) => (self.local(&c[..i]), Some(c[i + 1..].to_string())),
            None => (self.dir.clone(), None),
        };
        let name = &a.package;
        for lock in ["npm-shrinkwrap.json", "package-lock.json"] {
            if let Some(k) = &key {
                let want = format!("\"{k}\": {{");
                if let Some(l) = self.find(&project, lock, |l| l.trim_start().starts_with(&want)) {
                    return Some(l);
                }
            }
            let suffix = format!("node_modules/{name}\": {{");
            if let Some(l) = self.find(&project, lock, |l| {
                let t = l.trim_start();
                t.starts_with("\"node_modules/") && t.ends_with(&suffix)
            }) {
                return Some(l);
            }
        }
        let want = format!("\"{name}\":");
        self.find(&project, "package.json", |l| l.trim_start().starts_with(&want))
    }

    fn cargo(&mut self, a: &Attribution) -> Option<Location> {
        let dir = self.dir.clone();
        let name_line = format!("name = \"{}\"", a.package);
        let version_line = a.version.as_ref().map(|v| format!("version = \"{v}\""));
        // Cargo.lock: `name = "x"` followed by its `version = "..."`.
        let path = dir.join("Cargo.lock");
        if let Some(rel) = self.relative(&path)
            && let Some(text) = self.file(&path)
        {
            let lines: Vec<&str> = text.lines().collect();
            let hit = lines.iter().enumerate().position(|(i, l)| {
                l.trim() == name_line
                    && version_line.as_ref().is_none_or(|v| lines.get(i + 1).is_some_and(|n| n.trim() == v))
            });
            if let Some(i) = hit {
                return Some(Location { uri: rel, line: i as u64 + 1 });
            }
        }
        let dep = format!("{} ", a.package);
        let dep_eq = format!("{}=", a.package);
        self.find(&dir, "Cargo.toml", |l| {
            let t = l.trim_start();
            t.starts_with(&dep) || t.starts_with(&dep_eq)
        })
    }

    fn pip(&mut self, a: &Attribution) -> Option<Location> {
        // PEP 503 names: case-insensitive, `-`, `_` and `.` are the same.
        let norm = |s: &str| s.to_ascii_lowercase().replace(['_', '.'], "-");
        let want = norm(&a.package);
        let dir = self.dir.clone();
        for f in ["requirements.txt", "requirements-dev.txt", "requirements/base.txt"] {
            if let Some(l) = self.find(&dir, f, |l| {
                let t = l.trim_start();
                let end =
                    t.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))).unwrap_or(t.len());
                end > 0 && norm(&t[..end]) == want
            }) {
                return Some(l);
            }
        }
        None
    }

    /// The policy file, at the line of `section:` (`egress`, `dns`, `exec`) when present.
    pub fn policy(&mut self, source: &str, section: Option<&str>) -> Option<Location> {
        let p = Path::new(source);
        let abs = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().ok()?.join(p) };
        let rel = self.relative(&abs)?;
        let text = self.file(&abs)?;
        let line = section
            .and_then(|sec| text.lines().position(|l| l.starts_with(sec) && l[sec.len()..].starts_with(':')))
            .map_or(1, |i| i as u64 + 1);
        Some(Location { uri: rel, line })
    }
}

/// The policy section an alert of `rule` is about.
pub fn section(rule: &str) -> Option<&'static str> {
    use crate::engine::*;
    match rule {
        RULE_EGRESS => Some("egress"),
        RULE_DNS_NAME | RULE_DNS_RESOLVER | RULE_DNS_MALFORMED => Some("dns"),
        RULE_EXEC | RULE_SHELL => Some("exec"),
        RULE_SECRET => Some("secrets"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(manager: &str, package: &str, version: Option<&str>) -> Attribution {
        Attribution {
            manager: manager.into(),
            package: package.into(),
            version: version.map(str::to_string),
            stage: "postinstall".into(),
        }
    }

    #[test]
    fn finds_the_lockfile_entry_of_each_manager() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::write(
            p.join("package-lock.json"),
            "{\n  \"packages\": {\n    \"\": {},\n    \"node_modules/a\": {\n    },\n    \"node_modules/a/node_modules/evil\": {\n    },\n    \"node_modules/evil\": {\n    }\n  }\n}\n",
        )
        .unwrap();
        std::fs::write(p.join("Cargo.lock"), "[[package]]\nname = \"ring\"\nversion = \"0.16.0\"\n\n[[package]]\nname = \"ring\"\nversion = \"0.17.8\"\n").unwrap();
        std::fs::write(p.join("requirements.txt"), "# pinned\nrequests==2.0\nPy_Formatter.Util>=1.0\n").unwrap();
        let mut l = Locator::at(p);
        let nested = format!("{}/node_modules/a/node_modules/evil", p.display());
        assert_eq!(
            l.npm(&att("npm", "evil", None), Some(&nested)),
            Some(Location { uri: "package-lock.json".into(), line: 6 })
        );
        assert_eq!(l.npm(&att("npm", "evil", None), None), Some(Location { uri: "package-lock.json".into(), line: 6 }));
        assert_eq!(l.npm(&att("npm", "a", None), None), Some(Location { uri: "package-lock.json".into(), line: 4 }));
        assert_eq!(l.npm(&att("npm", "nope", None), None), None);
        assert_eq!(
            l.cargo(&att("cargo", "ring", Some("0.17.8"))),
            Some(Location { uri: "Cargo.lock".into(), line: 6 })
        );
        assert_eq!(
            l.pip(&att("pip", "py-formatter-util", None)),
            Some(Location { uri: "requirements.txt".into(), line: 3 })
        );
    }

    #[test]
    fn never_reads_through_a_planted_link_or_a_fifo() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let target = p.join("elsewhere.json");
        std::fs::write(&target, "\"node_modules/evil\": {\n").unwrap();
        std::os::unix::fs::symlink(&target, p.join("package-lock.json")).unwrap();
        nix::unistd::mkfifo(
            &p.join("npm-shrinkwrap.json"),
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .unwrap();
        let mut l = Locator::at(p);
        assert_eq!(l.npm(&att("npm", "evil", None), None), None);
    }
}
