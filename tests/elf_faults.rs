//! ELF loading under hostile input, through the public API: a 100 GiB sparse file, a large
//! file that is mostly padding (memory must not grow with the file), a file with 65 534
//! program headers and 200 000 symbols (no quadratic translation), and random funccount
//! patterns. Nothing here needs root or a tracefs; files go under the temporary directory.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use probeset::discovery;
use probeset::elf::ElfSymbols;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The tests measure this process's memory and time: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A file of this test's own under the temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("probeset-elf-faults-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A field of `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap()
}

/// How much the resident set grew at its peak while `f` ran, in KiB: the peak is reset
/// first (`clear_refs` 5) where that is allowed, else the growth of the old peak is all
/// that can be seen.
fn peak_growth_kib<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = if reset {
        status_kib("VmRSS:")
    } else {
        status_kib("VmHWM:")
    };
    let value = f();
    let growth = status_kib("VmHWM:").saturating_sub(before);
    if !reset {
        eprintln!("(the peak could not be reset: the growth shown is a lower bound)");
    }
    (value, growth)
}

/// A 64-bit little-endian ELF executable: `data_segments` non-executable `PT_LOAD`s (at
/// addresses no symbol has) before one executable `PT_LOAD` with `.text`, and `symbols`
/// functions in `.symtab`; the file is then extended to `file_size` (sparse).
struct Synthetic {
    data_segments: usize,
    symbols: usize,
    file_size: u64,
}

const TEXT_ADDRESS: u64 = 0x40_0000;
const TEXT_SIZE: u64 = 0x1_0000;

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn len64(bytes: &[u8]) -> u64 {
    u64::try_from(bytes.len()).unwrap()
}

/// One program header: type, flags, offset, address, file size, memory size.
fn program_header(out: &mut Vec<u8>, flags: u32, offset: u64, address: u64, filesz: u64) {
    put32(out, 1); // PT_LOAD
    put32(out, flags);
    for field in [offset, address, address, filesz, filesz.max(0x1000), 0x1000] {
        put64(out, field);
    }
}

/// One section header: name, type, flags, address, offset, size, link, info, entsize.
#[allow(clippy::too_many_arguments)]
fn section_header(
    out: &mut Vec<u8>,
    name: u32,
    sh_type: u32,
    flags: u64,
    address: u64,
    offset: u64,
    size: u64,
    link: u32,
    entsize: u64,
) {
    put32(out, name);
    put32(out, sh_type);
    for field in [flags, address, offset, size] {
        put64(out, field);
    }
    put32(out, link);
    put32(out, 1); // sh_info: the first global symbol
    put64(out, 8);
    put64(out, entsize);
}

impl Synthetic {
    /// The name of symbol `i`.
    fn name(i: usize) -> String {
        format!("synthetic_function_{i}")
    }

    /// The file offset of symbol `i`.
    fn offset(i: usize, text_offset: u64) -> u64 {
        text_offset + (u64::try_from(i).unwrap() * 16) % TEXT_SIZE
    }

    /// The file's contents up to its section headers, and where `.text` is.
    fn bytes(&self) -> (Vec<u8>, u64) {
        let phnum = self.data_segments + 1;
        let phoff = 64u64;
        let text_offset = (phoff + 56 * u64::try_from(phnum).unwrap()).next_multiple_of(0x1000);
        let mut strtab = vec![0u8];
        let mut symtab = vec![0u8; 24];
        for i in 0..self.symbols {
            put32(&mut symtab, u32::try_from(strtab.len()).unwrap());
            strtab.extend_from_slice(Synthetic::name(i).as_bytes());
            strtab.push(0);
            symtab.push(0x12); // STB_GLOBAL, STT_FUNC
            symtab.push(0);
            put16(&mut symtab, 1);
            put64(
                &mut symtab,
                Synthetic::offset(i, text_offset) + TEXT_ADDRESS,
            );
            put64(&mut symtab, 16);
        }
        let shstrtab = b"\0.text\0.symtab\0.strtab\0.shstrtab\0";
        let symtab_offset = text_offset + TEXT_SIZE;
        let strtab_offset = symtab_offset + len64(&symtab);
        let shstrtab_offset = strtab_offset + len64(&strtab);
        let shoff = (shstrtab_offset + len64(shstrtab)).next_multiple_of(8);

        let mut out = Vec::new();
        out.extend_from_slice(b"\x7fELF\x02\x01\x01");
        out.resize(16, 0);
        put16(&mut out, 2); // ET_EXEC
        put16(&mut out, 62); // EM_X86_64
        put32(&mut out, 1);
        put64(&mut out, TEXT_ADDRESS + text_offset);
        put64(&mut out, phoff);
        put64(&mut out, shoff);
        put32(&mut out, 0);
        for field in [64, 56, u16::try_from(phnum).unwrap(), 64, 5, 4] {
            put16(&mut out, field);
        }
        for i in 0..self.data_segments {
            let address = 0x1000_0000 + 0x1000 * u64::try_from(i).unwrap();
            program_header(&mut out, 4, 0, address, 0); // PF_R, no file bytes
        }
        program_header(
            &mut out,
            5,
            text_offset,
            TEXT_ADDRESS + text_offset,
            TEXT_SIZE,
        );
        out.resize(usize::try_from(text_offset).unwrap(), 0);
        out.resize(usize::try_from(symtab_offset).unwrap(), 0xc3); // ret
        out.extend_from_slice(&symtab);
        out.extend_from_slice(&strtab);
        out.extend_from_slice(shstrtab);
        out.resize(usize::try_from(shoff).unwrap(), 0);
        let sections = [
            (0, 0, 0, 0, 0, 0, 0, 0),
            (
                1,
                1,
                6,
                TEXT_ADDRESS + text_offset,
                text_offset,
                TEXT_SIZE,
                0,
                0,
            ),
            (7, 2, 0, 0, symtab_offset, len64(&symtab), 3, 24),
            (15, 3, 0, 0, strtab_offset, len64(&strtab), 0, 0),
            (23, 3, 0, 0, shstrtab_offset, len64(shstrtab), 0, 0),
        ];
        for (name, sh_type, flags, address, offset, size, link, entsize) in sections {
            section_header(
                &mut out, name, sh_type, flags, address, offset, size, link, entsize,
            );
        }
        (out, text_offset)
    }

    /// Writes the file at `path`; returns where `.text` is.
    fn write(&self, path: &std::path::Path) -> u64 {
        let (bytes, text_offset) = self.bytes();
        let file = File::create(path).unwrap();
        file.write_all_at(&bytes, 0).unwrap();
        file.set_len(self.file_size.max(len64(&bytes))).unwrap();
        text_offset
    }
}

#[test]
fn a_100_gib_sparse_file_loads_or_fails_cleanly() {
    let _serial = serial();
    let sparse = TempFile::new("sparse-elf");
    let text_offset = Synthetic {
        data_segments: 1,
        symbols: 10,
        file_size: 100 << 30,
    }
    .write(&sparse.0);
    let (loaded, growth) = peak_growth_kib(|| ElfSymbols::load(&sparse.0));
    let symbols = loaded.unwrap();
    eprintln!("100 GiB sparse ELF: peak RSS growth {growth} KiB");
    assert_eq!(
        symbols.resolve(&Synthetic::name(3)).unwrap(),
        Synthetic::offset(3, text_offset)
    );
    assert!(growth < 8 << 10, "{growth} KiB");

    let garbage = TempFile::new("sparse-garbage");
    let file = File::create(&garbage.0).unwrap();
    file.write_all_at(b"\x7fELF\x02\x01\x01garbage, not a header", 0)
        .unwrap();
    file.set_len(100 << 30).unwrap();
    let e = ElfSymbols::load(&garbage.0).unwrap_err();
    assert!(e.is_invalid_input(), "{e}");
    eprintln!("100 GiB sparse garbage: {e}");

    // A symbol table that claims 50 GiB of the file: refused, not allocated.
    let claims = TempFile::new("sparse-claims");
    let (mut bytes, _) = Synthetic {
        data_segments: 1,
        symbols: 10,
        file_size: 0,
    }
    .bytes();
    let shoff = usize::try_from(u64::from_le_bytes(bytes[40..48].try_into().unwrap())).unwrap();
    let symtab_size = shoff + 2 * 64 + 32;
    bytes[symtab_size..symtab_size + 8].copy_from_slice(&(50u64 << 30).to_le_bytes());
    let file = File::create(&claims.0).unwrap();
    file.write_all_at(&bytes, 0).unwrap();
    file.set_len(100 << 30).unwrap();
    let (loaded, growth) = peak_growth_kib(|| ElfSymbols::load(&claims.0));
    let e = loaded.unwrap_err();
    eprintln!("100 GiB sparse ELF claiming a 50 GiB table: {e}; peak RSS growth {growth} KiB");
    assert!(e.is_invalid_input(), "{e}");
    assert!(e.to_string().contains("larger than the 1024 MiB"), "{e}");
    assert!(growth < 8 << 10, "{growth} KiB");
}

#[test]
fn memory_does_not_grow_with_the_file_size() {
    let _serial = serial();
    let big = TempFile::new("padded-elf");
    let size: u64 = 64 << 20;
    let text_offset = Synthetic {
        data_segments: 1,
        symbols: 1000,
        file_size: size,
    }
    .write(&big.0);
    // Padding that is really there, not a hole: a reader of the whole file pays for it.
    let file = File::options().write(true).open(&big.0).unwrap();
    let chunk = vec![0x90u8; 1 << 20];
    let mut at = size / 2;
    while at < size {
        file.write_all_at(&chunk, at).unwrap();
        at += len64(&chunk);
    }
    drop(file);
    let (loaded, growth) = peak_growth_kib(|| ElfSymbols::load(&big.0));
    let symbols = loaded.unwrap();
    eprintln!(
        "{} MiB ELF with {} functions: peak RSS growth {growth} KiB",
        size >> 20,
        symbols.functions().len()
    );
    assert_eq!(
        symbols.resolve(&Synthetic::name(999)).unwrap(),
        Synthetic::offset(999, text_offset)
    );
    assert!(growth < 8 << 10, "{growth} KiB for a {size}-byte file");
}

#[test]
fn many_program_headers_and_symbols_load_in_linear_time() {
    let _serial = serial();
    let many = TempFile::new("many-headers");
    let spec = Synthetic {
        data_segments: 65_533,
        symbols: 200_000,
        file_size: 0,
    };
    let text_offset = spec.write(&many.0);
    let started = Instant::now();
    let symbols = ElfSymbols::load(&many.0).unwrap();
    let took = started.elapsed();
    eprintln!(
        "65 534 program headers, {} functions: loaded in {took:?}",
        symbols.functions().len()
    );
    assert_eq!(symbols.functions().len(), 200_000);
    assert_eq!(
        symbols.resolve(&Synthetic::name(199_999)).unwrap(),
        Synthetic::offset(199_999, text_offset)
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
}

/// A random string over an alphabet that exercises the pattern syntax.
fn random_pattern(rng: &mut StdRng) -> String {
    const PIECES: &[&str] = &[
        "a",
        "Z",
        "0",
        "_",
        ".",
        "*",
        "?",
        "[",
        "]",
        "!",
        "^",
        "-",
        "\\",
        ":",
        "/",
        " ",
        ";",
        "é",
        "\u{0}",
        "\u{10ffff}",
        "::",
        "c:",
        "vfs_",
        "[a-z]",
        "[!",
    ];
    let len = rng.gen_range(0..64);
    (0..len)
        .map(|_| PIECES[rng.gen_range(0..PIECES.len())])
        .collect()
}

#[test]
fn random_patterns_parse_or_fail_cleanly() {
    let mut rng = StdRng::seed_from_u64(0x7061_7474);
    let started = Instant::now();
    let mut cases = 0;
    let mut accepted = 0;
    for _ in 0..20_000 {
        let pattern = random_pattern(&mut rng);
        let case = Instant::now();
        match discovery::parse_pattern(&pattern) {
            Ok(parsed) => {
                accepted += 1;
                // A parse shows itself as what was parsed.
                assert_eq!(parsed.to_string(), pattern);
            }
            Err(e) => assert!(e.is_invalid_input(), "{pattern:?}: {e}"),
        }
        assert!(case.elapsed() < Duration::from_secs(2), "{pattern:?}");
        cases += 1;
    }
    // A few long ones: a megabyte of stars, of colons, of brackets.
    for piece in ["*", ":", "[", "a:*", "\u{10ffff}"] {
        let pattern = piece.repeat(1 << 20);
        let case = Instant::now();
        let _ = discovery::parse_pattern(&pattern);
        assert!(
            case.elapsed() < Duration::from_secs(2),
            "{piece:?} repeated"
        );
        cases += 1;
    }
    eprintln!(
        "{cases} random patterns ({accepted} accepted) in {:?}",
        started.elapsed()
    );
}
