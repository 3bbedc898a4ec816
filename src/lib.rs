//! probeset: attach eBPF programs to kprobes, kretprobes, uprobes and uretprobes from async
//! (tokio) code.
#![deny(unsafe_code)]

mod blocking;
pub mod cleanup;
pub mod counter;
pub mod elf;
pub mod error;
mod features;
mod kprobe;
mod link;
mod perf_event;
mod pmu;
mod probe;
pub mod probe_set;
mod sys;
pub mod tracefs;
mod uprobe;

pub use error::Error;
pub use features::ProgramKind;
pub use kprobe::Kprobe;
pub use link::{Link, LinkKind};
pub use probe::{Backend, Probe};
pub use probe_set::{Change, Outcome, ProbeSet, Progress};
pub use uprobe::Uprobe;
