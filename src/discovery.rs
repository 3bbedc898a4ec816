//! Finding what to probe: the kernel functions that match a glob, the functions of a
//! user-space binary or library, library names resolved the way users write them, and the
//! `funccount` pattern syntax.
//!
//! - [`kernel_functions`] lists the text symbols of `/proc/kallsyms` that match a glob,
//!   keeps only those ftrace can trace (tracefs `available_filter_functions`, when it is
//!   readable) and those not on the kprobe blacklist (`/sys/kernel/debug/kprobes/blacklist`,
//!   when debugfs is mounted), and skips names that several functions share: the kernel
//!   refuses a kprobe on an ambiguous name (6.6+, b022f0c7e404).
//! - [`resolve_library`] turns `c`, `libc`, `libc.so.6`, `libssl.so.3` or a path into a
//!   file: through `/proc/PID/maps` when a pid is given, then the dynamic linker's cache
//!   (`/etc/ld.so.cache`), then the standard library directories.
//! - [`user_functions`] lists the functions of that file that match a glob, as uprobes at
//!   their file offsets, skipping IFUNC resolvers and aliases.
//! - [`parse_pattern`] reads `vfs_*` (kernel), `c:str*` or `/path/to/bin:GLOB` (user).
//!
//! Each listing comes with what it skipped and why, so a tool can say so.
//!
//! Globs are shell globs: `*`, `?`, `[abc]`, `[a-z]`, `[!a]`, and `\` to quote.
//!
//! # Examples
//!
//! ```no_run
//! # async fn f() -> Result<(), probeset::Error> {
//! use probeset::counter::{Counter, Flavour};
//! use probeset::discovery::{self, Pattern};
//!
//! // Every `str*` function of the C library, as `funccount c:str*` would probe them.
//! let Pattern::User { target, glob } = discovery::parse_pattern("c:str*")? else {
//!     unreachable!()
//! };
//! let found = discovery::user_functions_async(target, glob, None).await?;
//! println!("{} functions in {}", found.functions.len(), found.binary.display());
//! for (name, reason) in &found.skipped {
//!     println!("skipped {name}: {reason}");
//! }
//!
//! let counter = Counter::load(Flavour::Plain, u32::try_from(found.functions.len()).unwrap())?;
//! let mut links = Vec::new();
//! for (i, function) in found.functions.iter().enumerate() {
//!     links.push(function.probe.clone().cookie(i as u64).attach(&counter).await?);
//! }
//!
//! // Kernel functions are listed the same way (attaching them needs CONFIG_KPROBES).
//! let vfs = discovery::kernel_functions_async("vfs_*").await?;
//! for function in &vfs.functions {
//!     println!("{}", function.qualified_name());
//! }
//! # Ok(()) }
//! ```

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::elf::{ElfFunction, ElfSymbols};
use crate::glob::{literal_prefix, Glob};
use crate::kallsyms::{self, KallsymsLine};
use crate::validate::is_valid_symbol;
use crate::{blocking, Error, Kprobe, Uprobe};

/// The kprobe blacklist (debugfs).
const KPROBE_BLACKLIST: &str = "/sys/kernel/debug/kprobes/blacklist";
/// The dynamic linker's cache.
const LD_SO_CACHE: &str = "/etc/ld.so.cache";

/// The reason an IFUNC resolver is skipped.
pub const IFUNC_REASON: &str =
    "ifunc resolver: the probe would count the resolver, not the function";

// --- patterns ----------------------------------------------------------------------------

/// What a `funccount` pattern names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Pattern {
    /// Kernel functions matching `glob` (`vfs_*`).
    Kernel {
        /// The glob.
        glob: String,
    },
    /// Functions of a user-space binary or library matching `glob` (`c:str*`,
    /// `/usr/bin/bash:readline`).
    User {
        /// A library name as [`resolve_library`] takes it, or a path.
        target: String,
        /// The glob.
        glob: String,
    },
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Kernel { glob } => f.write_str(glob),
            Pattern::User { target, glob } => write!(f, "{target}:{glob}"),
        }
    }
}

/// Parses a `funccount` pattern: `GLOB` is a kernel function glob (`vfs_*`), `LIB:GLOB` or
/// `PATH:GLOB` a user-space one (`c:str*`, `libssl.so.3:SSL_*`, `/usr/bin/bash:*`). The
/// last `:` separates the target from the glob.
///
/// # Errors
/// [`Error::is_invalid_input`] for an empty pattern, an empty target or glob, or a kernel
/// glob with characters no kernel symbol has.
pub fn parse_pattern(s: &str) -> Result<Pattern, Error> {
    let what = || format!("pattern {s:?}");
    if s.is_empty() {
        return Err(Error::invalid(
            what(),
            "empty; write a kernel glob (vfs_*) or LIB:GLOB (c:str*)",
        ));
    }
    if let Some((target, glob)) = s.rsplit_once(':') {
        if target.is_empty() {
            return Err(Error::invalid(
                what(),
                "the library before ':' is empty; write LIB:GLOB, e.g. c:malloc",
            ));
        }
        if glob.is_empty() {
            return Err(Error::invalid(
                what(),
                "the glob after ':' is empty; write LIB:GLOB, e.g. c:malloc or c:*",
            ));
        }
        return Ok(Pattern::User {
            target: target.to_owned(),
            glob: glob.to_owned(),
        });
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_.*?[]!^-\\".contains(c);
    if let Some(bad) = s.chars().find(|&c| !allowed(c)) {
        return Err(Error::invalid(
            what(),
            format!(
                "{bad:?} is in no kernel symbol; a kernel glob is made of [a-zA-Z0-9_.] and \
                 * ? [ ], and a user-space pattern is LIB:GLOB"
            ),
        ));
    }
    Ok(Pattern::Kernel { glob: s.to_owned() })
}

fn check_glob(glob: &str) -> Result<(), Error> {
    if glob.is_empty() {
        return Err(Error::invalid(
            "glob \"\"",
            "the glob is empty; use * for everything",
        ));
    }
    Ok(())
}

// --- kernel ------------------------------------------------------------------------------

/// One traceable kernel function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelFunction {
    /// The symbol, as `/proc/kallsyms` lists it.
    pub name: String,
    /// The module it is in, or `None` for the kernel image.
    pub module: Option<String>,
    /// An entry probe on it, cookie 0 (the symbol is unique, so a module function needs no
    /// `MOD:` prefix).
    pub probe: Kprobe,
}

impl KernelFunction {
    /// `MOD:SYM` for a module function (the `kprobe_events` spelling), `SYM` otherwise.
    #[must_use]
    pub fn qualified_name(&self) -> String {
        match &self.module {
            Some(module) => format!("{module}:{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// What [`kernel_functions`] found.
#[derive(Clone, Debug, Default)]
pub struct KernelMatches {
    /// The probeable functions, sorted by name.
    pub functions: Vec<KernelFunction>,
    /// Matching names that are not probed, with the reason, sorted by name.
    pub skipped: Vec<(String, String)>,
    /// Whether tracefs `available_filter_functions` was read and applied.
    pub filter_functions_applied: bool,
    /// Whether the kprobe blacklist (debugfs) was read and applied.
    pub blacklist_applied: bool,
}

impl KernelMatches {
    /// The probes, with cookie `i` for the `i`-th function.
    pub fn probes(&self) -> impl Iterator<Item = Kprobe> + '_ {
        self.functions
            .iter()
            .zip(0u64..)
            .map(|(f, i)| f.probe.clone().cookie(i))
    }
}

/// A name matching the glob, as kallsyms lists it: how often, and where first.
#[derive(Debug, PartialEq, Eq)]
struct Seen<'a> {
    name: &'a str,
    count: usize,
    module: Option<&'a str>,
    /// The address of the first occurrence, as kallsyms prints it.
    address: &'a str,
}

/// The matching functions of a kallsyms text, sorted by name, in one pass. Every
/// occurrence of a matching name matches too, so the counts are complete.
fn scan_kallsyms<'a>(text: &'a str, glob: &str) -> Vec<Seen<'a>> {
    let prefix = literal_prefix(glob);
    let glob = Glob::new(glob);
    let mut found: Vec<KallsymsLine<'_>> = kallsyms::lines_with_prefix(text, prefix)
        .filter(|sym| {
            sym.is_function() && !sym.in_pseudo_module() && !sym.is_stub() && glob.matches(sym.name)
        })
        .collect();
    // Stable: the first occurrence's module stays first.
    found.sort_by_key(|sym| sym.name);
    let mut seen: Vec<Seen<'_>> = Vec::new();
    for sym in found {
        match seen.last_mut() {
            Some(last) if last.name == sym.name => last.count += 1,
            _ => seen.push(Seen {
                name: sym.name,
                count: 1,
                module: sym.module,
                address: sym.address,
            }),
        }
    }
    seen
}

/// The names of a list whose lines start with a name and may go on after whitespace
/// (`available_filter_functions`: `NAME [MODULE]`), or, for the blacklist, whose second
/// field is the name (`0xSTART-0xEND\tNAME`).
fn names_in(text: &str, field: usize) -> HashSet<&str> {
    text.lines()
        .filter_map(|line| line.split_whitespace().nth(field))
        .collect()
}

/// Reads a kernel listing; `None` when it is missing or unreadable (not mounted, no
/// permission, not built in).
fn read_optional(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The kernel functions whose names match `glob`, ready for kprobes.
///
/// Reads `/proc/kallsyms` once (~120k lines; the kernel needs ~70 ms to produce it, the
/// parse a few ms) and keeps the function symbols (types `t`, `T`, `w`, `W`; not BPF
/// programs, trampolines, or `__pfx_`/`__cfi_` stubs). Then:
/// - a name listed more than once is skipped, `"ambiguous: N addresses"`: the kernel
///   rejects a kprobe on it (attach such a function by address instead);
/// - when tracefs is mounted and `available_filter_functions` readable, names missing from
///   it are skipped as not traceable;
/// - when debugfs is mounted, names on the kprobe blacklist are skipped.
///
/// Listing works on a kernel without kprobes (`CONFIG_KPROBES` unset): it is the attach that
/// reports [`Error::is_not_supported`] there.
///
/// Blocking; see [`kernel_functions_async`].
///
/// # Errors
/// - [`Error::is_invalid_input`] for an empty glob.
/// - [`Error::is_not_found`] when `/proc/kallsyms` does not exist (procfs not mounted).
/// - [`Error::is_permission_denied`] when it cannot be read.
pub fn kernel_functions(glob: &str) -> Result<KernelMatches, Error> {
    check_glob(glob)?;
    let kallsyms = kallsyms::read().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::not_found(
            kallsyms::PATH,
            "mount procfs: mount -t proc proc /proc",
            Some(e),
        ),
        _ => Error::syscall("read", kallsyms::PATH, e),
    })?;
    let filter = crate::tracefs::mount::mount_point()
        .and_then(|tracefs| read_optional(&tracefs.join("available_filter_functions")));
    let blacklist = read_optional(Path::new(KPROBE_BLACKLIST));
    Ok(kernel_functions_in(
        &kallsyms,
        glob,
        filter.as_deref(),
        blacklist.as_deref(),
    ))
}

/// [`kernel_functions`] on given texts.
fn kernel_functions_in(
    kallsyms: &str,
    glob: &str,
    filter: Option<&str>,
    blacklist: Option<&str>,
) -> KernelMatches {
    let seen = scan_kallsyms(kallsyms, glob);
    let traceable = filter.map(|text| names_in(text, 0));
    // ftrace lists one name per address: `__x64_sys_getppid` is traceable as its alias
    // `__do_sys_getppid`. So a name counts as traceable when its address is.
    let traceable_addresses: HashSet<&str> =
        traceable.as_ref().map_or_else(HashSet::new, |names| {
            kallsyms
                .lines()
                .filter_map(kallsyms::parse_kallsyms_line)
                .filter(|sym| names.contains(sym.name) && sym.address.bytes().any(|b| b != b'0'))
                .map(|sym| sym.address)
                .collect()
        });
    let blacklisted = blacklist.map(|text| names_in(text, 1));

    let mut matches = KernelMatches {
        filter_functions_applied: traceable.is_some(),
        blacklist_applied: blacklisted.is_some(),
        ..KernelMatches::default()
    };
    for s in seen {
        let name = s.name;
        let reason = if s.count > 1 {
            Some(format!("ambiguous: {} addresses", s.count))
        } else if !is_valid_symbol(name) {
            Some("not a valid kprobe symbol name".to_owned())
        } else if traceable
            .as_ref()
            .is_some_and(|t| !t.contains(name) && !traceable_addresses.contains(s.address))
        {
            Some("not traceable: missing from available_filter_functions".to_owned())
        } else if blacklisted.as_ref().is_some_and(|b| b.contains(name)) {
            Some("on the kprobe blacklist".to_owned())
        } else {
            None
        };
        match reason {
            Some(reason) => matches.skipped.push((name.to_owned(), reason)),
            None => matches.functions.push(KernelFunction {
                name: name.to_owned(),
                module: s.module.map(str::to_owned),
                probe: Kprobe::new(name),
            }),
        }
    }
    matches
}

/// [`kernel_functions`] on tokio's blocking pool.
///
/// # Errors
/// As [`kernel_functions`].
///
/// # Cancel safety
/// Cancel safe: if the future is dropped, the read finishes on the blocking pool and its
/// result is discarded. Nothing is created in the kernel.
pub async fn kernel_functions_async(glob: impl Into<String>) -> Result<KernelMatches, Error> {
    let glob = glob.into();
    blocking::run(move || kernel_functions(&glob)).await
}

// --- libraries ---------------------------------------------------------------------------

/// The standard library directories, searched after the linker cache.
fn standard_dirs() -> Vec<PathBuf> {
    let triple = match std::env::consts::ARCH {
        "x86_64" => Some("x86_64-linux-gnu"),
        "aarch64" => Some("aarch64-linux-gnu"),
        "x86" => Some("i386-linux-gnu"),
        "arm" => Some("arm-linux-gnueabihf"),
        "riscv64" => Some("riscv64-linux-gnu"),
        "powerpc64" => Some("powerpc64le-linux-gnu"),
        "s390x" => Some("s390x-linux-gnu"),
        _ => None,
    };
    let mut dirs = Vec::new();
    if let Some(triple) = triple {
        dirs.push(PathBuf::from(format!("/lib/{triple}")));
        dirs.push(PathBuf::from(format!("/usr/lib/{triple}")));
    }
    for dir in ["/lib64", "/usr/lib64", "/lib", "/usr/lib"] {
        dirs.push(PathBuf::from(dir));
    }
    dirs
}

/// How well a file name answers a library name: lower is better; `None`: not at all.
/// `0`: the name itself (`libc.so.6`, `bash`); `1`: a versioned shared object
/// (`lib{name}.so.N`, `{name}.so.N`, `{name}.N` for a name ending in `.so`), compared by
/// version; `2`: an unversioned one (`lib{name}.so`, `{name}.so`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rank {
    class: u8,
    version: Vec<u64>,
}

impl Ord for Rank {
    fn cmp(&self, other: &Rank) -> Ordering {
        // Better first: lower class, then the higher version.
        self.class
            .cmp(&other.class)
            .then_with(|| other.version.cmp(&self.version))
    }
}

impl PartialOrd for Rank {
    fn partial_cmp(&self, other: &Rank) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn parse_version(v: &str) -> Option<Vec<u64>> {
    v.split('.').map(|part| part.parse().ok()).collect()
}

fn rank_library(name: &str, file: &str) -> Option<Rank> {
    if file == name {
        return Some(Rank {
            class: 0,
            version: Vec::new(),
        });
    }
    let mut stems = vec![format!("lib{name}.so"), format!("{name}.so")];
    if Path::new(name)
        .extension()
        .is_some_and(|extension| extension == "so")
    {
        stems.push(name.to_owned());
    }
    stems.iter().find_map(|stem| {
        let rest = file.strip_prefix(stem.as_str())?;
        if rest.is_empty() {
            return Some(Rank {
                class: 2,
                version: Vec::new(),
            });
        }
        let version = parse_version(rest.strip_prefix('.')?)?;
        Some(Rank { class: 1, version })
    })
}

/// The best of `candidates` (file name, path) for `name`.
fn best_match<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = (&'a str, &'a Path)>,
) -> Option<&'a Path> {
    candidates
        .into_iter()
        .filter_map(|(file, path)| Some((rank_library(name, file)?, path)))
        // min_by_key keeps the first of equals: the cache's (and maps') own order.
        .min_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, path)| path)
}

/// One entry of the linker cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CacheEntry {
    /// The soname (`libc.so.6`).
    pub key: String,
    /// The file (`/lib/x86_64-linux-gnu/libc.so.6`).
    pub path: PathBuf,
    /// `FLAG_*` of `ldconfig.h`: the low byte the type (3: ELF libc6), the high byte the
    /// ABI (0x03: `x86-64`).
    pub flags: i32,
    /// The hwcaps subdirectory bits; 0 for a library in its plain directory.
    pub hwcap: u64,
}

/// The `FLAG_ELF_LIBC6 | FLAG_<ARCH>` value of this architecture's native libraries, if
/// known (`sysdeps/generic/ldconfig.h`).
fn native_cache_flags() -> Option<i32> {
    match std::env::consts::ARCH {
        "x86_64" => Some(0x0303),
        "aarch64" => Some(0x0a03),
        _ => None,
    }
}

fn is_native(flags: i32) -> bool {
    match native_cache_flags() {
        Some(native) => flags == native,
        None => flags & 0xff == 0x03,
    }
}

const CACHE_MAGIC_NEW: &[u8] = b"glibc-ld.so.cache1.1";
const CACHE_MAGIC_OLD: &[u8] = b"ld.so-1.7.0";
/// `struct cache_file_new`: magic and version (20), `nlibs`, `len_strings`, flags, padding,
/// extension offset, 3 unused words.
const CACHE_HEADER_NEW: usize = 48;
/// `struct file_entry_new`: flags, key, value, osversion, hwcap.
const CACHE_ENTRY_NEW: usize = 24;
/// `struct file_entry` of the old format: flags, key, value.
const CACHE_ENTRY_OLD: usize = 12;

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

fn c_str_at(data: &[u8], at: usize) -> Option<&str> {
    let bytes = data.get(at..)?;
    let end = bytes.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&bytes[..end]).ok()
}

/// Parses `/etc/ld.so.cache` in glibc's "new" format (`glibc-ld.so.cache1.1`, the only
/// one since glibc 2.32), alone or behind an old-format (`ld.so-1.7.0`) part. String
/// offsets are relative to the start of the new-format header.
pub(crate) fn parse_ld_so_cache(data: &[u8]) -> Result<Vec<CacheEntry>, String> {
    let start = if data.starts_with(CACHE_MAGIC_NEW) {
        0
    } else if data.starts_with(CACHE_MAGIC_OLD) {
        // struct cache_file { char magic[11]; uint32_t nlibs; struct file_entry libs[]; }:
        // nlibs at 12 after padding; the new part follows, 8-byte aligned.
        let old_libs = usize::try_from(u32_at(data, 12).ok_or("truncated old header")?)
            .map_err(|_| "old nlibs too large")?;
        let end = old_libs
            .checked_mul(CACHE_ENTRY_OLD)
            .and_then(|n| n.checked_add(16))
            .ok_or("old nlibs too large")?;
        let start = end.next_multiple_of(8);
        if !data
            .get(start..)
            .is_some_and(|d| d.starts_with(CACHE_MAGIC_NEW))
        {
            return Err("old format without a new-format part".to_owned());
        }
        start
    } else {
        return Err("not a glibc-ld.so.cache1.1 file".to_owned());
    };
    let new = &data[start..];
    let nlibs = usize::try_from(u32_at(new, 20).ok_or("truncated header")?)
        .map_err(|_| "nlibs too large")?;
    let table_end = nlibs
        .checked_mul(CACHE_ENTRY_NEW)
        .and_then(|n| n.checked_add(CACHE_HEADER_NEW))
        .ok_or("nlibs too large")?;
    if table_end > new.len() {
        return Err(format!("{nlibs} entries do not fit in {} bytes", new.len()));
    }
    let mut entries = Vec::with_capacity(nlibs);
    for i in 0..nlibs {
        let at = CACHE_HEADER_NEW + i * CACHE_ENTRY_NEW;
        let field = |n: usize| u32_at(new, at + 4 * n).ok_or("truncated entry");
        let flags = i32::from_ne_bytes(field(0)?.to_ne_bytes());
        let string = |offset: u32| {
            usize::try_from(offset)
                .ok()
                .and_then(|offset| c_str_at(new, offset))
                .ok_or_else(|| format!("entry {i}: bad string offset {offset:#x}"))
        };
        let key = string(field(1)?)?;
        let path = string(field(2)?)?;
        let hwcap = u64_at(new, at + 16).ok_or("truncated entry")?;
        entries.push(CacheEntry {
            key: key.to_owned(),
            path: PathBuf::from(path),
            flags,
            hwcap,
        });
    }
    Ok(entries)
}

/// Parses `ldconfig -p`: `\tKEY (libc6,x86-64[, hwcap: ...]) => PATH` lines. The flags are
/// given as this architecture's native ones when the ABI text matches it, else 0.
pub(crate) fn parse_ldconfig_p(text: &str) -> Vec<CacheEntry> {
    let abi = match std::env::consts::ARCH {
        "x86_64" => Some("x86-64"),
        "aarch64" => Some("AArch64"),
        _ => None,
    };
    text.lines()
        .filter_map(|line| {
            let (left, path) = line.split_once(" => ")?;
            let (key, info) = left.trim().split_once(" (")?;
            let native = info.starts_with("libc6") && abi.is_none_or(|abi| info.contains(abi));
            Some(CacheEntry {
                key: key.to_owned(),
                path: PathBuf::from(path.trim()),
                flags: if native {
                    native_cache_flags().unwrap_or(0x03)
                } else {
                    0
                },
                hwcap: u64::from(info.contains("hwcap")),
            })
        })
        .collect()
}

/// The linker cache's native entries: parsed from `/etc/ld.so.cache`, else from
/// `ldconfig -p`; empty if neither works.
fn linker_cache() -> Vec<CacheEntry> {
    let parsed = std::fs::read(LD_SO_CACHE)
        .map_err(|e| e.to_string())
        .and_then(|data| parse_ld_so_cache(&data));
    let entries = match parsed {
        Ok(entries) => entries,
        Err(reason) => {
            tracing::debug!("{LD_SO_CACHE}: {reason}; asking `ldconfig -p`");
            ["/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"]
                .iter()
                .find_map(|ldconfig| {
                    std::process::Command::new(ldconfig)
                        .arg("-p")
                        .output()
                        .ok()
                        .filter(|out| out.status.success())
                })
                .map(|out| parse_ldconfig_p(&String::from_utf8_lossy(&out.stdout)))
                .unwrap_or_default()
        }
    };
    entries.into_iter().filter(|e| is_native(e.flags)).collect()
}

/// Whether `path` starts with the ELF magic (a `libc.so` next to `libc.so.6` is a linker
/// script).
fn is_elf(path: &Path) -> bool {
    use std::io::Read as _;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| magic == *b"\x7fELF")
}

/// The start of each line's path field in `/proc/PID/maps`, after five fields.
pub(crate) fn maps_path(line: &str) -> Option<&str> {
    let mut rest = line;
    for _ in 0..5 {
        rest = rest.trim_start().split_once(' ')?.1;
    }
    let path = rest.trim_start();
    (path.starts_with('/') && !path.ends_with(" (deleted)")).then_some(path)
}

fn check_pid(pid: i32) -> Result<(), Error> {
    if pid <= 0 {
        return Err(Error::invalid(
            format!("pid {pid}"),
            "a pid must be a positive process id",
        ));
    }
    Ok(())
}

/// The file mapped into process `pid` that answers `name`, as a path this process can open.
fn from_maps(name: &str, pid: i32) -> Result<Option<PathBuf>, Error> {
    let maps_file = format!("/proc/{pid}/maps");
    let maps = std::fs::read_to_string(&maps_file).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => {
            Error::not_found(format!("process {pid}"), "the pid does not exist", Some(e))
        }
        _ => Error::syscall("read", maps_file.clone(), e),
    })?;
    let mut seen = HashSet::new();
    let candidates: Vec<(&str, &Path)> = maps
        .lines()
        .filter_map(maps_path)
        .filter(|path| seen.insert(*path))
        .filter_map(|path| {
            let path = Path::new(path);
            Some((path.file_name()?.to_str()?, path))
        })
        .collect();
    Ok(best_match(name, candidates).map(|path| {
        if path.exists() {
            path.to_owned()
        } else {
            // Another mount namespace (a container): reach it through the process's root.
            Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path))
        }
    }))
}

/// Resolves a library (or executable) name the way users write it.
///
/// - A name with a `/` is a path, taken as is (it must exist).
/// - With `pid`: the files mapped into that process (`/proc/PID/maps`) are searched for
///   `name`, `lib{name}.so*` or `{name}.so*`, so that the answer is the file the process
///   really uses (in another mount namespace, through `/proc/PID/root`).
/// - Then the dynamic linker's cache `/etc/ld.so.cache` (parsed here; `ldconfig -p` if it
///   cannot be), this architecture's entries only, then the standard directories
///   (`/lib/<triple>`, `/usr/lib/<triple>`, `/lib64`, `/usr/lib64`, `/lib`, `/usr/lib`),
///   ELF files only.
///
/// An exact file name wins, then the highest version of `lib{name}.so.N`/`{name}.so.N`,
/// then `lib{name}.so`. So `c`, `libc`, `libc.so.6` all give the C library, and
/// `libssl.so.3` gives that soname.
///
/// Blocking (reads files; may run `ldconfig -p`).
///
/// # Errors
/// - [`Error::is_invalid_input`] for an empty name or a pid <= 0.
/// - [`Error::is_not_found`] when no such library is found, the path does not exist, or the
///   pid does not exist.
pub fn resolve_library(name: &str, pid: Option<i32>) -> Result<PathBuf, Error> {
    if name.is_empty() {
        return Err(Error::invalid(
            "library name \"\"",
            "name a library (c, libssl.so.3) or give a path",
        ));
    }
    if name.contains('/') {
        let path = PathBuf::from(name);
        return match path.try_exists() {
            Ok(true) => Ok(path),
            Ok(false) => Err(Error::not_found(format!("binary {name:?}"), "", None)),
            Err(e) => Err(Error::syscall("stat", format!("{name:?}"), e)),
        };
    }
    if let Some(pid) = pid {
        check_pid(pid)?;
        if let Some(path) = from_maps(name, pid)? {
            return Ok(path);
        }
    }
    let cache = linker_cache();
    let preferred = cache.iter().filter(|e| e.hwcap == 0);
    let others = cache.iter().filter(|e| e.hwcap != 0);
    for entries in [preferred.collect::<Vec<_>>(), others.collect()] {
        let candidates = entries
            .iter()
            .filter(|e| e.path.exists())
            .map(|e| (e.key.as_str(), e.path.as_path()));
        if let Some(path) = best_match(name, candidates) {
            return Ok(path.to_owned());
        }
    }
    for dir in standard_dirs() {
        let Ok(listing) = std::fs::read_dir(&dir) else {
            continue;
        };
        let files: Vec<(String, PathBuf)> = listing
            .filter_map(Result::ok)
            .filter_map(|entry| Some((entry.file_name().into_string().ok()?, entry.path())))
            .filter(|(file, path)| rank_library(name, file).is_some() && is_elf(path))
            .collect();
        if let Some(path) = best_match(name, files.iter().map(|(f, p)| (f.as_str(), p.as_path()))) {
            return Ok(path.to_owned());
        }
    }
    let mut hint = format!(
        "no lib{name}.so*, {name}.so* or {name} in {LD_SO_CACHE} or the standard library \
         directories; give its path"
    );
    if let Some(pid) = pid {
        hint = format!("not mapped by process {pid}, and {hint}");
    }
    Err(Error::not_found(format!("library {name:?}"), &hint, None))
}

// --- user space --------------------------------------------------------------------------

/// One function of a binary, ready for a uprobe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserFunction {
    /// The symbol (`name@VERSION` for a non-default symbol version).
    pub name: String,
    /// Its file offset.
    pub offset: u64,
    /// Its size in bytes.
    pub size: u64,
    /// An entry probe on it, cookie 0: by symbol (so it displays by name) when the name
    /// resolves to this offset, else at the raw offset (a `static` function whose name
    /// several functions share). With the pid filter, when one was given.
    pub probe: Uprobe,
}

/// What [`user_functions`] found.
#[derive(Clone, Debug)]
pub struct UserMatches {
    /// The file the functions are in.
    pub binary: PathBuf,
    /// The functions, sorted by name, at distinct offsets.
    pub functions: Vec<UserFunction>,
    /// Matching functions that are not probed, with the reason: IFUNC resolvers
    /// ([`IFUNC_REASON`]), aliases (`"alias of X"`), first instructions uprobes reject.
    pub skipped: Vec<(String, String)>,
}

impl UserMatches {
    /// The probes, with cookie `i` for the `i`-th function.
    pub fn probes(&self) -> impl Iterator<Item = Uprobe> + '_ {
        self.functions
            .iter()
            .zip(0u64..)
            .map(|(f, i)| f.probe.clone().cookie(i))
    }
}

/// Why the kernel would refuse a uprobe on the instruction at `offset` of `file`, when that
/// is plain from its first bytes: on `x86_64`, a `lock` or segment-override prefix
/// (`arch/x86/kernel/uprobes.c`, `is_prefix_bad`; the attach fails with `ENOTSUPP`), as
/// `pthread_spin_lock` starts with `lock decl (%rdi)`. One such function would fail a
/// whole batch; it is skipped instead.
fn unprobeable(file: &std::fs::File, offset: u64) -> Option<&'static str> {
    use std::os::unix::fs::FileExt as _;
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    let mut bytes = [0u8; 15];
    let n = file.read_at(&mut bytes, offset).ok()?;
    x86_bad_prefix(&bytes[..n])
}

/// The reason a uprobe cannot go on the `x86_64` instruction starting `code`, if one of its
/// legacy prefixes is one uprobes reject.
fn x86_bad_prefix(code: &[u8]) -> Option<&'static str> {
    for &byte in code {
        match byte {
            0xf0 => return Some("uprobes cannot probe its first instruction (a lock prefix)"),
            0x26 | 0x2e | 0x36 | 0x3e => {
                return Some(
                    "uprobes cannot probe its first instruction (a segment override prefix)",
                )
            }
            // Operand/address size, rep/repne, fs/gs: allowed; look further.
            0x66 | 0x67 | 0xf2 | 0xf3 | 0x64 | 0x65 => {}
            _ => return None,
        }
    }
    None
}

/// Which of several names at one offset to keep: a global one, without leading
/// underscores, without a version, the shortest, then alphabetically first.
fn alias_preference(f: &ElfFunction) -> impl Ord + '_ {
    (
        !f.global,
        f.name.starts_with('_'),
        f.name.contains('@'),
        f.name.len(),
        f.name.as_str(),
    )
}

/// The functions of `target` (a library name as [`resolve_library`] takes it, or a path)
/// whose names match `glob`, as uprobes at their file offsets.
///
/// Functions come from the ELF symbol tables ([`ElfSymbols::matching`]: `.symtab` and
/// `.dynsym`, defined, non-zero size). Skipped, with the reason: IFUNC resolvers (a probe
/// there would count the resolver, which runs once at load, not the function it selects),
/// all but one of several names at the same offset (aliases such as `open`/`open64`, one
/// of which is kept), and, on `x86_64`, functions whose first instruction uprobes reject
/// (a `lock` or segment-override prefix, as in `pthread_spin_lock`).
///
/// With `pid`, the library is resolved through that process's mappings and every probe
/// gets that pid filter.
///
/// Blocking (reads and parses the file, cached per file); see [`user_functions_async`].
///
/// # Errors
/// As [`resolve_library`] and [`ElfSymbols::load`]; [`Error::is_invalid_input`] for an
/// empty glob.
pub fn user_functions(target: &str, glob: &str, pid: Option<i32>) -> Result<UserMatches, Error> {
    check_glob(glob)?;
    if let Some(pid) = pid {
        check_pid(pid)?;
    }
    let binary = resolve_library(target, pid)?;
    let symbols = ElfSymbols::load(&binary)?;
    let mut skipped = Vec::new();
    let mut by_offset: BTreeMap<u64, Vec<&ElfFunction>> = BTreeMap::new();
    for function in symbols.matching(glob) {
        if function.ifunc {
            skipped.push((function.name.clone(), IFUNC_REASON.to_owned()));
        } else {
            by_offset.entry(function.offset).or_default().push(function);
        }
    }
    let file = std::fs::File::open(&binary).ok();
    let mut functions = Vec::with_capacity(by_offset.len());
    for (offset, mut names) in by_offset {
        names.sort_by_cached_key(|f| alias_preference(f));
        let kept = names[0];
        for alias in &names[1..] {
            skipped.push((alias.name.clone(), format!("alias of {}", kept.name)));
        }
        if let Some(reason) = file.as_ref().and_then(|f| unprobeable(f, offset)) {
            for f in &names {
                skipped.push((f.name.clone(), reason.to_owned()));
            }
            continue;
        }
        let mut probe = if symbols.resolve(&kept.name).ok() == Some(offset) {
            Uprobe::new(&binary, &kept.name)
        } else {
            Uprobe::at_offset(&binary, offset)
        };
        if let Some(pid) = pid {
            probe = probe.pid(pid);
        }
        functions.push(UserFunction {
            name: kept.name.clone(),
            offset,
            size: kept.size,
            probe,
        });
    }
    functions.sort_by(|a, b| (&a.name, a.offset).cmp(&(&b.name, b.offset)));
    skipped.sort();
    Ok(UserMatches {
        binary,
        functions,
        skipped,
    })
}

/// [`user_functions`] on tokio's blocking pool.
///
/// # Errors
/// As [`user_functions`].
///
/// # Cancel safety
/// Cancel safe: if the future is dropped, the lookup finishes on the blocking pool and its
/// result is discarded. Nothing is created in the kernel.
pub async fn user_functions_async(
    target: impl Into<String>,
    glob: impl Into<String>,
    pid: Option<i32>,
) -> Result<UserMatches, Error> {
    let (target, glob) = (target.into(), glob.into());
    blocking::run(move || user_functions(&target, &glob, pid)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kallsyms::tests::KALLSYMS_TEXT;

    #[test]
    fn patterns() {
        assert_eq!(
            parse_pattern("vfs_*").unwrap(),
            Pattern::Kernel {
                glob: "vfs_*".into()
            }
        );
        assert_eq!(
            parse_pattern("c:str*").unwrap(),
            Pattern::User {
                target: "c".into(),
                glob: "str*".into()
            }
        );
        assert_eq!(
            parse_pattern("/usr/bin/bash:read*").unwrap(),
            Pattern::User {
                target: "/usr/bin/bash".into(),
                glob: "read*".into()
            }
        );
        assert_eq!(
            parse_pattern("/odd:dir/lib.so:f").unwrap(),
            Pattern::User {
                target: "/odd:dir/lib.so".into(),
                glob: "f".into()
            },
            "the last ':' separates"
        );
        assert_eq!(parse_pattern("tcp_[sr]*").unwrap().to_string(), "tcp_[sr]*");
        assert_eq!(parse_pattern("c:malloc").unwrap().to_string(), "c:malloc");
        for bad in ["", ":x", "c:", "vfs read", "a/b", "x;y"] {
            let e = parse_pattern(bad).unwrap_err();
            assert!(e.is_invalid_input(), "{bad:?}: {e}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn an_alias_of_a_traceable_function_is_traceable() {
        let kallsyms = "ffffffff81001000 t __do_sys_getppid\n\
                        ffffffff81001000 T __x64_sys_getppid\n\
                        ffffffff81002000 T __x64_sys_notrace\n";
        let filter = "__do_sys_getppid\n";
        let found = kernel_functions_in(kallsyms, "__x64_sys_*", Some(filter), None);
        let names: Vec<&str> = found.functions.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["__x64_sys_getppid"]);
        assert_eq!(found.skipped.len(), 1, "{:?}", found.skipped);
        assert!(found.skipped[0].1.contains("not traceable"));
    }

    #[test]
    fn kernel_listing() {
        let found = kernel_functions_in(KALLSYMS_TEXT, "vfs_*", None, None);
        let names: Vec<String> = found
            .functions
            .iter()
            .map(KernelFunction::qualified_name)
            .collect();
        assert_eq!(
            names,
            [
                "vfs_listed",
                "ext4:vfs_mod_fn",
                "vfs_notrace",
                "vfs_read",
                "vfs_weak",
                "vfs_write"
            ]
        );
        assert_eq!(
            found.skipped,
            [
                ("vfs_dup.isra.0".into(), "ambiguous: 2 addresses".into()),
                ("vfs_twice".into(), "ambiguous: 2 addresses".into()),
            ]
        );
        assert!(!found.filter_functions_applied && !found.blacklist_applied);
        assert_eq!(found.functions[1].probe, Kprobe::new("vfs_mod_fn"));
        let cookies: Vec<u64> = found.probes().map(|p| p.cookie_value()).collect();
        assert_eq!(cookies, [0, 1, 2, 3, 4, 5]);

        let filter = "vfs_read\nvfs_write\nvfs_weak\nvfs_listed\nvfs_mod_fn [ext4]\n";
        let blacklist = "0xffffffff81007000-0xffffffff81007010\tvfs_listed\n";
        let found = kernel_functions_in(KALLSYMS_TEXT, "vfs_*", Some(filter), Some(blacklist));
        let names: Vec<&str> = found.functions.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["vfs_mod_fn", "vfs_read", "vfs_weak", "vfs_write"]);
        let reasons: std::collections::HashMap<&str, &str> = found
            .skipped
            .iter()
            .map(|(n, r)| (n.as_str(), r.as_str()))
            .collect();
        assert_eq!(reasons["vfs_listed"], "on the kprobe blacklist");
        assert!(reasons["vfs_notrace"].starts_with("not traceable"));
        assert!(found.filter_functions_applied && found.blacklist_applied);

        let exact = kernel_functions_in(KALLSYMS_TEXT, "vfs_read", None, None);
        assert_eq!(exact.functions.len(), 1);
        assert!(
            kernel_functions_in(KALLSYMS_TEXT, "*trampoline", None, None)
                .functions
                .is_empty()
        );
        assert!(kernel_functions_in(KALLSYMS_TEXT, "*_vfs_x", None, None)
            .functions
            .is_empty());
        assert!(kernel_functions("").unwrap_err().is_invalid_input());
    }

    #[test]
    fn library_ranks() {
        let rank = |name, file| rank_library(name, file).map(|r| (r.class, r.version));
        assert_eq!(rank("c", "libc.so.6"), Some((1, vec![6])));
        assert_eq!(rank("libc", "libc.so.6"), Some((1, vec![6])));
        assert_eq!(rank("libc.so.6", "libc.so.6"), Some((0, vec![])));
        assert_eq!(rank("libc.so", "libc.so.6"), Some((1, vec![6])));
        assert_eq!(rank("ssl", "libssl.so"), Some((2, vec![])));
        assert_eq!(rank("ssl", "libssl.so.1.1"), Some((1, vec![1, 1])));
        assert_eq!(rank("ssl", "libssl3.so"), None);
        assert_eq!(rank("c", "libcrypto.so.3"), None);
        assert_eq!(rank("c", "libc.so.6.bak"), None);
        assert_eq!(rank("bash", "bash"), Some((0, vec![])));

        let paths: Vec<(&str, PathBuf)> = [
            "libssl.so",
            "libssl.so.1.1",
            "libssl.so.3",
            "libssl3.so",
            "libssl.so.10",
        ]
        .iter()
        .map(|f| (*f, PathBuf::from(format!("/l/{f}"))))
        .collect();
        let pick = |name: &str| {
            best_match(name, paths.iter().map(|(f, p)| (*f, p.as_path())))
                .map(|p| p.to_str().unwrap().to_owned())
        };
        assert_eq!(pick("ssl").as_deref(), Some("/l/libssl.so.10"));
        assert_eq!(pick("libssl.so.3").as_deref(), Some("/l/libssl.so.3"));
        assert_eq!(pick("ssl3").as_deref(), Some("/l/libssl3.so"));
        assert_eq!(pick("crypto"), None);
    }

    #[test]
    fn x86_prefixes() {
        // pthread_spin_lock: lock decl (%rdi)
        assert!(x86_bad_prefix(&[0xf0, 0xff, 0x0f, 0x75])
            .unwrap()
            .contains("lock"));
        assert!(x86_bad_prefix(&[0x66, 0xf0, 0x0f]).is_some());
        assert!(x86_bad_prefix(&[0x2e, 0x0f, 0x1f]).is_some());
        // endbr64, push %rbp, mov, fs-relative load, rep ret
        for ok in [
            &[0xf3, 0x0f, 0x1e, 0xfa][..],
            &[0x55],
            &[0x48, 0x89, 0xe5],
            &[0x64, 0x48, 0x8b, 0x04, 0x25],
            &[0xf3, 0xc3],
            &[],
        ] {
            assert_eq!(x86_bad_prefix(ok), None, "{ok:x?}");
        }
    }

    #[test]
    fn maps_lines() {
        assert_eq!(
            maps_path(
                "7f44dd3b1000-7f44dd507000 r-xp 00026000 fe:00 326279                     \
                 /usr/lib/x86_64-linux-gnu/libc.so.6"
            ),
            Some("/usr/lib/x86_64-linux-gnu/libc.so.6")
        );
        assert_eq!(
            maps_path("7f0-7f1 r-xp 00000000 fe:00 12 /tmp/a b/lib x.so"),
            Some("/tmp/a b/lib x.so")
        );
        assert_eq!(maps_path("7f0-7f1 rw-p 00000000 00:00 0 [heap]"), None);
        assert_eq!(maps_path("7f0-7f1 rw-p 00000000 00:00 0"), None);
        assert_eq!(
            maps_path("7f0-7f1 r-xp 00000000 fe:00 12 /tmp/gone.so (deleted)"),
            None
        );
    }

    /// A synthetic cache with two entries, in the new format.
    fn synthetic_cache(old_prefix: bool) -> Vec<u8> {
        let mut out = Vec::new();
        if old_prefix {
            out.extend_from_slice(CACHE_MAGIC_OLD);
            out.push(0);
            out.extend_from_slice(&1u32.to_ne_bytes());
            out.extend_from_slice(&[0u8; CACHE_ENTRY_OLD]);
            out.resize(out.len().next_multiple_of(8), 0);
        }
        let strings_at = CACHE_HEADER_NEW + 2 * CACHE_ENTRY_NEW;
        let strings = b"libc.so.6\0/lib/libc.so.6\0libm.so.6\0/lib/libm.so.6\0";
        let mut new = Vec::new();
        new.extend_from_slice(CACHE_MAGIC_NEW);
        new.extend_from_slice(&2u32.to_ne_bytes());
        new.extend_from_slice(&u32::try_from(strings.len()).unwrap().to_ne_bytes());
        new.resize(CACHE_HEADER_NEW, 0);
        for (flags, key, value, hwcap) in [(0x0303, 0, 10, 0u64), (0x0003, 25, 35, 1 << 62)] {
            for v in [flags, strings_at + key, strings_at + value, 0] {
                new.extend_from_slice(&u32::try_from(v).unwrap().to_ne_bytes());
            }
            new.extend_from_slice(&hwcap.to_ne_bytes());
        }
        new.extend_from_slice(strings);
        out.extend_from_slice(&new);
        out
    }

    #[test]
    fn synthetic_ld_so_cache() {
        for old_prefix in [false, true] {
            let entries = parse_ld_so_cache(&synthetic_cache(old_prefix)).unwrap();
            assert_eq!(
                entries,
                [
                    CacheEntry {
                        key: "libc.so.6".into(),
                        path: "/lib/libc.so.6".into(),
                        flags: 0x0303,
                        hwcap: 0
                    },
                    CacheEntry {
                        key: "libm.so.6".into(),
                        path: "/lib/libm.so.6".into(),
                        flags: 0x0003,
                        hwcap: 1 << 62
                    }
                ]
            );
        }
        let mut truncated = synthetic_cache(false);
        truncated.truncate(CACHE_HEADER_NEW + 10);
        assert!(parse_ld_so_cache(&truncated).is_err());
        let mut bad_offset = synthetic_cache(false);
        bad_offset[CACHE_HEADER_NEW + 4..CACHE_HEADER_NEW + 8]
            .copy_from_slice(&0xffff_ffffu32.to_ne_bytes());
        assert!(parse_ld_so_cache(&bad_offset)
            .unwrap_err()
            .contains("bad string offset"));
        assert!(parse_ld_so_cache(b"ld.so-1.7.0\0\0\0\0\0").is_err());
        assert!(parse_ld_so_cache(b"garbage").is_err());
    }

    /// The real `/etc/ld.so.cache` parses, and agrees with `ldconfig -p`.
    #[test]
    fn real_ld_so_cache() {
        let Ok(data) = std::fs::read(LD_SO_CACHE) else {
            eprintln!("probeset-skip: real_ld_so_cache: no {LD_SO_CACHE} here");
            return;
        };
        let entries = parse_ld_so_cache(&data).unwrap();
        assert!(!entries.is_empty());
        let libc: Vec<&CacheEntry> = entries
            .iter()
            .filter(|e| e.key == "libc.so.6" && is_native(e.flags))
            .collect();
        assert!(!libc.is_empty(), "libc.so.6 is in the cache");
        assert!(libc.iter().all(|e| is_elf(&e.path)), "{libc:?}");

        let Ok(out) = std::process::Command::new("ldconfig").arg("-p").output() else {
            eprintln!("probeset-skip: real_ld_so_cache: no ldconfig to compare with");
            return;
        };
        let listed = parse_ldconfig_p(&String::from_utf8_lossy(&out.stdout));
        let key_path = |e: &CacheEntry| (e.key.clone(), e.path.clone(), is_native(e.flags));
        let ours: HashSet<_> = entries.iter().map(key_path).collect();
        let theirs: HashSet<_> = listed.iter().map(key_path).collect();
        assert_eq!(ours, theirs);
        assert_eq!(entries.len(), listed.len());
    }

    #[test]
    fn ldconfig_lines() {
        let text = "3 libs found in cache `/etc/ld.so.cache'\n\
            \tlibz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1\n\
            \tlibz.so.1 (libc6) => /lib/i386-linux-gnu/libz.so.1\n\
            \tlibx.so (libc6,x86-64, hwcap: \"x86-64-v3\") => /usr/lib/glibc-hwcaps/x86-64-v3/libx.so\n";
        let entries = parse_ldconfig_p(text);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].key, "libz.so.1");
        assert_eq!(
            entries[0].path,
            Path::new("/lib/x86_64-linux-gnu/libz.so.1")
        );
        assert_eq!(entries[2].hwcap, 1);
        if std::env::consts::ARCH == "x86_64" {
            assert!(is_native(entries[0].flags));
            assert!(!is_native(entries[1].flags));
        }
    }

    #[test]
    fn library_inputs() {
        assert!(resolve_library("", None).unwrap_err().is_invalid_input());
        assert!(resolve_library("c", Some(0))
            .unwrap_err()
            .is_invalid_input());
        assert!(resolve_library("/no/such/file", None)
            .unwrap_err()
            .is_not_found());
        assert!(resolve_library("probeset-no-such-library", None)
            .unwrap_err()
            .is_not_found());
        assert!(user_functions("c", "", None)
            .unwrap_err()
            .is_invalid_input());
    }
}
