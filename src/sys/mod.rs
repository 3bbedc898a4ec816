//! Raw syscalls: `bpf(2)`, `perf_event_open(2)` and the perf ioctls.
//!
//! The only module allowed to use `unsafe`. Functions here take [`BorrowedFd`]s and return
//! [`OwnedFd`]s or plain values; raw fds never leave this module.
//!
//! [`BorrowedFd`]: std::os::fd::BorrowedFd
//! [`OwnedFd`]: std::os::fd::OwnedFd
#![allow(unsafe_code)]

pub(crate) mod bpf;
pub(crate) mod perf;

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Wraps a syscall's fd-or-minus-one result.
fn fd_result(ret: libc::c_long) -> io::Result<OwnedFd> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    // SAFETY: the kernel just returned `fd` as a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Registers `f` to run at normal process exit (`atexit(3)`): `exit()`, a return from
/// `main`, or the end of a test harness.
pub(crate) fn at_exit(f: extern "C" fn()) -> io::Result<()> {
    // SAFETY: `f` is a plain function with the signature atexit expects; it stays valid for
    // the life of the process.
    let ret = unsafe { libc::atexit(f) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::ENOMEM))
    }
}
