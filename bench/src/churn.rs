//! Dynamic churn: a stream of 1000 changes on the target's functions (attach 500, detach 250,
//! attach 250), converged by probeset's `ProbeSet::apply` and by libbpf-rs's two natural
//! approaches (a perf link per probe; one uprobe multi link re-created after every change).
//!
//! Timed: from the first change to the kernel holding the desired set (every change applied).
//! Verified: running the target then counts exactly the desired functions, once each; after
//! the final detach nothing counts.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::{SinkExt as _, StreamExt as _};
use probeset::{Change, Probe, ProbeSet, Uprobe};

use crate::peers::{Held, System};
use crate::{exercise, verify_detached, Config, Fixtures, Kind, TARGET_FUNCTIONS};

/// The changes on functions `0..n`: attach the first half, detach its first half, attach the
/// third quarter. `(attach?, function)`.
pub fn changes(n: usize) -> Vec<(bool, usize)> {
    (0..n / 2)
        .map(|i| (true, i))
        .chain((0..n / 4).map(|i| (false, i)))
        .chain((n / 2..3 * n / 4).map(|i| (true, i)))
        .collect()
}

/// The functions attached when the changes are done.
pub fn desired(n: usize) -> Range<usize> {
    n / 4..3 * n / 4
}

impl System {
    /// One verified churn: (time to converge, time to detach the final set).
    pub fn churn(
        &mut self,
        cfg: Config,
        fx: &Fixtures,
        binary: &Path,
        pts: &[(Option<String>, u64)],
    ) -> Result<(Duration, Duration), String> {
        let n = pts.len();
        let c0 = self.counts(TARGET_FUNCTIONS);
        let (converge, held) = self.converge(cfg, binary, pts)?;
        exercise(fx, Kind::Uprobe);
        let c1 = self.counts(TARGET_FUNCTIONS);
        let want = desired(n);
        let wrong: Vec<usize> = (0..TARGET_FUNCTIONS)
            .filter(|&i| c1[i] - c0[i] != u64::from(want.contains(&i)))
            .collect();
        let t = Instant::now();
        self.detach(held)?;
        let detach = t.elapsed();
        if let Some(&first) = wrong.first() {
            return Err(format!(
                "after the churn {} functions counted wrong (first: f_{first:04} counted {}, want {})",
                wrong.len(),
                c1[first] - c0[first],
                u64::from(want.contains(&first))
            ));
        }
        let c2 = self.counts(TARGET_FUNCTIONS);
        exercise(fx, Kind::Uprobe);
        verify_detached(&c2, &self.counts(TARGET_FUNCTIONS))?;
        Ok((converge, detach))
    }

    fn converge(
        &mut self,
        cfg: Config,
        binary: &Path,
        pts: &[(Option<String>, u64)],
    ) -> Result<(Duration, Held), String> {
        let n = pts.len();
        let err = |e: &dyn std::fmt::Display| e.to_string();
        let sym = |i: usize| pts[i].0.clone().expect("target points have symbols");
        match self {
            System::Probeset { counter, rt, .. } => {
                let probes: Vec<Probe> = (0..n)
                    .map(|i| {
                        Uprobe::new(binary, sym(i))
                            .cookie(u64::try_from(i).unwrap())
                            .into()
                    })
                    .collect();
                let stream: Vec<Change> = changes(n)
                    .into_iter()
                    .map(|(attach, i)| {
                        let p = probes[i].clone();
                        if attach {
                            Change::Attach(p)
                        } else {
                            Change::Detach(p)
                        }
                    })
                    .collect();
                let counter = &*counter;
                rt.block_on(async move {
                    let mut set = ProbeSet::new(counter).map_err(|e| err(&e))?;
                    let t = Instant::now();
                    let failed = if cfg == Config::ProbesetChurnPaced {
                        // One change at a time: the next is sent when the last one's outcome
                        // arrived (a service reacting to events one by one).
                        let (mut tx, rx) = futures::channel::mpsc::channel(1);
                        let mut outcomes = set.apply(rx);
                        let mut failed = 0;
                        // Time per phase (attach n/2, detach n/4, attach n/4), for the report.
                        let mut phases = [Duration::ZERO; 3];
                        for (k, change) in stream.into_iter().enumerate() {
                            let t = Instant::now();
                            tx.send(change).await.map_err(|e| err(&e))?;
                            let o = outcomes.next().await.ok_or("apply ended early")?;
                            failed += usize::from(o.result.is_err());
                            phases[(k / (n / 4)).saturating_sub(1).min(2)] += t.elapsed();
                        }
                        eprintln!(
                            "    paced: {} attaches {:.0} ms, {} detaches {:.0} ms, {} attaches {:.0} ms",
                            n / 2,
                            crate::ms(phases[0]),
                            n / 4,
                            crate::ms(phases[1]),
                            n / 4,
                            crate::ms(phases[2])
                        );
                        failed
                    } else {
                        // All ready at once (a configuration reload).
                        set.apply(futures::stream::iter(stream))
                            .filter(|o| std::future::ready(o.result.is_err()))
                            .count()
                            .await
                    };
                    let took = t.elapsed();
                    if failed > 0 {
                        return Err(format!("{failed} changes failed"));
                    }
                    Ok((took, Held::Set(set)))
                })
            }
            System::Libbpf { obj, .. } => {
                let multi = cfg == Config::LibbpfChurnMulti;
                let name = if multi { "count_multi" } else { "count_plain" };
                let prog = obj
                    .progs_mut()
                    .find(|p| p.name() == name)
                    .expect("program in object");
                let t = Instant::now();
                if multi {
                    // After every change, one multi link for the whole desired set replaces
                    // the previous one.
                    let mut want = BTreeSet::new();
                    let mut link = None;
                    for (attach, i) in changes(n) {
                        if attach {
                            want.insert(i);
                        } else {
                            want.remove(&i);
                        }
                        let opts = libbpf_rs::UprobeMultiOpts {
                            syms: want.iter().map(|&i| sym(i)).collect(),
                            cookies: want.iter().map(|&i| u64::try_from(i).unwrap()).collect(),
                            ..Default::default()
                        };
                        let new = prog
                            .attach_uprobe_multi_with_opts(-1, binary, "", opts)
                            .map_err(|e| err(&e))?;
                        drop(link.replace(new));
                    }
                    Ok((t.elapsed(), Held::Libbpf(link.into_iter().collect())))
                } else {
                    // A perf link per attached probe, dropped when it is detached.
                    let mut links = std::collections::BTreeMap::new();
                    for (attach, i) in changes(n) {
                        if attach {
                            let opts = libbpf_rs::UprobeOpts {
                                cookie: u64::try_from(i).unwrap(),
                                func_name: Some(sym(i)),
                                ..Default::default()
                            };
                            let link = prog
                                .attach_uprobe_with_opts(-1, binary, 0, opts)
                                .map_err(|e| err(&e))?;
                            links.insert(i, link);
                        } else {
                            drop(links.remove(&i));
                        }
                    }
                    Ok((t.elapsed(), Held::Libbpf(links.into_values().collect())))
                }
            }
            _ => unreachable!("churn runs on probeset and libbpf-rs"),
        }
    }
}
