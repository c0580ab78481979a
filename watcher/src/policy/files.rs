//! The `files:` section: what the file sensor judges besides its shipped defaults.
//!
//! ```yaml
//! files:
//!   credentials: ["~/.config/acme/token"]   # more credential stores (any open is flagged)
//!   protect: ["./deploy/", "~/.config/systemd/user/"]  # more protected paths (writes)
//!   allow: ["~/.config/gh/"]                # never judged: narrows the defaults
//! ```
//! A path starts with `/` (absolute), `~/` (under every home directory) or `./` (under the
//! project, the directory the step runs in). One ending in `/` is a directory and everything
//! beneath it; otherwise exactly that file. At most [`MAX_FILE_PATTERNS`] per list, each at
//! most [`MAX_FILE_PATTERN_LEN`] bytes.
use serde::{Deserialize, Deserializer, Serialize};

use super::error::ValueError;

pub const MAX_FILE_PATTERNS: usize = 256;
pub const MAX_FILE_PATTERN_LEN: usize = 200;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesSpec {
    /// Added credential stores: any open by an install script is a `credential-access` alert,
    /// killed in enforce mode.
    #[serde(deserialize_with = "patterns")]
    pub credentials: Vec<FilePattern>,
    /// Added protected paths: a write by an install script is a `file-tamper` alert, killed in
    /// enforce mode.
    #[serde(deserialize_with = "patterns")]
    pub protect: Vec<FilePattern>,
    /// Never judged (longest match wins: an exception inside a default directory works).
    #[serde(deserialize_with = "patterns")]
    pub allow: Vec<FilePattern>,
}

/// Where a pattern is rooted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    Root,
    Home,
    Project,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct FilePattern {
    text: String,
    pub base: Base,
    /// The path after its base (`.npmrc`, `.aws/`, or the absolute path without its `/`).
    pub rel: String,
}

impl From<FilePattern> for String {
    fn from(p: FilePattern) -> String {
        p.text
    }
}

impl FilePattern {
    pub fn parse(s: &str) -> Result<FilePattern, ValueError> {
        let (base, rel) = if let Some(r) = s.strip_prefix("~/") {
            (Base::Home, r)
        } else if let Some(r) = s.strip_prefix("./") {
            (Base::Project, r)
        } else if let Some(r) = s.strip_prefix('/') {
            (Base::Root, r)
        } else {
            return Err(ValueError::FileNotAnchored(s.to_string()));
        };
        if s.len() > MAX_FILE_PATTERN_LEN {
            return Err(ValueError::FileTooLong { text: s.to_string(), max: MAX_FILE_PATTERN_LEN });
        }
        if rel.is_empty() && base != Base::Root {
            return Err(ValueError::FileNoName(s.to_string()));
        }
        if s.chars().any(|c| c.is_control()) || s.contains('*') {
            return Err(ValueError::FileCharacters(s.to_string()));
        }
        if rel.split('/').any(|c| c == ".." || c == ".") || rel.contains("//") {
            return Err(ValueError::FileComponents(s.to_string()));
        }
        Ok(FilePattern { text: s.to_string(), base, rel: rel.to_string() })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_dir(&self) -> bool {
        self.rel.is_empty() || self.rel.ends_with('/')
    }
}

fn patterns<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<FilePattern>, D::Error> {
    let v: Vec<String> = Vec::deserialize(d)?;
    if v.len() > MAX_FILE_PATTERNS {
        return Err(serde::de::Error::custom(format!("at most {MAX_FILE_PATTERNS} paths per list")));
    }
    v.iter().map(|s| FilePattern::parse(s).map_err(serde::de::Error::custom)).collect()
}
