//! Shared helpers of the integration tests (real kernel; root).
#![allow(dead_code)]

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::OnceLock;

use probeset::elf::ElfSymbols;

/// Prints the skip marker the VM runner looks for, bypassing libtest's output capture.
/// Inside the VM (`PROBESET_VM` set) nothing may skip: it panics instead.
pub fn skip(test: &str, reason: &str) {
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

/// A multi-thread runtime like a service's.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
