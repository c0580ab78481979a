//! A forward HTTP proxy for the tests (CONNECT and absolute-URI requests) on 127.0.0.1, run in
//! the test process (never watched). Its upstreams are only the names and addresses the test
//! gives it: a namespace the test made, or a package manager's default registry.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// A forward HTTP proxy on 127.0.0.1 (CONNECT and absolute-URI requests), in the test
/// process (not watched). Names resolve through `hosts` only; anything else is refused. Every
/// upstream it connects to is recorded.
pub struct Proxy {
    pub addr: SocketAddr,
    upstreams: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(hosts: Vec<(String, IpAddr)>) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let upstreams = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (u, s) = (upstreams.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((c, _)) => {
                        let (u, hosts) = (u.clone(), hosts.clone());
                        std::thread::spawn(move || serve(c, &hosts, &u));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Proxy { addr, upstreams, stop }
    }

    pub fn upstreams(&self) -> Vec<SocketAddr> {
        self.upstreams.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(mut c: TcpStream, hosts: &[(String, IpAddr)], ups: &Mutex<Vec<SocketAddr>>) {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        match c.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (authority, rest) = if method == "CONNECT" {
        (target.to_string(), None)
    } else if let Some(u) = target.strip_prefix("http://") {
        let (a, path) = u.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((u, "/".into()));
        (if a.contains(':') { a.to_string() } else { format!("{a}:80") }, Some(text.replacen(target, &path, 1)))
    } else {
        let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        return;
    };
    let Some((host, port)) = authority.rsplit_once(':') else { return };
    let ip = host.parse::<IpAddr>().ok().or_else(|| hosts.iter().find(|(n, _)| n == host).map(|(_, ip)| *ip));
    let (Some(ip), Ok(port)) = (ip, port.parse::<u16>()) else {
        let _ = c.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
        return;
    };
    let to = SocketAddr::new(ip, port);
    ups.lock().unwrap().push(to);
    let Ok(mut up) = TcpStream::connect_timeout(&to, Duration::from_secs(3)) else { return };
    match rest {
        None => {
            let _ = c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
        }
        Some(req) => {
            let _ = up.write_all(req.as_bytes());
        }
    }
    let (mut c2, mut up2) = (c.try_clone().unwrap(), up.try_clone().unwrap());
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut up2, &mut c2);
    });
    let _ = std::io::copy(&mut c, &mut up);
    let _ = up.shutdown(std::net::Shutdown::Both);
    let _ = t.join();
}
