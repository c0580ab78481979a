//! Just enough of the BPF Type Format to find struct member offsets and function type ids in
//! the running kernel's /sys/kernel/btf/vmlinux, so a kernel program can read a few fields of
//! kernel structs that no stable interface exposes. aya parses BTF but does not expose member
//! lookups (and its parser holds the whole file plus a typed copy of every type, ~18 MiB of
//! heap for this kernel's 5.5 MB); btf-rs does, under the LGPL.
//!
//! The file is streamed, never held: one pass over the string section finds the offsets of the
//! few names asked for, one pass over the type section compares name offsets as numbers. Peak
//! memory is two 64 KiB read buffers, whatever the size of the kernel's BTF.
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};

/// BTF that cannot be read or is not BTF (the kernel's offsets are then left at zero: the
/// features that need them are off).
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("{0}")]
    Read(&'static str, #[source] std::io::Error),
    #[error("not little-endian BTF data")]
    NotBtf,
    #[error("BTF sections run past the end of the data")]
    Truncated,
}

/// `?` on an I/O result while doing `what`.
trait Doing<T> {
    fn doing(self, what: &'static str) -> Result<T, BtfError>;
}

impl<T> Doing<T> for std::io::Result<T> {
    fn doing(self, what: &'static str) -> Result<T, BtfError> {
        self.map_err(|e| BtfError::Read(what, e))
    }
}

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_FUNC: u32 = 12;
/// Longest name looked at; BTF names are kernel symbols (KSYM_NAME_LEN is 512).
const MAX_NAME: usize = 4096;

/// What to look up: members of named structs, and named functions.
pub struct Query<'a> {
    pub members: &'a [(&'a str, &'a str)],
    pub funcs: &'a [&'a str],
}

/// The answers, in the query's order: byte offsets of members (not bitfields), type ids of
/// functions (BTF ids start at 1, in the order of the type section).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    pub members: Vec<Option<u32>>,
    pub funcs: Vec<Option<u32>>,
}

fn u32_le(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Look `q` up in the BTF data `r` (little-endian, as the kernel writes it for x86_64).
pub fn lookup<R: Read + Seek>(mut r: R, q: &Query) -> Result<Found, BtfError> {
    let mut hdr = [0u8; 24];
    r.read_exact(&mut hdr).doing("reading the BTF header")?;
    if u16::from_le_bytes([hdr[0], hdr[1]]) != MAGIC {
        return Err(BtfError::NotBtf);
    }
    let hdr_len = u32_le(&hdr, 4) as u64;
    let (type_off, type_len) = (hdr_len + u32_le(&hdr, 8) as u64, u32_le(&hdr, 12) as u64);
    let (str_off, str_len) = (hdr_len + u32_le(&hdr, 16) as u64, u32_le(&hdr, 20) as u64);
    let size = r.seek(SeekFrom::End(0)).doing("seeking in the BTF data")?;
    if hdr_len < 24 || type_off + type_len > size || str_off + str_len > size {
        return Err(BtfError::Truncated);
    }

    // Every wanted name, once: (name, offsets in the string section where it is found).
    let mut names: Vec<(&str, Vec<u32>)> = Vec::new();
    for n in q.members.iter().flat_map(|(s, m)| [*s, *m]).chain(q.funcs.iter().copied()) {
        if !names.iter().any(|(x, _)| *x == n) {
            names.push((n, Vec::new()));
        }
    }
    r.seek(SeekFrom::Start(str_off)).doing("seeking in the BTF data")?;
    let mut strings = BufReader::with_capacity(64 * 1024, (&mut r).take(str_len));
    let mut s = Vec::with_capacity(256);
    let mut at = 0u64;
    loop {
        s.clear();
        let n = (&mut strings).take(MAX_NAME as u64).read_until(0, &mut s).doing("reading BTF strings")?;
        if n == 0 {
            break;
        }
        let name = s.strip_suffix(&[0]).unwrap_or(&s);
        if let Some((_, offs)) = names.iter_mut().find(|(x, _)| x.as_bytes() == name) {
            offs.push(at as u32);
        }
        at += n as u64;
    }
    drop(strings);
    let offs = |name: &str| -> &[u32] { names.iter().find(|(x, _)| *x == name).map_or(&[], |(_, o)| o) };
    let is = |off: u32, name: &str| offs(name).contains(&off);

    let mut found = Found { members: vec![None; q.members.len()], funcs: vec![None; q.funcs.len()] };
    let mut decided = vec![false; q.members.len()];
    // Per query: the anonymous members (type id, offset) of the struct asked about, when the
    // member is not its own; the anonymous structs and unions (type id, offset) that have it.
    let mut anon_of: Vec<Vec<(u32, Option<u32>)>> = vec![Vec::new(); q.members.len()];
    let mut inner: Vec<Vec<(u32, Option<u32>)>> = vec![Vec::new(); q.members.len()];
    r.seek(SeekFrom::Start(type_off)).doing("seeking in the BTF data")?;
    let mut types = BufReader::with_capacity(64 * 1024, (&mut r).take(type_len));
    let mut body = Vec::new();
    let mut id = 0u32;
    loop {
        let mut h = [0u8; 12];
        match types.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(BtfError::Read("reading BTF types", e)),
        }
        id += 1;
        let (name_off, info) = (u32_le(&h, 0), u32_le(&h, 4));
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kind_flag = info >> 31;
        // Size of the kind-specific data that follows the common header.
        let len = match kind {
            1 | 14 | 17 => 4,        // INT, VAR, DECL_TAG
            3 => 12,                 // ARRAY
            4 | 5 | 15 => 12 * vlen, // STRUCT, UNION, DATASEC
            6 | 13 => 8 * vlen,      // ENUM, FUNC_PROTO
            19 => 12 * vlen,         // ENUM64
            _ => 0,
        };
        body.resize(len, 0);
        types.read_exact(&mut body).doing("reading BTF types (truncated type)")?;
        if kind == KIND_FUNC {
            for (i, f) in q.funcs.iter().enumerate() {
                if found.funcs[i].is_none() && is(name_off, f) {
                    found.funcs[i] = Some(id);
                }
            }
        }
        if kind != KIND_STRUCT && kind != KIND_UNION {
            continue;
        }
        let member_at = |k: usize| {
            let (m, off) = (12 * k, u32_le(&body, 12 * k + 8));
            let bits = if kind_flag == 1 { off & 0x00ff_ffff } else { off };
            (u32_le(&body, m), u32_le(&body, m + 4), (bits % 8 == 0).then_some(bits / 8))
        };
        for (i, (st, member)) in q.members.iter().enumerate() {
            if decided[i] {
                continue;
            }
            // A member inside an anonymous union or struct (`file.f_path`, `dentry.d_name`):
            // where such a type has the member, and where the struct has anonymous members.
            if name_off == 0 {
                if let Some((_, _, off)) = (0..vlen).map(member_at).find(|(n, _, _)| is(*n, member)) {
                    inner[i].push((id, off));
                }
                continue;
            }
            if kind != KIND_STRUCT || !is(name_off, st) {
                continue;
            }
            // The first struct of that name that has the member decides (a bitfield: none).
            if let Some((_, _, off)) = (0..vlen).map(member_at).find(|(n, _, _)| is(*n, member)) {
                found.members[i] = off;
                decided[i] = true;
            } else if anon_of[i].is_empty() {
                anon_of[i] = (0..vlen).map(member_at).filter(|(n, _, _)| *n == 0).map(|(_, t, o)| (t, o)).collect();
            }
        }
        if decided.iter().all(|d| *d) && found.funcs.iter().all(Option::is_some) {
            break;
        }
    }
    // One level of anonymous members (their types may come after the struct in the section).
    for i in 0..q.members.len() {
        if decided[i] {
            continue;
        }
        found.members[i] = anon_of[i].iter().find_map(|&(t, outer)| {
            let (_, inner) = inner[i].iter().find(|(id, _)| *id == t)?;
            Some(outer? + (*inner)?)
        });
    }
    Ok(found)
}

/// Every struct member offset the programs read through CONFIG, and the BTF ids of the
/// functions the hook probe names, from one streamed read of the kernel's BTF.
#[derive(Clone, Copy, Default)]
pub struct KernelOffsets {
    pub task_tgid: Option<u32>,
    /// `task_struct.thread_info.status` (x86), whose TS_COMPAT bit marks a 32-bit syscall.
    pub task_status: Option<u32>,
    /// linux_binprm.file, .buf, file.f_inode, inode.i_size, linux_binprm.filename, .interp.
    pub shell: Option<[u32; 6]>,
    /// file.f_path + path.dentry, dentry.d_name + qstr.name: the name of an executed file.
    pub exe_name: Option<[u32; 2]>,
    /// BTF id of `bpf_fentry_test1` (the fentry probe's target).
    pub fentry_probe: Option<u32>,
    /// BTF id of `bpf_lsm_bpf` (the BPF LSM probe's target).
    pub lsm_probe: Option<u32>,
}

const MEMBERS: &[(&str, &str)] = &[
    ("task_struct", "tgid"),
    ("task_struct", "thread_info"),
    ("thread_info", "status"),
    ("linux_binprm", "file"),
    ("linux_binprm", "buf"),
    ("file", "f_inode"),
    ("inode", "i_size"),
    ("linux_binprm", "filename"),
    ("linux_binprm", "interp"),
    ("file", "f_path"),
    ("path", "dentry"),
    ("dentry", "d_name"),
    ("qstr", "name"),
];
const FUNCS: &[&str] = &["bpf_fentry_test1", "bpf_lsm_bpf"];

/// The kernel's offsets, looked up once per process (all none without BTF).
pub fn kernel_offsets() -> KernelOffsets {
    static CACHE: std::sync::OnceLock<KernelOffsets> = std::sync::OnceLock::new();
    *CACHE.get_or_init(|| {
        let Ok(f) = std::fs::File::open("/sys/kernel/btf/vmlinux") else { return KernelOffsets::default() };
        let found = match lookup(f, &Query { members: MEMBERS, funcs: FUNCS }) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!("reading /sys/kernel/btf/vmlinux: {e:#}");
                return KernelOffsets::default();
            }
        };
        let m = |i: usize| found.members[i];
        KernelOffsets {
            task_tgid: m(0),
            // Never 0: `status` follows `flags` in x86's thread_info.
            task_status: m(1).zip(m(2)).map(|(t, s)| t + s),
            shell: (|| Some([m(3)?, m(4)?, m(5)?, m(6)?, m(7)?, m(8)?]))(),
            // Never 0: `dentry` follows `mnt` in `struct path`, `name` follows `hash_len` in qstr.
            exe_name: (|| Some([m(9)? + m(10)?, m(11)? + m(12)?]))(),
            fentry_probe: found.funcs[0],
            lsm_probe: found.funcs[1],
        }
    })
}

/// The `task_struct` offsets and those naming an executed file, for CONFIG: (slot, offset);
/// missing ones are left out (0 in CONFIG: the feature is off).
pub fn config_offsets() -> Vec<(u32, u32)> {
    let k = kernel_offsets();
    let [dentry, name] = k.exe_name.map_or([None, None], |[d, n]| [Some(d), Some(n)]);
    [
        (watcher_common::CFG_OFF_TASK_TGID, k.task_tgid),
        (watcher_common::CFG_OFF_TASK_STATUS, k.task_status),
        (watcher_common::CFG_OFF_FILE_DENTRY, dentry),
        (watcher_common::CFG_OFF_DENTRY_NAME, name),
    ]
    .into_iter()
    .filter_map(|(slot, off)| Some((slot, off?)))
    .collect()
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// A BTF blob: [1] INT "int", [2] STRUCT "s" { int a; int b; } (b at bit 32), [3] STRUCT
    /// "s" { int c; } (a second struct of that name), [4] FUNC "f", [5] STRUCT "u" with a
    /// bitfield member "x" at bit 3.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0c\0f\0u\0x\0";
        let mut types = Vec::new();
        let push = |v: &mut Vec<u8>, x: u32| v.extend_from_slice(&x.to_le_bytes());
        push(&mut types, 1);
        push(&mut types, 1 << 24);
        push(&mut types, 4);
        push(&mut types, 32);
        push(&mut types, 5);
        push(&mut types, (4 << 24) | 2);
        push(&mut types, 8);
        for (n, off) in [(7u32, 0u32), (9, 32)] {
            push(&mut types, n);
            push(&mut types, 1);
            push(&mut types, off);
        }
        push(&mut types, 5);
        push(&mut types, (4 << 24) | 1);
        push(&mut types, 4);
        for v in [11u32, 1, 0] {
            push(&mut types, v);
        }
        push(&mut types, 13);
        push(&mut types, 12 << 24);
        push(&mut types, 0);
        push(&mut types, 15);
        push(&mut types, (4 << 24) | 1);
        push(&mut types, 4);
        for v in [17u32, 1, 3] {
            push(&mut types, v);
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
    fn finds_member_offsets_and_function_ids() {
        let members = [("s", "a"), ("s", "b"), ("s", "c"), ("s", "z"), ("t", "a"), ("u", "x")];
        let found = lookup(Cursor::new(blob()), &Query { members: &members, funcs: &["f", "s", "g"] }).unwrap();
        assert_eq!(found.members, [Some(0), Some(4), Some(0), None, None, None]);
        // "s" names structs, not a function.
        assert_eq!(found.funcs, [Some(4), None, None]);
    }

    #[test]
    fn refuses_what_is_not_btf() {
        let q = Query { members: &[("s", "a")], funcs: &[] };
        assert!(lookup(Cursor::new(vec![0; 10]), &q).is_err());
        assert!(lookup(Cursor::new(vec![0; 30]), &q).is_err());
        let mut cut = blob();
        cut.truncate(40);
        assert!(lookup(Cursor::new(cut), &q).is_err());
    }

    #[test]
    fn reads_this_kernels_binprm_layout() {
        let Ok(f) = std::fs::File::open("/sys/kernel/btf/vmlinux") else { return }; // no BTF
        let found = lookup(f, &Query { members: MEMBERS, funcs: FUNCS }).unwrap();
        assert!(found.members[3..7].iter().all(Option::is_some), "{found:?}");
        assert!(found.members[0].is_some());
        // file.f_path, path.dentry, dentry.d_name, qstr.name: an fd exec's program name.
        assert!(found.members[9..13].iter().all(Option::is_some), "{found:?}");
        assert!(kernel_offsets().exe_name.is_some());
        // The same function ids as aya's full parser (which the hook probe used before).
        let aya = aya_obj::btf::Btf::from_sys_fs().unwrap();
        for (i, f) in FUNCS.iter().enumerate() {
            assert_eq!(found.funcs[i], aya.id_by_type_name_kind(f, aya_obj::btf::BtfKind::Func).ok(), "{f}");
        }
    }
}
