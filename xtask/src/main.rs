//! `cargo xtask`: the project's test runner.
//!
//! - `cargo xtask test [--no-vm] [--timeout SECS] [--host-timeout SECS]`: every tier. `cargo test --workspace` on the
//!   host (unit tests and real-uprobe integration tests), then the VM tier on the whole kernel
//!   matrix. Exits non-zero if anything failed or a tier ran nothing.
//! - `cargo xtask vm [--kernel NAME]... [--test NAME]... [--exec PATH [-- ARGS...]]
//!   [--timeout SECS]`: the VM tier alone. Boots stock Debian kernels (which have kprobes,
//!   unlike the host) under qemu and runs the kprobe integration tests inside.
//!
//! See `docs/testing.md`. A workspace of its own, with its own `Cargo.lock`: it builds whatever
//! state the main crate is in, and its dependencies never move the library's lockfile.

mod apt;
mod bench;
mod cargo;
mod initramfs;
mod kernel;
mod libtest;
mod report;
mod util;
mod vm;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::apt::Apt;
use crate::kernel::Spec;
use crate::libtest::Counts;
use crate::util::{err, is_root, secs, Result};

const USAGE: &str = "\
usage:
  cargo xtask test [--no-vm] [--timeout SECS] [--host-timeout SECS]
      cargo test --workspace on the host, then the VM tier on every kernel of the matrix
      --no-vm              host tests only
      --host-timeout SECS  limit for the host tests (default 1200)
  cargo xtask bench [--quick] [--only SUBSTR] [--uprobes-only | --kprobes-only]
      the side-by-side benchmark (bench/): probeset, raw syscalls, libbpf-rs, aya, bpftrace;
      uprobes here, then kprobes in the 6.12 VM; installs clang, gcc, bpftrace, libelf-dev,
      zlib1g-dev, pkg-config when missing; --quick: a small subset (under 2 min);
      --only SUBSTR: the systems whose name contains it; results in target/bench/ and
      target/bench/kprobes/
  cargo xtask vm [--kernel NAME]... [--test NAME]... [--timeout SECS]
  cargo xtask vm [--kernel NAME]... --exec PATH [--timeout SECS] [-- ARGS...]
      boot each kernel under qemu and run tests inside
      --kernel NAME   a kernel of the matrix (6.12, 6.1) or a Debian linux-image-* package;
                      repeatable; default: the whole matrix
      --test NAME     an integration-test target of probeset (tests/NAME.rs); repeatable;
                      default: kprobe, kprobe_targets, kprobe_health, features, funccount
      --exec PATH     run this executable instead, with ARGS (given after --)
      --timeout SECS  limit per kernel (default 900)
";

/// A parsed command line.
#[derive(Debug, PartialEq)]
enum Cli {
    Help,
    Test {
        vm: bool,
        timeout: Duration,
        host_timeout: Duration,
    },
    Vm(vm::Options),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "bench") {
        // Everything after `bench` goes to the driver, which parses it.
        return match bench::run(&args[1..], &mut Apt::default()) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("xtask: error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = match parse(&args) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("xtask: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let outcome = match cli {
        Cli::Help => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Cli::Vm(opts) => vm_command(&opts),
        Cli::Test {
            vm,
            timeout,
            host_timeout,
        } => test_command(vm, timeout, host_timeout),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parses the arguments after `cargo xtask`.
fn parse(args: &[String]) -> Result<Cli> {
    let Some((command, rest)) = args.split_first() else {
        return Ok(Cli::Help);
    };
    let mut timeout = Duration::from_secs(vm::DEFAULT_TIMEOUT);
    let mut host_timeout = Duration::from_secs(cargo::DEFAULT_HOST_TIMEOUT);
    let mut kernels = Vec::new();
    let mut tests = Vec::new();
    let mut exec: Option<PathBuf> = None;
    let mut exec_args: Option<Vec<String>> = None;
    let mut no_vm = false;
    let mut i = 0;
    while i < rest.len() {
        let arg = rest[i].as_str();
        if arg == "--" {
            exec_args = Some(rest[i + 1..].to_vec());
            break;
        }
        // `--flag value` or `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (arg, None),
        };
        let mut value = || -> Result<String> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            i += 1;
            rest.get(i)
                .cloned()
                .ok_or_else(|| err(format!("{flag} needs a value")))
        };
        match (command.as_str(), flag) {
            (_, "-h" | "--help") => return Ok(Cli::Help),
            (_, "--timeout") => timeout = seconds(flag, &value()?)?,
            ("test", "--host-timeout") => host_timeout = seconds(flag, &value()?)?,
            ("vm", "--kernel") => kernels.push(Spec::lookup(&value()?)?),
            ("vm", "--test") => tests.push(value()?),
            ("vm", "--exec") => {
                if exec.replace(PathBuf::from(value()?)).is_some() {
                    return Err(err("--exec may be given once"));
                }
            }
            ("test", "--no-vm") => no_vm = true,
            _ => return Err(err(format!("unknown argument `{arg}` for `{command}`"))),
        }
        i += 1;
    }
    match command.as_str() {
        "help" | "-h" | "--help" => Ok(Cli::Help),
        "test" => {
            if exec_args.is_some() {
                return Err(err("`test` takes no arguments after --"));
            }
            Ok(Cli::Test {
                vm: !no_vm,
                timeout,
                host_timeout,
            })
        }
        "vm" => {
            let target = match (exec, exec_args) {
                (Some(_), _) if !tests.is_empty() => {
                    return Err(err("--exec and --test exclude each other"))
                }
                (Some(path), args) => vm::Target::Exec {
                    path,
                    args: args.unwrap_or_default(),
                },
                (None, Some(_)) => return Err(err("arguments after -- need --exec")),
                (None, None) if tests.is_empty() => vm::Target::Tests(vm::default_tests()),
                (None, None) => vm::Target::Tests(tests),
            };
            if kernels.is_empty() {
                kernels = Spec::matrix();
            }
            kernels.dedup();
            Ok(Cli::Vm(vm::Options {
                kernels,
                target,
                timeout,
                extras: Vec::new(),
                files: Vec::new(),
            }))
        }
        other => Err(err(format!("unknown command `{other}`"))),
    }
}

/// Parses a positive number of seconds given to `flag`.
fn seconds(flag: &str, value: &str) -> Result<Duration> {
    value
        .parse()
        .ok()
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| err(format!("{flag} {value}: not a positive number of seconds")))
}

/// `cargo xtask vm`: prints one line per kernel; `Ok(false)` if any kernel failed.
fn vm_command(opts: &vm::Options) -> Result<bool> {
    let started = Instant::now();
    let results = vm::run(opts, &mut Apt::default())?;
    println!();
    for r in &results {
        println!("{}", r.summary());
        for note in &r.notes {
            println!("    {note}");
        }
    }
    println!(
        "vm: {} kernel(s) in {}",
        results.len(),
        secs(started.elapsed())
    );
    Ok(results.iter().all(vm::KernelResult::passed))
}

/// `cargo xtask test`: the host tier, then the VM tier; `Ok(false)` if anything failed.
fn test_command(run_vm: bool, timeout: Duration, host_timeout: Duration) -> Result<bool> {
    if !is_root() {
        return Err(err(
            "`cargo xtask test` needs root: the real-kernel tests attach uprobes and BPF \
             programs on the host, and the VM tier installs qemu and fetches kernels with apt. \
             Run it as root (unit tests alone: `cargo test --workspace --lib`).",
        ));
    }
    let started = Instant::now();
    let mut ok = true;
    let mut total = Counts::default();

    let host_started = Instant::now();
    let host = match cargo::host_tests(host_timeout) {
        Ok(run) => {
            let counts = run.counts;
            total.add(counts);
            let mut line = format!("host: {counts} ({})", secs(host_started.elapsed()));
            if run.timed_out {
                ok = false;
                let _ = write!(line, " -- FAILED: timed out after {}", secs(host_timeout));
            } else if !run.status.success() {
                ok = false;
                let _ = write!(line, " -- FAILED: cargo test exited with {}", run.status);
            } else if counts.passed == 0 {
                ok = false;
                line.push_str(" -- FAILED: ran no test");
            }
            line
        }
        Err(e) => {
            ok = false;
            format!("host: FAILED: {e}")
        }
    };

    let mut vm_lines = Vec::new();
    if run_vm {
        let opts = vm::Options {
            kernels: Spec::matrix(),
            target: vm::Target::Tests(vm::default_tests()),
            timeout,
            extras: Vec::new(),
            files: Vec::new(),
        };
        match vm::run(&opts, &mut Apt::default()) {
            Ok(results) => {
                for r in results {
                    ok &= r.passed();
                    total.add(r.counts);
                    vm_lines.push(r.summary());
                }
            }
            Err(e) => {
                ok = false;
                vm_lines.push(format!("vm: FAILED: {e}"));
            }
        }
    } else {
        vm_lines.push("vm: not run (--no-vm)".to_owned());
    }

    println!();
    println!("{host}");
    for line in &vm_lines {
        println!("{line}");
    }
    // The plain closing line: `total: N passed, N failed, N skipped`.
    println!(
        "total: {} passed, {} failed, {} skipped",
        total.passed, total.failed, total.skipped
    );
    println!(
        "xtask test: {} in {}",
        if ok { "ok" } else { "FAILED" },
        secs(started.elapsed())
    );
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn vm_defaults() {
        let Cli::Vm(opts) = parse(&args("vm")).unwrap() else {
            panic!("not vm")
        };
        assert_eq!(opts.kernels, Spec::matrix());
        assert!(
            matches!(opts.target, vm::Target::Tests(ref t) if t == &["kprobe", "kprobe_targets", "funccount", "features", "kprobe_health"])
        );
        assert_eq!(opts.timeout, Duration::from_mins(15));
    }

    #[test]
    fn vm_exec_with_args() {
        let Cli::Vm(opts) = parse(&args(
            "vm --kernel 6.1 --timeout=60 --exec ./t -- --exact a --nocapture",
        ))
        .unwrap() else {
            panic!("not vm")
        };
        assert_eq!(opts.kernels.len(), 1);
        assert_eq!(opts.kernels[0].name, "6.1");
        assert_eq!(opts.timeout, Duration::from_mins(1));
        let vm::Target::Exec { path, args } = opts.target else {
            panic!("not exec")
        };
        assert_eq!(path, PathBuf::from("./t"));
        assert_eq!(args, ["--exact", "a", "--nocapture"]);
    }

    #[test]
    fn bad_command_lines() {
        assert!(parse(&args("vm --kernel 5.10")).is_err());
        assert!(parse(&args("vm --test kprobe --exec ./t")).is_err());
        assert!(parse(&args("vm -- x")).is_err());
        assert!(parse(&args("vm --timeout")).is_err());
        assert!(parse(&args("vm --timeout 0")).is_err());
        assert!(parse(&args("test --kernel 6.1")).is_err());
        assert!(parse(&args("frobnicate")).is_err());
        assert_eq!(
            parse(&args("test --no-vm")).unwrap(),
            Cli::Test {
                vm: false,
                timeout: Duration::from_mins(15),
                host_timeout: Duration::from_mins(20),
            }
        );
        assert_eq!(parse(&[]).unwrap(), Cli::Help);
    }
}
