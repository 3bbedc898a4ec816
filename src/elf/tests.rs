//! The tests of [`ElfSymbols`](super::ElfSymbols): loading, the cache by file identity,
//! resolving and matching.

use std::os::unix::fs::FileExt;
use std::time::{Duration, SystemTime};

use super::parse::tests::parsed_synthetic_executables;
use super::*;

mod fuzz;

/// A function of the test executable whose file offset the tests resolve.
/// (Found by its mangled name, which contains the function's name: `no_mangle` would
/// need unsafe code, which lives in `sys` only.)
#[inline(never)]
fn probeset_elf_test_target() -> u64 {
    std::hint::black_box(0x7072_6f62_6573_6574)
}

/// The mapping of this process that contains `address`: its start, file offset and
/// path, from `/proc/self/maps`.
fn mapping_of(address: u64) -> (u64, u64, PathBuf) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (start, end) = fields[0].split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        if (start..end).contains(&address) && fields.len() >= 6 {
            let offset = u64::from_str_radix(fields[2], 16).unwrap();
            return (start, offset, PathBuf::from(fields[5..].join(" ")));
        }
    }
    panic!("no file mapping contains {address:#x}");
}

/// `len` bytes of this process's memory at `address`, read through `/proc/self/mem`.
fn memory_at(address: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    File::open("/proc/self/mem")
        .unwrap()
        .read_exact_at(&mut bytes, address)
        .unwrap();
    bytes
}

fn file_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut bytes, offset)
        .unwrap();
    bytes
}

/// Checks that `symbol` in `path` resolves to the file offset that the running process
/// mapped at `address`, and that the file holds the bytes the process runs there.
fn check_resolves_to_loaded_code(path: &Path, symbol: &str, address: u64) {
    let symbols = ElfSymbols::load(path).unwrap();
    let offset = symbols.resolve(symbol).unwrap();
    let (start, map_offset, _) = mapping_of(address);
    assert_eq!(offset, address - start + map_offset, "{symbol} in {path:?}");

    let function = symbols
        .functions()
        .iter()
        .find(|f| f.name == symbol)
        .unwrap();
    assert_eq!(function.offset, offset);
    let len = usize::try_from(function.size.clamp(1, 32)).unwrap();
    assert_eq!(
        file_at(path, offset, len),
        memory_at(address, len),
        "{symbol} in {path:?}"
    );
}

fn address_of_test_target() -> u64 {
    let target: fn() -> u64 = probeset_elf_test_target;
    assert_eq!(target(), 0x7072_6f62_6573_6574);
    target as usize as u64
}

#[test]
fn resolves_own_function_to_its_file_offset() {
    let exe = std::env::current_exe().unwrap();
    let symbols = ElfSymbols::load(&exe).unwrap();
    let names: Vec<&str> = symbols
        .matching("*probeset_elf_test_target*")
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    check_resolves_to_loaded_code(&exe, names[0], address_of_test_target());
}

fn address_of_getpid() -> u64 {
    let getpid: unsafe extern "C" fn() -> libc::pid_t = libc::getpid;
    getpid as usize as u64
}

#[test]
fn resolves_libc_getpid_to_its_file_offset() {
    let address = address_of_getpid();
    let (_, _, path) = mapping_of(address);
    if !path.to_string_lossy().contains("libc") {
        eprintln!("skipped: getpid is mapped from {path:?}, not from a shared libc");
        return;
    }
    check_resolves_to_loaded_code(&path, "getpid", address);
}

#[test]
fn libc_lists_versions_and_globs() {
    let address = address_of_getpid();
    let (_, _, path) = mapping_of(address);
    if !path.to_string_lossy().contains("libc.so") {
        eprintln!("skipped: getpid is mapped from {path:?}, not from a shared libc");
        return;
    }
    let libc = ElfSymbols::load(&path).unwrap();
    assert!(libc
        .functions()
        .windows(2)
        .all(|w| (&w[0].name, w[0].offset) <= (&w[1].name, w[1].offset)));
    let names: Vec<&str> = libc.matching("str*cmp").map(|f| f.name.as_str()).collect();
    assert!(
        names.contains(&"strcmp") && names.contains(&"strncmp"),
        "{names:?}"
    );
    assert!(names.iter().all(|name| glob_match("str*cmp", name)));
    assert!(libc.matching("*").all(|f| f.size > 0));
    // glibc on x86_64 exports an old memcpy (an alias of memmove) as a hidden version:
    // the plain name must be the default version, and `@@` spells the same.
    if let Some(old) = libc
        .functions()
        .iter()
        .find(|f| f.name == "memcpy@GLIBC_2.2.5")
    {
        let memcpy = libc.resolve("memcpy").unwrap();
        assert_ne!(memcpy, old.offset);
        assert_eq!(libc.resolve("memcpy@@GLIBC_2.14").unwrap(), memcpy);
        assert_eq!(libc.resolve("memcpy@GLIBC_2.2.5").unwrap(), old.offset);
    }
}

#[test]
fn missing_file_is_not_found() {
    let e = ElfSymbols::load(Path::new("/nonexistent/probeset/libfoo.so")).unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    assert!(
        e.to_string().contains("/nonexistent/probeset/libfoo.so"),
        "{e}"
    );
}

/// A directory of this test's own under the system temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("probeset-elf-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn non_elf_is_invalid_input() {
    let dir = TempDir::new("non-elf");
    let text = dir.0.join("notes.txt");
    std::fs::write(&text, "not an ELF file, just text\n").unwrap();
    let e = ElfSymbols::load(&text).unwrap_err();
    assert!(e.is_invalid_input(), "{e}");
    assert!(e.to_string().contains("not an ELF file"), "{e}");

    let e = ElfSymbols::load(&dir.0).unwrap_err();
    assert!(e.is_invalid_input(), "{e}");
    assert!(e.to_string().contains("directory"), "{e}");
}

#[test]
fn missing_symbol_is_not_found() {
    let exe = std::env::current_exe().unwrap();
    let symbols = ElfSymbols::load(&exe).unwrap();
    let e = symbols.resolve("probeset_no_such_function").unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(e.to_string().contains("nm -D"), "{e}");
}

#[test]
fn cache_reuses_unchanged_files_and_rereads_changed_ones() {
    let dir = TempDir::new("cache");
    let binary = dir.0.join("true");
    std::fs::copy("/bin/true", &binary).unwrap();

    let first = ElfSymbols::load(&binary).unwrap();
    let again = ElfSymbols::load(&binary).unwrap();
    assert!(Arc::ptr_eq(&first, &again));

    // Same contents, new mtime.
    let file = File::options().write(true).open(&binary).unwrap();
    file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
        .unwrap();
    drop(file);
    let touched = ElfSymbols::load(&binary).unwrap();
    assert!(!Arc::ptr_eq(&first, &touched));
    assert_eq!(first.functions(), touched.functions());

    // Rewritten with one more byte.
    let mut contents = std::fs::read("/bin/true").unwrap();
    contents.push(0);
    std::fs::write(&binary, &contents).unwrap();
    let rewritten = ElfSymbols::load(&binary).unwrap();
    assert!(!Arc::ptr_eq(&touched, &rewritten));
    assert!(Arc::ptr_eq(&rewritten, &ElfSymbols::load(&binary).unwrap()));

    // Another path to the same file shares the parse but reports its own path.
    let link = dir.0.join("link");
    std::os::unix::fs::symlink(&binary, &link).unwrap();
    let linked = ElfSymbols::load(&link).unwrap();
    assert_eq!(linked.path(), link);
    assert!(Arc::ptr_eq(&linked.functions, &rewritten.functions));
}

fn function(name: &str, offset: u64, global: bool) -> ElfFunction {
    ElfFunction {
        name: name.to_owned(),
        offset,
        address: offset + 0x1000,
        size: 8,
        global,
        ifunc: false,
    }
}

#[test]
fn resolve_picks_among_same_named_functions() {
    let symbols = ElfSymbols {
        path: PathBuf::from("/bin/x"),
        code: Arc::default(),
        functions: Arc::from([
            function("dup", 0x10, false),
            function("dup", 0x20, true),
            function("locals", 0x30, false),
            function("locals", 0x40, false),
            function("old@V1", 0x50, true),
            function("same", 0x60, false),
            function("same", 0x60, true),
        ]),
    };
    assert_eq!(symbols.resolve("dup").unwrap(), 0x20);
    assert_eq!(symbols.resolve("same").unwrap(), 0x60);
    assert_eq!(symbols.resolve("old").unwrap(), 0x50);
    assert_eq!(symbols.resolve("old@V1").unwrap(), 0x50);
    let e = symbols.resolve("locals").unwrap_err();
    assert!(e.is_invalid_input(), "{e}");
    let message = e.to_string();
    assert!(
        message.contains("0x30, 0x40") && message.contains("Uprobe::at_offset"),
        "{message}"
    );
    assert!(symbols.resolve("loc").unwrap_err().is_not_found());
}

/// What the parse of a synthetic file resolves and matches, in every class and byte order.
#[test]
fn synthetic_files_resolve_and_match() {
    for (case, functions) in parsed_synthetic_executables() {
        let symbols = ElfSymbols {
            path: PathBuf::from("/synthetic"),
            functions: functions.into(),
            code: Arc::default(),
        };
        assert_eq!(
            symbols.resolve("alpha").unwrap(),
            0x110,
            "the global one; {case}"
        );
        assert_eq!(
            symbols.resolve("ifn").unwrap(),
            0x120,
            "size 0 resolves; {case}"
        );
        assert!(
            symbols.resolve("gamma").unwrap_err().is_not_found(),
            "{case}"
        );
        assert!(symbols.resolve("obj").unwrap_err().is_not_found(), "{case}");
        let matched: Vec<&str> = symbols.matching("*").map(|f| f.name.as_str()).collect();
        assert_eq!(
            matched,
            ["alpha", "alpha", "beta"],
            "size 0 is not matched; {case}"
        );
    }
}

#[test]
fn probe_offsets_of_real_binaries() {
    let exe = std::env::current_exe().unwrap();
    let symbols = ElfSymbols::load(&exe).unwrap();
    let size = std::fs::metadata(&exe).unwrap().len();
    assert_eq!(symbols.file_size(), size);
    let names: Vec<&ElfFunction> = symbols.matching("*probeset_elf_test_target*").collect();
    assert_eq!(symbols.check_probe_offset(names[0].offset), Ok(()));
    for offset in [0, 1, 63] {
        let reason = symbols.check_probe_offset(offset).unwrap_err();
        assert!(reason.contains("ELF header"), "{offset}: {reason}");
    }
    for offset in [size, size + 1, u64::MAX] {
        let reason = symbols.check_probe_offset(offset).unwrap_err();
        assert!(reason.contains(&format!("({size} bytes)")), "{reason}");
    }
    // The section headers are at the end of the file, in no segment.
    let reason = symbols.check_probe_offset(size - 1).unwrap_err();
    assert!(reason.contains("no executable PT_LOAD segment"), "{reason}");
    assert!(reason.contains(".."), "the segments are named: {reason}");

    let (_, _, libc) = mapping_of(address_of_getpid());
    if libc.to_string_lossy().contains("libc") {
        let libc = ElfSymbols::load(&libc).unwrap();
        let getpid = libc.resolve("getpid").unwrap();
        assert_eq!(libc.check_probe_offset(getpid), Ok(()));
        assert!(libc.check_probe_offset(0).is_err());
        assert!(libc.check_probe_offset(libc.file_size()).is_err());
    }
}

/// One file written under `dir`, from `bytes`.
fn write_file(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.0.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn probe_offsets_of_synthetic_binaries() {
    let dir = TempDir::new("offsets");
    for is64 in [false, true] {
        let bytes = super::parse::tests::synthetic_elf(is64, false, object::elf::ET_EXEC);
        let path = write_file(&dir, &format!("synthetic-{is64}"), &bytes);
        let symbols = ElfSymbols::load(&path).unwrap();
        let size = bytes.len() as u64;
        assert_eq!(symbols.file_size(), size);
        let header = if is64 { 64 } else { 52 };
        // The one executable PT_LOAD is file 0x100..0x200.
        for ok in [0x100, 0x110, 0x1ff] {
            assert_eq!(symbols.check_probe_offset(ok), Ok(()), "{ok:#x}");
        }
        for outside in [header, 0xff, 0x200, 0x204, size - 1] {
            let reason = symbols.check_probe_offset(outside).unwrap_err();
            assert!(reason.contains("0x100..0x200"), "{outside:#x}: {reason}");
        }
        assert!(symbols
            .check_probe_offset(header - 1)
            .unwrap_err()
            .contains(&format!("the first {header} bytes")));
        assert!(symbols
            .check_probe_offset(size)
            .unwrap_err()
            .contains("end of the file"));
    }
}

#[test]
fn load_from_parses_the_open_file_whatever_the_path_names() {
    let dir = TempDir::new("load-from");
    let synthetic = super::parse::tests::synthetic_elf(true, false, object::elf::ET_EXEC);
    let path = write_file(&dir, "binary", &synthetic);
    let held = File::open(&path).unwrap();
    // The path now names another file.
    let other = write_file(&dir, "other", &std::fs::read("/bin/true").unwrap());
    std::fs::rename(&other, &path).unwrap();

    let from_held = ElfSymbols::load_from(&path, &held).unwrap();
    assert_eq!(from_held.path(), path);
    assert_eq!(from_held.resolve("alpha").unwrap(), 0x110);
    assert_eq!(from_held.file_size(), synthetic.len() as u64);
    assert!(Arc::ptr_eq(
        &from_held,
        &ElfSymbols::load_from(&path, &held).unwrap()
    ));
    let from_path = ElfSymbols::load(&path).unwrap();
    assert!(from_path.resolve("alpha").unwrap_err().is_not_found());
    assert_ne!(from_path.file_size(), from_held.file_size());

    // What is not a regular file is refused from a descriptor too.
    let directory = File::open(&dir.0).unwrap();
    let e = ElfSymbols::load_from(&dir.0, &directory).unwrap_err();
    assert!(e.is_invalid_input(), "{e}");
    assert!(e.to_string().contains("directory"), "{e}");
}

#[test]
fn load_from_leaves_the_file_offset_alone() {
    use std::io::{Seek, SeekFrom};
    let mut file = File::open("/bin/true").unwrap();
    file.seek(SeekFrom::Start(7)).unwrap();
    ElfSymbols::load_from(Path::new("/bin/true"), &file).unwrap();
    assert_eq!(file.stream_position().unwrap(), 7);
}

#[test]
fn oversized_tables_are_refused_with_a_reason() {
    let dir = TempDir::new("oversized");
    let mut bytes = super::parse::tests::synthetic_elf(true, false, object::elf::ET_EXEC);
    // Section 4 (.symtab) of the synthetic file: its size field, 32 bytes into its header
    // at 0x400 + 4 * 64, says 2 GiB.
    let size_field = 0x400 + 4 * 64 + 32;
    bytes[size_field..size_field + 8].copy_from_slice(&(2u64 << 30).to_le_bytes());
    let path = write_file(&dir, "huge-symtab", &bytes);
    let e = ElfSymbols::load(&path).unwrap_err();
    assert!(e.is_invalid_input(), "{e}");
    assert!(e.to_string().contains("larger than the 1024 MiB"), "{e}");
    // Within 1 GiB but past the end of the file.
    bytes[size_field..size_field + 8].copy_from_slice(&(1u64 << 20).to_le_bytes());
    let path = write_file(&dir, "long-symtab", &bytes);
    let e = ElfSymbols::load(&path).unwrap_err();
    assert!(e.is_invalid_input(), "{e}");
    assert!(e.to_string().contains("past the end of the file"), "{e}");
}
