//! The function symbols of an ELF file, for uprobes.
//!
//! A uprobe is attached at a *file offset* in a binary, not at a symbol. [`ElfSymbols`]
//! reads the `.symtab` and `.dynsym` tables of an executable or shared library (`ET_EXEC`
//! or `ET_DYN`, 32- or 64-bit, either byte order), keeps the function symbols
//! (`STT_FUNC`, `STT_GNU_IFUNC`) and translates each symbol's virtual address to a file
//! offset through the `PT_LOAD` program headers.
//!
//! A stripped binary has only `.dynsym`. A dynamic symbol's version is not part of its
//! name: `getpid` resolves to the default version. A non-default (hidden) version is listed
//! as `name@VERSION` (as `nm -D` prints it), for example `memcpy@GLIBC_2.2.5`.
//!
//! Only the headers and the symbol, string and version tables are read, each with
//! positional reads and at most 1 GiB, so memory follows the tables and not the size of
//! the file; addresses are translated through ranges sorted once, in O(log n) each.
//!
//! Parsed files are cached process-wide, keyed by the file's device, inode, size, mtime and
//! ctime, so loading the same library for many probes reads it once, and a file that was
//! replaced or rewritten is read again.
//!
//! # Examples
//!
//! ```no_run
//! use std::path::Path;
//!
//! use probeset::elf::ElfSymbols;
//!
//! let libc = ElfSymbols::load(Path::new("/lib/x86_64-linux-gnu/libc.so.6"))?;
//! let offset = libc.resolve("getpid")?;
//! println!("getpid is at file offset {offset:#x}");
//! for function in libc.matching("str*cmp") {
//!     println!("{} at {:#x}", function.name, function.offset);
//! }
//! # Ok::<(), probeset::Error>(())
//! ```

mod cache;
mod layout;
mod parse;
mod read;

use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use crate::error::Error;
use crate::glob::glob_match;

use cache::{Cache, FileId};
use layout::CodeRanges;
use parse::parse;
pub use parse::ElfFunction;
use read::{read_file, Failure};

/// The function symbols of one ELF file (`.symtab` and `.dynsym` merged, deduplicated by
/// name and address).
///
/// Cheap to share: [`ElfSymbols::load`] returns an [`Arc`] from a process-wide cache.
pub struct ElfSymbols {
    path: PathBuf,
    functions: Arc<[ElfFunction]>,
    code: Arc<CodeRanges>,
}

impl fmt::Debug for ElfSymbols {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElfSymbols")
            .field("path", &self.path)
            .field("functions", &self.functions.len())
            .field("file_size", &self.code.file_size)
            .finish()
    }
}

impl ElfSymbols {
    /// Reads and parses the ELF file at `path`.
    ///
    /// The result is cached for the life of the process, keyed by the file's device, inode,
    /// size, mtime and ctime: loading an unchanged file again returns the same [`Arc`]
    /// without reading it, and a file that was rewritten or replaced is read again. At most
    /// 64 files are kept; the oldest is dropped first.
    ///
    /// This reads the file's headers and its symbol, string and version tables (not the
    /// rest of it), each of them at most 1 GiB; call it from a blocking context (for
    /// example inside `tokio::task::spawn_blocking`).
    ///
    /// # Errors
    ///
    /// - [`Error::NotFound`] if `path` does not exist.
    /// - [`Error::PermissionDenied`] if it cannot be opened for lack of permission, and
    ///   [`Error::Syscall`] if opening or reading it fails otherwise.
    /// - [`Error::InvalidInput`] if it is not a regular file, not an ELF file, or an ELF
    ///   file that is neither an executable nor a shared library (an object file or core
    ///   dump), or a malformed one (a table past the end of the file or larger than 1 GiB).
    pub fn load(path: &Path) -> Result<Arc<ElfSymbols>, Error> {
        let file = open(path)?;
        ElfSymbols::load_from(path, &file)
    }

    /// Parses the file behind `file`, which the caller holds open: the symbols are those
    /// of exactly this inode, whatever `path` names by now. The cache is keyed by what
    /// `fstat` says of `file`; `path` is only for messages and [`ElfSymbols::path`].
    ///
    /// # Errors
    /// As [`ElfSymbols::load`], for everything after opening.
    pub(crate) fn load_from(path: &Path, file: &File) -> Result<Arc<ElfSymbols>, Error> {
        let what = || format!("binary {path:?}");
        let metadata = file
            .metadata()
            .map_err(|e| Error::syscall("fstat", what(), e))?;
        if !metadata.is_file() {
            return Err(Error::invalid(
                what(),
                format!("not an ELF file: {}", describe_file_type(&metadata)),
            ));
        }
        let id = FileId::of(&metadata);
        if let Some(cached) = lock_cache().get(&id) {
            return Ok(cached.with_path(path));
        }

        let size = metadata.len();
        let parsed =
            read_file(file, size, |data| parse(data, size)).map_err(|failure| match failure {
                Failure::Read(e) => Error::syscall("read", what(), e),
                Failure::Invalid(reason) => Error::invalid(what(), reason),
            })?;
        let symbols = Arc::new(ElfSymbols {
            path: path.to_owned(),
            functions: parsed.functions.into(),
            code: Arc::new(parsed.code),
        });
        // Cache only what is known to match its key: a file rewritten in place while it was
        // read gets new metadata, and its (possibly torn) parse is not kept.
        match file.metadata() {
            Ok(after) if FileId::of(&after) == id => {
                Ok(lock_cache().insert(id, symbols).with_path(path))
            }
            _ => Ok(symbols),
        }
    }

    /// The path the file was loaded from, as given to [`ElfSymbols::load`].
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size in bytes when it was parsed.
    #[cfg(test)]
    pub(crate) fn file_size(&self) -> u64 {
        self.code.file_size
    }

    /// Whether a uprobe at `file_offset` in this file can ever fire; the error is the
    /// reason it cannot, for an invalid-input error.
    ///
    /// # Errors
    /// An offset inside the ELF header (offset 0 in particular), at or past the end of the
    /// file, or (when the file has `PT_LOAD` program headers) outside the file range of
    /// every executable `PT_LOAD` segment.
    pub(crate) fn check_probe_offset(&self, file_offset: u64) -> Result<(), String> {
        self.code.check(file_offset)
    }

    /// All function symbols, sorted by name, then file offset.
    ///
    /// This includes functions of size 0, which [`ElfSymbols::matching`] skips.
    #[must_use]
    pub fn functions(&self) -> &[ElfFunction] {
        &self.functions
    }

    /// The file offset of the function named `symbol`.
    ///
    /// The name is matched exactly; `name@@VERSION` is taken as `name`, and a name without
    /// a version that matches nothing is tried against the non-default versions
    /// (`name@VERSION`). When several functions have the name (a `static` function in two
    /// compilation units, say), a single offset shared by all of them, or else the only
    /// global one, is the answer.
    ///
    /// # Errors
    ///
    /// - [`Error::NotFound`] if no function has this name.
    /// - [`Error::InvalidInput`] if several functions at different offsets have it and it
    ///   is not clear which is meant; the message lists their offsets.
    pub fn resolve(&self, symbol: &str) -> Result<u64, Error> {
        let wanted = symbol.split_once("@@").map_or(symbol, |(name, _)| name);
        let mut candidates: Vec<&ElfFunction> = self.named(wanted).collect();
        if candidates.is_empty() && !wanted.contains('@') {
            candidates = self
                .functions
                .iter()
                .filter(|f| {
                    f.name
                        .split_once('@')
                        .is_some_and(|(name, _)| name == wanted)
                })
                .collect();
        }
        let what = || format!("symbol {symbol:?} in {:?}", self.path);

        let offsets = distinct_offsets(candidates.iter().copied());
        match offsets[..] {
            [] => {
                return Err(Error::not_found(
                    what(),
                    "list its functions with `nm -D` or `nm`; a stripped binary has only \
                     dynamic symbols",
                    None,
                ))
            }
            [offset] => return Ok(offset),
            _ => {}
        }
        if let [offset] = distinct_offsets(candidates.iter().copied().filter(|f| f.global))[..] {
            return Ok(offset);
        }
        let listed: Vec<String> = offsets
            .iter()
            .map(|offset| format!("{offset:#x}"))
            .collect();
        Err(Error::invalid(
            what(),
            format!(
                "{} functions of this name are at different file offsets ({}); choose one \
                 and attach with `Uprobe::at_offset`",
                offsets.len(),
                listed.join(", ")
            ),
        ))
    }

    /// The functions whose names match the shell glob `glob`: `*` matches any run of
    /// characters, `?` one character, `[abc]`, `[a-z]` one of a set, `[!a]` (or `[^a]`)
    /// one character not in it, and `\` makes the next character literal.
    ///
    /// Functions of size 0 are skipped: they are usually labels or aliases, not functions
    /// worth a probe each. [`ElfSymbols::resolve`] still finds them by name.
    pub fn matching<'a>(&'a self, glob: &'a str) -> impl Iterator<Item = &'a ElfFunction> + 'a {
        self.functions
            .iter()
            .filter(move |f| f.size > 0 && glob_match(glob, &f.name))
    }

    /// The functions named exactly `name`, a contiguous run of the sorted list.
    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a ElfFunction> + 'a {
        let start = self.functions.partition_point(|f| f.name.as_str() < name);
        self.functions[start..]
            .iter()
            .take_while(move |f| f.name == name)
    }

    /// This file's symbols under the path the caller gave (a symlink or hard link to a
    /// cached file shares its parse).
    fn with_path(self: &Arc<Self>, path: &Path) -> Arc<ElfSymbols> {
        if self.path == path {
            Arc::clone(self)
        } else {
            Arc::new(ElfSymbols {
                path: path.to_owned(),
                functions: Arc::clone(&self.functions),
                code: Arc::clone(&self.code),
            })
        }
    }
}

/// Whether the file at `path` starts with the ELF magic: a cheap test before a parse (a
/// `libc.so` next to `libc.so.6` is a linker script).
pub(crate) fn is_elf_file(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| magic == *b"\x7fELF")
}

/// The distinct file offsets of `functions`, ascending.
fn distinct_offsets<'a>(functions: impl Iterator<Item = &'a ElfFunction>) -> Vec<u64> {
    let mut offsets: Vec<u64> = functions.map(|f| f.offset).collect();
    offsets.sort_unstable();
    offsets.dedup();
    offsets
}

/// How many parsed files the process keeps.
const CACHE_CAPACITY: usize = 64;

/// The process-wide cache of parsed files.
fn lock_cache() -> MutexGuard<'static, Cache<ElfSymbols>> {
    static CACHE: OnceLock<Mutex<Cache<ElfSymbols>>> = OnceLock::new();
    CACHE
        .get_or_init(|| Mutex::new(Cache::new(CACHE_CAPACITY)))
        .lock()
        // The cache is consistent between statements; a panic elsewhere cannot break it.
        .unwrap_or_else(PoisonError::into_inner)
}

/// Opens `path` for reading (`O_RDONLY | O_CLOEXEC`).
///
/// # Errors
/// As [`ElfSymbols::load`], for opening.
fn open(path: &Path) -> Result<File, Error> {
    let what = || format!("binary {path:?}");
    // O_NONBLOCK so that a FIFO given by mistake is rejected (by `load_from`) instead of
    // blocking the open until a writer appears; it changes nothing for a regular file.
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR) => Error::not_found(
                what(),
                "check the path; for a library name such as \"c\" or \"libssl.so.3\", \
                 find its path with probeset::discovery::resolve_library",
                Some(e),
            ),
            _ => Error::syscall("open", what(), e),
        })
}

/// What a file that is not a regular one is, for the error.
fn describe_file_type(metadata: &Metadata) -> &'static str {
    let file_type = metadata.file_type();
    if file_type.is_dir() {
        "it is a directory"
    } else if file_type.is_fifo() {
        "it is a FIFO"
    } else if file_type.is_socket() {
        "it is a socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "it is a device"
    } else {
        "it is not a regular file"
    }
}

#[cfg(test)]
mod tests;
