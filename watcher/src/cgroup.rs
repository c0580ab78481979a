//! A cgroup v2 directory per watched step: created before the command starts, every process of
//! the step is in it, and at the end everything left in it is killed and the directory removed.
use std::{
    fs,
    io::Write as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::error::{Doing as _, Failed};

/// A step's cgroup that cannot be found, created, emptied or removed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup v2 filesystem is mounted (looked in /proc/self/mountinfo); watcher needs cgroup v2 to scope its socket hooks"
    )]
    NoCgroup2,
    #[error("processes still alive in cgroup {} after SIGKILL", .0.display())]
    Survivors(PathBuf),
    #[error("`ss -K` failed: {0}")]
    SocketKill(String),
    /// `ss` (iproute2) is not installed where watcher takes it from.
    #[error(transparent)]
    NoSs(#[from] crate::system_tool::ToolNotFound),
    /// A file system operation or a tool failed.
    #[error(transparent)]
    Failed(#[from] Failed),
}

/// Where cgroup v2 is mounted: /sys/fs/cgroup on unified systems, /sys/fs/cgroup/unified in
/// hybrid mode. Read from /proc/self/mountinfo.
pub fn cgroup2_root() -> Result<PathBuf, CgroupError> {
    let info = fs::read_to_string("/proc/self/mountinfo").doing(|| "reading /proc/self/mountinfo".into())?;
    parse_cgroup2_root(&info).ok_or(CgroupError::NoCgroup2)
}

fn parse_cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    for line in mountinfo.lines() {
        // ... mount-point ... - fstype source options
        let Some((left, right)) = line.split_once(" - ") else { continue };
        if right.split_whitespace().next() == Some("cgroup2") {
            return left.split_whitespace().nth(4).map(PathBuf::from);
        }
    }
    None
}

pub struct Cgroup {
    path: PathBuf,
    /// The path as the kernel names it, relative to the cgroup2 root ("/watcher-run-42").
    rel: String,
    id: u64,
    removed: bool,
}

impl Cgroup {
    /// Create `<root>/<name>`. The name is made unique by the caller (pid + counter). A
    /// directory of that name is a leftover of a killed watcher whose pid was ours: what is in
    /// it is killed and it is removed first, so it never makes this run fail.
    pub fn create(root: &Path, name: &str) -> Result<Cgroup, CgroupError> {
        let path = root.join(name);
        if path.is_dir() {
            remove_stale(&path);
        }
        fs::create_dir(&path).doing(|| format!("creating cgroup {}", path.display()))?;
        let id = fs::metadata(&path).doing(|| format!("reading cgroup {}", path.display()))?.ino();
        Ok(Cgroup { path, rel: format!("/{name}"), id, removed: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup id the kernel reports (`bpf_get_current_cgroup_id`): the directory's inode.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Path of `cgroup.procs`, which a child writes "0" to, to move itself in.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    pub fn pids(&self) -> Vec<u32> {
        fs::read_to_string(self.procs_file())
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Kill every process in the cgroup and wait until it is empty (at most `timeout`).
    pub fn kill_all(&self, timeout: Duration) -> Result<(), CgroupError> {
        let kill_file = self.path.join("cgroup.kill");
        let deadline = Instant::now() + timeout;
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return Ok(());
            }
            // cgroup.kill (Linux >= 5.14) kills atomically, including processes forking now.
            let atomic =
                fs::OpenOptions::new().write(true).open(&kill_file).and_then(|mut f| f.write_all(b"1")).is_ok();
            if !atomic {
                for pid in pids {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            if Instant::now() > deadline {
                return Err(CgroupError::Survivors(self.path.clone()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sockets the cgroup's processes left behind (TCP, UDP), which the kernel may keep
    /// sending from after every process is gone.
    pub fn socket_count(&self) -> Result<usize, CgroupError> {
        let mut ss = crate::system_tool::command("ss")?;
        let out = ss
            .args(["-H", "-n", "-t", "-u", "-a", "cgroup", &self.rel])
            .output()
            .doing(|| "running `ss` (iproute2) to count the step's leftover sockets".into())?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.contains("TIME-WAIT")).count())
    }

    /// Destroy those sockets (SOCK_DESTROY through `ss -K`), so nothing the step queued is
    /// sent after watcher stops watching: the kernel programs detach when watcher exits, and
    /// an orphaned TCP socket would retransmit unfiltered.
    pub fn destroy_sockets(&self) -> Result<(), CgroupError> {
        let mut ss = crate::system_tool::command("ss")?;
        let out = ss
            .args(["-K", "-H", "-n", "-t", "-u", "-a", "cgroup", &self.rel])
            .output()
            .doing(|| "running `ss -K` (iproute2) to destroy the step's leftover sockets".into())?;
        if !out.status.success() {
            return Err(CgroupError::SocketKill(String::from_utf8_lossy(&out.stderr).trim().to_string()));
        }
        Ok(())
    }

    /// Kill what is left and remove the directory.
    pub fn remove(&mut self) -> Result<(), CgroupError> {
        if self.removed {
            return Ok(());
        }
        self.kill_all(Duration::from_secs(5))?;
        // rmdir fails with EBUSY until the last task is fully gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    return Err(e)
                        .doing(|| format!("removing cgroup {}", self.path.display()))
                        .map_err(CgroupError::from);
                }
            }
        }
        self.removed = true;
        Ok(())
    }
}

/// Kill what is in a leftover cgroup and remove it (best effort: a failure is logged).
pub fn remove_stale(path: &Path) {
    let id = fs::metadata(path).map(|m| m.ino()).unwrap_or(0);
    let rel = format!("/{}", path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    let mut cg = Cgroup { path: path.to_path_buf(), rel, id, removed: false };
    match cg.remove() {
        Ok(()) => tracing::warn!(cgroup = %path.display(), "removed a cgroup a killed watcher left"),
        Err(e) => tracing::warn!(cgroup = %path.display(), "cannot remove a cgroup a killed watcher left: {e:#}"),
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!("{e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_and_unified_mountinfo() {
        let hybrid = "25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n\
                      27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(parse_cgroup2_root(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "30 1 0:26 / /sys/fs/cgroup rw,nosuid,nodev - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_cgroup2_root(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(parse_cgroup2_root("30 1 0:26 / /proc rw - proc proc rw\n"), None);
    }
}
