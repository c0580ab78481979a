//! The file sensor's cost on a real `npm ci` (issue 16 item 6): the npm benchmark's generated
//! registry and project (`npm.rs`), and bare `npm ci`, `npm ci` watched with the file sensor
//! on and watched with it off, alternating in one run (the order rotating every round), each
//! with node_modules removed and a fresh, empty npm cache. The watched runs are `watcher run
//! --quiet --policy P --log L`, the "off" ones with `--bench-disable files`: the hidden flag
//! the guard benchmark uses too, read from the command line only (no variable, no policy
//! field). Reported: the medians, the watched/bare ratios
//! with the sensor on and off and their difference (target: at most 0.01), the same
//! difference paired by round, and the file records that reached userspace (the kernel
//! filters every other open).
use std::{
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::bail;

use crate::npm::{clean, npm_ci_args, npm_env, run_ok};
use crate::util::{Row, against, count_log, median, require_root, row};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Packages in the generated dependency graph.
    #[arg(long, default_value_t = 400)]
    pub packages: usize,
    /// Rounds of bare / watched with the file sensor / watched without it.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

struct Watched {
    secs: Vec<f64>,
    file_records: u64,
    events: u64,
    alerts: u64,
    lost: u64,
    install_scripts: u64,
}

pub fn run(a: &Args) -> anyhow::Result<Vec<Row>> {
    require_root()?;
    let watcher = crate::util::watcher_bin()?;
    let crate::npm::NpmProject { work, project, home, cache, policy, http: _http } =
        crate::npm::prepare("npm-files", a.packages)?;

    let mut bare = Vec::new();
    let mut on = Watched { secs: vec![], file_records: 0, events: 0, alerts: 0, lost: 0, install_scripts: 0 };
    let mut off = Watched { secs: vec![], file_records: 0, events: 0, alerts: 0, lost: 0, install_scripts: 0 };
    let one_bare = |bare: &mut Vec<f64>| -> anyhow::Result<()> {
        clean(&project, &cache)?;
        let mut c = Command::new("npm");
        c.args(&npm_ci_args()[1..]).current_dir(&project).stdin(Stdio::null()).stdout(Stdio::null());
        npm_env(&mut c, &home, &cache);
        let t = Instant::now();
        run_ok(&mut c)?;
        bare.push(t.elapsed().as_secs_f64());
        Ok(())
    };
    let one_watched = |w: &mut Watched, files: bool, log: &Path| -> anyhow::Result<()> {
        clean(&project, &cache)?;
        let mut c = Command::new(&watcher);
        c.args(["run", "--quiet", "--policy"]).arg(&policy).arg("--log").arg(log);
        if !files {
            c.args(["--bench-disable", "files"]);
        }
        c.arg("--").args(npm_ci_args());
        c.current_dir(&project).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        npm_env(&mut c, &home, &cache);
        let t = Instant::now();
        let out = c.output()?;
        let secs = t.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "watched npm ci (file sensor {files}) failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        w.secs.push(secs);
        let counts = count_log(log)?;
        w.file_records += counts.kind("file");
        w.events += counts.by_kind.values().sum::<u64>();
        w.alerts += counts.kind("alert");
        w.lost += counts.lost();
        let text = std::fs::read_to_string(log)?;
        w.install_scripts +=
            text.lines().filter(|l| l.contains("\"npm_lifecycle_event\":\"postinstall\"")).count() as u64;
        let start = text.lines().next().unwrap_or("");
        let files_active = start.contains(r#""name":"files","active":true"#);
        if files_active != files {
            bail!(
                "the file sensor was {} in a run that asked for it {}",
                if files_active { "on" } else { "off" },
                if files { "on" } else { "off" }
            );
        }
        Ok(())
    };
    for i in 0..a.runs {
        let log_on = work.join(&format!("on-{i}.jsonl"));
        let log_off = work.join(&format!("off-{i}.jsonl"));
        match i % 3 {
            0 => {
                one_bare(&mut bare)?;
                one_watched(&mut on, true, &log_on)?;
                one_watched(&mut off, false, &log_off)?;
            }
            1 => {
                one_watched(&mut on, true, &log_on)?;
                one_watched(&mut off, false, &log_off)?;
                one_bare(&mut bare)?;
            }
            _ => {
                one_watched(&mut off, false, &log_off)?;
                one_bare(&mut bare)?;
                one_watched(&mut on, true, &log_on)?;
            }
        }
        eprintln!(
            "watcher-bench npm-files: round {}: bare {:.2} s, file sensor on {:.2} s, off {:.2} s",
            i + 1,
            bare[i],
            on.secs[i],
            off.secs[i]
        );
    }
    clean(&project, &cache)?;
    let (mb, mon, moff) = (median(&bare), median(&on.secs), median(&off.secs));
    let (ron, roff) = (mon / mb, moff / mb);
    // Paired: each round's own difference, against its own bare run (the machine's load moves
    // between rounds more than the sensor could cost).
    let paired: Vec<f64> = (0..bare.len()).map(|i| (on.secs[i] - off.secs[i]) / bare[i]).collect();
    let b = "npm ci, file sensor";
    let n = a.runs.max(1) as u64;
    Ok(vec![
        row(b, &format!("bare / on / off, medians of {}", a.runs), format!("{mb:.2} / {mon:.2} / {moff:.2} s"), ""),
        row(b, "watched/bare, sensor on", format!("{ron:.3}"), ""),
        row(b, "watched/bare, sensor off", format!("{roff:.3}"), ""),
        row(b, "on minus off (watched/bare)", format!("{:+.3}", ron - roff), &against(ron - roff, 0.01, "", true)),
        row(
            b,
            "on minus off per round, over that round's bare (median; spread)",
            format!(
                "{:+.3} ({:+.3}..{:+.3})",
                median(&paired),
                paired.iter().cloned().fold(f64::INFINITY, f64::min),
                paired.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
            ),
            &against(median(&paired), 0.01, "", true),
        ),
        row(
            b,
            "file records per run, sensor on (install-script execs)",
            format!("{} ({})", on.file_records / n, on.install_scripts / n),
            "",
        ),
        row(
            b,
            "events per run on / off; alerts; lost",
            format!("{} / {}; {}; {}", on.events / n, off.events / n, on.alerts + off.alerts, on.lost + off.lost),
            "",
        ),
    ])
}
