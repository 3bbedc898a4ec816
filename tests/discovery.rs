//! Symbol discovery against the real host: the C library found the ways users name it, its
//! functions as uprobes (counted exactly once attached), `/proc/PID/maps` resolution, and
//! the kernel listing on a kernel without kprobes.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{can_run, runtime};
use probeset::counter::{Counter, Flavour};
use probeset::discovery::{self, Pattern, IFUNC_REASON};
use probeset::elf::ElfSymbols;

/// (device, inode) of a file: the identity a uprobe is placed on.
fn identity(path: &Path) -> (u64, u64) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    (m.dev(), m.ino())
}

/// The C library this process has mapped, as `/proc/self/maps` names it.
fn mapped_libc() -> PathBuf {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            Path::new(p)
                .file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with("libc.so"))
        })
        .map(PathBuf::from)
        .expect("this test links the C library dynamically")
}

fn own_pid() -> i32 {
    i32::try_from(std::process::id()).unwrap()
}

#[test]
fn c_libc_and_soname_are_the_same_file() {
    let c = discovery::resolve_library_blocking("c", None).unwrap();
    let libc = discovery::resolve_library_blocking("libc", None).unwrap();
    let soname = discovery::resolve_library_blocking("libc.so.6", None).unwrap();
    assert_eq!(c, libc);
    assert_eq!(c, soname);
    assert!(c.is_absolute(), "{c:?}");
    assert_eq!(
        c.file_name().unwrap(),
        "libc.so.6",
        "the soname, not the libc.so linker script"
    );
    assert_eq!(
        identity(&c),
        identity(&mapped_libc()),
        "the library this process runs on"
    );
    // A path is taken as is.
    assert_eq!(
        discovery::resolve_library_blocking(c.to_str().unwrap(), None).unwrap(),
        c
    );
    // Other sonames as users write them, when installed.
    if Path::new("/lib/x86_64-linux-gnu/libssl.so.3").exists() {
        let ssl = discovery::resolve_library_blocking("libssl.so.3", None).unwrap();
        assert_eq!(ssl.file_name().unwrap(), "libssl.so.3");
        assert_eq!(
            identity(&discovery::resolve_library_blocking("ssl", None).unwrap()),
            identity(&ssl)
        );
    }
    let e = discovery::resolve_library_blocking("probeset-nonexistent", None).unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(e.to_string().contains("probeset-nonexistent"), "{e}");
}

#[test]
fn getpid_is_one_probe_at_its_symbol_offset() {
    let found = discovery::user_functions_blocking("c", "getpid", None).unwrap();
    assert_eq!(found.functions.len(), 1, "{:?}", found.functions);
    let f = &found.functions[0];
    let symbols = ElfSymbols::load(&found.binary).unwrap();
    assert_eq!(f.name, "getpid");
    assert_eq!(f.offset, symbols.resolve("getpid").unwrap());
    assert!(f.size > 0);
    assert_eq!(f.probe.binary(), found.binary);
    assert_eq!(f.probe.symbol(), Some("getpid"));
    assert_eq!(f.probe.pid_value(), None);
}

#[test]
fn ifuncs_and_aliases_are_skipped_with_reasons() {
    let found = discovery::user_functions_blocking("c", "*", None).unwrap();
    let symbols = ElfSymbols::load(&found.binary).unwrap();
    let ifuncs: Vec<&str> = symbols
        .functions()
        .iter()
        .filter(|f| f.ifunc && f.size > 0)
        .map(|f| f.name.as_str())
        .collect();
    assert!(
        !ifuncs.is_empty(),
        "glibc on x86_64 selects str*/mem* through IFUNCs"
    );
    for name in &ifuncs {
        assert!(
            found
                .skipped
                .iter()
                .any(|(n, r)| n == name && r == IFUNC_REASON),
            "{name} not skipped as an IFUNC"
        );
        assert!(!found.functions.iter().any(|f| f.name == *name));
    }
    // Distinct offsets only; every alias points at a kept function with its offset.
    let mut offsets: Vec<u64> = found.functions.iter().map(|f| f.offset).collect();
    offsets.sort_unstable();
    let n = offsets.len();
    offsets.dedup();
    assert_eq!(offsets.len(), n, "one probe per offset");
    let open64 = found.skipped.iter().find(|(n, _)| n == "open64");
    assert_eq!(
        open64.map(|(_, r)| r.as_str()),
        Some("alias of open"),
        "open64 is open's alias"
    );
    let open = found.functions.iter().find(|f| f.name == "open").unwrap();
    assert_eq!(open.offset, symbols.resolve("open64").unwrap());
    // Asked for by name, an alias is what is kept.
    let only = discovery::user_functions_blocking("c", "open64", None).unwrap();
    assert_eq!(only.functions.len(), 1);
    assert_eq!(only.functions[0].name, "open64");

    let cookies: Vec<u64> = found.probes().map(|p| p.cookie_value()).take(3).collect();
    assert_eq!(cookies, [0, 1, 2]);
    println!(
        "libc: {} functions, {} skipped ({} IFUNCs)",
        found.functions.len(),
        found.skipped.len(),
        ifuncs.len()
    );
}

#[test]
fn pid_resolves_through_proc_maps() {
    let me = own_pid();
    let via_pid = discovery::resolve_library_blocking("c", Some(me)).unwrap();
    assert_eq!(
        via_pid,
        mapped_libc(),
        "the path this process has mapped, not the cache's"
    );
    let found = discovery::user_functions_blocking("c", "getpid", Some(me)).unwrap();
    assert_eq!(found.binary, mapped_libc());
    assert_eq!(found.functions.len(), 1);
    assert_eq!(found.functions[0].probe.pid_value(), Some(me));
    assert_eq!(
        found.functions[0].offset,
        ElfSymbols::load(&mapped_libc())
            .unwrap()
            .resolve("getpid")
            .unwrap()
    );

    // A library the process does not map falls back to the cache.
    if Path::new("/lib/x86_64-linux-gnu/libssl.so.3").exists() {
        let ssl = discovery::resolve_library_blocking("ssl", Some(me)).unwrap();
        assert_eq!(ssl.file_name().unwrap(), "libssl.so.3");
    }
    // The executable itself, by its file name.
    let exe = std::env::current_exe().unwrap();
    let name = exe.file_name().unwrap().to_str().unwrap();
    assert_eq!(
        identity(&discovery::resolve_library_blocking(name, Some(me)).unwrap()),
        identity(&exe)
    );

    let e = discovery::resolve_library_blocking("c", Some(i32::MAX)).unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(e.to_string().contains(&i32::MAX.to_string()), "{e}");
}

/// The probes discovery returns attach as they are and count exactly, pid filter included.
#[test]
fn discovered_probes_count_exactly() {
    if !can_run("discovered_probes_count_exactly") {
        return;
    }
    runtime().block_on(async {
        let found = discovery::user_functions("c", "getppid", Some(own_pid()))
            .await
            .unwrap();
        let counter = Counter::load(Flavour::Plain, 2).unwrap();
        let probe = found.probes().next().unwrap().cookie(1);
        let link = probe.attach(&counter).await.unwrap();
        for _ in 0..37 {
            std::hint::black_box(std::os::unix::process::parent_id());
        }
        assert_eq!(counter.get(1).unwrap(), 37);
        link.detach().await.unwrap();
    });
}

#[test]
fn kernel_listing_works_without_kprobes() {
    if !Path::new("/proc/kallsyms").exists() {
        common::skip("kernel_listing_works_without_kprobes", "no /proc/kallsyms");
        return;
    }
    let start = Instant::now();
    let found = discovery::kernel_functions_blocking("vfs_*").unwrap();
    let elapsed = start.elapsed();
    println!(
        "kernel_functions(\"vfs_*\"): {} functions, {} skipped, in {elapsed:?} \
         (filter applied: {}, blacklist applied: {})",
        found.functions.len(),
        found.skipped.len(),
        found.filter_functions_applied,
        found.blacklist_applied
    );
    assert!(
        elapsed.as_secs_f64() < 2.0,
        "one pass over kallsyms: {elapsed:?}"
    );
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let names: Vec<&str> = found.functions.iter().map(|f| f.name.as_str()).collect();
    assert!(names.contains(&"vfs_read"), "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("vfs_")));
    let sorted = names.windows(2).all(|w| w[0] < w[1]);
    assert!(sorted, "sorted and distinct");
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap();
    for (name, reason) in &found.skipped {
        if let Some(n) = reason.strip_prefix("ambiguous: ") {
            let count = kallsyms
                .lines()
                .filter(|l| l.split_whitespace().nth(2) == Some(name.as_str()))
                .count();
            assert_eq!(n, format!("{count} addresses"), "{name}");
        }
    }
    let read = found
        .functions
        .iter()
        .find(|f| f.name == "vfs_read")
        .unwrap();
    assert_eq!(read.module, None);
    assert_eq!(read.probe, probeset::Kprobe::new("vfs_read"));

    // Duplicated names exist in every kernel (static functions of the same name).
    let start = Instant::now();
    let all = discovery::kernel_functions_blocking("*").unwrap();
    println!(
        "kernel_functions(\"*\"): {} functions, {} skipped, in {:?}",
        all.functions.len(),
        all.skipped.len(),
        start.elapsed()
    );
    assert!(all.functions.len() > 10_000, "{}", all.functions.len());
    assert!(all
        .skipped
        .iter()
        .any(|(_, r)| r.starts_with("ambiguous: ")));
    assert!(!all.functions.iter().any(|f| f.name.starts_with("__pfx_")));
    assert!(!all
        .functions
        .iter()
        .any(|f| f.module.as_deref() == Some("bpf")));

    // The listing works here; attaching is what this kernel cannot do.
    if !Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        runtime().block_on(async {
            let counter = Counter::load(Flavour::Plain, 1).unwrap();
            let e = read.probe.clone().attach(&counter).await.unwrap_err();
            assert!(e.is_not_supported(), "{e}");
        });
    }
}

#[test]
fn kernel_listing_async_matches_blocking() {
    if !Path::new("/proc/kallsyms").exists() {
        common::skip("kernel_listing_async_matches_blocking", "no /proc/kallsyms");
        return;
    }
    let blocking = discovery::kernel_functions_blocking("vfs_rea*").unwrap();
    let async_ = runtime()
        .block_on(discovery::kernel_functions("vfs_rea*"))
        .unwrap();
    assert_eq!(blocking.functions, async_.functions);
    let err = discovery::kernel_functions_blocking("").unwrap_err();
    assert!(err.is_invalid_input(), "{err}");
}

/// The async lookups answer as their blocking twins, and the old names still forward.
#[test]
#[allow(deprecated)]
fn async_lookups_match_blocking() {
    runtime().block_on(async {
        let libc = discovery::resolve_library("c", None).await.unwrap();
        assert_eq!(
            libc,
            discovery::resolve_library_blocking("c", None).unwrap()
        );
        let e = discovery::resolve_library("", None).await.unwrap_err();
        assert!(e.is_invalid_input(), "{e}");

        let found = discovery::user_functions("c", "getpid", None)
            .await
            .unwrap();
        let old = discovery::user_functions_async("c", "getpid", None)
            .await
            .unwrap();
        assert_eq!(found.binary, libc);
        assert_eq!(found.functions, old.functions);
        if Path::new("/proc/kallsyms").exists() {
            let found = discovery::kernel_functions("vfs_rea*").await.unwrap();
            let old = discovery::kernel_functions_async("vfs_rea*").await.unwrap();
            assert_eq!(found.functions, old.functions);
        }
    });
}

#[test]
fn patterns_route_to_the_right_listing() {
    assert!(matches!(
        discovery::parse_pattern("vfs_*").unwrap(),
        Pattern::Kernel { .. }
    ));
    let Pattern::User { target, glob } = discovery::parse_pattern("c:getpid").unwrap() else {
        panic!("c:getpid is a user pattern");
    };
    let found = discovery::user_functions_blocking(&target, &glob, None).unwrap();
    assert_eq!(found.functions.len(), 1);
    let e = discovery::parse_pattern("c:").unwrap_err();
    assert!(e.is_invalid_input(), "{e}");
}
