//! Kernel functions by glob: the text symbols of `/proc/kallsyms` that ftrace can trace,
//! off the kprobe blacklist, and unique by name.

use std::collections::HashSet;
use std::io;
use std::path::Path;

use crate::error::Error;
use crate::glob::{literal_prefix, Glob};
use crate::kallsyms::{self, KallsymsLine};
use crate::kprobe::Kprobe;
use crate::validate::is_valid_symbol;

use super::pattern::check_glob;

/// The kprobe blacklist (debugfs).
const KPROBE_BLACKLIST: &str = "/sys/kernel/debug/kprobes/blacklist";

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

/// What [`kernel_functions`] (or [`kernel_functions_blocking`]) found.
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

/// The kernel functions whose names match `glob`, ready for kprobes:
/// [`kernel_functions_blocking`] on tokio's blocking pool.
///
/// # Errors
/// As [`kernel_functions_blocking`]; [`Error::RuntimeShutdown`] if the runtime shuts down
/// before the listing is done.
///
/// # Cancel safety
/// This function is cancel safe. If it is used as the event in a `tokio::select!` statement
/// and some other branch completes first, the listing finishes on the blocking pool and its
/// result is dropped; nothing is created in the kernel.
pub async fn kernel_functions(glob: impl Into<String>) -> Result<KernelMatches, Error> {
    let glob = glob.into();
    crate::blocking::run(move || kernel_functions_blocking(&glob)).await
}

/// The kernel functions whose names match `glob`, ready for kprobes; blocking (see
/// [`kernel_functions`]).
///
/// Reads `/proc/kallsyms` once (~120k lines; the kernel needs ~70 ms to produce it, the
/// parse a few ms) and keeps the function symbols (types `t`, `T`, `w`, `W`; not BPF
/// programs, trampolines, or `__pfx_`/`__cfi_` stubs). Then:
/// - a name listed more than once is skipped, `"ambiguous: N addresses"`: the kernel
///   rejects a kprobe on the name since 6.6 ([`Error::AmbiguousSymbol`] lists the
///   candidates); attach each one with [`Kprobe::at_address`];
/// - when tracefs is mounted and `available_filter_functions` readable, names missing from
///   it are skipped as not traceable;
/// - when debugfs is mounted, names on the kprobe blacklist are skipped.
///
/// Listing works on a kernel without kprobes (`CONFIG_KPROBES` unset): it is the attach that
/// reports [`Error::is_not_supported`] there.
///
/// # Errors
/// - [`Error::is_invalid_input`] for an empty glob.
/// - [`Error::is_not_found`] when `/proc/kallsyms` does not exist (procfs not mounted).
/// - [`Error::is_permission_denied`] when it cannot be read.
pub fn kernel_functions_blocking(glob: &str) -> Result<KernelMatches, Error> {
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

/// The old name of [`kernel_functions`].
///
/// # Errors
/// As [`kernel_functions`].
///
/// # Cancel safety
/// As [`kernel_functions`].
#[deprecated(
    note = "renamed `kernel_functions` (async); the blocking one is `kernel_functions_blocking`"
)]
#[doc(hidden)]
pub async fn kernel_functions_async(glob: impl Into<String>) -> Result<KernelMatches, Error> {
    kernel_functions(glob).await
}

/// [`kernel_functions_blocking`] on given texts.
fn kernel_functions_in(
    kallsyms: &str,
    glob: &str,
    filter: Option<&str>,
    blacklist: Option<&str>,
) -> KernelMatches {
    let filters = Filters::new(kallsyms, filter, blacklist);
    let mut matches = KernelMatches {
        filter_functions_applied: filters.traceable.is_some(),
        blacklist_applied: filters.blacklisted.is_some(),
        ..KernelMatches::default()
    };
    for s in scan_kallsyms(kallsyms, glob) {
        match filters.skip_reason(&s) {
            Some(reason) => matches.skipped.push((s.name.to_owned(), reason)),
            None => matches.functions.push(KernelFunction {
                name: s.name.to_owned(),
                module: s.module.map(str::to_owned),
                probe: Kprobe::new(s.name),
            }),
        }
    }
    matches
}

/// What the kernel's own lists say of a name: whether ftrace can trace it, whether kprobes
/// refuse it.
struct Filters<'a> {
    /// The names of `available_filter_functions`, when it was read.
    traceable: Option<HashSet<&'a str>>,
    /// The kallsyms addresses of those names.
    traceable_addresses: HashSet<&'a str>,
    /// The names of the kprobe blacklist, when it was read.
    blacklisted: Option<HashSet<&'a str>>,
}

impl<'a> Filters<'a> {
    fn new(kallsyms: &'a str, filter: Option<&'a str>, blacklist: Option<&'a str>) -> Self {
        let traceable = filter.map(|text| names_in(text, 0));
        // ftrace lists one name per address: `__x64_sys_getppid` is traceable as its alias
        // `__do_sys_getppid`. So a name counts as traceable when its address is.
        let traceable_addresses = traceable.as_ref().map_or_else(HashSet::new, |names| {
            kallsyms
                .lines()
                .filter_map(kallsyms::parse_kallsyms_line)
                .filter(|sym| names.contains(sym.name) && sym.address.bytes().any(|b| b != b'0'))
                .map(|sym| sym.address)
                .collect()
        });
        Filters {
            traceable,
            traceable_addresses,
            blacklisted: blacklist.map(|text| names_in(text, 1)),
        }
    }

    /// Why a kprobe does not go on `s`, if it does not.
    fn skip_reason(&self, s: &Seen<'_>) -> Option<String> {
        let untraceable = |t: &HashSet<&str>| {
            !t.contains(s.name) && !self.traceable_addresses.contains(s.address)
        };
        if s.count > 1 {
            Some(format!("ambiguous: {} addresses", s.count))
        } else if !is_valid_symbol(s.name) {
            Some("not a valid kprobe symbol name".to_owned())
        } else if self.traceable.as_ref().is_some_and(untraceable) {
            Some("not traceable: missing from available_filter_functions".to_owned())
        } else if self
            .blacklisted
            .as_ref()
            .is_some_and(|b| b.contains(s.name))
        {
            Some("on the kprobe blacklist".to_owned())
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kallsyms::tests::KALLSYMS_TEXT;

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
        assert!(kernel_functions_blocking("")
            .unwrap_err()
            .is_invalid_input());
    }
}
