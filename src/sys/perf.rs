//! `perf_event_open(2)` and the perf event ioctls.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// `PERF_ATTR_SIZE_VER1`: the first size with `config2`. VER0 (64) is accepted by the kernel
/// but silently drops `config2`, which carries the probe offset.
pub(crate) const PERF_ATTR_SIZE_VER1: u32 = 72;
/// `PERF_TYPE_TRACEPOINT`.
const PERF_TYPE_TRACEPOINT: u32 = 2;
/// `PERF_SAMPLE_RAW`.
const PERF_SAMPLE_RAW: u64 = 1 << 10;
/// `PERF_FLAG_FD_CLOEXEC`.
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// `struct perf_event_attr` up to `config2` (`PERF_ATTR_SIZE_VER1`).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
}

const _: () = assert!(std::mem::size_of::<PerfEventAttr>() == PERF_ATTR_SIZE_VER1 as usize);

/// Where a perf event counts: one process, or system-wide.
///
/// System-wide probes need `pid = -1, cpu = 0` (`cpu = -1` with `pid = -1` is `EINVAL`); a
/// process target uses `cpu = -1`.
fn pid_cpu(pid: Option<i32>) -> (libc::pid_t, libc::c_int) {
    match pid {
        Some(pid) => (pid, -1),
        None => (-1, 0),
    }
}

/// `perf_event_open(attr, pid, cpu, -1, PERF_FLAG_FD_CLOEXEC)`.
///
/// # Safety
/// When `attr.type_` is a dynamic PMU that reads `config1` as a pointer (`kprobe`,
/// `uprobe`), `config1` must point to a NUL-terminated string that stays alive until the
/// call returns.
unsafe fn perf_event_open(attr: &PerfEventAttr, pid: Option<i32>) -> io::Result<OwnedFd> {
    let (pid, cpu) = pid_cpu(pid);
    // SAFETY: `attr` is an initialised `perf_event_attr` whose `size` field matches its
    // length; the caller vouches for the pointer in `config1`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            std::ptr::from_ref(attr),
            pid,
            cpu,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    // SAFETY: a non-negative result of perf_event_open is a new fd nothing else owns.
    unsafe { super::owned_fd(ret) }
}

/// Opens a perf event on a dynamic PMU (`kprobe` or `uprobe`).
///
/// `name` is the kernel symbol or the binary's path (`config1`), `offset` goes in `config2`
/// (for a kprobe with no name, `offset` is the kernel text address), `config` carries the
/// retprobe bit and the uprobe `ref_ctr_offset`.
///
/// Corresponds to `perf_event_open(2)`.
pub(crate) fn open_probe(
    pmu_type: u32,
    config: u64,
    name: Option<&CStr>,
    offset: u64,
    pid: Option<i32>,
) -> io::Result<OwnedFd> {
    let attr = PerfEventAttr {
        type_: pmu_type,
        size: PERF_ATTR_SIZE_VER1,
        config,
        config1: name.map_or(0, |n| n.as_ptr() as u64),
        config2: offset,
        ..PerfEventAttr::default()
    };
    // SAFETY: `config1` is 0 or points to `name`, a NUL-terminated string borrowed for this
    // whole function.
    unsafe { perf_event_open(&attr, pid) }
}

/// Opens a perf event on a tracepoint (a tracefs probe event) by its id.
///
/// Corresponds to `perf_event_open(2)` with `PERF_TYPE_TRACEPOINT`.
pub(crate) fn open_tracepoint(id: u64, pid: Option<i32>) -> io::Result<OwnedFd> {
    let attr = PerfEventAttr {
        type_: PERF_TYPE_TRACEPOINT,
        size: PERF_ATTR_SIZE_VER1,
        config: id,
        sample_period: 1,
        sample_type: PERF_SAMPLE_RAW,
        wakeup_events: 1,
        ..PerfEventAttr::default()
    };
    // SAFETY: a tracepoint event carries no pointers.
    unsafe { perf_event_open(&attr, pid) }
}

nix::ioctl_none!(perf_ioc_enable, b'$', 0);
nix::ioctl_write_int!(perf_ioc_set_bpf, b'$', 8);

/// `PERF_EVENT_IOC_SET_BPF`: attaches `prog` to the perf event (the pre-5.15 way; no cookie).
pub(crate) fn set_bpf(perf: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: both fds are valid for the duration of the call (borrowed); the ioctl takes
    // the program fd by value.
    unsafe { perf_ioc_set_bpf(perf.as_raw_fd(), prog.as_raw_fd().unsigned_abs().into()) }
        .map(drop)
        .map_err(io::Error::from)
}

/// `PERF_EVENT_IOC_ENABLE`.
pub(crate) fn enable(perf: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: the fd is valid for the duration of the call; the ioctl takes no argument.
    unsafe { perf_ioc_enable(perf.as_raw_fd()) }
        .map(drop)
        .map_err(io::Error::from)
}
