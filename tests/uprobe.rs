//! Real uprobes on functions of this test executable, counted exactly by the built-in
//! counter program (host tier; root).

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::{can_run, exe, our_events, runtime, symbol_of, tracefs};
use probeset::counter::{Counter, Flavour};
use probeset::{Backend, LinkKind, Uprobe};

// Each test probes its own functions, so tests running in parallel do not see each other's
// calls. Distinct bodies keep the linker from merging them.
#[inline(never)]
fn target_auto(x: u64) -> u64 {
    black_box(x).wrapping_mul(3) ^ 0x11
}
#[inline(never)]
fn target_pmu(x: u64) -> u64 {
    black_box(x).wrapping_mul(5) ^ 0x12
}
#[inline(never)]
fn target_tracefs(x: u64) -> u64 {
    black_box(x).wrapping_mul(7) ^ 0x13
}
#[inline(never)]
fn target_ret(x: u64) -> u64 {
    black_box(x).wrapping_mul(11) ^ 0x14
}
#[inline(never)]
fn target_cookie_a(x: u64) -> u64 {
    black_box(x).wrapping_mul(13) ^ 0x15
}
#[inline(never)]
fn target_cookie_b(x: u64) -> u64 {
    black_box(x).wrapping_mul(17) ^ 0x16
}
#[inline(never)]
fn target_pid(x: u64) -> u64 {
    black_box(x).wrapping_mul(19) ^ 0x17
}
#[inline(never)]
fn target_offset(x: u64) -> u64 {
    black_box(x).wrapping_mul(23) ^ 0x18
}
#[inline(never)]
fn target_drop(x: u64) -> u64 {
    black_box(x).wrapping_mul(29) ^ 0x19
}
#[inline(never)]
fn target_m_entry(x: u64) -> u64 {
    black_box(x).wrapping_mul(31) ^ 0x1a
}
#[inline(never)]
fn target_m_exit(x: u64) -> u64 {
    black_box(x).wrapping_mul(37) ^ 0x1b
}

fn call(f: fn(u64) -> u64, n: u64) {
    for i in 0..n {
        black_box(black_box(f)(i));
    }
}

/// Attach, call N times, read exactly N, detach, call again, still N.
fn exact_count_through(backend: Backend, target: fn(u64) -> u64, name: &str, test: &str) {
    if !can_run(test) {
        return;
    }
    if backend == Backend::Tracefs {
        tracefs();
    }
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 8).unwrap();
        let link = Uprobe::new(exe(), symbol_of(name))
            .cookie(2)
            .backend(backend)
            .attach(&counter)
            .await
            .unwrap();
        assert_eq!(link.kind(), LinkKind::PerfLink);
        let expected_backend = if backend == Backend::Tracefs {
            Backend::Tracefs
        } else {
            Backend::Pmu
        };
        assert_eq!(
            link.backend(),
            Some(expected_backend),
            "Auto uses the PMU where it exists"
        );
        call(target, 100);
        assert_eq!(counter.get(2).unwrap(), 100);
        assert_eq!(
            counter.counts().unwrap().iter().sum::<u64>(),
            100,
            "only slot 2 counts"
        );
        link.detach().await.unwrap();
        call(target, 50);
        assert_eq!(counter.get(2).unwrap(), 100, "no hits after detach");
    });
}

#[test]
fn uprobe_counts_exactly_auto() {
    exact_count_through(
        Backend::Auto,
        target_auto,
        "target_auto",
        "uprobe_counts_exactly_auto",
    );
}

#[test]
fn uprobe_counts_exactly_pmu() {
    exact_count_through(
        Backend::Pmu,
        target_pmu,
        "target_pmu",
        "uprobe_counts_exactly_pmu",
    );
}

#[test]
fn uprobe_counts_exactly_tracefs() {
    exact_count_through(
        Backend::Tracefs,
        target_tracefs,
        "target_tracefs",
        "uprobe_counts_exactly_tracefs",
    );
}

#[test]
fn uretprobe_counts_exactly_on_every_backend() {
    if !can_run("uretprobe_counts_exactly_on_every_backend") {
        return;
    }
    tracefs();
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 4).unwrap();
        for (i, backend) in [Backend::Auto, Backend::Pmu, Backend::Tracefs]
            .into_iter()
            .enumerate()
        {
            let slot = u32::try_from(i).unwrap();
            let link = Uprobe::retprobe(exe(), symbol_of("target_ret"))
                .cookie(u64::from(slot))
                .backend(backend)
                .attach(&counter)
                .await
                .unwrap();
            call(target_ret, 40 + u64::from(slot));
            link.detach().await.unwrap();
        }
        assert_eq!(counter.counts().unwrap(), vec![40, 41, 42, 0]);
    });
}

#[test]
fn cookies_land_at_their_index() {
    if !can_run("cookies_land_at_their_index") {
        return;
    }
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 8).unwrap();
        let a = Uprobe::new(exe(), symbol_of("target_cookie_a"))
            .cookie(3)
            .attach(&counter)
            .await
            .unwrap();
        let b = Uprobe::new(exe(), symbol_of("target_cookie_b"))
            .cookie(5)
            .attach(&counter)
            .await
            .unwrap();
        call(target_cookie_a, 7);
        call(target_cookie_b, 11);
        assert_eq!(counter.counts().unwrap(), vec![0, 0, 0, 7, 0, 11, 0, 0]);
        a.detach().await.unwrap();
        b.detach().await.unwrap();
    });
}

#[test]
fn pid_filter_counts_only_that_process() {
    if !can_run("pid_filter_counts_only_that_process") {
        return;
    }
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 4).unwrap();
        let me = i32::try_from(std::process::id()).unwrap();
        let sym = symbol_of("target_pid");
        let own = Uprobe::new(exe(), &sym)
            .pid(me)
            .cookie(1)
            .attach(&counter)
            .await
            .unwrap();
        let init = Uprobe::new(exe(), &sym)
            .pid(1)
            .cookie(2)
            .attach(&counter)
            .await
            .unwrap();
        call(target_pid, 25);
        assert_eq!(counter.get(1).unwrap(), 25, "own pid counts every call");
        assert_eq!(counter.get(2).unwrap(), 0, "pid 1 never runs this function");
        own.detach().await.unwrap();
        init.detach().await.unwrap();
    });
}

#[test]
fn at_offset_and_symbol_offset_hit_the_same_place() {
    if !can_run("at_offset_and_symbol_offset_hit_the_same_place") {
        return;
    }
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 4).unwrap();
        let off = common::offset_of("target_offset");
        let link = Uprobe::at_offset(exe(), off)
            .cookie(1)
            .attach(&counter)
            .await
            .unwrap();
        call(target_offset, 9);
        assert_eq!(counter.get(1).unwrap(), 9);
        link.detach().await.unwrap();
    });
}

#[test]
fn tracefs_event_is_listed_while_attached_and_gone_after_detach_and_drop() {
    if !can_run("tracefs_event_is_listed_while_attached_and_gone_after_detach_and_drop") {
        return;
    }
    tracefs();
    let pid = std::process::id();
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 2).unwrap();
        let probe = Uprobe::new(exe(), symbol_of("target_drop")).backend(Backend::Tracefs);
        let link = probe.clone().attach(&counter).await.unwrap();
        let name = link.tracefs_event().unwrap().to_string();
        assert!(name.starts_with(&format!("probeset_{pid}_")), "{name}");
        let listed = our_events("uprobe_events", pid);
        assert!(
            listed.iter().any(|l| l.contains(&name)),
            "{name} not in {listed:?}"
        );
        link.detach().await.unwrap();
        assert!(!our_events("uprobe_events", pid)
            .iter()
            .any(|l| l.contains(&name)));

        let link = probe.attach(&counter).await.unwrap();
        let name = link.tracefs_event().unwrap().to_string();
        assert!(our_events("uprobe_events", pid)
            .iter()
            .any(|l| l.contains(&name)));
        call(target_drop, 3);
        drop(link);
        probeset::cleanup::wait_idle().await;
        assert!(!our_events("uprobe_events", pid)
            .iter()
            .any(|l| l.contains(&name)));
        call(target_drop, 3);
        assert_eq!(counter.get(0).unwrap(), 3, "hits stop after drop");
    });
}

#[test]
fn uprobe_multi_program_uses_a_multi_link() {
    if !can_run("uprobe_multi_program_uses_a_multi_link") {
        return;
    }
    runtime().block_on(async {
        let counter = Counter::load(Flavour::UprobeMulti, 4).unwrap();
        let entry = Uprobe::new(exe(), symbol_of("target_m_entry"))
            .cookie(1)
            .attach(&counter)
            .await
            .unwrap();
        assert_eq!(entry.kind(), LinkKind::UprobeMulti);
        assert_eq!(entry.backend(), None);
        let ret = Uprobe::retprobe(exe(), symbol_of("target_m_exit"))
            .cookie(2)
            .attach(&counter)
            .await
            .unwrap();
        call(target_m_entry, 12);
        call(target_m_exit, 13);
        assert_eq!(counter.counts().unwrap(), vec![0, 12, 13, 0]);
        drop(entry);
        ret.detach().await.unwrap();
        probeset::cleanup::wait_idle().await;
        call(target_m_entry, 5);
        assert_eq!(counter.get(1).unwrap(), 12);

        let err = Uprobe::new(exe(), symbol_of("target_m_entry"))
            .backend(Backend::Tracefs)
            .attach(&counter)
            .await
            .unwrap_err();
        assert!(err.is_invalid_input(), "{err}");
    });
}

#[test]
fn attach_runs_off_the_runtime_worker() {
    // A current-thread runtime would stall on blocking work; the attach must still
    // complete and a timer must keep firing during it.
    if !can_run("attach_runs_off_the_runtime_worker") {
        return;
    }
    let rt = common::current_thread_runtime();
    rt.block_on(async {
        let counter = Counter::load(Flavour::Plain, 2).unwrap();
        let ticker = tokio::spawn(async {
            let mut ticks = 0u32;
            let mut iv = tokio::time::interval(Duration::from_millis(1));
            loop {
                iv.tick().await;
                ticks += 1;
                if ticks == 20 {
                    return ticks;
                }
            }
        });
        let links = futures::future::join_all(
            (0..4).map(|_| Uprobe::new(exe(), symbol_of("target_auto")).attach(&counter)),
        )
        .await;
        for l in links {
            l.unwrap().detach().await.unwrap();
        }
        assert_eq!(ticker.await.unwrap(), 20);
    });
}

#[inline(never)]
fn target_exit(x: u64) -> u64 {
    black_box(x).wrapping_mul(41) ^ 0x1c
}

/// The child half of `a_link_dropped_just_before_exit_leaves_no_event`.
#[test]
fn exit_child() {
    if std::env::var_os("PROBESET_EXIT_CHILD").is_none() {
        return;
    }
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 2).unwrap();
        let link = Uprobe::new(exe(), symbol_of("target_exit"))
            .backend(Backend::Tracefs)
            .attach(&counter)
            .await
            .unwrap();
        call(target_exit, 1);
        println!("EVENT {}", link.tracefs_event().unwrap());
        // Dropped right before the process exits: the release runs in the background and
        // the exit-time flush waits for it.
        drop(link);
    });
}

#[test]
fn a_link_dropped_just_before_exit_leaves_no_event() {
    if !can_run("a_link_dropped_just_before_exit_leaves_no_event") {
        return;
    }
    tracefs();
    let out = std::process::Command::new(exe())
        .args(["--exact", "exit_child", "--nocapture", "--test-threads=1"])
        .env("PROBESET_EXIT_CHILD", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let event = stdout
        .lines()
        .find_map(|l| l.split("EVENT ").nth(1))
        .unwrap_or_else(|| panic!("no EVENT line in {stdout}"));
    let listed = std::fs::read_to_string(tracefs().join("uprobe_events")).unwrap();
    assert!(
        !listed.contains(event),
        "{event} survived its process's exit:\n{listed}"
    );
}

#[inline(never)]
fn target_noreturn(code: i32) -> ! {
    std::process::exit(black_box(code))
}

/// The child half of `uretprobe_never_fires_on_a_function_that_does_not_return`.
#[test]
fn noreturn_child() {
    if std::env::var_os("PROBESET_NORETURN_CHILD").is_some() {
        target_noreturn(0);
    }
}

/// Entry and return probes are told apart by a function that never returns: a wrong
/// retprobe bit (from the PMU's `format/retprobe`) would swap the two counts.
#[test]
fn uretprobe_never_fires_on_a_function_that_does_not_return() {
    if !can_run("uretprobe_never_fires_on_a_function_that_does_not_return") {
        return;
    }
    tracefs();
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 8).unwrap();
        let sym = symbol_of("target_noreturn");
        for (slot, backend) in [(0u32, Backend::Pmu), (2, Backend::Tracefs)] {
            let entry = Uprobe::new(exe(), &sym)
                .backend(backend)
                .cookie(u64::from(slot))
                .attach(&counter)
                .await
                .unwrap();
            let ret = Uprobe::retprobe(exe(), &sym)
                .backend(backend)
                .cookie(u64::from(slot + 1))
                .attach(&counter)
                .await
                .unwrap();
            for _ in 0..3 {
                let status = std::process::Command::new(exe())
                    .args(["--exact", "noreturn_child", "--test-threads=1"])
                    .env("PROBESET_NORETURN_CHILD", "1")
                    .stdout(std::process::Stdio::null())
                    .status()
                    .unwrap();
                assert!(status.success());
            }
            entry.detach().await.unwrap();
            ret.detach().await.unwrap();
            assert_eq!(
                counter.get(slot).unwrap(),
                3,
                "{backend:?}: entered once per child"
            );
            assert_eq!(
                counter.get(slot + 1).unwrap(),
                0,
                "{backend:?}: never returns"
            );
        }
    });
}
