//! Removals that failed: tracefs was unmounted, or the process had no descriptor left to
//! open the events file. The event stays in the kernel; its name is kept here, and this
//! process retries it at each of its next tracefs operations (a probe created or removed,
//! a reaper run) and at exit. Once the process is gone, the reaper of any other process in
//! its pid namespace removes it: the group names its owner exactly.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once, PoisonError};
use std::time::Instant;

use super::events::{self, Failure, BUSY_RETRY};

/// An event whose removal failed.
#[derive(Debug)]
struct Entry {
    /// `uprobe_events` or `kprobe_events`.
    file: &'static str,
    group: String,
    event: String,
    /// Until when a retry waits out `EBUSY` for it: the kernel says `EBUSY` for a while
    /// after the last perf fd of an event is closed, and a removal that failed before it
    /// reached the kernel has not waited yet.
    wait_until: Instant,
}

static PENDING: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
/// Whether `PENDING` may hold anything: the fast path of every tracefs operation.
static ANY: AtomicBool = AtomicBool::new(false);

/// Keeps `group/event` of `file` for a later retry, after its removal failed with `failure`.
pub(crate) fn keep(file: &'static str, group: &str, event: &str, failure: &Failure) {
    static AT_EXIT: Once = Once::new();
    AT_EXIT.call_once(|| {
        if let Err(e) = crate::sys::at_exit(retry_at_exit) {
            tracing::debug!(error = %e, "could not register the exit-time retry of tracefs removals");
        }
    });
    let wait_until = if failure.is_busy() {
        // It has waited out EBUSY already.
        Instant::now()
    } else {
        Instant::now() + BUSY_RETRY
    };
    let mut pending = PENDING.lock().unwrap_or_else(PoisonError::into_inner);
    pending.push(Entry {
        file,
        group: group.to_string(),
        event: event.to_string(),
        wait_until,
    });
    ANY.store(true, Ordering::Release);
}

/// Retries every kept removal; those that fail again stay kept. Cheap when none is kept.
pub(crate) fn retry() {
    if !ANY.load(Ordering::Acquire) {
        return;
    }
    let taken = std::mem::take(&mut *PENDING.lock().unwrap_or_else(PoisonError::into_inner));
    let left = match super::mount::mount_point() {
        Some(root) if !taken.is_empty() => {
            let (uprobes, kprobes): (Vec<Entry>, Vec<Entry>) =
                taken.into_iter().partition(|e| e.file == "uprobe_events");
            let mut left = retry_file(&root.join("uprobe_events"), uprobes);
            left.extend(retry_file(&root.join("kprobe_events"), kprobes));
            left
        }
        _ => taken,
    };
    let mut pending = PENDING.lock().unwrap_or_else(PoisonError::into_inner);
    pending.extend(left);
    ANY.store(!pending.is_empty(), Ordering::Release);
}

/// Removes `entries` of the events file at `path`; what is left.
fn retry_file(path: &Path, entries: Vec<Entry>) -> Vec<Entry> {
    if entries.is_empty() {
        return entries;
    }
    let now = Instant::now();
    let patience = entries
        .iter()
        .map(|e| e.wait_until.saturating_duration_since(now))
        .max()
        .unwrap_or_default();
    let names: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e.group.as_str(), e.event.as_str()))
        .collect();
    let results = events::remove(path, &names, patience);
    entries
        .into_iter()
        .zip(results)
        .filter_map(|(entry, result)| match result {
            Ok(()) => {
                tracing::info!(
                    event = %format!("{}/{}", entry.group, entry.event),
                    "removed a tracefs probe event whose removal had failed before"
                );
                None
            }
            Err(_) => Some(entry),
        })
        .collect()
}

/// The kept events, as `group/event`.
pub(crate) fn kept() -> Vec<String> {
    PENDING
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|e| format!("{}/{}", e.group, e.event))
        .collect()
}

extern "C" fn retry_at_exit() {
    // Never unwind out of an extern "C" function.
    let _ = std::panic::catch_unwind(|| {
        retry();
        let kept = kept();
        if !kept.is_empty() {
            tracing::warn!(
                ?kept,
                "exiting with tracefs probe events that could not be removed; the stale-event reaper of another process removes them"
            );
        }
    });
}
