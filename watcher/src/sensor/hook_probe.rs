//! Whether this kernel loads fentry (tracing) and BPF LSM programs: a two-instruction program
//! (`r0 = 0; exit`) loaded against a function the kernel's BTF names, then closed at once.
//! aya's `is_program_supported` does the same but parses the whole kernel BTF on each call
//! (~18 MiB of heap for this kernel, twice, the largest part of `watcher run`'s peak memory);
//! here the function's BTF id comes from the streamed lookup in `btf.rs`.
use std::os::fd::{FromRawFd as _, OwnedFd};

use super::btf;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_PROG_TYPE_LSM: u32 = 29;
const BPF_TRACE_FENTRY: u32 = 24;
const BPF_LSM_MAC: u32 = 27;

/// `union bpf_attr` for BPF_PROG_LOAD, up to `attach_btf_id` (the kernel zero-fills the rest).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
}

/// Load `r0 = 0; exit` as `prog_type`/`attach_type` attached to BTF function `btf_id`.
fn loads(prog_type: u32, attach_type: u32, btf_id: u32) -> bool {
    // BPF_ALU64|BPF_MOV|BPF_K r0, 0; BPF_JMP|BPF_EXIT.
    let insns: [u64; 2] = [0xb7, 0x95];
    let license = c"GPL";
    let attr = ProgLoad {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: attach_type,
        attach_btf_id: btf_id,
        ..ProgLoad::default()
    };
    // SAFETY: `attr` is a valid BPF_PROG_LOAD attribute of the size given, pointing at `insns`
    // and `license`, which outlive the call; the kernel writes nothing back for this command.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &attr as *const ProgLoad, std::mem::size_of::<ProgLoad>() as u32)
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: a new program fd that nothing else owns; dropping it unloads the program.
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    true
}

/// (fentry loads, BPF LSM loads). A function missing from the BTF counts as not available:
/// there would be nothing to attach to.
pub fn probe() -> (bool, bool) {
    let k = btf::kernel_offsets();
    let fentry = k.fentry_probe.is_some_and(|id| loads(BPF_PROG_TYPE_TRACING, BPF_TRACE_FENTRY, id));
    let lsm = k.lsm_probe.is_some_and(|id| loads(BPF_PROG_TYPE_LSM, BPF_LSM_MAC, id));
    (fentry, lsm)
}

#[cfg(test)]
mod tests {
    use aya::programs::{LsmAttachType, ProgramType};

    #[test]
    fn agrees_with_ayas_probe() {
        if !nix::unistd::geteuid().is_root() {
            return; // loading needs root; aya's probe would say no as well
        }
        let (fentry, lsm) = super::probe();
        // Where the function is missing, aya answers from the verifier's log; watcher says no.
        let k = super::btf::kernel_offsets();
        if k.fentry_probe.is_some() {
            assert_eq!(fentry, aya::sys::is_program_supported(ProgramType::Tracing).unwrap_or(false));
        }
        if k.lsm_probe.is_some() {
            assert_eq!(lsm, aya::sys::is_program_supported(ProgramType::Lsm(LsmAttachType::Mac)).unwrap_or(false));
        }
    }
}
