//! The file sensor's rules: `credential-access`, `file-tamper` and
//! `publish-from-install-script`. Pure, like the rest of the engine.
use super::Engine;
use crate::event::{Alert, Exec, File, FileClass, FileWhat};

pub const RULE_CREDENTIAL: &str = "credential-access";
pub const RULE_FILE_TAMPER: &str = "file-tamper";
pub const RULE_PUBLISH: &str = "publish-from-install-script";

impl Engine {
    /// A file event: the kernel reports only install scripts' opens that match a rule, so the
    /// engine's part is the message, the package, and the policy's exceptions (a replay with a
    /// narrower policy drops what the new `files.allow` excludes) and the per-package lists
    /// (`packages[].files`).
    pub(super) fn on_file(&mut self, x: &File, out: &mut Vec<Alert>) {
        // pip's build-dependency installer, started by pip outside any script: the kernel
        // marked it from the build tracker's variable, but it is pip, filling pip's own cache.
        if let Some(n) = self.tree.get(x.proc.pid)
            && n.script.is_none()
            && n.filename.as_deref().is_some_and(|f| crate::proctree::is_pip_build_deps_installer(f, &n.argv))
        {
            return;
        }
        if x.what == FileWhat::Open {
            let spec = self.policy.spec();
            if crate::files::allowed(&spec.files, &x.path) {
                return;
            }
            let attribution = self.tree.install_script(x.proc.pid).map(|(_, a)| a);
            let package = attribution.map(|a| (a.manager.as_str(), a.package.as_str()));
            if !crate::files::judged_for(spec, package, x.class, &x.path) {
                return;
            }
        }
        let who = match self.package(x.proc.pid) {
            Some(p) => format!("the install script of {p}"),
            None => "an install script".to_string(),
        };
        let verb = if x.killed { "tried to" } else { "did" };
        let (rule, severity, subject, message) = match (x.class, x.what) {
            (FileClass::Tamper, _) => (
                RULE_FILE_TAMPER,
                "high",
                x.path.clone(),
                format!("{who} ({}) opened {} for writing: a protected path outside its package", x.proc.comm, x.path),
            ),
            (FileClass::Credential, FileWhat::Open) => (
                RULE_CREDENTIAL,
                "critical",
                x.path.clone(),
                format!("{who} ({}) opened {}, a credential store", x.proc.comm, x.path),
            ),
            (FileClass::Credential, what) => {
                let how = match what {
                    FileWhat::Environ => "read the environment of",
                    FileWhat::Mem => "opened the memory of",
                    FileWhat::VmReadv => "read the memory (process_vm_readv) of",
                    _ => "traced (ptrace)",
                };
                (
                    RULE_CREDENTIAL,
                    "critical",
                    format!("{}:{}", what.as_str(), x.target),
                    format!("{who} ({}) {verb} {how} process {}, outside its own tree", x.proc.comm, x.target)
                        .replace(" did ", " "),
                )
            }
        };
        self.alert(out, x.ts, rule, false, x.killed, severity, x.proc.pid, subject, message);
    }

    /// `npm publish`, `twine upload`, `cargo publish`, ... run from inside an install script.
    /// Call after the tree has seen the exec.
    pub(super) fn on_publish(&mut self, x: &Exec, out: &mut Vec<Alert>) {
        if self.tree.install_script(x.proc.pid).is_none() {
            return;
        }
        let Some(cmd) = crate::files::is_publish(&x.argv, &x.filename) else { return };
        let who = match self.package(x.proc.pid) {
            Some(p) => format!("the install script of {p}"),
            None => "an install script".to_string(),
        };
        self.alert(
            out,
            x.ts,
            RULE_PUBLISH,
            false,
            x.killed,
            "critical",
            x.proc.pid,
            "publish".into(),
            format!("{who} ran `{cmd}`: publishing to a package registry from an install script (a worm spreading)"),
        );
    }
}
