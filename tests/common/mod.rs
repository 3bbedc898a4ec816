//! Shared helpers of the integration tests (real kernel; root).
#![allow(dead_code)]

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::OnceLock;

use probeset::elf::ElfSymbols;

/// Prints the skip marker the VM runner looks for, bypassing libtest's output capture.
/// Where nothing may skip (`PROBESET_VM` in the VM, `PROBESET_NO_SKIP` in CI) it panics
/// instead.
pub fn skip(test: &str, reason: &str) {
    assert!(
        std::env::var_os("PROBESET_VM").is_none() && std::env::var_os("PROBESET_NO_SKIP").is_none(),
        "{test} would skip where nothing may skip (PROBESET_VM or PROBESET_NO_SKIP is set): {reason}"
    );
    let _ = writeln!(std::io::stderr().lock(), "probeset-skip: {test}: {reason}");
}

/// Skips a test whose tier runs elsewhere (the kprobe tier on a host without kprobes: the
/// VM runs it). Only inside the VM is that a failure.
pub fn skip_tier(test: &str, reason: &str) {
    assert!(
        std::env::var_os("PROBESET_VM").is_none(),
        "{test} would skip inside the VM, where nothing may skip: {reason}"
    );
    let _ = writeln!(std::io::stderr().lock(), "probeset-skip: {test}: {reason}");
}

/// Whether the real-kernel tests can run here (root); prints a skip line otherwise.
pub fn can_run(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        skip(
            test,
            "needs root (or CAP_BPF + CAP_PERFMON) to load and attach BPF programs",
        );
        false
    }
}

/// Mounts tracefs if it is not mounted (root only), and returns where it is.
pub fn tracefs() -> PathBuf {
    static ONCE: OnceLock<PathBuf> = OnceLock::new();
    ONCE.get_or_init(|| {
        if let Some(p) = probeset::tracefs::mount_point() {
            return p;
        }
        let status = std::process::Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tracefs failed");
        probeset::tracefs::mount_point().expect("tracefs mounted")
    })
    .clone()
}

/// Lines of `uprobe_events` (or `kprobe_events`) that belong to this crate's groups of `pid`.
pub fn our_events(file: &str, pid: u32) -> Vec<String> {
    let text = std::fs::read_to_string(tracefs().join(file)).unwrap_or_default();
    let prefix = format!("probeset_{pid}_");
    text.lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(_, rest)| rest.starts_with(&prefix))
        })
        .map(str::to_string)
        .collect()
}

/// The number of open fds of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// This test executable.
pub fn exe() -> PathBuf {
    std::env::current_exe().expect("current_exe")
}

/// The (mangled) symbol of a function of this executable whose name contains `fragment`.
pub fn symbol_of(fragment: &str) -> String {
    let syms = ElfSymbols::load(&exe()).expect("parse own ELF");
    let glob = format!("*{fragment}*");
    let found: Vec<_> = syms.matching(&glob).map(|f| f.name.clone()).collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one function named like {fragment}: {found:?}"
    );
    found.into_iter().next().unwrap()
}

/// The file offset of that function.
pub fn offset_of(fragment: &str) -> u64 {
    let syms = ElfSymbols::load(&exe()).unwrap();
    syms.resolve(&symbol_of(fragment)).unwrap()
}

/// A one-thread runtime: if anything blocked its only worker, its timers would stop.
pub fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A multi-thread runtime like a service's.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Whether this kernel has the kprobe perf PMU (a kernel with `CONFIG_KPROBES`, like the VM
/// tier's); the host kernel has none.
pub fn has_kprobe_pmu() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists()
}

/// Whether process `pid` does not exist (`kill(pid, 0)` gives `ESRCH`).
pub fn pid_is_dead(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) == Err(nix::errno::Errno::ESRCH)
}

/// A pid that no process has, and none will get during the test: above any `pid_max`
/// (2^22 at most) when possible, checked with `kill(pid, 0)`.
pub fn dead_pid() -> i32 {
    (4_194_000..4_194_300)
        .find(|&p| pid_is_dead(p))
        .expect("a pid that does not exist")
}

/// The `group/event` name of a `*_events` line (`p:GROUP/EVENT TARGET`).
pub fn event_of_line(line: &str) -> Option<&str> {
    line.split_whitespace()
        .next()?
        .split_once(':')
        .map(|(_, n)| n)
}

/// Every `group/event` listed in `uprobe_events` (or `kprobe_events`).
pub fn listed_events(file: &str) -> Vec<String> {
    std::fs::read_to_string(tracefs().join(file))
        .unwrap_or_default()
        .lines()
        .filter_map(event_of_line)
        .map(str::to_string)
        .collect()
}

/// Appends one line to a tracefs `*_events` file (never truncating it).
pub fn write_events(file: &str, line: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(tracefs().join(file))?
        .write_all(line.as_bytes())
}

/// The file offset in this executable of the code at `address` (from `/proc/self/maps`).
pub fn file_offset_of_address(address: usize) -> u64 {
    let address = address as u64;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (lo, hi) = f[0].split_once('-').unwrap();
        let (lo, hi) = (
            u64::from_str_radix(lo, 16).unwrap(),
            u64::from_str_radix(hi, 16).unwrap(),
        );
        if (lo..hi).contains(&address) {
            return address - lo + u64::from_str_radix(f[2], 16).unwrap();
        }
    }
    panic!("{address:#x} is not mapped");
}

/// The file offset of function `f` of this executable.
pub fn file_offset_of(f: fn(u64) -> u64) -> u64 {
    file_offset_of_address(f as usize)
}

/// `N` distinct functions of this executable (monomorphised from one generic).
#[inline(never)]
pub fn numbered<const N: u64>(x: u64) -> u64 {
    std::hint::black_box(x).wrapping_mul(N + 3) ^ N
}

macro_rules! numbered_table {
    () => {
        numbered_table!(@a [0 1 2 3 4 5 6 7 8 9])
    };
    (@a [$($a:literal)*]) => {
        [$( numbered_table!(@b $a [0 1 2 3 4 5 6 7 8 9]) ),*]
    };
    (@b $a:literal [$($b:literal)*]) => {
        [$( numbered_table!(@c $a $b [0 1 2 3 4 5 6 7 8 9]) ),*]
    };
    (@c $a:literal $b:literal [$($c:literal)*]) => {
        [$( numbered::<{ $a * 100 + $b * 10 + $c }> as fn(u64) -> u64 ),*]
    };
}

/// 1000 distinct functions, `functions()[i]` being `numbered::<i>`.
pub fn functions() -> Vec<fn(u64) -> u64> {
    type Table = [[[fn(u64) -> u64; 10]; 10]; 10];
    let table: Table = numbered_table!();
    table.into_iter().flatten().flatten().collect()
}

/// This test executable run again as a child that runs only the test `test`, with the
/// environment `envs`, under `wrapper` (a command line such as `unshare --mount`) if one is
/// given. Its stdin and stdout are pipes: [`ChildTest::expect`] reads what it [`tell`]s, and
/// [`ChildTest::say`] writes what it [`hear`]s. Killed if still running when dropped.
pub struct ChildTest {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl ChildTest {
    pub fn spawn(wrapper: &[&str], test: &str, envs: &[(&str, String)]) -> ChildTest {
        use std::io::BufRead as _;
        use std::process::{Command, Stdio};
        let exe = exe();
        let mut argv: Vec<&std::ffi::OsStr> = wrapper.iter().map(std::ffi::OsStr::new).collect();
        argv.push(exe.as_os_str());
        for arg in ["--exact", test, "--nocapture", "--test-threads=1"] {
            argv.push(std::ffi::OsStr::new(arg));
        }
        let mut child = Command::new(argv[0])
            .args(&argv[1..])
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {argv:?}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ChildTest {
            child,
            stdin,
            lines,
        }
    }

    /// The pid of the child (of the wrapper, if there is one), in this pid namespace.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The rest of the next line the child tells that starts with `word` and a space;
    /// panics if none comes within `timeout`.
    pub fn expect(&mut self, word: &str, timeout: std::time::Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(word).and_then(|r| r.strip_prefix(' ')) {
                        return rest.to_string();
                    }
                }
                Err(e) => panic!("the child never said {word} ({e}); see its stderr above"),
            }
        }
    }

    /// Writes one line to the child's stdin.
    pub fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Closes the child's stdin: [`hear`] returns `None` there.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the child to exit and asserts it succeeded.
    pub fn wait_success(&mut self) {
        self.stdin = None;
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the child failed: {status}");
    }
}

impl Drop for ChildTest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// In a child started by [`ChildTest::spawn`]: one line for the parent, `word` and `rest`.
pub fn tell(word: &str, rest: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{word} {rest}").unwrap();
    out.flush().unwrap();
}

/// In a child started by [`ChildTest::spawn`]: the next line from the parent, `None` once
/// the parent closed stdin.
pub fn hear() -> Option<String> {
    let mut line = String::new();
    match std::io::stdin().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end().to_string()),
    }
}

/// Whether the environment variable `name` is set: the mode a child test runs in.
pub fn child_mode(name: &str) -> bool {
    std::env::var_os(name).is_some()
}

/// Whether `group/event` is listed in `uprobe_events` (or `kprobe_events`). The kernel lists
/// a page of lines per read, so while other processes add and remove events a line can be
/// skipped: an absent one is looked for again a few times before the answer is no.
pub fn is_listed(file: &str, name: &str) -> bool {
    (0..10).any(|i| {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        listed_events(file).iter().any(|n| n == name)
    })
}

/// The inode of this process's pid namespace (`/proc/self/ns/pid` is `pid:[N]`).
pub fn own_pid_namespace() -> u32 {
    let link = std::fs::read_link("/proc/self/ns/pid").expect("/proc/self/ns/pid");
    link.to_str()
        .and_then(|l| l.strip_prefix("pid:["))
        .and_then(|l| l.strip_suffix(']'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a pid namespace link: {link:?}"))
}

/// The start time of process `pid` in clock ticks after boot (field 22 of
/// `/proc/<pid>/stat`), if it exists.
pub fn start_time_of(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// A group name in this crate's format, `probeset_<pid>_<pidns>_<starttime>_<14 hex>`,
/// with a fresh random part.
pub fn owner_group(pid: u32, pidns: u32, start: u64) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let random = (u64::try_from(nanos & 0xffff_ffff_ffff).unwrap() << 8
        ^ SEQ.fetch_add(1, Ordering::Relaxed))
        & 0x00ff_ffff_ffff_ffff;
    format!("probeset_{pid}_{pidns}_{start}_{random:014x}")
}

/// The group of an owner that is provably dead: this pid namespace, a pid no process has.
pub fn dead_owner_group() -> String {
    owner_group(
        u32::try_from(dead_pid()).unwrap(),
        own_pid_namespace(),
        12_345,
    )
}

/// Whether the kprobe tests can run here: root, and a kernel with kprobes (the PMU or
/// `kprobe_events`); on a kernel without (the host) it skips the tier, which the VM runs.
pub fn kprobes_here(test: &str) -> bool {
    if !can_run(test) {
        return false;
    }
    let pmu = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    let events = tracefs().join("kprobe_events").exists();
    if pmu || events {
        true
    } else {
        skip_tier(
            test,
            "this kernel has no kprobes (no kprobe PMU, no kprobe_events); the VM tier runs this",
        );
        false
    }
}
