//! Kprobes in bulk, on a kernel that has them (the VM tier): one `kprobe_multi` link through
//! `ProbeSet`, against per-probe perf links through `ProbeSet` and through bare syscalls.
//!
//! The host has no kprobes; run it in the 6.12 VM (TCG: absolute times are ~10x the
//! hardware's, the ratios are what to read):
//!
//! ```sh
//! cargo bench --bench kprobes --no-run   # prints the executable's path
//! cargo xtask vm --kernel 6.12 --exec target/release/deps/kprobes-<hash> -- --bench
//! ```
//!
//! Targets: traceable syscall entry points (`__x64_sys_*`), found with
//! `probeset::discovery`. Every run is verified: a `getpid` probe must count the calls made.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use probeset::counter::{Counter, Flavour};
use probeset::{Kprobe, Probe, ProbeSet};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Syscall entry points that can be probed, `getpid` first (the one each run checks).
fn symbols() -> Vec<String> {
    let found = probeset::discovery::kernel_functions_blocking("__x64_sys_*").expect("kallsyms");
    let mut names: Vec<String> = found
        .functions
        .into_iter()
        .map(|f| f.name)
        .filter(|n| n != "__x64_sys_getpid")
        .collect();
    names.insert(0, "__x64_sys_getpid".to_owned());
    names
}

fn check_getpid(counter: &Counter, slot: u32) {
    let before = counter.get(slot).expect("read counter");
    for _ in 0..10 {
        std::hint::black_box(nix::unistd::getpid());
    }
    let hits = counter.get(slot).expect("read counter") - before;
    assert!(hits >= 10, "getpid probe counted {hits} of 10 calls");
}

/// `ProbeSet` with a program of `flavour` on the first `n` symbols: (attach, detach).
fn probeset_run(
    rt: &tokio::runtime::Runtime,
    counter: &Counter,
    syms: &[String],
) -> (Duration, Duration) {
    rt.block_on(async {
        let probes: Vec<Probe> = syms
            .iter()
            .enumerate()
            .map(|(i, s)| Kprobe::new(s.as_str()).cookie(i as u64).into())
            .collect();
        let t = Instant::now();
        let mut set = ProbeSet::new(counter).expect("ProbeSet::new");
        set.attach(probes).await.expect("attach");
        let attach = t.elapsed();
        check_getpid(counter, 0);
        let t = Instant::now();
        set.detach().await.expect("detach");
        (attach, t.elapsed())
    })
}

/// Bare syscalls: a kprobe PMU perf event and a BPF perf link per symbol.
fn raw_run(counter: &Counter, pmu_type: u32, syms: &[String]) -> (Duration, Duration) {
    let names: Vec<CString> = syms
        .iter()
        .map(|s| CString::new(s.as_str()).expect("name"))
        .collect();
    let t = Instant::now();
    let mut held: Vec<(OwnedFd, OwnedFd)> = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let perf = probeset::raw::perf_probe_open(pmu_type, 0, name, 0).expect("perf_event_open");
        let link = probeset::raw::link_perf(counter.as_fd(), perf.as_fd(), i as u64).expect("link");
        held.push((link, perf));
    }
    let attach = t.elapsed();
    check_getpid(counter, 0);
    let t = Instant::now();
    drop(held);
    (attach, t.elapsed())
}

fn report(name: &str, n: usize, runs: &[(Duration, Duration)]) -> Duration {
    let a = median(runs.iter().map(|r| r.0).collect());
    let d = median(runs.iter().map(|r| r.1).collect());
    println!(
        "kprobe n={n} {name}: attach {:.1} ms, detach {:.1} ms, total {:.1} ms ({} runs)",
        ms(a),
        ms(d),
        ms(a + d),
        runs.len()
    );
    a + d
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let pmu = std::fs::read_to_string("/sys/bus/event_source/devices/kprobe/type");
    let Ok(pmu) = pmu else {
        println!("kprobes bench skipped: this kernel has no kprobe PMU (run it in the VM tier)");
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        println!("kprobes bench skipped: needs root");
        return;
    }
    let pmu_type: u32 = pmu.trim().parse().expect("PMU type");
    let syms = symbols();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (sizes, runs) = if benching {
        (vec![10, 100, syms.len().min(1000)], 3)
    } else {
        (vec![10], 1)
    };
    let multi = Counter::load(Flavour::KprobeMulti, 1024).expect("counter");
    let plain = Counter::load(Flavour::Plain, 1024).expect("counter");
    for &n in &sizes {
        let s = &syms[..n];
        let multi_runs: Vec<_> = (0..runs).map(|_| probeset_run(&rt, &multi, s)).collect();
        let m = report("probeset-multi", n, &multi_runs);
        if n > 100 {
            // Per-probe at this size costs a grace period per probe (minutes under TCG).
            continue;
        }
        let set_runs: Vec<_> = (0..runs).map(|_| probeset_run(&rt, &plain, s)).collect();
        let p = report("probeset-per-probe", n, &set_runs);
        let raw_runs: Vec<_> = (0..runs).map(|_| raw_run(&plain, pmu_type, s)).collect();
        let r = report("raw-per-probe", n, &raw_runs);
        println!(
            "kprobe n={n}: multi is {:.0}x faster than probeset per-probe and {:.0}x faster than raw per-probe (attach+detach)",
            p.as_secs_f64() / m.as_secs_f64(),
            r.as_secs_f64() / m.as_secs_f64()
        );
    }
}
