//! Reading an ELF file in bounded pieces: only the ranges the parse asks for (headers,
//! symbol, string and version tables), each at most [`MAX_TABLE`] bytes, with positional
//! reads (`pread`) that leave the file's shared offset alone. No mapping: a file
//! truncated under a mapping would raise `SIGBUS`.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use object::read::{ReadCache, ReadCacheOps, ReadRef};

/// The most bytes one table (a header table, a symbol, string or version table) may be,
/// and the most the names of the functions may add up to: 1 GiB, far beyond any binary
/// seen, far below what would exhaust memory.
pub(super) const MAX_TABLE: u64 = 1 << 30;

/// Why a file could not be parsed.
#[derive(Debug)]
pub(super) enum Failure {
    /// Reading it failed.
    Read(io::Error),
    /// It is not an ELF file this crate can use; the reason, for
    /// [`Error::invalid`](crate::error::Error::invalid).
    Invalid(String),
}

/// What a parse reads through: bytes at offsets, and a way to say that the last refused
/// read was of something optional, so that its reason is not given for a later failure.
pub(super) trait Source<'data>: ReadRef<'data> {
    /// Forgets the reason of the last refused read.
    fn forgive(self);
}

/// A slice forgets nothing: it refuses only what is out of its bounds, without a reason.
impl<'data> Source<'data> for &'data [u8] {
    fn forgive(self) {}
}

/// What can be read at explicit positions, as a file is with `pread`.
pub(super) trait ReadAt {
    /// Reads into `buf` from `offset`; returns how many bytes were read, 0 at the end.
    ///
    /// # Errors
    /// The read's error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

/// Runs `parse` on the `len` bytes of `file` (its size when it was opened), read through
/// [`Bounded`] at explicit positions; a refusal's reason is added to the error.
///
/// # Errors
/// The first read error, or why `parse` rejects the file.
pub(super) fn read_file<'f, F: ReadAt, T>(
    file: &'f F,
    len: u64,
    parse: impl for<'a> FnOnce(Bounded<'a, Positional<'f, F>>) -> Result<T, String>,
) -> Result<T, Failure> {
    let cache = ReadCache::new(Positional {
        file,
        at: 0,
        len,
        error: None,
    });
    let refused = RefCell::new(None);
    let parsed = parse(Bounded {
        cache: &cache,
        len,
        refused: &refused,
    });
    // A read error may have been passed over as an unreadable optional table: any is a
    // failure, and the parse is not kept.
    if let Some(e) = cache.into_inner().error {
        return Err(Failure::Read(e));
    }
    parsed.map_err(|reason| {
        Failure::Invalid(match refused.take() {
            Some(why) => format!("{reason} ({why})"),
            None => reason,
        })
    })
}

/// A file read at explicit positions (the file's own offset is left alone), which
/// remembers the first error.
pub(super) struct Positional<'a, F> {
    file: &'a F,
    at: u64,
    len: u64,
    error: Option<io::Error>,
}

impl<F: ReadAt> ReadCacheOps for Positional<'_, F> {
    fn len(&mut self) -> Result<u64, ()> {
        Ok(self.len)
    }

    fn seek(&mut self, pos: u64) -> Result<u64, ()> {
        self.at = pos;
        Ok(pos)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ()> {
        loop {
            match self.file.read_at(buf, self.at) {
                Ok(n) => {
                    self.at += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.error.get_or_insert(e);
                    return Err(());
                }
            }
        }
    }

    fn read_exact(&mut self, mut buf: &mut [u8]) -> Result<(), ()> {
        while !buf.is_empty() {
            let n = self.read(buf)?;
            if n == 0 {
                // Shorter than it was when it was measured: truncated meanwhile.
                self.error
                    .get_or_insert_with(|| io::ErrorKind::UnexpectedEof.into());
                return Err(());
            }
            buf = &mut buf[n..];
        }
        Ok(())
    }
}

/// The [`ReadRef`] the parse reads through: a [`ReadCache`] that refuses, before anything
/// is allocated, a read larger than [`MAX_TABLE`] or past the end of the file, and keeps
/// the reason of the last refusal.
pub(super) struct Bounded<'a, R: ReadCacheOps> {
    cache: &'a ReadCache<R>,
    len: u64,
    refused: &'a RefCell<Option<String>>,
}

impl<R: ReadCacheOps> Clone for Bounded<'_, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R: ReadCacheOps> Copy for Bounded<'_, R> {}

impl<'a, R: ReadCacheOps> Source<'a> for Bounded<'a, R> {
    fn forgive(self) {
        self.refused.take();
    }
}

impl<'a, R: ReadCacheOps> ReadRef<'a> for Bounded<'a, R> {
    fn len(self) -> Result<u64, ()> {
        Ok(self.len)
    }

    fn read_bytes_at(self, offset: u64, size: u64) -> Result<&'a [u8], ()> {
        let refusal = if size > MAX_TABLE {
            Some(format!(
                "a table of {size} bytes at file offset {offset:#x} is larger than the {} MiB \
                 one table may be",
                MAX_TABLE >> 20
            ))
        } else if offset.checked_add(size).is_none_or(|end| end > self.len) {
            Some(format!(
                "{size} bytes at file offset {offset:#x} reach past the end of the file \
                 ({} bytes)",
                self.len
            ))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            *self.refused.borrow_mut() = Some(refusal);
            return Err(());
        }
        self.cache.read_bytes_at(offset, size)
    }

    fn read_bytes_at_until(self, range: Range<u64>, delimiter: u8) -> Result<&'a [u8], ()> {
        // The cache reads at most 4 KiB for one string.
        self.cache.read_bytes_at_until(range, delimiter)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::super::parse::parse;
    use super::*;

    #[test]
    fn refuses_reads_past_the_end_or_too_large() {
        let data = [7u8; 100];
        let cache = ReadCache::new(Cursor::new(&data[..]));
        let refused = RefCell::new(None);
        let bounded = Bounded {
            cache: &cache,
            len: 100,
            refused: &refused,
        };
        assert_eq!(bounded.read_bytes_at(90, 10), Ok(&data[90..]));
        assert!(refused.borrow().is_none());
        assert!(bounded.read_bytes_at(90, 11).is_err());
        let why = refused.borrow().clone().unwrap();
        assert!(
            why.contains("past the end of the file (100 bytes)"),
            "{why}"
        );
        assert!(bounded.read_bytes_at(u64::MAX, 2).is_err());
        assert!(bounded.read_bytes_at(0, MAX_TABLE + 1).is_err());
        let why = refused.borrow().clone().unwrap();
        assert!(why.contains("1024 MiB"), "{why}");
        bounded.forgive();
        assert!(refused.borrow().is_none());
    }

    #[test]
    fn a_file_is_read_in_place_and_a_short_read_is_a_read_error() {
        let file = File::open("/bin/true").unwrap();
        let len = file.metadata().unwrap().len();
        let parsed = read_file(&file, len, |data| parse(data, len)).unwrap();
        assert_eq!(parsed.code.file_size, len);
        assert!(parsed.code.has_load_segments);

        // Truncated after it was measured: its section headers are gone.
        let copy = std::env::temp_dir().join(format!("probeset-elf-read-{}", std::process::id()));
        std::fs::copy("/bin/true", &copy).unwrap();
        let file = File::options().read(true).write(true).open(&copy).unwrap();
        file.set_len(len / 2).unwrap();
        let failure = read_file(&file, len, |data| parse(data, len));
        std::fs::remove_file(&copy).unwrap();
        match failure {
            Err(Failure::Read(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("{other:?}"),
        }
    }
}
