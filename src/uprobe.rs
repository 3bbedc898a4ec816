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

use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use crate::backend::Backend;

/// Where in the binary a uprobe goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Target {
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
///
/// A uprobe is bound to the file (inode) its path names when it is attached: replacing the
/// file afterwards never moves it ([`Link::binary_replaced`](crate::link::Link::binary_replaced)
/// tells when the path names another file).
///
/// ```
/// use probeset::Uprobe;
///
/// let libc = "/lib/x86_64-linux-gnu/libc.so.6";
/// let malloc = Uprobe::new(libc, "malloc").pid(1234).cookie(7);
/// let ret = Uprobe::retprobe(libc, "free");
/// let raw = Uprobe::at_offset("/usr/bin/bash", 0x2f1a0);
/// assert_eq!(malloc.to_string(), "uprobe \"/lib/x86_64-linux-gnu/libc.so.6\":\"malloc\" (pid 1234)");
/// assert!(ret.is_retprobe());
/// assert_eq!(raw.file_offset(), Some(0x2f1a0));
/// ```
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
    ///
    /// The offset must be the first byte of an instruction inside an executable segment:
    /// the kernel cannot check that, and a breakpoint written into the middle of an
    /// instruction corrupts the traced program (wrong results, crashes). Offset 0 (the ELF
    /// header) and offsets of 2^63 and more are refused.
    pub fn at_offset(binary: impl Into<PathBuf>, file_offset: u64) -> Uprobe {
        Uprobe {
            target: Target::FileOffset(file_offset),
            ..Uprobe::new(binary, String::new())
        }
    }

    /// Added to the symbol's (or the raw) file offset.
    ///
    /// The result must be the first byte of an instruction: a breakpoint in the middle of
    /// an instruction corrupts the traced program (the kernel cannot tell). Use an offset
    /// from a disassembly of this very file.
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

    /// The offset added to the symbol's (or the raw) file offset.
    #[must_use]
    pub fn offset_value(&self) -> u64 {
        self.offset
    }

    /// The raw file offset of a probe made with [`Uprobe::at_offset`] (before
    /// [`Uprobe::offset`] is added), or `None` for a symbol probe.
    #[must_use]
    pub fn file_offset(&self) -> Option<u64> {
        match self.target {
            Target::FileOffset(o) => Some(o),
            Target::Symbol(_) => None,
        }
    }

    /// Where in the binary the probe goes.
    pub(crate) fn target(&self) -> &Target {
        &self.target
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kprobe::Kprobe;
    use crate::probe::Probe;

    #[test]
    fn equality_ignores_the_cookie() {
        let a = Uprobe::new("/bin/x", "f").cookie(1);
        assert_eq!(a, Uprobe::new("/bin/x", "f").cookie(9));
        assert_ne!(a, Uprobe::retprobe("/bin/x", "f"));
        assert_ne!(a, Uprobe::new("/bin/x", "f").pid(3));
        assert_ne!(a, Uprobe::new("/bin/y", "f"));
        assert_ne!(a, Uprobe::at_offset("/bin/x", 0));
        assert_ne!(Probe::from(a), Probe::from(Kprobe::new("f")));
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
