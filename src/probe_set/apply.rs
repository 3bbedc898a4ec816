//! Probes that come and go: [`ProbeSet::apply`] takes a stream of [`Change`]s, applies
//! whatever is ready as one coalesced batch, and yields each change's [`Outcome`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::BoxStream;
use futures::{FutureExt as _, Stream, StreamExt as _};

use super::change::{Change, Outcome};
use super::plan;
use super::set::ProbeSet;
use crate::error::Error;
use crate::probe::Probe;

/// Largest number of changes [`ProbeSet::apply`] takes into one batch.
const MAX_BATCH: usize = 4096;

/// The outcomes of [`ProbeSet::apply`], one per change, in order.
///
/// `Unpin` whatever the input stream is, so `.next().await` works on it directly. Dropping
/// it stops applying (see [`ProbeSet::apply`]'s cancel safety).
#[must_use = "streams do nothing unless polled"]
pub struct Apply<'a> {
    /// The batches, as one stream of outcomes. Boxed: each batch's future borrows the set
    /// across its awaits, which no nameable type can hold.
    outcomes: BoxStream<'a, Outcome>,
}

impl std::fmt::Debug for Apply<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apply").finish_non_exhaustive()
    }
}

impl Stream for Apply<'_> {
    type Item = Outcome;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Outcome>> {
        self.outcomes.poll_next_unpin(cx)
    }
}

/// The stream's state between batches.
struct State<'a> {
    set: &'a mut ProbeSet,
    changes: BoxStream<'a, Change>,
    out: VecDeque<Outcome>,
}

impl ProbeSet {
    /// Applies a stream of changes and yields the outcome of each, in order.
    ///
    /// Bursts are coalesced: whatever changes are ready when the set gets to them (up to
    /// 4096) are applied as one batch, each probe's last change in it winning; the detaches
    /// go first (each affected multi link rebuilt once), then the attaches (one multi link
    /// per group with a multi-link program). Unlike [`ProbeSet::attach`], a batch here is
    /// not all or nothing: each change gets its own outcome, and one bad probe does not
    /// stop the others.
    ///
    /// Back-pressure: the next changes are read only once the outcomes of the previous
    /// batch have been taken, so nothing buffers without bound.
    ///
    /// ```no_run
    /// # async fn f(set: &mut probeset::ProbeSet) {
    /// use futures::StreamExt;
    /// use probeset::{Change, Uprobe};
    ///
    /// let libc = "/lib/x86_64-linux-gnu/libc.so.6";
    /// let changes = futures::stream::iter([
    ///     Change::Attach(Uprobe::new(libc, "malloc").into()),
    ///     Change::Attach(Uprobe::new(libc, "free").into()),
    ///     Change::Detach(Uprobe::new(libc, "malloc").into()),
    /// ]);
    /// let mut outcomes = set.apply(changes);
    /// while let Some(o) = outcomes.next().await {
    ///     println!("{:?}: {:?}", o.change, o.result);
    /// }
    /// # }
    /// ```
    ///
    /// # Cancel safety
    /// Dropping the returned stream drops the changes it had read but not applied; a batch
    /// in progress is rolled back as a cancelled [`ProbeSet::attach`] is. The set stays
    /// usable.
    pub fn apply<'a, S>(&'a mut self, changes: S) -> Apply<'a>
    where
        S: Stream<Item = Change> + Send + 'a,
    {
        let state = State {
            set: self,
            changes: changes.boxed(),
            out: VecDeque::new(),
        };
        let outcomes = futures::stream::unfold(state, |mut st| async move {
            if let Some(o) = st.out.pop_front() {
                return Some((o, st));
            }
            let first = st.changes.next().await?;
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match st.changes.next().now_or_never() {
                    Some(Some(c)) => batch.push(c),
                    _ => break,
                }
            }
            st.out = st.set.apply_batch(batch).await;
            let o = st.out.pop_front()?;
            Some((o, st))
        })
        .boxed();
        Apply { outcomes }
    }

    /// Applies a ready batch of changes (see [`plan::coalesce`]).
    async fn apply_batch(&mut self, batch: Vec<Change>) -> VecDeque<Outcome> {
        let plan::Coalesced {
            attach,
            detach,
            last,
        } = plan::coalesce(&batch);
        let mut results: HashMap<Probe, Result<bool, Error>> = HashMap::new();
        if !detach.is_empty() {
            results.extend(self.remove_many(&detach).await);
        }
        if !attach.is_empty() {
            results.extend(self.apply_attaches(attach).await);
        }
        batch
            .into_iter()
            .zip(last)
            .map(|(change, last)| {
                let result = if last {
                    results.remove(change.probe()).unwrap_or(Ok(false))
                } else {
                    // Superseded by a later change to the same probe in this batch.
                    Ok(false)
                };
                Outcome { change, result }
            })
            .collect()
    }

    /// Attaches what it can of `probes` (best effort); each probe's result. An error of the
    /// whole batch (the program's kind, the runtime) is each probe's, shared.
    async fn apply_attaches(&mut self, probes: Vec<Probe>) -> Vec<(Probe, Result<bool, Error>)> {
        let held_before: HashSet<Probe> = probes
            .iter()
            .filter(|p| self.contains(p))
            .cloned()
            .collect();
        let (fresh, bad) = self.prepare(probes.clone());
        let mut errors: HashMap<Probe, Error> = bad.into_iter().collect();
        if !fresh.is_empty() {
            let built = match self.usable_kind().await {
                Ok(kind) => self.build(kind, fresh.clone(), false).await,
                Err(e) => Err(e),
            };
            match built {
                Ok(mut built) => {
                    errors.extend(std::mem::take(&mut built.failed));
                    self.commit(built);
                }
                Err(e) => {
                    let e = e.shared();
                    errors.extend(fresh.into_iter().map(|p| {
                        let err = Error::in_batch(&p, &e);
                        (p, err)
                    }));
                }
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
