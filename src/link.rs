//! What an attached probe owns: [`Link`].

use std::os::fd::OwnedFd;

use crate::tracefs::ProbeEvent;
use crate::{cleanup, Backend, Error, Probe};

/// How an attached probe is held in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LinkKind {
    /// A perf event with a `BPF_PERF_EVENT` link (kernel 5.15+; carries the cookie).
    PerfLink,
    /// A perf event with the program set by `PERF_EVENT_IOC_SET_BPF` (older kernels; no
    /// cookie).
    PerfIoctl,
    /// A `BPF_TRACE_UPROBE_MULTI` link (kernel 6.6+).
    UprobeMulti,
    /// A `BPF_TRACE_KPROBE_MULTI` link (kernel 5.18+ with `CONFIG_FPROBE`).
    KprobeMulti,
}

/// The kernel objects behind one attachment, released in order: the BPF link, then the perf
/// event, then the tracefs event (which cannot be removed while a perf event on it is open).
///
/// [`Attached::release`] releases them here and now (blocking). Dropping an `Attached` that
/// was not released hands them to the background thread instead, so a drop never blocks
/// the caller: an `Attached` may sit in an async state machine (a batch being rolled back,
/// a removal awaiting a rebuild) that a cancellation drops on a runtime worker.
#[derive(Debug)]
pub(crate) struct Attached {
    /// The BPF link (perf or multi), when the kernel has them.
    pub link: Option<OwnedFd>,
    /// The perf event, only when no BPF link holds it (the `PERF_EVENT_IOC_SET_BPF` path): a
    /// perf link keeps its event alive and releases it when it is closed, so one descriptor
    /// per probe is enough.
    pub perf: Option<OwnedFd>,
    pub event: Option<ProbeEvent>,
    pub tracefs_event_name: Option<String>,
    pub kind: LinkKind,
    pub backend: Option<Backend>,
}

impl Attached {
    /// Releases everything, reporting a tracefs event that could not be removed. Blocks
    /// (closing a perf event waits for RCU: ~0.1 s).
    pub(crate) fn release(mut self) -> Result<(), Error> {
        drop(self.link.take());
        drop(self.perf.take());
        match self.event.take() {
            Some(event) => event.remove(),
            None => Ok(()),
        }
    }
}

/// An attached probe. Owns the BPF link or perf event, and the tracefs event if any.
///
/// [`Link::detach`] releases it and reports errors. Dropping it detaches too, without
/// blocking: the slow part (closing a perf event takes ~0.1 s of kernel RCU time) runs on a
/// background thread, so dropping works with no runtime at all, during runtime shutdown and
/// during panic unwinding. [`crate::cleanup::wait_idle`] waits for such background work.
#[derive(Debug)]
pub struct Link {
    inner: Option<Attached>,
    probe: Probe,
}

impl Link {
    pub(crate) fn new(inner: Attached, probe: Probe) -> Link {
        Link {
            inner: Some(inner),
            probe,
        }
    }

    /// The probe this link holds (with the cookie it was attached with).
    #[must_use]
    pub fn probe(&self) -> &Probe {
        &self.probe
    }

    /// How the probe is held in the kernel.
    #[must_use]
    pub fn kind(&self) -> LinkKind {
        self.attached().kind
    }

    /// Which backend created the probe: [`Backend::Pmu`] or [`Backend::Tracefs`] for a
    /// perf-event link, `None` for a multi link (which needs neither).
    #[must_use]
    pub fn backend(&self) -> Option<Backend> {
        self.attached().backend
    }

    /// The tracefs event behind the probe, as `group/event` (the tracefs backend only).
    #[must_use]
    pub fn tracefs_event(&self) -> Option<&str> {
        self.attached().tracefs_event_name.as_deref()
    }

    fn attached(&self) -> &Attached {
        self.inner
            .as_ref()
            .expect("a Link holds its attachment until detach or drop")
    }

    /// Detaches the probe and waits until every kernel object it held is released: BPF
    /// link and perf fds closed, tracefs event removed.
    ///
    /// Runs on tokio's blocking pool. Closing a perf event costs ~0.1 s of kernel time.
    ///
    /// # Errors
    /// When the tracefs event could not be removed (it stays inert; the stale-event reaper
    /// of a later process removes it).
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped, the release still completes on the blocking
    /// pool.
    pub async fn detach(mut self) -> Result<(), Error> {
        let inner = self
            .inner
            .take()
            .expect("a Link holds its attachment until detach or drop");
        crate::blocking::run(move || inner.release()).await
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // A tuple drops its fields first to last: link, perf event, tracefs event.
        let parts = (self.link.take(), self.perf.take(), self.event.take());
        if parts.0.is_some() || parts.1.is_some() || parts.2.is_some() {
            cleanup::defer(parts);
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            cleanup::defer_with(move || {
                if let Err(e) = inner.release() {
                    tracing::warn!(error = %e, "releasing a dropped link");
                }
            });
        }
    }
}
