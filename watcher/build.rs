//! Builds the kernel programs (crate `watcher-ebpf`) for bpfel-unknown-none with the pinned
//! nightly and bpf-linker, and leaves the object in OUT_DIR/watcher-ebpf for `include_bytes!`.
//! With AYA_BUILD_SKIP=1 (pure userspace work: unit tests, replay) an empty object is written
//! instead and the agent says so plainly if asked to load kernel programs.
//!
//! It also sets WATCHER_COMMIT for `watcher --version`: the variable of that name when set
//! (scripts/release.sh, a build from a source tarball), else `git rev-parse --short=12 HEAD`
//! of this checkout, else `unknown` (not a git checkout, no git).
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

const TOOLCHAIN: &str = "nightly-2026-07-15";

fn main() -> anyhow::Result<()> {
    println!("cargo::rerun-if-env-changed=AYA_BUILD_SKIP");
    commit();
    let out_dir = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let skip = std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        std::fs::write(out_dir.join("watcher-ebpf"), b"").context("writing empty eBPF object")?;
        return Ok(());
    }
    let cargo_metadata::Metadata { packages, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "watcher-ebpf")
        .ok_or_else(|| anyhow!("watcher-ebpf package not found"))?;
    let root = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    // aya-build watches the crate directory; the shared record crate matters too.
    println!("cargo::rerun-if-changed={}/../watcher-common/src", root.as_str());
    aya_build::build_ebpf(
        [aya_build::Package { name: "watcher-ebpf", root_dir: root.as_str(), ..Default::default() }],
        Toolchain::Custom(TOOLCHAIN),
    )
}

/// Run git in this crate's directory; None when git is missing or fails.
fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let out = std::process::Command::new("git").args(args).current_dir(dir).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn commit() {
    println!("cargo::rerun-if-env-changed=WATCHER_COMMIT");
    let given = std::env::var("WATCHER_COMMIT").ok().filter(|c| !c.is_empty());
    let commit = given.or_else(|| {
        // Rebuild when HEAD moves: HEAD itself, the branch it names, and packed refs.
        for path in ["HEAD", "packed-refs"] {
            if let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", path]) {
                println!("cargo::rerun-if-changed={p}");
            }
        }
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"])
            && let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", &r])
        {
            println!("cargo::rerun-if-changed={p}");
        }
        git(&["rev-parse", "--short=12", "HEAD"])
    });
    // Only hex digits (or `unknown`) reach the binary: the value is printed by --version.
    let commit = commit
        .filter(|c| c.len() <= 40 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo::rustc-env=WATCHER_COMMIT={commit}");
}
