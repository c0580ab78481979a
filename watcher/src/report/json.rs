//! The report as one JSON document for machines: the same content as the text summary, every
//! process (not collapsed), with its parent and package.
//!
//! [`Streamed`] serializes the report without building it as one JSON value first: the long
//! lists (processes, destinations, DNS names, alerts) are written entry by entry, so the
//! memory it takes does not grow with the number of processes (keys in the same sorted order
//! as a `serde_json::Value` has them, so the output is byte for byte the same).
use std::collections::BTreeMap;

use serde::{Serialize, Serializer, ser::SerializeSeq as _};
use serde_json::{Value, json};

use super::model::Report;

/// The report as a `serde_json::Value` (small reports, tests).
pub fn value(r: &Report) -> Value {
    serde_json::to_value(Streamed(r)).unwrap_or(Value::Null)
}

/// A report that serializes as the JSON document, streaming its long lists.
pub struct Streamed<'a>(pub &'a Report);

/// Several reports: `{"logs": [...]}` (`watcher replay --format json`).
pub struct StreamedLogs<'a>(pub &'a [Report]);

impl Serialize for StreamedLogs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("logs", &Seq(self.0.iter().map(Streamed)))?;
        m.end()
    }
}

/// A sequence serialized from an iterator, one element at a time.
struct Seq<I>(I);

impl<I: Iterator<Item = T> + Clone, T: Serialize> Serialize for Seq<I> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        for x in self.0.clone() {
            seq.serialize_element(&x)?;
        }
        seq.end()
    }
}

enum Field<'a> {
    Value(Value),
    Processes(&'a Report),
    Destinations(&'a Report),
    Dns(&'a Report),
    Alerts(&'a Report),
}

impl Serialize for Field<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Field::Value(v) => v.serialize(s),
            Field::Processes(r) => processes(r, s),
            Field::Destinations(r) => Seq(r.destinations.iter().map(|((ip, port, proto), d)| {
                json!({
                    "address": ip,
                    "port": port,
                    "proto": proto.as_str(),
                    "names": r.names_for(ip),
                    "count": d.count,
                    "denied": d.denied,
                    "pids": d.pids,
                })
            }))
            .serialize(s),
            Field::Dns(r) => Seq(r.dns.iter().map(|(name, d)| {
                json!({
                    "name": name,
                    "types": d.qtypes,
                    "answers": d.answers,
                    "rcodes": d.rcodes,
                    "queries": d.queries,
                    "denied": d.denied,
                })
            }))
            .serialize(s),
            // Exactly the alert records of the log schema (without `kind`).
            Field::Alerts(r) => {
                Seq(r.alerts.iter().map(|a| serde_json::to_value(&a.alert).unwrap_or(Value::Null))).serialize(s)
            }
        }
    }
}

impl Serialize for Streamed<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let fields = fields(self.0);
        let mut m = s.serialize_map(Some(fields.len()))?;
        for (k, v) in &fields {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

fn processes<S: Serializer>(r: &Report, s: S) -> Result<S::Ok, S::Error> {
    let mut procs: Vec<(u64, u32)> =
        r.tree.iter().map(|(&pid, _)| (r.procs.get(&pid).map(|s| s.order).unwrap_or(u64::MAX), pid)).collect();
    procs.sort();
    let mut seq = s.serialize_seq(Some(procs.len()))?;
    for &(_, pid) in &procs {
        let v = {
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
        };
        seq.serialize_element(&v)?;
    }
    seq.end()
}

/// The document's fields, in key order.
fn fields(r: &Report) -> BTreeMap<String, Field<'_>> {
    let small = match json!({
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
        "lost": r.lost_total(),
        "lost_by_source": r.lost,
    }) {
        Value::Object(m) => m,
        _ => Default::default(),
    };
    let mut m: BTreeMap<String, Field<'_>> = small.into_iter().map(|(k, v)| (k, Field::Value(v))).collect();
    if let Some(w) = &r.incomplete {
        m.insert("incomplete".into(), Field::Value(Value::String(w.clone())));
    }
    m.insert("processes".into(), Field::Processes(r));
    m.insert("destinations".into(), Field::Destinations(r));
    m.insert("dns".into(), Field::Dns(r));
    m.insert("alerts".into(), Field::Alerts(r));
    m
}
