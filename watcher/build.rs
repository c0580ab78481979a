//! Builds the kernel programs (crate `watcher-ebpf`) for bpfel-unknown-none with the pinned
//! nightly and bpf-linker, and leaves the object in OUT_DIR/watcher-ebpf for `include_bytes!`.
//! With AYA_BUILD_SKIP=1 (pure userspace work: unit tests, replay) an empty object is written
//! instead and the agent says so plainly if asked to load kernel programs.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

const TOOLCHAIN: &str = "nightly-2026-07-15";

fn main() -> anyhow::Result<()> {
    println!("cargo::rerun-if-env-changed=AYA_BUILD_SKIP");
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
