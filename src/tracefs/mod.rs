//! tracefs: where it is mounted, and the `kprobe_events`/`uprobe_events` probe events this
//! crate creates there.
//!
//! Only the tracefs backend ([`Backend::Tracefs`](crate::Backend::Tracefs), and
//! [`Backend::Auto`](crate::Backend::Auto) when the perf PMU is missing) needs tracefs. The
//! events it creates live in groups named `probeset_<owner pid>_<random hex>`, so anyone can
//! tell which events are ours and whose they are; [`reap_stale`] removes those whose owner
//! died without removing them (a SIGKILL, a crash).
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

mod event;
pub(crate) mod mount;
mod reaper;

pub(crate) use event::ProbeEvent;
pub use event::GROUP_PREFIX;
pub use mount::mount_point;
pub use reaper::{reap_stale, reap_stale_blocking, Reaped};
