//! SARIF 2.1.0 for code scanning: one run per log (each with its own `automationDetails.id`),
//! one result per alert, rule ids are the engine's rule names, each rule with help text, a
//! `security-severity` and a default level. A result points at the package's lockfile or
//! manifest entry (repository-relative, `uriBaseId` `%SRCROOT%`), else at the policy file; it
//! carries a `partialFingerprints` entry that stays the same across runs for the same rule,
//! package and subject, and the log line of the event in its properties.
use serde_json::{Value, json};

use super::{
    locate::{self, Locator},
    model::{AlertAt, Report, Subject},
};
use crate::engine;

/// (rule id, short description, help).
pub const RULES: &[(&str, &str, &str)] = &[
    (
        engine::RULE_EGRESS,
        "Connection to a destination the policy does not allow",
        "A process connected (or sent a datagram) to an address and port that no `egress.allow` entry of the policy covers. Addresses are allowed by name only when a DNS answer for an allowed name gave them. If the destination is legitimate, add its host name and port to the policy (`watcher policy suggest` writes one from clean runs); otherwise find which package made the connection (the alert names it) and remove or pin it.",
    ),
    (
        engine::RULE_DNS_NAME,
        "DNS query for a name the policy does not allow",
        "A process asked for a name outside `dns.allow` / the egress host names. Data can leave through the query name itself. Allow the name if it is expected, otherwise investigate the package that asked.",
    ),
    (
        engine::RULE_DNS_RESOLVER,
        "DNS query sent to a resolver the policy does not allow",
        "A DNS query went to a server that is neither in `dns.resolvers` nor in the system's resolv.conf at the time of the run. Bypassing the configured resolver is a common way to evade DNS monitoring.",
    ),
    (
        engine::RULE_DNS_MALFORMED,
        "Non-DNS payload sent to port 53",
        "Something sent data to port 53 that is not a DNS query watcher could parse. Port 53 is often allowed by firewalls and used to tunnel data out.",
    ),
    (
        engine::RULE_EXEC,
        "Execution of a program the policy denies",
        "A process executed a program matching an `exec.deny` rule of the policy. In enforce mode the kernel kills it before it runs.",
    ),
    (
        engine::RULE_SHELL,
        "Shell started from a package install script",
        "An install script (npm lifecycle script, cargo build script, pip build) started a shell, and the policy sets `shells: deny`. Install scripts that spawn shells are the usual first step of supply-chain malware. The alert names the package.",
    ),
    (
        engine::RULE_SECRET,
        "A protected secret left the machine",
        "The value of a protected environment variable (policy `secrets.env`) was found, raw or encoded, in a DNS query name or in the data sent on a socket. Rotate the secret and find the package that sent it.",
    ),
    (
        engine::RULE_LOSS,
        "The kernel lost events",
        "The kernel could not deliver some events (ring buffer or tracking map full), so the step cannot be fully vouched for. Increase `--ringbuf-size` or reduce the step's process churn.",
    ),
];

/// Where users learn about the tool (SARIF `informationUri`): the workspace Cargo.toml's
/// `repository`, the one place the project's URL is written.
pub const INFORMATION_URI: &str = concat!(env!("CARGO_PKG_REPOSITORY"), "#readme");

/// The `uriBaseId` every location is relative to: the repository root.
pub const SRCROOT: &str = "%SRCROOT%";

fn level(severity: &str) -> &'static str {
    match severity {
        "critical" | "high" => "error",
        "medium" => "warning",
        _ => "note",
    }
}

/// The severity the engine gives each rule's alerts, and its CVSS-like score for code
/// scanning (`security-severity`: critical >= 9.0, high 7.0-8.9, medium 4.0-6.9).
fn rule_severity(id: &str) -> (&'static str, &'static str) {
    match id {
        engine::RULE_SECRET => ("critical", "9.5"),
        engine::RULE_LOSS => ("medium", "5.0"),
        engine::RULE_SHELL | engine::RULE_DNS_MALFORMED => ("high", "8.5"),
        _ => ("high", "7.5"),
    }
}

/// `egress-denied` -> `EgressDenied` (SARIF: a rule's `name` differs from its opaque `id`).
fn rule_name(id: &str) -> String {
    id.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect()
}

fn sentence(s: &str) -> String {
    if s.ends_with('.') { s.to_string() } else { format!("{s}.") }
}

fn rules() -> Vec<Value> {
    RULES
        .iter()
        .map(|(id, short, help)| {
            let (sev, score) = rule_severity(id);
            json!({
                "id": id,
                "name": rule_name(id),
                "shortDescription": { "text": sentence(short) },
                "fullDescription": { "text": sentence(short) },
                "help": { "text": help, "markdown": help },
                "helpUri": INFORMATION_URI,
                "defaultConfiguration": { "level": level(sev) },
                "properties": {
                    "tags": ["security", "supply-chain"],
                    "precision": "high",
                    "security-severity": score,
                },
            })
        })
        .collect()
}

/// 64-bit FNV-1a, as hex: stable across builds and machines (fingerprints must be).
fn fnv(s: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// What identifies an alert across runs: rule, package name (not its version), and what it
/// was about (host names rather than addresses when DNS explains them: addresses change).
fn fingerprint(r: &Report, a: &AlertAt) -> String {
    let al = &a.alert;
    let pkg = r.tree.install_script(al.pid).map(|(_, at)| format!("{}:{}", at.manager, at.package)).unwrap_or_default();
    let subject = match (&al.variable, &a.subject) {
        (Some(v), _) => v.clone(),
        (None, Some(Subject::Dest { ip, port, .. })) => {
            let names = r.names_for(ip);
            if names.is_empty() { format!("{ip}:{port}") } else { format!("{}:{port}", names.join(",")) }
        }
        (None, Some(Subject::Dns { qname, server, error })) => {
            if *error {
                server.to_string()
            } else {
                qname.to_ascii_lowercase()
            }
        }
        (None, Some(Subject::Exec { filename })) => crate::proctree::basename(filename).to_string(),
        (None, Some(Subject::Loss { source })) => source.clone(),
        (None, None) => al.message.clone(),
    };
    fnv(&format!("{}\u{0}{pkg}\u{0}{subject}", al.rule))
}

/// A name usable in an automation id: letters, digits, `-`, `_`, `.` kept, others `_`.
fn id_part(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect()
}

/// One SARIF run for one report. Each result points at the lockfile or manifest entry of
/// the package whose install script raised it, else at the policy file (the section to
/// edit), relative to the repository root.
pub fn run(r: &Report, version: &str) -> Value {
    let mut loc = Locator::new(r);
    let results: Vec<Value> = r
        .alerts
        .iter()
        .map(|a| {
            let al = &a.alert;
            let idx = RULES.iter().position(|(id, _, _)| *id == al.rule);
            let place = loc
                .package(r, al.pid)
                .or_else(|| r.policy.as_ref().and_then(|p| loc.policy(&p.source, locate::section(&al.rule))))
                .or_else(|| {
                    // The policy is outside the repository: name it, so the result still
                    // says where to look.
                    let name = r.policy.as_ref().map(|p| crate::proctree::basename(&p.source).to_string())?;
                    Some(locate::Location { uri: name, line: 1 })
                });
            let mut res = json!({
                "ruleId": al.rule,
                "level": level(&al.severity),
                "message": { "text": sentence(&al.message) },
                "partialFingerprints": { "watcherAlert/v1": fingerprint(r, a) },
                "properties": {
                    "action": al.action,
                    "severity": al.severity,
                    "pid": al.pid,
                    "package": al.package,
                    "ts": al.ts,
                    "log_line": a.line,
                },
            });
            if let Some(l) = place {
                res["locations"] = json!([{
                    "physicalLocation": {
                        "artifactLocation": { "uri": l.uri, "uriBaseId": SRCROOT },
                        "region": { "startLine": l.line },
                    }
                }]);
            }
            if let Some(i) = idx {
                res["ruleIndex"] = json!(i);
            }
            if let Some(ns) = r.since_install_script(al) {
                res["properties"]["since_install_script_ms"] = json!(ns as f64 / 1e6);
            }
            res
        })
        .collect();
    let mut invocation = json!({ "executionSuccessful": true });
    if let Some(c) = r.watcher_exit {
        invocation["exitCode"] = json!(c);
    }
    let category = r.log.as_deref().map(|l| crate::proctree::basename(l).to_string()).unwrap_or_else(|| "run".into());
    json!({
        "tool": { "driver": {
            "name": "watcher",
            "version": version,
            "semanticVersion": version,
            "informationUri": INFORMATION_URI,
            "rules": rules(),
        }},
        "automationDetails": { "id": format!("watcher/{}/", id_part(&category)) },
        "invocations": [invocation],
        "properties": { "verdict": r.verdict().as_str(), "lost": r.lost_total(), "log": r.log },
        "results": results,
    })
}

/// A whole SARIF document from runs.
pub fn document(runs: Vec<Value>) -> Value {
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": runs,
    })
}
