//! User-space probes: [`Uprobe`] (uprobe and uretprobe).
//!
//! ```no_run
//! # async fn f(prog: std::os::fd::OwnedFd) -> Result<(), probeset::Error> {
//! use probeset::Uprobe;
//!
//! let libc = "/lib/x86_64-linux-gnu/libc.so.6";
//! let malloc = Uprobe::new(libc, "malloc").cookie(0).attach(&prog).await?;
//! let free_ret = Uprobe::retprobe(libc, "free").cookie(1).pid(1234).attach(&prog).await?;
//! # drop((malloc, free_ret));
//! # Ok(()) }
//! ```

use std::ffi::CString;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::elf::ElfSymbols;
use crate::features::{self, ProgramKind};
use crate::kprobe::dup_program;
use crate::link::{Attached, LinkKind};
use crate::perf_event::{self, ProbeSpec};
use crate::probe::ProbeKind;
use crate::sys::bpf;
use crate::{blocking, Backend, Error, Link, Probe};

/// Where in the binary a uprobe goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Target {
    /// An ELF function symbol (plus [`Uprobe::offset`]).
    Symbol(String),
    /// A raw file offset (plus [`Uprobe::offset`]).
    FileOffset(u64),
}

/// A user-space probe (uprobe) or return probe (uretprobe) on a function of an ELF binary
/// or shared library.
///
/// Two `Uprobe`s are equal when they would create the same kernel probe: the cookie is not
/// compared.
#[derive(Clone, Debug)]
pub struct Uprobe {
    binary: PathBuf,
    target: Target,
    offset: u64,
    pid: Option<i32>,
    cookie: u64,
    ref_ctr_offset: u64,
    ret: bool,
    backend: Backend,
}

/// What makes two uprobes the same kernel probe: everything but the cookie.
type Identity<'a> = (&'a Path, &'a Target, u64, Option<i32>, u64, bool, Backend);

impl Uprobe {
    fn identity(&self) -> Identity<'_> {
        (
            &self.binary,
            &self.target,
            self.offset,
            self.pid,
            self.ref_ctr_offset,
            self.ret,
            self.backend,
        )
    }
}

impl PartialEq for Uprobe {
    fn eq(&self, other: &Uprobe) -> bool {
        self.identity() == other.identity()
    }
}

impl Eq for Uprobe {}

impl Hash for Uprobe {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}

impl fmt::Display for Uprobe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.ret { "uretprobe" } else { "uprobe" };
        write!(f, "{kind} {:?}:", self.binary)?;
        match &self.target {
            Target::Symbol(s) => write!(f, "{s:?}")?,
            Target::FileOffset(o) => write!(f, "{o:#x}")?,
        }
        if self.offset != 0 {
            write!(f, "+{:#x}", self.offset)?;
        }
        if let Some(pid) = self.pid {
            write!(f, " (pid {pid})")?;
        }
        Ok(())
    }
}

impl Uprobe {
    /// An entry probe on function `symbol` of the ELF file `binary` (symtab and dynsym are
    /// searched).
    pub fn new(binary: impl Into<PathBuf>, symbol: impl Into<String>) -> Uprobe {
        Uprobe {
            binary: binary.into(),
            target: Target::Symbol(symbol.into()),
            offset: 0,
            pid: None,
            cookie: 0,
            ref_ctr_offset: 0,
            ret: false,
            backend: Backend::Auto,
        }
    }

    /// A return probe on function `symbol` of `binary`.
    pub fn retprobe(binary: impl Into<PathBuf>, symbol: impl Into<String>) -> Uprobe {
        Uprobe {
            ret: true,
            ..Uprobe::new(binary, symbol)
        }
    }

    /// An entry probe at a raw file offset of `binary` (no symbol lookup).
    pub fn at_offset(binary: impl Into<PathBuf>, file_offset: u64) -> Uprobe {
        Uprobe {
            target: Target::FileOffset(file_offset),
            ..Uprobe::new(binary, String::new())
        }
    }

    /// Added to the symbol's (or the raw) file offset.
    #[must_use]
    pub fn offset(self, offset: u64) -> Uprobe {
        Uprobe { offset, ..self }
    }

    /// Fires only in process `pid` (all its threads). Default: every process.
    #[must_use]
    pub fn pid(self, pid: i32) -> Uprobe {
        Uprobe {
            pid: Some(pid),
            ..self
        }
    }

    /// The value `bpf_get_attach_cookie()` returns in the program for this probe (kernel
    /// 5.15+). Default 0.
    #[must_use]
    pub fn cookie(self, cookie: u64) -> Uprobe {
        Uprobe { cookie, ..self }
    }

    /// The file offset of a USDT semaphore the kernel increments while the probe is
    /// attached (kernel 4.20+).
    #[must_use]
    pub fn ref_ctr_offset(self, offset: u64) -> Uprobe {
        Uprobe {
            ref_ctr_offset: offset,
            ..self
        }
    }

    /// Makes this a return probe (or an entry probe again).
    #[must_use]
    pub fn with_ret(self, ret: bool) -> Uprobe {
        Uprobe { ret, ..self }
    }

    /// How the probe is created; default [`Backend::Auto`].
    #[must_use]
    pub fn backend(self, backend: Backend) -> Uprobe {
        Uprobe { backend, ..self }
    }

    /// The binary.
    #[must_use]
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The symbol, or `None` for a raw-offset probe.
    #[must_use]
    pub fn symbol(&self) -> Option<&str> {
        match &self.target {
            Target::Symbol(s) => Some(s),
            Target::FileOffset(_) => None,
        }
    }

    /// The pid filter.
    #[must_use]
    pub fn pid_value(&self) -> Option<i32> {
        self.pid
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

    /// The USDT semaphore offset (0: none).
    #[must_use]
    pub fn ref_ctr_offset_value(&self) -> u64 {
        self.ref_ctr_offset
    }

    /// Checks everything that can be checked without the kernel.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.binary.as_os_str().is_empty() {
            return Err(Error::invalid(
                "uprobe binary \"\"",
                "the path is empty; name an ELF file",
            ));
        }
        if self.binary.to_str().is_none_or(|s| s.contains('\0')) {
            return Err(Error::invalid(
                format!("uprobe binary {:?}", self.binary),
                "the path must be UTF-8 without NUL bytes",
            ));
        }
        if let Target::Symbol(s) = &self.target {
            if s.is_empty() {
                return Err(Error::invalid(
                    format!("uprobe symbol \"\" in {:?}", self.binary),
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
        if let Some(pid) = self.pid {
            if pid <= 0 {
                return Err(Error::invalid(
                    format!("pid {pid} for {self}"),
                    "a pid filter must be a positive process id; leave it unset to probe every process",
                ));
            }
        }
        Ok(())
    }

    /// The absolute path of the binary and the file offset of the probe, from the ELF
    /// symbol tables (cached per file).
    pub(crate) fn resolve(&self) -> Result<(String, u64), Error> {
        let symbols = ElfSymbols::load(&self.binary)?;
        Ok((self.absolute_path()?, self.offset_in(&symbols)?))
    }

    /// The file offset of the probe, from `symbols` (this probe's binary, loaded).
    pub(crate) fn offset_in(&self, symbols: &ElfSymbols) -> Result<u64, Error> {
        let base = match &self.target {
            Target::Symbol(s) => symbols.resolve(s)?,
            Target::FileOffset(o) => *o,
        };
        base.checked_add(self.offset).ok_or_else(|| {
            Error::invalid(
                format!("offset of {self}"),
                "symbol offset plus offset overflows u64",
            )
        })
    }

    /// The binary's absolute path, as the kernel is given it.
    pub(crate) fn absolute_path(&self) -> Result<String, Error> {
        let path = std::path::absolute(&self.binary)
            .map_err(|e| Error::syscall("getcwd", format!("{:?}", self.binary), e))?;
        path.into_os_string()
            .into_string()
            .map_err(|p| Error::invalid(format!("uprobe binary {p:?}"), "the path must be UTF-8"))
    }

    /// Attaches `prog` to this probe.
    ///
    /// `prog` must be a `BPF_PROG_TYPE_KPROBE` program; its fd is duplicated for the
    /// duration of the call. The symbol is looked up in the binary's ELF symbol tables
    /// (parsed once per file and cached). A plain program goes on a perf event (from the
    /// uprobe PMU, or tracefs `uprobe_events`, as [`Backend`] says) with a BPF perf link; a
    /// program loaded for `uprobe_multi` goes on a one-offset uprobe multi link.
    ///
    /// All blocking work runs on tokio's blocking pool. Must be called within a tokio
    /// runtime.
    ///
    /// # Errors
    /// - [`Error::is_invalid_input`]: empty binary or symbol, pid <= 0, a binary that is not
    ///   ELF, a program fd that is not a kprobe program, [`Backend::Tracefs`] with a
    ///   multi-only program.
    /// - [`Error::is_not_found`]: the binary, the symbol or the pid does not exist, or the
    ///   offset is outside the file.
    /// - [`Error::is_not_supported`]: no uprobes in this kernel, a cookie on a kernel
    ///   without perf links, a multi-only program on a kernel without uprobe multi links.
    /// - [`Error::is_permission_denied`]: not root (or without `CAP_BPF`+`CAP_PERFMON`).
    ///
    /// Nothing that was created survives an error.
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped, whatever the attach created is released.
    ///
    /// # Minimum kernel version
    /// 4.17 for the PMU, older with tracefs; cookies 5.15; uprobe multi links 6.6.
    pub async fn attach(self, prog: impl AsFd) -> Result<Link, Error> {
        self.validate()?;
        let prog = dup_program(prog.as_fd())?;
        blocking::run(move || self.attach_blocking(&prog)).await
    }

    pub(crate) fn attach_blocking(self, prog: &OwnedFd) -> Result<Link, Error> {
        let attached = self.attach_raw(prog, features::program_kind(prog.as_fd())?)?;
        Ok(Link::new(attached, Probe::Uprobe(self)))
    }

    /// Attaches `prog` (of the given kind) and returns what the attachment owns.
    pub(crate) fn attach_raw(&self, prog: &OwnedFd, kind: ProgramKind) -> Result<Attached, Error> {
        let (path, offset) = self.resolve()?;
        self.attach_at(prog, kind, &path, offset)
    }

    /// Attaches `prog` (of the given kind) at `offset` of `path`, already resolved.
    pub(crate) fn attach_at(
        &self,
        prog: &OwnedFd,
        kind: ProgramKind,
        path: &str,
        offset: u64,
    ) -> Result<Attached, Error> {
        match kind {
            ProgramKind::Plain => self.attach_perf(prog, path, offset),
            ProgramKind::UprobeMulti => self.attach_multi(prog, path, offset),
            ProgramKind::KprobeMulti => Err(Error::invalid(
                format!("program for {self}"),
                "the program was loaded for kprobe_multi and cannot attach uprobes; load a uprobe program",
            )),
            ProgramKind::UnsupportedMulti => Err(Error::not_supported(
                "uprobe multi links",
                "the program was loaded for a multi link this kernel cannot create (uprobe_multi needs 6.6+); \
                 load it as a plain uprobe program",
                None,
            )),
        }
    }

    fn event_hint(&self, offset: u64) -> String {
        match &self.target {
            Target::Symbol(s) if self.offset == 0 => s.clone(),
            _ => format!("off_{offset:x}"),
        }
    }

    /// The perf-event description of this probe at `offset` of `path`.
    fn spec<'a>(
        &'a self,
        path: &'a str,
        offset: u64,
        hint: &'a str,
        display: &'a str,
    ) -> ProbeSpec<'a> {
        ProbeSpec {
            kind: ProbeKind::Uprobe,
            ret: self.ret,
            name: path,
            offset,
            ref_ctr_offset: self.ref_ctr_offset,
            pid: self.pid,
            maxactive: None,
            event_hint: hint,
            display,
        }
    }

    fn attach_perf(&self, prog: &OwnedFd, path: &str, offset: u64) -> Result<Attached, Error> {
        let (display, hint) = (self.to_string(), self.event_hint(offset));
        let spec = self.spec(path, offset, &hint, &display);
        perf_event::attach(prog, &spec, self.backend, self.cookie)
    }

    fn attach_multi(&self, prog: &OwnedFd, path: &str, offset: u64) -> Result<Attached, Error> {
        if self.backend == Backend::Tracefs {
            return Err(Error::invalid(
                format!("Backend::Tracefs for {self}"),
                "the program was loaded for uprobe_multi, which attaches through a multi link, not tracefs; \
                 use Backend::Auto",
            ));
        }
        let (display, hint) = (self.to_string(), self.event_hint(offset));
        let spec = self.spec(path, offset, &hint, &display);
        let ref_ctr = [self.ref_ctr_offset];
        let link = uprobe_multi(
            prog,
            path,
            &[offset],
            (self.ref_ctr_offset != 0).then_some(&ref_ctr[..]),
            &[self.cookie],
            self.ret,
            self.pid,
        )
        .map_err(|e| perf_event::probe_error(&spec, "BPF_LINK_CREATE", e))?;
        Ok(Attached {
            link: Some(link),
            perf: None,
            event: None,
            tracefs_event_name: None,
            kind: LinkKind::UprobeMulti,
            backend: None,
        })
    }
}

/// Creates one uprobe multi link on `offsets` of `path`, with one cookie each.
pub(crate) fn uprobe_multi(
    prog: &OwnedFd,
    path: &str,
    offsets: &[u64],
    ref_ctr_offsets: Option<&[u64]>,
    cookies: &[u64],
    ret: bool,
    pid: Option<i32>,
) -> std::io::Result<OwnedFd> {
    let path = CString::new(path).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let flags = if ret { bpf::MULTI_RETURN } else { 0 };
    let pid = pid.map_or(0, i32::unsigned_abs);
    bpf::link_create_uprobe_multi(
        prog.as_fd(),
        &path,
        offsets,
        ref_ctr_offsets,
        Some(cookies),
        flags,
        pid,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
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
        Uprobe::at_offset("/bin/true", 0).validate().unwrap();
        Uprobe::new("/bin/true", "main").pid(1).validate().unwrap();
    }

    #[test]
    fn equality_ignores_the_cookie() {
        let a = Uprobe::new("/bin/x", "f").cookie(1);
        assert_eq!(a, Uprobe::new("/bin/x", "f").cookie(9));
        assert_ne!(a, Uprobe::retprobe("/bin/x", "f"));
        assert_ne!(a, Uprobe::new("/bin/x", "f").pid(3));
        assert_ne!(a, Uprobe::new("/bin/y", "f"));
        assert_ne!(a, Uprobe::at_offset("/bin/x", 0));
        assert_ne!(Probe::from(a), Probe::from(crate::Kprobe::new("f")));
    }

    #[test]
    fn display() {
        assert_eq!(
            Uprobe::new("/bin/x", "f").offset(2).pid(7).to_string(),
            "uprobe \"/bin/x\":\"f\"+0x2 (pid 7)"
        );
        assert_eq!(
            Uprobe::at_offset("/bin/x", 16).with_ret(true).to_string(),
            "uretprobe \"/bin/x\":0x10"
        );
    }
}
