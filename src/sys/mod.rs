//! Raw syscalls: `bpf(2)`, `perf_event_open(2)`, the perf ioctls, and the few process
//! calls the crate needs (`kill(pid, 0)`, `getrlimit`, `getrandom`, `atexit`).
//!
//! The only module allowed to use `unsafe`, and the only one that calls `libc` functions
//! or `nix`. Functions here take [`BorrowedFd`]s and return [`OwnedFd`]s or plain values;
//! raw fds never leave this module. A function whose soundness depends on what its caller
//! passes is an `unsafe fn` with a `# Safety` section, and each call has its `// SAFETY:`.
//!
//! [`BorrowedFd`]: std::os::fd::BorrowedFd
//! [`OwnedFd`]: std::os::fd::OwnedFd
#![allow(unsafe_code)]

pub(crate) mod bpf;
pub(crate) mod perf;

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Takes ownership of the fd a syscall returned.
///
/// # Safety
/// `ret` must be the result of a syscall that, when it succeeds, returns a new file
/// descriptor that nothing else owns.
unsafe fn owned_fd(ret: libc::c_long) -> io::Result<OwnedFd> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    // SAFETY: the caller vouches that `fd` is new and unowned.
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

/// Whether process `pid` is gone from this pid namespace: `kill(pid, 0)` gives `ESRCH`.
/// A process this one may not signal (`EPERM`) exists.
pub(crate) fn process_is_gone(pid: i32) -> bool {
    pid > 0
        && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            == Err(nix::errno::Errno::ESRCH)
}

/// The soft `RLIMIT_NOFILE` of this process, if it can be read.
pub(crate) fn nofile_soft_limit() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// A random u64 from the kernel (`getrandom(2)`; `/dev/urandom`'s source). Falls back to
/// the clock and pid if the call fails, which it does not on any kernel this crate runs
/// on (3.17+): the value only has to make a name unique.
pub(crate) fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: `buf` is 8 writable bytes that live until the call returns.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == 8 {
        return u64::from_ne_bytes(buf);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_secs().rotate_left(32) ^ u64::from(now.subsec_nanos()) ^ u64::from(std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness() {
        assert!(!process_is_gone(i32::try_from(std::process::id()).unwrap()));
        assert!(!process_is_gone(1));
        assert!(!process_is_gone(0));
        // pid_max is at most 2^22.
        assert!(process_is_gone(4_194_304 + 7));
    }

    #[test]
    fn random_values_differ() {
        assert_ne!(random_u64(), random_u64());
    }

    #[test]
    fn reads_the_descriptor_limit() {
        assert!(nofile_soft_limit().is_some_and(|n| n > 0));
    }
}
