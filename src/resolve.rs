//! Symbols to kernel targets: a uprobe's binary and symbol to the path and file offset the
//! kernel is given (each binary's ELF read once per batch), a kprobe's symbol to the name
//! the kernel knows (`/proc/kallsyms` read once per batch, and only when needed).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use crate::elf::ElfSymbols;
use crate::error::Error;
use crate::kallsyms;
use crate::kprobe::Kprobe;
use crate::uprobe::{Target, Uprobe};

/// Where one uprobe goes: the binary's absolute path and the file offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UprobeTarget {
    /// The absolute path, as the kernel is given it. Shared by every probe on the binary.
    pub path: Arc<str>,
    /// The file offset of the probed instruction.
    pub offset: u64,
}

/// What resolving a batch reads once: each binary's ELF symbols and absolute path (so a
/// batch of 2000 probes on libc opens libc once), and `/proc/kallsyms`. A single attach
/// uses a resolver of its own.
#[derive(Default)]
pub(crate) struct Resolver {
    kallsyms: Option<HashSet<String>>,
    binaries: HashMap<PathBuf, (Arc<ElfSymbols>, Arc<str>)>,
}

impl Resolver {
    /// Where `u` goes.
    ///
    /// # Errors
    /// Not found (binary, symbol), invalid input (not ELF, a path that is not UTF-8, an
    /// offset that overflows).
    pub(crate) fn uprobe(&mut self, u: &Uprobe) -> Result<UprobeTarget, Error> {
        if !self.binaries.contains_key(u.binary()) {
            let loaded = (ElfSymbols::load(u.binary())?, absolute_path(u)?);
            self.binaries.insert(u.binary().to_path_buf(), loaded);
        }
        let (symbols, path) = &self.binaries[u.binary()];
        Ok(UprobeTarget {
            path: Arc::clone(path),
            offset: offset_in(u, symbols)?,
        })
    }

    /// The function names of `/proc/kallsyms` (read once per resolver; empty when it cannot
    /// be read, which leaves the check to the kernel).
    pub(crate) fn kallsyms(&mut self) -> &HashSet<String> {
        self.kallsyms
            .get_or_insert_with(|| kallsyms::function_names().unwrap_or_default())
    }

    /// The kernel's name for `k`'s symbol: as given if `/proc/kallsyms` lists it, else with
    /// the syscall prefix if that is listed.
    ///
    /// # Errors
    /// Not found when neither is listed.
    pub(crate) fn kernel_symbol(&mut self, k: &Kprobe) -> Result<String, Error> {
        let names = self.kallsyms();
        if names.is_empty() || names.contains(k.symbol()) {
            // An empty table (no /proc/kallsyms, or addresses hidden) leaves it to the kernel.
            return Ok(k.symbol().to_string());
        }
        if let Some(p) = syscall_prefixed(k.symbol()) {
            if names.contains(&p) {
                return Ok(p);
            }
        }
        Err(Error::not_found(
            format!("kernel symbol {:?}", k.symbol()),
            "not in /proc/kallsyms",
            None,
        ))
    }
}

/// The file offset of `u`, from `symbols` (its binary, loaded).
fn offset_in(u: &Uprobe, symbols: &ElfSymbols) -> Result<u64, Error> {
    let base = match u.target() {
        Target::Symbol(s) => symbols.resolve(s)?,
        Target::FileOffset(o) => *o,
    };
    base.checked_add(u.offset_value()).ok_or_else(|| {
        Error::invalid(
            format!("offset of {u}"),
            "symbol offset plus offset overflows u64",
        )
    })
}

/// The binary's absolute path, as the kernel is given it.
fn absolute_path(u: &Uprobe) -> Result<Arc<str>, Error> {
    let path = std::path::absolute(u.binary())
        .map_err(|e| Error::syscall("getcwd", format!("{:?}", u.binary()), e))?;
    path.into_os_string()
        .into_string()
        .map(Arc::from)
        .map_err(|p| Error::invalid(format!("uprobe binary {p:?}"), "the path must be UTF-8"))
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn kernel_symbols_against_a_table() {
        let mut r = Resolver {
            kallsyms: Some(["vfs_read", "__x64_sys_getpid"].map(String::from).into()),
            ..Resolver::default()
        };
        assert_eq!(
            r.kernel_symbol(&Kprobe::new("vfs_read")).unwrap(),
            "vfs_read"
        );
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                r.kernel_symbol(&Kprobe::new("sys_getpid")).unwrap(),
                "__x64_sys_getpid"
            );
        }
        assert!(r
            .kernel_symbol(&Kprobe::new("nope"))
            .unwrap_err()
            .is_not_found());
        let mut empty = Resolver {
            kallsyms: Some(HashSet::new()),
            ..Resolver::default()
        };
        assert_eq!(empty.kernel_symbol(&Kprobe::new("nope")).unwrap(), "nope");
    }

    #[test]
    fn a_binary_is_loaded_once_per_resolver() {
        let exe = std::env::current_exe().unwrap();
        let mut r = Resolver::default();
        let a = r.uprobe(&Uprobe::at_offset(&exe, 0x10)).unwrap();
        let b = r.uprobe(&Uprobe::at_offset(&exe, 0x10).offset(2)).unwrap();
        assert!(Arc::ptr_eq(&a.path, &b.path));
        assert_eq!((a.offset, b.offset), (0x10, 0x12));
        assert_eq!(r.binaries.len(), 1);
    }
}
