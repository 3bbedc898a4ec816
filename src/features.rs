//! Kernel features and program kinds, found by behaviour and cached.

use std::collections::HashMap;
use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::{Mutex, OnceLock};

use crate::sys::bpf::{self, Insn};
use crate::Error;

/// How a `BPF_PROG_TYPE_KPROBE` program can be attached, which is fixed by the
/// `expected_attach_type` it was loaded with. The kernel does not report that attach type
/// (`bpf_prog_info` lacks it), so it is found by behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProgramKind {
    /// A plain kprobe/uprobe program: goes on perf events (one link per probe).
    Plain,
    /// Loaded for `BPF_TRACE_UPROBE_MULTI`: only uprobe multi links take it.
    UprobeMulti,
    /// Loaded for `BPF_TRACE_KPROBE_MULTI`: only kprobe multi links take it.
    KprobeMulti,
    /// Loaded for a multi link this kernel cannot create (for example `kprobe_multi`
    /// without `CONFIG_FPROBE`), or for a session link.
    UnsupportedMulti,
}

/// Set by [`crate::raw::force_perf_event_ioctl`]: behave as a kernel without perf links.
pub(crate) static FORCE_IOCTL: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Whether `BPF_LINK_CREATE` makes perf-event links (kernel 5.15+, 82e6b1eee6a8 "bpf:
/// Allow to specify user-provided `bpf_cookie` for BPF perf links"). Without them the program
/// is attached with `PERF_EVENT_IOC_SET_BPF` and cookies are not available.
///
/// Probed once by loading a two-instruction kprobe program and asking for a perf link to fd
/// -1: `EBADF` means the kernel knows the attach type and went on to look up the fd.
pub(crate) fn perf_links() -> bool {
    static CACHE: OnceLock<bool> = OnceLock::new();
    if FORCE_IOCTL.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    *CACHE.get_or_init(|| {
        let insns = [
            Insn {
                code: 0xb7,
                regs: 0,
                off: 0,
                imm: 0,
            }, // r0 = 0
            Insn {
                code: 0x95,
                regs: 0,
                off: 0,
                imm: 0,
            }, // exit
        ];
        match bpf::prog_load(
            bpf::BPF_PROG_TYPE_KPROBE,
            0,
            &insns,
            c"GPL",
            "probeset_probe",
        ) {
            Ok(prog) => {
                let r = bpf::link_create_perf(prog.as_fd(), None, 0);
                r.err().and_then(|e| e.raw_os_error()) == Some(libc::EBADF)
            }
            // Cannot tell; assume a modern kernel and let the attach itself report.
            Err(_) => true,
        }
    })
}

/// Checks that `prog` is a `BPF_PROG_TYPE_KPROBE` program (two quick syscalls).
///
/// # Errors
/// Invalid input when the fd is not a BPF program or not a kprobe program.
pub(crate) fn check_program(prog: BorrowedFd<'_>) -> Result<bpf::ProgInfo, Error> {
    // BPF_OBJ_GET_INFO_BY_FD answers for maps and links too (with their own info layout),
    // so first make sure the fd is a program.
    let link = std::fs::read_link(format!("/proc/self/fd/{}", prog.as_raw_fd()));
    if let Ok(target) = link {
        if target.as_os_str() != "anon_inode:bpf-prog" {
            return Err(Error::NotBpfProgram {
                what: format!("it is {}", target.display()),
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
    }
    let info = bpf::prog_info(prog).map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => {
            Error::syscall("BPF_OBJ_GET_INFO_BY_FD", "the program fd", e)
        }
        _ => Error::NotBpfProgram {
            what: "BPF_OBJ_GET_INFO_BY_FD refused it".to_string(),
            source: e,
        },
    })?;
    if info.prog_type != bpf::BPF_PROG_TYPE_KPROBE {
        return Err(Error::WrongProgramType {
            found: info.prog_type,
        });
    }
    Ok(info)
}

/// Checks that `prog` is a `BPF_PROG_TYPE_KPROBE` program and finds out how it attaches.
/// Cached per program id.
///
/// # Errors
/// Invalid input when the fd is not a BPF program or not a kprobe program.
pub(crate) fn program_kind(prog: BorrowedFd<'_>) -> Result<ProgramKind, Error> {
    static CACHE: OnceLock<Mutex<HashMap<u32, ProgramKind>>> = OnceLock::new();
    let info = check_program(prog)?;
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(kind) = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&info.id)
    {
        return Ok(*kind);
    }
    let kind = classify(prog)?;
    cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(info.id, kind);
    Ok(kind)
}

fn errno(r: std::io::Result<std::os::fd::OwnedFd>) -> Option<i32> {
    // A link that did get created (it should not: the targets are bogus) is closed here.
    r.err().map(|e| e.raw_os_error().unwrap_or(0))
}

fn classify(prog: BorrowedFd<'_>) -> Result<ProgramKind, Error> {
    match errno(bpf::link_create_perf(prog, None, 0)) {
        Some(libc::EBADF) => return Ok(ProgramKind::Plain),
        Some(libc::EPERM | libc::EACCES) => {
            return Err(Error::syscall(
                "BPF_LINK_CREATE",
                "the program fd",
                std::io::Error::from_raw_os_error(libc::EPERM),
            ))
        }
        _ => {}
    }
    if !perf_links() {
        // A kernel without perf links has no multi links either: the program is plain.
        return Ok(ProgramKind::Plain);
    }
    // A uprobe_multi program passes the attach-type checks and fails at the path lookup
    // (ENOENT); any other program fails with EINVAL first.
    let path: &CStr = c"/nonexistent/probeset-feature-probe";
    match errno(bpf::link_create_uprobe_multi(
        prog,
        path,
        &[0],
        None,
        None,
        0,
        0,
    )) {
        Some(libc::EINVAL | libc::EOPNOTSUPP) => {}
        _ => return Ok(ProgramKind::UprobeMulti),
    }
    // Likewise a kprobe_multi program fails at the symbol lookup; EOPNOTSUPP means the
    // kernel cannot make kprobe multi links at all (no CONFIG_FPROBE).
    let sym: &CStr = c"probeset_no_such_kernel_symbol";
    match errno(bpf::link_create_kprobe_multi(prog, &[sym], None, 0)) {
        Some(libc::EINVAL | libc::EOPNOTSUPP) => Ok(ProgramKind::UnsupportedMulti),
        _ => Ok(ProgramKind::KprobeMulti),
    }
}
