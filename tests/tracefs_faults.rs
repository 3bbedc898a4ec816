//! tracefs under faults, checked against the kernel's own lists (host tier; root): a path
//! tracefs would misread is refused before anything is written; a removal after tracefs was
//! unmounted is reported and done once it is mounted again; a batch that runs out of file
//! descriptors leaves no event and no descriptor behind.
//!
//! Unmounting happens only in a child process in a private mount namespace (`unshare
//! --mount --propagation private`), never on the host. Descriptor limits are lowered only
//! in a child process, so no other test of this binary feels them.

mod common;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    can_run, child_mode, exe, fd_count, file_offset_of, functions, hear, is_listed, listed_events,
    offset_of, our_events, runtime, symbol_of, tell, tracefs, ChildTest,
};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use probeset::cleanup::wait_idle;
use probeset::counter::{Counter, Flavour};
use probeset::{Backend, Error, Probe, ProbeSet, Uprobe};

/// The mode of the child that `an_unmount_is_reported_and_a_remount_lets_the_event_go` runs.
const UNMOUNT_CHILD: &str = "PROBESET_FAULTS_UNMOUNT_CHILD";
/// The mode of the child that `a_batch_out_of_descriptors_leaves_nothing_behind` runs.
const FD_CHILD: &str = "PROBESET_FAULTS_FD_CHILD";
/// The parent's mount namespace, so that the unmount child can check it is not in it.
const HOST_MNT_ENV: &str = "PROBESET_FAULTS_HOST_MNT";

const PATIENCE: Duration = Duration::from_secs(180);

// Distinct bodies keep the linker from merging them; no name is part of another.
#[inline(never)]
fn faults_victim(x: u64) -> u64 {
    black_box(x).wrapping_mul(89) ^ 0x41
}
#[inline(never)]
fn faults_decoy(x: u64) -> u64 {
    black_box(x).wrapping_mul(97) ^ 0x42
}
#[inline(never)]
fn faults_unmounted(x: u64) -> u64 {
    black_box(x).wrapping_mul(101) ^ 0x43
}
#[inline(never)]
fn faults_remounted(x: u64) -> u64 {
    black_box(x).wrapping_mul(103) ^ 0x44
}

fn call(f: fn(u64) -> u64, n: u64) {
    for i in 0..n {
        black_box(black_box(f)(i));
    }
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("probeset-faults-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// `dir/name` (directories made as needed), a symlink to this test executable.
    fn exe_at(&self, name: &str) -> PathBuf {
        let link = self.0.join(name);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(exe(), &link).unwrap();
        link
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The lines of `uprobe_events` that mention `text`.
fn events_mentioning(text: &str) -> Vec<String> {
    std::fs::read_to_string(tracefs().join("uprobe_events"))
        .unwrap()
        .lines()
        .filter(|l| l.contains(text))
        .map(str::to_string)
        .collect()
}

#[test]
fn paths_tracefs_would_misread_reach_it_as_the_fd_of_what_was_named() {
    if !can_run("paths_tracefs_would_misread_reach_it_as_the_fd_of_what_was_named") {
        return;
    }
    tracefs();
    let scratch = Scratch::new("paths");
    let me = std::process::id();
    // The trap: the directory `other:0xOFF#` holds `victim`, and `other` exists too. Written
    // unchecked, `p:G/E DIR/other:0xOFF#/victim:0x...` is read as a probe on `other` at OFF
    // (here the test executable's `faults_decoy`): tracefs takes `#` for a comment.
    scratch.exe_at("other");
    let decoy = offset_of("faults_decoy");
    let victim = scratch.exe_at(&format!("other:{decoy:#x}#/victim"));
    // 'à' is C3 A0 in UTF-8: the kernel's isspace() takes the A0 for a space.
    let a_grave = scratch.exe_at("voil\u{e0}/victim");
    let tab = scratch.exe_at("tab\there/victim");
    let control = scratch.exe_at("bell\u{7}/victim");
    // A path the kernel opens (under PATH_MAX) in a line it would not parse (over 4095).
    let long = scratch.exe_at(&format!("{}/victim", vec!["d".repeat(250); 16].join("/")));
    assert!(long.as_os_str().len() > 4000 && long.as_os_str().len() < 4096);
    let sym = symbol_of("faults_victim");
    call(faults_victim, 1);
    call(faults_decoy, 1);
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 4).unwrap();
        // Each path reaches tracefs only as /proc/self/fd/N of the file that was opened, so
        // what is probed is exactly what was named, whatever the path holds.
        for path in [&victim, &a_grave, &tab, &control, &long] {
            let ctx = format!("{path:?}");
            counter.reset().unwrap();
            let link = Uprobe::new(path, &sym)
                .cookie(1)
                .backend(Backend::Tracefs)
                .attach(&counter)
                .await
                .unwrap_or_else(|e| panic!("{ctx}: {e}"));
            let event = link.tracefs_event().unwrap().to_string();
            let listed = events_mentioning(&event);
            assert_eq!(listed.len(), 1, "{ctx}: {listed:?}");
            assert!(
                listed[0].contains(" /proc/self/fd/"),
                "{ctx}: {}",
                listed[0]
            );
            assert!(
                !listed[0].contains('#')
                    && events_mentioning(&scratch.0.display().to_string()).is_empty(),
                "{ctx}: the path itself is never written: {}",
                listed[0]
            );
            call(faults_victim, 3);
            call(faults_decoy, 5);
            assert_eq!(
                counter.get(1).unwrap(),
                3,
                "{ctx}: the probe is on faults_victim only"
            );
            link.detach().await.unwrap();
            assert!(our_events("uprobe_events", me).is_empty(), "{ctx}");
        }
        counter.reset().unwrap();
        // The path itself is fine: the PMU takes it whole, and the probe is on the victim.
        let link = Uprobe::new(&victim, &sym)
            .cookie(1)
            .backend(Backend::Pmu)
            .attach(&counter)
            .await
            .unwrap();
        call(faults_victim, 3);
        call(faults_decoy, 5);
        assert_eq!(
            counter.get(1).unwrap(),
            3,
            "the probe is on faults_victim only"
        );
        link.detach().await.unwrap();
    });
    probeset::cleanup::wait_idle_blocking();
    assert!(our_events("uprobe_events", me).is_empty());
}

/// Not a test of its own: the child of `an_unmount_is_reported_and_a_remount_lets_the_event_go`,
/// in a private mount namespace.
#[test]
fn unmount_child() {
    if !child_mode(UNMOUNT_CHILD) {
        return;
    }
    let root = tracefs();
    assert_eq!(root, Path::new("/sys/kernel/tracing"));
    assert_private_mount_namespace();
    let me = std::process::id();
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 4).unwrap();
        let kept = Uprobe::new(exe(), symbol_of("faults_unmounted"))
            .cookie(1)
            .backend(Backend::Tracefs)
            .attach(&counter)
            .await
            .unwrap();
        let kept_name = kept.tracefs_event().unwrap().to_string();
        call(faults_unmounted, 2);
        assert_eq!(counter.get(1).unwrap(), 2);

        run(&["umount", "/sys/kernel/tracing"]);
        assert_eq!(
            probeset::tracefs::mount_point(),
            None,
            "tracefs is gone here"
        );
        let err = kept.detach().await.expect_err("tracefs is not mounted");
        let msg = err.to_string();
        for needle in [
            kept_name.as_str(),
            "tracefs is not mounted at /sys/kernel/tracing any more",
        ] {
            assert!(msg.contains(needle), "{msg} does not say {needle:?}");
        }
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err:?}");
        tell("KEPT", &kept_name);
        assert_eq!(hear().as_deref(), Some("CHECKED"));

        // Not a kernel without uprobe_events: tracefs is not mounted.
        let probe = Uprobe::new(exe(), symbol_of("faults_remounted"))
            .cookie(2)
            .backend(Backend::Tracefs);
        let err = probe.clone().attach(&counter).await.unwrap_err();
        assert!(err.is_not_supported(), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("tracefs is not mounted"), "{msg}");
        assert!(!msg.contains("CONFIG_UPROBE_EVENTS"), "{msg}");

        run(&["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"]);
        let link = probe.attach(&counter).await.unwrap();
        let name = link.tracefs_event().unwrap().to_string();
        assert!(is_listed("uprobe_events", &name), "{name} is listed");
        let listed = listed_events("uprobe_events");
        assert!(
            !listed.contains(&kept_name),
            "the kept event went with the next tracefs operation: {listed:?}"
        );
        call(faults_remounted, 3);
        assert_eq!(counter.get(2).unwrap(), 3);
        link.detach().await.unwrap();
        assert!(our_events("uprobe_events", me).is_empty());
        tell("REMOUNTED", &name);
    });
}

/// Runs a command (in this process's mount namespace), which must succeed.
fn run(argv: &[&str]) {
    let status = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .status()
        .unwrap();
    assert!(status.success(), "{argv:?}: {status}");
}

/// Panics unless this process is in a mount namespace of its own whose tracefs mount does
/// not propagate: unmounting here must never reach the host.
fn assert_private_mount_namespace() {
    let host = std::env::var(HOST_MNT_ENV).expect("the parent's mount namespace");
    let mine = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_ne!(
        mine.to_str(),
        Some(host.as_str()),
        "not in a mount namespace of its own"
    );
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/sys/kernel/tracing"))
        .expect("tracefs in mountinfo");
    let (fields, _) = line.split_once(" - ").unwrap();
    assert!(
        !fields
            .split_whitespace()
            .skip(6)
            .any(|f| f.starts_with("shared:")),
        "the tracefs mount propagates: {line}"
    );
}

#[test]
fn an_unmount_is_reported_and_a_remount_lets_the_event_go() {
    if !can_run("an_unmount_is_reported_and_a_remount_lets_the_event_go") {
        return;
    }
    tracefs();
    let host_mnt = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let mut child = ChildTest::spawn(
        &["unshare", "--mount", "--propagation", "private"],
        "unmount_child",
        &[
            (UNMOUNT_CHILD, "1".to_string()),
            (HOST_MNT_ENV, host_mnt.to_str().unwrap().to_string()),
        ],
    );
    let kept = child.expect("KEPT", PATIENCE);
    // Seen from the host: the detach that failed left the event in the kernel.
    assert!(
        is_listed("uprobe_events", &kept),
        "{kept} is still in the kernel"
    );
    assert!(
        probeset::tracefs::mount_point().is_some(),
        "the host's tracefs stays"
    );
    child.say("CHECKED");
    let remounted = child.expect("REMOUNTED", PATIENCE);
    child.wait_success();
    let listed = listed_events("uprobe_events");
    assert!(!listed.contains(&kept), "{listed:?}");
    assert!(!listed.contains(&remounted), "{listed:?}");
    assert!(our_events("uprobe_events", child.pid()).is_empty());
    assert!(
        tracefs().join("events").is_dir(),
        "the host's tracefs is mounted"
    );
}

/// 200 tracefs uprobes on functions of this executable.
fn batch() -> Vec<Probe> {
    functions()[..200]
        .iter()
        .enumerate()
        .map(|(i, f)| {
            Uprobe::at_offset(exe(), file_offset_of(*f))
                .cookie(i as u64)
                .backend(Backend::Tracefs)
                .into()
        })
        .collect()
}

/// One batch of 200 with `free` descriptor numbers left: it fails with
/// `OutOfFileDescriptors`, and nothing is left behind.
async fn out_of_descriptors(counter: &Counter, free: u64) {
    let me = std::process::id();
    let before = fd_count();
    let mut set = ProbeSet::new(counter).unwrap();
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    // fd_count() counts its own directory descriptor too.
    let open = fd_count() as u64 - 1;
    setrlimit(Resource::RLIMIT_NOFILE, open + free, hard).unwrap();
    let result = set.attach(batch()).await;
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    let err = result.expect_err("200 probes cannot fit in 40 descriptors");
    assert_eq!(err.raw_os_error(), Some(libc::EMFILE), "{err}");
    let Error::Probes { total, failures } = &err else {
        panic!("expected the batch's failures, got {err:?}");
    };
    assert_eq!(*total, 200);
    assert!(
        failures
            .iter()
            .any(|(_, e)| matches!(e, Error::OutOfFileDescriptors { .. })),
        "{err:?}"
    );
    // Right after the call, before any background work: no event of this process.
    let left = our_events("uprobe_events", me);
    assert!(left.is_empty(), "{free} free: events left: {left:?}");
    assert!(set.is_empty());
    drop(set);
    wait_idle().await;
    assert_eq!(fd_count(), before, "{free} free: descriptors are back");
    assert!(our_events("uprobe_events", me).is_empty());
    tell("ROUND", &format!("free={free} failures={}", failures.len()));
}

/// Not a test of its own: the child of `a_batch_out_of_descriptors_leaves_nothing_behind`.
#[test]
fn fd_child() {
    if !child_mode(FD_CHILD) {
        return;
    }
    tracefs();
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 256).unwrap();
        // This process's first tracefs probe (and its reaper run) before the limit is low.
        let warm = Uprobe::at_offset(exe(), file_offset_of(functions()[999]))
            .backend(Backend::Tracefs)
            .attach(&counter)
            .await
            .unwrap();
        warm.detach().await.unwrap();
        for free in [40, 41, 42, 43] {
            out_of_descriptors(&counter, free).await;
        }
    });
    tell("DONE", "");
}

#[test]
fn a_batch_out_of_descriptors_leaves_nothing_behind() {
    if !can_run("a_batch_out_of_descriptors_leaves_nothing_behind") {
        return;
    }
    tracefs();
    let mut child = ChildTest::spawn(&[], "fd_child", &[(FD_CHILD, "1".to_string())]);
    for _ in 0..4 {
        eprintln!("tracefs_faults: {}", child.expect("ROUND", PATIENCE));
    }
    child.expect("DONE", PATIENCE);
    child.wait_success();
    let left = our_events("uprobe_events", child.pid());
    assert!(left.is_empty(), "after the child exited: {left:?}");
}
