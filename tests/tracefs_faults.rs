//! tracefs under faults, checked against the kernel's own lists (host tier; root): a path
//! tracefs would misread is refused before anything is written.

mod common;

use std::hint::black_box;
use std::path::PathBuf;

use common::{can_run, exe, offset_of, our_events, runtime, symbol_of, tracefs};
use probeset::counter::{Counter, Flavour};
use probeset::{Backend, Uprobe};

// Distinct bodies keep the linker from merging them; no name is part of another.
#[inline(never)]
fn faults_victim(x: u64) -> u64 {
    black_box(x).wrapping_mul(89) ^ 0x41
}
#[inline(never)]
fn faults_decoy(x: u64) -> u64 {
    black_box(x).wrapping_mul(97) ^ 0x42
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
fn paths_tracefs_would_misread_are_refused_and_nothing_is_written() {
    if !can_run("paths_tracefs_would_misread_are_refused_and_nothing_is_written") {
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
        for (path, names) in [
            (&victim, "'#'"),
            (&a_grave, "'à' (U+00E0)"),
            (&tab, "'\\t'"),
            (&control, "'\\u{7}'"),
            (&long, "4095"),
        ] {
            let ctx = format!("{path:?}");
            let probe = Uprobe::new(path, &sym).cookie(1).backend(Backend::Tracefs);
            let err = probe.attach(&counter).await.expect_err(&ctx);
            assert!(err.is_invalid_input(), "{ctx}: {err:?}");
            let msg = err.to_string();
            assert!(msg.contains(names), "{ctx}: {msg} does not name {names}");
            assert!(
                msg.contains("Backend::Pmu"),
                "{ctx}: says what to do: {msg}"
            );
            assert!(
                events_mentioning(&scratch.0.display().to_string()).is_empty(),
                "{ctx}: written to uprobe_events"
            );
            assert!(events_mentioning(&format!("{decoy:#018x}")).is_empty());
            assert!(our_events("uprobe_events", me).is_empty(), "{ctx}");
        }
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
