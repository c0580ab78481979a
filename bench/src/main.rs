//! watcher's benchmarks: each prints its figures (never asserts on them). One module per
//! benchmark; this file only dispatches.
use clap::{Parser, Subcommand};

mod replay;

#[derive(Parser)]
#[command(about = "watcher benchmarks: print figures for README's Benchmarks table")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay speed and memory over big generated event logs, fast parser vs serde's.
    Replay(replay::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Replay(a) => replay::main(a),
    }
}
