//! `funccount`: count calls of kernel or user-space functions, like bcc's `funccount` and
//! `bpftrace -e 'uprobe:LIB:GLOB { @[func] = count(); }'`, with the crate's built-in
//! counting program (no BPF toolchain needed).
//!
//! ```text
//! funccount [-r] [-p PID] [-d SECONDS] [-i INTERVAL [-T]] [-l] [-v] [--json] [--ret]
//!           PATTERN... [-- COMMAND ARGS]
//! ```
//!
//! - `PATTERN`: `vfs_*` or `p:vfs_*` (kernel functions), `c:str*`, `LIB:GLOB`,
//!   `/path/to/bin:GLOB` or `p:LIB:GLOB` (user-space functions; `LIB` as `c`, `libc`,
//!   `libssl.so.3`); with `-r` the part after the library is a regular expression.
//!   bcc's `t:` (tracepoints) and `u:` (USDT probes) are refused.
//! - `-p PID`: count only in that process (user-space patterns).
//! - `-- COMMAND ARGS`: run the command and count only in it (it is started stopped, the
//!   probes are attached with its pid, then it runs; its children are not counted).
//! - `-d SECONDS`: stop after that long; `-i INTERVAL`: print the counts of every interval;
//!   `-T`: with the time of day.
//! - `-l`: list what would be attached (and what is skipped, and why); attach nothing.
//! - `--json`: the table as one JSON object on stdout (the other lines go to stderr).
//! - `--ret`: return probes instead of entry probes.
//!
//! Names are demangled (Rust, C++) and cut to 60 characters. Output into a pipe whose
//! reader has gone (`| head -1`) stops funccount quietly: it detaches and exits 141, the
//! status a shell reports for a tool that SIGPIPE ended.
//!
//! With no arguments it counts ~35 common C library functions while a short built-in
//! workload calls them (in this process), and shows how many calls it expected.
//! `Ctrl-C` stops counting, prints the table and detaches.
//!
//! Run it as root: `cargo run --release --example funccount`.

mod cli;
mod names;
mod output;

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::hint::black_box;
use std::io::{IsTerminal as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cli::{Cli, Options, Spec};
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{self, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use output::{duration, emit, plural, Expected, Out};
use probeset::counter::{Counter, Flavour};
use probeset::discovery;
use probeset::{Error, Probe, ProbeSet, ProgramKind};
use tokio::signal::unix::{signal as unix_signal, SignalKind};

/// The hidden first argument that makes this binary the stopped launcher of a command.
const LAUNCH_ARG: &str = "--funccount-launch-stopped";

/// The default set: common C library functions (those that are IFUNCs or missing in the
/// system's libc are left out when resolved).
const DEFAULT_FUNCTIONS: &[&str] = &[
    "getpid",
    "getppid",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "kill",
    "sched_yield",
    "clock_gettime",
    "malloc",
    "free",
    "calloc",
    "realloc",
    "posix_memalign",
    "open",
    "openat",
    "close",
    "read",
    "write",
    "lseek",
    "fstat",
    "statx",
    "getcwd",
    "getenv",
    "pthread_mutex_lock",
    "pthread_mutex_unlock",
    "pthread_sigmask",
    "sigprocmask",
    "nanosleep",
    "clock_nanosleep",
    "mmap",
    "munmap",
    "mprotect",
    "madvise",
    "epoll_wait",
    "strdup",
    "uname",
];

/// Iterations of the built-in workload.
const WORKLOAD_ITERATIONS: u64 = 1000;

// --- failures ----------------------------------------------------------------------------

/// Why funccount stops early, and with which exit code.
#[derive(Debug)]
enum Failure {
    /// Bad usage or a kernel that cannot do it: one line, exit 2.
    Usage(String),
    /// Anything else: one line, exit 1.
    Failed(String),
    /// Ctrl-C before counting began: exit 130.
    Interrupted,
    /// The command after `--` cannot run: its error, exit 127 (not found) or 126.
    Command(String, u8),
    /// stdout's reader has gone: nothing more is printed, exit 141 (128 + SIGPIPE).
    BrokenPipe,
}

/// An error with its sources, on one line.
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        if e.is_invalid_input() {
            Failure::Usage(describe(&e))
        } else {
            Failure::Failed(describe(&e))
        }
    }
}

// --- what to probe -------------------------------------------------------------------------

/// One probe and how the table names it.
#[derive(Clone, Debug)]
struct Target {
    label: String,
    probe: Probe,
}

/// The probes for the patterns (or the default set), without duplicates, with cookie =
/// index. Returns the targets and a summary of what was skipped.
async fn resolve(options: &Options, user_pid: Option<i32>) -> Result<Resolved, Failure> {
    let mut resolved = Resolved::default();
    if options.patterns.is_empty() {
        let libc = discovery::resolve_library("c", user_pid).await?;
        for name in DEFAULT_FUNCTIONS {
            let found = discovery::user_functions(
                libc.to_string_lossy().into_owned(),
                (*name).to_owned(),
                user_pid,
            )
            .await?;
            resolved.add_user(&found, options.ret);
        }
        resolved.description = format!("default set: common functions of {}", libc.display());
        return Ok(resolved);
    }
    for text in &options.patterns {
        let spec = cli::parse_spec(text).map_err(Failure::Usage)?;
        let regex = match &spec {
            _ if !options.regexp => None,
            Spec::Kernel(name) | Spec::User { name, .. } => Some(
                regex_lite::Regex::new(name)
                    .map_err(|e| Failure::Usage(format!("-r {text:?}: {e}")))?,
            ),
        };
        // A regular expression matches the symbol as the binary has it or demangled.
        let keep = |name: &str| {
            regex
                .as_ref()
                .is_none_or(|r| r.is_match(name) || r.is_match(&names::demangle(name)))
        };
        match spec {
            Spec::Kernel(glob) => {
                if options.pid.is_some() {
                    return Err(Failure::Usage(format!(
                        "-p does not apply to kernel pattern {text:?}: kprobes count in every process"
                    )));
                }
                let glob = if regex.is_some() {
                    "*"
                } else {
                    discovery::parse_pattern(glob)?;
                    glob
                };
                let mut found = discovery::kernel_functions(glob).await?;
                found.functions.retain(|f| keep(&f.name));
                found.skipped.retain(|(name, _)| keep(name));
                if found.functions.is_empty() && !options.list {
                    return Err(no_match(text, &found.skipped));
                }
                resolved.add_kernel(&found, options.ret);
            }
            Spec::User { target, name } => {
                let glob = if regex.is_some() { "*" } else { name };
                let mut found = discovery::user_functions(target, glob, user_pid).await?;
                found.functions.retain(|f| keep(&f.name));
                found.skipped.retain(|(name, _)| keep(name));
                if found.functions.is_empty() && !options.list {
                    return Err(no_match(text, &found.skipped));
                }
                resolved.add_user(&found, options.ret);
            }
        }
    }
    resolved.description = options.patterns.join(" ");
    Ok(resolved)
}

fn no_match(pattern: &str, skipped: &[(String, String)]) -> Failure {
    let mut text = format!("no function matches {pattern:?}");
    if let Some((name, reason)) = skipped.first() {
        let _ = write!(
            text,
            " that can be probed ({} skipped, e.g. {name}: {reason})",
            skipped.len()
        );
    }
    Failure::Failed(text)
}

#[derive(Debug, Default)]
struct Resolved {
    targets: Vec<Target>,
    seen: std::collections::HashSet<Probe>,
    skipped: Vec<(String, String)>,
    binaries: std::collections::BTreeSet<PathBuf>,
    description: String,
}

impl Resolved {
    fn push(&mut self, label: String, probe: Probe) {
        if self.seen.insert(probe.clone()) {
            let cookie = self.targets.len() as u64;
            self.targets.push(Target {
                label,
                probe: probe.with_cookie(cookie),
            });
        }
    }

    fn add_kernel(&mut self, found: &discovery::KernelMatches, ret: bool) {
        for f in &found.functions {
            let probe = if ret {
                probeset::Kprobe::retprobe(&f.name)
            } else {
                f.probe.clone()
            };
            self.push(f.qualified_name(), probe.into());
        }
        self.skipped.extend(found.skipped.iter().cloned());
    }

    fn add_user(&mut self, found: &discovery::UserMatches, ret: bool) {
        self.binaries.insert(found.binary.clone());
        for f in &found.functions {
            let label = format!("{}\u{0}{}", found.binary.display(), f.name);
            self.push(label, f.probe.clone().with_ret(ret).into());
        }
        self.skipped.extend(found.skipped.iter().cloned());
    }

    /// Final labels: the function name alone when all user probes are in one binary, else
    /// `BINARY:FUNCTION` with the binary's file name.
    fn finish_labels(&mut self) {
        let single = self.binaries.len() <= 1;
        for t in &mut self.targets {
            if let Some((binary, name)) = t.label.split_once('\u{0}') {
                let name = names::demangle(name);
                t.label = if single {
                    name
                } else {
                    let file = Path::new(binary)
                        .file_name()
                        .map_or_else(|| binary.to_owned(), |f| f.to_string_lossy().into_owned());
                    format!("{file}:{name}")
                };
            }
        }
    }

    fn all_user(&self) -> bool {
        self.targets
            .iter()
            .all(|t| matches!(t.probe, Probe::Uprobe(_)))
    }

    fn all_kernel(&self) -> bool {
        self.targets
            .iter()
            .all(|t| matches!(t.probe, Probe::Kprobe(_)))
    }

    /// Gives every user probe the pid filter.
    fn with_pid(&mut self, pid: i32) {
        for t in &mut self.targets {
            if let Probe::Uprobe(u) = &t.probe {
                t.probe = Probe::Uprobe(u.clone().pid(pid));
            }
        }
    }
}

// --- attaching ---------------------------------------------------------------------------

/// The probes attached, and how.
struct Attached {
    set: ProbeSet,
}

impl Attached {
    /// Detaches everything; returns when every kernel object is released.
    async fn detach(self) -> Result<(), Error> {
        self.set.detach().await
    }

    fn len(&self) -> usize {
        self.set.len()
    }

    /// How the probes are held: multi links, or one perf-event link per probe.
    fn mode(&self) -> String {
        match self.set.program_kind() {
            Some(ProgramKind::UprobeMulti) => {
                format!("uprobe_multi, {}", plural(self.set.link_count(), "link"))
            }
            Some(ProgramKind::KprobeMulti) => {
                format!("kprobe_multi, {}", plural(self.set.link_count(), "link"))
            }
            _ => "perf-event links, one per probe".to_owned(),
        }
    }
}

/// Shows `attached N/M` on stderr while a large set attaches, when stderr is a terminal.
/// Once `stopped` is set (under the stderr lock) it writes nothing more.
struct ProgressLine {
    enabled: bool,
    last: Instant,
    /// The count on the line now: the set reports the last one twice (attached, done).
    shown: Option<usize>,
    stopped: Arc<AtomicBool>,
}

impl ProgressLine {
    fn update(&mut self, done: usize, total: usize) {
        let due = done == total || self.last.elapsed() >= Duration::from_millis(50);
        if !self.enabled || !due || self.shown == Some(done) {
            return;
        }
        self.shown = Some(done);
        self.last = Instant::now();
        let mut err = std::io::stderr().lock();
        if !self.stopped.load(Ordering::SeqCst) {
            let _ = write!(err, "\rattached {done}/{total}");
        }
    }
}

/// Ends the progress line when the attach ends, however it ends (done, failed, or
/// cancelled by Ctrl-C): stops the task that draws it and clears the line, so that neither
/// the last count nor a late update is left on the screen.
struct ProgressGuard {
    task: tokio::task::JoinHandle<()>,
    enabled: bool,
    stopped: Arc<AtomicBool>,
}

impl Drop for ProgressGuard {
    fn drop(&mut self) {
        let mut err = std::io::stderr().lock();
        self.stopped.store(true, Ordering::SeqCst);
        self.task.abort();
        if self.enabled {
            let _ = write!(err, "\r\x1b[K");
        }
    }
}

/// Attaches `counter` to every probe through one `ProbeSet`, all or nothing (on an error
/// the set has detached whatever the batch attached). A multi-link counter puts the probes
/// on one `uprobe_multi` link per binary (one `kprobe_multi` link for kernel functions); the
/// plain one on a perf-event link per probe.
async fn attach_all(counter: &Counter, probes: &[Probe]) -> Result<Attached, Error> {
    let total = probes.len();
    let mut set = ProbeSet::new(counter)?;
    // The progress line follows the set's progress channel.
    let mut rx = set.progress();
    let stopped = Arc::new(AtomicBool::new(false));
    let enabled = std::io::stderr().is_terminal() && total > 1;
    let mut line = ProgressLine {
        enabled,
        last: Instant::now(),
        shown: None,
        stopped: Arc::clone(&stopped),
    };
    let _guard = ProgressGuard {
        task: tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let p = rx.borrow_and_update().clone();
                line.update(p.attached, total);
                if p.done {
                    break;
                }
            }
        }),
        enabled,
        stopped,
    };
    set.attach(probes.iter().cloned()).await?;
    Ok(Attached { set })
}

/// The counter flavours to try, best first: a multi-link program where the probes allow
/// it, the plain one as the fallback.
fn flavours(resolved: &Resolved, per_probe: bool) -> Vec<Flavour> {
    if per_probe {
        vec![Flavour::Plain]
    } else if resolved.all_user() {
        vec![Flavour::UprobeMulti, Flavour::Plain]
    } else if resolved.all_kernel() {
        vec![Flavour::KprobeMulti, Flavour::Plain]
    } else {
        vec![Flavour::Plain]
    }
}

/// Loads a counter and attaches it, trying each flavour in turn: a kernel without the
/// multi link (or too old for its program) falls back to the plain program. Whether the
/// kernel makes the multi link is found with the first probe alone, so that a failure of
/// the whole set (an unprobeable function, say) is not retried with every probe.
async fn load_and_attach(
    resolved: &Resolved,
    per_probe: bool,
) -> Result<(Counter, Attached, Duration), Failure> {
    let probes: Vec<Probe> = resolved.targets.iter().map(|t| t.probe.clone()).collect();
    let slots = u32::try_from(probes.len())
        .map_err(|_| Failure::Usage(format!("{} probes are too many", probes.len())))?;
    let candidates = flavours(resolved, per_probe);
    for (i, flavour) in candidates.iter().copied().enumerate() {
        let is_last = i + 1 == candidates.len();
        let counter = match Counter::load(flavour, slots) {
            Ok(counter) => counter,
            Err(e) if !is_last && e.is_not_supported() => continue,
            Err(e) => return Err(e.into()),
        };
        let start = Instant::now();
        let attached = match attach_all(&counter, &probes).await {
            Ok(attached) => attached,
            Err(e) if !is_last && e.is_not_supported() => continue,
            Err(e) => return Err(attach_failure(&e, resolved)),
        };
        return Ok((counter, attached, start.elapsed()));
    }
    Err(Failure::Failed(
        "no counter program could be loaded".to_owned(),
    ))
}

fn attach_failure(e: &Error, resolved: &Resolved) -> Failure {
    if e.is_not_supported() && !resolved.all_user() {
        let detail = describe(e);
        let detail = detail
            .strip_prefix("kprobes is not supported here: ")
            .unwrap_or(&detail);
        Failure::Usage(format!(
            "kprobes are not supported on this kernel: {detail}"
        ))
    } else if e.is_invalid_input() || e.is_not_supported() {
        Failure::Usage(describe(e))
    } else {
        Failure::Failed(describe(e))
    }
}

// --- the command -------------------------------------------------------------------------

/// In the launcher process: stop until funccount has attached, then become the command.
/// The command keeps this pid, which the probes filter on.
fn launch_stopped(command: &[OsString]) -> ExitCode {
    let Some((program, args)) = command.split_first() else {
        return ExitCode::from(2);
    };
    // Build the command before stopping: after the continue, only exec runs (no extra
    // libc calls to count).
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    if let Err(e) = signal::raise(Signal::SIGSTOP) {
        eprintln!("funccount: cannot stop before running the command: {e}");
        return ExitCode::from(1);
    }
    let e = cmd.exec();
    eprintln!("funccount: cannot run {}: {e}", program.to_string_lossy());
    ExitCode::from(127)
}

/// The program `command` runs, found as `execvp` finds it; a program that cannot run is
/// [`Failure::Command`] with the shell's status (127 not found, 126 not executable), so that
/// funccount never counts a launcher that could not become the command.
fn find_program(program: &OsStr) -> Result<PathBuf, Failure> {
    let name = program.to_string_lossy();
    let check = |path: &Path| -> Result<PathBuf, Failure> {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(path.to_owned()),
            Ok(_) => Err(Failure::Command(
                format!("cannot run {name}: Permission denied (not an executable file)"),
                126,
            )),
            Err(e) => Err(Failure::Command(format!("cannot run {name}: {e}"), 127)),
        }
    };
    if name.contains('/') {
        return check(Path::new(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .map_or_else(
            || {
                Err(Failure::Command(
                    format!("cannot run {name}: command not found in PATH"),
                    127,
                ))
            },
            |found| check(&found),
        )
}

/// Starts the command stopped (through the launcher) and waits until it has stopped.
async fn spawn_stopped(command: &[OsString]) -> Result<tokio::process::Child, Failure> {
    find_program(&command[0])?;
    let me = std::env::current_exe()
        .map_err(|e| Failure::Failed(format!("cannot find my own executable: {e}")))?;
    let mut child = tokio::process::Command::new(me)
        .arg(LAUNCH_ARG)
        .args(command)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| {
            Failure::Failed(format!(
                "cannot start {}: {e}",
                command[0].to_string_lossy()
            ))
        })?;
    let pid = child_pid(&child)?;
    let status = tokio::task::spawn_blocking(move || {
        wait::waitid(
            Id::Pid(pid),
            WaitPidFlag::WSTOPPED | WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
        )
    })
    .await
    .map_err(|e| Failure::Failed(format!("waiting for the command: {e}")))?;
    match status {
        Ok(WaitStatus::Stopped(..)) => Ok(child),
        Ok(other) => {
            let _ = child.wait().await;
            Err(Failure::Failed(format!(
                "the command ended before it started: {other:?}"
            )))
        }
        Err(e) => {
            let _ = child.start_kill();
            Err(Failure::Failed(format!("waiting for the command: {e}")))
        }
    }
}

fn child_pid(child: &tokio::process::Child) -> Result<Pid, Failure> {
    child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw)
        .ok_or_else(|| Failure::Failed("the command has no pid".to_owned()))
}

// --- the built-in workload ---------------------------------------------------------------

/// Calls common libc functions a known number of times, through safe wrappers.
fn workload(iterations: u64) -> Expected {
    let me = nix::unistd::getpid();
    for i in 0..iterations {
        black_box(nix::unistd::getpid());
        black_box(nix::unistd::getppid());
        black_box(nix::unistd::getuid());
        black_box(nix::unistd::geteuid());
        black_box(nix::unistd::getgid());
        black_box(nix::unistd::getegid());
        let _ = black_box(signal::kill(me, None));
        std::thread::yield_now();
        black_box(Instant::now());
        let mut v: Vec<u64> = Vec::with_capacity(16);
        v.extend(0..=i % 64);
        black_box(&v);
        black_box(vec![0u8; 8192]);
        black_box(std::env::var_os("PATH"));
        if i % 10 == 0 {
            let _ = black_box(std::fs::read("/proc/self/stat"));
            let _ = black_box(std::env::current_dir());
        }
    }
    let n = iterations;
    vec![
        ("getpid", n + 1, true),
        ("getppid", n, true),
        ("getuid", n, true),
        ("geteuid", n, true),
        ("getgid", n, true),
        ("getegid", n, true),
        ("kill", n, true),
        ("sched_yield", n, false),
        ("clock_gettime", n, false),
        ("malloc", 2 * n, false),
        ("calloc", n, false),
        ("free", 2 * n, false),
        ("getenv", n, false),
        ("open", n / 10, false),
        ("read", n / 10, false),
        ("close", n / 10, false),
        ("getcwd", n / 10, false),
    ]
}

// --- main --------------------------------------------------------------------------------

/// SIGINT and SIGTERM, and stdout's reader going away.
struct Stops {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    stdout_closed: Arc<tokio::sync::Notify>,
}

/// What ended the counting.
enum Stop {
    Signal,
    StdoutClosed,
}

impl Stops {
    fn new() -> Result<Stops, Failure> {
        Ok(Stops {
            interrupt: unix_signal(SignalKind::interrupt())
                .map_err(|e| Failure::Failed(format!("cannot handle SIGINT: {e}")))?,
            terminate: unix_signal(SignalKind::terminate())
                .map_err(|e| Failure::Failed(format!("cannot handle SIGTERM: {e}")))?,
            stdout_closed: output::stdout_closed(),
        })
    }

    async fn next(&mut self) -> Stop {
        tokio::select! {
            _ = self.interrupt.recv() => Stop::Signal,
            _ = self.terminate.recv() => Stop::Signal,
            () = self.stdout_closed.notified() => Stop::StdoutClosed,
        }
    }
}

/// What `run` has set up for the counting.
struct Session<'a> {
    options: &'a Options,
    resolved: &'a Resolved,
    counter: &'a Counter,
    attached: &'a Attached,
    attach_time: Duration,
    scope: String,
    builtin: bool,
    out: Out,
}

#[expect(
    clippy::too_many_lines,
    reason = "the command's steps (resolve, attach, run, count, detach) read top to bottom"
)]
async fn run(options: Options) -> Result<(), Failure> {
    let mut stops = Stops::new()?;
    let out = Out { json: options.json };

    let builtin = options.patterns.is_empty()
        && options.command.is_empty()
        && options.pid.is_none()
        && options.duration.is_none();
    let own_pid = i32::try_from(std::process::id()).expect("pids fit in i32");
    let user_pid = if builtin { Some(own_pid) } else { options.pid };

    let mut resolved = resolve(&options, user_pid).await?;
    resolved.finish_labels();
    if options.list {
        let labels: Vec<&str> = resolved.targets.iter().map(|t| t.label.as_str()).collect();
        if options.json {
            emit(&output::listing_json(&labels, &resolved.skipped))?;
        } else {
            emit(&output::listing(&labels, &resolved.skipped))?;
        }
        eprintln!(
            "funccount: {}, {} skipped; nothing attached",
            plural(labels.len(), "function"),
            resolved.skipped.len()
        );
        return Ok(());
    }
    if resolved.targets.is_empty() {
        return Err(Failure::Failed("nothing to probe".to_owned()));
    }

    let mut child = None;
    if !options.command.is_empty() {
        let c = spawn_stopped(&options.command).await?;
        resolved.with_pid(child_pid(&c)?.as_raw());
        child = Some(c);
    }

    let attached = tokio::select! {
        r = load_and_attach(&resolved, options.per_probe) => r,
        stop = stops.next() => Err(match stop {
            Stop::Signal => Failure::Interrupted,
            Stop::StdoutClosed => Failure::BrokenPipe,
        }),
    };
    let (counter, attached, attach_time) = match attached {
        Ok(a) => a,
        Err(e) => {
            if let Some(mut c) = child {
                let _ = c.start_kill();
                let _ = c.wait().await;
            }
            if matches!(e, Failure::Interrupted | Failure::BrokenPipe) {
                // Whatever the cancelled attach had created is released in the background;
                // perf-event links take ~0.1 s each. A second Ctrl-C stops waiting (the
                // kernel releases the rest as this process exits).
                if matches!(e, Failure::Interrupted) {
                    eprintln!("funccount: interrupted; detaching what was attached (Ctrl-C again to skip the wait)");
                }
                tokio::select! {
                    () = probeset::cleanup::wait_idle() => {}
                    _ = stops.interrupt.recv() => {}
                }
            }
            return Err(e);
        }
    };

    let scope = match (&child, options.pid, builtin) {
        (Some(c), _, _) => format!("command pid {}", c.id().unwrap_or(0)),
        (None, Some(pid), _) => format!("pid {pid}"),
        (None, None, true) => format!("this process (pid {own_pid}), built-in workload"),
        (None, None, false) => "all processes".to_owned(),
    };
    let session = Session {
        options: &options,
        resolved: &resolved,
        counter: &counter,
        attached: &attached,
        attach_time,
        scope,
        builtin,
        out,
    };
    let report = count(&session, &mut stops, &mut child).await;
    if report.is_err() {
        // The command must not stay stopped (or run on uncounted) once funccount gives up.
        if let Some(c) = child.as_mut() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    let n = attached.len();
    let progress = std::io::stderr().is_terminal() && n > 1;
    if progress {
        eprint!("detaching {n} probes...");
    }
    let start = Instant::now();
    let detached = attached.detach().await;
    if progress {
        eprint!("\r\x1b[K");
    }
    report?;
    out.info(&format!(
        "detach: {} for {}",
        duration(start.elapsed()),
        plural(n, "probe")
    ))?;
    detached.map_err(Failure::from)
}

/// Prints what is attached, runs the workload or the command, counts until the end, and
/// prints the tables.
async fn count(
    s: &Session<'_>,
    stops: &mut Stops,
    child: &mut Option<tokio::process::Child>,
) -> Result<(), Failure> {
    let (options, out) = (s.options, s.out);
    out.info(&format!(
        "Tracing {} ({}){} in {}.",
        plural(s.resolved.targets.len(), "function"),
        s.resolved.description,
        if options.ret {
            ", counting returns"
        } else {
            ""
        },
        s.scope
    ))?;
    out.info(&format!(
        "attach: {} for {}, mode: {}",
        duration(s.attach_time),
        plural(s.attached.len(), "probe"),
        s.attached.mode()
    ))?;
    let skipped = output::skipped(&s.resolved.skipped, options.verbose);
    if !skipped.is_empty() {
        out.info(skipped.trim_end())?;
    }

    let labels: Vec<&str> = s
        .resolved
        .targets
        .iter()
        .map(|t| t.label.as_str())
        .collect();
    let started = Instant::now();
    let mut expected = Vec::new();
    let mut workload_task = s
        .builtin
        .then(|| tokio::task::spawn_blocking(|| workload(WORKLOAD_ITERATIONS)));
    if let Some(c) = child.as_ref() {
        signal::kill(child_pid(c)?, Signal::SIGCONT)
            .map_err(|e| Failure::Failed(format!("cannot continue the command: {e}")))?;
    } else if !s.builtin && options.duration.is_none() {
        out.info("Hit Ctrl-C to end.")?;
    }

    let deadline = options.duration.map(|d| tokio::time::Instant::now() + d);
    let mut ticks = options.interval.map(|i| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + i, i);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut previous = vec![0u64; s.resolved.targets.len()];
    let mut status_note = None;
    loop {
        tokio::select! {
            stop = stops.next() => match stop {
                Stop::Signal => break,
                Stop::StdoutClosed => return Err(Failure::BrokenPipe),
            },
            () = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() => break,
            status = async { child.as_mut().unwrap().wait().await }, if child.is_some() => {
                status_note = Some(match status {
                    Ok(s) => format!("command exited: {s}"),
                    Err(e) => format!("command: {e}"),
                });
                *child = None;
                break;
            }
            result = async { workload_task.as_mut().unwrap().await }, if workload_task.is_some() => {
                expected = result.map_err(|e| Failure::Failed(format!("workload: {e}")))?;
                break;
            }
            _ = async { ticks.as_mut().unwrap().tick().await }, if ticks.is_some() => {
                let counts = s.counter.counts()?;
                let delta: Vec<u64> = counts.iter().zip(&previous).map(|(c, p)| c - p).collect();
                if options.json {
                    emit(&output::json(&labels, &delta, &Vec::new(), started.elapsed(), None))?;
                } else {
                    let stamp = if options.timestamp { format!("{} ", output::clock()) } else { String::new() };
                    emit(&format!("\n{stamp}[{:.1} s]\n", started.elapsed().as_secs_f64()))?;
                    emit(&output::table(&labels, &delta, &Vec::new()))?;
                }
                previous = counts;
            }
        }
    }
    let counts = s.counter.counts()?;
    if let Some(note) = status_note {
        out.info(&note)?;
    }
    print_total(s, &labels, &counts, &expected, started.elapsed())
}

/// The final table (or JSON object), over the whole run.
fn print_total(
    s: &Session<'_>,
    labels: &[&str],
    counts: &[u64],
    expected: &Expected,
    elapsed: Duration,
) -> Result<(), Failure> {
    let options = s.options;
    if options.json {
        let about = serde_json::json!({
            "tracing": s.resolved.description,
            "scope": s.scope,
            "ret": options.ret,
            "mode": s.attached.mode(),
            "skipped": output::per_reason(&s.resolved.skipped),
        });
        return emit(&output::json(
            labels,
            counts,
            expected,
            elapsed,
            Some(about),
        ));
    }
    let mut head = String::from("\n");
    if options.timestamp {
        head.push_str(&output::clock());
        head.push(if options.interval.is_some() {
            ' '
        } else {
            '\n'
        });
    }
    if options.interval.is_some() {
        let _ = writeln!(head, "Total over {:.1} s:", elapsed.as_secs_f64());
    }
    emit(&head)?;
    emit(&output::table(labels, counts, expected))
}

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == LAUNCH_ARG) {
        args.remove(0);
        return launch_stopped(&args);
    }
    let options = match cli::parse_args(args) {
        Ok(Cli::Run(options)) => options,
        Ok(Cli::Help) => {
            let _ = emit(&format!("{}\n", cli::USAGE));
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("funccount: {message}\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("funccount: cannot start the tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("funccount: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(message)) => {
            eprintln!("funccount: {message}");
            ExitCode::from(1)
        }
        Err(Failure::Command(message, code)) => {
            eprintln!("funccount: {message}");
            ExitCode::from(code)
        }
        Err(Failure::Interrupted) => {
            eprintln!("funccount: interrupted");
            ExitCode::from(130)
        }
        Err(Failure::BrokenPipe) => ExitCode::from(141),
    }
}
