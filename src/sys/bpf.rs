//! `bpf(2)`: program info, link creation, and the few map/program commands the built-in
//! counter needs.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_int = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;
const BPF_LINK_CREATE: libc::c_int = 28;

/// `BPF_PROG_TYPE_KPROBE`.
pub(crate) const BPF_PROG_TYPE_KPROBE: u32 = 2;
/// `BPF_MAP_TYPE_ARRAY`.
pub(crate) const BPF_MAP_TYPE_ARRAY: u32 = 2;
/// `BPF_PERF_EVENT` attach type.
pub(crate) const BPF_PERF_EVENT: u32 = 41;
/// `BPF_TRACE_KPROBE_MULTI` attach type.
pub(crate) const BPF_TRACE_KPROBE_MULTI: u32 = 42;
/// `BPF_TRACE_UPROBE_MULTI` attach type.
pub(crate) const BPF_TRACE_UPROBE_MULTI: u32 = 48;
/// `BPF_TRACE_KPROBE_SESSION` attach type (6.10+): a kprobe multi link whose program runs
/// on entry and, unless the entry run returned non-zero, on return.
pub(crate) const BPF_TRACE_KPROBE_SESSION: u32 = 56;
/// `BPF_TRACE_UPROBE_SESSION` attach type (6.13+): the same for uprobes.
pub(crate) const BPF_TRACE_UPROBE_SESSION: u32 = 57;
/// `BPF_F_KPROBE_MULTI_RETURN` / `BPF_F_UPROBE_MULTI_RETURN`.
pub(crate) const MULTI_RETURN: u32 = 1;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Insn {
    pub code: u8,
    /// `dst_reg` in the low nibble, `src_reg` in the high nibble.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// `bpf(cmd, attr, sizeof(attr))`.
///
/// # Safety
/// `attr` must be a `#[repr(C)]` struct laid out as the prefix of `union bpf_attr` that
/// `cmd` reads, and every pointer inside it must point to memory that is valid (for reads,
/// or for writes of the size the kernel is told) and stays alive until the call returns.
unsafe fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    let size = u32::try_from(std::mem::size_of::<T>()).expect("bpf_attr fits in u32");
    // SAFETY: the caller vouches for `attr` (see above); `size` is its length.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// [`bpf`] for a command that returns a new file descriptor.
///
/// # Safety
/// As for [`bpf`]; and `cmd` must be a command whose non-negative result is a new fd
/// that nothing else owns.
unsafe fn bpf_fd<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: the caller's obligations are those of `bpf`.
    let ret = unsafe { bpf(cmd, attr) }?;
    // SAFETY: the caller vouches that `cmd` returns a new, unowned fd.
    unsafe { super::owned_fd(ret) }
}

mod info;
pub(crate) use info::{
    link_info, perf_event_prog_id, prog_stats, BPF_LINK_TYPE_KPROBE_MULTI,
    BPF_LINK_TYPE_PERF_EVENT, BPF_LINK_TYPE_UPROBE_MULTI,
};

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    // Valid fds are never negative.
    fd.as_raw_fd().unsigned_abs()
}

/// What `BPF_OBJ_GET_INFO_BY_FD` tells about a program.
#[derive(Clone, Debug)]
pub(crate) struct ProgInfo {
    pub prog_type: u32,
    pub id: u32,
}

/// `struct bpf_prog_info` up to `name`.
#[repr(C)]
#[derive(Default)]
struct RawProgInfo {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a program. `EINVAL` means the fd is not a BPF object.
pub(crate) fn prog_info(prog: BorrowedFd<'_>) -> io::Result<ProgInfo> {
    let mut info = RawProgInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: fd_u32(prog),
        info_len: u32::try_from(std::mem::size_of::<RawProgInfo>()).expect("small"),
        info: std::ptr::from_mut(&mut info) as u64,
    };
    // SAFETY: `attr` is the `info` member of `bpf_attr`; `info` points to `info_len`
    // writable bytes that live until the end of this function.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    Ok(ProgInfo {
        prog_type: info.prog_type,
        id: info.id,
    })
}

/// `BPF_LINK_CREATE`'s fixed head; the per-attach-type tail follows.
#[repr(C)]
struct LinkCreateAttr<T> {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    tail: T,
}

/// Creates a `BPF_PERF_EVENT` link from `prog` to a perf event, carrying `cookie` for
/// `bpf_get_attach_cookie()`.
///
/// `target` `None` passes fd -1: used to tell a plain program (`EBADF`, the kernel went on to
/// look the fd up) from a multi-only one (`EINVAL`).
pub(crate) fn link_create_perf(
    prog: BorrowedFd<'_>,
    target: Option<BorrowedFd<'_>>,
    cookie: u64,
) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: fd_u32(prog),
        target_fd: target.map_or(u32::MAX, fd_u32),
        attach_type: BPF_PERF_EVENT,
        flags: 0,
        tail: cookie,
    };
    // SAFETY: `attr` is the `link_create` member with the `perf_event` tail (no pointers);
    // `BPF_LINK_CREATE` returns a new link fd.
    unsafe { bpf_fd(BPF_LINK_CREATE, &mut attr) }
}

#[repr(C)]
struct KprobeMultiTail {
    flags: u32,
    cnt: u32,
    syms: u64,
    addrs: u64,
    cookies: u64,
}

/// The targets of a kprobe multi link: kernel symbol names, or kernel text addresses.
#[derive(Clone, Copy, Debug)]
pub(crate) enum KprobeTargets<'a> {
    Symbols(&'a [&'a CStr]),
    Addresses(&'a [u64]),
}

/// Creates a kprobe multi link (`attach_type` `BPF_TRACE_KPROBE_MULTI` or
/// `BPF_TRACE_KPROBE_SESSION`) on `targets`, with one cookie per target (or none).
pub(crate) fn link_create_kprobe_multi(
    prog: BorrowedFd<'_>,
    attach_type: u32,
    targets: KprobeTargets<'_>,
    cookies: Option<&[u64]>,
    flags: u32,
) -> io::Result<OwnedFd> {
    let (cnt, ptrs, addrs) = match targets {
        KprobeTargets::Symbols(syms) => (
            syms.len(),
            syms.iter().map(|s| s.as_ptr() as u64).collect::<Vec<u64>>(),
            0,
        ),
        KprobeTargets::Addresses(addrs) => (addrs.len(), Vec::new(), addrs.as_ptr() as u64),
    };
    if cookies.is_some_and(|c| c.len() != cnt) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut attr = LinkCreateAttr {
        prog_fd: fd_u32(prog),
        target_fd: 0,
        attach_type,
        flags: 0,
        tail: KprobeMultiTail {
            flags,
            cnt: u32::try_from(cnt).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
            syms: if ptrs.is_empty() {
                0
            } else {
                ptrs.as_ptr() as u64
            },
            addrs,
            cookies: cookies.map_or(0, |c| c.as_ptr() as u64),
        },
    };
    // SAFETY: `attr` is the `link_create` member with the `kprobe_multi` tail; `syms` (or
    // `addrs`) points to `cnt` pointers to NUL-terminated strings (or `cnt` u64s) and
    // `cookies` (if set) to `cnt` u64s, all borrowed (`ptrs`, `targets`, `cookies`) for the
    // whole call. Returns a new link fd.
    unsafe { bpf_fd(BPF_LINK_CREATE, &mut attr) }
}

/// A program that returns 0 (`r0 = 0; exit`): the smallest a feature probe loads.
pub(crate) const RETURN_ZERO: [Insn; 2] = [
    Insn {
        code: 0xb7,
        regs: 0,
        off: 0,
        imm: 0,
    },
    Insn {
        code: 0x95,
        regs: 0,
        off: 0,
        imm: 0,
    },
];

#[repr(C)]
struct UprobeMultiTail {
    path: u64,
    offsets: u64,
    ref_ctr_offsets: u64,
    cookies: u64,
    cnt: u32,
    flags: u32,
    pid: u32,
    pad: u32,
}

/// What a uprobe multi link is made of.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UprobeMulti<'a> {
    /// `BPF_TRACE_UPROBE_MULTI` or `BPF_TRACE_UPROBE_SESSION`.
    pub attach_type: u32,
    pub path: &'a CStr,
    /// File offsets.
    pub offsets: &'a [u64],
    /// One per offset, when given.
    pub ref_ctr_offsets: Option<&'a [u64]>,
    /// One per offset, when given.
    pub cookies: Option<&'a [u64]>,
    pub flags: u32,
    /// 0: every process.
    pub pid: u32,
}

/// Creates a uprobe multi link on `link.offsets` of `link.path`.
pub(crate) fn link_create_uprobe_multi(
    prog: BorrowedFd<'_>,
    link: &UprobeMulti<'_>,
) -> io::Result<OwnedFd> {
    let UprobeMulti {
        attach_type,
        path,
        offsets,
        ref_ctr_offsets,
        cookies,
        flags,
        pid,
    } = *link;
    let n = offsets.len();
    if ref_ctr_offsets.is_some_and(|r| r.len() != n) || cookies.is_some_and(|c| c.len() != n) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut attr = LinkCreateAttr {
        prog_fd: fd_u32(prog),
        target_fd: 0,
        attach_type,
        flags: 0,
        tail: UprobeMultiTail {
            path: path.as_ptr() as u64,
            offsets: offsets.as_ptr() as u64,
            ref_ctr_offsets: ref_ctr_offsets.map_or(0, |r| r.as_ptr() as u64),
            cookies: cookies.map_or(0, |c| c.as_ptr() as u64),
            cnt: u32::try_from(n).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
            flags,
            pid,
            pad: 0,
        },
    };
    // SAFETY: `attr` is the `link_create` member with the `uprobe_multi` tail; `path` is a
    // NUL-terminated string and `offsets`, `ref_ctr_offsets`, `cookies` point to `cnt` u64s
    // each (lengths checked above), all borrowed for the whole call. Returns a new link fd.
    unsafe { bpf_fd(BPF_LINK_CREATE, &mut attr) }
}

#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

fn object_name(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (dst, src) in out.iter_mut().zip(name.bytes().take(15)) {
        *dst = src;
    }
    out
}

/// `BPF_MAP_CREATE` for an array of `max_entries` values of `value_size` bytes (u32 keys).
pub(crate) fn map_create_array(
    value_size: u32,
    max_entries: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size,
        max_entries,
        map_flags: 0,
        inner_map_fd: 0,
        numa_node: 0,
        map_name: object_name(name),
    };
    // SAFETY: `attr` is the `map_create` prefix of `bpf_attr` (no pointers); returns a new
    // map fd.
    unsafe { bpf_fd(BPF_MAP_CREATE, &mut attr) }
}

#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `BPF_MAP_LOOKUP_ELEM` of a u32 key into `value` (which must be the map's value size).
pub(crate) fn map_lookup(map: BorrowedFd<'_>, key: u32, value: &mut [u8]) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: fd_u32(map),
        pad: 0,
        key: std::ptr::from_ref(&key) as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `key` points to a u32 and `value` to a writable buffer that must be the map's
    // value size (this function's contract, checked by the kernel against the map); both
    // live until the call returns.
    unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) }.map(drop)
}

/// `BPF_MAP_UPDATE_ELEM` (`BPF_ANY`) of a u32 key with `value` (the map's value size).
pub(crate) fn map_update(map: BorrowedFd<'_>, key: u32, value: &[u8]) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: fd_u32(map),
        pad: 0,
        key: std::ptr::from_ref(&key) as u64,
        value: value.as_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `key` points to a u32 and `value` to the caller's buffer, both alive until the
    // call returns; the kernel only reads them.
    unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }.map(drop)
}

#[repr(C)]
struct ProgLoadAttr {
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
}

/// `BPF_PROG_LOAD`. On a verifier rejection the error's message carries the verifier log.
pub(crate) fn prog_load(
    prog_type: u32,
    expected_attach_type: u32,
    insns: &[Insn],
    license: &CStr,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: u32::try_from(insns.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: object_name(name),
        prog_ifindex: 0,
        expected_attach_type,
    };
    // SAFETY: `attr` is the `prog_load` prefix of `bpf_attr`; `insns` points to `insn_cnt`
    // instructions and `license` to a NUL-terminated string, both borrowed for the call; no
    // log buffer yet. Returns a new program fd.
    match unsafe { bpf_fd(BPF_PROG_LOAD, &mut attr) } {
        Ok(fd) => Ok(fd),
        Err(e)
            if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EINVAL) =>
        {
            // Load again with the verifier log on, to say why.
            attr.log_level = 1;
            attr.log_size = u32::try_from(log.len()).expect("small");
            attr.log_buf = log.as_mut_ptr() as u64;
            // SAFETY: as above, and `log_buf` points to `log_size` writable bytes (`log`).
            match unsafe { bpf_fd(BPF_PROG_LOAD, &mut attr) } {
                Ok(fd) => Ok(fd),
                Err(again) => {
                    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                    let text = String::from_utf8_lossy(&log[..end]);
                    if text.trim().is_empty() {
                        Err(again)
                    } else {
                        Err(io::Error::new(
                            again.kind(),
                            format!("{again}; verifier log:\n{text}"),
                        ))
                    }
                }
            }
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layouts_match_the_kernel() {
        use std::mem::{offset_of, size_of};
        assert_eq!(size_of::<Insn>(), 8);
        assert_eq!(size_of::<RawProgInfo>(), 80);
        assert_eq!(offset_of!(RawProgInfo, name), 64);
        assert_eq!(size_of::<LinkCreateAttr<u64>>(), 24);
        assert_eq!(offset_of!(LinkCreateAttr<KprobeMultiTail>, tail), 16);
        assert_eq!(size_of::<LinkCreateAttr<KprobeMultiTail>>(), 48);
        assert_eq!(size_of::<LinkCreateAttr<UprobeMultiTail>>(), 64);
        assert_eq!(offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(offset_of!(MapCreateAttr, map_name), 28);
    }

    #[test]
    fn object_names_are_truncated_and_terminated() {
        let n = object_name("a_very_long_object_name");
        assert_eq!(&n[..15], b"a_very_long_obj");
        assert_eq!(n[15], 0);
    }
}
