//! `ProbeSet` batch attach + detach of uprobes on this bench binary's own functions: 1000
//! probes through one multi link, and per-probe links (perf event + BPF link each).
//!
//! `cargo bench --bench probe_set [multi|per_probe]` (root). A custom harness
//! (`harness = false`), not criterion: a per-probe detach costs ~110 ms of kernel time per
//! probe, serialized machine-wide, so one 1000-probe per-probe iteration takes ~110 s, and
//! criterion's minimum of 10 samples plus warm-up would take half an hour. Each iteration here
//! is verified (every probed function called once must count exactly 1), and the median, min
//! and max are printed.
//!
//! `churn`: a stream of 1000 changes (attach 500, detach 250, attach 250) through
//! `ProbeSet::apply`, against the natural approach with bare syscalls: re-creating the
//! uprobe multi link for every change. Both end with the kernel holding exactly the desired
//! 500 probes (checked by counting).
//!
//! Sizes: multi 1000 probes x 7 iterations; per-probe 100 probes x 3 iterations (set
//! `PROBESET_BENCH_PER_PROBE_N=1000` for the full batch, ~2 min per iteration). Run without
//! `--bench` (as `cargo test --benches` does) it is a one-iteration smoke test (per-probe: 10).
//! The side-by-side comparison with the raw syscalls, libbpf-rs, aya and bpftrace is the
//! separate `bench/` package (docs/performance.md).

use std::time::{Duration, Instant};

use std::ffi::CString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use futures::StreamExt;
use probeset::counter::{Counter, Flavour};
use probeset::{Change, LinkKind, Probe, ProbeSet, Uprobe};

// The numbered target functions and the address -> file offset lookup are the tests'.
#[path = "../tests/common/mod.rs"]
mod common;

use common::{file_offset_of_address as file_offset_of, functions};

/// One uprobe per function `0..n`, cookie `i` on `functions()[i]`.
fn probes(n: usize) -> Vec<Probe> {
    let exe = std::env::current_exe().expect("current_exe");
    functions()
        .into_iter()
        .take(n)
        .enumerate()
        .map(|(i, f)| {
            Uprobe::at_offset(&exe, file_offset_of(f as usize))
                .cookie(i as u64)
                .into()
        })
        .collect()
}

/// One iteration: attach `n` probes as a batch, call each function once and check each
/// counted exactly once, detach. (attach, detach).
async fn iteration(counter: &Counter, n: usize, expect: LinkKind) -> (Duration, Duration) {
    let before = counter.counts().expect("read counters");
    let batch = probes(n);
    let t = Instant::now();
    let mut set = ProbeSet::new(counter).expect("ProbeSet::new");
    set.attach(batch).await.expect("attach");
    let attach = t.elapsed();
    assert_eq!(set.len(), n);
    let first = set.probes().next().expect("a probe");
    assert_eq!(set.link_kind(first), Some(expect), "link kind");
    for (i, f) in functions().into_iter().enumerate() {
        std::hint::black_box(std::hint::black_box(f)(i as u64));
    }
    let after = counter.counts().expect("read counters");
    for i in 0..functions().len() {
        let want = u64::from(i < n);
        assert_eq!(after[i] - before[i], want, "function {i} counted wrongly");
    }
    let t = Instant::now();
    set.detach().await.expect("detach");
    (attach, t.elapsed())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn summary(name: &str, n: usize, what: &str, mut v: Vec<Duration>) {
    v.sort();
    let median = if v.len() % 2 == 1 {
        ms(v[v.len() / 2])
    } else {
        f64::midpoint(ms(v[v.len() / 2 - 1]), ms(v[v.len() / 2]))
    };
    println!(
        "probe_set/{name} n={n} {what}: median {median:.2} ms, min {:.2} ms, max {:.2} ms ({} iterations)",
        ms(v[0]),
        ms(v[v.len() - 1]),
        v.len()
    );
}

fn bench(name: &str, flavour: Flavour, n: usize, iterations: usize, expect: LinkKind) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let counter = Counter::load(flavour, 1000).expect("load the counter program");
    let (mut attach, mut detach, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..iterations {
        let (a, d) = rt.block_on(iteration(&counter, n, expect));
        attach.push(a);
        detach.push(d);
        total.push(a + d);
    }
    summary(name, n, "attach", attach);
    summary(name, n, "detach", detach);
    summary(name, n, "attach+detach", total);
}

/// The churn workload on functions `0..n`: attach the first half, detach its first half,
/// attach the third quarter. The desired set at the end: `n/4..3n/4`.
fn churn_changes(n: usize) -> Vec<(bool, usize)> {
    (0..n / 2)
        .map(|i| (true, i))
        .chain((0..n / 4).map(|i| (false, i)))
        .chain((n / 2..3 * n / 4).map(|i| (true, i)))
        .collect()
}

/// Checks that exactly functions `n/4..3n/4` count: the kernel holds the desired set.
fn check_desired(counter: &Counter, n: usize) {
    let before = counter.counts().expect("read counters");
    for (i, f) in functions().into_iter().enumerate() {
        std::hint::black_box(std::hint::black_box(f)(i as u64));
    }
    let after = counter.counts().expect("read counters");
    for i in 0..functions().len() {
        let want = u64::from((n / 4..3 * n / 4).contains(&i));
        assert_eq!(
            after[i] - before[i],
            want,
            "function {i}: the kernel does not hold the desired set"
        );
    }
}

/// `ProbeSet::apply` on the churn stream, all changes ready at once (a config reload).
fn churn_probeset(counter: &Counter, n: usize) -> Duration {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let all = probes(n);
    let changes: Vec<Change> = churn_changes(n)
        .into_iter()
        .map(|(attach, i)| {
            if attach {
                Change::Attach(all[i].clone())
            } else {
                Change::Detach(all[i].clone())
            }
        })
        .collect();
    rt.block_on(async {
        let mut set = ProbeSet::new(counter).expect("ProbeSet::new");
        let t = Instant::now();
        let outcomes: Vec<_> = set.apply(futures::stream::iter(changes)).collect().await;
        let took = t.elapsed();
        assert!(
            outcomes.iter().all(|o| o.result.is_ok()),
            "every change applied"
        );
        check_desired(counter, n);
        set.detach().await.expect("detach");
        took
    })
}

/// The natural approach with bare syscalls: after every change, create a uprobe multi link
/// for the whole desired set and close the previous one.
fn churn_recreate_multi(counter: &Counter, n: usize) -> Duration {
    let exe = std::env::current_exe().expect("current_exe");
    let path = CString::new(exe.as_os_str().as_bytes()).expect("path");
    let offsets: Vec<u64> = functions()
        .into_iter()
        .take(n)
        .map(|f| file_offset_of(f as usize))
        .collect();
    let mut desired = std::collections::BTreeSet::new();
    let mut link = None;
    let t = Instant::now();
    for (attach, i) in churn_changes(n) {
        if attach {
            desired.insert(i);
        } else {
            desired.remove(&i);
        }
        let offs: Vec<u64> = desired.iter().map(|&i| offsets[i]).collect();
        let cookies: Vec<u64> = desired.iter().map(|&i| i as u64).collect();
        let new = probeset::raw::link_uprobe_multi(counter.as_fd(), &path, &offs, &cookies, false)
            .expect("BPF_LINK_CREATE uprobe_multi");
        drop(link.replace(new));
    }
    let took = t.elapsed();
    check_desired(counter, n);
    drop(link);
    took
}

fn churn(n: usize) {
    let counter = Counter::load(Flavour::UprobeMulti, 1000).expect("load the counter program");
    let ours = churn_probeset(&counter, n);
    let theirs = churn_recreate_multi(&counter, n);
    println!(
        "probe_set/churn changes={} probeset-apply {:.1} ms, re-create multi link per change {:.1} ms: {:.0}x faster",
        churn_changes(n).len(),
        ms(ours),
        ms(theirs),
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let benching = args.iter().any(|a| a == "--bench");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let wanted =
        |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    if !nix::unistd::geteuid().is_root() {
        println!("probe_set bench skipped: needs root to load and attach BPF programs");
        return;
    }
    let per_probe_n = std::env::var("PROBESET_BENCH_PER_PROBE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
        .min(1000);
    let (multi_iters, per_probe_iters, per_probe_n) = if benching {
        (7, 3, per_probe_n)
    } else {
        (1, 1, 10)
    };
    if wanted("multi") {
        bench(
            "multi",
            Flavour::UprobeMulti,
            1000,
            multi_iters,
            LinkKind::UprobeMulti,
        );
    }
    if wanted("churn") {
        churn(if benching { 1000 } else { 100 });
    }
    if wanted("per_probe") {
        bench(
            "per_probe",
            Flavour::Plain,
            per_probe_n,
            per_probe_iters,
            LinkKind::PerfLink,
        );
    }
}
