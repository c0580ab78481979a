//! The policy file format, version 1: document types and their validating deserializers.
//!
//! Every value that can be wrong on its own (a CIDR, a glob, a port range, a registry name...)
//! is a type whose `Deserialize` impl parses the value *inside* a serde visitor. serde_yaml
//! attaches the position of the YAML node being visited to any error raised there, which is
//! what gives `FILE:LINE:COLUMN` for semantic errors. Checks that need several keys (an
//! `egress.allow` entry with both `ip` and `cidr`) are done while visiting the mapping, so they
//! are located too.
//!
//! Derived serde structs also accept a YAML *sequence* (fields by position). Sections are
//! therefore deserialized through [`mapping`], which only accepts a mapping (or an empty
//! value, meaning "all defaults").

use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::str::FromStr;

use globset::{Glob, GlobBuilder};
use ipnet::IpNet;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use super::error::ValueError;

/// The only format version this watcher understands.
pub const FORMAT_VERSION: u32 = 1;

/// Secret env var name globs used when a policy has no `secrets.env`.
pub const DEFAULT_SECRET_ENV: &[&str] = &["AWS_*", "*_TOKEN", "*_PASSWORD", "*_SECRET", "*_KEY"];

/// Error of the `FromStr` impls of the small enums ([`Mode`], [`PackageManager`], ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseNameError(String);

/// What happens when an event is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Report only.
    #[default]
    Audit,
    /// Report and block.
    Enforce,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Audit => "audit",
            Mode::Enforce => "enforce",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = ParseNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "audit" => Ok(Mode::Audit),
            "enforce" => Ok(Mode::Enforce),
            _ => Err(ParseNameError(format!("mode must be audit or enforce, found {s:?}"))),
        }
    }
}

/// A package manager whose configured registry hosts `egress.registries` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PackageManager {
    /// The npm registry as configured for every JavaScript package manager present.
    Npm,
    /// The Python package index as configured for pip, uv and poetry (those present).
    Pip,
    Cargo,
    Pnpm,
    Yarn,
    Bun,
    Uv,
    Poetry,
}

impl PackageManager {
    pub const ALL: [PackageManager; 8] = [
        PackageManager::Npm,
        PackageManager::Pnpm,
        PackageManager::Yarn,
        PackageManager::Bun,
        PackageManager::Pip,
        PackageManager::Uv,
        PackageManager::Poetry,
        PackageManager::Cargo,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PackageManager::Npm => "npm",
            PackageManager::Pip => "pip",
            PackageManager::Cargo => "cargo",
            PackageManager::Pnpm => "pnpm",
            PackageManager::Yarn => "yarn",
            PackageManager::Bun => "bun",
            PackageManager::Uv => "uv",
            PackageManager::Poetry => "poetry",
        }
    }
}

impl fmt::Display for PackageManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PackageManager {
    type Err = ParseNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "npm" => Ok(PackageManager::Npm),
            "pip" => Ok(PackageManager::Pip),
            "cargo" => Ok(PackageManager::Cargo),
            "pnpm" => Ok(PackageManager::Pnpm),
            "yarn" => Ok(PackageManager::Yarn),
            "bun" => Ok(PackageManager::Bun),
            "uv" => Ok(PackageManager::Uv),
            "poetry" => Ok(PackageManager::Poetry),
            _ => Err(ParseNameError(format!(
                "unknown registry {s:?}, expected one of npm, pnpm, yarn, bun, pip, uv, poetry, cargo"
            ))),
        }
    }
}

/// May an install script (npm lifecycle script, pip build, cargo build.rs) spawn a shell?
/// See `shell_rule.rs` for the cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShellPolicy {
    /// Only shells that look like attacks are denied (reverse shells, `curl | sh`, copied
    /// shells, memfd shells, interactive shells, `sh -c` running a denied program).
    #[default]
    Suspicious,
    /// Strict: every shell an install script starts is denied (wrapper scripts excepted).
    Deny,
    /// No shell rule.
    Allow,
}

impl ShellPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ShellPolicy::Suspicious => "suspicious",
            ShellPolicy::Deny => "deny",
            ShellPolicy::Allow => "allow",
        }
    }
}

impl FromStr for ShellPolicy {
    type Err = ParseNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "suspicious" => Ok(ShellPolicy::Suspicious),
            "deny" => Ok(ShellPolicy::Deny),
            "allow" => Ok(ShellPolicy::Allow),
            _ => Err(ParseNameError(format!("shells must be suspicious, deny or allow, found {s:?}"))),
        }
    }
}

/// An allowed DNS resolver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// The nameservers of /etc/resolv.conf at run time.
    System,
    Ip(IpAddr),
}

impl FromStr for Resolver {
    type Err = ParseNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "system" {
            return Ok(Resolver::System);
        }
        s.parse::<IpAddr>()
            .map(Resolver::Ip)
            .map_err(|_| ParseNameError(format!("invalid resolver {s:?}: expected \"system\" or an IPv4/IPv6 address")))
    }
}

impl fmt::Display for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resolver::System => f.write_str("system"),
            Resolver::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// An inclusive port range; a single port is `start == end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn contains(self, port: u16) -> bool {
        self.start <= port && port <= self.end
    }

    fn port(text: &str, whole: &str) -> Result<u16, ValueError> {
        match text.trim().parse::<u32>() {
            Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
            Ok(_) => Err(ValueError::PortOutOfRange(whole.to_string())),
            Err(_) => Err(ValueError::PortNotANumber(whole.to_string())),
        }
    }
}

impl FromStr for PortRange {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        match s.split_once('-') {
            None => {
                let p = PortRange::port(s, s)?;
                Ok(PortRange { start: p, end: p })
            }
            Some((a, b)) => {
                let (start, end) = (PortRange::port(a, s)?, PortRange::port(b, s)?);
                if start > end {
                    return Err(ValueError::PortRangeReversed { text: s.to_string(), start, end });
                }
                Ok(PortRange { start, end })
            }
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end { write!(f, "{}", self.start) } else { write!(f, "{}-{}", self.start, self.end) }
    }
}

fn glob_error(text: &str, err: &globset::Error) -> ValueError {
    ValueError::Glob { text: text.to_string(), kind: err.kind().clone() }
}

/// A host name or host-name glob (`egress.allow[].host`, `dns.allow[]`), stored lowercased
/// without a trailing dot and matched case-insensitively. `*` also matches dots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    text: String,
    glob: Glob,
}

impl HostPattern {
    /// `what` names the field in messages ("host", "DNS name").
    pub fn parse(s: &str, what: &'static str) -> Result<Self, ValueError> {
        if s.is_empty() {
            return Err(ValueError::Empty(what));
        }
        if s.contains("://") {
            return Err(ValueError::HostIsUrl { what, text: s.to_string() });
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Err(ValueError::HostIsIp { what, text: s.to_string(), ip });
        }
        if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || "-._*?[]{},!^".contains(*c))) {
            let hint = match c {
                ':' => " (put ports under `ports:`)",
                '/' => " (a host name has no path)",
                _ => "",
            };
            return Err(ValueError::HostCharacter { what, text: s.to_string(), c, hint });
        }
        let mut text = s.to_ascii_lowercase();
        if text.len() > 1 && text.ends_with('.') {
            text.pop();
        }
        let glob = GlobBuilder::new(&text)
            .case_insensitive(true)
            .literal_separator(false)
            .build()
            .map_err(|e| glob_error(s, &e))?;
        Ok(HostPattern { text, glob })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub(crate) fn glob(&self) -> &Glob {
        &self.glob
    }
}

/// An executable glob (`exec.deny[]`, `exec.allow[]`): case-sensitive, `*` does not cross `/`,
/// `**` does. Matched against the full path and the basename.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecPattern {
    text: String,
    glob: Glob,
}

impl ExecPattern {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        if s.is_empty() {
            return Err(ValueError::Empty("executable pattern"));
        }
        let glob = GlobBuilder::new(s).literal_separator(true).build().map_err(|e| glob_error(s, &e))?;
        Ok(ExecPattern { text: s.to_string(), glob })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub(crate) fn glob(&self) -> &Glob {
        &self.glob
    }
}

/// A temporary directory (`exec.temp_dirs[]`): an absolute path, no glob, no trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TempDirPath(String);

impl TempDirPath {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        if !s.starts_with('/') {
            return Err(ValueError::TempDirRelative(s.to_string()));
        }
        if s.contains(['*', '?', '[', '{']) || s.chars().any(char::is_control) {
            return Err(ValueError::TempDirGlob(s.to_string()));
        }
        let t = s.trim_end_matches('/');
        if t.is_empty() {
            return Err(ValueError::TempDirRoot);
        }
        Ok(TempDirPath(t.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `path` lies below this directory.
    pub fn contains(&self, path: &str) -> bool {
        path.len() > self.0.len() + 1 && path.starts_with(&self.0) && path.as_bytes()[self.0.len()] == b'/'
    }
}

/// An environment variable NAME glob (`secrets.env[]`), matched case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvPattern {
    text: String,
    glob: Glob,
}

impl EnvPattern {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        if s.is_empty() {
            return Err(ValueError::Empty("env var name pattern"));
        }
        if s.contains('=') {
            return Err(ValueError::EnvNameEquals(s.to_string()));
        }
        let glob = GlobBuilder::new(s).case_insensitive(true).build().map_err(|e| glob_error(s, &e))?;
        Ok(EnvPattern { text: s.to_string(), glob })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub(crate) fn glob(&self) -> &Glob {
        &self.glob
    }
}

/// What an `egress.allow` entry allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Host(HostPattern),
    Ip(IpAddr),
    Cidr(IpNet),
}

/// One `egress.allow` entry. `ports: None` means any port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    pub target: Target,
    pub ports: Option<Vec<PortRange>>,
}

impl AllowEntry {
    /// Whether `port` is allowed by this entry's `ports`.
    pub fn port_allowed(&self, port: u16) -> bool {
        ports_allow(self.ports.as_deref(), port)
    }
}

pub(crate) fn ports_allow(ports: Option<&[PortRange]>, port: u16) -> bool {
    match ports {
        None => true,
        Some(ranges) => ranges.iter().any(|r| r.contains(port)),
    }
}

/// The whole policy document, validated, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(deserialize_with = "version")]
    pub version: u32,
    #[serde(deserialize_with = "pipeline_name")]
    pub pipeline: String,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default, deserialize_with = "mapping")]
    pub egress: EgressSpec,
    #[serde(default, deserialize_with = "mapping")]
    pub dns: DnsSpec,
    #[serde(default, deserialize_with = "mapping")]
    pub exec: ExecSpec,
    #[serde(default, deserialize_with = "mapping")]
    pub secrets: SecretsSpec,
    #[serde(default, deserialize_with = "mapping")]
    pub files: super::files::FilesSpec,
    /// Per-package rules, matched by the package an install script is attributed to; the
    /// first matching entry wins.
    #[serde(default)]
    pub packages: Vec<PackageRule>,
}

/// One `packages[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PackageRule {
    /// Package name glob (`better-sqlite3`, `@scope/*`, `*-sys`), case-sensitive.
    pub name: PackageGlob,
    /// Only packages of this manager (default: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<PackageManager>,
    /// `exec.install_scripts.shells` for this package's install scripts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shells: Option<ShellPolicy>,
    /// The file sensor's lists for this package's install scripts (see `crate::files`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<super::files::FilesSpec>,
}

/// A package name glob (`packages[].name`): `*` matches any run of characters, `/` included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageGlob {
    text: String,
    glob: Glob,
}

impl PackageGlob {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        if s.is_empty() {
            return Err(ValueError::Empty("a package name pattern"));
        }
        if let Some(c) = s.chars().find(|c| c.is_control() || c.is_whitespace()) {
            return Err(ValueError::PackageCharacter { text: s.to_string(), c });
        }
        let glob = GlobBuilder::new(s).literal_separator(false).build().map_err(|e| glob_error(s, &e))?;
        Ok(PackageGlob { text: s.to_string(), glob })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, name: &str) -> bool {
        self.glob.compile_matcher().is_match(name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct EgressSpec {
    pub registries: Vec<PackageManager>,
    #[serde(deserialize_with = "at_most::<_, _, MAX_ALLOW>")]
    pub allow: Vec<AllowEntry>,
    pub loopback: bool,
    /// Forward proxies the step may use (`IP:PORT`): reachable, and every request sent through
    /// one is judged by its target (`CONNECT host:port`, an absolute URI's host, `Host`).
    #[serde(deserialize_with = "at_most::<_, _, MAX_PROXIES>", skip_serializing_if = "Vec::is_empty")]
    pub proxies: Vec<std::net::SocketAddr>,
    /// Local deputies' unix sockets beyond the built-in list, and built-in ones this build
    /// really needs (see [`crate::policy::DEPUTY_SOCKETS`]).
    #[serde(skip_serializing_if = "DeputiesSpec::is_empty")]
    pub deputies: DeputiesSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DeputiesSpec {
    /// More sockets (absolute paths, or `@name` for an abstract socket).
    #[serde(deserialize_with = "at_most::<_, _, MAX_DEPUTY_ENTRIES>")]
    pub add: Vec<String>,
    /// Built-in sockets that are not deputies for this pipeline.
    #[serde(deserialize_with = "at_most::<_, _, MAX_DEPUTY_ENTRIES>")]
    pub remove: Vec<String>,
}

impl DeputiesSpec {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// At most this many `egress.deputies.add` (and `.remove`) entries.
pub const MAX_DEPUTY_ENTRIES: usize = 64;

/// At most this many `egress.proxies`.
pub const MAX_PROXIES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSpec {
    pub resolvers: Vec<Resolver>,
    #[serde(deserialize_with = "dns_names")]
    pub allow: Vec<HostPattern>,
}

impl Default for DnsSpec {
    fn default() -> Self {
        DnsSpec { resolvers: vec![Resolver::System], allow: Vec::new() }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecSpec {
    #[serde(deserialize_with = "at_most::<_, _, MAX_EXEC>")]
    pub deny: Vec<ExecPattern>,
    #[serde(deserialize_with = "at_most::<_, _, MAX_EXEC>")]
    pub allow: Vec<ExecPattern>,
    /// Temporary directories: an executable run from one of them is denied unless it lies in
    /// the step's working tree or a package manager's install tree (a dropper, not a
    /// checkout under /tmp).
    pub temp_dirs: Vec<TempDirPath>,
    #[serde(deserialize_with = "mapping")]
    pub install_scripts: InstallScriptsSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstallScriptsSpec {
    pub shells: ShellPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsSpec {
    #[serde(deserialize_with = "at_most::<_, _, MAX_EXEC>")]
    pub env: Vec<EnvPattern>,
}

impl Default for SecretsSpec {
    fn default() -> Self {
        SecretsSpec {
            env: DEFAULT_SECRET_ENV
                .iter()
                .map(|p| EnvPattern::parse(p).expect("built-in secret patterns are valid globs"))
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Deserialization helpers

/// Deserializes the top-level document: a mapping only; an empty document is reported by the
/// caller before this runs.
pub(crate) fn document<'de, D: Deserializer<'de>>(d: D) -> Result<PolicySpec, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = PolicySpec;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a policy mapping with at least `version: 1` and `pipeline: NAME`")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<PolicySpec, A::Error> {
            PolicySpec::deserialize(MapAccessDeserializer::new(UniqueKeys::new(map)))
        }
    }
    d.deserialize_map(V)
}

/// A section: a mapping, or an empty value (`egress:` with nothing after it) for all defaults.
/// Rejects the sequence form that derived struct impls would otherwise accept.
fn mapping<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    struct V<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de> + Default> Visitor<'de> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a mapping")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(MapAccessDeserializer::new(UniqueKeys::new(map)))
        }
        fn visit_unit<E: de::Error>(self) -> Result<T, E> {
            Ok(T::default())
        }
    }
    d.deserialize_map(V(PhantomData))
}

/// A `MapAccess` that rejects a repeated key while the key is being read, so the error carries
/// the key's position (derived structs only notice duplicates after the fact, and the error
/// would point at the start of the mapping).
struct UniqueKeys<A> {
    inner: A,
    seen: Vec<String>,
}

impl<A> UniqueKeys<A> {
    fn new(inner: A) -> Self {
        UniqueKeys { inner, seen: Vec::new() }
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for UniqueKeys<A> {
    type Error = A::Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        self.inner.next_key_seed(UniqueKeySeed { seed, seen: &mut self.seen })
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.inner.next_value_seed(seed)
    }
    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

struct UniqueKeySeed<'s, K> {
    seed: K,
    seen: &'s mut Vec<String>,
}

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for UniqueKeySeed<'_, K> {
    type Value = K::Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<K::Value, D::Error> {
        self.seed.deserialize(UniqueKeyDeserializer { inner: d, seen: self.seen })
    }
}

/// Wraps the key's deserializer so that the key's visitor checks for repeats first.
struct UniqueKeyDeserializer<'s, D> {
    inner: D,
    seen: &'s mut Vec<String>,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for UniqueKeyDeserializer<'_, D> {
    type Error = D::Error;
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_any(UniqueKeyVisitor { inner: visitor, seen: self.seen })
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_identifier(UniqueKeyVisitor { inner: visitor, seen: self.seen })
    }
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_str(UniqueKeyVisitor { inner: visitor, seen: self.seen })
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_string(UniqueKeyVisitor { inner: visitor, seen: self.seen })
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map struct enum ignored_any
    }
}

struct UniqueKeyVisitor<'s, V> {
    inner: V,
    seen: &'s mut Vec<String>,
}

impl<V> UniqueKeyVisitor<'_, V> {
    fn check<E: de::Error>(&mut self, key: &str) -> Result<(), E> {
        if self.seen.iter().any(|k| k == key) {
            return Err(E::custom(format_args!("duplicate field `{key}`")));
        }
        self.seen.push(key.to_string());
        Ok(())
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for UniqueKeyVisitor<'_, V> {
    type Value = V::Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }
    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<V::Value, E> {
        self.check(v)?;
        self.inner.visit_str(v)
    }
    fn visit_borrowed_str<E: de::Error>(mut self, v: &'de str) -> Result<V::Value, E> {
        self.check(v)?;
        self.inner.visit_borrowed_str(v)
    }
    fn visit_string<E: de::Error>(mut self, v: String) -> Result<V::Value, E> {
        self.check(&v)?;
        self.inner.visit_string(v)
    }
    // Non-string keys are not field names; the inner visitor reports them.
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<V::Value, E> {
        self.inner.visit_bool(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<V::Value, E> {
        self.inner.visit_i64(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<V::Value, E> {
        self.inner.visit_u64(v)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<V::Value, E> {
        self.inner.visit_f64(v)
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<V::Value, E> {
        self.inner.visit_bytes(v)
    }
    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }
    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }
    fn visit_seq<S: SeqAccess<'de>>(self, seq: S) -> Result<V::Value, S::Error> {
        self.inner.visit_seq(seq)
    }
    fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<V::Value, M::Error> {
        self.inner.visit_map(map)
    }
}

/// Visits a string and parses it; the error is raised inside the visitor, hence located.
struct ParseStr<T> {
    expecting: &'static str,
    parse: fn(&str) -> Result<T, ValueError>,
}

impl<'de, T> Visitor<'de> for ParseStr<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
}

fn parse_str<'de, D: Deserializer<'de>, T>(
    d: D,
    expecting: &'static str,
    parse: fn(&str) -> Result<T, ValueError>,
) -> Result<T, D::Error> {
    d.deserialize_str(ParseStr { expecting, parse })
}

fn version<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = u32;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("the format version number 1")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
            if v == u64::from(FORMAT_VERSION) {
                Ok(FORMAT_VERSION)
            } else {
                Err(E::custom(format!(
                    "unsupported policy version {v}: this watcher only understands version {FORMAT_VERSION}"
                )))
            }
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
            match u64::try_from(v) {
                Ok(v) => self.visit_u64(v),
                Err(_) => Err(E::custom(format!(
                    "unsupported policy version {v}: this watcher only understands version {FORMAT_VERSION}"
                ))),
            }
        }
    }
    d.deserialize_u32(V)
}

fn pipeline_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    parse_str(d, "a pipeline name", |s| {
        if s.trim().is_empty() {
            Err(ValueError::PipelineEmpty)
        } else if s.chars().any(char::is_control) {
            Err(ValueError::PipelineControl(s.to_string()))
        } else if s.len() > 200 {
            Err(ValueError::PipelineTooLong)
        } else {
            Ok(s.to_string())
        }
    })
}

fn dns_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<HostPattern>, D::Error> {
    struct Name(HostPattern);
    impl<'de> Deserialize<'de> for Name {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            parse_str(d, "a DNS name or glob", |s| HostPattern::parse(s, "DNS name")).map(Name)
        }
    }
    Ok(at_most::<_, Name, MAX_ALLOW>(d)?.into_iter().map(|n| n.0).collect())
}

/// At most this many `egress.allow` entries, and as many `dns.allow` names (README, Bounds):
/// every host pattern becomes part of one compiled matcher, whose size is bounded.
pub const MAX_ALLOW: usize = 2048;
/// At most this many `exec.deny`, `exec.allow` and `secrets.env` patterns each.
pub const MAX_EXEC: usize = 1024;

/// A list of at most `N` entries: the error names the limit at the entry past it.
fn at_most<'de, D: Deserializer<'de>, T: Deserialize<'de>, const N: usize>(d: D) -> Result<Vec<T>, D::Error> {
    struct V<T, const N: usize>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for V<T, N> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of at most {N} entries")
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(x) = seq.next_element()? {
                if out.len() == N {
                    return Err(de::Error::custom(format!(
                        "more than {N} entries in this list (the limit, see README \"Bounds\")"
                    )));
                }
                out.push(x);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V::<T, N>(PhantomData))
}

macro_rules! str_deserialize {
    ($ty:ty, $expecting:literal, $parse:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                parse_str(d, $expecting, $parse)
            }
        }
    };
}

str_deserialize!(Mode, "audit or enforce", |s| s.parse().map_err(ValueError::Name));
str_deserialize!(PackageManager, "a package manager name: npm, pip or cargo", |s| s.parse().map_err(ValueError::Name));
str_deserialize!(ShellPolicy, "suspicious, deny or allow", |s| s.parse().map_err(ValueError::Name));
str_deserialize!(Resolver, "\"system\" or a resolver IP address", |s| s.parse().map_err(ValueError::Name));
str_deserialize!(ExecPattern, "an executable path or name glob", ExecPattern::parse);
str_deserialize!(EnvPattern, "an environment variable name glob", EnvPattern::parse);
str_deserialize!(TempDirPath, "an absolute directory path", TempDirPath::parse);
str_deserialize!(PackageGlob, "a package name or glob", PackageGlob::parse);

fn parse_ip(s: &str) -> Result<IpAddr, ValueError> {
    s.parse::<IpAddr>().map_err(|err| {
        let text = s.to_string();
        if s.contains('/') { ValueError::IpIsNetwork { text, err } } else { ValueError::Ip { text, err } }
    })
}

fn parse_cidr(s: &str) -> Result<IpNet, ValueError> {
    s.parse::<IpNet>().map(|n| n.trunc()).map_err(|err| {
        let text = s.to_string();
        if s.parse::<IpAddr>().is_ok() {
            ValueError::CidrWithoutPrefix { text, err }
        } else {
            ValueError::Cidr { text, err }
        }
    })
}

/// One element of `ports`: a number or a `"first-last"` string.
impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a port range \"first-last\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortRange, E> {
                match u16::try_from(v) {
                    Ok(p) if p != 0 => Ok(PortRange { start: p, end: p }),
                    _ => Err(E::custom(format!("invalid port {v}: ports are 1-65535"))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRange, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("invalid port {v}: ports are 1-65535"))),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRange, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// `ports`: a non-empty list.
fn port_list<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Vec<PortRange>, A::Error> {
    struct Seed;
    impl<'de> DeserializeSeed<'de> for Seed {
        type Value = Vec<PortRange>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de> Visitor<'de> for Seed {
        type Value = Vec<PortRange>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of ports, e.g. [443, 8000-8100]")
        }
        fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
            let mut out = Vec::new();
            while let Some(p) = seq.next_element::<PortRange>()? {
                out.push(p);
            }
            if out.is_empty() {
                return Err(de::Error::custom("ports must not be empty (leave `ports` out to allow any port)"));
            }
            Ok(out)
        }
    }
    map.next_value_seed(Seed)
}

const ENTRY_FIELDS: &[&str] = &["host", "ip", "cidr", "ports"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum EntryKey {
    Host,
    Ip,
    Cidr,
    Ports,
}

impl EntryKey {
    fn name(self) -> &'static str {
        ENTRY_FIELDS[self as usize]
    }
}

/// Reads an entry key; rejects unknown, duplicate and conflicting keys *at the key*.
struct EntryKeySeed {
    target: Option<EntryKey>,
    ports_seen: bool,
}

impl<'de> DeserializeSeed<'de> for EntryKeySeed {
    type Value = EntryKey;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<EntryKey, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for EntryKeySeed {
    type Value = EntryKey;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("one of `host`, `ip`, `cidr`, `ports`")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<EntryKey, E> {
        let key = match v {
            "host" => EntryKey::Host,
            "ip" => EntryKey::Ip,
            "cidr" => EntryKey::Cidr,
            "ports" => EntryKey::Ports,
            _ => return Err(E::unknown_field(v, ENTRY_FIELDS)),
        };
        if key == EntryKey::Ports {
            if self.ports_seen {
                return Err(E::duplicate_field("ports"));
            }
        } else if let Some(prev) = self.target {
            if prev == key {
                return Err(E::duplicate_field(key.name()));
            }
            return Err(E::custom(format!(
                "an egress.allow entry has both `{}` and `{}`; each entry takes exactly one of `host`, `ip`, `cidr` (write one entry per destination)",
                prev.name(),
                key.name()
            )));
        }
        Ok(key)
    }
}

impl<'de> Deserialize<'de> for AllowEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AllowEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an egress.allow entry: a mapping with one of `host`, `ip`, `cidr` and optional `ports`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AllowEntry, A::Error> {
                let mut target: Option<(EntryKey, Target)> = None;
                let mut ports = None;
                while let Some(key) = map
                    .next_key_seed(EntryKeySeed { target: target.as_ref().map(|t| t.0), ports_seen: ports.is_some() })?
                {
                    let t = match key {
                        EntryKey::Ports => {
                            ports = Some(port_list(&mut map)?);
                            continue;
                        }
                        EntryKey::Host => Target::Host(map.next_value_seed(StrSeed {
                            expecting: "a host name or glob",
                            parse: |s| HostPattern::parse(s, "host"),
                        })?),
                        EntryKey::Ip => Target::Ip(
                            map.next_value_seed(StrSeed { expecting: "an IPv4 or IPv6 address", parse: parse_ip })?,
                        ),
                        EntryKey::Cidr => Target::Cidr(map.next_value_seed(StrSeed {
                            expecting: "an IPv4 or IPv6 network in CIDR notation",
                            parse: parse_cidr,
                        })?),
                    };
                    target = Some((key, t));
                }
                match target {
                    Some((_, target)) => Ok(AllowEntry { target, ports }),
                    None => Err(de::Error::custom("an egress.allow entry needs exactly one of `host`, `ip` or `cidr`")),
                }
            }
        }
        d.deserialize_map(V)
    }
}

struct StrSeed<T> {
    expecting: &'static str,
    parse: fn(&str) -> Result<T, ValueError>,
}

impl<'de, T> DeserializeSeed<'de> for StrSeed<T> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        parse_str(d, self.expecting, self.parse)
    }
}

// ---------------------------------------------------------------------------------------------
// Serialization (for `Policy::to_yaml`): the canonical text of each value.

macro_rules! display_serialize {
    ($($ty:ty => $conv:expr),* $(,)?) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                #[allow(clippy::redundant_closure_call)]
                s.serialize_str(&($conv)(self))
            }
        }
    )*};
}

display_serialize!(
    Mode => |m: &Mode| m.as_str().to_string(),
    PackageManager => |p: &PackageManager| p.as_str().to_string(),
    ShellPolicy => |p: &ShellPolicy| p.as_str().to_string(),
    Resolver => |r: &Resolver| r.to_string(),
    HostPattern => |h: &HostPattern| h.text.clone(),
    ExecPattern => |p: &ExecPattern| p.text.clone(),
    EnvPattern => |p: &EnvPattern| p.text.clone(),
    TempDirPath => |p: &TempDirPath| p.0.clone(),
    PackageGlob => |p: &PackageGlob| p.text.clone(),
);

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.start == self.end { s.serialize_u16(self.start) } else { s.serialize_str(&self.to_string()) }
    }
}

impl Serialize for AllowEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match &self.target {
            Target::Host(h) => m.serialize_entry("host", h)?,
            Target::Ip(ip) => m.serialize_entry("ip", &ip.to_string())?,
            Target::Cidr(net) => m.serialize_entry("cidr", &net.to_string())?,
        }
        if let Some(ports) = &self.ports {
            m.serialize_entry("ports", ports)?;
        }
        m.end()
    }
}
