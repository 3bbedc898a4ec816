//! The program being attached: is this fd a `BPF_PROG_TYPE_KPROBE` program, and which kind
//! ([`ProgramKind`]), found by behaviour and cached per program id.

use std::collections::HashMap;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::error::Error;
use crate::multi_link;
use crate::perf_link;
use crate::probe::Probe;
use crate::sys::bpf;
use crate::validate;

/// How a `BPF_PROG_TYPE_KPROBE` program can be attached, which is fixed by the
/// `expected_attach_type` it was loaded with. The kernel does not report that attach type
/// (`bpf_prog_info` lacks it), so it is found by behaviour.
///
/// ```no_run
/// # async fn f() -> Result<(), probeset::Error> {
/// use probeset::counter::{Counter, Flavour};
/// use probeset::{ProbeSet, ProgramKind, Uprobe};
///
/// let counter = Counter::load(Flavour::UprobeMulti, 16)?;
/// let mut set = ProbeSet::new(&counter)?;
/// set.insert(Uprobe::new("/lib/x86_64-linux-gnu/libc.so.6", "getpid")).await?;
/// // Known once the set has attached something; UprobeMulti on 6.6+, Plain before.
/// assert!(matches!(set.program_kind(), Some(ProgramKind::UprobeMulti | ProgramKind::Plain)));
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProgramKind {
    /// A plain kprobe/uprobe program: goes on perf events (one link per probe).
    Plain,
    /// Loaded for `BPF_TRACE_UPROBE_MULTI`: only uprobe multi links take it.
    UprobeMulti,
    /// Loaded for `BPF_TRACE_KPROBE_MULTI`: only kprobe multi links take it.
    KprobeMulti,
    /// Loaded for `BPF_TRACE_UPROBE_SESSION` (6.13+): uprobe session links, which run the
    /// program on entry and on return of each function from one entry probe (a non-zero
    /// return on entry skips the return run).
    UprobeSession,
    /// Loaded for `BPF_TRACE_KPROBE_SESSION` (6.10+): kprobe session links, likewise.
    KprobeSession,
    /// Loaded for a multi or session link this kernel cannot create (for example
    /// `kprobe_multi` without `CONFIG_FPROBE`).
    UnsupportedMulti,
}

impl ProgramKind {
    /// Whether the program goes on multi links (session links included).
    pub(crate) fn is_multi(self) -> bool {
        matches!(
            self,
            ProgramKind::UprobeMulti
                | ProgramKind::KprobeMulti
                | ProgramKind::UprobeSession
                | ProgramKind::KprobeSession
        )
    }

    /// Whether the program goes on session links.
    pub(crate) fn is_session(self) -> bool {
        matches!(
            self,
            ProgramKind::UprobeSession | ProgramKind::KprobeSession
        )
    }

    /// The error for `probe` when a program of this kind cannot attach it, or `None` when
    /// it can. The one place that says which program takes which probe.
    pub(crate) fn refuse(self, probe: &Probe) -> Option<Error> {
        if self.is_session() && probe.is_retprobe() {
            return Some(Error::invalid(
                format!("{probe} with a session program"),
                "a session program runs on entry and on return from one entry probe; attach \
                 the entry probe (Kprobe::new, Uprobe::new)",
            ));
        }
        match (self, probe) {
            (ProgramKind::Plain, _)
            | (ProgramKind::UprobeMulti | ProgramKind::UprobeSession, Probe::Uprobe(_))
            | (ProgramKind::KprobeMulti | ProgramKind::KprobeSession, Probe::Kprobe(_)) => None,
            (ProgramKind::UprobeMulti | ProgramKind::UprobeSession, Probe::Kprobe(_)) => {
                Some(Error::invalid(
                    format!("program for {probe}"),
                    format!(
                        "the program was loaded for {} and cannot attach kprobes; load a \
                         kprobe program",
                        self.attach_name()
                    ),
                ))
            }
            (ProgramKind::KprobeMulti | ProgramKind::KprobeSession, Probe::Uprobe(_)) => {
                Some(Error::invalid(
                    format!("program for {probe}"),
                    format!(
                        "the program was loaded for {} and cannot attach uprobes; load a \
                         uprobe program",
                        self.attach_name()
                    ),
                ))
            }
            (ProgramKind::UnsupportedMulti, _) => Some(Error::not_supported(
                format!("multi links for {probe}"),
                "the program was loaded for a multi link this kernel cannot create \
                 (kprobe_multi needs 5.18+ with CONFIG_FPROBE, uprobe_multi 6.6+); load it as \
                 a plain kprobe/uprobe program",
                None,
            )),
        }
    }
}

impl ProgramKind {
    /// The attach type a multi-only program was loaded for, for messages.
    fn attach_name(self) -> &'static str {
        match self {
            ProgramKind::UprobeMulti => "uprobe_multi",
            ProgramKind::KprobeMulti => "kprobe_multi",
            ProgramKind::UprobeSession => "uprobe_session",
            ProgramKind::KprobeSession => "kprobe_session",
            ProgramKind::Plain | ProgramKind::UnsupportedMulti => "a multi link",
        }
    }
}

/// Duplicates the caller's program fd so the blocking pool can own it.
///
/// # Errors
/// Invalid input for an fd that is not open.
pub(crate) fn dup(prog: BorrowedFd<'_>) -> Result<OwnedFd, Error> {
    prog.try_clone_to_owned()
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EBADF) => Error::NotBpfProgram {
                what: "it is not an open fd".to_string(),
                source: e,
            },
            _ => Error::syscall("fcntl(F_DUPFD_CLOEXEC)", "the program fd", e),
        })
}

/// Checks that `prog` is a `BPF_PROG_TYPE_KPROBE` program (two quick syscalls).
///
/// # Errors
/// Invalid input when the fd is not a BPF program or not a kprobe program.
pub(crate) fn check(prog: BorrowedFd<'_>) -> Result<bpf::ProgInfo, Error> {
    validate::program_fd(prog)?;
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
pub(crate) fn kind(prog: BorrowedFd<'_>) -> Result<ProgramKind, Error> {
    static CACHE: OnceLock<Mutex<HashMap<u32, ProgramKind>>> = OnceLock::new();
    let info = check(prog)?;
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(kind) = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&info.id)
    {
        return Ok(*kind);
    }
    let kind = classify(prog)?;
    tracing::debug!(program = info.id, ?kind, "program kind found by behaviour");
    cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(info.id, kind);
    Ok(kind)
}

fn classify(prog: BorrowedFd<'_>) -> Result<ProgramKind, Error> {
    if perf_link::takes_program(prog)? {
        return Ok(ProgramKind::Plain);
    }
    if !perf_link::kernel_has_perf_links() {
        // A kernel without perf links has no multi links either: the program is plain.
        return Ok(ProgramKind::Plain);
    }
    // A uprobe_multi (or uprobe_session) program passes the attach-type checks and fails at
    // the path lookup (ENOENT); any other program fails with EINVAL first. Likewise a
    // kprobe_multi (or kprobe_session) program fails at the symbol lookup; EOPNOTSUPP means
    // the kernel cannot make kprobe multi links at all (no CONFIG_FPROBE).
    let takes = |errno: Option<i32>| !matches!(errno, Some(libc::EINVAL | libc::EOPNOTSUPP));
    if takes(multi_link::probe_uprobe_multi(prog, false)) {
        return Ok(ProgramKind::UprobeMulti);
    }
    if takes(multi_link::probe_uprobe_multi(prog, true)) {
        return Ok(ProgramKind::UprobeSession);
    }
    if takes(multi_link::probe_kprobe_multi(prog, false)) {
        return Ok(ProgramKind::KprobeMulti);
    }
    if takes(multi_link::probe_kprobe_multi(prog, true)) {
        return Ok(ProgramKind::KprobeSession);
    }
    Ok(ProgramKind::UnsupportedMulti)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kprobe::Kprobe;
    use crate::uprobe::Uprobe;

    #[test]
    fn which_program_takes_which_probe() {
        let k: Probe = Kprobe::new("vfs_read").into();
        let u: Probe = Uprobe::new("/bin/true", "main").into();
        assert!(ProgramKind::Plain.refuse(&k).is_none());
        assert!(ProgramKind::Plain.refuse(&u).is_none());
        assert!(ProgramKind::UprobeMulti.refuse(&u).is_none());
        assert!(ProgramKind::KprobeMulti.refuse(&k).is_none());
        assert!(ProgramKind::UprobeMulti
            .refuse(&k)
            .unwrap()
            .is_invalid_input());
        let e = ProgramKind::KprobeMulti.refuse(&u).unwrap();
        assert!(e.is_invalid_input());
        assert!(e.to_string().contains("kprobe_multi"), "{e}");
        assert!(ProgramKind::UnsupportedMulti
            .refuse(&k)
            .unwrap()
            .is_not_supported());
    }
}
