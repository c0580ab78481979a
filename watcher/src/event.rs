//! The event model: exactly what `--log` writes, one JSON object per line, and what `replay`
//! reads back. Schema version [`SCHEMA_VERSION`]; the `start` record of each log names it.
//! Field names are a contract with other tools: add fields, never rename or remove them
//! without bumping the version.
//!
//! Each event that carries a process (`#[serde(flatten)] proc: Proc`) is defined inside
//! `flat_event!` (`event/flat.rs`), which also generates its flat reading form for the fast
//! parser (`parse.rs`): add a field here and both readers have it.
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use crate::record::{FileWhat, Proto, TamperKind};

pub const SCHEMA_VERSION: u32 = 1;

/// Wall-clock time of an event, nanoseconds since the Unix epoch, written as RFC 3339 UTC
/// with nanoseconds (`2026-11-23T19:10:00.123456789Z`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Ts(pub u64);

impl Serialize for Ts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(self.0);
        s.collect_str(&humantime::format_rfc3339_nanos(t))
    }
}

impl<'de> Deserialize<'de> for Ts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let t = humantime::parse_rfc3339(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid timestamp {s:?} (want RFC 3339): {e}")))?;
        let ns = t
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| serde::de::Error::custom("timestamp before 1970"))?
            .as_nanos();
        Ok(Ts(ns as u64))
    }
}

/// The process fields of every event, listed once: [`Proc`] and the flat reading form of each
/// event that flattens it (`flat_event!`, event/flat.rs) are both generated from this list.
/// `proc_fields! { m! { ARGS } }` calls `m! { {FIELDS} ARGS }`.
macro_rules! proc_fields {
    ($m:ident! { $($args:tt)* }) => {
        $m! {
            {
                pub pid: u32,
                pub ppid: u32,
                pub comm: String,
                #[serde(default)]
                pub uid: u32,
            }
            $($args)*
        }
    };
}

#[macro_use]
mod flat;
pub use flat::{Flat, FlatForm};

proc_fields! { proc_struct! {
    /// The process an event belongs to.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
    pub struct Proc;
} }

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Event {
    Start(Start),
    Exec(Exec),
    Fork(Fork),
    Exit(Exit),
    Connect(Connect),
    Dns(Dns),
    Send(Send),
    Socket(Socket),
    Tamper(Tamper),
    Unix(Unix),
    File(File),
    Loss(Loss),
    Alert(Alert),
    End(End),
}

impl Event {
    pub fn ts(&self) -> Ts {
        match self {
            Event::Start(e) => e.ts,
            Event::Exec(e) => e.ts,
            Event::Fork(e) => e.ts,
            Event::Exit(e) => e.ts,
            Event::Connect(e) => e.ts,
            Event::Dns(e) => e.ts,
            Event::Send(e) => e.ts,
            Event::Socket(e) => e.ts,
            Event::Tamper(e) => e.ts,
            Event::Unix(e) => e.ts,
            Event::File(e) => e.ts,
            Event::Loss(e) => e.ts,
            Event::Alert(e) => e.ts,
            Event::End(e) => e.ts,
        }
    }
    /// The process the event is about, if any.
    pub fn proc_mut(&mut self) -> Option<&mut Proc> {
        match self {
            Event::Exec(e) => Some(&mut e.proc),
            Event::Fork(e) => Some(&mut e.proc),
            Event::Exit(e) => Some(&mut e.proc),
            Event::Connect(e) => Some(&mut e.proc),
            Event::Dns(e) => Some(&mut e.proc),
            Event::Send(e) => Some(&mut e.proc),
            Event::Socket(e) => Some(&mut e.proc),
            Event::Tamper(e) => Some(&mut e.proc),
            Event::Unix(e) => Some(&mut e.proc),
            Event::File(e) => Some(&mut e.proc),
            Event::Start(_) | Event::Loss(_) | Event::Alert(_) | Event::End(_) => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Event::Start(_) => "start",
            Event::Exec(_) => "exec",
            Event::Fork(_) => "fork",
            Event::Exit(_) => "exit",
            Event::Connect(_) => "connect",
            Event::Dns(_) => "dns",
            Event::Send(_) => "send",
            Event::Socket(_) => "socket",
            Event::Tamper(_) => "tamper",
            Event::Unix(_) => "unix",
            Event::File(_) => "file",
            Event::Loss(_) => "loss",
            Event::Alert(_) => "alert",
            Event::End(_) => "end",
        }
    }
}

/// First record of every log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Start {
    pub ts: Ts,
    pub schema: u32,
    pub watcher: String,
    /// `run`, `daemon` or `drill`.
    pub mode: String,
    #[serde(default)]
    pub command: Vec<String>,
    /// The watcher's own pid (the parent of the watched command).
    pub pid: u32,
    #[serde(default)]
    pub sensors: Vec<SensorState>,
    /// Resolvers from /etc/resolv.conf at the time of the run.
    #[serde(default)]
    pub resolvers: Vec<IpAddr>,
    /// Registry hosts of the policy's package managers, as their own configuration gave them
    /// at the time of the run (replay uses these, so it judges with the same facts).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub registries: std::collections::BTreeMap<String, Vec<String>>,
    /// Where each registry host came from (a file, a variable, a tool's default); `workspace`
    /// marks the files of the step's checkout (schema: [`crate::probe::RegistrySource`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registry_sources: Vec<crate::probe::RegistrySource>,
    /// Forward proxies from the step's environment (`HTTPS_PROXY`, ...) and its package
    /// managers' settings, judged as `egress.proxies` (schema: [`crate::proxies::ProxySource`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_sources: Vec<crate::proxies::ProxySource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyInfo>,
    /// The effective policy itself (YAML, defaults written out, mode as applied): replay
    /// without `--policy` judges with it and never opens the file `policy.source` names.
    /// Schema 1 since watcher 0.1.0 (absent in older logs: replay then needs `--policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_yaml: Option<String>,
    /// Daemon mode: the job this log is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobInfo>,
    /// The step's own project, read when it started (`project.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<Project>,
}

/// The step's own project: its working directory and the user's own package manifests there,
/// whose lifecycle scripts are the user's code, not a dependency's install script.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Project {
    /// Working directory of the step's command.
    pub cwd: String,
    /// Absolute paths of the root `package.json` and of its workspaces' `package.json` files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub package_jsons: Vec<String>,
}

/// How the daemon recognised a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JobInfo {
    /// `NAME=value` of the job variable that named it.
    pub id: String,
    /// Value of the pipeline variable ("" when there was none).
    pub pipeline: String,
    #[serde(default)]
    pub variables: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PolicyInfo {
    pub source: String,
    pub pipeline: String,
    /// `audit` or `enforce`.
    pub mode: String,
}

/// A protected variable's value found in a DNS name or a payload. Never the value itself.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SecretMatch {
    pub variable: String,
    /// `raw`, `hex`, `base32`, `base64` or `url`.
    pub encoding: String,
    /// The variable's value in redacted form (`secrets::redact`: `"AK…(20 chars)"`), never
    /// the value itself. Absent in logs written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacted: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SensorState {
    pub name: String,
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

flat_event! {
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
    pub struct Exec {
        pub ts: Ts,
        #[serde(flatten)]
        pub proc: Proc,
        pub filename: String,
        pub argv: Vec<String>,
        #[serde(default, skip_serializing_if = "is_false")]
        pub argv_truncated: bool,
        /// Present and `true` when a protected variable's value was in `argv` (e.g. expanded by a
        /// shell from `$AWS_SECRET_ACCESS_KEY`) and was replaced there by its redacted form.
        #[serde(default, skip_serializing_if = "is_false")]
        pub argv_redacted: bool,
        #[serde(default)]
        pub cgroup_id: u64,
        /// The few environment variables watcher captures at exec to attribute work to a package
        /// or a CI job (`npm_package_name`, `npm_lifecycle_event`, `CARGO_PKG_NAME`,
        /// `GITHUB_RUN_ID`, ...; see README). Never the rest of the environment.
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        pub env: std::collections::BTreeMap<String, String>,
        /// Killed by the kernel at exec entry (enforce mode).
        #[serde(default, skip_serializing_if = "is_false")]
        pub killed: bool,
        /// The kernel recognised the program as a shell by its content (a copy of a shell
        /// binary under another name).
        #[serde(default, skip_serializing_if = "is_false")]
        pub shell: bool,
        /// Working directory, read from /proc when the event arrived (absent if the process was
        /// already gone).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub cwd: Option<String>,
        /// Enforce mode: the kernel held this shell (stopped before its first instruction) for
        /// the agent to judge; the engine's verdict killed or continued it.
        #[serde(default, skip_serializing_if = "is_false")]
        pub held: bool,
        /// The kernel saw a `#!` script whose interpreter is a shell binary (`filename` is the
        /// script).
        #[serde(default, skip_serializing_if = "is_false")]
        pub script: bool,
        /// What the agent read about a shell started inside an install script (while it was
        /// held, in enforce mode), so replay judges it exactly as the live run did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub facts: Option<Box<ShellFacts>>,
    }
}

/// Facts about a shell started inside an install script: read from /proc by the agent
/// (`held.rs`), judged by the engine (`shell_rule.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ShellFacts {
    /// `readlink /proc/PID/exe`: the binary really running (`/usr/bin/dash`,
    /// `/memfd:x (deleted)`, `/tmp/x/sh (deleted)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// Status-change time of that binary (a copy made during the step is newer than the
    /// step's start; ctime cannot be set back from user space).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe_ctime: Option<Ts>,
    /// Link count of that binary (0: a memfd or a deleted file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe_nlink: Option<u64>,
    /// `readlink /proc/PID/fd/{0,1,2}` (`pipe:[123]`, `socket:[456]`, `/dev/null`); null when
    /// the descriptor is closed.
    #[serde(default)]
    pub stdio: Vec<Option<String>>,
    /// Stdin is a pipe: the processes of the step holding its write end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stdin_writers: Vec<PipeWriter>,
    /// The script file the shell runs (its operand, or the `#!` script itself), absolute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// Status-change time of the script file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_ctime: Option<Ts>,
    /// Why some facts could not be read (the process was gone, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A process holding the write end of a shell's stdin pipe.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PipeWriter {
    pub pid: u32,
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// Its TCP/UDP sockets (IPv4 or IPv6), open when it was looked at.
    #[serde(default)]
    pub inet_sockets: u32,
}

flat_event! {
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
    pub struct Fork {
        pub ts: Ts,
        /// The new process: `pid` is the child, `ppid` the process that forked it,
        /// `comm` the child's (inherited) command name.
        #[serde(flatten)]
        pub proc: Proc,
    }
}

flat_event! {
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
    pub struct Exit {
        pub ts: Ts,
        #[serde(flatten)]
        pub proc: Proc,
        /// Status passed to exit(); absent when the process was killed by a signal.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub exit_code: Option<i32>,
    }
}

flat_event! {
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
    pub struct Connect {
        pub ts: Ts,
        #[serde(flatten)]
        pub proc: Proc,
        pub daddr: IpAddr,
        pub dport: u16,
        pub proto: Proto,
        /// `connect`, `sendto` for an unconnected UDP send (reported once per destination and
        /// process), or `packet` for a packet the backstop judged (ICMP, raw IP, SCTP: reported
        /// once per socket and destination).
        pub op: String,
        /// false when the kernel denied it (enforce mode).
        pub allowed: bool,
    }
}

flat_event! {
    /// A raw IP socket, a packet socket (AF_PACKET) or an ICMP socket was opened. Its packets
    /// are judged by the packet backstop (`connect` events with `op: "packet"`).
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
    pub struct Socket {
        pub ts: Ts,
        #[serde(flatten)]
        pub proc: Proc,
        /// `inet`, `inet6`, `packet` or the number.
        pub family: String,
        /// `raw`, `dgram`, `stream` or the number.
        #[serde(rename = "type")]
        pub sock_type: String,
        pub protocol: u32,
        /// Killed by the kernel before the socket() call returned (enforce mode).
        #[serde(default, skip_serializing_if = "is_false")]
        pub killed: bool,
    }
}

flat_event! {
    /// A watched process went for watcher itself: a signal to the agent, the bpf() system call,
    /// umount, ptrace of a process outside its job.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
    pub struct Tamper {
        pub ts: Ts,
        #[serde(flatten)]
        pub proc: Proc,
        pub what: TamperKind,
        /// The signal number, bpf command, umount flags or ptrace request.
        pub arg: u32,
        /// The process it was aimed at (signal, ptrace), else 0.
        #[serde(default)]
        pub target: u32,
        #[serde(default, skip_serializing_if = "is_false")]
        pub killed: bool,
    }
}

flat_event! {
    /// An install script opened a credential store or a protected path, or read the environment
    /// or memory of a process outside its own tree (the file sensor, decided in the kernel).
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
    pub struct File {
        pub ts: Ts,
        #[serde(flatten)]
        pub proc: Proc,
        pub what: FileWhat,
        /// The path as the process passed it (`open`), or `/proc/PID/...`; empty for
        /// process_vm_readv and ptrace.
        #[serde(default)]
        pub path: String,
        /// `credential` (a credential store, another process's environment or memory) or
        /// `tamper` (a write to a protected path).
        pub class: FileClass,
        /// The open asked for writing.
        #[serde(default, skip_serializing_if = "is_false")]
        pub write: bool,
        /// The process whose environment or memory was read, else 0.
        #[serde(default, skip_serializing_if = "is_zero")]
        pub target: u32,
        /// Killed by the kernel before the open returned (enforce mode).
        #[serde(default, skip_serializing_if = "is_false")]
        pub killed: bool,
    }
}

/// What a file event is about, for the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, Hash)]
#[serde(rename_all = "lowercase")]
pub enum FileClass {
    Credential,
    Tamper,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

flat_event! {
    /// A connect() to a unix socket: a path, or `@name` for an abstract one.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
    pub struct Unix {
        pub ts: Ts,
        #[serde(flatten)]
        pub proc: Proc,
        pub path: String,
        /// The path is a local deputy's (a daemon that connects or starts processes for its
        /// caller: docker, containerd, podman, systemd).
        #[serde(default, skip_serializing_if = "is_false")]
        pub deputy: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        pub killed: bool,
    }
}

flat_event! {
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
    pub struct Dns {
        pub ts: Ts,
        #[serde(flatten)]
        pub proc: Proc,
        pub qname: String,
        pub qtype: String,
        pub server: IpAddr,
        #[serde(default = "dns_port")]
        pub server_port: u16,
        pub proto: Proto,
        pub id: u16,
        /// DNS response code (`NOERROR`, `NXDOMAIN`, ...); absent when no answer was seen.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub rcode: Option<String>,
        /// Addresses from the answer; absent when no answer was seen.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub answers: Option<Vec<IpAddr>>,
        /// CNAME targets in the answer.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub cnames: Vec<String>,
        /// The payload to port 53 was not a DNS query this watcher could parse (`qname` is empty);
        /// `error` says why. Never dropped: it may be data leaving over port 53.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub error: Option<String>,
        #[serde(default)]
        pub payload_len: u32,
        pub allowed: bool,
        /// Protected environment values found in the query name (redacted: variable names only).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub secrets: Vec<SecretMatch>,
    }
}

flat_event! {
    /// Data a socket sent (not port 53): the first data of each socket (with no `secrets` when
    /// none was found), and one more per protected variable and encoding found later in its
    /// first 64 KiB (TCP) or in a datagram (UDP), with the stream `offset` where the value
    /// starts. Never the data itself.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
    pub struct Send {
        pub ts: Ts,
        #[serde(flatten)]
        pub proc: Proc,
        pub daddr: IpAddr,
        pub dport: u16,
        pub proto: Proto,
        /// Size of the payload of the packet that carried it.
        pub bytes: u32,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub secrets: Vec<SecretMatch>,
        /// Where in the socket's data the value found starts (bytes from the first data byte;
        /// UDP: from the socket's first datagram). Absent on a first-data record with no find.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub offset: Option<u64>,
        /// The package-manager registries (`npm:HOST`) whose credential, in that manager's own
        /// configuration, the variable found is (`credentials.rs`): the engine does not flag
        /// that manager itself sending it to that host.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub credential_of: Vec<String>,
        /// The host name the stream's first data targets (TCP, first data only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub target: Option<StreamTarget>,
    }
}

/// The host a TCP stream's first data segment names: a TLS ClientHello's server name, an
/// HTTP `CONNECT host:port` or absolute URI (a request to a forward proxy), else the HTTP
/// `Host` header. Judged against the allowed host names (`egress-denied`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StreamTarget {
    /// `tls-sni`, `http-connect`, `http-uri` or `http-host`.
    pub how: String,
    /// As sent (an IP literal is kept as such).
    pub host: String,
    /// The CONNECT or URI port, else the connection's.
    pub port: u16,
    /// The kernel dropped the segment and every later packet of the socket (enforce mode).
    #[serde(default, skip_serializing_if = "is_false")]
    pub dropped: bool,
}

fn dns_port() -> u16 {
    53
}

/// Events the kernel could not deliver (ring buffer full) or track (map full), counted in the
/// kernel and reported here as they happen, and in the summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Loss {
    pub ts: Ts,
    /// What was lost: `exec`, `fork`, `exit`, `connect`, `dns`, `payload`, `guard` (ring buffer
    /// full), `watch` (process not tracked), `exec-scratch`, `socket-owner` (a socket or connect
    /// refused: its owner could not be recorded), `decode`; in daemon mode also `restart` (a job adopted from a daemon
    /// that was killed while the job was held: what happened before is not in this log).
    pub source: String,
    /// Lost since the previous loss event for this source.
    pub count: u64,
    /// Lost since the start of the run.
    pub total: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Alert {
    pub ts: Ts,
    pub rule: String,
    /// `flag`, `deny` or `kill`.
    pub action: String,
    /// `low`, `medium`, `high`, `critical`.
    pub severity: String,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    pub message: String,
    /// `secret-exfil`: the protected variable whose value left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variable: Option<String>,
    /// `secret-exfil`: that variable's value in redacted form (from the event that carried
    /// it), never the value itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacted: Option<String>,
}

/// Last record of a log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct End {
    pub ts: Ts,
    /// The command's exit code (128+N when killed by signal N).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub lost: u64,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ts_round_trips_through_rfc3339() {
        let ts = Ts(1_795_000_000_123_456_789);
        let s = serde_json::to_string(&ts).unwrap();
        assert!(s.ends_with(".123456789Z\""), "{s}");
        assert_eq!(serde_json::from_str::<Ts>(&s).unwrap(), ts);
        assert!(serde_json::from_str::<Ts>("\"yesterday\"").is_err());
    }

    #[test]
    fn connect_has_the_documented_field_names() {
        let e = Event::Connect(Connect {
            ts: Ts(0),
            proc: Proc { pid: 5, ppid: 1, comm: "curl".into(), uid: 0 },
            daddr: "::1".parse().unwrap(),
            dport: 8080,
            proto: Proto::Tcp,
            op: "connect".into(),
            allowed: true,
        });
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["kind"], "connect");
        assert_eq!(v["pid"], 5);
        assert_eq!(v["ppid"], 1);
        assert_eq!(v["comm"], "curl");
        assert_eq!(v["daddr"], "::1");
        assert_eq!(v["dport"], 8080);
        assert_eq!(v["proto"], "tcp");
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn dns_answers_absent_until_answered() {
        let mut d = Dns {
            ts: Ts(0),
            proc: Proc::default(),
            qname: "example.test".into(),
            qtype: "A".into(),
            server: "127.0.0.1".parse().unwrap(),
            server_port: 53,
            proto: Proto::Udp,
            id: 1,
            rcode: None,
            answers: None,
            cnames: vec![],
            error: None,
            payload_len: 30,
            allowed: true,
            secrets: vec![],
        };
        let v = serde_json::to_value(Event::Dns(d.clone())).unwrap();
        assert!(v.get("answers").is_none());
        d.answers = Some(vec!["10.0.0.1".parse().unwrap()]);
        let v = serde_json::to_value(Event::Dns(d)).unwrap();
        assert_eq!(v["answers"][0], "10.0.0.1");
        assert_eq!(v["qname"], "example.test");
        assert_eq!(v["qtype"], "A");
        assert_eq!(v["server"], "127.0.0.1");
    }
}
