//! The `funccount` pattern syntax: `vfs_*` (kernel), `c:str*` or `/path/to/bin:GLOB`
//! (user space), and the checks every glob of discovery goes through.

use std::fmt;

use crate::error::Error;

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
        /// A library name as [`resolve_library`](super::resolve_library) takes it, or a path.
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

/// Rejects an empty glob.
///
/// # Errors
/// [`Error::is_invalid_input`] for an empty glob.
pub(super) fn check_glob(glob: &str) -> Result<(), Error> {
    if glob.is_empty() {
        return Err(Error::invalid(
            "glob \"\"",
            "the glob is empty; use * for everything",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
