//! `cargo xtask bench`: the side-by-side benchmark of `bench/` (probeset, a raw-syscall
//! baseline, libbpf-rs, aya, bpftrace), with the Debian packages it needs.
//!
//! Two parts: uprobes on the host, then kprobes in the 6.12 VM (the host has no kprobes). The
//! driver is built once; in the VM it runs with `--kprobes` and prints an `OUTCOME` line per
//! configuration on the console, which the driver reads back on the host
//! (`--kprobe-results`) to write `target/bench/kprobes/`.

use std::path::PathBuf;
use std::time::Duration;

use crate::apt::Apt;
use crate::kernel::Spec;
use crate::util::{self, cargo, err, status, target_dir, workspace_root, Result};
use crate::vm;

/// What the driver needs: clang for the peers' BPF object, gcc for the target program,
/// bpftrace, and the build dependencies of libbpf-rs's vendored libbpf.
const PACKAGES: [&str; 6] = [
    "clang",
    "gcc",
    "bpftrace",
    "libelf-dev",
    "zlib1g-dev",
    "pkg-config",
];

/// Debian's bpftrace (installed with [`PACKAGES`]), packed into the VM with its libraries.
const BPFTRACE: &str = "/usr/bin/bpftrace";

/// The kernel the kprobe part runs on (the "6.12 VM": it has `kprobe_multi`).
const KPROBE_KERNEL: &str = "6.12";

/// Which parts to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parts {
    uprobes: bool,
    kprobes: bool,
}

/// Takes the xtask's own flags (`--uprobes-only`, `--kprobes-only`) out of `args`; the rest
/// goes to the driver.
fn parse(args: &[String]) -> Result<(Parts, Vec<String>)> {
    let mut parts = Parts {
        uprobes: true,
        kprobes: true,
    };
    let mut rest = Vec::new();
    for a in args {
        match a.as_str() {
            "--uprobes-only" => parts.kprobes = false,
            "--kprobes-only" => parts.uprobes = false,
            _ => rest.push(a.clone()),
        }
    }
    if !parts.uprobes && !parts.kprobes {
        return Err(err("--uprobes-only and --kprobes-only exclude each other"));
    }
    Ok((parts, rest))
}

/// The driver's executable (`bench/` is a workspace of its own, with its own target
/// directory unless `CARGO_TARGET_DIR` says otherwise).
fn driver_path() -> PathBuf {
    let dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(_) => target_dir(),
        None => workspace_root().join("bench/target"),
    };
    dir.join("release/probeset-bench")
}

fn run_driver(args: &[&str]) -> Result<bool> {
    let mut cmd = std::process::Command::new(driver_path());
    cmd.current_dir(workspace_root()).args(args);
    Ok(status(&mut cmd)?.success())
}

/// Installs what is missing, builds the driver, runs the uprobe part here and the kprobe part
/// in the VM. Whether everything ran and was verified.
pub fn run(args: &[String], apt: &mut Apt) -> Result<bool> {
    let (parts, driver_args) = parse(args)?;
    apt.ensure_packages(&PACKAGES)?;
    let mut cmd = cargo();
    cmd.current_dir(workspace_root()).args([
        "build",
        "--release",
        "--manifest-path",
        "bench/Cargo.toml",
    ]);
    util::run(&mut cmd)?;
    let driver_args: Vec<&str> = driver_args.iter().map(String::as_str).collect();
    let mut ok = true;
    if parts.uprobes {
        ok &= run_driver(&driver_args)?;
    } else {
        ok &= run_driver(&["--setup"])?;
    }
    if parts.kprobes {
        ok &= kprobes(&driver_args, apt)?;
    }
    Ok(ok)
}

/// The kprobe part: the driver with `--kprobes` in the 6.12 VM, then its results read back.
fn kprobes(driver_args: &[&str], apt: &mut Apt) -> Result<bool> {
    let quick = driver_args.contains(&"--quick");
    let fixtures = workspace_root().join("target/bench");
    // The kprobe objects; and, for the uprobe calibration run in the same VM, the target
    // program and aya's uprobe object.
    let files = [
        "count_kprobe_multi.bpf.o",
        "count_kprobe_plain.bpf.o",
        "count_plain.bpf.o",
    ]
    .iter()
    .map(|f| fixtures.join(f))
    .collect();
    let mut guest_args = vec!["--kprobes".to_owned()];
    guest_args.extend(driver_args.iter().map(|a| (*a).to_owned()));
    let opts = vm::Options {
        kernels: vec![Spec::lookup(KPROBE_KERNEL)?],
        target: vm::Target::Exec {
            path: driver_path(),
            args: guest_args,
        },
        // Full: ~15 min under TCG (per-probe detach is a grace period a probe).
        timeout: Duration::from_secs(if quick { 600 } else { 3600 }),
        // bpftrace runs in the VM too, from the host's package.
        extras: vec![PathBuf::from(BPFTRACE), fixtures.join("target")],
        files,
    };
    let results = vm::run(&opts, apt)?;
    let mut ok = results.iter().all(vm::KernelResult::passed);
    let log = target_dir()
        .join("vm/run")
        .join(KPROBE_KERNEL)
        .join("console.log");
    let log = log.to_string_lossy().into_owned();
    let mut read_back = vec!["--kprobe-results", log.as_str()];
    if quick {
        read_back.push("--quick");
    }
    ok &= run_driver(&read_back)?;
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_and_driver_arguments() {
        let args = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        let (p, rest) = parse(&args("--quick --only aya")).unwrap();
        assert_eq!(
            p,
            Parts {
                uprobes: true,
                kprobes: true
            }
        );
        assert_eq!(rest, ["--quick", "--only", "aya"]);
        let (p, rest) = parse(&args("--kprobes-only --quick")).unwrap();
        assert!(!p.uprobes && p.kprobes);
        assert_eq!(rest, ["--quick"]);
        assert!(!parse(&args("--uprobes-only")).unwrap().0.kprobes);
        assert!(parse(&args("--uprobes-only --kprobes-only")).is_err());
    }
}
