//! The bare syscalls, for benchmarks that measure the kernel's floor under the library.
//!
//! Not part of the API: no validation, no fallback, no cleanup beyond closing fds.
#![allow(missing_docs)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use crate::multi_link;
use crate::perf_link;
use crate::sys::perf;

/// `perf_event_open` on a dynamic PMU: `name` in `config1`, `offset` in `config2`,
/// system-wide (pid -1, cpu 0).
pub fn perf_probe_open(
    pmu_type: u32,
    config: u64,
    name: &CStr,
    offset: u64,
) -> io::Result<OwnedFd> {
    perf::open_probe(pmu_type, config, Some(name), offset, None)
}

/// A BPF perf link (attach type `BPF_PERF_EVENT`) from `prog` to `perf_fd`.
pub fn link_perf(
    prog: BorrowedFd<'_>,
    perf_fd: BorrowedFd<'_>,
    cookie: u64,
) -> io::Result<OwnedFd> {
    perf_link::create_raw(prog, perf_fd, cookie)
}

/// A uprobe multi link (`BPF_TRACE_UPROBE_MULTI`) on `offsets` of `path`, every process.
pub fn link_uprobe_multi(
    prog: BorrowedFd<'_>,
    path: &CStr,
    offsets: &[u64],
    cookies: &[u64],
    ret: bool,
) -> io::Result<OwnedFd> {
    multi_link::create_uprobe_multi_raw(prog, path, offsets, cookies, ret)
}

/// A kprobe multi link (`BPF_TRACE_KPROBE_MULTI`) on `syms`.
pub fn link_kprobe_multi(
    prog: BorrowedFd<'_>,
    syms: &[&CStr],
    cookies: &[u64],
    ret: bool,
) -> io::Result<OwnedFd> {
    multi_link::create_kprobe_multi_raw(prog, syms, cookies, ret)
}

/// Makes the crate behave as on a kernel without BPF perf links (before 5.15): programs go
/// on perf events with `PERF_EVENT_IOC_SET_BPF`, and cookies are refused. For testing that
/// path on a newer kernel; process-wide.
pub fn force_perf_event_ioctl(on: bool) {
    perf_link::FORCE_IOCTL.store(on, std::sync::atomic::Ordering::Relaxed);
}
