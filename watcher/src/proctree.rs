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
    /// The install script this process belongs to (its start's pid and attribution), fixed
    /// when the process is forked (from its parent) or when it starts a script: never looked
    /// up through ancestors later, so depth and pids reused by other processes do not matter.
    pub script: Option<ScriptRef>,
    pub exited: bool,
}

/// Which install script a process belongs to.
#[derive(Clone, Debug)]
pub struct ScriptRef {
    /// Pid of the process that started the script.
    pub start: u32,
    pub attribution: Arc<Attribution>,
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
    // pip installs a build's dependencies with a pip of its own, in the build tracker's
    // environment: that is pip, not a package's script (the builds it runs are starts of
    // their own). Started inside a script, it stays in that script (inherited at fork).
    if is_pip_build_deps_installer(filename, argv) {
        return None;
    }
    // pip builds an sdist in <tmp>/pip-install-XXXX/<name>_<hash>/ through its PEP 517 hook
    // runner (_in_process.py) or, for legacy projects, setup.py; it sets PIP_BUILD_TRACKER
    // for those subprocesses (the kernel marks the same processes from that variable).
    let pip_build = env.contains_key("PIP_BUILD_TRACKER") || {
        let mentions = |needle: &str| argv.iter().any(|a| a.contains(needle));
        base.starts_with("python") && (mentions("_in_process.py") || mentions("setup.py"))
    };
    // uv builds an sdist in its cache, .../sdists-vN/<source>/<hash>/<name>/<version>/<id>/src,
    // with UV_INTERNAL__BUILD_DIR set for the build backend's python.
    if env.contains_key("UV_INTERNAL__BUILD_DIR") {
        let package = cwd.and_then(uv_source_dir_name).unwrap_or_else(|| "unknown sdist".into());
        return Some(Attribution { manager: "uv".into(), package, version: None, stage: "build".into() });
    }
    // Other PEP 517 frontends (poetry, python -m build) run pyproject_hooks' _in_process.py in
    // the unpacked sdist, <tmp>/<name>-<version>.
    let hook_runner =
        env.contains_key("_PYPROJECT_HOOKS_BUILD_BACKEND") || argv.iter().any(|a| a.ends_with("/_in_process.py"));
    let pips_own = env.contains_key("PIP_BUILD_TRACKER") || argv.iter().any(|a| a.contains("/pip/_vendor/"));
    if hook_runner
        && !pips_own
        && let Some(package) = cwd.and_then(sdist_dir_name)
    {
        return Some(Attribution { manager: "pep517".into(), package, version: None, stage: "build".into() });
    }
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

/// `python .../pip/__pip-runner__.py install ...`: the pip that pip starts to install the
/// build dependencies of an sdist it builds (into an isolated prefix, through pip's own cache).
pub fn is_pip_build_deps_installer(filename: &str, argv: &[String]) -> bool {
    basename(filename).starts_with("python")
        && argv.get(1).is_some_and(|a| a.ends_with("/pip/__pip-runner__.py"))
        && argv.get(2).is_some_and(|a| a == "install")
}

/// `.../sdists-v11/index/<hash>/evil-pkg/1.0.0/<id>/src` -> `evil-pkg`
fn uv_source_dir_name(cwd: &str) -> Option<String> {
    let parts: Vec<&str> = cwd.split('/').collect();
    let i = parts.iter().position(|p| p.starts_with("sdists-v"))?;
    // <source kind>/<hash>/<name>/<version>/...: registry sources carry the name.
    (parts.get(i + 1) == Some(&"index")).then(|| parts.get(i + 3).map(|n| n.to_string())).flatten()
}

/// `/tmp/tmpab12/evil_pkg-1.0.0` -> `evil_pkg`
fn sdist_dir_name(cwd: &str) -> Option<String> {
    let dir = basename(cwd.trim_end_matches('/'));
    let (name, version) = dir.rsplit_once('-')?;
    (!name.is_empty() && version.starts_with(|c: char| c.is_ascii_digit())).then(|| name.to_string())
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
                // A fork is a new process, whatever an earlier process with this pid was: it
                // inherits its parent's script (the parent's node is the live parent's, since
                // the parent is running while it forks).
                let (filename, argv, script) = match self.nodes.get(&f.proc.ppid) {
                    Some(p) => (p.filename.clone(), p.argv.clone(), p.script.clone()),
                    None => (None, Arc::from(Vec::new()), None),
                };
                let node = Node {
                    ppid: f.proc.ppid,
                    comm: f.proc.comm.clone(),
                    filename,
                    argv,
                    attribution: None,
                    script,
                    exited: false,
                };
                self.nodes.insert(f.proc.pid, node);
            }
            Event::Exec(x) => {
                let inherited = self.script_before_exec(x.proc.pid, x.proc.ppid).cloned();
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
                match inherited {
                    Some(s) => node.script = Some(s),
                    None if own => {}
                    None => {
                        if let Some(a) = install_script_of(&x.filename, &x.argv, &x.env, x.cwd.as_deref()) {
                            node.script = Some(ScriptRef { start: x.proc.pid, attribution: Arc::new(a.clone()) });
                            node.attribution = Some(Box::new(a));
                        }
                    }
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
    /// Constant time: each process carries its script from its fork (no walk up the tree, so
    /// no depth bound, and a pid reused by an unrelated process never passes a script on).
    pub fn install_script(&self, pid: u32) -> Option<(u32, &Attribution)> {
        self.nodes.get(&pid)?.script.as_ref().map(|s| (s.start, &*s.attribution))
    }

    /// The script the program that process `pid` (child of `ppid`) is about to exec runs
    /// in, judged before the exec is applied to the tree: its own (inherited at fork, or
    /// its own start by an earlier exec), or, when its fork was not seen (the step's first
    /// process, a lost record), its parent's.
    pub fn script_before_exec(&self, pid: u32, ppid: u32) -> Option<&ScriptRef> {
        match self.nodes.get(&pid) {
            // An exited process's node belongs to a pid the kernel may have given again.
            Some(n) if !n.exited && n.script.is_some() => n.script.as_ref(),
            Some(n) if !n.exited => None,
            _ => self.nodes.get(&ppid).and_then(|p| p.script.as_ref()),
        }
    }

    /// Every process with its parent, for reports.
    pub fn iter(&self) -> impl Iterator<Item = (&u32, &Node)> {
        self.nodes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pip's own build-dependency installer runs in the build tracker's environment but is
    /// not a script start; the hook runner beside it is.
    #[test]
    fn pips_build_dependency_installer_is_pip_not_a_script() {
        let mut env = BTreeMap::new();
        env.insert("PIP_BUILD_TRACKER".to_string(), "/tmp/pip-build-tracker-x".to_string());
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let runner = v(&["/venv/bin/python3", "/venv/lib/python3.11/site-packages/pip/__pip-runner__.py", "install"]);
        assert!(install_script_of("/venv/bin/python3", &runner, &env, Some("/w")).is_none());
        let hook = v(&[
            "/venv/bin/python3",
            "/venv/lib/python3.11/site-packages/pip/_vendor/pyproject_hooks/_in_process/_in_process.py",
            "build_wheel",
        ]);
        let a = install_script_of("/venv/bin/python3", &hook, &env, Some("/tmp/pip-install-1/attrs_0a1b")).unwrap();
        assert_eq!(a.manager, "pip");
        // A script of that name elsewhere, or run for something else, is not the installer.
        assert!(!is_pip_build_deps_installer(
            "/venv/bin/python3",
            &v(&["python3", "/tmp/x/__pip-runner__.py", "install"])
        ));
        assert!(!is_pip_build_deps_installer("/bin/sh", &runner));
        assert!(!is_pip_build_deps_installer(
            "/venv/bin/python3",
            &v(&["python3", "/v/pip/__pip-runner__.py", "download"])
        ));
    }

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
    fn uv_and_other_pep517_builds_name_the_sdist() {
        let mut env = BTreeMap::new();
        env.insert("UV_INTERNAL__BUILD_DIR".to_string(), "/root/.cache/uv/builds-v0".to_string());
        let cwd = "/root/.cache/uv/sdists-v11/index/444663d186406ad6/py-formatter-util/1.2.1/hOqDVQ/src";
        let a =
            install_script_of("/root/.cache/uv/builds-v0/.tmpX/bin/python", &["-c".into()], &env, Some(cwd)).unwrap();
        assert_eq!(a.label(), "uv:py-formatter-util (build)");
        let poetry_argv: Vec<String> = vec![
            "/opt/poetry/lib/python3.11/site-packages/pyproject_hooks/_in_process/_in_process.py".into(),
            "build_wheel".into(),
            "/tmp/tmpf7lfz1ij".into(),
        ];
        let mut env = BTreeMap::new();
        env.insert("_PYPROJECT_HOOKS_BUILD_BACKEND".to_string(), "lab_backend".to_string());
        let a = install_script_of(
            "/tmp/tmpud1h5tx7/.venv/bin/python",
            &poetry_argv,
            &env,
            Some("/tmp/tmpej_1c0ab/probe_pkg-1.0.0"),
        )
        .unwrap();
        assert_eq!(a.label(), "pep517:probe_pkg (build)");
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

    fn fork(pid: u32, ppid: u32) -> Event {
        Event::Fork(crate::event::Fork {
            ts: crate::event::Ts(0),
            proc: crate::event::Proc { pid, ppid, comm: "sh".into(), uid: 0 },
        })
    }

    fn exec(pid: u32, ppid: u32, file: &str, env: &[(&str, &str)]) -> Event {
        Event::Exec(crate::event::Exec {
            ts: crate::event::Ts(0),
            proc: crate::event::Proc { pid, ppid, comm: basename(file).into(), uid: 0 },
            filename: file.into(),
            argv: vec![file.into()],
            argv_truncated: false,
            argv_redacted: false,
            cgroup_id: 0,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            killed: false,
            shell: false,
            cwd: None,
            held: false,
            script: false,
            facts: None,
        })
    }

    const POSTINSTALL: &[(&str, &str)] = &[("npm_lifecycle_event", "postinstall"), ("npm_package_name", "evil")];

    #[test]
    fn attribution_holds_at_any_depth() {
        let mut t = ProcTree::default();
        t.on_event(&exec(100, 1, "/usr/bin/node", &[]));
        t.on_event(&fork(101, 100));
        t.on_event(&exec(101, 100, "/bin/sh", POSTINSTALL));
        // A fork chain far deeper than any walk bound, each link exec'ing.
        let depth = 100_000u32;
        for i in 0..depth {
            let (pid, ppid) = (1000 + i, if i == 0 { 101 } else { 999 + i });
            t.on_event(&fork(pid, ppid));
            if i % 2 == 0 {
                t.on_event(&exec(pid, ppid, "/usr/bin/node", &[]));
            }
        }
        let last = 999 + depth;
        let (start, a) = t.install_script(last).expect("attributed");
        assert_eq!((start, a.label().as_str()), (101, "npm:evil (postinstall)"));
        assert_eq!(t.script_before_exec(last, last - 1).map(|s| s.start), Some(101));
        assert!(t.install_script(100).is_none());
    }

    #[test]
    fn reused_pids_neither_lose_nor_pass_on_attribution() {
        let mut t = ProcTree::default();
        t.on_event(&exec(100, 1, "/usr/bin/node", &[]));
        t.on_event(&fork(200, 100));
        t.on_event(&exec(200, 100, "/bin/sh", POSTINSTALL));
        t.on_event(&fork(201, 200));
        t.on_event(&fork(202, 201));
        // The script's start and the middle process exit; their pids go to processes of
        // npm itself (not in the script).
        for pid in [200, 201] {
            t.on_event(&Event::Exit(crate::event::Exit {
                ts: crate::event::Ts(0),
                proc: crate::event::Proc { pid, ppid: 0, comm: "sh".into(), uid: 0 },
                exit_code: Some(0),
            }));
        }
        t.on_event(&fork(200, 100));
        t.on_event(&exec(200, 100, "/usr/bin/node", &[]));
        t.on_event(&fork(201, 100));
        // The grandchild (its parent's pid now names another process) still belongs to the script...
        assert_eq!(t.install_script(202).map(|(s, a)| (s, a.package.clone())), Some((200, "evil".to_string())));
        t.on_event(&fork(203, 202));
        t.on_event(&exec(203, 202, "/bin/sh", &[]));
        assert!(t.install_script(203).is_some());
        // ...and the new processes with the reused pids do not.
        assert!(t.install_script(200).is_none() && t.install_script(201).is_none());
        // A process whose fork was not seen, exec'ing under a reused (exited) pid, is judged
        // by its parent, not by the stale node.
        t.on_event(&fork(300, 202));
        t.on_event(&Event::Exit(crate::event::Exit {
            ts: crate::event::Ts(0),
            proc: crate::event::Proc { pid: 300, ppid: 0, comm: "sh".into(), uid: 0 },
            exit_code: Some(0),
        }));
        assert!(t.script_before_exec(300, 100).is_none());
        assert!(t.script_before_exec(300, 202).is_some());
    }

    #[test]
    fn shells_by_basename() {
        assert!(is_shell("/bin/sh") && is_shell("/usr/bin/bash") && is_shell("dash"));
        assert!(!is_shell("/usr/bin/node") && !is_shell("/usr/bin/shasum"));
    }
}
