use std::{ffi::OsString, path::PathBuf};

use clap::{Parser, Subcommand};
use tracing_subscriber::field::MakeExt as _;
use watcher::{exitcode, run};

/// The exit codes, for `--help` and the man page.
const EXIT_CODES: &str = "\
Exit codes:
  CMD's code  watcher run: the command's own code (128+N when killed by signal N)
  0           nothing flagged (replay, drill, policy check)
  77          enforce mode: a policy violation (denied, killed or seen); replay: the policy flags something
  78          enforce mode: the kernel lost events, the step cannot be vouched for
  1           policy check: a file is not a valid policy; drill: a check was missed
  125         watcher itself failed: bad arguments, no root, a missing kernel feature, an unwritable log
  126         the command was found but could not be executed
  127         the command was not found";

/// eBPF build-sandbox egress and syscall watcher.
#[derive(Parser)]
#[command(version = watcher::VERSION, about, long_about = None, after_help = EXIT_CODES)]
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
    /// Print POLICY with its mode replaced and allowed endpoints appended (the CI
    /// integrations' effective policy; see docs/CI.md).
    Compose {
        #[arg(value_name = "POLICY")]
        policy: PathBuf,
        /// Set the policy's mode.
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
        /// HOST[:PORT], IP[:PORT], [IPV6]:PORT or CIDR[:PORT]; may be repeated, and each value
        /// may hold several separated by spaces, commas or newlines.
        #[arg(long = "allow", value_name = "ENDPOINT", action = clap::ArgAction::Append)]
        allow: Vec<String>,
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
        /// Kernel ring buffer size, shared by every job on the host: a power of two, at least one
        /// page (4K); suffixes K and M. Mapped twice into the daemon's memory (the kernel's
        /// wrap-around view), so it counts twice in its resident size; 8M holds about 2,300 exec
        /// records or 87,000 connect records (README, Benchmarks: no loss in the storms).
        #[arg(long, default_value = "8M", value_name = "SIZE", value_parser = parse_ringbuf_size)]
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
        /// Also write the step's events as JSON Lines to FILE (`-`: standard output; `.gz`: gzip).
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout: `watcher man | man -l -`.
    Man,
    /// Print the JSON Schema of the event log (`--log`) to stdout.
    Schema,
    /// Internal: the drill's fake install step (enters NETNS, runs SCRIPT as npm would).
    #[command(name = "__drill-step", hide = true)]
    DrillStep { netns: PathBuf, script: String },
    /// Internal: a network probe of the drill's fake install step.
    #[command(name = "__drill-probe", hide = true)]
    DrillProbe { args: Vec<String> },
    /// Run a command in a fresh cgroup and watch its whole process tree.
    Run {
        /// Write every event as JSON Lines to FILE (`-`: standard output; `.gz`: gzip).
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
        /// Check every event against this policy (YAML, see docs/POLICY.md).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Override the policy's mode.
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
        /// Write the end-of-step report to FILE (stdout belongs to the command); may be repeated.
        #[arg(long, value_name = "FILE", action = clap::ArgAction::Append)]
        report: Vec<PathBuf>,
        /// The reports' format; by default from each FILE's extension (.json, .sarif, .md, any
        /// case; else text).
        #[arg(long, value_enum, requires = "report")]
        report_format: Option<Format>,
        /// Show only alerts, lost events and the summary, not one line per event (the default
        /// when CI=true).
        #[arg(long, short)]
        quiet: bool,
        /// Show one line per event even when CI=true.
        #[arg(long, short, conflicts_with = "quiet")]
        verbose: bool,
        /// Kernel ring buffer size: a power of two, at least one page (4K); suffixes K and M.
        /// Mapped twice into watcher's memory (the kernel's wrap-around view), so it counts
        /// twice in its resident size; 2M holds about 580 exec records or 21,000 connect records.
        #[arg(long, default_value = "2M", value_name = "SIZE", value_parser = parse_ringbuf_size)]
        ringbuf_size: u32,
        /// Run the command as USER (name or uid), with USER's groups or GROUP; default under
        /// sudo: the invoking user (SUDO_UID/SUDO_GID); `--user root` keeps root. The
        /// environment is left as given (`sudo -E` keeps it).
        #[arg(long, value_name = "USER[:GROUP]")]
        user: Option<String>,
        /// Benchmark only (watcher-bench): turn off the packet backstop, stream scanning and/or
        /// the file sensor to measure their cost. Hidden; never read from the environment.
        #[arg(long, hide = true, value_enum, value_delimiter = ',', value_name = "WHAT")]
        bench_disable: Vec<BenchOff>,
        /// The command and its arguments (passed on byte for byte).
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<OsString>,
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

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchOff {
    Backstop,
    Streams,
    Files,
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

/// A `--ringbuf-size` clap refuses (it prints the message).
#[derive(Debug, thiserror::Error)]
enum RingbufSizeError {
    #[error("{0:?} is not a size (examples: 4096, 64K, 16M)")]
    NotASize(String),
    #[error("{0} is not a power of two between 4K and 1024M")]
    OutOfRange(String),
}

fn parse_ringbuf_size(s: &str) -> Result<u32, RingbufSizeError> {
    let (num, mult) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1024u64),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| RingbufSizeError::NotASize(s.to_string()))?;
    let bytes = n.saturating_mul(mult);
    if !(4096..=1 << 30).contains(&bytes) || !bytes.is_power_of_two() {
        return Err(RingbufSizeError::OutOfRange(s.to_string()));
    }
    Ok(bytes as u32)
}

fn main() {
    // The daemon logs at info by default (key=value fields, no colours unless stderr is a
    // terminal: journald keeps the lines as they are).
    let daemon = std::env::args_os().nth(1).is_some_and(|a| a == "daemon");
    let filter = match std::env::var("WATCHER_LOG") {
        Ok(v) => tracing_subscriber::EnvFilter::new(v),
        Err(_) => tracing_subscriber::EnvFilter::new(if daemon { "info" } else { "warn" }),
    };
    let ansi = nix::unistd::isatty(std::io::stderr()).unwrap_or(false);
    // Every field and message is escaped: job variables, paths and commands come from jobs,
    // and a newline or ESC in one must not forge or rewrite a log line.
    let fields = tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = watcher::report::safe(&format!("{value:?}"));
        if field.name() == "message" { write!(w, "{text}") } else { write!(w, "{}={text}", field.name()) }
    })
    .delimited(" ");
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .fmt_fields(fields)
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr closed: `... 2>&1 | head`) is dropped; by
        // default tracing reports that with eprintln!, which panics on the same closed pipe.
        .log_internal_errors(false)
        .init();
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
                Some(b) => Some(watcher::policy::load(b).map_err(watcher::Error::from)?),
                None => None,
            };
            let mut s = watcher::suggest::Suggester::default();
            for log in &logs {
                let incomplete = watcher::replay::for_each_event_checked(log, |e, _| {
                    s.add(&e);
                    Ok(())
                })
                .map_err(watcher::Error::from)?;
                if let Some(why) = incomplete {
                    let log = watcher::replay::log_name(log);
                    return Err(watcher::Error::from(watcher::replay::ReplayError::Incomplete { log, why }).into());
                }
            }
            if !allow_flagged && let Err(e) = s.check_clean() {
                watcher::say!("watcher: {e}");
                return Ok(1);
            }
            watcher::show_text!("{}", s.render_with_base(&pipeline, base.as_ref()));
            Ok(0)
        })(),
        Command::Policy { command: PolicyCommand::Check { files } } => {
            let mut bad = false;
            for f in &files {
                // Exactly the validation `run` does: load, then compile the kernel tables.
                let checked = watcher::policy::load(f)
                    .map_err(|e| e.to_string())
                    .and_then(|p| watcher::policy::kernel::validate(&p).map_err(|e| e.to_string()).map(|_| p));
                match checked {
                    Ok(p) => watcher::show!("{}: ok (pipeline {}, {} mode)", f.display(), p.pipeline, p.mode.as_str()),
                    Err(e) => {
                        watcher::say!("{e}");
                        bad = true;
                    }
                }
            }
            Ok(if bad { 1 } else { 0 })
        }
        Command::Policy { command: PolicyCommand::Compose { policy, mode, allow } } => (|| {
            let eps: Vec<String> = allow.iter().flat_map(|a| watcher::ci_policy::split_endpoints(a)).collect();
            let composed = watcher::ci_policy::compose(&policy, mode.map(|m| m.into_mode().as_str()), &eps);
            watcher::show_text!("{}", composed.map_err(watcher::Error::from)?);
            Ok(0)
        })(),
        Command::Daemon { config, ringbuf_size } => {
            edge(watcher::daemon::run(watcher::daemon::DaemonOptions { config, ringbuf_bytes: ringbuf_size }))
        }
        Command::Status { socket, config, json } => (|| {
            let socket = match (socket, config) {
                (Some(s), _) => s,
                (None, Some(c)) => watcher::daemon::config::load(&c).map_err(watcher::Error::from)?.socket,
                (None, None) => watcher::daemon::config::DEFAULT_SOCKET.into(),
            };
            Ok(watcher::daemon::status_command(&socket, json)?)
        })(),
        Command::Replay { logs, policy, mode, format } => {
            edge(watcher::replay::replay(watcher::replay::ReplayOptions {
                logs,
                policy,
                mode: mode.map(ModeArg::into_mode),
                format: format.into_format(),
            }))
        }
        Command::Drill { policy, mode, log } => edge(watcher::drill::drill(watcher::drill::DrillOptions {
            policy,
            mode: mode.map(ModeArg::into_mode),
            log,
            ringbuf_bytes: 16 << 20,
        })),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "watcher",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        Command::Man => (|| {
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut std::io::stdout())?;
            Ok(0)
        })(),
        Command::Schema => {
            watcher::show_text!("{}", watcher::event_schema::render());
            Ok(0)
        }
        Command::DrillStep { netns, script } => edge(watcher::drill::step(&netns, &script)),
        Command::DrillProbe { args } => edge(watcher::drill::probe(&args)),
        Command::Run {
            log,
            quiet,
            verbose,
            ringbuf_size,
            command,
            policy,
            mode,
            report,
            report_format,
            user,
            bench_disable,
        } => {
            edge(run::run(run::RunOptions {
                command,
                log,
                quiet: quiet || (!verbose && watcher::report::quiet_by_default()),
                ringbuf_bytes: ringbuf_size,
                policy,
                mode: mode.map(ModeArg::into_mode),
                report,
                report_format: report_format.map(Format::into_format),
                // Under sudo: the invoking user, unless --user says otherwise.
                user: user.or_else(watcher::run_user::sudo_caller),
                bench_disable: watcher::sensor::BenchDisable {
                    backstop: bench_disable.contains(&BenchOff::Backstop),
                    streams: bench_disable.contains(&BenchOff::Streams),
                    files: bench_disable.contains(&BenchOff::Files),
                },
            }))
        }
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            watcher::say!("watcher: {e:#}");
            // The library's errors say their exit code; anything else here is the CLI's own
            // failure (writing the man page), watcher's: 125.
            let code = e.downcast_ref::<watcher::Error>().map_or(exitcode::WATCHER_ERROR, watcher::Error::exit_code);
            std::process::exit(code);
        }
    }
}

/// A library result at the CLI edge: the error keeps its type (for its exit code) inside
/// anyhow's, which prints its chain.
fn edge(r: watcher::Result<i32>) -> anyhow::Result<i32> {
    Ok(r?)
}
