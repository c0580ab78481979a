//! `watcher policy compose`: the effective policy of a CI integration (the GitHub Action's
//! `policy`, `mode` and `allowed-endpoints` inputs, the GitLab and Jenkins recipes'
//! `WATCHER_POLICY`, `WATCHER_MODE`, `WATCHER_ALLOWED_ENDPOINTS`): a policy file with its mode
//! replaced and one `egress.allow` entry appended per endpoint, written as YAML. The source
//! policy is checked first (its errors name its own `FILE:LINE:COLUMN`), each endpoint alone
//! next (an error names the endpoint), and the result last, so what is printed always loads.
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

/// Why an endpoint is not one (`allowed endpoint "ITEM": ...`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("a host name, address or network, not a URL")]
    Url,
    #[error("an opening [ without ]")]
    Unclosed,
    #[error("expected :PORT after ]")]
    AfterBracket,
    #[error("no host or address")]
    NoHost,
    #[error("an empty port after ':'")]
    EmptyPort,
}

/// A policy that cannot be composed: its own error, an endpoint, a mode.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("allowed endpoints: {0} given, at most {MAX_ENDPOINTS}: put the others in the policy")]
    TooMany(usize),
    #[error("allowed endpoint {item:?}: {error}")]
    Endpoint { item: String, error: EndpointError },
    /// An endpoint the policy reader refuses (its message).
    #[error("allowed endpoint {item:?}: {why}")]
    Refused { item: String, why: RefusedWhy },
    #[error("{}: not YAML", .path.display())]
    NotYaml { path: PathBuf, source: serde_yaml::Error },
    /// The policy's YAML is not shaped as a policy (`what` says where).
    #[error("{}: {what}", .path.display())]
    Shape { path: PathBuf, what: &'static str },
    #[error("mode {0:?}: expected audit or enforce")]
    Mode(String),
    #[error("writing the policy")]
    Write(#[source] serde_yaml::Error),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
}

/// At most this many endpoints (one policy line each; a longer list belongs in the policy).
pub const MAX_ENDPOINTS: usize = 256;

/// Split the `allowed-endpoints` text: items separated by spaces, commas or newlines.
pub fn split_endpoints(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || c == ',').filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// One endpoint as a policy `egress.allow` entry: `HOST[:PORT]`, `IP[:PORT]`, `[IPV6]:PORT`,
/// `CIDR[:PORT]` (`[CIDR6]:PORT`); PORT is a number or an inclusive range `LOW-HIGH`.
pub fn endpoint_entry(item: &str) -> Result<Value, EndpointError> {
    if item.contains("://") || item.contains('@') {
        return Err(EndpointError::Url);
    }
    let (addr, port) = if let Some(rest) = item.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or(EndpointError::Unclosed)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(EndpointError::AfterBracket)?),
        };
        (inner, port)
    } else if item.matches(':').count() > 1 {
        // A bare IPv6 address or network: no port (write [ADDR]:PORT for one).
        (item, None)
    } else {
        match item.split_once(':') {
            Some((a, p)) => (a, Some(p)),
            None => (item, None),
        }
    };
    if addr.is_empty() {
        return Err(EndpointError::NoHost);
    }
    let mut entry = Mapping::new();
    let key = if addr.contains('/') {
        "cidr"
    } else if addr.parse::<std::net::IpAddr>().is_ok() {
        "ip"
    } else {
        "host"
    };
    entry.insert(Value::from(key), Value::from(addr));
    if let Some(p) = port {
        if p.is_empty() {
            return Err(EndpointError::EmptyPort);
        }
        let v = match p.parse::<u64>() {
            Ok(n) => Value::from(n),
            Err(_) => Value::from(p),
        };
        entry.insert(Value::from("ports"), Value::Sequence(vec![v]));
    }
    Ok(Value::Mapping(entry))
}

fn strip_nulls(v: &mut Value) {
    if let Value::Mapping(m) = v {
        m.retain(|_, x| !x.is_null());
        for (_, x) in m.iter_mut() {
            strip_nulls(x);
        }
    }
}

fn check(name: &str, v: &Value) -> Result<(), RefusedWhy> {
    let text = serde_yaml::to_string(v).map_err(RefusedWhy::Yaml)?;
    crate::policy::parse_str(name, &text).map(|_| ()).map_err(RefusedWhy::Policy)
}

/// Why the policy reader refuses an endpoint: its message, without the file name.
#[derive(Debug, thiserror::Error)]
pub enum RefusedWhy {
    #[error("{0}")]
    Yaml(serde_yaml::Error),
    #[error("{}", .0.message)]
    Policy(crate::policy::PolicyError),
}

/// The effective policy: `policy` with `mode` (when given) and the endpoints appended to
/// `egress.allow`, as YAML text.
pub fn compose(policy: &Path, mode: Option<&str>, endpoints: &[String]) -> Result<String, ComposeError> {
    crate::policy::load(policy)?;
    let shape = |what: &'static str| ComposeError::Shape { path: policy.to_path_buf(), what };
    if endpoints.len() > MAX_ENDPOINTS {
        return Err(ComposeError::TooMany(endpoints.len()));
    }
    let text = crate::policy::limits::read(policy, "policy")?;
    let mut doc: Value =
        serde_yaml::from_str(&text).map_err(|source| ComposeError::NotYaml { path: policy.to_path_buf(), source })?;
    let root = doc.as_mapping_mut().ok_or_else(|| shape("the policy is not a mapping"))?;
    if let Some(m) = mode {
        if m != "audit" && m != "enforce" {
            return Err(ComposeError::Mode(m.to_string()));
        }
        root.insert(Value::from("mode"), Value::from(m));
    }
    if !endpoints.is_empty() {
        let egress = root.entry(Value::from("egress")).or_insert(Value::Null);
        if egress.is_null() {
            *egress = Value::Mapping(Mapping::new());
        }
        let egress = egress.as_mapping_mut().ok_or_else(|| shape("egress is not a mapping"))?;
        let allow = egress.entry(Value::from("allow")).or_insert(Value::Null);
        if allow.is_null() {
            *allow = Value::Sequence(Vec::new());
        }
        let allow = allow.as_sequence_mut().ok_or_else(|| shape("egress.allow is not a list"))?;
        for item in endpoints {
            let entry = endpoint_entry(item).map_err(|error| ComposeError::Endpoint { item: item.clone(), error })?;
            let alone: Value = serde_yaml::from_str("version: 1\npipeline: endpoint\n").expect("static YAML");
            let mut alone = alone;
            let mut eg = Mapping::new();
            eg.insert(Value::from("allow"), Value::Sequence(vec![entry.clone()]));
            alone.as_mapping_mut().expect("mapping").insert(Value::from("egress"), Value::Mapping(eg));
            check("allowed-endpoints", &alone).map_err(|why| ComposeError::Refused { item: item.clone(), why })?;
            allow.push(entry);
        }
    }
    // An empty section (`egress:`) takes its defaults when read; written out it would be
    // `egress: null`, which the policy reader refuses: leave such entries out.
    strip_nulls(&mut doc);
    let body = serde_yaml::to_string(&doc).map_err(ComposeError::Write)?;
    let out = format!(
        "# Generated by `watcher policy compose` from {} (mode and allowed endpoints applied).\n{body}",
        policy.display().to_string().replace(['\n', '\r'], " ")
    );
    crate::policy::parse_str("the composed policy", &out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tmp(tempfile::NamedTempFile);
    impl std::ops::Deref for Tmp {
        type Target = Path;
        fn deref(&self) -> &Path {
            self.0.path()
        }
    }

    fn tmp_policy(text: &str) -> Tmp {
        let f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        std::fs::write(f.path(), text).unwrap();
        Tmp(f)
    }

    #[test]
    fn endpoints_become_allow_entries() {
        let f = tmp_policy("version: 1\npipeline: p\nmode: enforce\negress:\n  allow:\n    - host: a.example.test\n");
        let eps =
            split_endpoints("b.example.test:443, 192.0.2.1\n[2001:db8::1]:8000-8100 198.51.100.0/24:22 2001:db8::/32");
        let out = compose(&f, Some("audit"), &eps).unwrap();
        let p = crate::policy::parse_str("x", &out).unwrap();
        assert_eq!(p.mode.as_str(), "audit");
        let v: Value = serde_yaml::from_str(&out).unwrap();
        let allow = v["egress"]["allow"].as_sequence().unwrap();
        assert_eq!(allow.len(), 6);
        assert_eq!(allow[1]["host"], Value::from("b.example.test"));
        assert_eq!(allow[1]["ports"][0], Value::from(443u64));
        assert_eq!(allow[2]["ip"], Value::from("192.0.2.1"));
        assert!(allow[2].get("ports").is_none());
        assert_eq!(allow[3]["ip"], Value::from("2001:db8::1"));
        assert_eq!(allow[3]["ports"][0], Value::from("8000-8100"));
        assert_eq!(allow[4]["cidr"], Value::from("198.51.100.0/24"));
        assert_eq!(allow[5]["cidr"], Value::from("2001:db8::/32"));
    }

    #[test]
    fn empty_egress_and_no_mode_keep_the_policy() {
        let f = tmp_policy("version: 1\npipeline: p\nmode: enforce\negress:\n");
        let out = compose(&f, None, &["x.example.test".to_string()]).unwrap();
        let p = crate::policy::parse_str("x", &out).unwrap();
        assert_eq!(p.mode.as_str(), "enforce");
        let out = compose(&f, None, &[]).unwrap();
        assert!(out.contains("mode: enforce"), "{out}");
    }

    #[test]
    fn bad_inputs_name_what_is_wrong() {
        let f = tmp_policy("version: 1\npipeline: p\n");
        for (item, want) in [
            ("https://x.example.test", "not a URL"),
            ("x.example.test:0", "x.example.test:0"),
            ("x.example.test:", "empty port"),
            ("[2001:db8::1", "without ]"),
            ("x.example.test:http", "x.example.test:http"),
        ] {
            let e = compose(&f, None, &[item.to_string()]).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("allowed endpoint"), "{item}: {e}");
        }
        let e = compose(&f, Some("strict"), &[]).unwrap_err().to_string();
        assert!(e.contains("audit or enforce"), "{e}");
        let bad = tmp_policy("version: 1\npipeline: p\negress:\n  alow: []\n");
        let e = compose(&bad, None, &[]).unwrap_err().to_string();
        assert!(e.contains(&bad.display().to_string()) && e.contains(":4:"), "{e}");
        let many: Vec<String> = (0..=MAX_ENDPOINTS).map(|i| format!("h{i}.example.test")).collect();
        assert!(compose(&f, None, &many).unwrap_err().to_string().contains("at most"));
    }
}
