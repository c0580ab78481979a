//! The process tree of a step, built from events: ancestry (parent at fork time) and which
//! package's install script each process works for. Pure: fed by the engine.
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::event::Event;

/// Shell names: an install script spawning one of these is what `shells: deny` forbids.
pub const SHELLS: &[&str] = &["sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish", "csh", "tcsh", "busybox"];

/// npm lifecycle events that run during an install.
const NPM_INSTALL_EVENTS: &[&str] = &["preinstall", "install", "postinstall", "prepare", "preprepare", "postprepare"];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribution {
    /// `npm`, `pip` or `cargo`.
    pub manager: String,
    pub package: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// npm lifecycle event (`postinstall`, ...), `build.rs` for cargo, `build` for pip.
    pub stage: String,
}

impl Attribution {
    /// `npm:left-pad@1.3.0 (postinstall)`
    pub fn label(&self) -> String {
        match &self.version {
            Some(v) => format!("{}:{}@{} ({})", self.manager, self.package, v, self.stage),
            None => format!("{}:{} ({})", self.manager, self.package, self.stage),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Node {
    pub ppid: u32,
    pub comm: String,
    /// Shared with forked children until they exec (a fork copies no strings).
    pub filename: Option<Arc<str>>,
    pub argv: Arc<[String]>,
    /// Set on the process that starts an install script (npm's `sh -c`, a cargo build
    /// script, pip's build backend); inherited through the tree by lookup.
    /// Boxed: rare, and it keeps nodes small to move.
    pub attribution: Option<Box<Attribution>>,
    pub exited: bool,
}

#[derive(Default, Debug)]
pub struct ProcTree {
    /// foldhash: pids are small integers looked up for every event; SipHash's DoS resistance
    /// is not needed for them and costs a tenth of replay's time.
    nodes: HashMap<u32, Node, foldhash::fast::RandomState>,
    /// The step's own package.json files (its `start` record): their lifecycle scripts are
    /// the user's code, not install scripts.
    project_jsons: Vec<String>,
}

pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

pub fn is_shell(path: &str) -> bool {
    SHELLS.contains(&basename(path))
}

/// Recognise the start of an install script from an exec.
pub fn install_script_of(
    filename: &str,
    argv: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&str>,
) -> Option<Attribution> {
    if let (Some(ev), Some(name)) = (env.get("npm_lifecycle_event"), env.get("npm_package_name"))
        && NPM_INSTALL_EVENTS.contains(&ev.as_str())
    {
        return Some(Attribution {
            manager: "npm".into(),
            package: name.clone(),
            version: env.get("npm_package_version").cloned(),
            stage: ev.clone(),
        });
    }
    let base = basename(filename);
    if base.starts_with("build-script-") {
        // cargo runs target/<profile>/build/<crate>-<hash>/build-script-build with
        // CARGO_PKG_NAME set.
        let package = env.get("CARGO_PKG_NAME").cloned().or_else(|| {
            let dir = filename.rsplit('/').nth(1)?;
            Some(dir.rsplit_once('-').map(|(n, _)| n).unwrap_or(dir).to_string())
        })?;
        return Some(Attribution {
            manager: "cargo".into(),
            package,
            version: env.get("CARGO_PKG_VERSION").cloned(),
            stage: "build.rs".into(),
        });
    }
    // pip builds an sdist in <tmp>/pip-install-XXXX/<name>_<hash>/ through its PEP 517 hook
    // runner (_in_process.py) or, for legacy projects, setup.py; it sets PIP_BUILD_TRACKER
    // for those subprocesses (the kernel marks the same processes from that variable).
    let pip_build = env.contains_key("PIP_BUILD_TRACKER") || {
        let mentions = |needle: &str| argv.iter().any(|a| a.contains(needle));
        base.starts_with("python") && (mentions("_in_process.py") || mentions("setup.py"))
    };
    if pip_build {
        // pip runs the build in the unpacked sdist: the working directory names it (the argv
        // of the setup.py shim is too long to be captured whole).
        let package = cwd
            .and_then(pip_source_dir_name)
            .or_else(|| argv.iter().find_map(|a| pip_source_dir_name(a)))
            .unwrap_or_else(|| "unknown sdist".into());
        return Some(Attribution { manager: "pip".into(), package, version: None, stage: "build".into() });
    }
    None
}

/// `/tmp/pip-install-abc/evil-pkg_0123abcd.../setup.py` -> `evil-pkg`
fn pip_source_dir_name(arg: &str) -> Option<String> {
    let i = arg.find("pip-install-")?;
    let rest = &arg[i..];
    let dir = rest.split('/').nth(1).filter(|d| !d.is_empty())?;
    let name = match dir.rsplit_once('_') {
        Some((n, h)) if h.len() >= 8 && h.chars().all(|c| c.is_ascii_hexdigit()) => n,
        _ => dir,
    };
    let name: String = name.chars().take_while(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).collect();
    (!name.is_empty()).then_some(name)
}

impl ProcTree {
    pub fn on_event(&mut self, e: &Event) {
        match e {
            Event::Fork(f) => {
                let (filename, argv) = match self.nodes.get(&f.proc.ppid) {
                    Some(p) => (p.filename.clone(), p.argv.clone()),
                    None => (None, Arc::from(Vec::new())),
                };
                let node = Node {
                    ppid: f.proc.ppid,
                    comm: f.proc.comm.clone(),
                    filename,
                    argv,
                    attribution: None,
                    exited: false,
                };
                self.nodes.insert(f.proc.pid, node);
            }
            Event::Exec(x) => {
                let in_script = self.install_script(x.proc.ppid).is_some()
                    || self.nodes.get(&x.proc.pid).and_then(|n| n.attribution.as_ref()).is_some();
                let node = self.nodes.entry(x.proc.pid).or_default();
                if node.ppid == 0 {
                    node.ppid = x.proc.ppid;
                }
                node.comm.clone_from(&x.proc.comm);
                node.filename = Some(Arc::from(x.filename.as_str()));
                node.argv = Arc::from(x.argv.as_slice());
                node.exited = false;
                // The root project's (and its workspaces') own lifecycle scripts are the user's
                // code: npm names the package.json of the script's package in the exec's
                // environment (captured by the kernel at exec, so the script cannot change it).
                let own = x.env.get("npm_package_json").is_some_and(|j| self.project_jsons.iter().any(|p| p == j));
                // The outermost process of a script is its start; descendants inherit.
                if !in_script
                    && !own
                    && let Some(a) = install_script_of(&x.filename, &x.argv, &x.env, x.cwd.as_deref())
                {
                    node.attribution = Some(Box::new(a));
                }
            }
            Event::Exit(x) => {
                if let Some(n) = self.nodes.get_mut(&x.proc.pid) {
                    n.exited = true;
                }
            }
            Event::Start(s) => {
                self.project_jsons = s.project.as_ref().map(|p| p.package_jsons.clone()).unwrap_or_default();
            }
            _ => {}
        }
    }

    pub fn get(&self, pid: u32) -> Option<&Node> {
        self.nodes.get(&pid)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Ancestors of `pid`, nearest first, including itself (bounded: a corrupt log cannot loop).
    pub fn ancestry(&self, pid: u32) -> Vec<u32> {
        let mut out = vec![pid];
        let mut cur = pid;
        while out.len() < 256 {
            match self.nodes.get(&cur) {
                Some(n) if n.ppid != 0 && n.ppid != cur && !out.contains(&n.ppid) => {
                    out.push(n.ppid);
                    cur = n.ppid;
                }
                _ => break,
            }
        }
        out
    }

    /// The install script `pid` belongs to: (pid of the script's start, attribution).
    pub fn install_script(&self, pid: u32) -> Option<(u32, &Attribution)> {
        // The walk of `ancestry` without collecting it (this runs for every exec): the same
        // nodes in the same order; a cycle in a corrupt log ends at the bound (revisited
        // nodes were already checked, so the answer is the same).
        let mut cur = pid;
        for _ in 0..256 {
            let n = self.nodes.get(&cur)?;
            if let Some(a) = n.attribution.as_deref() {
                return Some((cur, a));
            }
            if n.ppid == 0 || n.ppid == cur {
                return None;
            }
            cur = n.ppid;
        }
        None
    }

    /// Every process with its parent, for reports.
    pub fn iter(&self) -> impl Iterator<Item = (&u32, &Node)> {
        self.nodes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npm_lifecycle_is_recognised_only_for_install_events() {
        let mut env = BTreeMap::new();
        env.insert("npm_lifecycle_event".to_string(), "postinstall".to_string());
        env.insert("npm_package_name".to_string(), "evil-pkg".to_string());
        env.insert("npm_package_version".to_string(), "1.2.3".to_string());
        let a = install_script_of("/bin/sh", &["sh".into(), "-c".into(), "node x.js".into()], &env, None).unwrap();
        assert_eq!(a.label(), "npm:evil-pkg@1.2.3 (postinstall)");
        env.insert("npm_lifecycle_event".to_string(), "test".to_string());
        assert!(install_script_of("/bin/sh", &[], &env, None).is_none());
    }

    #[test]
    fn cargo_build_script_and_pip_build() {
        let mut env = BTreeMap::new();
        env.insert("CARGO_PKG_NAME".to_string(), "openssl-sys".to_string());
        let a =
            install_script_of("/w/target/debug/build/openssl-sys-0a1b/build-script-build", &[], &env, None).unwrap();
        assert_eq!((a.manager.as_str(), a.package.as_str(), a.stage.as_str()), ("cargo", "openssl-sys", "build.rs"));
        let a =
            install_script_of("/w/target/debug/build/foo-bar-0a1b2c/build-script-main", &[], &BTreeMap::new(), None)
                .unwrap();
        assert_eq!(a.package, "foo-bar");
        let argv: Vec<String> = vec![
            "/usr/bin/python3".into(),
            "-c".into(),
            "exec(compile(open('/tmp/pip-install-x1y2/py-formatter-util_4f6a0c1e2b3d4e5f/setup.py')))".into(),
        ];
        let a = install_script_of("/usr/bin/python3.11", &argv, &BTreeMap::new(), None).unwrap();
        assert_eq!(a.package, "py-formatter-util");
        assert!(
            install_script_of("/usr/bin/python3", &["python3".into(), "app.py".into()], &BTreeMap::new(), None)
                .is_none()
        );
        // What pip really runs for a PEP 517 build: the sdist is named by the working directory.
        let pep517: Vec<String> = vec![
            "/venv/bin/python3".into(),
            "/venv/lib/python3.11/site-packages/pip/_vendor/pyproject_hooks/_in_process/_in_process.py".into(),
            "build_wheel".into(),
            "/tmp/tmpxekqpdju".into(),
        ];
        let a = install_script_of(
            "/venv/bin/python3",
            &pep517,
            &BTreeMap::new(),
            Some("/tmp/pip-install-y72ahjkq/evil-sdist_067523db5f0e4c1b9a3c2d1e0f9a8b7c"),
        )
        .unwrap();
        assert_eq!(a.label(), "pip:evil-sdist (build)");
    }

    #[test]
    fn shells_by_basename() {
        assert!(is_shell("/bin/sh") && is_shell("/usr/bin/bash") && is_shell("dash"));
        assert!(!is_shell("/usr/bin/node") && !is_shell("/usr/bin/shasum"));
    }
}
