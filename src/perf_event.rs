//! The perf event behind one probe: opened on the kprobe/uprobe PMU, or on a tracefs probe
//! event, as [`Backend`] says; and the errno map of `perf_event_open(2)` for probes.

use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;

use crate::backend::Backend;
use crate::error::Error;
use crate::pmu;
use crate::probe::ProbeKind;
use crate::sys::perf;
use crate::tracefs::probe_event::{EventSpec, ProbeEvent};

/// `ENOTSUPP`, the kernel-internal errno uprobes return for a trap instruction.
pub(crate) const ENOTSUPP: i32 = 524;

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

impl ProbeSpec<'_> {
    fn event(&self) -> EventSpec<'_> {
        EventSpec {
            kind: self.kind,
            ret: self.ret,
            maxactive: self.maxactive,
            name: self.name,
            offset: self.offset,
            ref_ctr_offset: self.ref_ctr_offset,
            event_hint: self.event_hint,
            display: self.display,
        }
    }
}

/// A perf event carrying a probe, with the tracefs event behind it if there is one.
/// Dropping it closes the perf fd first, then removes the tracefs event.
#[derive(Debug)]
pub(crate) struct PerfEvent {
    pub fd: OwnedFd,
    pub event: Option<ProbeEvent>,
    pub backend: Backend,
}

/// Maps the errno of `perf_event_open` for a probe (on the PMU, or on a tracefs event) to
/// the crate's error kinds, as cilium/ebpf's `link/kprobe.go` does.
pub(crate) fn open_error(spec: &ProbeSpec<'_>, e: io::Error) -> Error {
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
        Some(ENOTSUPP) => Error::unprobeable(what, e),
        _ => Error::syscall("perf_event_open", what, e),
    }
}

/// Opens the probe on the perf PMU (`perf_kprobe`/`perf_uprobe`).
///
/// Not-supported when the PMU is missing, when it cannot carry what was asked
/// (`maxactive`, a `ref_ctr_offset` on a kernel before 5.4), or, for a kprobe symbol with a
/// dot, when an older PMU rejects it: all of these send [`Backend::Auto`] to tracefs.
fn open_pmu(spec: &ProbeSpec<'_>) -> Result<PerfEvent, Error> {
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
        config |= ref_ctr_bits(pmu.ref_ctr, spec.ref_ctr_offset)?;
    }
    let name = CString::new(spec.name)
        .map_err(|_| Error::invalid(format!("name {:?}", spec.name), "contains a NUL byte"))?;
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
        Err(e) => Err(open_error(spec, e)),
    }
}

/// `ref_ctr_offset` placed in the PMU's `config` field (`field`: lowest bit and width).
///
/// # Errors
/// Not supported (which sends [`Backend::Auto`] to tracefs) when the PMU has no such field
/// or the offset does not fit in it: the kernel would silently take the low bits and count
/// the semaphore at another offset.
fn ref_ctr_bits(field: Option<(u32, u32)>, offset: u64) -> Result<u64, Error> {
    let Some((shift, width)) = field else {
        return Err(Error::not_supported(
            "ref_ctr_offset on the uprobe PMU",
            "the PMU has no ref_ctr_offset format (kernel older than 5.4); use tracefs",
            None,
        ));
    };
    if width < 64 && offset >> width != 0 {
        return Err(Error::not_supported(
            format!("ref_ctr_offset {offset:#x} on the uprobe PMU"),
            format!(
                "the PMU carries {width} bits of ref_ctr_offset (config:{shift}-{}), at most \
                 {:#x}; use Backend::Tracefs (or Auto) for larger offsets",
                shift + width - 1,
                (1u64 << width) - 1
            ),
            None,
        ));
    }
    Ok(offset << shift)
}

/// Creates the probe as a tracefs event and opens a tracepoint perf event on it. Nothing
/// survives an error: the event is removed again.
fn open_tracefs(spec: &ProbeSpec<'_>) -> Result<PerfEvent, Error> {
    let event = ProbeEvent::create(&spec.event())?;
    // From here on, dropping `event` removes it.
    let id = event.id()?;
    let fd = perf::open_tracepoint(id, spec.pid).map_err(|e| open_error(spec, e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_ctr_offsets_that_do_not_fit_are_refused() {
        assert_eq!(ref_ctr_bits(Some((32, 32)), 0x1234).unwrap(), 0x1234 << 32);
        assert_eq!(
            ref_ctr_bits(Some((32, 32)), 0xffff_ffff).unwrap(),
            0xffff_ffff << 32
        );
        let e = ref_ctr_bits(Some((32, 32)), (1 << 32) | 0x10).unwrap_err();
        assert!(e.is_not_supported(), "{e}");
        assert!(e.to_string().contains("32 bits"), "{e}");
        assert!(ref_ctr_bits(None, 8).unwrap_err().is_not_supported());
    }

    #[test]
    fn errno_mapping() {
        let s = ProbeSpec {
            kind: ProbeKind::Kprobe,
            ret: false,
            name: "nope",
            offset: 0,
            ref_ctr_offset: 0,
            pid: None,
            maxactive: None,
            event_hint: "nope",
            display: "kprobe \"nope\"",
        };
        let e = |n| open_error(&s, io::Error::from_raw_os_error(n));
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
