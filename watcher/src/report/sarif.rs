//! SARIF 2.1.0 for code-scanning dashboards: one run per log, one result per alert, rule ids
//! are the engine's rule names, each rule with help text. A result points at the log line of
//! the event that raised it (replay) or of the alert record (run).
use serde_json::{Value, json};

use super::model::Report;
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

fn level(severity: &str) -> &'static str {
    match severity {
        "critical" | "high" => "error",
        "medium" => "warning",
        _ => "note",
    }
}

fn rules() -> Vec<Value> {
    RULES
        .iter()
        .map(|(id, short, help)| {
            json!({
                "id": id,
                "name": id,
                "shortDescription": { "text": short },
                "fullDescription": { "text": short },
                "help": { "text": help, "markdown": help },
                "properties": { "tags": ["security", "supply-chain"] },
            })
        })
        .collect()
}

/// One SARIF run for one report.
pub fn run(r: &Report, version: &str) -> Value {
    let uri = r.log.clone().unwrap_or_else(|| "watcher.jsonl".into());
    let results: Vec<Value> = r
        .alerts
        .iter()
        .map(|a| {
            let al = &a.alert;
            let idx = RULES.iter().position(|(id, _, _)| *id == al.rule);
            let mut res = json!({
                "ruleId": al.rule,
                "level": level(&al.severity),
                "message": { "text": al.message },
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": { "uri": uri },
                        "region": { "startLine": a.line.unwrap_or(1) },
                    }
                }],
                "properties": {
                    "action": al.action,
                    "severity": al.severity,
                    "pid": al.pid,
                    "package": al.package,
                    "ts": al.ts,
                },
            });
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
    json!({
        "tool": { "driver": {
            "name": "watcher",
            "version": version,
            "rules": rules(),
        }},
        "invocations": [invocation],
        "properties": { "verdict": r.verdict().as_str(), "lost": r.lost_total() },
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
