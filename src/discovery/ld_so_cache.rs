//! The dynamic linker's cache, `/etc/ld.so.cache`: parsed here, or read from
//! `ldconfig -p` when it cannot be.

use std::path::PathBuf;

/// The dynamic linker's cache.
pub(super) const LD_SO_CACHE: &str = "/etc/ld.so.cache";

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

/// The longest string an entry may name: a path (`PATH_MAX`, with its NUL). A crafted
/// cache whose entries all point at one long string would otherwise cost entries x length.
const MAX_STRING: usize = 4096;

/// At most this many bytes of keys and paths a cache may hold in all (a real one has
/// ~50 KB): the parse's memory stays bounded whatever the entries claim.
const MAX_STRINGS_TOTAL: usize = 16 << 20;

fn c_str_at(data: &[u8], at: usize) -> Option<&str> {
    let bytes = data.get(at..)?;
    let bytes = &bytes[..bytes.len().min(MAX_STRING)];
    let end = bytes.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&bytes[..end]).ok()
}

/// Parses `/etc/ld.so.cache` in glibc's "new" format (`glibc-ld.so.cache1.1`, the only
/// one since glibc 2.32), alone or behind an old-format (`ld.so-1.7.0`) part. String
/// offsets are relative to the start of the new-format header.
///
/// # Errors
/// Why the data is not such a cache (a wrong magic, a truncated table, a bad offset).
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
    let mut copied = 0usize;
    for i in 0..nlibs {
        let at = CACHE_HEADER_NEW + i * CACHE_ENTRY_NEW;
        let field = |n: usize| u32_at(new, at + 4 * n).ok_or("truncated entry");
        let flags = i32::from_ne_bytes(field(0)?.to_ne_bytes());
        let string = |offset: u32| {
            usize::try_from(offset)
                .ok()
                .and_then(|offset| c_str_at(new, offset))
                .ok_or_else(|| {
                    format!(
                        "entry {i}: bad string at {offset:#x} (outside the file, not UTF-8, \
                         or over {MAX_STRING} bytes)"
                    )
                })
        };
        let key = string(field(1)?)?;
        let path = string(field(2)?)?;
        copied += key.len() + path.len();
        if copied > MAX_STRINGS_TOTAL {
            return Err(format!(
                "the entries name more than {MAX_STRINGS_TOTAL} bytes of strings"
            ));
        }
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
pub(super) fn linker_cache() -> Vec<CacheEntry> {
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::panic::catch_unwind;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::elf::is_elf_file;

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
            .contains("bad string at"));
        assert!(parse_ld_so_cache(b"ld.so-1.7.0\0\0\0\0\0").is_err());
        assert!(parse_ld_so_cache(b"garbage").is_err());
    }

    /// Entries that all point at one long string cost at most `MAX_STRING` each, and a cache
    /// that names too many bytes in all is refused: linear, bounded work.
    #[test]
    fn entries_pointing_at_one_long_string_stay_cheap() {
        let n = 40_000;
        let strings_at = CACHE_HEADER_NEW + n * CACHE_ENTRY_NEW;
        let mut new = Vec::new();
        new.extend_from_slice(CACHE_MAGIC_NEW);
        new.extend_from_slice(&u32::try_from(n).unwrap().to_ne_bytes());
        new.extend_from_slice(&0u32.to_ne_bytes());
        new.resize(CACHE_HEADER_NEW, 0);
        for _ in 0..n {
            for v in [0x0303, strings_at, strings_at, 0] {
                new.extend_from_slice(&u32::try_from(v).unwrap().to_ne_bytes());
            }
            new.extend_from_slice(&0u64.to_ne_bytes());
        }
        let long = |len: usize| {
            let mut data = new.clone();
            data.extend(std::iter::repeat_n(b'a', len));
            data.push(0);
            data
        };
        let started = std::time::Instant::now();
        let err = parse_ld_so_cache(&long(1 << 20)).unwrap_err();
        assert!(err.contains("over 4096 bytes"), "{err}");
        let err = parse_ld_so_cache(&long(4000)).unwrap_err();
        assert!(err.contains("bytes of strings"), "{err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
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
        assert!(libc.iter().all(|e| is_elf_file(&e.path)), "{libc:?}");

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
    /// A mutation of `seed`: bytes, aligned 32-bit fields (counts, string offsets) set
    /// to edge values, a truncation, or a tail of garbage.
    fn mutated(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
        let mut data = seed.to_vec();
        for _ in 0..rng.gen_range(1..5) {
            match rng.gen_range(0..5) {
                0 if !data.is_empty() => {
                    let at = rng.gen_range(0..data.len());
                    data[at] = rng.gen();
                }
                1 | 2 if data.len() >= 4 => {
                    // Most fields are in the header and the first entries.
                    let fields = (data.len() / 4).min(if rng.gen() { 64 } else { usize::MAX });
                    let at = 4 * rng.gen_range(0..fields);
                    let len = u32::try_from(data.len()).unwrap();
                    let value = [0, 1, u32::MAX, u32::MAX / 24, len, len - 1, rng.gen()]
                        [rng.gen_range(0..7)];
                    data[at..at + 4].copy_from_slice(&value.to_ne_bytes());
                }
                3 => data.truncate(rng.gen_range(0..=data.len())),
                _ => data.extend((0..rng.gen_range(0..64)).map(|_| rng.gen::<u8>())),
            }
        }
        data
    }

    /// Random and mutated caches (the real one too, when there is one): each parses or is
    /// refused, without a panic, in well under 2 s.
    #[test]
    fn random_and_mutated_caches_parse_or_fail_cleanly() {
        let mut seeds = vec![synthetic_cache(false), synthetic_cache(true)];
        seeds.extend(std::fs::read(LD_SO_CACHE));
        let mut rng = StdRng::seed_from_u64(0x6c64_736f);
        let started = Instant::now();
        let (mut cases, mut parsed) = (0, 0);
        let mut check = |data: &[u8]| {
            let case = Instant::now();
            let outcome = catch_unwind(|| parse_ld_so_cache(data))
                .unwrap_or_else(|_| panic!("parse_ld_so_cache panicked on {data:x?}"));
            let took = case.elapsed();
            match outcome {
                Ok(_) => parsed += 1,
                Err(reason) => assert!(!reason.is_empty()),
            }
            assert!(took < Duration::from_secs(2), "{took:?} on {data:x?}");
            cases += 1;
        };
        for seed in &seeds {
            for _ in 0..1000 {
                check(&mutated(&mut rng, seed));
            }
        }
        // Random bytes, bare and behind each magic.
        for _ in 0..1000 {
            let magic = [CACHE_MAGIC_NEW, CACHE_MAGIC_OLD, b""][rng.gen_range(0..3)];
            let mut data = magic.to_vec();
            data.extend((0..rng.gen_range(0..512)).map(|_| rng.gen::<u8>()));
            check(&data);
        }
        eprintln!(
            "{cases} caches ({parsed} parsed) in {:?}",
            started.elapsed()
        );
    }
}
