//! The stale-event reaper: removes probe events of `probeset_<pid>_*` groups whose owner
//! process no longer exists.

use std::path::Path;
use std::sync::Once;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

use super::event::{group_owner, write_events};
use crate::Error;

/// What [`reap_stale`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reaped {
    /// The events removed, as `group/event`.
    pub removed: Vec<String>,
    /// Stale events that could not be removed, as `group/event`, with the reason.
    pub failed: Vec<(String, String)>,
}

/// Whether process `pid` is gone: `kill(pid, 0)` gives `ESRCH`. A process we may not signal
/// (`EPERM`) exists.
fn is_dead(pid: i32) -> bool {
    pid > 0 && kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH)
}

/// The `group/event` names in an events file's text, with their groups.
pub(crate) fn listed_events(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|line| {
        let name = line.split_whitespace().next()?.split_once(':')?.1;
        name.split_once('/')
    })
}

/// Removes every probe event in `kprobe_events` and `uprobe_events` whose group is
/// `probeset_<pid>_<hex>` and whose `pid` no longer exists. Never touches another tool's
/// events, nor those of a live process.
///
/// Removal right after the owner died can fail with `EBUSY` for a short while; each event is
/// retried for a few seconds.
///
/// # Errors
/// Not-supported when tracefs is not mounted. Events that could not be removed are listed
/// in [`Reaped::failed`], not returned as an error.
pub fn reap_stale_blocking() -> Result<Reaped, Error> {
    let root = super::mount::require_mount()?;
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
    let mut pending: Vec<(String, String)> = listed_events(&text)
        .filter(|(group, _)| group_owner(group).is_some_and(is_dead))
        .map(|(g, e)| (g.to_string(), e.to_string()))
        .collect();
    let deadline = Instant::now() + super::event::BUSY_RETRY;
    while !pending.is_empty() {
        let mut busy = Vec::new();
        for (group, event) in pending {
            let name = format!("{group}/{event}");
            match write_events(path, &format!("-:{name}")) {
                Ok(()) => reaped.removed.push(name),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    busy.push((group, event));
                }
                Err(e) => reaped.failed.push((name, e.to_string())),
            }
        }
        if !busy.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
        }
        pending = busy;
    }
    for name in &reaped.removed {
        tracing::info!(event = %name, "removed stale tracefs probe event of a dead process");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_event_lines() {
        let text = "p:probeset_1_ab/f /bin/x:0x10\nr16:kprobes/g do_sys_open\n\ngarbage\n";
        let v: Vec<_> = listed_events(text).collect();
        assert_eq!(v, vec![("probeset_1_ab", "f"), ("kprobes", "g")]);
    }

    #[test]
    fn liveness() {
        assert!(!is_dead(i32::try_from(std::process::id()).unwrap()));
        assert!(!is_dead(1));
        assert!(!is_dead(0));
        // pid_max is at most 2^22.
        assert!(is_dead(4_194_304 + 7));
    }
}
