//! Shell globs, as discovery and [`ElfSymbols::matching`](crate::elf::ElfSymbols::matching)
//! take them: `*` matches any run of characters, `?` one character, `[abc]`, `[a-z]` one of
//! a set, `[!a]` (or `[^a]`) one character not in it, and `\` makes the next character
//! literal.
//!
//! [`glob_match`] is the general matcher. [`Glob`] tests the common shapes without it, and
//! [`literal_prefix`] is a cheap filter ahead of either: a kallsyms scan tests ~120k names.

/// The characters that make a glob more than a literal.
const GLOB_SPECIAL: [char; 4] = ['*', '?', '[', '\\'];

/// The literal start of a glob (up to its first special character): a cheap filter that
/// spares most names the full match.
pub(crate) fn literal_prefix(glob: &str) -> &str {
    let end = glob.find(GLOB_SPECIAL).unwrap_or(glob.len());
    &glob[..end]
}

/// A glob, with the common shapes (`*`, `abc`, `abc*`, `*abc`, `*abc*`) matched without
/// the general matcher: a kallsyms scan tests ~120k names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Glob<'a> {
    Any,
    Exact(&'a str),
    Prefix(&'a str),
    Suffix(&'a str),
    Contains(&'a str),
    General(&'a str),
}

impl<'a> Glob<'a> {
    pub(crate) fn new(glob: &'a str) -> Glob<'a> {
        let literal = |s: &str| !s.contains(GLOB_SPECIAL);
        let inner = glob.strip_prefix('*').and_then(|g| g.strip_suffix('*'));
        if glob.chars().all(|c| c == '*') {
            Glob::Any
        } else if literal(glob) {
            Glob::Exact(glob)
        } else if let Some(inner) = inner.filter(|i| literal(i)) {
            Glob::Contains(inner)
        } else if let Some(prefix) = glob.strip_suffix('*').filter(|p| literal(p)) {
            Glob::Prefix(prefix)
        } else if let Some(suffix) = glob.strip_prefix('*').filter(|s| literal(s)) {
            Glob::Suffix(suffix)
        } else {
            Glob::General(glob)
        }
    }

    /// Whether `name` matches, as [`glob_match`] says.
    pub(crate) fn matches(self, name: &str) -> bool {
        match self {
            Glob::Any => true,
            Glob::Exact(s) => name == s,
            Glob::Prefix(s) => name.starts_with(s),
            Glob::Suffix(s) => name.ends_with(s),
            Glob::Contains(s) => name.contains(s),
            Glob::General(g) => glob_match(g, name),
        }
    }
}

/// Whether `name` matches the shell glob `pattern` (see the [module docs](self)).
///
/// Runs in O(pattern × name) at worst: on a mismatch it backtracks only to the last `*`.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    let (mut p, mut n) = (0, 0);
    // Where to resume after the last `*`: the pattern after it, and the name position it
    // has swallowed up to.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if pattern.get(p) == Some(&'*') {
            p += 1;
            star = Some((p, n));
            continue;
        }
        if let Some(next) = match_one(&pattern, p, name[n]) {
            p = next;
            n += 1;
            continue;
        }
        match star {
            Some((after_star, swallowed)) => {
                p = after_star;
                n = swallowed + 1;
                star = Some((after_star, n));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Matches the pattern element at `pattern[p]` (not `*`) against `c`; returns the index of
/// the next element on a match.
fn match_one(pattern: &[char], p: usize, c: char) -> Option<usize> {
    let (matched, next) = match *pattern.get(p)? {
        '?' => (true, p + 1),
        '\\' if p + 1 < pattern.len() => (pattern[p + 1] == c, p + 2),
        '[' => match match_class(pattern, p + 1, c) {
            Some(class) => class,
            // No closing `]`: the `[` is literal.
            None => ('[' == c, p + 1),
        },
        literal => (literal == c, p + 1),
    };
    matched.then_some(next)
}

/// Matches the bracket expression whose contents start at `pattern[start]` against `c`;
/// returns whether it matched and the index after the closing `]`, or `None` if there is
/// no closing `]`. A `]` right after `[` or `[!` is a member, not the end.
fn match_class(pattern: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start;
    let negated = matches!(pattern.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let first = i;
    let mut matched = false;
    loop {
        let low = *pattern.get(i)?;
        if low == ']' && i > first {
            return Some((matched != negated, i + 1));
        }
        match (pattern.get(i + 1), pattern.get(i + 2)) {
            (Some('-'), Some(&high)) if high != ']' => {
                matched |= low <= c && c <= high;
                i += 3;
            }
            _ => {
                matched |= low == c;
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_match_cases() {
        let yes = [
            ("*", ""),
            ("*", "anything"),
            ("getpid", "getpid"),
            ("get*", "getpid"),
            ("*pid", "getpid"),
            ("g?tpid", "getpid"),
            ("*a*b*c*", "xxaxxbxxcxx"),
            ("a*b*c", "abbbc"),
            ("[abc]x", "bx"),
            ("[a-c]x", "cx"),
            ("[!a]x", "bx"),
            ("[^a]x", "bx"),
            ("[]]", "]"),
            ("[!]]", "a"),
            ("[a-]", "-"),
            ("[ab", "[ab"),
            ("a\\*", "a*"),
            ("\u{e9}?", "\u{e9}\u{e8}"),
            ("sys_*", "sys_read"),
        ];
        let no = [
            ("", "a"),
            ("getpid", "getppid"),
            ("get?", "getpid"),
            ("*a*b*c*", "xxaxxcxxbxx"),
            ("[abc]x", "dx"),
            ("[a-c]x", "dx"),
            ("[!a]x", "ax"),
            ("[]]", "a"),
            ("a\\*", "ab"),
            ("sys_*", "__x64_sys_read"),
            ("?", ""),
        ];
        for (pattern, name) in yes {
            assert!(
                glob_match(pattern, name),
                "{pattern:?} should match {name:?}"
            );
        }
        for (pattern, name) in no {
            assert!(
                !glob_match(pattern, name),
                "{pattern:?} should not match {name:?}"
            );
        }
    }

    #[test]
    fn glob_shapes_agree_with_the_general_matcher() {
        assert_eq!(Glob::new("*"), Glob::Any);
        assert_eq!(Glob::new("**"), Glob::Any);
        assert_eq!(Glob::new("vfs_read"), Glob::Exact("vfs_read"));
        assert_eq!(Glob::new("vfs_*"), Glob::Prefix("vfs_"));
        assert_eq!(Glob::new("*_read"), Glob::Suffix("_read"));
        assert_eq!(Glob::new("*read*"), Glob::Contains("read"));
        assert_eq!(Glob::new("*"), Glob::Any);
        assert_eq!(Glob::new("v?s_*"), Glob::General("v?s_*"));
        assert_eq!(Glob::new("a*b"), Glob::General("a*b"));
        assert_eq!(Glob::new("a\\*"), Glob::General("a\\*"));
        let names = [
            "",
            "vfs_read",
            "vfs_",
            "xvfs_read",
            "read",
            "a*b",
            "ab",
            "a*",
            "a",
        ];
        for glob in [
            "*", "**", "vfs_read", "vfs_*", "*_read", "*read*", "v?s_*", "a*b", "a\\*", "*a*", "a",
            "*b",
        ] {
            for name in names {
                assert_eq!(
                    Glob::new(glob).matches(name),
                    glob_match(glob, name),
                    "{glob:?} on {name:?}"
                );
            }
        }
    }

    #[test]
    fn glob_prefixes() {
        assert_eq!(literal_prefix("vfs_*"), "vfs_");
        assert_eq!(literal_prefix("*read"), "");
        assert_eq!(literal_prefix("tcp_[sr]*"), "tcp_");
        assert_eq!(literal_prefix("a\\*b"), "a");
        assert_eq!(literal_prefix("exact"), "exact");
        assert_eq!(literal_prefix("x?"), "x");
    }
}
