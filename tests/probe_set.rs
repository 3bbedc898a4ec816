//! `ProbeSet` on real uprobes: bulk multi-link batches, per-probe batches, all or nothing,
//! live insert/remove, streams of changes, progress, and a runtime that keeps ticking
//! (host tier; root).

// Test indexes are below 2000: the casts cannot truncate; indexing two tables by the
// function number reads better than zipped iterators.
#![allow(clippy::cast_possible_truncation, clippy::needless_range_loop)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{can_run, exe, file_offset_of, functions, runtime};
use futures::StreamExt;
use probeset::counter::{Counter, Flavour};
use probeset::{Backend, Change, LinkKind, Probe, ProbeSet, ProgramKind, Uprobe};
use rand::{Rng, SeedableRng};

/// The probe on `functions()[i]`, with cookie `i`.
fn probe(i: usize) -> Probe {
    let f = functions()[i];
    Uprobe::at_offset(exe(), file_offset_of(f))
        .cookie(i as u64)
        .into()
}

/// Calls `functions()[i]` `times` times for each `i` in `range`.
fn call_range(range: std::ops::Range<usize>, times: impl Fn(usize) -> u64) {
    let fs = functions();
    for i in range {
        for k in 0..times(i) {
            std::hint::black_box(std::hint::black_box(fs[i])(k));
        }
    }
}

// The tests below split the 1000 functions between them: 0..1000 is the bulk test's,
// and each other test owns a distinct range, so parallel tests never count each other.

#[test]
fn thousand_uprobes_in_one_multi_link_count_exactly_once() {
    if !can_run("thousand_uprobes_in_one_multi_link_count_exactly_once") {
        return;
    }
    runtime().block_on(async {
        let counter = Counter::load(Flavour::UprobeMulti, 2000).unwrap();
        // Cookies 1000.. keep this test's slots apart from the others' functions; the pid
        // filter keeps other processes running this binary out, so the counts are exact.
        let me = i32::try_from(std::process::id()).unwrap();
        let probes: Vec<Probe> = functions()
            .into_iter()
            .enumerate()
            .map(|(i, f)| {
                Uprobe::at_offset(exe(), file_offset_of(f))
                    .pid(me)
                    .cookie(1000 + i as u64)
                    .into()
            })
            .collect();
        let mut set = ProbeSet::new(&counter).unwrap();
        let t = Instant::now();
        set.attach(probes.clone()).await.unwrap();
        let attach = t.elapsed();
        assert_eq!(set.len(), 1000);
        assert_eq!(set.program_kind(), Some(ProgramKind::UprobeMulti));
        assert_eq!(
            set.link_count(),
            1,
            "one binary, one pid, one direction: one link"
        );
        assert_eq!(set.link_kind(&probes[0]), Some(LinkKind::UprobeMulti));
        call_range(0..1000, |_| 1);
        let counts = counter.counts().unwrap();
        for i in 0..1000 {
            assert_eq!(counts[1000 + i], 1, "function {i} is counted exactly once");
        }
        let t = Instant::now();
        set.detach().await.unwrap();
        let detach = t.elapsed();
        println!("1000 uprobes, one multi link: attach {attach:?}, detach {detach:?}");
        // A multi link attaches and detaches 1000 probes in tens of milliseconds; 1000
        // perf links would need ~110 s to detach.
        assert!(
            attach + detach < Duration::from_secs(2),
            "attach {attach:?} detach {detach:?}"
        );
        let before = counter.counts().unwrap();
        call_range(0..1000, |_| 1);
        assert_eq!(counter.counts().unwrap(), before, "no hits after detach");
    });
}

#[test]
fn per_probe_batch_counts_exactly_and_drop_detaches_all() {
    if !can_run("per_probe_batch_counts_exactly_and_drop_detaches_all") {
        return;
    }
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 1000).unwrap();
        let mut set = ProbeSet::new(&counter).unwrap();
        set.attach((100..150).map(probe)).await.unwrap();
        assert_eq!(set.len(), 50);
        assert_eq!(set.link_count(), 50);
        assert_eq!(set.link_kind(&probe(100)), Some(LinkKind::PerfLink));
        call_range(100..150, |i| (i % 5) as u64 + 1);
        let counts = counter.counts().unwrap();
        for i in 100..150 {
            assert_eq!(counts[i], (i % 5) as u64 + 1, "function {i}");
        }
        let t = Instant::now();
        drop(set);
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "drop does not block: {:?}",
            t.elapsed()
        );
        probeset::cleanup::wait_idle().await;
        call_range(100..150, |_| 3);
        assert_eq!(counter.counts().unwrap(), counts, "no hits after drop");
    });
}

async fn all_or_nothing(flavour: Flavour, range: std::ops::Range<usize>) {
    let counter = Counter::load(flavour, 1000).unwrap();
    let mut set = ProbeSet::new(&counter).unwrap();
    set.insert(probe(range.start)).await.unwrap();
    let mut batch: Vec<Probe> = (range.start + 1..range.end).map(probe).collect();
    batch.insert(7, Uprobe::new(exe(), "probeset_no_such_function").into());
    let err = set.attach(batch).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(
        err.to_string().contains("probeset_no_such_function"),
        "{err}"
    );
    assert_eq!(set.len(), 1, "the set holds what it held before");
    assert!(set.contains(&probe(range.start)));
    call_range(range.clone(), |_| 1);
    let counts = counter.counts().unwrap();
    assert_eq!(counts[range.start], 1, "the probe held before still counts");
    for i in range.start + 1..range.end {
        assert_eq!(
            counts[i], 0,
            "function {i}: nothing of the failed batch is attached"
        );
    }
    // A probe the kernel rejects (an offset past the end of the file) is named too.
    let size = std::fs::metadata(exe()).unwrap().len();
    let mut batch: Vec<Probe> = (range.start + 1..range.end).map(probe).collect();
    batch.push(Uprobe::at_offset(exe(), size + 0x1000).into());
    let err = set.attach(batch).await.unwrap_err();
    assert!(
        err.to_string().contains(&format!("{:#x}", size + 0x1000)),
        "{err}"
    );
    assert_eq!(set.len(), 1);
    call_range(range.clone(), |_| 1);
    assert_eq!(counter.get(range.start as u32 + 1).unwrap(), 0);
    // The set stays usable.
    set.attach((range.start + 1..range.end).map(probe))
        .await
        .unwrap();
    assert_eq!(set.len(), range.len());
    set.detach().await.unwrap();
}

#[test]
fn one_bad_probe_among_twenty_fails_the_batch_multi() {
    if !can_run("one_bad_probe_among_twenty_fails_the_batch_multi") {
        return;
    }
    runtime().block_on(all_or_nothing(Flavour::UprobeMulti, 200..220));
}

#[test]
fn one_bad_probe_among_twenty_fails_the_batch_per_probe() {
    if !can_run("one_bad_probe_among_twenty_fails_the_batch_per_probe") {
        return;
    }
    runtime().block_on(all_or_nothing(Flavour::Plain, 220..240));
}

#[test]
fn the_same_target_twice_goes_into_a_second_link() {
    if !can_run("the_same_target_twice_goes_into_a_second_link") {
        return;
    }
    runtime().block_on(async {
        let counter = Counter::load(Flavour::UprobeMulti, 1000).unwrap();
        let mut set = ProbeSet::new(&counter).unwrap();
        // Probes that differ only in backend are two probes on one target: a multi link must
        // not list a target twice, so the second of each goes into a second link.
        let again = (320..325).map(|i| -> Probe {
            Uprobe::at_offset(exe(), file_offset_of(functions()[i]))
                .backend(Backend::Pmu)
                .cookie(i as u64 + 10)
                .into()
        });
        set.attach((320..325).map(probe).chain(again))
            .await
            .unwrap();
        assert_eq!(set.len(), 10);
        assert_eq!(set.link_count(), 2, "one link per round");
        call_range(320..325, |_| 1);
        let counts = counter.counts().unwrap();
        for i in 320..325 {
            assert_eq!(counts[i], 1, "function {i}, first link");
            assert_eq!(counts[i + 10], 1, "function {i}, second link");
        }
        set.detach().await.unwrap();
    });
}

#[test]
fn insert_remove_contains_on_a_live_set() {
    if !can_run("insert_remove_contains_on_a_live_set") {
        return;
    }
    runtime().block_on(async {
        for (flavour, range) in [(Flavour::UprobeMulti, 300..310), (Flavour::Plain, 310..320)] {
            let counter = Counter::load(flavour, 1000).unwrap();
            let mut set = ProbeSet::new(&counter).unwrap();
            set.attach(range.clone().map(probe)).await.unwrap();
            let gone = probe(range.start + 3);
            assert!(set.contains(&gone));
            assert!(
                set.contains(&gone.clone().with_cookie(999)),
                "cookies are not compared"
            );
            assert!(set.remove(&gone).await.unwrap());
            assert!(!set.remove(&gone).await.unwrap(), "removing twice: false");
            assert!(!set.contains(&gone));
            assert_eq!(set.len(), 9);
            call_range(range.clone(), |_| 2);
            let counts = counter.counts().unwrap();
            for i in range.clone() {
                let expected = if i == range.start + 3 { 0 } else { 2 };
                assert_eq!(counts[i], expected, "{flavour:?} function {i}");
            }
            set.insert(gone.clone()).await.unwrap();
            set.insert(gone.clone()).await.unwrap();
            assert_eq!(set.len(), 10, "inserting a held probe changes nothing");
            call_range(range.start + 3..range.start + 4, |_| 1);
            assert_eq!(counter.get(range.start as u32 + 3).unwrap(), 1);
            set.detach().await.unwrap();
        }
    });
}

#[test]
fn auto_cookies_number_the_probes_and_are_reused() {
    if !can_run("auto_cookies_number_the_probes_and_are_reused") {
        return;
    }
    runtime().block_on(async {
        let counter = Counter::load(Flavour::UprobeMulti, 16).unwrap();
        let mut set = ProbeSet::new(&counter).unwrap().auto_cookies(true);
        let probes: Vec<Probe> = (400..405).map(|i| probe(i).with_cookie(0)).collect();
        set.attach(probes.clone()).await.unwrap();
        let cookies: HashSet<u64> = set.cookies().map(|(_, c)| c).collect();
        assert_eq!(cookies, (0..5).collect());
        call_range(400..405, |i| (i - 399) as u64);
        for (p, c) in set.cookies() {
            let i = probes.iter().position(|q| q == p).unwrap();
            assert_eq!(
                counter.get(c as u32).unwrap(),
                i as u64 + 1,
                "cookie {c} counts its probe"
            );
        }
        let c2 = set.cookie_of(&probes[2]).unwrap();
        assert_eq!(set.probe_for_cookie(c2), Some(&probes[2]));
        set.remove(&probes[2]).await.unwrap();
        set.insert(probe(405).with_cookie(0)).await.unwrap();
        assert_eq!(
            set.cookie_of(&probe(405)),
            Some(c2),
            "the freed cookie is reused"
        );
        set.detach().await.unwrap();
    });
}

#[test]
fn progress_is_pushed_while_a_batch_attaches() {
    if !can_run("progress_is_pushed_while_a_batch_attaches") {
        return;
    }
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 1000).unwrap();
        let mut set = ProbeSet::new(&counter).unwrap().concurrency(1);
        let mut rx = set.progress();
        let watcher = tokio::spawn(async move {
            let mut seen = Vec::new();
            while rx.changed().await.is_ok() {
                let p = rx.borrow_and_update().clone();
                let done = p.done;
                seen.push(p);
                if done {
                    break;
                }
            }
            seen
        });
        set.attach((420..430).map(probe)).await.unwrap();
        let seen = watcher.await.unwrap();
        let last = seen.last().unwrap();
        assert!(
            last.done && last.total == 10 && last.attached == 10 && last.failed == 0,
            "{last:?}"
        );
        // A watch channel keeps the latest value: a slow watcher may see fewer steps, but
        // never one going backwards.
        assert!(
            seen.windows(2).all(|w| w[0].attached <= w[1].attached),
            "{seen:?}"
        );
        set.detach().await.unwrap();
    });
}

#[test]
fn a_stream_of_2000_random_changes_converges_to_the_desired_set() {
    if !can_run("a_stream_of_2000_random_changes_converges_to_the_desired_set") {
        return;
    }
    runtime().block_on(async {
        let range = 500..1000;
        let counter = Counter::load(Flavour::UprobeMulti, 1000).unwrap();
        let mut set = ProbeSet::new(&counter).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut desired = HashSet::new();
        let mut changes = Vec::new();
        for _ in 0..2000 {
            let i = rng.gen_range(range.clone());
            if rng.gen_bool(0.6) {
                desired.insert(i);
                changes.push(Change::Attach(probe(i)));
            } else {
                desired.remove(&i);
                changes.push(Change::Detach(probe(i)));
            }
        }
        // Bursts of random size with pauses between them, as a service's changes come.
        let sizes: Vec<usize> = (0..40).map(|_| rng.gen_range(1..100)).collect();
        let (tx, rx) = tokio::sync::mpsc::channel::<Change>(64);
        let feeder = tokio::spawn(async move {
            let mut it = changes.into_iter();
            'outer: for n in sizes.into_iter().cycle() {
                for _ in 0..n {
                    let Some(c) = it.next() else { break 'outer };
                    tx.send(c).await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let t = Instant::now();
        let outcomes: Vec<_> = set.apply(tokio_stream_from(rx)).collect().await;
        let took = t.elapsed();
        feeder.await.unwrap();
        assert_eq!(outcomes.len(), 2000);
        for o in &outcomes {
            assert!(o.result.is_ok(), "{o:?}");
        }
        let held: HashSet<usize> = set
            .probes()
            .map(|p| usize::try_from(p.cookie_value()).unwrap())
            .collect();
        assert_eq!(held, desired, "the set equals the desired state");
        // And the kernel holds exactly those probes.
        let before = counter.counts().unwrap();
        call_range(range.clone(), |_| 1);
        let after = counter.counts().unwrap();
        for i in range {
            let hits = after[i] - before[i];
            assert_eq!(hits, u64::from(desired.contains(&i)), "function {i}");
        }
        println!(
            "2000 changes converged in {took:?} with {} links for {} probes",
            set.link_count(),
            set.len()
        );
        set.detach().await.unwrap();
    });
}

/// A `Stream` over an mpsc receiver (without the tokio-stream crate).
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[test]
fn the_runtime_keeps_ticking_while_fifty_probes_detach() {
    if !can_run("the_runtime_keeps_ticking_while_fifty_probes_detach") {
        return;
    }
    // One worker thread: if detaching blocked it, the timer would stop.
    let rt = common::current_thread_runtime();
    rt.block_on(async {
        let counter = Counter::load(Flavour::Plain, 1000).unwrap();
        let mut set = ProbeSet::new(&counter).unwrap();
        set.attach((440..490).map(probe)).await.unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let ticker = tokio::spawn(async move {
            let mut gaps = Vec::new();
            let mut iv = tokio::time::interval(Duration::from_millis(1));
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = Instant::now();
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                iv.tick().await;
                let now = Instant::now();
                gaps.push(now - last);
                last = now;
            }
            gaps
        });
        let t = Instant::now();
        set.detach().await.unwrap();
        let took = t.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut gaps = ticker.await.unwrap();
        gaps.sort();
        let p99 = gaps[gaps.len() * 99 / 100];
        let max = *gaps.last().unwrap();
        println!(
            "50 perf links detached in {took:?}; timer ticks: {} p99 {p99:?} max {max:?}",
            gaps.len()
        );
        assert!(
            gaps.len() > 100,
            "the timer ticked while detaching ({} ticks)",
            gaps.len()
        );
        assert!(p99 < Duration::from_millis(20), "p99 tick {p99:?}");
    });
}

#[test]
fn a_whole_batch_error_reaches_every_change_with_its_kind() {
    if !can_run("a_whole_batch_error_reaches_every_change_with_its_kind") {
        return;
    }
    runtime().block_on(async {
        // A kprobe_multi program: on a kernel without kprobe multi links (this host) every
        // kprobe batch fails as a whole; elsewhere each probe fails on its own (no kprobes).
        let counter = Counter::load(Flavour::KprobeMulti, 4).unwrap();
        let mut set = ProbeSet::new(&counter).unwrap();
        let probes: Vec<Probe> = ["vfs_read", "vfs_write"]
            .map(|f| probeset::Kprobe::new(f).into())
            .to_vec();
        let attach_err = set.attach(probes.clone()).await.unwrap_err();
        let kind_of = |e: &probeset::Error| {
            (
                e.is_not_supported(),
                e.is_not_found(),
                e.is_invalid_input(),
                e.is_permission_denied(),
            )
        };
        let changes = futures::stream::iter(probes.iter().cloned().map(Change::Attach));
        let outcomes: Vec<_> = set.apply(changes).collect().await;
        assert_eq!(outcomes.len(), 2);
        for (o, p) in outcomes.iter().zip(&probes) {
            let e = o.result.as_ref().unwrap_err();
            assert_eq!(kind_of(e), kind_of(&attach_err), "{e} vs {attach_err}");
            assert!(e.to_string().contains(&p.to_string()), "{e} names {p}");
        }
        if set.program_kind() == Some(ProgramKind::UnsupportedMulti) {
            assert!(attach_err.is_not_supported(), "{attach_err}");
            let e = outcomes[0].result.as_ref().unwrap_err();
            let source = std::error::Error::source(e).expect("the batch's error is the source");
            assert!(source.to_string().contains("multi link"), "{source}");
        }
        assert!(set.is_empty());
    });
}
