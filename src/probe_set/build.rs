//! Attaching a batch: multi links (one per group, bisected when the kernel refuses one) or
//! per-probe links (in chunks on the blocking pool, stopped early on failure or
//! cancellation), reporting [`Progress`] as it goes.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::watch;
use tracing::Instrument as _;

use super::held::{Held, Owned};
use super::plan;
use crate::attach::attach_one;
use crate::blocking;
use crate::error::Error;
use crate::link::{self, Attached};
use crate::multi_link::{self, Member, MultiKey, Sink};
use crate::probe::Probe;
use crate::program::ProgramKind;
use crate::resolve::Resolver;
use crate::validate;

/// How far a batch attach has come, for a progress bar: see
/// [`ProbeSet::progress`](super::ProbeSet::progress).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Probes in the current (or last) batch.
    pub total: usize,
    /// Probes of the batch attached so far.
    pub attached: usize,
    /// Probes of the batch that failed so far.
    pub failed: usize,
    /// The probe attached last, as text.
    pub current: Option<String>,
    /// The batch is over (attached, or failed and rolled back).
    pub done: bool,
}

/// A multi link a batch created, with the set's entries for its probes made *before* the
/// link existed (see [`Held::take_all`] for why allocations after it cost).
#[derive(Debug)]
struct BuiltMulti {
    key: MultiKey,
    attached: Attached,
    members: Vec<Member>,
    /// (map key, slot probe) for each member.
    entries: Vec<(Probe, Probe)>,
}

/// What a batch attached, and what failed.
#[derive(Debug, Default)]
pub(super) struct Built {
    singles: Vec<(Probe, Attached)>,
    multis: Vec<BuiltMulti>,
    pub failed: Vec<(Probe, Error)>,
}

impl Built {
    fn into_owned(self) -> Owned {
        Owned {
            singles: self.singles.into_iter().map(|(_, a)| a).collect(),
            multis: self.multis.into_iter().map(|m| m.attached).collect(),
        }
    }

    /// Records what the batch attached in `held`.
    pub(super) fn commit(self, held: &mut Held) {
        for (probe, a) in self.singles {
            held.insert_single(probe, a);
        }
        for m in self.multis {
            held.insert_multi(m.key, m.attached, m.members, Some(m.entries));
        }
    }
}

/// What a batch attaches with.
pub(super) struct Batch<'a> {
    pub prog: &'a Arc<OwnedFd>,
    pub progress: &'a Arc<watch::Sender<Progress>>,
    /// Per-probe attaches at once; `None`: the CPUs available.
    pub concurrency: Option<usize>,
}

/// Attaches `fresh` (validated, cookies assigned) with a program of `kind`. `atomic`: all
/// or nothing (a failure rolls back what was attached), else best effort (what could be
/// attached is returned with the failures).
pub(super) async fn build(
    batch: &Batch<'_>,
    kind: ProgramKind,
    fresh: Vec<Probe>,
    atomic: bool,
) -> Result<Built, Error> {
    let mechanism = if kind.is_multi() {
        "multi links"
    } else {
        "per-probe links"
    };
    let span =
        tracing::debug_span!("probeset_batch", probes = fresh.len(), program = ?kind, mechanism);
    let built = build_in(batch, kind, fresh, atomic)
        .instrument(span.clone())
        .await;
    let _entered = span.enter();
    match &built {
        Ok(b) => tracing::debug!(
            singles = b.singles.len(),
            multi_links = b.multis.len(),
            failed = b.failed.len(),
            "batch attached"
        ),
        Err(e) => tracing::debug!(error = %e, "batch failed and was rolled back"),
    }
    built
}

async fn build_in(
    batch: &Batch<'_>,
    kind: ProgramKind,
    fresh: Vec<Probe>,
    atomic: bool,
) -> Result<Built, Error> {
    let total = fresh.len();
    let built = match kind {
        ProgramKind::Plain => build_singles(batch, fresh, atomic).await?,
        ProgramKind::UprobeMulti
        | ProgramKind::KprobeMulti
        | ProgramKind::UprobeSession
        | ProgramKind::KprobeSession => {
            let prog = Arc::clone(batch.prog);
            let progress = Arc::clone(batch.progress);
            blocking::run(move || Ok(build_multis(&prog, kind, fresh, &progress))).await?
        }
        ProgramKind::UnsupportedMulti => match fresh.first().and_then(|p| kind.refuse(p)) {
            Some(e) => return Err(e),
            None => Built::default(),
        },
    };
    if atomic && !built.failed.is_empty() {
        return Err(rollback(built, total).await);
    }
    Ok(built)
}

/// Releases what a failed all-or-nothing batch attached; the batch's error.
async fn rollback(mut built: Built, total: usize) -> Error {
    let failed = std::mem::take(&mut built.failed);
    for e in built.into_owned().release().await {
        tracing::warn!(error = %e, "rolling back a failed batch");
    }
    Error::probes(total, failed).expect("non-empty")
}

/// The CPUs this process may use (`available_parallelism`: affinity and cgroup quota), read
/// once per process. The first call reads cgroup files (~0.2-1.5 ms), so on the blocking pool.
async fn default_concurrency() -> Result<usize, Error> {
    static CPUS: OnceLock<usize> = OnceLock::new();
    if let Some(&n) = CPUS.get() {
        return Ok(n);
    }
    let n =
        blocking::run(
            || Ok(std::thread::available_parallelism().map_or(2, std::num::NonZero::get)),
        )
        .await?;
    Ok(*CPUS.get_or_init(|| n))
}

/// Sets the flag when dropped: tells blocking workers that nobody waits for them.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What the per-probe workers of one batch share.
struct Workers {
    prog: Arc<OwnedFd>,
    progress: Arc<watch::Sender<Progress>>,
    stop: Arc<AtomicBool>,
    done: AtomicUsize,
    failed: AtomicUsize,
    atomic: bool,
}

/// One chunk's outcomes. Dropped unread (its batch's future was dropped), it releases what
/// it attached in parallel, on a thread of its own, as a detach would; attachments dropped
/// one by one would queue on the background thread, one release after the other (200
/// tracefs probes: 43 s against 0.6 s).
struct Chunk(Vec<(Probe, Result<Attached, Error>)>);

impl Drop for Chunk {
    fn drop(&mut self) {
        let attached: Vec<Attached> = self.0.drain(..).filter_map(|(_, r)| r.ok()).collect();
        link::release_all_in_background(attached);
    }
}

impl Workers {
    /// Attaches one chunk, one probe after the other, until done or told to stop.
    fn run(&self, chunk: Vec<Probe>) -> Chunk {
        let mut out = Vec::with_capacity(chunk.len());
        let mut resolver = Resolver::default();
        for probe in chunk {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let r = attach_one(self.prog.as_fd(), ProgramKind::Plain, &probe, &mut resolver);
            let text = probe.to_string();
            if r.is_ok() {
                self.done.fetch_add(1, Ordering::Relaxed);
            } else {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if self.atomic {
                    self.stop.store(true, Ordering::Relaxed);
                }
            }
            self.progress.send_modify(|p| {
                p.attached = self.done.load(Ordering::Relaxed);
                p.failed = self.failed.load(Ordering::Relaxed);
                p.current = Some(text);
            });
            out.push((probe, r));
        }
        Chunk(out)
    }
}

/// The per-probe path: the batch in `concurrency` chunks, each attached sequentially on
/// one blocking thread.
async fn build_singles(batch: &Batch<'_>, fresh: Vec<Probe>, atomic: bool) -> Result<Built, Error> {
    let concurrency = match batch.concurrency {
        Some(n) => n,
        None => default_concurrency().await?,
    };
    let workers = Arc::new(Workers {
        prog: Arc::clone(batch.prog),
        progress: Arc::clone(batch.progress),
        stop: Arc::new(AtomicBool::new(false)),
        done: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        atomic,
    });
    // Stops the workers early when this future is dropped.
    let _stop = StopOnDrop(Arc::clone(&workers.stop));
    let tasks = plan::split(fresh, concurrency).into_iter().map(|chunk| {
        let workers = Arc::clone(&workers);
        blocking::run(move || Ok(workers.run(chunk)))
    });
    let results = futures::future::join_all(tasks).await;
    let mut built = Built::default();
    for chunk in results {
        for (probe, r) in std::mem::take(&mut chunk?.0) {
            match r {
                Ok(a) => built.singles.push((probe, a)),
                Err(e) => built.failed.push((probe, e)),
            }
        }
    }
    Ok(built)
}

/// Collects a batch's multi links and failures, and reports progress.
struct Collect<'a> {
    built: Built,
    progress: &'a watch::Sender<Progress>,
}

impl Sink for Collect<'_> {
    /// The key, the slot entries and the last probe's text, allocated before the link.
    type Prepared = (MultiKey, Vec<(Probe, Probe)>, Option<String>);

    fn prepare(&mut self, key: &MultiKey, members: &[Member]) -> Self::Prepared {
        let entries = members
            .iter()
            .map(|m| (m.probe.clone(), m.probe.clone()))
            .collect();
        (
            key.clone(),
            entries,
            members.last().map(|m| m.probe.to_string()),
        )
    }

    fn linked(&mut self, prepared: Self::Prepared, attached: Attached, members: Vec<Member>) {
        let (key, entries, last) = prepared;
        let n = members.len();
        self.progress.send_modify(|p| {
            p.attached += n;
            p.current = last;
        });
        self.built.multis.push(BuiltMulti {
            key,
            attached,
            members,
            entries,
        });
    }

    fn failed(&mut self, probe: Probe, error: Error) {
        self.progress.send_modify(|p| p.failed += 1);
        self.built.failed.push((probe, error));
    }
}

/// The multi-link path of a batch, best effort (blocking): resolve, group, one link per
/// group, the failures named.
fn build_multis(
    prog: &OwnedFd,
    kind: ProgramKind,
    probes: Vec<Probe>,
    progress: &watch::Sender<Progress>,
) -> Built {
    let mut resolver = Resolver::default();
    let mut sink = Collect {
        built: Built::default(),
        progress,
    };
    let mut members = Vec::with_capacity(probes.len());
    for probe in probes {
        match multi_member(kind, &probe, &mut resolver) {
            Ok(m) => members.push(m),
            Err(e) => sink.built.failed.push((probe, e)),
        }
    }
    let failed = sink.built.failed.len();
    progress.send_modify(|p| p.failed = failed);
    // One link per group, created one after the other: splitting a large group over
    // parallel threads was measured slower (2152 libc uprobes: 0.33 s in one link, 0.38-0.58 s
    // in two created in parallel), the kernel serialising the registrations.
    for (key, members) in plan::group(members) {
        multi_link::create_or_bisect(prog.as_fd(), &key, members, &mut resolver, &mut sink);
    }
    sink.built
}

/// `probe` as a member of a multi link of a `kind` program.
fn multi_member(
    kind: ProgramKind,
    probe: &Probe,
    resolver: &mut Resolver,
) -> Result<(MultiKey, Member), Error> {
    if let Some(e) = kind.refuse(probe) {
        return Err(e);
    }
    validate::for_multi_link(probe)?;
    match probe {
        Probe::Uprobe(u) => multi_link::uprobe_member(u, probe, kind.is_session(), resolver),
        Probe::Kprobe(k) => multi_link::kprobe_member(k, probe, kind.is_session(), resolver),
    }
}
