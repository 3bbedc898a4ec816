//! The stale-event reaper against real tracefs events: it removes the events of a process
//! that was killed (`SIGKILL`) mid-attach, and never touches another tool's events, a live process's
//! events, or a group that only looks like ours (host tier; root).

mod common;

use std::hint::black_box;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use common::{
    can_run, dead_pid, event_of_line, exe, listed_events, offset_of, our_events, runtime,
    symbol_of, tracefs, write_events,
};
use probeset::counter::{Counter, Flavour};
use probeset::{Backend, Uprobe};

/// Set in the environment of the child process that `reaper_child` runs as.
const CHILD_ENV: &str = "PROBESET_REAPER_CHILD";
/// What the child prints once its probes are attached.
const READY: &str = "PROBESET_REAPER_CHILD_READY";

/// The reaper removes every dead process's events, so the tests here must not reap while
/// another one has a killed child whose events it is about to check.
static SERIAL: Mutex<()> = Mutex::new(());

// Distinct bodies keep the linker from merging them; no name is part of another.
#[inline(never)]
fn reapkid_alpha(x: u64) -> u64 {
    black_box(x).wrapping_mul(59) ^ 0x31
}
#[inline(never)]
fn reapkid_beta(x: u64) -> u64 {
    black_box(x).wrapping_mul(61) ^ 0x32
}
#[inline(never)]
fn reapkid_gamma(x: u64) -> u64 {
    black_box(x).wrapping_mul(67) ^ 0x33
}
#[inline(never)]
fn reapkid_churn(x: u64) -> u64 {
    black_box(x).wrapping_mul(71) ^ 0x34
}
#[inline(never)]
fn reapfor_own(x: u64) -> u64 {
    black_box(x).wrapping_mul(73) ^ 0x35
}
#[inline(never)]
fn reapfor_foreign(x: u64) -> u64 {
    black_box(x).wrapping_mul(79) ^ 0x36
}
#[inline(never)]
fn reapfor_warmup(x: u64) -> u64 {
    black_box(x).wrapping_mul(83) ^ 0x37
}

fn call(f: fn(u64) -> u64, n: u64) {
    for i in 0..n {
        black_box(black_box(f)(i));
    }
}

/// Not a test of its own: the body of the child process that `reaper_removes_the_events_of_a_killed_process`
/// starts (this executable, with `CHILD_ENV` set). Holds 3 tracefs uprobes, says `READY`, then
/// attaches and detaches a fourth in a loop until it is killed (five minutes at most).
#[test]
fn reaper_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    tracefs();
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 4).unwrap();
        let mut held = Vec::new();
        for (cookie, name) in [
            (0, "reapkid_alpha"),
            (1, "reapkid_beta"),
            (2, "reapkid_gamma"),
        ] {
            let link = Uprobe::new(exe(), symbol_of(name))
                .cookie(cookie)
                .backend(Backend::Tracefs)
                .attach(&counter)
                .await
                .unwrap();
            held.push(link);
        }
        call(reapkid_alpha, 1);
        call(reapkid_beta, 2);
        call(reapkid_gamma, 3);
        assert_eq!(counter.counts().unwrap(), vec![1, 2, 3, 0]);
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "\n{READY}").unwrap();
            out.flush().unwrap();
        }
        let churn = Uprobe::new(exe(), symbol_of("reapkid_churn"))
            .cookie(3)
            .backend(Backend::Tracefs);
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            let link = churn.clone().attach(&counter).await.unwrap();
            call(reapkid_churn, 1);
            link.detach().await.unwrap();
        }
        // Not killed: the parent is gone. Leave nothing behind.
        for link in held {
            link.detach().await.unwrap();
        }
    });
}

/// Kills the child if the test fails before it does.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Attaches and detaches one tracefs probe, so this process's own run of the reaper (before
/// its first tracefs probe) is over and cannot race with the explicit `reap_stale` below.
async fn warm_up(counter: &Counter) {
    let link = Uprobe::new(exe(), symbol_of("reapfor_warmup"))
        .backend(Backend::Tracefs)
        .attach(counter)
        .await
        .unwrap();
    call(reapfor_warmup, 1);
    link.detach().await.unwrap();
}

#[test]
fn reaper_removes_the_events_of_a_killed_process() {
    if !can_run("reaper_removes_the_events_of_a_killed_process") {
        return;
    }
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    tracefs();
    let rt = runtime();
    rt.block_on(async {
        let counter = Counter::load(Flavour::Plain, 2).unwrap();
        warm_up(&counter).await;
    });

    let started = Instant::now();
    let mut child = KillOnDrop(
        Command::new(exe())
            .args(["--exact", "reaper_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the child"),
    );
    let child_pid = child.0.id();
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(line) if line.contains(READY) => break,
            Ok(_) => {}
            Err(e) => panic!("the child never said {READY} ({e}); see its stderr above"),
        }
    }
    eprintln!(
        "reaper: child {child_pid} ready after {:?}",
        started.elapsed()
    );

    let before = our_events("uprobe_events", child_pid);
    assert!(
        before.len() >= 3,
        "the child's 3 held probes are listed: {before:?}"
    );
    for name in ["reapkid_alpha", "reapkid_beta", "reapkid_gamma"] {
        assert!(
            before.iter().any(|l| l.contains(name)),
            "{name} not among {before:?}"
        );
    }
    // Let the child churn for a while, so it is killed in the middle of some attach or detach.
    std::thread::sleep(Duration::from_millis(37));
    child.0.kill().unwrap();
    let status = child.0.wait().unwrap();
    assert!(!status.success(), "{status}");
    let stale = our_events("uprobe_events", child_pid);
    assert!(
        stale.len() >= 3,
        "SIGKILL leaves the events behind: {stale:?}"
    );

    let t = Instant::now();
    let reaped = rt.block_on(probeset::tracefs::reap_stale()).unwrap();
    eprintln!(
        "reaper: reap_stale took {:?}; removed {:?}; failed {:?}",
        t.elapsed(),
        reaped.removed,
        reaped.failed
    );
    let left = our_events("uprobe_events", child_pid);
    assert!(
        left.is_empty(),
        "the dead child's events are gone: {left:?}"
    );
    let prefix = format!("probeset_{child_pid}_");
    let removed: Vec<&String> = reaped
        .removed
        .iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(
        removed.len() >= 3,
        "Reaped::removed names the child's events: {reaped:?}"
    );
    for line in &stale {
        let name = event_of_line(line).unwrap();
        assert!(
            reaped.removed.iter().any(|r| r == name),
            "{name} (listed after the kill) not in Reaped::removed: {reaped:?}"
        );
    }
    assert!(
        !reaped.failed.iter().any(|(n, _)| n.starts_with(&prefix)),
        "{reaped:?}"
    );
}

/// A probe event written straight to `uprobe_events`, as another tool would; removed again
/// when dropped.
struct ManualEvent {
    name: String,
}

impl ManualEvent {
    fn create(group: &str, target: &str) -> std::io::Result<ManualEvent> {
        let name = format!("{group}/ev");
        write_events("uprobe_events", &format!("p:{name} {target}"))?;
        Ok(ManualEvent { name })
    }

    fn is_listed(&self) -> bool {
        listed_events("uprobe_events").contains(&self.name)
    }
}

impl Drop for ManualEvent {
    fn drop(&mut self) {
        let _ = write_events("uprobe_events", &format!("-:{}", self.name));
    }
}

/// The events written by hand for `reaper_leaves_foreign_and_live_groups_alone`.
struct Manual {
    /// Another tool's group.
    foreign: ManualEvent,
    /// Looks like ours, of a dead pid, but the suffix is not hex: not ours. `None` if the
    /// kernel refuses the name.
    not_hex: Option<ManualEvent>,
    /// Ours in form, of a dead pid: stale, the reaper removes it.
    stale: ManualEvent,
}

impl Manual {
    fn create(dead: i32, target: &str) -> Manual {
        let foreign = ManualEvent::create(&format!("othertool_{}", random_hex()), target)
            .expect("write a foreign event");
        assert!(foreign.is_listed());
        let not_hex = match ManualEvent::create(&format!("probeset_{dead}_zz"), target) {
            Ok(ev) => Some(ev),
            Err(e) => {
                eprintln!(
                    "reaper: the kernel refuses the group probeset_{dead}_zz ({e}); not checked"
                );
                None
            }
        };
        let stale = ManualEvent::create(&format!("probeset_{dead}_{}", random_hex()), target)
            .expect("write a stale event");
        assert!(stale.is_listed());
        Manual {
            foreign,
            not_hex,
            stale,
        }
    }
}

fn random_hex() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{:08x}", nanos ^ std::process::id().rotate_left(16))
}

#[test]
fn reaper_leaves_foreign_and_live_groups_alone() {
    if !can_run("reaper_leaves_foreign_and_live_groups_alone") {
        return;
    }
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    tracefs();
    call(reapfor_foreign, 1);
    let target = format!("{}:{:#x}", exe().display(), offset_of("reapfor_foreign"));
    let me = std::process::id();
    let dead = dead_pid();
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 2).unwrap();
        warm_up(&counter).await;

        // Ours, of a live process (this one), made by the library.
        let own = Uprobe::new(exe(), symbol_of("reapfor_own"))
            .cookie(1)
            .backend(Backend::Tracefs)
            .attach(&counter)
            .await
            .unwrap();
        let own_name = own.tracefs_event().unwrap().to_string();
        assert!(
            own_name.starts_with(&format!("probeset_{me}_")),
            "{own_name}"
        );

        let Manual {
            foreign,
            not_hex,
            stale,
        } = Manual::create(dead, &target);

        let reaped = probeset::tracefs::reap_stale().await.unwrap();
        eprintln!(
            "reaper: removed {:?}; failed {:?}",
            reaped.removed, reaped.failed
        );

        let listed = listed_events("uprobe_events");
        assert!(
            listed.contains(&own_name),
            "a live process's event stays: {listed:?}"
        );
        assert!(
            foreign.is_listed(),
            "another tool's event stays: {listed:?}"
        );
        if let Some(ev) = &not_hex {
            assert!(
                ev.is_listed(),
                "a non-hex probeset_ group stays: {listed:?}"
            );
        }
        for kept in [
            Some(&own_name),
            Some(&foreign.name),
            not_hex.as_ref().map(|e| &e.name),
        ]
        .into_iter()
        .flatten()
        {
            assert!(
                !reaped.removed.contains(kept),
                "{kept} reported removed: {reaped:?}"
            );
        }
        assert!(
            !stale.is_listed(),
            "a dead pid's event is removed: {listed:?}"
        );
        assert!(
            reaped.removed.contains(&stale.name),
            "{} not in Reaped::removed: {reaped:?}",
            stale.name
        );

        // The live probe still works after the reaper ran.
        call(reapfor_own, 4);
        assert_eq!(counter.get(1).unwrap(), 4);
        own.detach().await.unwrap();
        assert!(!listed_events("uprobe_events").contains(&own_name));
        assert!(our_events("uprobe_events", me).is_empty());

        let manual: Vec<String> = [Some(&foreign), not_hex.as_ref(), Some(&stale)]
            .into_iter()
            .flatten()
            .map(|e| e.name.clone())
            .collect();
        drop(foreign);
        drop(not_hex);
        drop(stale);
        let listed = listed_events("uprobe_events");
        assert!(
            !manual.iter().any(|m| listed.contains(m)),
            "the manual events {manual:?} are removed again: {listed:?}"
        );
    });
}
