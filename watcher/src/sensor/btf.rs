//! Just enough of the BPF Type Format to find struct member offsets in the running kernel's
//! /sys/kernel/btf/vmlinux, so a kernel program can read a few fields of kernel structs that
//! no stable interface exposes. aya parses BTF but does not expose member lookups; btf-rs
//! does, under the LGPL; this is ~80 lines.
/// BTF that cannot be read or is not BTF (the kernel's offsets are then left at zero: the
/// features that need them are off).
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading /sys/kernel/btf/vmlinux")]
    Read(#[source] std::io::Error),
    #[error("not little-endian BTF data")]
    NotBtf,
    #[error("BTF sections run past the end of the data")]
    Truncated,
}

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;

pub struct Btf {
    data: Vec<u8>,
    type_off: usize,
    type_len: usize,
    str_off: usize,
    str_len: usize,
}

fn u32_at(d: &[u8], off: usize) -> Option<u32> {
    d.get(off..off + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl Btf {
    pub fn from_sys() -> Result<Btf, BtfError> {
        let data = std::fs::read("/sys/kernel/btf/vmlinux").map_err(BtfError::Read)?;
        Btf::parse(data)
    }

    pub fn parse(data: Vec<u8>) -> Result<Btf, BtfError> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            return Err(BtfError::NotBtf);
        }
        let hdr_len = u32_at(&data, 4).unwrap_or(0) as usize;
        let field = |i: usize| u32_at(&data, 8 + 4 * i).unwrap_or(0) as usize;
        let (type_off, type_len, str_off, str_len) = (hdr_len + field(0), field(1), hdr_len + field(2), field(3));
        if type_off + type_len > data.len() || str_off + str_len > data.len() {
            return Err(BtfError::Truncated);
        }
        Ok(Btf { data, type_off, type_len, str_off, str_len })
    }

    fn name(&self, off: u32) -> &[u8] {
        let start = self.str_off + off as usize;
        let end = self.str_off + self.str_len;
        let s = self.data.get(start..end).unwrap_or(&[]);
        &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
    }

    /// Byte offset of `member` in `struct name` (not bitfields).
    pub fn member_offset(&self, name: &str, member: &str) -> Option<u32> {
        let d = &self.data;
        let mut p = self.type_off;
        let end = self.type_off + self.type_len;
        while p + 12 <= end {
            let name_off = u32_at(d, p)?;
            let info = u32_at(d, p + 4)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31;
            let body = p + 12;
            if kind == KIND_STRUCT && self.name(name_off) == name.as_bytes() {
                for i in 0..vlen {
                    let m = body + 12 * i;
                    if self.name(u32_at(d, m)?) == member.as_bytes() {
                        let off = u32_at(d, m + 8)?;
                        let bits = if kind_flag == 1 { off & 0x00ff_ffff } else { off };
                        return (bits % 8 == 0).then_some(bits / 8);
                    }
                }
            }
            // Size of the kind-specific data that follows the common header.
            p = body
                + match kind {
                    1 | 14 | 17 => 4,        // INT, VAR, DECL_TAG
                    3 => 12,                 // ARRAY
                    4 | 5 | 15 => 12 * vlen, // STRUCT, UNION, DATASEC
                    6 | 13 => 8 * vlen,      // ENUM, FUNC_PROTO
                    19 => 12 * vlen,         // ENUM64
                    _ => 0,
                };
        }
        None
    }
}

/// Every struct member offset the programs read through CONFIG, from one read of the
/// kernel's BTF (5.5 MB here: read once, kept only while the offsets are looked up).
#[derive(Clone, Copy, Default)]
pub struct KernelOffsets {
    pub task_tgid: Option<u32>,
    /// `task_struct.thread_info.status` (x86), whose TS_COMPAT bit marks a 32-bit syscall.
    pub task_status: Option<u32>,
    /// linux_binprm.file, .buf, file.f_inode, inode.i_size, linux_binprm.filename, .interp.
    pub shell: Option<[u32; 6]>,
}

/// The kernel's offsets, looked up once per process (all zero without BTF).
pub fn kernel_offsets() -> KernelOffsets {
    static CACHE: std::sync::OnceLock<KernelOffsets> = std::sync::OnceLock::new();
    *CACHE.get_or_init(|| {
        let Ok(b) = Btf::from_sys() else { return KernelOffsets::default() };
        let m = |s: &str, f: &str| b.member_offset(s, f);
        KernelOffsets {
            task_tgid: m("task_struct", "tgid"),
            // Never 0: `status` follows `flags` in x86's thread_info.
            task_status: m("task_struct", "thread_info").zip(m("thread_info", "status")).map(|(t, s)| t + s),
            shell: (|| {
                Some([
                    m("linux_binprm", "file")?,
                    m("linux_binprm", "buf")?,
                    m("file", "f_inode")?,
                    m("inode", "i_size")?,
                    m("linux_binprm", "filename")?,
                    m("linux_binprm", "interp")?,
                ])
            })(),
        }
    })
}

/// The `task_struct` offsets for CONFIG: (slot, offset); missing ones are left out (0 in
/// CONFIG: the feature is off).
pub fn task_offsets() -> Vec<(u32, u32)> {
    let k = kernel_offsets();
    [(watcher_common::CFG_OFF_TASK_TGID, k.task_tgid), (watcher_common::CFG_OFF_TASK_STATUS, k.task_status)]
        .into_iter()
        .filter_map(|(slot, off)| Some((slot, off?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with one INT type and `struct s { int a; int b; }` (b at bit 32).
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0";
        let mut types = Vec::new();
        let push = |v: &mut Vec<u8>, x: u32| v.extend_from_slice(&x.to_le_bytes());
        // [1] INT "int" size 4, encoding word
        push(&mut types, 1);
        push(&mut types, 1 << 24);
        push(&mut types, 4);
        push(&mut types, 32);
        // [2] STRUCT "s" vlen 2 size 8
        push(&mut types, 5);
        push(&mut types, (4 << 24) | 2);
        push(&mut types, 8);
        for (n, off) in [(7u32, 0u32), (9, 32)] {
            push(&mut types, n);
            push(&mut types, 1);
            push(&mut types, off);
        }
        let mut d = Vec::new();
        d.extend_from_slice(&MAGIC.to_le_bytes());
        d.push(1);
        d.push(0);
        push(&mut d, 24);
        push(&mut d, 0);
        push(&mut d, types.len() as u32);
        push(&mut d, types.len() as u32);
        push(&mut d, strings.len() as u32);
        d.extend_from_slice(&types);
        d.extend_from_slice(strings);
        d
    }

    #[test]
    fn finds_member_offsets() {
        let b = Btf::parse(blob()).unwrap();
        assert_eq!(b.member_offset("s", "a"), Some(0));
        assert_eq!(b.member_offset("s", "b"), Some(4));
        assert_eq!(b.member_offset("s", "c"), None);
        assert_eq!(b.member_offset("t", "a"), None);
        assert!(Btf::parse(vec![0; 10]).is_err());
    }

    #[test]
    fn reads_this_kernels_binprm_layout() {
        let Ok(b) = Btf::from_sys() else { return }; // no BTF: nothing to check
        assert!(b.member_offset("linux_binprm", "file").is_some());
        assert!(b.member_offset("linux_binprm", "buf").is_some());
        assert!(b.member_offset("file", "f_inode").is_some());
        assert!(b.member_offset("inode", "i_size").is_some());
    }
}
