//! How the table names functions: demangled (Rust and C++), without Rust's hash suffix,
//! cut to a width that keeps the table aligned.

/// The widest name a table shows; longer ones end in an ellipsis.
pub const MAX_NAME: usize = 60;

/// `symbol` demangled when it is a Rust or C++ name (a `@VERSION` suffix kept), else as is.
pub fn demangle(symbol: &str) -> String {
    let (name, version) = match symbol.find('@') {
        Some(at) => symbol.split_at(at),
        None => (symbol, ""),
    };
    if let Ok(rust) = rustc_demangle::try_demangle(name) {
        // `{:#}` leaves out the hash suffix.
        return format!("{rust:#}{version}");
    }
    if name.starts_with("_Z") {
        if let Ok(Ok(text)) = cpp_demangle::Symbol::new(name).map(|s| s.demangle()) {
            return format!("{text}{version}");
        }
    }
    symbol.to_owned()
}

/// `name` cut to `MAX_NAME` characters, the last one an ellipsis when it was longer.
pub fn cap(name: &str) -> String {
    if name.chars().count() <= MAX_NAME {
        name.to_owned()
    } else {
        let mut short: String = name.chars().take(MAX_NAME - 1).collect();
        short.push('\u{2026}');
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demangled() {
        assert_eq!(demangle("getpid"), "getpid");
        assert_eq!(demangle("memcpy@GLIBC_2.2.5"), "memcpy@GLIBC_2.2.5");
        assert_eq!(
            demangle("_ZN4core3fmt5write17h0123456789abcdefE"),
            "core::fmt::write"
        );
        assert_eq!(demangle("_RNvCs1234_7mycrate3foo"), "mycrate::foo");
        assert_eq!(
            demangle("_ZNSt6vectorIiSaIiEE9push_backERKi"),
            "std::vector<int, std::allocator<int> >::push_back(int const&)"
        );
        assert_eq!(demangle("_Z3fooi@V1"), "foo(int)@V1");
        assert_eq!(demangle("_Znot_mangled"), "_Znot_mangled");
    }

    #[test]
    fn capped() {
        assert_eq!(cap("short"), "short");
        let long = "x".repeat(100);
        let capped = cap(&long);
        assert_eq!(capped.chars().count(), MAX_NAME);
        assert!(capped.ends_with('\u{2026}'));
        assert_eq!(cap(&"y".repeat(MAX_NAME)), "y".repeat(MAX_NAME));
    }
}
