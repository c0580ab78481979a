//! Things the guard tests listen with or make, shared by the `watcher run` and daemon-job
//! versions of each test: a unix socket standing in for a local deputy, a host-wide ICMP
//! receiver, and a cgroup of the test's own. Each is removed when dropped, also when the test
//! fails.
use std::{
    io::Read as _,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::wait_until;

/// A unix listener at a path the test makes (removed on drop, with the directory it had to
/// create), recording what it receives.
pub struct UnixSink {
    path: PathBuf,
    made_dir: Option<PathBuf>,
    got: Arc<Mutex<Vec<u8>>>,
    conns: Arc<AtomicUsize>,
}

impl UnixSink {
    /// None when something exists at `path` already (a real daemon's socket: never touched).
    pub fn at(path: &Path) -> Option<UnixSink> {
        if path.exists() {
            return None;
        }
        let dir = path.parent().unwrap();
        let made_dir = (!dir.exists()).then(|| dir.to_path_buf());
        std::fs::create_dir_all(dir).unwrap();
        let l = std::os::unix::net::UnixListener::bind(path).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let (g, c) = (got.clone(), conns.clone());
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                c.fetch_add(1, Ordering::SeqCst);
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                g.lock().unwrap().extend(buf);
            }
        });
        Some(UnixSink { path: path.to_path_buf(), made_dir, got, conns })
    }

    /// The bytes received so far, over every connection.
    pub fn received(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// The bytes received so far, in order.
    pub fn bytes(&self) -> Vec<u8> {
        self.got.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.got.lock().unwrap().clear();
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

impl Drop for UnixSink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(d) = &self.made_dir {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// An ICMP receiver on the host: every ICMP packet of the host, kept when it carries a marker.
pub struct IcmpSink(OwnedFd);

impl IcmpSink {
    pub fn new() -> IcmpSink {
        // SAFETY: socket(2) with constant arguments; owned at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_NONBLOCK, libc::IPPROTO_ICMP) };
        assert!(fd >= 0, "raw icmp socket: {}", std::io::Error::last_os_error());
        // SAFETY: fresh descriptor.
        IcmpSink(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Whether a packet carrying `marker` arrives within `wait`.
    pub fn saw(&self, marker: &[u8], wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            // SAFETY: recv into our buffer.
            let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                if buf[..n as usize].windows(marker.len()).any(|w| w == marker) {
                    return true;
                }
            } else {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        false
    }
}

impl Default for IcmpSink {
    fn default() -> Self {
        Self::new()
    }
}

/// Where the cgroup v2 hierarchy is mounted.
pub fn cgroup_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in info.lines() {
        if let Some((left, right)) = line.split_once(" - ")
            && right.starts_with("cgroup2 ")
        {
            return PathBuf::from(left.split_whitespace().nth(4).unwrap());
        }
    }
    panic!("no cgroup2 mount");
}

/// A cgroup of the test's own under the root (named with `tag` and the test's pid), removed
/// on drop after what is in it is killed.
pub struct TestCgroup(PathBuf);

impl TestCgroup {
    pub fn new(tag: &str) -> TestCgroup {
        let p = cgroup_root().join(format!("watcher-test-{tag}-{}", std::process::id()));
        let _ = std::fs::create_dir(&p);
        TestCgroup(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        wait_until(Duration::from_secs(5), || std::fs::remove_dir(&self.0).is_ok() || !self.0.exists());
    }
}
