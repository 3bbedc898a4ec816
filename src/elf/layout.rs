//! Where an ELF file's bytes go: how its virtual addresses map to file offsets (for
//! symbols), and which file offsets hold code a uprobe can fire on.
//!
//! Both answer in O(log n) per question: the ranges are sorted once, then searched.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::ops::Range;

/// An address range that is backed by the file (a `PT_LOAD` segment or an allocated
/// section).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Mapped {
    pub(super) address: u64,
    pub(super) size: u64,
    pub(super) offset: u64,
    pub(super) executable: bool,
}

impl Mapped {
    /// The addresses this range translates, `[start, end)`: those within its size whose
    /// file offset does not overflow. Wider than `u64` so that a range may end at 2⁶⁴.
    fn reach(&self) -> Range<u128> {
        let start = u128::from(self.address);
        let room = u128::from(u64::MAX - self.offset) + 1;
        start..start + u128::from(self.size).min(room)
    }
}

/// A run of addresses that one range (an index into [`Layout::ranges`]) translates.
#[derive(Debug)]
struct Piece {
    addresses: Range<u128>,
    range: usize,
}

/// How an ELF file's virtual addresses map to its file offsets.
///
/// An address goes through the first `PT_LOAD` segment that contains it, executable ones
/// first, or else through the first allocated section that contains it, executable ones
/// first ("first" in the file's order). That precedence is resolved once, into disjoint
/// pieces sorted by address, so a translation is a binary search.
#[derive(Debug)]
pub(super) struct Layout {
    /// The ranges in order of precedence.
    ranges: Vec<Mapped>,
    /// Disjoint, ascending; each names the range that wins there.
    pieces: Vec<Piece>,
}

impl Layout {
    /// The layout of these `PT_LOAD` segments and allocated sections, each in file order.
    pub(super) fn new(segments: &[Mapped], sections: &[Mapped]) -> Layout {
        let mut ranges = Vec::with_capacity(segments.len() + sections.len());
        for group in [segments, sections] {
            for executable in [true, false] {
                ranges.extend(group.iter().filter(|r| r.executable == executable));
            }
        }
        let pieces = pieces(&ranges);
        Layout { ranges, pieces }
    }

    /// The file offset of `address`, if a segment or section translates it.
    pub(super) fn file_offset(&self, address: u64) -> Option<u64> {
        let wanted = u128::from(address);
        let at = self.pieces.partition_point(|p| p.addresses.end <= wanted);
        let piece = self.pieces.get(at)?;
        if piece.addresses.start > wanted {
            return None;
        }
        let range = &self.ranges[piece.range];
        // Within the range's reach, so neither can overflow.
        Some(range.offset + (address - range.address))
    }
}

/// Splits the addresses of `ranges` into disjoint pieces, each given to the range of
/// lowest index that covers it: a sweep over the ranges' ends with the set of open ones.
fn pieces(ranges: &[Mapped]) -> Vec<Piece> {
    // (where, is an end, which): at one address, ends are applied before starts.
    let mut events: Vec<(u128, bool, usize)> = Vec::with_capacity(2 * ranges.len());
    for (index, range) in ranges.iter().enumerate() {
        let reach = range.reach();
        if !reach.is_empty() {
            events.push((reach.start, false, index));
            events.push((reach.end, true, index));
        }
    }
    events.sort_unstable_by_key(|&(at, is_end, _)| (at, !is_end));
    let mut open = BTreeSet::new();
    let mut pieces: Vec<Piece> = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let at = events[i].0;
        while let Some(&(_, is_end, index)) = events.get(i).filter(|e| e.0 == at) {
            if is_end {
                open.remove(&index);
            } else {
                open.insert(index);
            }
            i += 1;
        }
        let (Some(&winner), Some(&(next, _, _))) = (open.first(), events.get(i)) else {
            continue;
        };
        match pieces.last_mut() {
            Some(last) if last.range == winner && last.addresses.end == at => {
                last.addresses.end = next;
            }
            _ => pieces.push(Piece {
                addresses: at..next,
                range: winner,
            }),
        }
    }
    pieces
}

/// Which file offsets of a file a uprobe can fire on: past the ELF header, before the end
/// of the file, and (when the file has `PT_LOAD` segments) inside an executable one.
#[derive(Debug, Default)]
pub(super) struct CodeRanges {
    /// The file's size in bytes, when it was parsed.
    pub(super) file_size: u64,
    /// The ELF header's size (`e_ehsize`, at least the header's own structure).
    pub(super) header_size: u64,
    /// Whether the file has any `PT_LOAD` segment.
    pub(super) has_load_segments: bool,
    /// The file ranges (`p_offset`, `p_filesz`) of the executable `PT_LOAD` segments, in
    /// file order.
    pub(super) executable: Vec<Range<u64>>,
    /// The same, sorted and merged, for the search.
    merged: Vec<Range<u64>>,
}

/// How many segment ranges a refusal lists before it counts the rest.
const LISTED_SEGMENTS: usize = 4;

impl CodeRanges {
    /// The code ranges of a file of `file_size` bytes.
    pub(super) fn new(
        file_size: u64,
        header_size: u64,
        has_load_segments: bool,
        executable: Vec<Range<u64>>,
    ) -> CodeRanges {
        let mut sorted: Vec<Range<u64>> = executable
            .iter()
            .filter(|r| !r.is_empty())
            .cloned()
            .collect();
        sorted.sort_unstable_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(sorted.len());
        for range in sorted {
            match merged.last_mut() {
                Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
                _ => merged.push(range),
            }
        }
        CodeRanges {
            file_size,
            header_size,
            has_load_segments,
            executable,
            merged,
        }
    }

    /// Whether a uprobe at `offset` can ever fire; the error is the reason it cannot.
    ///
    /// # Errors
    /// An offset inside the ELF header, at or past the end of the file, or outside every
    /// executable `PT_LOAD` segment of a file that has `PT_LOAD` segments.
    pub(super) fn check(&self, offset: u64) -> Result<(), String> {
        if offset < self.header_size {
            return Err(format!(
                "file offset {offset:#x} is inside the ELF header (the first {} bytes of \
                 the file), where no instruction is",
                self.header_size
            ));
        }
        if offset >= self.file_size {
            return Err(format!(
                "file offset {offset:#x} is at or past the end of the file ({} bytes)",
                self.file_size
            ));
        }
        if !self.has_load_segments {
            return Ok(());
        }
        let at = self.merged.partition_point(|r| r.end <= offset);
        if self.merged.get(at).is_some_and(|r| r.start <= offset) {
            return Ok(());
        }
        Err(format!(
            "file offset {offset:#x} is in no executable PT_LOAD segment ({}), so no \
             instruction there is ever run; choose an offset in the file's code",
            self.describe_segments()
        ))
    }

    /// The executable segments' file ranges, briefly.
    fn describe_segments(&self) -> String {
        let ranges: Vec<&Range<u64>> = self.executable.iter().filter(|r| !r.is_empty()).collect();
        if ranges.is_empty() {
            return "the file has none".to_owned();
        }
        let mut text = String::from("they are at file offsets ");
        for (i, range) in ranges.iter().take(LISTED_SEGMENTS).enumerate() {
            let separator = if i == 0 { "" } else { ", " };
            let _ = write!(text, "{separator}{:#x}..{:#x}", range.start, range.end);
        }
        if ranges.len() > LISTED_SEGMENTS {
            let _ = write!(text, " and {} more", ranges.len() - LISTED_SEGMENTS);
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// The translation as it was first written: a scan of every range for every address.
    /// The reference the sorted layout must agree with.
    fn scanned(segments: &[Mapped], sections: &[Mapped], address: u64) -> Option<u64> {
        let within = |range: &Mapped| {
            let within = address.checked_sub(range.address)?;
            (within < range.size).then(|| range.offset.checked_add(within))?
        };
        let first_in = |ranges: &[Mapped], executable: bool| {
            ranges
                .iter()
                .filter(|range| range.executable == executable)
                .find_map(within)
        };
        first_in(segments, true)
            .or_else(|| first_in(segments, false))
            .or_else(|| first_in(sections, true))
            .or_else(|| first_in(sections, false))
    }

    fn mapped(address: u64, size: u64, offset: u64, executable: bool) -> Mapped {
        Mapped {
            address,
            size,
            offset,
            executable,
        }
    }

    #[test]
    fn precedence_of_segments_and_sections() {
        let segments = [
            mapped(0x1000, 0x1000, 0x100, false),
            mapped(0x1800, 0x1000, 0x5000, true),
        ];
        let sections = [
            mapped(0x1000, 0x4000, 0x9000, true),
            mapped(0x8000, 0x10, 0xa000, false),
        ];
        let layout = Layout::new(&segments, &sections);
        // The executable segment wins where both segments are.
        assert_eq!(layout.file_offset(0x1900), Some(0x5100));
        assert_eq!(layout.file_offset(0x17ff), Some(0x8ff));
        // Past the segments, the section.
        assert_eq!(layout.file_offset(0x2800), Some(0xa800));
        assert_eq!(layout.file_offset(0x8008), Some(0xa008));
        assert_eq!(layout.file_offset(0x8010), None);
        assert_eq!(layout.file_offset(0xfff), None);
        assert_eq!(layout.file_offset(u64::MAX), None);
    }

    #[test]
    fn wrapping_and_overflowing_ranges() {
        // Reaches past 2^64 in addresses, and in file offsets.
        let segments = [mapped(u64::MAX - 0xf, u64::MAX, 0x10, true)];
        let sections = [mapped(0x100, u64::MAX, u64::MAX - 0x10, false)];
        let layout = Layout::new(&segments, &sections);
        for address in [0, 0xff, 0x100, 0x110, 0x111, u64::MAX - 0x10, u64::MAX] {
            assert_eq!(
                layout.file_offset(address),
                scanned(&segments, &sections, address),
                "{address:#x}"
            );
        }
        assert_eq!(layout.file_offset(u64::MAX), Some(0x1f));
    }

    /// Random overlapping ranges: the sorted layout answers as the scan does.
    #[test]
    fn agrees_with_the_scan_on_random_ranges() {
        let mut rng = StdRng::seed_from_u64(0x6c61_796f);
        for _ in 0..300 {
            let mut random_ranges = || -> Vec<Mapped> {
                let n = rng.gen_range(0..8);
                (0..n)
                    .map(|_| {
                        let address = rng.gen_range(0..0x200);
                        let size = if rng.gen_ratio(1, 20) {
                            u64::MAX
                        } else {
                            rng.gen_range(0..0x80)
                        };
                        let offset = if rng.gen_ratio(1, 20) {
                            u64::MAX - rng.gen_range(0..0x40)
                        } else {
                            rng.gen_range(0..0x1000)
                        };
                        mapped(address, size, offset, rng.gen())
                    })
                    .collect()
            };
            let segments = random_ranges();
            let sections = random_ranges();
            let layout = Layout::new(&segments, &sections);
            for address in (0..0x300).chain([u64::MAX - 1, u64::MAX]) {
                assert_eq!(
                    layout.file_offset(address),
                    scanned(&segments, &sections, address),
                    "{address:#x} in {segments:?} / {sections:?}"
                );
            }
        }
    }

    #[test]
    fn code_ranges_reject_what_never_runs() {
        let code = CodeRanges::new(0x9000, 64, true, vec![0x2000..0x3000, 0x1000..0x1800]);
        assert_eq!(code.check(0x1000), Ok(()));
        assert_eq!(code.check(0x17ff), Ok(()));
        assert_eq!(code.check(0x2fff), Ok(()));
        let header = code.check(0).unwrap_err();
        assert!(header.contains("ELF header"), "{header}");
        assert!(code.check(63).unwrap_err().contains("ELF header"));
        let end = code.check(0x9000).unwrap_err();
        assert!(end.contains("end of the file (36864 bytes)"), "{end}");
        assert!(code
            .check(u64::MAX)
            .unwrap_err()
            .contains("end of the file"));
        let outside = code.check(0x1800).unwrap_err();
        assert!(
            outside.contains("0x2000..0x3000, 0x1000..0x1800"),
            "{outside}"
        );
        assert!(code.check(0x8000).is_err());

        // Without program headers, anything past the header and before the end.
        let no_segments = CodeRanges::new(0x9000, 52, false, Vec::new());
        assert_eq!(no_segments.check(52), Ok(()));
        assert!(no_segments.check(51).is_err());
        // With segments but none executable, nothing.
        let data_only = CodeRanges::new(0x9000, 64, true, Vec::new());
        let none = data_only.check(0x1000).unwrap_err();
        assert!(none.contains("the file has none"), "{none}");
    }

    #[test]
    fn many_segments_are_listed_briefly() {
        let ranges: Vec<Range<u64>> = (1..=10).map(|i| i * 0x1000..i * 0x1000 + 0x10).collect();
        let code = CodeRanges::new(0x10_0000, 64, true, ranges);
        let reason = code.check(0x1010).unwrap_err();
        assert!(reason.contains("0x4000..0x4010 and 6 more"), "{reason}");
        assert!(code.check(0xa00f).is_ok());
    }
}
