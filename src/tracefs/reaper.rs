//! The stale-event reaper: removes probe events of `probeset_<pid>_*` groups whose owner
//! process no longer exists.

use std::path::Path;
use std::sync::Once;

use super::events::{self, group_owner, listed_events, BUSY_RETRY};
use crate::error::Error;

/// What [`reap_stale`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reaped {
    /// The events removed, as `group/event`.
    pub removed: Vec<String>,
    /// Stale events that could not be removed, as `group/event`, with the reason.
    pub failed: Vec<(String, String)>,
}

/// Removes every probe event in `kprobe_events` and `uprobe_events` whose group is
/// `probeset_<pid>_<hex>` and whose `pid` no longer exists. Never touches another tool's
/// events, nor those of a live process.
///
/// Removal right after the owner died can fail with `EBUSY` for a short while; each event is
/// retried for a few seconds. Retries this process's own failed removals first.
///
/// # Errors
/// Not-supported when tracefs is not mounted. Events that could not be removed are listed
/// in [`Reaped::failed`], not returned as an error.
pub fn reap_stale_blocking() -> Result<Reaped, Error> {
    let root = super::mount::require_mount()?;
    super::pending::retry();
    let mut reaped = Reaped::default();
    for file in ["kprobe_events", "uprobe_events"] {
        reap_file(&root.join(file), &mut reaped);
    }
    Ok(reaped)
}

fn reap_file(path: &Path, reaped: &mut Reaped) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let stale: Vec<(&str, &str)> = listed_events(&text)
        .filter(|(group, _)| group_owner(group).is_some_and(crate::sys::process_is_gone))
        .collect();
    for ((group, event), result) in stale.iter().zip(events::remove(path, &stale, BUSY_RETRY)) {
        let name = format!("{group}/{event}");
        match result {
            Ok(()) => {
                tracing::info!(event = %name, "removed stale tracefs probe event of a dead process");
                reaped.removed.push(name);
            }
            Err(f) => reaped.failed.push((name, f.io().to_string())),
        }
    }
}

/// [`reap_stale_blocking`] on tokio's blocking pool.
///
/// # Errors
/// As [`reap_stale_blocking`].
///
/// # Cancel safety
/// Cancel safe: dropping the future lets the reaper finish on the blocking pool.
pub async fn reap_stale() -> Result<Reaped, Error> {
    crate::blocking::run(reap_stale_blocking).await
}

/// Runs the reaper once per process, before the first tracefs probe; concurrent callers
/// wait until it has finished.
pub(crate) fn ensure_ran() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| match reap_stale_blocking() {
        Ok(r) if !r.failed.is_empty() => {
            tracing::warn!(failed = ?r.failed, "some stale tracefs probe events could not be removed");
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "stale-event reaper did not run"),
    });
}
