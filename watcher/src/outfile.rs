//! Files watcher writes as root (event logs, reports, daemon job logs), opened so that a user
//! who controls the directory cannot aim them at another file or keep a handle on them:
//!
//! - no symbolic link is followed at the file itself (`O_NOFOLLOW`), nor at a directory on
//!   the way to it unless that link belongs to root (or to watcher's own user): a link the
//!   build user planted is an error, not a redirection;
//! - a file that exists is reused only if it is a regular file with one name, owned by
//!   watcher's user and writable by nobody else; it is then truncated;
//! - new files are created `0600` (and an existing one is set to `0600`): whoever reads the
//!   log next gets it from root, not from a file its owner could have edited afterwards;
//! - FIFOs and devices are refused (no blocking on open, no writing into a terminal).
//!
//! [`distinct`] checks that no two of a run's files (policy, log, reports) are the same file.
use std::{
    ffi::{CString, OsStr},
    fs::File,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{
            ffi::{OsStrExt as _, OsStringExt as _},
            fs::MetadataExt as _,
        },
    },
    path::{Component, Path, PathBuf},
};

use crate::error::{Doing as _, Failed};

/// Why an output file (event log, report, job log) cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{}: cannot write the {what}: not a file name", .path.display())]
    NotAFileName { path: PathBuf, what: String },
    /// The file exists, or is on a path, that watcher will not write through.
    #[error("{}: refusing to write the {what}: {why}", .path.display())]
    Refused { path: PathBuf, what: String, why: String },
    #[error("the path contains a NUL byte")]
    Nul,
    #[error("{link} is a symbolic link owned by uid {uid} (only links of root are followed)")]
    ForeignLink { link: String, uid: u32 },
    #[error("too many symbolic links")]
    TooManyLinks,
    #[error("the {role} {} is the same file as the {other_role} {}: give it another name", .path.display(), .other.display())]
    SameFile { role: String, path: PathBuf, other_role: String, other: PathBuf },
    /// A system call on the way failed.
    #[error(transparent)]
    Failed(#[from] Failed),
}

/// At most this many symbolic links are followed on the way to the file (as the kernel's 40).
const MAX_LINKS: usize = 40;

/// Open `path` for writing as described in the module documentation. `what` names the file
/// in errors ("event log", "report").
pub fn create(path: &Path, what: &str) -> Result<File, OutputError> {
    let name = path.file_name().filter(|n| *n != OsStr::new("..") && *n != OsStr::new("."));
    let Some(name) = name else {
        return Err(OutputError::NotAFileName { path: path.to_path_buf(), what: what.into() });
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = open_dir(parent).doing(|| format!("{}: cannot write the {what}", path.display()))?;
    open_in(&dir, name, path, what)
}

fn cstr(s: &OsStr) -> Result<CString, OutputError> {
    CString::new(s.as_bytes()).map_err(|_| OutputError::Nul)
}

fn last_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Whose links and files watcher trusts: root and its own effective user.
fn trusted_uid(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Open a directory, refusing any symbolic link on the way that belongs to another user.
fn open_dir(dir: &Path) -> Result<OwnedFd, OutputError> {
    let mut links = 0usize;
    let start = if dir.is_absolute() { Path::new("/") } else { Path::new(".") };
    let mut fd = raw_open(None, start.as_os_str())?;
    let mut pending: Vec<PathBuf> = vec![dir.to_path_buf()];
    // A stack of paths still to walk: a followed link pushes its target (resolved from the
    // directory that holds it, or from / when absolute).
    while let Some(p) = pending.pop() {
        let mut comps: Vec<Component> = p.components().collect();
        comps.reverse();
        while let Some(c) = comps.pop() {
            let part = match c {
                Component::RootDir => {
                    fd = raw_open(None, OsStr::new("/"))?;
                    continue;
                }
                Component::CurDir => continue,
                Component::Prefix(_) => continue,
                Component::ParentDir => OsStr::new(".."),
                Component::Normal(n) => n,
            };
            let meta = fstatat_nofollow(&fd, part).doing(|| format!("{}", p.display()))?;
            if meta.st_mode & libc::S_IFMT == libc::S_IFLNK {
                if !trusted_uid(meta.st_uid) {
                    return Err(OutputError::ForeignLink { link: part.to_string_lossy().into(), uid: meta.st_uid });
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(OutputError::TooManyLinks);
                }
                let target = readlinkat(&fd, part)?;
                // Walk the target, then the rest of this path.
                let rest: PathBuf = comps.iter().rev().collect();
                pending.push(rest);
                pending.push(target);
                break;
            }
            fd = raw_open(Some(&fd), part)?;
        }
    }
    Ok(fd)
}

/// `openat(dirfd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW)`.
fn raw_open(dir: Option<&OwnedFd>, name: &OsStr) -> Result<OwnedFd, OutputError> {
    let c = cstr(name)?;
    let dirfd = dir.map(|d| d.as_raw_fd()).unwrap_or(libc::AT_FDCWD);
    // SAFETY: a valid NUL-terminated path; the fd is owned below.
    let fd = unsafe {
        libc::openat(dirfd, c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
    };
    if fd < 0 {
        return Err(last_err()).doing(|| format!("{}", name.to_string_lossy())).map_err(OutputError::from);
    }
    // SAFETY: fd was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstatat_nofollow(dir: &OwnedFd, name: &OsStr) -> Result<libc::stat, OutputError> {
    let c = cstr(name)?;
    // SAFETY: stat is plain data; the pointers are valid for the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if rc < 0 {
        return Err(last_err()).doing(|| format!("{}", name.to_string_lossy())).map_err(OutputError::from);
    }
    Ok(st)
}

fn readlinkat(dir: &OwnedFd, name: &OsStr) -> Result<PathBuf, OutputError> {
    let c = cstr(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe { libc::readlinkat(dir.as_raw_fd(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(last_err()).doing(|| format!("reading link {}", name.to_string_lossy())).map_err(OutputError::from);
    }
    buf.truncate(n as usize);
    Ok(PathBuf::from(std::ffi::OsString::from_vec(buf)))
}

fn open_in(dir: &OwnedFd, name: &OsStr, path: &Path, what: &str) -> Result<File, OutputError> {
    let refuse = |why: String| OutputError::Refused { path: path.to_path_buf(), what: what.into(), why };
    let c = cstr(name)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY;
    // SAFETY: a valid NUL-terminated name relative to an open directory.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags, 0o600 as libc::c_uint) };
    if fd < 0 {
        let e = last_err();
        if e.raw_os_error() == Some(libc::ELOOP) {
            return Err(refuse("it is a symbolic link".into()));
        }
        if e.raw_os_error() == Some(libc::ENXIO) {
            // A FIFO without a reader (opened without blocking).
            return Err(refuse("it is not a regular file".into()));
        }
        return Err(e).doing(|| format!("{}: cannot write the {what}", path.display())).map_err(OutputError::from);
    }
    // SAFETY: fd was just returned by openat and is owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    let m = f.metadata().doing(|| format!("{}: cannot write the {what}", path.display()))?;
    if !m.file_type().is_file() {
        return Err(refuse("it is not a regular file".into()));
    }
    if m.mode() & 0o022 != 0 {
        return Err(refuse(format!(
            "it exists and others can write it (mode {:o}; remove it first)",
            m.mode() & 0o7777
        )));
    }
    if !trusted_uid(m.uid()) {
        return Err(refuse(format!("it exists and belongs to uid {} (remove it first)", m.uid())));
    }
    if m.nlink() > 1 {
        return Err(refuse("it has other hard links".into()));
    }
    // Blocking writes from here on; start empty, private.
    // SAFETY: plain fcntl/ftruncate/fchmod on our own fd.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
    }
    f.set_len(0).doing(|| format!("{}: cannot truncate the {what}", path.display()))?;
    if m.mode() & 0o7777 != 0o600 {
        // SAFETY: fchmod on our own fd.
        if unsafe { libc::fchmod(fd, 0o600) } < 0 {
            return Err(last_err())
                .doing(|| format!("{}: cannot make the {what} private", path.display()))
                .map_err(OutputError::from);
        }
    }
    Ok(f)
}

/// The identity of a file that exists (device, inode), or None.
fn file_id(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// The absolute, lexically normalised form of a path (no file system access).
fn lexical(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
    };
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// Refuse a run whose output files coincide with each other or with an input: writing the
/// log over the policy (or a report over the log) would destroy it. `inputs` are read,
/// `outputs` written; each is (role, path). `-` (standard output) is never a file.
pub fn distinct(inputs: &[(&str, &Path)], outputs: &[(&str, &Path)]) -> Result<(), OutputError> {
    let all: Vec<(&str, &Path)> = inputs.iter().chain(outputs).copied().collect();
    for (i, (ra, a)) in all.iter().enumerate() {
        for (j, (rb, b)) in all.iter().enumerate().skip(i + 1) {
            // Two inputs may be one file; standard output is never a file.
            if j < inputs.len() || *a == Path::new("-") || *b == Path::new("-") {
                continue;
            }
            let same = match (file_id(a), file_id(b)) {
                (Some(x), Some(y)) => x == y,
                _ => lexical(a) == lexical(b),
            };
            if same {
                return Err(OutputError::SameFile {
                    role: rb.to_string(),
                    path: b.to_path_buf(),
                    other_role: ra.to_string(),
                    other: a.to_path_buf(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn creates_private_files_and_refuses_links_and_shared_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log.jsonl");
        create(&p, "event log").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        // Reused when private: truncated.
        std::fs::write(&p, "old").unwrap();
        create(&p, "event log").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"");
        // A link at the file.
        let target = d.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let l = d.path().join("link");
        std::os::unix::fs::symlink(&target, &l).unwrap();
        let e = create(&l, "event log").unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        // Writable by others.
        let w = d.path().join("w");
        std::fs::write(&w, "x").unwrap();
        std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = format!("{:#}", create(&w, "report").unwrap_err());
        assert!(e.contains("others can write it"), "{e}");
        // A hard link.
        let h = d.path().join("h");
        std::fs::hard_link(&target, &h).unwrap();
        assert!(create(&h, "report").unwrap_err().to_string().contains("hard links"));
        // A FIFO.
        let f = d.path().join("fifo");
        nix::unistd::mkfifo(&f, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(create(&f, "report").unwrap_err().to_string().contains("not a regular file"));
    }

    #[test]
    fn distinct_files() {
        let d = tempfile::tempdir().unwrap();
        let pol = d.path().join("p.yaml");
        std::fs::write(&pol, "x").unwrap();
        let e = distinct(&[("policy", &pol)], &[("event log", &d.path().join("./p.yaml"))]).unwrap_err().to_string();
        assert!(e.contains("same file as the policy"), "{e}");
        let a = d.path().join("a.json");
        let e = distinct(&[], &[("event log", &a), ("report", &d.path().join("x/../a.json"))]).unwrap_err();
        assert!(e.to_string().contains("same file"), "{e}");
        distinct(
            &[("policy", &pol)],
            &[("event log", &a), ("report", Path::new("-")), ("report", &d.path().join("b"))],
        )
        .unwrap();
    }
}
