//! The system's DNS resolvers (`dns.resolvers: [system]`).

use std::net::{IpAddr, Ipv4Addr};

const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The `nameserver` addresses of /etc/resolv.conf, in file order. Like the C library, an
/// unreadable file or one without nameserver lines means 127.0.0.1.
pub fn system_resolvers() -> Vec<IpAddr> {
    let text = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
    parse_resolv_conf(&text)
}

/// Parses resolv.conf text: `nameserver ADDR` lines (comments `#`/`;`, IPv6 zone `%if` dropped).
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else { continue };
        let addr = addr.split('%').next().unwrap_or(addr);
        if let Ok(ip) = addr.parse::<IpAddr>()
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    if out.is_empty() {
        out.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nameserver_lines() {
        let text = "# generated\nsearch corp.example\nnameserver 10.0.0.2\nnameserver fe80::1%eth0 # link\n;nameserver 10.9.9.9\noptions ndots:5\nnameserver 10.0.0.2\n";
        let got = parse_resolv_conf(text);
        assert_eq!(got, vec!["10.0.0.2".parse::<IpAddr>().unwrap(), "fe80::1".parse().unwrap()]);
    }

    #[test]
    fn empty_means_localhost() {
        assert_eq!(parse_resolv_conf("search x\n"), vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    }

    #[test]
    fn system_resolvers_never_empty() {
        assert!(!system_resolvers().is_empty());
    }
}
