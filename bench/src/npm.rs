//! Overhead of `watcher run` on a real `npm ci`. A registry on loopback (the test helpers'
//! HTTP server) serves a generated, realistic dependency graph: `packages` packages, a quarter
//! of them in two major versions (so npm nests conflicting versions), up to five dependencies
//! each, tarballs from 0.5 KB to 300 KB, and a few with a `postinstall` script that runs node.
//! The lockfile is made once by a real `npm install`; then bare `npm ci` and
//! `watcher run --policy <shipped npm policy> --log LOG -- npm ci` alternate `runs` times
//! each (the order swapping every pair), each with node_modules removed and a fresh, empty npm
//! cache (cold cache: every tarball comes from the registry). Reported: the ratio of the
//! medians, the spread (min..max) of both, and the agent's peak memory (VmHWM of the watcher
//! process, sampled every 10 ms).
use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use watcher_tests::HttpServer;

use crate::util::{
    HwmSampler, Row, StepDaemon, TempDir, against, count_log, median, parse_timing, require_root, row, rss_text,
    watcher_bin,
};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Packages in the generated dependency graph.
    #[arg(long, default_value_t = 400)]
    pub packages: usize,
    /// Bare, watched and daemon-backed `npm ci` runs (each).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

/// xorshift64*: a fixed seed makes the same graph every time.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub(crate) fn run_ok(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn digest(tool: &str, f: &Path) -> anyhow::Result<Vec<u8>> {
    let out = run_ok(Command::new(tool).arg(f))?;
    let hex = out.split_whitespace().next().unwrap_or("");
    data_encoding::HEXLOWER.decode(hex.as_bytes()).with_context(|| format!("{tool} printed {out:?}"))
}

struct Pkg {
    name: String,
    versions: Vec<String>,
}

/// Generate and publish the graph; returns the root project's dependencies.
pub(crate) fn publish_graph(http: &HttpServer, build: &Path, n: usize) -> anyhow::Result<Value> {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let pkgs: Vec<Pkg> = (0..n)
        .map(|i| Pkg {
            name: format!("wb-pkg-{i:03}"),
            versions: if rng.below(4) == 0 { vec!["1.0.0".into(), "2.0.0".into()] } else { vec!["1.0.0".into()] },
        })
        .collect();
    let range = |rng: &mut Rng, p: &Pkg| -> String {
        let v = &p.versions[rng.below(p.versions.len() as u64) as usize];
        format!("^{v}")
    };
    // Dependencies only point to higher indices (a DAG); every package past the top level
    // gets at least one dependent so all of them are installed.
    let top = (n / 12).max(1);
    let mut deps: Vec<Vec<(usize, String)>> = vec![Vec::new(); n];
    // Indices are the packages' identities here (deps point by index), not just positions.
    #[allow(clippy::needless_range_loop)]
    for i in 0..n {
        for _ in 0..rng.below(4) {
            if i + 1 < n {
                let j = i + 1 + rng.below((n - i - 1) as u64) as usize;
                let r = range(&mut rng, &pkgs[j]);
                deps[i].push((j, r));
            }
        }
    }
    #[allow(clippy::needless_range_loop)]
    for j in top..n {
        if !deps.iter().any(|d| d.iter().any(|(k, _)| *k == j)) {
            let i = j.saturating_sub(1 + rng.below(40.min(j as u64)) as usize);
            let r = range(&mut rng, &pkgs[j]);
            deps[i].push((j, r));
        }
    }
    let with_script: Vec<usize> = (0..8).map(|k| (k * n / 8 + 3).min(n - 1)).collect();
    for (i, p) in pkgs.iter().enumerate() {
        let mut versions = serde_json::Map::new();
        for v in &p.versions {
            let mut dmap = serde_json::Map::new();
            for (j, r) in &deps[i] {
                dmap.insert(pkgs[*j].name.clone(), json!(r));
            }
            let mut manifest = json!({
                "name": p.name, "version": v, "main": "index.js", "license": "MIT",
                "description": format!("benchmark package {i}"),
                "dependencies": dmap,
            });
            let dir = build.join(format!("{}-{v}", p.name)).join("package");
            std::fs::create_dir_all(dir.join("lib"))?;
            // Sizes from 0.5 KB to ~300 KB, log-uniform; hex text compresses like code does.
            let size = (500.0 * (600f64).powf(rng.below(1000) as f64 / 1000.0)) as usize;
            let mut body = String::with_capacity(size + 64);
            body.push_str("'use strict';\nmodule.exports = [\n");
            while body.len() < size {
                body.push_str(&format!("  '{:016x}{:016x}',\n", rng.next(), rng.next()));
            }
            body.push_str("];\n");
            std::fs::write(dir.join("index.js"), body)?;
            std::fs::write(dir.join("lib/util.js"), format!("exports.id = {i};\n"))?;
            std::fs::write(dir.join("README.md"), format!("# {}\n\nA generated package.\n", p.name))?;
            if with_script.contains(&i) {
                manifest["scripts"] = json!({ "postinstall": "node install.js" });
                std::fs::write(
                    dir.join("install.js"),
                    "const fs = require('fs');\nfs.writeFileSync('built.txt', String(Date.now()));\n",
                )?;
            }
            std::fs::write(dir.join("package.json"), serde_json::to_string_pretty(&manifest)?)?;
            let tgz = build.join(format!("{}-{v}.tgz", p.name));
            run_ok(Command::new("tar").arg("-czf").arg(&tgz).arg("-C").arg(dir.parent().unwrap()).arg("package"))?;
            let tarball_path = format!("/{0}/-/{0}-{v}.tgz", p.name);
            let mut doc = manifest.clone();
            doc["_id"] = json!(format!("{}@{v}", p.name));
            doc["dist"] = json!({
                "tarball": format!("{}{tarball_path}", http.base_url()),
                "shasum": data_encoding::HEXLOWER.encode(&digest("sha1sum", &tgz)?),
                "integrity": format!("sha512-{}", data_encoding::BASE64.encode(&digest("sha512sum", &tgz)?)),
            });
            if manifest.get("scripts").is_some() {
                doc["hasInstallScript"] = json!(true);
            }
            versions.insert(v.clone(), doc);
            http.route(&tarball_path, "application/octet-stream", std::fs::read(&tgz)?);
        }
        let latest = p.versions.last().unwrap().clone();
        let packument =
            json!({ "_id": p.name, "name": p.name, "dist-tags": { "latest": latest }, "versions": versions });
        http.route(&format!("/{}", p.name), "application/json", serde_json::to_vec(&packument)?);
    }
    let mut root = serde_json::Map::new();
    for p in pkgs.iter().take(top) {
        root.insert(p.name.clone(), json!(range(&mut rng, p)));
    }
    Ok(Value::Object(root))
}

/// npm's environment for a run: HOME and config in `home`, the cache in `cache`.
pub(crate) fn npm_env(cmd: &mut Command, home: &Path, cache: &Path) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().to_ascii_uppercase().starts_with("NPM_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", home)
        .env("npm_config_globalconfig", home.join("global-npmrc"))
        .env("npm_config_cache", cache)
        .env("npm_config_update_notifier", "false")
        .env("npm_config_audit", "false")
        .env("npm_config_fund", "false")
        .env("npm_config_loglevel", "error");
}

pub(crate) fn npm_ci_args() -> Vec<OsString> {
    ["npm", "ci"].map(OsString::from).to_vec()
}

pub(crate) fn clean(project: &Path, cache: &Path) -> anyhow::Result<()> {
    for d in [project.join("node_modules"), cache.to_path_buf()] {
        if d.exists() {
            std::fs::remove_dir_all(&d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    Ok(())
}

/// The benchmarks' npm project: a registry on loopback serving a generated graph of `packages`
/// packages, a project depending on all of them (their scripts allowed), the shipped npm policy,
/// an empty home and cache, and `npm install` run once to make the lockfile. `tag` names the
/// benchmark in its messages and temporary directory.
pub(crate) struct NpmProject {
    pub work: TempDir,
    pub project: PathBuf,
    pub home: PathBuf,
    pub cache: PathBuf,
    pub policy: PathBuf,
    /// The registry: serves until dropped.
    pub http: HttpServer,
}

pub(crate) fn prepare(tag: &str, packages: usize) -> anyhow::Result<NpmProject> {
    let work = TempDir::new(&format!("watcher-bench-{tag}"))?;
    let (build, project, home, cache) =
        (work.join("build"), work.join("project"), work.join("home"), work.join("cache"));
    for d in [&build, &project, &home] {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(home.join("global-npmrc"), "")?;
    let http = HttpServer::start("127.0.0.1:0".parse()?)?;
    eprintln!("watcher-bench {tag}: generating and publishing {packages} packages...");
    let deps = publish_graph(&http, &build, packages)?;
    let allow: serde_json::Map<String, Value> =
        deps.as_object().unwrap().keys().map(|k| (k.clone(), json!(true))).collect();
    std::fs::write(
        project.join("package.json"),
        serde_json::to_string_pretty(&json!({
            "name": "bench-project", "version": "1.0.0", "private": true,
            "dependencies": deps, "allowScripts": allow,
        }))?,
    )?;
    std::fs::write(project.join(".npmrc"), format!("registry={}/\n", http.base_url()))?;
    let policy = work.join("npm.yaml");
    std::fs::write(&policy, watcher::drill::BUILTIN_POLICY)?;
    eprintln!("watcher-bench {tag}: npm install (makes package-lock.json)...");
    let mut install = Command::new("npm");
    install.arg("install").current_dir(&project);
    npm_env(&mut install, &home, &cache);
    run_ok(&mut install)?;
    Ok(NpmProject { work, project, home, cache, policy, http })
}

pub fn run(a: &Args) -> anyhow::Result<Vec<Row>> {
    require_root()?;
    let watcher = watcher_bin()?;
    let NpmProject { work, project, home, cache, policy, http: _http } = prepare("npm", a.packages)?;
    let lock: Value = serde_json::from_str(&std::fs::read_to_string(project.join("package-lock.json"))?)?;
    let installed = lock["packages"].as_object().map(|m| m.len().saturating_sub(1)).unwrap_or(0);
    let nested = lock["packages"]
        .as_object()
        .map(|m| m.keys().filter(|k| k.matches("node_modules/").count() > 1).count())
        .unwrap_or(0);

    let (mut bare, mut watched, mut peaks, mut events, mut lost, mut alerts) =
        (Vec::new(), Vec::new(), Vec::new(), 0u64, 0u64, 0u64);
    // Daemon-backed steps: the same `watcher run` through a daemon of the bench's own, started
    // before and stopped after each such run, so the bare and standalone runs beside it have no
    // daemon's programs attached.
    let (mut backed, mut backed_lost, mut backed_alerts) = (Vec::new(), 0u64, 0u64);
    let daemon_dir = TempDir::new("watcher-bench-npm-daemon")?;
    let (mut fixed, mut fixed_peaks, mut phases) = (Vec::new(), Vec::new(), [(); 4].map(|_| Vec::new()));
    let (mut ring_kb, mut npm_ring_kb) = (0, 0);
    for i in 0..a.runs {
        // watcher's own start and stop (load and verify the programs, resolve the registry,
        // attach; detach), around a command that does nothing; where its time went, from the
        // agent's own timing lines; its peak memory.
        let mut c = Command::new(&watcher);
        c.args(["run", "--quiet", "--policy"]).arg(&policy).args(["--", "true"]);
        c.current_dir(&project).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        c.env("WATCHER_LOG", "watcher::timing=info");
        npm_env(&mut c, &home, &cache);
        let t = Instant::now();
        let child = c.spawn()?;
        let hwm = HwmSampler::start(child.id());
        let out = child.wait_with_output()?;
        fixed.push(t.elapsed().as_secs_f64());
        let (peak_kb, ring) = hwm.finish_with_ring();
        fixed_peaks.push(peak_kb as f64 / 1024.0);
        ring_kb = ring_kb.max(ring);
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("watcher run -- true failed ({}): {err}", out.status);
        }
        if let Some(t) = parse_timing(&err) {
            for (v, x) in phases.iter_mut().zip(t) {
                v.push(x);
            }
        }
        let mut one_bare = || -> anyhow::Result<()> {
            clean(&project, &cache)?;
            let mut c = Command::new("npm");
            c.args(&npm_ci_args()[1..]).current_dir(&project).stdin(Stdio::null()).stdout(Stdio::null());
            npm_env(&mut c, &home, &cache);
            let t = Instant::now();
            run_ok(&mut c)?;
            bare.push(t.elapsed().as_secs_f64());
            Ok(())
        };
        let mut one_watched = || -> anyhow::Result<()> {
            clean(&project, &cache)?;
            let log = work.join(&format!("watched-{i}.jsonl"));
            let mut c = Command::new(&watcher);
            c.args(["run", "--quiet", "--policy"]).arg(&policy).arg("--log").arg(&log).arg("--").args(npm_ci_args());
            c.current_dir(&project).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
            npm_env(&mut c, &home, &cache);
            let t = Instant::now();
            let child = c.spawn()?;
            let hwm = HwmSampler::start(child.id());
            let out = child.wait_with_output()?;
            let secs = t.elapsed().as_secs_f64();
            let (peak_kb, ring) = hwm.finish_with_ring();
            peaks.push(peak_kb as f64 / 1024.0);
            npm_ring_kb = npm_ring_kb.max(ring);
            if !out.status.success() {
                bail!("watched npm ci failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
            }
            watched.push(secs);
            let counts = count_log(&log)?;
            events += counts.by_kind.values().sum::<u64>();
            lost += counts.lost();
            alerts += counts.kind("alert");
            Ok(())
        };
        let mut one_backed = || -> anyhow::Result<()> {
            clean(&project, &cache)?;
            let daemon = StepDaemon::start(&watcher, &daemon_dir.0)?;
            let log = work.join(&format!("backed-{i}.jsonl"));
            let mut c = Command::new(&watcher);
            c.args(["run", "--quiet", "--policy"]).arg(&policy).arg("--log").arg(&log).arg("--").args(npm_ci_args());
            c.current_dir(&project).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
            c.env("WATCHER_SOCKET", &daemon.socket);
            npm_env(&mut c, &home, &cache);
            let t = Instant::now();
            let out = c.output()?;
            let secs = t.elapsed().as_secs_f64();
            drop(daemon);
            if !out.status.success() {
                bail!("daemon-backed npm ci failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
            }
            backed.push(secs);
            let counts = count_log(&log)?;
            backed_lost += counts.lost();
            backed_alerts += counts.kind("alert");
            Ok(())
        };
        if i % 2 == 0 {
            one_bare()?;
            one_watched()?;
            one_backed()?;
        } else {
            one_backed()?;
            one_watched()?;
            one_bare()?;
        }
        eprintln!(
            "watcher-bench npm: run {}: bare {:.2} s, watched {:.2} s, daemon-backed {:.2} s",
            i + 1,
            bare[i],
            watched[i],
            backed[i]
        );
    }
    clean(&project, &cache)?;
    let spread = |v: &[f64]| {
        format!(
            "{:.2}..{:.2} s",
            v.iter().cloned().fold(f64::INFINITY, f64::min),
            v.iter().cloned().fold(0.0, f64::max)
        )
    };
    let (mb, mw) = (median(&bare), median(&watched));
    let b = "npm ci";
    let peak = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let ph: Vec<String> = phases.iter().map(|v| format!("{:.0}", median(v))).collect();
    Ok(vec![
        row(b, "packages installed (nested)", format!("{installed} ({nested})"), ""),
        row(b, &format!("bare, median of {} (spread)", bare.len()), format!("{mb:.2} s ({})", spread(&bare)), ""),
        row(
            b,
            &format!("watched, median of {} (spread)", watched.len()),
            format!("{mw:.2} s ({})", spread(&watched)),
            "",
        ),
        row(b, "watched/bare (ratio of medians)", format!("{:.3}", mw / mb), &against(mw / mb, 1.02, "", true)),
        row(b, "watched/bare paired by round (median; spread)", paired(&watched, &bare), ""),
        row(
            b,
            &format!("daemon-backed, median of {} (spread)", backed.len()),
            format!("{:.2} s ({})", median(&backed), spread(&backed)),
            "",
        ),
        row(
            b,
            "daemon-backed/bare (ratio of medians)",
            format!("{:.3}", median(&backed) / mb),
            &against(median(&backed) / mb, 1.02, "", true),
        ),
        row(b, "daemon-backed/bare paired by round (median; spread)", paired(&backed, &bare), ""),
        row(
            "start+stop",
            "`run -- true`, standalone, npm policy (median)",
            format!("{:.3} s", median(&fixed)),
            &against(median(&fixed), 0.25, " s", true),
        ),
        row("start+stop", "of which object / verify / attach / detach (medians)", format!("{} ms", ph.join(" / ")), ""),
        row(
            "start+stop",
            "agent peak RSS, `run -- true`, npm policy (VmHWM, max)",
            rss_text((peak(&fixed_peaks) * 1024.0) as u64, ring_kb),
            &against(peak(&fixed_peaks), 20.0, " MiB", true),
        ),
        row(b, "watched/bare without start+stop", format!("{:.3}", (mw - median(&fixed)) / mb), ""),
        row(b, "events logged per watched run (mean)", format!("{}", events / a.runs.max(1) as u64), ""),
        row(b, "alerts / events lost (all runs)", format!("{alerts} / {lost}"), "0 / 0"),
        row(b, "alerts / events lost, daemon-backed (all runs)", format!("{backed_alerts} / {backed_lost}"), "0 / 0"),
        row(
            b,
            "agent peak memory during npm ci (VmHWM, max)",
            rss_text((peak(&peaks) * 1024.0) as u64, npm_ring_kb),
            "",
        ),
    ])
}

/// The ratio of each round's two runs (run side by side, so a slow spell of the machine hits
/// both), as median and spread: how far the ratio of medians can be trusted on a noisy machine.
fn paired(a: &[f64], b: &[f64]) -> String {
    let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    let lo = r.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = r.iter().cloned().fold(0.0, f64::max);
    format!("{:.3} ({lo:.3}..{hi:.3})", median(&r))
}
