//! The stale-event reaper against real tracefs events: it removes the events of a process
//! that was killed (`SIGKILL`) mid-attach, and of owners proven gone (no such pid, or a pid
//! reused by a process that started at another time); it never touches another tool's events,
//! a live process's events (also one in another pid namespace, whose pid means nothing here),
//! or a group that only looks like ours; and a process's first tracefs probe does not wait for
//! someone else's busy events (host tier; root).

mod common;

use std::hint::black_box;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use common::{
    can_run, child_mode, dead_owner_group, dead_pid, event_of_line, exe, hear, is_listed,
    listed_events, offset_of, our_events, own_pid_namespace, owner_group, pid_is_dead, runtime,
    start_time_of, symbol_of, tell, tracefs, write_events, ChildTest,
};
use probeset::counter::{Counter, Flavour};
use probeset::{Backend, Link, Uprobe};

/// Set in the environment of the child process that `reaper_child` runs as.
const CHILD_ENV: &str = "PROBESET_REAPER_CHILD";
/// What the child prints once its probes are attached.
const READY: &str = "PROBESET_REAPER_CHILD_READY";

/// The reaper removes every dead process's events, so the tests here must not reap while
/// another one has a killed child whose events it is about to check.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs a test alone among the tests here (see [`SERIAL`]), with tracefs mounted.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    let guard = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    tracefs();
    guard
}

/// The `PATH:0xOFFSET` of function `name` of this executable, for an event written by hand
/// (`f` is called once, so the linker keeps it).
fn target_of(f: fn(u64) -> u64, name: &str) -> String {
    call(f, 1);
    format!("{}:{:#x}", exe().display(), offset_of(name))
}

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
#[inline(never)]
fn reapns_alpha(x: u64) -> u64 {
    black_box(x).wrapping_mul(107) ^ 0x38
}
#[inline(never)]
fn reapns_beta(x: u64) -> u64 {
    black_box(x).wrapping_mul(109) ^ 0x39
}
#[inline(never)]
fn reapns_gamma(x: u64) -> u64 {
    black_box(x).wrapping_mul(113) ^ 0x3a
}
#[inline(never)]
fn reapns_churn(x: u64) -> u64 {
    black_box(x).wrapping_mul(127) ^ 0x3b
}
#[inline(never)]
fn reapjudge_target(x: u64) -> u64 {
    black_box(x).wrapping_mul(131) ^ 0x3c
}
#[inline(never)]
fn reapfirst_busy(x: u64) -> u64 {
    black_box(x).wrapping_mul(137) ^ 0x3d
}
#[inline(never)]
fn reapfirst_probe(x: u64) -> u64 {
    black_box(x).wrapping_mul(139) ^ 0x3e
}

fn call(f: fn(u64) -> u64, n: u64) {
    for i in 0..n {
        black_box(black_box(f)(i));
    }
}

/// Tracefs uprobes on the functions `names` of this executable, cookie = index.
async fn hold(counter: &Counter, names: [&str; 3]) -> Vec<Link> {
    let mut held = Vec::new();
    for (cookie, name) in (0..).zip(names) {
        let link = Uprobe::new(exe(), symbol_of(name))
            .cookie(cookie)
            .backend(Backend::Tracefs)
            .attach(counter)
            .await
            .unwrap();
        held.push(link);
    }
    held
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
        let held = hold(&counter, ["reapkid_alpha", "reapkid_beta", "reapkid_gamma"]).await;
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
    let _serial = serial();
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
        is_listed("uprobe_events", &self.name)
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
    /// The `probeset_<pid>_<hex>` format of earlier versions, of a dead pid: a pid alone
    /// proves nothing (another pid namespace, a reused pid), so it stays.
    old_format: ManualEvent,
    /// Ours in form, of a dead owner in this pid namespace: stale, the reaper removes it.
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
        let old_format = ManualEvent::create(&format!("probeset_{dead}_{}", random_hex()), target)
            .expect("write an old-format event");
        assert!(old_format.is_listed());
        let stale = ManualEvent::create(
            &owner_group(
                u32::try_from(dead).unwrap(),
                own_pid_namespace(),
                start_time_of(std::process::id()).unwrap(),
            ),
            target,
        )
        .expect("write a stale event");
        assert!(stale.is_listed());
        Manual {
            foreign,
            not_hex,
            old_format,
            stale,
        }
    }

    /// The names of the events, as `group/event`.
    fn names(&self) -> Vec<String> {
        [
            Some(&self.foreign),
            self.not_hex.as_ref(),
            Some(&self.old_format),
            Some(&self.stale),
        ]
        .into_iter()
        .flatten()
        .map(|e| e.name.clone())
        .collect()
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
    let _serial = serial();
    let target = target_of(reapfor_foreign, "reapfor_foreign");
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

        let manual = Manual::create(dead, &target);
        let Manual {
            foreign,
            not_hex,
            old_format,
            stale,
        } = &manual;

        let reaped = probeset::tracefs::reap_stale().await.unwrap();
        eprintln!(
            "reaper: removed {:?}; failed {:?}",
            reaped.removed, reaped.failed
        );

        let listed = listed_events("uprobe_events");
        assert!(
            is_listed("uprobe_events", &own_name),
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
        assert!(
            old_format.is_listed(),
            "an old-format probeset_<pid>_<hex> group stays: {listed:?}"
        );
        for kept in [
            Some(&own_name),
            Some(&foreign.name),
            not_hex.as_ref().map(|e| &e.name),
            Some(&old_format.name),
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

        let names = manual.names();
        drop(manual);
        let listed = listed_events("uprobe_events");
        assert!(
            !names.iter().any(|m| listed.contains(m)),
            "the manual events {names:?} are removed again: {listed:?}"
        );
    });
}

/// The mode of the child that `reaper_leaves_a_live_process_of_another_pid_namespace_alone`
/// runs, in a pid namespace of its own.
const NS_CHILD: &str = "PROBESET_REAPER_NS_CHILD";
/// The pid that child has in its namespace.
const NS_CHILD_PID: &str = "PROBESET_REAPER_NS_CHILD_PID";
/// The mode of the child that `first_tracefs_probe_does_not_wait_for_busy_stale_events` runs.
const FIRST_CHILD: &str = "PROBESET_REAPER_FIRST_CHILD";
/// The busy stale event that child's reaper meets, as `group/event`.
const FIRST_CHILD_BUSY: &str = "PROBESET_REAPER_FIRST_CHILD_BUSY";

const PATIENCE: Duration = Duration::from_secs(180);

/// Not a test of its own: the child of `reaper_leaves_a_live_process_of_another_pid_namespace_alone`.
/// Holds 3 tracefs uprobes and cycles a fourth (attach, count, detach) until the parent
/// closes stdin, then says how many cycles failed.
#[test]
fn reaper_ns_child() {
    if !child_mode(NS_CHILD) {
        return;
    }
    let want: u32 = std::env::var(NS_CHILD_PID).unwrap().parse().unwrap();
    assert_eq!(
        std::process::id(),
        want,
        "the pid it was given in its namespace"
    );
    tracefs();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    std::thread::spawn({
        let stop = std::sync::Arc::clone(&stop);
        move || {
            while hear().is_some() {}
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 4).unwrap();
        let held = hold(&counter, ["reapns_alpha", "reapns_beta", "reapns_gamma"]).await;
        let names: Vec<&str> = held.iter().map(|l| l.tracefs_event().unwrap()).collect();
        tell("HELD", &names.join(" "));
        let churn = Uprobe::new(exe(), symbol_of("reapns_churn"))
            .cookie(3)
            .backend(Backend::Tracefs);
        let (mut cycles, mut failed) = (0u64, 0u64);
        let deadline = Instant::now() + Duration::from_secs(300);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
            cycles += 1;
            match churn.clone().attach(&counter).await {
                Ok(link) => {
                    call(reapns_churn, 1);
                    if link.detach().await.is_err() {
                        failed += 1;
                    }
                }
                Err(e) => {
                    eprintln!("reaper_ns_child: cycle {cycles}: {e}");
                    failed += 1;
                }
            }
        }
        call(reapns_alpha, 1);
        call(reapns_beta, 2);
        call(reapns_gamma, 3);
        let counts = counter.counts().unwrap();
        assert_eq!(&counts[..3], &[1, 2, 3], "the held probes still count");
        assert_eq!(counts[3], cycles - failed, "each cycle counted its call");
        for link in held {
            link.detach().await.unwrap();
        }
        tell("CHURNED", &format!("cycles={cycles} failed={failed}"));
    });
}

/// A pid below `pid_max` that no process has here, so that a child can have it in a pid
/// namespace of its own: a reaper that judged by pid alone would take the child for dead.
fn pid_dead_here() -> u32 {
    let pid_max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = (1000..pid_max)
        .rev()
        .find(|&p| pid_is_dead(p))
        .expect("a free pid");
    u32::try_from(pid).unwrap()
}

#[test]
fn reaper_leaves_a_live_process_of_another_pid_namespace_alone() {
    if !can_run("reaper_leaves_a_live_process_of_another_pid_namespace_alone") {
        return;
    }
    let _serial = serial();
    let pid = pid_dead_here();
    // pid 1 of the new namespace (sh) makes the next pid `pid` and starts the child.
    let script = format!(
        "echo {} > /proc/sys/kernel/ns_last_pid && \"$0\" \"$@\"; status=$?; exit $status",
        pid - 1
    );
    let mut child = ChildTest::spawn(
        &[
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "sh",
            "-c",
            &script,
        ],
        "reaper_ns_child",
        &[(NS_CHILD, "1".to_string()), (NS_CHILD_PID, pid.to_string())],
    );
    let held: Vec<String> = child
        .expect("HELD", PATIENCE)
        .split(' ')
        .map(str::to_string)
        .collect();
    let ours = own_pid_namespace().to_string();
    for name in &held {
        let fields: Vec<&str> = name.split('/').next().unwrap().split('_').collect();
        assert_eq!(
            fields[1],
            pid.to_string(),
            "{name} names the pid the child sees"
        );
        assert_ne!(fields[2], ours, "{name} names the child's pid namespace");
    }
    assert!(
        pid_is_dead(i32::try_from(pid).unwrap()),
        "pid {pid} is still free here"
    );
    let prefix = format!("probeset_{pid}_");
    let rt = runtime();
    for round in 0..20 {
        let t = Instant::now();
        let reaped = rt.block_on(probeset::tracefs::reap_stale()).unwrap();
        let took = t.elapsed();
        assert!(
            !reaped.removed.iter().any(|n| n.starts_with(&prefix)),
            "round {round}: the reaper removed the live child's events: {reaped:?}"
        );
        assert!(
            !reaped.failed.iter().any(|(n, _)| n.starts_with(&prefix)),
            "round {round}: the reaper tried the live child's events: {reaped:?}"
        );
        for name in &held {
            assert!(
                is_listed("uprobe_events", name),
                "round {round}: {name} is gone"
            );
        }
        eprintln!("reaper: round {round} with the namespaced child churning took {took:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.close_stdin();
    let churned = child.expect("CHURNED", PATIENCE);
    eprintln!("reaper: namespaced child: {churned}");
    assert!(churned.ends_with(" failed=0"), "{churned}");
    assert!(!churned.starts_with("cycles=0 "), "{churned}");
    child.wait_success();
    let left = our_events("uprobe_events", pid);
    assert!(
        left.is_empty(),
        "the child removed its events itself: {left:?}"
    );
}

#[test]
fn reaper_judges_owners_by_pid_namespace_and_start_time() {
    if !can_run("reaper_judges_owners_by_pid_namespace_and_start_time") {
        return;
    }
    let _serial = serial();
    let target = target_of(reapjudge_target, "reapjudge_target");
    let ns = own_pid_namespace();
    let me = std::process::id();
    let my_start = start_time_of(me).unwrap();
    let init_start = start_time_of(1).unwrap();
    let dead = u32::try_from(dead_pid()).unwrap();
    let rt = runtime();
    let counter = Counter::load(Flavour::Plain, 2).unwrap();
    // This process's own reaper run is over before the events below exist.
    rt.block_on(warm_up(&counter));
    let event = |group: String| ManualEvent::create(&group, &target).unwrap();
    // Proven gone: no process has the pid; or the pid (this process's, init's) is held by a
    // process that started at another time.
    let gone = [
        event(owner_group(dead, ns, my_start)),
        event(owner_group(me, ns, my_start + 1)),
        event(owner_group(1, ns, init_start + 1)),
    ];
    // Not proven: this very process; init; a dead pid, but of another pid namespace; a pid
    // of the format of earlier versions.
    let kept = [
        event(owner_group(me, ns, my_start)),
        event(owner_group(1, ns, init_start)),
        event(owner_group(dead, ns.wrapping_add(1), my_start)),
        event(format!("probeset_{dead}_{}", random_hex())),
    ];
    let reaped = rt.block_on(probeset::tracefs::reap_stale()).unwrap();
    eprintln!(
        "reaper: removed {:?}; failed {:?}",
        reaped.removed, reaped.failed
    );
    for ev in &gone {
        assert!(!ev.is_listed(), "{} is removed", ev.name);
        assert!(
            reaped.removed.contains(&ev.name),
            "{} in {reaped:?}",
            ev.name
        );
    }
    for ev in &kept {
        assert!(ev.is_listed(), "{} stays", ev.name);
        assert!(
            !reaped.removed.contains(&ev.name),
            "{} in {reaped:?}",
            ev.name
        );
    }
    let names: Vec<String> = kept.iter().map(|e| e.name.clone()).collect();
    drop(kept);
    let listed = listed_events("uprobe_events");
    assert!(
        !names.iter().any(|n| listed.contains(n)),
        "cleaned up: {listed:?}"
    );
}

/// Not a test of its own: the child of `first_tracefs_probe_does_not_wait_for_busy_stale_events`.
/// Times its first tracefs probe, then frees the busy event and times how long until its
/// reaper's retry removed it.
#[test]
fn reaper_first_child() {
    if !child_mode(FIRST_CHILD) {
        return;
    }
    let busy = std::env::var(FIRST_CHILD_BUSY).unwrap();
    tracefs();
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 2).unwrap();
        let t = Instant::now();
        let link = Uprobe::new(exe(), symbol_of("reapfirst_probe"))
            .backend(Backend::Tracefs)
            .attach(&counter)
            .await
            .unwrap();
        let first = t.elapsed();
        call(reapfirst_probe, 2);
        assert_eq!(counter.get(0).unwrap(), 2);
        assert!(
            is_listed("uprobe_events", &busy),
            "{busy} is busy: it cannot have been removed yet"
        );
        tell("FIRST", &first.as_micros().to_string());
        std::fs::write(tracefs().join("events").join(&busy).join("enable"), "0").unwrap();
        let t = Instant::now();
        while is_listed("uprobe_events", &busy) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let gone = !is_listed("uprobe_events", &busy);
        tell(
            "RETRIED",
            &format!("gone={gone} after_us={}", t.elapsed().as_micros()),
        );
        link.detach().await.unwrap();
    });
}

/// Keeps a tracefs event enabled (which makes its removal `EBUSY`) until dropped.
struct Enabled(std::path::PathBuf);

impl Enabled {
    fn new(event: &str) -> Enabled {
        let path = tracefs().join("events").join(event).join("enable");
        std::fs::write(&path, "1").unwrap();
        Enabled(path)
    }
}

impl Drop for Enabled {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, "0");
    }
}

#[test]
fn first_tracefs_probe_does_not_wait_for_busy_stale_events() {
    if !can_run("first_tracefs_probe_does_not_wait_for_busy_stale_events") {
        return;
    }
    let _serial = serial();
    let target = target_of(reapfirst_busy, "reapfirst_busy");
    let stale = ManualEvent::create(&dead_owner_group(), &target).unwrap();
    let enabled = Enabled::new(&stale.name);
    assert_eq!(
        write_events("uprobe_events", &format!("-:{}", stale.name))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EBUSY),
        "an enabled event is busy"
    );
    let mut child = ChildTest::spawn(
        &[],
        "reaper_first_child",
        &[
            (FIRST_CHILD, "1".to_string()),
            (FIRST_CHILD_BUSY, stale.name.clone()),
        ],
    );
    let first = Duration::from_micros(child.expect("FIRST", PATIENCE).parse().unwrap());
    let retried = child.expect("RETRIED", PATIENCE);
    child.wait_success();
    drop(enabled);
    eprintln!(
        "reaper: first tracefs attach with a busy stale event took {first:?}; then {retried}"
    );
    assert!(
        first < Duration::from_secs(1),
        "the first probe waited {first:?} for someone else's busy event"
    );
    assert!(
        retried.starts_with("gone=true "),
        "the busy event was retried: {retried}"
    );
    assert!(!stale.is_listed());
}
