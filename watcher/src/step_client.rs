//! `watcher run` through a running daemon (no root needed): the client side of the step
//! protocol (see [`crate::daemon::steps`]). The client runs as the calling user: it reads the
//! policy and the package managers' configuration as that user, forks the process that will
//! run the command (that process connects to the daemon, so the daemon's peer credentials name
//! it, and waits), lets it exec only once the daemon has made it a job, then writes the live
//! lines, the `--log` file and the reports from the events the daemon streams, and exits with
//! the step's code. The daemon writes the job's own log whatever the client does.
use std::{
    io::{Read as _, Write as _},
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::process::{CommandExt as _, ExitStatusExt as _},
    },
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{io::AsyncBufReadExt as _, signal::unix::SignalKind};

use crate::{
    daemon::steps::{DEFAULT_STEP_SOCKET, OpenStep, PROTOCOL_VERSION, Reply, StepCredential, StepPolicy},
    error::Doing as _,
    exitcode,
    log::LogWriter,
    pipeline::sink::{LiveLines, Sink as _},
    report::Report,
    run::RunOptions,
    run_error::RunError,
};

/// The variable that names the daemon's step socket.
pub const SOCKET_ENV: &str = "WATCHER_SOCKET";
/// Bound of one message from the daemon.
const MAX_LINE: usize = 16 << 20;

/// Which step socket `watcher run` uses, if any: `WATCHER_SOCKET` when set, else the default
/// one when watcher is not root and a daemon listens there. None: run standalone.
pub fn socket_for_run() -> Option<PathBuf> {
    if let Some(s) = std::env::var_os(SOCKET_ENV).filter(|s| !s.is_empty()) {
        return Some(PathBuf::from(s));
    }
    let root = nix::unistd::geteuid().is_root();
    (!root && std::fs::symlink_metadata(DEFAULT_STEP_SOCKET).is_ok()).then(|| PathBuf::from(DEFAULT_STEP_SOCKET))
}

pub fn run(opts: RunOptions, socket: &Path) -> crate::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(RunError::from)?;
    Ok(rt.block_on(run_async(opts, socket))?)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), RunError> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).doing(|| "creating a pipe".into())?)
}

async fn run_async(opts: RunOptions, socket: &Path) -> Result<i32, RunError> {
    if opts.command.is_empty() {
        return Err(RunError::NoCommand);
    }
    if opts.user.is_some() {
        return Err(RunError::UserWithDaemon { socket: socket.to_path_buf() });
    }
    let policy = crate::session::load_policy(opts.policy.as_deref(), opts.mode)?;
    // The caller's own view: its package managers' configuration (registries, proxies).
    let discovery = crate::session::discover(&policy)?;
    crate::outfile::distinct(
        &opts.policy.iter().map(|p| ("policy", p.as_path())).collect::<Vec<_>>(),
        &opts
            .log
            .iter()
            .map(|p| ("event log", p.as_path()))
            .chain(opts.report.iter().map(|p| ("report", p.as_path())))
            .collect::<Vec<_>>(),
    )?;
    let mut log = match &opts.log {
        Some(p) => Some(LogWriter::create(p)?),
        None => None,
    };
    let report_files =
        opts.report.iter().map(|p| crate::outfile::create(p, "report")).collect::<Result<Vec<_>, _>>()?;
    let prepared = discovery.finish(policy)?;
    let policy = prepared.policy.clone();
    let credentials = crate::credentials::for_run(prepared.policy.as_ref(), &prepared.registries, &prepared.secrets);
    let request = OpenStep {
        op: "open".into(),
        version: PROTOCOL_VERSION,
        command: opts.command.iter().map(|a| crate::log::arg_for_log(a)).collect(),
        policy: policy.as_ref().map(|p| StepPolicy {
            source: p.source.clone(),
            yaml: p.to_yaml(),
            registries: prepared.registries.clone(),
            registry_sources: prepared.registry_sources.clone(),
            proxy_sources: prepared.proxy_sources.clone(),
            credentials: credentials
                .iter()
                .map(|c| StepCredential {
                    variable: c.variable.clone(),
                    manager: c.manager.clone(),
                    host: c.host.clone(),
                })
                .collect(),
        }),
        resolvers: crate::probe::system_resolvers(),
        project: crate::project::detect(),
    };
    let mut request = serde_json::to_vec(&request)?;
    request.push(b'\n');

    let addr = sockaddr(socket)?;
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let sock = unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).doing(|| "creating a socket".into()).map_err(RunError::from);
        }
        <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
    };
    let (ack_r, ack_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let tty = nix::unistd::isatty(std::io::stdin()).unwrap_or(false);

    // The command's process: connects (the daemon's peer), sends the request, waits for the
    // word, execs. Its environment is the caller's, untouched.
    let mut cmd = std::process::Command::new(&opts.command[0]);
    cmd.args(&opts.command[1..]).process_group(0);
    let (sfd, afd, gfd) = (sock.as_raw_fd(), ack_w.as_raw_fd(), go_r.as_raw_fd());
    // SAFETY: only async-signal-safe calls (connect, write, read, signal, tcsetpgrp, getpid)
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if libc::connect(sfd, (&raw const addr).cast(), len) != 0 {
                let err = std::io::Error::last_os_error();
                let code = err.raw_os_error().unwrap_or(0).to_ne_bytes();
                let msg = [b'E', code[0], code[1], code[2], code[3]];
                libc::write(afd, msg.as_ptr().cast(), msg.len());
                return Err(err);
            }
            let mut off = 0;
            while off < request.len() {
                let n = libc::write(sfd, request[off..].as_ptr().cast(), request.len() - off);
                if n <= 0 {
                    return Err(std::io::Error::last_os_error());
                }
                off += n as usize;
            }
            libc::write(afd, b"C".as_ptr().cast(), 1);
            let mut word = 0u8;
            if libc::read(gfd, (&raw mut word).cast(), 1) != 1 || word != b'G' {
                return Err(std::io::Error::other("the watcher daemon did not open the step"));
            }
            libc::close(sfd);
            if tty {
                let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                libc::tcsetpgrp(0, libc::getpid());
                libc::signal(libc::SIGTTOU, old);
            }
            Ok(())
        });
    }
    // The thread keeps the child's ends open until the child has exec'd or failed (they are
    // only duplicated into it at fork); then a dead child is seen as the end of the ack pipe.
    let spawner = std::thread::Builder::new().name("spawn".into()).spawn(move || {
        let r = cmd.spawn();
        drop((ack_w, go_r));
        r
    })?;
    let mut ack = std::fs::File::from(ack_r);
    let mut go = std::fs::File::from(go_w);
    let mut first = [0u8; 5];
    let n = ack.read(&mut first).unwrap_or(0);
    let not_reached = |why: String| RunError::NoDaemon { socket: socket.to_path_buf(), why };
    match (n, first[0]) {
        (1, b'C') => {}
        (5, b'E') => {
            let _ = spawner.join();
            let errno = i32::from_ne_bytes([first[1], first[2], first[3], first[4]]);
            return Err(not_reached(std::io::Error::from_raw_os_error(errno).to_string()));
        }
        _ => {
            let e = spawner.join().map_err(|_| RunError::ThreadPanicked("spawn"))?.err();
            return Err(not_reached(e.map(|e| e.to_string()).unwrap_or_else(|| "the step's process died".into())));
        }
    }
    // The connected socket, shared with the waiting process (which closes its copy at exec).
    let stream = std::os::unix::net::UnixStream::from(sock);
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    // Unbuffered, byte by byte: the events after it stay in the socket for the stream reader.
    let mut first_line = String::new();
    let got = read_first_line(&stream, &mut first_line);
    let ready: Result<(String, String, Option<String>), String> = match got {
        Ok(0) => Err("the daemon closed the connection".into()),
        Err(e) => Err(format!("no answer from the daemon: {e}")),
        Ok(_) => match serde_json::from_str::<Reply>(&first_line) {
            Ok(Reply::Ready { job, log, nested_in }) => Ok((job, log, nested_in)),
            Ok(Reply::Refused { error }) => {
                Err(format!("the daemon refused the step: {}", crate::report::safe(&error)))
            }
            Ok(_) => Err("unexpected first message from the daemon".into()),
            Err(e) => Err(format!("unexpected answer from the daemon: {e}")),
        },
    };
    let (job, daemon_log, nested_in) = match ready {
        Ok(r) => r,
        Err(e) => {
            let _ = go.write_all(b"N");
            drop(go);
            let _ = spawner.join();
            return Err(RunError::DaemonAnswer { socket: socket.to_path_buf(), why: e });
        }
    };
    let _ = go.write_all(b"G");
    drop(go);
    let mut pipe_report = Report { log: opts.log.as_ref().map(|p| p.display().to_string()), ..Default::default() };
    let mut live = LiveLines { quiet: opts.quiet };
    // Always (also with --quiet): where the daemon's own record of this step is.
    crate::say!(
        "watcher: daemon-backed step: job {job}{} (the daemon's log: {daemon_log})",
        nested_in.map(|n| format!(", nested in job {n} (its policy still applies)")).unwrap_or_default()
    );
    if !opts.quiet
        && let Some(p) = &policy
    {
        crate::say!("watcher: policy {} (pipeline {}), {} mode", p.source, p.pipeline, p.mode.as_str());
    }
    let child = match spawner.join().map_err(|_| RunError::ThreadPanicked("spawn"))? {
        Ok(c) => c,
        Err(error) => {
            let name = crate::report::safe(&crate::log::arg_for_log(&opts.command[0]));
            let err = crate::error::CommandError { name, error };
            crate::say!("watcher: {err}");
            return Ok(err.exit_code());
        }
    };
    let child_pid = child.id();
    let mut child = Some(child);
    let mut waiter = tokio::task::spawn_blocking(move || child.take().map(|mut c| c.wait()));

    // Signals to watcher go to the command (as standalone run does).
    let (sig_tx, mut sig_rx) = tokio::sync::mpsc::unbounded_channel::<i32>();
    for k in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
    ] {
        let mut s = tokio::signal::unix::signal(k).doing(|| "installing signal handlers".into())?;
        let tx = sig_tx.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                let _ = tx.send(k.as_raw_value());
            }
        });
    }
    let std_stream = stream;
    std_stream.set_read_timeout(None)?;
    std_stream.set_nonblocking(true)?;
    let mut lines = tokio::io::BufReader::with_capacity(1 << 16, tokio::net::UnixStream::from_std(std_stream)?);
    let mut buf = Vec::new();
    let mut status = None;
    let mut done: Option<(Option<i32>, Option<i32>)> = None;
    let mut eof = false;
    while status.is_none() || (done.is_none() && !eof) {
        tokio::select! {
            r = read_bounded(&mut lines, &mut buf), if done.is_none() && !eof => {
                let msg = match &r {
                    Ok(true) => Some(serde_json::from_slice::<Reply>(&buf)),
                    _ => None,
                };
                buf.clear();
                match (r, msg) {
                    (Ok(false), _) | (Ok(true), None) => eof = true,
                    (Ok(true), Some(msg)) => match msg {
                        Ok(Reply::Event { event }) => {
                            live.write(&event)?;
                            if let Some(l) = &mut log {
                                l.write(&event)?;
                            }
                            pipe_report.add(&event);
                        }
                        Ok(Reply::Done { exit_code, verdict }) => done = Some((exit_code, verdict)),
                        Ok(Reply::Refused { error }) => crate::say!("watcher: the daemon: {}", crate::report::safe(&error)),
                        Ok(Reply::Ready { .. }) => {}
                        Err(e) => {
                            crate::say!("watcher: unexpected message from the daemon ({e}); stopping to read");
                            eof = true;
                        }
                    },
                    (Err(e), _) => {
                        crate::say!("watcher: reading from the daemon: {e}");
                        eof = true;
                    }
                }
            }
            st = &mut waiter, if status.is_none() => {
                let st = st.map_err(|e| RunError::Wait(e.to_string()))?
                    .ok_or(RunError::NoChild)?
                    .doing(|| "waiting for the command".into())?;
                status = Some(st);
                if tty {
                    // SAFETY: plain libc calls on our own process.
                    unsafe {
                        let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                        libc::tcsetpgrp(0, libc::getpgrp());
                        libc::signal(libc::SIGTTOU, old);
                    }
                }
            }
            Some(sig) = sig_rx.recv() => {
                if let Ok(sig) = nix::sys::signal::Signal::try_from(sig) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child_pid as i32), sig);
                }
            }
        }
    }
    let status = status.expect("loop ends with the status");
    let cmd_code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => exitcode::WATCHER_ERROR,
    };
    if let Some(l) = &mut log {
        l.finish()?;
    }
    let Some((_, verdict)) = done else {
        return Err(RunError::NoVerdict { cmd_code, daemon_log });
    };
    let code = verdict.unwrap_or(cmd_code);
    pipe_report.watcher_exit = Some(code);
    crate::run::write_reports(&pipe_report, report_files, &opts)?;
    if code != cmd_code {
        crate::say!(
            "watcher: enforce mode: exiting {code} (the command exited {cmd_code}) because {}",
            if code == exitcode::POLICY_VIOLATION { "of policy violations" } else { "events were lost" }
        );
    }
    Ok(code)
}

fn read_first_line(mut s: &std::os::unix::net::UnixStream, out: &mut String) -> std::io::Result<usize> {
    let mut bytes = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if s.read(&mut b)? == 0 {
            break;
        }
        bytes.push(b[0]);
        if b[0] == b'\n' || bytes.len() > 1 << 20 {
            break;
        }
    }
    *out = String::from_utf8_lossy(&bytes).into_owned();
    Ok(bytes.len())
}

fn sockaddr(path: &Path) -> Result<libc::sockaddr_un, RunError> {
    use std::os::unix::ffi::OsStrExt as _;
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let b = path.as_os_str().as_bytes();
    if b.is_empty() || b.len() >= a.sun_path.len() || b.contains(&0) {
        return Err(RunError::SocketPath { path: path.to_path_buf(), max: a.sun_path.len() - 1 });
    }
    for (d, s) in a.sun_path.iter_mut().zip(b) {
        *d = *s as libc::c_char;
    }
    Ok(a)
}

/// Appends to `buf` up to the end of a line (the newline is not kept): true when `buf` holds
/// a whole line, false at the end of the stream. Cancel-safe: what was read stays in `buf`.
async fn read_bounded(
    r: &mut tokio::io::BufReader<tokio::net::UnixStream>,
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(false);
        }
        if let Some(i) = chunk.iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(&chunk[..i]);
            r.consume(i + 1);
            return Ok(true);
        }
        let n = chunk.len();
        buf.extend_from_slice(chunk);
        r.consume(n);
        if buf.len() > MAX_LINE {
            return Err(std::io::Error::other(format!("a message longer than {} MiB", MAX_LINE >> 20)));
        }
    }
}
