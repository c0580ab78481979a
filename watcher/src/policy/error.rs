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
