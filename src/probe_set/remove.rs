//! Taking probes out of a set: per-probe links are released; multi links are rebuilt for
//! the probes that stay (make before break), each affected link once per call.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use tracing::Instrument as _;

use super::held::{Held, Holder};
use super::plan::{self, Rebuild};
use crate::blocking;
use crate::error::Error;
use crate::link::{self, Attached};
use crate::multi_link::{self, MultiKey};
use crate::probe::Probe;

/// Each probe's result, as [`ProbeSet::remove`](super::ProbeSet::remove) reports it.
pub(super) type Removed = Vec<(Probe, Result<bool, Error>)>;

/// Detaches `probes` from `held`, rebuilding each affected multi link once.
pub(super) async fn remove_many(prog: &Arc<OwnedFd>, held: &mut Held, probes: &[Probe]) -> Removed {
    let span = tracing::debug_span!("probeset_remove", probes = probes.len());
    remove_many_in(prog, held, probes).instrument(span).await
}

async fn remove_many_in(prog: &Arc<OwnedFd>, held: &mut Held, probes: &[Probe]) -> Removed {
    let mut results = Vec::with_capacity(probes.len());
    let mut singles = Vec::new();
    let mut removed_singles = Vec::new();
    let mut by_link: HashMap<u64, Vec<Probe>> = HashMap::new();
    for p in probes {
        match held.holder(p) {
            Some(Holder::Single(_)) => {
                if let Some(a) = held.take_single(p) {
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
    let replaced = rebuild(prog, held, by_link, &mut results).await;
    // The replaced multi links first, then the singles, in order: results line up.
    let n_multi = replaced.len();
    let outcomes = link::release_all(replaced.into_iter().chain(singles).collect()).await;
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

/// Takes the probes of `by_link` out of their multi links (see [`plan::rebuilds`]).
/// Returns the links replaced, for the caller to release; where a new link cannot be made
/// the set keeps the old ones, and each probe of that rebuild gets the error (shared, with
/// its kind and cause).
async fn rebuild(
    prog: &Arc<OwnedFd>,
    held: &mut Held,
    by_link: HashMap<u64, Vec<Probe>>,
    results: &mut Removed,
) -> Vec<Attached> {
    if by_link.is_empty() {
        return Vec::new();
    }
    let plans: Vec<(MultiKey, Rebuild)> = plan::rebuilds(held.multi_links(), by_link);
    let prog = Arc::clone(prog);
    let jobs: Vec<(MultiKey, Vec<multi_link::Member>)> = plans
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
                    multi_link::create(prog.as_fd(), &key, &keep).map(Some)
                }
            })
            .collect::<Vec<_>>())
    })
    .await;
    let created = match created {
        Ok(created) => created,
        Err(e) => {
            let e = e.shared();
            for (_, plan) in plans {
                results.extend(plan.gone.into_iter().map(|p| {
                    let err = Error::in_batch(&p, &e);
                    (p, Err(err))
                }));
            }
            return Vec::new();
        }
    };
    let mut replaced = Vec::new();
    for ((key, plan), new) in plans.into_iter().zip(created) {
        match new {
            Ok(new) => {
                replaced.extend(plan.ids.iter().map(|&id| held.take_multi(id)));
                for p in plan.gone {
                    held.forget(&p);
                    results.push((p, Ok(true)));
                }
                if let Some(new) = new {
                    held.insert_multi(key, new, plan.keep, None);
                }
            }
            Err(e) => {
                let e = e.shared();
                results.extend(plan.gone.into_iter().map(|p| {
                    let err = Error::in_batch(&p, &e);
                    (p, Err(err))
                }));
            }
        }
    }
    replaced
}
