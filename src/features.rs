//! What this kernel and this process's privileges allow: [`detect`].
//!
//! Every answer is found by behaviour, never from the kernel version: a two-instruction
//! program is loaded for each link type and asked for a link to a target that does not
//! exist (the errno tells whether the kernel knows the attach type), a probe is opened on
//! each PMU, and each `*_events` file is opened for writing. The answers are cached for
//! the process. A loader can use them to pick the program flavour before it loads:
//!
//! ```no_run
//! # async fn f() -> Result<(), probeset::Error> {
//! use probeset::counter::{Counter, Flavour};
//!
//! let features = probeset::features::detect().await?;
//! let flavour = if features.uprobe_multi { Flavour::UprobeMulti } else { Flavour::Plain };
//! let counter = Counter::load(flavour, 1024)?;
//! # drop(counter); Ok(()) }
//! ```
//!
//! The link fields need a test program, so they read `false` in a process that cannot load
//! one (no `CAP_BPF`); such a process can still attach a program another one loaded.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;

use crate::blocking;
use crate::error::Error;
use crate::multi_link;
use crate::perf_event;
use crate::perf_link;
use crate::probe::ProbeKind;
use crate::sys::bpf::{self, Insn};
use crate::tracefs::access::events_writable;

/// What [`detect`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(clippy::struct_excessive_bools, reason = "one answer per mechanism")]
pub struct Features {
    /// The kprobe PMU opens a probe (4.17+, `CONFIG_KPROBES`; `CAP_PERFMON`).
    pub kprobe_pmu: bool,
    /// The uprobe PMU opens a probe (4.17+; `CAP_SYS_ADMIN` on kernels with the fix for
    /// CVE-2025-38466).
    pub uprobe_pmu: bool,
    /// `kprobe_events` exists and this process may write it.
    pub kprobe_events: bool,
    /// `uprobe_events` exists and this process may write it.
    pub uprobe_events: bool,
    /// BPF perf links (`BPF_LINK_CREATE` with `BPF_PERF_EVENT`, 5.15+).
    pub perf_link: bool,
    /// Kprobe multi links (5.18+ with `CONFIG_FPROBE`).
    pub kprobe_multi: bool,
    /// Uprobe multi links (6.6+).
    pub uprobe_multi: bool,
    /// Kprobe session links (6.10+ with `CONFIG_FPROBE`).
    pub kprobe_session: bool,
    /// Uprobe session links (6.13+).
    pub uprobe_session: bool,
    /// `bpf_get_attach_cookie()` in kprobe programs (5.15+).
    pub cookies: bool,
}

/// Finds out what this kernel and this process's privileges allow (cached: the probes run
/// once per process, ~0.2 s, most of it the kernel closing the test probes).
///
/// # Errors
/// [`Error::RuntimeShutdown`] if the runtime shuts down meanwhile; the probes themselves
/// answer `false` rather than fail.
///
/// # Cancel safety
/// Cancel safe: dropping the future lets the probes finish on the blocking pool, and a
/// later call gets the cached answer.
pub async fn detect() -> Result<Features, Error> {
    if let Some(f) = CACHE.get() {
        return Ok(*f);
    }
    blocking::run(detect_blocking).await
}

/// [`detect`] on the calling thread, without an async runtime.
///
/// # Errors
/// None today: every probe answers `false` rather than fail.
pub fn detect_blocking() -> Result<Features, Error> {
    Ok(*CACHE.get_or_init(probe_all))
}

static CACHE: OnceLock<Features> = OnceLock::new();

fn probe_all() -> Features {
    let plain = load(0);
    let link_to = |eat: u32, f: fn(BorrowedFd<'_>, bool) -> Option<i32>, session: bool| {
        load(eat).is_some_and(|p| takes(f(p.as_fd(), session)))
    };
    let features = Features {
        kprobe_pmu: perf_event::pmu_opens(ProbeKind::Kprobe),
        uprobe_pmu: perf_event::pmu_opens(ProbeKind::Uprobe),
        kprobe_events: events_writable(ProbeKind::Kprobe),
        uprobe_events: events_writable(ProbeKind::Uprobe),
        perf_link: plain
            .as_ref()
            .is_some_and(|p| perf_link::link_to_nothing(p.as_fd()) == Some(libc::EBADF)),
        kprobe_multi: link_to(
            bpf::BPF_TRACE_KPROBE_MULTI,
            multi_link::probe_kprobe_multi,
            false,
        ),
        uprobe_multi: link_to(
            bpf::BPF_TRACE_UPROBE_MULTI,
            multi_link::probe_uprobe_multi,
            false,
        ),
        kprobe_session: link_to(
            bpf::BPF_TRACE_KPROBE_SESSION,
            multi_link::probe_kprobe_multi,
            true,
        ),
        uprobe_session: link_to(
            bpf::BPF_TRACE_UPROBE_SESSION,
            multi_link::probe_uprobe_multi,
            true,
        ),
        cookies: cookie_helper(),
    };
    tracing::debug!(?features, "probed the kernel's probe mechanisms");
    features
}

/// Whether a link probe's errno says the kernel knows the attach type: it got past the
/// attach type to the (missing) target.
fn takes(errno: Option<i32>) -> bool {
    !matches!(
        errno,
        Some(libc::EINVAL | libc::EOPNOTSUPP | libc::EPERM | libc::EACCES)
    )
}

/// A two-instruction kprobe program loaded for `expected_attach_type`, or `None` when
/// this process (or this kernel) cannot load it.
fn load(expected_attach_type: u32) -> Option<OwnedFd> {
    bpf::prog_load(
        bpf::BPF_PROG_TYPE_KPROBE,
        expected_attach_type,
        &bpf::RETURN_ZERO,
        c"GPL",
        "probeset_feat",
    )
    .ok()
}

/// Whether a program calling `bpf_get_attach_cookie` (helper 174) loads.
fn cookie_helper() -> bool {
    // r0 = bpf_get_attach_cookie(ctx); then r0 = 0; exit.
    let call = Insn {
        code: 0x85,
        regs: 0,
        off: 0,
        imm: 174,
    };
    let insns = [call, bpf::RETURN_ZERO[0], bpf::RETURN_ZERO[1]];
    bpf::prog_load(
        bpf::BPF_PROG_TYPE_KPROBE,
        0,
        &insns,
        c"GPL",
        "probeset_feat",
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_errnos() {
        assert!(takes(Some(libc::ENOENT)));
        assert!(takes(Some(libc::ESRCH)));
        assert!(!takes(Some(libc::EINVAL)));
        assert!(!takes(Some(libc::EOPNOTSUPP)));
        assert!(!takes(Some(libc::EPERM)));
    }
}
