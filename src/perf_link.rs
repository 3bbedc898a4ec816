//! Putting a program on a perf event: a `BPF_PERF_EVENT` link carrying the cookie where the
//! kernel has perf links (5.15+), else `PERF_EVENT_IOC_SET_BPF` + `PERF_EVENT_IOC_ENABLE`;
//! the errno map of both, and the feature probe that chooses between them.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::error::Error;
use crate::link::LinkKind;
use crate::sys::bpf;
use crate::sys::perf;

/// Set by `raw::force_perf_event_ioctl`: behave as a kernel without perf links.
pub(crate) static FORCE_IOCTL: AtomicBool = AtomicBool::new(false);

/// Whether `BPF_LINK_CREATE` makes perf-event links (kernel 5.15+, 82e6b1eee6a8 "bpf:
/// Allow to specify user-provided `bpf_cookie` for BPF perf links"). Without them the program
/// is attached with `PERF_EVENT_IOC_SET_BPF` and cookies are not available.
///
/// Probed once by loading a two-instruction kprobe program and asking for a perf link to fd
/// -1: `EBADF` means the kernel knows the attach type and went on to look up the fd.
pub(crate) fn kernel_has_perf_links() -> bool {
    static CACHE: OnceLock<bool> = OnceLock::new();
    if FORCE_IOCTL.load(Ordering::Relaxed) {
        return false;
    }
    *CACHE.get_or_init(|| {
        match bpf::prog_load(
            bpf::BPF_PROG_TYPE_KPROBE,
            0,
            &bpf::RETURN_ZERO,
            c"GPL",
            "probeset_probe",
        ) {
            Ok(prog) => link_to_nothing(prog.as_fd()) == Some(libc::EBADF),
            // Cannot tell; assume a modern kernel and let the attach itself report.
            Err(_) => true,
        }
    })
}

/// The errno of a perf link from `prog` to fd -1: `EBADF` for a program perf links take
/// (the kernel got as far as looking up the fd), `EINVAL` for one loaded for a multi link.
pub(crate) fn link_to_nothing(prog: BorrowedFd<'_>) -> Option<i32> {
    // A link that did get created (it cannot: there is no target) is closed here.
    bpf::link_create_perf(prog, None, 0)
        .err()
        .map(|e| e.raw_os_error().unwrap_or(0))
}

/// Whether perf links take `prog` (a plain program), found by [`link_to_nothing`].
///
/// # Errors
/// Permission denied when the kernel refuses the probe for lack of privilege.
pub(crate) fn takes_program(prog: BorrowedFd<'_>) -> Result<bool, Error> {
    match link_to_nothing(prog) {
        Some(libc::EBADF) => Ok(true),
        Some(errno @ (libc::EPERM | libc::EACCES)) => Err(Error::syscall(
            "BPF_LINK_CREATE",
            "the program fd",
            io::Error::from_raw_os_error(errno),
        )),
        _ => Ok(false),
    }
}

/// Maps the errno of putting a program on a perf event: privilege (`EPERM`/`EACCES`) and
/// descriptor exhaustion (`EMFILE`/`ENFILE`) get their kinds, anything else is the call's
/// own failure (the program's kind was checked before, so `EINVAL` is not expected).
fn link_error(call: &'static str, display: &str, e: io::Error) -> Error {
    Error::syscall(call, display.to_string(), e)
}

/// Attaches `prog` to the perf event `perf_fd`; returns the link (`None` on the ioctl
/// path, where the perf event itself holds the program) and how it is held.
///
/// # Errors
/// Not-supported for a non-zero cookie on a kernel without perf links; the kernel's answer,
/// mapped.
pub(crate) fn attach(
    prog: BorrowedFd<'_>,
    perf_fd: BorrowedFd<'_>,
    cookie: u64,
    display: &str,
) -> Result<(Option<OwnedFd>, LinkKind), Error> {
    if kernel_has_perf_links() {
        let link = bpf::link_create_perf(prog, Some(perf_fd), cookie)
            .map_err(|e| link_error("BPF_LINK_CREATE", display, e))?;
        return Ok((Some(link), LinkKind::PerfLink));
    }
    if cookie != 0 {
        return Err(Error::not_supported(
            "BPF cookies",
            "the kernel has no BPF perf links (5.15+), so a cookie cannot reach the program; use cookie 0",
            None,
        ));
    }
    perf::set_bpf(perf_fd, prog).map_err(|e| link_error("PERF_EVENT_IOC_SET_BPF", display, e))?;
    perf::enable(perf_fd).map_err(|e| link_error("PERF_EVENT_IOC_ENABLE", display, e))?;
    Ok((None, LinkKind::PerfIoctl))
}

/// `BPF_LINK_CREATE` with `BPF_PERF_EVENT`, bare (for the benchmarks' floor).
pub(crate) fn create_raw(
    prog: BorrowedFd<'_>,
    perf_fd: BorrowedFd<'_>,
    cookie: u64,
) -> io::Result<OwnedFd> {
    bpf::link_create_perf(prog, Some(perf_fd), cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping() {
        let e = |n| {
            link_error(
                "BPF_LINK_CREATE",
                "uprobe x",
                io::Error::from_raw_os_error(n),
            )
        };
        assert!(e(libc::EPERM).is_permission_denied());
        assert!(matches!(
            e(libc::EMFILE),
            Error::OutOfFileDescriptors { .. }
        ));
        assert_eq!(e(libc::EBADF).raw_os_error(), Some(libc::EBADF));
    }
}
