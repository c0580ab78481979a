//! The engine, rule by rule: for each rule, the event that raises it, the one next to it that
//! does not, and the action it gets in audit and in enforce mode. Events are written as log
//! lines (what replay feeds the engine), so these tests also pin the log format the rules read.
use crate::{
    engine::*,
    event::{Alert, Event},
    policy::Policy,
};

const POLICY: &str = r#"version: 1
pipeline: rules
mode: MODE
egress:
  loopback: false
  allow:
    - host: ok.test
      ports: [443]
    - cidr: 198.18.0.0/24
      ports: [8080]
dns:
  resolvers: [127.0.0.53]
  allow: [extra.test]
exec:
  deny: [curl]
  install_scripts:
    shells: deny
secrets:
  env: ["AWS_*"]
"#;

fn engine(mode: &str) -> Engine {
    let p: Policy = crate::policy::parse_str("rules.yaml", &POLICY.replace("MODE", mode)).unwrap();
    let mut e = Engine::new(p);
    e.process(&ev(r#"{"kind":"start","ts":"2026-01-01T00:00:00Z","schema":1,"watcher":"t","mode":"run","command":["npm","ci"],"pid":1,"sensors":[],"resolvers":["127.0.0.53"],"registries":{}}"#));
    e
}

fn ev(line: &str) -> Event {
    serde_json::from_str(line).unwrap_or_else(|err| panic!("{line}: {err}"))
}

const PROC: &str = r#""ts":"2026-01-01T00:00:01Z","ppid":1,"uid":0"#;

/// pid 10 is npm; pid 20 the start of evil-pkg's postinstall; pid 21 a process inside it.
fn with_install_script(e: &mut Engine) {
    for line in [
        format!(
            r#"{{"kind":"exec",{PROC},"pid":10,"comm":"npm","filename":"/usr/bin/npm","argv":["npm","ci"],"cgroup_id":0,"env":{{}}}}"#
        ),
        r#"{"kind":"fork","ts":"2026-01-01T00:00:01Z","pid":20,"ppid":10,"comm":"npm","uid":0}"#.to_string(),
        r#"{"kind":"exec","ts":"2026-01-01T00:00:01Z","pid":20,"ppid":10,"uid":0,"comm":"sh","filename":"/bin/sh","argv":["sh","-c","node x.js"],"cgroup_id":0,"env":{"npm_lifecycle_event":"postinstall","npm_package_name":"evil-pkg","npm_package_version":"1.0.0"}}"#.to_string(),
        r#"{"kind":"fork","ts":"2026-01-01T00:00:01Z","pid":21,"ppid":20,"comm":"sh","uid":0}"#.to_string(),
        r#"{"kind":"exec","ts":"2026-01-01T00:00:01Z","pid":21,"ppid":20,"uid":0,"comm":"node","filename":"/usr/bin/node","argv":["node","x.js"],"cgroup_id":0,"env":{}}"#.to_string(),
    ] {
        assert!(e.process(&ev(&line)).is_empty(), "{line}");
    }
}

fn one(alerts: Vec<Alert>, rule: &str, action: &str) -> Alert {
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!((alerts[0].rule.as_str(), alerts[0].action.as_str()), (rule, action), "{alerts:#?}");
    alerts.into_iter().next().unwrap()
}

fn connect(pid: u32, daddr: &str, dport: u16, allowed: bool) -> Event {
    ev(&format!(
        r#"{{"kind":"connect",{PROC},"pid":{pid},"comm":"node","daddr":"{daddr}","dport":{dport},"proto":"tcp","op":"connect","allowed":{allowed}}}"#
    ))
}

fn dns(pid: u32, qname: &str, server: &str, allowed: bool, answers: &str, extra: &str) -> Event {
    ev(&format!(
        r#"{{"kind":"dns",{PROC},"pid":{pid},"comm":"node","qname":"{qname}","qtype":"A","server":"{server}","server_port":53,"proto":"udp","id":1,"payload_len":30,"allowed":{allowed}{answers}{extra}}}"#
    ))
}

#[test]
fn egress_denied_unless_an_allowed_ip_or_an_answer_for_an_allowed_host() {
    for (mode, kernel_allowed, action) in [("audit", true, "flag"), ("enforce", false, "deny")] {
        let mut e = engine(mode);
        with_install_script(&mut e);
        // An allowed CIDR, on its port only.
        assert!(e.process(&connect(21, "198.18.0.7", 8080, true)).is_empty());
        let a = one(e.process(&connect(21, "198.18.0.7", 8081, kernel_allowed)), RULE_EGRESS, action);
        assert_eq!(a.package.as_deref(), Some("npm:evil-pkg@1.0.0 (postinstall)"));
        assert!(a.message.contains("no allowed host resolved to it"), "{}", a.message);
        // An address an answer for an allowed host gave: allowed on that host's ports.
        assert!(e.process(&dns(21, "ok.test", "127.0.0.53", true, r#","answers":["198.51.100.1"]"#, "")).is_empty());
        assert!(e.process(&connect(21, "198.51.100.1", 443, true)).is_empty());
        assert_eq!(e.process(&connect(21, "198.51.100.1", 80, kernel_allowed)).len(), 1);
        // An answer for a name the policy does not allow explains an address, never allows it.
        let d = e.process(&dns(21, "evil.test", "127.0.0.53", kernel_allowed, r#","answers":["198.51.100.9"]"#, ""));
        one(d, RULE_DNS_NAME, action);
        let a = one(e.process(&connect(21, "198.51.100.9", 443, kernel_allowed)), RULE_EGRESS, action);
        assert!(a.message.contains("an answer for evil.test gave this address"), "{}", a.message);
        // The same destination again is one alert, not two.
        assert!(e.process(&connect(21, "198.51.100.9", 443, kernel_allowed)).is_empty());
        // Loopback is an address like any other.
        one(e.process(&connect(21, "127.0.0.1", 5432, kernel_allowed)), RULE_EGRESS, action);
    }
}

#[test]
fn dns_to_a_resolver_not_allowed_by_packet_or_by_connect() {
    for (mode, action) in [("audit", "flag"), ("enforce", "deny")] {
        let mut e = engine(mode);
        assert!(e.process(&dns(10, "ok.test", "127.0.0.53", true, "", "")).is_empty());
        one(e.process(&dns(10, "ok.test", "198.18.0.53", mode == "audit", "", "")), RULE_DNS_RESOLVER, action);
        one(e.process(&connect(10, "198.18.1.53", 53, mode == "audit")), RULE_DNS_RESOLVER, action);
        assert!(e.process(&connect(10, "127.0.0.53", 53, true)).is_empty());
    }
}

#[test]
fn dns_names_allowed_are_the_hosts_and_dns_allow() {
    let mut e = engine("enforce");
    for name in ["ok.test", "OK.test", "extra.test"] {
        assert!(e.process(&dns(10, name, "127.0.0.53", true, "", "")).is_empty(), "{name}");
    }
    let a = one(e.process(&dns(10, "x.ok.test", "127.0.0.53", false, "", "")), RULE_DNS_NAME, "deny");
    assert!(a.message.contains("x.ok.test"), "{}", a.message);
}

#[test]
fn bytes_to_port_53_that_are_not_dns_are_an_alert() {
    for (mode, action) in [("audit", "flag"), ("enforce", "deny")] {
        let mut e = engine(mode);
        let d = dns(10, "", "127.0.0.53", mode == "audit", "", r#","error":"truncated header""#);
        let a = one(e.process(&d), RULE_DNS_MALFORMED, action);
        assert!(a.message.contains("not a DNS query: truncated header"), "{}", a.message);
    }
}

#[test]
fn exec_denied_by_name_and_temp_dirs_only_with_the_rule() {
    let mut e = engine("enforce");
    with_install_script(&mut e);
    let exec = |pid: u32, file: &str, killed: bool| {
        ev(&format!(
            r#"{{"kind":"exec",{PROC},"pid":{pid},"comm":"x","filename":"{file}","argv":["x"],"cgroup_id":0,"env":{{}},"killed":{killed}}}"#
        ))
    };
    let a = one(e.process(&exec(30, "/usr/bin/curl", true)), RULE_EXEC, "kill");
    assert!(a.message.contains("denied by exec rule"), "{}", a.message);
    assert!(e.policy().mode == crate::policy::Mode::Enforce);
    // Not denied: nothing. (exec.temp_dirs is not in this policy: a binary in /tmp runs.)
    assert!(e.process(&exec(31, "/usr/bin/git", false)).is_empty());
    assert!(e.process(&exec(32, "/tmp/dropper", false)).is_empty());
    // Audit: the same exec seen, not killed, is a flag.
    let mut a = engine("audit");
    one(a.process(&exec(30, "/usr/bin/curl", false)), RULE_EXEC, "flag");
}

#[test]
fn a_kill_the_facts_do_not_explain_is_still_an_alert_in_enforce_mode_only() {
    let line = format!(
        r#"{{"kind":"exec",{PROC},"pid":40,"comm":"node","filename":"/usr/bin/node","argv":["node"],"cgroup_id":0,"env":{{}},"killed":true}}"#
    );
    let mut e = engine("enforce");
    one(e.process(&ev(&line)), RULE_EXEC, "kill");
    assert_eq!(e.enforce_failure(0), Some(crate::exitcode::POLICY_VIOLATION));
    // Replayed under an audit policy (which would not have killed): nothing.
    assert!(engine("audit").process(&ev(&line)).is_empty());
}

#[test]
fn shells_in_install_scripts_under_the_strict_rule_and_not_outside_them() {
    let shell = |pid: u32, ppid: u32| {
        ev(&format!(r#"{{"kind":"fork","ts":"2026-01-01T00:00:02Z","pid":{pid},"ppid":{ppid},"comm":"x","uid":0}}"#))
    };
    let exec = |pid: u32, ppid: u32| {
        ev(&format!(
            r#"{{"kind":"exec","ts":"2026-01-01T00:00:02Z","pid":{pid},"ppid":{ppid},"uid":0,"comm":"sh","filename":"/bin/sh","argv":["sh","-c","id"],"cgroup_id":0,"env":{{}}}}"#
        ))
    };
    let mut e = engine("audit");
    with_install_script(&mut e);
    // A shell started by a process of the script (strict rule: any shell).
    assert!(e.process(&shell(50, 21)).is_empty());
    let a = one(e.process(&exec(50, 21)), RULE_SHELL, "flag");
    assert_eq!(a.package.as_deref(), Some("npm:evil-pkg@1.0.0 (postinstall)"));
    assert!(a.message.contains("shells: deny"), "{}", a.message);
    // A shell npm itself starts outside every install script: nothing.
    assert!(e.process(&shell(51, 10)).is_empty());
    assert!(e.process(&exec(51, 10)).is_empty());
}

#[test]
fn secret_values_in_dns_names_and_in_sent_data() {
    let secret = r#","secrets":[{"variable":"AWS_SECRET_ACCESS_KEY","encoding":"base32","redacted":"wJ…(40 chars)"}]"#;
    let unprotected = r#","secrets":[{"variable":"HOME_DIR","encoding":"raw"}]"#;
    for mode in ["audit", "enforce"] {
        let mut e = engine(mode);
        with_install_script(&mut e);
        let d = e.process(&dns(21, "ok.test", "127.0.0.53", true, "", secret));
        let a = one(d, RULE_SECRET, "flag");
        assert_eq!((a.severity.as_str(), a.variable.as_deref()), ("critical", Some("AWS_SECRET_ACCESS_KEY")));
        assert_eq!(a.redacted.as_deref(), Some("wJ…(40 chars)"));
        assert!(!a.message.contains("wJalr"), "never the value");
        let send = |extra: &str| {
            ev(&format!(
                r#"{{"kind":"send",{PROC},"pid":21,"comm":"node","daddr":"198.18.0.7","dport":8080,"proto":"tcp","bytes":900,"offset":700{extra}}}"#
            ))
        };
        // To an allowed destination, still exfiltration.
        one(e.process(&send(secret)), RULE_SECRET, "flag");
        // A variable the policy does not protect: nothing.
        assert!(e.process(&send(unprotected)).is_empty());
        assert!(e.process(&dns(21, "extra.test", "127.0.0.53", true, "", unprotected)).is_empty());
    }
}

#[test]
fn raw_and_packet_sockets_inside_install_scripts() {
    let socket = |pid: u32, family: &str, ty: &str, killed: bool| {
        ev(&format!(
            r#"{{"kind":"socket",{PROC},"pid":{pid},"comm":"node","family":"{family}","type":"{ty}","protocol":1,"killed":{killed}}}"#
        ))
    };
    let mut e = engine("enforce");
    with_install_script(&mut e);
    one(e.process(&socket(21, "inet", "raw", true)), RULE_RAW_SOCKET, "kill");
    one(e.process(&socket(21, "packet", "dgram", true)), RULE_RAW_SOCKET, "kill");
    // An ICMP (ping) datagram socket is judged by its packets, not here.
    assert!(e.process(&socket(21, "inet", "dgram", false)).is_empty());
    // The step itself (not an install script) may open one ...
    assert!(e.process(&socket(10, "inet", "raw", false)).is_empty());
    // ... but a kill the kernel made as inside a script is reported even without attribution.
    one(e.process(&socket(99, "inet", "raw", true)), RULE_RAW_SOCKET, "kill");
    let mut a = engine("audit");
    with_install_script(&mut a);
    one(a.process(&socket(21, "inet", "raw", false)), RULE_RAW_SOCKET, "flag");
}

#[test]
fn tampering_with_watcher_is_critical_wherever_it_comes_from() {
    for (what, arg) in [("signal", 9), ("bpf", 5), ("umount", 0), ("ptrace", 16)] {
        let mut e = engine("enforce");
        let line = format!(
            r#"{{"kind":"tamper",{PROC},"pid":10,"comm":"npm","what":"{what}","arg":{arg},"target":1,"killed":true}}"#
        );
        let a = one(e.process(&ev(&line)), RULE_TAMPER, "kill");
        assert_eq!(a.severity, "critical");
        assert!(a.message.contains("tampering with watcher"), "{}", a.message);
    }
}

#[test]
fn local_deputies_only_from_install_scripts() {
    let unix = |pid: u32, path: &str, deputy: bool| {
        ev(&format!(
            r#"{{"kind":"unix",{PROC},"pid":{pid},"comm":"node","path":"{path}","deputy":{deputy},"killed":{deputy}}}"#
        ))
    };
    let mut e = engine("enforce");
    with_install_script(&mut e);
    let a = one(e.process(&unix(21, "/run/docker.sock", true)), RULE_DEPUTY, "kill");
    assert!(a.message.contains("/run/docker.sock"), "{}", a.message);
    // The step's own use of its daemon, and sockets that are not deputies: nothing.
    assert!(e.process(&unix(10, "/run/docker.sock", true)).is_empty());
    assert!(e.process(&unix(21, "/tmp/app.sock", false)).is_empty());
}

#[test]
fn lost_events_are_one_alert_per_source_and_fail_enforce_with_78() {
    let loss = |source: &str, count: u64| {
        ev(&format!(
            r#"{{"kind":"loss","ts":"2026-01-01T00:00:03Z","source":"{source}","count":{count},"total":{count}}}"#
        ))
    };
    let mut e = engine("enforce");
    let a = one(e.process(&loss("exec", 3)), RULE_LOSS, "flag");
    assert_eq!(a.severity, "medium");
    assert!(e.process(&loss("exec", 5)).is_empty(), "one per source");
    one(e.process(&loss("dns", 1)), RULE_LOSS, "flag");
    assert_eq!(e.enforce_failure(3), Some(crate::exitcode::EVENTS_LOST));
    assert_eq!(e.enforce_failure(0), None);
    // A violation outranks the loss.
    e.process(&connect(10, "203.0.113.1", 443, false));
    assert_eq!(e.enforce_failure(3), Some(crate::exitcode::POLICY_VIOLATION));
    // Audit mode never fails the step.
    let mut a = engine("audit");
    a.process(&loss("exec", 3));
    a.process(&connect(10, "203.0.113.1", 443, true));
    assert_eq!(a.enforce_failure(3), None);
}
