use std::sync::Arc;

use super::*;
use crate::backend::Backend;
use crate::kprobe::Kprobe;
use crate::resolve::Binary;
use crate::uprobe::Uprobe;

fn up(f: &str) -> Probe {
    Uprobe::new("/bin/x", f).into()
}

fn held_none(_: &Probe) -> bool {
    false
}

fn member(p: &Probe, offset: u64) -> Member {
    Member {
        probe: p.clone(),
        offset,
        symbol: String::new(),
        ref_ctr: 0,
        cookie: p.cookie_value(),
    }
}

/// The key of uprobes on one of two files: any readable files do, a key is an open inode.
fn ukey(path: &str) -> MultiKey {
    let file = match path {
        "/bin/x" => "Cargo.toml",
        _ => "src/lib.rs",
    };
    let binary = Binary::open(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file));
    MultiKey::Uprobe {
        binary: Arc::new(binary.unwrap()),
        pid: None,
        ret: false,
        session: false,
    }
}

#[test]
fn a_probe_repeated_in_a_batch_is_attached_once() {
    let (fresh, bad) = prepare(
        vec![up("a"), up("b"), up("a").with_cookie(9)],
        held_none,
        None,
    );
    assert_eq!(fresh, vec![up("a"), up("b")]);
    assert_eq!(fresh[0].cookie_value(), 0, "the first of the repeats wins");
    assert!(bad.is_empty());
}

#[test]
fn probes_already_held_are_skipped_and_bad_ones_named() {
    let held = |p: &Probe| *p == up("a");
    let (fresh, bad) = prepare(vec![up("a"), up(""), up("c")], held, None);
    assert_eq!(fresh, vec![up("c")]);
    assert_eq!(bad.len(), 1);
    assert!(bad[0].1.is_invalid_input());
}

#[test]
fn auto_cookies_take_the_lowest_free_cookie() {
    // Held probes use 0 and 2; the batch names 3 itself.
    let used = BTreeSet::from([0, 2]);
    let batch = vec![up("a"), up("b").with_cookie(3), up("c"), up("d")];
    let (fresh, _) = prepare(batch, held_none, Some(used));
    let cookies: Vec<u64> = fresh.iter().map(Probe::cookie_value).collect();
    assert_eq!(cookies, vec![1, 3, 4, 5]);
}

#[test]
fn a_freed_cookie_is_reused() {
    // The probe that had cookie 1 was removed: 1 is free again.
    let (fresh, _) = prepare(vec![up("new")], held_none, Some(BTreeSet::from([0, 2])));
    assert_eq!(fresh[0].cookie_value(), 1);
}

#[test]
fn without_auto_cookies_cookies_stay_as_given() {
    let (fresh, _) = prepare(vec![up("a"), up("b")], held_none, None);
    assert!(fresh.iter().all(|p| p.cookie_value() == 0));
}

#[test]
fn grouping_one_link_per_key_and_a_second_round_for_a_repeated_target() {
    let a = up("a");
    let a_tracefs: Probe = Uprobe::new("/bin/x", "a").backend(Backend::Tracefs).into();
    let b = up("b");
    let other: Probe = Uprobe::new("/bin/y", "a").into();
    let members = vec![
        (ukey("/bin/x"), member(&a, 0x10)),
        (ukey("/bin/y"), member(&other, 0x10)),
        (ukey("/bin/x"), member(&a_tracefs, 0x10)),
        (ukey("/bin/x"), member(&b, 0x20)),
    ];
    let groups = group(members);
    let shape: Vec<(MultiKey, Vec<u64>)> = groups
        .iter()
        .map(|(k, m)| (k.clone(), m.iter().map(|m| m.offset).collect()))
        .collect();
    assert_eq!(
        shape,
        vec![
            (ukey("/bin/x"), vec![0x10, 0x20]),
            (ukey("/bin/y"), vec![0x10]),
            (ukey("/bin/x"), vec![0x10]),
        ]
    );
}

#[test]
fn kprobes_group_by_direction() {
    let k = |s: &str| Probe::from(Kprobe::new(s));
    let r = |s: &str| Probe::from(Kprobe::retprobe(s));
    let km = |p: &Probe| Member {
        symbol: match p {
            Probe::Kprobe(k) => k.symbol().to_string(),
            Probe::Uprobe(_) => unreachable!(),
        },
        ..member(p, 0)
    };
    let entry = MultiKey::Kprobe {
        ret: false,
        by_address: false,
        session: false,
    };
    let ret = MultiKey::Kprobe {
        ret: true,
        by_address: false,
        session: false,
    };
    let groups = group(vec![
        (entry.clone(), km(&k("a"))),
        (ret.clone(), km(&r("a"))),
        (entry.clone(), km(&k("b"))),
    ]);
    assert_eq!(groups.len(), 2);
    assert_eq!((&groups[0].0, groups[0].1.len()), (&entry, 2));
    assert_eq!((&groups[1].0, groups[1].1.len()), (&ret, 1));
}

/// `n` members on `/bin/x` named `prefix0`, `prefix1`, ...
fn members(prefix: &str, n: usize) -> Vec<Member> {
    (0..n)
        .map(|i| member(&up(&format!("{prefix}{i}")), i as u64))
        .collect()
}

#[test]
fn a_removal_rebuilds_its_link_once_without_the_removed_probes() {
    let key = ukey("/bin/x");
    let big = members("big", 100);
    let links = [(7, &key, &big[..])];
    let gone = vec![up("big3"), up("big50")];
    let plans = rebuilds(links, HashMap::from([(7, gone.clone())]));
    assert_eq!(plans.len(), 1);
    let (k, plan) = &plans[0];
    assert_eq!(k, &key);
    assert_eq!(plan.ids, vec![7]);
    assert_eq!(plan.gone, gone);
    assert_eq!(plan.keep.len(), 98);
    assert!(!plan.keep.iter().any(|m| gone.contains(&m.probe)));
}

#[test]
fn compaction_folds_in_small_links_of_the_same_key_only() {
    let x = ukey("/bin/x");
    let y = ukey("/bin/y");
    let hit = members("hit", 100);
    let small = members("small", COMPACT_BELOW - 1);
    let at_threshold = members("edge", COMPACT_BELOW);
    let other_key = members("other", 3);
    let links = [
        (1, &x, &hit[..]),
        (2, &x, &small[..]),
        (3, &x, &at_threshold[..]),
        (4, &y, &other_key[..]),
    ];
    let plans = rebuilds(links, HashMap::from([(1, vec![up("hit0")])]));
    assert_eq!(plans.len(), 1);
    let plan = &plans[0].1;
    assert_eq!(
        plan.ids,
        vec![1, 2],
        "the small link joins, the one at the threshold does not"
    );
    assert_eq!(plan.keep.len(), 99 + COMPACT_BELOW - 1);
}

#[test]
fn removing_every_probe_of_a_link_keeps_nothing() {
    let key = ukey("/bin/x");
    let two = members("p", 2);
    let plans = rebuilds(
        [(5, &key, &two[..])],
        HashMap::from([(5, vec![up("p0"), up("p1")])]),
    );
    assert!(plans[0].1.keep.is_empty());
}

#[test]
fn the_last_change_to_a_probe_wins() {
    let batch = vec![
        Change::Attach(up("a")),
        Change::Attach(up("b")),
        Change::Detach(up("a")),
    ];
    let c = coalesce(&batch);
    assert_eq!(c.attach, vec![up("b")]);
    assert_eq!(c.detach, vec![up("a")]);
    assert_eq!(c.last, vec![false, true, true]);
}

#[test]
fn detach_then_attach_in_one_burst_is_an_attach() {
    let batch = vec![Change::Detach(up("a")), Change::Attach(up("a"))];
    let c = coalesce(&batch);
    assert_eq!(c.attach, vec![up("a")]);
    assert!(c.detach.is_empty());
    assert_eq!(c.last, vec![false, true]);
}

#[test]
fn changes_compare_probes_without_the_cookie() {
    let batch = vec![
        Change::Attach(up("a").with_cookie(1)),
        Change::Attach(up("a").with_cookie(2)),
    ];
    let c = coalesce(&batch);
    assert_eq!(c.attach.len(), 1);
    assert_eq!(c.attach[0].cookie_value(), 2);
}

#[test]
fn splits_evenly() {
    assert_eq!(
        split(vec![1, 2, 3, 4, 5], 2),
        vec![vec![1, 2, 3], vec![4, 5]]
    );
    assert_eq!(split(vec![1, 2], 8), vec![vec![1], vec![2]]);
    assert_eq!(split(Vec::<u8>::new(), 4), Vec::<Vec<u8>>::new());
    assert_eq!(split(vec![1, 2, 3], 1), vec![vec![1, 2, 3]]);
}
