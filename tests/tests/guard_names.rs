//! Names, not only addresses: a forward proxy on loopback (run by the test) asked for a target
//! the policy does not allow, and a connection to an allowed address whose TLS server name or
//! HTTP `Host` names a host the policy does not allow (domain fronting on a shared address).
//! Real clients (curl, openssl s_client). The attacker and the "CDN" listen inside a network
//! namespace the test creates; the proxy's upstream is that namespace and nothing else.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use watcher_tests::{
    DnsServer, Listener, Loops, Netns, lab::in_netns, netprobe_bin, proxy::Proxy, read_jsonl, root_or_skip,
    sinks::UnixSink, watcher_bin,
};

struct Step {
    code: Option<i32>,
    err: String,
    events: Vec<Value>,
}

fn run(policy: &str, script: &str) -> Step {
    run_with(Loops::BpfLoop, policy, script)
}

fn run_with(loops: Loops, policy: &str, script: &str) -> Step {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(&p, policy).unwrap();
    let log = dir.path().join("e.jsonl");
    let out = Command::new(watcher_bin())
        .args(["run", "--policy"])
        .arg(&p)
        .arg("--log")
        .arg(&log)
        .args(["--", "sh", "-c", script])
        .env(loops.env().0, loops.env().1)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let step = Step {
        code: out.status.code(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
        events: read_jsonl(&log),
    };
    loops.assert_loaded(&step.events, &step.err);
    step
}

fn egress_alerts(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["kind"] == "alert" && e["rule"] == "egress-denied").collect()
}

fn subnet(k: u16) -> u16 {
    24000 + (std::process::id() % 2000) as u16 * 4 + k
}

/// Listens on `port` (0: any) of the namespace's address, inside the namespace.
fn listen_in(ns: &Netns, port: u16) -> Listener {
    let addr = SocketAddr::new(IpAddr::V4(ns.ns_v4()), port);
    in_netns(ns.name(), move || Listener::start(addr)).unwrap()
}

/// CONNECT and absolute-URI requests through a proxy named in `egress.proxies`: an allowed
/// target (by name) gets through in both modes; a name or an address that is not allowed
/// reaches the proxy's upstream in audit mode only (flagged there; in enforce mode the request
/// is dropped in the kernel, so the proxy never hears of it, and the step exits 77).
#[test]
fn a_forward_proxy_is_judged_by_each_requests_target() {
    forward_proxy(Loops::BpfLoop, 0);
}

/// The same, with the programs a kernel without bpf_loop loads.
#[test]
fn a_forward_proxy_is_judged_by_each_requests_target_with_bounded_loops() {
    forward_proxy(Loops::Bounded, 2);
}

fn forward_proxy(loops: Loops, k: u16) {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new(subnet(k)).unwrap();
    let attacker = listen_in(&ns, 0);
    let good = listen_in(&ns, 0);
    let ip = IpAddr::V4(ns.ns_v4());
    let proxy = Proxy::start(vec![("good.test".into(), ip), ("evil.test".into(), ip)]);
    let pol = |mode: &str| {
        format!(
            "version: 1\npipeline: proxy\nmode: {mode}\negress:\n  loopback: false\n  allow:\n    - host: good.test\n      ports: [{}]\n  proxies: [\"{}\"]\ndns:\n  resolvers: []\n",
            good.addr().port(),
            proxy.addr
        )
    };
    let curl = |tunnel: bool, url: String| {
        format!("curl -sS -m 3 {} -x http://{} {url} >/dev/null 2>&1; true", if tunnel { "-p" } else { "" }, proxy.addr)
    };
    let ap = attacker.addr().port();
    let attacks = [
        ("CONNECT to a name", curl(true, format!("http://evil.test:{ap}/")), "evil.test"),
        ("CONNECT to an address", curl(true, format!("http://{ip}:{ap}/")), &*ip.to_string()),
        ("absolute URI", curl(false, format!("http://evil.test:{ap}/x")), "evil.test"),
    ];
    for (what, script, host) in &attacks {
        for mode in ["audit", "enforce"] {
            let before = (attacker.connections(), proxy.upstreams().len());
            let s = run_with(loops, &pol(mode), script);
            let ctx = format!("{what}, {mode}: {}\n{:#?}", s.err, egress_alerts(&s.events));
            let alerts = egress_alerts(&s.events);
            assert_eq!(alerts.len(), 1, "{ctx}");
            assert!(alerts[0]["message"].as_str().unwrap().contains(&format!("{host}:{ap}")), "{ctx}");
            let send = s.events.iter().find(|e| e["kind"] == "send" && e["target"].is_object()).expect(&ctx);
            assert_eq!(send["target"]["host"], *host, "{ctx}");
            if mode == "enforce" {
                assert_eq!(s.code, Some(77), "{ctx}");
                assert_eq!(alerts[0]["action"], "deny", "{ctx}");
                assert_eq!(send["target"]["dropped"], true, "{ctx}");
                assert_eq!(proxy.upstreams().len(), before.1, "the proxy never got the request: {ctx}");
                assert_eq!(attacker.connections(), before.0, "{ctx}");
            } else {
                assert_eq!(s.code, Some(0), "{ctx}");
                assert_eq!(alerts[0]["action"], "flag", "{ctx}");
                assert_eq!(attacker.connections(), before.0 + 1, "{ctx}");
            }
        }
    }
    // An allowed target, by name, through the proxy: no alert, it gets through.
    for mode in ["audit", "enforce"] {
        let before = good.connections();
        let s = run_with(loops, &pol(mode), &curl(true, format!("http://good.test:{}/", good.addr().port())));
        assert_eq!(s.code, Some(0), "{mode}: {}", s.err);
        assert!(egress_alerts(&s.events).is_empty(), "{mode}: {:#?}", egress_alerts(&s.events));
        assert_eq!(good.connections(), before + 1, "{mode}");
    }
}

/// An address allowed because an answer for an allowed name gave it (a CDN shared by many
/// sites): a TLS ClientHello or an HTTP request to it that names another host is
/// `egress-denied` (dropped in enforce mode: the listener gets the connection, never a byte);
/// the allowed name passes.
#[test]
fn a_server_name_or_host_not_allowed_on_an_allowed_address_is_denied() {
    names_on_a_shared_address(Loops::BpfLoop, 1);
}

/// The same, with the programs a kernel without bpf_loop loads.
#[test]
fn a_server_name_or_host_not_allowed_on_an_allowed_address_is_denied_with_bounded_loops() {
    names_on_a_shared_address(Loops::Bounded, 3);
}

fn names_on_a_shared_address(loops: Loops, k: u16) {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new(subnet(k)).unwrap();
    let cdn = listen_in(&ns, 0);
    let ip = ns.ns_v4();
    let pid = std::process::id();
    let dns_ip = IpAddr::V4(Ipv4Addr::new(127, 53, (pid % 200) as u8 + 20 + k as u8, (pid / 200 % 200) as u8 + 20));
    let dns = DnsServer::start(dns_ip, vec![("good.test".into(), vec![IpAddr::V4(ip)])]).unwrap();
    let port = cdn.addr().port();
    let pol = |mode: &str| {
        format!(
            "version: 1\npipeline: names\nmode: {mode}\negress:\n  loopback: false\n  allow:\n    - host: good.test\n      ports: [{port}]\ndns:\n  resolvers: [{}]\n",
            dns.addr()
        )
    };
    let np = netprobe_bin().display().to_string();
    let lookup = format!("{np} dns-sendto {} good.test A >/dev/null", dns.addr());
    let tls = |name: &str| {
        format!(
            "{lookup}; echo | timeout 4 openssl s_client -connect {ip}:{port} -servername {name} >/dev/null 2>&1; true"
        )
    };
    let http =
        |name: &str| format!("{lookup}; curl -sS -m 3 -H 'Host: {name}' http://{ip}:{port}/ >/dev/null 2>&1; true");
    for (what, script, how) in [("TLS", tls("evil.test"), "tls-sni"), ("HTTP", http("evil.test"), "http-host")] {
        for mode in ["audit", "enforce"] {
            let before = cdn.bytes();
            let s = run_with(loops, &pol(mode), &script);
            let alerts = egress_alerts(&s.events);
            let ctx = format!("{what}, {mode}: {}\n{alerts:#?}", s.err);
            assert_eq!(alerts.len(), 1, "{ctx}");
            assert!(alerts[0]["message"].as_str().unwrap().contains(&format!("evil.test:{port}")), "{ctx}");
            let send = s.events.iter().find(|e| e["kind"] == "send" && e["target"].is_object()).expect(&ctx);
            assert_eq!(send["target"]["how"], how, "{ctx}");
            if mode == "enforce" {
                assert_eq!(s.code, Some(77), "{ctx}");
                assert_eq!(alerts[0]["action"], "deny", "{ctx}");
                assert_eq!(cdn.bytes(), before, "not a byte reached the listener: {ctx}");
            } else {
                assert_eq!(s.code, Some(0), "{ctx}");
                assert_eq!(alerts[0]["action"], "flag", "{ctx}");
                assert!(cdn.bytes() > before, "{ctx}");
            }
        }
    }
    for (what, script) in [("TLS", tls("good.test")), ("HTTP", http("good.test"))] {
        let before = cdn.bytes();
        let s = run_with(loops, &pol("enforce"), &script);
        assert_eq!(s.code, Some(0), "{what}: {}", s.err);
        assert!(egress_alerts(&s.events).is_empty(), "{what}: {:#?}", egress_alerts(&s.events));
        assert!(cdn.bytes() > before, "{what}: the allowed name gets through");
    }
    // The kernel's name judgement (a hash of the name, through bpf_loop or the bounded loop):
    // the resolver hears the allowed name and not the other.
    let heard = dns.queries().len();
    let s = run_with(
        loops,
        &pol("enforce"),
        &format!("{np} dns-sendto {} evil.test A >/dev/null 2>&1; {lookup}", dns.addr()),
    );
    let got: Vec<String> = dns.queries()[heard..].iter().map(|q| q.name.to_ascii_lowercase()).collect();
    assert_eq!(got, ["good.test"], "{}", s.err);
    assert_eq!(s.code, Some(77), "{}", s.err);
    let denied = s.events.iter().find(|e| e["kind"] == "alert" && e["rule"] == "dns-denied");
    assert_eq!(denied.map(|a| a["action"].clone()), Some(Value::from("deny")), "{}", s.err);
}

/// Removes a directory the test made (declared before the sockets in it, so dropped after).
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// `egress.deputies`: a socket the policy adds is a deputy (an install script connecting to it
/// is killed in enforce mode before it sends); a built-in one the policy removes is not.
#[test]
fn the_policy_extends_and_narrows_the_local_deputies() {
    if !root_or_skip() {
        return;
    }
    let removed = std::path::Path::new("/run/podman/podman.sock");
    if removed.exists() {
        eprintln!("skipped: {} exists (a real podman)", removed.display());
        return;
    }
    let parent = removed.parent().unwrap();
    let _made = (!parent.exists()).then(|| {
        std::fs::create_dir(parent).unwrap();
        RemoveDir(parent.to_path_buf())
    });
    let dir = tempfile::tempdir().unwrap();
    let added = dir.path().join("agent.sock");
    let (a, r) = (UnixSink::at(&added).unwrap(), UnixSink::at(removed).unwrap());
    let policy = format!(
        "version: 1\npipeline: deputies\nmode: enforce\negress:\n  loopback: false\n  deputies:\n    add: [{}]\n    remove: [{}]\ndns:\n  resolvers: []\n",
        added.display(),
        removed.display()
    );
    let np = netprobe_bin().display().to_string();
    let install = |script: String| {
        format!("npm_lifecycle_event=postinstall npm_package_name=evil-pkg npm_package_version=6.6.6 sh -c '{script}'")
    };
    let s = run(&policy, &install(format!("{np} unix {}", added.display())));
    let deputy: Vec<&Value> = s.events.iter().filter(|e| e["kind"] == "alert" && e["rule"] == "local-deputy").collect();
    assert_eq!(deputy.len(), 1, "{}", s.err);
    assert_eq!(deputy[0]["action"], "kill", "{}", s.err);
    assert_eq!(s.code, Some(77), "{}", s.err);
    std::thread::sleep(Duration::from_millis(300));
    assert!(a.received() == 0, "the added deputy received data");
    let s = run(&policy, &install(format!("{np} unix {}", removed.display())));
    assert!(s.events.iter().all(|e| e["rule"] != "local-deputy"), "{}", s.err);
    assert_eq!(s.code, Some(0), "{}", s.err);
    assert!(
        watcher_tests::wait_until(Duration::from_secs(3), || r.bytes() == b"hello\n"),
        "the removed one is an ordinary socket: {}",
        s.err
    );
}
