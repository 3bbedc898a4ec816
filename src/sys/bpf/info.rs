//! `BPF_OBJ_GET_INFO_BY_FD` for links and a program's statistics, and `BPF_TASK_FD_QUERY`
//! for a perf event that has no link: what the health readers ask.

use std::io;
use std::os::fd::BorrowedFd;

use super::{bpf, fd_u32, InfoAttr, BPF_OBJ_GET_INFO_BY_FD};

const BPF_TASK_FD_QUERY: libc::c_int = 20;

/// `BPF_OBJ_GET_INFO_BY_FD` into `info`; the length the kernel filled in (its own struct's
/// size when that is smaller than `T`).
///
/// # Safety
/// `T` must be a `#[repr(C)]` plain-data struct (every bit pattern valid) laid out as the
/// prefix of the info struct of `fd`'s object type, with every pointer in it 0 and every
/// count 0, so the kernel writes nothing beyond `T`.
unsafe fn obj_info<T>(fd: BorrowedFd<'_>, info: &mut T) -> io::Result<u32> {
    let mut attr = InfoAttr {
        bpf_fd: fd_u32(fd),
        info_len: u32::try_from(std::mem::size_of::<T>()).expect("small"),
        info: std::ptr::from_mut(info) as u64,
    };
    // SAFETY: `attr` is the `info` member of `bpf_attr`; `info` points to `info_len` writable
    // bytes that live until the call returns, and (the caller vouches) holds no pointer the
    // kernel would follow.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    Ok(attr.info_len)
}

/// `struct bpf_prog_info` up to `attach_btf_id` (232 bytes, the size since 5.17); only the
/// fields the crate reads are named.
#[repr(C, align(8))]
struct RawProgStats {
    prog_type: u32,
    id: u32,
    /// `tag` to `prog_tags`: pointers and counts, all left 0.
    middle: [u8; 184],
    run_time_ns: u64,
    run_cnt: u64,
    recursion_misses: u64,
    verified_insns: u32,
    attach_btf_obj_id: u32,
    attach_btf_id: u32,
    pad: u32,
}

/// A program's run statistics as `BPF_OBJ_GET_INFO_BY_FD` reports them; `None` where the
/// kernel's `bpf_prog_info` is too short to hold the field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProgStats {
    pub id: u32,
    /// 5.1+.
    pub run_time_ns: Option<u64>,
    /// 5.1+.
    pub run_cnt: Option<u64>,
    /// 5.12+.
    pub recursion_misses: Option<u64>,
}

/// Whether the kernel filled `len` bytes that cover the `size` bytes at `offset`.
fn covers(len: u32, offset: usize, size: usize) -> bool {
    usize::try_from(len).is_ok_and(|len| len >= offset + size)
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a program, for its id and run statistics.
pub(crate) fn prog_stats(prog: BorrowedFd<'_>) -> io::Result<ProgStats> {
    use std::mem::offset_of;
    let mut info = RawProgStats {
        prog_type: 0,
        id: 0,
        middle: [0; 184],
        run_time_ns: 0,
        run_cnt: 0,
        recursion_misses: 0,
        verified_insns: 0,
        attach_btf_obj_id: 0,
        attach_btf_id: 0,
        pad: 0,
    };
    // SAFETY: `RawProgStats` is plain data laid out as `bpf_prog_info` (checked by the
    // layout test), with every pointer and count 0.
    let len = unsafe { obj_info(prog, &mut info) }?;
    let at = |offset: usize, value: u64| covers(len, offset, 8).then_some(value);
    Ok(ProgStats {
        id: info.id,
        run_time_ns: at(offset_of!(RawProgStats, run_time_ns), info.run_time_ns),
        run_cnt: at(offset_of!(RawProgStats, run_cnt), info.run_cnt),
        recursion_misses: at(
            offset_of!(RawProgStats, recursion_misses),
            info.recursion_misses,
        ),
    })
}

/// `BPF_LINK_TYPE_PERF_EVENT`.
pub(crate) const BPF_LINK_TYPE_PERF_EVENT: u32 = 7;
/// `BPF_LINK_TYPE_KPROBE_MULTI` (kprobe session links too).
pub(crate) const BPF_LINK_TYPE_KPROBE_MULTI: u32 = 8;
/// `BPF_LINK_TYPE_UPROBE_MULTI` (uprobe session links too).
pub(crate) const BPF_LINK_TYPE_UPROBE_MULTI: u32 = 12;
/// `BPF_PERF_EVENT_KPROBE`.
const BPF_PERF_EVENT_KPROBE: u32 = 3;
/// `BPF_PERF_EVENT_KRETPROBE`.
const BPF_PERF_EVENT_KRETPROBE: u32 = 4;

/// The size of `struct bpf_link_info` since 6.7, the release that added both `missed`
/// counters (`kprobe_multi.missed` and `perf_event.kprobe.missed`). 6.6 answers 48 bytes:
/// its `kprobe_multi` member ends before where `missed` is now, but the union was already
/// longer, so the length that covers the field does not prove it.
const LINK_INFO_SIZE_WITH_MISSED: u32 = 56;

/// `struct bpf_link_info` (64 bytes on 6.8+): the head and the union as bytes.
#[repr(C, align(8))]
struct RawLinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    pad: u32,
    /// The per-type union; every pointer and count in it left 0.
    union: [u8; 48],
}

impl RawLinkInfo {
    fn u32_at(&self, offset: usize) -> u32 {
        let start = offset - 16;
        u32::from_ne_bytes(self.union[start..start + 4].try_into().expect("4 bytes"))
    }

    fn u64_at(&self, offset: usize) -> u64 {
        let start = offset - 16;
        u64::from_ne_bytes(self.union[start..start + 8].try_into().expect("8 bytes"))
    }
}

/// Offset of `perf_event.type` in `bpf_link_info`.
const PERF_EVENT_TYPE: usize = 16;
/// Offset of `perf_event.kprobe.missed`.
const PERF_EVENT_KPROBE_MISSED: usize = 48;
/// Offset of `kprobe_multi.missed`.
const KPROBE_MULTI_MISSED: usize = 32;

/// What `BPF_OBJ_GET_INFO_BY_FD` tells about a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LinkInfo {
    /// `enum bpf_link_type`.
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    /// The kernel's missed count: a kprobe perf link's or a kprobe multi link's (6.7+);
    /// `None` for other links and on older kernels.
    pub missed: Option<u64>,
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a link.
pub(crate) fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    let mut info = RawLinkInfo {
        link_type: 0,
        id: 0,
        prog_id: 0,
        pad: 0,
        union: [0; 48],
    };
    // SAFETY: `RawLinkInfo` is plain data laid out as `bpf_link_info` (checked by the
    // layout test); every name pointer and length, and every array pointer and count, in
    // its union is 0, so the kernel only fills in values.
    let len = unsafe { obj_info(link, &mut info) }?;
    let has_missed = len >= LINK_INFO_SIZE_WITH_MISSED;
    let missed = match info.link_type {
        BPF_LINK_TYPE_PERF_EVENT
            if has_missed
                && matches!(
                    info.u32_at(PERF_EVENT_TYPE),
                    BPF_PERF_EVENT_KPROBE | BPF_PERF_EVENT_KRETPROBE
                ) =>
        {
            Some(info.u64_at(PERF_EVENT_KPROBE_MISSED))
        }
        BPF_LINK_TYPE_KPROBE_MULTI if has_missed => Some(info.u64_at(KPROBE_MULTI_MISSED)),
        _ => None,
    };
    Ok(LinkInfo {
        link_type: info.link_type,
        id: info.id,
        prog_id: info.prog_id,
        missed,
    })
}

#[repr(C)]
struct TaskFdQueryAttr {
    pid: u32,
    fd: u32,
    flags: u32,
    buf_len: u32,
    buf: u64,
    prog_id: u32,
    fd_type: u32,
    probe_offset: u64,
    probe_addr: u64,
}

/// `BPF_TASK_FD_QUERY` on a perf event of this process: the id of the program on it (the
/// `PERF_EVENT_IOC_SET_BPF` path, which has no link to ask). Needs `CAP_SYS_ADMIN`.
pub(crate) fn perf_event_prog_id(perf: BorrowedFd<'_>) -> io::Result<u32> {
    let mut attr = TaskFdQueryAttr {
        pid: std::process::id(),
        fd: fd_u32(perf),
        flags: 0,
        buf_len: 0,
        buf: 0,
        prog_id: 0,
        fd_type: 0,
        probe_offset: 0,
        probe_addr: 0,
    };
    // SAFETY: `attr` is the `task_fd_query` member of `bpf_attr`; no name buffer (`buf` 0,
    // `buf_len` 0), so the kernel writes only into `attr`.
    unsafe { bpf(BPF_TASK_FD_QUERY, &mut attr) }?;
    Ok(attr.prog_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_layouts_match_the_kernel() {
        use std::mem::{offset_of, size_of};
        // struct bpf_prog_info (5.17+).
        assert_eq!(size_of::<RawProgStats>(), 232);
        assert_eq!(offset_of!(RawProgStats, run_time_ns), 192);
        assert_eq!(offset_of!(RawProgStats, run_cnt), 200);
        assert_eq!(offset_of!(RawProgStats, recursion_misses), 208);
        assert_eq!(offset_of!(RawProgStats, verified_insns), 216);
        assert_eq!(offset_of!(RawProgStats, attach_btf_id), 224);
        // struct bpf_link_info (6.8+): the union at 16, 48 bytes.
        assert_eq!(size_of::<RawLinkInfo>(), 64);
        assert_eq!(offset_of!(RawLinkInfo, union), 16);
        // union bpf_attr's task_fd_query.
        assert_eq!(size_of::<TaskFdQueryAttr>(), 48);
        assert_eq!(offset_of!(TaskFdQueryAttr, prog_id), 24);
        assert_eq!(offset_of!(TaskFdQueryAttr, probe_addr), 40);
    }

    #[test]
    fn link_info_fields_are_read_at_the_kernel_offsets() {
        let mut info = RawLinkInfo {
            link_type: BPF_LINK_TYPE_PERF_EVENT,
            id: 1,
            prog_id: 2,
            pad: 0,
            union: [0; 48],
        };
        // perf_event.type, then kprobe { func_name u64, name_len u32, offset u32, addr u64,
        // missed u64, cookie u64 } from 24.
        info.union[0..4].copy_from_slice(&BPF_PERF_EVENT_KRETPROBE.to_ne_bytes());
        info.union[32..40].copy_from_slice(&7u64.to_ne_bytes());
        assert_eq!(info.u32_at(PERF_EVENT_TYPE), BPF_PERF_EVENT_KRETPROBE);
        assert_eq!(info.u64_at(PERF_EVENT_KPROBE_MISSED), 7);
        // kprobe_multi { addrs u64, count u32, flags u32, missed u64, cookies u64 } from 16.
        info.union[16..24].copy_from_slice(&9u64.to_ne_bytes());
        assert_eq!(info.u64_at(KPROBE_MULTI_MISSED), 9);
        assert!(covers(216, 208, 8));
        assert!(!covers(208, 208, 8));
    }
}
