//! Session programs: one link runs the program on entry and on return of each function
//! (uprobe sessions on this host's 6.18; kprobe sessions are tested in the VM tier). Host
//! tier; root.

mod common;

use std::hint::black_box;

use common::{can_run, exe, runtime, symbol_of};
use probeset::counter::{Counter, Flavour};
use probeset::{LinkKind, Probe, ProbeSet, ProgramKind, Uprobe};

#[inline(never)]
fn session_a(x: u64) -> u64 {
    black_box(x).wrapping_mul(59) ^ 0x4d
}

#[inline(never)]
fn session_b(x: u64) -> u64 {
    black_box(x).wrapping_mul(61) ^ 0x5d
}

fn call(f: fn(u64) -> u64, n: u64) {
    for i in 0..n {
        black_box(f(i));
    }
}

#[test]
fn a_uprobe_session_counts_entry_and_return_through_one_link() {
    if !can_run("a_uprobe_session_counts_entry_and_return_through_one_link") {
        return;
    }
    call(session_a, 1);
    call(session_b, 1);
    runtime().block_on(async {
        // Entry returns 0: the return run follows, so each call counts twice.
        let both = Counter::load(Flavour::UprobeSession, 4).unwrap();
        let link = Uprobe::new(exe(), symbol_of("session_a"))
            .cookie(1)
            .attach(&both)
            .await
            .unwrap();
        assert_eq!(link.kind(), LinkKind::UprobeSession);
        call(session_a, 7);
        assert_eq!(both.get(1).unwrap(), 14, "7 entries and 7 returns");
        link.detach().await.unwrap();

        // Entry returns 1: the kernel skips the return run, so each call counts once.
        let entry = Counter::load_entry_only(Flavour::UprobeSession, 4).unwrap();
        let link = Uprobe::new(exe(), symbol_of("session_a"))
            .cookie(1)
            .attach(&entry)
            .await
            .unwrap();
        call(session_a, 7);
        assert_eq!(entry.get(1).unwrap(), 7, "7 entries, no return");
        link.detach().await.unwrap();

        // A set of a session program: one session link for the batch.
        both.reset().unwrap();
        let mut set = ProbeSet::new(&both).unwrap();
        set.attach([
            Uprobe::new(exe(), symbol_of("session_a")).cookie(2),
            Uprobe::new(exe(), symbol_of("session_b")).cookie(3),
        ])
        .await
        .unwrap();
        assert_eq!(set.program_kind(), Some(ProgramKind::UprobeSession));
        assert_eq!(set.link_count(), 1);
        call(session_a, 5);
        call(session_b, 3);
        assert_eq!(&both.counts().unwrap()[2..4], &[10, 6]);

        // A return probe makes no sense for a session program.
        let ret: Probe = Uprobe::retprobe(exe(), symbol_of("session_a")).into();
        let err = set.insert(ret).await.unwrap_err();
        assert!(err.is_invalid_input(), "{err}");
        assert!(err.to_string().contains("entry probe"), "{err}");
        set.detach().await.unwrap();
        call(session_a, 5);
        assert_eq!(both.get(2).unwrap(), 10, "nothing counts after detach");
    });
}
