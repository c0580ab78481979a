//! The host name a TCP stream's first data segment targets: a TLS ClientHello's server name
//! (SNI), an HTTP `CONNECT host:port`, an absolute URI's host (`GET http://host/`, what a
//! forward proxy is sent), else the HTTP `Host` header. The same rules and bounds as the
//! kernel's judge (`watcher-ebpf/src/target.rs`): only the first
//! [`watcher_common::TARGET_SCAN_LEN`] bytes, at most
//! [`watcher_common::TARGET_TLS_EXTENSIONS`] TLS extensions, names of at most
//! [`watcher_common::TARGET_NAME_LEN`] bytes.
use watcher_common::{TARGET_NAME_LEN, TARGET_SCAN_LEN, TARGET_TLS_EXTENSIONS};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// `tls-sni`, `http-connect`, `http-uri` or `http-host`.
    pub how: &'static str,
    /// As sent (one trailing dot dropped); may be an IP literal.
    pub host: String,
    /// The CONNECT or URI port, else `dport`.
    pub port: u16,
}

fn at(b: &[u8], i: usize) -> u8 {
    b.get(i).copied().unwrap_or(0)
}

fn be16(b: &[u8], i: usize) -> usize {
    ((at(b, i) as usize) << 8) | at(b, i + 1) as usize
}

/// What the first segment of a stream to port `dport` names, if anything.
pub fn find(first: &[u8], dport: u16) -> Option<Found> {
    let b = &first[..first.len().min(TARGET_SCAN_LEN)];
    let (how, off, len, port) = tls(b).map(|(o, l)| ("tls-sni", o, l, dport)).or_else(|| http(b, dport))?;
    let mut name = b.get(off..off.checked_add(len)?)?;
    if let Some(n) = name.strip_suffix(b".") {
        name = n;
    }
    if name.is_empty() || name.len() > TARGET_NAME_LEN {
        return None;
    }
    Some(Found { how, host: String::from_utf8_lossy(name).into_owned(), port })
}

fn tls(b: &[u8]) -> Option<(usize, usize)> {
    if at(b, 0) != 0x16 || at(b, 1) != 3 || at(b, 5) != 1 {
        return None;
    }
    let mut off = 43;
    off += 1 + at(b, off) as usize;
    off += 2 + be16(b, off);
    off += 1 + at(b, off) as usize;
    off += 2;
    for _ in 0..TARGET_TLS_EXTENSIONS {
        if off + 4 > b.len() {
            return None;
        }
        let (t, l) = (be16(b, off), be16(b, off + 2));
        if t == 0 {
            if at(b, off + 6) != 0 {
                return None;
            }
            return Some((off + 9, be16(b, off + 7)));
        }
        off += 4 + l;
    }
    None
}

fn name_len(b: &[u8], start: usize) -> usize {
    let mut i = 0;
    while i < TARGET_NAME_LEN + 1 {
        match at(b, start + i) {
            0 | b':' | b'/' | b' ' | b'\r' | b'\n' | b'\t' | b'?' | b'#' => break,
            _ => i += 1,
        }
    }
    i
}

fn port_after(b: &[u8], end: usize, default: u16) -> u16 {
    if at(b, end) != b':' {
        return default;
    }
    let mut p: u32 = 0;
    for j in 1..6 {
        let c = at(b, end + j);
        if !c.is_ascii_digit() {
            break;
        }
        p = p * 10 + (c - b'0') as u32;
    }
    if p == 0 || p > 65535 { default } else { p as u16 }
}

fn is(b: &[u8], at_: usize, s: &[u8]) -> bool {
    s.iter().enumerate().all(|(k, c)| at(b, at_ + k).to_ascii_lowercase() == *c)
}

fn http(b: &[u8], dport: u16) -> Option<(&'static str, usize, usize, u16)> {
    let sp = (0..16).find(|&i| at(b, i) == b' ')?;
    if sp == 0 || !(0..sp).all(|i| at(b, i).is_ascii_uppercase()) {
        return None;
    }
    let uri = |how, start: usize, default| {
        let l = name_len(b, start);
        Some((how, start, l, port_after(b, start + l, default)))
    };
    if sp == 7 && is(b, 0, b"connect") {
        return uri("http-connect", 8, 443);
    }
    let u = sp + 1;
    if is(b, u, b"http://") {
        return uri("http-uri", u + 7, 80);
    }
    if is(b, u, b"https://") {
        return uri("http-uri", u + 8, 443);
    }
    let mut i = u;
    loop {
        if i + 6 > b.len() {
            return None;
        }
        if at(b, i) == b'\n' && is(b, i + 1, b"host:") {
            break;
        }
        i += 1;
    }
    let mut start = i + 6;
    for _ in 0..8 {
        if at(b, start) != b' ' && at(b, start) != b'\t' {
            break;
        }
        start += 1;
    }
    Some(("http-host", start, name_len(b, start), dport))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(how: &'static str, host: &str, port: u16) -> Option<Found> {
        Some(Found { how, host: host.into(), port })
    }

    #[test]
    fn http_requests_name_their_target() {
        assert_eq!(
            find(b"CONNECT evil.test:4444 HTTP/1.1\r\nHost: evil.test:4444\r\n\r\n", 3128),
            f("http-connect", "evil.test", 4444)
        );
        assert_eq!(find(b"CONNECT 198.18.0.2:443 HTTP/1.1\r\n\r\n", 3128), f("http-connect", "198.18.0.2", 443));
        assert_eq!(
            find(b"GET http://a.test:8080/x HTTP/1.1\r\nHost: b.test\r\n\r\n", 3128),
            f("http-uri", "a.test", 8080)
        );
        assert_eq!(find(b"POST https://A.Test./x HTTP/1.1\r\n\r\n", 3128), f("http-uri", "A.Test", 443));
        assert_eq!(
            find(b"GET /x HTTP/1.1\r\nUser-Agent: u\r\nhost:\t good.test:80\r\n\r\n", 80),
            f("http-host", "good.test", 80)
        );
        assert_eq!(find(b"GET /x HTTP/1.1\r\nX-Host: no\r\n\r\n", 80), None);
        assert_eq!(find(b"get /x HTTP/1.1\r\nHost: a\r\n\r\n", 80), None, "a method is capital letters");
        assert_eq!(find(b"\x00\x01binary", 80), None);
        // Past the bound: not looked at (the kernel does not either).
        let mut far = b"GET / HTTP/1.1\r\nX: ".to_vec();
        far.resize(TARGET_SCAN_LEN, b'a');
        far.extend_from_slice(b"\r\nHost: late.test\r\n\r\n");
        assert_eq!(find(&far, 80), None);
    }

    /// A ClientHello with a session id, cipher suites and an extension before server_name.
    fn client_hello(name: &str) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7u8; 32]);
        body.push(4);
        body.extend_from_slice(&[1, 2, 3, 4]);
        body.extend_from_slice(&[0, 4, 0x13, 1, 0x13, 2]);
        body.extend_from_slice(&[1, 0]);
        let mut ext = vec![0, 0x0b, 0, 2, 1, 0];
        let n = name.len() as u16;
        ext.extend_from_slice(&[0, 0]);
        ext.extend_from_slice(&(n + 5).to_be_bytes());
        ext.extend_from_slice(&(n + 3).to_be_bytes());
        ext.push(0);
        ext.extend_from_slice(&n.to_be_bytes());
        ext.extend_from_slice(name.as_bytes());
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1, 0];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn a_client_hello_names_its_server() {
        assert_eq!(find(&client_hello("front.cdn.test"), 443), f("tls-sni", "front.cdn.test", 443));
        let mut cut = client_hello("front.cdn.test");
        cut.truncate(60);
        assert_eq!(find(&cut, 443), None);
    }
}
