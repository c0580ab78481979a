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
        let message = strip_yaml_path(&message).to_string();
        // serde_yaml has no position for a few whole-document errors (e.g. several documents);
        // they are about the document, so point at its start.
        let location = location.unwrap_or(Location { line: 1, column: 1 });
        PolicyError { file: file.to_string(), location: Some(location), message }
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
