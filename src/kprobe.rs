//! Kernel probes: [`Kprobe`] (kprobe and kretprobe).
//!
//! ```no_run
//! # async fn f(prog: std::os::fd::OwnedFd) -> Result<(), probeset::Error> {
//! use probeset::Kprobe;
//!
//! // `prog` is a loaded BPF_PROG_TYPE_KPROBE program (an aya ProgramFd, a libbpf-rs
//! // Program, an OwnedFd...).
//! let link = Kprobe::new("vfs_read").cookie(1).attach(&prog).await?;
//! let ret = Kprobe::retprobe("vfs_read").cookie(2).attach(&prog).await?;
//! // ... the program runs on every vfs_read entry and return ...
//! link.detach().await?;
//! ret.detach().await?;
//! # Ok(()) }
//! ```

use std::ffi::CString;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::os::fd::{AsFd, OwnedFd};

use crate::features::{self, ProgramKind};
use crate::link::{Attached, LinkKind};
use crate::perf_event::{self, ProbeSpec};
use crate::probe::ProbeKind;
use crate::sys::bpf;
use crate::validate::is_valid_symbol;
use crate::{blocking, Backend, Error, Link, Probe};

/// The largest `maxactive` the kernel accepts (`KRETPROBE_MAXACTIVE_MAX`).
const MAXACTIVE_MAX: u32 = 4096;

/// A kernel probe (kprobe) or return probe (kretprobe) on a kernel function.
///
/// Two `Kprobe`s are equal when they would create the same kernel probe: the cookie is
/// not compared.
#[derive(Clone, Debug)]
pub struct Kprobe {
    symbol: String,
    offset: u64,
    cookie: u64,
    ret: bool,
    backend: Backend,
    maxactive: Option<u32>,
}

impl Kprobe {
    /// What makes two kprobes the same kernel probe: everything but the cookie.
    fn identity(&self) -> (&str, u64, bool, Backend, Option<u32>) {
        (
            &self.symbol,
            self.offset,
            self.ret,
            self.backend,
            self.maxactive,
        )
    }
}

impl PartialEq for Kprobe {
    fn eq(&self, other: &Kprobe) -> bool {
        self.identity() == other.identity()
    }
}

impl Eq for Kprobe {}

impl Hash for Kprobe {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}

impl fmt::Display for Kprobe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.ret { "kretprobe" } else { "kprobe" };
        write!(f, "{kind} {:?}", self.symbol)?;
        if self.offset != 0 {
            write!(f, "+{:#x}", self.offset)?;
        }
        Ok(())
    }
}

/// The symbol with the architecture's syscall wrapper prefix (`sys_getpid` ->
/// `__x64_sys_getpid` on `x86_64`), or `None` when the prefix does not apply.
pub(crate) fn syscall_prefixed(symbol: &str) -> Option<String> {
    let prefix = match std::env::consts::ARCH {
        "x86_64" => "__x64_",
        "x86" => "__ia32_",
        "aarch64" => "__arm64_",
        "s390x" => "__s390x_",
        "riscv64" => "__riscv_",
        _ => return None,
    };
    symbol
        .starts_with("sys_")
        .then(|| format!("{prefix}{symbol}"))
}

impl Kprobe {
    /// An entry probe on kernel function `symbol` (as `/proc/kallsyms` names it).
    pub fn new(symbol: impl Into<String>) -> Kprobe {
        Kprobe {
            symbol: symbol.into(),
            offset: 0,
            cookie: 0,
            ret: false,
            backend: Backend::Auto,
            maxactive: None,
        }
    }

    /// A return probe on kernel function `symbol`.
    pub fn retprobe(symbol: impl Into<String>) -> Kprobe {
        Kprobe {
            ret: true,
            ..Kprobe::new(symbol)
        }
    }

    /// Probes `offset` bytes into the function instead of its entry. It must be on an
    /// instruction boundary; return probes take no offset.
    #[must_use]
    pub fn offset(self, offset: u64) -> Kprobe {
        Kprobe { offset, ..self }
    }

    /// The value `bpf_get_attach_cookie()` returns in the program for this probe (kernel
    /// 5.15+). Default 0.
    #[must_use]
    pub fn cookie(self, cookie: u64) -> Kprobe {
        Kprobe { cookie, ..self }
    }

    /// How the probe is created; default [`Backend::Auto`].
    #[must_use]
    pub fn backend(self, backend: Backend) -> Kprobe {
        Kprobe { backend, ..self }
    }

    /// For a return probe: how many instances of the function may be probed at once
    /// (`r<maxactive>:` in `kprobe_events`; 1 to 4096). Only tracefs can carry it, so it
    /// makes [`Backend::Auto`] use tracefs, and [`Backend::Pmu`] rejects it.
    #[must_use]
    pub fn maxactive(self, maxactive: u32) -> Kprobe {
        Kprobe {
            maxactive: Some(maxactive),
            ..self
        }
    }

    /// The kernel symbol.
    #[must_use]
    pub fn symbol(&self) -> &str {
        &self.symbol
    }

    /// The offset into the symbol.
    #[must_use]
    pub fn offset_value(&self) -> u64 {
        self.offset
    }

    /// The cookie.
    #[must_use]
    pub fn cookie_value(&self) -> u64 {
        self.cookie
    }

    /// Whether this is a return probe.
    #[must_use]
    pub fn is_retprobe(&self) -> bool {
        self.ret
    }

    /// The backend asked for.
    #[must_use]
    pub fn backend_value(&self) -> Backend {
        self.backend
    }

    /// Checks everything that can be checked without the kernel.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.symbol.is_empty() {
            return Err(Error::invalid(
                "kprobe symbol \"\"",
                "the symbol is empty; name a kernel function",
            ));
        }
        if !is_valid_symbol(&self.symbol) {
            return Err(Error::invalid(
                format!("kprobe symbol {:?}", self.symbol),
                "a kernel symbol matches ^[a-zA-Z_][0-9a-zA-Z_.]*$ (see /proc/kallsyms)",
            ));
        }
        if self.ret && self.offset != 0 {
            return Err(Error::invalid(
                format!("offset {:#x} on kretprobe {:?}", self.offset, self.symbol),
                "a return probe is placed at the function entry; remove the offset",
            ));
        }
        if let Some(n) = self.maxactive {
            if !self.ret {
                return Err(Error::invalid(
                    format!("maxactive on kprobe {:?}", self.symbol),
                    "maxactive applies to return probes only",
                ));
            }
            if n == 0 || n > MAXACTIVE_MAX {
                return Err(Error::invalid(
                    format!("maxactive {n} on kretprobe {:?}", self.symbol),
                    "maxactive must be 1 to 4096",
                ));
            }
            if self.backend == Backend::Pmu {
                return Err(Error::invalid(
                    format!("maxactive on kretprobe {:?} with Backend::Pmu", self.symbol),
                    "the perf PMU cannot carry maxactive; use Backend::Auto or Backend::Tracefs",
                ));
            }
        }
        Ok(())
    }

    /// Attaches `prog` to this probe.
    ///
    /// `prog` must be a `BPF_PROG_TYPE_KPROBE` program; its fd is duplicated for the
    /// duration of the call. A plain program goes on a perf event (from the kprobe PMU, or
    /// tracefs `kprobe_events`, as [`Backend`] says) with a BPF perf link; a program loaded
    /// for `kprobe_multi` goes on a one-symbol kprobe multi link. A `sys_*` symbol that is
    /// not found is retried with the architecture's syscall prefix (`__x64_sys_*`).
    ///
    /// All blocking work runs on tokio's blocking pool. Must be called within a tokio
    /// runtime.
    ///
    /// # Errors
    /// - [`Error::is_invalid_input`]: malformed symbol, offset on a return probe, bad
    ///   `maxactive`, a program fd that is not a kprobe program (checked before the kernel
    ///   is asked to create anything).
    /// - [`Error::is_not_supported`]: no kprobes in this kernel (neither the kprobe PMU nor
    ///   `kprobe_events`), a multi-only program on a kernel without kprobe multi links, a
    ///   cookie on a kernel without perf links.
    /// - [`Error::is_not_found`]: the symbol does not exist, is not traceable, or the
    ///   offset is not on an instruction boundary.
    /// - [`Error::is_permission_denied`]: not root (or without `CAP_BPF`+`CAP_PERFMON`).
    ///
    /// Nothing that was created survives an error.
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped, whatever the attach created is released.
    ///
    /// # Minimum kernel version
    /// 4.17 for the PMU, older with tracefs; cookies 5.15; multi links 5.18.
    pub async fn attach(self, prog: impl AsFd) -> Result<Link, Error> {
        self.validate()?;
        let prog = dup_program(prog.as_fd())?;
        blocking::run(move || self.attach_blocking(&prog)).await
    }

    pub(crate) fn attach_blocking(self, prog: &OwnedFd) -> Result<Link, Error> {
        let attached = self.attach_raw(prog, features::program_kind(prog.as_fd())?)?;
        Ok(Link::new(attached, Probe::Kprobe(self)))
    }

    /// The maxactive asked for.
    pub(crate) fn maxactive_value(&self) -> Option<u32> {
        self.maxactive
    }

    /// Attaches `prog` (of the given kind) and returns what the attachment owns.
    pub(crate) fn attach_raw(&self, prog: &OwnedFd, kind: ProgramKind) -> Result<Attached, Error> {
        match kind {
            ProgramKind::Plain => self.attach_perf(prog),
            ProgramKind::KprobeMulti => self.attach_multi(prog),
            ProgramKind::UprobeMulti => Err(Error::invalid(
                format!("program for {self}"),
                "the program was loaded for uprobe_multi and cannot attach kprobes; load a kprobe program",
            )),
            ProgramKind::UnsupportedMulti => Err(Error::not_supported(
                "kprobe multi links",
                "the program was loaded for a multi link (expected_attach_type kprobe_multi) that this kernel \
                 cannot create (kprobe_multi needs 5.18+ with CONFIG_FPROBE); load it as a plain kprobe program",
                None,
            )),
        }
    }

    fn attach_perf(&self, prog: &OwnedFd) -> Result<Attached, Error> {
        let try_symbol = |symbol: &str| {
            let display = format!(
                "{}",
                Kprobe::new(symbol).offset(self.offset).with_ret(self.ret)
            );
            let spec = ProbeSpec {
                kind: ProbeKind::Kprobe,
                ret: self.ret,
                name: symbol,
                offset: self.offset,
                ref_ctr_offset: 0,
                pid: None,
                maxactive: self.maxactive,
                event_hint: symbol,
                display: &display,
            };
            perf_event::attach(prog, &spec, self.backend, self.cookie)
        };
        match try_symbol(&self.symbol) {
            Err(e) if e.is_not_found() => match syscall_prefixed(&self.symbol) {
                Some(prefixed) => {
                    try_symbol(&prefixed).map_err(|e2| if e2.is_not_found() { e } else { e2 })
                }
                None => Err(e),
            },
            other => other,
        }
    }

    fn with_ret(self, ret: bool) -> Kprobe {
        Kprobe { ret, ..self }
    }

    fn attach_multi(&self, prog: &OwnedFd) -> Result<Attached, Error> {
        if self.backend == Backend::Tracefs {
            return Err(Error::invalid(
                format!("Backend::Tracefs for {self}"),
                "the program was loaded for kprobe_multi, which attaches through a multi link, not tracefs; \
                 use Backend::Auto",
            ));
        }
        if self.offset != 0 || self.maxactive.is_some() {
            return Err(Error::invalid(
                format!("{self} with a kprobe_multi program"),
                "kprobe multi links take neither an offset nor maxactive; load a plain kprobe program",
            ));
        }
        let link =
            kprobe_multi(prog, &[self.symbol.as_str()], &[self.cookie], self.ret).or_else(|e| {
                match (e.is_not_found(), syscall_prefixed(&self.symbol)) {
                    (true, Some(p)) => kprobe_multi(prog, &[p.as_str()], &[self.cookie], self.ret)
                        .map_err(|e2| if e2.is_not_found() { e } else { e2 }),
                    _ => Err(e),
                }
            })?;
        Ok(Attached {
            link: Some(link),
            perf: None,
            event: None,
            tracefs_event_name: None,
            kind: LinkKind::KprobeMulti,
            backend: None,
        })
    }
}

/// Creates one kprobe multi link on `symbols` with one cookie each.
pub(crate) fn kprobe_multi(
    prog: &OwnedFd,
    symbols: &[&str],
    cookies: &[u64],
    ret: bool,
) -> Result<OwnedFd, Error> {
    let names: Vec<CString> = symbols
        .iter()
        .map(|s| {
            CString::new(*s)
                .map_err(|_| Error::invalid(format!("kprobe symbol {s:?}"), "contains a NUL byte"))
        })
        .collect::<Result<_, _>>()?;
    let ptrs: Vec<&std::ffi::CStr> = names.iter().map(CString::as_c_str).collect();
    let flags = if ret { bpf::MULTI_RETURN } else { 0 };
    bpf::link_create_kprobe_multi(prog.as_fd(), &ptrs, Some(cookies), flags).map_err(|e| {
        let what = if symbols.len() == 1 {
            format!("kernel symbol {:?}", symbols[0])
        } else {
            format!("one of {} kernel symbols", symbols.len())
        };
        match e.raw_os_error() {
            Some(libc::ENOENT | libc::ESRCH | libc::EINVAL) => Error::not_found(
                what,
                "check /proc/kallsyms and available_filter_functions",
                Some(e),
            ),
            Some(libc::EOPNOTSUPP) => Error::not_supported(
                "kprobe multi links",
                "the kernel lacks CONFIG_FPROBE (kprobe_multi needs 5.18+)",
                Some(e),
            ),
            _ => Error::syscall("BPF_LINK_CREATE", what, e),
        }
    })
}

/// The function names of `/proc/kallsyms` (text symbols; `[module]` suffixes dropped).
/// Empty when the addresses are hidden is not a concern: names are listed either way.
pub(crate) fn kallsyms_names() -> std::io::Result<std::collections::HashSet<String>> {
    let text = std::fs::read_to_string("/proc/kallsyms")?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let _addr = fields.next()?;
            let kind = fields.next()?;
            let name = fields.next()?;
            matches!(kind, "t" | "T" | "w" | "W").then(|| name.to_string())
        })
        .collect())
}

/// Duplicates the caller's program fd so the blocking pool can own it.
pub(crate) fn dup_program(prog: std::os::fd::BorrowedFd<'_>) -> Result<OwnedFd, Error> {
    prog.try_clone_to_owned()
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EBADF) => Error::NotBpfProgram {
                what: "it is not an open fd".to_string(),
                source: e,
            },
            _ => Error::syscall("fcntl(F_DUPFD_CLOEXEC)", "the program fd", e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
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
        Kprobe::new("f.isra.0").offset(4).validate().unwrap();
        let msg = Kprobe::new("a b").validate().unwrap_err().to_string();
        assert!(msg.contains("\"a b\""), "{msg}");
    }

    #[test]
    fn equality_ignores_the_cookie() {
        use std::collections::HashSet;
        let a = Kprobe::new("f").cookie(1);
        let b = Kprobe::new("f").cookie(2);
        assert_eq!(a, b);
        assert_ne!(a, Kprobe::retprobe("f"));
        assert_ne!(a, Kprobe::new("f").offset(1));
        assert_ne!(a, Kprobe::new("f").backend(Backend::Tracefs));
        let set: HashSet<Probe> = [a.into(), b.into()].into_iter().collect();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn prefix() {
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                syscall_prefixed("sys_getpid").as_deref(),
                Some("__x64_sys_getpid")
            );
        }
        assert_eq!(syscall_prefixed("vfs_read"), None);
        assert_eq!(syscall_prefixed("__x64_sys_getpid"), None);
    }

    #[test]
    fn display() {
        assert_eq!(Kprobe::new("f").offset(16).to_string(), "kprobe \"f\"+0x10");
        assert_eq!(Kprobe::retprobe("f").to_string(), "kretprobe \"f\"");
    }
}
