//! Either kind of probe: [`Probe`].

use crate::kprobe::Kprobe;
use crate::uprobe::Uprobe;

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
///
/// ```
/// use probeset::{Kprobe, Probe, Uprobe};
///
/// let a: Probe = Uprobe::new("/bin/true", "main").cookie(1).into();
/// let b: Probe = Uprobe::new("/bin/true", "main").cookie(2).into();
/// assert_eq!(a, b, "the cookie is not part of a probe's identity");
/// assert_ne!(a, Probe::from(Kprobe::new("main")));
/// assert_eq!(a.to_string(), "uprobe \"/bin/true\":\"main\"");
/// ```
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
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Kprobe(k) => k.fmt(f),
            Probe::Uprobe(u) => u.fmt(f),
        }
    }
}
