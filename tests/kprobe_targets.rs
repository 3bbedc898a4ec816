//! Every kernel target: a kernel text address, a name kallsyms lists more than once, a
//! module's function (`MOD:SYM`), and kprobe session programs (the VM tier: Debian kernels
//! with kprobes; on the host every test skips its tier).

mod common;

use common::{kprobes_here, tracefs};
use probeset::counter::{Counter, Flavour};
use probeset::{Backend, Error, Kprobe, LinkKind, Probe, ProbeSet};

const GETPID: &str = "__x64_sys_getpid";
const N: u64 = 200;

fn getpid_n(n: u64) {
    for _ in 0..n {
        std::hint::black_box(nix::unistd::getpid());
    }
}

/// The functions of `/proc/kallsyms`: (address, name, module).
fn kallsyms() -> Vec<(u64, String, Option<String>)> {
    std::fs::read_to_string("/proc/kallsyms")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let addr = u64::from_str_radix(f.next()?, 16).ok()?;
            let kind = f.next()?;
            let name = f.next()?.to_string();
            let module = f
                .next()
                .map(|m| m.trim_matches(|c| c == '[' || c == ']').to_string());
            matches!(kind, "t" | "T").then_some((addr, name, module))
        })
        .collect()
}

fn address_of(name: &str) -> u64 {
    let found = kallsyms()
        .into_iter()
        .find(|(_, n, m)| n == name && m.is_none());
    found
        .unwrap_or_else(|| panic!("{name} in /proc/kallsyms"))
        .0
}

/// Asserts `hits` counted this process's `N` calls (other processes add a few).
fn counted(hits: u64, times: u64, what: &str) {
    assert!(
        hits >= N * times,
        "{what}: {hits} hits for {N} calls x {times}"
    );
    assert!(
        hits < N * times + 50,
        "{what}: {hits} hits: far more than this process made"
    );
}

#[test]
fn a_kprobe_at_an_address_counts_on_every_path() {
    if !kprobes_here("a_kprobe_at_an_address_counts_on_every_path") {
        return;
    }
    tracefs();
    let addr = address_of(GETPID);
    common::runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 4).unwrap();
        for backend in [Backend::Auto, Backend::Pmu, Backend::Tracefs] {
            counter.reset().unwrap();
            let link = Kprobe::at_address(addr)
                .backend(backend)
                .cookie(1)
                .attach(&counter)
                .await
                .unwrap();
            getpid_n(N);
            counted(counter.get(1).unwrap(), 1, &format!("{backend:?}"));
            link.detach().await.unwrap();
        }
        let err = Kprobe::at_address(1).attach(&counter).await.unwrap_err();
        assert!(err.is_not_found(), "{err}");

        let features = probeset::features::detect().await.unwrap();
        if features.kprobe_multi {
            let multi = Counter::load(Flavour::KprobeMulti, 4).unwrap();
            let mut set = ProbeSet::new(&multi).unwrap();
            set.insert(Kprobe::at_address(addr).cookie(2))
                .await
                .unwrap();
            let probe: Probe = Kprobe::at_address(addr).into();
            assert_eq!(set.link_kind(&probe), Some(LinkKind::KprobeMulti));
            getpid_n(N);
            counted(multi.get(2).unwrap(), 1, "kprobe_multi by address");
            set.detach().await.unwrap();
        }
    });
}

#[test]
fn an_ambiguous_name_lists_its_candidates_and_each_attaches_by_address() {
    if !kprobes_here("an_ambiguous_name_lists_its_candidates_and_each_attaches_by_address") {
        return;
    }
    tracefs();
    // A name of the kernel image listed twice (static functions in different files).
    let syms = kallsyms();
    let mut seen = std::collections::HashMap::<&str, Vec<u64>>::new();
    for (a, n, m) in &syms {
        if m.is_none() && !n.starts_with("__") {
            seen.entry(n.as_str()).or_default().push(*a);
        }
    }
    // Traceable ones (ftrace lists them), so a candidate can take a probe.
    let traceable: std::collections::HashSet<String> =
        std::fs::read_to_string(tracefs().join("available_filter_functions"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.contains('['))
            .map(|l| l.trim().to_string())
            .collect();
    let mut dups: Vec<(&str, Vec<u64>)> = seen
        .into_iter()
        .filter(|(n, a)| a.len() > 1 && traceable.contains(*n))
        .collect();
    dups.sort();
    assert!(!dups.is_empty(), "this kernel has duplicated static names");
    common::runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 4).unwrap();
        let mut checked = 0;
        for (name, addrs) in dups.iter().take(20) {
            match Kprobe::new(*name)
                .backend(Backend::Pmu)
                .attach(&counter)
                .await
            {
                // Before 6.6 the kernel takes the first of them without a word.
                Ok(link) => link.detach().await.unwrap(),
                Err(Error::AmbiguousSymbol { candidates, .. }) => {
                    let mut got: Vec<u64> = candidates.iter().map(|(a, _)| *a).collect();
                    got.sort_unstable();
                    let mut want = addrs.clone();
                    want.sort_unstable();
                    assert_eq!(got, want, "{name}: the candidates are kallsyms' addresses");
                    let mut attached = 0;
                    for a in &want {
                        if let Ok(link) = Kprobe::at_address(*a).attach(&counter).await {
                            attached += 1;
                            link.detach().await.unwrap();
                        }
                    }
                    if attached > 0 {
                        checked += 1;
                    } else {
                        eprintln!("kprobe_targets: {name}: no candidate takes a kprobe");
                    }
                }
                Err(e) => eprintln!("kprobe_targets: {name}: {e}"),
            }
            if checked >= 2 {
                break;
            }
        }
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let major_minor: Vec<u32> = release
            .split(|c: char| !c.is_ascii_digit())
            .take(2)
            .filter_map(|p| p.parse().ok())
            .collect();
        if major_minor >= vec![6, 6] {
            assert!(
                checked > 0,
                "6.6+ says EADDRNOTAVAIL for an ambiguous name, and a candidate attaches"
            );
        }
    });
}

#[test]
fn a_module_function_attaches_as_mod_sym() {
    if !kprobes_here("a_module_function_attaches_as_mod_sym") {
        return;
    }
    tracefs();
    let Some((addr, name, module)) = kallsyms().into_iter().find_map(|(a, n, m)| {
        let m = m?;
        (m != "bpf" && !m.starts_with("__builtin") && !n.starts_with("__")).then_some((a, n, m))
    }) else {
        panic!("a module is loaded in the guest (lsmod)");
    };
    let qualified = format!("{module}:{name}");
    common::runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 4).unwrap();
        for backend in [Backend::Pmu, Backend::Tracefs] {
            let link = Kprobe::new(&qualified)
                .backend(backend)
                .attach(&counter)
                .await
                .unwrap_or_else(|e| panic!("{qualified} on {backend:?}: {e}"));
            if backend == Backend::Tracefs {
                let text = std::fs::read_to_string(tracefs().join("kprobe_events")).unwrap();
                let ev = link.tracefs_event().unwrap().to_string();
                let listed = text.lines().find(|l| l.contains(&ev)).unwrap();
                assert!(listed.contains(&qualified), "{listed}");
            }
            link.detach().await.unwrap();
        }
        let features = probeset::features::detect().await.unwrap();
        if features.kprobe_multi {
            let multi = Counter::load(Flavour::KprobeMulti, 4).unwrap();
            let mut set = ProbeSet::new(&multi).unwrap();
            set.insert(Kprobe::new(&qualified)).await.unwrap();
            assert_eq!(set.len(), 1);
            set.detach().await.unwrap();
        }
        let err = Kprobe::new(format!("{module}:probeset_no_such_fn"))
            .attach(&counter)
            .await
            .unwrap_err();
        assert!(err.is_not_found(), "{err}");
        let _ = addr;
    });
}

#[test]
fn a_kprobe_session_counts_entry_and_return_through_one_link() {
    if !kprobes_here("a_kprobe_session_counts_entry_and_return_through_one_link") {
        return;
    }
    common::runtime().block_on(async {
        let features = probeset::features::detect().await.unwrap();
        let both = Counter::load(Flavour::KprobeSession, 4).unwrap();
        let link = Kprobe::new(GETPID).cookie(1).attach(&both).await.unwrap();
        getpid_n(N);
        let hits = both.get(1).unwrap();
        if features.kprobe_session {
            assert_eq!(link.kind(), LinkKind::KprobeSession);
            counted(hits, 2, "session: entry and return");
        } else {
            // A kernel without kprobe sessions loads the program as a plain one.
            assert_eq!(link.kind(), LinkKind::PerfLink);
            counted(hits, 1, "a plain program");
        }
        link.detach().await.unwrap();
        if features.kprobe_session {
            let entry = Counter::load_entry_only(Flavour::KprobeSession, 4).unwrap();
            let mut set = ProbeSet::new(&entry).unwrap();
            set.insert(Kprobe::new(GETPID).cookie(1)).await.unwrap();
            getpid_n(N);
            counted(entry.get(1).unwrap(), 1, "session: entry only");
            let err = set.insert(Kprobe::retprobe("vfs_read")).await.unwrap_err();
            assert!(err.is_invalid_input(), "{err}");
            set.detach().await.unwrap();
        }
    });
}
