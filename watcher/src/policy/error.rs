//! `PolicyError`: `FILE:LINE:COLUMN: message`.

use std::fmt;

/// A 1-based position in a policy file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// A policy that cannot be read, parsed or validated.
///
/// Displays as `FILE:LINE:COLUMN: message`, or `FILE: message` when there is no position
/// (the file cannot be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The file name as given to `load` / `parse_str`.
    pub file: String,
    pub location: Option<Location>,
    pub message: String,
}

impl PolicyError {
    pub(crate) fn at(file: &str, line: usize, column: usize, message: impl Into<String>) -> Self {
        PolicyError { file: file.to_string(), location: Some(Location { line, column }), message: message.into() }
    }

    pub(crate) fn unlocated(file: &str, message: impl Into<String>) -> Self {
        PolicyError { file: file.to_string(), location: None, message: message.into() }
    }

    /// Converts a serde_yaml error: takes its position and strips what serde_yaml appends
    /// (` at line L column C`) and prepends (the `egress.allow[0]: ` path) to the message.
    pub(crate) fn from_yaml(file: &str, err: &serde_yaml::Error) -> Self {
        let mut message = err.to_string();
        let location = err.location().map(|l| Location { line: l.line(), column: l.column() });
        if let Some(l) = location {
            let suffix = format!(" at line {} column {}", l.line, l.column);
            if let Some(pos) = message.find(&suffix) {
                message.replace_range(pos..pos + suffix.len(), "");
            }
        }
        let message = without_values(strip_yaml_path(&message));
        // serde_yaml has no position for a few whole-document errors (e.g. several documents);
        // they are about the document, so point at its start.
        let location = location.unwrap_or(Location { line: 1, column: 1 });
        PolicyError { file: file.to_string(), location: Some(location), message }
    }
}

/// serde's messages quote the offending value (`invalid type: string "...", expected ...`).
/// A file given by mistake (a key, a token file) must never be echoed, so quoted string
/// values are replaced by `a string`; backquoted names (unknown fields, variants) are kept
/// when short and printable, else dropped too.
fn without_values(message: &str) -> String {
    let mut out = String::new();
    let mut rest = message;
    loop {
        let s = rest.find("string \"");
        let b = rest.find('`');
        match (s, b) {
            (Some(i), _) if b.is_none_or(|b| i < b) => {
                out.push_str(&rest[..i]);
                out.push_str("a string");
                // Skip to the closing quote (Debug escaping: \" and \\ inside).
                let body = &rest[i + "string \"".len()..];
                let mut end = body.len();
                let mut esc = false;
                for (j, c) in body.char_indices() {
                    if esc {
                        esc = false;
                    } else if c == '\\' {
                        esc = true;
                    } else if c == '"' {
                        end = j + 1;
                        break;
                    }
                }
                rest = &body[end.min(body.len())..];
            }
            (_, Some(i)) => {
                out.push_str(&rest[..i]);
                let body = &rest[i + 1..];
                let end = body.find('`').unwrap_or(body.len());
                let name = &body[..end];
                if name.len() <= 64 && name.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
                    out.push('`');
                    out.push_str(name);
                    out.push('`');
                } else {
                    out.push_str("a value");
                }
                rest = &body[(end + 1).min(body.len())..];
            }
            _ => {
                out.push_str(rest);
                return out;
            }
        }
    }
}

/// serde_yaml prefixes messages with the path of the failing node, e.g. `egress.allow[0]: `.
/// Since every key on such a path is a known field name, the prefix is made of identifier
/// characters, dots and `[n]`; messages themselves never start that way.
fn strip_yaml_path(message: &str) -> &str {
    if let Some((prefix, rest)) = message.split_once(": ") {
        let is_path = !prefix.is_empty()
            && prefix.chars().all(|c| c.is_ascii_alphanumeric() || "_-.[]?".contains(c))
            && !prefix.starts_with('[');
        if is_path {
            return rest;
        }
    }
    message
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some(l) => write!(f, "{}:{}:{}: {}", self.file, l.line, l.column, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for PolicyError {}

/// A policy value that does not parse: a port, a pattern, an address, a path. serde places it
/// at the value's position in the file (`PolicyError`'s message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("invalid port {0:?}: ports are 1-65535")]
    PortOutOfRange(String),
    #[error("invalid port {0:?}: expected a port number or a range \"first-last\"")]
    PortNotANumber(String),
    #[error("invalid port range {text:?}: start {start} is greater than end {end}")]
    PortRangeReversed { text: String, start: u16, end: u16 },
    #[error("invalid glob {text:?}: {kind}")]
    Glob { text: String, kind: globset::ErrorKind },
    /// `what` names the field ("host", "executable pattern", ...).
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("invalid {what} {text:?}: expected a host name or glob, not a URL")]
    HostIsUrl { what: &'static str, text: String },
    #[error("invalid {what} {text:?}: this is an IP address; use `ip: {ip}` in egress.allow")]
    HostIsIp { what: &'static str, text: String, ip: std::net::IpAddr },
    #[error("invalid {what} {text:?}: unexpected character {c:?}{hint}")]
    HostCharacter { what: &'static str, text: String, c: char, hint: &'static str },
    #[error("invalid temporary directory {0:?}: expected an absolute path such as /tmp")]
    TempDirRelative(String),
    #[error("invalid temporary directory {0:?}: a directory path, not a glob")]
    TempDirGlob(String),
    #[error("a temporary directory cannot be / (every executable would be in it)")]
    TempDirRoot,
    #[error("invalid env var name pattern {0:?}: a name cannot contain '='")]
    EnvNameEquals(String),
    #[error("invalid package name pattern {text:?}: unexpected character {c:?}")]
    PackageCharacter { text: String, c: char },
    #[error("invalid IP address {text:?}: {err}")]
    Ip { text: String, err: std::net::AddrParseError },
    #[error("invalid IP address {text:?}: {err} (use `cidr:` for a network)")]
    IpIsNetwork { text: String, err: std::net::AddrParseError },
    #[error("invalid CIDR {text:?}: {err}")]
    Cidr { text: String, err: ipnet::AddrParseError },
    #[error("invalid CIDR {text:?}: {err} (a prefix length is required, e.g. {text}/32; or use `ip:`)")]
    CidrWithoutPrefix { text: String, err: ipnet::AddrParseError },
    #[error("invalid file path {0:?}: start it with `/`, `~/` or `./`")]
    FileNotAnchored(String),
    #[error("invalid file path {text:?}: longer than {max} bytes")]
    FileTooLong { text: String, max: usize },
    #[error("invalid file path {0:?}: name a file or a directory under it")]
    FileNoName(String),
    #[error("invalid file path {0:?}: no control characters or globs")]
    FileCharacters(String),
    #[error("invalid file path {0:?}: no `.`, `..` or empty components")]
    FileComponents(String),
    #[error("pipeline must be a non-empty name")]
    PipelineEmpty,
    #[error("invalid pipeline name {0:?}: control characters are not allowed")]
    PipelineControl(String),
    #[error("invalid pipeline name: longer than 200 bytes")]
    PipelineTooLong,
    /// `mode`, `registries`, `shells`, `resolvers`: not one of the names.
    #[error(transparent)]
    Name(#[from] super::schema::ParseNameError),
}

/// A parsed policy whose rules cannot be compiled for the agent (`Compiled::new`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("cannot compile the policy's patterns: {0}")]
    Patterns(globset::Error),
    #[error(
        "egress.deputies: {0:?} is not a unix socket path (absolute, or @name for an abstract socket, at most {max} bytes)",
        max = watcher_common::UNIX_PATH_LEN
    )]
    DeputyPath(String),
    #[error("egress.deputies.remove: {0:?} is not a built-in deputy socket (they are listed in docs/POLICY.md)")]
    DeputyNotBuiltIn(String),
}

/// A policy that cannot be enforced in the kernel (`kernel::compile`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    #[error("at most {max} port ranges per entry can be enforced in the kernel", max = watcher_common::MAX_PORT_RANGES)]
    PortRanges,
    #[error("more than {max} forward proxies on {0}", max = watcher_common::MAX_PORT_RANGES)]
    Proxies(std::net::IpAddr),
    #[error(
        "at most {max} allowed hosts (including registry hosts) can be enforced in the kernel",
        max = watcher_common::MAX_HOST_ENTRIES
    )]
    Hosts,
    /// Enforce mode: host patterns the kernel cannot match, each with its reason.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Names(Vec<NameError>),
}

/// A host pattern the kernel's name tables cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("host pattern {0:?} cannot be enforced in the kernel: use an exact name or a leading \"*.\" wildcard")]
    Glob(String),
    #[error("host name {0:?} is not a valid DNS name")]
    NotDns(String),
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_are_never_echoed() {
        let m = super::without_values(
            "invalid type: string \"-----BEGIN OPENSSH PRIVATE KEY----- \\\"b3Bl\", expected a mapping",
        );
        assert_eq!(m, "invalid type: a string, expected a mapping");
        let m = super::without_values("unknown field `egres`, expected one of `version`, `pipeline`");
        assert_eq!(m, "unknown field `egres`, expected one of `version`, `pipeline`");
        let long = format!("unknown variant `{}`, expected `audit`", "k".repeat(100));
        assert_eq!(super::without_values(&long), "unknown variant a value, expected `audit`");
    }
}
