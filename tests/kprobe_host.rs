//! Kprobes on a kernel without them (the host: no `CONFIG_KPROBES`): every attach is a clear
//! not-supported error that says kprobes are missing, on every backend, and leaves nothing
//! behind; malformed input is still invalid input. On a kernel with kprobes (the VM tier)
//! there is nothing to check here: the VM-tier tests attach real kprobes.
//!
//! One `#[test]`, because it compares process-wide fd counts.

mod common;

use common::{can_run, fd_count, has_kprobe_pmu, our_events, runtime, tracefs};
use probeset::cleanup::wait_idle;
use probeset::counter::{Counter, Flavour};
use probeset::{Backend, Kprobe};

const BACKENDS: [Backend; 3] = [Backend::Auto, Backend::Pmu, Backend::Tracefs];

#[test]
fn kprobes_are_not_supported_without_config_kprobes() {
    if !can_run("kprobes_are_not_supported_without_config_kprobes") {
        return;
    }
    if has_kprobe_pmu() {
        eprintln!(
            "kprobe_host: this kernel has the kprobe PMU; the no-kprobes checks are for the \
             host, the VM-tier tests cover real kprobes"
        );
        return;
    }
    let root = tracefs();
    assert!(
        !root.join("kprobe_events").exists(),
        "a kernel without the kprobe PMU but with kprobe_events: the checks below assume neither"
    );
    let pid = std::process::id();
    runtime().block_on(async {
        let counter = Counter::load(Flavour::Plain, 2).unwrap();
        let fds = fd_count();
        let clean = |ctx: &str| {
            assert_eq!(fd_count(), fds, "{ctx}: fds left open");
            assert!(our_events("kprobe_events", pid).is_empty(), "{ctx}");
            assert!(our_events("uprobe_events", pid).is_empty(), "{ctx}");
        };

        // (probe, backends); maxactive is invalid input with the PMU (checked below).
        let all = &BACKENDS[..];
        let probes = [
            (Kprobe::new("vfs_read"), all),
            (Kprobe::retprobe("vfs_read"), all),
            (Kprobe::new("vfs_read").offset(4).cookie(1), all),
            (Kprobe::new("sys_getpid"), all),
            (
                Kprobe::retprobe("vfs_read").maxactive(16),
                &[Backend::Auto, Backend::Tracefs][..],
            ),
        ];
        for (probe, backends) in probes {
            for &backend in backends {
                let ctx = format!("{probe:?} on {backend:?}");
                let err = probe
                    .clone()
                    .backend(backend)
                    .attach(&counter)
                    .await
                    .expect_err(&ctx);
                assert!(err.is_not_supported(), "{ctx}: {err:?} ({err})");
                assert!(
                    !err.is_not_found() && !err.is_invalid_input() && !err.is_permission_denied(),
                    "{ctx}: {err:?}"
                );
                let msg = err.to_string();
                assert!(
                    msg.to_lowercase().contains("kprobe"),
                    "{ctx}: the message should say kprobes are missing: {msg}"
                );
                eprintln!("kprobe_host: {ctx}: {msg}");
                wait_idle().await;
                clean(&ctx);
            }
        }

        // Malformed input is invalid before the kernel is asked, kprobes or not.
        let invalid = [
            Kprobe::new("1abc"),
            Kprobe::new("a b"),
            Kprobe::new(""),
            Kprobe::retprobe("vfs_read").offset(8),
            Kprobe::retprobe("vfs_read")
                .maxactive(16)
                .backend(Backend::Pmu),
        ];
        for probe in invalid {
            for backend in BACKENDS {
                let probe = if probe.backend_value() == Backend::Auto {
                    probe.clone().backend(backend)
                } else {
                    probe.clone()
                };
                let ctx = format!("{probe:?}");
                let err = probe.attach(&counter).await.expect_err(&ctx);
                assert!(err.is_invalid_input(), "{ctx}: {err:?} ({err})");
                wait_idle().await;
                clean(&ctx);
            }
        }

        // A program loaded for kprobe_multi (when this kernel loads one at all) cannot be
        // attached either: no kprobe multi links without CONFIG_FPROBE.
        match Counter::load(Flavour::KprobeMulti, 2) {
            Ok(multi) => {
                let ctx = "a kprobe_multi program on Backend::Auto";
                let err = Kprobe::new("vfs_read").attach(&multi).await.expect_err(ctx);
                assert!(err.is_not_supported(), "{ctx}: {err:?} ({err})");
                assert!(
                    err.to_string().to_lowercase().contains("kprobe"),
                    "{ctx}: {err}"
                );
                drop(multi);
                wait_idle().await;
                clean(ctx);
            }
            Err(e) => eprintln!("kprobe_host: no kprobe_multi program here ({e}); not checked"),
        }
    });
}
