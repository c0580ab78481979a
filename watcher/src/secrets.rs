//! Detection of protected environment-variable values leaving the sandbox.
//!
//! A build step (an install script, a compromised dependency) that wants to steal
//! `AWS_SECRET_ACCESS_KEY` has two cheap ways out of a sandbox that only allows DNS and a
//! few HTTP(S) endpoints: encode the value into DNS query names
//! (`<hex-of-secret>.attacker.example`) or put it into the body of a plaintext request.
//! [`SecretSet`] is built once from the environment the watcher gives to the build and then
//! checks every DNS query name and the first bytes of every socket payload.
//!
//! # How matching works
//!
//! Everything expensive happens in [`SecretSet::new`]: for every protected value every
//! *form* it may take on the wire is precomputed (raw, hex, base32, base64, each in the
//! alphabets and cases listed below), and the needles derived from those forms are put into
//! two Aho-Corasick automata, one for DNS names (lowercased needles) and one for payloads
//! (case-sensitive needles). A check is then one linear pass over the (normalised) input,
//! independent of the number of needles.
//!
//! ## Alignment of base32 / base64
//!
//! A base64 character carries 6 bits, a byte 8, so the characters produced for the secret
//! depend on how many bytes precede it in the encoded stream (`base64("user:" + secret)`
//! shares nothing with `base64(secret)` but for alignment `5 % 3 == 2`). Each value is
//! therefore encoded behind 0, 1 and 2 prefix bytes (base32: 0..=4, as 5 bytes = 8
//! characters), and only the *stable* characters are kept: those whose bits all come from the
//! value, i.e. without the first/last characters that mix in bits of the neighbours (or the
//! zero padding bits of the final partial character). Any encoding of a stream containing
//! the value contains one of these stable strings verbatim.
//!
//! ## Partial leaks
//!
//! An attacker may leak a secret a piece at a time (one chunk per query). Besides the whole
//! stable string, every window of [`MIN_RAW_CHUNK`] / [`MIN_HEX_CHUNK`] /
//! [`MIN_BASE32_CHUNK`] / [`MIN_BASE64_CHUNK`] characters of each form is a needle, so any
//! leaked contiguous chunk at least that long is caught (the base32/base64 chunk may be
//! encoded on its own: its alignment is one of the precomputed ones). Two guards keep this
//! from producing false positives:
//!
//! * a window is only used if the part of the secret it encodes "looks like a secret"
//!   (see [`MIN_DISTINCT_BYTES`] and `is_distinctive`): at least 5 distinct bytes and at
//!   least one digit, upper-case letter, non-ASCII byte or unusual punctuation. This drops
//!   windows such as `https://registry.npm-mirror.test` taken from a URL-valued variable, which
//!   would otherwise fire on ordinary lookups of the registry. Whole values are always
//!   matched, whatever they look like.
//! * for very long values (PEM keys...) at most [`MAX_WINDOWS_PER_FORM`] windows per form are
//!   kept, evenly strided, so a chunk is then only guaranteed to be caught if it is at least
//!   `window + stride - 1` characters long; and whole forms longer than
//!   [`MAX_FULL_NEEDLE_LEN`] are only matched through their windows. This bounds memory
//!   and build time to a few hundred KiB per variable.
//!
//! ## DNS names
//!
//! Names are case-insensitive and resolvers may randomise the case of queries (DNS 0x20),
//! so the name is lowercased and its dots removed (labels can split a needle anywhere) and
//! compared against lowercased needles. Searching the whole dotless name subsumes searching
//! the name without its last two labels (the attacker's domain): every occurrence in the
//! shorter string is also one in the longer, so a single pass suffices.
//!
//! Base64 is case-sensitive, so comparing it lowercased is a deliberate trade-off: a needle
//! of n base64 characters loses about one bit per letter (≈5.3 instead of 6 bits per
//! character), i.e. a 16-character window still carries ≈84 bits, and the chance that an
//! unrelated name matches by accident stays negligible; in exchange case-randomised and
//! case-folded base64 leaks are caught.
//!
//! ## Payloads
//!
//! Payloads are searched as they are (case-sensitive: raw, hex lower/upper, base32
//! upper/lower, base64 standard/url-safe), then — only if they contain escapes — through
//! two decoded views: percent-decoding (`%2F`, `+` as space, as in URL-encoded forms and
//! query strings; a raw value found only thanks to decoding is reported as
//! [`Encoding::UrlEncoded`]) and JSON string unescaping (`\/`, `\"`, `\u002b`..., reported as
//! [`Encoding::Raw`]: the value is in clear inside a JSON string).
//!
//! Values are never stored (only the derived needles are, which is unavoidable), never
//! printed by `Debug`, and [`redact`] gives a form safe for logs.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use aho_corasick::{AhoCorasick, MatchKind};
use data_encoding::{BASE32_NOPAD, BASE32HEX_NOPAD, BASE64_NOPAD, BASE64URL_NOPAD, HEXLOWER, HEXUPPER};
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Serialize;

/// Values shorter than this many bytes are not protected: too many false positives.
pub const MIN_SECRET_LEN: usize = 8;
/// Minimum length (characters) of a partial raw leak that is detected.
pub const MIN_RAW_CHUNK: usize = 16;
/// Minimum length (hex digits, i.e. 8 bytes of secret) of a partial hex leak.
pub const MIN_HEX_CHUNK: usize = 16;
/// Minimum length (characters, 80 bits, 10 bytes of secret) of a partial base32 leak.
pub const MIN_BASE32_CHUNK: usize = 16;
/// Minimum length (characters, 96 bits, 12 bytes of secret) of a partial base64 leak.
pub const MIN_BASE64_CHUNK: usize = 16;
/// A window of a form is only a needle if the secret bytes it covers contain at least this
/// many distinct byte values (and at least one digit / upper-case / non-ASCII / uncommon
/// punctuation byte): keeps low-entropy or word-like fragments from matching ordinary traffic.
pub const MIN_DISTINCT_BYTES: usize = 5;
/// At most this many windows per form (value × encoding × alphabet × alignment); longer
/// values get strided windows.
pub const MAX_WINDOWS_PER_FORM: usize = 256;
/// Whole forms (stable strings) longer than this are matched only through their windows.
pub const MAX_FULL_NEEDLE_LEN: usize = 512;

/// Values of at least this many characters show their first [`REDACT_SHOWN_CHARS`] in [`redact`].
const REDACT_MIN_CHARS_TO_SHOW: usize = 12;
const REDACT_SHOWN_CHARS: usize = 2;

/// The form in which a protected value was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// The value itself (in DNS names: any case, dots ignored; in payloads: possibly inside a
    /// JSON string with escapes).
    Raw,
    /// Hexadecimal, lower or upper case.
    Hex,
    /// Base32 (RFC 4648 standard or "extended hex" alphabet in DNS), any case, any padding.
    Base32,
    /// Base64, standard or URL-safe alphabet, any padding.
    Base64,
    /// Percent-encoded (`%2F`, `+` for space) raw value.
    #[serde(rename = "url")]
    UrlEncoded,
}

impl Encoding {
    /// Stable lowercase name, as used in reports: "raw", "hex", "base32", "base64", "url".
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Raw => "raw",
            Encoding::Hex => "hex",
            Encoding::Base32 => "base32",
            Encoding::Base64 => "base64",
            Encoding::UrlEncoded => "url",
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One protected variable found (whole or in part) in some encoding.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SecretHit {
    /// Name of the environment variable whose value leaked.
    pub variable: String,
    pub encoding: Encoding,
}

/// The protected values of a build's environment, precompiled for fast searching.
///
/// Cheap to clone (the automata are reference-counted) and `Send + Sync`.
#[derive(Clone, Default)]
pub struct SecretSet {
    /// Protected variable names, sorted; a needle's owner refers to an index in here.
    names: Vec<String>,
    /// [`redact`]ed values, in the order of `names`.
    redacted: Vec<String>,
    /// The values themselves, longest first, to blank them out of logged text
    /// ([`SecretSet::redact_values_in`]). Never printed (`Debug` omits them).
    values: Vec<(String, u32)>,
    dns: Matcher,
    payload: Matcher,
}

impl fmt::Debug for SecretSet {
    /// Shows names and needle counts only: never values or anything derived from them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSet")
            .field("names", &self.names)
            .field("dns_needles", &self.dns.owners.len())
            .field("payload_needles", &self.payload.owners.len())
            .finish()
    }
}

impl SecretSet {
    /// Selects the variables of `env` whose name matches one of `patterns` and precomputes
    /// the needles for their values.
    ///
    /// `patterns` are globs on variable names, case-sensitive ("AWS_*", "*_TOKEN"). A pattern
    /// starting with `!` excludes the names it matches even if another pattern includes them
    /// (e.g. `"!AWS_REGION"`, `"!AWS_DEFAULT_REGION"`: region names legitimately appear in
    /// AWS endpoint host names). Values shorter than [`MIN_SECRET_LEN`] bytes are ignored. If a
    /// name appears several times in `env`, the last value wins.
    pub fn new(
        patterns: &[String],
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<SecretSet, globset::Error> {
        let names = SecretNames::new(patterns)?;
        let mut selected: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in env {
            if !names.matches(&name) {
                continue;
            }
            if value.len() >= MIN_SECRET_LEN {
                selected.insert(name, value);
            } else {
                selected.remove(&name);
            }
        }

        let mut dns = NeedleTable::default();
        let mut payload = NeedleTable::default();
        let mut names = Vec::with_capacity(selected.len());
        let mut redacted = Vec::with_capacity(selected.len());
        let mut values = Vec::with_capacity(selected.len());
        for (index, (name, value)) in selected.into_iter().enumerate() {
            let var = u32::try_from(index).expect("fewer than 2^32 environment variables");
            add_variable(&mut dns, &mut payload, var, value.as_bytes());
            names.push(name);
            redacted.push(redact(&value));
            values.push((value.clone(), var));
        }
        values.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Ok(SecretSet { names, redacted, values, dns: dns.build(), payload: payload.build() })
    }

    /// True if no variable is protected (then every search returns nothing, at no cost).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Number of protected variables.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Protected variable names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.names.iter().map(String::as_str).collect()
    }

    /// `text` with every protected value in it replaced by its [`redact`]ed form, or None if
    /// it holds none (e.g. an argument a shell expanded from `$AWS_SECRET_ACCESS_KEY`, which
    /// must not reach the event log). Encoded forms are replaced too (see
    /// [`SecretSet::redact_values_in_all`]).
    pub fn redact_values_in(&self, text: &str) -> Option<String> {
        Self::redact_values_in_all(std::slice::from_ref(self), text)
    }

    /// Every protected value of every set in `text`, raw or encoded the way the payload
    /// search finds it (hex, base32, base64 and base64url at any alignment, whole or a
    /// distinctive chunk), replaced: a raw value by its [`redact`]ed form
    /// (`AK…(20 chars)`), an encoded one by `[hex of AK…(20 chars)]`. Overlapping finds
    /// (a value that contains another) are replaced as one. An encoded value keeps at most
    /// the one or two characters at each end that also carry bits of its neighbours. None
    /// when nothing was found.
    pub fn redact_values_in_all(sets: &[SecretSet], text: &str) -> Option<String> {
        // (start, end, set, variable, encoding), widened to character boundaries.
        let mut spans: Vec<(usize, usize, usize, u32, Encoding)> = Vec::new();
        for (i, set) in sets.iter().enumerate() {
            if set.is_empty() {
                continue;
            }
            set.payload.for_each_match(text.as_bytes(), |owners, start, end| {
                if let Some(&(var, encoding)) = owners.first() {
                    spans.push((start, end, i, var, encoding));
                }
            });
            // Values longer than the whole-needle bound are found by their windows only;
            // matched in full here, so nothing of them is left between strided windows.
            for (value, var) in &set.values {
                if value.len() > MAX_FULL_NEEDLE_LEN {
                    for (at, _) in text.match_indices(value.as_str()) {
                        spans.push((at, at + value.len(), i, *var, Encoding::Raw));
                    }
                }
            }
        }
        if spans.is_empty() {
            return None;
        }
        for s in &mut spans {
            while !text.is_char_boundary(s.0) {
                s.0 -= 1;
            }
            while !text.is_char_boundary(s.1) {
                s.1 += 1;
            }
        }
        // Longest first at equal starts, so a merged run is named after its widest find.
        spans.sort_by(|a, b| a.0.cmp(&b.0).then((b.1 - b.0).cmp(&(a.1 - a.0))));
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        let mut k = 0;
        while k < spans.len() {
            let (start, mut end, set, var, encoding) = spans[k];
            let mut widest = end - start;
            let mut label = (set, var, encoding);
            k += 1;
            while k < spans.len() && spans[k].0 < end {
                if spans[k].1 - spans[k].0 > widest {
                    widest = spans[k].1 - spans[k].0;
                    label = (spans[k].2, spans[k].3, spans[k].4);
                }
                end = end.max(spans[k].1);
                k += 1;
            }
            let start = start.max(at);
            out.push_str(&text[at..start]);
            let (set, var, encoding) = label;
            let redacted = sets[set].redacted.get(var as usize).map(String::as_str).unwrap_or("[redacted]");
            match encoding {
                Encoding::Raw | Encoding::UrlEncoded => out.push_str(redacted),
                e => {
                    out.push('[');
                    out.push_str(e.as_str());
                    out.push_str(" of ");
                    out.push_str(redacted);
                    out.push(']');
                }
            }
            at = end;
        }
        out.push_str(&text[at..]);
        Some(out)
    }

    /// The [`redact`]ed value of protected variable `name` (safe to log), if it is protected.
    pub fn redacted(&self, name: &str) -> Option<&str> {
        let i = self.names.binary_search_by(|n| n.as_str().cmp(name)).ok()?;
        Some(self.redacted[i].as_str())
    }

    /// Searches a DNS query name (dotted, any case, with or without the final dot) for
    /// protected values: raw, hex, base32 or base64, whole or a chunk, possibly split across
    /// labels. Hits are deduplicated and sorted by variable, then encoding.
    pub fn find_in_dns_name(&self, qname: &str) -> Vec<SecretHit> {
        if self.is_empty() {
            return Vec::new();
        }
        let haystack: Vec<u8> = qname.bytes().filter(|&b| b != b'.').map(|b| b.to_ascii_lowercase()).collect();
        let mut found = Vec::new();
        self.dns.for_each_match(&haystack, |owners, _, _| {
            found.extend_from_slice(owners);
        });
        self.hits(found)
    }

    /// Searches the first bytes sent on a socket (e.g. an HTTP request) for protected values:
    /// raw, hex, base32, base64, percent-encoded or JSON-escaped, whole or a chunk. Hits are
    /// deduplicated and sorted by variable, then encoding; a variable found URL-encoded is not
    /// also reported as raw.
    pub fn find_in_payload(&self, bytes: &[u8]) -> Vec<SecretHit> {
        self.find_in_payload_at(bytes).into_iter().map(|(h, _)| h).collect()
    }

    /// [`SecretSet::find_in_payload`], with where each hit starts in `bytes` (its first
    /// occurrence; for a find in a decoded view, where it starts in that view, which is at
    /// or before its place in `bytes`).
    pub fn find_in_payload_at(&self, bytes: &[u8]) -> Vec<(SecretHit, usize)> {
        if self.is_empty() {
            return Vec::new();
        }
        let mut found = Vec::new();
        self.payload.for_each_match(bytes, |owners, start, _| {
            found.extend(owners.iter().map(|&(var, encoding)| (var, encoding, start)));
        });

        // Decoded views: only matches that span a decoded escape are new (the others were
        // seen in the original bytes already).
        if bytes.iter().any(|&b| b == b'%' || b == b'+') {
            let view = percent_decode(bytes);
            self.search_view(&view, Encoding::UrlEncoded, &mut found);
        }
        if bytes.contains(&b'\\') {
            let view = json_unescape(bytes);
            self.search_view(&view, Encoding::Raw, &mut found);
        }
        // A URL-encoded value usually has raw stretches long enough to match as a partial raw
        // leak ("bPxRfiCYEXAMPLEKEY" in "...%2FbPxRfiCYEXAMPLEKEY"): report the variable once,
        // with the more specific encoding.
        let url_encoded: Vec<u32> = found
            .iter()
            .filter(|&&(_, encoding, _)| encoding == Encoding::UrlEncoded)
            .map(|&(var, _, _)| var)
            .collect();
        if !url_encoded.is_empty() {
            found.retain(|&(var, encoding, _)| encoding != Encoding::Raw || !url_encoded.contains(&var));
        }
        found.sort_unstable();
        found.dedup_by_key(|&mut (var, encoding, _)| (var, encoding));
        found
            .into_iter()
            .map(|(var, encoding, at)| (SecretHit { variable: self.names[var as usize].clone(), encoding }, at))
            .collect()
    }

    /// Length of the longest payload needle: a search over consecutive pieces of a stream
    /// must overlap them by this much (less one) to find a value split between two pieces.
    pub fn longest_payload_needle(&self) -> usize {
        self.payload.longest
    }

    /// Searches a decoded view of a payload; raw needles found thanks to decoding are
    /// reported as `raw_as`.
    fn search_view(&self, view: &View, raw_as: Encoding, found: &mut Vec<(u32, Encoding, usize)>) {
        if !view.any_escaped() {
            return;
        }
        self.payload.for_each_match(&view.bytes, |owners, start, end| {
            if view.escaped_in(start, end) {
                found.extend(
                    owners.iter().map(|&(var, encoding)| {
                        (var, if encoding == Encoding::Raw { raw_as } else { encoding }, start)
                    }),
                );
            }
        });
    }

    fn hits(&self, mut found: Vec<(u32, Encoding)>) -> Vec<SecretHit> {
        found.sort_unstable();
        found.dedup();
        found
            .into_iter()
            .map(|(var, encoding)| SecretHit { variable: self.names[var as usize].clone(), encoding })
            .collect()
    }
}

/// Which variables are protected: the name globs of [`SecretSet::new`] (`!` excludes).
#[derive(Clone, Debug)]
pub struct SecretNames {
    include: GlobSet,
    exclude: GlobSet,
}

impl SecretNames {
    pub fn new(patterns: &[String]) -> Result<SecretNames, globset::Error> {
        let (include, exclude) = compile_patterns(patterns)?;
        Ok(SecretNames { include, exclude })
    }

    /// Whether variable `name` is protected (by name only).
    pub fn matches(&self, name: &str) -> bool {
        self.include.is_match(name) && !self.exclude.is_match(name)
    }

    /// Whether `name=value` would be protected by a [`SecretSet`] (name selected, value long
    /// enough).
    pub fn protects(&self, name: &str, value: &str) -> bool {
        value.len() >= MIN_SECRET_LEN && self.matches(name)
    }
}

/// A redacted form of `value`, safe to print or log: the first 2 characters and the length
/// (`"AK…(20 chars)"`), or only the length for values shorter than 12 characters
/// (`"…(8 chars)"`). Never contains `value` (non-empty) as a substring.
pub fn redact(value: &str) -> String {
    let n = value.chars().count();
    let unit = if n == 1 { "char" } else { "chars" };
    let length_only = format!("…({n} {unit})");
    if value.is_empty() {
        return length_only;
    }
    if n >= REDACT_MIN_CHARS_TO_SHOW {
        let shown: String = value.chars().take(REDACT_SHOWN_CHARS).collect();
        let candidate = format!("{shown}{length_only}");
        if !candidate.contains(value) {
            return candidate;
        }
    }
    // Pathological values that look like our own output (e.g. "(10 chars)").
    [length_only, "[redacted]".to_string(), "***".to_string()]
        .into_iter()
        .find(|candidate| !candidate.contains(value))
        .expect("a non-empty value cannot be a substring of both \"[redacted]\" and \"***\"")
}

fn compile_patterns(patterns: &[String]) -> Result<(GlobSet, GlobSet), globset::Error> {
    let mut include = GlobSetBuilder::new();
    let mut exclude = GlobSetBuilder::new();
    for pattern in patterns {
        match pattern.strip_prefix('!') {
            Some(negated) => exclude.add(Glob::new(negated)?),
            None => include.add(Glob::new(pattern)?),
        };
    }
    Ok((include.build()?, exclude.build()?))
}

/// Adds every needle of one value to the DNS and payload tables.
fn add_variable(dns: &mut NeedleTable, payload: &mut NeedleTable, var: u32, value: &[u8]) {
    // Raw. DNS: dots vanish with the label separators, case is folded.
    payload.add_form(var, Encoding::Raw, Form::plain(value, value, 8, MIN_RAW_CHUNK));
    let dotless: Vec<u8> = value.iter().copied().filter(|&b| b != b'.').collect();
    if dotless.len() >= MIN_SECRET_LEN {
        let lower = dotless.to_ascii_lowercase();
        dns.add_form(var, Encoding::Raw, Form::plain(&lower, &dotless, 8, MIN_RAW_CHUNK));
    }

    // Hex: always byte-aligned.
    let hex_lower = HEXLOWER.encode(value);
    let hex_upper = HEXUPPER.encode(value);
    for hex in [&hex_lower, &hex_upper] {
        payload.add_form(var, Encoding::Hex, Form::plain(hex.as_bytes(), value, 4, MIN_HEX_CHUNK));
    }
    dns.add_form(var, Encoding::Hex, Form::plain(hex_lower.as_bytes(), value, 4, MIN_HEX_CHUNK));

    // Base32 and base64 behind every possible number of prefix bytes.
    let mut stream = Vec::with_capacity(value.len() + 4);
    for prefix in 0..5 {
        stream.clear();
        stream.resize(prefix, 0);
        stream.extend_from_slice(value);
        let standard = BASE32_NOPAD.encode(&stream);
        let lower = standard.to_ascii_lowercase();
        let hex_alphabet = BASE32HEX_NOPAD.encode(&stream).to_ascii_lowercase();
        for text in [&standard, &lower] {
            let form = Form::aligned(text, value, 5, prefix, MIN_BASE32_CHUNK);
            payload.add_form(var, Encoding::Base32, form);
        }
        for text in [&lower, &hex_alphabet] {
            let form = Form::aligned(text, value, 5, prefix, MIN_BASE32_CHUNK);
            dns.add_form(var, Encoding::Base32, form);
        }
    }
    for prefix in 0..3 {
        stream.clear();
        stream.resize(prefix, 0);
        stream.extend_from_slice(value);
        for alphabet in [&BASE64_NOPAD, &BASE64URL_NOPAD] {
            let text = alphabet.encode(&stream);
            let lower = text.to_ascii_lowercase();
            let form = Form::aligned(&text, value, 6, prefix, MIN_BASE64_CHUNK);
            payload.add_form(var, Encoding::Base64, form);
            let form = Form::aligned(&lower, value, 6, prefix, MIN_BASE64_CHUNK);
            dns.add_form(var, Encoding::Base64, form);
        }
    }
}

/// One encoded form of a value: `text` is the encoding of `prefix` bytes followed by
/// `value`, at `bits` bits per character.
struct Form<'a> {
    text: &'a [u8],
    /// The bytes encoded (original case), used to judge whether a window is distinctive.
    value: &'a [u8],
    bits: usize,
    prefix: usize,
    /// Length of partial-leak windows, in characters.
    window: usize,
}

impl<'a> Form<'a> {
    fn plain(text: &'a [u8], value: &'a [u8], bits: usize, window: usize) -> Form<'a> {
        Form { text, value, bits, prefix: 0, window }
    }

    fn aligned(text: &'a str, value: &'a [u8], bits: usize, prefix: usize, window: usize) -> Form<'a> {
        Form { text: text.as_bytes(), value, bits, prefix, window }
    }
}

/// Needles, deduplicated, with the (variable, encoding) pairs each one reveals.
#[derive(Default)]
struct NeedleTable {
    index: HashMap<Vec<u8>, usize>,
    needles: Vec<Vec<u8>>,
    owners: Vec<Vec<(u32, Encoding)>>,
}

impl NeedleTable {
    fn add(&mut self, needle: &[u8], var: u32, encoding: Encoding) {
        let id = match self.index.get(needle) {
            Some(&id) => id,
            None => {
                let id = self.needles.len();
                self.index.insert(needle.to_vec(), id);
                self.needles.push(needle.to_vec());
                self.owners.push(Vec::new());
                id
            }
        };
        let owners = &mut self.owners[id];
        if !owners.contains(&(var, encoding)) {
            owners.push((var, encoding));
        }
    }

    /// Adds the stable inner string of `form` and its distinctive windows.
    fn add_form(&mut self, var: u32, encoding: Encoding, form: Form<'_>) {
        let Form { text, value, bits, prefix, window } = form;
        // Characters whose bits all come from `value`: [ceil(8p/b), floor(8(p+len)/b)).
        let first = (8 * prefix).div_ceil(bits);
        let end = (8 * (prefix + value.len()) / bits).min(text.len());
        if end <= first {
            return;
        }
        let inner = &text[first..end];
        if inner.len() <= MAX_FULL_NEEDLE_LEN {
            self.add(inner, var, encoding);
        }
        if inner.len() <= window {
            return;
        }
        let count = inner.len() - window + 1;
        let stride = count.div_ceil(MAX_WINDOWS_PER_FORM);
        for offset in (0..count).step_by(stride) {
            // Bytes of `value` touched by characters [first+offset, first+offset+window).
            let start_bit = (first + offset) * bits;
            let end_bit = (first + offset + window) * bits;
            let lo = start_bit / 8 - prefix;
            let hi = (end_bit.div_ceil(8) - prefix).min(value.len());
            if is_distinctive(&value[lo..hi]) {
                self.add(&inner[offset..offset + window], var, encoding);
            }
        }
    }

    fn build(self) -> Matcher {
        let longest = self.needles.iter().map(Vec::len).max().unwrap_or(0);
        let searcher = if self.needles.is_empty() {
            Searcher::Empty
        } else {
            match AhoCorasick::builder().match_kind(MatchKind::Standard).build(&self.needles) {
                Ok(automaton) => Searcher::Automaton(automaton),
                // Only possible beyond aho-corasick's state-ID limits, which the caps above
                // keep us far from; never silently stop detecting.
                Err(_) => Searcher::Naive(self.needles),
            }
        };
        Matcher { searcher, longest, owners: self.owners }
    }
}

/// Does this fragment of a secret look secret enough to be matched on its own?
fn is_distinctive(bytes: &[u8]) -> bool {
    let mut seen = [false; 256];
    let mut distinct = 0;
    let mut marked = false;
    for &b in bytes {
        if !seen[usize::from(b)] {
            seen[usize::from(b)] = true;
            distinct += 1;
        }
        // Lower-case letters and the punctuation of host names, URLs, paths, identifiers and
        // e-mail addresses are what ordinary traffic is made of.
        if !(b.is_ascii_lowercase() || b" .-/:_@~=?&".contains(&b)) {
            marked = true;
        }
    }
    distinct >= MIN_DISTINCT_BYTES && marked
}

#[derive(Clone, Default)]
struct Matcher {
    searcher: Searcher,
    /// Length of the longest needle.
    longest: usize,
    /// Indexed by needle id.
    owners: Vec<Vec<(u32, Encoding)>>,
}

#[derive(Clone, Default)]
enum Searcher {
    #[default]
    Empty,
    Automaton(AhoCorasick),
    /// Fallback if the automaton cannot be built.
    Naive(Vec<Vec<u8>>),
}

impl Matcher {
    /// Calls `f(owners, start, end)` for every occurrence of every needle (overlapping).
    fn for_each_match(&self, haystack: &[u8], mut f: impl FnMut(&[(u32, Encoding)], usize, usize)) {
        match &self.searcher {
            Searcher::Empty => {}
            Searcher::Automaton(automaton) => {
                for m in automaton.find_overlapping_iter(haystack) {
                    f(&self.owners[m.pattern().as_usize()], m.start(), m.end());
                }
            }
            Searcher::Naive(needles) => {
                for (id, needle) in needles.iter().enumerate() {
                    for (start, candidate) in haystack.windows(needle.len()).enumerate() {
                        if candidate == needle.as_slice() {
                            f(&self.owners[id], start, start + needle.len());
                        }
                    }
                }
            }
        }
    }
}

/// A decoded copy of a payload, remembering which bytes came from escapes.
struct View {
    bytes: Vec<u8>,
    /// `escaped[i]` = number of bytes among `bytes[..i]` that were produced by an escape.
    escaped: Vec<u32>,
}

impl View {
    fn with_capacity(capacity: usize) -> View {
        let mut escaped = Vec::with_capacity(capacity + 1);
        escaped.push(0);
        View { bytes: Vec::with_capacity(capacity), escaped }
    }

    fn push(&mut self, byte: u8, from_escape: bool) {
        let before = self.escaped[self.escaped.len() - 1];
        self.bytes.push(byte);
        self.escaped.push(before + u32::from(from_escape));
    }

    fn any_escaped(&self) -> bool {
        self.escaped[self.escaped.len() - 1] > 0
    }

    fn escaped_in(&self, start: usize, end: usize) -> bool {
        self.escaped[end] > self.escaped[start]
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `application/x-www-form-urlencoded` / URL decoding: `%XY` and `+` (space). Malformed
/// escapes are kept literally.
fn percent_decode(input: &[u8]) -> View {
    let mut view = View::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'%' if i + 2 < input.len() => match (hex_digit(input[i + 1]), hex_digit(input[i + 2])) {
                (Some(high), Some(low)) => {
                    view.push(high << 4 | low, true);
                    i += 3;
                }
                _ => {
                    view.push(b'%', false);
                    i += 1;
                }
            },
            b'+' => {
                view.push(b' ', true);
                i += 1;
            }
            b => {
                view.push(b, false);
                i += 1;
            }
        }
    }
    view
}

/// JSON string unescaping (`\"`, `\\`, `\/`, `\b\f\n\r\t`, `\uXXXX` including surrogate
/// pairs), applied to the whole payload. Malformed escapes are kept literally.
fn json_unescape(input: &[u8]) -> View {
    fn hex4(input: &[u8], at: usize) -> Option<u32> {
        let digits = input.get(at..at + 4)?;
        digits.iter().try_fold(0u32, |acc, &b| Some(acc << 4 | u32::from(hex_digit(b)?)))
    }

    let mut view = View::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] != b'\\' || i + 1 >= input.len() {
            view.push(input[i], false);
            i += 1;
            continue;
        }
        let simple = match input[i + 1] {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            _ => None,
        };
        if let Some(byte) = simple {
            view.push(byte, true);
            i += 2;
            continue;
        }
        if input[i + 1] == b'u'
            && let Some(unit) = hex4(input, i + 2)
        {
            let mut consumed = 6;
            let mut code = unit;
            if (0xD800..0xDC00).contains(&unit)
                && input.get(i + 6) == Some(&b'\\')
                && input.get(i + 7) == Some(&b'u')
                && let Some(low @ 0xDC00..=0xDFFF) = hex4(input, i + 8)
            {
                code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                consumed = 12;
            }
            if let Some(c) = char::from_u32(code) {
                let mut buffer = [0u8; 4];
                for &b in c.encode_utf8(&mut buffer).as_bytes() {
                    view.push(b, true);
                }
                i += consumed;
                continue;
            }
        }
        view.push(b'\\', false);
        i += 1;
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;
    use data_encoding::{BASE32, BASE32HEX, BASE64, BASE64URL};

    const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const ACCESS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
    const NPM_TOKEN: &str = "npm_Xq3v9LmT2pR8sW4kZ7bN1cY6dF0gH5jK";
    const DB_PASSWORD: &str = "s3cr3t pass+word!";
    /// Its base64 contains '+' and '/' at every alignment.
    const SIGNING_TOKEN: &str = "zQ8?~>wP4!~?>kV2mN";

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn patterns() -> Vec<String> {
        strings(&["AWS_*", "*_TOKEN", "*_PASSWORD"])
    }

    /// A typical CI environment: three protected values plus unrelated variables.
    fn ci() -> SecretSet {
        SecretSet::new(
            &patterns(),
            env(&[
                ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
                ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
                ("NPM_TOKEN", NPM_TOKEN),
                ("DB_PASSWORD", DB_PASSWORD),
                ("SIGNING_TOKEN", SIGNING_TOKEN),
                ("PATH", "/usr/local/bin:/usr/bin:/bin"),
                ("HOME", "/home/runner"),
                ("CI_COMMIT_SHA", "3f786850e387550fdab836ed7e6dc881de23001b"),
            ]),
        )
        .unwrap()
    }

    fn hit(variable: &str, encoding: Encoding) -> SecretHit {
        SecretHit { variable: variable.to_string(), encoding }
    }

    /// `encoded` cut into labels of at most `max` characters, followed by the attacker's domain.
    fn qname(encoded: &str, max: usize) -> String {
        let labels: Vec<&str> = encoded.as_bytes().chunks(max).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("{}.x.evil.test", labels.join("."))
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
    }

    fn randomize_case(s: &str, rng: &mut Rng) -> String {
        s.chars().map(|c| if rng.next() & 1 == 1 { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() }).collect()
    }

    // ----- DNS names -------------------------------------------------------------------

    #[test]
    fn raw_value_in_dns_name() {
        let set = ci();
        let want = vec![hit("AWS_ACCESS_KEY_ID", Encoding::Raw)];
        assert_eq!(set.find_in_dns_name("akiaiosfodnn7example.evil.test"), want);
        assert_eq!(set.find_in_dns_name("AKIAIOSF.ODNN7EXAMPLE.evil.test"), want);
        assert_eq!(set.find_in_dns_name("AKIAIOSFODNN7EXAMPLE.evil.test."), want);
        assert_eq!(set.find_in_dns_name("a.b.AKIAIOSFODNN7EXAMPLE"), want);
    }

    #[test]
    fn raw_value_with_dots_in_dns_name() {
        let set = SecretSet::new(&patterns(), env(&[("SMTP_PASSWORD", "Zq9.Vt4.Kw7.Lp2")])).unwrap();
        assert_eq!(set.find_in_dns_name("zq9.vt4.kw7.lp2.evil.test"), vec![hit("SMTP_PASSWORD", Encoding::Raw)]);
        assert_eq!(set.find_in_dns_name("zq9vt4kw7lp2.evil.test"), vec![hit("SMTP_PASSWORD", Encoding::Raw)]);
    }

    #[test]
    fn hex_in_dns_name_lower_and_upper_in_63_char_labels() {
        let set = ci();
        let want = vec![hit("AWS_SECRET_ACCESS_KEY", Encoding::Hex)];
        for hex in [HEXLOWER.encode(SECRET_KEY.as_bytes()), HEXUPPER.encode(SECRET_KEY.as_bytes())] {
            assert_eq!(hex.len(), 80);
            let name = qname(&hex, 63);
            assert!(name.starts_with(&format!("{}.", &hex[..63])), "{name}");
            assert_eq!(set.find_in_dns_name(&name), want, "{name}");
            assert_eq!(set.find_in_dns_name(&qname(&hex, 8)), want);
        }
    }

    #[test]
    fn base32_in_dns_name_padded_unpadded_any_case() {
        let set = ci();
        let want = vec![hit("NPM_TOKEN", Encoding::Base32)];
        let padded = BASE32.encode(NPM_TOKEN.as_bytes());
        assert!(padded.ends_with('='), "36 bytes: padding expected");
        let unpadded = BASE32_NOPAD.encode(NPM_TOKEN.as_bytes());
        let hex_alphabet = BASE32HEX.encode(NPM_TOKEN.as_bytes());
        for encoded in [&padded, &unpadded, &hex_alphabet] {
            for text in [encoded.to_ascii_lowercase(), encoded.to_ascii_uppercase()] {
                let name = qname(&text, 63);
                assert_eq!(set.find_in_dns_name(&name), want, "{name}");
            }
        }
    }

    #[test]
    fn base64_in_dns_name_standard_and_url_safe() {
        let set = ci();
        for value in [SECRET_KEY, SIGNING_TOKEN] {
            let variable = if value == SECRET_KEY { "AWS_SECRET_ACCESS_KEY" } else { "SIGNING_TOKEN" };
            let want = vec![hit(variable, Encoding::Base64)];
            let standard = BASE64.encode(value.as_bytes());
            let url = BASE64URL.encode(value.as_bytes());
            let unpadded = BASE64URL_NOPAD.encode(value.as_bytes());
            for text in [&standard, &url, &unpadded] {
                assert_eq!(set.find_in_dns_name(&qname(text, 63)), want, "{text}");
                assert_eq!(set.find_in_dns_name(&qname(&text.to_ascii_lowercase(), 63)), want);
                assert_eq!(set.find_in_dns_name(&qname(&text.to_ascii_uppercase(), 63)), want);
            }
        }
        // The two alphabets really differ for this one.
        let standard = BASE64.encode(SIGNING_TOKEN.as_bytes());
        assert!(standard.contains('+') && standard.contains('/'));
    }

    #[test]
    fn split_across_labels_at_every_point() {
        let set = ci();
        let value = ACCESS_KEY.as_bytes();
        let forms = [
            (ACCESS_KEY.to_string(), Encoding::Raw),
            (HEXLOWER.encode(value), Encoding::Hex),
            (BASE32_NOPAD.encode(value), Encoding::Base32),
            (BASE64URL_NOPAD.encode(value), Encoding::Base64),
        ];
        for (text, encoding) in forms {
            let want = vec![hit("AWS_ACCESS_KEY_ID", encoding)];
            for i in 1..text.len() {
                let name = format!("{}.{}.evil.test", &text[..i], &text[i..]);
                assert_eq!(set.find_in_dns_name(&name), want, "{name}");
                for j in i + 1..text.len() {
                    let name = format!("{}.{}.{}.evil.test", &text[..i], &text[i..j], &text[j..]);
                    assert_eq!(set.find_in_dns_name(&name), want, "{name}");
                }
            }
        }
    }

    #[test]
    fn case_randomization_0x20() {
        let set = ci();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let value = NPM_TOKEN.as_bytes();
        let forms = [
            (NPM_TOKEN.to_string(), Encoding::Raw),
            (HEXLOWER.encode(value), Encoding::Hex),
            (BASE32.encode(value), Encoding::Base32),
            (BASE64URL.encode(value), Encoding::Base64),
        ];
        for (text, encoding) in forms {
            for _ in 0..50 {
                let name = randomize_case(&qname(&text, 40), &mut rng);
                let hits = set.find_in_dns_name(&name);
                assert_eq!(hits, vec![hit("NPM_TOKEN", encoding)], "{name}");
            }
        }
    }

    #[test]
    fn base64_and_base32_at_every_alignment() {
        let set = ci();
        for before in 0..7 {
            for after in 0..5 {
                let mut stream = vec![b'x'; before];
                stream.extend_from_slice(SECRET_KEY.as_bytes());
                stream.extend(std::iter::repeat_n(b'y', after));
                let b64 = BASE64URL.encode(&stream);
                let b32 = BASE32.encode(&stream);
                let want64 = vec![hit("AWS_SECRET_ACCESS_KEY", Encoding::Base64)];
                let want32 = vec![hit("AWS_SECRET_ACCESS_KEY", Encoding::Base32)];
                assert_eq!(set.find_in_dns_name(&qname(&b64.to_lowercase(), 63)), want64);
                assert_eq!(set.find_in_dns_name(&qname(&b32.to_lowercase(), 63)), want32);
                let payload = format!("data={}", BASE64.encode(&stream));
                assert_eq!(set.find_in_payload(payload.as_bytes()), want64, "{payload}");
                assert_eq!(set.find_in_payload(b32.as_bytes()), want32);
            }
        }
    }

    #[test]
    fn short_value_at_every_alignment() {
        // 8 bytes: the shortest protected value; its stable strings are shorter than a window.
        let set = SecretSet::new(&patterns(), env(&[("CI_PASSWORD", "Pa55w0rd")])).unwrap();
        for before in 0..6 {
            let mut stream = b"user:".to_vec();
            stream.truncate(before);
            stream.extend_from_slice(b"Pa55w0rd");
            let want64 = vec![hit("CI_PASSWORD", Encoding::Base64)];
            let want32 = vec![hit("CI_PASSWORD", Encoding::Base32)];
            assert_eq!(set.find_in_payload(BASE64.encode(&stream).as_bytes()), want64);
            assert_eq!(set.find_in_dns_name(&qname(&BASE64URL.encode(&stream), 63)), want64);
            assert_eq!(set.find_in_dns_name(&qname(&BASE32.encode(&stream), 63)), want32);
        }
        assert_eq!(set.find_in_dns_name("pa55w0rd.evil.test"), vec![hit("CI_PASSWORD", Encoding::Raw)]);
    }

    #[test]
    fn partial_chunks_are_detected() {
        let set = ci();
        let var = "AWS_SECRET_ACCESS_KEY";
        let value = SECRET_KEY.as_bytes();

        // Raw: 16 characters are enough, 15 are not.
        let chunk = &SECRET_KEY[10..10 + MIN_RAW_CHUNK];
        assert_eq!(set.find_in_dns_name(&format!("{chunk}.evil.test")), vec![hit(var, Encoding::Raw)]);
        assert_eq!(set.find_in_payload(chunk.as_bytes()), vec![hit(var, Encoding::Raw)]);
        let short = &SECRET_KEY[10..10 + MIN_RAW_CHUNK - 1];
        assert_eq!(set.find_in_dns_name(&format!("{short}.evil.test")), vec![]);
        assert_eq!(set.find_in_payload(short.as_bytes()), vec![]);

        // Hex: 16 digits starting at an odd digit.
        let hex = HEXLOWER.encode(value);
        let chunk = &hex[11..11 + MIN_HEX_CHUNK];
        assert_eq!(set.find_in_dns_name(&format!("{chunk}.evil.test")), vec![hit(var, Encoding::Hex)]);
        let short = &hex[11..11 + MIN_HEX_CHUNK - 1];
        assert_eq!(set.find_in_dns_name(&format!("{short}.evil.test")), vec![]);

        // Base32 / base64 of a slice of the value, encoded on its own.
        for start in 0..8 {
            let slice = &value[start..start + 20];
            let b32 = BASE32.encode(slice).to_lowercase();
            assert_eq!(set.find_in_dns_name(&qname(&b32, 63)), vec![hit(var, Encoding::Base32)]);
            let b64 = BASE64URL_NOPAD.encode(slice);
            assert_eq!(set.find_in_dns_name(&qname(&b64, 63)), vec![hit(var, Encoding::Base64)]);
            assert_eq!(set.find_in_payload(BASE64.encode(slice).as_bytes()), vec![hit(var, Encoding::Base64)]);
        }
        // Too little of it: 8 bytes of the value encode to 11-13 characters, below the windows.
        let b64 = BASE64URL_NOPAD.encode(&value[4..12]);
        assert_eq!(set.find_in_dns_name(&qname(&b64, 63)), vec![]);
    }

    #[test]
    fn split_across_queries() {
        let set = ci();
        let hex = HEXLOWER.encode(SECRET_KEY.as_bytes());
        for piece in hex.as_bytes().chunks(20) {
            let name = format!("{}.{}.evil.test", piece.len(), std::str::from_utf8(piece).unwrap());
            assert_eq!(set.find_in_dns_name(&name), vec![hit("AWS_SECRET_ACCESS_KEY", Encoding::Hex)], "{name}");
        }
        for piece in NPM_TOKEN.as_bytes().chunks(18) {
            let name = format!("{}.evil.test", std::str::from_utf8(piece).unwrap());
            assert_eq!(set.find_in_dns_name(&name), vec![hit("NPM_TOKEN", Encoding::Raw)], "{name}");
        }
    }

    // ----- payloads --------------------------------------------------------------------

    #[test]
    fn payload_url_encoded_form_body() {
        let set = ci();
        let body = "key=wJalrXUtnFEMI%2FK7MDENG%2fbPxRfiCYEXAMPLEKEY&pw=s3cr3t+pass%2Bword%21&x=1";
        let request = format!(
            "POST /collect HTTP/1.1\r\nHost: evil.test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(
            set.find_in_payload(request.as_bytes()),
            vec![hit("AWS_SECRET_ACCESS_KEY", Encoding::UrlEncoded), hit("DB_PASSWORD", Encoding::UrlEncoded)]
        );
        // In a query string too.
        let get = "GET /p?k=AKIAIOSFODNN7EXAMPLE%20 HTTP/1.1\r\n\r\n";
        assert_eq!(set.find_in_payload(get.as_bytes()), vec![hit("AWS_ACCESS_KEY_ID", Encoding::Raw)]);
        // Fully percent-encoded: no raw stretch survives.
        let encoded: String = ACCESS_KEY.bytes().map(|b| format!("%{b:02X}")).collect();
        assert_eq!(
            set.find_in_payload(format!("q={encoded}").as_bytes()),
            vec![hit("AWS_ACCESS_KEY_ID", Encoding::UrlEncoded)]
        );
    }

    #[test]
    fn payload_json_body() {
        let set = ci();
        let body = format!(r#"{{"id":"{ACCESS_KEY}","note":"hello"}}"#);
        let request = format!("POST /v1 HTTP/1.1\r\nHost: evil.test\r\nContent-Type: application/json\r\n\r\n{body}");
        assert_eq!(set.find_in_payload(request.as_bytes()), vec![hit("AWS_ACCESS_KEY_ID", Encoding::Raw)]);
    }

    #[test]
    fn payload_json_escaped_value() {
        // Every 16-character window of this value contains a '/', so only unescaping finds it.
        let value = "Ab1/Cd2/Ef3/Gh4/Ij5/Kl6";
        let set = SecretSet::new(&patterns(), env(&[("DEPLOY_TOKEN", value)])).unwrap();
        let escaped = value.replace('/', "\\/");
        let body = format!(r#"{{"t":"{escaped}"}}"#);
        assert_eq!(set.find_in_payload(body.as_bytes()), vec![hit("DEPLOY_TOKEN", Encoding::Raw)]);
        let unicode = value.replace('/', "\\u002F");
        assert_eq!(set.find_in_payload(unicode.as_bytes()), vec![hit("DEPLOY_TOKEN", Encoding::Raw)]);
        // Without the escapes resolved nothing would match: the escaped text is not the value.
        assert!(!body.contains(value));
    }

    #[test]
    fn payload_basic_authorization_header() {
        let set = ci();
        for user in ["u", "ci", "ci-bot", "deploy"] {
            let credentials = BASE64.encode(format!("{user}:{SECRET_KEY}").as_bytes());
            let request = format!("GET / HTTP/1.1\r\nHost: evil.test\r\nAuthorization: Basic {credentials}\r\n\r\n");
            assert_eq!(
                set.find_in_payload(request.as_bytes()),
                vec![hit("AWS_SECRET_ACCESS_KEY", Encoding::Base64)],
                "{request}"
            );
        }
    }

    #[test]
    fn payload_hex_base32_base64_forms() {
        let set = ci();
        let value = NPM_TOKEN.as_bytes();
        let cases = [
            (HEXLOWER.encode(value), Encoding::Hex),
            (HEXUPPER.encode(value), Encoding::Hex),
            (BASE32.encode(value), Encoding::Base32),
            (BASE64.encode(value), Encoding::Base64),
            (BASE64URL_NOPAD.encode(value), Encoding::Base64),
            (NPM_TOKEN.to_string(), Encoding::Raw),
        ];
        for (text, encoding) in cases {
            let payload = format!("PUT /x HTTP/1.1\r\n\r\nv={text}");
            assert_eq!(set.find_in_payload(payload.as_bytes()), vec![hit("NPM_TOKEN", encoding)], "{payload}");
        }
        // An 8-byte value: a single hex needle, with letters (no digit-only stretch shared by
        // both cases), so each case must be covered by its own needle.
        let set8 = SecretSet::new(&patterns(), env(&[("CI_PASSWORD", "JZjZ_Kok")])).unwrap();
        for hex in [HEXLOWER.encode(b"JZjZ_Kok"), HEXUPPER.encode(b"JZjZ_Kok")] {
            assert_eq!(
                set8.find_in_payload(format!("h={hex}").as_bytes()),
                vec![hit("CI_PASSWORD", Encoding::Hex)],
                "{hex}"
            );
        }
        // Base64 whose '+', '/', '=' were percent-encoded by a form encoder.
        for prefix in ["", "a", "ab"] {
            let b64 = BASE64.encode(&[prefix.as_bytes(), SIGNING_TOKEN.as_bytes()].concat());
            assert!(b64.contains('+') || b64.contains('/'), "{b64}");
            let form = b64.replace('+', "%2B").replace('/', "%2f").replace('=', "%3D");
            let hits = set.find_in_payload(format!("d={form}").as_bytes());
            assert_eq!(hits, vec![hit("SIGNING_TOKEN", Encoding::Base64)], "{form}");
        }
    }

    #[test]
    fn repeated_and_shared_values() {
        let set = SecretSet::new(
            &patterns(),
            env(&[
                ("A_TOKEN", ACCESS_KEY),
                ("B_TOKEN", ACCESS_KEY),
                ("C_TOKEN", "old-value-1234"),
                ("C_TOKEN", NPM_TOKEN),
            ]),
        )
        .unwrap();
        let payload = format!("{ACCESS_KEY} {ACCESS_KEY} {}", HEXLOWER.encode(ACCESS_KEY.as_bytes()));
        assert_eq!(
            set.find_in_payload(payload.as_bytes()),
            vec![
                hit("A_TOKEN", Encoding::Raw),
                hit("A_TOKEN", Encoding::Hex),
                hit("B_TOKEN", Encoding::Raw),
                hit("B_TOKEN", Encoding::Hex),
            ]
        );
        // Last value wins for a repeated name.
        assert_eq!(set.find_in_payload(b"old-value-1234"), vec![]);
        assert_eq!(set.find_in_payload(NPM_TOKEN.as_bytes()), vec![hit("C_TOKEN", Encoding::Raw)]);
    }

    // ----- negatives -------------------------------------------------------------------

    #[test]
    fn ordinary_build_traffic_does_not_match() {
        let set = ci();
        let names = [
            "registry.npm-mirror.test",
            "registry.yarnpkg.com",
            "py-mirror.test",
            "files.py-mirror.test",
            "github.com",
            "objects.githubusercontent.com",
            "codeload.github.com",
            "index.crate-mirror.test",
            "static.crate-mirror.test",
            "proxy.golang.org",
            "sum.golang.org",
            "deb.debian.org",
            "dl-cdn.alpinelinux.org",
            "sts.us-east-1.amazonaws.com",
            "my-bucket.s3.eu-west-1.amazonaws.com",
            "_http._tcp.deb.debian.org",
            "3f786850e387550fdab836ed7e6dc881de23001b.cdn.example.com",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855.blob.core.windows.net",
            "d41d8cd98f00b204e9800998ecf8427e.r.cloudfront.net",
            "1.0.0.127.in-addr.arpa",
        ];
        for name in names {
            assert_eq!(set.find_in_dns_name(name), vec![], "{name}");
            assert_eq!(set.find_in_dns_name(&name.to_uppercase()), vec![], "{name}");
        }
        let request = "GET /simple/requests/ HTTP/1.1\r\nHost: py-mirror.test\r\nUser-Agent: pip/24.0 CPython/3.12\r\n\
            Accept: text/html\r\nAuthorization: Bearer ghp_16C7e42F292c6912E7710c838347Ae178B4a\r\n\
            If-None-Match: \"3f786850e387550fdab836ed7e6dc881de23001b\"\r\n\r\n";
        assert_eq!(set.find_in_payload(request.as_bytes()), vec![]);
    }

    #[test]
    fn random_hex_and_base32_names_do_not_match() {
        let set = ci();
        let mut rng = Rng(42);
        for _ in 0..2000 {
            let bytes: Vec<u8> = (0..32).map(|_| rng.next() as u8).collect();
            let hex = HEXLOWER.encode(&bytes);
            assert_eq!(set.find_in_dns_name(&qname(&hex, 63)), vec![], "{hex}");
            let b32 = BASE32_NOPAD.encode(&bytes);
            assert_eq!(set.find_in_dns_name(&qname(&b32, 63)), vec![], "{b32}");
            let b64 = BASE64.encode(&bytes);
            assert_eq!(set.find_in_payload(b64.as_bytes()), vec![], "{b64}");
        }
    }

    #[test]
    fn word_like_fragments_of_a_url_value_do_not_match_ordinary_lookups() {
        let value = "https://registry.npm-mirror.test/some-private-feed";
        let set = SecretSet::new(&patterns(), env(&[("FEED_TOKEN", value)])).unwrap();
        // Its windows (e.g. "registrynpmmirrortest") would fire on every npm install...
        assert_eq!(set.find_in_dns_name("registry.npm-mirror.test"), vec![]);
        assert_eq!(set.find_in_payload(b"GET / HTTP/1.1\r\nHost: registry.npm-mirror.test\r\n\r\n"), vec![]);
        assert_eq!(set.find_in_payload(BASE64.encode(b"https://registry.npm-mirror.test/").as_bytes()), vec![]);
        // ...but the whole value is still protected.
        assert_eq!(set.find_in_payload(format!("url={value}").as_bytes()), vec![hit("FEED_TOKEN", Encoding::Raw)]);
        assert_eq!(
            set.find_in_dns_name(&qname(&HEXLOWER.encode(value.as_bytes()), 63)),
            vec![hit("FEED_TOKEN", Encoding::Hex)]
        );
    }

    #[test]
    fn short_and_empty_values_are_ignored() {
        let set = SecretSet::new(
            &patterns(),
            env(&[
                ("AWS_REGION", "eu-west"),
                ("GH_TOKEN", "hunter2"),
                ("EMPTY_TOKEN", ""),
                ("CI_PASSWORD", "Pa55w0rd"),
            ]),
        )
        .unwrap();
        assert_eq!(set.names(), vec!["CI_PASSWORD"]);
        assert_eq!(set.find_in_dns_name("eu-west.hunter2.evil.test"), vec![]);
        assert_eq!(set.find_in_payload(b"region=eu-west&token=hunter2"), vec![]);
        assert_eq!(set.find_in_payload(b"pw=Pa55w0rd"), vec![hit("CI_PASSWORD", Encoding::Raw)]);

        let empty = SecretSet::new(&patterns(), env(&[("GH_TOKEN", "hunter2")])).unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.len(), 0);
        assert_eq!(empty.find_in_dns_name("hunter2.evil.test"), vec![]);
        assert_eq!(empty.find_in_payload(b"hunter2"), vec![]);
        assert!(SecretSet::default().is_empty());
    }

    // ----- selection, redaction, debug -------------------------------------------------

    #[test]
    fn glob_patterns_select_exactly_the_right_variables() {
        let patterns = strings(&["AWS_*", "*_TOKEN", "*_PASSWORD", "!AWS_REGION", "!AWS_DEFAULT_*"]);
        let set = SecretSet::new(
            &patterns,
            env(&[
                ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
                ("AWS_SESSION_TOKEN", "FwoGZXIvYXdzEJr//////////wEaDG"),
                ("AWS_REGION", "us-east-1-long"),
                ("AWS_DEFAULT_REGION", "us-east-1-long"),
                ("GITHUB_TOKEN", "ghs_0123456789abcdefABCDEF"),
                ("DB_PASSWORD", DB_PASSWORD),
                ("aws_secret_access_key", "lowercase-name-123"),
                ("GITHUB_TOKEN_FILE", "/run/secrets/token"),
                ("TOKEN_URL", "https://example.test/token"),
                ("PASSWORD", "no-underscore-prefix"),
                ("PATH", "/usr/local/bin:/usr/bin:/bin"),
                ("HOME", "/home/runner"),
            ]),
        )
        .unwrap();
        assert_eq!(set.names(), vec!["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "DB_PASSWORD", "GITHUB_TOKEN"]);
        assert_eq!(set.len(), 4);
        assert!(!set.is_empty());
        // Unselected values are not searched for.
        assert_eq!(set.find_in_payload(b"lowercase-name-123 /run/secrets/token us-east-1-long"), vec![]);
        assert_eq!(set.find_in_payload(b"ghs_0123456789abcdefABCDEF"), vec![hit("GITHUB_TOKEN", Encoding::Raw)]);
        assert!(SecretSet::new(&strings(&["*"]), env(&[("PATH", "/usr/local/bin")])).unwrap().names() == vec!["PATH"]);
        assert!(SecretSet::new(&[], env(&[("AWS_SECRET_ACCESS_KEY", SECRET_KEY)])).unwrap().is_empty());
    }

    #[test]
    fn invalid_glob_is_an_error() {
        assert!(SecretSet::new(&strings(&["AWS_["]), env(&[])).is_err());
        assert!(SecretSet::new(&strings(&["!{A,"]), env(&[])).is_err());
    }

    #[test]
    fn redact_never_reveals_the_value() {
        assert_eq!(redact(ACCESS_KEY), "AK…(20 chars)");
        assert_eq!(redact("Pa55w0rd"), "…(8 chars)");
        assert_eq!(redact("abcdefghijk"), "…(11 chars)");
        assert_eq!(redact("abcdefghijkl"), "ab…(12 chars)");
        assert_eq!(redact("x"), "…(1 char)");
        assert_eq!(redact("ééééééééééééé"), "éé…(13 chars)");
        let tricky = ["(10 chars)", "K…(12 chars)", "…(11 chars)", "[redacted]", "a", "…", "ch"];
        for value in [SECRET_KEY, ACCESS_KEY, NPM_TOKEN, DB_PASSWORD, "Pa55w0rd"].into_iter().chain(tricky) {
            let redacted = redact(value);
            assert!(!redacted.contains(value), "{value:?} -> {redacted:?}");
            assert!(!redacted.is_empty());
        }
    }

    #[test]
    fn debug_never_shows_values() {
        let set = ci();
        let debug = format!("{set:?}");
        let pretty = format!("{set:#?}");
        assert!(debug.contains("AWS_SECRET_ACCESS_KEY") && debug.contains("NPM_TOKEN"), "{debug}");
        for value in [SECRET_KEY, ACCESS_KEY, NPM_TOKEN, DB_PASSWORD] {
            let bytes = value.as_bytes();
            let derived = [
                value.to_string(),
                value[..MIN_RAW_CHUNK.min(value.len())].to_string(),
                value.to_lowercase(),
                HEXLOWER.encode(bytes)[..MIN_HEX_CHUNK].to_string(),
                BASE64_NOPAD.encode(bytes)[..12].to_string(),
                BASE32_NOPAD.encode(bytes)[..12].to_lowercase(),
            ];
            for text in derived {
                assert!(!debug.contains(&text) && !pretty.contains(&text), "{text} in {debug}");
            }
        }
        let hit = set.find_in_payload(SECRET_KEY.as_bytes());
        assert!(!format!("{hit:?}").contains(SECRET_KEY));
    }

    #[test]
    fn protected_values_are_blanked_out_of_text() {
        let set = SecretSet::new(
            &["AWS_*".to_string(), "*_PASSWORD".to_string()],
            [
                ("AWS_ACCESS_KEY".to_string(), "AKIAEXAMPLEKEY123456".to_string()),
                ("DB_PASSWORD".to_string(), "hunter2-but-longer".to_string()),
            ],
        )
        .unwrap();
        assert_eq!(set.redact_values_in("curl -d k=nothing"), None);
        let out = set.redact_values_in("k=AKIAEXAMPLEKEY123456&p=hunter2-but-longer").unwrap();
        assert_eq!(out, "k=AK…(20 chars)&p=hu…(18 chars)");
        assert_eq!(set.redacted("DB_PASSWORD"), Some("hu…(18 chars)"));
        assert_eq!(set.redacted("HOME"), None);
        assert!(!format!("{set:?}").contains("hunter2"));
    }

    #[test]
    fn encoding_names() {
        let all = [Encoding::Raw, Encoding::Hex, Encoding::Base32, Encoding::Base64, Encoding::UrlEncoded];
        let names: Vec<&str> = all.iter().map(|e| e.as_str()).collect();
        assert_eq!(names, ["raw", "hex", "base32", "base64", "url"]);
        for e in all {
            assert_eq!(serde_json::to_string(&e).unwrap(), format!("\"{}\"", e.as_str()));
            assert_eq!(e.to_string(), e.as_str());
        }
        assert_eq!(
            serde_json::to_string(&hit("NPM_TOKEN", Encoding::UrlEncoded)).unwrap(),
            r#"{"variable":"NPM_TOKEN","encoding":"url"}"#
        );
    }

    // ----- internals -------------------------------------------------------------------

    #[test]
    fn long_values_get_strided_windows() {
        // A PEM-like 3 KiB value: needles are capped, chunks of window + stride - 1 still match.
        let mut rng = Rng(7);
        let body: Vec<u8> = (0..2250).map(|_| rng.next() as u8).collect();
        let value = format!("-----BEGIN KEY-----\n{}\n-----END KEY-----", BASE64.encode(&body));
        let set = SecretSet::new(&patterns(), env(&[("SSH_PASSWORD", value.as_str())])).unwrap();
        let forms_per_value = 1 + 1 + 5 * 2 + 3 * 2; // dns: raw, hex, base32 x2, base64 x2
        assert!(set.dns.owners.len() <= forms_per_value * (MAX_WINDOWS_PER_FORM + 1), "{}", set.dns.owners.len());

        let count = value.len() - MIN_RAW_CHUNK + 1;
        let stride = count.div_ceil(MAX_WINDOWS_PER_FORM);
        assert!(stride > 1);
        let chunk_len = MIN_RAW_CHUNK + stride - 1;
        for start in [100, 101, 1001, 2000, value.len() - chunk_len - 10] {
            let chunk = &value[start..start + chunk_len];
            assert_eq!(set.find_in_payload(chunk.as_bytes()), vec![hit("SSH_PASSWORD", Encoding::Raw)], "{start}");
        }
        // The whole value is beyond MAX_FULL_NEEDLE_LEN, yet found through its windows.
        assert_eq!(set.find_in_payload(value.as_bytes()), vec![hit("SSH_PASSWORD", Encoding::Raw)]);
    }

    #[test]
    fn stable_strings_exclude_neighbour_dependent_characters() {
        let mut table = NeedleTable::default();
        // "abcdefgh" behind one prefix byte: bits 8..72, characters 2..12 of base64(0 + value).
        let text = BASE64_NOPAD.encode(b"\x00abcdefgh");
        table.add_form(0, Encoding::Base64, Form::aligned(&text, b"abcdefgh", 6, 1, MIN_BASE64_CHUNK));
        assert_eq!(table.needles, vec![text.as_bytes()[2..12].to_vec()]);
        // The same characters appear whatever surrounds the value.
        for (before, after) in [(b"Z", b"".as_slice()), (b"\xff", b"\xff\xff"), (b"q", b"r")] {
            let other = BASE64_NOPAD.encode(&[before.as_slice(), b"abcdefgh", after].concat());
            assert!(other.contains(std::str::from_utf8(&table.needles[0]).unwrap()), "{other}");
        }
    }

    #[test]
    fn distinctive_fragments() {
        assert!(is_distinctive(b"FEMI/K7MDENG/bPx"));
        assert!(is_distinctive(b"hunter2hunter"));
        assert!(!is_distinctive(b"registry.npm-mir"));
        assert!(!is_distinctive(b"0000000000000000"));
        assert!(!is_distinctive(b"AbAbAbAbAbAbAbAb"));
    }

    #[test]
    fn decoders() {
        let view = percent_decode(b"a%2Fb+c%zz%4");
        assert_eq!(view.bytes, b"a/b c%zz%4");
        assert!(view.escaped_in(0, 2) && view.escaped_in(3, 4) && !view.escaped_in(4, 10));
        let view = json_unescape(br#"\"\\\/\n\u0041\ud83d\ude00\x\u12"#);
        assert_eq!(view.bytes, "\"\\/\nA😀\\x\\u12".as_bytes());
        assert!(!json_unescape(b"plain").any_escaped());
    }

    #[test]
    fn naive_fallback_agrees_with_the_automaton() {
        let mut table = NeedleTable::default();
        add_variable(&mut table, &mut NeedleTable::default(), 0, SECRET_KEY.as_bytes());
        add_variable(&mut table, &mut NeedleTable::default(), 1, NPM_TOKEN.as_bytes());
        let naive =
            Matcher { searcher: Searcher::Naive(table.needles.clone()), longest: 0, owners: table.owners.clone() };
        let automaton = table.build();
        assert!(matches!(automaton.searcher, Searcher::Automaton(_)));
        let haystacks = [
            qname(&HEXLOWER.encode(SECRET_KEY.as_bytes()), 63).replace('.', ""),
            BASE32_NOPAD.encode(NPM_TOKEN.as_bytes()).to_lowercase(),
            "nothing to see here".to_string(),
        ];
        for haystack in haystacks {
            let collect = |m: &Matcher| {
                let mut found = Vec::new();
                m.for_each_match(haystack.as_bytes(), |owners, s, e| found.push((owners.to_vec(), s, e)));
                found.sort();
                found
            };
            assert_eq!(collect(&naive), collect(&automaton), "{haystack}");
        }
    }
}
