//! Many probes at once: [`ProbeSet`].
//!
//! A set attaches one program to many probes, concurrently, all or nothing, and detaches
//! everything it holds when dropped. How it holds them depends on how the program was
//! loaded, which the set finds out by itself:
//!
//! - a program loaded for `uprobe_multi` (or `kprobe_multi`) goes on **multi links**: one
//!   link per binary, pid and direction (per direction for kprobes) for each batch, with a
//!   cookie per probe. 1000 uprobes attach in milliseconds and detach in ~30 ms;
//! - a plain program goes on **one perf-event link per probe**, attached concurrently
//!   ([`ProbeSet::concurrency`]). Each costs ~0.2 ms to attach and ~0.1 s of kernel time
//!   to detach.
//!
//! ```no_run
//! # async fn f() -> Result<(), probeset::Error> {
//! use probeset::counter::{Counter, Flavour};
//! use probeset::{ProbeSet, Uprobe};
//!
//! let libc = "/lib/x86_64-linux-gnu/libc.so.6";
//! let counter = Counter::load(Flavour::UprobeMulti, 1024)?;
//! let mut set = ProbeSet::new(&counter)?.auto_cookies(true);
//! set.attach(["malloc", "free", "calloc", "realloc"].map(|f| Uprobe::new(libc, f))).await?;
//! for (probe, cookie) in set.cookies() {
//!     println!("{probe}: cookie {cookie}");
//! }
//! set.detach().await?;
//! # Ok(()) }
//! ```
//!
//! # Removing from a multi link
//! The kernel cannot take one probe out of a multi link. [`ProbeSet::remove`] creates a
//! new link for the probes that stay, then closes the old one (make before break: no
//! probe that stays misses an event; for a few microseconds both links fire). The cost is
//! one link creation for the rest of that batch (~1-20 ms for 1000 probes) plus the old
//! link's release (~30 ms, on the blocking pool). Removing many probes at once
//! ([`ProbeSet::remove_many`], or a burst of detaches through [`ProbeSet::apply`]) rebuilds
//! each affected link once.

mod apply;
mod build;
mod change;
mod held;
mod plan;
mod remove;
mod set;
mod swap;

pub use apply::Apply;
pub use build::Progress;
pub use change::{Change, Outcome};
pub use set::ProbeSet;
