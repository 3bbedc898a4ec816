//! Who owns a group: the identity of the process that created it, written into the group's
//! name as `probeset_<pid>_<pidns>_<starttime>_<random>`, and the reaper's judgement of
//! whether that process is provably gone.
//!
//! A pid alone says little: a process in another pid namespace has a pid that means
//! something else here (or nothing), and a pid is reused once its process is gone. So the
//! name carries the owner's pid as it sees it, the inode of its pid namespace
//! (`/proc/self/ns/pid`, `pid:[N]`) and its start time (field 22 of `/proc/self/stat`, clock
//! ticks after boot). A reaper removes a group only when it is in the same pid namespace and
//! either no process has that pid or the process that has it started at another time.
//!
//! `/proc/<pid>/stat` shows start times shifted by the reader's time namespace, so start
//! times are written and compared only from the initial time namespace: an owner in a time
//! namespace of its own names pid namespace 0 (never reaped), and a reaper in one judges
//! only pids that no process has.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use super::events::{GROUP_PREFIX, MAX_NAME_LEN};

/// Hex digits of a group's random part (56 bits: it only has to be unique within one
/// owner, whose identity the rest of the name already is).
const RANDOM_DIGITS: usize = 14;

/// The longest group name: a pid of at most 7 digits (`PID_MAX_LIMIT` is 4194304), a pid
/// namespace inode of at most 10 (a `u32`), a start time of at most 20 (a `u64`), the random
/// part and the separators.
pub(crate) const MAX_GROUP_LEN: usize =
    GROUP_PREFIX.len() + 7 + 1 + 10 + 1 + 20 + 1 + RANDOM_DIGITS;
const _: () = assert!(MAX_GROUP_LEN <= MAX_NAME_LEN);

/// The process that created a group, as its name says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Owner {
    /// The pid, as the owner sees it (in its own pid namespace).
    pub pid: u32,
    /// The inode of the owner's pid namespace; 0 when the owner could not tell its identity
    /// exactly (such a group is never reaped).
    pub pidns: u32,
    /// The owner's start time in clock ticks after boot, as the initial time namespace
    /// shows it (0 with `pidns` 0 when unknown).
    pub start: u64,
}

impl Owner {
    /// This process. Read once per pid (a forked child reads its own).
    pub(crate) fn this_process() -> Owner {
        static CACHE: Mutex<Option<Owner>> = Mutex::new(None);
        let pid = std::process::id();
        let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(owner) = cache.filter(|o| o.pid == pid) {
            return owner;
        }
        let owner = Owner::read(pid);
        *cache = Some(owner);
        owner
    }

    /// This process's identity, from `/proc`.
    fn read(pid: u32) -> Owner {
        if let (Some(pidns), Some(start), true) = (
            pid_namespace(Path::new("/proc/self")),
            own_start_time(),
            in_initial_time_namespace(),
        ) {
            return Owner { pid, pidns, start };
        }
        tracing::debug!(
            "cannot read this process's pid namespace or start time from /proc, or they would \
             not compare (a time namespace of its own); its tracefs groups name pid namespace \
             0 and are never reaped"
        );
        Owner {
            pid,
            pidns: 0,
            start: 0,
        }
    }

    /// The group name for this owner with `random` (its low 56 bits) as the random part.
    pub(crate) fn group(&self, random: u64) -> String {
        let random = random & ((1 << (4 * RANDOM_DIGITS)) - 1);
        let group = format!(
            "{GROUP_PREFIX}{}_{}_{}_{random:0width$x}",
            self.pid,
            self.pidns,
            self.start,
            width = RANDOM_DIGITS
        );
        assert!(
            group.len() <= MAX_NAME_LEN,
            "group name {group} is longer than tracefs takes"
        );
        group
    }

    /// The owner named by `group`, if the name is exactly one this crate makes:
    /// `probeset_<pid>_<pidns>_<starttime>_<14 hex>`, numbers in canonical decimal. Anything
    /// else (another tool's group, the `probeset_<pid>_<16 hex>` of earlier versions) is
    /// `None`.
    pub(crate) fn of_group(group: &str) -> Option<Owner> {
        let mut fields = group.strip_prefix(GROUP_PREFIX)?.split('_');
        let pid: u32 = canonical(fields.next()?)?;
        let pidns: u32 = canonical(fields.next()?)?;
        let start: u64 = canonical(fields.next()?)?;
        let random = fields.next()?;
        let random_ok = random.len() == RANDOM_DIGITS
            && random
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        (pid > 0 && random_ok && fields.next().is_none()).then_some(Owner { pid, pidns, start })
    }
}

/// A fresh group name for this process.
pub(crate) fn new_group() -> String {
    Owner::this_process().group(crate::sys::random_u64())
}

/// `text` as a number, only if it is written the one way `to_string` writes it (no sign,
/// no leading zeros, no white space).
fn canonical<T: std::str::FromStr + ToString>(text: &str) -> Option<T> {
    let n: T = text.parse().ok()?;
    (n.to_string() == text).then_some(n)
}

/// The inode of the pid namespace of the process at `proc_dir` (`/proc/self`, `/proc/<pid>`).
fn pid_namespace(proc_dir: &Path) -> Option<u32> {
    let link = std::fs::read_link(proc_dir.join("ns/pid")).ok()?;
    link.to_str()?
        .strip_prefix("pid:[")?
        .strip_suffix(']')
        .and_then(canonical)
}

fn own_start_time() -> Option<u64> {
    start_time(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` text. The command (field 2) is in
/// parentheses and may itself hold spaces and parentheses, so fields are counted after the
/// last `)`, where field 3 begins.
pub(crate) fn start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Whether a group's owner is provably gone, and if not, why not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// No process has the pid, or the one that has it started at another time.
    Gone,
    /// The owner (or what cannot be told from it) may still be alive.
    Kept(&'static str),
}

/// What the reaper knows of itself to judge owners with; read once per run.
#[derive(Debug)]
pub(crate) struct Judge {
    /// The reaper's pid namespace, `None` if it cannot be read.
    pidns: Option<u32>,
    /// Whether start times read from `/proc/<pid>/stat` compare with those in group names:
    /// `/proc` shows the reaper's own pid namespace (else `/proc/<pid>` is someone else's
    /// pid), and the reaper is in the initial time namespace (`/proc/<pid>/stat` shows
    /// start times shifted by the reader's time namespace; owners record theirs only from
    /// the initial one).
    start_times_compare: bool,
    /// Verdicts so far, per owner (a process has one group per event).
    seen: HashMap<Owner, Verdict>,
}

impl Judge {
    /// The judge for this process.
    pub(crate) fn here() -> Judge {
        Judge {
            pidns: pid_namespace(Path::new("/proc/self")),
            start_times_compare: procfs_is_ours() && in_initial_time_namespace(),
            seen: HashMap::new(),
        }
    }

    /// The verdict on the owner of `group`; `Kept` for a name that is not exactly ours.
    pub(crate) fn judge(&mut self, group: &str) -> Verdict {
        let Some(owner) = Owner::of_group(group) else {
            return Verdict::Kept("not a group of this version's format");
        };
        if let Some(&v) = self.seen.get(&owner) {
            return v;
        }
        let v = self.judge_owner(owner);
        self.seen.insert(owner, v);
        v
    }

    fn judge_owner(&self, owner: Owner) -> Verdict {
        if owner.pidns == 0 || self.pidns != Some(owner.pidns) {
            return Verdict::Kept("another pid namespace");
        }
        let Ok(pid) = i32::try_from(owner.pid) else {
            return Verdict::Kept("not a pid");
        };
        // `kill(pid, 0)` asks in this process's pid namespace, the owner's.
        if crate::sys::process_is_gone(pid) {
            return Verdict::Gone;
        }
        if !self.start_times_compare {
            return Verdict::Kept("start times cannot be compared here");
        }
        let Some(start) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| start_time(&s))
        else {
            return Verdict::Kept("cannot read the start time of the pid");
        };
        if start == owner.start {
            Verdict::Kept("alive")
        } else {
            // The pid was reused: the owner is gone.
            Verdict::Gone
        }
    }
}

/// Whether `/proc` is the procfs of this process's own pid namespace: its `NSpid` (the pids
/// from the procfs's namespace down to the process's own) is exactly this process's pid.
fn procfs_is_ours() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let pid = std::process::id().to_string();
    match status.lines().find_map(|l| l.strip_prefix("NSpid:")) {
        Some(nspid) => nspid.split_whitespace().eq([pid.as_str()]),
        // Kernels before 4.1 have no NSpid; the procfs's view of this process then decides.
        None => std::fs::read_link("/proc/self").is_ok_and(|p| p.as_os_str() == pid.as_str()),
    }
}

/// The inode of the initial time namespace (`PROC_TIME_INIT_INO`).
const INITIAL_TIME_NAMESPACE: &str = "time:[4026531834]";

/// Whether this process is in the initial time namespace, whose boot time is the real one
/// (or the kernel has no time namespaces).
fn in_initial_time_namespace() -> bool {
    match std::fs::read_link("/proc/self/ns/time") {
        Ok(link) => link.as_os_str() == INITIAL_TIME_NAMESPACE,
        Err(e) => e.kind() == io::ErrorKind::NotFound && Path::new("/proc/self/ns/pid").exists(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_named_exactly() {
        let me = Owner::this_process();
        assert_eq!(me.pid, std::process::id());
        assert_ne!(me.pidns, 0, "the test runs with /proc");
        let g = new_group();
        assert!(g.starts_with(&format!("probeset_{}_{}_{}_", me.pid, me.pidns, me.start)));
        assert!(g.len() <= MAX_NAME_LEN);
        assert_eq!(Owner::of_group(&g), Some(me));
        assert_ne!(new_group(), g, "groups are random");
    }

    #[test]
    fn the_longest_name_fits() {
        let max = Owner {
            pid: 4_194_304,
            pidns: u32::MAX,
            start: u64::MAX,
        }
        .group(u64::MAX);
        assert_eq!(max.len(), MAX_GROUP_LEN);
        assert_eq!(max.len(), 63);
        assert_eq!(
            max,
            "probeset_4194304_4294967295_18446744073709551615_ffffffffffffff"
        );
        assert_eq!(
            Owner::of_group(&max),
            Some(Owner {
                pid: 4_194_304,
                pidns: u32::MAX,
                start: u64::MAX
            })
        );
    }

    #[test]
    fn only_exact_names_parse() {
        let ok = "probeset_12_4026531836_5000_0123456789abcd";
        assert_eq!(
            Owner::of_group(ok),
            Some(Owner {
                pid: 12,
                pidns: 4_026_531_836,
                start: 5000
            })
        );
        for bad in [
            // The format of earlier versions.
            "probeset_12_00000000deadbeef",
            "probeset_12_ab",
            "probeset_12_4026531836_5000",
            "probeset_12_4026531836_5000_0123456789abc",
            "probeset_12_4026531836_5000_0123456789abcde",
            "probeset_12_4026531836_5000_0123456789ABCD",
            "probeset_12_4026531836_5000_0123456789abcd_x",
            "probeset_012_4026531836_5000_0123456789abcd",
            "probeset_0_4026531836_5000_0123456789abcd",
            "probeset_+12_4026531836_5000_0123456789abcd",
            "probeset_12_4026531836_05000_0123456789abcd",
            "probeset_12_4294967296_5000_0123456789abcd",
            "probeset_12__5000_0123456789abcd",
            "othertool_12_4026531836_5000_0123456789abcd",
        ] {
            assert_eq!(Owner::of_group(bad), None, "{bad}");
        }
    }

    #[test]
    fn start_time_is_field_22() {
        let stat = "4242 (a) b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 200 18446744073709551615";
        assert_eq!(start_time(stat), Some(987_654));
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert_eq!(start_time(&own), Some(Owner::this_process().start));
        assert_eq!(start_time("1 (x) S 1"), None);
    }

    #[test]
    fn judges_only_what_it_can_prove() {
        let me = Owner::this_process();
        let mut judge = Judge::here();
        assert!(judge.start_times_compare);
        let name = |o: Owner| o.group(7);
        assert_eq!(judge.judge(&name(me)), Verdict::Kept("alive"));
        // pid_max is at most 2^22.
        let dead = Owner {
            pid: 4_194_304 + 7,
            ..me
        };
        assert_eq!(judge.judge(&name(dead)), Verdict::Gone);
        let reused = Owner {
            start: me.start + 1,
            ..me
        };
        assert_eq!(judge.judge(&name(reused)), Verdict::Gone);
        let foreign = Owner {
            pidns: me.pidns.wrapping_add(1),
            ..dead
        };
        assert_eq!(
            judge.judge(&name(foreign)),
            Verdict::Kept("another pid namespace")
        );
        let unknown = Owner {
            pidns: 0,
            start: 0,
            ..dead
        };
        assert!(matches!(judge.judge(&name(unknown)), Verdict::Kept(_)));
        assert!(matches!(
            judge.judge("probeset_4194311_00000000deadbeef"),
            Verdict::Kept(_)
        ));
    }
}
