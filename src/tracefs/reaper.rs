//! The stale-event reaper: removes the probe events of `probeset_` groups whose owner
//! process is provably gone (see `owner` for what the group name says and how it is judged).

use std::path::Path;
use std::sync::Once;

use super::events::{self, listed_events, BUSY_RETRY};
use super::owner::{Judge, Verdict};
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
/// `probeset_<pid>_<pidns>_<starttime>_<random>` and whose owner is provably gone: the group
/// names this process's pid namespace, and no process has that pid, or the process that has
/// it started at another time (the pid was reused).
///
/// Never touches another tool's events, nor those of a live process. Nor does it touch a
/// group it cannot judge exactly: one of another pid namespace (a reaper in that namespace
/// removes it), one whose name is not exactly of this format (including the
/// `probeset_<pid>_<hex>` groups of earlier versions of this crate, which name no more than
/// a pid: remove those by hand, with `-:GROUP/EVENT`), or one whose pid is held by a process
/// whose start time cannot be read or compared (a `/proc` of another pid namespace, another
/// time namespace).
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
    let mut judge = Judge::here();
    let mut reaped = Reaped::default();
    for file in ["kprobe_events", "uprobe_events"] {
        reap_file(&root.join(file), &mut judge, &mut reaped);
    }
    Ok(reaped)
}

fn reap_file(path: &Path, judge: &mut Judge, reaped: &mut Reaped) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let stale: Vec<(&str, &str)> = listed_events(&text)
        .filter(|(group, _)| {
            group.starts_with(events::GROUP_PREFIX) && judge.judge(group) == Verdict::Gone
        })
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
