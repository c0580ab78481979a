//! The engine: a pure function of (events, policy) -> alerts. No I/O and no clock: time comes
//! from the events. `watcher run` feeds it the events it logs, `watcher replay` the events it
//! reads back, so a replay with the same policy gives exactly the live alerts.
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use crate::{
    event::{Alert, Connect, Dns, Event, Exec, Loss, Ts},
    policy::{Mode, Policy},
    proctree::{ProcTree, basename, is_shell},
};

pub const RULE_EGRESS: &str = "egress-denied";
pub const RULE_DNS_NAME: &str = "dns-denied";
pub const RULE_DNS_RESOLVER: &str = "dns-resolver-denied";
pub const RULE_DNS_MALFORMED: &str = "dns-malformed";
pub const RULE_EXEC: &str = "exec-denied";
pub const RULE_SHELL: &str = "shell-from-install-script";
pub const RULE_SECRET: &str = "secret-exfil";
pub const RULE_RAW_SOCKET: &str = "raw-socket";
pub const RULE_TAMPER: &str = "tamper";
pub const RULE_DEPUTY: &str = "local-deputy";

/// ` = AK…(20 chars)` when the event recorded the redacted value, else nothing.
fn redacted_note(s: &crate::event::SecretMatch) -> String {
    s.redacted.as_deref().map(|r| format!(" = {r}")).unwrap_or_default()
}
pub const RULE_LOSS: &str = "events-lost";

mod file_rules;
pub use file_rules::{RULE_CREDENTIAL, RULE_FILE_TAMPER, RULE_PUBLISH};

pub struct Engine {
    policy: Policy,
    tree: ProcTree,
    resolvers: Vec<IpAddr>,
    /// Addresses returned by DNS answers for names the policy allows -> those names.
    learned: HashMap<IpAddr, BTreeSet<String>>,
    /// Every name any answer gave an address for (for messages).
    answered: HashMap<IpAddr, BTreeSet<String>>,
    /// One alert per (rule, process, subject).
    raised: HashSet<(String, u32, String)>,
    alerts: u64,
    loss_alerts: u64,
    /// The step's start and working directory (its `start` record).
    start: Ts,
    cwd: Option<String>,
    /// The verdict on the last exec judged: kill it (a held shell is killed, else continued).
    last_kill: bool,
}

impl Engine {
    /// `policy` must already carry the mode to judge with (the CLI's --mode applied).
    pub fn new(policy: Policy) -> Engine {
        Engine {
            policy,
            tree: ProcTree::default(),
            resolvers: Vec::new(),
            learned: HashMap::new(),
            answered: HashMap::new(),
            raised: HashSet::new(),
            alerts: 0,
            loss_alerts: 0,
            start: Ts(0),
            cwd: None,
            last_kill: false,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn tree(&self) -> &ProcTree {
        &self.tree
    }

    /// Hand the process tree over (to the report, when the step is over).
    pub fn take_tree(&mut self) -> ProcTree {
        std::mem::take(&mut self.tree)
    }

    fn package(&self, pid: u32) -> Option<String> {
        self.tree.install_script(pid).map(|(_, a)| a.label())
    }

    #[allow(clippy::too_many_arguments)]
    fn alert(
        &mut self,
        out: &mut Vec<Alert>,
        ts: Ts,
        rule: &str,
        blocked: bool,
        killed: bool,
        severity: &str,
        pid: u32,
        subject: String,
        message: String,
    ) {
        if !self.raised.insert((rule.to_string(), pid, subject)) {
            return;
        }
        let action = if killed {
            "kill"
        } else if blocked {
            "deny"
        } else {
            "flag"
        };
        self.alerts += 1;
        out.push(Alert {
            ts,
            rule: rule.into(),
            action: action.into(),
            severity: severity.into(),
            pid,
            package: self.package(pid),
            message,
            variable: None,
            redacted: None,
        });
    }

    /// A `secret-exfil` alert: like [`Engine::alert`], naming the variable and its redacted
    /// value (recorded in the event, so replay gives the same alert).
    #[allow(clippy::too_many_arguments)]
    fn secret_alert(
        &mut self,
        out: &mut Vec<Alert>,
        ts: Ts,
        blocked: bool,
        pid: u32,
        s: &crate::event::SecretMatch,
        subject: String,
        message: String,
    ) {
        let before = out.len();
        self.alert(out, ts, RULE_SECRET, blocked, false, "critical", pid, subject, message);
        if out.len() > before
            && let Some(a) = out.last_mut()
        {
            a.variable = Some(s.variable.clone());
            a.redacted = s.redacted.clone();
        }
    }

    /// Judge one event; returns the alerts it raises (possibly none).
    pub fn process(&mut self, e: &Event) -> Vec<Alert> {
        let mut out = Vec::new();
        match e {
            Event::Start(s) => {
                self.start = s.ts;
                self.cwd = s.project.as_ref().map(|p| p.cwd.clone());
                self.tree.on_event(e);
                self.resolvers = s.resolvers.clone();
                let mut hosts = Vec::new();
                for pm in self.policy.registries().to_vec() {
                    if let Some(h) = s.registries.get(pm.as_str()) {
                        hosts.extend(h.iter().cloned());
                    }
                }
                if !hosts.is_empty() {
                    self.policy = self.policy.clone().with_registry_hosts(hosts);
                }
                if !s.proxy_sources.is_empty() {
                    self.policy = self.policy.clone().with_proxies(&crate::proxies::addresses(&s.proxy_sources));
                }
            }
            Event::Exec(x) => {
                self.on_exec(x, &mut out);
                self.tree.on_event(e);
                self.on_publish(x, &mut out);
            }
            Event::File(x) => self.on_file(x, &mut out),
            Event::Fork(_) | Event::Exit(_) => self.tree.on_event(e),
            Event::Connect(c) => self.on_connect(c, &mut out),
            Event::Dns(d) => self.on_dns(d, &mut out),
            Event::Send(x) => {
                if let Some(t) = &x.target {
                    self.on_target(x, t, &mut out);
                }
                for s in &x.secrets {
                    if self.policy.is_secret_env(&s.variable) && !self.own_registry_credential(x) {
                        self.secret_alert(
                            &mut out,
                            x.ts,
                            false,
                            x.proc.pid,
                            s,
                            format!("{}:{}:{}", s.variable, x.daddr, x.dport),
                            format!(
                                "the value of {}{} ({} encoded) is in the data sent to {}:{}/{}",
                                s.variable,
                                redacted_note(s),
                                s.encoding,
                                x.daddr,
                                x.dport,
                                x.proto.as_str()
                            ),
                        );
                    }
                }
            }
            Event::Socket(x) => self.on_socket(x, &mut out),
            Event::Tamper(x) => {
                let what = match x.what {
                    crate::event::TamperKind::Signal => format!("sent signal {} to watcher (pid {})", x.arg, x.target),
                    crate::event::TamperKind::Bpf => format!("called bpf() (command {})", x.arg),
                    crate::event::TamperKind::Umount => "called umount (watcher's programs are pinned in bpffs)".into(),
                    crate::event::TamperKind::Ptrace => {
                        format!("called ptrace (request {}) on process {}, outside its job", x.arg, x.target)
                    }
                };
                let subject = format!("{}:{}:{}", x.what.as_str(), x.arg, x.target);
                self.alert(
                    &mut out,
                    x.ts,
                    RULE_TAMPER,
                    false,
                    x.killed,
                    "critical",
                    x.proc.pid,
                    subject,
                    format!("{} {what}: tampering with watcher", x.proc.comm),
                );
            }
            Event::Unix(x) => {
                if self.policy.is_deputy(&x.path) && self.tree.install_script(x.proc.pid).is_some() {
                    self.alert(
                        &mut out,
                        x.ts,
                        RULE_DEPUTY,
                        false,
                        x.killed,
                        "high",
                        x.proc.pid,
                        x.path.clone(),
                        format!(
                            "an install script connected to {}, the socket of a local daemon that connects or starts \
                             processes for its caller",
                            x.path
                        ),
                    );
                }
            }
            Event::Loss(l) => self.on_loss(l, &mut out),
            Event::Alert(_) | Event::End(_) => {}
        }
        out
    }

    /// A package manager sending its own credential to the registry it belongs to: the
    /// send's variable is that manager's credential for a host of a registry the policy
    /// allows (`credential_of`, from the manager's configuration), the destination is that
    /// host (its address, or an address an answer for its name gave), and the sender is the
    /// manager itself, outside every install script. Anything else is exfiltration (a worm
    /// publishing with the victim's token runs npm from an install script).
    fn own_registry_credential(&self, x: &crate::event::Send) -> bool {
        if x.credential_of.is_empty() || self.tree.install_script(x.proc.pid).is_some() {
            return false;
        }
        let Some(node) = self.tree.get(x.proc.pid) else { return false };
        let dest = canonical(x.daddr);
        x.credential_of.iter().any(|label| {
            let Some((manager, host)) = label.split_once(':') else { return false };
            let host = host.to_ascii_lowercase();
            self.policy.registries().iter().any(|pm| pm.as_str() == manager)
                && is_manager_process(manager, node)
                && (host.parse::<IpAddr>().is_ok_and(|ip| canonical(ip) == dest)
                    || self.answered.get(&dest).is_some_and(|names| names.contains(&host)))
        })
    }

    /// The install script whose process starts this shell exec, if it is one (None: not a
    /// shell, or not started inside an install script, or shells are allowed).
    fn shell_in_script(&self, x: &Exec) -> Option<(u32, String, crate::policy::ShellPolicy)> {
        if !(is_shell(&x.filename) || x.shell || x.script) || !self.policy.shells_denied_in_install_scripts() {
            return None;
        }
        // The shell that *starts* a script (npm's `sh -c`) is the script itself; a shell
        // started from inside one, or a second shell exec by its start, is spawned by it.
        let s = self.tree.script_before_exec(x.proc.pid, x.proc.ppid)?;
        let (start, a) = (s.start, &*s.attribution);
        // Per-package rules (`packages:`) choose the rule for this package's scripts.
        let rule = self.policy.shell_policy_for(&a.manager, &a.package);
        (rule != crate::policy::ShellPolicy::Allow).then(|| (start, a.label(), rule))
    }

    /// Whether the agent should read a shell's facts ([`crate::held::enrich`]) before this
    /// exec is judged: it is a shell started inside an install script, or held by the kernel.
    pub fn wants_facts(&self, x: &Exec) -> bool {
        x.held || self.shell_in_script(x).is_some()
    }

    /// The verdict on the last exec event judged: true when it must be killed (the pipeline
    /// kills a held shell, or continues it).
    pub fn last_exec_kill(&self) -> bool {
        self.last_kill
    }

    /// Enforce mode: the `exec.deny` rule that denies running `path` (None in audit mode). The
    /// daemon asks this of a job's first program, which the kernel stopped at exec before the
    /// job's tables existed and so could not judge: killed instead of continued when it names
    /// a rule. Only the explicit deny list: `temp_dirs` needs the step's working tree, which is
    /// not known yet at a job's first exec.
    pub fn first_exec_denied(&self, path: &str) -> Option<String> {
        if self.policy.mode != crate::policy::Mode::Enforce {
            return None;
        }
        self.policy.exec_denied(path)
    }

    /// The alert for a job's first program killed on [`Engine::first_exec_denied`] when its exec
    /// record is not in this job's log (lost, or seen by the daemon before a restart): the kill
    /// is a verdict, and a verdict is never silent.
    pub fn first_exec_killed(&mut self, ts: Ts, pid: u32, path: &str, rule: &str) -> Vec<Alert> {
        let mut out = Vec::new();
        self.alert(
            &mut out,
            ts,
            RULE_EXEC,
            false,
            true,
            "high",
            pid,
            path.to_string(),
            format!("{path} is denied by exec rule {rule:?}: killed at exec (its exec record is not in the log)"),
        );
        out
    }

    /// `exec.temp_dirs`: an executable in a temporary directory outside the step's working tree
    /// and the package managers' install trees is a dropper's (the rule's text for the alert).
    fn dropper(&self, path: &str) -> Option<String> {
        let dir = self.policy.temp_dir_of(path)?;
        let cwd = self.cwd.as_deref();
        let in_tree =
            cwd.is_some_and(|c| c != "/" && c != dir && path.starts_with(c) && path[c.len()..].starts_with('/'));
        if in_tree || crate::shell_rule::in_install_tree(path, cwd) {
            return None;
        }
        Some(format!(
            "temp_dirs: {dir} (outside the step's working tree {} and the install trees)",
            cwd.unwrap_or("(unknown)")
        ))
    }

    fn on_exec(&mut self, x: &Exec, out: &mut Vec<Alert>) {
        let pid = x.proc.pid;
        self.last_kill = false;
        let shell_from = self.shell_in_script(x);
        let denied_by = self.policy.exec_denied(&x.filename).or_else(|| self.dropper(&x.filename));
        // A kill by the kernel has one reason, which is the alert: a denied name is killed at
        // the first execve attempt (possibly a PATH candidate that does not exist), so other
        // rules about that attempted path are not judged.
        if let Some(rule) = &denied_by {
            self.alert(
                out,
                x.ts,
                RULE_EXEC,
                false,
                x.killed,
                "high",
                pid,
                x.filename.clone(),
                format!("{} is denied by exec rule {rule:?}", x.filename),
            );
            if x.killed {
                self.last_kill = true;
                return;
            }
        }
        let Some((script, pkg, rule)) = shell_from else { return self.kill_backstop(x, out) };
        let strict = rule == crate::policy::ShellPolicy::Deny;
        let tree = &self.tree;
        let same_script = |p: u32| tree.install_script(p).is_some_and(|(s, _)| s == script);
        let ctx = crate::shell_rule::Context {
            policy: &self.policy,
            start: self.start,
            cwd: self.cwd.as_deref(),
            strict,
            same_script: &same_script,
        };
        let Some(why) = crate::shell_rule::judge(x, &ctx) else { return self.kill_backstop(x, out) };
        // Enforce mode: the kernel holds the shell and the pipeline kills it on this verdict.
        let killed = x.killed || (x.held && self.policy.mode == Mode::Enforce);
        self.last_kill = killed;
        let args = x.argv.iter().skip(1).take(3).cloned().collect::<Vec<_>>().join(" ");
        self.alert(
            out,
            x.ts,
            RULE_SHELL,
            false,
            killed,
            "high",
            pid,
            x.filename.clone(),
            format!("install script of {pkg} spawned a shell: {} {args}: {why}", basename(&x.filename)),
        );
    }

    /// The kernel killed an exec for a reason this reading of the facts does not see (e.g. its
    /// install-script mark came through a fork record that was lost): under the policy it was
    /// killed by, every kill is an alert, and fails the step. (A replay under a policy that
    /// would not have killed it does not raise it.)
    fn kill_backstop(&mut self, x: &Exec, out: &mut Vec<Alert>) {
        let shell = is_shell(&x.filename) || x.shell;
        if !x.killed || self.policy.mode != Mode::Enforce || (shell && !self.policy.shells_denied_in_install_scripts())
        {
            return;
        }
        self.last_kill = true;
        self.alert(
            out,
            x.ts,
            if shell { RULE_SHELL } else { RULE_EXEC },
            false,
            true,
            "high",
            x.proc.pid,
            x.filename.clone(),
            format!("the kernel killed {} at exec", x.filename),
        );
    }

    /// A raw IP or packet socket opened inside an install script (ICMP sockets are judged by
    /// their packets: `connect` events with op `packet`).
    fn on_socket(&mut self, x: &crate::event::Socket, out: &mut Vec<Alert>) {
        let dangerous = x.family == "packet" || x.sock_type == "raw";
        if !dangerous {
            return;
        }
        let Some(pkg) = self.package(x.proc.pid) else {
            if x.killed {
                // The kernel killed it as inside an install script: say so even when the
                // attribution was lost.
                self.alert(
                    out,
                    x.ts,
                    RULE_RAW_SOCKET,
                    false,
                    true,
                    "high",
                    x.proc.pid,
                    format!("{}/{}", x.family, x.sock_type),
                    format!("{} opened a {} {} socket (protocol {})", x.proc.comm, x.family, x.sock_type, x.protocol),
                );
            }
            return;
        };
        self.alert(
            out,
            x.ts,
            RULE_RAW_SOCKET,
            false,
            x.killed,
            "high",
            x.proc.pid,
            format!("{}/{}", x.family, x.sock_type),
            format!(
                "install script of {pkg} opened a {} {} socket (protocol {}): it can send packets no connect() shows",
                x.family, x.sock_type, x.protocol
            ),
        );
    }

    fn egress_allowed(&self, ip: IpAddr, port: u16) -> bool {
        if self.policy.ip_allowed(ip, port) {
            return true;
        }
        self.learned.get(&canonical(ip)).is_some_and(|names| names.iter().any(|n| self.policy.host_allowed(n, port)))
    }

    /// The host a stream's first data names (SNI, Host, a proxy's CONNECT or URI), judged as
    /// the kernel does (watcher-ebpf/src/target.rs): not on a connection to an address an
    /// `allow` ip/cidr entry names, always through a proxy.
    fn on_target(&mut self, x: &crate::event::Send, t: &crate::event::StreamTarget, out: &mut Vec<Alert>) {
        let proxy = self.policy.is_proxy(x.daddr, x.dport);
        if !proxy && self.policy.ip_allowed(x.daddr, x.dport) {
            return;
        }
        // A connection to an address that is not allowed is already an `egress-denied` alert
        // (its connect): the name it carries adds nothing.
        if !proxy && !self.egress_allowed(x.daddr, x.dport) {
            return;
        }
        let ok = match t.host.parse::<IpAddr>() {
            Ok(ip) => self.egress_allowed(ip, t.port),
            Err(_) => self.policy.host_allowed(&t.host, t.port),
        };
        if ok {
            return;
        }
        let via = if proxy {
            format!("a request through the proxy {}:{}", x.daddr, x.dport)
        } else {
            format!("a connection to {}:{}", x.daddr, x.dport)
        };
        let what = match t.how.as_str() {
            "tls-sni" => "TLS server name",
            "http-connect" => "CONNECT target",
            "http-uri" => "request URI host",
            _ => "HTTP Host",
        };
        let dest = format!("{}:{}", t.host.to_ascii_lowercase(), t.port);
        self.alert(
            out,
            x.ts,
            RULE_EGRESS,
            t.dropped,
            false,
            "high",
            x.proc.pid,
            dest.clone(),
            format!("{via} names {dest} ({what}), which is not allowed by policy"),
        );
    }

    fn on_connect(&mut self, c: &Connect, out: &mut Vec<Alert>) {
        let pid = c.proc.pid;
        // Formatted only when an alert needs it (this runs for every connection).
        let dest = || format!("{}:{}/{}", c.daddr, c.dport, c.proto.as_str());
        if c.dport == 53 {
            if !self.policy.resolver_allowed(c.daddr, &self.resolvers) {
                let dest = dest();
                self.alert(
                    out,
                    c.ts,
                    RULE_DNS_RESOLVER,
                    !c.allowed,
                    false,
                    "high",
                    pid,
                    dest.clone(),
                    format!("DNS traffic to {dest}, which is not an allowed resolver"),
                );
            }
            return;
        }
        if !self.egress_allowed(c.daddr, c.dport) {
            let dest = dest();
            let how = match self.answered.get(&canonical(c.daddr)) {
                Some(names) => format!(
                    " (an answer for {} gave this address)",
                    names.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
                None => " (no allowed host resolved to it)".into(),
            };
            self.alert(
                out,
                c.ts,
                RULE_EGRESS,
                !c.allowed,
                false,
                "high",
                pid,
                dest.clone(),
                format!("{} to {dest} is not allowed by policy{how}", c.op),
            );
        }
    }

    fn on_dns(&mut self, d: &Dns, out: &mut Vec<Alert>) {
        let pid = d.proc.pid;
        if let Some(err) = &d.error {
            self.alert(
                out,
                d.ts,
                RULE_DNS_MALFORMED,
                !d.allowed,
                false,
                "high",
                pid,
                format!("{}:{}", d.server, d.server_port),
                format!("{} bytes to port 53 of {} that are not a DNS query: {err}", d.payload_len, d.server),
            );
            return;
        }
        if !self.policy.resolver_allowed(d.server, &self.resolvers) {
            self.alert(
                out,
                d.ts,
                RULE_DNS_RESOLVER,
                !d.allowed,
                false,
                "high",
                pid,
                d.server.to_string(),
                format!("DNS query for {} sent to {}, which is not an allowed resolver", d.qname, d.server),
            );
        }
        let name_ok = self.policy.dns_name_allowed(&d.qname);
        if !name_ok {
            self.alert(
                out,
                d.ts,
                RULE_DNS_NAME,
                !d.allowed,
                false,
                "high",
                pid,
                d.qname.to_ascii_lowercase(),
                format!("DNS query for {} ({}) is not allowed by policy", d.qname, d.qtype),
            );
        }
        for s in &d.secrets {
            if self.policy.is_secret_env(&s.variable) {
                self.secret_alert(
                    out,
                    d.ts,
                    !d.allowed,
                    pid,
                    s,
                    format!("{}:{}", s.variable, d.qname),
                    format!(
                        "the value of {}{} ({} encoded) is in the DNS query name sent to {}",
                        s.variable,
                        redacted_note(s),
                        s.encoding,
                        d.server
                    ),
                );
            }
        }
        if let Some(answers) = &d.answers {
            let name = d.qname.to_ascii_lowercase();
            for ip in answers {
                // Allocate only for a new (address, name) pair: answers repeat all the time.
                let answered = self.answered.entry(canonical(*ip)).or_default();
                if !answered.contains(&name) {
                    answered.insert(name.clone());
                }
                if name_ok {
                    let learned = self.learned.entry(canonical(*ip)).or_default();
                    if !learned.contains(&name) {
                        learned.insert(name.clone());
                    }
                }
            }
        }
    }

    fn on_loss(&mut self, l: &Loss, out: &mut Vec<Alert>) {
        // One alert per source: the summary has the totals.
        let before = self.alerts;
        self.alert(
            out,
            l.ts,
            RULE_LOSS,
            false,
            false,
            "medium",
            0,
            l.source.clone(),
            format!("the kernel lost {} {} events: what they were cannot be judged", l.count, l.source),
        );
        self.loss_alerts += self.alerts - before;
    }

    /// Whether the step must fail: in enforce mode, any violation (blocked in the kernel or
    /// only seen: fail closed) or any lost event.
    pub fn enforce_failure(&self, lost: u64) -> Option<i32> {
        if self.policy.mode != Mode::Enforce {
            return None;
        }
        if self.alerts > self.loss_alerts {
            return Some(crate::exitcode::POLICY_VIOLATION);
        }
        if lost > 0 {
            return Some(crate::exitcode::EVENTS_LOST);
        }
        None
    }
}

/// Whether a process is the package manager `manager` itself (by the program it exec'd).
fn is_manager_process(manager: &str, node: &crate::proctree::Node) -> bool {
    match manager {
        // `npm` on PATH is a link to npm-cli.js run by node; `node .../npm-cli.js` too.
        "npm" => {
            node.filename.as_deref().is_some_and(|f| matches!(basename(f), "npm" | "npm-cli.js"))
                || node.argv.iter().take(2).any(|a| a.ends_with("/npm-cli.js") || a.ends_with("/bin/npm"))
        }
        _ => false,
    }
}

/// IPv4-mapped IPv6 addresses are the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Exec, Fork, Proc};

    fn exec(pid: u32, ppid: u32, file: &str, killed: bool) -> Event {
        Event::Exec(Exec {
            ts: Ts(1),
            proc: Proc { pid, ppid, comm: basename(file).into(), uid: 0 },
            filename: file.into(),
            argv: vec![file.into()],
            argv_truncated: false,
            argv_redacted: false,
            cgroup_id: 0,
            env: Default::default(),
            killed,
            shell: false,
            cwd: None,
            held: false,
            script: false,
            facts: None,
        })
    }

    fn policy() -> Policy {
        crate::policy::parse_str("t.yaml", "version: 1\npipeline: t\nmode: enforce\n").unwrap()
    }

    #[test]
    fn every_kill_is_an_alert_that_fails_the_step() {
        // A process the kernel killed although nothing in these facts explains it (its fork
        // record was lost, so it is not attributed): still an alert, and the step fails.
        let mut e = Engine::new(policy());
        assert!(e.process(&exec(10, 1, "/usr/bin/node", false)).is_empty());
        let al = e.process(&exec(11, 99, "/usr/bin/python3", true));
        assert_eq!(al.len(), 1, "{al:?}");
        assert_eq!((al[0].rule.as_str(), al[0].action.as_str()), (RULE_EXEC, "kill"));
        let al = e.process(&exec(12, 99, "/bin/sh", true));
        assert_eq!((al[0].rule.as_str(), al[0].action.as_str()), (RULE_SHELL, "kill"));
        assert_eq!(e.enforce_failure(0), Some(crate::exitcode::POLICY_VIOLATION));
    }

    #[test]
    fn a_shell_deep_below_an_install_script_is_attributed() {
        let mut e = Engine::new(policy());
        let mut env = std::collections::BTreeMap::new();
        env.insert("npm_lifecycle_event".to_string(), "postinstall".to_string());
        env.insert("npm_package_name".to_string(), "deep".to_string());
        e.process(&Event::Fork(Fork { ts: Ts(0), proc: Proc { pid: 2, ppid: 1, comm: "node".into(), uid: 0 } }));
        let Event::Exec(mut start) = exec(2, 1, "/bin/sh", false) else { unreachable!() };
        start.env = env;
        assert!(e.process(&Event::Exec(start)).is_empty());
        for pid in 3..304 {
            e.process(&Event::Fork(Fork { ts: Ts(0), proc: Proc { pid, ppid: pid - 1, comm: "sh".into(), uid: 0 } }));
        }
        let al = e.process(&exec(303, 302, "/bin/sh", true));
        assert_eq!(al.len(), 1, "{al:?}");
        assert_eq!(al[0].rule, RULE_SHELL);
        assert_eq!(al[0].package.as_deref(), Some("npm:deep (postinstall)"));
        assert!(al[0].message.contains("install script of npm:deep"), "{}", al[0].message);
    }

    #[test]
    fn a_package_manager_sending_its_own_credential_to_its_registry_is_not_an_alert() {
        let pol = crate::policy::parse_str(
            "t.yaml",
            "version: 1\npipeline: t\nmode: enforce\negress:\n  registries: [npm]\nsecrets:\n  env: [\"*_TOKEN\"]\n",
        )
        .unwrap();
        let send = |pid: u32, daddr: &str, credential_of: &[&str]| {
            Event::Send(crate::event::Send {
                ts: Ts(5),
                proc: Proc { pid, ppid: 1, comm: "npm".into(), uid: 0 },
                daddr: daddr.parse().unwrap(),
                dport: 4873,
                proto: crate::event::Proto::Tcp,
                bytes: 300,
                secrets: vec![crate::event::SecretMatch {
                    variable: "NPM_TOKEN".into(),
                    encoding: "raw".into(),
                    redacted: Some("np…(36 chars)".into()),
                }],
                offset: Some(120),
                credential_of: credential_of.iter().map(|s| s.to_string()).collect(),
                target: None,
            })
        };
        let mut e = Engine::new(pol);
        e.process(&exec(10, 1, "/usr/bin/npm", false));
        e.process(&exec(11, 1, "/usr/bin/python3", false));
        // npm itself, to the registry host its .npmrc gives the token for: a fact, no alert.
        assert!(e.process(&send(10, "127.0.0.1", &["npm:127.0.0.1"])).is_empty());
        // The same variable to another address, or by another program, or not configured: alerts.
        assert_eq!(e.process(&send(10, "198.18.0.2", &["npm:127.0.0.1"])).len(), 1);
        assert_eq!(e.process(&send(11, "127.0.0.1", &["npm:127.0.0.1"])).len(), 1);
        // npm run from an install script (a worm publishing with the victim's token): alert.
        let mut env = std::collections::BTreeMap::new();
        env.insert("npm_lifecycle_event".to_string(), "postinstall".to_string());
        env.insert("npm_package_name".to_string(), "worm".to_string());
        e.process(&Event::Fork(Fork { ts: Ts(0), proc: Proc { pid: 20, ppid: 10, comm: "npm".into(), uid: 0 } }));
        let Event::Exec(mut start) = exec(20, 10, "/bin/sh", false) else { unreachable!() };
        start.env = env;
        e.process(&Event::Exec(start));
        e.process(&Event::Fork(Fork { ts: Ts(0), proc: Proc { pid: 21, ppid: 20, comm: "sh".into(), uid: 0 } }));
        e.process(&exec(21, 20, "/usr/bin/npm", false));
        let al = e.process(&send(21, "127.0.0.1", &["npm:127.0.0.1"]));
        assert_eq!(al.len(), 1);
        assert_eq!((al[0].rule.as_str(), al[0].severity.as_str()), (RULE_SECRET, "critical"));
        assert_eq!(al[0].package.as_deref(), Some("npm:worm (postinstall)"));
    }
}
