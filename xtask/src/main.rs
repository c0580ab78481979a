//! Repository chores: `cargo xtask TASK`.
//!
//! - `schema`: regenerate `docs/schema/event.schema.json` from the event types (it runs the
//!   release `watcher schema`, built if needed, so the file is exactly what the binary says).
//! - `schema --check`: exit 1 when the file is not current.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn generated_schema() -> anyhow::Result<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args(["run", "--quiet", "--release", "--package", "watcher", "--bin", "watcher", "--", "schema"])
        .output()
        .context("running cargo")?;
    if !out.status.success() {
        bail!("`watcher schema` failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8(out.stdout).context("`watcher schema` printed invalid UTF-8")
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let file = root().join("docs/schema/event.schema.json");
    match args.as_slice() {
        ["schema"] => {
            let s = generated_schema()?;
            std::fs::create_dir_all(file.parent().expect("has a parent"))?;
            std::fs::write(&file, s).with_context(|| format!("{}: cannot write", file.display()))?;
            println!("wrote {}", file.display());
        }
        ["schema", "--check"] => {
            let s = generated_schema()?;
            let have = std::fs::read_to_string(&file).unwrap_or_default();
            if have != s {
                eprintln!("{} is not current: run `cargo xtask schema`", file.display());
                std::process::exit(1);
            }
            println!("{} is current", file.display());
        }
        _ => {
            eprintln!("usage: cargo xtask schema [--check]");
            std::process::exit(2);
        }
    }
    Ok(())
}
