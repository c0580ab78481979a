//! Bounds on YAML input (policies and the daemon configuration), checked before the text is
//! handed to the YAML parser, whose time grows faster than linearly with nesting depth:
//!
//! - at most [`MAX_YAML_BYTES`] bytes, read with that bound (a device or a huge file is never
//!   read whole);
//! - UTF-8 (an error names the line, never the bytes), a leading byte order mark is dropped;
//! - nesting at most [`MAX_DEPTH`] deep, counting flow brackets (`[`, `{`) and block levels
//!   (indentation and `- ` entries).
//!
//! Every overrun is one error naming the file and line (documented in README, "Bounds").
use std::{io::Read as _, path::Path};

use super::PolicyError;

/// The largest policy or daemon configuration file read (1 MiB).
pub const MAX_YAML_BYTES: u64 = 1 << 20;
/// The deepest nesting accepted (a policy needs 5).
pub const MAX_DEPTH: usize = 32;

/// Read a YAML file of at most [`MAX_YAML_BYTES`], as UTF-8 without a byte order mark.
/// `what` names the file's role in errors ("policy", "daemon configuration").
pub fn read(path: &Path, what: &str) -> Result<String, PolicyError> {
    let name = path.display().to_string();
    let cannot = |e: std::io::Error| PolicyError::unlocated(&name, format!("cannot read the {what}: {e}"));
    let f = std::fs::File::open(path).map_err(cannot)?;
    let m = f.metadata().map_err(cannot)?;
    if m.is_dir() {
        return Err(PolicyError::unlocated(&name, format!("cannot read the {what}: it is a directory")));
    }
    let mut buf = Vec::new();
    f.take(MAX_YAML_BYTES + 1).read_to_end(&mut buf).map_err(cannot)?;
    if buf.len() as u64 > MAX_YAML_BYTES {
        return Err(PolicyError::unlocated(
            &name,
            format!("the {what} is larger than {} KiB (the limit, see README \"Bounds\")", MAX_YAML_BYTES >> 10),
        ));
    }
    text(&name, buf)
}

/// Bytes as UTF-8 text; an error names the line of the first invalid byte.
pub fn text(name: &str, buf: Vec<u8>) -> Result<String, PolicyError> {
    match String::from_utf8(buf) {
        Ok(s) => Ok(strip_bom(&s).to_string()),
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let bytes = e.as_bytes();
            let line = 1 + bytes[..at].iter().filter(|&&b| b == b'\n').count();
            let col = 1 + at - bytes[..at].iter().rposition(|&b| b == b'\n').map(|p| p + 1).unwrap_or(0);
            Err(PolicyError::at(name, line, col, "not UTF-8 text"))
        }
    }
}

/// Text without a leading UTF-8 byte order mark (editors on Windows write one).
pub fn strip_bom(s: &str) -> &str {
    s.strip_prefix('\u{feff}').unwrap_or(s)
}

/// Check the text's nesting depth (an approximation of YAML's structure that never
/// undercounts by more than block scalars and multi-line plain scalars could, which hold no
/// structure): flow brackets outside quotes and comments, plus block levels.
pub fn check_depth(name: &str, text: &str) -> Result<(), PolicyError> {
    let too_deep = |line: usize, col: usize| {
        PolicyError::at(
            name,
            line,
            col,
            format!("nested more than {MAX_DEPTH} levels deep (the limit, see README \"Bounds\")"),
        )
    };
    // Open block levels: their indentation columns.
    let mut block: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    let mut quote: Option<char> = None;
    // Inside a block scalar (`|`, `>`) started at this indentation.
    let mut scalar_of: Option<usize> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let indent = line.len() - line.trim_start_matches(' ').len();
        let body = &line[indent..];
        if let Some(parent) = scalar_of {
            if body.trim().is_empty() || indent > parent {
                continue;
            }
            scalar_of = None;
        }
        if quote.is_none() && flow == 0 {
            if body.is_empty() || body.starts_with('#') {
                continue;
            }
            while block.last().is_some_and(|&c| c >= indent) {
                block.pop();
            }
            block.push(indent);
            // `- - - x`: each entry marker opens one more level on the same line.
            let mut rest = body;
            let mut col = indent;
            while let Some(r) = rest.strip_prefix('-').filter(|r| r.is_empty() || r.starts_with([' ', '\t'])) {
                let r2 = r.trim_start();
                col += rest.len() - r2.len();
                rest = r2;
                block.push(col);
            }
            if block.len() > MAX_DEPTH {
                return Err(too_deep(n, indent + 1));
            }
        }
        let mut prev_space = true;
        let mut chars = body.char_indices().peekable();
        while let Some((j, c)) = chars.next() {
            match quote {
                Some('\'') => {
                    if c == '\'' {
                        if chars.peek().is_some_and(|&(_, d)| d == '\'') {
                            chars.next();
                        } else {
                            quote = None;
                        }
                    }
                }
                Some(_) => {
                    if c == '\\' {
                        chars.next();
                    } else if c == '"' {
                        quote = None;
                    }
                }
                None => match c {
                    '#' if prev_space => break,
                    '"' | '\'' if prev_space || flow > 0 => quote = Some(c),
                    '[' | '{' => {
                        flow += 1;
                        if block.len() + flow > MAX_DEPTH {
                            return Err(too_deep(n, indent + j + 1));
                        }
                    }
                    ']' | '}' => flow = flow.saturating_sub(1),
                    _ => {}
                },
            }
            prev_space = c == ' ' || c == '\t' || (quote.is_none() && "[{,:".contains(c));
        }
        if quote.is_none() && flow == 0 {
            let t = body.split(" #").next().unwrap_or("").trim_end();
            let ind = t.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '+');
            if ind.ends_with('|') || ind.ends_with('>') {
                scalar_of = Some(indent);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_flow_and_block_levels() {
        check_depth("p", "version: 1\nexec:\n  deny: [\"a[b]\", '{x']\n  allow:\n    - a\n").unwrap();
        let deep = format!("a: {}{}\n", "[".repeat(40), "]".repeat(40));
        let e = check_depth("p", &deep).unwrap_err();
        assert_eq!(e.location.unwrap().line, 1);
        assert!(e.message.contains("nested more than 32"), "{e}");
        let mut block = String::new();
        for i in 0..40 {
            block.push_str(&format!("{}k{i}:\n", " ".repeat(i)));
        }
        let e = check_depth("p", &block).unwrap_err();
        assert_eq!(e.location.unwrap().line, 33);
        assert!(check_depth("p", &format!("{}x\n", "- ".repeat(40))).is_err());
        // Brackets in quotes, comments and block scalars are not structure.
        let text = format!("a: \"{0}\"\nb: '{0}' # {0}\nc: |\n  {0}\n  {0}\nd: 1\n", "[".repeat(40));
        check_depth("p", &text).unwrap();
    }

    #[test]
    fn bom_is_dropped_and_bad_utf8_names_the_line() {
        assert_eq!(text("p", b"\xef\xbb\xbfversion: 1\n".to_vec()).unwrap(), "version: 1\n");
        let e = text("p", b"a: 1\nb: \xff\n".to_vec()).unwrap_err();
        assert_eq!(e.to_string(), "p:2:4: not UTF-8 text");
    }
}
