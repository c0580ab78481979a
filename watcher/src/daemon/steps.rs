//! Daemon-backed steps: `watcher run` without root, through a running daemon whose
//! configuration allows it (`steps:`). The daemon's own job machinery does the work (kernel
//! tables, one [`crate::pipeline::Pipeline`] per job, the job's rotating log); this module is
//! the protocol on the step socket and the bookkeeping of step jobs.
//!
//! Protocol (newline-delimited JSON, one connection per step, see README "Daemon-backed
//! steps"):
//!
//! 1. `watcher run` forks the process that will exec the command; that process connects (so
//!    `SO_PEERCRED`/`SO_PEERPIDFD` name it, not the client), writes one [`OpenStep`] line and
//!    waits. The daemon checks the pidfd's pid is the credentials' pid and that process is
//!    alive, writes the job's kernel tables, puts that pid in the new kernel job, checks the
//!    process is still alive (a pid reused in between is undone and refused), and answers
//!    [`Reply::Ready`]. Only then does the client let the process exec the command.
//! 2. The daemon streams every event of the job as [`Reply::Event`] (the same events its own
//!    log gets), then [`Reply::Done`] with the verdict once the job is closed out.
//!
//! Trust: the client is untrusted. It can only ask for a job for the process that connected;
//! there is no request that names a pid or a job, ends, pauses or changes one; every further
//! line on the connection is answered with a refusal. The daemon writes the job's own log in
//! `log_dir` whatever the client does: a client that dies, stops reading (its stream is cut,
//! the job goes on) or lies about its exit code cannot change that log's verdicts. A process
//! that already is in a daemon job (a nested step) gets a new job whose kernel tables are the
//! intersection of the enclosing job's and its own ([`intersect`]), and its events are also
//! given to the enclosing job, whose log and verdicts stay complete.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
    rc::Rc,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::unix::{OwnedReadHalf, OwnedWriteHalf},
    sync::mpsc,
};
use watcher_common::{
    DNS_MASK_LOOKUP, JOB_DAEMON_BIT, JOB_ENFORCE, JOB_NONE, MAX_HOST_ENTRIES, MAX_PORT_RANGES, PortSet,
};

use super::{
    Daemon,
    error::{IntersectError, StepError, StepsConfigError},
    jobs::{self, Identity, Job, LoadedPolicy, RotatingLog},
};
use crate::{
    collect::Collector, engine::Engine, event::Event, pipeline::sink::Sink, policy::kernel::KernelTables,
    report::Report, session::clock_offset_ns,
};

pub const DEFAULT_STEP_SOCKET: &str = "/run/watcher/steps.sock";
pub const PROTOCOL_VERSION: u32 = 1;
/// Bound of the request line (a policy is at most 1 MiB, plus registries and command).
pub const MAX_REQUEST_BYTES: usize = 2 << 20;
/// Messages queued for one client before it is cut off for not reading.
pub const STREAM_QUEUE: usize = 32768;
/// Bytes queued for one client before it is cut off for not reading (a client stopped by its
/// own step, whose events keep coming, costs the daemon at most this).
pub const STREAM_QUEUE_BYTES: usize = 8 << 20;
/// Connections whose request is still being read.
const MAX_PENDING: usize = 64;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A step whose first process has not exec'd by then is killed (its client held it).
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// After the step's first process exited: what is left of its job is killed, and the job is
/// closed out once their exits are in (or after this long).
const END_TIMEOUT: Duration = Duration::from_secs(2);
/// SO_PEERPIDFD (Linux 6.5): a pidfd of the process that connected.
const SO_PEERPIDFD: libc::c_int = 77;

// ============================================================================ configuration

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSteps {
    /// Must be `true` for the step socket to be bound.
    allow: bool,
    #[serde(default)]
    socket: Option<PathBuf>,
    /// Only members of this group may connect (socket mode 0660); default: every local user
    /// (0666).
    #[serde(default)]
    group: Option<String>,
    /// Step jobs at once (default 64).
    #[serde(default)]
    max_steps: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepsConfig {
    pub socket: PathBuf,
    pub group: Option<(String, u32)>,
    pub max_steps: usize,
}

impl StepsConfig {
    pub fn from_raw(r: RawSteps, rel: &dyn Fn(PathBuf) -> PathBuf) -> Result<Option<StepsConfig>, StepsConfigError> {
        if !r.allow {
            return Ok(None);
        }
        let group = match r.group {
            None => None,
            Some(name) => match nix::unistd::Group::from_name(&name) {
                Ok(Some(g)) => Some((name, g.gid.as_raw())),
                _ => return Err(StepsConfigError::NoGroup(name)),
            },
        };
        let max_steps = r.max_steps.unwrap_or(64);
        if !(1..=4096).contains(&max_steps) {
            return Err(StepsConfigError::MaxSteps(max_steps));
        }
        Ok(Some(StepsConfig {
            socket: r.socket.map(rel).unwrap_or_else(|| DEFAULT_STEP_SOCKET.into()),
            group,
            max_steps,
        }))
    }
}

// ============================================================================ protocol

/// The one request: make the connecting process a new job.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenStep {
    /// Always "open": no request can end, pause or change a job.
    pub op: String,
    pub version: u32,
    /// The command, for the log's start record (at most 4096 arguments).
    pub command: Vec<String>,
    #[serde(default)]
    pub policy: Option<StepPolicy>,
    /// The resolvers the calling process's system uses (its /etc/resolv.conf).
    #[serde(default)]
    pub resolvers: Vec<IpAddr>,
    /// The project in the caller's working directory (the start record's `project`).
    #[serde(default)]
    pub project: Option<crate::event::Project>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepPolicy {
    /// The policy file's name, as the client gave it (for messages and the start record).
    pub source: String,
    /// The effective policy (mode as applied), re-validated by the daemon.
    pub yaml: String,
    /// Registry hosts the client's package managers named (it is the caller's own policy).
    #[serde(default)]
    pub registries: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub registry_sources: Vec<crate::probe::RegistrySource>,
    /// Proxies of the caller's environment and package managers (`crate::proxies`).
    #[serde(default)]
    pub proxy_sources: Vec<crate::proxies::ProxySource>,
    /// Which protected variables are a package manager's own credential for one of its
    /// registries (from the caller's npmrc files; `send` events carry it as `credential_of`).
    #[serde(default)]
    pub credentials: Vec<StepCredential>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepCredential {
    pub variable: String,
    pub manager: String,
    pub host: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum Reply {
    /// The job exists and its tables are written: the process may exec.
    Ready {
        job: String,
        log: String,
        nested_in: Option<String>,
    },
    Refused {
        error: String,
    },
    Event {
        event: Box<Event>,
    },
    /// The job is closed out. `exit_code`: the first process's, as the kernel saw it;
    /// `verdict`: 77/78 when enforce mode fails the step.
    Done {
        exit_code: Option<i32>,
        verdict: Option<i32>,
    },
}

fn line(r: &Reply) -> Vec<u8> {
    let mut v =
        serde_json::to_vec(r).unwrap_or_else(|e| format!("{{\"msg\":\"refused\",\"error\":\"{e}\"}}").into_bytes());
    v.push(b'\n');
    v
}

#[derive(Serialize)]
struct EventOut<'a> {
    msg: &'static str,
    event: &'a Event,
}

// ============================================================================ daemon side

/// A connection whose request has been read.
pub struct Incoming {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
    uid: u32,
    gid: u32,
    pid: Option<i32>,
    pidfd: std::io::Result<OwnedFd>,
    request: Result<String, StepError>,
}

struct StepJob {
    kid: u32,
    root: u32,
    pidfd: OwnedFd,
    out: Outbox,
    outer: Option<String>,
    opened: Instant,
    root_gone: Option<Instant>,
}

#[derive(Default)]
pub struct Steps {
    live: BTreeMap<String, StepJob>,
    next: u32,
    pending: Arc<AtomicUsize>,
}

impl Steps {
    pub fn is_step(&self, id: &str) -> bool {
        self.live.contains_key(id)
    }

    /// The job that encloses the step job with kernel id `kid`, if it is a nested step.
    pub fn outer_of_kernel(&self, kid: u32) -> Option<String> {
        self.live.values().find(|s| s.kid == kid).and_then(|s| s.outer.clone())
    }

    fn outer_of(&self, id: &str) -> Option<String> {
        self.live.get(id).and_then(|s| s.outer.clone())
    }
}

/// Bind the step socket: mode 0666 (any local user), or 0660 with the configured group.
pub fn bind(cfg: &StepsConfig) -> Result<tokio::net::UnixListener, super::DaemonError> {
    use std::os::unix::fs::PermissionsExt as _;

    use crate::error::Doing as _;
    let path = &cfg.socket;
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).doing(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .doing(|| format!("cannot set the mode of {}", dir.display()))?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(super::DaemonError::SocketInUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).doing(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    // No moment when others than root may connect: bound 0600, then opened up.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let l = tokio::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let l = l.doing(|| format!("cannot listen on step socket {}", path.display()))?;
    let mode = match &cfg.group {
        Some((_, gid)) => {
            std::os::unix::fs::lchown(path, Some(0), Some(*gid))
                .doing(|| format!("cannot give {} to its group", path.display()))?;
            0o660
        }
        None => 0o666,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .doing(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(l)
}

fn peer_pidfd(fd: i32) -> std::io::Result<OwnedFd> {
    let mut pidfd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `pidfd`.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, SO_PEERPIDFD, (&raw mut pidfd).cast(), &mut len) };
    if r != 0 || pidfd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel gave us this new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(pidfd) })
}

/// The pid a pidfd refers to (None: the process has exited).
fn pidfd_pid(fd: &OwnedFd) -> Option<i32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    let pid: i32 = info.lines().find_map(|l| l.strip_prefix("Pid:"))?.trim().parse().ok()?;
    (pid > 0).then_some(pid)
}

/// Whether the process of a pidfd is still running (a pidfd is readable once it exited).
fn pidfd_alive(fd: &OwnedFd) -> bool {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, no wait.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r == 0
}

/// A new connection: its peer is taken now (SO_PEERPIDFD at accept), its request line is read
/// on a task (bounded in size and time), then handed to the daemon's loop.
pub fn accept(steps: &Steps, stream: tokio::net::UnixStream, to_daemon: mpsc::UnboundedSender<Incoming>) {
    let pending = steps.pending.clone();
    if pending.load(Ordering::Relaxed) >= MAX_PENDING {
        return; // dropped: too many connections that have not sent their request
    }
    pending.fetch_add(1, Ordering::Relaxed);
    let cred = stream.peer_cred();
    let pidfd = peer_pidfd(stream.as_raw_fd());
    tokio::spawn(async move {
        let (r, write) = stream.into_split();
        let mut read = BufReader::new(r);
        let request = match tokio::time::timeout(REQUEST_TIMEOUT, read_line(&mut read, MAX_REQUEST_BYTES)).await {
            Ok(Ok(Some(l))) => Ok(l),
            Ok(Ok(None)) => Err(StepError::Closed),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StepError::Timeout(REQUEST_TIMEOUT.as_secs())),
        };
        pending.fetch_sub(1, Ordering::Relaxed);
        let (uid, gid, pid) = match &cred {
            Ok(c) => (c.uid(), c.gid(), c.pid()),
            Err(_) => (u32::MAX, u32::MAX, None),
        };
        let _ = to_daemon.send(Incoming { read, write, uid, gid, pid, pidfd, request });
    });
}

async fn read_line(r: &mut BufReader<OwnedReadHalf>, max: usize) -> Result<Option<String>, StepError> {
    let mut buf = Vec::new();
    loop {
        let chunk = r.fill_buf().await.map_err(StepError::Read)?;
        if chunk.is_empty() {
            return Ok(if buf.is_empty() { None } else { Some(String::from_utf8_lossy(&buf).into_owned()) });
        }
        if let Some(i) = chunk.iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(&chunk[..i]);
            r.consume(i + 1);
            return String::from_utf8(buf).map(Some).map_err(|_| StepError::NotUtf8);
        }
        let n = chunk.len();
        buf.extend_from_slice(chunk);
        r.consume(n);
        if buf.len() > max {
            return Err(StepError::TooLong(max));
        }
    }
}

/// A refusal, written on its own task; the connection closes after it.
fn refuse(mut write: OwnedWriteHalf, error: StepError) {
    let error = error.to_string();
    tracing::warn!("step refused: {}", crate::report::safe(&error));
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = write.write_all(&line(&Reply::Refused { error })).await;
            let _ = write.shutdown().await;
        })
        .await;
    });
}

/// The lines waiting for one step's client, bounded in messages (STREAM_QUEUE) and bytes
/// (STREAM_QUEUE_BYTES). Every line to the client goes through it (ready, events, refusals,
/// done), so the bytes are counted in one place: in at `send`, out at [`Inbox::recv`]. A line
/// over the bound cuts the client off: the connection closes without `done`, so it cannot take
/// a partial stream for the whole; the job and its log go on.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    broken: Arc<AtomicBool>,
}

/// The writer's end of an [`Outbox`].
struct Inbox {
    rx: mpsc::Receiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    broken: Arc<AtomicBool>,
}

/// An [`Outbox`] that does not keep the connection open (the reader of further requests).
struct WeakOutbox {
    tx: mpsc::WeakSender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    broken: Arc<AtomicBool>,
}

#[derive(Debug, PartialEq)]
enum Sent {
    Queued,
    /// Over the bound: the client is cut off.
    CutOff,
    /// The connection is gone.
    Closed,
}

fn outbox() -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
    let queued = Arc::new(AtomicUsize::new(0));
    let broken = Arc::new(AtomicBool::new(false));
    (Outbox { tx, queued: queued.clone(), broken: broken.clone() }, Inbox { rx, queued, broken })
}

impl Outbox {
    fn send(&self, bytes: Vec<u8>) -> Sent {
        if self.broken.load(Ordering::Relaxed) {
            return Sent::CutOff;
        }
        let len = bytes.len();
        if self.queued.load(Ordering::Relaxed) + len > STREAM_QUEUE_BYTES {
            self.broken.store(true, Ordering::Relaxed);
            return Sent::CutOff;
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        match self.tx.try_send(bytes) {
            Ok(()) => Sent::Queued,
            Err(e) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                match e {
                    mpsc::error::TrySendError::Full(_) => {
                        self.broken.store(true, Ordering::Relaxed);
                        Sent::CutOff
                    }
                    mpsc::error::TrySendError::Closed(_) => Sent::Closed,
                }
            }
        }
    }

    fn is_cut_off(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    fn downgrade(&self) -> WeakOutbox {
        WeakOutbox { tx: self.tx.downgrade(), queued: self.queued.clone(), broken: self.broken.clone() }
    }
}

impl WeakOutbox {
    fn upgrade(&self) -> Option<Outbox> {
        Some(Outbox { tx: self.tx.upgrade()?, queued: self.queued.clone(), broken: self.broken.clone() })
    }
}

impl Inbox {
    /// The next line for the client; None once every sender is gone or the client is cut off.
    async fn recv(&mut self) -> Option<Vec<u8>> {
        if self.broken.load(Ordering::Relaxed) {
            return None;
        }
        let b = self.rx.recv().await?;
        self.queued.fetch_sub(b.len(), Ordering::Relaxed);
        (!self.broken.load(Ordering::Relaxed)).then_some(b)
    }
}

/// The stream of one step job's events to its client: never blocks the daemon (a client that
/// does not keep up is cut off, see [`Outbox`]).
struct StepStream {
    out: Option<Outbox>,
    job: String,
}

impl StepStream {
    fn send(&mut self, bytes: Vec<u8>) {
        let Some(out) = &self.out else { return };
        match out.send(bytes) {
            Sent::Queued => {}
            Sent::CutOff => {
                tracing::warn!(job = %self.job, "the step's client does not read its events: stream cut off (the job's log is complete)");
                self.out = None;
            }
            Sent::Closed => self.out = None,
        }
    }
}

impl Sink for StepStream {
    fn write(&mut self, e: &Event) -> Result<(), crate::pipeline::PipelineError> {
        if self.out.is_some() {
            let mut v = serde_json::to_vec(&EventOut { msg: "event", event: e })?;
            v.push(b'\n');
            self.send(v);
        }
        Ok(())
    }
}

impl Daemon {
    /// A step request read from the step socket: open its job or refuse it.
    pub(super) fn open_step(&mut self, inc: Incoming) {
        let Incoming { read, write, uid, gid, pid, pidfd, request } = inc;
        let req = match request {
            Ok(r) => r,
            Err(e) => return refuse(write, e),
        };
        let (out, inbox) = outbox();
        let stream = StepStream { out: Some(out.clone()), job: String::new() };
        match self.try_open_step(&req, uid, gid, pid, pidfd, stream, out.clone()) {
            Ok((ready, start)) => {
                out.send(line(&ready));
                if let Ok(mut v) = serde_json::to_vec(&EventOut { msg: "event", event: &start }) {
                    v.push(b'\n');
                    out.send(v);
                }
                tokio::spawn(refuse_further(read, out.downgrade()));
                tokio::spawn(write_stream(write, inbox));
            }
            Err(e) => refuse(write, e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn try_open_step(
        &mut self,
        req: &str,
        uid: u32,
        gid: u32,
        pid: Option<i32>,
        pidfd: std::io::Result<OwnedFd>,
        stream: StepStream,
        out: Outbox,
    ) -> Result<(Reply, Event), StepError> {
        let r: OpenStep = serde_json::from_str(req).map_err(StepError::BadRequest)?;
        if r.op != "open" {
            return Err(StepError::UnknownOp(r.op));
        }
        if r.version != PROTOCOL_VERSION {
            return Err(StepError::Protocol(r.version));
        }
        if r.command.len() > 4096
            || r.resolvers.len() > 64
            || r.policy.as_ref().is_some_and(|p| p.credentials.len() > 64)
        {
            return Err(StepError::TooBig);
        }
        let max = self.cfg.steps.as_ref().map(|s| s.max_steps).unwrap_or(0);
        if self.steps.live.len() >= max {
            return Err(StepError::Busy(max));
        }
        let pid = pid.ok_or(StepError::NoPid)?;
        let pidfd = pidfd.map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => StepError::Gone(pid),
            _ => StepError::NoPidfd(e),
        })?;
        if pidfd_pid(&pidfd) != Some(pid) || !pidfd_alive(&pidfd) {
            return Err(StepError::Gone(pid));
        }
        let pid = pid as u32;
        let ppid = crate::procfs::Stat::of(pid).map_or(0, |s| s.ppid);
        // Nested: the enclosing job's tables keep applying (intersection).
        let current = self.sensor.watched_info(pid);
        let outer = match current {
            Some(info) if info.job != JOB_NONE => match self.by_kernel.get(&info.job) {
                Some(id) => Some(id.clone()),
                None => return Err(StepError::UnknownKernelJob(info.job)),
            },
            _ => None,
        };
        // The step's own policy, checked like a file given to `watcher run`.
        let resolvers = if r.resolvers.is_empty() { self.resolvers.clone() } else { r.resolvers.clone() };
        let (prepared, own_tables) = match &r.policy {
            None => (
                crate::session::Prepared {
                    policy: None,
                    registries: Default::default(),
                    registry_sources: Vec::new(),
                    proxy_sources: Vec::new(),
                    secrets: crate::secrets::SecretSet::default(),
                },
                KernelTables { seed: self.seed, ..Default::default() },
            ),
            Some(p) => {
                let pol = crate::policy::parse_str(&p.source, &p.yaml)?
                    .with_proxies(&crate::proxies::addresses(&p.proxy_sources));
                let hosts: Vec<String> = p.registries.values().flatten().cloned().collect();
                let tables = crate::policy::kernel::compile(&pol, &hosts, &resolvers, self.seed)?;
                (
                    crate::session::Prepared {
                        policy: Some(pol),
                        registries: p.registries.clone(),
                        registry_sources: p.registry_sources.clone(),
                        proxy_sources: p.proxy_sources.clone(),
                        secrets: crate::secrets::SecretSet::default(),
                    },
                    tables,
                )
            }
        };
        let tables = match &outer {
            Some(o) => {
                let outer_tables =
                    self.jobs.get(o).and_then(|j| j.policy.as_ref()).map(|p| p.tables.clone()).unwrap_or_default();
                intersect(&outer_tables, &own_tables)?
            }
            None => own_tables,
        };
        // A kernel job id of its own: bit 29, never a pid-named (< 2^22) or cgroup (bit 30) job.
        let kid = loop {
            self.steps.next = self.steps.next.wrapping_add(1);
            let k = JOB_DAEMON_BIT | 0x2000_0000 | (self.steps.next % 0x1fff_ffff);
            if !self.by_kernel.contains_key(&k) {
                break k;
            }
        };
        self.sensor.apply_policy(kid, &tables).map_err(StepError::Tables)?;
        let undo = |d: &mut Daemon, tables: &KernelTables| {
            match current {
                Some(info) => {
                    let _ = d.sensor.set_watched(pid, info);
                }
                None => {
                    let _ = d.sensor.unwatch_pid(pid);
                }
            }
            let _ = d.sensor.remove_job(kid, tables);
        };
        let mut info = current.unwrap_or(watcher_common::ProcInfo {
            ppid,
            job: 0,
            exit_code: 0,
            code_known: 0,
            flags: 0,
            _pad: 0,
        });
        info.job = kid;
        if let Err(e) = self.sensor.set_watched(pid, info) {
            undo(self, &tables);
            return Err(StepError::Watch(e));
        }
        // The pid was that process's all along only if it still runs now.
        if !pidfd_alive(&pidfd) {
            undo(self, &tables);
            return Err(StepError::ExitedDuringSetup(pid));
        }
        let policy = Rc::new(LoadedPolicy {
            path: r.policy.as_ref().map(|p| PathBuf::from(&p.source)).unwrap_or_default(),
            prepared,
            tables,
        });
        let identity = Identity {
            id: format!("step={pid}.{kid:x}"),
            pipeline: policy.prepared.policy.as_ref().map(|p| p.pipeline.clone()).unwrap_or_default(),
        };
        let ids = Ids { kid, pid, ppid, uid, gid };
        let written = policy.tables.clone();
        let (id, start) = match self.create_step_job(&identity, &r, policy, resolvers, ids, outer.as_deref(), stream) {
            Ok(v) => v,
            Err(e) => {
                undo(self, &written);
                return Err(StepError::Job(Box::new(e)));
            }
        };
        if let Some(o) = &outer
            && let Some(j) = self.jobs.get_mut(o)
        {
            j.live.remove(&pid);
        }
        let job = &self.jobs[&id];
        tracing::info!(job = %job.name, pid, uid, nested_in = %outer.as_deref().unwrap_or("-"), mode = %job.mode(),
            log = %job.log_path.display(), "step started");
        let ready =
            Reply::Ready { job: job.name.clone(), log: job.log_path.display().to_string(), nested_in: outer.clone() };
        self.steps
            .live
            .insert(id, StepJob { kid, root: pid, pidfd, out, outer, opened: Instant::now(), root_gone: None });
        Ok((ready, start))
    }

    #[allow(clippy::too_many_arguments)]
    fn create_step_job(
        &mut self,
        identity: &Identity,
        r: &OpenStep,
        policy: Rc<LoadedPolicy>,
        resolvers: Vec<IpAddr>,
        ids: Ids,
        outer: Option<&str>,
        mut stream: StepStream,
    ) -> Result<(String, Event), super::DaemonError> {
        let Ids { kid, pid, ppid, uid, gid } = ids;
        let stem = format!("step-{uid}-{pid}");
        let mut name = stem.clone();
        let mut n = 2;
        while self.used_names.contains(&name) || self.cfg.log_dir.join(format!("{name}.jsonl")).exists() {
            name = format!("{stem}.{n}");
            n += 1;
        }
        let mut start =
            jobs::start_record(identity, r.command.clone(), self.sensor.states().to_vec(), resolvers, Some(&policy));
        start.project = r.project.clone();
        if policy.prepared.policy.is_none() {
            start.policy = None;
            start.policy_yaml = None;
        }
        if let Some(j) = &mut start.job {
            j.variables.insert("uid".into(), uid.to_string());
            j.variables.insert("gid".into(), gid.to_string());
            if let Some(o) = outer {
                j.variables.insert("nested_in".into(), o.to_string());
            }
        }
        let path = self.cfg.log_dir.join(format!("{name}.jsonl"));
        let secrets = super::job_secrets::JobSecrets::new(policy.prepared.policy.as_ref())?;
        let engine = policy.prepared.policy.clone().map(Engine::new);
        let mut start = Event::Start(start);
        // A placeholder log until the start record is redacted with the job's own values.
        let credentials = r
            .policy
            .iter()
            .flat_map(|p| &p.credentials)
            .map(|c| crate::credentials::Credential {
                variable: c.variable.clone(),
                manager: c.manager.clone(),
                host: c.host.clone(),
            })
            .collect();
        let pipeline = crate::pipeline::Pipeline::new(
            Collector::new(clock_offset_ns()).with_credentials(credentials),
            crate::pipeline::Enrichment { cwd: true, root: Some((pid, ppid)) },
            engine,
            Report::default(),
        );
        let mut job = Job {
            identity: identity.clone(),
            name: name.clone(),
            policy: Some(policy),
            kernel_ids: Default::default(),
            pipeline,
            log_path: path.clone(),
            live: Default::default(),
            root_pid: pid,
            exit_code: None,
            idle_since: None,
            started: crate::session::now_ts(),
            cgroup: None,
            secrets,
        };
        // Its values come from its own environment (the command's, untouched by the client).
        job.learn_environ(pid, None);
        crate::redact::event(job.pipeline.collector_mut().secrets(), &mut start);
        let log = RotatingLog::create(&path, start.clone(), self.cfg.log_max_bytes, self.cfg.log_keep)?;
        let pipeline = std::mem::replace(
            &mut job.pipeline,
            crate::pipeline::Pipeline::new(Collector::new(0), Default::default(), None, Report::default()),
        );
        stream.job = name.clone();
        job.pipeline = pipeline
            .with_sink(log)
            .with_sink(crate::pipeline::sink::DaemonLines { job: name.clone() })
            .with_sink(stream);
        // The engine and the report learn the step's registries and resolvers from its start
        // record, as in `run` (the log writes it itself).
        if let Some(e) = job.pipeline.engine_mut() {
            e.process(&start);
        }
        job.pipeline.report.add(&start);
        job.started = match &start {
            Event::Start(s) => s.ts,
            _ => job.started,
        };
        job.kernel_ids.insert(kid);
        self.used_names.insert(name);
        self.by_kernel.insert(kid, identity.id.clone());
        self.counters.jobs_started += 1;
        self.jobs.insert(identity.id.clone(), job);
        Ok((identity.id.clone(), start))
    }

    /// Records of a nested step are also the enclosing jobs' (their logs stay complete).
    pub(super) fn feed_outer(&mut self, kid: u32, rec: &crate::record::Record) -> Result<(), super::DaemonError> {
        let mut next = self.steps.outer_of_kernel(kid);
        let mut depth = 0;
        while let Some(id) = next {
            if let Some(job) = self.jobs.get_mut(&id) {
                let alerts = job.record(rec.clone())?;
                self.counters.alerts += alerts.len() as u64;
            }
            next = self.steps.outer_of(&id);
            depth += 1;
            if depth > 64 {
                break;
            }
        }
        Ok(())
    }

    /// Step jobs whose first process has exited: what is left of them is killed, then the job
    /// is closed out and its client gets the verdict.
    pub(super) fn reap_steps(&mut self) -> Result<(), super::DaemonError> {
        let mut done = Vec::new();
        let watched = if self.steps.live.values().any(|s| s.root_gone.is_some() || !pidfd_alive(&s.pidfd)) {
            self.sensor.watched_entries()
        } else {
            Vec::new()
        };
        for (id, s) in self.steps.live.iter_mut() {
            let Some(job) = self.jobs.get(id) else {
                done.push(id.clone());
                continue;
            };
            if s.root_gone.is_none()
                && job.live.is_empty()
                && s.opened.elapsed() > EXEC_TIMEOUT
                && pidfd_alive(&s.pidfd)
            {
                tracing::warn!(job = %job.name, pid = s.root, "the step's process did not exec in time: killing it");
                kill(s.root);
            }
            if s.root_gone.is_none() && !pidfd_alive(&s.pidfd) {
                s.root_gone = Some(Instant::now());
            }
            let Some(gone) = s.root_gone else { continue };
            // Nothing of a step outlives it (as with `watcher run`).
            for (p, info) in &watched {
                if info.job == s.kid && *p != s.root {
                    kill(*p);
                }
            }
            let root_logged = job.exit_code.is_some() || !job.live.contains(&s.root);
            if (job.live.is_empty() && root_logged) || gone.elapsed() > END_TIMEOUT {
                done.push(id.clone());
            }
        }
        for id in done {
            let Some(s) = self.steps.live.remove(&id) else { continue };
            let verdict = match self.close_job(&id) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!("closing step job {id}: {}", crate::error::chain(&e));
                    None
                }
            };
            if !s.out.is_cut_off() {
                let (exit_code, verdict) = verdict.unwrap_or((None, None));
                s.out.send(line(&Reply::Done { exit_code, verdict }));
            }
        }
        Ok(())
    }
}

struct Ids {
    kid: u32,
    pid: u32,
    ppid: u32,
    uid: u32,
    gid: u32,
}

fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
}

async fn write_stream(mut w: OwnedWriteHalf, mut inbox: Inbox) {
    while let Some(b) = inbox.recv().await {
        if w.write_all(&b).await.is_err() {
            return;
        }
    }
    // Cut off: the connection closes without `done`.
    let _ = w.shutdown().await;
}

/// Every further line from a step's client is refused: a job cannot be changed, paused or
/// ended once started, by anyone.
async fn refuse_further(mut read: BufReader<OwnedReadHalf>, out: WeakOutbox) {
    loop {
        match read_line(&mut read, 64 << 10).await {
            Ok(Some(l)) if l.trim().is_empty() => continue,
            Ok(Some(_)) => {
                let Some(out) = out.upgrade() else { return };
                out.send(line(&Reply::Refused {
                    error: "a step's job cannot be changed, paused or ended once started: request ignored".into(),
                }));
            }
            _ => return,
        }
    }
}

// ============================================================================ nesting

fn ranges(p: &PortSet) -> Vec<(u32, u32)> {
    if p.count == 0 {
        return vec![(0, 65535)];
    }
    p.ranges[..(p.count as usize).min(MAX_PORT_RANGES)].iter().map(|r| (r >> 16, r & 0xffff)).collect()
}

fn normalise(mut v: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    v.sort();
    let mut out: Vec<(u32, u32)> = Vec::new();
    for (lo, hi) in v {
        match out.last_mut() {
            Some(last) if lo <= last.1 + 1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

fn meet(a: &[(u32, u32)], b: &[(u32, u32)]) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for &(alo, ahi) in a {
        for &(blo, bhi) in b {
            let (lo, hi) = (alo.max(blo), ahi.min(bhi));
            if lo <= hi {
                out.push((lo, hi));
            }
        }
    }
    normalise(out)
}

/// None: no port at all (an empty set cannot be written: `count 0` means any port).
fn port_set(v: &[(u32, u32)]) -> Result<Option<PortSet>, IntersectError> {
    if v.is_empty() {
        return Ok(None);
    }
    if v == [(0, 65535)] {
        return Ok(Some(PortSet::default()));
    }
    if v.len() > MAX_PORT_RANGES {
        return Err(IntersectError::PortRanges);
    }
    let mut p = PortSet::default();
    for (i, (lo, hi)) in v.iter().enumerate() {
        p.ranges[i] = lo << 16 | hi;
    }
    p.count = v.len() as u32;
    Ok(Some(p))
}

fn covers(outer: &([u8; 16], u32), inner: &([u8; 16], u32)) -> bool {
    if outer.1 > inner.1 {
        return false;
    }
    let a = u128::from_be_bytes(outer.0);
    let b = u128::from_be_bytes(inner.0);
    let mask = if outer.1 == 0 { 0 } else { u128::MAX << (128 - outer.1.min(128)) };
    a & mask == b & mask
}

/// Ports the longest entry of `nets` covering `c` allows (LPM, as the kernel looks up).
fn lpm_ports(nets: &[([u8; 16], u32, PortSet)], c: &([u8; 16], u32)) -> Option<Vec<(u32, u32)>> {
    nets.iter().filter(|n| covers(&(n.0, n.1), c)).max_by_key(|n| n.1).map(|n| ranges(&n.2))
}

fn mask_ports(t: &KernelTables, mask: u64) -> Vec<(u32, u32)> {
    let mut v = Vec::new();
    for (i, p) in t.host_ports.iter().enumerate() {
        if mask & (1u64 << i) != 0 {
            v.extend(ranges(p));
        }
    }
    normalise(v)
}

/// The kernel tables of a nested step: what both the enclosing job's tables and the step's own
/// allow, never more. An enforcing side's tables bound the other's; a side that only audits
/// bounds nothing in the kernel (its engine judges the events). Exact for addresses (every
/// prefix of either side is looked up in both, longest match as the kernel does) and
/// resolvers; for host names, an entry of the step is kept only where the enclosing job has
/// the same name or the same `*.` wildcard (a name the enclosing job allows only through a
/// wider wildcard is denied to the nested step: narrower than both, never wider). Executable
/// denials and job flags are the union.
pub fn intersect(outer: &KernelTables, inner: &KernelTables) -> Result<KernelTables, IntersectError> {
    if outer.job_flags & JOB_ENFORCE == 0 {
        return Ok(inner.clone());
    }
    if inner.job_flags & JOB_ENFORCE == 0 {
        return Ok(outer.clone());
    }
    if outer.seed != inner.seed {
        return Err(IntersectError::Seed);
    }
    let mut t = KernelTables { job_flags: outer.job_flags | inner.job_flags, seed: outer.seed, ..Default::default() };
    t.resolvers = inner.resolvers.iter().filter(|r| outer.resolvers.contains(r)).cloned().collect();
    t.deputies = inner.deputies.iter().filter(|d| outer.deputies.contains(d)).cloned().collect();
    t.exec_rules = outer.exec_rules.clone();
    for (k, f) in &inner.exec_rules {
        match t.exec_rules.iter_mut().find(|(n, _)| n == k) {
            Some((_, g)) => *g |= *f,
            None => t.exec_rules.push((*k, *f)),
        }
    }
    let mut candidates: Vec<([u8; 16], u32)> = outer.nets.iter().chain(&inner.nets).map(|n| (n.0, n.1)).collect();
    candidates.sort();
    candidates.dedup();
    for c in candidates {
        if let (Some(o), Some(i)) = (lpm_ports(&outer.nets, &c), lpm_ports(&inner.nets, &c))
            && let Some(p) = port_set(&meet(&o, &i))?
        {
            t.nets.push((c.0, c.1, p));
        }
    }
    for (own, other, out) in [(&inner.names, &outer.names, 0), (&inner.suffixes, &outer.suffixes, 1)] {
        for (h, mi) in own {
            let Some((_, mo)) = other.iter().find(|(k, _)| k == h) else { continue };
            let mut mask = mi & mo & DNS_MASK_LOOKUP;
            if mi & !DNS_MASK_LOOKUP != 0 && mo & !DNS_MASK_LOOKUP != 0 {
                let ports = meet(&mask_ports(inner, *mi), &mask_ports(outer, *mo));
                if let Some(p) = port_set(&ports)? {
                    if t.host_ports.len() >= MAX_HOST_ENTRIES as usize {
                        return Err(IntersectError::Hosts);
                    }
                    mask |= 1u64 << t.host_ports.len();
                    t.host_ports.push(p);
                }
            }
            if mask != 0 {
                if out == 0 { t.names.push((*h, mask)) } else { t.suffixes.push((*h, mask)) }
            }
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> (StepStream, Outbox, Inbox) {
        let (out, inbox) = outbox();
        (StepStream { out: Some(out.clone()), job: "t".into() }, out, inbox)
    }

    /// A client its own step stopped (SIGSTOP) reads nothing while the job's events keep
    /// coming: the daemon holds at most STREAM_QUEUE_BYTES for it, then cuts it off (its
    /// connection closes without `done`, so it reports the step incomplete).
    #[tokio::test]
    async fn a_client_that_does_not_read_costs_the_daemon_a_bounded_queue() {
        let (mut s, out, mut inbox) = stream();
        // Exec events with long argv are ~4 KiB of JSON: far fewer than STREAM_QUEUE of them
        // fill the byte bound.
        let event = vec![b'x'; 4096];
        let mut sent = 0;
        while s.out.is_some() && sent < STREAM_QUEUE {
            s.send(event.clone());
            sent += 1;
        }
        assert!(s.out.is_none() && out.is_cut_off(), "never cut off after {sent} events");
        let mut held = 0;
        while let Ok(b) = inbox.rx.try_recv() {
            held += b.len();
        }
        assert!(held <= STREAM_QUEUE_BYTES, "{held} bytes queued for a client that does not read");
        assert!(held > STREAM_QUEUE_BYTES - event.len(), "cut off early: {held} bytes");
        // The writer sends nothing more: the connection closes without `done`.
        assert_eq!(out.send(b"done\n".to_vec()), Sent::CutOff);
        assert_eq!(inbox.recv().await, None);
    }

    /// A client that keeps up is never cut off, however much it is sent in all, and whatever
    /// else goes to it beside the events (ready, refusals of further requests, done): every
    /// line is counted in and out in one place. (Refusals once went round the count, so their
    /// bytes were taken off a count they were never put on; the count wrapped and a reading
    /// client was cut off at its next event.)
    #[tokio::test]
    async fn a_client_that_reads_keeps_its_stream() {
        let (mut s, out, mut inbox) = stream();
        let refusals = out.downgrade();
        assert_eq!(out.send(b"ready\n".to_vec()), Sent::Queued);
        assert_eq!(refusals.upgrade().unwrap().send(b"refused\n".to_vec()), Sent::Queued);
        assert_eq!(inbox.recv().await.unwrap(), b"ready\n");
        assert_eq!(inbox.recv().await.unwrap(), b"refused\n");
        let event = vec![b'x'; 4096];
        for _ in 0..(4 * STREAM_QUEUE_BYTES / event.len()) {
            s.send(event.clone());
            assert_eq!(inbox.recv().await.unwrap().len(), event.len());
        }
        assert!(s.out.is_some() && !out.is_cut_off());
        assert_eq!(out.queued.load(Ordering::Relaxed), 0);
        assert_eq!(out.send(b"done\n".to_vec()), Sent::Queued);
        assert_eq!(inbox.recv().await.unwrap(), b"done\n");
        // Once every sender is gone the writer ends (and shuts the connection down).
        drop((s, out));
        assert!(refusals.upgrade().is_none());
        assert_eq!(inbox.recv().await, None);
    }

    fn tables(yaml: &str, hosts: &[&str]) -> KernelTables {
        let p = crate::policy::parse_str("t.yaml", yaml).unwrap();
        let hosts: Vec<String> = hosts.iter().map(|s| s.to_string()).collect();
        crate::policy::kernel::compile(&p, &hosts, &["127.0.0.53".parse().unwrap()], 9).unwrap()
    }

    fn net_ports(t: &KernelTables, ip: &str, port: u16) -> bool {
        let k = crate::policy::kernel::map_key(ip.parse().unwrap());
        t.nets.iter().filter(|n| covers(&(n.0, n.1), &(k, 128))).max_by_key(|n| n.1).is_some_and(|n| n.2.contains(port))
    }

    fn name_ports(t: &KernelTables, name: &str, port: u16) -> (bool, bool) {
        let h = watcher_common::name_hash(9, name).unwrap();
        let mut mask = t.names.iter().find(|(k, _)| *k == h).map(|e| e.1).unwrap_or(0);
        // every suffix, as the kernel looks them up
        let mut rest = name;
        while let Some((_, s)) = rest.split_once('.') {
            let hs = watcher_common::name_hash(9, s).unwrap();
            mask |= t.suffixes.iter().find(|(k, _)| *k == hs).map(|e| e.1).unwrap_or(0);
            rest = s;
        }
        let lookup = mask & DNS_MASK_LOOKUP != 0;
        let port_ok = (0..t.host_ports.len()).any(|i| mask & (1 << i) != 0 && t.host_ports[i].contains(port));
        (lookup, port_ok)
    }

    #[test]
    fn a_nested_step_never_gets_more_than_its_enclosing_job() {
        let outer = tables(
            "version: 1\npipeline: o\nmode: enforce\negress:\n  allow:\n    - host: a.test\n      ports: [443]\n    - host: b.test\n    - cidr: 10.1.0.0/16\n      ports: [80-90]\n    - ip: 10.2.0.1\nexec:\n  deny: [nc]\n",
            &["reg.test"],
        );
        let inner = tables(
            "version: 1\npipeline: i\nmode: enforce\negress:\n  allow:\n    - host: a.test\n    - host: c.test\n    - cidr: 10.1.2.0/24\n      ports: [85-100]\n    - cidr: 10.0.0.0/8\n      ports: [22]\nexec:\n  deny: [wget]\n",
            &["reg.test"],
        );
        let t = intersect(&outer, &inner).unwrap();
        assert_eq!(t.job_flags & JOB_ENFORCE, JOB_ENFORCE);
        // a.test: the outer's port 443 only; c.test: the outer does not allow it; b.test: the
        // inner does not; the registry both have: any port.
        assert_eq!(name_ports(&t, "a.test", 443), (true, true));
        assert_eq!(name_ports(&t, "a.test", 80), (true, false));
        assert_eq!(name_ports(&t, "c.test", 443), (false, false));
        assert_eq!(name_ports(&t, "b.test", 443), (false, false));
        assert_eq!(name_ports(&t, "reg.test", 8443), (true, true));
        // Addresses: both sides' longest matches, ports intersected.
        assert!(net_ports(&t, "10.1.2.3", 85) && net_ports(&t, "10.1.2.3", 90));
        assert!(!net_ports(&t, "10.1.2.3", 80), "the inner /24 does not allow 80");
        assert!(!net_ports(&t, "10.1.2.3", 95), "the outer /16 does not allow 95");
        assert!(!net_ports(&t, "10.1.3.3", 85), "the inner allows only 22 there");
        assert!(!net_ports(&t, "10.1.3.3", 22), "the outer allows only 80-90 there");
        assert!(
            net_ports(&t, "10.2.0.1", 22) && !net_ports(&t, "10.2.0.1", 80),
            "the outer's ip (any port) bounded by the inner's /8 (port 22): port 22 only"
        );
        assert!(!net_ports(&t, "10.3.0.1", 22), "the outer has nothing there");
        // Property: whatever the result allows, both sides allow.
        for ip in ["10.1.2.3", "10.1.3.3", "10.2.0.1", "10.3.0.1", "127.0.0.53"] {
            for port in [22, 53, 80, 85, 90, 95, 100, 443] {
                if net_ports(&t, ip, port) {
                    assert!(net_ports(&outer, ip, port) && net_ports(&inner, ip, port), "{ip}:{port}");
                }
            }
        }
        for name in ["a.test", "b.test", "c.test", "reg.test", "x.a.test"] {
            for port in [80, 443, 8443] {
                let (l, p) = name_ports(&t, name, port);
                let (lo, po) = name_ports(&outer, name, port);
                let (li, pi) = name_ports(&inner, name, port);
                assert!(!l || (lo && li), "{name} lookup");
                assert!(!p || (po && pi), "{name}:{port}");
            }
        }
        // Executable denials of both.
        let denied = |n: &str| {
            t.exec_rules
                .iter()
                .any(|(k, f)| k.starts_with(n.as_bytes()) && k[n.len()] == 0 && f & watcher_common::EXEC_DENY != 0)
        };
        assert!(denied("nc") && denied("wget"));
        assert_eq!(t.resolvers, inner.resolvers);
    }

    #[test]
    fn an_auditing_side_bounds_nothing_and_an_enforcing_one_everything() {
        let enforce = tables("version: 1\npipeline: o\nmode: enforce\negress:\n  allow:\n    - host: a.test\n", &[]);
        let audit = tables("version: 1\npipeline: i\nmode: audit\negress:\n  allow:\n    - host: b.test\n", &[]);
        assert_eq!(intersect(&enforce, &audit).unwrap(), enforce, "an auditing step keeps the enclosing tables");
        assert_eq!(intersect(&audit, &enforce).unwrap(), enforce);
    }

    #[test]
    fn the_request_refuses_unknown_fields_and_the_config_needs_allow() {
        let e = serde_json::from_str::<OpenStep>(r#"{"op":"open","version":1,"command":[],"pid":1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `pid`"), "{e}");
        let raw: RawSteps = serde_yaml::from_str("allow: false\n").unwrap();
        assert_eq!(StepsConfig::from_raw(raw, &|p| p).unwrap(), None);
        let raw: RawSteps = serde_yaml::from_str("allow: true\nsocket: s.sock\n").unwrap();
        let c = StepsConfig::from_raw(raw, &|p| PathBuf::from("/etc/watcher").join(p)).unwrap().unwrap();
        assert_eq!(c.socket, PathBuf::from("/etc/watcher/s.sock"));
        assert_eq!(c.max_steps, 64);
        let raw: RawSteps = serde_yaml::from_str("allow: true\ngroup: no-such-group-watcher\n").unwrap();
        assert!(StepsConfig::from_raw(raw, &|p| p).unwrap_err().to_string().contains("no-such-group-watcher"));
    }
}
