#![doc = include_str!("../README.md")]
//!
//! # How a probe is made
//! A program is passed as anything [`AsFd`](std::os::fd::AsFd): an aya `ProgramFd`, a
//! libbpf-rs `Program`, an `OwnedFd`. It must be a `BPF_PROG_TYPE_KPROBE` program. How it
//! attaches depends on how it was loaded, which the crate finds out by behaviour
//! ([`ProgramKind`]):
//! - a plain program goes on a perf event per probe, with a BPF perf link (carrying the
//!   cookie). The perf event comes from the kprobe/uprobe PMU, or from a tracefs
//!   `kprobe_events`/`uprobe_events` entry ([`Backend`]);
//! - a program loaded for `uprobe_multi` or `kprobe_multi` goes on multi links: one per
//!   [`ProbeSet`] batch and group, or a one-probe multi link for a single attach.
//!
//! # Cancellation
//! Every async function here is cancel safe in the sense that matters for kernel objects:
//! dropping its future never leaks a perf event, a BPF link or a tracefs event. The blocking
//! work it started finishes on tokio's blocking pool and whatever it created is released
//! there; [`cleanup::wait_idle`] waits until that is done. [`ProbeSet::attach`] is all or
//! nothing also under cancellation: the set holds exactly what it held before.
//!
//! Dropping a [`Link`] or a [`ProbeSet`] detaches without blocking the caller: the release
//! (~0.1 s of kernel RCU time per perf event) runs on a background thread, and works with no
//! runtime, during runtime shutdown and during panic unwinding.
//!
//! # Leftovers of dead processes
//! tracefs events outlive the process that created them. Those of this crate are in groups
//! named `probeset_<pid>_<pidns>_<starttime>_<random>` (at most 63 characters: the owner's
//! pid as it sees it, its pid namespace's inode, its start time, a random part); before the
//! first tracefs probe of a process, the stale-event reaper removes the groups whose owner
//! is provably gone: in the reaper's pid namespace, with no process of that pid, or one
//! that started at another time (a reused pid) ([`tracefs::reap_stale`]). PMU probes and
//! multi links die with their fds.
#![deny(unsafe_code)]

// The facade: the module list and the public names. Nothing inside the crate imports
// through it; each module imports from the module that defines a name. The floors, each
// looking only down: values (`backend`, `kprobe`, `uprobe`, `probe`), `error`, kernel
// mechanics (`sys`, `pmu`, `program`, `features`, `health`, `validate`, `glob`, `kallsyms`, `elf`, `resolve`,
// `perf_event`, `perf_link`, `multi_link`, `tracefs`, `link`, `cleanup`, `blocking`), and the
// front doors
// (`attach`, `probe_set`). See docs/design.md.
mod attach;
mod backend;
mod blocking;
pub mod cleanup;
pub mod counter;
pub mod discovery;
pub mod elf;
pub mod error;
pub mod features;
mod glob;
pub mod health;
mod kallsyms;
mod kprobe;
mod link;
mod multi_link;
mod perf_event;
mod perf_link;
mod pmu;
mod probe;
pub mod probe_set;
mod program;
#[doc(hidden)]
pub mod raw;
mod resolve;
mod sys;
pub mod tracefs;
mod uprobe;
mod validate;

pub use backend::Backend;
pub use error::Error;
pub use kprobe::Kprobe;
pub use link::{Link, LinkKind};
pub use probe::Probe;
pub use probe_set::{Apply, Change, Outcome, ProbeSet, Progress};
pub use program::ProgramKind;
pub use uprobe::Uprobe;

#[cfg(test)]
mod contract {
    //! The auto traits the public API promises.
    fn send_sync_static<T: Send + Sync + 'static>() {}
    fn send_static<T: Send + 'static>() {}
    fn clone_eq_hash_debug<T: Clone + Eq + std::hash::Hash + std::fmt::Debug>() {}

    #[test]
    fn auto_traits() {
        send_sync_static::<crate::Link>();
        send_static::<crate::ProbeSet>();
        send_sync_static::<crate::Error>();
        clone_eq_hash_debug::<crate::Probe>();
        clone_eq_hash_debug::<crate::Kprobe>();
        clone_eq_hash_debug::<crate::Uprobe>();
    }
}
