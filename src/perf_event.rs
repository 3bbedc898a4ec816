//! The perf event behind a single probe (from the PMU or a tracefs event) and how the
//! program is attached to it. The errno normalisation of probe creation lives here, once.

use std::ffi::CString;
use std::fmt::Write as _;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::link::LinkKind;
use crate::probe::ProbeKind;
use crate::sys::{bpf, perf};
use crate::tracefs::ProbeEvent;
use crate::{features, pmu, Backend, Error};

/// `ENOTSUPP`, the kernel-internal errno uprobes return for a trap instruction.
const ENOTSUPP: i32 = 524;

/// Everything needed to create the kernel probe of one perf event.
#[derive(Debug)]
pub(crate) struct ProbeSpec<'a> {
    pub kind: ProbeKind,
    pub ret: bool,
    /// The kernel symbol, or the binary's path.
    pub name: &'a str,
    /// Offset into the symbol, or file offset into the binary.
    pub offset: u64,
    pub ref_ctr_offset: u64,
    pub pid: Option<i32>,
    pub maxactive: Option<u32>,
    /// The symbol (or offset) to name a tracefs event after.
    pub event_hint: &'a str,
    /// How to name the probe in messages, e.g. `kprobe "vfs_read"+0x4`.
    pub display: &'a str,
}

/// A perf event carrying a probe, with the tracefs event behind it if there is one.
/// Dropping it closes the perf fd first, then removes the tracefs event.
#[derive(Debug)]
pub(crate) struct PerfEvent {
    pub fd: OwnedFd,
    pub event: Option<ProbeEvent>,
    pub backend: Backend,
}

/// Maps the errno of creating a probe (the PMU's `perf_event_open` or a tracefs write) to
/// the crate's error kinds, as cilium/ebpf's `link/kprobe.go` does.
pub(crate) fn probe_error(spec: &ProbeSpec<'_>, call: &'static str, e: io::Error) -> Error {
    let what = spec.display.to_string();
    match e.raw_os_error() {
        // Since 97c753e62e6c the kernel says ENOENT for a missing symbol; before it, EINVAL.
        // For uprobes EINVAL is an offset outside the file.
        Some(libc::ENOENT) => Error::not_found(what, "", Some(e)),
        Some(libc::EINVAL) => {
            let hint = match spec.kind {
                ProbeKind::Kprobe => {
                    "check /proc/kallsyms (or available_filter_functions) for the symbol"
                }
                ProbeKind::Uprobe => "the offset is outside the binary's text",
            };
            Error::not_found(what, hint, Some(e))
        }
        // Since ab105a4fb894: sym+offset is not on an instruction boundary.
        Some(libc::EILSEQ) => Error::not_found(
            what,
            "the offset is not on an instruction boundary",
            Some(e),
        ),
        Some(libc::ERANGE) => {
            Error::not_found(what, "the offset is past the end of the symbol", Some(e))
        }
        Some(libc::ESRCH) => Error::not_found(
            format!("process {} (for {what})", spec.pid.unwrap_or(-1)),
            "the pid does not exist",
            Some(e),
        ),
        Some(ENOTSUPP) => Error::not_supported(
            what,
            "the kernel cannot probe the instruction there (a trap instruction?)",
            Some(e),
        ),
        _ => Error::syscall(call, what, e),
    }
}

fn cstring(s: &str, what: &str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::invalid(format!("{what} {s:?}"), "contains a NUL byte"))
}

/// Opens the probe on the perf PMU (`perf_kprobe`/`perf_uprobe`).
///
/// Not-supported when the PMU is missing, when it cannot carry what was asked
/// (`maxactive`, a `ref_ctr_offset` on a kernel before 5.4), or, for a kprobe symbol with a
/// dot, when an older PMU rejects it: all of these send [`Backend::Auto`] to tracefs.
pub(crate) fn open_pmu(spec: &ProbeSpec<'_>) -> Result<PerfEvent, Error> {
    let Some(pmu) = pmu::pmu(spec.kind) else {
        return Err(Error::not_supported(
            format!("the {} perf PMU", spec.kind.pmu_name()),
            format!(
                "no {} PMU (/sys/bus/event_source/devices/{} is missing: kernel older than 4.17, or without {})",
                spec.kind.pmu_name(),
                spec.kind.pmu_name(),
                match spec.kind {
                    ProbeKind::Kprobe => "CONFIG_KPROBES",
                    ProbeKind::Uprobe => "CONFIG_UPROBES",
                }
            ),
            None,
        ));
    };
    if spec.maxactive.is_some() {
        return Err(Error::not_supported(
            "maxactive on the kprobe PMU",
            "the PMU cannot carry maxactive; use Backend::Auto or Backend::Tracefs",
            None,
        ));
    }
    let mut config = 0u64;
    if spec.ret {
        config |= 1 << pmu.retprobe_bit;
    }
    if spec.ref_ctr_offset != 0 {
        let Some(shift) = pmu.ref_ctr_shift else {
            return Err(Error::not_supported(
                "ref_ctr_offset on the uprobe PMU",
                "the PMU has no ref_ctr_offset format (kernel older than 5.4); use tracefs",
                None,
            ));
        };
        config |= spec.ref_ctr_offset << shift;
    }
    let name = cstring(spec.name, "name")?;
    match perf::open_probe(pmu.type_, config, &name, spec.offset, spec.pid) {
        Ok(fd) => Ok(PerfEvent {
            fd,
            event: None,
            backend: Backend::Pmu,
        }),
        // Older kprobe PMUs reject symbols with a dot (`.isra.0`): fall back to tracefs.
        Err(e)
            if e.raw_os_error() == Some(libc::EINVAL)
                && spec.kind == ProbeKind::Kprobe
                && spec.name.contains('.') =>
        {
            Err(Error::not_supported(
                format!("symbol {:?} on the kprobe PMU", spec.name),
                "this kernel's PMU rejects symbols with a dot; tracefs takes them",
                Some(e),
            ))
        }
        Err(e) => Err(probe_error(spec, "perf_event_open", e)),
    }
}

/// The target token of a tracefs probe line: `SYM[+OFFS]` or `PATH:0xOFF[(0xREFCTR)]`.
pub(crate) fn tracefs_target(spec: &ProbeSpec<'_>) -> Result<String, Error> {
    Ok(match spec.kind {
        ProbeKind::Kprobe if spec.offset == 0 => spec.name.to_string(),
        ProbeKind::Kprobe => format!("{}+{:#x}", spec.name, spec.offset),
        ProbeKind::Uprobe => {
            if spec.name.chars().any(char::is_whitespace) {
                return Err(Error::invalid(
                    format!("binary path {:?}", spec.name),
                    "tracefs cannot take a path with white space; use the PMU backend",
                ));
            }
            let mut t = format!("{}:{:#x}", spec.name, spec.offset);
            if spec.ref_ctr_offset != 0 {
                let _ = write!(t, "({:#x})", spec.ref_ctr_offset);
            }
            t
        }
    })
}

/// Creates the probe as a tracefs event and opens a tracepoint perf event on it. Nothing
/// survives an error: the event is removed again.
pub(crate) fn open_tracefs(spec: &ProbeSpec<'_>) -> Result<PerfEvent, Error> {
    let target = tracefs_target(spec)?;
    let event = ProbeEvent::create(
        spec.kind,
        spec.ret,
        spec.maxactive,
        spec.event_hint,
        &target,
    )?
    .map_err(|e| probe_error(spec, "write", e))?;
    // From here on, dropping `event` removes it.
    let id = event.id()?;
    let fd =
        perf::open_tracepoint(id, spec.pid).map_err(|e| probe_error(spec, "perf_event_open", e))?;
    Ok(PerfEvent {
        fd,
        event: Some(event),
        backend: Backend::Tracefs,
    })
}

/// Opens the probe with `backend`: [`Backend::Auto`] tries the PMU, then tracefs where
/// the PMU is unsupported.
pub(crate) fn open(spec: &ProbeSpec<'_>, backend: Backend) -> Result<PerfEvent, Error> {
    match backend {
        Backend::Pmu => open_pmu(spec).map_err(|e| e.naming(spec.display)),
        Backend::Tracefs => open_tracefs(spec).map_err(|e| e.naming(spec.display)),
        Backend::Auto => {
            let pmu_err = match open_pmu(spec) {
                Ok(ev) => return Ok(ev),
                Err(e) if e.is_not_supported() => e,
                Err(e) => return Err(e),
            };
            match open_tracefs(spec) {
                Ok(ev) => Ok(ev),
                // Both paths missing: say what the PMU lacked and why tracefs did not help.
                Err(e) if e.is_not_supported() => Err(Error::not_supported(
                    spec.display,
                    format!(
                        "this kernel cannot make {}: {}; and {}",
                        spec.kind.noun_plural(),
                        pmu_err.hint(),
                        e.hint()
                    ),
                    None,
                )),
                Err(e) => Err(e),
            }
        }
    }
}

/// Attaches `prog` to the perf event: a `BPF_PERF_EVENT` link carrying the cookie where the
/// kernel has perf links (5.15+), else `PERF_EVENT_IOC_SET_BPF` + `PERF_EVENT_IOC_ENABLE`.
///
/// # Errors
/// Not-supported for a non-zero cookie on a kernel without perf links.
pub(crate) fn attach_program(
    prog: BorrowedFd<'_>,
    perf_fd: BorrowedFd<'_>,
    cookie: u64,
    display: &str,
) -> Result<(Option<OwnedFd>, LinkKind), Error> {
    if features::perf_links() {
        let link = bpf::link_create_perf(prog, Some(perf_fd), cookie)
            .map_err(|e| Error::syscall("BPF_LINK_CREATE", display.to_string(), e))?;
        return Ok((Some(link), LinkKind::PerfLink));
    }
    if cookie != 0 {
        return Err(Error::not_supported(
            "BPF cookies",
            "the kernel has no BPF perf links (5.15+), so a cookie cannot reach the program; use cookie 0",
            None,
        ));
    }
    perf::set_bpf(perf_fd, prog)
        .map_err(|e| Error::syscall("PERF_EVENT_IOC_SET_BPF", display.to_string(), e))?;
    perf::enable(perf_fd)
        .map_err(|e| Error::syscall("PERF_EVENT_IOC_ENABLE", display.to_string(), e))?;
    Ok((None, LinkKind::PerfIoctl))
}

/// The perf-event path of one probe: open it, attach `prog`, return what the link owns.
pub(crate) fn attach(
    prog: &OwnedFd,
    spec: &ProbeSpec<'_>,
    backend: Backend,
    cookie: u64,
) -> Result<crate::link::Attached, Error> {
    let ev = open(spec, backend)?;
    let (link, kind) = attach_program(prog.as_fd(), ev.fd.as_fd(), cookie, spec.display)?;
    // A BPF perf link holds the perf event itself (and releases it when it is closed): keep
    // one descriptor per probe, not two. Under the ioctl path the event fd is the attachment.
    let perf = if link.is_some() { None } else { Some(ev.fd) };
    Ok(crate::link::Attached {
        link,
        perf,
        tracefs_event_name: ev.event.as_ref().map(ProbeEvent::qualified_name),
        event: ev.event,
        kind,
        backend: Some(ev.backend),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: ProbeKind, name: &'static str, offset: u64, ref_ctr: u64) -> ProbeSpec<'static> {
        ProbeSpec {
            kind,
            ret: false,
            name,
            offset,
            ref_ctr_offset: ref_ctr,
            pid: None,
            maxactive: None,
            event_hint: name,
            display: name,
        }
    }

    #[test]
    fn tracefs_tokens() {
        assert_eq!(
            tracefs_target(&spec(ProbeKind::Kprobe, "vfs_read", 0, 0)).unwrap(),
            "vfs_read"
        );
        assert_eq!(
            tracefs_target(&spec(ProbeKind::Kprobe, "vfs_read", 4, 0)).unwrap(),
            "vfs_read+0x4"
        );
        assert_eq!(
            tracefs_target(&spec(ProbeKind::Uprobe, "/bin/x", 0x10, 0)).unwrap(),
            "/bin/x:0x10"
        );
        assert_eq!(
            tracefs_target(&spec(ProbeKind::Uprobe, "/bin/x", 0x10, 0x20)).unwrap(),
            "/bin/x:0x10(0x20)"
        );
        assert!(tracefs_target(&spec(ProbeKind::Uprobe, "/a b", 0, 0))
            .unwrap_err()
            .is_invalid_input());
    }

    #[test]
    fn errno_mapping() {
        let s = spec(ProbeKind::Kprobe, "nope", 0, 0);
        let e = |n| probe_error(&s, "perf_event_open", io::Error::from_raw_os_error(n));
        assert!(e(libc::ENOENT).is_not_found());
        assert!(e(libc::EINVAL).is_not_found());
        assert!(e(libc::EILSEQ).is_not_found());
        assert!(e(libc::ERANGE).is_not_found());
        assert!(e(libc::ESRCH).is_not_found());
        assert!(e(ENOTSUPP).is_not_supported());
        assert!(e(libc::EPERM).is_permission_denied());
        assert!(e(libc::EACCES).is_permission_denied());
        assert_eq!(e(libc::EBUSY).raw_os_error(), Some(libc::EBUSY));
        assert!(e(libc::EILSEQ).to_string().contains("instruction boundary"));
    }
}
