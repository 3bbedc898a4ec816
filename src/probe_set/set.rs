//! [`ProbeSet`] itself: its options, what it tells about its probes, attach, remove,
//! detach and drop.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use super::build::{self, Batch, Built, Progress};
use super::held::Held;
use super::plan;
use super::remove::{self, Removed};
use crate::backend::Backend;
use crate::blocking;
use crate::cleanup;
use crate::error::Error;
use crate::health::{self, LinkHealth, LinkSource, SetHealth};
use crate::link::LinkKind;
use crate::perf_link;
use crate::probe::Probe;
use crate::program::{self, ProgramKind};

/// Many probes of one program, attached concurrently, all or nothing, and detached when
/// the set is dropped.
///
/// `Send + 'static`. See the [module docs](super) for how probes are held.
///
/// ```no_run
/// # async fn f() -> Result<(), probeset::Error> {
/// use probeset::counter::{Counter, Flavour};
/// use probeset::{ProbeSet, Uprobe};
///
/// let libc = "/lib/x86_64-linux-gnu/libc.so.6";
/// let counter = Counter::load(Flavour::UprobeMulti, 64)?;
/// let mut set = ProbeSet::new(&counter)?.auto_cookies(true);
/// set.attach(["malloc", "free"].map(|f| Uprobe::new(libc, f))).await?;
/// assert_eq!(set.len(), 2);
/// let malloc = Uprobe::new(libc, "malloc").into();
/// assert!(set.remove(&malloc).await?);
/// set.detach().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "dropping a ProbeSet detaches every probe it holds"]
pub struct ProbeSet {
    pub(super) prog: Arc<OwnedFd>,
    pub(super) kind: Option<ProgramKind>,
    pub(super) held: Held,
    /// Set by [`ProbeSet::concurrency`]; `None`: the CPUs available.
    concurrency: Option<usize>,
    auto_cookies: bool,
    progress: Arc<watch::Sender<Progress>>,
}

impl ProbeSet {
    /// A set for `prog`, a `BPF_PROG_TYPE_KPROBE` program (its fd is duplicated).
    ///
    /// # Errors
    /// [`Error::is_invalid_input`] when `prog` is not a BPF program or not of type
    /// `BPF_PROG_TYPE_KPROBE` (checked here with one quick syscall).
    pub fn new(prog: impl AsFd) -> Result<ProbeSet, Error> {
        program::check(prog.as_fd())?;
        let prog = program::dup(prog.as_fd())?;
        Ok(ProbeSet {
            prog: Arc::new(prog),
            kind: None,
            held: Held::default(),
            concurrency: None,
            auto_cookies: false,
            progress: Arc::new(watch::channel(Progress::default()).0),
        })
    }

    /// How many per-probe attaches (or detaches) run at once on the blocking pool. Default:
    /// the number of CPUs. Attaching is CPU work in the kernel, so more than the CPUs
    /// rarely helps.
    pub fn concurrency(mut self, n: usize) -> ProbeSet {
        self.concurrency = Some(n.max(1));
        self
    }

    /// When on, every probe attached with cookie 0 gets the lowest cookie no held probe
    /// uses (0, 1, 2, ...), so one program can tell its call sites apart: read them back
    /// with [`ProbeSet::cookies`] or [`ProbeSet::probe_for_cookie`]. A cookie is free again
    /// once its probe is removed. Probes given a non-zero cookie keep it. Default off.
    pub fn auto_cookies(mut self, on: bool) -> ProbeSet {
        self.auto_cookies = on;
        self
    }

    /// Progress of the current batch, pushed as it happens (no polling of the set).
    #[must_use]
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// How many probes the set holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether the set holds no probe.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.held.len() == 0
    }

    /// Whether the set holds `probe` (compared without the cookie).
    #[must_use]
    pub fn contains(&self, probe: &Probe) -> bool {
        self.held.contains(probe)
    }

    /// The probes held, each with the cookie it was attached with.
    pub fn probes(&self) -> impl Iterator<Item = &Probe> + '_ {
        self.held.probes()
    }

    /// Each held probe with its cookie.
    pub fn cookies(&self) -> impl Iterator<Item = (&Probe, u64)> + '_ {
        self.held.probes().map(|p| (p, p.cookie_value()))
    }

    /// The held probe whose cookie is `cookie` (the first found if several share it).
    #[must_use]
    pub fn probe_for_cookie(&self, cookie: u64) -> Option<&Probe> {
        self.held.probes().find(|p| p.cookie_value() == cookie)
    }

    /// The cookie `probe` was attached with.
    #[must_use]
    pub fn cookie_of(&self, probe: &Probe) -> Option<u64> {
        self.held.get(probe).map(Probe::cookie_value)
    }

    /// How `probe` is held in the kernel (`None`: not held).
    #[must_use]
    pub fn link_kind(&self, probe: &Probe) -> Option<LinkKind> {
        self.held.link_kind(probe)
    }

    /// Which backend created `probe` (`None`: not held, or held in a multi link).
    #[must_use]
    pub fn backend_of(&self, probe: &Probe) -> Option<Backend> {
        self.held.backend_of(probe)
    }

    /// How many kernel links the set holds (a multi link counts once).
    #[must_use]
    pub fn link_count(&self) -> usize {
        self.held.link_count()
    }

    /// The binaries whose paths now name another file than the one the set's uprobes on
    /// them are on (replaced by a package upgrade, renamed or removed), as they were named.
    ///
    /// The probes stay on the files they were attached to: they keep counting in the
    /// processes that still run the old file, never in the new one, and a rebuild (a
    /// removal from a multi link) re-creates them on the old file too. To follow an
    /// upgrade, attach the probes again (they resolve the new file) and remove the old
    /// ones. One `stat` per binary.
    #[must_use]
    pub fn replaced_binaries(&self) -> Vec<PathBuf> {
        self.held
            .binaries()
            .into_iter()
            .filter(|b| b.is_replaced())
            .map(|b| b.path.clone())
            .collect()
    }

    /// What the kernel tells about the set: its program's statistics once, and each link
    /// with the probes it carries (see [`crate::health`] for what each field reports on
    /// which kernel).
    ///
    /// Runs on tokio's blocking pool: one `bpf(2)` per link plus one for the program (and
    /// one read of tracefs' `kprobe_profile` for tracefs kprobes on kernels before 6.7).
    /// Each link's fd is duplicated first (one `fcntl` per link, on the caller's thread).
    /// Measured on the host with 1000 per-probe uprobe links: 3-5 ms (13-18 ms for a first
    /// call that starts a pool thread), against 2-3.5 ms for [`ProbeSet::health_blocking`],
    /// which skips the pool and the duplicates; a set of multi links needs a handful of
    /// calls either way.
    ///
    /// # Errors
    /// The first refusal of the kernel (permission denied without the right to read the
    /// info of the program or of a link), or an fd that could not be duplicated.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads; the duplicated fds are closed on the pool.
    pub async fn health(&self) -> Result<SetHealth, Error> {
        let dup = |fd: Option<BorrowedFd<'_>>| {
            fd.map(|fd| {
                fd.try_clone_to_owned()
                    .map_err(|e| Error::syscall("fcntl(F_DUPFD_CLOEXEC)", "a link fd", e))
            })
            .transpose()
        };
        let mut probes = Vec::new();
        let mut sources = Vec::new();
        for (p, source) in self.held.link_sources() {
            probes.push(p);
            sources.push(LinkSource {
                link: dup(source.link)?,
                perf: dup(source.perf)?,
                tracefs_event: source.tracefs_event,
                kprobe: source.kprobe,
            });
        }
        let prog = Arc::clone(&self.prog);
        let (program, infos) = blocking::run(move || {
            Ok((
                health::program_stats(&*prog)?,
                health::read_links(&sources)?,
            ))
        })
        .await?;
        Ok(pair(program, probes, infos))
    }

    /// [`ProbeSet::health`] on the calling thread: one `bpf(2)` per link plus one for the
    /// program, with no fd duplicated. Cheap for a set of multi links (call it from async
    /// code freely); 1000 per-probe links hold the thread for 2-3.5 ms (measured on the
    /// host), so on a runtime worker with thousands of them prefer [`ProbeSet::health`].
    ///
    /// # Errors
    /// As [`ProbeSet::health`].
    pub fn health_blocking(&self) -> Result<SetHealth, Error> {
        let program = health::program_stats(&*self.prog)?;
        let (probes, sources): (Vec<_>, Vec<_>) = self.held.link_sources().into_iter().unzip();
        let infos = health::read_links(&sources)?;
        Ok(pair(program, probes, infos))
    }

    /// How the program attaches, once the set has found out (after the first attach).
    #[must_use]
    pub fn program_kind(&self) -> Option<ProgramKind> {
        self.kind
    }

    /// The program's kind, found out (on the blocking pool) the first time.
    pub(super) async fn kind(&mut self) -> Result<ProgramKind, Error> {
        if let Some(k) = self.kind {
            return Ok(k);
        }
        let prog = Arc::clone(&self.prog);
        let k = blocking::run(move || {
            let kind = program::kind(prog.as_fd())?;
            if kind == ProgramKind::Plain {
                // Answered here, on the blocking pool, and cached: `usable_kind` asks it
                // on the caller's thread (its first answer loads a test program).
                perf_link::kernel_has_perf_links();
            }
            Ok(kind)
        })
        .await?;
        self.kind = Some(k);
        Ok(k)
    }

    /// The program's kind, and whether the set's options can work with it: automatic
    /// cookies need BPF perf links for a plain program (kernel 5.15+).
    pub(super) async fn usable_kind(&mut self) -> Result<ProgramKind, Error> {
        let kind = self.kind().await?;
        if self.auto_cookies && kind == ProgramKind::Plain && !perf_link::kernel_has_perf_links() {
            return Err(Error::not_supported(
                "automatic cookies",
                "this kernel has no BPF perf links (5.15+), so a cookie cannot reach a plain \
                 program; turn auto_cookies off (every probe gets cookie 0) or load the \
                 program for a multi link",
                None,
            ));
        }
        Ok(kind)
    }

    /// The new probes of a batch (see [`plan::prepare`]).
    pub(super) fn prepare(&self, probes: Vec<Probe>) -> (Vec<Probe>, Vec<(Probe, Error)>) {
        let cookies = self.auto_cookies.then(|| {
            self.held
                .probes()
                .map(Probe::cookie_value)
                .collect::<BTreeSet<u64>>()
        });
        plan::prepare(probes, |p| self.held.contains(p), cookies)
    }

    /// Attaches `fresh` (prepared) with a program of `kind`, reporting progress; the set is
    /// not changed (see [`ProbeSet::commit`]).
    pub(super) async fn build(
        &self,
        kind: ProgramKind,
        fresh: Vec<Probe>,
        atomic: bool,
    ) -> Result<Built, Error> {
        self.progress.send_replace(Progress {
            total: fresh.len(),
            ..Progress::default()
        });
        let batch = Batch {
            prog: &self.prog,
            progress: &self.progress,
            concurrency: self.concurrency,
        };
        let built = build::build(&batch, kind, fresh, atomic).await;
        self.progress.send_modify(|p| p.done = true);
        built
    }

    /// Records what a batch attached.
    pub(super) fn commit(&mut self, built: Built) {
        built.commit(&mut self.held);
    }

    /// Attaches `prog` to every probe of `probes`, all or nothing.
    ///
    /// Probes the set already holds (compared without the cookie) and duplicates are
    /// skipped. Input is validated before the kernel is asked. With a multi-link program,
    /// each binary/pid/direction group becomes one multi link; with a plain program each
    /// probe gets its own perf-event link, [`ProbeSet::concurrency`] at a time.
    ///
    /// # Errors
    /// [`Error::Probes`] naming every probe that failed (classified by the first one's
    /// kind), or the program's error ([`Error::is_invalid_input`] for a program that
    /// cannot attach these probes, [`Error::is_not_supported`] for a multi-only program on a
    /// kernel without that multi link). On error every probe this call attached has been
    /// detached again before it returns; the set holds exactly what it held before.
    ///
    /// # Cancel safety
    /// Cancel safe. If the future is dropped before it completes, the set holds exactly
    /// what it held before, and every probe the call had attached is released on the
    /// blocking pool ([`crate::cleanup::wait_idle`] waits for that).
    pub async fn attach<I>(&mut self, probes: I) -> Result<(), Error>
    where
        I: IntoIterator,
        I::Item: Into<Probe>,
    {
        let probes: Vec<Probe> = probes.into_iter().map(Into::into).collect();
        let total = probes.len();
        let (fresh, bad) = self.prepare(probes);
        if let Some(e) = Error::probes(total, bad) {
            return Err(e);
        }
        if fresh.is_empty() {
            return Ok(());
        }
        let kind = self.usable_kind().await?;
        // Room for the new entries now, not after the probes exist.
        self.held.reserve(fresh.len());
        let built = self.build(kind, fresh, true).await?;
        self.commit(built);
        Ok(())
    }

    /// Attaches one probe: [`ProbeSet::attach`] with one item.
    ///
    /// # Errors
    /// As [`ProbeSet::attach`].
    ///
    /// # Cancel safety
    /// As [`ProbeSet::attach`].
    pub async fn insert(&mut self, probe: impl Into<Probe>) -> Result<(), Error> {
        self.attach([probe.into()]).await
    }

    /// Detaches `probe`; `Ok(false)` when the set does not hold it.
    ///
    /// A probe held alone is released (~0.1 s of kernel time for a perf event, on the
    /// blocking pool). A probe in a multi link: see [Removing from a multi
    /// link](super#removing-from-a-multi-link).
    ///
    /// # Errors
    /// When the multi link of the other probes could not be re-created (the set is then
    /// unchanged; the error is the kernel's, shared by the probes of that link), or a
    /// tracefs event could not be removed (the probe is detached anyway).
    ///
    /// # Cancel safety
    /// If the future is dropped, the probe may or may not have been removed
    /// ([`ProbeSet::contains`] tells); nothing leaks either way.
    pub async fn remove(&mut self, probe: &Probe) -> Result<bool, Error> {
        let mut results = self.remove_many(std::slice::from_ref(probe)).await;
        results.pop().map_or(Ok(false), |(_, r)| r)
    }

    /// Detaches several probes, rebuilding each affected multi link once. Returns each
    /// probe's result, as [`ProbeSet::remove`] would.
    ///
    /// # Cancel safety
    /// As [`ProbeSet::remove`].
    pub async fn remove_many(&mut self, probes: &[Probe]) -> Removed {
        remove::remove_many(&self.prog, &mut self.held, probes).await
    }

    /// Detaches everything and waits until every kernel object is released (fds closed,
    /// tracefs events removed).
    ///
    /// # Errors
    /// Tracefs events that could not be removed (they stay inert; the stale-event reaper of
    /// a later process removes them).
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped, the release still completes on the blocking
    /// pool.
    pub async fn detach(mut self) -> Result<(), Error> {
        let (owned, bookkeeping) = self.held.take_all();
        let errors = owned.release().await;
        drop(bookkeeping);
        Error::collect(errors).map_or(Ok(()), Err)
    }
}

/// A set's health from its parts, the probes and infos in the same order.
fn pair(
    program: health::ProgramStats,
    probes: Vec<Vec<Probe>>,
    infos: Vec<health::LinkInfo>,
) -> SetHealth {
    SetHealth {
        program,
        links: probes
            .into_iter()
            .zip(infos)
            .map(|(probes, info)| LinkHealth { probes, info })
            .collect(),
    }
}

impl Drop for ProbeSet {
    fn drop(&mut self) {
        let (owned, bookkeeping) = self.held.take_all();
        if !owned.is_empty() {
            cleanup::defer_with(move || {
                owned.release_blocking();
                drop(bookkeeping);
            });
        }
    }
}
