//! A uprobe is bound to the file (inode) that was resolved: a binary replaced under a set
//! keeps its probes, and its rebuilds, on the old inode; a path that flips between two
//! versions while probes attach never gets one version's offset in the other (host tier;
//! root; builds two small C programs with the system compiler).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{can_run, runtime, tracefs};
use futures::StreamExt;
use probeset::counter::{Counter, Flavour};
use probeset::elf::ElfSymbols;
use probeset::{Backend, Change, Probe, ProbeSet, Uprobe};

/// The traced program, in two versions with the same behaviour and different layouts: v2
/// has a function before the probed ones, so their offsets differ.
const SOURCE: &str = r#"
#include <stdio.h>
#include <stdlib.h>
PAD
__attribute__((noinline)) long probeset_target(long x) { return x * 3 + 1; }
__attribute__((noinline)) long probeset_other(long x) { return x ^ 0x55; }
__attribute__((noinline)) long probeset_third(long x) { return x + 7; }
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1;
    long s = 0;
    for (long i = 0; i < n; i++) s += probeset_target(i) + probeset_other(i) + probeset_third(i);
    printf("%ld\n", s);
    return 0;
}
"#;

const PAD: &str = r"
__attribute__((noinline)) long probeset_pad(long x) {
    volatile long v = x;
    for (int i = 0; i < 50; i++) v = v * 31 + i;
    return v;
}
";

/// What the program prints for `n` calls.
fn expected(n: i64) -> i64 {
    (0..n).map(|i| (i * 3 + 1) + (i ^ 0x55) + (i + 7)).sum()
}

/// A scratch directory with both versions built in it.
struct Programs {
    dir: PathBuf,
    v1: PathBuf,
    v2: PathBuf,
}

impl Programs {
    fn build(name: &str) -> Programs {
        let dir = std::env::temp_dir().join(format!("probeset-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let build = |version: &str, pad: &str| {
            let src = dir.join(format!("{version}.c"));
            std::fs::write(&src, SOURCE.replace("PAD", pad)).unwrap();
            let out = dir.join(version);
            let status = Command::new("cc")
                .args(["-O1", "-fno-inline", "-o"])
                .arg(&out)
                .arg(&src)
                .status()
                .expect("the system C compiler (cc) runs");
            assert!(status.success(), "cc {version}");
            out
        };
        let programs = Programs {
            v1: build("v1", ""),
            v2: build("v2", PAD),
            dir,
        };
        let offset = |p: &Path| {
            ElfSymbols::load(p)
                .unwrap()
                .resolve("probeset_target")
                .unwrap()
        };
        assert_ne!(
            offset(&programs.v1),
            offset(&programs.v2),
            "the versions lay the probed function out at different offsets"
        );
        programs
    }

    /// Installs `version` at `path` as a package upgrade does: a new file renamed over it.
    fn install(&self, version: &Path, path: &Path) {
        let tmp = self.dir.join(".installing");
        std::fs::copy(version, &tmp).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
}

impl Drop for Programs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `path` for `n` calls and checks what it prints and how it exits: a breakpoint in
/// the middle of an instruction would make it print something else, or crash.
fn run_ok(path: &Path, n: i64) {
    let out = Command::new(path).arg(n.to_string()).output().unwrap();
    assert!(
        out.status.success(),
        "{path:?} exited with {:?}",
        out.status
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(printed.trim(), expected(n).to_string(), "{path:?} computed");
}

fn probe(path: &Path, function: &str, cookie: u64) -> Probe {
    Uprobe::new(path, function).cookie(cookie).into()
}

#[test]
fn a_replaced_binary_keeps_its_probes_and_rebuilds_on_the_old_inode() {
    if !can_run("a_replaced_binary_keeps_its_probes_and_rebuilds_on_the_old_inode") {
        return;
    }
    let programs = Programs::build("replaced");
    let app = programs.dir.join("app");
    // A hard link to the installed file: the old inode, as the processes that still run
    // the old version see it.
    let old = programs.dir.join("app.old");
    programs.install(&programs.v1, &app);
    std::fs::hard_link(&app, &old).unwrap();
    runtime().block_on(async {
        let counter = Counter::load(Flavour::UprobeMulti, 8).unwrap();
        let mut set = ProbeSet::new(&counter).unwrap();
        let (target, other, third) = (
            probe(&app, "probeset_target", 1),
            probe(&app, "probeset_other", 2),
            probe(&app, "probeset_third", 3),
        );
        set.attach([target.clone(), other.clone()]).await.unwrap();
        // A second, small link on the same file: a later rebuild folds it in.
        set.insert(third.clone()).await.unwrap();
        assert_eq!(set.link_count(), 2);
        assert!(set.replaced_binaries().is_empty());

        programs.install(&programs.v2, &app);
        assert_eq!(set.replaced_binaries(), vec![app.clone()]);

        // remove() rebuilds the link of the probes that stay: on the old inode.
        assert!(set.remove(&other).await.unwrap());
        run_ok(&app, 10);
        assert_eq!(
            counter.counts().unwrap()[1..4],
            [0, 0, 0],
            "the new version is not probed"
        );
        run_ok(&old, 10);
        assert_eq!(
            counter.counts().unwrap()[1..4],
            [10, 0, 10],
            "the old inode counts exactly, without the removed probe"
        );

        // A detach through apply() rebuilds (and merges the small links) on the old inode too.
        counter.reset().unwrap();
        let outcomes: Vec<_> = set
            .apply(futures::stream::iter([Change::Detach(third.clone())]))
            .collect()
            .await;
        assert!(
            matches!(outcomes[0].result, Ok(true)),
            "{:?}",
            outcomes[0].result
        );
        assert_eq!(set.link_count(), 1);
        run_ok(&app, 5);
        assert_eq!(counter.counts().unwrap()[1..4], [0, 0, 0]);
        run_ok(&old, 5);
        assert_eq!(counter.counts().unwrap()[1..4], [5, 0, 0]);

        // Attaching by the path again resolves the new file: a probe of its own.
        set.insert(probe(&app, "probeset_other", 4)).await.unwrap();
        counter.reset().unwrap();
        run_ok(&app, 3);
        assert_eq!(counter.counts().unwrap()[1..5], [0, 0, 0, 3]);
        set.detach().await.unwrap();
    });
}

#[test]
fn a_path_flipping_between_versions_never_mixes_them() {
    if !can_run("a_path_flipping_between_versions_never_mixes_them") {
        return;
    }
    let programs = Programs::build("flipping");
    let link = programs.dir.join("current");
    std::os::unix::fs::symlink(&programs.v1, &link).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (stop, link, dir) = (Arc::clone(&stop), link.clone(), programs.dir.clone());
        let versions = [programs.v1.clone(), programs.v2.clone()];
        std::thread::spawn(move || {
            let mut flips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let tmp = dir.join(".flip");
                let _ = std::fs::remove_file(&tmp);
                std::os::unix::fs::symlink(&versions[(flips % 2) as usize], &tmp).unwrap();
                std::fs::rename(&tmp, &link).unwrap();
                flips += 1;
            }
            flips
        })
    };
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 2).unwrap();
        for i in 0..40 {
            counter.reset().unwrap();
            let backend = if i % 2 == 0 {
                Backend::Pmu
            } else {
                Backend::Auto
            };
            let l = Uprobe::new(&link, "probeset_target")
                .backend(backend)
                .attach(&counter)
                .await
                .unwrap();
            // Exactly one of the two versions is probed, at its own offset.
            run_ok(&programs.v1, 1);
            run_ok(&programs.v2, 1);
            assert_eq!(
                counter.get(0).unwrap(),
                1,
                "attach {i}: exactly one version counts"
            );
            l.detach().await.unwrap();
        }
    });
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    println!("the path flipped {flips} times while 40 probes attached");
    assert!(flips > 40, "the path really flipped ({flips})");
}

#[test]
fn a_tracefs_event_on_an_fd_path_is_named_after_its_binary() {
    if !can_run("a_tracefs_event_on_an_fd_path_is_named_after_its_binary") {
        return;
    }
    tracefs();
    let programs = Programs::build("named");
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 2).unwrap();
        let link = Uprobe::new(&programs.v1, "probeset_target")
            .backend(Backend::Tracefs)
            .attach(&counter)
            .await
            .unwrap();
        let event = link.tracefs_event().unwrap().to_string();
        assert!(event.ends_with("/v1_probeset_target"), "{event}");
        let text = std::fs::read_to_string(tracefs().join("uprobe_events")).unwrap();
        let listed = text
            .lines()
            .find(|l| l.contains(&event))
            .unwrap_or_else(|| panic!("{event} listed in {text}"));
        assert!(
            listed.contains(" /proc/self/fd/"),
            "the kernel was given the fd: {listed}"
        );
        assert_eq!(link.binary(), Some(programs.v1.as_path()));
        assert!(!link.binary_replaced());
        run_ok(&programs.v1, 4);
        assert_eq!(counter.get(0).unwrap(), 4);
        programs.install(&programs.v2, &programs.v1);
        assert!(link.binary_replaced(), "the path names another file now");
        run_ok(&programs.v1, 4);
        assert_eq!(counter.get(0).unwrap(), 4, "the new file is not probed");
        link.detach().await.unwrap();
    });
}
