//! The privilege matrix, as the kernel really checks it (host tier; root, which runs each
//! case as a child with fewer privileges through `setpriv`): root without `CAP_SYS_ADMIN`
//! but with `CAP_BPF` + `CAP_PERFMON`; a non-root uid with `CAP_BPF` + `CAP_PERFMON`; a
//! non-root uid with nothing. The parent loads the programs and hands one down as the
//! child's stdin (a plain one for the backends, a `uprobe_multi` one for the multi path);
//! each backend and the multi path is tried, with exact counts where an attach succeeds (read by the parent from
//! the counters) and the predicate and message where it fails.

mod common;

use std::collections::HashMap;
use std::hint::black_box;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use common::{can_run, symbol_of, tracefs};
use probeset::counter::{Counter, Flavour};
use probeset::{Backend, Error, Uprobe};

const CHILD: &str = "PROBESET_PRIVILEGE_CHILD";
const CALLS: u64 = 9;

#[inline(never)]
fn privilege_target(x: u64) -> u64 {
    black_box(x).wrapping_mul(71) ^ 0x7d
}

/// The cases, with the counter slot each one counts into.
const CASES: [(&str, u32); 4] = [("pmu", 1), ("tracefs", 2), ("auto", 3), ("multi", 4)];

/// In the child: tries each case named in `CHILD` and reports one line each on stderr.
fn child(cases: &str) {
    let exe = std::env::current_exe().unwrap();
    let symbol = symbol_of("privilege_target");
    for (case, slot) in CASES
        .into_iter()
        .filter(|(c, _)| cases.split(',').any(|x| x == *c))
    {
        let probe = Uprobe::new(&exe, &symbol).cookie(u64::from(slot));
        let r = match case {
            "pmu" => probe
                .backend(Backend::Pmu)
                .attach_blocking(std::io::stdin()),
            "tracefs" => probe
                .backend(Backend::Tracefs)
                .attach_blocking(std::io::stdin()),
            _ => probe.attach_blocking(std::io::stdin()),
        };
        let report = match r {
            Ok(attached) => {
                for i in 0..CALLS {
                    black_box(privilege_target(i));
                }
                let ok = format!("ok {:?} {:?}", attached.kind(), attached.backend());
                attached.detach_blocking().unwrap();
                ok
            }
            Err(e) => format!(
                "err denied={} unsupported={} {}",
                e.is_permission_denied(),
                e.is_not_supported(),
                one_line(&e)
            ),
        };
        eprintln!("probeset-privilege: {case} {report}");
    }
}

fn one_line(e: &Error) -> String {
    e.to_string().replace('\n', " ")
}

#[test]
fn privilege_child() {
    if let Ok(cases) = std::env::var(CHILD) {
        child(&cases);
    }
}

/// Runs this test binary's child under `setpriv args`, once with the plain program for the
/// backends and once with the multi one; its report, case -> line.
fn run_child(args: &[&str], plain: &Counter, multi: &Counter) -> HashMap<String, String> {
    let mut report = run_cases(args, plain, "pmu,tracefs,auto");
    report.extend(run_cases(args, multi, "multi"));
    report
}

fn run_cases(args: &[&str], prog: &Counter, cases: &str) -> HashMap<String, String> {
    // A copy any uid may run (the build directory need not be).
    let dir = std::env::temp_dir().join(format!("probeset-privileges-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("privileges");
    if !exe.exists() {
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    }
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let fd: OwnedFd = prog.program().try_clone_to_owned().unwrap();
    let out = Command::new("setpriv")
        .args(args)
        .arg(&exe)
        .args([
            "--exact",
            "privilege_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, cases)
        .stdin(Stdio::from(fd))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("setpriv runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "setpriv {args:?}: {:?}\n{stderr}",
        out.status
    );
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("probeset-privilege: "))
        .filter_map(|l| l.split_once(' '))
        .map(|(case, rest)| (case.to_string(), rest.to_string()))
        .collect()
}

/// What a scenario must show: for each case, `Ok(backend)` with exact counts, or a refusal
/// whose message names each of the given words.
enum Expect {
    Attached(&'static str),
    Denied(&'static [&'static str]),
}

#[test]
fn the_privilege_matrix() {
    if std::env::var_os(CHILD).is_some() || !can_run("the_privilege_matrix") {
        return;
    }
    tracefs();
    let plain = Counter::load(Flavour::Plain, 8).unwrap();
    let multi = Counter::load(Flavour::UprobeMulti, 8).unwrap();
    let nobody = ["--reuid=65534", "--regid=65534", "--clear-groups"];
    let caps = ["--inh-caps=+bpf,+perfmon", "--ambient-caps=+bpf,+perfmon"];
    let scenarios: Vec<(&str, Vec<&str>, [Expect; 4])> = vec![
        (
            "root without CAP_SYS_ADMIN",
            vec!["--bounding-set=-sys_admin"],
            [
                Expect::Denied(&["CAP_SYS_ADMIN"]),
                Expect::Attached("Some(Tracefs)"),
                Expect::Attached("Some(Tracefs)"),
                Expect::Attached("None"),
            ],
        ),
        (
            "a user with CAP_BPF and CAP_PERFMON",
            nobody.iter().chain(&caps).copied().collect(),
            [
                Expect::Denied(&["CAP_SYS_ADMIN"]),
                Expect::Denied(&["uprobe_events"]),
                Expect::Denied(&["CAP_SYS_ADMIN", "uprobe_events"]),
                Expect::Attached("None"),
            ],
        ),
        (
            "a user with nothing",
            nobody.to_vec(),
            [
                Expect::Denied(&["CAP_SYS_ADMIN"]),
                Expect::Denied(&["uprobe_events"]),
                Expect::Denied(&["CAP_SYS_ADMIN", "uprobe_events"]),
                Expect::Attached("None"),
            ],
        ),
    ];
    for (name, args, expect) in &scenarios {
        plain.reset().unwrap();
        multi.reset().unwrap();
        let report = run_child(args, &plain, &multi);
        println!("{name}: {report:#?}");
        for ((case, slot), want) in CASES.iter().zip(expect) {
            let line = report
                .get(*case)
                .unwrap_or_else(|| panic!("{name}: no report for {case}: {report:?}"));
            let counter = if *case == "multi" { &multi } else { &plain };
            let hits = counter.get(*slot).unwrap();
            match want {
                Expect::Attached(backend) => {
                    assert!(
                        line.starts_with("ok ") && line.ends_with(backend),
                        "{name} {case}: {line}"
                    );
                    assert_eq!(hits, CALLS, "{name} {case}: exact count");
                }
                Expect::Denied(words) => {
                    assert!(
                        line.starts_with("err denied=true "),
                        "{name} {case}: {line}"
                    );
                    for w in *words {
                        assert!(line.contains(w), "{name} {case}: names {w}: {line}");
                    }
                    assert_eq!(hits, 0, "{name} {case}: nothing attached");
                }
            }
        }
    }
    assert!(
        common::our_events("uprobe_events", std::process::id()).is_empty(),
        "nothing left"
    );
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("probeset-privileges-{}", std::process::id())),
    );
}
