//! What the kernel reports about links and programs: `Link::info`, `health::program_stats`
//! and `ProbeSet::health` against the counter program (host tier; root).

mod common;

use std::collections::HashSet;
use std::hint::black_box;

use common::{can_run, exe, runtime, symbol_of, tracefs};
use probeset::counter::{Counter, Flavour};
use probeset::health::{self, LinkType};
use probeset::{Backend, LinkKind, Probe, ProbeSet, Uprobe};

#[inline(never)]
fn health_perf_target(x: u64) -> u64 {
    black_box(x).wrapping_mul(71) ^ 0x11
}

#[inline(never)]
fn health_multi_target(x: u64) -> u64 {
    black_box(x).wrapping_mul(73) ^ 0x13
}

#[inline(never)]
fn health_stats_target(x: u64) -> u64 {
    black_box(x).wrapping_mul(79) ^ 0x17
}

#[inline(never)]
fn health_set_a(x: u64) -> u64 {
    black_box(x).wrapping_mul(83) ^ 0x19
}

#[inline(never)]
fn health_set_b(x: u64) -> u64 {
    black_box(x).wrapping_mul(89) ^ 0x1b
}

#[inline(never)]
fn health_set_c(x: u64) -> u64 {
    black_box(x).wrapping_mul(97) ^ 0x1d
}

fn uprobe(fragment: &str) -> Uprobe {
    Uprobe::new(exe(), symbol_of(fragment))
}

fn uretprobe(fragment: &str) -> Uprobe {
    Uprobe::retprobe(exe(), symbol_of(fragment))
}

const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Sets `kernel.bpf_stats_enabled` and puts the old value back when dropped.
struct StatsSysctl(String);

impl StatsSysctl {
    fn set(value: &str) -> StatsSysctl {
        let old = std::fs::read_to_string(STATS).expect("read bpf_stats_enabled");
        std::fs::write(STATS, value).expect("write bpf_stats_enabled");
        StatsSysctl(old.trim().to_string())
    }
}

impl Drop for StatsSysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(STATS, &self.0);
    }
}

#[test]
fn uprobe_links_report_their_ids_and_no_missed_count() {
    if !can_run("uprobe_links_report_their_ids_and_no_missed_count") {
        return;
    }
    tracefs();
    black_box((health_perf_target(0), health_multi_target(0)));
    runtime().block_on(async {
        let plain = Counter::load(Flavour::Plain, 2).unwrap();
        let plain_id = health::program_stats(&plain).unwrap().id;
        let mut ids = HashSet::new();
        for backend in [Backend::Pmu, Backend::Tracefs] {
            for ret in [false, true] {
                let p = if ret {
                    uretprobe("health_perf_target")
                } else {
                    uprobe("health_perf_target")
                }
                .backend(backend);
                let link = p.attach(&plain).await.unwrap();
                assert_eq!(link.kind(), LinkKind::PerfLink);
                let info = link.info().unwrap();
                println!("{backend:?} ret={ret}: {info:?}");
                assert_eq!(info.link_type, LinkType::PerfEvent);
                assert_eq!(info.program_id, plain_id, "the counter program");
                let id = info.id.expect("a BPF perf link has an id");
                assert!(ids.insert(id), "each link has its own id");
                // Uprobes always run their program: the kernel has no missed counter.
                assert_eq!(info.missed, None);
                assert_eq!(link.info().unwrap(), info, "asking again changes nothing");
                link.detach().await.unwrap();
            }
        }

        let multi = Counter::load(Flavour::UprobeMulti, 2).unwrap();
        let multi_id = health::program_stats(&multi).unwrap().id;
        assert_ne!(multi_id, plain_id);
        let link = uprobe("health_multi_target").attach(&multi).await.unwrap();
        assert_eq!(link.kind(), LinkKind::UprobeMulti);
        let info = link.info().unwrap();
        println!("uprobe_multi: {info:?}");
        assert_eq!(info.link_type, LinkType::UprobeMulti);
        assert_eq!(info.program_id, multi_id);
        assert!(info.id.is_some_and(|id| !ids.contains(&id)));
        assert_eq!(info.missed, None, "uprobe_multi links count no misses");
        link.detach().await.unwrap();

        // A session link is a uprobe multi link to the kernel.
        let session = Counter::load(Flavour::UprobeSession, 2).unwrap();
        let link = uprobe("health_multi_target")
            .attach(&session)
            .await
            .unwrap();
        assert_eq!(link.kind(), LinkKind::UprobeSession);
        let info = link.info().unwrap();
        assert_eq!(info.link_type, LinkType::UprobeMulti);
        assert_eq!(info.program_id, health::program_stats(&session).unwrap().id);
        assert_eq!(info.missed, None);
        link.detach().await.unwrap();

        // Only programs have program statistics.
        let e = health::program_stats(session.map()).unwrap_err();
        assert!(e.is_invalid_input(), "{e}");
    });
}

#[test]
fn run_counts_need_bpf_stats_and_are_exact() {
    if !can_run("run_counts_need_bpf_stats_and_are_exact") {
        return;
    }
    tracefs();
    black_box(health_stats_target(0));
    runtime().block_on(async {
        for flavour in [Flavour::Plain, Flavour::UprobeMulti] {
            let counter = Counter::load(flavour, 2).unwrap();
            let link = uprobe("health_stats_target")
                .cookie(1)
                .attach(&counter)
                .await
                .unwrap();
            {
                let _off = StatsSysctl::set("0");
                for i in 0..50 {
                    black_box(health_stats_target(i));
                }
                let stats = health::program_stats(&counter).unwrap();
                println!("{flavour:?}, stats off: {stats:?}");
                assert_eq!(stats.run_count, None, "not counted while stats are off");
                assert_eq!(stats.run_time_ns, None);
                assert_eq!(stats.recursion_misses, Some(0), "6.18 reports it");
                assert_eq!(counter.get(1).unwrap(), 50);
            }
            counter.reset().unwrap();
            let (before, after) = {
                let _on = StatsSysctl::set("1");
                let before = health::program_stats(&counter).unwrap();
                for i in 0..123 {
                    black_box(health_stats_target(i));
                }
                (before, health::program_stats(&counter).unwrap())
            };
            println!("{flavour:?}, stats on: {before:?} -> {after:?}");
            let runs = after.run_count.unwrap() - before.run_count.unwrap();
            assert_eq!(runs, 123, "one run per call");
            assert_eq!(runs, counter.get(1).unwrap(), "as the counter counted");
            assert!(after.run_time_ns.unwrap() > before.run_time_ns.unwrap());
            assert_eq!(after.recursion_misses, Some(0));
            link.detach().await.unwrap();
        }
    });
}

/// The probes of a health report, each link's as a set, sorted by link id.
fn by_link(h: &health::SetHealth) -> Vec<(u32, HashSet<Probe>)> {
    let mut v: Vec<_> = h
        .links
        .iter()
        .map(|l| (l.info.id.unwrap(), l.probes.iter().cloned().collect()))
        .collect();
    v.sort_by_key(|(id, _)| *id);
    v
}

#[test]
fn a_set_reports_one_entry_per_link_with_its_probes() {
    if !can_run("a_set_reports_one_entry_per_link_with_its_probes") {
        return;
    }
    tracefs();
    black_box((health_set_a(0), health_set_b(0), health_set_c(0)));
    let fragments = ["health_set_a", "health_set_b", "health_set_c"];
    runtime().block_on(async {
        // Per-probe links: one entry per probe.
        let plain = Counter::load(Flavour::Plain, 4).unwrap();
        let mut set = ProbeSet::new(&plain).unwrap().auto_cookies(true);
        set.attach(fragments.map(uprobe)).await.unwrap();
        let h = set.health().await.unwrap();
        assert_eq!(h, set.health_blocking().unwrap(), "both readers agree");
        assert_eq!(h.program.id, health::program_stats(&plain).unwrap().id);
        assert_eq!(h.links.len(), 3);
        let held: HashSet<Probe> = set.probes().cloned().collect();
        let mut seen = HashSet::new();
        for l in &h.links {
            assert_eq!(l.probes.len(), 1);
            assert_eq!(l.info.program_id, h.program.id);
            assert_eq!(l.info.link_type, LinkType::PerfEvent);
            assert_eq!(l.info.missed, None);
            // With its cookie, as the set holds it.
            assert_eq!(
                set.cookie_of(&l.probes[0]),
                Some(l.probes[0].cookie_value())
            );
            seen.insert(l.probes[0].clone());
        }
        assert_eq!(seen, held);
        set.detach().await.unwrap();

        // Multi links: the entries of a group, and a return probe's link of its own.
        let multi = Counter::load(Flavour::UprobeMulti, 8).unwrap();
        let mut set = ProbeSet::new(&multi).unwrap().auto_cookies(true);
        set.attach(fragments.map(uprobe)).await.unwrap();
        set.insert(uretprobe("health_set_a")).await.unwrap();
        assert_eq!(set.link_count(), 2);
        let h = set.health().await.unwrap();
        let blocking = set.health_blocking().unwrap();
        assert_eq!(by_link(&h), by_link(&blocking));
        assert_eq!(h.program, blocking.program);
        assert_eq!(h.links.len(), 2);
        let mut sizes: Vec<usize> = h.links.iter().map(|l| l.probes.len()).collect();
        sizes.sort_unstable();
        assert_eq!(sizes, [1, 3]);
        let all: HashSet<Probe> = h.links.iter().flat_map(|l| l.probes.clone()).collect();
        assert_eq!(all, set.probes().cloned().collect::<HashSet<_>>());
        for l in &h.links {
            assert_eq!(l.info.link_type, LinkType::UprobeMulti);
            assert_eq!(l.info.program_id, h.program.id);
            assert!(l
                .probes
                .iter()
                .all(|p| set.cookie_of(p) == Some(p.cookie_value())));
            let ret = l.probes[0].is_retprobe();
            assert!(l.probes.iter().all(|p| p.is_retprobe() == ret));
        }
        set.detach().await.unwrap();
    });
}

#[test]
fn health_is_quick_on_a_one_thread_runtime() {
    if !can_run("health_is_quick_on_a_one_thread_runtime") {
        return;
    }
    black_box(health_set_c(0));
    common::current_thread_runtime().block_on(async {
        let multi = Counter::load(Flavour::UprobeMulti, 2).unwrap();
        let mut set = ProbeSet::new(&multi).unwrap();
        set.insert(uprobe("health_set_c")).await.unwrap();
        let start = std::time::Instant::now();
        let h = set.health().await.unwrap();
        assert_eq!(h.links.len(), 1);
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        let empty = ProbeSet::new(&multi).unwrap();
        let h = empty.health().await.unwrap();
        assert!(h.links.is_empty());
        set.detach().await.unwrap();
    });
}

#[inline(never)]
fn health_ioctl_target(x: u64) -> u64 {
    black_box(x).wrapping_mul(101) ^ 0x1f
}

const IOCTL_CHILD: &str = "PROBESET_HEALTH_IOCTL_CHILD";

/// The pre-5.15 path has no link: the program's id comes from the perf event
/// (`BPF_TASK_FD_QUERY`). Run in a child, since forcing that path is process-wide.
#[test]
fn without_a_link_the_perf_event_names_its_program() {
    let test = "without_a_link_the_perf_event_names_its_program";
    if !can_run(test) {
        return;
    }
    if !common::child_mode(IOCTL_CHILD) {
        let mut child = common::ChildTest::spawn(&[], test, &[(IOCTL_CHILD, "1".into())]);
        child.expect("checked", std::time::Duration::from_secs(60));
        child.wait_success();
        return;
    }
    tracefs();
    probeset::raw::force_perf_event_ioctl(true);
    black_box(health_ioctl_target(0));
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 2).unwrap();
        let id = health::program_stats(&counter).unwrap().id;
        for backend in [Backend::Pmu, Backend::Tracefs] {
            let link = uprobe("health_ioctl_target")
                .backend(backend)
                .attach(&counter)
                .await
                .unwrap();
            assert_eq!(link.kind(), LinkKind::PerfIoctl);
            let info = link.info().unwrap();
            println!("{backend:?} by ioctl: {info:?}");
            assert_eq!(info.link_type, LinkType::PerfEventIoctl);
            assert_eq!(info.id, None, "no link, no link id");
            assert_eq!(info.program_id, id);
            assert_eq!(info.missed, None);
            link.detach().await.unwrap();
        }
        let mut set = ProbeSet::new(&counter).unwrap();
        set.insert(uprobe("health_ioctl_target")).await.unwrap();
        let h = set.health().await.unwrap();
        assert_eq!(h.links.len(), 1);
        assert_eq!(h.links[0].info.program_id, id);
        assert_eq!(h.links[0].info.link_type, LinkType::PerfEventIoctl);
        set.detach().await.unwrap();
    });
    common::tell("checked", "the ioctl path");
}
