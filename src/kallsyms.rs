//! `/proc/kallsyms`, the kernel's symbol list: one `ADDRESS TYPE NAME` line per symbol,
//! `ADDRESS TYPE NAME\t[MODULE]` for a module's. Without privilege the addresses are
//! zeros; the names are listed either way.

use std::collections::HashSet;
use std::io;

/// Where the kernel lists its symbols.
pub(crate) const PATH: &str = "/proc/kallsyms";

/// One line of `/proc/kallsyms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KallsymsLine<'a> {
    /// The address, as kallsyms prints it (hex digits, zeros when hidden).
    pub address: &'a str,
    /// The symbol type letter (`t`, `T`, `d`, ...).
    pub kind: u8,
    pub name: &'a str,
    pub module: Option<&'a str>,
}

impl KallsymsLine<'_> {
    /// A function in text (`t`, `T`) or a weak one (`w`, `W`: without
    /// `CONFIG_KALLSYMS_ALL` only functions are listed).
    pub(crate) fn is_function(&self) -> bool {
        matches!(self.kind, b't' | b'T' | b'w' | b'W')
    }

    /// In a pseudo-module that holds no probeable function: `JITed` BPF programs, ftrace
    /// and kprobe trampolines.
    pub(crate) fn in_pseudo_module(&self) -> bool {
        self.module
            .is_some_and(|module| module == "bpf" || module.starts_with("__builtin__"))
    }

    /// A symbol that marks padding or a CFI stub before a function, not a function.
    pub(crate) fn is_stub(&self) -> bool {
        self.name.starts_with("__pfx_") || self.name.starts_with("__cfi_")
    }
}

/// Parses `ADDRESS TYPE NAME` or `ADDRESS TYPE NAME\t[MODULE]`.
pub(crate) fn parse_kallsyms_line(line: &str) -> Option<KallsymsLine<'_>> {
    let (address, rest) = line.split_once(' ')?;
    let (kind, rest) = rest.split_once(' ')?;
    let [kind] = kind.as_bytes() else {
        return None;
    };
    let (name, module) = match rest.split_once('\t') {
        Some((name, module)) => (name, Some(parse_module(module)?)),
        None => (rest.trim_end(), None),
    };
    (!name.is_empty()).then_some(KallsymsLine {
        address,
        kind: *kind,
        name,
        module,
    })
}

/// `[MODULE]` -> `MODULE`.
fn parse_module(field: &str) -> Option<&str> {
    field.trim().strip_prefix('[')?.strip_suffix(']')
}

/// The lines of a kallsyms text whose names start with `prefix`, parsed.
///
/// Lines are `ADDRESS T NAME` with addresses of one width, so where the name starts is
/// known, and most lines are rejected on its first bytes without parsing (a scan reads
/// ~120k lines). A line of another shape is parsed in full.
pub(crate) fn lines_with_prefix<'a: 'p, 'p>(
    text: &'a str,
    prefix: &'p str,
) -> impl Iterator<Item = KallsymsLine<'a>> + 'p {
    let width = text.find(' ').unwrap_or(0);
    text.lines().filter_map(move |line| {
        let b = line.as_bytes();
        if !(b.len() > width + 3 && b[width] == b' ' && b[width + 2] == b' ') {
            return parse_kallsyms_line(line).filter(|sym| sym.name.starts_with(prefix));
        }
        let rest = &line[width + 3..];
        if !rest.starts_with(prefix) {
            return None;
        }
        let (name, module) = match rest.split_once('\t') {
            Some((name, module)) => (name, parse_module(module)),
            None => (rest.trim_end(), None),
        };
        Some(KallsymsLine {
            address: &line[..width],
            kind: b[width + 1],
            name,
            module,
        })
    })
}

/// Reads `/proc/kallsyms` (~120k lines; the kernel needs ~70 ms to produce them).
///
/// # Errors
/// The error of reading the file.
pub(crate) fn read() -> io::Result<String> {
    std::fs::read_to_string(PATH)
}

/// Every function named `name` in `text` (a `/proc/kallsyms` text), with its address
/// (0 when the addresses are hidden) and module. `name` may be `MOD:SYM`.
pub(crate) fn functions_named<'a>(text: &'a str, name: &str) -> Vec<(u64, Option<&'a str>)> {
    let (module, symbol) = match name.split_once(':') {
        Some((m, s)) => (Some(m), s),
        None => (None, name),
    };
    text.lines()
        .filter_map(parse_kallsyms_line)
        .filter(|l| l.is_function() && l.name == symbol && (module.is_none() || l.module == module))
        .map(|l| (u64::from_str_radix(l.address, 16).unwrap_or(0), l.module))
        .collect()
}

/// The function of `text` whose code holds `address`: its name, module and the offset of
/// `address` into it. `None` when no function starts at or below it, or the addresses are
/// hidden.
pub(crate) fn function_at(text: &str, address: u64) -> Option<(String, Option<String>, u64)> {
    let mut best: Option<(u64, KallsymsLine<'_>)> = None;
    for l in text.lines().filter_map(parse_kallsyms_line) {
        if !l.is_function() || l.is_stub() {
            continue;
        }
        let Ok(a) = u64::from_str_radix(l.address, 16) else {
            continue;
        };
        if a != 0 && a <= address && best.is_none_or(|(b, _)| a > b) {
            best = Some((a, l));
        }
    }
    let (start, l) = best?;
    Some((
        l.name.to_string(),
        l.module.map(str::to_string),
        address - start,
    ))
}

/// The function names of `/proc/kallsyms` (text symbols; `[module]` suffixes dropped).
///
/// # Errors
/// The error of reading `/proc/kallsyms`.
pub(crate) fn function_names() -> io::Result<HashSet<String>> {
    Ok(function_names_in(&read()?))
}

/// [`function_names`] of a given text.
fn function_names_in(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(parse_kallsyms_line)
        .filter(KallsymsLine::is_function)
        .map(|sym| sym.name.to_owned())
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A kallsyms text with one of each kind of line a listing has to tell apart.
    pub(crate) const KALLSYMS_TEXT: &str = "\
ffffffff81000000 T _stext
ffffffff81001000 T vfs_read
ffffffff81001040 t __pfx_vfs_write
ffffffff81001050 T vfs_write
ffffffff81002000 t vfs_dup.isra.0
ffffffff81003000 t vfs_dup.isra.0
ffffffff81004000 W vfs_weak
ffffffff81005000 D vfs_data
ffffffff81006000 t vfs_notrace
ffffffff81007000 t vfs_listed
ffffffffc0201000 t ftrace_trampoline\t[__builtin__ftrace]
ffffffffc0002000 t bpf_prog_865ad79b37bddc0f_vfs_x\t[bpf]
ffffffffc0010000 t vfs_mod_fn\t[ext4]
ffffffffc0020000 t vfs_twice\t[ext4]
ffffffffc0030000 t vfs_twice\t[xfs]
";

    #[test]
    fn kallsyms_lines() {
        assert_eq!(
            parse_kallsyms_line("ffffffff81001000 T vfs_read"),
            Some(KallsymsLine {
                address: "ffffffff81001000",
                kind: b'T',
                name: "vfs_read",
                module: None
            })
        );
        assert_eq!(
            parse_kallsyms_line("ffffffffc0010000 t ext4_fn\t[ext4]"),
            Some(KallsymsLine {
                address: "ffffffffc0010000",
                kind: b't',
                name: "ext4_fn",
                module: Some("ext4")
            })
        );
        // Without privilege the addresses are zero; names are still there.
        assert_eq!(
            parse_kallsyms_line("0000000000000000 t x").map(|l| l.name),
            Some("x")
        );
        assert_eq!(parse_kallsyms_line(""), None);
        assert_eq!(parse_kallsyms_line("ffff T"), None);
        assert_eq!(parse_kallsyms_line("ffff TT x"), None);
        assert_eq!(parse_kallsyms_line("ffff t x\tnot-a-module"), None);
    }

    #[test]
    fn prefixed_lines_parse_as_full_lines_do() {
        for prefix in ["", "vfs_", "vfs_twice", "bpf", "nothing"] {
            let fast: Vec<KallsymsLine<'_>> = lines_with_prefix(KALLSYMS_TEXT, prefix).collect();
            let full: Vec<KallsymsLine<'_>> = KALLSYMS_TEXT
                .lines()
                .filter_map(parse_kallsyms_line)
                .filter(|sym| sym.name.starts_with(prefix))
                .collect();
            assert_eq!(fast, full, "{prefix:?}");
        }
        assert_eq!(lines_with_prefix(KALLSYMS_TEXT, "vfs_twice").count(), 2);
        // A line of another width is parsed in full.
        let mixed = "ffff T a_one\nffffffff T a_two\n";
        let names: Vec<&str> = lines_with_prefix(mixed, "a_").map(|l| l.name).collect();
        assert_eq!(names, ["a_one", "a_two"]);
    }

    #[test]
    fn kinds_modules_and_stubs() {
        let sym = |line| parse_kallsyms_line(line).unwrap();
        assert!(sym("0 t f").is_function() && sym("0 W f").is_function());
        assert!(!sym("0 D f").is_function() && !sym("0 r f").is_function());
        assert!(sym("0 t f\t[bpf]").in_pseudo_module());
        assert!(sym("0 t f\t[__builtin__kprobes]").in_pseudo_module());
        assert!(!sym("0 t f\t[ext4]").in_pseudo_module() && !sym("0 t f").in_pseudo_module());
        assert!(sym("0 t __pfx_f").is_stub() && sym("0 t __cfi_f").is_stub());
        assert!(!sym("0 t f").is_stub());
    }

    #[test]
    fn function_names_of_a_text() {
        let names = function_names_in(KALLSYMS_TEXT);
        for name in ["_stext", "vfs_read", "vfs_weak", "vfs_mod_fn", "vfs_twice"] {
            assert!(names.contains(name), "{name}");
        }
        assert!(!names.contains("vfs_data"), "a data symbol");
        assert!(!names.iter().any(|n| n.contains('[')), "{names:?}");
        assert_eq!(names.len(), 12);
    }

    #[test]
    fn function_names_of_this_host() {
        let Ok(names) = function_names() else {
            eprintln!("probeset-skip: function_names_of_this_host: no {PATH} here");
            return;
        };
        assert!(names.len() > 10_000, "{}", names.len());
        assert!(names.contains("schedule"));
    }
}
