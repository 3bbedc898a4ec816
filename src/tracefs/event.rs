//! Probe events in `kprobe_events`/`uprobe_events`: names, the lines written, and the guard
//! that removes an event again.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::probe::ProbeKind;
use crate::Error;

/// The prefix of every tracefs group this crate creates: `probeset_<pid>_<random hex>`.
pub const GROUP_PREFIX: &str = "probeset_";

/// The kernel's limit on group and event names (`MAX_EVENT_NAME_LEN` 64, with the NUL).
const MAX_NAME_LEN: usize = 63;

/// How long a removal that the kernel answers with `EBUSY` is retried. Right after the last
/// perf fd of an event is closed (or its owner was killed) removal fails with `EBUSY` for a
/// while (~250 ms measured here).
pub(crate) const BUSY_RETRY: Duration = Duration::from_secs(3);

/// A fresh group name for this process: `probeset_<pid>_<16 random hex digits>`.
pub(crate) fn new_group() -> String {
    let group = format!(
        "{GROUP_PREFIX}{}_{:016x}",
        std::process::id(),
        rand::random::<u64>()
    );
    debug_assert!(group.len() <= MAX_NAME_LEN);
    group
}

/// The owner pid of a group this crate created, or `None` for anyone else's group.
pub(crate) fn group_owner(group: &str) -> Option<i32> {
    let rest = group.strip_prefix(GROUP_PREFIX)?;
    let (pid, hex) = rest.split_once('_')?;
    if pid.is_empty()
        || !pid.bytes().all(|b| b.is_ascii_digit())
        || hex.is_empty()
        || !hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    pid.parse().ok()
}

/// An event name the kernel accepts (`[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes) made from
/// `hint`: other bytes become `_`, a leading digit gets a `_` in front, and a name that is
/// too long is cut and ends in a hash of the whole hint, so distinct long hints stay
/// distinct.
pub(crate) fn event_name(hint: &str) -> String {
    let mut name: String = hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
        name.insert(0, '_');
    }
    if name.len() > MAX_NAME_LEN {
        name.truncate(MAX_NAME_LEN - 17);
        let _ = write!(name, "_{:016x}", fnv1a(hint.as_bytes()));
    }
    name
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The line that creates a probe event (see the kernel's `kprobetrace.rst` and
/// `uprobetracer.rst`): `p:GRP/EV TARGET` or `r[MAXACTIVE]:GRP/EV TARGET`.
pub(crate) fn create_line(
    ret: bool,
    maxactive: Option<u32>,
    group: &str,
    event: &str,
    target: &str,
) -> String {
    let kind = match (ret, maxactive) {
        (false, _) => "p".to_string(),
        (true, None) => "r".to_string(),
        (true, Some(n)) => format!("r{n}"),
    };
    format!("{kind}:{group}/{event} {target}")
}

/// A probe event this crate created, removed again when dropped (or by [`ProbeEvent::remove`]).
#[derive(Debug)]
pub(crate) struct ProbeEvent {
    events_file: PathBuf,
    root: PathBuf,
    group: String,
    event: String,
    armed: bool,
}

/// Appends one line to a `*_events` file (never truncating it: that would delete every
/// probe event on the machine).
pub(crate) fn write_events(path: &Path, line: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().append(true).open(path)?;
    f.write_all(line.as_bytes())
}

impl ProbeEvent {
    /// Creates a probe event in a new group of this process.
    ///
    /// Runs the stale-event reaper first if this process has not yet. Errors: the raw
    /// `io::Error` of the write, for the caller to normalise (it knows whether the target
    /// was a kernel symbol or a file offset), or not-supported when the events file is
    /// missing.
    pub(crate) fn create(
        kind: ProbeKind,
        ret: bool,
        maxactive: Option<u32>,
        name_hint: &str,
        target: &str,
    ) -> Result<Result<ProbeEvent, io::Error>, Error> {
        let root = super::mount::require_mount()?;
        let events_file = root.join(kind.events_file());
        if !events_file.exists() {
            return Err(Error::not_supported(
                format!("{} through tracefs", kind.noun_plural()),
                format!(
                    "no {} in tracefs ({} is missing: the kernel lacks {})",
                    kind.events_file(),
                    events_file.display(),
                    kind.tracefs_config()
                ),
                None,
            ));
        }
        super::reaper::ensure_ran();
        let group = new_group();
        let event = event_name(name_hint);
        let line = create_line(ret, maxactive, &group, &event, target);
        tracing::debug!(line, "creating tracefs probe event");
        if let Err(e) = write_events(&events_file, &line) {
            return Ok(Err(e));
        }
        Ok(Ok(ProbeEvent {
            events_file,
            root,
            group,
            event,
            armed: true,
        }))
    }

    /// `group/event`, as listed in the events file.
    pub(crate) fn qualified_name(&self) -> String {
        format!("{}/{}", self.group, self.event)
    }

    /// The tracepoint id of the event, for `perf_event_open`.
    pub(crate) fn id(&self) -> Result<u64, Error> {
        let path = self
            .root
            .join("events")
            .join(&self.group)
            .join(&self.event)
            .join("id");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::syscall("read", path.display().to_string(), e))?;
        text.trim().parse().map_err(|_| {
            Error::syscall(
                "read",
                path.display().to_string(),
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not an event id: {text:?}"),
                ),
            )
        })
    }

    /// Removes the event (retrying `EBUSY` briefly), reporting failure.
    pub(crate) fn remove(mut self) -> Result<(), Error> {
        self.armed = false;
        remove_event(&self.events_file, &self.group, &self.event, BUSY_RETRY).map_err(|e| {
            Error::syscall(
                "write",
                format!(
                    "-:{}/{} to {}",
                    self.group,
                    self.event,
                    self.events_file.display()
                ),
                e,
            )
        })
    }
}

impl Drop for ProbeEvent {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = remove_event(&self.events_file, &self.group, &self.event, BUSY_RETRY) {
                tracing::warn!(
                    event = %self.qualified_name(),
                    error = %e,
                    "could not remove tracefs probe event; the stale-event reaper of a later process removes it"
                );
            }
        }
    }
}

/// Writes `-:GROUP/EVENT`, retrying `EBUSY` for up to `patience`. An event that is already
/// gone (`ENOENT`) counts as removed.
pub(crate) fn remove_event(
    events_file: &Path,
    group: &str,
    event: &str,
    patience: Duration,
) -> io::Result<()> {
    let line = format!("-:{group}/{event}");
    let deadline = Instant::now() + patience;
    let mut pause = Duration::from_millis(5);
    loop {
        match write_events(events_file, &line) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_ours_and_parse_back() {
        let g = new_group();
        assert!(g.starts_with(&format!("probeset_{}_", std::process::id())));
        assert!(g.len() <= MAX_NAME_LEN);
        assert_eq!(
            group_owner(&g),
            Some(i32::try_from(std::process::id()).unwrap())
        );
        assert_ne!(new_group(), g, "groups are random");
        assert_eq!(group_owner("probeset_12_ab"), Some(12));
        assert_eq!(group_owner("probeset_12"), None);
        assert_eq!(group_owner("probeset_x_ab"), None);
        assert_eq!(group_owner("probeset_12_xyz"), None);
        assert_eq!(group_owner("ebpf_12_ab"), None);
    }

    #[test]
    fn event_names_are_sanitised() {
        assert_eq!(event_name("udp_send_skb.isra.52"), "udp_send_skb_isra_52");
        assert_eq!(event_name("0x1234"), "_0x1234");
        assert_eq!(event_name(""), "_");
        assert_eq!(event_name("a+b:c"), "a_b_c");
        let long = "x".repeat(200);
        let n = event_name(&long);
        assert_eq!(n.len(), MAX_NAME_LEN);
        assert_ne!(
            n,
            event_name(&format!("{long}y")),
            "hashed names stay distinct"
        );
        assert_eq!(n, event_name(&long), "and deterministic");
    }

    #[test]
    fn lines() {
        assert_eq!(
            create_line(false, None, "g", "e", "sym+0x4"),
            "p:g/e sym+0x4"
        );
        assert_eq!(create_line(true, None, "g", "e", "sym"), "r:g/e sym");
        assert_eq!(create_line(true, Some(16), "g", "e", "sym"), "r16:g/e sym");
        assert_eq!(
            create_line(false, None, "g", "e", "/bin/x:0x10(0x20)"),
            "p:g/e /bin/x:0x10(0x20)"
        );
    }
}
