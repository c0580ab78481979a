//! The daemon's local status socket: a Unix socket, mode 0600 in a directory only root can
//! enter when the daemon creates it, so only root can ask. One request per connection; the
//! answer is the status as JSON, then the daemon closes the connection.
use std::{
    io::{Read as _, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    time::Duration,
};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{DaemonError, StatusReport};
use crate::error::Doing as _;

pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, DaemonError> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).doing(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .doing(|| format!("cannot restrict {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::SocketInUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).doing(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    // The socket is created with the umask's permissions; tighten the umask around bind so
    // there is no moment when others may connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let l = tokio::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let l = l.doing(|| format!("cannot listen on status socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .doing(|| format!("cannot restrict {}", path.display()))?;
    Ok(l)
}

pub fn serve(mut stream: tokio::net::UnixStream, body: String) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            // Read the request first: closing with unread data would reset the connection.
            let mut buf = [0u8; 64];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.write_all(b"\n").await;
            let _ = stream.shutdown().await;
        })
        .await;
    });
}

pub fn query(path: &Path) -> Result<String, DaemonError> {
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .doing(|| format!("cannot reach the watcher daemon at {} (is it running? root only)", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let _ = s.write_all(b"status\n");
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = String::new();
    s.read_to_string(&mut out).doing(|| format!("reading from {}", path.display()))?;
    Ok(out.trim_end().to_string())
}

pub fn render(r: &StatusReport) -> String {
    let c = &r.counters;
    let running = r.jobs.iter().filter(|j| j.state == "running").count();
    let mut s = format!(
        "watcher daemon pid {} (config {}, logs in {})\njobs: {} running, {} started, {} ended; events {}, alerts {}\n",
        r.pid, r.config, r.log_dir, running, c.jobs_started, c.jobs_ended, c.events, c.alerts
    );
    let lost: u64 = c.lost.values().sum();
    s.push_str(&format!("lost events: {lost}"));
    for (k, v) in &c.lost {
        s.push_str(&format!(" {k}={v}"));
    }
    s.push_str(&format!(
        "; unrouted records: {}; jobs set up after a lost exec record: {}; held jobs adopted at start: {}\n",
        c.unrouted, c.recovered_jobs, c.adopted_jobs
    ));
    s.push_str(&format!("reloads: {} ({} failed)\n", c.reloads, c.reload_errors));
    if let Some(e) = &c.last_reload_error {
        s.push_str(&format!("last reload error: {e}\n"));
    }
    for j in &r.jobs {
        s.push_str(&format!(
            "job {} [{}] id {} pipeline {:?} policy {} ({}) processes {} events {} alerts {} lost {} log {}\n",
            j.name,
            j.state,
            j.id,
            j.pipeline,
            j.policy.as_deref().unwrap_or("none"),
            j.mode,
            j.processes,
            j.events,
            j.alerts,
            j.lost,
            j.log
        ));
    }
    s
}
