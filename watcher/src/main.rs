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
enum PolicyCommand {
    /// Write the smallest policy that allows what the given clean runs did.
    Suggest {
        #[arg(required = true, value_name = "LOG")]
        logs: Vec<PathBuf>,
        /// Pipeline name for the policy.
        #[arg(long, default_value = "my-pipeline")]
        pipeline: String,
        /// Keep this policy's deny lists, temp dirs, shell rule, per-package rules and secret
        /// patterns.
        #[arg(long, value_name = "POLICY")]
        base: Option<PathBuf>,
        /// Suggest even from logs with alerts, lost events or no `end` record.
        #[arg(long)]
        allow_flagged: bool,
    },
    /// Validate a policy: exit 0 if valid, else print FILE:LINE:COLUMN: message and exit 1.
    Check {
        /// Policy files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run as a service on a self-hosted runner: watch every CI job on the host, each under
    /// its pipeline's policy, with one event log per job (see README, Daemon mode).
    Daemon {
        /// The daemon's configuration (YAML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Kernel ring buffer size: a power of two, at least one page (4K); suffixes K and M.
        #[arg(long, default_value = "64M", value_name = "SIZE", value_parser = parse_ringbuf_size)]
        ringbuf_size: u32,
    },
    /// Show the running daemon's jobs, alerts and lost-event counters (root only).
    Status {
        /// The daemon's status socket.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Read the socket path from the daemon's configuration.
        #[arg(long, value_name = "FILE", conflicts_with = "socket")]
        config: Option<PathBuf>,
        /// Print the raw JSON status.
        #[arg(long)]
        json: bool,
    },
    /// Work with policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Judge recorded event logs with the engine `run` uses: no root, no eBPF needed.
    Replay {
        /// JSONL event logs (plain or gzip); `-` reads standard input.
        #[arg(required = true, value_name = "LOG")]
        logs: Vec<PathBuf>,
        /// Judge with this policy instead of the one the log was recorded with.
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Override the policy's mode.
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Fire drill: run a benign "malicious" install step under a policy with the real sensors
    /// and check each misdeed is detected (and blocked in enforce mode). Exit 0 if all were,
    /// 1 if any was missed.
    Drill {
        /// The policy to drill (default: the shipped npm policy, built in).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Override the policy's mode.
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
        /// Also write the step's events as JSON Lines to FILE.
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
    },
    /// Internal: the drill's fake install step (enters NETNS, runs SCRIPT as npm would).
    #[command(name = "__drill-step", hide = true)]
    DrillStep { netns: PathBuf, script: String },
    /// Internal: a network probe of the drill's fake install step.
    #[command(name = "__drill-probe", hide = true)]
    DrillProbe { args: Vec<String> },
    /// Run a command in a fresh cgroup and watch its whole process tree.
    Run {
        /// Write every event as JSON Lines to FILE.
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
        /// Check every event against this policy (YAML, see docs/POLICY.md).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Override the policy's mode.
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
        /// Write the end-of-step report to FILE (stdout belongs to the command).
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// The report's format; by default from FILE's extension (.json, .sarif, .md, else text).
        #[arg(long, value_enum, requires = "report")]
        report_format: Option<Format>,
        /// Show only alerts, lost events and the summary, not one line per event.
        #[arg(long, short)]
        quiet: bool,
        /// Kernel ring buffer size: a power of two, at least one page (4K); suffixes K and M.
        #[arg(long, default_value = "16M", value_name = "SIZE", value_parser = parse_ringbuf_size)]
        ringbuf_size: u32,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Text,
    Json,
    Markdown,
    Sarif,
}

impl Format {
    fn into_format(self) -> watcher::report::Format {
        match self {
            Format::Text => watcher::report::Format::Text,
            Format::Json => watcher::report::Format::Json,
            Format::Markdown => watcher::report::Format::Markdown,
            Format::Sarif => watcher::report::Format::Sarif,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    Audit,
    Enforce,
}

impl ModeArg {
    fn into_mode(self) -> watcher::policy::Mode {
        match self {
            ModeArg::Audit => watcher::policy::Mode::Audit,
            ModeArg::Enforce => watcher::policy::Mode::Enforce,
        }
    }
}

fn parse_ringbuf_size(s: &str) -> Result<u32, String> {
    let (num, mult) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1024u64),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size (examples: 4096, 64K, 16M)"))?;
    let bytes = n * mult;
    if !(4096..=1 << 30).contains(&bytes) || !bytes.is_power_of_two() {
        return Err(format!("{s} is not a power of two between 4K and 1024M"));
    }
    Ok(bytes as u32)
}

fn main() {
    // The daemon logs at info by default (key=value fields, no colours unless stderr is a
    // terminal: journald keeps the lines as they are).
    let daemon = std::env::args().nth(1).as_deref() == Some("daemon");
    let filter = match std::env::var("WATCHER_LOG") {
        Ok(v) => tracing_subscriber::EnvFilter::new(v),
        Err(_) => tracing_subscriber::EnvFilter::new(if daemon { "info" } else { "warn" }),
    };
    let ansi = nix::unistd::isatty(std::io::stderr()).unwrap_or(false);
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    // Usage errors exit 125 like every other failure of watcher itself, so they are never
    // confused with an exit code of the wrapped command.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { exitcode::WATCHER_ERROR } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let result = match cli.command {
        Command::Policy { command: PolicyCommand::Suggest { logs, pipeline, base, allow_flagged } } => (|| {
            let base = match &base {
                Some(b) => Some(watcher::policy::load(b).map_err(|e| anyhow::anyhow!("{e}"))?),
                None => None,
            };
            let mut s = watcher::suggest::Suggester::default();
            for log in &logs {
                watcher::replay::for_each_event(log, |e, _| {
                    s.add(&e);
                    Ok(())
                })?;
            }
            if !allow_flagged && let Err(e) = s.check_clean() {
                eprintln!("watcher: {e}");
                return Ok(1);
            }
            print!("{}", s.render_with_base(&pipeline, base.as_ref()));
            Ok(0)
        })(),
        Command::Policy { command: PolicyCommand::Check { files } } => {
            let mut bad = false;
            for f in &files {
                // Exactly the validation `run` does: load, then compile the kernel tables.
                let checked = watcher::policy::load(f).map_err(|e| e.to_string()).and_then(|p| {
                    watcher::policy::kernel::validate(&p).map_err(|e| format!("{}: {e}", p.source)).map(|_| p)
                });
                match checked {
                    Ok(p) => println!("{}: ok (pipeline {}, {} mode)", f.display(), p.pipeline, p.mode.as_str()),
                    Err(e) => {
                        eprintln!("{e}");
                        bad = true;
                    }
                }
            }
            Ok(if bad { 1 } else { 0 })
        }
        Command::Daemon { config, ringbuf_size } => {
            watcher::daemon::run(watcher::daemon::DaemonOptions { config, ringbuf_bytes: ringbuf_size })
        }
        Command::Status { socket, config, json } => (|| {
            let socket = match (socket, config) {
                (Some(s), _) => s,
                (None, Some(c)) => watcher::daemon::config::load(&c).map_err(|e| anyhow::anyhow!("{e}"))?.socket,
                (None, None) => watcher::daemon::config::DEFAULT_SOCKET.into(),
            };
            watcher::daemon::status_command(&socket, json)
        })(),
        Command::Replay { logs, policy, mode, format } => watcher::replay::replay(watcher::replay::ReplayOptions {
            logs,
            policy,
            mode: mode.map(ModeArg::into_mode),
            format: format.into_format(),
        }),
        Command::Drill { policy, mode, log } => watcher::drill::drill(watcher::drill::DrillOptions {
            policy,
            mode: mode.map(ModeArg::into_mode),
            log,
            ringbuf_bytes: 16 << 20,
        }),
        Command::DrillStep { netns, script } => watcher::drill::step(&netns, &script),
        Command::DrillProbe { args } => watcher::drill::probe(&args),
        Command::Run { log, quiet, ringbuf_size, command, policy, mode, report, report_format } => {
            run::run(run::RunOptions {
                command,
                log,
                quiet,
                ringbuf_bytes: ringbuf_size,
                policy,
                mode: mode.map(ModeArg::into_mode),
                report,
                report_format: report_format.map(Format::into_format),
            })
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
