//! The VM tier: boot each kernel of the matrix under qemu (TCG) with an initramfs that runs the
//! test executables, stream the console, and judge the run.
//!
//! A kernel passes only when the guest reported `PROBESET_RC=0` on its second serial port,
//! qemu finished within the timeout, the console shows no kernel `Oops`/`BUG:`/`Kernel panic`,
//! no line carries the skip marker, and at least one test passed.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::apt::{Apt, QEMU};
use crate::initramfs::{self, Guest, Payload, KERNEL_PARAM, RC_PREFIX};
use crate::kernel::{self, Spec};
use crate::libtest::Counts;
use crate::report::Report;
use crate::util::{display_command, err, secs, target_dir, workspace_root, Context, Result};

/// The default per-kernel timeout, in seconds.
pub const DEFAULT_TIMEOUT: u64 = 900;

/// The integration-test targets run by default: the kprobe tests (`kprobe`,
/// `kprobe_targets`, `kprobe_health`), `features`, and `funccount` (whose kprobe pattern
/// test runs the `funccount` example, packed as an extra).
pub const DEFAULT_TESTS: [&str; 5] = [
    "kprobe",
    "kprobe_targets",
    "funccount",
    "features",
    "kprobe_health",
];

/// The default test targets, owned.
pub fn default_tests() -> Vec<String> {
    DEFAULT_TESTS.iter().map(|t| (*t).to_owned()).collect()
}

/// Arguments given to each libtest executable built from the crate: one test at a time (the
/// guest has one CPU anyway) and no output capture, so that a skip marker printed by a
/// passing test is seen, and a hang shows where it hangs.
pub const LIBTEST_ARGS: [&str; 2] = ["--test-threads=1", "--nocapture"];

/// Console lines that mean the guest kernel broke.
const KERNEL_FAILURES: [&str; 3] = ["Oops:", "BUG:", "Kernel panic"];

/// What the guest runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Integration-test targets of the `probeset` package, by name (`--test`).
    Tests(Vec<String>),
    /// Any executable with its arguments (`--exec PATH -- ARGS`).
    Exec {
        /// The executable on the host.
        path: PathBuf,
        /// Its arguments.
        args: Vec<String>,
    },
}

/// Options of one VM run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The kernels to boot, in order.
    pub kernels: Vec<Spec>,
    /// What to run in each.
    pub target: Target,
    /// The limit for one kernel's boot and run.
    pub timeout: Duration,
    /// More executables for the guest, with their shared libraries, at their host paths
    /// (none from the command line).
    pub extras: Vec<PathBuf>,
    /// Data files for the guest, at their host paths (none from the command line).
    pub files: Vec<PathBuf>,
}

/// The outcome for one kernel.
#[derive(Debug, Clone)]
pub struct KernelResult {
    /// The kernel's short name (`6.12`).
    pub name: String,
    /// Its release (`uname -r`), when it could be fetched.
    pub release: Option<String>,
    /// Test counts read from the console.
    pub counts: Counts,
    /// Why it failed; empty when it passed.
    pub failures: Vec<String>,
    /// Notes that do not fail the run.
    pub notes: Vec<String>,
    /// Wall time of the boot and run.
    pub elapsed: Duration,
}

impl KernelResult {
    /// Whether this kernel passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The summary line, e.g. `vm 6.12 (6.12.117+deb12-cloud-amd64): 14 passed, 0 failed, 0
    /// skipped (31.2 s)`, followed by ` -- FAILED: ...` when it failed.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "vm {} ({}): {} ({})",
            self.name,
            self.release.as_deref().unwrap_or("no kernel"),
            self.counts,
            secs(self.elapsed)
        );
        if !self.passed() {
            line.push_str(" -- FAILED: ");
            line.push_str(&self.failures.join("; "));
        }
        line
    }
}

/// Runs the VM tier: host tools, test executables, initramfs, then each kernel in turn.
///
/// Errors that stop every kernel (a tool cannot be installed, the tests do not build) are
/// returned as `Err`; a kernel that cannot be fetched or fails is reported in its result.
pub fn run(opts: &Options, apt: &mut Apt) -> Result<Vec<KernelResult>> {
    apt.ensure_host_tools()?;
    let (payloads, need_tests) = payloads(&opts.target)?;
    // tests/funccount.rs runs the example: build it with the tests' profile.
    let mut extras = match &opts.target {
        Target::Tests(names) if names.iter().any(|n| n == "funccount") => {
            vec![crate::cargo::build_example("funccount")?]
        }
        _ => Vec::new(),
    };
    extras.extend(opts.extras.iter().cloned());
    let run_dir = target_dir().join("vm/run");
    fs::create_dir_all(&run_dir).context(|| format!("cannot create {}", run_dir.display()))?;
    let _lock = lock(&target_dir().join("vm/lock"))?;
    let guest = Guest {
        payloads,
        workdir: workspace_root(),
        extras,
        files: opts.files.clone(),
    };
    let started = Instant::now();
    let initrd = initramfs::build(&run_dir, &guest)?;
    let size = fs::metadata(&initrd).map_or(0, |m| m.len());
    eprintln!(
        "xtask: initramfs {} ({} MiB) built in {}",
        initrd.display(),
        size >> 20,
        secs(started.elapsed())
    );

    let cache = target_dir().join("vm/kernels");
    let mut results = Vec::new();
    for spec in &opts.kernels {
        let result = match kernel::prepare(spec, apt, &cache) {
            Ok(kernel) => {
                eprintln!(
                    "xtask: booting {} ({}, {} {})",
                    spec.name, kernel.release, kernel.spec.package, kernel.version
                );
                let dir = run_dir.join(&spec.name);
                let initrd = initramfs::with_modules(&initrd, &kernel.modules, &dir)?;
                let mut result = boot(
                    &spec.name,
                    &kernel.vmlinuz,
                    &initrd,
                    &dir,
                    opts.timeout,
                    need_tests.then_some(guest.payloads.len()),
                );
                result.release = Some(kernel.release);
                result
            }
            Err(e) => KernelResult {
                name: spec.name.clone(),
                release: None,
                counts: Counts::default(),
                failures: vec![e.to_string()],
                notes: Vec::new(),
                elapsed: Duration::ZERO,
            },
        };
        eprintln!("xtask: {}", result.summary());
        results.push(result);
    }
    Ok(results)
}

/// Takes the VM tier's lock (one run at a time per target directory: they share the run
/// directory and the kernel cache, and two TCG guests would halve each other's speed).
fn lock(path: &Path) -> Result<fs::File> {
    let file = fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            eprintln!(
                "xtask: another `cargo xtask vm` holds {}; waiting for it",
                path.display()
            );
            file.lock()
                .context(|| format!("cannot lock {}", path.display()))?;
        }
        Err(fs::TryLockError::Error(e)) => {
            return Err(err(format!("cannot lock {}: {e}", path.display())))
        }
    }
    Ok(file)
}

/// The programs for the guest, and whether they are libtest binaries that must run tests.
fn payloads(target: &Target) -> Result<(Vec<Payload>, bool)> {
    match target {
        Target::Tests(names) => {
            let exes = crate::cargo::build_tests(names)?;
            let payloads = exes
                .into_iter()
                .map(|exe| Payload {
                    exe,
                    args: LIBTEST_ARGS.iter().map(|a| (*a).to_owned()).collect(),
                })
                .collect();
            Ok((payloads, true))
        }
        Target::Exec { path, args } => {
            let exe = std::path::absolute(path)
                .context(|| format!("bad --exec path {}", path.display()))?;
            if !exe.is_file() {
                return Err(err(format!("--exec {}: no such file", exe.display())));
            }
            Ok((
                vec![Payload {
                    exe,
                    args: args.clone(),
                }],
                false,
            ))
        }
    }
}

/// Boots one kernel, streams its console with a `[name] ` prefix, and judges the run.
///
/// `expect_results`: for libtest executables built from the crate, how many `test result:`
/// lines must appear (one per executable). `None` for `--exec`, which may run anything.
fn boot(
    name: &str,
    vmlinuz: &Path,
    initrd: &Path,
    dir: &Path,
    timeout: Duration,
    expect_results: Option<usize>,
) -> KernelResult {
    let started = Instant::now();
    let mut result = KernelResult {
        name: name.to_owned(),
        release: None,
        counts: Counts::default(),
        failures: Vec::new(),
        notes: Vec::new(),
        elapsed: Duration::ZERO,
    };
    match boot_inner(name, vmlinuz, initrd, dir, timeout, &mut result) {
        Ok(console) => {
            let rc_text = fs::read_to_string(dir.join("rc.txt")).unwrap_or_default();
            judge(&mut result, &console, &rc_text, timeout, expect_results);
        }
        Err(e) => result.failures.push(e.to_string()),
    }
    result.elapsed = started.elapsed();
    result
}

/// What the console showed.
#[derive(Debug, Default)]
struct Console {
    timed_out: bool,
    kernel_failure: Option<String>,
}

fn boot_inner(
    name: &str,
    vmlinuz: &Path,
    initrd: &Path,
    dir: &Path,
    timeout: Duration,
    result: &mut KernelResult,
) -> Result<Console> {
    fs::create_dir_all(dir).context(|| format!("cannot create {}", dir.display()))?;
    let rc_file = dir.join("rc.txt");
    let _ = fs::remove_file(&rc_file);
    let log_path = dir.join("console.log");
    let mut log =
        fs::File::create(&log_path).context(|| format!("cannot create {}", log_path.display()))?;

    let mut cmd = Command::new(QEMU);
    cmd.current_dir(dir)
        // 2 GiB: room for a large initramfs (the benchmark packs bpftrace and its ~200 MB of
        // libraries) beside what the tests allocate.
        .args(["-accel", "tcg", "-smp", "1", "-m", "2G"])
        .args(["-nographic", "-nodefaults", "-no-user-config"])
        .args(["-serial", "stdio", "-serial", "file:rc.txt", "-no-reboot"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 oops=panic quiet {KERNEL_PARAM}={name}"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!("xtask: $ {}", display_command(&cmd));
    let mut child = cmd
        .spawn()
        .context(|| format!("cannot run `{}`", display_command(&cmd)))?;

    let (tx, rx) = mpsc::channel::<String>();
    let readers = [
        forward_lines(child.stdout.take().expect("piped stdout"), "", tx.clone()),
        forward_lines(child.stderr.take().expect("piped stderr"), "qemu: ", tx),
    ];

    let deadline = Instant::now() + timeout;
    let mut console = Console::default();
    let prefix = format!("[{name}] ");
    let mut report = Report::new(&prefix, None)?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                report.line(&line);
                let _ = writeln!(log, "{line}");
                result.counts.scan(&line);
                if console.kernel_failure.is_none()
                    && KERNEL_FAILURES.iter().any(|pat| line.contains(pat))
                {
                    console.kernel_failure = Some(line.trim().to_owned());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                console.timed_out = true;
                eprintln!(
                    "xtask: {name}: timed out after {}; killing qemu",
                    secs(timeout)
                );
                let _ = child.kill();
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait().context(|| "cannot wait for qemu".to_owned())?;
    // After a kill the pipes close too; keep what was still buffered.
    for line in rx.try_iter() {
        report.line(&line);
        let _ = writeln!(log, "{line}");
        result.counts.scan(&line);
    }
    report.finish();
    for reader in readers {
        let _ = reader.join();
    }
    if !console.timed_out && !status.success() {
        result.notes.push(format!("qemu exited with {status}"));
    }
    result
        .notes
        .push(format!("console log: {}", log_path.display()));
    Ok(console)
}

/// Reads `source` line by line (lossy UTF-8, through [`printable`]) and sends each, prefixed,
/// to `tx`.
fn forward_lines(
    source: impl Read + Send + 'static,
    prefix: &'static str,
    tx: mpsc::Sender<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(source);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = printable(&String::from_utf8_lossy(&buf));
                    if tx.send(format!("{prefix}{line}")).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// The line without terminal escape sequences and control characters (the firmware and the
/// kernel clear the screen with `ESC c`, which would reset the host's terminal).
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates, then one final byte in @..~.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ESC \.
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' || (c == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                // Two-character sequences (`ESC c`, `ESC 7`, ...).
                _ => {}
            },
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Turns what was seen into failures.
fn judge(
    result: &mut KernelResult,
    console: &Console,
    rc_text: &str,
    timeout: Duration,
    expect_results: Option<usize>,
) {
    let failures = &mut result.failures;
    if console.timed_out {
        failures.push(format!("timed out after {}", secs(timeout)));
    }
    if let Some(line) = &console.kernel_failure {
        failures.push(format!("kernel failure on the console: {line}"));
    }
    match guest_status(rc_text) {
        Some(0) => {}
        Some(rc) => failures.push(format!("guest exit status {rc}")),
        None if console.timed_out => {}
        None => failures.push(format!(
            "the guest reported no {RC_PREFIX} (it did not reach the end of /init)"
        )),
    }
    let counts = result.counts;
    if counts.skipped > 0 {
        failures.push(format!(
            "{} test(s) skipped (skip marker lines): nothing may skip in the VM",
            counts.skipped
        ));
    }
    if counts.failed > 0 {
        failures.push(format!("{} test(s) failed", counts.failed));
    }
    match expect_results {
        Some(expected) => {
            if counts.results < expected as u64 && !console.timed_out {
                failures.push(format!(
                    "{} of {expected} test executable(s) printed a `test result:` line",
                    counts.results
                ));
            }
            if counts.passed + counts.failed == 0 {
                failures.push("ran no test".to_owned());
            }
        }
        None => {
            if counts.results > 0 && counts.passed + counts.failed == 0 {
                failures.push("ran no test".to_owned());
            } else if counts.results == 0 {
                result
                    .notes
                    .push("no libtest output: judged by exit status".to_owned());
            }
        }
    }
}

/// The status in `PROBESET_RC=<n>` from the second serial port's file, if present.
fn guest_status(rc_text: &str) -> Option<i64> {
    rc_text
        .lines()
        .find_map(|l| l.trim().strip_prefix(RC_PREFIX)?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_removed() {
        assert_eq!(
            printable("\u{1b}c\u{1b}[?7l\u{1b}[2J\u{1b}[0mSeaBIOS (version 1.16.2)\r\n"),
            "SeaBIOS (version 1.16.2)"
        );
        assert_eq!(
            printable("test result: \u{1b}[32mok\u{1b}[0m. 1 passed;\tx"),
            "test result: ok. 1 passed;\tx"
        );
        assert_eq!(printable("\u{1b}]0;title\u{7}é"), "é");
    }

    #[test]
    fn rc_file() {
        assert_eq!(guest_status("PROBESET_RC=0\r\n"), Some(0));
        assert_eq!(guest_status("PROBESET_RC=101\n"), Some(101));
        assert_eq!(guest_status(""), None);
        assert_eq!(guest_status("garbage\n"), None);
    }

    fn judged(lines: &[&str], rc: &str, expect: Option<usize>) -> KernelResult {
        let mut result = KernelResult {
            name: "6.12".into(),
            release: Some("6.12.117+deb12-cloud-amd64".into()),
            counts: Counts::default(),
            failures: Vec::new(),
            notes: Vec::new(),
            elapsed: Duration::from_secs(3),
        };
        let mut console = Console::default();
        for line in lines {
            result.counts.scan(line);
            if KERNEL_FAILURES.iter().any(|p| line.contains(p)) {
                console.kernel_failure = Some((*line).to_owned());
            }
        }
        judge(&mut result, &console, rc, Duration::from_secs(9), expect);
        result
    }

    const OK2: &str = "test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s";

    #[test]
    fn passing_run() {
        let r = judged(&[OK2], "PROBESET_RC=0\n", Some(1));
        assert!(r.passed(), "{:?}", r.failures);
        assert_eq!(
            r.summary(),
            "vm 6.12 (6.12.117+deb12-cloud-amd64): 2 passed, 0 failed, 0 skipped (3.0 s)"
        );
    }

    #[test]
    fn failing_runs() {
        assert!(!judged(
            &[OK2, "probeset-skip: no tracefs"],
            "PROBESET_RC=0\n",
            Some(1)
        )
        .passed());
        assert!(!judged(&[OK2], "PROBESET_RC=101\n", Some(1)).passed());
        assert!(!judged(&[OK2], "", Some(1)).passed());
        assert!(!judged(
            &[OK2, "[    3.1] BUG: kernel NULL pointer dereference"],
            "PROBESET_RC=0\n",
            Some(1)
        )
        .passed());
        let none = "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s";
        assert!(!judged(&[none], "PROBESET_RC=0\n", Some(1)).passed());
        assert!(!judged(&[OK2], "PROBESET_RC=0\n", Some(2)).passed());
        // --exec of a program that is not a libtest binary: judged by its exit status.
        assert!(judged(&["hello"], "PROBESET_RC=0\n", None).passed());
        assert!(!judged(&[none], "PROBESET_RC=0\n", None).passed());
    }
}
