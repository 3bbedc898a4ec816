//! Where tracefs is mounted.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::error::Error;

/// The hint every "tracefs is not mounted" error carries.
pub(crate) const MOUNT_HINT: &str =
    "tracefs is not mounted: mount it with `mount -t tracefs nodev /sys/kernel/tracing`";

/// Where tracefs is mounted: the first `tracefs` entry of `/proc/self/mountinfo`, else
/// `/sys/kernel/tracing`, else `/sys/kernel/debug/tracing`, whichever holds a tracefs.
/// A found mount point is cached for as long as it still holds a tracefs (checked on every
/// call, one `stat`); once tracefs is unmounted there, or while none is found, it is looked
/// for again on the next call (so a process that mounts tracefs later, or again elsewhere,
/// is served).
#[must_use]
pub fn mount_point() -> Option<PathBuf> {
    static FOUND: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut found = FOUND.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(p) = found.as_ref().filter(|p| is_tracefs_dir(p)) {
        return Some(p.clone());
    }
    *found = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| mountinfo_tracefs(&m))
        .filter(|p| is_tracefs_dir(p))
        .or_else(|| {
            ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| is_tracefs_dir(p))
        });
    found.clone()
}

/// The tracefs mount, or a not-supported error saying how to mount it, or (when it is
/// mounted but this process may not look inside: `/sys/kernel/tracing` is mode 0700,
/// root's) a permission error saying so.
pub(crate) fn require_mount() -> Result<PathBuf, Error> {
    if let Some(p) = mount_point() {
        return Ok(p);
    }
    let listed = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| mountinfo_tracefs(&m));
    if let Some(p) = listed {
        if let Err(e) = std::fs::metadata(p.join("events")) {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                return Err(Error::permission(
                    "open",
                    p.display().to_string(),
                    format!(
                        "search access to {} (mounted, mode 0700, root's: run as root, or with \
                         CAP_DAC_OVERRIDE or CAP_DAC_READ_SEARCH), and write access to its \
                         uprobe_events/kprobe_events",
                        p.display()
                    ),
                    e,
                ));
            }
        }
    }
    Err(Error::not_supported("tracefs", MOUNT_HINT, None))
}

fn is_tracefs_dir(p: &Path) -> bool {
    p.join("events").is_dir()
}

/// The mount point of the first `tracefs` line of a `/proc/self/mountinfo` text.
pub(crate) fn mountinfo_tracefs(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "tracefs" {
            return None;
        }
        Some(PathBuf::from(unescape_octal(
            left.split_whitespace().nth(4)?,
        )))
    })
}

/// Undoes the kernel's `\ooo` escaping of spaces, tabs, newlines and backslashes in
/// mountinfo paths.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if let Some(v) = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tracefs_in_mountinfo() {
        let m = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                 40 22 0:35 / /sys/kernel/my\\040tracing rw,relatime shared:9 - tracefs nodev rw\n";
        assert_eq!(
            mountinfo_tracefs(m),
            Some(PathBuf::from("/sys/kernel/my tracing"))
        );
        assert_eq!(
            mountinfo_tracefs("22 1 0:21 / /proc rw - proc proc rw\n"),
            None
        );
    }

    #[test]
    fn unescapes() {
        assert_eq!(unescape_octal("a\\040b\\134c"), "a b\\c");
        assert_eq!(unescape_octal("trailing\\04"), "trailing\\04");
    }
}
