//! What an attached probe owns, and how it is released: [`Link`] (public) over `Attached`
//! (the kernel objects).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use crate::backend::Backend;
use crate::blocking;
use crate::cleanup;
use crate::error::Error;
use crate::health::{self, LinkInfo, LinkSource};
use crate::probe::Probe;
use crate::resolve::FileIdent;
use crate::tracefs::probe_event::ProbeEvent;

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
    /// A `BPF_TRACE_UPROBE_SESSION` link (kernel 6.13+): the program runs on entry and on
    /// return of each probed function, through one link.
    UprobeSession,
    /// A `BPF_TRACE_KPROBE_SESSION` link (kernel 6.10+ with `CONFIG_FPROBE`).
    KprobeSession,
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
    /// The file a uprobe is on (`None` for a kprobe).
    pub binary: Option<Arc<FileIdent>>,
}

impl Attached {
    /// A multi link (which needs no perf event and no tracefs), on `binary` for uprobes.
    pub(crate) fn multi(link: OwnedFd, kind: LinkKind, binary: Option<Arc<FileIdent>>) -> Attached {
        Attached {
            link: Some(link),
            perf: None,
            event: None,
            tracefs_event_name: None,
            kind,
            backend: None,
            binary,
        }
    }

    /// Where its [`LinkInfo`] is read from; `kprobe`: whether it holds kprobes.
    pub(crate) fn source(&self, kprobe: bool) -> LinkSource<BorrowedFd<'_>> {
        LinkSource {
            link: self.link.as_ref().map(AsFd::as_fd),
            perf: self.perf.as_ref().map(AsFd::as_fd),
            tracefs_event: self.tracefs_event_name.clone(),
            kprobe,
        }
    }

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
/// ```no_run
/// # async fn f(prog: std::os::fd::OwnedFd) -> Result<(), probeset::Error> {
/// use probeset::{LinkKind, Uprobe};
///
/// let link = Uprobe::new("/lib/x86_64-linux-gnu/libc.so.6", "malloc").attach(&prog).await?;
/// println!("{} is held as {:?}", link.probe(), link.kind());
/// assert!(matches!(link.kind(), LinkKind::PerfLink | LinkKind::UprobeMulti | LinkKind::PerfIoctl));
/// link.detach().await?; // or drop it: the release then runs on a background thread
/// # Ok(()) }
/// ```
///
/// [`Link::detach`] releases it and reports errors. Dropping it detaches too, without
/// blocking: the slow part (closing a perf event takes ~0.1 s of kernel RCU time) runs on a
/// background thread, so dropping works with no runtime at all, during runtime shutdown and
/// during panic unwinding. [`crate::cleanup::wait_idle`] waits for such background work.
#[derive(Debug)]
#[must_use = "dropping a Link detaches its probe at once"]
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

    /// For a uprobe: whether its binary's path now names another file than the one the
    /// probe is on (the file was replaced, as a package upgrade does, renamed or removed).
    /// The probe stays on the file it was attached to, and keeps counting in the processes
    /// that still run it; attach again to probe the new file. `false` for a kprobe. One
    /// `stat` of the path.
    #[must_use]
    pub fn binary_replaced(&self) -> bool {
        self.attached()
            .binary
            .as_ref()
            .is_some_and(|b| b.is_replaced())
    }

    /// For a uprobe: the path of the file it is on, as it was named when it was attached.
    #[must_use]
    pub fn binary(&self) -> Option<&Path> {
        self.attached().binary.as_ref().map(|b| b.path.as_path())
    }

    /// What the kernel tells about the link: its id, its program's id, and how often the
    /// kernel did not run the program on the probe (see [`LinkInfo::missed`] for which
    /// kernels count that).
    ///
    /// Blocking but cheap: one `bpf(2)` call (`BPF_OBJ_GET_INFO_BY_FD`), and for a tracefs
    /// kprobe on a kernel before 6.7 one read of tracefs' `kprobe_profile`; fine to call
    /// from async code.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), probeset::Error> {
    /// use probeset::counter::{Counter, Flavour};
    /// use probeset::Kprobe;
    ///
    /// let counter = Counter::load(Flavour::Plain, 1)?;
    /// let link = Kprobe::new("vfs_read").attach(&counter).await?;
    /// let info = link.info()?;
    /// assert_eq!(info.program_id, probeset::health::program_stats(&counter)?.id);
    /// println!("link {:?} missed {:?}", info.id, info.missed);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The kernel's error (permission denied without the right to read the link's info; on
    /// the `PERF_EVENT_IOC_SET_BPF` path of kernels before 5.15, which has no link, asking
    /// the perf event needs `CAP_SYS_ADMIN`).
    pub fn info(&self) -> Result<LinkInfo, Error> {
        let source = self
            .attached()
            .source(matches!(self.probe, Probe::Kprobe(_)));
        let mut infos = health::read_links(std::slice::from_ref(&source))?;
        Ok(infos.pop().expect("one info per source"))
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
    /// When the tracefs event could not be removed (tracefs unmounted, no descriptor left):
    /// the error says why; the event stays inert, this process retries its removal at its
    /// next tracefs operation and at exit, and the reaper removes it once this process has
    /// exited.
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped, the release still completes on the blocking
    /// pool.
    pub async fn detach(mut self) -> Result<(), Error> {
        let inner = self
            .inner
            .take()
            .expect("a Link holds its attachment until detach or drop");
        blocking::run(move || inner.release()).await
    }

    /// [`Link::detach`] without an async runtime: releases here and now, blocking the
    /// calling thread (~0.1 s for a perf event).
    ///
    /// # Errors
    /// As [`Link::detach`].
    pub fn detach_blocking(mut self) -> Result<(), Error> {
        self.inner
            .take()
            .expect("a Link holds its attachment until detach or drop")
            .release()
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

/// At most this many threads release at once.
const RELEASE_THREADS: usize = 64;

/// Releases `items` on up to 64 threads; one result per item, in order.
///
/// Releasing waits for kernel RCU grace periods, which concurrent releases share: 40
/// uprobe multi links take ~2.2 s one after another and ~80 ms in parallel (measured on the
/// host). Perf events gain less (their teardown is serialised in the kernel), but do not
/// lose.
pub(crate) fn release_all_blocking(items: Vec<Attached>) -> Vec<Result<(), Error>> {
    if items.len() <= 1 {
        return items.into_iter().map(Attached::release).collect();
    }
    let per = items.len().div_ceil(RELEASE_THREADS);
    let mut items = items.into_iter();
    let chunks: Vec<Vec<Attached>> = std::iter::from_fn(|| {
        let chunk: Vec<Attached> = items.by_ref().take(per).collect();
        (!chunk.is_empty()).then_some(chunk)
    })
    .collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let n = chunk.len();
                let job = move || chunk.into_iter().map(Attached::release).collect::<Vec<_>>();
                match std::thread::Builder::new()
                    .name("probeset-release".into())
                    .spawn_scoped(scope, job)
                {
                    Ok(h) => Err(h),
                    // No thread to be had: the job was dropped, and with it the chunk,
                    // which releases it (best effort, errors unseen).
                    Err(_) => Ok((0..n).map(|_| Ok(())).collect()),
                }
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h {
                Err(h) => h.join().unwrap_or_default(),
                Ok(v) => v,
            })
            .collect()
    })
}

/// [`release_all_blocking`] on tokio's blocking pool; one result per item, in order.
pub(crate) async fn release_all(items: Vec<Attached>) -> Vec<Result<(), Error>> {
    if items.is_empty() {
        return Vec::new();
    }
    let n = items.len();
    blocking::run(move || Ok(release_all_blocking(items)))
        .await
        // The runtime is shutting down: the items were dropped, which releases them.
        .unwrap_or_else(|_| (0..n).map(|_| Err(Error::RuntimeShutdown)).collect())
}

/// Releases `items` in parallel without blocking the caller: on a thread of its own (see
/// [`cleanup::spawn_with`]), for the attachments of a batch whose future was dropped.
pub(crate) fn release_all_in_background(items: Vec<Attached>) {
    if items.is_empty() {
        return;
    }
    cleanup::spawn_with(move || {
        for e in release_all_blocking(items)
            .into_iter()
            .filter_map(Result::err)
        {
            tracing::warn!(error = %e, "releasing the probes of a cancelled batch");
        }
    });
}
