//! How a perf-event probe is created: [`Backend`].

/// How a probe for a perf-event link is created.
///
/// [`Backend::Auto`] is right for nearly everyone: the perf PMU (`perf_kprobe`,
/// `perf_uprobe`, kernel 4.17+) first, which needs no tracefs and leaves nothing behind if
/// the process dies; `kprobe_events`/`uprobe_events` in tracefs where the PMU is missing or
/// rejects the symbol (as cilium/ebpf does). The other two force one path.
///
/// A program loaded for a multi link (`expected_attach_type` `kprobe_multi` or
/// `uprobe_multi`) is attached through a multi link and creates no perf event; for it,
/// [`Backend::Tracefs`] is an invalid-input error.
///
/// ```
/// use probeset::{Backend, Kprobe};
///
/// let forced = Kprobe::new("vfs_read").backend(Backend::Tracefs);
/// assert_eq!(forced.backend_value(), Backend::Tracefs);
/// assert_eq!(Backend::default(), Backend::Auto);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// The perf PMU first, tracefs as fallback.
    #[default]
    Auto,
    /// Only the perf PMU (`/sys/bus/event_source/devices/{kprobe,uprobe}`).
    Pmu,
    /// Only tracefs (`kprobe_events`/`uprobe_events`); needs tracefs mounted.
    Tracefs,
}
