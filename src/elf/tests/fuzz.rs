//! Fuzz-style tests of the loader, seeded and bounded: real ELF files (this test
//! executable, `/bin/true`, the C library) and synthetic ones, with bytes and header fields
//! mutated, truncated, or extended to 100 GiB, parsed through the same bounded reader as a
//! file. Each case must give functions or a reason, in well under 2 s, and the process's
//! peak memory must stay within a few tens of MB over the run.

use std::io;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::super::parse::parse;
use super::super::parse::tests::synthetic_elf;
use super::super::read::{read_file, Failure, ReadAt};
use super::{address_of_getpid, mapping_of};

/// A file of `len` bytes: `base`, then zeros (a sparse tail), with `patches` over it.
struct Patched<'a> {
    base: &'a [u8],
    len: u64,
    patches: &'a [(u64, Vec<u8>)],
}

impl Patched<'_> {
    /// The bytes at `at..at + buf.len()`.
    fn fill(&self, at: u64, buf: &mut [u8]) {
        buf.fill(0);
        let end = at + buf.len() as u64;
        let copy = |from: u64, bytes: &[u8], buf: &mut [u8]| {
            let start = from.max(at);
            let stop = (from + bytes.len() as u64).min(end);
            if start < stop {
                let (src, dst) = (to_usize(start - from), to_usize(start - at));
                let n = to_usize(stop - start);
                buf[dst..dst + n].copy_from_slice(&bytes[src..src + n]);
            }
        };
        copy(0, self.base, buf);
        for (offset, bytes) in self.patches {
            copy(*offset, bytes, buf);
        }
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap()
}

impl ReadAt for Patched<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n = buf.len().min(to_usize(self.len.saturating_sub(offset)));
        self.fill(offset, &mut buf[..n]);
        Ok(n)
    }
}

/// (offset, width) of fields.
type Fields = Vec<(u64, usize)>;

/// Where a seed's header fields and tables are, for mutations aimed at them.
struct Shape {
    big_endian: bool,
    /// (offset, width) of the fields of the ELF header, the program headers and the
    /// section headers (the first 64 of each).
    fields: Fields,
    /// The file ranges of its sections' contents.
    tables: Vec<Range<u64>>,
}

/// Reads an unsigned field of `width` bytes.
fn field(data: &[u8], at: u64, width: usize, big_endian: bool) -> Option<u64> {
    let bytes = data.get(to_usize(at)..to_usize(at) + width)?;
    let mut value = 0u64;
    for i in 0..width {
        let byte = if big_endian {
            bytes[i]
        } else {
            bytes[width - 1 - i]
        };
        value = value << 8 | u64::from(byte);
    }
    Some(value)
}

/// Writes `value` as an unsigned field of `width` bytes (truncated to it).
fn encode(value: u64, width: usize, big_endian: bool) -> Vec<u8> {
    let bytes = value.to_le_bytes()[..width].to_vec();
    if big_endian {
        bytes.into_iter().rev().collect()
    } else {
        bytes
    }
}

/// The ELF header's fields (offset, width) that locate and count the tables, by class.
fn header_fields(is64: bool) -> Fields {
    let word = if is64 { 8 } else { 4 };
    let (phoff, shoff, ehsize) = if is64 { (32, 40, 52) } else { (28, 32, 40) };
    let mut fields = vec![(16, 2), (phoff, word), (shoff, word)];
    fields.extend((0..6).map(|i| (ehsize + 2 * i, 2)));
    fields
}

/// The fields (offset within the entry, width) of a program header and a section header.
fn entry_fields(is64: bool) -> (Fields, Fields) {
    if is64 {
        let program = vec![(0, 4), (4, 4), (8, 8), (16, 8), (32, 8), (40, 8)];
        let section = [
            (0, 4),
            (4, 4),
            (8, 8),
            (16, 8),
            (24, 8),
            (32, 8),
            (40, 4),
            (44, 4),
        ];
        (program, [&section[..], &[(56, 8)]].concat())
    } else {
        let program = (0..7).map(|i| (4 * i, 4)).collect();
        let section = (0..10).map(|i| (4 * i, 4)).collect();
        (program, section)
    }
}

fn shape(data: &[u8]) -> Option<Shape> {
    if !data.starts_with(b"\x7fELF") || data.len() < 64 {
        return None;
    }
    let is64 = data[4] == 2;
    let big_endian = data[5] == 2;
    let at = |offset: u64, width: usize| field(data, offset, width, big_endian);
    let (phoff, shoff, ehsize) = if is64 { (32, 40, 52) } else { (28, 32, 40) };
    let width = if is64 { 8 } else { 4 };
    let (phoff, shoff) = (at(phoff, width)?, at(shoff, width)?);
    let [phentsize, phnum, shentsize, shnum] = [2, 4, 6, 8].map(|i| at(ehsize + i, 2).unwrap_or(0));
    let (program, section) = entry_fields(is64);
    let mut fields = header_fields(is64);
    let mut tables = Vec::new();
    for i in 0..phnum.min(64) {
        let entry = phoff + i * phentsize;
        fields.extend(program.iter().map(|&(o, w)| (entry + o, w)));
    }
    let (offset_at, size_at) = if is64 { (24, 32) } else { (16, 20) };
    for i in 0..shnum.min(64) {
        let entry = shoff + i * shentsize;
        fields.extend(section.iter().map(|&(o, w)| (entry + o, w)));
        if let (Some(offset), Some(size)) =
            (at(entry + offset_at, width), at(entry + size_at, width))
        {
            let end = offset.saturating_add(size).min(data.len() as u64);
            if offset < end {
                tables.push(offset..end);
            }
        }
    }
    fields.retain(|&(offset, width)| offset + width as u64 <= data.len() as u64);
    Some(Shape {
        big_endian,
        fields,
        tables,
    })
}

/// A value worth putting in a field: edges, near-misses of the original and of the file
/// size, wrapping ones, random ones. Sizes between 64 KiB and 4 GiB come only from the
/// original and the file size, so that an accepted table is never far larger than the
/// seed (the run's memory is measured).
fn interesting(rng: &mut StdRng, original: u64, len: u64) -> u64 {
    let k = rng.gen_range(1..64);
    match rng.gen_range(0..12) {
        0 => 0,
        1 => 1,
        2 => original.wrapping_add(k),
        3 => original.wrapping_sub(k),
        4 => len,
        5 => len.wrapping_sub(k),
        6 => u64::MAX - k,
        7 => u64::from(u32::MAX) - k,
        8 => [0xffff, 0x8000_0000, 0x7fff_ffff][rng.gen_range(0..3)],
        9 => 1 << rng.gen_range(32..64),
        10 => rng.gen_range(0..0x1_0000),
        _ => rng.gen(),
    }
}

/// One mutated case of a seed: its length, its patches, and what was done, to reproduce.
struct Case {
    len: u64,
    patches: Vec<(u64, Vec<u8>)>,
    what: String,
}

fn mutate(rng: &mut StdRng, seed: &[u8], shape: Option<&Shape>) -> Case {
    let seed_len = seed.len() as u64;
    let mut case = Case {
        len: seed_len,
        patches: Vec::new(),
        what: String::new(),
    };
    match rng.gen_range(0..8) {
        0 => case.len = rng.gen_range(0..seed_len.max(1)),
        1 => case.len = seed_len + rng.gen_range(1..1 << 20),
        2 => case.len = 100 << 30,
        _ => {}
    }
    let edits = rng.gen_range(1..5);
    for _ in 0..edits {
        let kind = rng.gen_range(0..4);
        match (kind, shape) {
            (0 | 1, Some(shape)) if !shape.fields.is_empty() => {
                let (at, width) = shape.fields[rng.gen_range(0..shape.fields.len())];
                let original = field(seed, at, width, shape.big_endian).unwrap_or(0);
                let value = interesting(rng, original, case.len);
                case.patches
                    .push((at, encode(value, width, shape.big_endian)));
            }
            (2, Some(shape)) if !shape.tables.is_empty() => {
                let table = &shape.tables[rng.gen_range(0..shape.tables.len())];
                let at = rng.gen_range(table.clone());
                case.patches
                    .push((at, vec![rng.gen(); rng.gen_range(1..9)]));
            }
            _ if seed_len > 0 => {
                let at = rng.gen_range(0..seed_len);
                case.patches.push((at, vec![rng.gen()]));
            }
            _ => {}
        }
    }
    case.what = format!("length {:#x}, patches {:x?}", case.len, case.patches);
    case
}

/// The process's peak resident set (`VmHWM`), in KiB.
fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line["VmHWM:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap()
}

/// Runs `cases` mutations of `seed`; returns how many parsed and the longest case.
fn fuzz(name: &str, seed: &[u8], cases: usize, rng: &mut StdRng) -> (usize, Duration) {
    let shape = shape(seed);
    let (mut parsed, mut longest) = (0, Duration::ZERO);
    for _ in 0..cases {
        let case = mutate(rng, seed, shape.as_ref());
        let reader = Patched {
            base: seed,
            len: case.len,
            patches: &case.patches,
        };
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            read_file(&reader, case.len, |data| parse(data, case.len))
        }))
        .unwrap_or_else(|_| panic!("{name}: the parse panicked on {}", case.what));
        let took = started.elapsed();
        match outcome {
            Ok(_) => parsed += 1,
            Err(Failure::Invalid(reason)) => assert!(!reason.is_empty(), "{name}: {}", case.what),
            Err(Failure::Read(e)) => panic!("{name}: {e} on {}", case.what),
        }
        assert!(
            took < Duration::from_secs(2),
            "{name}: {took:?} on {}",
            case.what
        );
        longest = longest.max(took);
    }
    (parsed, longest)
}

/// The seeds: real files that are here, and the synthetic files in each class and byte
/// order, with how many cases each gets.
fn seeds() -> Vec<(String, Vec<u8>, usize)> {
    let mut seeds = Vec::new();
    let mut real = vec![
        (std::env::current_exe().unwrap(), 150),
        (PathBuf::from("/bin/true"), 1000),
    ];
    let (_, _, libc) = mapping_of(address_of_getpid());
    if libc.to_string_lossy().contains("libc") {
        real.push((libc, 600));
    } else {
        eprintln!("no shared C library mapped here: fuzzing without it");
    }
    for (path, cases) in real {
        let bytes = std::fs::read(&path).unwrap();
        seeds.push((path.display().to_string(), bytes, cases));
    }
    for is64 in [false, true] {
        for big_endian in [false, true] {
            let name = format!("synthetic (64-bit: {is64}, big endian: {big_endian})");
            seeds.push((
                name,
                synthetic_elf(is64, big_endian, object::elf::ET_EXEC),
                500,
            ));
        }
    }
    seeds
}

#[test]
fn mutated_files_parse_or_fail_cleanly_in_bounded_time_and_memory() {
    let seeds = seeds();
    let mut rng = StdRng::seed_from_u64(0x656c_6621);
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let peak_before = peak_kib();
    let started = Instant::now();
    let (mut total, mut parsed_total, mut longest) = (0, 0, Duration::ZERO);
    for (name, seed, cases) in &seeds {
        let (parsed, slowest) = fuzz(name, seed, *cases, &mut rng);
        eprintln!("{name}: {cases} cases, {parsed} parsed, slowest {slowest:?}");
        total += cases;
        parsed_total += parsed;
        longest = longest.max(slowest);
    }
    let growth = peak_kib().saturating_sub(peak_before);
    eprintln!(
        "{total} cases ({parsed_total} parsed) in {:?}, slowest {longest:?}; peak RSS grew \
         by {growth} KiB{}",
        started.elapsed(),
        if reset {
            ""
        } else {
            " (peak not reset: a lower bound)"
        }
    );
    // The peak is the whole test process's: tests running beside this one add their own
    // (tens of MB). A loader that allocated what the mutated headers claim (up to 100 GiB)
    // would abort or grow by gigabytes.
    assert!(growth < 256 << 10, "peak RSS grew by {growth} KiB");
}
