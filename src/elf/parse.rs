//! The function symbols of an ELF file, through the `object` crate: `.symtab` and
//! `.dynsym`, their versions, and each address's file offset through the file's
//! [`Layout`]. The bytes come through a [`ReadRef`]: in production a bounded reader of the
//! file ([`read`](super::read)), in the tests a slice.

use object::elf;
use object::read::elf::{
    FileHeader, ProgramHeader, SectionHeader, SectionTable, Sym, SymbolTable, VersionTable,
};
use object::read::{StringTable, SymbolIndex};
use object::{Endianness, FileKind};

use super::layout::{CodeRanges, Layout, Mapped};
use super::read::{Source, MAX_TABLE};

/// One function symbol of an ELF file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ElfFunction {
    /// The symbol's name; `name@VERSION` for a non-default symbol version.
    pub name: String,
    /// Where the function's first instruction is in the file: the offset a uprobe takes.
    pub offset: u64,
    /// The symbol's value (`st_value`): its virtual address in the file's own address space.
    pub address: u64,
    /// The symbol's size in bytes (`st_size`); 0 when the toolchain did not record it.
    pub size: u64,
    /// Whether the symbol is visible outside its object file (`STB_GLOBAL`, `STB_WEAK` or
    /// `STB_GNU_UNIQUE`), as opposed to a `static` function (`STB_LOCAL`).
    pub global: bool,
    /// Whether the symbol is an `STT_GNU_IFUNC` resolver rather than the function it
    /// selects at load time.
    pub ifunc: bool,
}

/// What a parse finds: the functions, sorted by name, then offset, then address, and
/// deduplicated; and where in the file code is.
#[derive(Debug)]
pub(super) struct Parsed {
    pub(super) functions: Vec<ElfFunction>,
    pub(super) code: CodeRanges,
}

/// Parses the function symbols of an ELF file of `file_size` bytes; the error is the
/// reason the file is rejected, for [`Error::invalid`](crate::error::Error::invalid).
///
/// # Errors
/// Not an ELF file, a malformed one, or one that is neither an executable nor a shared
/// library.
pub(super) fn parse<'data, R: Source<'data>>(data: R, file_size: u64) -> Result<Parsed, String> {
    let mut parsed = match FileKind::parse(data) {
        Ok(FileKind::Elf32) => parse_elf::<elf::FileHeader32<Endianness>, R>(data, file_size)?,
        Ok(FileKind::Elf64) => parse_elf::<elf::FileHeader64<Endianness>, R>(data, file_size)?,
        Ok(kind) => return Err(format!("not an ELF file: it is a {kind:?} file")),
        Err(e) => return Err(format!("not an ELF file: {e}")),
    };
    let functions = &mut parsed.functions;
    functions.sort_unstable_by(|a, b| {
        (a.name.as_str(), a.offset, a.address).cmp(&(b.name.as_str(), b.offset, b.address))
    });
    // The same function is usually in both .symtab and .dynsym. Same name and address
    // means same offset, so duplicates are adjacent now.
    functions.dedup_by(|dup, kept| {
        let same = dup.name == kept.name && dup.address == kept.address;
        if same {
            kept.global |= dup.global;
            kept.ifunc |= dup.ifunc;
            kept.size = kept.size.max(dup.size);
        }
        same
    });
    Ok(parsed)
}

fn malformed(e: object::read::Error) -> String {
    format!("not an ELF file: {e}")
}

/// Refuses what is neither an executable nor a shared library.
///
/// # Errors
/// An object file, a core dump, or any other ELF type.
fn check_type(e_type: u16) -> Result<(), String> {
    match e_type {
        elf::ET_EXEC | elf::ET_DYN => Ok(()),
        elf::ET_REL => Err("a relocatable object file (ET_REL) has no load addresses; \
                            probe the executable or shared library it is linked into"
            .to_owned()),
        other => Err(format!(
            "ELF type {other} is neither an executable (ET_EXEC) nor a shared library \
             (ET_DYN)"
        )),
    }
}

/// [`parse`] of one ELF class, before the functions are sorted and deduplicated.
///
/// # Errors
/// As [`parse`].
fn parse_elf<'data, Elf: FileHeader<Endian = Endianness>, R: Source<'data>>(
    data: R,
    file_size: u64,
) -> Result<Parsed, String> {
    let header = Elf::parse(data).map_err(malformed)?;
    let endian = header.endian().map_err(malformed)?;
    check_type(header.e_type(endian))?;

    let program_headers = header.program_headers(endian, data).map_err(malformed)?;
    let loads = || {
        program_headers
            .iter()
            .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
    };
    let segments: Vec<Mapped> = loads()
        .map(|ph| Mapped {
            address: ph.p_vaddr(endian).into(),
            size: ph.p_memsz(endian).into(),
            offset: ph.p_offset(endian).into(),
            executable: ph.p_flags(endian) & elf::PF_X != 0,
        })
        .collect();
    let code = CodeRanges::new(
        file_size,
        u64::from(header.e_ehsize(endian)).max(std::mem::size_of::<Elf>() as u64),
        !segments.is_empty(),
        loads()
            .filter(|ph| ph.p_flags(endian) & elf::PF_X != 0)
            .map(|ph| {
                let start: u64 = ph.p_offset(endian).into();
                start..start.saturating_add(ph.p_filesz(endian).into())
            })
            .collect(),
    );
    let sections = header.sections(endian, data).map_err(malformed)?;
    let layout = Layout::new(&segments, &section_ranges(&sections, endian));

    let mut found = Found::default();
    let symtab = sections
        .symbols(endian, data, elf::SHT_SYMTAB)
        .map_err(malformed)?;
    found.collect(
        &Table::of(&symtab, &sections, endian, data),
        None,
        endian,
        &layout,
    )?;
    let dynsym = sections
        .symbols(endian, data, elf::SHT_DYNSYM)
        .map_err(malformed)?;
    let dynsym = Table::of(&dynsym, &sections, endian, data);
    // Without a readable version table, dynamic names are still right for default versions.
    let versions = versions(&sections, endian, data);
    found.collect(&dynsym, versions.as_ref(), endian, &layout)?;
    Ok(Parsed {
        functions: found.functions,
        code,
    })
}

/// The allocated sections with file contents, as address ranges.
fn section_ranges<'data, Elf: FileHeader<Endian = Endianness>, R: Source<'data>>(
    sections: &SectionTable<'data, Elf, R>,
    endian: Endianness,
) -> Vec<Mapped> {
    sections
        .iter()
        .filter(|sh| {
            sh.sh_type(endian) != elf::SHT_NOBITS
                && sh.sh_flags(endian).into() & u64::from(elf::SHF_ALLOC) != 0
        })
        .map(|sh| Mapped {
            address: sh.sh_addr(endian).into(),
            size: sh.sh_size(endian).into(),
            offset: sh.sh_offset(endian).into(),
            executable: sh.sh_flags(endian).into() & u64::from(elf::SHF_EXECINSTR) != 0,
        })
        .collect()
}

/// The version table (`.gnu.version`, with `.gnu.version_d` and `.gnu.version_r`), its
/// names read from the string table of the symbol table it belongs to; `None` if there is
/// none or it cannot be read.
fn versions<'data, Elf: FileHeader<Endian = Endianness>, R: Source<'data>>(
    sections: &SectionTable<'data, Elf, R>,
    endian: Endianness,
    data: R,
) -> Option<VersionTable<'data, Elf>> {
    let read = || {
        let Some((versyms, link)) = sections.gnu_versym(endian, data)? else {
            return Ok(None);
        };
        let table = sections.symbol_table_by_index(endian, data, link)?;
        let strings = Table::of(&table, sections, endian, data).strings;
        let verdefs = sections.gnu_verdef(endian, data)?.map(|(defs, _)| defs);
        let verneeds = sections.gnu_verneed(endian, data)?.map(|(needs, _)| needs);
        VersionTable::parse(endian, versyms, verdefs, verneeds, strings).map(Some)
    };
    read().unwrap_or_else(|_| {
        data.forgive();
        None
    })
}

/// A symbol table with its whole string table, read at once.
struct Table<'data, Elf: FileHeader> {
    symbols: &'data [Elf::Sym],
    strings: StringTable<'data, &'data [u8]>,
}

impl<'data, Elf: FileHeader<Endian = Endianness>> Table<'data, Elf> {
    /// `table`'s symbols, and its string table in one read: a name that cannot be read
    /// (the table is missing or unreadable) is a symbol skipped, not a file refused.
    fn of<R: Source<'data>>(
        table: &SymbolTable<'data, Elf, R>,
        sections: &SectionTable<'data, Elf, R>,
        endian: Endianness,
        data: R,
    ) -> Table<'data, Elf> {
        let strings = if table.is_empty() || table.string_section().0 == 0 {
            &[][..]
        } else {
            sections
                .section(table.string_section())
                .and_then(|section| section.data(endian, data))
                .unwrap_or_else(|_| {
                    data.forgive();
                    &[]
                })
        };
        Table {
            symbols: table.symbols(),
            strings: StringTable::new(strings, 0, strings.len() as u64),
        }
    }
}

/// The functions found so far, and the bytes of their names.
#[derive(Default)]
struct Found {
    functions: Vec<ElfFunction>,
    name_bytes: u64,
}

impl Found {
    /// Appends the defined, named function symbols of `table` that have a file offset.
    /// `versions` is the `.gnu.version` table, for `.dynsym` only.
    ///
    /// # Errors
    /// When the names add up to more than [`MAX_TABLE`] (a string shared by many symbols
    /// is copied for each).
    fn collect<Elf: FileHeader<Endian = Endianness>>(
        &mut self,
        table: &Table<'_, Elf>,
        versions: Option<&VersionTable<'_, Elf>>,
        endian: Endianness,
        layout: &Layout,
    ) -> Result<(), String> {
        for (index, sym) in table.symbols.iter().enumerate() {
            let ifunc = match sym.st_type() {
                elf::STT_FUNC => false,
                elf::STT_GNU_IFUNC => true,
                _ => continue,
            };
            if sym.is_undefined(endian) {
                continue;
            }
            let Ok(name) = sym.name(endian, table.strings) else {
                continue;
            };
            if name.is_empty() {
                continue;
            }
            let address: u64 = sym.st_value(endian).into();
            let Some(offset) = layout.file_offset(address) else {
                continue;
            };
            self.name_bytes += name.len() as u64;
            if self.name_bytes > MAX_TABLE {
                return Err(format!(
                    "the names of its functions add up to more than {} MiB",
                    MAX_TABLE >> 20
                ));
            }
            self.functions.push(ElfFunction {
                name: symbol_name(name, SymbolIndex(index), versions, endian),
                offset,
                address,
                size: sym.st_size(endian).into(),
                global: matches!(
                    sym.st_bind(),
                    elf::STB_GLOBAL | elf::STB_WEAK | elf::STB_GNU_UNIQUE
                ),
                ifunc,
            });
        }
        Ok(())
    }
}

/// The name a symbol is listed under: `name` for the default version, `name@VERSION` for
/// a hidden (non-default) one, whether the version comes from `.gnu.version` (`.dynsym`)
/// or is spelled in the name (`.symtab` keeps `name@@VERSION` and `name@VERSION`).
fn symbol_name<Elf: FileHeader<Endian = Endianness>>(
    name: &[u8],
    index: SymbolIndex,
    versions: Option<&VersionTable<'_, Elf>>,
    endian: Endianness,
) -> String {
    let name = String::from_utf8_lossy(name);
    if let Some((base, _default_version)) = name.split_once("@@") {
        return base.to_owned();
    }
    let hidden_version = versions.and_then(|versions| {
        let version_index = versions.version_index(endian, index);
        if !version_index.is_hidden() {
            return None;
        }
        versions.version(version_index).ok().flatten()
    });
    match hidden_version {
        Some(version) if !name.contains('@') => {
            format!("{name}@{}", String::from_utf8_lossy(version.name()))
        }
        _ => name.into_owned(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// [`parse`] of bytes in memory.
    pub(in crate::elf) fn parse_bytes(data: &[u8]) -> Result<Parsed, String> {
        parse(data, data.len() as u64)
    }

    /// Writes ELF fields in one class and byte order.
    struct Writer {
        is64: bool,
        big_endian: bool,
        bytes: Vec<u8>,
    }

    impl Writer {
        fn u8(&mut self, v: u8) {
            self.bytes.push(v);
        }
        fn u16(&mut self, v: u16) {
            let b = if self.big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            self.bytes.extend_from_slice(&b);
        }
        fn u32(&mut self, v: u32) {
            let b = if self.big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            self.bytes.extend_from_slice(&b);
        }
        /// An address-sized field.
        fn word(&mut self, v: u64) {
            if self.is64 {
                let b = if self.big_endian {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                };
                self.bytes.extend_from_slice(&b);
            } else {
                self.u32(u32::try_from(v).unwrap());
            }
        }
        fn pad_to(&mut self, at: usize) {
            assert!(self.bytes.len() <= at, "{:#x} > {at:#x}", self.bytes.len());
            self.bytes.resize(at, 0);
        }
    }

    /// The ELF header and one `PT_LOAD` program header (R+X, file 0x100..0x200 at
    /// 0x401000); the section headers are to follow at 0x400, five of them, the strings of
    /// their (empty) names in section 3.
    fn write_headers(w: &mut Writer, e_type: u16) {
        let is64 = w.is64;
        let (ehsize, phentsize, shentsize) = if is64 { (64, 56, 64) } else { (52, 32, 40) };
        w.bytes.extend_from_slice(b"\x7fELF");
        w.u8(if is64 { 2 } else { 1 });
        w.u8(if w.big_endian { 2 } else { 1 });
        w.u8(1);
        w.pad_to(16);
        w.u16(e_type);
        w.u16(if is64 { 62 } else { 3 });
        w.u32(1);
        w.word(0x40_1000);
        w.word(u64::from(ehsize));
        w.word(0x400);
        w.u32(0);
        for field in [ehsize, phentsize, 1, shentsize, 5, 3] {
            w.u16(field);
        }
        w.u32(elf::PT_LOAD);
        if is64 {
            w.u32(elf::PF_R | elf::PF_X);
        }
        for field in [0x100, 0x40_1000, 0x40_1000, 0x100, 0x100] {
            w.word(field);
        }
        if !is64 {
            w.u32(elf::PF_R | elf::PF_X);
        }
        w.word(0x1000);
    }

    /// A minimal ELF file: one `PT_LOAD` (file 0x100.. at 0x401000), `.text` inside it,
    /// `.text2` (file 0x200.., at 0x9000) outside any segment, and a `.symtab`.
    pub(in crate::elf) fn synthetic_elf(is64: bool, big_endian: bool, e_type: u16) -> Vec<u8> {
        let symsize: u64 = if is64 { 24 } else { 16 };
        let mut w = Writer {
            is64,
            big_endian,
            bytes: Vec::new(),
        };
        write_headers(&mut w, e_type);

        let mut strtab = vec![0u8];
        let mut name = |s: &str| {
            let at = u32::try_from(strtab.len()).unwrap();
            strtab.extend_from_slice(s.as_bytes());
            strtab.push(0);
            at
        };
        let global = |kind: u8| (elf::STB_GLOBAL << 4) | kind;
        let local = |kind: u8| (elf::STB_LOCAL << 4) | kind;
        let symbols = [
            // (name, value, size, st_info, st_shndx)
            (0, 0, 0, 0, 0),
            (name("alpha"), 0x40_1010, 8, global(elf::STT_FUNC), 1),
            (name("beta"), 0x9004, 4, local(elf::STT_FUNC), 2),
            (name("gamma"), 0x7777_0000, 4, global(elf::STT_FUNC), 1),
            (name("undef"), 0, 0, global(elf::STT_FUNC), 0),
            (name("obj"), 0x40_1080, 8, global(elf::STT_OBJECT), 1),
            (name("ifn"), 0x40_1020, 0, global(elf::STT_GNU_IFUNC), 1),
            (name("alpha"), 0x40_1030, 8, local(elf::STT_FUNC), 1),
        ];
        w.pad_to(0x300);
        w.bytes.extend_from_slice(&strtab);
        w.pad_to(0x340);
        for (name, value, size, info, shndx) in symbols {
            w.u32(name);
            if is64 {
                w.u8(info);
                w.u8(0);
                w.u16(shndx);
                w.word(value);
                w.word(size);
            } else {
                w.word(value);
                w.word(size);
                w.u8(info);
                w.u8(0);
                w.u16(shndx);
            }
        }
        w.pad_to(0x400);
        let text = u64::from(elf::SHF_ALLOC | elf::SHF_EXECINSTR);
        let symtab_size = symsize * u64::try_from(symbols.len()).unwrap();
        let strtab_size = u64::try_from(strtab.len()).unwrap();
        let sections = [
            // (type, flags, addr, offset, size, link, info, entsize)
            (elf::SHT_NULL, 0, 0, 0, 0, 0, 0, 0),
            (elf::SHT_PROGBITS, text, 0x40_1000, 0x100, 0x100, 0, 0, 0),
            (elf::SHT_PROGBITS, text, 0x9000, 0x200, 0x20, 0, 0, 0),
            (elf::SHT_STRTAB, 0, 0, 0x300, strtab_size, 0, 0, 0),
            (elf::SHT_SYMTAB, 0, 0, 0x340, symtab_size, 3, 1, symsize),
        ];
        for (sh_type, flags, addr, offset, size, link, info, entsize) in sections {
            w.u32(0);
            w.u32(sh_type);
            for field in [flags, addr, offset, size] {
                w.word(field);
            }
            w.u32(link);
            w.u32(info);
            w.word(1);
            w.word(entsize);
        }
        w.bytes
    }

    /// The parse of [`synthetic_elf`] executables in every class and byte order, each with
    /// the name of its case.
    pub(in crate::elf) fn parsed_synthetic_executables() -> Vec<(String, Vec<ElfFunction>)> {
        let mut parsed = Vec::new();
        for is64 in [false, true] {
            for big_endian in [false, true] {
                let case = format!("64-bit: {is64}, big endian: {big_endian}");
                let functions = parse_bytes(&synthetic_elf(is64, big_endian, elf::ET_EXEC))
                    .expect(&case)
                    .functions;
                parsed.push((case, functions));
            }
        }
        parsed
    }

    #[test]
    fn parses_every_class_and_byte_order() {
        for (case, functions) in parsed_synthetic_executables() {
            let summary: Vec<(&str, u64, u64, bool, bool)> = functions
                .iter()
                .map(|f| (f.name.as_str(), f.offset, f.address, f.global, f.ifunc))
                .collect();
            assert_eq!(
                summary,
                [
                    ("alpha", 0x110, 0x40_1010, true, false),
                    ("alpha", 0x130, 0x40_1030, false, false),
                    // Outside every PT_LOAD: translated through its section.
                    ("beta", 0x204, 0x9004, false, false),
                    ("ifn", 0x120, 0x40_1020, true, true),
                ],
                "{case}"
            );
        }
    }

    #[test]
    fn rejects_object_files() {
        let reason = parse_bytes(&synthetic_elf(true, false, elf::ET_REL)).unwrap_err();
        assert!(reason.contains("ET_REL"), "{reason}");
        let reason = parse_bytes(&synthetic_elf(true, false, elf::ET_CORE)).unwrap_err();
        assert!(reason.contains("ELF type 4"), "{reason}");
        let reason = parse_bytes(b"\x7fELF\x02\x01\x01").unwrap_err();
        assert!(reason.starts_with("not an ELF file"), "{reason}");
    }
}
