//! A built-in counting program, so the crate is usable (and testable) with no BPF
//! toolchain.
//!
//! [`Counter::load`] creates a `BPF_MAP_TYPE_ARRAY` of `u64` counters and loads a
//! `BPF_PROG_TYPE_KPROBE` program of ten raw instructions that adds 1 to the slot whose index
//! is the probe's cookie (`bpf_get_attach_cookie()`); a cookie past the last slot counts
//! nothing. It comes in three flavours: a plain program for perf-event links, and programs
//! loaded for `uprobe_multi` and `kprobe_multi` links.
//!
//! ```no_run
//! # async fn f() -> Result<(), probeset::Error> {
//! use probeset::counter::{Counter, Flavour};
//! use probeset::Uprobe;
//!
//! let counter = Counter::load(Flavour::Plain, 16)?;
//! let link = Uprobe::new("/lib/x86_64-linux-gnu/libc.so.6", "getpid")
//!     .cookie(3)
//!     .attach(&counter)
//!     .await?;
//! // ... calls to getpid() in any process ...
//! println!("getpid was called {} times", counter.get(3)?);
//! link.detach().await?;
//! # Ok(()) }
//! ```
//!
//! # Minimum kernel version
//! 5.15 (`bpf_get_attach_cookie`); the multi flavours need their multi links (`uprobe_multi`
//! 6.6, `kprobe_multi` 5.18 with `CONFIG_FPROBE`).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::error::Error;
use crate::sys::bpf::{self, Insn};

/// `bpf_map_lookup_elem`.
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
/// `bpf_get_attach_cookie`.
const HELPER_GET_ATTACH_COOKIE: i32 = 174;

/// Which links the counting program can go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Flavour {
    /// A plain kprobe/uprobe program, for perf-event links.
    Plain,
    /// Loaded with `expected_attach_type = BPF_TRACE_UPROBE_MULTI`.
    UprobeMulti,
    /// Loaded with `expected_attach_type = BPF_TRACE_KPROBE_MULTI`.
    KprobeMulti,
    /// Loaded with `expected_attach_type = BPF_TRACE_UPROBE_SESSION` (6.13+): counts each
    /// call twice, on entry and on return (see [`Counter::load_entry_only`]).
    UprobeSession,
    /// Loaded with `expected_attach_type = BPF_TRACE_KPROBE_SESSION` (6.10+), likewise.
    KprobeSession,
}

impl Flavour {
    fn expected_attach_type(self) -> u32 {
        match self {
            Flavour::Plain => 0,
            Flavour::UprobeMulti => bpf::BPF_TRACE_UPROBE_MULTI,
            Flavour::KprobeMulti => bpf::BPF_TRACE_KPROBE_MULTI,
            Flavour::UprobeSession => bpf::BPF_TRACE_UPROBE_SESSION,
            Flavour::KprobeSession => bpf::BPF_TRACE_KPROBE_SESSION,
        }
    }
}

/// The counting program and its counters. Attach it by passing `&counter` wherever a
/// program is expected (it is [`AsFd`] for the program).
///
/// ```no_run
/// # async fn f() -> Result<(), probeset::Error> {
/// use probeset::counter::{Counter, Flavour};
/// use probeset::Uprobe;
///
/// let counter = Counter::load(Flavour::Plain, 16)?;
/// let link = Uprobe::new("/lib/x86_64-linux-gnu/libc.so.6", "getpid")
///     .cookie(3)
///     .attach(&counter)
///     .await?;
/// // ... the traced programs run ...
/// println!("{} calls", counter.get(3)?);
/// link.detach().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Counter {
    prog: OwnedFd,
    map: OwnedFd,
    slots: u32,
    flavour: Flavour,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

/// The program: `slot = cookie; if (v = lookup(map, &slot)) atomic_add(v, 1); return ret`.
fn program(map_fd: i32, ret: i32) -> [Insn; 12] {
    [
        // r0 = bpf_get_attach_cookie(r1 = ctx)
        insn(0x85, 0, 0, 0, HELPER_GET_ATTACH_COOKIE),
        // *(u32 *)(r10 - 4) = w0
        insn(0x63, 10, 0, -4, 0),
        // r2 = r10; r2 += -4
        insn(0xbf, 2, 10, 0, 0),
        insn(0x07, 2, 0, 0, -4),
        // r1 = map (ld_imm64 with BPF_PSEUDO_MAP_FD)
        insn(0x18, 1, 1, 0, map_fd),
        insn(0x00, 0, 0, 0, 0),
        // r0 = bpf_map_lookup_elem(r1, r2)
        insn(0x85, 0, 0, 0, HELPER_MAP_LOOKUP_ELEM),
        // if r0 == 0 goto exit
        insn(0x15, 0, 0, 2, 0),
        // r1 = 1; lock *(u64 *)(r0 + 0) += r1
        insn(0xb7, 1, 0, 0, 1),
        insn(0xdb, 0, 1, 0, 0),
        // r0 = ret; exit
        insn(0xb7, 0, 0, 0, ret),
        insn(0x95, 0, 0, 0, 0),
    ]
}

impl Counter {
    /// Creates the counters (`slots` of them, all 0) and loads the program.
    ///
    /// Two quick syscalls; safe to call from async code.
    ///
    /// # Errors
    /// Invalid input for 0 slots; permission denied without root (or `CAP_BPF`); the
    /// kernel's error (with the verifier log) when it rejects the program, for example a
    /// kernel without `bpf_get_attach_cookie` (before 5.15).
    pub fn load(flavour: Flavour, slots: u32) -> Result<Counter, Error> {
        Counter::load_returning(flavour, slots, 0)
    }

    /// [`Counter::load`], for a session flavour, with a program that returns 1: a session
    /// link then skips the return run, so each call counts once, on entry. (For the other
    /// flavours the return value changes nothing.)
    ///
    /// # Errors
    /// As [`Counter::load`].
    pub fn load_entry_only(flavour: Flavour, slots: u32) -> Result<Counter, Error> {
        Counter::load_returning(flavour, slots, 1)
    }

    fn load_returning(flavour: Flavour, slots: u32, ret: i32) -> Result<Counter, Error> {
        if slots == 0 {
            return Err(Error::invalid(
                "counter slots 0",
                "a counter needs at least one slot",
            ));
        }
        let map = bpf::map_create_array(8, slots, "probeset_counts")
            .map_err(|e| Error::syscall("BPF_MAP_CREATE", "the counter map", e))?;
        let raw = std::os::fd::AsRawFd::as_raw_fd(&map);
        let prog = bpf::prog_load(
            bpf::BPF_PROG_TYPE_KPROBE,
            flavour.expected_attach_type(),
            &program(raw, ret),
            c"GPL",
            "probeset_count",
        )
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EINVAL) && flavour != Flavour::Plain {
                Error::not_supported(
                    format!("a {flavour:?} counter program"),
                    "the kernel rejects its expected_attach_type (too old for that multi link)",
                    Some(e),
                )
            } else {
                Error::syscall("BPF_PROG_LOAD", "the counter program", e)
            }
        })?;
        Ok(Counter {
            prog,
            map,
            slots,
            flavour,
        })
    }

    /// The program fd.
    #[must_use]
    pub fn program(&self) -> BorrowedFd<'_> {
        self.prog.as_fd()
    }

    /// The counters' map fd (an array of `u64`, indexed by cookie).
    #[must_use]
    pub fn map(&self) -> BorrowedFd<'_> {
        self.map.as_fd()
    }

    /// How many counters there are.
    #[must_use]
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Which links the program goes on.
    #[must_use]
    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    /// The count in `slot`: how often a probe with cookie `slot` fired.
    ///
    /// # Errors
    /// Invalid input for a slot past the last.
    pub fn get(&self, slot: u32) -> Result<u64, Error> {
        if slot >= self.slots {
            return Err(Error::invalid(
                format!("counter slot {slot}"),
                format!("the counter has {} slots", self.slots),
            ));
        }
        let mut value = [0u8; 8];
        bpf::map_lookup(self.map.as_fd(), slot, &mut value).map_err(|e| {
            Error::syscall("BPF_MAP_LOOKUP_ELEM", format!("counter slot {slot}"), e)
        })?;
        Ok(u64::from_ne_bytes(value))
    }

    /// Every count, indexed by slot.
    ///
    /// # Errors
    /// As [`Counter::get`].
    pub fn counts(&self) -> Result<Vec<u64>, Error> {
        (0..self.slots).map(|slot| self.get(slot)).collect()
    }

    /// Sets every count back to 0.
    ///
    /// # Errors
    /// The kernel's error, if the map cannot be written.
    pub fn reset(&self) -> Result<(), Error> {
        for slot in 0..self.slots {
            bpf::map_update(self.map.as_fd(), slot, &0u64.to_ne_bytes()).map_err(|e| {
                Error::syscall("BPF_MAP_UPDATE_ELEM", format!("counter slot {slot}"), e)
            })?;
        }
        Ok(())
    }
}

impl AsFd for Counter {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.prog.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jump_lands_on_the_exit_sequence() {
        let p = program(7, 1);
        let (i, jeq) = p.iter().enumerate().find(|(_, i)| i.code == 0x15).unwrap();
        let target = i + 1 + usize::try_from(jeq.off).unwrap();
        assert_eq!(p[target], insn(0xb7, 0, 0, 0, 1), "r0 = the return value");
        assert_eq!(p[target + 1].code, 0x95);
        assert_eq!(p[4].imm, 7);
        assert_eq!(p[4].regs >> 4, 1, "BPF_PSEUDO_MAP_FD");
    }
}
