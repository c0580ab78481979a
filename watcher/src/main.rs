use std::path::PathBuf;

use clap::{Parser, Subcommand};
use watcher::{exitcode, run};

/// eBPF build-sandbox egress and syscall watcher.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a fresh cgroup and watch its whole process tree.
    Run {
        /// Write every event as JSON Lines to FILE.
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
        /// Show only the summary, not one line per event.
        #[arg(long, short)]
        quiet: bool,
        /// Kernel ring buffer size in MiB (a power of two).
        #[arg(long, default_value_t = 16, value_name = "MIB")]
        ringbuf_mib: u32,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("WATCHER_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { log, quiet, ringbuf_mib, command } => {
            if !ringbuf_mib.is_power_of_two() || ringbuf_mib > 1024 {
                eprintln!("watcher: --ringbuf-mib must be a power of two between 1 and 1024, got {ringbuf_mib}");
                std::process::exit(exitcode::WATCHER_ERROR);
            }
            run::run(run::RunOptions { command, log, quiet, ringbuf_bytes: ringbuf_mib * 1024 * 1024 })
        }
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("watcher: {e:#}");
            std::process::exit(exitcode::WATCHER_ERROR);
        }
    }
}
