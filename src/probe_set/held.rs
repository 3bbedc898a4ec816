//! What a set holds in the kernel, and its bookkeeping: each probe's slot (a link of its
//! own, or a place in a multi link), the multi links with their members.

use std::collections::{HashMap, HashSet};
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use crate::backend::Backend;
use crate::error::Error;
use crate::health::LinkSource;
use crate::link::{self, Attached, LinkKind};
use crate::multi_link::{Member, MultiKey};
use crate::probe::Probe;
use crate::resolve::FileIdent;

#[derive(Debug)]
pub(super) enum Holder {
    Single(Attached),
    Multi(u64),
}

#[derive(Debug)]
pub(super) struct Slot {
    /// The probe with the cookie it was attached with.
    pub probe: Probe,
    pub holder: Holder,
}

/// A multi link and the probes it holds.
#[derive(Debug)]
pub(super) struct MultiLink {
    pub attached: Attached,
    pub key: MultiKey,
    pub members: Vec<Member>,
}

/// Everything a set owns in the kernel, released in one go.
#[derive(Debug, Default)]
pub(super) struct Owned {
    pub singles: Vec<Attached>,
    pub multis: Vec<Attached>,
}

impl Owned {
    pub(super) fn is_empty(&self) -> bool {
        self.singles.is_empty() && self.multis.is_empty()
    }

    /// The objects, multi links first (their releases are the quick ones).
    pub(super) fn into_items(self) -> Vec<Attached> {
        self.multis.into_iter().chain(self.singles).collect()
    }

    /// Releases everything here and now, in parallel, logging failures (a dropped set).
    pub(super) fn release_blocking(self) {
        for e in link::release_all_blocking(self.into_items())
            .into_iter()
            .filter_map(Result::err)
        {
            tracing::warn!(error = %e, "releasing a dropped probe set");
        }
    }

    /// Releases everything on the blocking pool; the errors.
    pub(super) async fn release(self) -> Vec<Error> {
        link::release_all(self.into_items())
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect()
    }
}

/// A set's entries, kept alive until its probes are released (see [`Held::take_all`]).
#[expect(dead_code, reason = "held only to be dropped after the release")]
pub(super) struct Bookkeeping(HashMap<Probe, Slot>, Vec<Vec<Member>>);

/// Per-probe links as a swap re-creates them: the probe, and the file a uprobe is on.
pub(super) type Singles = Vec<(Probe, Option<Arc<FileIdent>>)>;

/// Multi links as a swap re-creates them: id, key, members.
pub(super) type MultiLinks = Vec<(u64, MultiKey, Vec<Member>)>;

/// The probes a set holds and the links that hold them.
#[derive(Debug, Default)]
pub(super) struct Held {
    slots: HashMap<Probe, Slot>,
    multis: HashMap<u64, MultiLink>,
    next_multi: u64,
}

impl Held {
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn contains(&self, probe: &Probe) -> bool {
        self.slots.contains_key(probe)
    }

    /// The held probes, each with the cookie it was attached with.
    pub(super) fn probes(&self) -> impl Iterator<Item = &Probe> + '_ {
        self.slots.values().map(|s| &s.probe)
    }

    /// The held probe equal to `probe` (with its cookie).
    pub(super) fn get(&self, probe: &Probe) -> Option<&Probe> {
        self.slots.get(probe).map(|s| &s.probe)
    }

    pub(super) fn holder(&self, probe: &Probe) -> Option<&Holder> {
        self.slots.get(probe).map(|s| &s.holder)
    }

    pub(super) fn link_kind(&self, probe: &Probe) -> Option<LinkKind> {
        Some(match self.holder(probe)? {
            Holder::Single(a) => a.kind,
            Holder::Multi(id) => self.multis[id].attached.kind,
        })
    }

    pub(super) fn backend_of(&self, probe: &Probe) -> Option<Backend> {
        match self.holder(probe)? {
            Holder::Single(a) => a.backend,
            Holder::Multi(_) => None,
        }
    }

    pub(super) fn link_count(&self) -> usize {
        self.multis.len()
            + self
                .slots
                .values()
                .filter(|s| matches!(s.holder, Holder::Single(_)))
                .count()
    }

    /// The files the held uprobes are on, each once.
    pub(super) fn binaries(&self) -> Vec<Arc<FileIdent>> {
        let singles = self.slots.values().filter_map(|s| match &s.holder {
            Holder::Single(a) => a.binary.clone(),
            Holder::Multi(_) => None,
        });
        let multis = self
            .multis
            .values()
            .filter_map(|m| m.attached.binary.clone());
        let mut seen = HashSet::new();
        singles
            .chain(multis)
            .filter(|b| seen.insert(Arc::clone(b)))
            .collect()
    }

    /// Each kernel link with the probes it carries (as held, with their cookies) and where
    /// its info is read from.
    pub(super) fn link_sources(&self) -> Vec<(Vec<Probe>, LinkSource<BorrowedFd<'_>>)> {
        let singles = self.slots.values().filter_map(|s| match &s.holder {
            Holder::Single(a) => Some((
                vec![s.probe.clone()],
                a.source(matches!(s.probe, Probe::Kprobe(_))),
            )),
            Holder::Multi(_) => None,
        });
        let multis = self.multis.values().map(|m| {
            let probes = m
                .members
                .iter()
                .map(|member| self.get(&member.probe).unwrap_or(&member.probe).clone())
                .collect();
            let kprobe = matches!(m.key, MultiKey::Kprobe { .. });
            (probes, m.attached.source(kprobe))
        });
        singles.chain(multis).collect()
    }

    /// The multi links: id, key, members.
    pub(super) fn multi_links(&self) -> impl Iterator<Item = (u64, &MultiKey, &[Member])> + '_ {
        self.multis
            .iter()
            .map(|(id, m)| (*id, &m.key, m.members.as_slice()))
    }

    /// What a program swap re-creates: each probe held by a link of its own (with its
    /// cookie, and the file a uprobe is on), and each multi link (id, key, members).
    pub(super) fn swap_plan(&self) -> (Singles, MultiLinks) {
        let singles = self
            .slots
            .values()
            .filter_map(|s| match &s.holder {
                Holder::Single(a) => Some((s.probe.clone(), a.binary.clone())),
                Holder::Multi(_) => None,
            })
            .collect();
        let multis = self
            .multis
            .iter()
            .map(|(id, m)| (*id, m.key.clone(), m.members.clone()))
            .collect();
        (singles, multis)
    }

    /// Puts the new attachments of a program swap in place of the current ones; returns
    /// the old ones, for the caller to release.
    pub(super) fn swap_in(
        &mut self,
        singles: Vec<(Probe, Attached)>,
        multis: Vec<(u64, Attached)>,
    ) -> Vec<Attached> {
        let mut old = Vec::with_capacity(singles.len() + multis.len());
        for (probe, new) in singles {
            if let Some(Slot {
                holder: Holder::Single(a),
                ..
            }) = self.slots.get_mut(&probe)
            {
                old.push(std::mem::replace(a, new));
            }
        }
        for (id, new) in multis {
            if let Some(m) = self.multis.get_mut(&id) {
                old.push(std::mem::replace(&mut m.attached, new));
            }
        }
        old
    }

    /// Records a probe with a link of its own.
    pub(super) fn insert_single(&mut self, probe: Probe, attached: Attached) {
        self.slots.insert(
            probe.clone(),
            Slot {
                probe,
                holder: Holder::Single(attached),
            },
        );
    }

    /// Records a multi link: new slots for its members (from `entries`: map key and slot
    /// probe, made before the link existed), or, with `None`, the members' existing slots
    /// pointed at it.
    pub(super) fn insert_multi(
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

    /// Takes out a probe held by a link of its own; `None` (and nothing changes) when it is
    /// not held so.
    pub(super) fn take_single(&mut self, probe: &Probe) -> Option<Attached> {
        if !matches!(self.holder(probe), Some(Holder::Single(_))) {
            return None;
        }
        match self.slots.remove(probe)?.holder {
            Holder::Single(a) => Some(a),
            Holder::Multi(_) => unreachable!("checked above"),
        }
    }

    /// Takes out multi link `id` (its members' slots stay, for the caller to move or drop).
    pub(super) fn take_multi(&mut self, id: u64) -> Attached {
        self.multis.remove(&id).expect("link held").attached
    }

    /// Forgets a probe's slot.
    pub(super) fn forget(&mut self, probe: &Probe) {
        self.slots.remove(probe);
    }

    /// Room for `n` more entries, made before the probes exist.
    pub(super) fn reserve(&mut self, n: usize) {
        self.slots.reserve(n);
    }

    /// Takes every kernel object out of the set, and the set's bookkeeping with it, without
    /// dropping the bookkeeping: the caller drops it *after* the release. Freeing thousands
    /// of entries calls `free()` thousands of times, and while the probes are still attached
    /// to libc (a set tracing libc, say), each call in this process hits a probe: measured
    /// here, it put 90-120 ms into the detach of 2152 libc probes.
    pub(super) fn take_all(&mut self) -> (Owned, Bookkeeping) {
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
}
