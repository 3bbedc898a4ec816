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

use std::fmt;
use std::hash::{Hash, Hasher};

use crate::backend::Backend;

/// A kernel probe (kprobe) or return probe (kretprobe) on a kernel function.
///
/// Two `Kprobe`s are equal when they would create the same kernel probe: the cookie is
/// not compared.
///
/// ```
/// use probeset::{Backend, Kprobe};
///
/// let entry = Kprobe::new("vfs_read").cookie(1);
/// let ret = Kprobe::retprobe("vfs_read").maxactive(64).backend(Backend::Tracefs);
/// let module = Kprobe::new("nf_conntrack:nf_ct_delete");
/// let by_address = Kprobe::at_address(0xffff_ffff_8123_4560);
/// assert_eq!(entry, Kprobe::new("vfs_read").cookie(2), "the cookie is not compared");
/// assert_eq!(ret.to_string(), "kretprobe \"vfs_read\"");
/// assert_eq!(by_address.to_string(), "kprobe 0xffffffff81234560");
/// # drop(module);
/// ```
#[derive(Clone, Debug)]
pub struct Kprobe {
    symbol: String,
    /// A kernel text address instead of a symbol ([`Kprobe::at_address`]).
    address: Option<u64>,
    offset: u64,
    cookie: u64,
    ret: bool,
    backend: Backend,
    maxactive: Option<u32>,
}

impl Kprobe {
    /// What makes two kprobes the same kernel probe: everything but the cookie.
    fn identity(&self) -> (&str, Option<u64>, u64, bool, Backend, Option<u32>) {
        (
            &self.symbol,
            self.address,
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
        match self.address {
            Some(a) => write!(f, "{kind} {a:#x}")?,
            None => write!(f, "{kind} {:?}", self.symbol)?,
        }
        if self.offset != 0 {
            write!(f, "+{:#x}", self.offset)?;
        }
        Ok(())
    }
}

impl Kprobe {
    /// An entry probe on kernel function `symbol` (as `/proc/kallsyms` names it), or
    /// `MOD:SYM` for a function of a loaded module (`nf_conntrack:nf_ct_delete`).
    pub fn new(symbol: impl Into<String>) -> Kprobe {
        Kprobe {
            symbol: symbol.into(),
            address: None,
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

    /// An entry probe at a kernel text address, as `/proc/kallsyms` lists it (the way to
    /// probe one of several static functions that share a name). Checked against
    /// `/proc/kallsyms` when attached: it must lie inside a kernel function, which needs
    /// the addresses unhidden (root, or `kernel.kptr_restrict` 0).
    #[must_use]
    pub fn at_address(address: u64) -> Kprobe {
        Kprobe {
            address: Some(address),
            ..Kprobe::new(String::new())
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

    /// The kernel symbol (empty for a probe made with [`Kprobe::at_address`]).
    #[must_use]
    pub fn symbol(&self) -> &str {
        &self.symbol
    }

    /// The kernel text address of a probe made with [`Kprobe::at_address`].
    #[must_use]
    pub fn address(&self) -> Option<u64> {
        self.address
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

    /// The `maxactive` asked for, if any.
    #[must_use]
    pub fn maxactive_value(&self) -> Option<u32> {
        self.maxactive
    }

    /// The same probe as an entry (`false`) or return (`true`) probe.
    pub(crate) fn with_ret(self, ret: bool) -> Kprobe {
        Kprobe { ret, ..self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Probe;

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
    fn addresses_are_probes_of_their_own() {
        let a = Kprobe::at_address(0xffff_ffff_8100_0200);
        assert_eq!(a.address(), Some(0xffff_ffff_8100_0200));
        assert_eq!(a.symbol(), "");
        assert_eq!(a.to_string(), "kprobe 0xffffffff81000200");
        assert_ne!(a, Kprobe::at_address(0xffff_ffff_8100_0210));
        assert_ne!(a, Kprobe::new(""));
    }

    #[test]
    fn display() {
        assert_eq!(Kprobe::new("f").offset(16).to_string(), "kprobe \"f\"+0x10");
        assert_eq!(Kprobe::retprobe("f").to_string(), "kretprobe \"f\"");
    }
}
