//! The `kprobe_events`/`uprobe_events` files themselves: the lines they list, appending a
//! line, removing events with the one `EBUSY` retry loop, and the kernel's limits on names
//! and lines. The leaf the probe-event guard, the pending removals and the reaper build on.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

/// The prefix of every tracefs group this crate creates:
/// `probeset_<pid>_<pidns>_<starttime>_<random>` (see [`reap_stale`](super::reap_stale)).
pub const GROUP_PREFIX: &str = "probeset_";

/// The kernel's limit on group and event names (`MAX_EVENT_NAME_LEN` 64, with the NUL).
pub(crate) const MAX_NAME_LEN: usize = 63;

/// The longest line the kernel parses in one write of a `*_events` file: it copies at most
/// `WRITE_BUFSIZE - 1` (4095) bytes per line and refuses a longer one with `EINVAL`.
pub(crate) const MAX_LINE_LEN: usize = 4095;

/// How long a removal that the kernel answers with `EBUSY` is retried. Right after the last
/// perf fd of an event is closed (or its owner was killed) removal fails with `EBUSY` for a
/// while (~250 ms measured here).
pub(crate) const BUSY_RETRY: Duration = Duration::from_secs(3);

/// Why an event was not removed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The events file could not be opened: `ENOENT` when tracefs is no longer mounted
    /// there, `EMFILE` when the process has no descriptor left.
    Open(io::Error),
    /// The kernel refused the `-:` line (`EBUSY` for longer than the patience, ...).
    Write(io::Error),
}

impl Failure {
    /// The underlying error.
    pub(crate) fn io(&self) -> &io::Error {
        match self {
            Failure::Open(e) | Failure::Write(e) => e,
        }
    }

    /// Whether the kernel said the event is busy.
    pub(crate) fn is_busy(&self) -> bool {
        matches!(self, Failure::Write(e) if e.raw_os_error() == Some(libc::EBUSY))
    }

    /// The underlying error, owned.
    pub(crate) fn into_io(self) -> io::Error {
        match self {
            Failure::Open(e) | Failure::Write(e) => e,
        }
    }
}

/// The `(group, event)` names in an events file's text.
pub(crate) fn listed_events(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|line| {
        let name = line.split_whitespace().next()?.split_once(':')?.1;
        name.split_once('/')
    })
}

/// Appends one line to a `*_events` file (never truncating it: that would delete every
/// probe event on the machine).
pub(crate) fn append(path: &Path, line: &str) -> Result<(), Failure> {
    open_for_append(path)
        .map_err(Failure::Open)?
        .write_all(line.as_bytes())
        .map_err(Failure::Write)
}

fn open_for_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().append(true).open(path)
}

/// A copy of `e` (one open failure answers for every event).
fn copy(e: &io::Error) -> io::Error {
    e.raw_os_error().map_or_else(
        || io::Error::new(e.kind(), e.to_string()),
        io::Error::from_raw_os_error,
    )
}

/// Removes `GROUP/EVENT` for each of `events` (writes `-:GROUP/EVENT` through one open
/// descriptor), retrying those the kernel answers with `EBUSY` in rounds for up to
/// `patience`. An event the kernel says is already gone (`ENOENT` from the write) counts as
/// removed; an events file that cannot be opened fails every event. One result per event,
/// in order.
pub(crate) fn remove(
    path: &Path,
    events: &[(&str, &str)],
    patience: Duration,
) -> Vec<Result<(), Failure>> {
    let mut file = match open_for_append(path) {
        Ok(f) => f,
        Err(e) => {
            return events
                .iter()
                .map(|_| Err(Failure::Open(copy(&e))))
                .collect()
        }
    };
    let deadline = Instant::now() + patience;
    let mut results: Vec<Option<Result<(), Failure>>> = events.iter().map(|_| None).collect();
    let mut pause = Duration::from_millis(5);
    loop {
        let mut busy = false;
        for (slot, (group, event)) in results.iter_mut().zip(events) {
            if slot.is_some() {
                continue;
            }
            match file.write_all(format!("-:{group}/{event}").as_bytes()) {
                Ok(()) => *slot = Some(Ok(())),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => *slot = Some(Ok(())),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    busy = true;
                }
                Err(e) => *slot = Some(Err(Failure::Write(e))),
            }
        }
        if !busy {
            break;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
    results
        .into_iter()
        .map(|r| r.expect("every event has a result once no event is busy"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_event_lines() {
        let text =
            "p:probeset_1_2_3_0123456789abcd/f /bin/x:0x10\nr16:kprobes/g do_sys_open\n\ngarbage\n";
        let v: Vec<_> = listed_events(text).collect();
        assert_eq!(
            v,
            vec![("probeset_1_2_3_0123456789abcd", "f"), ("kprobes", "g")]
        );
    }

    #[test]
    fn removal_results_line_up() {
        // A plain file stands in for the events file: every removal line is appended.
        let path = std::env::temp_dir().join(format!("probeset-events-{}", std::process::id()));
        std::fs::write(&path, "").unwrap();
        let r = remove(&path, &[("g", "a"), ("g", "b")], Duration::ZERO);
        assert!(r.iter().all(Result::is_ok));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "-:g/a-:g/b");
        std::fs::remove_file(&path).unwrap();
        // No events file: every event fails at the open, not as "already gone".
        let r = remove(&path, &[("g", "a"), ("g", "b")], Duration::ZERO);
        assert!(r.iter().all(|r| matches!(
            r,
            Err(Failure::Open(e)) if e.raw_os_error() == Some(libc::ENOENT)
        )));
    }
}
