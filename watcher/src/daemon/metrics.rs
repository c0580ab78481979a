//! Prometheus text-format metrics on a loopback address (off unless configured). The format
//! is a few lines of text over HTTP/1.0 GET, written by hand: a metrics crate plus an HTTP
//! server would be two dependencies for what fits in this file.
use std::{fmt::Write as _, time::Duration};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::StatusReport;

fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub fn render(r: &StatusReport) -> String {
    let c = &r.counters;
    let mut s = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, rows: Vec<(String, u64)>| {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(s, "{name}{labels} {v}");
        }
    };
    let running = r.jobs.iter().filter(|j| j.state == "running").count() as u64;
    metric("watcher_jobs_running", "gauge", "Jobs being watched now.", vec![(String::new(), running)]);
    metric(
        "watcher_jobs_started_total",
        "counter",
        "Jobs recognised since the daemon started.",
        vec![(String::new(), c.jobs_started)],
    );
    metric(
        "watcher_jobs_ended_total",
        "counter",
        "Jobs closed out since the daemon started.",
        vec![(String::new(), c.jobs_ended)],
    );
    metric("watcher_events_total", "counter", "Events written to job logs.", vec![(String::new(), c.events)]);
    metric("watcher_alerts_total", "counter", "Alerts raised in all jobs.", vec![(String::new(), c.alerts)]);
    let mut lost: Vec<(String, u64)> = watcher_common::Counter::ALL
        .iter()
        .map(|k| k.name())
        .chain(["decode"])
        .map(|src| (format!("{{source=\"{src}\"}}"), c.lost.get(src).copied().unwrap_or(0)))
        .collect();
    for (k, v) in &c.lost {
        if !lost.iter().any(|(l, _)| l == &format!("{{source=\"{}\"}}", label(k))) {
            lost.push((format!("{{source=\"{}\"}}", label(k)), *v));
        }
    }
    metric(
        "watcher_lost_events_total",
        "counter",
        "Kernel events that could not be delivered or tracked, by source.",
        lost,
    );
    metric(
        "watcher_unrouted_records_total",
        "counter",
        "Records of a kernel job the daemon did not know.",
        vec![(String::new(), c.unrouted)],
    );
    metric(
        "watcher_recovered_jobs_total",
        "counter",
        "Held jobs set up from /proc because their exec record was lost.",
        vec![(String::new(), c.recovered_jobs)],
    );
    metric(
        "watcher_adopted_jobs_total",
        "counter",
        "Jobs a previous daemon left held at their first exec, adopted at start.",
        vec![(String::new(), c.adopted_jobs)],
    );
    metric("watcher_reloads_total", "counter", "SIGHUP reloads.", vec![(String::new(), c.reloads)]);
    metric(
        "watcher_reload_errors_total",
        "counter",
        "Reloads refused (invalid configuration or policy).",
        vec![(String::new(), c.reload_errors)],
    );
    let jobs: Vec<_> = r.jobs.iter().filter(|j| j.state == "running").collect();
    let l = |j: &super::jobs::JobStatus| format!("{{job=\"{}\",pipeline=\"{}\"}}", label(&j.name), label(&j.pipeline));
    metric(
        "watcher_job_events_total",
        "counter",
        "Events in a running job's log.",
        jobs.iter().map(|j| (l(j), j.events)).collect(),
    );
    metric(
        "watcher_job_alerts_total",
        "counter",
        "Alerts in a running job.",
        jobs.iter().map(|j| (l(j), j.alerts)).collect(),
    );
    metric(
        "watcher_job_lost_events_total",
        "counter",
        "Lost events reported to a running job.",
        jobs.iter().map(|j| (l(j), j.lost)).collect(),
    );
    s
}

/// At most this many metrics connections are open at once; further clients wait in the
/// kernel's listen backlog (no file descriptor of the daemon is spent on them).
pub const MAX_CONNECTIONS: usize = 8;
/// A connection is closed after this long, whatever the client does.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// The metrics listener with its connection bound.
pub struct Metrics {
    listener: tokio::net::TcpListener,
    slots: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Metrics {
    pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<Metrics> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        Ok(Metrics { listener, slots: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)) })
    }

    /// The next connection, once fewer than [`MAX_CONNECTIONS`] are open.
    pub async fn accept(&self) -> std::io::Result<Connection> {
        let permit = self.slots.clone().acquire_owned().await.map_err(std::io::Error::other)?;
        let (stream, _) = self.listener.accept().await?;
        Ok(Connection { stream, _permit: permit })
    }
}

/// An accepted metrics connection holding one of the [`MAX_CONNECTIONS`] slots.
pub struct Connection {
    stream: tokio::net::TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Answer one request with `body`, within [`CONNECTION_TIMEOUT`].
pub fn serve(conn: Connection, body: String) {
    tokio::spawn(async move {
        let Connection { mut stream, _permit } = conn;
        let _ = tokio::time::timeout(CONNECTION_TIMEOUT, async {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let head = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        })
        .await;
    });
}
