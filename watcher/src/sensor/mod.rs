//! The only module that touches aya: loads the kernel programs, attaches them, fills the
//! watch maps, drains the ring buffer and reads the loss counters.

pub mod btf;
use std::{
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData, PerCpuArray, ProgramArray, RingBuf,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, RawTracePoint, TracePoint},
};
use tokio::io::unix::AsyncFd;
use watcher_common::{
    CFG_DAEMON, CFG_OFF_BPRM_BUF, CFG_OFF_BPRM_FILE, CFG_OFF_BPRM_FILENAME, CFG_OFF_BPRM_INTERP, CFG_OFF_FILE_INODE,
    CFG_OFF_INODE_SIZE, CFG_SEED, DAEMON_LOG_ALL, DAEMON_ON, ENV_FLAG_CAPTURE, ENV_FLAG_INSTALL, ENV_FLAG_JOB,
    ENV_NAME_LEN, ExecKey, JOB_ADDR_LEN, JOB_NONE, NUM_COUNTERS, NameKey, PortSet, ProcInfo, SHELL_SIG_BYTES,
    host_ports_key, job_addr_key, shell_signature,
};

use crate::{event::SensorState, policy::kernel::KernelTables, record};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/watcher-ebpf"));

/// Tracepoints: (program name, category, tracepoint name).
const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("sys_enter_execve", "syscalls", "sys_enter_execve"),
    ("sys_enter_execveat", "syscalls", "sys_enter_execveat"),
    ("sys_exit_execve", "syscalls", "sys_exit_execve"),
    ("sys_exit_execveat", "syscalls", "sys_exit_execveat"),
    ("sys_enter_clone", "syscalls", "sys_enter_clone"),
    ("sys_enter_clone3", "syscalls", "sys_enter_clone3"),
    ("sys_enter_fork", "syscalls", "sys_enter_fork"),
    ("sys_enter_vfork", "syscalls", "sys_enter_vfork"),
    ("sys_enter_exit", "syscalls", "sys_enter_exit"),
    ("sys_enter_exit_group", "syscalls", "sys_enter_exit_group"),
    ("sched_process_fork", "sched", "sched_process_fork"),
    ("sched_process_exit", "sched", "sched_process_exit"),
    ("sched_process_exec_kill", "sched", "sched_process_exec"),
];

const SOCK_ADDR_PROGS: &[&str] = &["connect4", "connect6", "sendmsg4", "sendmsg6"];

/// Environment variables captured at exec (never secrets): who runs this — which package's
/// install script, which CI job.
pub const CAPTURED_ENV: &[(&str, u32)] = &[
    ("npm_package_name", ENV_FLAG_CAPTURE),
    ("npm_package_version", ENV_FLAG_CAPTURE),
    ("npm_lifecycle_event", ENV_FLAG_CAPTURE),
    ("npm_package_json", ENV_FLAG_CAPTURE),
    ("CARGO_PKG_NAME", ENV_FLAG_CAPTURE),
    ("CARGO_PKG_VERSION", ENV_FLAG_CAPTURE),
    ("CARGO_MANIFEST_DIR", ENV_FLAG_CAPTURE),
    // pip sets it for the subprocesses that build sdists: their start is an install script.
    ("PIP_BUILD_TRACKER", ENV_FLAG_CAPTURE | ENV_FLAG_INSTALL),
    ("GITHUB_RUN_ID", ENV_FLAG_CAPTURE),
    ("GITHUB_JOB", ENV_FLAG_CAPTURE),
    ("GITHUB_REPOSITORY", ENV_FLAG_CAPTURE),
    ("CI_JOB_ID", ENV_FLAG_CAPTURE),
    ("CI_PROJECT_PATH", ENV_FLAG_CAPTURE),
    ("BUILDKITE_JOB_ID", ENV_FLAG_CAPTURE),
];
/// Names of the per-CPU counters, by index (see watcher_common::CNT_*).
pub const COUNTER_NAMES: [&str; NUM_COUNTERS as usize] =
    ["exec", "fork", "exit", "connect", "dns", "watch", "exec-scratch", "payload"];

pub struct SensorConfig {
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ringbuf_bytes: u32,
    /// The cgroup v2 directory the socket and packet hooks attach to.
    pub cgroup: PathBuf,
    /// Daemon mode: unwatched processes whose exec environment carries one of `job_env` start
    /// a job (the hooks are then attached at the cgroup root).
    pub daemon: bool,
    /// Variables that name a job (daemon mode), captured at exec with ENV_FLAG_JOB.
    pub job_env: Vec<String>,
    /// More variables to capture at exec (daemon mode: the pipeline variables).
    pub extra_env: Vec<String>,
    /// Daemon mode: also report processes of no job (in the pseudo-job JOB_NONE, never
    /// enforced).
    pub log_no_job: bool,
}

impl SensorConfig {
    pub fn run(ringbuf_bytes: u32, cgroup: PathBuf) -> SensorConfig {
        SensorConfig {
            ringbuf_bytes,
            cgroup,
            daemon: false,
            job_env: Vec::new(),
            extra_env: Vec::new(),
            log_no_job: false,
        }
    }
}

/// Takes one attachment's link out of its program, so it can be closed apart (see `Drop`).
type Detach = Box<dyn FnOnce(&mut Ebpf) -> Option<Box<dyn Send>> + Send>;

/// A closure that takes the link `id` out of program `name` of type `P`.
macro_rules! detach {
    ($ty:ty, $name:expr, $id:expr) => {{
        let (name, id) = ($name, $id);
        Box::new(move |ebpf: &mut Ebpf| -> Option<Box<dyn Send>> {
            let p: &mut $ty = ebpf.program_mut(name)?.try_into().ok()?;
            p.take_link(id).ok().map(|l| Box::new(l) as Box<dyn Send>)
        }) as Detach
    }};
}

pub struct Sensor {
    ebpf: Ebpf,
    links: Vec<Detach>,
    ring: AsyncFd<RingBuf<MapData>>,
    states: Vec<SensorState>,
}

/// Where shells are looked for, besides PATH.
const SHELL_DIRS: &[&str] = &["/bin", "/usr/bin", "/usr/local/bin", "/sbin", "/usr/sbin"];

/// Recognise shells by content at exec (a copy under another name is still a shell): load the
/// sched_process_exec raw tracepoint, give it struct offsets from the kernel's BTF and the
/// signatures of this machine's shell binaries. Optional: without BTF, shells are recognised
/// by name only, and the sensor line says so.
fn shell_identity(ebpf: &mut Ebpf, links: &mut Vec<Detach>) -> anyhow::Result<SensorState> {
    let offsets = btf::Btf::from_sys().ok().and_then(|b| {
        Some([
            (CFG_OFF_BPRM_FILE, b.member_offset("linux_binprm", "file")?),
            (CFG_OFF_BPRM_BUF, b.member_offset("linux_binprm", "buf")?),
            (CFG_OFF_FILE_INODE, b.member_offset("file", "f_inode")?),
            (CFG_OFF_INODE_SIZE, b.member_offset("inode", "i_size")?),
            (CFG_OFF_BPRM_FILENAME, b.member_offset("linux_binprm", "filename")?),
            (CFG_OFF_BPRM_INTERP, b.member_offset("linux_binprm", "interp")?),
        ])
    });
    let Some(offsets) = offsets else {
        return Ok(SensorState {
            name: "shell-identity".into(),
            active: false,
            detail: Some("no kernel BTF (/sys/kernel/btf/vmlinux): shells are recognised by name only".into()),
        });
    };
    let mut sigs = std::collections::BTreeMap::new();
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs: Vec<&str> = SHELL_DIRS.iter().copied().chain(path.split(':')).collect();
    for name in crate::proctree::SHELLS {
        for dir in &dirs {
            let Ok(real) = std::fs::canonicalize(std::path::Path::new(dir).join(name)) else { continue };
            let Ok(mut f) = std::fs::File::open(&real) else { continue };
            let Ok(meta) = f.metadata() else { continue };
            let mut head = [0u8; SHELL_SIG_BYTES];
            if std::io::Read::read_exact(&mut f, &mut head).is_ok() {
                sigs.insert(shell_signature(meta.len(), &head), real.display().to_string());
            }
        }
    }
    {
        let mut config = Array::<_, u64>::try_from(ebpf.map_mut("CONFIG").ok_or_else(|| anyhow!("no CONFIG map"))?)?;
        for (i, off) in offsets {
            config.set(i, &(off as u64), 0).context("filling CONFIG")?;
        }
    }
    {
        let mut m =
            HashMap::<_, u64, u32>::try_from(ebpf.map_mut("SHELL_SIGS").ok_or_else(|| anyhow!("no SHELL_SIGS map"))?)?;
        for sig in sigs.keys() {
            m.insert(sig, &1, 0).context("filling SHELL_SIGS")?;
        }
    }
    let p: &mut RawTracePoint = ebpf
        .program_mut("sched_process_exec")
        .ok_or_else(|| anyhow!("eBPF object has no program sched_process_exec"))?
        .try_into()?;
    p.load().map_err(|e| explain_load_error("raw tracepoint program sched_process_exec", e))?;
    let id = p
        .attach("sched_process_exec")
        .map_err(|e| explain_load_error("attachment to raw tracepoint sched_process_exec", e))?;
    links.push(detach!(RawTracePoint, "sched_process_exec", id));
    let names: std::collections::BTreeSet<String> = sigs.into_values().collect();
    Ok(SensorState {
        name: "shell-identity".into(),
        active: true,
        detail: Some(format!(
            "raw tracepoint sched_process_exec: shell binaries known by size and first bytes, under any name ({})",
            names.into_iter().collect::<Vec<_>>().join(", ")
        )),
    })
}

fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "watcher needs root to load its eBPF programs (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and \
             CAP_SYS_ADMIN): run it with sudo, or use `watcher replay`, which needs no privileges"
        );
    }
    Ok(())
}

fn ensure_tracefs() -> anyhow::Result<()> {
    let events = Path::new("/sys/kernel/tracing/events");
    if events.exists() || Path::new("/sys/kernel/debug/tracing/events").exists() {
        return Ok(());
    }
    nix::mount::mount(Some("nodev"), "/sys/kernel/tracing", Some("tracefs"), nix::mount::MsFlags::empty(), None::<&str>)
        .context("tracefs is not mounted at /sys/kernel/tracing and mounting it failed; tracepoints need it")
}

fn explain_load_error(what: &str, e: impl std::error::Error) -> anyhow::Error {
    let mut detail = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        src = s.source();
    }
    // A verifier log can be thousands of lines; its last lines say why.
    let lines: Vec<&str> = detail.lines().collect();
    if lines.len() > 12 {
        detail = format!("{}\n[...]\n{}", lines[0], lines[lines.len() - 10..].join("\n"));
    }
    anyhow!(
        "the kernel refused watcher's {what}: {detail}. watcher needs Linux >= 5.8 with BPF ring \
         buffers, syscall and sched tracepoints, cgroup v2, and the cgroup_sock_addr and \
         cgroup_skb program types"
    )
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).ok_or_else(|| anyhow!("no {name} map"))
}

impl Drop for Sensor {
    /// Detach every program at once. Closing a tracepoint or cgroup link waits for an RCU grace
    /// period (tens of milliseconds on a busy machine); one after the other, the ~20 links of a
    /// sensor took about a second at the end of every `watcher run`. Closed from one thread
    /// each, the waits overlap. The programs and maps are freed after, when `ebpf` drops.
    fn drop(&mut self) {
        let links: Vec<Box<dyn Send>> = self.links.drain(..).filter_map(|take| take(&mut self.ebpf)).collect();
        std::thread::scope(|scope| {
            for link in links {
                // Without a thread (resource limits), the link is closed here, in turn.
                let _ = std::thread::Builder::new().spawn_scoped(scope, move || drop(link));
            }
        });
    }
}

impl Sensor {
    /// Load and attach everything. Fails with one sentence naming what is missing.
    pub fn load(cfg: &SensorConfig) -> anyhow::Result<Sensor> {
        require_root()?;
        if EBPF_OBJECT.is_empty() {
            bail!(
                "this watcher binary was built without its eBPF programs (AYA_BUILD_SKIP was set); rebuild it with scripts/setup.sh"
            );
        }
        // Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
        let _ = nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_MEMLOCK,
            nix::sys::resource::RLIM_INFINITY,
            nix::sys::resource::RLIM_INFINITY,
        );
        ensure_tracefs()?;

        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", cfg.ringbuf_bytes)
            .load(EBPF_OBJECT)
            .map_err(|e| explain_load_error("eBPF object (maps and BTF)", e))?;
        let mut states = Vec::new();
        let mut links: Vec<Detach> = Vec::new();

        // Loaded, not attached: the exec tracepoints tail-call it to scan the environment.
        {
            let p: &mut TracePoint = ebpf
                .program_mut("exec_env_scan")
                .ok_or_else(|| anyhow!("eBPF object has no program exec_env_scan"))?
                .try_into()?;
            p.load().map_err(|e| explain_load_error("tracepoint program exec_env_scan", e))?;
            let fd = p.fd()?.try_clone()?;
            let mut slots =
                ProgramArray::try_from(ebpf.map_mut("ENV_SCAN_PROG").ok_or_else(|| anyhow!("no ENV_SCAN_PROG map"))?)?;
            slots.set(0, &fd, 0).context("installing the environment scanner")?;
        }
        for (prog, category, name) in TRACEPOINTS {
            let p: &mut TracePoint =
                ebpf.program_mut(prog).ok_or_else(|| anyhow!("eBPF object has no program {prog}"))?.try_into()?;
            p.load().map_err(|e| explain_load_error(&format!("tracepoint program {prog}"), e))?;
            let id = p
                .attach(category, name)
                .map_err(|e| explain_load_error(&format!("attachment to tracepoint {category}/{name}"), e))?;
            links.push(detach!(TracePoint, prog, id));
        }
        states.push(shell_identity(&mut ebpf, &mut links)?);
        states.push(SensorState {
            name: "process".into(),
            active: true,
            detail: Some("tracepoints: execve/execveat, clone/fork, sched_process_fork/exit".into()),
        });

        // Attached as BPF links, which always have BPF_F_ALLOW_MULTI semantics (the kernel refuses
        // explicit flags for cgroup links): programs attached further down keep working.
        let attach_mode = CgroupAttachMode::Single;
        let cgroup =
            std::fs::File::open(&cfg.cgroup).with_context(|| format!("cannot open cgroup {}", cfg.cgroup.display()))?;
        for prog in SOCK_ADDR_PROGS {
            let p: &mut CgroupSockAddr =
                ebpf.program_mut(prog).ok_or_else(|| anyhow!("eBPF object has no program {prog}"))?.try_into()?;
            p.load().map_err(|e| explain_load_error(&format!("cgroup_sock_addr program {prog}"), e))?;
            let id = p
                .attach(cgroup.as_fd(), attach_mode)
                .map_err(|e| explain_load_error(&format!("attachment of {prog} to {}", cfg.cgroup.display()), e))?;
            links.push(detach!(CgroupSockAddr, *prog, id));
        }
        states.push(SensorState {
            name: "network".into(),
            active: true,
            detail: Some("cgroup_sock_addr: connect4/6, sendmsg4/6 (TCP, UDP, io_uring)".into()),
        });

        // Loaded, not attached: the packet programs tail-call these in enforce mode.
        for (array, prog) in [("DNS_PROGS", "dns_egress_enforce"), ("DNS_INGRESS_PROGS", "dns_ingress_learn")] {
            let p: &mut CgroupSkb =
                ebpf.program_mut(prog).ok_or_else(|| anyhow!("eBPF object has no program {prog}"))?.try_into()?;
            p.load().map_err(|e| explain_load_error(&format!("cgroup_skb program {prog}"), e))?;
            let fd = p.fd()?.try_clone()?;
            let mut slots = ProgramArray::try_from(ebpf.map_mut(array).ok_or_else(|| anyhow!("no {array} map"))?)?;
            slots.set(0, &fd, 0).with_context(|| format!("installing {prog}"))?;
        }
        for (prog, ty) in [("dns_egress", CgroupSkbAttachType::Egress), ("dns_ingress", CgroupSkbAttachType::Ingress)] {
            let p: &mut CgroupSkb =
                ebpf.program_mut(prog).ok_or_else(|| anyhow!("eBPF object has no program {prog}"))?.try_into()?;
            p.load().map_err(|e| explain_load_error(&format!("cgroup_skb program {prog}"), e))?;
            let id = p
                .attach(cgroup.as_fd(), ty, attach_mode)
                .map_err(|e| explain_load_error(&format!("attachment of {prog} to {}", cfg.cgroup.display()), e))?;
            links.push(detach!(CgroupSkb, prog, id));
        }
        states.push(SensorState {
            name: "dns".into(),
            active: true,
            detail: Some("cgroup_skb egress/ingress: port 53 over UDP and TCP, queries and answers".into()),
        });
        states.push(SensorState {
            name: "fentry/lsm".into(),
            active: false,
            detail: Some("not used: tracepoints and cgroup hooks cover every sensor".into()),
        });

        {
            let mut capture: HashMap<_, [u8; ENV_NAME_LEN], u32> =
                HashMap::try_from(ebpf.map_mut("ENV_CAPTURE").ok_or_else(|| anyhow!("no ENV_CAPTURE map"))?)?;
            let mut all: Vec<(String, u32)> = CAPTURED_ENV.iter().map(|(n, f)| (n.to_string(), *f)).collect();
            for (names, flag) in [(&cfg.job_env, ENV_FLAG_JOB), (&cfg.extra_env, 0)] {
                for name in names {
                    match all.iter_mut().find(|(n, _)| n == name) {
                        Some((_, f)) => *f |= flag,
                        None => all.push((name.clone(), ENV_FLAG_CAPTURE | flag)),
                    }
                }
            }
            for (name, flags) in &all {
                if name.is_empty() || name.len() >= ENV_NAME_LEN || name.contains('=') {
                    bail!(
                        "environment variable name {name:?} cannot be captured: 1 to {} bytes, no '='",
                        ENV_NAME_LEN - 1
                    );
                }
                let mut key = [0u8; ENV_NAME_LEN];
                key[..name.len()].copy_from_slice(name.as_bytes());
                capture.insert(&key, flags, 0).context("filling ENV_CAPTURE")?;
            }
        }
        if cfg.daemon {
            if cfg.log_no_job {
                // The pseudo-job of processes of no job: known, never enforced.
                let mut jobs = HashMap::<_, u32, u32>::try_from(map(&mut ebpf, "JOBS")?)?;
                jobs.insert(&JOB_NONE, &0, 0).context("filling JOBS")?;
            }
            // Last: from here on every exec on the host is looked at for job variables.
            let mut config =
                Array::<_, u64>::try_from(ebpf.map_mut("CONFIG").ok_or_else(|| anyhow!("no CONFIG map"))?)?;
            let mode = if cfg.log_no_job { DAEMON_LOG_ALL } else { DAEMON_ON };
            config.set(CFG_DAEMON, &mode, 0).context("filling CONFIG")?;
        }
        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").ok_or_else(|| anyhow!("no EVENTS map"))?)?;
        // SAFETY: the ring buffer's fd is owned by `ring`, which the AsyncFd owns and keeps
        // open for as long as it is registered.
        let ring = unsafe { AsyncFd::register(ring) }
            .map_err(|e| anyhow!("registering the ring buffer with the event loop: {e}"))?;
        Ok(Sensor { ebpf, links, ring, states })
    }

    pub fn states(&self) -> &[SensorState] {
        &self.states
    }

    pub fn watch_cgroup(&mut self, cgroup_id: u64, job: u32) -> anyhow::Result<()> {
        let mut m: HashMap<_, u64, u32> =
            HashMap::try_from(self.ebpf.map_mut("WATCHED_CGROUPS").ok_or_else(|| anyhow!("no WATCHED_CGROUPS map"))?)?;
        m.insert(&cgroup_id, &job, 0).context("adding the cgroup to the watch map")?;
        Ok(())
    }

    pub fn unwatch_cgroup(&mut self, cgroup_id: u64) {
        if let Some(m) = self.ebpf.map_mut("WATCHED_CGROUPS")
            && let Ok(mut m) = HashMap::<_, u64, u32>::try_from(m)
        {
            let _ = m.remove(&cgroup_id);
        }
    }

    pub fn watch_pid(&mut self, pid: u32, ppid: u32, job: u32) -> anyhow::Result<()> {
        let mut m: HashMap<_, u32, ProcInfo> =
            HashMap::try_from(self.ebpf.map_mut("WATCHED").ok_or_else(|| anyhow!("no WATCHED map"))?)?;
        // BPF_NOEXIST: if the kernel already added it (through its cgroup), keep what the
        // kernel knows (its flags may already say it starts an install script).
        const BPF_NOEXIST: u64 = 1;
        match m.insert(&pid, &ProcInfo { ppid, job, exit_code: 0, code_known: 0, flags: 0, _pad: 0 }, BPF_NOEXIST) {
            Ok(()) => Ok(()),
            Err(_) if m.get(&pid, 0).is_ok() => Ok(()),
            Err(e) => Err(e).context("adding the process to the watch map"),
        }
    }

    /// Write a compiled policy into the kernel maps for `job`. Must happen before the job's
    /// first process starts (daemon jobs: before the stopped process is continued). The job's
    /// flags are written last, so the kernel never sees a half-written job as set up.
    pub fn apply_policy(&mut self, job: u32, t: &KernelTables) -> anyhow::Result<()> {
        let e = &mut self.ebpf;
        Array::<_, u64>::try_from(map(e, "CONFIG")?)?.set(CFG_SEED, &t.seed, 0)?;
        let mut names = HashMap::<_, NameKey, u64>::try_from(map(e, "DNS_NAMES")?)?;
        for (h, m) in &t.names {
            names.insert(&[*h, job as u64], m, 0).context("filling DNS_NAMES")?;
        }
        let mut sufs = HashMap::<_, NameKey, u64>::try_from(map(e, "DNS_SUFFIXES")?)?;
        for (h, m) in &t.suffixes {
            sufs.insert(&[*h, job as u64], m, 0).context("filling DNS_SUFFIXES")?;
        }
        let mut nets = LpmTrie::<_, [u8; JOB_ADDR_LEN], PortSet>::try_from(map(e, "ALLOW_NET")?)?;
        for (addr, prefix, ports) in &t.nets {
            nets.insert(&LpmKey::new(32 + *prefix, job_addr_key(job, addr)), ports, 0).context("filling ALLOW_NET")?;
        }
        let mut res = HashMap::<_, [u8; JOB_ADDR_LEN], u32>::try_from(map(e, "RESOLVERS")?)?;
        for r in &t.resolvers {
            res.insert(&job_addr_key(job, r), &1, 0).context("filling RESOLVERS")?;
        }
        let mut ports = HashMap::<_, u64, PortSet>::try_from(map(e, "HOST_PORTS")?)?;
        for (i, p) in t.host_ports.iter().enumerate() {
            ports.insert(&host_ports_key(job, i as u32), p, 0).context("filling HOST_PORTS")?;
        }
        let mut rules = HashMap::<_, ExecKey, u32>::try_from(map(e, "EXEC_RULES")?)?;
        for (k, f) in &t.exec_rules {
            rules.insert(&ExecKey { job, name: *k }, f, 0).context("filling EXEC_RULES")?;
        }
        let mut markers = HashMap::<_, [u8; ENV_NAME_LEN], u32>::try_from(map(e, "ENV_MARKERS")?)?;
        for (k, f) in &t.env_markers {
            markers.insert(k, f, 0).context("filling ENV_MARKERS")?;
        }
        let mut jobs = HashMap::<_, u32, u32>::try_from(map(e, "JOBS")?)?;
        jobs.insert(&job, &t.job_flags, 0).context("filling JOBS")?;
        Ok(())
    }

    /// Replace a job's policy (SIGHUP reload): the new entries are written first, then the
    /// old ones the new policy does not have are removed, so nothing the new policy allows
    /// is ever denied in between.
    pub fn replace_policy(&mut self, job: u32, old: &KernelTables, new: &KernelTables) -> anyhow::Result<()> {
        self.apply_policy(job, new)?;
        let stale = KernelTables {
            job_flags: 0,
            seed: 0,
            nets: old.nets.iter().filter(|n| !new.nets.iter().any(|m| m.0 == n.0 && m.1 == n.1)).cloned().collect(),
            resolvers: old.resolvers.iter().filter(|r| !new.resolvers.contains(r)).cloned().collect(),
            names: old.names.iter().filter(|n| !new.names.iter().any(|m| m.0 == n.0)).cloned().collect(),
            suffixes: old.suffixes.iter().filter(|n| !new.suffixes.iter().any(|m| m.0 == n.0)).cloned().collect(),
            host_ports: Vec::new(),
            exec_rules: old.exec_rules.iter().filter(|n| !new.exec_rules.iter().any(|m| m.0 == n.0)).cloned().collect(),
            env_markers: Vec::new(),
        };
        self.remove_entries(job, &stale, new.host_ports.len()..old.host_ports.len().max(new.host_ports.len()));
        Ok(())
    }

    /// Forget a job that ended: its policy entries, the addresses it learned and its flags.
    pub fn remove_job(&mut self, job: u32, t: &KernelTables) {
        self.remove_entries(job, t, 0..t.host_ports.len());
        let e = &mut self.ebpf;
        if let Ok(mut learned) = map(e, "LEARNED").and_then(|m| Ok(HashMap::<_, [u8; JOB_ADDR_LEN], u64>::try_from(m)?))
        {
            let prefix = job.to_be_bytes();
            let keys: Vec<[u8; JOB_ADDR_LEN]> =
                learned.keys().filter_map(Result::ok).filter(|k| k[..4] == prefix).collect();
            for k in keys {
                let _ = learned.remove(&k);
            }
        }
        if let Ok(mut jobs) = map(e, "JOBS").and_then(|m| Ok(HashMap::<_, u32, u32>::try_from(m)?)) {
            let _ = jobs.remove(&job);
        }
    }

    fn remove_entries(&mut self, job: u32, t: &KernelTables, host_ports: std::ops::Range<usize>) {
        let e = &mut self.ebpf;
        if let Ok(mut m) = map(e, "DNS_NAMES").and_then(|m| Ok(HashMap::<_, NameKey, u64>::try_from(m)?)) {
            for (h, _) in &t.names {
                let _ = m.remove(&[*h, job as u64]);
            }
        }
        if let Ok(mut m) = map(e, "DNS_SUFFIXES").and_then(|m| Ok(HashMap::<_, NameKey, u64>::try_from(m)?)) {
            for (h, _) in &t.suffixes {
                let _ = m.remove(&[*h, job as u64]);
            }
        }
        if let Ok(mut m) = map(e, "ALLOW_NET").and_then(|m| Ok(LpmTrie::<_, [u8; JOB_ADDR_LEN], PortSet>::try_from(m)?))
        {
            for (addr, prefix, _) in &t.nets {
                let _ = m.remove(&LpmKey::new(32 + *prefix, job_addr_key(job, addr)));
            }
        }
        if let Ok(mut m) = map(e, "RESOLVERS").and_then(|m| Ok(HashMap::<_, [u8; JOB_ADDR_LEN], u32>::try_from(m)?)) {
            for r in &t.resolvers {
                let _ = m.remove(&job_addr_key(job, r));
            }
        }
        if let Ok(mut m) = map(e, "HOST_PORTS").and_then(|m| Ok(HashMap::<_, u64, PortSet>::try_from(m)?)) {
            for i in host_ports {
                let _ = m.remove(&host_ports_key(job, i as u32));
            }
        }
        if let Ok(mut m) = map(e, "EXEC_RULES").and_then(|m| Ok(HashMap::<_, ExecKey, u32>::try_from(m)?)) {
            for (k, _) in &t.exec_rules {
                let _ = m.remove(&ExecKey { job, name: *k });
            }
        }
    }

    /// Daemon mode: (job, pid) of the jobs whose first program the kernel holds stopped.
    pub fn held_jobs(&self) -> Vec<(u32, u32)> {
        let Some(map) = self.ebpf.map("NEW_JOBS") else { return vec![] };
        let Ok(m) = HashMap::<_, u32, u32>::try_from(map) else { return vec![] };
        m.iter().filter_map(Result::ok).collect()
    }

    pub fn forget_held_job(&mut self, job: u32) {
        if let Some(m) = self.ebpf.map_mut("NEW_JOBS")
            && let Ok(mut m) = HashMap::<_, u32, u32>::try_from(m)
        {
            let _ = m.remove(&job);
        }
    }

    /// Processes the kernel still tracks as watched.
    pub fn watched_pids(&self) -> Vec<u32> {
        let Some(map) = self.ebpf.map("WATCHED") else { return vec![] };
        let Ok(m) = HashMap::<_, u32, ProcInfo>::try_from(map) else { return vec![] };
        m.keys().filter_map(Result::ok).collect()
    }

    /// Wait until records are available, then decode all of them into `out`.
    pub async fn wait_and_drain(
        &mut self,
        out: &mut Vec<Result<record::Record, record::DecodeError>>,
    ) -> anyhow::Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            out.push(record::decode(&item));
        }
        guard.clear_ready();
        Ok(())
    }

    /// Decode whatever is in the ring buffer now, without waiting.
    pub fn drain(&mut self, out: &mut Vec<Result<record::Record, record::DecodeError>>) {
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            out.push(record::decode(&item));
        }
    }

    /// Totals of the kernel's loss counters (summed over CPUs), by COUNTER_NAMES index.
    pub fn counters(&self) -> anyhow::Result<[u64; NUM_COUNTERS as usize]> {
        let map = self.ebpf.map("COUNTERS").ok_or_else(|| anyhow!("no COUNTERS map"))?;
        let arr = PerCpuArray::<_, u64>::try_from(map)?;
        let mut totals = [0u64; NUM_COUNTERS as usize];
        for (i, t) in totals.iter_mut().enumerate() {
            let values = arr.get(&(i as u32), 0)?;
            *t = values.iter().sum();
        }
        Ok(totals)
    }
}
