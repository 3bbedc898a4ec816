//! Cancelling `ProbeSet::attach` at many points of a 200-probe tracefs batch leaves nothing
//! behind (host tier; root). Its own test binary: it counts this process's fds.

mod common;

use std::time::{Duration, Instant};

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
fn cancelled_batches_leave_nothing_and_the_set_as_it_was() {
    if !can_run("cancelled_batches_leave_nothing_and_the_set_as_it_was") {
        return;
    }
    tracefs();
    let pid = std::process::id();
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 1000).unwrap();
        let fds_without_set = common::fd_count();
        let mut set = ProbeSet::new(&counter).unwrap();
        set.insert(probe(0)).await.unwrap();
        let held = our_events("uprobe_events", pid).len();
        assert_eq!(held, 1);
        probeset::cleanup::wait_idle().await;
        let fds = common::fd_count();
        let batch: Vec<Probe> = (1..201).map(probe).collect();
        let mut cancelled = 0;
        for ms in [0u64, 1, 2, 3, 5, 8, 13, 21] {
            let t = Instant::now();
            let r =
                tokio::time::timeout(Duration::from_millis(ms), set.attach(batch.clone())).await;
            if r.is_err() {
                cancelled += 1;
            } else {
                // Completed before the deadline: undo it to start the next round clean.
                let gone: Vec<Probe> = batch.clone();
                set.remove_many(&gone).await;
            }
            probeset::cleanup::wait_idle().await;
            let left = our_events("uprobe_events", pid);
            assert_eq!(left.len(), held, "timeout {ms} ms: events left {left:?}");
            assert_eq!(common::fd_count(), fds, "timeout {ms} ms: fds");
            assert_eq!(
                set.len(),
                1,
                "timeout {ms} ms: the set holds what it held before"
            );
            assert!(set.contains(&probe(0)));
            println!(
                "timeout {ms} ms: cancelled={} cleaned up in {:?}",
                r.is_err(),
                t.elapsed()
            );
        }
        assert!(
            cancelled >= 4,
            "most rounds were really cancelled ({cancelled})"
        );
        // The set stays usable, and counts exactly.
        set.attach((1..6).map(probe)).await.unwrap();
        counter.reset().unwrap();
        for f in &functions()[..6] {
            std::hint::black_box(f(1));
        }
        assert_eq!(&counter.counts().unwrap()[..6], &[1, 1, 1, 1, 1, 1]);
        set.detach().await.unwrap();
        assert!(our_events("uprobe_events", pid).is_empty());
        assert_eq!(
            common::fd_count(),
            fds_without_set,
            "the set's fds are all closed"
        );
    });
}
