//! The functions of a user-space binary or library by glob, as uprobes at their file
//! offsets, without IFUNC resolvers, aliases, and first instructions uprobes reject.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::elf::{ElfFunction, ElfSymbols};
use crate::error::Error;
use crate::uprobe::Uprobe;

use super::library::{check_pid, resolve_library_blocking};
use super::pattern::check_glob;

/// The reason an IFUNC resolver is skipped.
pub const IFUNC_REASON: &str =
    "ifunc resolver: the probe would count the resolver, not the function";

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

/// What [`user_functions`] (or [`user_functions_blocking`]) found.
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

/// The functions of `target` whose names match `glob`, as uprobes at their file offsets:
/// [`user_functions_blocking`] on tokio's blocking pool.
///
/// # Errors
/// As [`user_functions_blocking`]; [`Error::RuntimeShutdown`] if the runtime shuts down
/// before the lookup is done.
///
/// # Cancel safety
/// This function is cancel safe. If it is used as the event in a `tokio::select!` statement
/// and some other branch completes first, the lookup finishes on the blocking pool and its
/// result is dropped; nothing is created in the kernel.
pub async fn user_functions(
    target: impl Into<String>,
    glob: impl Into<String>,
    pid: Option<i32>,
) -> Result<UserMatches, Error> {
    let (target, glob) = (target.into(), glob.into());
    crate::blocking::run(move || user_functions_blocking(&target, &glob, pid)).await
}

/// The functions of `target` (a library name as [`resolve_library_blocking`] takes it, or a
/// path) whose names match `glob`, as uprobes at their file offsets; blocking (reads and
/// parses the file, cached per file; see [`user_functions`]).
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
/// # Errors
/// As [`resolve_library_blocking`] and [`ElfSymbols::load`]; [`Error::is_invalid_input`]
/// for an empty glob.
pub fn user_functions_blocking(
    target: &str,
    glob: &str,
    pid: Option<i32>,
) -> Result<UserMatches, Error> {
    check_glob(glob)?;
    if let Some(pid) = pid {
        check_pid(pid)?;
    }
    let binary = resolve_library_blocking(target, pid)?;
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
            skipped.extend(names.iter().map(|f| (f.name.clone(), reason.to_owned())));
            continue;
        }
        functions.push(UserFunction {
            name: kept.name.clone(),
            offset,
            size: kept.size,
            probe: probe_on(&symbols, kept, pid),
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

/// The entry probe on `function` of `symbols`: by name when the name resolves to it, else
/// at its offset; with the pid filter, if any.
fn probe_on(symbols: &ElfSymbols, function: &ElfFunction, pid: Option<i32>) -> Uprobe {
    let binary = symbols.path();
    let probe = if symbols.resolve(&function.name).ok() == Some(function.offset) {
        Uprobe::new(binary, &function.name)
    } else {
        Uprobe::at_offset(binary, function.offset)
    };
    match pid {
        Some(pid) => probe.pid(pid),
        None => probe,
    }
}

/// The old name of [`user_functions`].
///
/// # Errors
/// As [`user_functions`].
///
/// # Cancel safety
/// As [`user_functions`].
#[deprecated(
    note = "renamed `user_functions` (async); the blocking one is `user_functions_blocking`"
)]
#[doc(hidden)]
pub async fn user_functions_async(
    target: impl Into<String>,
    glob: impl Into<String>,
    pid: Option<i32>,
) -> Result<UserMatches, Error> {
    user_functions(target, glob, pid).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_inputs() {
        assert!(user_functions_blocking("c", "", None)
            .unwrap_err()
            .is_invalid_input());
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
}
