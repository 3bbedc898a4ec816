//! The pre-5.15 path (no BPF perf links: `PERF_EVENT_IOC_SET_BPF` + `ENABLE`), forced on
//! this kernel through the hidden `raw::force_perf_event_ioctl` (host tier; root). Its own
//! test binary: the switch is process-wide.

mod common;

use std::hint::black_box;

use common::{can_run, exe, symbol_of, tracefs};
use probeset::counter::{Counter, Flavour};
use probeset::{Backend, LinkKind, ProbeSet, Uprobe};

#[inline(never)]
fn ioctl_target(x: u64) -> u64 {
    black_box(x).wrapping_mul(43) ^ 0x1d
}

#[inline(never)]
fn ioctl_other(x: u64) -> u64 {
    black_box(x).wrapping_mul(47) ^ 0x2d
}

#[test]
fn without_perf_links_programs_attach_by_ioctl_and_cookies_are_refused() {
    if !can_run("without_perf_links_programs_attach_by_ioctl_and_cookies_are_refused") {
        return;
    }
    tracefs();
    probeset::raw::force_perf_event_ioctl(true);
    black_box(ioctl_other(0));
    common::runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 2).unwrap();
        let fds = common::fd_count();
        for backend in [Backend::Pmu, Backend::Tracefs] {
            counter.reset().unwrap();
            let link = Uprobe::new(exe(), symbol_of("ioctl_target"))
                .backend(backend)
                .attach(&counter)
                .await
                .unwrap();
            assert_eq!(link.kind(), LinkKind::PerfIoctl);
            for i in 0..17 {
                black_box(ioctl_target(i));
            }
            assert_eq!(counter.get(0).unwrap(), 17, "{backend:?}");
            link.detach().await.unwrap();
            black_box(ioctl_target(1));
            assert_eq!(
                counter.get(0).unwrap(),
                17,
                "{backend:?}: no hits after detach"
            );

            let err = Uprobe::new(exe(), symbol_of("ioctl_target"))
                .backend(backend)
                .cookie(1)
                .attach(&counter)
                .await
                .unwrap_err();
            assert!(err.is_not_supported(), "{err}");
            assert!(err.to_string().contains("cookie"), "{err}");
        }
        // Automatic cookies cannot reach a plain program either: refused before anything
        // is created, not by the second probe of the batch.
        let mut set = ProbeSet::new(&counter).unwrap().auto_cookies(true);
        let probes = ["ioctl_target", "ioctl_other"]
            .map(|f| Uprobe::new(exe(), symbol_of(f)).backend(Backend::Tracefs));
        let err = set.attach(probes).await.unwrap_err();
        assert!(err.is_not_supported(), "{err}");
        assert!(err.to_string().contains("automatic cookies"), "{err}");
        assert!(set.is_empty());
        assert!(
            common::our_events("uprobe_events", std::process::id()).is_empty(),
            "no event was created"
        );
        black_box(ioctl_target(2));
        assert_eq!(counter.get(0).unwrap(), 17, "nothing was attached");
        drop(set);
        probeset::cleanup::wait_idle().await;
        assert_eq!(common::fd_count(), fds, "nothing left behind");
        assert!(common::our_events("uprobe_events", std::process::id()).is_empty());
    });
    probeset::raw::force_perf_event_ioctl(false);
}
