//! What the kernel lost: per link, its id, its program and the hits it missed
//! ([`LinkInfo`], from [`Link::info`](crate::link::Link::info)); per program, its recursion
//! misses and run statistics ([`ProgramStats`], from [`program_stats`]); per set, both
//! ([`SetHealth`], from [`ProbeSet::health`](crate::probe_set::ProbeSet::health)).
//!
//! Every value the kernel does not report is `None`, never 0: which kernel reports what is
//! said on each field. The readers are cheap blocking calls: one `bpf(2)` per link or
//! program, one read of `/proc/sys/kernel/bpf_stats_enabled` per program, and on kernels
//! without link counters one read of tracefs' `kprobe_profile` per query.
//!
//! ```no_run
//! # async fn f() -> Result<(), probeset::Error> {
//! use probeset::counter::{Counter, Flavour};
//! use probeset::{Kprobe, ProbeSet};
//!
//! let counter = Counter::load(Flavour::KprobeMulti, 4)?;
//! let mut set = ProbeSet::new(&counter)?;
//! set.attach([Kprobe::new("vfs_read"), Kprobe::new("vfs_write")]).await?;
//! let health = set.health().await?;
//! for link in &health.links {
//!     // 6.7+: how often the kernel skipped the program on these probes.
//!     println!("{} probes: missed {:?}", link.probes.len(), link.info.missed);
//! }
//! println!("recursion misses: {:?}", health.program.recursion_misses);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};

use crate::error::Error;
use crate::probe::Probe;
use crate::sys::bpf;
use crate::tracefs::mount;
use crate::validate;

/// The kernel object that holds a program on its probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LinkType {
    /// `BPF_LINK_TYPE_PERF_EVENT` (5.15+): the program on one perf event.
    PerfEvent,
    /// No BPF link: the program was set on the perf event with `PERF_EVENT_IOC_SET_BPF`
    /// (kernels before 5.15).
    PerfEventIoctl,
    /// `BPF_LINK_TYPE_KPROBE_MULTI` (5.18+; kprobe session links too).
    KprobeMulti,
    /// `BPF_LINK_TYPE_UPROBE_MULTI` (6.6+; uprobe session links too).
    UprobeMulti,
    /// Another `enum bpf_link_type` value.
    Other(u32),
}

/// What the kernel tells about one link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct LinkInfo {
    /// The link's id (as `bpftool link` lists it); `None` for
    /// [`LinkType::PerfEventIoctl`], which has no link.
    pub id: Option<u32>,
    /// The id of the program on the link (as `bpftool prog` lists it, and
    /// [`ProgramStats::id`]).
    pub program_id: u32,
    /// What holds the program.
    pub link_type: LinkType,
    /// How often the kernel did not run the program on a probe of this link, when the
    /// kernel counts it:
    /// - a kprobe or kretprobe on a perf event (6.7+, `perf_event.kprobe.missed` of
    ///   `bpf_link_info`): the kprobe's misses (a kprobe hit while another ran on the same
    ///   CPU) plus, for a kretprobe, the returns it could not catch because all `maxactive`
    ///   instances were in use;
    /// - a kprobe multi or session link (6.7+, `kprobe_multi.missed`): the fprobe's misses
    ///   (a probed function hit while the fprobe handler already ran on that CPU, or a
    ///   return with no free return instance); the program's own recursion misses are in
    ///   [`ProgramStats::recursion_misses`];
    /// - before 6.7, a kprobe of the tracefs backend: the misses column of tracefs'
    ///   `kprobe_profile` for its event, the same counters, kretprobe instance misses
    ///   included (measured on 6.1: the same 9 misses as 6.12's link counter); `None` if
    ///   the event's name is listed more than once (events of other groups can share it)
    ///   or the file cannot be read;
    /// - `None` for uprobes (the kernel has no such counter for them: a uprobe always runs
    ///   its program), for PMU kprobes before 6.7, and on kernels before 6.7 otherwise.
    pub missed: Option<u64>,
}

/// What the kernel tells about a program: how often it was skipped, how often it ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ProgramStats {
    /// The program's id.
    pub id: u32,
    /// How often the kernel skipped the program because it was already running on that CPU
    /// (`recursion_misses` of `bpf_prog_info`, 5.12+; `None` before).
    pub recursion_misses: Option<u64>,
    /// How often the program ran (`run_cnt`, 5.1+). Counted only while
    /// `kernel.bpf_stats_enabled` is 1 (it costs ~20 ns a run): `None` when that sysctl
    /// reads 0 or cannot be read. Statistics enabled through a `BPF_ENABLE_STATS` fd
    /// do not show in the sysctl, so they read `None` here too.
    pub run_count: Option<u64>,
    /// The total time the program ran, in nanoseconds (`run_time_ns`, 5.1+); `None` as
    /// [`ProgramStats::run_count`].
    pub run_time_ns: Option<u64>,
}

/// One link of a set: the probes it carries and what the kernel tells about it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinkHealth {
    /// The probes on the link, with their cookies: one for a per-probe link, every member
    /// of a multi link.
    pub probes: Vec<Probe>,
    /// The link.
    pub info: LinkInfo,
}

/// What the kernel tells about a set: its program once, and each of its links.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SetHealth {
    /// The set's program.
    pub program: ProgramStats,
    /// One entry per kernel link, in no particular order.
    pub links: Vec<LinkHealth>,
}

/// The run statistics of `prog` (any BPF program). Blocking but cheap: one `bpf(2)` and one
/// read of `/proc/sys/kernel/bpf_stats_enabled`, so fine to call from async code.
///
/// # Errors
/// [`Error::is_invalid_input`] for an fd that is not a BPF program; permission denied
/// without the right to read the program's info.
pub fn program_stats(prog: impl AsFd) -> Result<ProgramStats, Error> {
    validate::program_fd(prog.as_fd())?;
    let raw = bpf::prog_stats(prog.as_fd())
        .map_err(|e| Error::syscall("BPF_OBJ_GET_INFO_BY_FD", "the program fd", e))?;
    let stats_on = stats_enabled();
    Ok(ProgramStats {
        id: raw.id,
        recursion_misses: raw.recursion_misses,
        run_count: raw.run_cnt.filter(|_| stats_on),
        run_time_ns: raw.run_time_ns.filter(|_| stats_on),
    })
}

/// Whether `kernel.bpf_stats_enabled` reads non-zero.
fn stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .is_ok_and(|s| s.trim().parse::<u32>().is_ok_and(|v| v != 0))
}

/// Where one link's info comes from: the BPF link, or the perf event when there is no link,
/// and the tracefs event of a kprobe (for `kprobe_profile`).
#[derive(Debug)]
pub(crate) struct LinkSource<F> {
    pub link: Option<F>,
    pub perf: Option<F>,
    /// `group/event`.
    pub tracefs_event: Option<String>,
    pub kprobe: bool,
}

/// The info of each source, in order: one `bpf(2)` each, and `kprobe_profile` read at most
/// once, for tracefs kprobes whose link has no missed count.
///
/// # Errors
/// The first link whose info the kernel refuses.
pub(crate) fn read_links<F: AsFd>(sources: &[LinkSource<F>]) -> Result<Vec<LinkInfo>, Error> {
    let mut profile: Option<HashMap<String, Option<u64>>> = None;
    sources
        .iter()
        .map(|source| {
            let mut info = read_one(source)?;
            if info.missed.is_none() && source.kprobe {
                if let Some(event) = &source.tracefs_event {
                    let name = event.rsplit('/').next().unwrap_or(event);
                    let misses = profile.get_or_insert_with(kprobe_profile);
                    info.missed = misses.get(name).copied().flatten();
                }
            }
            Ok(info)
        })
        .collect()
}

fn read_one<F: AsFd>(source: &LinkSource<F>) -> Result<LinkInfo, Error> {
    if let Some(link) = &source.link {
        let raw = bpf::link_info(link.as_fd())
            .map_err(|e| Error::syscall("BPF_OBJ_GET_INFO_BY_FD", "a BPF link", e))?;
        return Ok(LinkInfo {
            id: Some(raw.id),
            program_id: raw.prog_id,
            link_type: match raw.link_type {
                bpf::BPF_LINK_TYPE_PERF_EVENT => LinkType::PerfEvent,
                bpf::BPF_LINK_TYPE_KPROBE_MULTI => LinkType::KprobeMulti,
                bpf::BPF_LINK_TYPE_UPROBE_MULTI => LinkType::UprobeMulti,
                other => LinkType::Other(other),
            },
            missed: raw.missed,
        });
    }
    let perf: Option<BorrowedFd<'_>> = source.perf.as_ref().map(AsFd::as_fd);
    let Some(perf) = perf else {
        return Err(Error::syscall(
            "BPF_OBJ_GET_INFO_BY_FD",
            "a released link",
            std::io::Error::from_raw_os_error(libc::EBADF),
        ));
    };
    let program_id = bpf::perf_event_prog_id(perf).map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => Error::permission(
            "BPF_TASK_FD_QUERY",
            "a perf event",
            "CAP_SYS_ADMIN (the program was set on the perf event by ioctl: no BPF link to ask)",
            e,
        ),
        _ => Error::syscall("BPF_TASK_FD_QUERY", "a perf event", e),
    })?;
    Ok(LinkInfo {
        id: None,
        program_id,
        link_type: LinkType::PerfEventIoctl,
        missed: None,
    })
}

/// tracefs' `kprobe_profile`: each event name's misses, `None` for a name listed more than
/// once (the file does not say the group). Empty when it cannot be read.
fn kprobe_profile() -> HashMap<String, Option<u64>> {
    let text = mount::mount_point()
        .and_then(|root| std::fs::read_to_string(root.join("kprobe_profile")).ok())
        .unwrap_or_default();
    parse_profile(&text)
}

/// Parses `kprobe_profile` lines (`  EVENT  HITS  MISSES`).
fn parse_profile(text: &str) -> HashMap<String, Option<u64>> {
    let mut out: HashMap<String, Option<u64>> = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(name), Some(_hits), Some(misses), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Ok(misses) = misses.parse::<u64>() else {
            continue;
        };
        out.entry(name.to_string())
            .and_modify(|seen| *seen = None)
            .or_insert(Some(misses));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_lines_give_misses_and_repeated_names_give_none() {
        let text =
            "  __x64_sys_nanosleep                                    12               3\n  \
                    vfs_read   5  0\n  vfs_read   7  1\n  broken line\n  x 1 notanumber\n";
        let p = parse_profile(text);
        assert_eq!(p.get("__x64_sys_nanosleep"), Some(&Some(3)));
        assert_eq!(p.get("vfs_read"), Some(&None));
        assert_eq!(p.get("broken"), None);
        assert_eq!(p.get("x"), None);
    }
}
