//! Whether this process may create probe events: the `*_events` file exists and opens for
//! writing (the kernel checks the file's permission, root's, at open).

use crate::probe::ProbeKind;

/// Whether `kprobe_events`/`uprobe_events` exists and this process may write it. Opens it
/// for appending and closes it again; writes nothing.
pub(crate) fn events_writable(kind: ProbeKind) -> bool {
    super::mount::mount_point().is_some_and(|root| {
        std::fs::OpenOptions::new()
            .append(true)
            .open(root.join(kind.events_file()))
            .is_ok()
    })
}
