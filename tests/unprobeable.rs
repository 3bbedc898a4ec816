//! A uprobe on a trap instruction (`int3`) gets one answer on every path: the PMU, tracefs,
//! a plain batch, a uprobe multi link, a uprobe multi batch: `is_unprobeable`, not "this
//! kernel cannot make uprobes"; and `Backend::Auto` does not fall back to tracefs for it
//! (host tier; root). Its own test binary: it counts this process's fds.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{can_run, our_events, runtime, tracefs};
use probeset::counter::{Counter, Flavour};
use probeset::{Backend, Error, Probe, ProbeSet, Uprobe};

/// A program with a function that starts with a trap instruction. It waits on its stdin, so
/// it maps the file while the probes attach: the kernel places a uprobe into the processes
/// that map the file when it registers it, and refuses a trap instruction then.
const SOURCE: &str = r#"
#include <unistd.h>
__asm__(".text\n.globl probeset_trap_insn\n.type probeset_trap_insn,@function\n"
        "probeset_trap_insn:\n int3\n ret\n.size probeset_trap_insn,2\n");
int main(void) { char c; return read(0, &c, 1) < 0; }
"#;

/// Builds the program in a scratch directory; returns the directory and the binary.
fn build() -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("probeset-trap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("trap.c");
    std::fs::write(&src, SOURCE).unwrap();
    let bin = dir.join("trap");
    let status = Command::new("cc")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("the system C compiler (cc) runs");
    assert!(status.success(), "cc trap.c");
    (dir, bin)
}

/// The kinds an error answers to, for comparing paths.
fn kinds(e: &Error) -> [bool; 5] {
    [
        e.is_unprobeable(),
        e.is_not_supported(),
        e.is_not_found(),
        e.is_invalid_input(),
        e.is_permission_denied(),
    ]
}

fn trap(bin: &Path, backend: Backend) -> Uprobe {
    Uprobe::new(bin, "probeset_trap_insn").backend(backend)
}

/// Counts the crate's debug events that say a tracefs event is being created.
struct TracefsWrites(Arc<AtomicUsize>);

impl tracing::Subscriber for TracefsWrites {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Message(bool);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 |= format!("{value:?}").contains("creating tracefs probe event");
                }
            }
        }
        let mut m = Message(false);
        event.record(&mut m);
        if m.0 {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn a_trap_instruction_is_unprobeable_on_every_path() {
    if !can_run("a_trap_instruction_is_unprobeable_on_every_path") {
        return;
    }
    tracefs();
    let pid = std::process::id();
    let (dir, bin) = build();
    let mut running = Command::new(&bin).stdin(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let plain = Counter::load(Flavour::Plain, 2).unwrap();
    let multi = Counter::load(Flavour::UprobeMulti, 2).unwrap();
    let rt = runtime();
    let fds = common::fd_count();

    // Auto, on this thread so the subscriber sees every event: the PMU says ENOTSUPP and
    // nothing is written to tracefs.
    let writes = Arc::new(AtomicUsize::new(0));
    let auto = tracing::subscriber::with_default(TracefsWrites(Arc::clone(&writes)), || {
        trap(&bin, Backend::Auto)
            .attach_blocking(&plain)
            .unwrap_err()
    });
    assert!(auto.is_unprobeable(), "{auto}");
    assert!(!auto.is_not_supported(), "not a missing feature: {auto}");
    assert!(auto.to_string().contains("probeset_trap_insn"), "{auto}");
    assert_eq!(
        writes.load(Ordering::Relaxed),
        0,
        "Auto did not try tracefs"
    );
    // The tracefs path itself writes the event, gets the same answer, and removes it.
    let forced = tracing::subscriber::with_default(TracefsWrites(Arc::clone(&writes)), || {
        trap(&bin, Backend::Tracefs)
            .attach_blocking(&plain)
            .unwrap_err()
    });
    assert_eq!(
        writes.load(Ordering::Relaxed),
        1,
        "the subscriber sees tracefs writes"
    );

    let mut errors = vec![("auto", auto), ("tracefs", forced)];
    errors.push((
        "pmu",
        trap(&bin, Backend::Pmu)
            .attach_blocking(&plain)
            .unwrap_err(),
    ));
    errors.push((
        "uprobe_multi link",
        trap(&bin, Backend::Auto)
            .attach_blocking(&multi)
            .unwrap_err(),
    ));
    rt.block_on(async {
        for (name, counter) in [("plain batch", &plain), ("uprobe_multi batch", &multi)] {
            let mut set = ProbeSet::new(counter).unwrap();
            let batch: Vec<Probe> = vec![trap(&bin, Backend::Auto).into()];
            let e = set.attach(batch).await.unwrap_err();
            assert!(set.is_empty());
            errors.push((name, e));
        }
        probeset::cleanup::wait_idle().await;
    });
    let expected = [true, false, false, false, false];
    for (name, e) in &errors {
        assert_eq!(kinds(e), expected, "{name}: {e}");
        let mut chain = e.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            let _ = write!(chain, " ({c})");
            cause = c.source();
        }
        assert!(
            chain.contains("cannot probe the instruction"),
            "{name}: {chain}"
        );
        assert!(
            chain.contains("os error 524"),
            "{name}: the errno is kept: {chain}"
        );
    }
    assert!(our_events("uprobe_events", pid).is_empty(), "no event left");
    assert_eq!(common::fd_count(), fds, "no fd left");
    drop(running.stdin.take());
    assert!(
        running.wait().unwrap().success(),
        "the traced program was not disturbed"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
