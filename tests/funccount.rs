//! `examples/funccount.rs` end to end: the compiled example is run as a user would run it,
//! and its table is checked against calls this test makes a known number of times (host
//! tier: uprobes; VM tier: a kprobe pattern).

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::can_run;

/// Set in the environment of the command funccount runs: how often the child calls the
/// function under test.
const CHILD_CALLS: &str = "PROBESET_FUNCCOUNT_CHILD_CALLS";

/// Builds the example with the profile of this test and returns its path.
fn funccount() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        // target/<profile>/deps/funccount-<hash> -> target/<profile>
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
        if std::env::var_os("PROBESET_VM").is_some() {
            // In the VM there is no cargo: `cargo xtask vm` packs the example, built with
            // the tests' profile, at its host path.
            return profile_dir.join("examples/funccount");
        }
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--example", "funccount"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        if let Some(target) = profile_dir.parent() {
            build.arg("--target-dir").arg(target);
        }
        let status = build.status().expect("run cargo build --example funccount");
        assert!(status.success(), "cargo build --example funccount failed");
        let path = profile_dir.join("examples/funccount");
        assert!(path.exists(), "{path:?} was not built");
        path
    })
    .clone()
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(funccount())
        .args(args)
        .output()
        .expect("run funccount");
    eprintln!(
        "$ funccount {}\n--- status: {:?}\n--- stdout:\n{}--- stderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Whether this kernel makes uprobe multi links (6.6+): found by attaching one.
fn kernel_has_uprobe_multi() -> bool {
    use probeset::counter::{Counter, Flavour};
    let Ok(counter) = Counter::load(Flavour::UprobeMulti, 1) else {
        return false;
    };
    let libc = probeset::discovery::resolve_library_blocking("c", None).expect("libc");
    common::runtime().block_on(async {
        let mut set = probeset::ProbeSet::new(&counter).unwrap();
        // A kernel that does not know uprobe_multi ignores the program's expected attach
        // type: the program then behaves, and is classified, as a plain one.
        let ok = set
            .insert(probeset::Uprobe::new(libc, "getppid"))
            .await
            .is_ok()
            && set.program_kind() == Some(probeset::ProgramKind::UprobeMulti);
        set.detach().await.unwrap();
        ok
    })
}

/// The count the table shows for `label`, if it has a row for it.
fn count_of(stdout: &str, label: &str) -> Option<u64> {
    stdout.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next() == Some(label))
            .then(|| fields.next()?.parse().ok())
            .flatten()
    })
}

/// Not a test of its own: the command funccount runs in
/// `counts_a_commands_calls_exactly`. Without the variable it does nothing.
#[test]
fn child_calls_getpid() {
    let Some(n) = std::env::var_os(CHILD_CALLS) else {
        return;
    };
    let n: u32 = n.to_str().unwrap().parse().unwrap();
    for _ in 0..n {
        // std::process::id() is libc's getpid(), which glibc (2.25+) does not cache.
        std::hint::black_box(std::process::id());
    }
}

/// The same for `getppid`.
#[test]
fn child_calls_getppid() {
    let Some(n) = std::env::var_os(CHILD_CALLS) else {
        return;
    };
    let n: u32 = n.to_str().unwrap().parse().unwrap();
    for _ in 0..n {
        std::hint::black_box(std::os::unix::process::parent_id());
    }
}

/// Runs `funccount ARGS -- <this test binary> --exact TEST`, the child calling its
/// function `calls` times.
fn run_with_child(args: &[&str], test: &str, calls: u32) -> Output {
    let out = Command::new(funccount())
        .args(args)
        .arg("--")
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_CALLS, calls.to_string())
        .output()
        .expect("run funccount");
    eprintln!(
        "$ funccount {} -- {test} ({calls} calls)\n--- status: {:?}\n--- stdout:\n{}--- stderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn counts_a_commands_calls_exactly() {
    if !can_run("counts_a_commands_calls_exactly") {
        return;
    }
    for (test, function, calls) in [
        ("child_calls_getpid", "getpid", 250),
        ("child_calls_getppid", "getppid", 77),
    ] {
        let pattern = format!("c:{function}");
        let out = run_with_child(&[&pattern], test, calls);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            count_of(&stdout, function),
            Some(u64::from(calls)),
            "the command's calls, and only those (pid filter): {stdout}"
        );
        assert!(
            stdout.contains("command exited: exit status: 0"),
            "{stdout}"
        );
        assert!(stdout.contains("attach: "), "{stdout}");
        assert!(stdout.contains("detach: "), "{stdout}");
    }

    // Both directions, both programs: entry and return probes count the same.
    for extra in [&["--ret"][..], &["--per-probe"], &["--ret", "--per-probe"]] {
        let mut args = extra.to_vec();
        args.push("c:getppid");
        let out = run_with_child(&args, "child_calls_getppid", 31);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{extra:?}: {out:?}");
        assert_eq!(
            count_of(&stdout, "getppid"),
            Some(31),
            "{extra:?}: {stdout}"
        );
        // Without uprobe_multi (before 6.6) funccount falls back to perf-event links.
        let multi = kernel_has_uprobe_multi();
        let mode = if extra.contains(&"--per-probe") || !multi {
            "perf-event links"
        } else {
            "uprobe_multi"
        };
        assert!(stdout.contains(mode), "{extra:?}: {stdout}");
    }
}

#[test]
fn no_arguments_counts_the_builtin_workload() {
    if !can_run("no_arguments_counts_the_builtin_workload") {
        return;
    }
    let out = run(&[]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("MISMATCH"), "{stdout}");
    // The workload calls getpid 1000 times (+1) and getuid 1000 times, in this process only.
    assert_eq!(count_of(&stdout, "getpid"), Some(1001), "{stdout}");
    assert_eq!(count_of(&stdout, "getuid"), Some(1000), "{stdout}");
    assert!(
        count_of(&stdout, "malloc").is_some_and(|n| n >= 2000),
        "{stdout}"
    );
    let rows = stdout
        .lines()
        .skip_while(|l| !l.starts_with("FUNC"))
        .skip(1)
        .take_while(|l| !l.starts_with('('))
        .filter(|l| count_of(l, l.split_whitespace().next().unwrap_or("")).is_some_and(|n| n > 0))
        .count();
    assert!(rows >= 10, "{rows} rows: {stdout}");
    for line in ["attach: ", "mode: ", "detach: "] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
}

fn has_kprobes() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || probeset::tracefs::mount_point().is_some_and(|t| t.join("kprobe_events").exists())
}

#[test]
fn kprobe_pattern_without_kprobes_is_one_line_and_exit_2() {
    if !can_run("kprobe_pattern_without_kprobes_is_one_line_and_exit_2") {
        return;
    }
    if has_kprobes() {
        // Not a skip: on a kernel with kprobes, kprobe_pattern_counts_a_commands_syscalls
        // is the test, and this one has nothing to check.
        eprintln!(
            "note: this kernel has kprobes; kprobe_pattern_counts_a_commands_syscalls covers it"
        );
        return;
    }
    let out = run(&["-d", "1", "vfs_read"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with("funccount: kprobes are not supported on this kernel"),
        "{stderr}"
    );
    assert!(stderr.contains("CONFIG_KPROBES"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// VM tier: a kprobe on the getppid syscall counts at least the command's calls (kprobes
/// count in every process).
#[test]
fn kprobe_pattern_counts_a_commands_syscalls() {
    if !can_run("kprobe_pattern_counts_a_commands_syscalls") {
        return;
    }
    if !has_kprobes() || !cfg!(target_arch = "x86_64") {
        common::skip_tier(
            "kprobe_pattern_counts_a_commands_syscalls",
            "no kprobes in this kernel (CONFIG_KPROBES unset); runs in the VM tier",
        );
        return;
    }
    let out = run_with_child(&["__x64_sys_getppid"], "child_calls_getppid", 123);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        count_of(&stdout, "__x64_sys_getppid").is_some_and(|n| n >= 123),
        "{stdout}"
    );
}

#[test]
fn bad_usage_exits_2_with_usage() {
    for args in [
        &["--bogus"][..],
        &["-p", "x", "c:malloc"],
        &["c:"],
        &["-p", "1", "vfs_read"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("funccount: "), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let out = run(&["c:probeset_no_such_function_*"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no function matches"), "{stderr}");
}
