//! What a backend cannot carry, and offsets that can never fire, are refused before the
//! kernel is asked, naming the limit; nothing is created (host tier; root). Its own test
//! binary: it counts this process's fds.

mod common;

use std::hint::black_box;

use common::{can_run, exe, our_events, runtime, symbol_of, tracefs};
use probeset::counter::{Counter, Flavour};
use probeset::{Backend, Uprobe};

#[inline(never)]
fn offsets_target(x: u64) -> u64 {
    black_box(x).wrapping_mul(53) ^ 0x3d
}

// One test: both count this process's fds, which parallel tests would disturb.
#[test]
fn what_a_backend_cannot_carry_and_offsets_that_never_fire_are_refused() {
    if !can_run("what_a_backend_cannot_carry_and_offsets_that_never_fire_are_refused") {
        return;
    }
    tracefs();
    black_box(offsets_target(0));
    runtime().block_on(async {
        ref_ctr_beyond_the_pmu().await;
        offsets_that_never_fire().await;
    });
}

async fn ref_ctr_beyond_the_pmu() {
    let pid = std::process::id();
    {
        let counter = Counter::load(Flavour::Plain, 2).unwrap();
        let fds = common::fd_count();
        // Bit 32 set: the PMU's config:32-63 field would keep only the low 32 bits and count
        // the semaphore at offset 0x10.
        let wide = (1u64 << 32) | 0x10;
        let probe = Uprobe::new(exe(), symbol_of("offsets_target")).ref_ctr_offset(wide);
        let err = probe
            .clone()
            .backend(Backend::Pmu)
            .attach(&counter)
            .await
            .unwrap_err();
        assert!(err.is_not_supported(), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("0x100000010") && msg.contains("32 bits"),
            "{msg}"
        );
        probeset::cleanup::wait_idle().await;
        assert_eq!(common::fd_count(), fds, "nothing left on the PMU path");

        // Auto goes on to tracefs, which carries the whole offset: the line says exactly it.
        let link = probe.backend(Backend::Auto).attach(&counter).await.unwrap();
        assert_eq!(link.backend(), Some(Backend::Tracefs));
        let event = link.tracefs_event().unwrap().to_string();
        let text = std::fs::read_to_string(tracefs().join("uprobe_events")).unwrap();
        let listed = text.lines().find(|l| l.contains(&event)).unwrap();
        assert!(listed.ends_with("(0x100000010)"), "{listed}");
        link.detach().await.unwrap();
        assert!(our_events("uprobe_events", pid).is_empty());
        assert_eq!(common::fd_count(), fds);
    }
}

async fn offsets_that_never_fire() {
    let pid = std::process::id();
    {
        let counter = Counter::load(Flavour::Plain, 2).unwrap();
        let fds = common::fd_count();
        for backend in [Backend::Auto, Backend::Pmu, Backend::Tracefs] {
            for (offset, says) in [(0, "ELF header"), (1 << 63, "2^63"), (u64::MAX, "2^63")] {
                let err = Uprobe::at_offset(exe(), offset)
                    .backend(backend)
                    .attach(&counter)
                    .await
                    .unwrap_err();
                assert!(err.is_invalid_input(), "{backend:?} {offset:#x}: {err}");
                assert!(
                    err.to_string().contains(says),
                    "{backend:?} {offset:#x}: {err}"
                );
            }
        }
        probeset::cleanup::wait_idle().await;
        assert_eq!(common::fd_count(), fds, "nothing was created");
        assert!(
            our_events("uprobe_events", pid).is_empty(),
            "no event was written"
        );
    }
}
