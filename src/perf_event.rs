//! The perf event behind one probe: opened on the kprobe/uprobe PMU, or on a tracefs probe
//! event, as [`Backend`] says; and the errno map of `perf_event_open(2)` for probes.

use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use crate::backend::Backend;
use crate::elf::ElfSymbols;
use crate::error::Error;
use crate::kallsyms;
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
    /// A kprobe at a kernel text address: `name` is then the address as tracefs takes it
    /// (`0x...`), and the PMU is given the address itself.
    pub address: Option<u64>,
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

/// Which perf event a `perf_event_open` was for: the probe on its PMU, or the tracepoint of a
/// tracefs event (whose privilege rules differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    Pmu,
    Tracepoint,
}

/// What `perf_event_open` needs for `kind` on `via`, as the kernel checks it.
fn needs(kind: ProbeKind, via: Via) -> &'static str {
    match (via, kind) {
        (Via::Pmu, ProbeKind::Kprobe) => "CAP_PERFMON (or CAP_SYS_ADMIN), as any kernel probe",
        (Via::Pmu, ProbeKind::Uprobe) => {
            "CAP_SYS_ADMIN: the uprobe PMU needs it on kernels with the fix for CVE-2025-38466 \
             (6.18, and the 5.10 to 6.12 stable series); without it use tracefs (write access \
             to uprobe_events) or a program loaded for uprobe_multi, which needs no capability \
             beyond its fd"
        }
        (Via::Tracepoint, _) => "CAP_PERFMON (or CAP_SYS_ADMIN) for a system-wide perf event",
    }
}

/// The candidates of an ambiguous kernel symbol, from `/proc/kallsyms`.
fn ambiguous(symbol: &str, e: io::Error) -> Error {
    let text = kallsyms::read().unwrap_or_default();
    let candidates = kallsyms::functions_named(&text, symbol)
        .into_iter()
        .map(|(address, module)| (address, module.map(str::to_string)))
        .collect();
    Error::AmbiguousSymbol {
        symbol: symbol.to_string(),
        candidates,
        source: Some(e),
    }
}

/// Maps the errno of `perf_event_open` for a probe (on the PMU, or on a tracefs event) to
/// the crate's error kinds, as cilium/ebpf's `link/kprobe.go` does.
pub(crate) fn open_error(spec: &ProbeSpec<'_>, via: Via, e: io::Error) -> Error {
    let what = spec.display.to_string();
    match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => {
            Error::permission("perf_event_open", what, needs(spec.kind, via), e)
        }
        // Since b022f0c7e404 (6.6): a symbol kallsyms lists more than once.
        Some(libc::EADDRNOTAVAIL) if spec.kind == ProbeKind::Kprobe => ambiguous(spec.name, e),
        // Since 97c753e62e6c the kernel says ENOENT for a missing symbol; before it, EINVAL.
        // For uprobes EINVAL is an offset outside the file.
        Some(libc::ENOENT) => Error::not_found(what, "", Some(e)),
        Some(libc::EINVAL) => {
            let hint = match spec.kind {
                ProbeKind::Kprobe => {
                    "check /proc/kallsyms (or available_filter_functions) for the symbol"
                }
                ProbeKind::Uprobe if spec.ref_ctr_offset != 0 => {
                    "the offset is outside the binary's text, or another probe at this offset \
                     registered a different ref_ctr_offset (the kernel keeps one per offset)"
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
    let opened = if let Some(address) = spec.address {
        perf::open_probe(pmu.type_, config, None, address, spec.pid)
    } else {
        let name = CString::new(spec.name)
            .map_err(|_| Error::invalid(format!("name {:?}", spec.name), "contains a NUL byte"))?;
        perf::open_probe(pmu.type_, config, Some(&name), spec.offset, spec.pid)
    };
    match opened {
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
        Err(e) => Err(open_error(spec, Via::Pmu, e)),
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
    let fd =
        perf::open_tracepoint(id, spec.pid).map_err(|e| open_error(spec, Via::Tracepoint, e))?;
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
        Backend::Auto => open_auto(spec),
    }
}

/// [`Backend::Auto`]: the PMU, then tracefs where the PMU is missing, cannot carry the
/// probe, or refuses this process's privileges.
fn open_auto(spec: &ProbeSpec<'_>) -> Result<PerfEvent, Error> {
    let pmu_err = match open_pmu(spec) {
        Ok(ev) => return Ok(ev),
        Err(e) if e.is_not_supported() || e.is_permission_denied() => e,
        Err(e) => return Err(e),
    };
    tracing::debug!(probe = spec.display, reason = %pmu_err, "the perf PMU did not take the probe; trying tracefs");
    let tracefs_err = match open_tracefs(spec) {
        Ok(ev) => return Ok(ev),
        Err(e) if e.is_not_supported() || e.is_permission_denied() => e,
        Err(e) => return Err(e),
    };
    let denied = [&pmu_err, &tracefs_err].into_iter().find_map(|e| match e {
        Error::PermissionDenied { source, .. } => source.raw_os_error(),
        _ => None,
    });
    match denied {
        // Refused somewhere: say what each path needed.
        Some(errno) => Err(Error::permission(
            "perf_event_open",
            spec.display,
            format!(
                "one of: on the perf PMU, {}; or, through tracefs, {}",
                pmu_err.needs_or_hint(),
                tracefs_err.needs_or_hint()
            ),
            io::Error::from_raw_os_error(errno),
        )),
        // Both paths missing: say what the PMU lacked and why tracefs did not help.
        None => Err(Error::not_supported(
            spec.display,
            format!(
                "this kernel cannot make {}: {}; and {}",
                spec.kind.noun_plural(),
                pmu_err.hint(),
                tracefs_err.hint()
            ),
            None,
        )),
    }
}

/// Whether `kind`'s PMU opens a probe here (for `features::detect`): a kprobe on a
/// function every kernel has, a uprobe on a function of this process's own executable, for
/// this process only. Nothing is attached; the event is closed at once.
pub(crate) fn pmu_opens(kind: ProbeKind) -> bool {
    match kind {
        ProbeKind::Kprobe => kprobe_pmu_opens(),
        ProbeKind::Uprobe => uprobe_pmu_opens(),
    }
}

fn kprobe_pmu_opens() -> bool {
    let Some(pmu) = pmu::pmu(ProbeKind::Kprobe) else {
        return false;
    };
    ["vfs_read", "ksys_read", "schedule"].iter().any(|symbol| {
        let name = CString::new(*symbol).expect("no NUL");
        perf::open_probe(pmu.type_, 0, Some(&name), 0, None).is_ok()
    })
}

fn uprobe_pmu_opens() -> bool {
    let Some(pmu) = pmu::pmu(ProbeKind::Uprobe) else {
        return false;
    };
    let exe = Path::new("/proc/self/exe");
    let Some(offset) = ElfSymbols::load(exe).ok().and_then(|s| {
        s.functions()
            .iter()
            .find(|f| f.size > 0 && !f.ifunc && s.check_probe_offset(f.offset).is_ok())
            .map(|f| f.offset)
    }) else {
        return false;
    };
    let me = i32::try_from(std::process::id()).ok();
    perf::open_probe(pmu.type_, 0, Some(c"/proc/self/exe"), offset, me).is_ok()
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
            address: None,
            event_hint: "nope",
            display: "kprobe \"nope\"",
        };
        let e = |n| open_error(&s, Via::Pmu, io::Error::from_raw_os_error(n));
        assert!(e(libc::ENOENT).is_not_found());
        assert!(e(libc::EINVAL).is_not_found());
        assert!(e(libc::EILSEQ).is_not_found());
        assert!(e(libc::ERANGE).is_not_found());
        assert!(e(libc::ESRCH).is_not_found());
        assert!(e(ENOTSUPP).is_unprobeable());
        assert!(e(libc::EPERM).is_permission_denied());
        assert!(e(libc::EACCES).is_permission_denied());
        assert_eq!(e(libc::EBUSY).raw_os_error(), Some(libc::EBUSY));
        assert!(e(libc::EILSEQ).to_string().contains("instruction boundary"));
        assert!(e(ENOTSUPP).is_unprobeable());
        assert!(
            !e(ENOTSUPP).is_not_supported(),
            "Auto must not fall back for it"
        );
        let ambiguous = e(libc::EADDRNOTAVAIL);
        assert!(
            matches!(ambiguous, Error::AmbiguousSymbol { .. }),
            "{ambiguous}"
        );
        assert!(ambiguous.is_invalid_input());
        let uprobe = ProbeSpec {
            kind: ProbeKind::Uprobe,
            display: "uprobe \"/bin/x\":0x10",
            ..s
        };
        let denied = open_error(
            &uprobe,
            Via::Pmu,
            io::Error::from_raw_os_error(libc::EACCES),
        );
        assert!(denied.is_permission_denied());
        assert!(denied.to_string().contains("CAP_SYS_ADMIN"), "{denied}");
    }
}
