//! A program hot swap under a running workload: no call is missed while the probes move,
//! and afterwards only the new program counts (host tier; root).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::{can_run, exe, file_offset_of, functions, runtime};
use probeset::counter::{Counter, Flavour};
use probeset::{LinkKind, Probe, ProbeSet, Uprobe};

/// The probes on functions `range` of the shared target table, cookie = index.
fn probes(range: std::ops::Range<usize>) -> Vec<Probe> {
    range
        .map(|i| {
            Uprobe::at_offset(exe(), file_offset_of(functions()[i]))
                .cookie(i as u64)
                .into()
        })
        .collect()
}

#[test]
fn a_hot_swap_misses_no_call_and_leaves_only_the_new_program() {
    if !can_run("a_hot_swap_misses_no_call_and_leaves_only_the_new_program") {
        return;
    }
    // Functions 700..710 are this test's (other tests own other ranges of the table).
    for (flavour, range) in [(Flavour::UprobeMulti, 700..705), (Flavour::Plain, 705..710)] {
        runtime().block_on(async {
            let old = Counter::load(flavour, 1000).unwrap();
            let new = Counter::load(flavour, 1000).unwrap();
            let mut set = ProbeSet::new(&old).unwrap();
            set.attach(probes(range.clone())).await.unwrap();
            let kind_before: Vec<Option<LinkKind>> = probes(range.clone())
                .iter()
                .map(|p| set.link_kind(p))
                .collect();

            // A thread calls the first function in a loop while the programs swap.
            let (stop, calls) = (
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicU64::new(0)),
            );
            let f = functions()[range.start];
            let worker = {
                let (stop, calls) = (Arc::clone(&stop), Arc::clone(&calls));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::black_box(f(1));
                        calls.fetch_add(1, Ordering::Relaxed);
                    }
                })
            };
            std::thread::sleep(std::time::Duration::from_millis(20));
            set.replace_program(&new).await.unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
            stop.store(true, Ordering::Relaxed);
            worker.join().unwrap();
            let slot = u32::try_from(range.start).unwrap();
            let (a, b, n) = (
                old.get(slot).unwrap(),
                new.get(slot).unwrap(),
                calls.load(Ordering::Relaxed),
            );
            println!("{flavour:?}: {n} calls, old program {a}, new program {b}");
            assert!(a + b >= n, "{flavour:?}: no call missed: {a} + {b} < {n}");
            assert!(a > 0 && b > 0, "{flavour:?}: both programs ran");

            // Afterwards only the new program counts, every probe with its cookie.
            let (a, b) = (old.counts().unwrap(), new.counts().unwrap());
            for (i, g) in range.clone().zip(&functions()[range.clone()]) {
                for k in 0..3 {
                    std::hint::black_box(g(k));
                }
                assert_eq!(
                    old.get(u32::try_from(i).unwrap()).unwrap(),
                    a[i],
                    "{flavour:?} {i}: old program silent"
                );
                assert_eq!(
                    new.get(u32::try_from(i).unwrap()).unwrap(),
                    b[i] + 3,
                    "{flavour:?} {i}: new program counts"
                );
            }
            let kind_after: Vec<Option<LinkKind>> = probes(range.clone())
                .iter()
                .map(|p| set.link_kind(p))
                .collect();
            assert_eq!(kind_before, kind_after, "the probes are held as before");
            assert_eq!(set.len(), range.len());

            // A program that attaches differently is refused, and the set keeps counting.
            let other = Counter::load(
                if flavour == Flavour::Plain {
                    Flavour::UprobeMulti
                } else {
                    Flavour::Plain
                },
                1000,
            )
            .unwrap();
            let err = set.replace_program(&other).await.unwrap_err();
            assert!(err.is_invalid_input(), "{err}");
            std::hint::black_box(functions()[range.start](1));
            assert_eq!(
                new.get(slot).unwrap(),
                b[range.start] + 4,
                "still on the new program"
            );
            set.detach().await.unwrap();
        });
    }
}

#[test]
fn a_swap_never_moves_a_per_probe_uprobe_onto_a_replaced_file() {
    if !can_run("a_swap_never_moves_a_per_probe_uprobe_onto_a_replaced_file") {
        return;
    }
    // The probes are on this test executable, named through a symlink that is then pointed
    // at another file: the path names another file, the probes stay on this one.
    let dir = std::env::temp_dir().join(format!("probeset-swap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let app = dir.join("app");
    std::os::unix::fs::symlink(exe(), &app).unwrap();
    runtime().block_on(async {
        let old = Counter::load(Flavour::Plain, 1000).unwrap();
        let new = Counter::load(Flavour::Plain, 1000).unwrap();
        let mut set = ProbeSet::new(&old).unwrap();
        let probe: Probe = Uprobe::at_offset(&app, file_offset_of(functions()[710]))
            .cookie(710)
            .into();
        set.insert(probe).await.unwrap();
        let tmp = dir.join(".new");
        std::os::unix::fs::symlink("/bin/true", &tmp).unwrap();
        std::fs::rename(&tmp, &app).unwrap();
        assert_eq!(set.replaced_binaries(), vec![app.clone()]);

        let err = set.replace_program(&new).await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(err.to_string().contains("is on"), "{err}");
        std::hint::black_box(functions()[710](1));
        assert_eq!(
            old.get(710).unwrap(),
            1,
            "the set still runs the old program"
        );
        assert_eq!(
            new.get(710).unwrap(),
            0,
            "nothing of the new program is attached"
        );
        set.detach().await.unwrap();
    });
    std::fs::remove_dir_all(&dir).unwrap();
}
