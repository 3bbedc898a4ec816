//! Many probes at once: [`ProbeSet`].
//!
//! A set attaches one program to many probes, concurrently, all or nothing, and detaches
//! everything it holds when dropped. How it holds them depends on how the program was
//! loaded, which the set finds out by itself:
//!
//! - a program loaded for `uprobe_multi` (or `kprobe_multi`) goes on **multi links**: one
//!   link per binary, pid and direction (per direction for kprobes) for each batch, with a
//!   cookie per probe. 1000 uprobes attach in milliseconds and detach in ~30 ms;
//! - a plain program goes on **one perf-event link per probe**, attached concurrently
//!   ([`ProbeSet::concurrency`]). Each costs ~0.2 ms to attach and ~0.1 s of kernel time
//!   to detach.
//!
//! ```no_run
//! # async fn f() -> Result<(), probeset::Error> {
//! use probeset::counter::{Counter, Flavour};
//! use probeset::{ProbeSet, Uprobe};
//!
//! let libc = "/lib/x86_64-linux-gnu/libc.so.6";
//! let counter = Counter::load(Flavour::UprobeMulti, 1024)?;
//! let mut set = ProbeSet::new(&counter)?.auto_cookies(true);
//! set.attach(["malloc", "free", "calloc", "realloc"].map(|f| Uprobe::new(libc, f))).await?;
//! for (probe, cookie) in set.cookies() {
//!     println!("{probe}: cookie {cookie}");
//! }
//! set.detach().await?;
//! # Ok(()) }
//! ```
//!
//! # Removing from a multi link
//! The kernel cannot take one probe out of a multi link. [`ProbeSet::remove`] creates a
//! new link for the probes that stay, then closes the old one (make before break: no
//! probe that stays misses an event; for a few microseconds both links fire). The cost is
//! one link creation for the rest of that batch (~1-20 ms for 1000 probes) plus the old
//! link's release (~30 ms, on the blocking pool). Removing many probes at once
//! ([`ProbeSet::remove_many`], or a burst of detaches through [`ProbeSet::apply`]) rebuilds
//! each affected link once.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::sync::watch;

use crate::elf::ElfSymbols;
use crate::features::{self, ProgramKind};
use crate::kprobe::{self, dup_program};
use crate::link::{Attached, LinkKind};
use crate::uprobe;
use crate::{blocking, cleanup, Backend, Error, Kprobe, Probe};

/// How far a batch attach has come, for a progress bar: see [`ProbeSet::progress`].
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

/// One change for [`ProbeSet::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Attach this probe (nothing happens if the set holds it already).
    Attach(Probe),
    /// Detach this probe (nothing happens if the set does not hold it).
    Detach(Probe),
}

/// What became of one [`Change`]: `Ok(true)` when the set changed, `Ok(false)` when it
/// already was as asked.
#[derive(Debug)]
#[non_exhaustive]
pub struct Outcome {
    /// The change.
    pub change: Change,
    /// Its result.
    pub result: Result<bool, Error>,
}

/// Which kind of multi link a group of probes shares: the kernel makes one link per
/// binary, pid and direction for uprobes, per direction for kprobes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum MultiKey {
    Uprobe {
        path: String,
        pid: Option<i32>,
        ret: bool,
    },
    Kprobe {
        ret: bool,
    },
}

/// A probe resolved for a multi link.
#[derive(Clone, Debug)]
struct Member {
    probe: Probe,
    /// File offset (uprobe) or 0.
    offset: u64,
    /// Kernel symbol as the kernel knows it (kprobe; maybe syscall-prefixed).
    symbol: String,
    ref_ctr: u64,
    cookie: u64,
}

/// A rebuild of one key's multi links, for [`ProbeSet::remove_many`].
#[derive(Debug, Default)]
struct Rebuild {
    /// The links replaced.
    ids: Vec<u64>,
    /// The probes removed.
    gone: Vec<Probe>,
    /// The probes that stay, in the new link.
    keep: Vec<Member>,
}

/// The failed probes of a batch, each with its error.
type Failures = Vec<(Probe, Error)>;

/// What resolving one batch reads once: `/proc/kallsyms` names, and each binary's ELF
/// symbols and absolute path (so a batch of 2000 probes on libc opens libc once).
#[derive(Default)]
struct Resolver {
    kallsyms: Option<HashSet<String>>,
    binaries: HashMap<std::path::PathBuf, (Arc<ElfSymbols>, String)>,
}

impl Resolver {
    /// The binary of `u`, loaded (once per batch), and its absolute path.
    fn binary(&mut self, u: &crate::Uprobe) -> Result<&(Arc<ElfSymbols>, String), Error> {
        if !self.binaries.contains_key(u.binary()) {
            let loaded = (ElfSymbols::load(u.binary())?, u.absolute_path()?);
            self.binaries.insert(u.binary().to_path_buf(), loaded);
        }
        Ok(&self.binaries[u.binary()])
    }

    /// `/proc/kallsyms` names (read once per batch).
    fn kallsyms(&mut self) -> &HashSet<String> {
        self.kallsyms
            .get_or_insert_with(|| kprobe::kallsyms_names().unwrap_or_default())
    }
}

/// A multi link and the probes it holds.
#[derive(Debug)]
struct MultiLink {
    attached: Attached,
    key: MultiKey,
    members: Vec<Member>,
}

#[derive(Debug)]
enum Holder {
    Single(Attached),
    Multi(u64),
}

#[derive(Debug)]
struct Slot {
    /// The probe with the cookie it was attached with.
    probe: Probe,
    holder: Holder,
}

/// Everything a set owns in the kernel, released in one go.
#[derive(Debug, Default)]
struct Owned {
    singles: Vec<Attached>,
    multis: Vec<Attached>,
}

impl Owned {
    fn is_empty(&self) -> bool {
        self.singles.is_empty() && self.multis.is_empty()
    }

    /// Releases everything, in parallel (see [`release_parallel`]), logging failures.
    fn release(self) {
        let items = self.multis.into_iter().chain(self.singles).collect();
        for e in release_parallel(items).into_iter().filter_map(Result::err) {
            tracing::warn!(error = %e, "releasing a dropped probe set");
        }
    }
}

/// Multi links with fewer probes than this are merged into a rebuilt link of their key.
const COMPACT_BELOW: usize = 64;

/// At most this many threads release at once.
const RELEASE_THREADS: usize = 64;

/// The CPUs this process may use (`available_parallelism`: affinity and cgroup quota), read
/// once per process. The first call reads cgroup files (~0.2-1.5 ms), so on the blocking pool.
async fn default_concurrency() -> Result<usize, Error> {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
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

/// Releases `items` on up to 64 threads; one result per item, in order.
///
/// Releasing waits for kernel RCU grace periods, which concurrent releases share: 40
/// uprobe multi links take ~2.2 s one after another and ~80 ms in parallel (measured on the
/// host). Perf events gain less (their teardown is serialised in the kernel), but do not
/// lose.
fn release_parallel(items: Vec<Attached>) -> Vec<Result<(), Error>> {
    if items.len() <= 1 {
        return items.into_iter().map(Attached::release).collect();
    }
    let chunks = split(items, RELEASE_THREADS);
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

/// Many probes of one program, attached concurrently, all or nothing, and detached when
/// the set is dropped.
///
/// `Send + 'static`. See the [module docs](self) for how probes are held.
#[derive(Debug)]
pub struct ProbeSet {
    prog: Arc<OwnedFd>,
    kind: Option<ProgramKind>,
    slots: HashMap<Probe, Slot>,
    multis: HashMap<u64, MultiLink>,
    next_multi: u64,
    /// Set by [`ProbeSet::concurrency`]; `None`: the CPUs available ([`default_concurrency`]).
    concurrency: Option<usize>,
    auto_cookies: bool,
    progress: Arc<watch::Sender<Progress>>,
}

/// Largest number of changes [`ProbeSet::apply`] takes into one batch.
const MAX_BATCH: usize = 4096;

impl ProbeSet {
    /// A set for `prog`, a `BPF_PROG_TYPE_KPROBE` program (its fd is duplicated).
    ///
    /// # Errors
    /// [`Error::is_invalid_input`] when `prog` is not a BPF program or not of type
    /// `BPF_PROG_TYPE_KPROBE` (checked here with one quick syscall).
    pub fn new(prog: impl AsFd) -> Result<ProbeSet, Error> {
        features::check_program(prog.as_fd())?;
        let prog = dup_program(prog.as_fd())?;
        Ok(ProbeSet {
            prog: Arc::new(prog),
            kind: None,
            slots: HashMap::new(),
            multis: HashMap::new(),
            next_multi: 0,
            concurrency: None,
            auto_cookies: false,
            progress: Arc::new(watch::channel(Progress::default()).0),
        })
    }

    /// How many per-probe attaches (or detaches) run at once on the blocking pool. Default:
    /// the number of CPUs. Attaching is CPU work in the kernel, so more than the CPUs
    /// rarely helps.
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> ProbeSet {
        self.concurrency = Some(n.max(1));
        self
    }

    /// When on, every probe attached with cookie 0 gets the lowest cookie no held probe
    /// uses (0, 1, 2, ...), so one program can tell its call sites apart: read them back
    /// with [`ProbeSet::cookies`] or [`ProbeSet::probe_for_cookie`]. A cookie is free again
    /// once its probe is removed. Probes given a non-zero cookie keep it. Default off.
    #[must_use]
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
        self.slots.len()
    }

    /// Whether the set holds no probe.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether the set holds `probe` (compared without the cookie).
    #[must_use]
    pub fn contains(&self, probe: &Probe) -> bool {
        self.slots.contains_key(probe)
    }

    /// The probes held, each with the cookie it was attached with.
    pub fn probes(&self) -> impl Iterator<Item = &Probe> + '_ {
        self.slots.values().map(|s| &s.probe)
    }

    /// Each held probe with its cookie.
    pub fn cookies(&self) -> impl Iterator<Item = (&Probe, u64)> + '_ {
        self.slots
            .values()
            .map(|s| (&s.probe, s.probe.cookie_value()))
    }

    /// The held probe whose cookie is `cookie` (the first found if several share it).
    #[must_use]
    pub fn probe_for_cookie(&self, cookie: u64) -> Option<&Probe> {
        self.slots
            .values()
            .map(|s| &s.probe)
            .find(|p| p.cookie_value() == cookie)
    }

    /// The cookie `probe` was attached with.
    #[must_use]
    pub fn cookie_of(&self, probe: &Probe) -> Option<u64> {
        self.slots.get(probe).map(|s| s.probe.cookie_value())
    }

    /// How `probe` is held in the kernel (`None`: not held).
    #[must_use]
    pub fn link_kind(&self, probe: &Probe) -> Option<LinkKind> {
        Some(match &self.slots.get(probe)?.holder {
            Holder::Single(a) => a.kind,
            Holder::Multi(id) => self.multis[id].attached.kind,
        })
    }

    /// Which backend created `probe` (`None`: not held, or held in a multi link).
    #[must_use]
    pub fn backend_of(&self, probe: &Probe) -> Option<Backend> {
        match &self.slots.get(probe)?.holder {
            Holder::Single(a) => a.backend,
            Holder::Multi(_) => None,
        }
    }

    /// How many kernel links the set holds (a multi link counts once).
    #[must_use]
    pub fn link_count(&self) -> usize {
        self.multis.len()
            + self
                .slots
                .values()
                .filter(|s| matches!(s.holder, Holder::Single(_)))
                .count()
    }

    /// How the program attaches, once the set has found out (after the first attach).
    #[must_use]
    pub fn program_kind(&self) -> Option<ProgramKind> {
        self.kind
    }

    async fn kind(&mut self) -> Result<ProgramKind, Error> {
        if let Some(k) = self.kind {
            return Ok(k);
        }
        let prog = Arc::clone(&self.prog);
        let k = blocking::run(move || features::program_kind(prog.as_fd())).await?;
        self.kind = Some(k);
        Ok(k)
    }

    /// The new probes of a batch, validated, without duplicates or probes already held,
    /// with automatic cookies assigned (tentatively: the set changes only on commit).
    fn prepare(&self, probes: Vec<Probe>) -> (Vec<Probe>, Vec<(Probe, Error)>) {
        // New and not repeated, decided on references: no probe is cloned to be compared.
        let keep: Vec<bool> = {
            let mut seen: HashSet<&Probe> = HashSet::with_capacity(probes.len());
            probes
                .iter()
                .map(|p| !self.slots.contains_key(p) && seen.insert(p))
                .collect()
        };
        let mut fresh = Vec::with_capacity(probes.len());
        let mut bad = Vec::new();
        let mut used: BTreeSet<u64> = if self.auto_cookies {
            self.slots
                .values()
                .map(|s| s.probe.cookie_value())
                .collect()
        } else {
            BTreeSet::new()
        };
        if self.auto_cookies {
            used.extend(probes.iter().map(Probe::cookie_value).filter(|&c| c != 0));
        }
        let mut next = 0u64;
        for (p, keep) in probes.into_iter().zip(keep) {
            if !keep {
                continue;
            }
            let valid = match &p {
                Probe::Kprobe(k) => k.validate(),
                Probe::Uprobe(u) => u.validate(),
            };
            if let Err(e) = valid {
                bad.push((p, e));
                continue;
            }
            let p = if self.auto_cookies && p.cookie_value() == 0 {
                while used.contains(&next) {
                    next += 1;
                }
                used.insert(next);
                p.with_cookie(next)
            } else {
                p
            };
            fresh.push(p);
        }
        (fresh, bad)
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
        let kind = self.kind().await?;
        self.start_progress(fresh.len());
        // Room for the new entries now, not after the probes exist.
        self.slots.reserve(fresh.len());
        let built = self.build(kind, fresh, true).await;
        self.finish_progress();
        match built {
            Ok(built) => {
                self.commit(built);
                Ok(())
            }
            Err(e) => Err(e),
        }
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
    /// link](self#removing-from-a-multi-link).
    ///
    /// # Errors
    /// When the multi link of the other probes could not be re-created (the set is then
    /// unchanged), or a tracefs event could not be removed (the probe is detached anyway).
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
    pub async fn remove_many(&mut self, probes: &[Probe]) -> Vec<(Probe, Result<bool, Error>)> {
        let mut results = Vec::with_capacity(probes.len());
        let mut singles = Vec::new();
        let mut removed_singles = Vec::new();
        let mut by_link: HashMap<u64, Vec<Probe>> = HashMap::new();
        for p in probes {
            match self.slots.get(p).map(|s| &s.holder) {
                Some(Holder::Single(_)) => {
                    if let Some(Slot {
                        holder: Holder::Single(a),
                        ..
                    }) = self.slots.remove(p)
                    {
                        singles.push(a);
                        removed_singles.push(p.clone());
                    }
                }
                Some(Holder::Multi(id)) if !by_link.get(id).is_some_and(|l| l.contains(p)) => {
                    by_link.entry(*id).or_default().push(p.clone());
                }
                // Not held, or named twice in `probes`.
                _ => results.push((p.clone(), Ok(false))),
            }
        }
        let replaced = self.rebuild(by_link, &mut results).await;
        // The replaced multi links first, then the singles, in order: results line up.
        let n_multi = replaced.len();
        let outcomes = self
            .release_each(replaced.into_iter().chain(singles).collect())
            .await;
        for e in outcomes
            .iter()
            .take(n_multi)
            .filter_map(|r| r.as_ref().err())
        {
            tracing::warn!(error = %e, "releasing a replaced multi link");
        }
        for (p, r) in removed_singles
            .into_iter()
            .zip(outcomes.into_iter().skip(n_multi))
        {
            results.push((p, r.map(|()| true)));
        }
        results
    }

    /// Takes the probes of `by_link` out of their multi links: one new link per key for
    /// the probes that stay, which also takes in the key's other small links (so churn does
    /// not leave a trail of tiny links behind). Returns the links replaced, for the caller
    /// to release; on a failure the set keeps the old links and says so per probe.
    async fn rebuild(
        &mut self,
        by_link: HashMap<u64, Vec<Probe>>,
        results: &mut Vec<(Probe, Result<bool, Error>)>,
    ) -> Vec<Attached> {
        if by_link.is_empty() {
            return Vec::new();
        }
        let mut plans: HashMap<MultiKey, Rebuild> = HashMap::new();
        for (id, gone) in by_link {
            let plan = plans.entry(self.multis[&id].key.clone()).or_default();
            plan.ids.push(id);
            plan.gone.extend(gone);
        }
        for (key, plan) in &mut plans {
            for (id, link) in &self.multis {
                if link.key == *key && link.members.len() < COMPACT_BELOW && !plan.ids.contains(id)
                {
                    plan.ids.push(*id);
                }
            }
            let gone: HashSet<&Probe> = plan.gone.iter().collect();
            plan.keep = plan
                .ids
                .iter()
                .flat_map(|id| &self.multis[id].members)
                .filter(|m| !gone.contains(&m.probe))
                .cloned()
                .collect();
        }
        let plans: Vec<(MultiKey, Rebuild)> = plans.into_iter().collect();
        let prog = Arc::clone(&self.prog);
        let jobs: Vec<(MultiKey, Vec<Member>)> = plans
            .iter()
            .map(|(k, p)| (k.clone(), p.keep.clone()))
            .collect();
        let created = blocking::run(move || {
            Ok(jobs
                .into_iter()
                .map(|(key, keep)| {
                    if keep.is_empty() {
                        Ok(None)
                    } else {
                        create_multi(&prog, &key, &keep).map(Some)
                    }
                })
                .collect::<Vec<_>>())
        })
        .await;
        let created = match created {
            Ok(created) => created,
            Err(e) => {
                let msg = e.to_string();
                for (_, plan) in plans {
                    for p in plan.gone {
                        let err = Error::syscall(
                            "remove",
                            format!("{p}"),
                            std::io::Error::other(msg.clone()),
                        );
                        results.push((p, Err(err)));
                    }
                }
                return Vec::new();
            }
        };
        let mut replaced = Vec::new();
        for ((key, plan), new) in plans.into_iter().zip(created) {
            match new {
                Ok(new) => {
                    for id in plan.ids {
                        replaced.push(self.multis.remove(&id).expect("link held").attached);
                    }
                    for p in plan.gone {
                        self.slots.remove(&p);
                        results.push((p, Ok(true)));
                    }
                    if let Some(new) = new {
                        self.insert_multi(key, new, plan.keep, None);
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    for p in plan.gone {
                        let err = Error::not_supported(
                            format!("removing {p} from its multi link"),
                            format!("re-creating the link for the other probes failed: {msg}"),
                            None,
                        );
                        results.push((p, Err(err)));
                    }
                }
            }
        }
        replaced
    }

    /// Records a multi link: new slots for its members (from `entries`), or the members'
    /// existing slots pointed at it.
    fn insert_multi(
        &mut self,
        key: MultiKey,
        attached: Attached,
        members: Vec<Member>,
        entries: Option<Vec<(Probe, Probe)>>,
    ) {
        let id = self.next_multi;
        self.next_multi += 1;
        if let Some(entries) = entries {
            for (k, probe) in entries {
                self.slots.insert(
                    k,
                    Slot {
                        probe,
                        holder: Holder::Multi(id),
                    },
                );
            }
        } else {
            for m in &members {
                if let Some(slot) = self.slots.get_mut(&m.probe) {
                    slot.holder = Holder::Multi(id);
                }
            }
        }
        self.multis.insert(
            id,
            MultiLink {
                attached,
                key,
                members,
            },
        );
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
        let (owned, bookkeeping) = self.take_all();
        let errors = self.release(owned).await;
        drop(bookkeeping);
        Error::collect(errors).map_or(Ok(()), Err)
    }

    /// Takes every kernel object out of the set, and the set's bookkeeping with it, without
    /// dropping the bookkeeping: the caller drops it *after* the release. Freeing thousands
    /// of entries calls `free()` thousands of times, and while the probes are still attached
    /// to libc (a set tracing libc, say), each call in this process hits a probe: measured
    /// here, it put 90-120 ms into the detach of 2152 libc probes.
    fn take_all(&mut self) -> (Owned, Bookkeeping) {
        let mut owned = Owned::default();
        for slot in self.slots.values_mut() {
            if matches!(slot.holder, Holder::Single(_)) {
                if let Holder::Single(a) =
                    std::mem::replace(&mut slot.holder, Holder::Multi(u64::MAX))
                {
                    owned.singles.push(a);
                }
            }
        }
        let multis = std::mem::take(&mut self.multis);
        let mut members = Vec::with_capacity(multis.len());
        owned.multis.reserve(multis.len());
        for (_, m) in multis {
            owned.multis.push(m.attached);
            members.push(m.members);
        }
        (owned, Bookkeeping(std::mem::take(&mut self.slots), members))
    }

    /// Releases on the blocking pool; the errors.
    async fn release(&self, owned: Owned) -> Vec<Error> {
        self.release_each(owned.multis.into_iter().chain(owned.singles).collect())
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect()
    }

    /// Releases each item on the blocking pool; one result per item, in order.
    async fn release_each(&self, items: Vec<Attached>) -> Vec<Result<(), Error>> {
        if items.is_empty() {
            return Vec::new();
        }
        let n = items.len();
        blocking::run(move || Ok(release_parallel(items)))
            .await
            // The runtime is shutting down: the items were dropped, which releases them.
            .unwrap_or_else(|_| (0..n).map(|_| Err(Error::RuntimeShutdown)).collect())
    }

    fn start_progress(&self, total: usize) {
        self.progress.send_replace(Progress {
            total,
            ..Progress::default()
        });
    }

    fn finish_progress(&self) {
        self.progress.send_modify(|p| p.done = true);
    }

    /// Attaches `fresh` (validated, cookies assigned). `atomic`: all or nothing, else best
    /// effort (what could be attached is returned with the failures).
    async fn build(
        &self,
        kind: ProgramKind,
        fresh: Vec<Probe>,
        atomic: bool,
    ) -> Result<Built, Error> {
        match kind {
            ProgramKind::Plain => self.build_singles(fresh, atomic).await,
            ProgramKind::UprobeMulti | ProgramKind::KprobeMulti => {
                let prog = Arc::clone(&self.prog);
                let progress = Arc::clone(&self.progress);
                let total = fresh.len();
                let built = blocking::run(move || Ok(build_multis(&prog, kind, fresh, &progress))).await?;
                if atomic && !built.failed.is_empty() {
                    let mut built = built;
                    let failed = std::mem::take(&mut built.failed);
                    let errors = self.release(built.into_owned()).await;
                    for e in errors {
                        tracing::warn!(error = %e, "rolling back a failed batch");
                    }
                    return Err(Error::probes(total, failed).expect("non-empty"));
                }
                Ok(built)
            }
            ProgramKind::UnsupportedMulti => Err(Error::not_supported(
                "multi links for this program",
                "the program was loaded for a multi link this kernel cannot create (kprobe_multi needs \
                 CONFIG_FPROBE, uprobe_multi 6.6+); load it as a plain kprobe/uprobe program",
                None,
            )),
        }
    }

    async fn build_singles(&self, fresh: Vec<Probe>, atomic: bool) -> Result<Built, Error> {
        let total = fresh.len();
        let cancel = Arc::new(AtomicBool::new(false));
        // Stops the workers early when this future is dropped.
        let _stop = StopOnDrop(Arc::clone(&cancel));
        let done = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let concurrency = match self.concurrency {
            Some(n) => n,
            None => default_concurrency().await?,
        };
        let tasks = split(fresh, concurrency).into_iter().map(|chunk| {
            let prog = Arc::clone(&self.prog);
            let cancel = Arc::clone(&cancel);
            let progress = Arc::clone(&self.progress);
            let done = Arc::clone(&done);
            let failed = Arc::clone(&failed);
            blocking::run(move || {
                let mut out = Vec::with_capacity(chunk.len());
                let mut resolver = Resolver::default();
                for probe in chunk {
                    if cancel.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = match &probe {
                        Probe::Kprobe(k) => k.attach_raw(&prog, ProgramKind::Plain),
                        Probe::Uprobe(u) => resolver.binary(u).and_then(|(symbols, path)| {
                            let offset = u.offset_in(symbols)?;
                            u.attach_at(&prog, ProgramKind::Plain, path, offset)
                        }),
                    };
                    let text = probe.to_string();
                    if r.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        if atomic {
                            cancel.store(true, Ordering::Relaxed);
                        }
                    }
                    progress.send_modify(|p| {
                        p.attached = done.load(Ordering::Relaxed);
                        p.failed = failed.load(Ordering::Relaxed);
                        p.current = Some(text);
                    });
                    out.push((probe, r));
                }
                Ok(out)
            })
        });
        let results = futures::future::join_all(tasks).await;
        let mut built = Built::default();
        for chunk in results {
            for (probe, r) in chunk? {
                match r {
                    Ok(a) => built.singles.push((probe, a)),
                    Err(e) => built.failed.push((probe, e)),
                }
            }
        }
        if atomic && !built.failed.is_empty() {
            let failed = std::mem::take(&mut built.failed);
            for e in self.release(built.into_owned()).await {
                tracing::warn!(error = %e, "rolling back a failed batch");
            }
            return Err(Error::probes(total, failed).expect("non-empty"));
        }
        Ok(built)
    }

    /// Records what a batch attached.
    fn commit(&mut self, built: Built) {
        for (probe, a) in built.singles {
            self.slots.insert(
                probe.clone(),
                Slot {
                    probe,
                    holder: Holder::Single(a),
                },
            );
        }
        for m in built.multis {
            self.insert_multi(m.key, m.attached, m.members, Some(m.entries));
        }
    }

    /// Applies a stream of changes and yields the outcome of each, in order.
    ///
    /// Bursts are coalesced: whatever changes are ready when the set gets to them (up to
    /// 4096) are applied as batches, consecutive attaches as one batch (one multi link per
    /// group with a multi-link program), consecutive detaches as one removal (each multi
    /// link rebuilt once). Unlike [`ProbeSet::attach`], a batch here is not all or nothing:
    /// each change gets its own outcome, and one bad probe does not stop the others.
    ///
    /// Back-pressure: the next changes are read only once the outcomes of the previous
    /// batch have been taken, so nothing buffers without bound.
    ///
    /// The stream is boxed (and `Unpin`), so `.next().await` works on it directly.
    ///
    /// # Cancel safety
    /// Dropping the returned stream drops the changes it had read but not applied; a batch
    /// in progress is rolled back as a cancelled [`ProbeSet::attach`] is. The set stays
    /// usable.
    pub fn apply<'a, S>(&'a mut self, changes: S) -> BoxStream<'a, Outcome>
    where
        S: Stream<Item = Change> + Send + 'a,
    {
        struct State<'a> {
            set: &'a mut ProbeSet,
            changes: futures::stream::BoxStream<'a, Change>,
            out: VecDeque<Outcome>,
        }
        let state = State {
            set: self,
            changes: changes.boxed(),
            out: VecDeque::new(),
        };
        futures::stream::unfold(state, |mut st| async move {
            if let Some(o) = st.out.pop_front() {
                return Some((o, st));
            }
            let first = st.changes.next().await?;
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match futures::FutureExt::now_or_never(st.changes.next()) {
                    Some(Some(c)) => batch.push(c),
                    _ => break,
                }
            }
            st.out = st.set.apply_batch(batch).await;
            let o = st.out.pop_front()?;
            Some((o, st))
        })
        .boxed()
    }

    /// Applies a ready batch of changes: each probe's last change in the batch wins; the
    /// detaches go first (each affected multi link rebuilt once), then the attaches (one
    /// new link per group).
    async fn apply_batch(&mut self, batch: Vec<Change>) -> VecDeque<Outcome> {
        let mut last: HashMap<&Probe, usize> = HashMap::new();
        for (i, c) in batch.iter().enumerate() {
            last.insert(change_probe(c), i);
        }
        let mut attach = Vec::new();
        let mut detach = Vec::new();
        for (i, c) in batch.iter().enumerate() {
            if last[change_probe(c)] == i {
                match c {
                    Change::Attach(p) => attach.push(p.clone()),
                    Change::Detach(p) => detach.push(p.clone()),
                }
            }
        }
        let finals: HashSet<usize> = last.into_values().collect();
        let mut results: HashMap<Probe, Result<bool, Error>> = HashMap::new();
        if !detach.is_empty() {
            results.extend(self.remove_many(&detach).await);
        }
        if !attach.is_empty() {
            results.extend(self.apply_attaches(attach).await);
        }
        batch
            .into_iter()
            .enumerate()
            .map(|(i, change)| {
                let result = if finals.contains(&i) {
                    results.remove(change_probe(&change)).unwrap_or(Ok(false))
                } else {
                    // Superseded by a later change to the same probe in this batch.
                    Ok(false)
                };
                Outcome { change, result }
            })
            .collect()
    }

    /// Attaches what it can of `probes` (best effort); each probe's result.
    async fn apply_attaches(&mut self, probes: Vec<Probe>) -> Vec<(Probe, Result<bool, Error>)> {
        let held_before: HashSet<Probe> = probes
            .iter()
            .filter(|p| self.contains(p))
            .cloned()
            .collect();
        let (fresh, bad) = self.prepare(probes.clone());
        let mut errors: HashMap<Probe, Error> = bad.into_iter().collect();
        if !fresh.is_empty() {
            let kind = self.kind().await;
            match kind {
                Ok(kind) => {
                    self.start_progress(fresh.len());
                    match self.build(kind, fresh.clone(), false).await {
                        Ok(mut built) => {
                            errors.extend(std::mem::take(&mut built.failed));
                            self.commit(built);
                        }
                        Err(e) => spread(&e, fresh, &mut errors),
                    }
                    self.finish_progress();
                }
                Err(e) => spread(&e, fresh, &mut errors),
            }
        }
        probes
            .into_iter()
            .map(|p| {
                let r = match errors.remove(&p) {
                    Some(e) => Err(e),
                    None => Ok(!held_before.contains(&p) && self.contains(&p)),
                };
                (p, r)
            })
            .collect()
    }
}

fn change_probe(c: &Change) -> &Probe {
    match c {
        Change::Attach(p) | Change::Detach(p) => p,
    }
}

/// Gives each probe of a failed batch its own copy of the batch's error.
fn spread(e: &Error, probes: Vec<Probe>, errors: &mut HashMap<Probe, Error>) {
    let msg = e.to_string();
    for p in probes {
        let err = if e.is_not_supported() {
            Error::not_supported(format!("{p}"), msg.clone(), None)
        } else if e.is_permission_denied() {
            Error::syscall(
                "attach",
                format!("{p}"),
                std::io::Error::from_raw_os_error(libc::EPERM),
            )
        } else {
            Error::invalid(format!("{p}"), msg.clone())
        };
        errors.insert(p, err);
    }
}

impl Drop for ProbeSet {
    fn drop(&mut self) {
        let (owned, bookkeeping) = self.take_all();
        if !owned.is_empty() {
            cleanup::defer_with(move || {
                owned.release();
                drop(bookkeeping);
            });
        }
    }
}

/// A set's entries, kept alive until its probes are released (see `ProbeSet::take_all`).
#[expect(dead_code, reason = "held only to be dropped after the release")]
struct Bookkeeping(HashMap<Probe, Slot>, Vec<Vec<Member>>);

/// Sets the flag when dropped: tells blocking workers that nobody waits for them.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A multi link a batch created, with the set's entries for its probes made *before* the
/// link existed (see `ProbeSet::take_all` for why allocations after it cost).
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
struct Built {
    singles: Vec<(Probe, Attached)>,
    multis: Vec<BuiltMulti>,
    failed: Vec<(Probe, Error)>,
}

impl Built {
    fn into_owned(self) -> Owned {
        Owned {
            singles: self.singles.into_iter().map(|(_, a)| a).collect(),
            multis: self.multis.into_iter().map(|m| m.attached).collect(),
        }
    }
}

/// Splits `items` into at most `n` chunks of nearly equal size.
fn split<T>(items: Vec<T>, n: usize) -> Vec<Vec<T>> {
    let n = n.max(1).min(items.len().max(1));
    let per = items.len().div_ceil(n);
    let mut out: Vec<Vec<T>> = Vec::with_capacity(n);
    for (i, item) in items.into_iter().enumerate() {
        if i % per.max(1) == 0 {
            out.push(Vec::with_capacity(per));
        }
        out.last_mut().expect("pushed").push(item);
    }
    out
}

/// Resolves each probe for a multi link of a `kind` program; the failures are named.
fn resolve_members(
    kind: ProgramKind,
    probes: Vec<Probe>,
    resolver: &mut Resolver,
) -> (Vec<(MultiKey, Member)>, Failures) {
    let mut ok = Vec::with_capacity(probes.len());
    let mut bad = Vec::new();
    for probe in probes {
        match resolve_member(kind, &probe, resolver) {
            Ok(m) => ok.push(m),
            Err(e) => bad.push((probe, e)),
        }
    }
    (ok, bad)
}

fn resolve_member(
    kind: ProgramKind,
    probe: &Probe,
    resolver: &mut Resolver,
) -> Result<(MultiKey, Member), Error> {
    match (kind, probe) {
        (ProgramKind::UprobeMulti, Probe::Uprobe(u)) => {
            check_multi_backend(u.backend_value(), probe)?;
            let (symbols, path) = resolver.binary(u)?;
            let offset = u.offset_in(symbols)?;
            let path = path.clone();
            Ok((
                MultiKey::Uprobe {
                    path,
                    pid: u.pid_value(),
                    ret: u.is_retprobe(),
                },
                Member {
                    probe: probe.clone(),
                    offset,
                    symbol: String::new(),
                    ref_ctr: u.ref_ctr_offset_value(),
                    cookie: u.cookie_value(),
                },
            ))
        }
        (ProgramKind::KprobeMulti, Probe::Kprobe(k)) => {
            check_multi_backend(k.backend_value(), probe)?;
            if k.offset_value() != 0 || k.maxactive_value().is_some() {
                return Err(Error::invalid(
                    format!("{probe} with a kprobe_multi program"),
                    "kprobe multi links take neither an offset nor maxactive; use a plain kprobe program",
                ));
            }
            // As given; checked against /proc/kallsyms only if the kernel rejects the link.
            let symbol = k.symbol().to_string();
            Ok((
                MultiKey::Kprobe {
                    ret: k.is_retprobe(),
                },
                Member {
                    probe: probe.clone(),
                    offset: 0,
                    symbol,
                    ref_ctr: 0,
                    cookie: k.cookie_value(),
                },
            ))
        }
        (ProgramKind::UprobeMulti, Probe::Kprobe(_)) => Err(Error::invalid(
            format!("{probe}"),
            "the set's program was loaded for uprobe_multi and cannot attach kprobes",
        )),
        _ => Err(Error::invalid(
            format!("{probe}"),
            "the set's program was loaded for kprobe_multi and cannot attach uprobes",
        )),
    }
}

fn check_multi_backend(backend: Backend, probe: &Probe) -> Result<(), Error> {
    if backend == Backend::Tracefs {
        return Err(Error::invalid(
            format!("Backend::Tracefs for {probe}"),
            "the program was loaded for a multi link, which needs no tracefs; use Backend::Auto",
        ));
    }
    Ok(())
}

/// The kernel's name for `k`'s symbol: as given if `/proc/kallsyms` lists it, else with
/// the syscall prefix if that is listed. Not-found when neither is.
fn kernel_symbol(k: &Kprobe, names: &HashSet<String>) -> Result<String, Error> {
    if names.is_empty() || names.contains(k.symbol()) {
        // An empty table (no /proc/kallsyms, or addresses hidden) leaves it to the kernel.
        return Ok(k.symbol().to_string());
    }
    if let Some(p) = kprobe::syscall_prefixed(k.symbol()) {
        if names.contains(&p) {
            return Ok(p);
        }
    }
    Err(Error::not_found(
        format!("kernel symbol {:?}", k.symbol()),
        "not in /proc/kallsyms",
        None,
    ))
}

/// Creates the multi link of one group.
fn create_multi(prog: &OwnedFd, key: &MultiKey, members: &[Member]) -> Result<Attached, Error> {
    let cookies: Vec<u64> = members.iter().map(|m| m.cookie).collect();
    let (fd, kind) = match key {
        MultiKey::Uprobe { path, pid, ret } => {
            let offsets: Vec<u64> = members.iter().map(|m| m.offset).collect();
            let refs: Vec<u64> = members.iter().map(|m| m.ref_ctr).collect();
            let refs = refs.iter().any(|&r| r != 0).then_some(&refs[..]);
            let fd = uprobe::uprobe_multi(prog, path, &offsets, refs, &cookies, *ret, *pid)
                .map_err(|e| {
                    let what = if members.len() == 1 {
                        members[0].probe.to_string()
                    } else {
                        format!(
                            "a uprobe multi link of {} probes on {path:?}",
                            members.len()
                        )
                    };
                    match e.raw_os_error() {
                        Some(libc::ENOENT | libc::EINVAL | libc::ESRCH) => {
                            Error::not_found(what, "", Some(e))
                        }
                        Some(libc::EOPNOTSUPP) => Error::not_supported(
                            "uprobe multi links",
                            "the kernel has no uprobe_multi links (6.6+)",
                            Some(e),
                        ),
                        _ => Error::syscall("BPF_LINK_CREATE", what, e),
                    }
                })?;
            (fd, LinkKind::UprobeMulti)
        }
        MultiKey::Kprobe { ret } => {
            let syms: Vec<&str> = members.iter().map(|m| m.symbol.as_str()).collect();
            let fd = kprobe::kprobe_multi(prog, &syms, &cookies, *ret)?;
            (fd, LinkKind::KprobeMulti)
        }
    };
    Ok(Attached {
        link: Some(fd),
        perf: None,
        event: None,
        tracefs_event_name: None,
        kind,
        backend: None,
    })
}

/// Creates a group's multi link; when the kernel rejects it (one bad probe fails the
/// whole link), bisects to find the probes at fault, attaching the rest.
/// How far a group's kernel symbols have been checked (kprobe groups only).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Symbols {
    /// As the caller wrote them: the kernel is asked first, `/proc/kallsyms` (~120k lines,
    /// 50-800 ms to read) only when it says no.
    AsGiven,
    /// Checked against `/proc/kallsyms`, syscall prefix added where needed.
    Checked,
}

/// Creates a group's multi link; when the kernel rejects it (one bad probe fails the
/// whole link), checks kprobe symbols against `/proc/kallsyms` once, then bisects to find
/// the probes at fault, attaching the rest.
fn create_bisect(
    prog: &OwnedFd,
    key: &MultiKey,
    members: Vec<Member>,
    built: &mut Built,
    progress: &watch::Sender<Progress>,
    resolver: &mut Resolver,
    symbols: Symbols,
) {
    // Everything the success path keeps is allocated first: once the link exists, every
    // allocation of this process may hit its own probes (when they are on libc).
    let key_copy = key.clone();
    let entries: Vec<(Probe, Probe)> = members
        .iter()
        .map(|m| (m.probe.clone(), m.probe.clone()))
        .collect();
    let last = members.last().map(|m| m.probe.to_string());
    match create_multi(prog, key, &members) {
        Ok(attached) => {
            let n = members.len();
            progress.send_modify(|p| {
                p.attached += n;
                p.current = last;
            });
            built.multis.push(BuiltMulti {
                key: key_copy,
                attached,
                members,
                entries,
            });
        }
        Err(_) if matches!(key, MultiKey::Kprobe { .. }) && symbols == Symbols::AsGiven => {
            let mut checked = Vec::with_capacity(members.len());
            for mut m in members {
                let Probe::Kprobe(k) = &m.probe else {
                    unreachable!("a kprobe group holds kprobes")
                };
                match kernel_symbol(k, resolver.kallsyms()) {
                    Ok(symbol) => {
                        m.symbol = symbol;
                        checked.push(m);
                    }
                    Err(e) => {
                        progress.send_modify(|p| p.failed += 1);
                        built.failed.push((m.probe, e));
                    }
                }
            }
            if !checked.is_empty() {
                create_bisect(
                    prog,
                    key,
                    checked,
                    built,
                    progress,
                    resolver,
                    Symbols::Checked,
                );
            }
        }
        Err(e) if members.len() == 1 => {
            progress.send_modify(|p| p.failed += 1);
            let m = members.into_iter().next().expect("one");
            built.failed.push((m.probe, e));
        }
        Err(_) => {
            let mut members = members;
            let right = members.split_off(members.len() / 2);
            create_bisect(prog, key, members, built, progress, resolver, symbols);
            create_bisect(prog, key, right, built, progress, resolver, symbols);
        }
    }
}

/// The multi-link path of a batch, best effort: groups, links, and the failures named.
fn build_multis(
    prog: &OwnedFd,
    kind: ProgramKind,
    probes: Vec<Probe>,
    progress: &watch::Sender<Progress>,
) -> Built {
    let mut resolver = Resolver::default();
    let (members, failed) = resolve_members(kind, probes, &mut resolver);
    let mut built = Built {
        failed,
        ..Built::default()
    };
    progress.send_modify(|p| p.failed = built.failed.len());
    // One link per key; the same target twice in a key (probes that differ only in backend)
    // goes into a second round, as a link must not list a target twice. Decided on
    // references first (no symbol is copied), then the members are moved.
    let mut keys: Vec<MultiKey> = Vec::new();
    let group_of: Vec<usize> = {
        let mut targets: Vec<(&MultiKey, HashSet<(u64, &str)>)> = Vec::new();
        let group_of = members
            .iter()
            .map(|(key, m)| {
                let target = (m.offset, m.symbol.as_str());
                if let Some(g) = targets
                    .iter()
                    .position(|(k, t)| *k == key && !t.contains(&target))
                {
                    targets[g].1.insert(target);
                    g
                } else {
                    targets.push((key, HashSet::from([target])));
                    targets.len() - 1
                }
            })
            .collect();
        keys.extend(targets.into_iter().map(|(k, _)| k.clone()));
        group_of
    };
    let mut groups: Vec<(MultiKey, Vec<Member>)> =
        keys.into_iter().map(|k| (k, Vec::new())).collect();
    for ((_, m), g) in members.into_iter().zip(group_of) {
        groups[g].1.push(m);
    }
    // One link per group, created one after the other: splitting a large group over
    // parallel threads was measured slower (2152 libc uprobes: 0.33 s in one link, 0.38-0.58 s
    // in two created in parallel), the kernel serialising the registrations.
    for (key, members) in groups {
        create_bisect(
            prog,
            &key,
            members,
            &mut built,
            progress,
            &mut resolver,
            Symbols::AsGiven,
        );
    }
    built
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_evenly() {
        assert_eq!(
            split(vec![1, 2, 3, 4, 5], 2),
            vec![vec![1, 2, 3], vec![4, 5]]
        );
        assert_eq!(split(vec![1, 2], 8), vec![vec![1], vec![2]]);
        assert_eq!(split(Vec::<u8>::new(), 4), Vec::<Vec<u8>>::new());
        assert_eq!(split(vec![1, 2, 3], 1), vec![vec![1, 2, 3]]);
    }
}
