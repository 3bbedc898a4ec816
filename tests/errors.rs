//! Failing attaches: each error has the exact kind, names what the caller gave, and leaves
//! nothing behind (no fd, no tracefs event). Also repeated attach/detach cycles and cancelled
//! attaches (host tier; root).
//!
//! The fd counts of `/proc/self/fd` are process-wide, so everything here runs inside ONE
//! `#[test]`: no other test thread opens or closes fds while they are compared.

mod common;

use std::hint::black_box;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use common::{
    can_run, dead_pid, exe, fd_count, file_offset_of_address, functions, has_kprobe_pmu,
    our_events, pid_is_dead, runtime, symbol_of, tracefs,
};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use probeset::cleanup::wait_idle;
use probeset::counter::{Counter, Flavour};
use probeset::{Backend, Error, Kprobe, Link, Probe, ProbeSet, Uprobe};

const BACKENDS: [Backend; 3] = [Backend::Auto, Backend::Pmu, Backend::Tracefs];

// Distinct bodies keep the linker from merging them; no name is part of another.
#[inline(never)]
fn errs_cycle_fn(x: u64) -> u64 {
    black_box(x).wrapping_mul(41) ^ 0x21
}
#[inline(never)]
fn errs_dropped_fn(x: u64) -> u64 {
    black_box(x).wrapping_mul(43) ^ 0x22
}
#[inline(never)]
fn errs_cancel_fn(x: u64) -> u64 {
    black_box(x).wrapping_mul(47) ^ 0x23
}
#[inline(never)]
fn errs_pid_fn(x: u64) -> u64 {
    black_box(x).wrapping_mul(53) ^ 0x24
}

fn call(f: fn(u64) -> u64, n: u64) {
    for i in 0..n {
        black_box(black_box(f)(i));
    }
}

/// What the process held before: every check compares against it.
struct Baseline {
    fds: usize,
    pid: u32,
}

impl Baseline {
    fn take() -> Baseline {
        Baseline {
            fds: fd_count(),
            pid: std::process::id(),
        }
    }

    /// What is left over compared with the baseline, if anything.
    fn leftovers(&self) -> Option<String> {
        let fds = fd_count();
        let uprobes = our_events("uprobe_events", self.pid);
        let kprobes = our_events("kprobe_events", self.pid);
        if fds == self.fds && uprobes.is_empty() && kprobes.is_empty() {
            return None;
        }
        let open: Vec<String> = std::fs::read_dir("/proc/self/fd")
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| {
                        let target = std::fs::read_link(e.path()).unwrap_or_default();
                        format!("{}->{}", e.file_name().to_string_lossy(), target.display())
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(format!(
            "fds {fds} (baseline {}): {open:?}; uprobe events {uprobes:?}; kprobe events {kprobes:?}",
            self.fds
        ))
    }

    /// Nothing is left right now.
    fn assert_clean_now(&self, ctx: &str) {
        if let Some(l) = self.leftovers() {
            panic!("{ctx}: left behind: {l}");
        }
    }

    /// Nothing is left once the background releases are done.
    async fn assert_clean(&self, ctx: &str) {
        wait_idle().await;
        self.assert_clean_now(ctx);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    InvalidInput,
    NotFound,
    NotSupported,
}

/// The error of an attach that must fail.
fn failed(r: Result<Link, Error>, ctx: &str) -> Error {
    match r {
        Ok(link) => panic!("{ctx}: attached ({link:?}), expected an error"),
        Err(e) => e,
    }
}

/// `err` is exactly of `kind` (and of no other kind) and its message names each of `names`.
fn check(err: &Error, kind: Kind, names: &[&str], ctx: &str) {
    let got = [
        (Kind::InvalidInput, err.is_invalid_input()),
        (Kind::NotFound, err.is_not_found()),
        (Kind::NotSupported, err.is_not_supported()),
    ];
    for (k, is) in got {
        assert_eq!(
            is,
            k == kind,
            "{ctx}: expected {kind:?}, got {err:?} ({err})"
        );
    }
    assert!(!err.is_permission_denied(), "{ctx}: {err}");
    let msg = err.to_string();
    for name in names {
        assert!(
            msg.contains(name),
            "{ctx}: message does not name {name:?}: {msg}"
        );
    }
}

#[test]
fn failed_and_cancelled_attaches_leave_nothing_behind() {
    if !can_run("failed_and_cancelled_attaches_leave_nothing_behind") {
        return;
    }
    tracefs();
    // The functions must exist in the binary (and be resolvable) before anything is counted.
    call(errs_cycle_fn, 1);
    call(errs_dropped_fn, 1);
    call(errs_cancel_fn, 1);
    call(errs_pid_fn, 1);
    let scratch = Scratch::new();
    let plain_file = std::fs::File::open(&scratch.text_file).unwrap();
    let started = Instant::now();
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 8).unwrap();
        let base = Baseline::take();

        let t = Instant::now();
        kprobe_input_errors(&counter, &base).await;
        kprobe_not_supported_here(&counter, &base).await;
        uprobe_input_errors(&counter, &base, &scratch).await;
        uprobe_kernel_errors(&counter, &base).await;
        program_fd_errors(&counter, &base, &plain_file).await;
        eprintln!("errors: error cases took {:?}", t.elapsed());

        let t = Instant::now();
        cycles(&counter, &base).await;
        eprintln!("errors: 60 attach cycles took {:?}", t.elapsed());

        let t = Instant::now();
        descriptors(&base).await;
        eprintln!("errors: descriptor checks took {:?}", t.elapsed());

        let t = Instant::now();
        let counter = Arc::new(counter);
        cancellations(&counter, &base).await;
        eprintln!("errors: cancellations took {:?}", t.elapsed());
    });
    eprintln!("errors: total {:?}", started.elapsed());
}

/// Files the uprobe error cases point at; removed on drop.
struct Scratch {
    dir: PathBuf,
    text_file: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("probeset-errors-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text_file = dir.join("not-an-elf.txt");
        std::fs::write(&text_file, "this is not an ELF file\n".repeat(100)).unwrap();
        Scratch { dir, text_file }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn quoted(p: &Path) -> String {
    format!("{p:?}")
}

async fn kprobe_input_errors(counter: &Counter, base: &Baseline) {
    // Invalid on every backend, and on this host although it has no kprobes at all.
    let cases: Vec<(Kprobe, Vec<String>)> = vec![
        (Kprobe::new(""), vec!["kprobe symbol \"\"".into()]),
        (Kprobe::new("1abc"), vec!["\"1abc\"".into()]),
        (Kprobe::new("a b"), vec!["\"a b\"".into()]),
        // MOD:SYM names a module's function; a malformed one is still invalid.
        (Kprobe::new("mod-x:sym"), vec!["\"mod-x:sym\"".into()]),
        (Kprobe::new("a:b:c"), vec!["\"a:b:c\"".into()]),
        (Kprobe::at_address(0), vec!["address 0".into()]),
        (Kprobe::new("a-b"), vec!["\"a-b\"".into()]),
        (Kprobe::retprobe("1abc"), vec!["\"1abc\"".into()]),
        (
            Kprobe::retprobe("vfs_read").offset(0x10),
            vec!["\"vfs_read\"".into(), "0x10".into()],
        ),
        (
            Kprobe::new("vfs_read").maxactive(8),
            vec!["\"vfs_read\"".into(), "maxactive".into()],
        ),
        (
            Kprobe::retprobe("vfs_read").maxactive(0),
            vec!["\"vfs_read\"".into(), "maxactive 0".into()],
        ),
        (
            Kprobe::retprobe("vfs_read").maxactive(5000),
            vec!["\"vfs_read\"".into(), "maxactive 5000".into()],
        ),
    ];
    for (probe, names) in cases {
        for backend in BACKENDS {
            let ctx = format!("{probe:?} on {backend:?}");
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let err = failed(probe.clone().backend(backend).attach(counter).await, &ctx);
            check(&err, Kind::InvalidInput, &names, &ctx);
            base.assert_clean(&ctx).await;
        }
    }
    let probe = Kprobe::retprobe("vfs_read")
        .maxactive(8)
        .backend(Backend::Pmu);
    let ctx = format!("{probe:?}");
    let err = failed(probe.attach(counter).await, &ctx);
    check(&err, Kind::InvalidInput, &["\"vfs_read\"", "Pmu"], &ctx);
    base.assert_clean(&ctx).await;
}

async fn kprobe_not_supported_here(counter: &Counter, base: &Baseline) {
    if has_kprobe_pmu() {
        eprintln!(
            "errors: this kernel has kprobes; the no-kprobes cases run on the host tier only"
        );
        return;
    }
    let probes = [
        Kprobe::new("vfs_read"),
        Kprobe::retprobe("vfs_read"),
        Kprobe::new("vfs_read").offset(4),
    ];
    for probe in probes {
        for backend in BACKENDS {
            let ctx = format!("{probe:?} on {backend:?} (no kprobes here)");
            let err = failed(probe.clone().backend(backend).attach(counter).await, &ctx);
            check(&err, Kind::NotSupported, &[], &ctx);
            assert!(
                err.to_string().to_lowercase().contains("kprobe"),
                "{ctx}: the message should say kprobes are missing: {err}"
            );
            base.assert_clean(&ctx).await;
        }
    }
    // maxactive is valid input with tracefs, which has no kprobe_events here.
    for backend in [Backend::Auto, Backend::Tracefs] {
        let probe = Kprobe::retprobe("vfs_read").maxactive(8).backend(backend);
        let ctx = format!("{probe:?} (no kprobes here)");
        let err = failed(probe.attach(counter).await, &ctx);
        check(&err, Kind::NotSupported, &[], &ctx);
        base.assert_clean(&ctx).await;
    }
}

async fn uprobe_input_errors(counter: &Counter, base: &Baseline, scratch: &Scratch) {
    let exe = exe();
    let missing = scratch.dir.join("no-such-binary");
    let no_such_symbol = "probeset_no_such_function_in_this_elf";
    let cases: Vec<(Uprobe, Kind, Vec<String>)> = vec![
        (
            Uprobe::new("", "main"),
            Kind::InvalidInput,
            vec!["binary \"\"".into()],
        ),
        (
            Uprobe::new(&exe, ""),
            Kind::InvalidInput,
            vec!["symbol \"\"".into()],
        ),
        (
            Uprobe::new(&exe, "main").pid(0),
            Kind::InvalidInput,
            vec!["pid 0".into()],
        ),
        (
            Uprobe::new(&exe, "main").pid(-1),
            Kind::InvalidInput,
            vec!["pid -1".into()],
        ),
        (
            Uprobe::new(&missing, "main"),
            Kind::NotFound,
            vec![quoted(&missing)],
        ),
        (
            Uprobe::at_offset(&missing, 0x1000),
            Kind::NotFound,
            vec![quoted(&missing)],
        ),
        (
            Uprobe::new(&scratch.text_file, "main"),
            Kind::InvalidInput,
            vec![quoted(&scratch.text_file)],
        ),
        (
            Uprobe::new(&scratch.dir, "main"),
            Kind::InvalidInput,
            vec![quoted(&scratch.dir)],
        ),
        (
            Uprobe::new(&exe, no_such_symbol),
            Kind::NotFound,
            vec![format!("{no_such_symbol:?}")],
        ),
        (
            Uprobe::retprobe(&exe, no_such_symbol),
            Kind::NotFound,
            vec![format!("{no_such_symbol:?}")],
        ),
    ];
    for (probe, kind, names) in cases {
        for backend in BACKENDS {
            let ctx = format!("{probe:?} on {backend:?}");
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let err = failed(probe.clone().backend(backend).attach(counter).await, &ctx);
            check(&err, kind, &names, &ctx);
            base.assert_clean(&ctx).await;
        }
    }
}

/// Errors only the kernel can find: the probe (and, for tracefs, its event) is created and
/// must be removed again.
async fn uprobe_kernel_errors(counter: &Counter, base: &Baseline) {
    let exe = exe();
    let size = std::fs::metadata(&exe).unwrap().len();
    let past_end = size + 0x10000;
    for backend in BACKENDS {
        // Past the end of the file: the ELF tells, before the kernel is asked (the kernel
        // would take it into uprobe_events and fail only at perf_event_open).
        let probe = Uprobe::at_offset(&exe, past_end).backend(backend);
        let ctx = format!("{probe:?} (past the end of the file)");
        let err = failed(probe.attach(counter).await, &ctx);
        check(
            &err,
            Kind::InvalidInput,
            &[&format!("{past_end:#x}"), "end of the file"],
            &ctx,
        );
        base.assert_clean(&ctx).await;
    }

    let dead = dead_pid();
    let sym = symbol_of("errs_pid_fn");
    for backend in BACKENDS {
        assert!(pid_is_dead(dead));
        let probe = Uprobe::new(&exe, &sym).pid(dead).backend(backend);
        let ctx = format!("{probe:?} (pid does not exist)");
        let err = failed(probe.attach(counter).await, &ctx);
        check(&err, Kind::NotFound, &[&dead.to_string()], &ctx);
        base.assert_clean(&ctx).await;
    }
}

async fn program_fd_errors(counter: &Counter, base: &Baseline, plain_file: &std::fs::File) {
    let sym = symbol_of("errs_pid_fn");
    for backend in BACKENDS {
        let ctx = format!("a plain file as the program, {backend:?}");
        let err = failed(
            Uprobe::new(exe(), &sym)
                .backend(backend)
                .attach(plain_file)
                .await,
            &ctx,
        );
        check(&err, Kind::InvalidInput, &[], &ctx);
        base.assert_clean(&ctx).await;

        let ctx = format!("a BPF map as the program, {backend:?}");
        let err = failed(
            Uprobe::new(exe(), &sym)
                .backend(backend)
                .attach(counter.map())
                .await,
            &ctx,
        );
        check(&err, Kind::InvalidInput, &[], &ctx);
        base.assert_clean(&ctx).await;

        // A kprobe with a bad program is invalid input, even on a kernel without kprobes.
        let ctx = format!("a BPF map as a kprobe program, {backend:?}");
        let err = failed(
            Kprobe::new("vfs_read")
                .backend(backend)
                .attach(counter.map())
                .await,
            &ctx,
        );
        check(&err, Kind::InvalidInput, &[], &ctx);
        base.assert_clean(&ctx).await;

        let ctx = format!("a plain file as a kprobe program, {backend:?}");
        let err = failed(
            Kprobe::new("vfs_read")
                .backend(backend)
                .attach(plain_file.as_fd())
                .await,
            &ctx,
        );
        check(&err, Kind::InvalidInput, &[], &ctx);
        base.assert_clean(&ctx).await;
    }
}

/// 50 attach/detach cycles and 10 attach/drop cycles, alternating PMU and tracefs, counted
/// exactly; nothing is left after each.
async fn cycles(counter: &Counter, base: &Baseline) {
    let sym = symbol_of("errs_cycle_fn");
    for i in 0..50 {
        let backend = if i % 2 == 0 {
            Backend::Pmu
        } else {
            Backend::Tracefs
        };
        let ctx = format!("attach/detach cycle {i} on {backend:?}");
        let link = Uprobe::new(exe(), &sym)
            .cookie(1)
            .backend(backend)
            .attach(counter)
            .await
            .unwrap();
        assert_eq!(link.backend(), Some(backend), "{ctx}");
        let listed = our_events("uprobe_events", base.pid);
        match link.tracefs_event() {
            Some(name) => assert!(
                listed.len() == 1 && listed[0].contains(name),
                "{ctx}: {name} not the one listed: {listed:?}"
            ),
            None => assert!(listed.is_empty(), "{ctx}: PMU probe in tracefs: {listed:?}"),
        }
        call(errs_cycle_fn, 1);
        link.detach().await.unwrap();
        call(errs_cycle_fn, 1);
        // detach returns only when everything is released: no waiting.
        base.assert_clean_now(&ctx);
    }
    assert_eq!(
        counter.get(1).unwrap(),
        50,
        "one hit per cycle, none while detached"
    );

    let sym = symbol_of("errs_dropped_fn");
    for i in 0..10 {
        let backend = if i % 2 == 0 {
            Backend::Tracefs
        } else {
            Backend::Pmu
        };
        let ctx = format!("attach/drop cycle {i} on {backend:?}");
        let link = Uprobe::new(exe(), &sym)
            .cookie(2)
            .backend(backend)
            .attach(counter)
            .await
            .unwrap();
        call(errs_dropped_fn, 1);
        drop(link);
        base.assert_clean(&ctx).await;
        call(errs_dropped_fn, 1);
    }
    assert_eq!(
        counter.get(2).unwrap(),
        10,
        "one hit per cycle, none after drop"
    );
    assert_eq!(counter.counts().unwrap().iter().sum::<u64>(), 60);
}

/// Per-probe uprobes (PMU) on `functions()[range]`, cookie = index.
fn numbered_probes(range: std::ops::Range<usize>) -> Vec<Probe> {
    let fs = functions();
    range
        .map(|i| {
            Uprobe::at_offset(exe(), file_offset_of_address(fs[i] as usize))
                .cookie(i as u64)
                .backend(Backend::Pmu)
                .into()
        })
        .collect()
}

/// A perf link holds one descriptor per probe (the perf event is the link's), on both
/// backends and in a `ProbeSet`'s per-probe batch; a batch that runs into `RLIMIT_NOFILE`
/// fails with `OutOfFileDescriptors` naming the limit and what to do, and leaves nothing.
async fn descriptors(base: &Baseline) {
    let counter = Counter::load(Flavour::Plain, 64).unwrap();
    let fs = functions();
    let offset = file_offset_of_address(fs[0] as usize);
    for backend in [Backend::Pmu, Backend::Tracefs] {
        let before = fd_count();
        let link = Uprobe::at_offset(exe(), offset)
            .backend(backend)
            .attach(&counter)
            .await
            .unwrap();
        assert_eq!(
            fd_count(),
            before + 1,
            "{backend:?}: one descriptor for one probe"
        );
        link.detach().await.unwrap();
        assert_eq!(fd_count(), before, "{backend:?}: released");
    }

    let before = fd_count();
    let mut set = ProbeSet::new(&counter).unwrap();
    let empty = fd_count();
    set.attach(numbered_probes(0..40)).await.unwrap();
    assert_eq!(
        fd_count() - empty,
        40,
        "one descriptor per probe of the set"
    );
    for f in &fs[..40] {
        black_box(black_box(*f)(1));
    }
    let counts = counter.counts().unwrap();
    assert_eq!(&counts[..40], &[1; 40][..], "each probe counted its call");
    set.detach().await.unwrap();
    assert_eq!(fd_count(), before, "the set released every descriptor");

    // Room for 10 to 20 more descriptors (fewer than 20 are open above the new limit: the
    // lowest free numbers below it are used first), then a batch of 40 per-probe links.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, fd_count() as u64 + 10, hard).unwrap();
    let mut set = ProbeSet::new(&counter).unwrap();
    let result = set.attach(numbered_probes(0..40)).await;
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    let err = result.expect_err("40 links cannot fit in 10 descriptors");
    assert_eq!(err.raw_os_error(), Some(libc::EMFILE), "{err}");
    let Error::Probes { total, failures } = &err else {
        panic!("expected the batch's failures, got {err:?}");
    };
    assert_eq!(*total, 40);
    assert!(
        failures
            .iter()
            .all(|(_, e)| matches!(e, Error::OutOfFileDescriptors { .. })),
        "{err:?}"
    );
    let msg = err.to_string();
    for needle in [
        "out of file descriptors",
        "RLIMIT_NOFILE",
        "ulimit -n",
        "os error 24",
    ] {
        assert!(msg.contains(needle), "message lacks {needle:?}: {msg}");
    }
    assert!(set.is_empty(), "the failed batch was rolled back");
    drop(set);
    drop(counter);
    base.assert_clean("after running out of descriptors").await;
}

/// Tallies how the attaches that were meant to be cancelled ended.
#[derive(Default, Debug)]
struct Tally {
    cancelled: u32,
    completed: u32,
    /// Cancelled attaches still running (`cleanup::pending() > 0`) right after the cancel:
    /// the cases where `wait_idle` had to wait for the late result.
    in_flight: u32,
}

impl Tally {
    fn cancel(&mut self) {
        self.cancelled += 1;
        if probeset::cleanup::pending() > 0 {
            self.in_flight += 1;
        }
    }
}

/// Attaches (tracefs) cancelled at many points: by `timeout`, by dropping the future after
/// polling it once, by aborting a spawned task. The blocking closure's late result must clean
/// up after itself, and `wait_idle` must wait for it (an attach in flight counts as pending),
/// so the check right after `wait_idle` is exact, with no polling.
async fn cancellations(counter: &Arc<Counter>, base: &Baseline) {
    let sym = symbol_of("errs_cancel_fn");
    let probe = Uprobe::new(exe(), &sym).cookie(3).backend(Backend::Tracefs);
    let mut tally = Tally::default();

    for ms in 0..=15 {
        let ctx = format!("attach cancelled by a {ms} ms timeout");
        let fut = probe.clone().attach(&**counter);
        match tokio::time::timeout(Duration::from_millis(ms), fut).await {
            Ok(Ok(link)) => {
                tally.completed += 1;
                link.detach().await.unwrap();
            }
            Ok(Err(e)) => panic!("{ctx}: {e}"),
            Err(_) => tally.cancel(),
        }
        base.assert_clean(&ctx).await;
    }

    for step in 0..20u64 {
        let ctx = format!("attach dropped {}us after its first poll", step * 25);
        // Boxed, so that dropping it really drops the attach future.
        let mut fut = Box::pin(probe.clone().attach(&**counter));
        let polled = futures::poll!(fut.as_mut());
        match polled {
            Poll::Ready(r) => {
                tally.completed += 1;
                r.unwrap().detach().await.unwrap();
            }
            Poll::Pending => {
                std::thread::sleep(Duration::from_micros(step * 25));
                drop(fut);
                tally.cancel();
            }
        }
        base.assert_clean(&ctx).await;
    }

    for step in 0..8u64 {
        let ctx = format!("spawned attach aborted after {step} yields");
        let task = tokio::spawn({
            let counter = Arc::clone(counter);
            let probe = probe.clone();
            async move { probe.attach(counter).await }
        });
        for _ in 0..step {
            tokio::task::yield_now().await;
        }
        task.abort();
        match task.await {
            Ok(Ok(link)) => {
                tally.completed += 1;
                link.detach().await.unwrap();
            }
            Ok(Err(e)) => panic!("{ctx}: {e}"),
            Err(e) => {
                assert!(e.is_cancelled(), "{ctx}: {e}");
                tally.cancel();
            }
        }
        base.assert_clean(&ctx).await;
    }

    eprintln!("errors: cancellation tally: {tally:?}");
    assert!(tally.cancelled > 0, "no attach was cancelled: {tally:?}");
    call(errs_cancel_fn, 1);
    assert_eq!(
        counter.get(3).unwrap(),
        0,
        "no cancelled attach left a probe that fires"
    );
    base.assert_clean("after the cancellations").await;
}
