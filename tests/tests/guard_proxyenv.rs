//! Forward proxies named by the step's environment (`HTTPS_PROXY`, `https_proxy`,
//! `http_proxy`, `NO_PROXY`) and by npm's own configuration (`https-proxy` in the user's
//! .npmrc), for `watcher run` and for a daemon job whose first process carries `HTTPS_PROXY`:
//! the proxy is reachable, and every request through it is judged by its target. The proxy
//! (tests/src/proxy.rs) runs on loopback in the test process; its upstreams are a network
//! namespace the test creates and, for the npm run, npm's own default registry.
use std::{
    net::{IpAddr, SocketAddr, ToSocketAddrs as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use watcher_tests::{
    Listener, Netns, TempDir, lab::in_netns, proxy::Proxy, read_jsonl, root_or_skip, wait_until, watcher_bin,
};

/// Every variable that names a proxy for some tool: removed from each step, so only what a
/// test sets counts.
const PROXY_VARS: &[&str] = &[
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "npm_config_proxy",
    "npm_config_https_proxy",
    "NPM_CONFIG_PROXY",
    "NPM_CONFIG_HTTPS_PROXY",
    "PIP_PROXY",
];

struct Step {
    code: Option<i32>,
    err: String,
    out: String,
    events: Vec<Value>,
    /// The log itself, for `watcher replay -`.
    log: Vec<u8>,
}

fn run(policy: &str, script: &str, env: &[(&str, &str)]) -> Step {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(&p, policy).unwrap();
    let log = dir.path().join("e.jsonl");
    let mut cmd = Command::new(watcher_bin());
    cmd.args(["run", "--policy"]).arg(&p).arg("--log").arg(&log).args(["--", "sh", "-c", script]);
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    cmd.env_remove("CI").envs(env.iter().copied());
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    Step {
        code: out.status.code(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        events: read_jsonl(&log),
        log: std::fs::read(&log).unwrap_or_default(),
    }
}

/// The alerts `watcher replay` gives for a step's log (judged with the policy and the facts
/// the start record holds: its proxies among them) and the live ones, as the report has them.
fn replayed_and_live_alerts(s: &Step) -> (Vec<Value>, Vec<Value>) {
    use std::io::Write as _;
    let mut child = Command::new(watcher_bin())
        .args(["replay", "--format", "json", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&s.log).unwrap();
    let out = child.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let replayed = v["logs"][0]["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("{v:#}\n{}", String::from_utf8_lossy(&out.stderr)));
    let live = s
        .events
        .iter()
        .filter(|e| e["kind"] == "alert")
        .map(|a| {
            let mut a = a.clone();
            a.as_object_mut().unwrap().remove("kind");
            a
        })
        .collect();
    (replayed, live)
}

fn egress_alerts(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["kind"] == "alert" && e["rule"] == "egress-denied").collect()
}

fn proxy_sources(events: &[Value]) -> Vec<Value> {
    events[0]["proxy_sources"].as_array().cloned().unwrap_or_default()
}

fn subnet(k: u16) -> u16 {
    16000 + (std::process::id() % 1000) as u16 * 8 + k
}

fn listen_in(ns: &Netns) -> Listener {
    let addr = SocketAddr::new(IpAddr::V4(ns.ns_v4()), 0);
    in_netns(ns.name(), move || Listener::start(addr)).unwrap()
}

/// The attacker and an allowed host in a namespace; a proxy on loopback that knows them as
/// evil.test and good.test.
struct Lab {
    _ns: Netns,
    ip: IpAddr,
    attacker: Listener,
    good: Listener,
    proxy: Proxy,
}

impl Lab {
    fn new(k: u16) -> Lab {
        let ns = Netns::new(subnet(k)).unwrap();
        let attacker = listen_in(&ns);
        let good = listen_in(&ns);
        let ip = IpAddr::V4(ns.ns_v4());
        let proxy = Proxy::start(vec![("good.test".into(), ip), ("evil.test".into(), ip)]);
        Lab { _ns: ns, ip, attacker, good, proxy }
    }

    /// good.test on its port only; no loopback, no proxy in the policy.
    fn policy(&self, mode: &str) -> String {
        format!(
            "version: 1\npipeline: proxyenv\nmode: {mode}\negress:\n  loopback: false\n  allow:\n    - host: good.test\n      ports: [{}]\ndns:\n  resolvers: []\n",
            self.good.addr().port()
        )
    }

    fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy.addr)
    }
}

/// Asserts a request for evil.test through the proxy: flagged and delivered in audit mode,
/// dropped in the kernel in enforce mode (the proxy never hears of it, exit 77).
fn assert_denied_through_proxy(lab: &Lab, mode: &str, s: &Step, before: (u64, usize), ctx: &str) {
    let alerts = egress_alerts(&s.events);
    let ctx = format!("{ctx}, {mode}: {}\n{alerts:#?}", s.err);
    let ap = lab.attacker.addr().port();
    assert_eq!(alerts.len(), 1, "{ctx}");
    assert!(alerts[0]["message"].as_str().unwrap().contains(&format!("evil.test:{ap}")), "{ctx}");
    let send = s.events.iter().find(|e| e["kind"] == "send" && e["target"].is_object()).expect(&ctx);
    assert_eq!(send["target"]["host"], "evil.test", "{ctx}");
    if mode == "enforce" {
        assert_eq!(s.code, Some(77), "{ctx}");
        assert_eq!(alerts[0]["action"], "deny", "{ctx}");
        assert_eq!(send["target"]["dropped"], true, "{ctx}");
        assert_eq!(lab.proxy.upstreams().len(), before.1, "the proxy never got the request: {ctx}");
        assert_eq!(lab.attacker.connections(), before.0, "{ctx}");
    } else {
        assert_eq!(s.code, Some(0), "{ctx}");
        assert_eq!(alerts[0]["action"], "flag", "{ctx}");
        assert_eq!(lab.attacker.connections(), before.0 + 1, "{ctx}");
    }
}

/// `HTTPS_PROXY` and `https_proxy` (CONNECT for an https URL) and `http_proxy` (an absolute
/// URI for an http URL) name a proxy the policy does not: it is reachable (without the
/// variable the same request is a denied connection to loopback), an allowed target gets
/// through, one that is not allowed is flagged in audit mode and never reaches the proxy's
/// upstream in enforce mode. The start record names the variable.
#[test]
fn the_proxy_variables_name_proxies_judged_by_each_requests_target() {
    if !root_or_skip() {
        return;
    }
    let lab = Lab::new(0);
    let (ap, gp) = (lab.attacker.addr().port(), lab.good.addr().port());
    let url = lab.proxy_url();
    let https = |host: &str, port: u16| format!("curl -sS -m 3 https://{host}:{port}/ >/dev/null 2>&1; true");
    let http = |host: &str, port: u16| format!("curl -sS -m 3 http://{host}:{port}/x >/dev/null 2>&1; true");
    let cases = [
        ("HTTPS_PROXY", https("evil.test", ap)),
        ("https_proxy", https("evil.test", ap)),
        ("http_proxy", http("evil.test", ap)),
    ];
    for (var, attack) in &cases {
        for mode in ["audit", "enforce"] {
            let before = (lab.attacker.connections(), lab.proxy.upstreams().len());
            let s = run(&lab.policy(mode), attack, &[(var, &url)]);
            let src = proxy_sources(&s.events);
            assert_eq!(src.len(), 1, "{var} {mode}: {:#}", s.events[0]);
            assert_eq!(src[0]["from"], *var, "{var}");
            assert_eq!(src[0]["proxy"], lab.proxy.addr.to_string(), "{var}");
            assert_denied_through_proxy(&lab, mode, &s, before, var);
            let (replayed, live) = replayed_and_live_alerts(&s);
            assert_eq!(replayed, live, "{var} {mode}: replay judges the proxy as the live run did");
        }
        let allowed = if *var == "http_proxy" { http("good.test", gp) } else { https("good.test", gp) };
        let before = (lab.good.connections(), lab.proxy.upstreams().len());
        let s = run(&lab.policy("enforce"), &allowed, &[(var, &url)]);
        assert_eq!(s.code, Some(0), "{var}: {}", s.err);
        assert!(egress_alerts(&s.events).is_empty(), "{var}: {:#?}", egress_alerts(&s.events));
        assert_eq!(lab.good.connections(), before.0 + 1, "{var}: the allowed target got through");
        assert_eq!(lab.proxy.upstreams().len(), before.1 + 1, "{var}: through the proxy");
        let (replayed, _) = replayed_and_live_alerts(&s);
        assert!(replayed.is_empty(), "{var}: replay knows the proxy from the start record: {replayed:#?}");
    }
    // The control: no variable, the same proxy named on curl's command line only: it is a
    // loopback address the policy does not allow.
    let before = lab.proxy.upstreams().len();
    let s = run(
        &lab.policy("enforce"),
        &format!("curl -sS -m 3 -x {url} https://good.test:{gp}/ >/dev/null 2>&1; true"),
        &[],
    );
    let alerts = egress_alerts(&s.events);
    assert_eq!(s.code, Some(77), "{}\n{alerts:#?}", s.err);
    assert!(proxy_sources(&s.events).is_empty());
    assert!(alerts[0]["message"].as_str().unwrap().contains(&lab.proxy.addr.port().to_string()), "{alerts:#?}");
    assert_eq!(lab.proxy.upstreams().len(), before);
    // An unusable value: one warning naming the variable, the step runs.
    let s = run(
        &lab.policy("audit"),
        "true",
        &[("HTTPS_PROXY", "socks5://127.0.0.1:1080"), ("http_proxy", "http://nowhere")],
    );
    assert_eq!(s.code, Some(0), "{}", s.err);
    let warned: Vec<&str> = s.err.lines().filter(|l| l.contains("warning") && l.contains("proxy")).collect();
    assert_eq!(warned.len(), 2, "{}", s.err);
    assert!(warned[0].contains("HTTPS_PROXY") && warned[0].contains("SOCKS"), "{warned:?}");
    assert!(warned[1].contains("http_proxy") && warned[1].contains("no port"), "{warned:?}");
    assert!(proxy_sources(&s.events).is_empty());
}

/// `NO_PROXY`: curl reaches a host listed there directly, so the connection is judged as a
/// direct one (denied: the attacker's address is not allowed; the proxy never sees it);
/// `NO_PROXY=*` means no proxy is used, and none is made reachable.
#[test]
fn no_proxy_hosts_are_reached_directly_and_judged_as_direct_connections() {
    if !root_or_skip() {
        return;
    }
    let lab = Lab::new(1);
    let (ip, ap) = (lab.ip, lab.attacker.addr().port());
    let url = lab.proxy_url();
    let no_proxy = ip.to_string();
    let script = format!("curl -sS -m 3 https://{ip}:{ap}/ >/dev/null 2>&1; true");
    for mode in ["audit", "enforce"] {
        let before = (lab.attacker.connections(), lab.proxy.upstreams().len());
        let s = run(&lab.policy(mode), &script, &[("HTTPS_PROXY", &url), ("NO_PROXY", &no_proxy)]);
        let alerts = egress_alerts(&s.events);
        let ctx = format!("{mode}: {}\n{alerts:#?}", s.err);
        assert_eq!(proxy_sources(&s.events).len(), 1, "{ctx}");
        assert_eq!(alerts.len(), 1, "{ctx}");
        assert!(alerts[0]["message"].as_str().unwrap().contains(&format!("{ip}:{ap}")), "{ctx}");
        assert!(
            !s.events.iter().any(|e| e["kind"] == "send" && e["target"].is_object()),
            "not through the proxy: {ctx}"
        );
        assert_eq!(lab.proxy.upstreams().len(), before.1, "{ctx}");
        if mode == "enforce" {
            assert_eq!(s.code, Some(77), "{ctx}");
            assert_eq!(alerts[0]["action"], "deny", "{ctx}");
            assert_eq!(lab.attacker.connections(), before.0, "{ctx}");
        } else {
            assert_eq!(s.code, Some(0), "{ctx}");
            assert_eq!(lab.attacker.connections(), before.0 + 1, "{ctx}");
        }
    }
    let s = run(&lab.policy("enforce"), "true", &[("https_proxy", &url), ("no_proxy", "*")]);
    assert_eq!(s.code, Some(0), "{}", s.err);
    assert!(proxy_sources(&s.events).is_empty(), "{:#}", s.events[0]);
}

/// npm's own `https-proxy` (the user's .npmrc, no variable): a real `npm install` reaches
/// npm's default registry only through the proxy (the registry is allowed through it by
/// name); a CONNECT for evil.test through the same proxy is dropped in enforce mode.
#[test]
fn npms_configured_proxy_is_a_proxy_and_npm_installs_through_it() {
    if !root_or_skip() {
        return;
    }
    if Command::new("npm").arg("--version").output().is_err() {
        eprintln!("npm is not installed: skipped");
        return;
    }
    let home = TempDir::new("watcher-proxyenv-npm");
    // npm's default registry, as npm names it (never written here).
    let out = Command::new("npm")
        .args(["config", "get", "registry"])
        .env("HOME", home.path())
        .current_dir("/")
        .output()
        .unwrap();
    let registry = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let host = registry.split("://").nth(1).unwrap().split(['/', ':']).next().unwrap().to_string();
    let reg_ip = (host.as_str(), 443).to_socket_addrs().unwrap().next().unwrap().ip();
    let ns = Netns::new(subnet(2)).unwrap();
    let attacker = listen_in(&ns);
    let proxy = Proxy::start(vec![(host.clone(), reg_ip), ("evil.test".into(), IpAddr::V4(ns.ns_v4()))]);
    std::fs::write(
        home.join(".npmrc"),
        format!("https-proxy=http://{}\nproxy=http://{}\nfund=false\naudit=false\n", proxy.addr, proxy.addr),
    )
    .unwrap();
    let project = home.join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(project.join("package.json"), "{\"name\":\"proxyenv\",\"version\":\"1.0.0\",\"private\":true}\n")
        .unwrap();
    let policy = |mode: &str| {
        format!(
            "version: 1\npipeline: proxyenv-npm\nmode: {mode}\negress:\n  registries: [npm]\n  loopback: false\ndns:\n  resolvers: []\n"
        )
    };
    let h = home.path().to_str().unwrap();
    let p = project.to_str().unwrap();
    let install =
        format!("cd {p} && npm install --no-audit --no-fund --ignore-scripts --cache {h}/cache is-number@7.0.0");
    let s = run(&policy("enforce"), &install, &[("HOME", h)]);
    let ctx = format!("{}\n{}\n{:#?}", s.out, s.err, egress_alerts(&s.events));
    assert_eq!(s.code, Some(0), "{ctx}");
    assert!(egress_alerts(&s.events).is_empty(), "{ctx}");
    assert!(project.join("node_modules/is-number/package.json").is_file(), "{ctx}");
    assert!(proxy.upstreams().iter().any(|u| u.ip() == reg_ip), "npm went through the proxy: {:?}", proxy.upstreams());
    let src = proxy_sources(&s.events);
    assert!(!src.is_empty(), "{:#}", s.events[0]);
    assert!(src.iter().all(|s| s["from"].as_str().unwrap().contains("npm config list")), "{src:#?}");
    assert!(src.iter().any(|s| s["from"].as_str().unwrap().ends_with("https-proxy")), "{src:#?}");
    // The same configured proxy asked for a host that is not allowed.
    let before = (attacker.connections(), proxy.upstreams().len());
    let attack = format!(
        "curl -sS -m 3 -p -x http://{} http://evil.test:{}/ >/dev/null 2>&1; true",
        proxy.addr,
        attacker.addr().port()
    );
    let s = run(&policy("enforce"), &attack, &[("HOME", h)]);
    let alerts = egress_alerts(&s.events);
    assert_eq!(s.code, Some(77), "{}\n{alerts:#?}", s.err);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert!(alerts[0]["message"].as_str().unwrap().contains("evil.test"), "{alerts:#?}");
    assert_eq!((attacker.connections(), proxy.upstreams().len()), before);
}

struct Daemon {
    child: Option<Child>,
    stderr: PathBuf,
    socket: PathBuf,
    /// Its step socket (`watcher run` with `WATCHER_SOCKET`).
    steps: PathBuf,
    var: String,
}

impl Daemon {
    fn start(dir: &TempDir, policy: &str, var: &str) -> Daemon {
        std::fs::write(dir.join("p.yaml"), policy).unwrap();
        let steps = dir.join("steps.sock");
        let config = dir.join("daemon.yaml");
        std::fs::write(
            &config,
            format!(
                "version: 1\nsocket: run/watcher.sock\nlog_dir: logs\njob_end_grace: 300ms\n\
                 jobs:\n  id_env: [{var}]\n  pipeline_env: [WDT_PXE_REPO]\n\
                 pipelines:\n  - match: \"acme/pxe\"\n    policy: p.yaml\n\
                 steps:\n  allow: true\n  socket: {}\n",
                steps.display()
            ),
        )
        .unwrap();
        let stderr = dir.join("daemon.stderr");
        let child = Command::new(watcher_bin())
            .args(["daemon", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let d =
            Daemon { child: Some(child), stderr, socket: dir.join("run/watcher.sock"), steps, var: var.to_string() };
        assert!(wait_until(Duration::from_secs(30), || d.log().contains("watcher daemon started")), "{}", d.log());
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The log of the ended job `VAR=id`.
    fn ended_log(&self, dir: &Path, id: &str) -> Vec<Value> {
        let mut last = Value::Null;
        let find = |st: &Value| {
            st["jobs"].as_array().unwrap().iter().find(|j| j["id"] == format!("{}={id}", self.var)).cloned()
        };
        let ok = wait_until(Duration::from_secs(20), || {
            let out =
                Command::new(watcher_bin()).args(["status", "--json", "--socket"]).arg(&self.socket).output().unwrap();
            last = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            last["jobs"].is_array() && find(&last).is_some_and(|j| j["state"] == "ended")
        });
        assert!(ok, "job {id} did not end: {last:#}\n{}", self.log());
        read_jsonl(dir.join(find(&last).unwrap()["log"].as_str().unwrap()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A daemon job whose first process carries `HTTPS_PROXY` (the daemon's own environment has
/// none): the job's proxy is reachable, the allowed target gets through it, a CONNECT for
/// evil.test is flagged in audit mode and dropped in enforce mode (the proxy never hears of
/// it); the job's start record names the variable.
#[test]
fn a_daemon_jobs_https_proxy_is_a_proxy_for_that_job() {
    if !root_or_skip() {
        return;
    }
    let lab = Lab::new(3);
    let (ap, gp) = (lab.attacker.addr().port(), lab.good.addr().port());
    let url = lab.proxy_url();
    let var = "WDT_PXE_ID";
    for mode in ["audit", "enforce"] {
        let dir = TempDir::new(&format!("watcher-proxyenv-daemon-{mode}"));
        let d = Daemon::start(&dir, &lab.policy(mode), var);
        let before = (lab.attacker.connections(), lab.good.connections(), lab.proxy.upstreams().len());
        let script = format!(
            "curl -sS -m 3 https://good.test:{gp}/ >/dev/null 2>&1; curl -sS -m 3 https://evil.test:{ap}/ >/dev/null 2>&1; true"
        );
        let mut cmd = Command::new("sh");
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        let out = cmd
            .args(["-c", &script])
            .env(var, mode)
            .env("WDT_PXE_REPO", "acme/pxe")
            .env("HTTPS_PROXY", &url)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{mode}: {}", String::from_utf8_lossy(&out.stderr));
        let events = d.ended_log(dir.path(), mode);
        let ctx = format!("{mode}: {:#?}\n{}", egress_alerts(&events), d.log());
        let src = proxy_sources(&events);
        assert_eq!(src.len(), 1, "{ctx}\n{:#}", events[0]);
        assert_eq!(src[0]["from"], "HTTPS_PROXY", "{ctx}");
        assert_eq!(lab.good.connections(), before.1 + 1, "the allowed target got through: {ctx}");
        let alerts = egress_alerts(&events);
        assert_eq!(alerts.len(), 1, "{ctx}");
        assert!(alerts[0]["message"].as_str().unwrap().contains(&format!("evil.test:{ap}")), "{ctx}");
        if mode == "enforce" {
            assert_eq!(alerts[0]["action"], "deny", "{ctx}");
            assert_eq!(lab.attacker.connections(), before.0, "{ctx}");
            assert_eq!(lab.proxy.upstreams().len(), before.2 + 1, "only the allowed request reached the proxy: {ctx}");
        } else {
            assert_eq!(alerts[0]["action"], "flag", "{ctx}");
            assert_eq!(lab.attacker.connections(), before.0 + 1, "{ctx}");
        }
    }
}

/// A daemon-backed step (`watcher run` through the daemon's step socket): the client's own
/// `https_proxy` is sent with its policy, so the daemon's kernel tables make that proxy
/// reachable and judge each request through it by its target.
#[test]
fn a_daemon_backed_steps_https_proxy_is_a_proxy_for_that_step() {
    if !root_or_skip() {
        return;
    }
    let lab = Lab::new(4);
    let (ap, gp) = (lab.attacker.addr().port(), lab.good.addr().port());
    let url = lab.proxy_url();
    let dir = TempDir::new("watcher-proxyenv-steps");
    let d = Daemon::start(&dir, &lab.policy("audit"), "WDT_PXE_STEP_ID");
    let policy = dir.join("step.yaml");
    std::fs::write(&policy, lab.policy("enforce")).unwrap();
    let step = |script: &str, log: &Path| {
        let mut cmd = Command::new(watcher_bin());
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        cmd.args(["run", "--policy"])
            .arg(&policy)
            .arg("--log")
            .arg(log)
            .args(["--", "sh", "-c", script])
            .env("WATCHER_SOCKET", &d.steps)
            .env("https_proxy", &url)
            .env_remove("CI")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let before = (lab.attacker.connections(), lab.good.connections(), lab.proxy.upstreams().len());
    let log = dir.join("good.jsonl");
    let out = step(&format!("curl -sS -m 3 https://good.test:{gp}/ >/dev/null 2>&1; true"), &log);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("the daemon's log: "), "a daemon-backed step: {err}\n{}", d.log());
    let events = read_jsonl(&log);
    assert_eq!(out.status.code(), Some(0), "{err}\n{:#?}", egress_alerts(&events));
    assert!(egress_alerts(&events).is_empty(), "{:#?}", egress_alerts(&events));
    assert_eq!(proxy_sources(&events).len(), 1, "{:#}", events[0]);
    assert_eq!(proxy_sources(&events)[0]["from"], "https_proxy");
    assert_eq!(lab.good.connections(), before.1 + 1, "the allowed target got through the proxy");
    let log = dir.join("evil.jsonl");
    let out = step(&format!("curl -sS -m 3 https://evil.test:{ap}/ >/dev/null 2>&1; true"), &log);
    let events = read_jsonl(&log);
    let alerts = egress_alerts(&events);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(77), "{err}\n{alerts:#?}");
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["action"], "deny");
    assert!(alerts[0]["message"].as_str().unwrap().contains(&format!("evil.test:{ap}")), "{alerts:#?}");
    assert_eq!(lab.attacker.connections(), before.0, "the attacker heard nothing");
    assert_eq!(lab.proxy.upstreams().len(), before.2 + 1, "only the allowed request reached the proxy");
}
