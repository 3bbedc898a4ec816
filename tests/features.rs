//! `features::detect()` says what this kernel really does: each field is held against a
//! real attach through that mechanism (host tier and VM tier; root).

mod common;

use std::hint::black_box;

use common::{can_run, exe, runtime, symbol_of, tracefs};
use probeset::counter::{Counter, Flavour};
use probeset::{Backend, Kprobe, LinkKind, Uprobe};

#[inline(never)]
fn features_target(x: u64) -> u64 {
    black_box(x).wrapping_mul(67) ^ 0x6d
}

/// Whether `flavour`'s counter loads and puts `probe` on a link of `kind`.
async fn links_as(flavour: Flavour, probe: probeset::Probe, kind: LinkKind) -> bool {
    let Ok(counter) = Counter::load(flavour, 2) else {
        return false;
    };
    match probe.attach(&counter).await {
        Ok(link) => {
            let same = link.kind() == kind;
            link.detach().await.unwrap();
            same
        }
        Err(e) => {
            eprintln!("features: {flavour:?} {kind:?}: {e}");
            false
        }
    }
}

#[test]
fn detect_agrees_with_real_attaches() {
    if !can_run("detect_agrees_with_real_attaches") {
        return;
    }
    tracefs();
    black_box(features_target(0));
    runtime().block_on(async {
        let f = probeset::features::detect().await.unwrap();
        println!("features: {f:?}");
        assert_eq!(probeset::features::detect_blocking().unwrap(), f, "cached");
        let target = || Uprobe::new(exe(), symbol_of("features_target"));
        let plain = Counter::load(Flavour::Plain, 4).unwrap();

        let attach = |backend| {
            let p = target().backend(backend);
            async { p.attach(&plain).await.map(|l| (l.kind(), l)) }
        };
        let pmu = attach(Backend::Pmu).await;
        assert_eq!(pmu.is_ok(), f.uprobe_pmu, "uprobe_pmu: {pmu:?}");
        let tracefs = attach(Backend::Tracefs).await;
        assert_eq!(
            tracefs.is_ok(),
            f.uprobe_events,
            "uprobe_events: {tracefs:?}"
        );
        if let Ok((kind, _)) = pmu.as_ref().or(tracefs.as_ref()) {
            assert_eq!(
                *kind == LinkKind::PerfLink,
                f.perf_link,
                "perf_link: {kind:?}"
            );
        }
        drop((pmu, tracefs));

        let k = |backend| Kprobe::new("vfs_read").backend(backend);
        let kpmu = k(Backend::Pmu).attach(&plain).await;
        assert_eq!(kpmu.is_ok(), f.kprobe_pmu, "kprobe_pmu: {kpmu:?}");
        let ktracefs = k(Backend::Tracefs).attach(&plain).await;
        assert_eq!(
            ktracefs.is_ok(),
            f.kprobe_events,
            "kprobe_events: {ktracefs:?}"
        );
        drop((kpmu, ktracefs));

        let cookie = target().cookie(3).attach(&plain).await;
        if let Ok(link) = cookie {
            black_box(features_target(1));
            assert_eq!(plain.get(3).unwrap() == 1, f.cookies, "cookies");
            link.detach().await.unwrap();
        } else {
            assert!(!f.cookies, "a cookie was refused: {cookie:?}");
        }

        let u = || target().into();
        let kp = || Kprobe::new("vfs_read").into();
        let cases = [
            (
                f.uprobe_multi,
                Flavour::UprobeMulti,
                u(),
                LinkKind::UprobeMulti,
            ),
            (
                f.uprobe_session,
                Flavour::UprobeSession,
                u(),
                LinkKind::UprobeSession,
            ),
            (
                f.kprobe_multi,
                Flavour::KprobeMulti,
                kp(),
                LinkKind::KprobeMulti,
            ),
            (
                f.kprobe_session,
                Flavour::KprobeSession,
                kp(),
                LinkKind::KprobeSession,
            ),
        ];
        for (said, flavour, probe, kind) in cases {
            assert_eq!(links_as(flavour, probe, kind).await, said, "{kind:?}");
        }
        probeset::cleanup::wait_idle().await;
    });
}
