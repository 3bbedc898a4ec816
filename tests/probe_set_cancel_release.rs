//! A cancelled per-probe batch is released in parallel, as `detach()` releases a set, not
//! one probe after the other (host tier; root). Its own test binary: it counts this
//! process's fds.

mod common;

use std::time::Instant;

use common::{can_run, exe, file_offset_of, functions, our_events, runtime, tracefs};
use probeset::counter::{Counter, Flavour};
use probeset::{Backend, Probe, ProbeSet, Uprobe};

fn probe(i: usize) -> Probe {
    Uprobe::at_offset(exe(), file_offset_of(functions()[i]))
        .backend(Backend::Tracefs)
        .cookie(i as u64)
        .into()
}

#[test]
fn a_cancelled_batch_is_released_as_fast_as_a_detach() {
    if !can_run("a_cancelled_batch_is_released_as_fast_as_a_detach") {
        return;
    }
    tracefs();
    let pid = std::process::id();
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 1000).unwrap();
        let fds = common::fd_count();
        let batch: Vec<Probe> = (400..600).map(probe).collect();
        let mut set = ProbeSet::new(&counter).unwrap();
        let mut progress = set.progress();
        // Cancel once most of the batch is attached: the late results hold ~150 probes.
        let reached = async {
            loop {
                progress.changed().await.unwrap();
                if progress.borrow().attached >= 150 {
                    break;
                }
            }
        };
        tokio::select! {
            r = set.attach(batch.clone()) => panic!("the batch finished before it was cancelled: {r:?}"),
            () = reached => {}
        }
        let t = Instant::now();
        probeset::cleanup::wait_idle().await;
        let cancelled = t.elapsed();
        // How many the workers had attached when they stopped.
        let attached = set.progress().borrow().attached;
        assert!(attached >= 150, "{attached}");
        assert!(set.is_empty(), "the set holds what it held before");
        assert!(
            our_events("uprobe_events", pid).is_empty(),
            "no event of the cancelled batch is left"
        );
        assert_eq!(
            common::fd_count(),
            fds + 1,
            "no fd of the cancelled batch is left (the set holds its program's)"
        );

        // The reference: the same batch attached, then detached.
        set.attach(batch.clone()).await.unwrap();
        assert_eq!(our_events("uprobe_events", pid).len(), 200);
        let t = Instant::now();
        set.detach().await.unwrap();
        let detach = t.elapsed();
        assert!(our_events("uprobe_events", pid).is_empty());
        assert_eq!(common::fd_count(), fds, "every fd closed");
        let per_cancelled = cancelled.as_secs_f64() / f64::from(u32::try_from(attached).unwrap());
        let per_detach = detach.as_secs_f64() / 200.0;
        println!(
            "release of a cancelled batch of {attached}: {cancelled:?} ({:.0} ms a probe); \
             detach() of 200: {detach:?} ({:.0} ms a probe)",
            per_cancelled * 1e3,
            per_detach * 1e3
        );
        // One release after the other costs the perf close *and* the tracefs removal's
        // EBUSY wait for each probe in turn (measured: ~150-190 ms a probe); in parallel the
        // waits overlap, as in detach() (~70-100 ms a probe).
        assert!(
            per_cancelled < per_detach * 1.25 + 0.005,
            "a cancelled batch is released in parallel: {per_cancelled:.3} s a probe against \
             detach()'s {per_detach:.3} s"
        );
    });
}
