//! A DNS server for demos and manual tests: `testdns ADDR [NAME=IP[,IP...]]...`
//! Serves A/AAAA answers for the given names on UDP and TCP port 53 of ADDR (a loopback
//! address), NXDOMAIN for anything else. Once bound it logs `testdns: serving ADDR`, then each
//! query it receives (every 100 ms), to stderr.
use std::{net::IpAddr, time::Duration};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(addr) = args.next().and_then(|a| a.parse::<IpAddr>().ok()) else {
        eprintln!("usage: testdns ADDR [NAME=IP[,IP...]]...");
        std::process::exit(2);
    };
    let mut zone = Vec::new();
    for a in args {
        let Some((name, ips)) = a.split_once('=') else {
            eprintln!("testdns: {a:?} is not NAME=IP[,IP...]");
            std::process::exit(2);
        };
        let ips: Result<Vec<IpAddr>, _> = ips.split(',').map(str::parse).collect();
        match ips {
            Ok(ips) => zone.push((name.to_ascii_lowercase(), ips)),
            Err(e) => {
                eprintln!("testdns: {a:?}: {e}");
                std::process::exit(2);
            }
        }
    }
    let server = match watcher_tests::DnsServer::start(addr, zone) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("testdns: {e:#}");
            std::process::exit(1);
        }
    };
    eprintln!("testdns: serving {addr}");
    let mut seen = 0;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let q = server.queries();
        for x in &q[seen..] {
            eprintln!("testdns: {} {} from {} over {}", x.name, x.qtype, x.from, x.transport);
        }
        seen = q.len();
    }
}
