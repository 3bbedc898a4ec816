//! Library names resolved the way users write them (`c`, `libc`, `libc.so.6`,
//! `libssl.so.3`, a path): through a process's mappings, the linker cache, then the
//! standard library directories.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use crate::elf::is_elf_file;
use crate::error::Error;

use super::ld_so_cache::{linker_cache, LD_SO_CACHE};

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

/// The start of each line's path field in `/proc/PID/maps`, after five fields.
pub(crate) fn maps_path(line: &str) -> Option<&str> {
    let mut rest = line;
    for _ in 0..5 {
        rest = rest.trim_start().split_once(' ')?.1;
    }
    let path = rest.trim_start();
    (path.starts_with('/') && !path.ends_with(" (deleted)")).then_some(path)
}

/// Rejects a pid that cannot be a process.
///
/// # Errors
/// [`Error::is_invalid_input`] for a pid <= 0.
pub(super) fn check_pid(pid: i32) -> Result<(), Error> {
    if pid <= 0 {
        return Err(Error::invalid(
            format!("pid {pid}"),
            "a pid must be a positive process id",
        ));
    }
    Ok(())
}

/// The file mapped into process `pid` that answers `name`, as a path this process can open.
///
/// # Errors
/// [`Error::is_not_found`] when the process does not exist; the error of reading its maps
/// otherwise.
fn from_maps(name: &str, pid: i32) -> Result<Option<PathBuf>, Error> {
    let maps_file = format!("/proc/{pid}/maps");
    let maps = std::fs::read_to_string(&maps_file).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => {
            Error::not_found(format!("process {pid}"), "the pid does not exist", Some(e))
        }
        io::ErrorKind::PermissionDenied => Error::permission(
            "read",
            maps_file.clone(),
            format!(
                "ptrace access to process {pid} (the same user and ptrace allowed by \
                 kernel.yama.ptrace_scope, or CAP_SYS_PTRACE)"
            ),
            e,
        ),
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

/// Resolves a library (or executable) name the way users write it:
/// [`resolve_library_blocking`] on tokio's blocking pool.
///
/// # Errors
/// As [`resolve_library_blocking`]; [`Error::RuntimeShutdown`] if the runtime shuts down
/// before the lookup is done.
///
/// # Cancel safety
/// This function is cancel safe. If it is used as the event in a `tokio::select!` statement
/// and some other branch completes first, the lookup finishes on the blocking pool and its
/// result is dropped; nothing is created in the kernel.
pub async fn resolve_library(name: impl Into<String>, pid: Option<i32>) -> Result<PathBuf, Error> {
    let name = name.into();
    crate::blocking::run(move || resolve_library_blocking(&name, pid)).await
}

/// Resolves a library (or executable) name the way users write it; blocking (reads files,
/// may run `ldconfig -p`; see [`resolve_library`]).
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
/// # Errors
/// - [`Error::is_invalid_input`] for an empty name or a pid <= 0.
/// - [`Error::is_not_found`] when no such library is found, the path does not exist, or the
///   pid does not exist.
pub fn resolve_library_blocking(name: &str, pid: Option<i32>) -> Result<PathBuf, Error> {
    if name.is_empty() {
        return Err(Error::invalid(
            "library name \"\"",
            "name a library (c, libssl.so.3) or give a path",
        ));
    }
    if name.contains('/') {
        return existing_path(name);
    }
    if let Some(pid) = pid {
        check_pid(pid)?;
        if let Some(path) = from_maps(name, pid)? {
            return Ok(path);
        }
    }
    if let Some(path) = from_linker_cache(name).or_else(|| from_standard_dirs(name)) {
        return Ok(path);
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

/// A path as given, if it exists.
///
/// # Errors
/// [`Error::is_not_found`] when it does not exist; the error of `stat` when that fails.
fn existing_path(name: &str) -> Result<PathBuf, Error> {
    let path = PathBuf::from(name);
    match path.try_exists() {
        Ok(true) => Ok(path),
        Ok(false) => Err(Error::not_found(format!("binary {name:?}"), "", None)),
        Err(e) => Err(Error::syscall("stat", format!("{name:?}"), e)),
    }
}

/// The linker cache's best answer to `name`, among the files that exist: a library in its
/// plain directory first, then one in a hwcaps subdirectory.
fn from_linker_cache(name: &str) -> Option<PathBuf> {
    let cache = linker_cache();
    let preferred = cache.iter().filter(|e| e.hwcap == 0);
    let others = cache.iter().filter(|e| e.hwcap != 0);
    for entries in [preferred.collect::<Vec<_>>(), others.collect()] {
        let candidates = entries
            .iter()
            .filter(|e| e.path.exists())
            .map(|e| (e.key.as_str(), e.path.as_path()));
        if let Some(path) = best_match(name, candidates) {
            return Some(path.to_owned());
        }
    }
    None
}

/// The best ELF file for `name` in the first standard directory that has one.
fn from_standard_dirs(name: &str) -> Option<PathBuf> {
    standard_dirs().into_iter().find_map(|dir| {
        let listing = std::fs::read_dir(&dir).ok()?;
        let files: Vec<(String, PathBuf)> = listing
            .filter_map(Result::ok)
            .filter_map(|entry| Some((entry.file_name().into_string().ok()?, entry.path())))
            .filter(|(file, path)| rank_library(name, file).is_some() && is_elf_file(path))
            .collect();
        best_match(name, files.iter().map(|(f, p)| (f.as_str(), p.as_path()))).map(Path::to_owned)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn library_inputs() {
        assert!(resolve_library_blocking("", None)
            .unwrap_err()
            .is_invalid_input());
        assert!(resolve_library_blocking("c", Some(0))
            .unwrap_err()
            .is_invalid_input());
        assert!(resolve_library_blocking("/no/such/file", None)
            .unwrap_err()
            .is_not_found());
        assert!(resolve_library_blocking("probeset-no-such-library", None)
            .unwrap_err()
            .is_not_found());
    }
}
