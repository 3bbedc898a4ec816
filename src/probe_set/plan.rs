//! The set's pure logic, decided before (and without) the kernel: which probes of a batch
//! are new (dedupe, validation, automatic cookies), how multi-link members are grouped
//! into links, which links a removal rebuilds, and how a burst of changes is coalesced.
//! No kernel object and no runtime here; every rule has its unit test.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::change::Change;
use crate::error::Error;
use crate::multi_link::{Member, MultiKey};
use crate::probe::Probe;
use crate::validate;

/// Multi links with fewer probes than this are merged into a rebuilt link of their key.
pub(super) const COMPACT_BELOW: usize = 64;

/// The new probes of a batch, validated, without repeats or probes already held, with
/// automatic cookies assigned (tentatively: the set changes only on commit), and the
/// probes that failed validation.
///
/// `held` tells whether the set holds a probe. `auto_cookies` is `None` when automatic
/// cookies are off, else the cookies the held probes use: each new probe with cookie 0
/// gets the lowest cookie neither they nor the batch's own non-zero cookies use.
pub(super) fn prepare(
    probes: Vec<Probe>,
    held: impl Fn(&Probe) -> bool,
    auto_cookies: Option<BTreeSet<u64>>,
) -> (Vec<Probe>, Vec<(Probe, Error)>) {
    // New and not repeated, decided on references: no probe is cloned to be compared.
    let keep: Vec<bool> = {
        let mut seen: HashSet<&Probe> = HashSet::with_capacity(probes.len());
        probes.iter().map(|p| !held(p) && seen.insert(p)).collect()
    };
    let mut used = auto_cookies;
    if let Some(used) = &mut used {
        used.extend(probes.iter().map(Probe::cookie_value).filter(|&c| c != 0));
    }
    let mut fresh = Vec::with_capacity(probes.len());
    let mut bad = Vec::new();
    let mut next = 0u64;
    for (p, keep) in probes.into_iter().zip(keep) {
        if !keep {
            continue;
        }
        if let Err(e) = validate::probe(&p) {
            bad.push((p, e));
            continue;
        }
        let p = match &mut used {
            Some(used) if p.cookie_value() == 0 => {
                while used.contains(&next) {
                    next += 1;
                }
                used.insert(next);
                p.with_cookie(next)
            }
            _ => p,
        };
        fresh.push(p);
    }
    (fresh, bad)
}

/// Groups multi-link members into links: one per key, in the order keys first appear. The
/// same target twice in a key (probes that differ only in backend) goes into a further
/// group, as a link must not list a target twice. Decided on references first (no symbol
/// is copied), then the members are moved.
pub(super) fn group(members: Vec<(MultiKey, Member)>) -> Vec<(MultiKey, Vec<Member>)> {
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
    groups
}

/// A rebuild of one key's multi links.
#[derive(Debug, Default)]
pub(super) struct Rebuild {
    /// The links replaced.
    pub ids: Vec<u64>,
    /// The probes removed.
    pub gone: Vec<Probe>,
    /// The probes that stay, in the new link (none: the links just go).
    pub keep: Vec<Member>,
}

/// Plans taking `by_link` (link id -> its probes to remove) out of the set's multi links
/// `links` (id, key, members): one rebuild per key touched, for the probes that stay,
/// which also takes in the key's other small links (below [`COMPACT_BELOW`] probes) so
/// that churn does not leave a trail of tiny links behind.
pub(super) fn rebuilds<'a>(
    links: impl IntoIterator<Item = (u64, &'a MultiKey, &'a [Member])>,
    by_link: HashMap<u64, Vec<Probe>>,
) -> Vec<(MultiKey, Rebuild)> {
    let links: HashMap<u64, (&MultiKey, &[Member])> = links
        .into_iter()
        .map(|(id, key, members)| (id, (key, members)))
        .collect();
    let mut plans: HashMap<MultiKey, Rebuild> = HashMap::new();
    for (id, gone) in by_link {
        let Some((key, _)) = links.get(&id) else {
            continue;
        };
        let plan = plans.entry((*key).clone()).or_default();
        plan.ids.push(id);
        plan.gone.extend(gone);
    }
    for (key, plan) in &mut plans {
        for (id, (k, members)) in &links {
            if *k == key && members.len() < COMPACT_BELOW && !plan.ids.contains(id) {
                plan.ids.push(*id);
            }
        }
        plan.ids.sort_unstable();
        let gone: HashSet<&Probe> = plan.gone.iter().collect();
        plan.keep = plan
            .ids
            .iter()
            .flat_map(|id| links[id].1)
            .filter(|m| !gone.contains(&m.probe))
            .cloned()
            .collect();
    }
    plans.into_iter().collect()
}

/// A ready burst of changes, coalesced: each probe's last change wins.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Coalesced {
    /// The probes to attach (their last change is an attach), in batch order.
    pub attach: Vec<Probe>,
    /// The probes to detach, in batch order.
    pub detach: Vec<Probe>,
    /// For each change of the batch, whether it is its probe's last (the others are
    /// superseded and answer `Ok(false)`).
    pub last: Vec<bool>,
}

/// Coalesces `batch`: the last change to each probe wins; the detaches are applied first,
/// then the attaches.
pub(super) fn coalesce(batch: &[Change]) -> Coalesced {
    let mut last_index: HashMap<&Probe, usize> = HashMap::new();
    for (i, c) in batch.iter().enumerate() {
        last_index.insert(c.probe(), i);
    }
    let mut out = Coalesced::default();
    for (i, c) in batch.iter().enumerate() {
        let last = last_index[c.probe()] == i;
        out.last.push(last);
        match c {
            Change::Attach(p) if last => out.attach.push(p.clone()),
            Change::Detach(p) if last => out.detach.push(p.clone()),
            _ => {}
        }
    }
    out
}

/// Splits `items` into at most `n` chunks of nearly equal size.
pub(super) fn split<T>(items: Vec<T>, n: usize) -> Vec<Vec<T>> {
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

#[cfg(test)]
mod tests;
