//! Shells recognised by content at exec (a copy under another name is still a shell): the
//! sched_process_exec raw tracepoint gets struct offsets from the kernel's BTF and the
//! signatures (size and first bytes) of this machine's shell binaries. Optional: without BTF,
//! shells are recognised by name only, and the sensor line says so.
use aya::{
    Ebpf,
    maps::{Array, HashMap},
    programs::{RawTracePoint, links::PinnedLink},
};
use watcher_common::{
    CFG_OFF_BPRM_BUF, CFG_OFF_BPRM_FILE, CFG_OFF_BPRM_FILENAME, CFG_OFF_BPRM_INTERP, CFG_OFF_FILE_INODE,
    CFG_OFF_INODE_SIZE, SHELL_SIG_BYTES, maps::names, shell_signature,
};

use super::{SensorError, btf, load::map_mut, pins::PinDir};
use crate::event::SensorState;

/// Where shells are looked for, besides PATH.
const SHELL_DIRS: &[&str] = &["/bin", "/usr/bin", "/usr/local/bin", "/sbin", "/usr/sbin"];

/// Signatures of this machine's shell binaries -> one of their real paths.
pub fn machine_shells() -> std::collections::BTreeMap<u64, String> {
    let mut sigs = std::collections::BTreeMap::new();
    let path = std::env::var("PATH").unwrap_or_default();
    // Only absolute PATH entries: a relative one would name a directory of the workspace.
    let dirs: Vec<&str> = SHELL_DIRS.iter().copied().chain(path.split(':').filter(|d| d.starts_with('/'))).collect();
    for name in crate::proctree::SHELLS {
        for dir in &dirs {
            let Ok(real) = std::fs::canonicalize(std::path::Path::new(dir).join(name)) else { continue };
            let Ok(mut f) = std::fs::File::open(&real) else { continue };
            let Ok(meta) = f.metadata() else { continue };
            let mut head = [0u8; SHELL_SIG_BYTES];
            if std::io::Read::read_exact(&mut f, &mut head).is_ok() {
                sigs.insert(shell_signature(meta.len(), &head), real.display().to_string());
            }
        }
    }
    sigs
}

pub fn install(ebpf: &mut Ebpf, pins: &PinDir, links: &mut Vec<PinnedLink>) -> Result<SensorState, SensorError> {
    let offsets = btf::kernel_offsets().shell.map(|o| {
        [
            (CFG_OFF_BPRM_FILE, o[0]),
            (CFG_OFF_BPRM_BUF, o[1]),
            (CFG_OFF_FILE_INODE, o[2]),
            (CFG_OFF_INODE_SIZE, o[3]),
            (CFG_OFF_BPRM_FILENAME, o[4]),
            (CFG_OFF_BPRM_INTERP, o[5]),
        ]
    });
    let Some(offsets) = offsets else {
        return Ok(SensorState {
            name: "shell-identity".into(),
            active: false,
            detail: Some("no kernel BTF (/sys/kernel/btf/vmlinux): shells are recognised by name only".into()),
        });
    };
    let sigs = machine_shells();
    {
        let mut config = Array::<_, u64>::try_from(map_mut(ebpf, names::CONFIG)?)
            .map_err(|e| SensorError::map(names::CONFIG, "opening", e))?;
        for (i, off) in offsets {
            config.set(i, &(off as u64), 0).map_err(|e| SensorError::map(names::CONFIG, "writing", e))?;
        }
    }
    {
        let mut m = HashMap::<_, u64, u32>::try_from(map_mut(ebpf, names::SHELL_SIGS)?)
            .map_err(|e| SensorError::map(names::SHELL_SIGS, "opening", e))?;
        for sig in sigs.keys() {
            m.insert(sig, &1, 0).map_err(|e| SensorError::map(names::SHELL_SIGS, "writing", e))?;
        }
    }
    let name = "sched_process_exec";
    let p: &mut RawTracePoint = ebpf
        .program_mut(name)
        .ok_or(SensorError::Missing { kind: "program", name: name.into() })?
        .try_into()
        .map_err(|e| SensorError::kernel(format!("program {name}"), e))?;
    // Loaded (verified) with every other program by load::verify_all.
    let id = p.attach(name).map_err(|e| SensorError::kernel("attachment to raw tracepoint sched_process_exec", e))?;
    let link: aya::programs::links::FdLink =
        p.take_link(id).map_err(|e| SensorError::kernel("link of sched_process_exec", e))?.into();
    let path = pins.path().join(name);
    links.push(link.pin(&path).map_err(|e| SensorError::Pin { path, detail: e.to_string() })?);
    let names: std::collections::BTreeSet<String> = sigs.into_values().collect();
    Ok(SensorState {
        name: "shell-identity".into(),
        active: true,
        detail: Some(format!(
            "raw tracepoint sched_process_exec: shell binaries known by size and first bytes, under any name ({})",
            names.into_iter().collect::<Vec<_>>().join(", ")
        )),
    })
}
