//! The kprobe part, in the VM tier's guest (`--kprobes`), and its results read back on the
//! host (`--kprobe-results`).

use std::path::Path;
use std::process::Command;

use crate::{
    out_dir, report, run_matrix, setup_paths, table, write_results, Config, Kind, Outcome, Size,
    TARGET_FUNCTIONS,
};

/// Globs of kernel functions for the kprobe runs, in order of preference: syscall entry points
/// (`__x64_sys_getpid` is the one each run checks), the 32-bit ones (a 64-bit guest never calls
/// them), then sysfs `show` functions. Few are called at all while a run is timed.
const KPROBE_GLOBS: [&str; 4] = [
    "__x64_sys_*",
    "__ia32_sys_*",
    "__ia32_compat_sys_*",
    "*_show",
];

/// Chooses the kernel functions of the kprobe runs: `__x64_sys_getpid` first, then up to
/// [`TARGET_FUNCTIONS`] in all from [`KPROBE_GLOBS`], found by `probeset::discovery` (traceable,
/// not blacklisted, unique names, not in a module). Written to `kprobe_symbols.txt`.
fn kprobe_setup() -> usize {
    let mut names = vec!["__x64_sys_getpid".to_owned()];
    let mut seen: std::collections::HashSet<String> = names.iter().cloned().collect();
    for glob in KPROBE_GLOBS {
        if names.len() >= TARGET_FUNCTIONS {
            break;
        }
        let found = probeset::discovery::kernel_functions_blocking(glob).expect("kernel functions");
        for f in found.functions {
            if f.module.is_none() && seen.insert(f.name.clone()) {
                names.push(f.name);
            }
        }
    }
    names.truncate(TARGET_FUNCTIONS);
    let text: String = names.iter().map(|n| format!("{n}\n")).collect();
    std::fs::create_dir_all(out_dir()).unwrap();
    std::fs::write(out_dir().join("kprobe_symbols.txt"), text).unwrap();
    names.len()
}

/// The kprobe matrix (in the VM, under TCG: per-probe detach is ~50 ms a probe there, so
/// n = 1000 per probe runs once): (configuration, size, runs). bpftrace when the VM has it.
fn kprobe_matrix(quick: bool, bpftrace: bool) -> Vec<(Config, Size, usize)> {
    let multis = [Config::ProbesetMulti, Config::RawMulti, Config::LibbpfMulti];
    let mut singles = vec![
        Config::ProbesetSet,
        Config::ProbesetLinks,
        Config::RawPerf,
        Config::LibbpfPerProbe,
        Config::AyaPerProbe,
    ];
    if bpftrace {
        singles.push(Config::Bpftrace);
    }
    let mut m = Vec::new();
    if quick {
        for c in multis {
            m.push((c, Size::Target(1000), 2));
        }
        for c in singles {
            m.push((c, Size::Target(10), 1));
        }
    } else {
        for c in multis {
            for n in [10, 100, 1000] {
                m.push((c, Size::Target(n), 5));
            }
        }
        for c in singles {
            m.push((c, Size::Target(10), 3));
            m.push((c, Size::Target(100), 3));
            m.push((c, Size::Target(1000), 1));
        }
    }
    m
}

/// `--kprobes`: the kprobe part, on a kernel with kprobes (the VM).
pub fn kprobes(quick: bool, only: Option<&str>) -> bool {
    if !Path::new("/sys/bus/event_source/devices/kprobe/type").exists() {
        eprintln!(
            "probeset-bench: this kernel has no kprobes; `cargo xtask bench` runs this part in the 6.12 VM"
        );
        return false;
    }
    let fx = setup_paths();
    for kind_multi in [true, false] {
        let obj = fx.object(Kind::Kprobe, kind_multi);
        assert!(
            obj.is_file(),
            "{} missing: build the fixtures on the host first (`probeset-bench --setup`)",
            obj.display()
        );
    }
    let n = kprobe_setup();
    eprintln!(
        "probeset-bench: kprobes, {} mode; {n} kernel functions (first: __x64_sys_getpid); kernel {}",
        if quick { "quick" } else { "full" },
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let bpftrace = Command::new("bpftrace")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !bpftrace {
        eprintln!("probeset-bench: no bpftrace in this VM: measured without it");
    }
    let mut outcomes = run_matrix(&fx, Kind::Kprobe, kprobe_matrix(quick, bpftrace), only, 500);
    if !quick && fx.target.is_file() && fx.obj_plain.is_file() {
        // The same kernel's uprobes, to read the kprobe ratios against: how much does TCG
        // compress multi-link vs per-probe on this kernel, next to the host's figures?
        let calibration = vec![
            (Config::ProbesetMulti, Size::Target(1000), 3),
            (Config::AyaPerProbe, Size::Target(1000), 1),
        ];
        outcomes.extend(run_matrix(&fx, Kind::Uprobe, calibration, only, 500));
    }
    print!("{}", report(&outcomes));
    !outcomes.is_empty() && outcomes.iter().all(|o| o.error.is_none())
}

/// Whether this runs in the VM tier's guest (`cargo xtask vm` sets `PROBESET_VM`).
pub fn in_vm() -> bool {
    std::env::var_os("PROBESET_VM").is_some()
}

/// `--kprobe-results LOG`: the host side of the kprobe part: the `OUTCOME` lines of the VM's
/// console, written out as the uprobe results are (in `target/bench/kprobes/`).
pub fn kprobe_results(log: &Path, quick: bool) -> bool {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    let outcomes: Vec<Outcome> = text.lines().filter_map(Outcome::from_line).collect();
    if outcomes.is_empty() {
        eprintln!(
            "probeset-bench: no kprobe results in {} (see the VM's console above)",
            log.display()
        );
        return false;
    }
    println!("{}", report(&outcomes));
    let (kprobes, calibration): (Vec<Outcome>, Vec<Outcome>) = outcomes
        .iter()
        .cloned()
        .partition(|o| o.kind == Kind::Kprobe);
    let dir = out_dir().join("kprobes");
    write_results(&kprobes, quick, &dir);
    if !calibration.is_empty() {
        std::fs::write(dir.join("uprobes_in_vm.md"), table(&calibration)).unwrap();
    }
    outcomes.iter().all(|o| o.error.is_none())
}
