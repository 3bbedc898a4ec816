//! What kind of probe, and how it is created: [`Probe`], [`Backend`].

use std::os::fd::AsFd;

use crate::{Error, Kprobe, Link, Uprobe};

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

/// Kernel or user probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ProbeKind {
    Kprobe,
    Uprobe,
}

impl ProbeKind {
    pub(crate) fn pmu_name(self) -> &'static str {
        match self {
            ProbeKind::Kprobe => "kprobe",
            ProbeKind::Uprobe => "uprobe",
        }
    }

    pub(crate) fn events_file(self) -> &'static str {
        match self {
            ProbeKind::Kprobe => "kprobe_events",
            ProbeKind::Uprobe => "uprobe_events",
        }
    }

    pub(crate) fn noun_plural(self) -> &'static str {
        match self {
            ProbeKind::Kprobe => "kprobes",
            ProbeKind::Uprobe => "uprobes",
        }
    }

    pub(crate) fn tracefs_config(self) -> &'static str {
        match self {
            ProbeKind::Kprobe => "CONFIG_KPROBE_EVENTS (or CONFIG_KPROBES)",
            ProbeKind::Uprobe => "CONFIG_UPROBE_EVENTS (or CONFIG_UPROBES)",
        }
    }
}

/// Either kind of probe.
///
/// Two probes are equal when they would create the same kernel probe: same kind, target
/// (symbol, or binary and offset), direction, pid and backend. The cookie is not part of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Probe {
    /// A kernel probe.
    Kprobe(Kprobe),
    /// A user-space probe.
    Uprobe(Uprobe),
}

impl From<Kprobe> for Probe {
    fn from(k: Kprobe) -> Probe {
        Probe::Kprobe(k)
    }
}

impl From<Uprobe> for Probe {
    fn from(u: Uprobe) -> Probe {
        Probe::Uprobe(u)
    }
}

impl Probe {
    /// The cookie `bpf_get_attach_cookie()` returns for this probe.
    #[must_use]
    pub fn cookie_value(&self) -> u64 {
        match self {
            Probe::Kprobe(k) => k.cookie_value(),
            Probe::Uprobe(u) => u.cookie_value(),
        }
    }

    /// The same probe with another cookie.
    #[must_use]
    pub fn with_cookie(self, cookie: u64) -> Probe {
        match self {
            Probe::Kprobe(k) => Probe::Kprobe(k.cookie(cookie)),
            Probe::Uprobe(u) => Probe::Uprobe(u.cookie(cookie)),
        }
    }

    /// Whether this is a return probe.
    #[must_use]
    pub fn is_retprobe(&self) -> bool {
        match self {
            Probe::Kprobe(k) => k.is_retprobe(),
            Probe::Uprobe(u) => u.is_retprobe(),
        }
    }

    /// Attaches `prog` to this probe: [`Kprobe::attach`] or [`Uprobe::attach`].
    ///
    /// # Errors
    /// As [`Kprobe::attach`] and [`Uprobe::attach`].
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped, whatever it created is released.
    pub async fn attach(self, prog: impl AsFd) -> Result<Link, Error> {
        match self {
            Probe::Kprobe(k) => k.attach(prog).await,
            Probe::Uprobe(u) => u.attach(prog).await,
        }
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Kprobe(k) => k.fmt(f),
            Probe::Uprobe(u) => u.fmt(f),
        }
    }
}
