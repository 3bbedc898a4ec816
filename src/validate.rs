//! Everything that is checked before the kernel is asked: a malformed probe is
//! [`Error::is_invalid_input`] even on a kernel that could not make it.

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::backend::Backend;
use crate::error::Error;
use crate::kprobe::Kprobe;
use crate::probe::Probe;
use crate::uprobe::{Target, Uprobe};

/// The largest `maxactive` the kernel accepts (`KRETPROBE_MAXACTIVE_MAX`).
const MAXACTIVE_MAX: u32 = 4096;

/// Whether `s` is a kernel symbol name as `/proc/kallsyms` lists them:
/// `^[a-zA-Z_][0-9a-zA-Z_.]*$` (GCC's `.isra.0`/`.constprop.0` suffixes have dots).
pub(crate) fn is_valid_symbol(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// Whether `s` is a kernel symbol as a kprobe names it: `SYM`, or `MOD:SYM` for a function
/// of a loaded module (a module name is `[A-Za-z0-9_]`, as the kernel spells it).
pub(crate) fn is_kprobe_symbol(s: &str) -> bool {
    match s.split_once(':') {
        Some((module, symbol)) => {
            !module.is_empty()
                && module
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && is_valid_symbol(symbol)
        }
        None => is_valid_symbol(s),
    }
}

/// Checks a kprobe: symbol syntax, offset and `maxactive`.
pub(crate) fn kprobe(k: &Kprobe) -> Result<(), Error> {
    if let Some(address) = k.address() {
        if address == 0 {
            return Err(Error::invalid(
                "kprobe address 0",
                "name a kernel text address as /proc/kallsyms lists it (as root)",
            ));
        }
        if k.offset_value() != 0 {
            return Err(Error::invalid(
                format!("offset {:#x} on {k}", k.offset_value()),
                "give the address of the instruction itself; an address probe takes no offset",
            ));
        }
        return maxactive(k);
    }
    if k.symbol().is_empty() {
        return Err(Error::invalid(
            "kprobe symbol \"\"",
            "the symbol is empty; name a kernel function",
        ));
    }
    if !is_kprobe_symbol(k.symbol()) {
        return Err(Error::invalid(
            format!("kprobe symbol {:?}", k.symbol()),
            "a kernel symbol matches ^[a-zA-Z_][0-9a-zA-Z_.]*$ (see /proc/kallsyms), or \
             MOD:SYM for a function of a module",
        ));
    }
    if k.is_retprobe() && k.offset_value() != 0 {
        return Err(Error::invalid(
            format!(
                "offset {:#x} on kretprobe {:?}",
                k.offset_value(),
                k.symbol()
            ),
            "a return probe is placed at the function entry; remove the offset",
        ));
    }
    maxactive(k)
}

/// A kretprobe's `maxactive`.
fn maxactive(k: &Kprobe) -> Result<(), Error> {
    if let Some(n) = k.maxactive_value() {
        if !k.is_retprobe() {
            return Err(Error::invalid(
                format!("maxactive on kprobe {:?}", k.symbol()),
                "maxactive applies to return probes only",
            ));
        }
        if n == 0 || n > MAXACTIVE_MAX {
            return Err(Error::invalid(
                format!("maxactive {n} on kretprobe {:?}", k.symbol()),
                "maxactive must be 1 to 4096",
            ));
        }
        if k.backend_value() == Backend::Pmu {
            return Err(Error::invalid(
                format!("maxactive on kretprobe {:?} with Backend::Pmu", k.symbol()),
                "the perf PMU cannot carry maxactive; use Backend::Auto or Backend::Tracefs",
            ));
        }
    }
    Ok(())
}

/// Checks a uprobe: path, symbol and pid.
pub(crate) fn uprobe(u: &Uprobe) -> Result<(), Error> {
    if u.binary().as_os_str().is_empty() {
        return Err(Error::invalid(
            "uprobe binary \"\"",
            "the path is empty; name an ELF file",
        ));
    }
    if u.binary().to_str().is_none_or(|s| s.contains('\0')) {
        return Err(Error::invalid(
            format!("uprobe binary {:?}", u.binary()),
            "the path must be UTF-8 without NUL bytes",
        ));
    }
    if let Target::Symbol(s) = u.target() {
        if s.is_empty() {
            return Err(Error::invalid(
                format!("uprobe symbol \"\" in {:?}", u.binary()),
                "the symbol is empty; name a function, or use Uprobe::at_offset",
            ));
        }
        if s.contains('\0') {
            return Err(Error::invalid(
                format!("uprobe symbol {s:?}"),
                "contains a NUL byte",
            ));
        }
    }
    uprobe_offset(u)?;
    if let Some(pid) = u.pid_value() {
        if pid <= 0 {
            return Err(Error::invalid(
                format!("pid {pid} for {u}"),
                "a pid filter must be a positive process id; leave it unset to probe every process",
            ));
        }
    }
    Ok(())
}

/// The kernel takes a file offset as a signed 64-bit `loff_t`.
const MAX_FILE_OFFSET: u64 = i64::MAX as u64;

/// A uprobe's offsets: what the kernel could never fire on.
fn uprobe_offset(u: &Uprobe) -> Result<(), Error> {
    let (total, raw) = match u.target() {
        Target::FileOffset(o) => (o.checked_add(u.offset_value()), true),
        Target::Symbol(_) => (Some(u.offset_value()), false),
    };
    match total {
        Some(0) if raw => Err(Error::invalid(
            format!("file offset 0 for {u}"),
            "offset 0 is the ELF header, not an instruction; give the offset of a function \
             (Uprobe::new resolves symbols)",
        )),
        Some(o) if o <= MAX_FILE_OFFSET => Ok(()),
        _ => Err(Error::invalid(
            format!("offset of {u}"),
            "a file offset must be below 2^63 (the kernel's loff_t)",
        )),
    }
}

/// Checks either kind of probe.
pub(crate) fn probe(p: &Probe) -> Result<(), Error> {
    match p {
        Probe::Kprobe(k) => kprobe(k),
        Probe::Uprobe(u) => uprobe(u),
    }
}

/// A probe for a multi link: it needs no perf event, so [`Backend::Tracefs`] cannot apply;
/// a kprobe multi link takes neither an offset nor `maxactive`.
pub(crate) fn for_multi_link(p: &Probe) -> Result<(), Error> {
    let backend = match p {
        Probe::Kprobe(k) => k.backend_value(),
        Probe::Uprobe(u) => u.backend_value(),
    };
    if backend == Backend::Tracefs {
        return Err(Error::invalid(
            format!("Backend::Tracefs for {p}"),
            "the program was loaded for a multi link, which attaches without tracefs; use \
             Backend::Auto",
        ));
    }
    if let Probe::Kprobe(k) = p {
        if k.offset_value() != 0 || k.maxactive_value().is_some() {
            return Err(Error::invalid(
                format!("{p} with a kprobe_multi program"),
                "kprobe multi links take neither an offset nor maxactive; load a plain kprobe \
                 program",
            ));
        }
    }
    Ok(())
}

/// Checks that `fd` is a BPF program at all (`/proc/self/fd` names it
/// `anon_inode:bpf-prog`): `BPF_OBJ_GET_INFO_BY_FD` answers for maps and links too, in their
/// own info layouts, so this comes first.
///
/// # Errors
/// Invalid input ([`Error::NotBpfProgram`]) for another kind of fd.
pub(crate) fn program_fd(fd: BorrowedFd<'_>) -> Result<(), Error> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    match link {
        Ok(target) if target.as_os_str() != "anon_inode:bpf-prog" => Err(Error::NotBpfProgram {
            what: format!("it is {}", target.display()),
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spells the checks as methods, so each test reads as the caller's builder chain.
    trait Validate {
        fn validate(&self) -> Result<(), Error>;
    }

    impl Validate for Kprobe {
        fn validate(&self) -> Result<(), Error> {
            kprobe(self)
        }
    }

    impl Validate for Uprobe {
        fn validate(&self) -> Result<(), Error> {
            uprobe(self)
        }
    }

    #[test]
    fn symbols() {
        for ok in [
            "vfs_read",
            "_x",
            "udp_send_skb.isra.52",
            "a1",
            "__x64_sys_getpid",
        ] {
            assert!(is_valid_symbol(ok), "{ok}");
        }
        for bad in ["", "1abc", ".x", "a b", "a-b", "mod:sym", "a\0b", "é"] {
            assert!(!is_valid_symbol(bad), "{bad:?}");
        }
        assert!(is_kprobe_symbol("nf_conntrack:nf_ct_delete"));
        assert!(is_kprobe_symbol("vfs_read"));
        for bad in [":x", "m:", "m-x:f", "a:b:c", "m:1f"] {
            assert!(!is_kprobe_symbol(bad), "{bad:?}");
        }
    }

    #[test]
    fn kprobes() {
        assert!(Kprobe::new("").validate().unwrap_err().is_invalid_input());
        assert!(Kprobe::new("9x").validate().unwrap_err().is_invalid_input());
        assert!(Kprobe::retprobe("f")
            .offset(4)
            .validate()
            .unwrap_err()
            .is_invalid_input());
        assert!(Kprobe::new("f")
            .maxactive(4)
            .validate()
            .unwrap_err()
            .is_invalid_input());
        assert!(Kprobe::retprobe("f")
            .maxactive(0)
            .validate()
            .unwrap_err()
            .is_invalid_input());
        assert!(Kprobe::retprobe("f")
            .maxactive(5000)
            .validate()
            .unwrap_err()
            .is_invalid_input());
        assert!(Kprobe::retprobe("f")
            .maxactive(8)
            .backend(Backend::Pmu)
            .validate()
            .unwrap_err()
            .is_invalid_input());
        Kprobe::retprobe("f").maxactive(8).validate().unwrap();
        Kprobe::new("nf_conntrack:nf_ct_delete").validate().unwrap();
        Kprobe::at_address(0xffff_ffff_8100_0000)
            .validate()
            .unwrap();
        assert!(Kprobe::at_address(0)
            .validate()
            .unwrap_err()
            .is_invalid_input());
        assert!(Kprobe::at_address(0xffff_ffff_8100_0000)
            .offset(4)
            .validate()
            .unwrap_err()
            .is_invalid_input());
        Kprobe::new("f.isra.0").offset(4).validate().unwrap();
        let msg = Kprobe::new("a b").validate().unwrap_err().to_string();
        assert!(msg.contains("\"a b\""), "{msg}");
    }

    #[test]
    fn uprobes() {
        assert!(Uprobe::new("", "f")
            .validate()
            .unwrap_err()
            .is_invalid_input());
        assert!(Uprobe::new("/bin/true", "")
            .validate()
            .unwrap_err()
            .is_invalid_input());
        assert!(Uprobe::new("/bin/true", "f")
            .pid(0)
            .validate()
            .unwrap_err()
            .is_invalid_input());
        assert!(Uprobe::new("/bin/true", "f")
            .pid(-3)
            .validate()
            .unwrap_err()
            .is_invalid_input());
        assert!(Uprobe::new("/bin/true", "a\0b")
            .validate()
            .unwrap_err()
            .is_invalid_input());
        Uprobe::at_offset("/bin/true", 0x1000).validate().unwrap();
        Uprobe::new("/bin/true", "main").pid(1).validate().unwrap();
    }

    #[test]
    fn uprobe_offsets_that_can_never_fire() {
        let e = Uprobe::at_offset("/bin/true", 0).validate().unwrap_err();
        assert!(
            e.is_invalid_input() && e.to_string().contains("ELF header"),
            "{e}"
        );
        Uprobe::at_offset("/bin/true", 0)
            .offset(0x40)
            .validate()
            .unwrap();
        let e = Uprobe::at_offset("/bin/true", 1 << 63)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("2^63"), "{e}");
        assert!(Uprobe::at_offset("/bin/true", u64::MAX)
            .validate()
            .unwrap_err()
            .is_invalid_input());
        assert!(Uprobe::at_offset("/bin/true", u64::MAX - 1)
            .offset(4)
            .validate()
            .unwrap_err()
            .is_invalid_input());
        assert!(Uprobe::new("/bin/true", "main")
            .offset(1 << 63)
            .validate()
            .unwrap_err()
            .is_invalid_input());
        Uprobe::at_offset("/bin/true", MAX_FILE_OFFSET)
            .validate()
            .unwrap();
    }

    #[test]
    fn multi_links_take_no_tracefs_and_no_kprobe_offset() {
        let tracefs: Probe = Uprobe::new("/bin/x", "f").backend(Backend::Tracefs).into();
        assert!(for_multi_link(&tracefs).unwrap_err().is_invalid_input());
        let off: Probe = Kprobe::new("f").offset(4).into();
        assert!(for_multi_link(&off).unwrap_err().is_invalid_input());
        for_multi_link(&Kprobe::new("f").into()).unwrap();
        for_multi_link(&Uprobe::new("/bin/x", "f").pid(3).into()).unwrap();
    }
}
