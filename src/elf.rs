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

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader, Sym, SymbolTable, VersionTable};
use object::read::SymbolIndex;
use object::{Endianness, FileKind};

use crate::error::Error;
use crate::glob::glob_match;

/// One function symbol of an ELF file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ElfFunction {
    /// The symbol's name; `name@VERSION` for a non-default symbol version.
    pub name: String,
    /// Where the function's first instruction is in the file: the offset a uprobe takes.
    pub offset: u64,
    /// The symbol's value (`st_value`): its virtual address in the file's own address space.
    pub address: u64,
    /// The symbol's size in bytes (`st_size`); 0 when the toolchain did not record it.
    pub size: u64,
    /// Whether the symbol is visible outside its object file (`STB_GLOBAL`, `STB_WEAK` or
    /// `STB_GNU_UNIQUE`), as opposed to a `static` function (`STB_LOCAL`).
    pub global: bool,
    /// Whether the symbol is an `STT_GNU_IFUNC` resolver rather than the function it
    /// selects at load time.
    pub ifunc: bool,
}

/// The function symbols of one ELF file (`.symtab` and `.dynsym` merged, deduplicated by
/// name and address).
///
/// Cheap to share: [`ElfSymbols::load`] returns an [`Arc`] from a process-wide cache.
pub struct ElfSymbols {
    path: PathBuf,
    functions: Arc<[ElfFunction]>,
}

impl fmt::Debug for ElfSymbols {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElfSymbols")
            .field("path", &self.path)
            .field("functions", &self.functions.len())
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
    /// This reads the whole file; call it from a blocking context (for example inside
    /// `tokio::task::spawn_blocking`).
    ///
    /// # Errors
    ///
    /// - [`Error::NotFound`] if `path` does not exist.
    /// - [`Error::PermissionDenied`] if it cannot be opened for lack of permission, and
    ///   [`Error::Syscall`] if opening or reading it fails otherwise.
    /// - [`Error::InvalidInput`] if it is not a regular file, not an ELF file, or an ELF
    ///   file that is neither an executable nor a shared library (an object file or core
    ///   dump).
    pub fn load(path: &Path) -> Result<Arc<ElfSymbols>, Error> {
        let what = || format!("binary {path:?}");
        // O_NONBLOCK so that a FIFO given by mistake is rejected below instead of blocking
        // the open until a writer appears; it changes nothing for a regular file.
        let mut file = OpenOptions::new()
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
            })?;
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

        let data = read_all(&mut file, &metadata).map_err(|e| Error::syscall("read", what(), e))?;
        let functions = parse(&data).map_err(|reason| Error::invalid(what(), reason))?;
        let symbols = Arc::new(ElfSymbols {
            path: path.to_owned(),
            functions: functions.into(),
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

/// The identity of one version of a file's contents, as far as `stat` tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileId {
    fn of(metadata: &Metadata) -> FileId {
        FileId {
            dev: metadata.dev(),
            ino: metadata.ino(),
            size: metadata.size(),
            mtime: (metadata.mtime(), metadata.mtime_nsec()),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

/// How many parsed files the process keeps.
const CACHE_CAPACITY: usize = 64;

/// Parsed files by identity, with their insertion order for eviction.
struct Cache {
    capacity: usize,
    entries: HashMap<FileId, (u64, Arc<ElfSymbols>)>,
    inserted: u64,
}

impl Cache {
    fn new(capacity: usize) -> Cache {
        Cache {
            capacity,
            entries: HashMap::new(),
            inserted: 0,
        }
    }

    fn get(&self, id: &FileId) -> Option<Arc<ElfSymbols>> {
        self.entries.get(id).map(|(_, symbols)| Arc::clone(symbols))
    }

    /// Adds `symbols` unless another thread cached this file first, and returns the cached
    /// entry. Drops older versions of the same file, and the oldest entry when full.
    fn insert(&mut self, id: FileId, symbols: Arc<ElfSymbols>) -> Arc<ElfSymbols> {
        if let Some(cached) = self.get(&id) {
            return cached;
        }
        self.entries
            .retain(|other, _| (other.dev, other.ino) != (id.dev, id.ino));
        while self.entries.len() >= self.capacity.max(1) {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (order, _))| *order)
                .map(|(id, _)| *id);
            match oldest {
                Some(oldest) => self.entries.remove(&oldest),
                None => break,
            };
        }
        self.inserted += 1;
        self.entries
            .insert(id, (self.inserted, Arc::clone(&symbols)));
        symbols
    }
}

fn lock_cache() -> std::sync::MutexGuard<'static, Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE
        .get_or_init(|| Mutex::new(Cache::new(CACHE_CAPACITY)))
        .lock()
        // The cache is consistent between statements; a panic elsewhere cannot break it.
        .unwrap_or_else(PoisonError::into_inner)
}

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

fn read_all(file: &mut File, metadata: &Metadata) -> io::Result<Vec<u8>> {
    let mut data = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    file.read_to_end(&mut data)?;
    Ok(data)
}

/// Parses the function symbols of an ELF file's contents; the error is the reason the file
/// is rejected, for [`Error::invalid`].
fn parse(data: &[u8]) -> Result<Vec<ElfFunction>, String> {
    let mut functions = match FileKind::parse(data) {
        Ok(FileKind::Elf32) => parse_elf::<elf::FileHeader32<Endianness>>(data)?,
        Ok(FileKind::Elf64) => parse_elf::<elf::FileHeader64<Endianness>>(data)?,
        Ok(kind) => return Err(format!("not an ELF file: it is a {kind:?} file")),
        Err(e) => return Err(format!("not an ELF file: {e}")),
    };
    functions.sort_unstable_by(|a, b| {
        (a.name.as_str(), a.offset, a.address).cmp(&(b.name.as_str(), b.offset, b.address))
    });
    // The same function is usually in both .symtab and .dynsym. Same name and address
    // means same offset, so duplicates are adjacent now.
    functions.dedup_by(|dup, kept| {
        let same = dup.name == kept.name && dup.address == kept.address;
        if same {
            kept.global |= dup.global;
            kept.ifunc |= dup.ifunc;
            kept.size = kept.size.max(dup.size);
        }
        same
    });
    Ok(functions)
}

fn parse_elf<Elf: FileHeader<Endian = Endianness>>(
    data: &[u8],
) -> Result<Vec<ElfFunction>, String> {
    let malformed = |e: object::read::Error| format!("not an ELF file: {e}");
    let header = Elf::parse(data).map_err(malformed)?;
    let endian = header.endian().map_err(malformed)?;
    match header.e_type(endian) {
        elf::ET_EXEC | elf::ET_DYN => {}
        elf::ET_REL => {
            return Err("a relocatable object file (ET_REL) has no load addresses; \
                        probe the executable or shared library it is linked into"
                .to_owned())
        }
        other => {
            return Err(format!(
                "ELF type {other} is neither an executable (ET_EXEC) nor a shared library \
                 (ET_DYN)"
            ))
        }
    }

    let segments = header
        .program_headers(endian, data)
        .map_err(malformed)?
        .iter()
        .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
        .map(|ph| Mapped {
            address: ph.p_vaddr(endian).into(),
            size: ph.p_memsz(endian).into(),
            offset: ph.p_offset(endian).into(),
            executable: ph.p_flags(endian) & elf::PF_X != 0,
        })
        .collect();
    let sections = header.sections(endian, data).map_err(malformed)?;
    let section_ranges = sections
        .iter()
        .filter(|sh| {
            sh.sh_type(endian) != elf::SHT_NOBITS
                && sh.sh_flags(endian).into() & u64::from(elf::SHF_ALLOC) != 0
        })
        .map(|sh| Mapped {
            address: sh.sh_addr(endian).into(),
            size: sh.sh_size(endian).into(),
            offset: sh.sh_offset(endian).into(),
            executable: sh.sh_flags(endian).into() & u64::from(elf::SHF_EXECINSTR) != 0,
        })
        .collect();
    let layout = Layout {
        segments,
        sections: section_ranges,
    };

    let mut functions = Vec::new();
    let symtab = sections
        .symbols(endian, data, elf::SHT_SYMTAB)
        .map_err(malformed)?;
    collect_functions(&symtab, None, endian, &layout, &mut functions);
    let dynsym = sections
        .symbols(endian, data, elf::SHT_DYNSYM)
        .map_err(malformed)?;
    // Without a readable version table, dynamic names are still right for default versions.
    let versions = sections.versions(endian, data).ok().flatten();
    collect_functions(&dynsym, versions.as_ref(), endian, &layout, &mut functions);
    Ok(functions)
}

/// Appends the defined, named function symbols of `table` that have a file offset.
/// `versions` is the `.gnu.version` table, for `.dynsym` only.
fn collect_functions<'data, Elf: FileHeader<Endian = Endianness>>(
    table: &SymbolTable<'data, Elf, &'data [u8]>,
    versions: Option<&VersionTable<'_, Elf>>,
    endian: Endianness,
    layout: &Layout,
    functions: &mut Vec<ElfFunction>,
) {
    for (index, sym) in table.enumerate() {
        let ifunc = match sym.st_type() {
            elf::STT_FUNC => false,
            elf::STT_GNU_IFUNC => true,
            _ => continue,
        };
        if sym.is_undefined(endian) {
            continue;
        }
        let Ok(name) = sym.name(endian, table.strings()) else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        let address: u64 = sym.st_value(endian).into();
        let Some(offset) = layout.file_offset(address) else {
            continue;
        };
        functions.push(ElfFunction {
            name: symbol_name(name, index, versions, endian),
            offset,
            address,
            size: sym.st_size(endian).into(),
            global: matches!(
                sym.st_bind(),
                elf::STB_GLOBAL | elf::STB_WEAK | elf::STB_GNU_UNIQUE
            ),
            ifunc,
        });
    }
}

/// The name a symbol is listed under: `name` for the default version, `name@VERSION` for
/// a hidden (non-default) one, whether the version comes from `.gnu.version` (`.dynsym`)
/// or is spelled in the name (`.symtab` keeps `name@@VERSION` and `name@VERSION`).
fn symbol_name<Elf: FileHeader<Endian = Endianness>>(
    name: &[u8],
    index: SymbolIndex,
    versions: Option<&VersionTable<'_, Elf>>,
    endian: Endianness,
) -> String {
    let name = String::from_utf8_lossy(name);
    if let Some((base, _default_version)) = name.split_once("@@") {
        return base.to_owned();
    }
    let hidden_version = versions.and_then(|versions| {
        let version_index = versions.version_index(endian, index);
        if !version_index.is_hidden() {
            return None;
        }
        versions.version(version_index).ok().flatten()
    });
    match hidden_version {
        Some(version) if !name.contains('@') => {
            format!("{name}@{}", String::from_utf8_lossy(version.name()))
        }
        _ => name.into_owned(),
    }
}

/// An address range that is backed by the file (a `PT_LOAD` segment or an allocated
/// section).
struct Mapped {
    address: u64,
    size: u64,
    offset: u64,
    executable: bool,
}

impl Mapped {
    fn file_offset(&self, address: u64) -> Option<u64> {
        let within = address.checked_sub(self.address)?;
        (within < self.size).then(|| self.offset.checked_add(within))?
    }
}

/// How an ELF file's virtual addresses map to its file offsets.
struct Layout {
    segments: Vec<Mapped>,
    sections: Vec<Mapped>,
}

impl Layout {
    /// The file offset of `address`: through the `PT_LOAD` segment that contains it
    /// (executable ones first), or else through the allocated section that contains it.
    fn file_offset(&self, address: u64) -> Option<u64> {
        let first_in = |ranges: &[Mapped], executable: bool| {
            ranges
                .iter()
                .filter(|range| range.executable == executable)
                .find_map(|range| range.file_offset(address))
        };
        first_in(&self.segments, true)
            .or_else(|| first_in(&self.segments, false))
            .or_else(|| first_in(&self.sections, true))
            .or_else(|| first_in(&self.sections, false))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;
    use std::time::{Duration, SystemTime};

    use super::*;

    /// A function of the test executable whose file offset the tests resolve.
    /// (Found by its mangled name, which contains the function's name: `no_mangle` would
    /// need unsafe code, which lives in `sys` only.)
    #[inline(never)]
    fn probeset_elf_test_target() -> u64 {
        std::hint::black_box(0x7072_6f62_6573_6574)
    }

    /// The mapping of this process that contains `address`: its start, file offset and
    /// path, from `/proc/self/maps`.
    fn mapping_of(address: u64) -> (u64, u64, PathBuf) {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for line in maps.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (start, end) = fields[0].split_once('-').unwrap();
            let start = u64::from_str_radix(start, 16).unwrap();
            let end = u64::from_str_radix(end, 16).unwrap();
            if (start..end).contains(&address) && fields.len() >= 6 {
                let offset = u64::from_str_radix(fields[2], 16).unwrap();
                return (start, offset, PathBuf::from(fields[5..].join(" ")));
            }
        }
        panic!("no file mapping contains {address:#x}");
    }

    /// `len` bytes of this process's memory at `address`, read through `/proc/self/mem`.
    fn memory_at(address: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        File::open("/proc/self/mem")
            .unwrap()
            .read_exact_at(&mut bytes, address)
            .unwrap();
        bytes
    }

    fn file_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        File::open(path)
            .unwrap()
            .read_exact_at(&mut bytes, offset)
            .unwrap();
        bytes
    }

    /// Checks that `symbol` in `path` resolves to the file offset that the running process
    /// mapped at `address`, and that the file holds the bytes the process runs there.
    fn check_resolves_to_loaded_code(path: &Path, symbol: &str, address: u64) {
        let symbols = ElfSymbols::load(path).unwrap();
        let offset = symbols.resolve(symbol).unwrap();
        let (start, map_offset, _) = mapping_of(address);
        assert_eq!(offset, address - start + map_offset, "{symbol} in {path:?}");

        let function = symbols
            .functions()
            .iter()
            .find(|f| f.name == symbol)
            .unwrap();
        assert_eq!(function.offset, offset);
        let len = usize::try_from(function.size.clamp(1, 32)).unwrap();
        assert_eq!(
            file_at(path, offset, len),
            memory_at(address, len),
            "{symbol} in {path:?}"
        );
    }

    fn address_of_test_target() -> u64 {
        let target: fn() -> u64 = probeset_elf_test_target;
        assert_eq!(target(), 0x7072_6f62_6573_6574);
        target as usize as u64
    }

    #[test]
    fn resolves_own_function_to_its_file_offset() {
        let exe = std::env::current_exe().unwrap();
        let symbols = ElfSymbols::load(&exe).unwrap();
        let names: Vec<&str> = symbols
            .matching("*probeset_elf_test_target*")
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        check_resolves_to_loaded_code(&exe, names[0], address_of_test_target());
    }

    fn address_of_getpid() -> u64 {
        let getpid: unsafe extern "C" fn() -> libc::pid_t = libc::getpid;
        getpid as usize as u64
    }

    #[test]
    fn resolves_libc_getpid_to_its_file_offset() {
        let address = address_of_getpid();
        let (_, _, path) = mapping_of(address);
        if !path.to_string_lossy().contains("libc") {
            eprintln!("skipped: getpid is mapped from {path:?}, not from a shared libc");
            return;
        }
        check_resolves_to_loaded_code(&path, "getpid", address);
    }

    #[test]
    fn libc_lists_versions_and_globs() {
        let address = address_of_getpid();
        let (_, _, path) = mapping_of(address);
        if !path.to_string_lossy().contains("libc.so") {
            eprintln!("skipped: getpid is mapped from {path:?}, not from a shared libc");
            return;
        }
        let libc = ElfSymbols::load(&path).unwrap();
        assert!(libc
            .functions()
            .windows(2)
            .all(|w| (&w[0].name, w[0].offset) <= (&w[1].name, w[1].offset)));
        let names: Vec<&str> = libc.matching("str*cmp").map(|f| f.name.as_str()).collect();
        assert!(
            names.contains(&"strcmp") && names.contains(&"strncmp"),
            "{names:?}"
        );
        assert!(names.iter().all(|name| glob_match("str*cmp", name)));
        assert!(libc.matching("*").all(|f| f.size > 0));
        // glibc on x86_64 exports an old memcpy (an alias of memmove) as a hidden version:
        // the plain name must be the default version, and `@@` spells the same.
        if let Some(old) = libc
            .functions()
            .iter()
            .find(|f| f.name == "memcpy@GLIBC_2.2.5")
        {
            let memcpy = libc.resolve("memcpy").unwrap();
            assert_ne!(memcpy, old.offset);
            assert_eq!(libc.resolve("memcpy@@GLIBC_2.14").unwrap(), memcpy);
            assert_eq!(libc.resolve("memcpy@GLIBC_2.2.5").unwrap(), old.offset);
        }
    }

    #[test]
    fn missing_file_is_not_found() {
        let e = ElfSymbols::load(Path::new("/nonexistent/probeset/libfoo.so")).unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        assert!(
            e.to_string().contains("/nonexistent/probeset/libfoo.so"),
            "{e}"
        );
    }

    /// A directory of this test's own under the system temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("probeset-elf-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn non_elf_is_invalid_input() {
        let dir = TempDir::new("non-elf");
        let text = dir.0.join("notes.txt");
        std::fs::write(&text, "not an ELF file, just text\n").unwrap();
        let e = ElfSymbols::load(&text).unwrap_err();
        assert!(e.is_invalid_input(), "{e}");
        assert!(e.to_string().contains("not an ELF file"), "{e}");

        let e = ElfSymbols::load(&dir.0).unwrap_err();
        assert!(e.is_invalid_input(), "{e}");
        assert!(e.to_string().contains("directory"), "{e}");
    }

    #[test]
    fn missing_symbol_is_not_found() {
        let exe = std::env::current_exe().unwrap();
        let symbols = ElfSymbols::load(&exe).unwrap();
        let e = symbols.resolve("probeset_no_such_function").unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert!(e.to_string().contains("nm -D"), "{e}");
    }

    #[test]
    fn cache_reuses_unchanged_files_and_rereads_changed_ones() {
        let dir = TempDir::new("cache");
        let binary = dir.0.join("true");
        std::fs::copy("/bin/true", &binary).unwrap();

        let first = ElfSymbols::load(&binary).unwrap();
        let again = ElfSymbols::load(&binary).unwrap();
        assert!(Arc::ptr_eq(&first, &again));

        // Same contents, new mtime.
        let file = File::options().write(true).open(&binary).unwrap();
        file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
            .unwrap();
        drop(file);
        let touched = ElfSymbols::load(&binary).unwrap();
        assert!(!Arc::ptr_eq(&first, &touched));
        assert_eq!(first.functions(), touched.functions());

        // Rewritten with one more byte.
        let mut contents = std::fs::read("/bin/true").unwrap();
        contents.push(0);
        std::fs::write(&binary, &contents).unwrap();
        let rewritten = ElfSymbols::load(&binary).unwrap();
        assert!(!Arc::ptr_eq(&touched, &rewritten));
        assert!(Arc::ptr_eq(&rewritten, &ElfSymbols::load(&binary).unwrap()));

        // Another path to the same file shares the parse but reports its own path.
        let link = dir.0.join("link");
        std::os::unix::fs::symlink(&binary, &link).unwrap();
        let linked = ElfSymbols::load(&link).unwrap();
        assert_eq!(linked.path(), link);
        assert!(Arc::ptr_eq(&linked.functions, &rewritten.functions));
    }

    fn symbols_at(path: &str) -> Arc<ElfSymbols> {
        Arc::new(ElfSymbols {
            path: PathBuf::from(path),
            functions: Arc::from([]),
        })
    }

    fn file_id(ino: u64, mtime: i64) -> FileId {
        FileId {
            dev: 1,
            ino,
            size: 10,
            mtime: (mtime, 0),
            ctime: (mtime, 0),
        }
    }

    #[test]
    fn cache_is_bounded_and_drops_stale_versions() {
        let mut cache = Cache::new(2);
        let a = cache.insert(file_id(1, 0), symbols_at("/a"));
        // A racing second parse of the same file gets the first one back.
        assert!(Arc::ptr_eq(
            &cache.insert(file_id(1, 0), symbols_at("/a")),
            &a
        ));
        cache.insert(file_id(2, 0), symbols_at("/b"));
        cache.insert(file_id(3, 0), symbols_at("/c"));
        assert_eq!(cache.entries.len(), 2);
        assert!(
            cache.get(&file_id(1, 0)).is_none(),
            "the oldest entry is evicted"
        );
        cache.insert(file_id(3, 1), symbols_at("/c"));
        assert!(
            cache.get(&file_id(3, 0)).is_none(),
            "a changed file replaces its old parse"
        );
        assert!(cache.get(&file_id(3, 1)).is_some());
        assert!(cache.get(&file_id(2, 0)).is_some());
    }

    fn function(name: &str, offset: u64, global: bool) -> ElfFunction {
        ElfFunction {
            name: name.to_owned(),
            offset,
            address: offset + 0x1000,
            size: 8,
            global,
            ifunc: false,
        }
    }

    #[test]
    fn resolve_picks_among_same_named_functions() {
        let symbols = ElfSymbols {
            path: PathBuf::from("/bin/x"),
            functions: Arc::from([
                function("dup", 0x10, false),
                function("dup", 0x20, true),
                function("locals", 0x30, false),
                function("locals", 0x40, false),
                function("old@V1", 0x50, true),
                function("same", 0x60, false),
                function("same", 0x60, true),
            ]),
        };
        assert_eq!(symbols.resolve("dup").unwrap(), 0x20);
        assert_eq!(symbols.resolve("same").unwrap(), 0x60);
        assert_eq!(symbols.resolve("old").unwrap(), 0x50);
        assert_eq!(symbols.resolve("old@V1").unwrap(), 0x50);
        let e = symbols.resolve("locals").unwrap_err();
        assert!(e.is_invalid_input(), "{e}");
        let message = e.to_string();
        assert!(
            message.contains("0x30, 0x40") && message.contains("Uprobe::at_offset"),
            "{message}"
        );
        assert!(symbols.resolve("loc").unwrap_err().is_not_found());
    }

    /// Writes ELF fields in one class and byte order.
    struct Writer {
        is64: bool,
        big_endian: bool,
        bytes: Vec<u8>,
    }

    impl Writer {
        fn u8(&mut self, v: u8) {
            self.bytes.push(v);
        }
        fn u16(&mut self, v: u16) {
            let b = if self.big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            self.bytes.extend_from_slice(&b);
        }
        fn u32(&mut self, v: u32) {
            let b = if self.big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            self.bytes.extend_from_slice(&b);
        }
        /// An address-sized field.
        fn word(&mut self, v: u64) {
            if self.is64 {
                let b = if self.big_endian {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                };
                self.bytes.extend_from_slice(&b);
            } else {
                self.u32(u32::try_from(v).unwrap());
            }
        }
        fn pad_to(&mut self, at: usize) {
            assert!(self.bytes.len() <= at, "{:#x} > {at:#x}", self.bytes.len());
            self.bytes.resize(at, 0);
        }
    }

    /// The ELF header and one `PT_LOAD` program header (R+X, file 0x100..0x200 at
    /// 0x401000); the section headers are to follow at 0x400, five of them, the strings of
    /// their (empty) names in section 3.
    fn write_headers(w: &mut Writer, e_type: u16) {
        let is64 = w.is64;
        let (ehsize, phentsize, shentsize) = if is64 { (64, 56, 64) } else { (52, 32, 40) };
        w.bytes.extend_from_slice(b"\x7fELF");
        w.u8(if is64 { 2 } else { 1 });
        w.u8(if w.big_endian { 2 } else { 1 });
        w.u8(1);
        w.pad_to(16);
        w.u16(e_type);
        w.u16(if is64 { 62 } else { 3 });
        w.u32(1);
        w.word(0x40_1000);
        w.word(u64::from(ehsize));
        w.word(0x400);
        w.u32(0);
        for field in [ehsize, phentsize, 1, shentsize, 5, 3] {
            w.u16(field);
        }
        w.u32(elf::PT_LOAD);
        if is64 {
            w.u32(elf::PF_R | elf::PF_X);
        }
        for field in [0x100, 0x40_1000, 0x40_1000, 0x100, 0x100] {
            w.word(field);
        }
        if !is64 {
            w.u32(elf::PF_R | elf::PF_X);
        }
        w.word(0x1000);
    }

    /// A minimal ELF file: one `PT_LOAD` (file 0x100.. at 0x401000), `.text` inside it,
    /// `.text2` (file 0x200.., at 0x9000) outside any segment, and a `.symtab`.
    fn synthetic_elf(is64: bool, big_endian: bool, e_type: u16) -> Vec<u8> {
        let symsize: u64 = if is64 { 24 } else { 16 };
        let mut w = Writer {
            is64,
            big_endian,
            bytes: Vec::new(),
        };
        write_headers(&mut w, e_type);

        let mut strtab = vec![0u8];
        let mut name = |s: &str| {
            let at = u32::try_from(strtab.len()).unwrap();
            strtab.extend_from_slice(s.as_bytes());
            strtab.push(0);
            at
        };
        let global = |kind: u8| (elf::STB_GLOBAL << 4) | kind;
        let local = |kind: u8| (elf::STB_LOCAL << 4) | kind;
        let symbols = [
            // (name, value, size, st_info, st_shndx)
            (0, 0, 0, 0, 0),
            (name("alpha"), 0x40_1010, 8, global(elf::STT_FUNC), 1),
            (name("beta"), 0x9004, 4, local(elf::STT_FUNC), 2),
            (name("gamma"), 0x7777_0000, 4, global(elf::STT_FUNC), 1),
            (name("undef"), 0, 0, global(elf::STT_FUNC), 0),
            (name("obj"), 0x40_1080, 8, global(elf::STT_OBJECT), 1),
            (name("ifn"), 0x40_1020, 0, global(elf::STT_GNU_IFUNC), 1),
            (name("alpha"), 0x40_1030, 8, local(elf::STT_FUNC), 1),
        ];
        w.pad_to(0x300);
        w.bytes.extend_from_slice(&strtab);
        w.pad_to(0x340);
        for (name, value, size, info, shndx) in symbols {
            w.u32(name);
            if is64 {
                w.u8(info);
                w.u8(0);
                w.u16(shndx);
                w.word(value);
                w.word(size);
            } else {
                w.word(value);
                w.word(size);
                w.u8(info);
                w.u8(0);
                w.u16(shndx);
            }
        }
        w.pad_to(0x400);
        let text = u64::from(elf::SHF_ALLOC | elf::SHF_EXECINSTR);
        let symtab_size = symsize * u64::try_from(symbols.len()).unwrap();
        let strtab_size = u64::try_from(strtab.len()).unwrap();
        let sections = [
            // (type, flags, addr, offset, size, link, info, entsize)
            (elf::SHT_NULL, 0, 0, 0, 0, 0, 0, 0),
            (elf::SHT_PROGBITS, text, 0x40_1000, 0x100, 0x100, 0, 0, 0),
            (elf::SHT_PROGBITS, text, 0x9000, 0x200, 0x20, 0, 0, 0),
            (elf::SHT_STRTAB, 0, 0, 0x300, strtab_size, 0, 0, 0),
            (elf::SHT_SYMTAB, 0, 0, 0x340, symtab_size, 3, 1, symsize),
        ];
        for (sh_type, flags, addr, offset, size, link, info, entsize) in sections {
            w.u32(0);
            w.u32(sh_type);
            for field in [flags, addr, offset, size] {
                w.word(field);
            }
            w.u32(link);
            w.u32(info);
            w.word(1);
            w.word(entsize);
        }
        w.bytes
    }

    #[test]
    fn parses_every_class_and_byte_order() {
        for is64 in [false, true] {
            for big_endian in [false, true] {
                let case = format!("64-bit: {is64}, big endian: {big_endian}");
                let functions = parse(&synthetic_elf(is64, big_endian, elf::ET_EXEC)).expect(&case);
                let summary: Vec<(&str, u64, u64, bool, bool)> = functions
                    .iter()
                    .map(|f| (f.name.as_str(), f.offset, f.address, f.global, f.ifunc))
                    .collect();
                assert_eq!(
                    summary,
                    [
                        ("alpha", 0x110, 0x40_1010, true, false),
                        ("alpha", 0x130, 0x40_1030, false, false),
                        // Outside every PT_LOAD: translated through its section.
                        ("beta", 0x204, 0x9004, false, false),
                        ("ifn", 0x120, 0x40_1020, true, true),
                    ],
                    "{case}"
                );

                let symbols = ElfSymbols {
                    path: PathBuf::from("/synthetic"),
                    functions: functions.into(),
                };
                assert_eq!(symbols.resolve("alpha").unwrap(), 0x110, "the global one");
                assert_eq!(symbols.resolve("ifn").unwrap(), 0x120, "size 0 resolves");
                assert!(symbols.resolve("gamma").unwrap_err().is_not_found());
                assert!(symbols.resolve("obj").unwrap_err().is_not_found());
                let matched: Vec<&str> = symbols.matching("*").map(|f| f.name.as_str()).collect();
                assert_eq!(matched, ["alpha", "alpha", "beta"], "size 0 is not matched");
            }
        }
    }

    #[test]
    fn rejects_object_files() {
        let reason = parse(&synthetic_elf(true, false, elf::ET_REL)).unwrap_err();
        assert!(reason.contains("ET_REL"), "{reason}");
        let reason = parse(&synthetic_elf(true, false, elf::ET_CORE)).unwrap_err();
        assert!(reason.contains("ELF type 4"), "{reason}");
        let reason = parse(b"\x7fELF\x02\x01\x01").unwrap_err();
        assert!(reason.starts_with("not an ELF file"), "{reason}");
    }
}
