//! Real kprobes (the VM tier: `cargo xtask vm` boots Debian kernels that have them).
//!
//! On a kernel without kprobes (the host) every test prints the skip marker and returns;
//! inside the VM (`PROBESET_VM` set) a skip is a failure.

mod common;

use std::collections::HashSet;
use std::time::Instant;

use common::{kprobes_here, skip, tracefs};
use probeset::counter::{Counter, Flavour};
use probeset::{Backend, Kprobe, LinkKind, Probe, ProbeSet};

/// The getpid syscall, made for real (std caches nothing: glibc calls the kernel).
fn getpid_n(n: u64) {
    for _ in 0..n {
        std::hint::black_box(nix::unistd::getpid());
    }
}

fn getppid_n(n: u64) {
    for _ in 0..n {
        std::hint::black_box(nix::unistd::getppid());
    }
}

fn runtime() -> tokio::runtime::Runtime {
    common::runtime()
}

/// This process's tracefs kprobe events.
fn our_kprobe_events() -> Vec<String> {
    common::our_events("kprobe_events", std::process::id())
}

const GETPID: &str = "__x64_sys_getpid";
const N: u64 = 200;

#[test]
fn kprobe_and_kretprobe_count_syscalls_on_every_backend() {
    if !kprobes_here("kprobe_and_kretprobe_count_syscalls_on_every_backend") {
        return;
    }
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 8).unwrap();
        for (i, backend) in [Backend::Auto, Backend::Pmu, Backend::Tracefs]
            .into_iter()
            .enumerate()
        {
            for ret in [false, true] {
                counter.reset().unwrap();
                let k = if ret {
                    Kprobe::retprobe(GETPID)
                } else {
                    Kprobe::new(GETPID)
                };
                let link = k.backend(backend).cookie(1).attach(&counter).await.unwrap();
                assert_eq!(link.kind(), LinkKind::PerfLink);
                let expected = if backend == Backend::Tracefs {
                    Backend::Tracefs
                } else {
                    Backend::Pmu
                };
                assert_eq!(link.backend(), Some(expected));
                if backend == Backend::Tracefs {
                    let ev = link.tracefs_event().unwrap().to_string();
                    let listed = our_kprobe_events();
                    let entry = listed.iter().find(|l| l.contains(&ev)).expect("listed");
                    assert!(entry.starts_with(if ret { "r" } else { "p" }), "{entry}");
                }
                getpid_n(N);
                let hits = counter.get(1).unwrap();
                assert!(
                    hits >= N,
                    "{backend:?} ret={ret}: {hits} hits for {N} getpid calls"
                );
                assert!(
                    hits < N + 50,
                    "{backend:?} ret={ret}: {hits} hits: far more than this process made"
                );
                link.detach().await.unwrap();
                let after = counter.get(1).unwrap();
                getpid_n(N);
                assert!(
                    counter.get(1).unwrap() - after < 10,
                    "hits stop after detach"
                );
                let _ = i;
            }
        }
        assert!(our_kprobe_events().is_empty(), "{:?}", our_kprobe_events());
    });
}

#[test]
fn sys_prefix_is_added_when_the_plain_name_is_missing() {
    if !kprobes_here("sys_prefix_is_added_when_the_plain_name_is_missing") {
        return;
    }
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 4).unwrap();
        for backend in [Backend::Auto, Backend::Tracefs] {
            counter.reset().unwrap();
            let link = Kprobe::new("sys_getpid")
                .backend(backend)
                .cookie(2)
                .attach(&counter)
                .await
                .unwrap();
            getpid_n(N);
            assert!(counter.get(2).unwrap() >= N, "{backend:?}");
            link.detach().await.unwrap();
        }
    });
}

#[test]
fn offsets_on_and_off_instruction_boundaries() {
    if !kprobes_here("offsets_on_and_off_instruction_boundaries") {
        return;
    }
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 4).unwrap();
        let fds = common::fd_count();
        let mut valid = Vec::new();
        let mut off_boundary = Vec::new();
        for off in 1..16u64 {
            match Kprobe::new(GETPID)
                .offset(off)
                .cookie(3)
                .attach(&counter)
                .await
            {
                Ok(link) => {
                    if valid.is_empty() {
                        counter.reset().unwrap();
                        getpid_n(N);
                        assert!(counter.get(3).unwrap() >= N, "probe at +{off} hit");
                    }
                    valid.push(off);
                    link.detach().await.unwrap();
                }
                Err(e) => {
                    assert!(e.is_not_found(), "+{off}: {e}");
                    assert_eq!(e.raw_os_error(), Some(libc::EILSEQ), "+{off}: {e}");
                    assert!(e.to_string().contains("instruction boundary"), "{e}");
                    off_boundary.push(off);
                }
            }
        }
        println!("{GETPID}: valid offsets {valid:?}, off-boundary {off_boundary:?}");
        assert!(!valid.is_empty() && !off_boundary.is_empty());
        // Tracefs: the same error, and the event it wrote is gone again.
        let bad = off_boundary[0];
        let e = Kprobe::new(GETPID)
            .offset(bad)
            .backend(Backend::Tracefs)
            .attach(&counter)
            .await
            .unwrap_err();
        assert!(e.is_not_found(), "{e}");
        probeset::cleanup::wait_idle().await;
        assert!(our_kprobe_events().is_empty());
        assert_eq!(common::fd_count(), fds, "nothing leaked");
    });
}

/// Up to `n` traceable functions whose names have a dot (`.isra.0`, `.constprop.0`, ...).
fn dotted_symbols(n: usize) -> Vec<String> {
    let traceable: HashSet<String> =
        std::fs::read_to_string(tracefs().join("available_filter_functions"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
    traceable
        .into_iter()
        .filter(|s| s.contains('.'))
        .take(n)
        .collect()
}

#[test]
fn a_symbol_with_a_dot_attaches() {
    if !kprobes_here("a_symbol_with_a_dot_attaches") {
        return;
    }
    let candidates = dotted_symbols(20);
    if candidates.is_empty() {
        skip(
            "a_symbol_with_a_dot_attaches",
            "no traceable symbol with a dot on this kernel",
        );
        return;
    }
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 2).unwrap();
        let mut attached = Vec::new();
        for sym in &candidates {
            for backend in [Backend::Auto, Backend::Tracefs] {
                match Kprobe::new(sym.as_str())
                    .backend(backend)
                    .attach(&counter)
                    .await
                {
                    Ok(link) => {
                        attached.push((sym.clone(), backend));
                        link.detach().await.unwrap();
                    }
                    Err(e) => println!("{sym} ({backend:?}): {e}"),
                }
            }
            if attached.iter().any(|(_, b)| *b == Backend::Tracefs)
                && attached.iter().any(|(_, b)| *b == Backend::Auto)
            {
                break;
            }
        }
        println!("attached to dotted symbols: {attached:?}");
        assert!(
            attached.iter().any(|(_, b)| *b == Backend::Auto),
            "{attached:?}"
        );
        assert!(
            attached.iter().any(|(_, b)| *b == Backend::Tracefs),
            "{attached:?}"
        );
        assert!(our_kprobe_events().is_empty());
    });
}

#[test]
fn cookies_reach_the_program() {
    if !kprobes_here("cookies_reach_the_program") {
        return;
    }
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 8).unwrap();
        let a = Kprobe::new(GETPID)
            .cookie(3)
            .attach(&counter)
            .await
            .unwrap();
        let b = Kprobe::new("__x64_sys_getppid")
            .cookie(5)
            .attach(&counter)
            .await
            .unwrap();
        getpid_n(N);
        getppid_n(2 * N);
        let c = counter.counts().unwrap();
        assert!(c[3] >= N && c[3] < N + 50, "{c:?}");
        assert!(c[5] >= 2 * N && c[5] < 2 * N + 50, "{c:?}");
        assert_eq!(c[0] + c[1] + c[2] + c[4] + c[6] + c[7], 0, "{c:?}");
        a.detach().await.unwrap();
        b.detach().await.unwrap();
    });
}

#[test]
fn kretprobe_maxactive_goes_through_tracefs() {
    if !kprobes_here("kretprobe_maxactive_goes_through_tracefs") {
        return;
    }
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 2).unwrap();
        let link = Kprobe::retprobe(GETPID)
            .maxactive(4)
            .cookie(1)
            .attach(&counter)
            .await
            .unwrap();
        assert_eq!(
            link.backend(),
            Some(Backend::Tracefs),
            "maxactive selects tracefs"
        );
        let ev = link.tracefs_event().unwrap().to_string();
        let entry = our_kprobe_events()
            .into_iter()
            .find(|l| l.contains(&ev))
            .unwrap();
        assert!(entry.starts_with("r4:"), "{entry}");
        getpid_n(N);
        assert!(counter.get(1).unwrap() >= N);
        link.detach().await.unwrap();
        let e = Kprobe::retprobe(GETPID)
            .maxactive(4)
            .backend(Backend::Pmu)
            .attach(&counter)
            .await
            .unwrap_err();
        assert!(e.is_invalid_input(), "{e}");
        assert!(our_kprobe_events().is_empty());
    });
}

#[test]
fn a_missing_symbol_is_not_found_and_leaves_nothing() {
    if !kprobes_here("a_missing_symbol_is_not_found_and_leaves_nothing") {
        return;
    }
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 2).unwrap();
        let fds = common::fd_count();
        for backend in [Backend::Auto, Backend::Pmu, Backend::Tracefs] {
            for ret in [false, true] {
                let k = if ret {
                    Kprobe::retprobe("probeset_no_such_function")
                } else {
                    Kprobe::new("probeset_no_such_function")
                };
                let e = k.backend(backend).attach(&counter).await.unwrap_err();
                assert!(e.is_not_found(), "{backend:?} ret={ret}: {e}");
                assert!(e.to_string().contains("probeset_no_such_function"), "{e}");
            }
        }
        probeset::cleanup::wait_idle().await;
        assert!(our_kprobe_events().is_empty(), "{:?}", our_kprobe_events());
        assert_eq!(common::fd_count(), fds);
    });
}

#[test]
fn the_reaper_removes_kprobe_events_of_dead_owners_only() {
    if !kprobes_here("the_reaper_removes_kprobe_events_of_dead_owners_only") {
        return;
    }
    let file = tracefs().join("kprobe_events");
    let stale = format!("{}/stale", common::dead_owner_group());
    let foreign = "othertool_7a11/foreign".to_string();
    let write = |line: String| {
        use std::io::Write as _;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap()
            .write_all(line.as_bytes())
    };
    write(format!("p:{stale} {GETPID}")).unwrap();
    write(format!("p:{foreign} {GETPID}")).unwrap();
    runtime().block_on(async {
        let reaped = probeset::tracefs::reap_stale().await.unwrap();
        assert!(reaped.removed.contains(&stale), "{reaped:?}");
        assert!(!reaped.removed.contains(&foreign), "{reaped:?}");
    });
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(&stale), "{text}");
    assert!(text.contains(&foreign), "{text}");
    write(format!("-:{foreign}")).unwrap();
}

/// Traceable syscall entry points, up to `n`.
fn syscall_symbols(n: usize) -> Vec<String> {
    let traceable: HashSet<String> =
        std::fs::read_to_string(tracefs().join("available_filter_functions"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
    let mut syms: Vec<String> = traceable
        .into_iter()
        .filter(|s| s.starts_with("__x64_sys_") && s != GETPID)
        .collect();
    syms.sort();
    syms.truncate(n - 1);
    // getpid first: the test counts it.
    syms.insert(0, GETPID.to_string());
    syms
}

#[test]
fn kprobe_multi_where_the_kernel_has_it_per_probe_links_otherwise() {
    if !kprobes_here("kprobe_multi_where_the_kernel_has_it_per_probe_links_otherwise") {
        return;
    }
    let kernel = std::env::var("PROBESET_KERNEL").unwrap_or_default();
    runtime().block_on(async {
        // A plain program: per-probe perf links, on every kernel.
        let plain = Counter::load(Flavour::Plain, 64).unwrap();
        let mut set = ProbeSet::new(&plain).unwrap().auto_cookies(true);
        let probes: Vec<Probe> = [GETPID, "__x64_sys_getppid"]
            .iter()
            .map(|s| Kprobe::new(*s).into())
            .collect();
        set.attach(probes.clone()).await.unwrap();
        assert_eq!(set.link_kind(&probes[0]), Some(LinkKind::PerfLink));
        getpid_n(N);
        let c = set.cookie_of(&probes[0]).unwrap();
        assert!(plain.get(u32::try_from(c).unwrap()).unwrap() >= N);
        set.detach().await.unwrap();

        // A kprobe_multi program: a multi link where the kernel has CONFIG_FPROBE.
        let multi = Counter::load(Flavour::KprobeMulti, 1024).unwrap();
        let syms = syscall_symbols(300);
        assert!(syms.len() >= 100, "{} syscall symbols", syms.len());
        let mut set = ProbeSet::new(&multi).unwrap().auto_cookies(true);
        let t = Instant::now();
        let r = set
            .attach(syms.iter().map(|s| Kprobe::new(s.as_str())))
            .await;
        let attach = t.elapsed();
        match r {
            Ok(()) => {
                assert_eq!(set.link_count(), 1);
                assert_eq!(
                    set.link_kind(&Kprobe::new(GETPID).into()),
                    Some(LinkKind::KprobeMulti)
                );
                let c = set.cookie_of(&Kprobe::new(GETPID).into()).unwrap();
                getpid_n(N);
                assert!(multi.get(u32::try_from(c).unwrap()).unwrap() >= N);
                let t = Instant::now();
                set.detach().await.unwrap();
                println!(
                    "{} kprobes in one kprobe_multi link: attach {attach:?}, detach {:?}",
                    syms.len(),
                    t.elapsed()
                );
                assert!(
                    !kernel.starts_with("6.1") || kernel.starts_with("6.12"),
                    "6.1 has no FPROBE, yet kprobe_multi worked"
                );
            }
            Err(e) => {
                assert!(e.is_not_supported(), "{e}");
                println!("kprobe_multi not supported here: {e}");
                assert!(
                    !kernel.starts_with("6.12"),
                    "6.12 has FPROBE: kprobe_multi must work: {e}"
                );
            }
        }
    });
}

/// Entry and return probes are told apart by a function that never returns: a wrong
/// retprobe bit (from the PMU's `format/retprobe`) would swap the two counts.
#[test]
fn kretprobe_never_fires_on_a_function_that_does_not_return() {
    if !kprobes_here("kretprobe_never_fires_on_a_function_that_does_not_return") {
        return;
    }
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 8).unwrap();
        for (slot, backend) in [(0u32, Backend::Pmu), (2, Backend::Tracefs)] {
            let sym = "__x64_sys_exit_group";
            let entry = Kprobe::new(sym)
                .backend(backend)
                .cookie(u64::from(slot))
                .attach(&counter)
                .await
                .unwrap();
            let ret = Kprobe::retprobe(sym)
                .backend(backend)
                .cookie(u64::from(slot + 1))
                .attach(&counter)
                .await
                .unwrap();
            for _ in 0..3 {
                let status = std::process::Command::new("/bin/true").status().unwrap();
                assert!(status.success());
            }
            entry.detach().await.unwrap();
            ret.detach().await.unwrap();
            let (hits_entry, hits_ret) =
                (counter.get(slot).unwrap(), counter.get(slot + 1).unwrap());
            assert!(
                hits_entry >= 3,
                "{backend:?}: exit_group entered {hits_entry} times"
            );
            assert_eq!(hits_ret, 0, "{backend:?}: exit_group never returns");
        }
    });
}

/// A `kprobe_multi` batch names its bad symbol and attaches nothing; `sys_*` names get the
/// syscall prefix inside a multi link too.
#[test]
fn kprobe_multi_batches_name_bad_symbols_and_add_the_prefix() {
    if !kprobes_here("kprobe_multi_batches_name_bad_symbols_and_add_the_prefix") {
        return;
    }
    runtime().block_on(async {
        let counter = Counter::load(Flavour::KprobeMulti, 16).unwrap();
        let mut set = ProbeSet::new(&counter).unwrap();
        let bad = set
            .attach([
                Kprobe::new("sys_getpid").cookie(1),
                Kprobe::new("probeset_no_such_function").cookie(2),
                Kprobe::new("__x64_sys_getppid").cookie(3),
            ])
            .await
            .unwrap_err();
        if set.program_kind() != Some(probeset::ProgramKind::KprobeMulti) {
            // No kprobe_multi in this kernel (6.1): the whole batch is not supported.
            assert!(bad.is_not_supported(), "{bad}");
            return;
        }
        assert!(bad.is_not_found(), "{bad}");
        assert!(
            bad.to_string().contains("probeset_no_such_function"),
            "{bad}"
        );
        assert!(set.is_empty(), "nothing of the failed batch is held");
        getpid_n(N);
        assert_eq!(counter.get(1).unwrap(), 0, "no hits from the failed batch");

        set.attach([
            Kprobe::new("sys_getpid").cookie(1),
            Kprobe::new("__x64_sys_getppid").cookie(3),
        ])
        .await
        .unwrap();
        assert_eq!(set.link_count(), 1);
        getpid_n(N);
        getppid_n(N);
        assert!(
            counter.get(1).unwrap() >= N,
            "sys_getpid became __x64_sys_getpid"
        );
        assert!(counter.get(3).unwrap() >= N);
        set.detach().await.unwrap();
    });
}
