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
    // The glob, bcc's p: prefix, and a regular expression name the same function.
    for args in [
        &["__x64_sys_getppid"][..],
        &["p:__x64_sys_getppid"],
        &["-r", "^__x64_sys_getppid$"],
    ] {
        let out = run_with_child(args, "child_calls_getppid", 123);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(
            count_of(&stdout, "__x64_sys_getppid").is_some_and(|n| n >= 123),
            "{args:?}: {stdout}"
        );
    }
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

/// The function rows of a table: `(name, count)`, from the line after `FUNC` up to the
/// first line that is not a row.
fn table_rows(stdout: &str) -> Vec<(String, u64)> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("FUNC"))
        .skip(1)
        .map_while(|l| {
            let (name, count) = l.trim_end().rsplit_once(' ')?;
            Some((name.trim().to_owned(), count.parse().ok()?))
        })
        .collect()
}

/// `funccount PATTERN | head -1`: the reader goes away after the first line while
/// funccount has nothing more to write. It must notice, detach and exit 141 (the status
/// a shell reports for a tool SIGPIPE ended) at once, without a panic.
#[test]
fn head_one_exits_quietly_and_detaches() {
    use std::io::{BufRead as _, BufReader, Read as _};
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    if !can_run("head_one_exits_quietly_and_detaches") {
        return;
    }
    for args in [&["c:getppid"][..], &["--per-probe", "c:getppid"], &[]] {
        let mut child = Command::new(funccount())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run funccount");
        let pid = child.id();
        let mut first = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut first).unwrap();
        assert!(first.starts_with("Tracing "), "{args:?}: {first}");
        drop(stdout);
        let closed = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if closed.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("{args:?}: funccount still runs 10 s after its stdout was closed");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        eprintln!(
            "$ funccount {args:?} | head -1: {status:?} after {:?}\n{stderr}",
            closed.elapsed()
        );
        assert_eq!(status.code(), Some(141), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
        assert!(
            common::our_events("uprobe_events", pid).is_empty(),
            "{args:?}: tracefs events of funccount's pid are left"
        );
    }
}

#[test]
fn a_command_that_cannot_run_is_an_error() {
    if !can_run("a_command_that_cannot_run_is_an_error") {
        return;
    }
    let out = run(&["c:getpid", "--", "/no/such/cmd"]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("funccount: cannot run /no/such/cmd: No such file or directory"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("FUNC") && !stdout.contains("attach:"),
        "{stdout}"
    );
    let out = run(&["c:getpid", "--", "probeset-no-such-command"]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not found in PATH"), "{stderr}");
}

#[test]
fn regexp_matches_function_names() {
    if !can_run("regexp_matches_function_names") {
        return;
    }
    // -r is --regexp now (not --ret): only getpid and getppid match, anchored.
    let out = run_with_child(&["-r", "c:^getp(p)?id$"], "child_calls_getppid", 77);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Tracing 2 functions"), "{stdout}");
    assert_eq!(count_of(&stdout, "getppid"), Some(77), "{stdout}");
    let rows = table_rows(&stdout);
    assert!(!rows.is_empty(), "{stdout}");
    for (name, _) in &rows {
        assert!(name == "getpid" || name == "getppid", "{name}: {stdout}");
    }
    // The brief's example: both of libc's are IFUNCs, so -l shows them skipped, and why.
    let out = run(&["-l", "-r", "c:str(len|cmp)$"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with("skipped strcmp: ifunc resolver"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("skipped strlen: ifunc resolver"),
        "{stdout}"
    );
    // Without -l, nothing to count is an error naming the skipped ones.
    let out = run(&["-r", "c:str(len|cmp)$"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("2 skipped"),
        "{out:?}"
    );
}

#[test]
fn json_is_one_object_with_the_counts() {
    if !can_run("json_is_one_object_with_the_counts") {
        return;
    }
    let out = run(&["--json"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one object: {stdout}");
    let value: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let count = |name: &str| {
        value["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["function"] == name)
            .and_then(|r| r["count"].as_u64())
    };
    assert_eq!(count("getpid"), Some(1001), "{stdout}");
    assert_eq!(count("getuid"), Some(1000), "{stdout}");
    assert!(count("malloc").is_some_and(|n| n >= 2000), "{stdout}");
    assert_eq!(value["total"], true, "{stdout}");
    assert!(
        value["mode"].as_str().is_some_and(|m| !m.is_empty()),
        "{stdout}"
    );
    assert!(value["skipped"].is_object(), "{stdout}");
    assert!(
        value["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["matches"] != false),
        "{stdout}"
    );
    // The report's other lines go to stderr.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("detach: "),
        "{out:?}"
    );

    // The command shares funccount's stdout: the object is the last line.
    let out = run_with_child(&["--json", "c:getppid"], "child_calls_getppid", 44);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let value: serde_json::Value = serde_json::from_str(last).expect("JSON");
    assert_eq!(value["rows"][0]["function"], "getppid", "{value}");
    assert_eq!(value["rows"][0]["count"], 44, "{value}");
}

#[test]
fn list_shows_the_functions_and_attaches_nothing() {
    if !can_run("list_shows_the_functions_and_attaches_nothing") {
        return;
    }
    let out = run(&["-l", "c:getp*id"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let functions: Vec<&str> = stdout
        .lines()
        .filter(|l| !l.starts_with("skipped "))
        .collect();
    for name in ["getpid", "getppid", "getpgid"] {
        assert!(functions.contains(&name), "{name}: {stdout}");
    }
    assert!(
        functions
            .iter()
            .all(|f| f.starts_with("getp") && f.ends_with("id")),
        "{stdout}"
    );
    for line in ["Tracing", "attach:", "detach:", "FUNC"] {
        assert!(!stdout.contains(line), "{line}: {stdout}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nothing attached"), "{stderr}");
    // -l runs no command either: one that does not exist is never looked for.
    let out = run(&["-l", "--json", "c:getppid", "--", "/no/such/cmd"]);
    assert!(out.status.success(), "{out:?}");
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        value["functions"],
        serde_json::json!(["getppid"]),
        "{value}"
    );
}

/// `HH:MM:SS` at the start of `line`.
fn starts_with_clock(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() >= 8
        && [0, 1, 3, 4, 6, 7].iter().all(|&i| b[i].is_ascii_digit())
        && b[2] == b':'
        && b[5] == b':'
}

#[test]
fn timestamps_with_intervals() {
    if !can_run("timestamps_with_intervals") {
        return;
    }
    let out = run(&["-T", "-i", "0.3", "-d", "1", "c:getppid"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stamped: Vec<&str> = stdout.lines().filter(|l| starts_with_clock(l)).collect();
    assert!(stamped.len() >= 3, "intervals and the total: {stdout}");
    assert!(stamped[0].ends_with("[0.3 s]"), "{stdout}");
    assert!(
        stamped.last().unwrap()[9..].starts_with("Total over "),
        "{stdout}"
    );
}

#[test]
fn option_spellings() {
    use std::time::{Duration, Instant};
    if !can_run("option_spellings") {
        return;
    }
    for duration in [
        &["-d1"][..],
        &["-d", "1"],
        &["--duration=1"],
        &["--duration", "1"],
    ] {
        let mut args = duration.to_vec();
        args.push("c:getppid");
        let start = Instant::now();
        let out = run(&args);
        let took = start.elapsed();
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(8),
            "{args:?}: {took:?}"
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("FUNC"),
            "{args:?}"
        );
    }
    let me = std::process::id().to_string();
    let glued = format!("-p{me}");
    for pid in [&[glued.as_str()][..], &["-p", &me], &["--pid", &me]] {
        let mut args = pid.to_vec();
        args.extend(["-d", "0.2", "c:getppid"]);
        let out = run(&args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!(" in pid {me}.")),
            "{args:?}: {stdout}"
        );
    }
    // bcc's p: prefix names the same functions.
    let out = run_with_child(&["p:c:getppid"], "child_calls_getppid", 19);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        count_of(&String::from_utf8_lossy(&out.stdout), "getppid"),
        Some(19)
    );
}

#[test]
fn unsupported_prefixes_are_refused_in_one_line() {
    for (pattern, prefix) in [
        ("t:sched:sched_fork", "t: (tracepoint)"),
        ("u:node:gc*", "u: (USDT probe)"),
    ] {
        let out = run(&[pattern]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&format!("the {prefix} prefix is not supported")),
            "{stderr}"
        );
        assert!(out.stdout.is_empty(), "{out:?}");
    }
}

#[test]
fn kernel_patterns_list_without_kprobes() {
    if !can_run("kernel_patterns_list_without_kprobes") {
        return;
    }
    // Listing reads kallsyms: it works on a kernel without kprobes too.
    for (args, expected) in [
        (
            &["-l", "-r", "^vfs_(read|write)$"][..],
            &["vfs_read", "vfs_write"][..],
        ),
        (&["-l", "p:vfs_read"], &["vfs_read"]),
    ] {
        let out = run(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let listed: Vec<&str> = stdout.lines().collect();
        assert_eq!(listed, expected, "{args:?}: {stdout}");
    }
}

/// Not a test of its own: the function `names_are_demangled` counts (by its demangled
/// name) in the command it runs.
#[test]
fn child_runs_once() {
    if std::env::var_os(CHILD_CALLS).is_some() {
        std::hint::black_box(std::process::id());
    }
}

#[test]
fn names_are_demangled() {
    if !can_run("names_are_demangled") {
        return;
    }
    // The regular expression matches the demangled name; the row shows it, without the
    // hash suffix of the Rust symbol.
    let exe = std::env::current_exe().unwrap();
    let pattern = format!("{}:::child_runs_once$", exe.display());
    let out = run_with_child(&["-r", &pattern], "child_runs_once", 1);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        table_rows(&stdout),
        [("funccount::child_runs_once".to_owned(), 1)],
        "{stdout}"
    );
}

#[test]
fn skipped_functions_are_counted_per_reason() {
    if !can_run("skipped_functions_are_counted_per_reason") {
        return;
    }
    // libc's open64 is an alias of open (one address): skipped, and said so.
    let out = run(&["-d", "0.1", "c:open*"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("(-v lists them)"), "{stdout}");
    assert!(
        stdout.lines().any(
            |l| l.trim_start().split_once("  ").is_some_and(|(n, reason)| {
                n.parse::<u32>().is_ok() && reason == "alias of another name at the same address"
            })
        ),
        "{stdout}"
    );
    assert!(
        !stdout.contains("open64"),
        "a count, not the list: {stdout}"
    );
    let out = run(&["-v", "-d", "0.1", "c:open*"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("  open64: alias of open\n"), "{stdout}");
}
