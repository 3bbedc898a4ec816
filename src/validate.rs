//! Everything that is checked before the kernel is asked.

/// Whether `s` is a kernel symbol name as `/proc/kallsyms` lists them:
/// `^[a-zA-Z_][0-9a-zA-Z_.]*$` (GCC's `.isra.0`/`.constprop.0` suffixes have dots).
pub(crate) fn is_valid_symbol(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols() {
        for ok in [
            "vfs_read",
            "_x",
            "udp_send_skb.isra.52",
            "a1",
            "__x64_sys_getpid",
        ] {
            assert!(is_valid_symbol(ok), "{ok}");
        }
        for bad in ["", "1abc", ".x", "a b", "a-b", "mod:sym", "a\0b", "é"] {
            assert!(!is_valid_symbol(bad), "{bad:?}");
        }
    }
}
