//! The system programs watcher itself runs as root (`ss` at the end of every step, `ip` for
//! the drill), taken from the system's own directories only, never from `PATH`.
//!
//! watcher runs in a checkout that a pull request controls, and a CI job's `PATH` is not the
//! system's: an earlier step can prepend a directory (GitHub's `$GITHUB_PATH`), and `.` or a
//! relative entry resolves into the checkout. A program found there would run as root outside
//! the watch. So a tool is looked up in the fixed system directories below, and only a regular
//! file owned by root that neither its group nor others can write is taken (its directory is
//! checked the same way).
use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Where system programs live, in the order looked at.
pub const SYSTEM_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// The tool was not found in [`SYSTEM_DIRS`] (or only as a file root does not own).
#[derive(Debug, thiserror::Error)]
#[error(
    "`{name}` was not found in {} as a root-owned program (watcher never runs a system tool from PATH){}",
    SYSTEM_DIRS.join(", "),
    .unsafe_copy.as_ref().map(|p| format!("; {} is writable by non-root users or not root's", p.display())).unwrap_or_default()
)]
pub struct ToolNotFound {
    pub name: &'static str,
    pub unsafe_copy: Option<PathBuf>,
}

/// Whether root alone can change `p` (owned by root, not group- or world-writable).
fn root_only(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0)
}

/// The path of system program `name`.
pub fn find(name: &'static str) -> Result<PathBuf, ToolNotFound> {
    find_in(name, SYSTEM_DIRS.iter().map(Path::new))
}

fn find_in<'a>(name: &'static str, dirs: impl Iterator<Item = &'a Path>) -> Result<PathBuf, ToolNotFound> {
    let mut unsafe_copy = None;
    for dir in dirs {
        let p = dir.join(name);
        let Ok(m) = std::fs::metadata(&p) else { continue };
        if !m.is_file() || m.mode() & 0o111 == 0 {
            continue;
        }
        // The directory as resolved (/sbin is a link to /usr/sbin on merged-/usr systems).
        let real_dir = p.canonicalize().ok().and_then(|r| r.parent().map(Path::to_path_buf));
        if root_only(&p) && real_dir.as_deref().is_some_and(root_only) {
            return Ok(p);
        }
        unsafe_copy.get_or_insert(p);
    }
    Err(ToolNotFound { name, unsafe_copy })
}

/// A command for system program `name`, with no `PATH` lookup.
pub fn command(name: &'static str) -> Result<std::process::Command, ToolNotFound> {
    Ok(std::process::Command::new(find(name)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_system_tool_is_found_outside_path() {
        // `sh` is in every system directory list; PATH plays no part.
        let p = find("sh").unwrap();
        assert!(SYSTEM_DIRS.iter().any(|d| p.starts_with(d)), "{}", p.display());
    }

    #[test]
    fn a_writable_copy_is_refused_and_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let tool = dir.path().join("ss");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = find_in("ss", std::iter::once(dir.path())).unwrap_err();
        assert_eq!(e.unsafe_copy.as_deref(), Some(tool.as_path()));
        assert!(e.to_string().contains("never runs a system tool from PATH"), "{e}");
        // Root's own, but in a directory anyone can write to (a file there can be swapped).
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let owned_by_root = std::fs::metadata(&tool).unwrap().uid() == 0;
        assert!(find_in("ss", std::iter::once(dir.path())).is_err() || !owned_by_root);
        // Root's, in a root-only directory: taken.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        if owned_by_root {
            assert_eq!(find_in("ss", std::iter::once(dir.path())).unwrap(), tool);
        }
    }
}
