//! Turns raw kernel records into log events: boot-time clock to wall clock, DNS packets into
//! one `dns` event per query joined with its answer. Pure: time comes from the records (and
//! from the caller for timeouts), so it is tested without a kernel.
use std::{collections::HashMap, net::IpAddr};

use crate::{
    dns,
    event::{Connect, Dns, Event, Exec, Exit, Fork, Proc, SecretMatch, Send, Socket, Tamper, Ts, Unix},
    record::{Proto, Record, Task},
    secrets::SecretSet,
};

/// How long a query waits for its answer before it is logged unanswered.
pub const DNS_ANSWER_TIMEOUT_NS: u64 = 2_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct QueryKey {
    id: u16,
    client: IpAddr,
    client_port: u16,
    server: IpAddr,
    server_port: u16,
}

struct Pending {
    boot_ns: u64,
    events: Vec<Dns>,
}

pub struct Collector {
    /// CLOCK_REALTIME - CLOCK_BOOTTIME, nanoseconds.
    clock_offset_ns: i128,
    pending: HashMap<QueryKey, Pending>,
    /// Values of the environment given to the command, to find them leaving in DNS names.
    /// Several sets when one variable has had several values (a daemon job's steps): each
    /// set names a variable once, so a hit's redacted value is that of the set that matched.
    secrets: Vec<SecretSet>,
    /// Per-socket reassembly of the kernel's stream chunks.
    streams: crate::stream::Streams,
    /// Protected variables that are a package manager's own registry credential.
    credentials: Vec<crate::credentials::Credential>,
}

/// Detector hits as log facts: variable names, encodings and redacted values, sorted, once each.
fn matches(sets: &[SecretSet], find: impl Fn(&SecretSet) -> Vec<crate::secrets::SecretHit>) -> Vec<SecretMatch> {
    let mut v: Vec<SecretMatch> = Vec::new();
    for set in sets {
        v.extend(find(set).into_iter().map(|h| SecretMatch {
            redacted: set.redacted(&h.variable).map(str::to_string),
            variable: h.variable,
            encoding: h.encoding.as_str().to_string(),
        }));
    }
    v.sort();
    v.dedup();
    v
}

pub fn rcode_name(rcode: u8) -> String {
    match rcode {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("RCODE{n}"),
    }
}

impl Collector {
    pub fn new(clock_offset_ns: i128) -> Collector {
        Collector {
            clock_offset_ns,
            pending: HashMap::new(),
            secrets: Vec::new(),
            streams: Default::default(),
            credentials: Vec::new(),
        }
    }

    /// Annotate DNS queries with the protected variables whose values they carry.
    pub fn with_secrets(mut self, secrets: SecretSet) -> Collector {
        self.secrets = vec![secrets];
        self
    }

    /// Which protected variables are package managers' registry credentials (written into
    /// the `send` events that carry them).
    pub fn with_credentials(mut self, credentials: Vec<crate::credentials::Credential>) -> Collector {
        self.credentials = credentials;
        self
    }

    fn credential_of(&self, variable: &str) -> Vec<String> {
        self.credentials.iter().filter(|c| c.variable == variable).map(|c| c.label()).collect()
    }

    /// Replace the protected values (a daemon job learns them from its processes'
    /// environments; an empty list drops them).
    pub fn set_secrets(&mut self, sets: Vec<SecretSet>) {
        self.secrets = sets;
    }

    fn secret_matches(&self, qname: &str) -> Vec<SecretMatch> {
        matches(&self.secrets, |s| s.find_in_dns_name(qname))
    }

    /// The protected values looked for (the pipeline redacts every event with them before
    /// any sink: `redact::event`).
    pub fn secrets(&self) -> &[SecretSet] {
        &self.secrets
    }

    pub fn wall(&self, boot_ns: u64) -> Ts {
        Ts((boot_ns as i128 + self.clock_offset_ns).max(0) as u64)
    }

    fn proc(task: &Task) -> Proc {
        Proc { pid: task.pid, ppid: task.ppid, comm: task.comm.clone(), uid: task.uid }
    }

    /// Queries still waiting for an answer.
    pub fn pending_queries(&self) -> usize {
        self.pending.values().map(|p| p.events.len()).sum()
    }

    pub fn push(&mut self, rec: Record, out: &mut Vec<Event>) {
        match rec {
            Record::Exec { task, filename, argv, argv_truncated, env, killed, shell, held, script, .. } => {
                out.push(Event::Exec(Exec {
                    ts: self.wall(task.boot_ns),
                    proc: Self::proc(&task),
                    filename,
                    argv,
                    argv_truncated,
                    argv_redacted: false,
                    cgroup_id: task.cgroup_id,
                    env: env.into_iter().collect(),
                    killed,
                    shell,
                    cwd: None,
                    held,
                    script,
                    facts: None,
                }))
            }
            Record::Socket { task, family, sock_type, protocol, killed } => out.push(Event::Socket(Socket {
                ts: self.wall(task.boot_ns),
                proc: Self::proc(&task),
                family: match family {
                    2 => "inet".into(),
                    10 => "inet6".into(),
                    17 => "packet".into(),
                    n => n.to_string(),
                },
                sock_type: match sock_type {
                    1 => "stream".into(),
                    2 => "dgram".into(),
                    3 => "raw".into(),
                    n => n.to_string(),
                },
                protocol,
                killed,
            })),
            Record::Tamper { task, what, arg, target, killed } => out.push(Event::Tamper(Tamper {
                ts: self.wall(task.boot_ns),
                proc: Self::proc(&task),
                what,
                arg,
                target,
                killed,
            })),
            Record::File { task, what, path, write, rule, target, killed } => {
                out.push(Event::File(crate::event::File {
                    ts: self.wall(task.boot_ns),
                    proc: Self::proc(&task),
                    what,
                    class: if what == crate::event::FileWhat::Open
                        && rule & watcher_common::FILE_CRED == 0
                        && rule & watcher_common::FILE_TAMPER != 0
                    {
                        crate::event::FileClass::Tamper
                    } else {
                        crate::event::FileClass::Credential
                    },
                    path,
                    write,
                    target,
                    killed,
                }))
            }
            Record::UnixConnect { task, path, deputy, killed } => out.push(Event::Unix(Unix {
                ts: self.wall(task.boot_ns),
                proc: Self::proc(&task),
                // The kernel's table (the policy's deputy list, `egress.deputies` applied).
                deputy,
                path,
                killed,
            })),
            Record::Fork { task, child_pid } => out.push(Event::Fork(Fork {
                ts: self.wall(task.boot_ns),
                proc: Proc { pid: child_pid, ppid: task.pid, comm: task.comm, uid: task.uid },
            })),
            Record::Exit { task, exit_code } => {
                out.push(Event::Exit(Exit { ts: self.wall(task.boot_ns), proc: Self::proc(&task), exit_code }))
            }
            Record::Connect { task, daddr, dport, proto, sendmsg, packet, allowed } => {
                out.push(Event::Connect(Connect {
                    ts: self.wall(task.boot_ns),
                    proc: Self::proc(&task),
                    daddr,
                    dport,
                    proto,
                    op: if packet {
                        "packet"
                    } else if sendmsg {
                        "sendto"
                    } else {
                        "connect"
                    }
                    .into(),
                    allowed,
                }))
            }
            Record::Payload { task, daddr, dport, proto, payload_len, payload } => {
                let secrets = matches(&self.secrets, |s| s.find_in_payload(&payload));
                out.push(Event::Send(Send {
                    ts: self.wall(task.boot_ns),
                    proc: Self::proc(&task),
                    daddr,
                    dport,
                    proto,
                    bytes: payload_len,
                    secrets,
                    offset: None,
                    credential_of: vec![],
                    target: None,
                }))
            }
            Record::StreamChunk { task, cookie, daddr, dport, proto, offset, packet_len, flags, data } => {
                let chunk = crate::stream::Chunk {
                    cookie,
                    proto,
                    offset: offset as u64,
                    packet_start: flags & watcher_common::CHUNK_PACKET_START != 0,
                    data: &data,
                    daddr,
                };
                // A TLS stream's first chunk is ciphertext after its handshake header: not searched.
                let tls = flags & watcher_common::CHUNK_TLS != 0;
                let r = self.streams.push(if tls { &[] } else { &self.secrets }, &chunk);
                if flags & (watcher_common::CHUNK_BUDGET_END | watcher_common::CHUNK_TLS) != 0 {
                    self.streams.forget(cookie);
                }
                // The first segment of a TCP stream: the host name it targets (SNI, Host, a
                // proxy's CONNECT or absolute URI), and whether the kernel dropped it.
                let target = (proto == Proto::Tcp && offset == 0 && flags & watcher_common::CHUNK_PACKET_START != 0)
                    .then(|| crate::stream_target::find(&data, dport))
                    .flatten()
                    .map(|t| crate::event::StreamTarget {
                        how: t.how.into(),
                        host: t.host,
                        port: t.port,
                        dropped: flags & watcher_common::CHUNK_DROPPED != 0,
                    });
                let send = |secrets, offset, credential_of, target| {
                    Event::Send(Send {
                        ts: self.wall(task.boot_ns),
                        proc: Self::proc(&task),
                        daddr,
                        dport,
                        proto,
                        bytes: packet_len,
                        secrets,
                        offset,
                        credential_of,
                        target,
                    })
                };
                // The socket's first data is a fact of its own; then one event per find.
                if (r.first && r.finds.is_empty()) || (target.is_some() && r.finds.is_empty()) {
                    out.push(send(vec![], None, vec![], target.clone()));
                }
                for (i, f) in r.finds.into_iter().enumerate() {
                    let credential_of = self.credential_of(&f.secret.variable);
                    out.push(send(
                        vec![f.secret],
                        Some(f.offset),
                        credential_of,
                        if i == 0 { target.clone() } else { None },
                    ));
                }
            }
            Record::DnsPacket { task, saddr, daddr, sport, dport, proto, egress, payload_len, payload, allowed } => {
                let transport = if proto == Proto::Tcp { dns::Transport::Tcp } else { dns::Transport::Udp };
                let parsed = dns::parse(&payload, transport);
                if egress {
                    self.on_query(task, saddr, sport, daddr, dport, proto, payload_len, allowed, parsed, out);
                } else {
                    self.on_answer(task, daddr, dport, saddr, sport, proto, payload_len, parsed, out);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_query(
        &mut self,
        task: Task,
        client: IpAddr,
        client_port: u16,
        server: IpAddr,
        server_port: u16,
        proto: Proto,
        payload_len: u32,
        allowed: bool,
        parsed: Result<dns::DnsMessage, dns::DnsError>,
        out: &mut Vec<Event>,
    ) {
        let ts = self.wall(task.boot_ns);
        let base = Dns {
            ts,
            proc: Self::proc(&task),
            qname: String::new(),
            qtype: String::new(),
            server,
            server_port,
            proto,
            id: 0,
            rcode: None,
            answers: None,
            cnames: vec![],
            error: None,
            payload_len,
            allowed,
            secrets: vec![],
        };
        let msg = match parsed {
            Ok(m) if !m.questions.is_empty() => m,
            Ok(_) => {
                out.push(Event::Dns(Dns { error: Some("DNS message without a question".into()), ..base }));
                return;
            }
            Err(e) => {
                out.push(Event::Dns(Dns { error: Some(e.to_string()), ..base }));
                return;
            }
        };
        let events: Vec<Dns> = msg
            .questions
            .iter()
            .map(|q| Dns {
                qname: q.name.clone(),
                qtype: q.qtype.clone(),
                id: msg.id,
                secrets: self.secret_matches(&q.name),
                ..base.clone()
            })
            .collect();
        if !allowed {
            // Dropped in the kernel: no answer will come.
            out.extend(events.into_iter().map(Event::Dns));
            return;
        }
        let key = QueryKey { id: msg.id, client, client_port, server, server_port };
        // A retransmission of the same query replaces the first; the first is logged now.
        if let Some(old) = self.pending.insert(key, Pending { boot_ns: task.boot_ns, events }) {
            out.extend(old.events.into_iter().map(Event::Dns));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_answer(
        &mut self,
        task: Task,
        client: IpAddr,
        client_port: u16,
        server: IpAddr,
        server_port: u16,
        proto: Proto,
        payload_len: u32,
        parsed: Result<dns::DnsMessage, dns::DnsError>,
        out: &mut Vec<Event>,
    ) {
        let Ok(msg) = parsed else {
            // An unparseable answer: the query (if any) stays pending and is logged unanswered.
            return;
        };
        let answers = dns::resolved_ips(&msg);
        let cnames: Vec<String> = msg
            .answers
            .iter()
            .filter_map(|a| match &a.data {
                dns::AnswerData::Name(n) => Some(n.clone()),
                _ => None,
            })
            .collect();
        let rcode = rcode_name(msg.rcode);
        let key = QueryKey { id: msg.id, client, client_port, server, server_port };
        let events = match self.pending.remove(&key) {
            Some(p) => p.events,
            None => {
                // The answer to a query we did not see (sent before the watch began, or lost):
                // still worth logging, since a later connect may use its addresses.
                msg.questions
                    .iter()
                    .map(|q| Dns {
                        ts: self.wall(task.boot_ns),
                        proc: Self::proc(&task),
                        qname: q.name.clone(),
                        qtype: q.qtype.clone(),
                        server,
                        server_port,
                        proto,
                        id: msg.id,
                        rcode: None,
                        answers: None,
                        cnames: vec![],
                        error: None,
                        payload_len,
                        allowed: true,
                        secrets: self.secret_matches(&q.name),
                    })
                    .collect()
            }
        };
        for mut e in events {
            e.rcode = Some(rcode.clone());
            e.answers = Some(answers.clone());
            e.cnames = cnames.clone();
            out.push(Event::Dns(e));
        }
    }

    /// Log queries that waited longer than the timeout, unanswered.
    pub fn expire(&mut self, now_boot_ns: u64, out: &mut Vec<Event>) {
        let mut expired: Vec<(u64, Vec<Dns>)> = Vec::new();
        self.pending.retain(|_, p| {
            if now_boot_ns.saturating_sub(p.boot_ns) >= DNS_ANSWER_TIMEOUT_NS {
                expired.push((p.boot_ns, std::mem::take(&mut p.events)));
                false
            } else {
                true
            }
        });
        expired.sort_by_key(|(t, _)| *t);
        out.extend(expired.into_iter().flat_map(|(_, e)| e).map(Event::Dns));
    }

    /// At the end of a run: log every query still waiting, unanswered.
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        self.expire(u64::MAX, out);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use simple_dns::{
        CLASS, Name, Packet, QTYPE, ResourceRecord, TYPE,
        rdata::{A, RData},
    };

    use super::*;

    fn task(pid: u32, boot_ns: u64) -> Task {
        Task { pid, tid: pid, ppid: 1, boot_ns, cgroup_id: 0, uid: 0, gid: 0, comm: "npm".into(), job: 0 }
    }

    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut p = Packet::new_query(id);
        p.questions.push(simple_dns::Question::new(
            Name::new_unchecked(name),
            QTYPE::TYPE(TYPE::A),
            CLASS::IN.into(),
            false,
        ));
        p.build_bytes_vec().unwrap()
    }

    fn answer(id: u16, name: &str, ip: Ipv4Addr) -> Vec<u8> {
        let mut p = Packet::new_reply(id);
        p.questions.push(simple_dns::Question::new(
            Name::new_unchecked(name),
            QTYPE::TYPE(TYPE::A),
            CLASS::IN.into(),
            false,
        ));
        p.answers.push(ResourceRecord::new(
            Name::new_unchecked(name),
            CLASS::IN,
            60,
            RData::A(A { address: u32::from(ip) }),
        ));
        p.build_bytes_vec().unwrap()
    }

    fn packet(egress: bool, boot_ns: u64, payload: Vec<u8>) -> Record {
        let (client, server): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.53.0.1".parse().unwrap());
        let (saddr, daddr, sport, dport) =
            if egress { (client, server, 40000, 53) } else { (server, client, 53, 40000) };
        Record::DnsPacket {
            task: task(7, boot_ns),
            saddr,
            daddr,
            sport,
            dport,
            proto: Proto::Udp,
            egress,
            payload_len: payload.len() as u32,
            payload,
            allowed: true,
        }
    }

    fn dns(out: &[Event]) -> Vec<&Dns> {
        out.iter().filter_map(|e| if let Event::Dns(d) = e { Some(d) } else { None }).collect()
    }

    #[test]
    fn a_query_is_logged_once_with_its_answer_at_the_query_time() {
        let mut c = Collector::new(1_000);
        let mut out = Vec::new();
        c.push(packet(true, 10, query(5, "reg.test")), &mut out);
        assert!(out.is_empty(), "held until the answer");
        c.push(packet(false, 20, answer(5, "reg.test", Ipv4Addr::new(198, 18, 0, 9))), &mut out);
        let d = dns(&out);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].ts, Ts(1_010));
        assert_eq!(d[0].qname, "reg.test");
        assert_eq!(d[0].server, "127.53.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(d[0].rcode.as_deref(), Some("NOERROR"));
        assert_eq!(d[0].answers, Some(vec!["198.18.0.9".parse().unwrap()]));
        assert_eq!(c.pending_queries(), 0);
    }

    #[test]
    fn unanswered_queries_are_logged_after_the_timeout_and_at_the_end() {
        let mut c = Collector::new(0);
        let mut out = Vec::new();
        c.push(packet(true, 0, query(1, "a.test")), &mut out);
        c.push(packet(true, DNS_ANSWER_TIMEOUT_NS, query(2, "b.test")), &mut out);
        c.expire(DNS_ANSWER_TIMEOUT_NS, &mut out);
        assert_eq!(dns(&out).iter().map(|d| d.qname.as_str()).collect::<Vec<_>>(), vec!["a.test"]);
        c.finish(&mut out);
        let d = dns(&out);
        assert_eq!(d.len(), 2);
        assert!(d.iter().all(|d| d.answers.is_none() && d.rcode.is_none()));
    }

    #[test]
    fn data_to_port_53_that_is_not_dns_is_logged_never_dropped() {
        let mut c = Collector::new(0);
        let mut out = Vec::new();
        c.push(packet(true, 0, b"hi".to_vec()), &mut out);
        let d = dns(&out);
        assert_eq!(d.len(), 1);
        assert!(d[0].error.is_some());
        assert_eq!(d[0].payload_len, 2);
    }

    #[test]
    fn protected_values_are_redacted_in_exec_argv_and_secret_matches() {
        let secrets = SecretSet::new(
            &["AWS_*".to_string(), "*_PASSWORD".to_string()],
            [
                ("AWS_ACCESS_KEY".to_string(), "AKIAEXAMPLEKEY123456".to_string()),
                ("DB_PASSWORD".to_string(), "s3cret-Passw0rd-xyz".to_string()),
            ],
        )
        .unwrap();
        let mut c = Collector::new(0).with_secrets(secrets);
        let mut out = Vec::new();
        let exec = |argv: &[&str]| Record::Exec {
            task: task(9, 5),
            ret: 0,
            filename: "/usr/bin/curl".into(),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            argv_truncated: false,
            killed: false,
            shell: false,
            stopped: false,
            held: false,
            script: false,
            env: vec![],
        };
        c.push(exec(&["curl", "--data-urlencode", "k=AKIAEXAMPLEKEY123456", "p=s3cret-Passw0rd-xyz"]), &mut out);
        c.push(exec(&["curl", "http://example.test/"]), &mut out);
        for e in &mut out {
            crate::redact::event(c.secrets(), e);
        }
        let execs: Vec<&Exec> =
            out.iter().filter_map(|e| if let Event::Exec(x) = e { Some(x) } else { None }).collect();
        assert_eq!(execs[0].argv, ["curl", "--data-urlencode", "k=AK…(20 chars)", "p=s3…(19 chars)"]);
        assert!(execs[0].argv_redacted);
        assert_eq!(execs[1].argv, ["curl", "http://example.test/"]);
        assert!(!execs[1].argv_redacted);
        let line = serde_json::to_string(&out[0]).unwrap();
        assert!(!line.contains("AKIAEXAMPLEKEY123456") && line.contains("\"argv_redacted\":true"), "{line}");

        // A secret in a query name: the match carries the redacted value, never the value.
        let hex: String = "AKIAEXAMPLEKEY123456".bytes().map(|b| format!("{b:02x}")).collect();
        let name = format!("{}.{}.x.test", &hex[..20], &hex[20..]);
        let mut out = Vec::new();
        c.push(packet(true, 10, query(77, &name)), &mut out);
        c.finish(&mut out);
        let d = dns(&out);
        assert_eq!(d.len(), 1);
        assert_eq!(
            d[0].secrets,
            vec![SecretMatch {
                variable: "AWS_ACCESS_KEY".into(),
                encoding: "hex".into(),
                redacted: Some("AK…(20 chars)".into())
            }]
        );
    }

    #[test]
    fn several_values_of_one_variable_are_each_found_with_their_own_redacted_form() {
        let pats = ["*_TOKEN".to_string()];
        let one = SecretSet::new(&pats, [("CI_TOKEN".to_string(), "Xk4Tq9Lm2Vz7Rb5Nw8".to_string())]).unwrap();
        let two = SecretSet::new(&pats, [("CI_TOKEN".to_string(), "Yp3Hs6Gd1Fj0Qc8Ue2Wa".to_string())]).unwrap();
        let mut c = Collector::new(0);
        c.set_secrets(vec![one, two]);
        let hex = |v: &str| v.bytes().map(|b| format!("{b:02x}")).collect::<String>();
        let mut out = Vec::new();
        c.push(packet(true, 10, query(1, &format!("{}.x.test", hex("Xk4Tq9Lm2Vz7Rb5Nw8")))), &mut out);
        c.push(packet(true, 11, query(2, &format!("{}.x.test", hex("Yp3Hs6Gd1Fj0Qc8Ue2Wa")))), &mut out);
        c.finish(&mut out);
        let found: Vec<Option<String>> =
            dns(&out).iter().flat_map(|d| d.secrets.iter().map(|s| s.redacted.clone())).collect();
        assert_eq!(found, [Some("Xk…(18 chars)".to_string()), Some("Yp…(20 chars)".to_string())]);
        // Dropped: nothing is found any more.
        c.set_secrets(Vec::new());
        let mut out = Vec::new();
        c.push(packet(true, 12, query(3, &format!("{}.x.test", hex("Xk4Tq9Lm2Vz7Rb5Nw8")))), &mut out);
        c.finish(&mut out);
        assert!(dns(&out)[0].secrets.is_empty());
    }
}
