//! Symbols to kernel targets: a uprobe's binary and symbol to the file and offset the
//! kernel is given (each binary opened and parsed once per batch), a kprobe's symbol to the
//! name the kernel knows (`/proc/kallsyms` read once per batch, and only when needed).
//!
//! A uprobe is bound to the inode that was parsed: the binary is opened once, its ELF is
//! read through that descriptor, and the kernel is given `/proc/self/fd/N` (the PMU,
//! `uprobe_multi` and tracefs all resolve it to that inode). A path that is replaced or
//! renamed afterwards never moves a probe, a rebuild or an offset onto another file.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::elf::ElfSymbols;
use crate::error::Error;
use crate::kallsyms;
use crate::kprobe::Kprobe;
use crate::uprobe::{Target, Uprobe};

/// Which file a probe is on: the path the caller named and the inode it named when the
/// probe was resolved. Kept by every attachment of a uprobe (no descriptor).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct FileIdent {
    /// The absolute path the caller named.
    pub path: PathBuf,
    /// The parsed file's (device, inode).
    pub id: (u64, u64),
}

impl FileIdent {
    /// Whether the path now names another file than the one the probes are on (it was
    /// replaced, as a package upgrade does, or removed). One `stat`.
    pub(crate) fn is_replaced(&self) -> bool {
        std::fs::metadata(&self.path).map_or(true, |m| (m.dev(), m.ino()) != self.id)
    }
}

/// A binary as it was resolved: the file that was parsed, held open.
pub(crate) struct Binary {
    file: File,
    ident: Arc<FileIdent>,
    /// `/proc/self/fd/N`: how the kernel is told the file.
    kernel_path: String,
}

impl Binary {
    /// Opens `path` (following symlinks, once) and pins the inode it names now.
    ///
    /// # Errors
    /// Not found, permission denied, invalid input (a path that is not UTF-8).
    pub(crate) fn open(path: &Path) -> Result<Binary, Error> {
        let what = || format!("binary {path:?}");
        let absolute =
            std::path::absolute(path).map_err(|e| Error::syscall("getcwd", what(), e))?;
        if absolute.to_str().is_none() {
            return Err(Error::invalid(what(), "the path must be UTF-8"));
        }
        let file = File::open(&absolute).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::not_found(what(), "", Some(e)),
            _ => Error::syscall("open", what(), e),
        })?;
        let meta = file
            .metadata()
            .map_err(|e| Error::syscall("fstat", what(), e))?;
        Ok(Binary {
            kernel_path: format!("/proc/self/fd/{}", file.as_raw_fd()),
            file,
            ident: Arc::new(FileIdent {
                path: absolute,
                id: (meta.dev(), meta.ino()),
            }),
        })
    }

    /// `/proc/self/fd/N`, the name the kernel is given: it resolves to the parsed inode.
    pub(crate) fn kernel_path(&self) -> &str {
        &self.kernel_path
    }

    /// The absolute path the caller named.
    pub(crate) fn path(&self) -> &Path {
        &self.ident.path
    }

    /// Which file this is.
    pub(crate) fn ident(&self) -> &Arc<FileIdent> {
        &self.ident
    }
}

impl fmt::Debug for Binary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Binary")
            .field("path", &self.ident.path)
            .field("id", &self.ident.id)
            .field("fd", &self.file.as_raw_fd())
            .field("kernel_path", &self.kernel_path)
            .finish()
    }
}

/// Two binaries are the same when they are the same inode.
impl PartialEq for Binary {
    fn eq(&self, other: &Binary) -> bool {
        self.ident.id == other.ident.id
    }
}

impl Eq for Binary {}

impl Hash for Binary {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.ident.id.hash(state);
    }
}

/// Where one uprobe goes: the binary (held open) and the file offset.
#[derive(Clone, Debug)]
pub(crate) struct UprobeTarget {
    /// The file. Shared by every probe on it.
    pub binary: Arc<Binary>,
    /// The file offset of the probed instruction.
    pub offset: u64,
}

/// What resolving a batch reads once: each binary's ELF symbols and absolute path (so a
/// batch of 2000 probes on libc opens libc once), and `/proc/kallsyms`. A single attach
/// uses a resolver of its own.
#[derive(Default)]
pub(crate) struct Resolver {
    kallsyms: Option<HashSet<String>>,
    kallsyms_text: Option<String>,
    binaries: HashMap<PathBuf, (Arc<ElfSymbols>, Arc<Binary>)>,
}

impl Resolver {
    /// Where `u` goes.
    ///
    /// # Errors
    /// Not found (binary, symbol), invalid input (not ELF, a path that is not UTF-8, an
    /// offset that overflows).
    pub(crate) fn uprobe(&mut self, u: &Uprobe) -> Result<UprobeTarget, Error> {
        let (symbols, binary) = self.loaded(u)?;
        Ok(UprobeTarget {
            binary: Arc::clone(binary),
            offset: offset_in(u, symbols)?,
        })
    }

    /// `u`'s binary as this resolver opened it (once): the file every probe on it resolved
    /// here goes on.
    ///
    /// # Errors
    /// As [`Resolver::uprobe`], but for the offset.
    pub(crate) fn binary(&mut self, u: &Uprobe) -> Result<Arc<Binary>, Error> {
        self.loaded(u).map(|(_, binary)| Arc::clone(binary))
    }

    fn loaded(&mut self, u: &Uprobe) -> Result<&(Arc<ElfSymbols>, Arc<Binary>), Error> {
        if !self.binaries.contains_key(u.binary()) {
            let binary = Binary::open(u.binary())?;
            let symbols = load_symbols(&binary)?;
            self.binaries
                .insert(u.binary().to_path_buf(), (symbols, Arc::new(binary)));
        }
        Ok(&self.binaries[u.binary()])
    }

    /// The function names of `/proc/kallsyms` (read once per resolver; empty when it cannot
    /// be read, which leaves the check to the kernel).
    pub(crate) fn kallsyms(&mut self) -> &HashSet<String> {
        self.kallsyms
            .get_or_insert_with(|| kallsyms::function_names().unwrap_or_default())
    }

    /// `/proc/kallsyms` as text (read once per resolver).
    fn kallsyms_text(&mut self) -> Result<&str, Error> {
        if self.kallsyms_text.is_none() {
            let text = kallsyms::read()
                .map_err(|e| Error::syscall("read", kallsyms::PATH.to_string(), e))?;
            // Hidden addresses read as zeros everywhere (absolute symbols are 0 anyway).
            let hidden = !text
                .lines()
                .filter_map(kallsyms::parse_kallsyms_line)
                .any(|l| l.is_function() && l.address.bytes().any(|b| b != b'0'));
            if hidden {
                return Err(Error::permission(
                    "read",
                    kallsyms::PATH.to_string(),
                    "CAP_SYSLOG (or root) to see kernel addresses in /proc/kallsyms \
                     (kernel.kptr_restrict)",
                    std::io::Error::from_raw_os_error(libc::EPERM),
                ));
            }
            self.kallsyms_text = Some(text);
        }
        Ok(self.kallsyms_text.as_deref().unwrap_or_default())
    }

    /// The kernel function whose code holds `address`: its name (as `MOD:SYM` in a module)
    /// and the offset into it.
    ///
    /// # Errors
    /// Not found when no kernel function holds it; permission denied when this process
    /// cannot see kernel addresses.
    pub(crate) fn kernel_function_at(&mut self, address: u64) -> Result<(String, u64), Error> {
        let text = self.kallsyms_text()?;
        match kallsyms::function_at(text, address) {
            Some((name, module, offset)) => {
                let name = module.map_or_else(|| name.clone(), |m| format!("{m}:{name}"));
                Ok((name, offset))
            }
            None => Err(Error::not_found(
                format!("kernel function at {address:#x}"),
                "no function in /proc/kallsyms holds that address",
                None,
            )),
        }
    }

    /// The address of `MOD:SYM` (exactly one function of that name in that module).
    ///
    /// # Errors
    /// Not found (no such function, or the module is not loaded); the symbol is ambiguous;
    /// permission denied when this process cannot see kernel addresses.
    pub(crate) fn module_function(&mut self, name: &str) -> Result<u64, Error> {
        let text = self.kallsyms_text()?;
        let found = kallsyms::functions_named(text, name);
        match found.as_slice() {
            [(address, _)] => Ok(*address),
            [] => Err(Error::not_found(
                format!("kernel symbol {name:?}"),
                "no such function in /proc/kallsyms (is the module loaded?)",
                None,
            )),
            _ => Err(Error::AmbiguousSymbol {
                symbol: name.to_string(),
                candidates: found
                    .into_iter()
                    .map(|(a, m)| (a, m.map(str::to_string)))
                    .collect(),
                source: None,
            }),
        }
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
    let offset = base.checked_add(u.offset_value()).ok_or_else(|| {
        Error::invalid(
            format!("offset of {u}"),
            "symbol offset plus offset overflows u64",
        )
    })?;
    symbols
        .check_probe_offset(offset)
        .map_err(|reason| Error::invalid(format!("file offset {offset:#x} of {u}"), reason))?;
    Ok(offset)
}

/// The symbols of the file `binary` holds open (parsed through that descriptor, so they
/// are the symbols of the inode the kernel will be given).
fn load_symbols(binary: &Binary) -> Result<Arc<ElfSymbols>, Error> {
    ElfSymbols::load_from(binary.path(), &binary.file)
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
        let symbols = ElfSymbols::load(&exe).unwrap();
        let f = symbols.functions().iter().find(|f| f.size > 4).unwrap();
        let mut r = Resolver::default();
        let a = r.uprobe(&Uprobe::at_offset(&exe, f.offset)).unwrap();
        let b = r
            .uprobe(&Uprobe::at_offset(&exe, f.offset).offset(2))
            .unwrap();
        assert!(Arc::ptr_eq(&a.binary, &b.binary));
        assert!(a.binary.kernel_path().starts_with("/proc/self/fd/"));
        assert!(!a.binary.ident().is_replaced());
        assert_eq!((a.offset, b.offset), (f.offset, f.offset + 2));
        assert_eq!(r.binaries.len(), 1);
    }
}
