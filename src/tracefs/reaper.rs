//! The stale-event reaper: removes the probe events of `probeset_` groups whose owner
//! process is provably gone (see `owner` for what the group name says and how it is judged).

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

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
    let (reaped, _busy) = reap(BUSY_RETRY)?;
    Ok(reaped)
}

/// Stale events the kernel said were busy, as `group/event`, per events file.
type Busy = Vec<(PathBuf, Vec<String>)>;

/// One run of the reaper, waiting out `EBUSY` for up to `patience`; what it did, and the
/// events that were still busy.
fn reap(patience: Duration) -> Result<(Reaped, Busy), Error> {
    let root = super::mount::require_mount()?;
    super::pending::retry();
    let mut judge = Judge::here();
    let mut reaped = Reaped::default();
    let mut busy = Busy::new();
    for file in ["kprobe_events", "uprobe_events"] {
        let path = root.join(file);
        let still_busy = reap_file(&path, &mut judge, patience, &mut reaped);
        if !still_busy.is_empty() {
            busy.push((path, still_busy));
        }
    }
    Ok((reaped, busy))
}

/// Reaps one events file; the stale events that were busy.
fn reap_file(
    path: &Path,
    judge: &mut Judge,
    patience: Duration,
    reaped: &mut Reaped,
) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let stale: Vec<(&str, &str)> = listed_events(&text)
        .filter(|(group, _)| {
            group.starts_with(events::GROUP_PREFIX) && judge.judge(group) == Verdict::Gone
        })
        .collect();
    let mut busy = Vec::new();
    for ((group, event), result) in stale.iter().zip(events::remove(path, &stale, patience)) {
        let name = format!("{group}/{event}");
        match result {
            Ok(()) => {
                tracing::info!(event = %name, "removed stale tracefs probe event of a dead process");
                reaped.removed.push(name);
            }
            Err(f) => {
                if f.is_busy() {
                    busy.push(name.clone());
                }
                reaped.failed.push((name, f.io().to_string()));
            }
        }
    }
    busy
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
/// wait until it has finished. It never waits on `EBUSY` (someone else's events must not
/// hold up this process's first probe): the stale events that are busy are retried for a
/// few seconds on a short-lived background thread, and whatever is left then falls to the
/// reaper of a later process.
pub(crate) fn ensure_ran() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| match reap(Duration::ZERO) {
        Ok((reaped, busy)) => {
            let failed: Vec<&(String, String)> = reaped
                .failed
                .iter()
                .filter(|(name, _)| !busy.iter().any(|(_, names)| names.contains(name)))
                .collect();
            if !failed.is_empty() {
                tracing::warn!(
                    ?failed,
                    "some stale tracefs probe events could not be removed"
                );
            }
            if !busy.is_empty() {
                retry_in_background(busy);
            }
        }
        Err(e) => tracing::debug!(error = %e, "stale-event reaper did not run"),
    });
}

/// Retries busy stale events for up to [`BUSY_RETRY`] on a thread of its own.
fn retry_in_background(busy: Busy) {
    let job = move || {
        for (path, names) in busy {
            let events: Vec<(&str, &str)> =
                names.iter().filter_map(|n| n.split_once('/')).collect();
            for (name, result) in names.iter().zip(events::remove(&path, &events, BUSY_RETRY)) {
                match result {
                    Ok(()) => tracing::info!(
                        event = %name,
                        "removed stale tracefs probe event of a dead process"
                    ),
                    Err(f) => tracing::warn!(
                        event = %name,
                        error = %f.io(),
                        "could not remove a stale tracefs probe event; a later reaper retries"
                    ),
                }
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("probeset-reap".into())
        .spawn(job)
    {
        tracing::debug!(error = %e, "no thread to retry busy stale events; a later reaper retries");
    }
}
