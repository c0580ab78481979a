//! watcher-bench: measures watcher's cost and speed and prints a table. Numbers are printed,
//! never asserted. One module per benchmark; this file only dispatches.
mod guard;
mod latency;
mod npm;
mod npm_files;
mod replay;
mod steps;
mod storm;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "watcher benchmarks (run as root); prints a table of measured figures")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Overhead of `watcher run` on a real `npm ci` from a local registry, and the agent's peak memory.
    Npm(npm::Args),
    /// The file sensor's cost: `npm ci` bare, watched with the file sensor and without it, side by side.
    NpmFiles(npm_files::Args),
    /// Exec and connect storms: watched/bare ratio, events/s delivered, events lost.
    Storm(storm::Args),
    /// Kernel-to-alert latency (p50, p99) of the run loop.
    Latency(latency::Args),
    /// Daemon-backed steps: `run -- true` start+stop through a daemon, daemon RSS with 10 jobs.
    Steps(steps::Args),
    /// Replay speed and memory over big generated event logs, fast parser vs serde's (no root).
    Replay(replay::Args),
    /// The packet backstop and stream scanning: a data-sending connect storm and `npm ci`, on
    /// versus off, side by side.
    Guard(guard::Args),
    /// npm, storm, latency, steps and guard in one table (replay prints its own: `watcher-bench replay`).
    All {
        #[command(flatten)]
        npm: npm::Args,
        #[command(flatten)]
        storm: storm::Args,
        #[command(flatten)]
        latency: latency::Args,
        #[command(flatten)]
        steps: steps::Args,
        #[command(flatten)]
        guard: guard::Args,
    },
    /// Internal: the workload the storms and the latency benchmark run.
    #[command(name = "__storm", hide = true)]
    StormWorker(storm::WorkerArgs),
    /// Internal: the guard benchmark's data-sending connect storm.
    #[command(name = "__guard_storm", hide = true)]
    GuardWorker(guard::WorkerArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Npm(a) => npm::run(&a).map(|rows| util::print_table(&rows)),
        Command::NpmFiles(a) => npm_files::run(&a).map(|rows| util::print_table(&rows)),
        Command::Storm(a) => storm::run(&a).map(|rows| util::print_table(&rows)),
        Command::Latency(a) => latency::run(&a).map(|rows| util::print_table(&rows)),
        Command::Steps(a) => steps::run(&a).map(|rows| util::print_table(&rows)),
        Command::Guard(a) => guard::run(&a).map(|rows| util::print_table(&rows)),
        Command::All { npm, storm, latency, steps, guard } => (|| {
            let mut rows = npm::run(&npm)?;
            rows.extend(storm::run(&storm)?);
            rows.extend(latency::run(&latency)?);
            rows.extend(steps::run(&steps)?);
            rows.extend(guard::run(&guard)?);
            util::print_table(&rows);
            Ok(())
        })(),
        Command::Replay(a) => replay::main(a),
        Command::StormWorker(a) => storm::worker(&a),
        Command::GuardWorker(a) => guard::worker(&a),
    };
    if let Err(e) = result {
        eprintln!("watcher-bench: {e:#}");
        std::process::exit(1);
    }
}
