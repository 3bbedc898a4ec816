//! The bare syscalls, for benchmarks that measure the kernel's floor under the library.
//!
//! Not part of the API: no validation, no fallback, no cleanup beyond closing fds.
#![allow(missing_docs)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use crate::sys::{bpf, perf};

/// `perf_event_open` on a dynamic PMU: `name` in `config1`, `offset` in `config2`,
/// system-wide (pid -1, cpu 0).
pub fn perf_probe_open(
    pmu_type: u32,
    config: u64,
    name: &CStr,
    offset: u64,
) -> io::Result<OwnedFd> {
    perf::open_probe(pmu_type, config, name, offset, None)
}

/// `BPF_LINK_CREATE` with `BPF_PERF_EVENT`.
pub fn link_perf(
    prog: BorrowedFd<'_>,
    perf_fd: BorrowedFd<'_>,
    cookie: u64,
) -> io::Result<OwnedFd> {
    bpf::link_create_perf(prog, Some(perf_fd), cookie)
}

/// `BPF_LINK_CREATE` with `BPF_TRACE_UPROBE_MULTI` (every process).
pub fn link_uprobe_multi(
    prog: BorrowedFd<'_>,
    path: &CStr,
    offsets: &[u64],
    cookies: &[u64],
    ret: bool,
) -> io::Result<OwnedFd> {
    let flags = if ret { bpf::MULTI_RETURN } else { 0 };
    bpf::link_create_uprobe_multi(prog, path, offsets, None, Some(cookies), flags, 0)
}

/// `BPF_LINK_CREATE` with `BPF_TRACE_KPROBE_MULTI` on symbols.
pub fn link_kprobe_multi(
    prog: BorrowedFd<'_>,
    syms: &[&CStr],
    cookies: &[u64],
    ret: bool,
) -> io::Result<OwnedFd> {
    let flags = if ret { bpf::MULTI_RETURN } else { 0 };
    bpf::link_create_kprobe_multi(prog, syms, Some(cookies), flags)
}

/// Makes the crate behave as on a kernel without BPF perf links (before 5.15): programs go
/// on perf events with `PERF_EVENT_IOC_SET_BPF`, and cookies are refused. For testing that
/// path on a newer kernel; process-wide.
pub fn force_perf_event_ioctl(on: bool) {
    crate::features::FORCE_IOCTL.store(on, std::sync::atomic::Ordering::Relaxed);
}
