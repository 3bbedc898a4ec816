//! One probe event in `kprobe_events`/`uprobe_events`: the text written to create it, the
//! errno map of that write, and the guard that removes it again.

use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;

use super::events::{self, Failure, BUSY_RETRY, MAX_LINE_LEN, MAX_NAME_LEN};
use super::{mount, owner, pending};
use crate::error::Error;
use crate::probe::ProbeKind;

/// What a probe event is created for.
#[derive(Debug)]
pub(crate) struct EventSpec<'a> {
    pub kind: ProbeKind,
    pub ret: bool,
    pub maxactive: Option<u32>,
    /// The kernel symbol, or the binary's path.
    pub name: &'a str,
    /// Offset into the symbol, or file offset into the binary.
    pub offset: u64,
    pub ref_ctr_offset: u64,
    /// The symbol (or offset) to name the event after.
    pub event_hint: &'a str,
    /// How to name the probe in messages, e.g. `kprobe "vfs_read"+0x4`.
    pub display: &'a str,
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

/// The target token of a probe line: `SYM[+OFFS]` or `PATH:0xOFF[(0xREFCTR)]`.
///
/// # Errors
/// Invalid input for a path tracefs would misread (see [`misread_in_path`]).
pub(crate) fn target(spec: &EventSpec<'_>) -> Result<String, Error> {
    Ok(match spec.kind {
        ProbeKind::Kprobe if spec.offset == 0 => spec.name.to_string(),
        ProbeKind::Kprobe => format!("{}+{:#x}", spec.name, spec.offset),
        ProbeKind::Uprobe => {
            if let Some(why) = misread_in_path(spec.name) {
                return Err(Error::invalid(
                    format!("binary path {:?}", spec.name),
                    format!(
                        "tracefs cannot take {why}; use Backend::Pmu, or name the binary by a \
                         path without it (a symlink)"
                    ),
                ));
            }
            let mut t = format!("{}:{:#x}", spec.name, spec.offset);
            if spec.ref_ctr_offset != 0 {
                let _ = write!(t, "({:#x})", spec.ref_ctr_offset);
            }
            t
        }
    })
}

/// What the kernel would misread in a binary path of a probe line, as "the character ...
/// in a path (why)". The kernel (`trace_parse_run_command`, then `argv_split`) cuts the line
/// at a newline, drops everything from a `#` on as a comment, and splits the rest at
/// `isspace()`, which takes the bytes 9-13, 32 and also 0xa0 for white space; a NUL ends it.
/// What it then reads as the path is not what was named, or nothing at all. `:`, `%` and
/// `(` are safe: the offset is found after the last `:`.
fn misread_in_path(path: &str) -> Option<String> {
    path.chars().find_map(|c| {
        let why = match c {
            '#' => "'#' starts a comment: the kernel drops the rest of the line",
            c if c.is_whitespace() => "white space separates the fields of the line",
            c if c.is_control() => "a control character cannot be written into a probe line",
            c if c.encode_utf8(&mut [0; 4]).bytes().any(|b| b == 0xa0) => {
                "its UTF-8 holds the byte 0xa0, which the kernel's isspace() takes for white space"
            }
            _ => return None,
        };
        Some(format!(
            "the character {c:?} (U+{:04X}) in a path ({why})",
            u32::from(c)
        ))
    })
}

/// The line, if the kernel parses it whole: at most [`MAX_LINE_LEN`] bytes.
fn check_line(spec: &EventSpec<'_>, line: &str) -> Result<(), Error> {
    if line.len() <= MAX_LINE_LEN {
        return Ok(());
    }
    Err(Error::invalid(
        spec.display.to_string(),
        format!(
            "its tracefs line would be {} bytes and the kernel parses at most {MAX_LINE_LEN}; \
             use Backend::Pmu, or name the binary by a shorter path (a symlink)",
            line.len()
        ),
    ))
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

fn is_denied(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM))
}

/// What writing a `*_events` file needs.
pub(crate) fn write_access(events_file: &std::path::Path) -> String {
    format!(
        "write access to uprobe_events/kprobe_events ({}, root's: run as root, or with \
         CAP_DAC_OVERRIDE)",
        events_file.display()
    )
}

/// Maps the errno of the write that creates a probe event.
fn write_error(spec: &EventSpec<'_>, e: io::Error) -> Error {
    let what = spec.display.to_string();
    match e.raw_os_error() {
        // A missing symbol or binary.
        Some(libc::ENOENT) => Error::not_found(what, "", Some(e)),
        Some(libc::EINVAL) => {
            let hint = match spec.kind {
                ProbeKind::Kprobe => {
                    "check /proc/kallsyms (or available_filter_functions) for the symbol"
                }
                ProbeKind::Uprobe => "the offset is outside the binary's text",
            };
            Error::not_found(what, hint, Some(e))
        }
        Some(libc::EILSEQ) => Error::not_found(
            what,
            "the offset is not on an instruction boundary",
            Some(e),
        ),
        Some(libc::ERANGE) => {
            Error::not_found(what, "the offset is past the end of the symbol", Some(e))
        }
        _ => Error::syscall("write", what, e),
    }
}

/// A probe event this crate created, removed again when dropped (or by
/// [`ProbeEvent::remove`]). A removal that fails leaves the event's name with the pending
/// removals (`pending`), which this process retries; the reaper removes it once the process
/// is gone.
#[derive(Debug)]
pub(crate) struct ProbeEvent {
    /// `uprobe_events` or `kprobe_events`.
    file: &'static str,
    /// The tracefs mount the event was created in.
    root: PathBuf,
    group: String,
    event: String,
    armed: bool,
}

impl ProbeEvent {
    /// Creates the probe event in a new group of this process. Retries this process's failed
    /// removals, and runs the stale-event reaper first if this process has not yet.
    ///
    /// # Errors
    /// Not supported when tracefs or the events file is missing; invalid input for a line
    /// tracefs would misread; the write's errno, normalised (see `write_error`).
    pub(crate) fn create(spec: &EventSpec<'_>) -> Result<ProbeEvent, Error> {
        let kind = spec.kind;
        let root = mount::require_mount()?;
        let events_file = root.join(kind.events_file());
        if !events_file.exists() {
            // Unmounted since it was found: say so, not that the kernel lacks the file.
            mount::require_mount()?;
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
        let target = target(spec)?;
        pending::retry();
        super::reaper::ensure_ran();
        let group = owner::new_group();
        let event = event_name(spec.event_hint);
        let line = create_line(spec.ret, spec.maxactive, &group, &event, &target);
        check_line(spec, &line)?;
        tracing::debug!(line, "creating tracefs probe event");
        events::append(&events_file, &line).map_err(|f| match f {
            Failure::Open(e) if e.raw_os_error() == Some(libc::ENOENT) => Error::not_supported(
                format!("{} through tracefs", kind.noun_plural()),
                mount::MOUNT_HINT,
                Some(e),
            ),
            Failure::Open(e) if is_denied(&e) => Error::permission(
                "open",
                format!("{} for {}", events_file.display(), spec.display),
                write_access(&events_file),
                e,
            ),
            Failure::Open(e) => Error::syscall("open", events_file.display().to_string(), e),
            Failure::Write(e) if is_denied(&e) => {
                Error::permission("write", spec.display, write_access(&events_file), e)
            }
            Failure::Write(e) => write_error(spec, e),
        })?;
        Ok(ProbeEvent {
            file: kind.events_file(),
            root,
            group,
            event,
            armed: true,
        })
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

    /// Writes `-:GROUP/EVENT` to the events file of wherever tracefs is mounted now
    /// (retrying `EBUSY` for a while), then retries this process's earlier failed removals.
    /// A failure keeps the event's name with them.
    fn remove_now(&self) -> Result<(), Failure> {
        let result = match mount::mount_point() {
            Some(root) => {
                let events = [(self.group.as_str(), self.event.as_str())];
                events::remove(&root.join(self.file), &events, BUSY_RETRY)
                    .pop()
                    .expect("one result per event")
            }
            None => Err(Failure::Open(io::Error::from_raw_os_error(libc::ENOENT))),
        };
        pending::retry();
        if let Err(f) = &result {
            pending::keep(self.file, &self.group, &self.event, f);
        }
        result
    }

    /// The error of a failed removal: what was written where, why it failed, and what
    /// becomes of the event.
    fn removal_error(&self, failure: Failure) -> Error {
        let line = format!(
            "-:{}/{} to {}",
            self.group,
            self.event,
            self.root.join(self.file).display()
        );
        let (call, why) = match &failure {
            Failure::Open(e) if e.raw_os_error() == Some(libc::ENOENT) => (
                "open",
                format!(
                    ": tracefs is not mounted at {} any more",
                    self.root.display()
                ),
            ),
            Failure::Open(_) => ("open", String::new()),
            Failure::Write(_) => ("write", String::new()),
        };
        Error::syscall(
            call,
            format!(
                "{line}{why}; the event stays in the kernel: this process retries its removal \
                 at its next tracefs operation, and the stale-event reaper of another process \
                 removes it once this one has exited"
            ),
            failure.into_io(),
        )
    }

    /// Removes the event, reporting failure.
    pub(crate) fn remove(mut self) -> Result<(), Error> {
        self.armed = false;
        self.remove_now().map_err(|f| self.removal_error(f))
    }
}

impl Drop for ProbeEvent {
    fn drop(&mut self) {
        if self.armed {
            if let Err(f) = self.remove_now() {
                tracing::warn!(
                    event = %self.qualified_name(),
                    error = %f.io(),
                    "could not remove tracefs probe event; it is retried at this process's next tracefs operation, and the stale-event reaper of another process removes it once this one has exited"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: ProbeKind, name: &'static str, offset: u64, ref_ctr: u64) -> EventSpec<'static> {
        EventSpec {
            kind,
            ret: false,
            maxactive: None,
            name,
            offset,
            ref_ctr_offset: ref_ctr,
            event_hint: name,
            display: name,
        }
    }

    #[test]
    fn target_tokens() {
        assert_eq!(
            target(&spec(ProbeKind::Kprobe, "vfs_read", 0, 0)).unwrap(),
            "vfs_read"
        );
        assert_eq!(
            target(&spec(ProbeKind::Kprobe, "vfs_read", 4, 0)).unwrap(),
            "vfs_read+0x4"
        );
        assert_eq!(
            target(&spec(ProbeKind::Uprobe, "/bin/x", 0x10, 0)).unwrap(),
            "/bin/x:0x10"
        );
        assert_eq!(
            target(&spec(ProbeKind::Uprobe, "/bin/x", 0x10, 0x20)).unwrap(),
            "/bin/x:0x10(0x20)"
        );
        assert!(target(&spec(ProbeKind::Uprobe, "/a b", 0, 0))
            .unwrap_err()
            .is_invalid_input());
    }

    #[test]
    fn paths_tracefs_would_misread_are_refused() {
        for (path, named) in [
            ("/x/other:0x1155#/victim", "'#'"),
            ("/a b", "' '"),
            ("/a\tb", "'\\t'"),
            ("/a\nb", "'\\n'"),
            ("/a\rb", "'\\r'"),
            ("/a\u{b}b", "'\\u{b}'"),
            ("/a\0b", "'\\0'"),
            ("/a\u{1}b", "'\\u{1}'"),
            ("/a\u{7f}b", "'\\u{7f}'"),
            ("/a\u{85}b", "'\\u{85}'"),
            ("/a\u{a0}b", "'\\u{a0}'"),
            // 'à' is C3 A0 in UTF-8, 'Ġ' C4 A0: the kernel splits at the A0.
            ("/voilà/bin", "'à' (U+00E0)"),
            ("/Ġ", "'Ġ' (U+0120)"),
            // Unicode white space the kernel would not split at: refused all the same.
            ("/a\u{2028}b", "U+2028"),
        ] {
            let err = target(&spec(ProbeKind::Uprobe, path, 0x10, 0)).unwrap_err();
            assert!(err.is_invalid_input(), "{path:?}: {err}");
            let msg = err.to_string();
            assert!(msg.contains(named), "{path:?}: {msg} does not name {named}");
            assert!(msg.contains("Backend::Pmu"), "{msg}");
        }
        // What the kernel reads as written: the offset is after the last ':'.
        for path in ["/a:b/c", "/a%return/b", "/a(0x1)/b", "/caf\u{e9}"] {
            let want = format!("{path}:0x10");
            assert_eq!(
                target(&spec(ProbeKind::Uprobe, path, 0x10, 0)).unwrap(),
                want
            );
        }
    }

    #[test]
    fn lines_longer_than_the_kernel_parses_are_refused() {
        let s = spec(ProbeKind::Uprobe, "/x", 0x10, 0);
        assert!(check_line(&s, &"p".repeat(MAX_LINE_LEN)).is_ok());
        let err = check_line(&s, &"p".repeat(MAX_LINE_LEN + 1)).unwrap_err();
        assert!(err.is_invalid_input(), "{err}");
        assert!(err.to_string().contains("4096 bytes"), "{err}");
    }

    #[test]
    fn write_errnos() {
        let s = spec(ProbeKind::Uprobe, "/bin/x", 0x10, 0);
        let e = |n| write_error(&s, io::Error::from_raw_os_error(n));
        assert!(e(libc::ENOENT).is_not_found());
        assert!(e(libc::EINVAL).is_not_found());
        assert!(e(libc::EILSEQ).is_not_found());
        assert!(e(libc::EACCES).is_permission_denied());
        assert_eq!(e(libc::EEXIST).raw_os_error(), Some(libc::EEXIST));
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
