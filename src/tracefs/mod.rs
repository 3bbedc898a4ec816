//! tracefs: where it is mounted, and the `kprobe_events`/`uprobe_events` probe events this
//! crate creates there. Every byte the crate writes to tracefs is written here, and only
//! what was named: a path tracefs would misread (white space, `#`, control characters, the
//! byte 0xa0) is refused as invalid input, never written.
//!
//! `mount` finds the mount (and finds it again after an unmount); `events` is the leaf that
//! reads and appends the `*_events` files (with the one `EBUSY` retry loop); `probe_event`
//! creates one event and removes it again (a guard); `pending` keeps the names of events
//! whose removal failed and retries them; `owner` names a group after the process that owns
//! it and judges whether that process is gone; `reaper` removes the events of dead owners.
//! The module knows nothing of BPF links.
//!
//! Only the tracefs backend ([`Backend::Tracefs`](crate::Backend::Tracefs), and
//! [`Backend::Auto`](crate::Backend::Auto) when the perf PMU is missing) needs tracefs. The
//! events it creates live in groups `probeset_<pid>_<pidns>_<starttime>_<random>`: the
//! owner's pid as it sees it, the inode of its pid namespace, its start time in clock ticks
//! after boot, and a random part (63 characters at most), so anyone can tell which events
//! are ours and exactly whose they are. [`reap_stale`] removes those whose owner is provably
//! gone (it died without removing them: a SIGKILL, a crash); it leaves the groups of other
//! pid namespaces, and the `probeset_<pid>_<hex>` groups of earlier versions, alone.
//!
//! A removal that fails (tracefs unmounted, no descriptor left) is reported, and the event
//! is not forgotten: this process retries it at its next tracefs operation and at exit, and
//! once the process is gone the reaper removes it.
//!
//! ```no_run
//! # async fn f() -> Result<(), probeset::Error> {
//! // A tool that cleans up after crashed tracers:
//! let reaped = probeset::tracefs::reap_stale().await?;
//! for event in &reaped.removed {
//!     println!("removed stale event {event}");
//! }
//! # Ok(()) }
//! ```

pub(crate) mod access;
mod events;
pub(crate) mod mount;
mod owner;
mod pending;
pub(crate) mod probe_event;
mod reaper;

pub use events::GROUP_PREFIX;
pub use mount::mount_point;
pub use reaper::{reap_stale, reap_stale_blocking, Reaped};
