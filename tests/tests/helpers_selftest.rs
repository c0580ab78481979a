//! Self-tests of the test-support crate: the helpers against the `netprobe` binary.
//! Need root (port 53, network namespaces); see `root_or_skip`.

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use watcher_tests::{DnsServer, Listener, Netns, TempDir, netns_list, root_or_skip, wait_until};

const NETPROBE: &str = env!("CARGO_BIN_EXE_netprobe");

/// Tests sharing the DNS server address 127.53.0.200 run one at a time.
static DNS_V4_LOCK: Mutex<()> = Mutex::new(());

fn netprobe(args: &[&str]) -> Output {
    let out = Command::new(NETPROBE).args(args).stdin(Stdio::null()).output().expect("run netprobe");
    eprintln!(
        "netprobe {args:?}: {}\nstdout:\n{}stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
}

fn zone() -> Vec<(String, Vec<IpAddr>)> {
    vec![
        (
            "good.example".to_string(),
            vec!["127.1.2.3".parse().unwrap(), "127.1.2.4".parse().unwrap(), "::1".parse().unwrap()],
        ),
        ("other.example".to_string(), vec!["127.9.9.9".parse().unwrap()]),
    ]
}

/// Runs one DNS send mode against a DnsServer on `server`; checks answers and recorded queries.
fn check_dns_mode(server: IpAddr, mode: &str, transport: &str) {
    let dns = DnsServer::start(server, zone()).expect("start DnsServer");
    let s = server.to_string();

    let out = if mode == "dns-sendmmsg" {
        netprobe(&[mode, &s, "good.example,other.example", "A", mode, &s, "missing.example,good.example", "TXT"])
    } else {
        netprobe(&[mode, &s, "good.example", "A"])
    };
    assert!(out.status.success());
    let mut want = vec!["answer good.example: 127.1.2.3,127.1.2.4".to_string()];
    if mode == "dns-sendmmsg" {
        want.push("answer other.example: 127.9.9.9".into());
        want.push("answer missing.example: NXDOMAIN".into());
        want.push("answer good.example: NXDOMAIN".into());
    }
    assert_eq!(stdout_lines(&out), want);

    let q = dns.queries();
    let expect_names: Vec<(&str, &str)> = if mode == "dns-sendmmsg" {
        vec![("good.example", "A"), ("other.example", "A"), ("missing.example", "TXT"), ("good.example", "TXT")]
    } else {
        vec![("good.example", "A")]
    };
    assert_eq!(q.len(), expect_names.len(), "{q:?}");
    for (rq, (n, t)) in q.iter().zip(&expect_names) {
        assert_eq!((rq.name.as_str(), rq.qtype.as_str(), rq.transport), (*n, *t, transport), "{q:?}");
        assert!(rq.from.ip().is_loopback(), "{q:?}");
        assert_ne!(rq.from.port(), 0);
    }

    if mode != "dns-sendmmsg" {
        // Also AAAA, NXDOMAIN and TXT through the same mode.
        let out = netprobe(&[
            mode,
            &s,
            "good.example",
            "AAAA",
            mode,
            &s,
            "nothere.example",
            "A",
            mode,
            &s,
            "good.example",
            "TXT",
        ]);
        assert!(out.status.success());
        assert_eq!(
            stdout_lines(&out),
            ["answer good.example: ::1", "answer nothere.example: NXDOMAIN", "answer good.example: NXDOMAIN"]
        );
        let q = dns.queries();
        assert_eq!(q.len(), 4, "{q:?}");
        assert_eq!((q[1].qtype.as_str(), q[2].name.as_str(), q[3].qtype.as_str()), ("AAAA", "nothere.example", "TXT"));
    }
}

fn dns_v4(mode: &str, transport: &str) {
    if !root_or_skip() {
        return;
    }
    let _g = DNS_V4_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    check_dns_mode("127.53.0.200".parse().unwrap(), mode, transport);
}

#[test]
fn dns_sendto_v4() {
    dns_v4("dns-sendto", "udp");
}

#[test]
fn dns_sendmsg_v4() {
    dns_v4("dns-sendmsg", "udp");
}

#[test]
fn dns_sendmmsg_v4() {
    dns_v4("dns-sendmmsg", "udp");
}

#[test]
fn dns_connected_v4() {
    dns_v4("dns-connected", "udp");
}

#[test]
fn dns_tcp_v4() {
    dns_v4("dns-tcp", "tcp");
}

#[test]
fn dns_sendto_v6() {
    if !root_or_skip() {
        return;
    }
    check_dns_mode("::1".parse().unwrap(), "dns-sendto", "udp");
}

#[test]
fn dns_server_stops_on_drop() {
    if !root_or_skip() {
        return;
    }
    let addr: IpAddr = "127.53.0.201".parse().unwrap();
    let dns = DnsServer::start(addr, zone()).unwrap();
    // A second server on the same address must fail rather than share it.
    assert!(DnsServer::start(addr, zone()).is_err());
    drop(dns);
    // Ports are free again and nobody answers.
    let out = netprobe(&["dns-tcp", "127.53.0.201", "good.example", "A"]);
    assert_eq!(stdout_lines(&out), ["no answer good.example"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("connect 127.53.0.201:53: Connection refused"));
    let again = DnsServer::start(addr, zone()).expect("rebind after drop");
    drop(again);
}

#[test]
fn no_answer_without_server() {
    // Needs no root: port 53 on this address has no listener.
    let out = netprobe(&["dns-sendto", "127.53.0.202", "good.example", "A"]);
    assert!(out.status.success());
    assert_eq!(stdout_lines(&out), ["no answer good.example"]);
}

#[test]
fn netprobe_usage_errors_exit_nonzero_before_acting() {
    let l = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let a = l.addr().to_string();
    for args in [
        vec!["tcp", a.as_str(), "bogus"],
        vec!["tcp", a.as_str(), "tcp"],
        vec!["tcp", a.as_str(), "dns-sendto", "not-an-ip", "x.example", "A"],
        vec!["tcp", a.as_str(), "dns-sendto", "127.0.0.1", "x.example", "MX"],
        vec!["tcp", a.as_str(), "dns-sendmmsg", "127.0.0.1", "onlyone.example", "A"],
        vec!["tcp", a.as_str(), "exec"],
    ] {
        let out = netprobe(&args);
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stdout.is_empty());
        assert!(String::from_utf8_lossy(&out.stderr).starts_with("netprobe: "), "{args:?}");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(l.connections(), 0);
}

#[test]
fn failed_connect_is_reported_and_not_fatal() {
    let l = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed = {
        let tmp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        tmp.local_addr().unwrap()
    };
    let out = netprobe(&["tcp", &closed.to_string(), "tcp", &l.addr().to_string()]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("connect {closed}: Connection refused (ECONNREFUSED)"))
    );
    assert_eq!(l.connections(), 1);
}

fn check_listener(bind: &str) {
    let l = Listener::start(bind.parse().unwrap()).unwrap();
    let a = l.addr();
    assert_ne!(a.port(), 0);
    let out = netprobe(&["tcp", &a.to_string(), "udp-sendto", &a.to_string(), "udp-connect", &a.to_string()]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    // No waiting: the getters settle on everything delivered before the call.
    assert_eq!((l.connections(), l.datagrams(), l.bytes()), (1, 2, 6 + 4 + 4));
    let mut p = l.payloads();
    p.sort();
    assert_eq!(p, [b"hello\n".to_vec(), b"ping".to_vec(), b"ping".to_vec()]);
}

#[test]
fn listener_counts_v4() {
    check_listener("127.0.0.1:0");
}

#[test]
fn listener_counts_v6() {
    check_listener("[::1]:0");
}

#[test]
fn listener_keeps_first_4k_and_stops_on_drop() {
    use std::io::Write;
    let l = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let a = l.addr();
    let mut s = std::net::TcpStream::connect(a).unwrap();
    s.write_all(&vec![b'x'; 10000]).unwrap();
    drop(s);
    assert_eq!(l.bytes(), 10000);
    assert_eq!(l.payloads(), [vec![b'x'; 4096]]);
    drop(l);
    // A child that a parallel test is forking right now may hold a copy of the socket
    // for a moment (until its exec closes it), so allow a short grace period.
    assert!(
        wait_until(Duration::from_secs(2), || std::net::TcpStream::connect(a).is_err()),
        "listener still accepting after drop"
    );
}

#[test]
fn daemonize_detaches_and_writes_pidfile() {
    let tmp = TempDir::new("watcher-tests-daemon");
    let pidfile = tmp.join("daemon.pid");
    let pidfile2 = tmp.join("daemon2.pid");
    let l = Listener::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut child = Command::new(NETPROBE)
        .args(["daemonize", "write-pid", pidfile2.to_str().unwrap(), "tcp", &l.addr().to_string(), "sleep", "30000"])
        .env("NETPROBE_PIDFILE", &pidfile)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let original = child.id();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");

    assert!(wait_until(Duration::from_secs(5), || pidfile.exists() && pidfile2.exists()));
    let pid: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let pid2: u32 = std::fs::read_to_string(&pidfile2).unwrap().trim().parse().unwrap();
    assert_eq!(pid, pid2);
    assert_ne!(pid, original);

    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("daemon is alive");
    // Fields after "(comm)": state ppid pgrp session ...
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let (state, ppid, sid): (&str, u32, u32) = (f[0], f[1].parse().unwrap(), f[3].parse().unwrap());
    let kill = || {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let my_sid = nix::unistd::getsid(None).unwrap().as_raw() as u32;
    if state == "Z" || ppid == original || sid == pid || sid == original || sid == my_sid || comm.trim() != "netprobe" {
        kill();
        panic!("bad daemon: state={state} ppid={ppid} sid={sid} original={original} my_sid={my_sid} comm={comm:?}");
    }
    // stdin is /dev/null.
    let stdin = std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap();
    // The daemon continued with the remaining actions.
    let connected = wait_until(Duration::from_secs(5), || l.connections() == 1);
    kill();
    assert_eq!(stdin, std::path::Path::new("/dev/null"));
    assert!(connected, "daemon did not run the actions after daemonize");
}

#[test]
fn exec_replaces_process() {
    let out = netprobe(&["exec", "sh", "-c", "echo exec-ok"]);
    assert!(out.status.success());
    assert_eq!(stdout_lines(&out), ["exec-ok"]);
    let out = netprobe(&["exec", "/nonexistent/program"]);
    assert_eq!(out.status.code(), Some(127));
}

#[test]
fn netns_create_exec_and_cleanup() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new(1).expect("create netns");
    let name = ns.name().to_string();
    assert!(name.starts_with("watcher-test-"));
    assert!(ns.host_if().len() <= 15 && ns.ns_if().len() <= 15);
    assert!(netns_list().contains(&name));
    assert_eq!(ns.host_v4().to_string(), "198.18.0.5");
    assert_eq!(ns.ns_v4().to_string(), "198.18.0.6");
    assert_eq!(ns.host_v6().to_string(), "fd00:5741::5");
    assert_eq!(ns.ns_v6().to_string(), "fd00:5741::6");

    let out = ns.exec_in("ip").arg("addr").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(ns.ns_if()), "{text}");
    assert!(text.contains("198.18.0.6/30"), "{text}");
    assert!(text.contains("fd00:5741::6/126"), "{text}");
    assert!(!text.contains(ns.host_if()), "{text}");

    // A process left running inside is killed by drop.
    let mut sleeper = ns.exec_in("sleep").arg("300").spawn().unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{}/comm", sleeper.id())).is_ok_and(|c| c.trim() == "sleep")
    }));

    let host_if = ns.host_if().to_string();
    drop(ns);
    assert!(!netns_list().contains(&name), "namespace {name} still listed");
    assert!(!std::path::Path::new(&format!("/sys/class/net/{host_if}")).exists());
    let status = sleeper.wait().unwrap();
    assert!(!status.success());
}

#[test]
fn netns_cleanup_on_panic() {
    if !root_or_skip() {
        return;
    }
    let name = std::sync::Arc::new(Mutex::new(String::new()));
    let n2 = name.clone();
    let r = std::thread::spawn(move || {
        let ns = Netns::new(2).unwrap();
        *n2.lock().unwrap() = ns.name().to_string();
        panic!("intentional panic with a live Netns");
    })
    .join();
    assert!(r.is_err());
    let name = name.lock().unwrap().clone();
    assert!(!name.is_empty());
    assert!(!netns_list().contains(&name));
}

#[test]
fn netns_connectivity_both_directions() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new(3).expect("create netns");

    // Namespace -> root namespace: netprobe inside reaches a Listener on the host side.
    let l4 = Listener::start(SocketAddr::new(ns.host_v4().into(), 0)).unwrap();
    let l6 = Listener::start(SocketAddr::new(ns.host_v6().into(), 0)).unwrap();
    let out = ns
        .exec_in(NETPROBE)
        .args(["tcp", &l4.addr().to_string(), "tcp", &l6.addr().to_string(), "udp-sendto", &l4.addr().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!((l4.connections(), l6.connections(), l4.datagrams()), (1, 1, 1));

    // Root namespace -> namespace: a python TCP server inside, netprobe outside.
    let server = r#"
import socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 0))
s.listen(1)
s.settimeout(20)
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
c.settimeout(20)
data = b''
while True:
    d = c.recv(100)
    if not d:
        break
    data += d
print(data.decode().strip(), flush=True)
"#;
    for ip in [IpAddr::from(ns.ns_v4()), IpAddr::from(ns.ns_v6())] {
        let mut py = ns
            .exec_in("python3")
            .args(["-c", server, &ip.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 in netns");
        let mut stdout = std::io::BufReader::new(py.stdout.take().unwrap());
        let mut port = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut port).unwrap();
        let port: u16 = port.trim().parse().expect("port from python server");
        let target = SocketAddr::new(ip, port);
        let out = netprobe(&["tcp", &target.to_string()]);
        assert!(out.status.success() && out.stderr.is_empty());
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        assert!(py.wait().unwrap().success());
        assert_eq!(rest.trim(), "hello", "python server inside the namespace got {rest:?}");
    }
}
