//! Parser and matcher tests.

use std::net::IpAddr;
use std::path::Path;

use super::schema::{PortRange, Resolver, ShellPolicy, Target};
use super::*;

/// The example of docs/POLICY.md.
const FULL: &str = r#"version: 1                      # required, must be 1
pipeline: web-frontend          # required, a name
mode: audit                     # audit | enforce (default audit); CLI --mode overrides
egress:
  registries: [npm]             # package managers whose configured registry hosts are allowed: npm | pnpm | yarn | bun | pip | uv | poetry | cargo
  allow:                        # each entry exactly one of host / ip / cidr, optional ports (default: any port)
    - host: "*.githubusercontent.com"   # glob; "*.x.com" matches sub.x.com and a.b.x.com but NOT x.com itself
      ports: [443]
    - ip: 127.0.0.1             # IPv4 or IPv6
    - cidr: 10.20.0.0/16        # IPv4 or IPv6 CIDR
      ports: [443, 8000-8100]   # single ports or ranges "a-b"
  loopback: true                # every address of 127.0.0.0/8 and ::1 allowed (default false)
dns:
  resolvers: [system]           # allowed resolvers: "system" (= nameservers of /etc/resolv.conf at run time) and/or IPs. Default [system]
  allow: ["*.internal.example"] # names allowed in DNS queries in addition to every egress host and registry host above
exec:
  deny: [nc, ncat, socat, telnet, "/tmp/**"]   # globs matched against the executable's full path and its basename
  allow: []                     # if non-empty: only executables matching are allowed anywhere in the step
  install_scripts:
    shells: deny                # deny | allow: may an install script (npm lifecycle script, pip build, cargo build.rs) spawn a shell?
secrets:
  env: ["AWS_*", "*_TOKEN", "*_PASSWORD", "*_SECRET", "*_KEY"]   # env var NAME globs whose values are secrets
"#;

fn parse(text: &str) -> Policy {
    match parse_str("p.yaml", text) {
        Ok(p) => p,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn err(text: &str) -> String {
    match parse_str("p.yaml", text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// Asserts the error starts with `p.yaml:LINE:COL: ` followed by `msg_start`.
#[track_caller]
fn assert_err(text: &str, line: usize, col: usize, msg_start: &str) {
    let e = err(text);
    let prefix = format!("p.yaml:{line}:{col}: {msg_start}");
    assert!(e.starts_with(&prefix), "\n got: {e}\nwant: {prefix}...");
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const HEAD: &str = "version: 1\npipeline: p\n";

// ---------------------------------------------------------------------------------------------
// Parser errors

#[test]
fn unknown_top_level_field() {
    assert_err(
        "version: 1\npipeline: p\negres:\n  loopback: true\n",
        3,
        1,
        "unknown field `egres`, expected one of `version`, `pipeline`, `mode`, `egress`, `dns`, `exec`, `secrets`",
    );
}

#[test]
fn unknown_nested_field_in_allow_entry() {
    // The message of the brief, exactly.
    let text = format!("{HEAD}egress:\n  allow:\n  - hots: x.com\n");
    assert_eq!(err(&text), "p.yaml:5:5: unknown field `hots`, expected one of `host`, `ip`, `cidr`, `ports`");
}

#[test]
fn unknown_nested_field_in_section() {
    assert_err(
        &format!("{HEAD}exec:\n  install_scripts:\n    shell: deny\n"),
        5,
        5,
        "unknown field `shell`, expected `shells`",
    );
    assert_err(&format!("{HEAD}dns:\n  resolver: [system]\n"), 4, 3, "unknown field `resolver`");
}

#[test]
fn wrong_type_string_for_ports() {
    assert_err(
        &format!("{HEAD}egress:\n  allow:\n    - host: x.com\n      ports: \"443\"\n"),
        6,
        14,
        "invalid type: a string, expected a list of ports",
    );
}

#[test]
fn wrong_type_sequence_for_section() {
    // Derived struct impls would accept a sequence positionally; sections must be mappings.
    assert_err(&format!("{HEAD}egress: [[npm], [], true]\n"), 3, 9, "invalid type: sequence, expected a mapping");
}

#[test]
fn bad_cidr() {
    assert_err(&format!("{HEAD}egress:\n  allow:\n    - cidr: 10.0.0.0/33\n"), 5, 13, "invalid CIDR \"10.0.0.0/33\": ");
    assert_err(&format!("{HEAD}egress:\n  allow:\n    - cidr: 10.0.0.1\n"), 5, 13, "invalid CIDR \"10.0.0.1\"");
}

#[test]
fn bad_cidr_message_of_the_brief() {
    let text = "version: 1\npipeline: p\negress:\n  allow:\n    - host: a.example\n    - ip: 10.0.0.1\n      ports: [22]\n    - ip: ::1\n    - cidr: \"10.0.0.0/33\"\n";
    assert_err(text, 9, 13, "invalid CIDR \"10.0.0.0/33\": ");
}

#[test]
fn bad_ip() {
    assert_err(&format!("{HEAD}egress:\n  allow:\n    - ip: 300.1.1.1\n"), 5, 11, "invalid IP address \"300.1.1.1\"");
    assert_err(&format!("{HEAD}egress:\n  allow:\n    - ip: 10.0.0.0/8\n"), 5, 11, "invalid IP address \"10.0.0.0/8\"");
}

#[test]
fn bad_glob() {
    assert_err(
        &format!("{HEAD}exec:\n  deny:\n    - nc\n    - \"[abc\"\n"),
        6,
        7,
        "invalid glob \"[abc\": unclosed character class",
    );
    assert_err(&format!("{HEAD}dns:\n  allow: [\"{{a,b\"]\n"), 4, 11, "invalid glob \"{a,b\"");
    assert_err(&format!("{HEAD}secrets:\n  env: [\"AWS_[\"]\n"), 4, 9, "invalid glob \"AWS_[\"");
    assert_err(&format!("{HEAD}egress:\n  allow:\n    - host: \"[x.com\"\n"), 5, 13, "invalid glob \"[x.com\"");
}

#[test]
fn bad_host() {
    assert_err(
        &format!("{HEAD}egress:\n  allow:\n    - host: https://x.example/\n"),
        5,
        13,
        "invalid host \"https://x.example/\": expected a host name or glob, not a URL",
    );
    assert_err(
        &format!("{HEAD}egress:\n  allow:\n    - host: x.example:443\n"),
        5,
        13,
        "invalid host \"x.example:443\": unexpected character ':' (put ports under `ports:`)",
    );
    assert_err(
        &format!("{HEAD}egress:\n  allow:\n    - host: 10.1.2.3\n"),
        5,
        13,
        "invalid host \"10.1.2.3\": this is an IP address",
    );
}

#[test]
fn bad_port_range() {
    assert_err(
        &format!("{HEAD}egress:\n  allow:\n    - cidr: 10.0.0.0/8\n      ports: [443, 9000-8000]\n"),
        6,
        20,
        "invalid port range \"9000-8000\": start 9000 is greater than end 8000",
    );
    assert_err(
        &format!("{HEAD}egress:\n  allow:\n    - cidr: 10.0.0.0/8\n      ports: [70000]\n"),
        6,
        15,
        "invalid port 70000: ports are 1-65535",
    );
    assert_err(
        &format!("{HEAD}egress:\n  allow:\n    - cidr: 10.0.0.0/8\n      ports: [0]\n"),
        6,
        15,
        "invalid port 0",
    );
    assert_err(
        &format!("{HEAD}egress:\n  allow:\n    - cidr: 10.0.0.0/8\n      ports: [https]\n"),
        6,
        15,
        "invalid port \"https\"",
    );
    assert_err(
        &format!("{HEAD}egress:\n  allow:\n    - cidr: 10.0.0.0/8\n      ports: []\n"),
        6,
        14,
        "ports must not be empty",
    );
}

#[test]
fn both_ip_and_cidr() {
    // Located at the second of the two keys.
    assert_err(
        &format!("{HEAD}egress:\n  allow:\n    - ip: 10.0.0.1\n      cidr: 10.0.0.0/8\n"),
        6,
        7,
        "an egress.allow entry has both `ip` and `cidr`",
    );
    assert_err(
        &format!("{HEAD}egress:\n  allow:\n    - host: a.example\n      ports: [1]\n      ip: 10.0.0.1\n"),
        7,
        7,
        "an egress.allow entry has both `host` and `ip`",
    );
}

#[test]
fn duplicate_keys() {
    assert_err(
        &format!("{HEAD}egress:\n  allow:\n    - ip: 10.0.0.1\n      ip: 10.0.0.2\n"),
        6,
        7,
        "duplicate field `ip`",
    );
    assert_err("version: 1\npipeline: p\npipeline: q\n", 3, 1, "duplicate field `pipeline`");
    assert_err(
        &format!("{HEAD}egress:\n  loopback: true\n  registries: []\n  loopback: false\n"),
        6,
        3,
        "duplicate field `loopback`",
    );
    assert_err(&format!("{HEAD}exec: {{}}\nexec: {{}}\n"), 4, 1, "duplicate field `exec`");
}

#[test]
fn entry_without_target() {
    assert_err(
        &format!("{HEAD}egress:\n  allow:\n    - host: a.example\n    - ports: [443]\n"),
        6,
        7,
        "an egress.allow entry needs exactly one of `host`, `ip` or `cidr`",
    );
    assert_err(
        &format!("{HEAD}egress:\n  allow:\n    - \"*.a.example\"\n"),
        5,
        7,
        "invalid type: a string, expected an egress.allow entry",
    );
}

#[test]
fn missing_version_and_pipeline() {
    assert_err("pipeline: p\nmode: audit\n", 1, 1, "missing field `version`");
    assert_err("version: 1\n", 1, 1, "missing field `pipeline`");
    assert_err("version: 1\npipeline: \"  \"\n", 2, 11, "pipeline must be a non-empty name");
}

#[test]
fn version_2() {
    assert_eq!(
        err("# a comment\nversion: 2\npipeline: p\n"),
        "p.yaml:2:10: unsupported policy version 2: this watcher only understands version 1"
    );
    assert_err("version: \"1\"\npipeline: p\n", 1, 10, "invalid type: a string, expected the format version number 1");
    assert_err("version: -1\npipeline: p\n", 1, 10, "invalid type: integer `-1`, expected the format version number 1");
}

#[test]
fn bad_mode() {
    assert_eq!(
        err("version: 1\npipeline: p\nmode: enforcing\n"),
        "p.yaml:3:7: mode must be audit or enforce, found \"enforcing\""
    );
}

#[test]
fn unknown_registry() {
    assert_eq!(
        err(&format!("{HEAD}egress:\n  registries: [npm, maven]\n")),
        "p.yaml:4:21: unknown registry \"maven\", expected one of npm, pnpm, yarn, bun, pip, uv, poetry, cargo"
    );
}

#[test]
fn bad_resolver_and_shells() {
    assert_err(
        &format!("{HEAD}dns:\n  resolvers: [system, dns.example]\n"),
        4,
        23,
        "invalid resolver \"dns.example\": expected \"system\" or an IPv4/IPv6 address",
    );
    assert_err(
        &format!("{HEAD}exec:\n  install_scripts:\n    shells: maybe\n"),
        5,
        13,
        "shells must be suspicious, deny or allow, found \"maybe\"",
    );
}

#[test]
fn empty_file_syntax_error_and_list() {
    for empty in ["", "\n\n", "# only a comment\n", "---\n"] {
        assert_err(empty, 1, 1, "the policy is empty");
    }
    assert_err("- version: 1\n- pipeline: p\n", 1, 1, "invalid type: sequence, expected a policy mapping");
    assert_err("just a string\n", 1, 1, "invalid type: a string, expected a policy mapping");
    // Bad indentation: a YAML syntax error, located.
    let e = err("version: 1\npipeline: p\negress:\n  allow:\n    - host: x\n   ports: [1]\n");
    assert!(e.starts_with("p.yaml:6:"), "{e}");
    assert!(!e.contains("line 6 column 4"), "serde_yaml's position suffix must be stripped: {e}");
    let e = err("version: 1\npipeline: \"unclosed\n");
    assert!(e.starts_with("p.yaml:2:11: ") || e.starts_with("p.yaml:3:1: "), "{e}");
    assert!(e.contains("quoted scalar"), "{e}");
    let e = err("version: 1\npipeline: p\n---\nversion: 1\npipeline: q\n");
    assert!(e.starts_with("p.yaml:1:1: ") && e.contains("more than one document"), "{e}");
}

#[test]
fn null_sections_and_lists_take_defaults() {
    let p = parse("version: 1\npipeline: p\negress:\ndns:\n  allow:\nexec:\nsecrets:\n");
    assert!(!p.spec().egress.loopback);
    assert!(p.spec().dns.resolvers == vec![Resolver::System]);
    assert!(p.spec().dns.allow.is_empty());
    assert_eq!(p.secret_env_patterns().len(), schema::DEFAULT_SECRET_ENV.len());
}

#[test]
fn never_panics_on_garbage() {
    let inputs = [
        "\u{0}",
        "{",
        "}",
        "[",
        "]]",
        ":",
        "- - -",
        "&a [*a]",
        "*x",
        "!!binary aGk=",
        "version: !!str 1\npipeline: p",
        "version: 1\npipeline: p\negress: {allow: [{host: {a: b}}]}",
        "version: 1\npipeline: p\n<<: {mode: audit}",
        "version: 1\npipeline: p\nexec: {deny: [[nc]]}",
        "version: 1\npipeline: p\negress: {allow: [{ports: [1-]}]}",
        "version: 1\npipeline: p\negress: {allow: [{ports: [-]}]}",
        "version: 18446744073709551616\npipeline: p",
        "a: &a [*a, *a]\n",
        "\u{feff}version: 1\npipeline: p\n",
        "version: 1\npipeline: \"a\\u0000\"\n",
    ];
    for text in inputs {
        let _ = parse_str("p.yaml", text).map(|p| p.to_yaml()).map_err(|e| e.to_string());
    }
    // Deep nesting hits serde_yaml's recursion limit instead of the stack.
    let deep = format!("version: 1\npipeline: p\nexec: {}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(parse_str("p.yaml", &deep).is_err());
}

#[test]
fn load_reports_unreadable_files() {
    let e = load(Path::new("/nonexistent/p.yaml")).unwrap_err();
    assert_eq!(e.location, None);
    assert_eq!(e.to_string(), "/nonexistent/p.yaml: cannot read the policy: No such file or directory (os error 2)");
}

#[test]
fn load_uses_the_path_as_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, "version: 1\npipeline: x\nmode: enforcing\n").unwrap();
    let e = load(&path).unwrap_err();
    assert_eq!(e.to_string(), format!("{}:3:7: mode must be audit or enforce, found \"enforcing\"", path.display()));
    std::fs::write(&path, HEAD).unwrap();
    assert_eq!(load(&path).unwrap().source, path.display().to_string());
}

// ---------------------------------------------------------------------------------------------
// Valid documents

#[test]
fn full_example_parses_with_every_field() {
    let p = parse(FULL);
    assert_eq!((p.version, p.pipeline.as_str(), p.mode, p.source.as_str()), (1, "web-frontend", Mode::Audit, "p.yaml"));
    assert_eq!(p.registries(), &[PackageManager::Npm]);
    let s = p.spec();
    assert_eq!(s.egress.allow.len(), 3);
    match &s.egress.allow[0].target {
        Target::Host(h) => assert_eq!(h.as_str(), "*.githubusercontent.com"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.egress.allow[0].ports, Some(vec![PortRange { start: 443, end: 443 }]));
    assert_eq!(s.egress.allow[1].target, Target::Ip(ip("127.0.0.1")));
    assert_eq!(s.egress.allow[1].ports, None);
    assert_eq!(s.egress.allow[2].target, Target::Cidr("10.20.0.0/16".parse().unwrap()));
    assert_eq!(
        s.egress.allow[2].ports,
        Some(vec![PortRange { start: 443, end: 443 }, PortRange { start: 8000, end: 8100 }])
    );
    assert!(s.egress.loopback);
    assert_eq!(s.dns.resolvers, vec![Resolver::System]);
    assert_eq!(s.dns.allow.iter().map(|h| h.as_str()).collect::<Vec<_>>(), ["*.internal.example"]);
    assert_eq!(
        s.exec.deny.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
        ["nc", "ncat", "socat", "telnet", "/tmp/**"]
    );
    assert!(s.exec.allow.is_empty());
    assert_eq!(s.exec.install_scripts.shells, ShellPolicy::Deny);
    assert_eq!(p.secret_env_patterns(), ["AWS_*", "*_TOKEN", "*_PASSWORD", "*_SECRET", "*_KEY"]);
}

#[test]
fn full_example_round_trips_through_to_yaml() {
    let p = parse(FULL);
    let yaml = p.to_yaml();
    let again = parse_str("again.yaml", &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(p.spec(), again.spec());
    // And the rendering is stable.
    assert_eq!(yaml, again.to_yaml());
}

#[test]
fn minimal_policy_defaults() {
    let p = parse(HEAD);
    assert_eq!(p.mode, Mode::Audit);
    assert!(p.registries().is_empty());
    assert!(!p.spec().egress.loopback);
    assert_eq!(p.spec().dns.resolvers, vec![Resolver::System]);
    assert!(p.shells_denied_in_install_scripts());
    assert_eq!(p.secret_env_patterns(), schema::DEFAULT_SECRET_ENV);
    assert_eq!(p.exec_denied("/usr/bin/nc"), None);
    // Nothing is allowed, loopback included.
    assert!(!p.ip_allowed(ip("127.0.0.1"), 4873));
    assert!(!p.host_allowed("a.example", 443));
    assert!(!p.ip_allowed(ip("10.0.0.1"), 443));
    assert!(!p.dns_name_allowed("a.example"));
    // An explicitly empty secrets list disables the defaults.
    let p = parse(&format!("{HEAD}secrets:\n  env: []\n"));
    assert!(p.secret_env_patterns().is_empty());
    assert!(!p.is_secret_env("GITHUB_TOKEN"));
    let rendered = parse(&p.to_yaml());
    assert!(rendered.secret_env_patterns().is_empty());
}

#[test]
fn policy_is_shareable_between_threads() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Policy>();
    assert_send_sync::<PolicyError>();
    assert_send_sync::<crate::probe::RegistryError>();
}

#[test]
fn mode_enforce_and_override() {
    let mut p = parse(&format!("{HEAD}mode: enforce\n"));
    assert_eq!(p.mode, Mode::Enforce);
    p.mode = "audit".parse().unwrap();
    assert!(p.to_yaml().contains("mode: audit"));
    assert_eq!("enforce".parse::<Mode>(), Ok(Mode::Enforce));
    assert_eq!(Mode::Enforce.as_str(), "enforce");
    assert!("Enforce".parse::<Mode>().is_err());
}

#[test]
fn package_manager_names() {
    for pm in PackageManager::ALL {
        assert_eq!(pm.as_str().parse::<PackageManager>(), Ok(pm));
    }
    assert_eq!(
        "gem".parse::<PackageManager>().unwrap_err().to_string(),
        "unknown registry \"gem\", expected one of npm, pnpm, yarn, bun, pip, uv, poetry, cargo"
    );
}

// ---------------------------------------------------------------------------------------------
// Matcher

fn egress(entries: &str) -> Policy {
    parse(&format!("{HEAD}egress:\n  allow:\n{entries}"))
}

#[test]
fn host_glob_star_dot_matches_subdomains_not_the_apex() {
    let p = egress("    - host: \"*.x.example\"\n");
    assert!(p.host_allowed("sub.x.example", 443));
    assert!(p.host_allowed("a.b.x.example", 443));
    assert!(!p.host_allowed("x.example", 443));
    assert!(!p.host_allowed("evilx.example", 443));
    assert!(!p.host_allowed("x.example.evil.test", 443));
    assert!(!p.host_allowed("", 443));
    // The apex is a separate entry.
    let p = egress("    - host: \"*.x.example\"\n    - host: x.example\n");
    assert!(p.host_allowed("x.example", 443));
    assert!(!p.host_allowed("y.x.example.test", 443));
}

#[test]
fn host_matching_ignores_case_and_one_trailing_dot() {
    let p = egress("    - host: Registry.X.Example.\n    - host: \"*.Y.example\"\n");
    for name in ["registry.x.example", "REGISTRY.x.EXAMPLE", "registry.x.example."] {
        assert!(p.host_allowed(name, 1), "{name}");
        assert!(p.dns_name_allowed(name), "{name}");
    }
    assert!(p.host_allowed("A.Y.EXAMPLE.", 1));
    assert!(!p.host_allowed("registry.x.example..", 1));
    assert!(!p.host_allowed(".", 1));
}

#[test]
fn host_ports_and_ranges() {
    let p = egress("    - host: a.example\n      ports: [443, 8000-8100]\n    - host: b.example\n");
    assert!(p.host_allowed("a.example", 443));
    assert!(p.host_allowed("a.example", 8000));
    assert!(p.host_allowed("a.example", 8050));
    assert!(p.host_allowed("a.example", 8100));
    assert!(!p.host_allowed("a.example", 80));
    assert!(!p.host_allowed("a.example", 7999));
    assert!(!p.host_allowed("a.example", 8101));
    assert!(p.host_allowed("b.example", 1));
    assert!(p.host_allowed("b.example", 65535));
    // A port restriction does not restrict DNS.
    assert!(p.dns_name_allowed("a.example"));
}

#[test]
fn ip_and_cidr_v4_v6_with_ports() {
    let p = egress(concat!(
        "    - ip: 192.0.2.7\n",
        "    - cidr: 10.20.0.0/16\n      ports: [443, 8000-8100]\n",
        "    - cidr: 2001:db8::/32\n",
        "    - ip: 2001:db9::1\n      ports: [53]\n",
        "    - cidr: 172.16.5.9/12\n",
    ));
    assert!(p.ip_allowed(ip("192.0.2.7"), 1));
    assert!(!p.ip_allowed(ip("192.0.2.8"), 1));
    assert!(p.ip_allowed(ip("10.20.255.1"), 443));
    assert!(p.ip_allowed(ip("10.20.0.1"), 8100));
    assert!(!p.ip_allowed(ip("10.20.0.1"), 80));
    assert!(!p.ip_allowed(ip("10.21.0.1"), 443));
    assert!(p.ip_allowed(ip("2001:db8:ffff::1"), 22));
    assert!(!p.ip_allowed(ip("2001:db7::1"), 22));
    assert!(p.ip_allowed(ip("2001:db9::1"), 53));
    assert!(!p.ip_allowed(ip("2001:db9::1"), 54));
    // IPv4-mapped IPv6 is matched as IPv4.
    assert!(p.ip_allowed(ip("::ffff:10.20.3.4"), 443));
    assert!(!p.ip_allowed(ip("::ffff:10.21.3.4"), 443));
    // Host bits of a CIDR are cleared.
    assert!(p.ip_allowed(ip("172.31.0.1"), 1));
    let cidrs = p.allowed_cidrs();
    assert!(cidrs.contains(&("172.16.0.0/12".parse().unwrap(), None)));
    assert!(cidrs.contains(&("192.0.2.7/32".parse().unwrap(), None)));
    assert!(cidrs.contains(&("10.20.0.0/16".parse().unwrap(), Some(vec![(443, 443), (8000, 8100)]))));
    assert!(cidrs.contains(&("2001:db9::1/128".parse().unwrap(), Some(vec![(53, 53)]))));
    // Loopback is not allowed by default: no blanket entry.
    assert!(!cidrs.contains(&("127.0.0.0/8".parse().unwrap(), None)));
    assert!(!cidrs.contains(&("::1/128".parse().unwrap(), None)));
}

#[test]
fn v4_mapped_cidr_entries_match_ipv4() {
    let p = egress("    - cidr: \"::ffff:10.0.0.0/104\"\n");
    assert!(p.ip_allowed(ip("10.1.2.3"), 1));
    assert!(!p.ip_allowed(ip("11.1.2.3"), 1));
}

#[test]
fn loopback_is_off_by_default_and_on_when_asked() {
    let p = parse(HEAD);
    assert!(!p.ip_allowed(ip("127.0.0.1"), 4873));
    assert!(!p.ip_allowed(ip("::1"), 1));
    let p = parse(&format!("{HEAD}egress:\n  loopback: true\n"));
    assert!(p.ip_allowed(ip("127.0.0.1"), 4873));
    assert!(p.ip_allowed(ip("127.255.0.9"), 1));
    assert!(p.ip_allowed(ip("::1"), 1));
    assert!(p.ip_allowed(ip("::ffff:127.0.0.1"), 1));
    assert!(!p.ip_allowed(ip("128.0.0.1"), 1));
    let p = parse(&format!("{HEAD}egress:\n  loopback: false\n"));
    assert!(!p.ip_allowed(ip("127.0.0.1"), 1));
    assert!(!p.ip_allowed(ip("::1"), 1));
    assert!(p.allowed_cidrs().is_empty());
}

#[test]
fn dns_names_include_egress_hosts_dns_allow_and_registry_hosts() {
    let p = parse(FULL);
    assert!(p.dns_name_allowed("raw.githubusercontent.com"));
    assert!(p.dns_name_allowed("db.internal.example."));
    assert!(!p.dns_name_allowed("internal.example"));
    assert!(!p.dns_name_allowed("pkgs.mirror.test"));
    assert!(!p.host_allowed("pkgs.mirror.test", 443));
    // dns.allow names are not connect targets.
    assert!(!p.host_allowed("db.internal.example", 443));

    let p = p.with_registry_hosts(vec!["Pkgs.MIRROR.test".to_string(), "files.mirror.test.".to_string()]);
    for name in ["pkgs.mirror.test", "PKGS.mirror.test.", "files.mirror.test"] {
        assert!(p.dns_name_allowed(name), "{name}");
    }
    assert!(p.host_allowed("pkgs.mirror.test", 443));
    assert!(p.host_allowed("pkgs.mirror.test", 8080));
    assert!(!p.host_allowed("sub.pkgs.mirror.test", 443));
    assert!(!p.dns_name_allowed("mirror.test"));
}

#[test]
fn registry_ip_literals_are_allowed_as_ips() {
    let p = parse(&format!("{HEAD}egress:\n  loopback: false\n"))
        .with_registry_hosts(vec!["10.9.8.7".to_string(), "[2001:db8::5]".to_string()]);
    assert!(p.ip_allowed(ip("10.9.8.7"), 4873));
    assert!(p.ip_allowed(ip("2001:db8::5"), 443));
    assert!(!p.ip_allowed(ip("10.9.8.6"), 4873));
    assert!(p.allowed_cidrs().contains(&("10.9.8.7/32".parse().unwrap(), None)));
}

#[test]
fn resolvers() {
    let sys = [ip("10.0.0.2"), ip("fd00::53")];
    let p = parse(HEAD);
    assert!(p.resolver_allowed(ip("10.0.0.2"), &sys));
    assert!(p.resolver_allowed(ip("fd00::53"), &sys));
    assert!(!p.resolver_allowed(ip("10.0.0.3"), &sys));
    let p = parse(&format!("{HEAD}dns:\n  resolvers: [192.0.2.53, \"2001:db8::53\"]\n"));
    assert!(!p.resolver_allowed(ip("10.0.0.2"), &sys));
    assert!(p.resolver_allowed(ip("192.0.2.53"), &sys));
    assert!(p.resolver_allowed(ip("::ffff:192.0.2.53"), &sys));
    assert!(p.resolver_allowed(ip("2001:db8::53"), &sys));
    let p = parse(&format!("{HEAD}dns:\n  resolvers: []\n"));
    assert!(!p.resolver_allowed(ip("10.0.0.2"), &sys));
}

#[test]
fn exec_deny_by_basename_and_path_glob() {
    let p = parse(FULL);
    assert_eq!(p.exec_denied("/usr/bin/nc").as_deref(), Some("nc"));
    assert_eq!(p.exec_denied("nc").as_deref(), Some("nc"));
    assert_eq!(p.exec_denied("/opt/tools/ncat").as_deref(), Some("ncat"));
    assert_eq!(p.exec_denied("/tmp/x").as_deref(), Some("/tmp/**"));
    assert_eq!(p.exec_denied("/tmp/a/b/c").as_deref(), Some("/tmp/**"));
    assert_eq!(p.exec_denied("/usr/bin/node"), None);
    assert_eq!(p.exec_denied("/usr/bin/ncx"), None);
    assert_eq!(p.exec_denied("/usr/bin/NC"), None, "exec globs are case-sensitive");
    assert_eq!(p.exec_denied("/var/tmp/x"), None);
}

#[test]
fn exec_star_does_not_cross_slash_but_double_star_does() {
    let p = parse(&format!("{HEAD}exec:\n  deny: [\"/opt/*/nc*\", \"/home/**/bin/*\"]\n"));
    assert_eq!(p.exec_denied("/opt/a/ncat").as_deref(), Some("/opt/*/nc*"));
    assert_eq!(p.exec_denied("/opt/a/b/ncat"), None);
    assert_eq!(p.exec_denied("/home/u/x/y/bin/tool").as_deref(), Some("/home/**/bin/*"));
    assert_eq!(p.exec_denied("/home/bin/tool").as_deref(), Some("/home/**/bin/*"));
}

#[test]
fn exec_allow_list_semantics() {
    let p = parse(&format!("{HEAD}exec:\n  deny: [curl]\n  allow: [node, npm, \"/usr/bin/*\", \"/work/**\"]\n"));
    assert_eq!(p.exec_denied("/usr/local/bin/node"), None, "basename match");
    assert_eq!(p.exec_denied("/usr/bin/git"), None, "path glob match");
    assert_eq!(p.exec_denied("/work/a/node_modules/.bin/tsc"), None);
    assert_eq!(p.exec_denied("/usr/local/bin/python3").as_deref(), Some(NOT_IN_EXEC_ALLOW));
    assert_eq!(p.exec_denied("/usr/bin/x/y").as_deref(), Some(NOT_IN_EXEC_ALLOW));
    // Deny wins over allow.
    assert_eq!(p.exec_denied("/usr/bin/curl").as_deref(), Some("curl"));
    // Empty allow list: everything not denied is allowed.
    let p = parse(&format!("{HEAD}exec:\n  allow: []\n"));
    assert_eq!(p.exec_denied("/any/thing"), None);
}

#[test]
fn shells_default_and_allow() {
    assert!(parse(HEAD).shells_denied_in_install_scripts());
    assert!(parse(&format!("{HEAD}exec:\n  install_scripts: {{}}\n")).shells_denied_in_install_scripts());
    assert!(
        !parse(&format!("{HEAD}exec:\n  install_scripts:\n    shells: allow\n")).shells_denied_in_install_scripts()
    );
}

#[test]
fn secret_env_names() {
    let p = parse(FULL);
    for name in ["AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "npm_token", "DB_PASSWORD", "SIGNING_KEY"] {
        assert!(p.is_secret_env(name), "{name}");
    }
    for name in ["PATH", "HOME", "TOKENIZER", "KEYBOARD"] {
        assert!(!p.is_secret_env(name), "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// Shipped policies

#[test]
fn shipped_policies_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let p = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.mode, Mode::Enforce, "{}", path.display());
        seen.push(path.file_stem().unwrap().to_string_lossy().into_owned());
    }
    seen.sort();
    assert_eq!(seen, ["cargo", "npm", "pip"]);
    // One shipped policy per ecosystem: `npm` covers pnpm, yarn and bun, `pip` uv and poetry.
    for pm in [PackageManager::Npm, PackageManager::Pip, PackageManager::Cargo] {
        let p = load(&dir.join(format!("{pm}.yaml"))).unwrap();
        assert_eq!(p.registries(), &[pm]);
        assert!(p.shells_denied_in_install_scripts(), "{pm}");
        for tool in ["nc", "ncat", "netcat", "socat", "telnet"] {
            assert!(p.exec_denied(&format!("/usr/bin/{tool}")).is_some(), "{pm}: {tool}");
        }
        assert!(p.is_secret_env("NPM_TOKEN") && p.is_secret_env("AWS_ACCESS_KEY_ID"), "{pm}");
    }
}

#[test]
fn per_package_rules_choose_the_shell_rule_by_package_and_manager() {
    let p = parse(&format!(
        "{HEAD}exec:\n  install_scripts:\n    shells: deny\npackages:\n  - name: better-sqlite3\n    manager: npm\n    shells: suspicious\n  - name: \"@scope/*\"\n    shells: allow\n  - name: \"*-sys\"\n    manager: cargo\n    shells: allow\n"
    ));
    assert_eq!(p.shell_policy_for("npm", "better-sqlite3"), ShellPolicy::Suspicious);
    assert_eq!(p.shell_policy_for("pip", "better-sqlite3"), ShellPolicy::Deny, "manager must match");
    assert_eq!(p.shell_policy_for("npm", "@scope/native"), ShellPolicy::Allow);
    assert_eq!(p.shell_policy_for("cargo", "openssl-sys"), ShellPolicy::Allow);
    assert_eq!(p.shell_policy_for("npm", "openssl-sys"), ShellPolicy::Deny);
    assert_eq!(p.shell_policy_for("npm", "left-pad"), ShellPolicy::Deny);
    // A package rule that judges shells makes the kernel hold them even when the default allows.
    let p = parse(&format!(
        "{HEAD}exec:\n  install_scripts:\n    shells: allow\npackages:\n  - name: evil\n    shells: deny\n"
    ));
    assert!(p.shells_denied_in_install_scripts());
    assert_eq!(p.shell_policy_for("npm", "evil"), ShellPolicy::Deny);
    assert_eq!(p.shell_policy_for("npm", "good"), ShellPolicy::Allow);
    // The rules survive to_yaml.
    assert!(parse(&p.to_yaml()).shell_policy_for("npm", "evil") == ShellPolicy::Deny);
}

#[test]
fn per_package_rule_errors_are_located() {
    assert_err(&format!("{HEAD}packages:\n  - name: x\n    shell: allow\n"), 5, 5, "unknown field `shell`");
    assert_err(&format!("{HEAD}packages:\n  - name: \"[ab\"\n"), 4, 11, "invalid glob \"[ab\"");
    assert_err(&format!("{HEAD}packages:\n  - name: x\n    manager: gem\n"), 5, 14, "unknown registry \"gem\"");
    assert_err(&format!("{HEAD}packages:\n  - shells: allow\n"), 4, 5, "missing field `name`");
}
