//! The report as one JSON document for machines: the same content as the text summary, every
//! process (not collapsed), with its parent and package.
use serde_json::{Value, json};

use super::model::Report;

pub fn value(r: &Report) -> Value {
    let mut procs: Vec<(u64, u32)> =
        r.tree.iter().map(|(&pid, _)| (r.procs.get(&pid).map(|s| s.order).unwrap_or(u64::MAX), pid)).collect();
    procs.sort();
    let processes: Vec<Value> = procs
        .iter()
        .map(|&(_, pid)| {
            let n = r.tree.get(pid).expect("listed by the tree");
            let s = r.procs.get(&pid).cloned().unwrap_or_default();
            json!({
                "pid": pid,
                "ppid": n.ppid,
                "comm": n.comm,
                "filename": n.filename.as_deref(),
                "argv": n.argv.to_vec(),
                "package": r.package(pid),
                "install_script": n.attribution,
                "connections": s.connects,
                "dns": s.dns,
                "alerts": s.alerts,
                "killed": s.killed,
                "exit_code": s.exit_code,
            })
        })
        .collect();
    let destinations: Vec<Value> = r
        .destinations
        .iter()
        .map(|((ip, port, proto), d)| {
            json!({
                "address": ip,
                "port": port,
                "proto": proto.as_str(),
                "names": r.names_for(ip),
                "count": d.count,
                "denied": d.denied,
                "pids": d.pids,
            })
        })
        .collect();
    let dns: Vec<Value> = r
        .dns
        .iter()
        .map(|(name, d)| {
            json!({
                "name": name,
                "types": d.qtypes,
                "answers": d.answers,
                "rcodes": d.rcodes,
                "queries": d.queries,
                "denied": d.denied,
            })
        })
        .collect();
    let alerts: Vec<Value> = r
        .alerts
        .iter()
        // Exactly the alert records of the log schema (without `kind`).
        .map(|a| serde_json::to_value(&a.alert).unwrap_or(Value::Null))
        .collect();
    json!({
        "log": r.log,
        "watcher": r.watcher,
        "command": r.command,
        "policy": r.policy,
        "verdict": r.verdict().as_str(),
        "first_alert_after_install_script_ms": r.first_alert_after_install_script().map(|ns| ns as f64 / 1e6),
        "exit_code": r.exit_code,
        "watcher_exit_code": r.watcher_exit,
        "first_ts": r.first_ts,
        "last_ts": r.last_ts,
        "counts": {
            "events": r.events,
            "processes": r.tree.len(),
            "execs": r.execs,
            "destinations": r.destinations.len(),
            "dns_names": r.distinct_names(),
            "dns_queries": r.dns_queries,
            "alerts": r.alerts.len(),
            "lost": r.lost_total(),
        },
        "processes": processes,
        "destinations": destinations,
        "dns": dns,
        "alerts": alerts,
        "lost": r.lost_total(),
        "lost_by_source": r.lost,
    })
}
