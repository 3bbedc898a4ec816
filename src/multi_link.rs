//! `kprobe_multi` and `uprobe_multi` links: what a link's members are, creating a link
//! (the one errno map of each link kind), and bisecting a rejected group to find the
//! probes at fault. Every multi link the crate makes is created here.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::error::Error;
use crate::kprobe::Kprobe;
use crate::link::{Attached, LinkKind};
use crate::perf_event::ENOTSUPP;
use crate::probe::Probe;
use crate::resolve::{Binary, Resolver};
use crate::sys::bpf;
use crate::uprobe::Uprobe;

/// Which multi link a probe can share: the kernel makes one link per binary, pid and
/// direction for uprobes, per direction for kprobes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum MultiKey {
    Uprobe {
        /// The file (compared by inode), held open: a rebuild gives the kernel the same
        /// inode, whatever the path names by then.
        binary: Arc<Binary>,
        pid: Option<i32>,
        ret: bool,
        session: bool,
    },
    Kprobe {
        ret: bool,
        /// The members are kernel text addresses (a link takes names or addresses).
        by_address: bool,
        session: bool,
    },
}

/// How a link of `key` is held.
fn link_kind(key: &MultiKey) -> LinkKind {
    match key {
        MultiKey::Uprobe { session: false, .. } => LinkKind::UprobeMulti,
        MultiKey::Uprobe { session: true, .. } => LinkKind::UprobeSession,
        MultiKey::Kprobe { session: false, .. } => LinkKind::KprobeMulti,
        MultiKey::Kprobe { session: true, .. } => LinkKind::KprobeSession,
    }
}

/// A multi link's attach type: plain multi, or session (entry and return in one link).
fn attach_type(key: &MultiKey) -> u32 {
    match key {
        MultiKey::Uprobe { session: false, .. } => bpf::BPF_TRACE_UPROBE_MULTI,
        MultiKey::Uprobe { session: true, .. } => bpf::BPF_TRACE_UPROBE_SESSION,
        MultiKey::Kprobe { session: false, .. } => bpf::BPF_TRACE_KPROBE_MULTI,
        MultiKey::Kprobe { session: true, .. } => bpf::BPF_TRACE_KPROBE_SESSION,
    }
}

/// A probe resolved for a multi link.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub probe: Probe,
    /// File offset (uprobe), kernel text address (kprobe by address), or 0.
    pub offset: u64,
    /// Kernel symbol as the kernel knows it (kprobe; maybe syscall-prefixed), or empty.
    pub symbol: String,
    pub ref_ctr: u64,
    pub cookie: u64,
}

/// `u` (which is `probe`) as a member of a uprobe multi link.
///
/// # Errors
/// As [`Resolver::uprobe`].
pub(crate) fn uprobe_member(
    u: &Uprobe,
    probe: &Probe,
    session: bool,
    resolver: &mut Resolver,
) -> Result<(MultiKey, Member), Error> {
    if let Some(pid) = u.pid_value() {
        refuse_thread_id(pid, probe)?;
    }
    let target = resolver.uprobe(u)?;
    let key = MultiKey::Uprobe {
        binary: target.binary,
        pid: u.pid_value(),
        ret: u.is_retprobe(),
        session,
    };
    let member = Member {
        probe: probe.clone(),
        offset: target.offset,
        symbol: String::new(),
        ref_ctr: u.ref_ctr_offset_value(),
        cookie: u.cookie_value(),
    };
    Ok((key, member))
}

/// A uprobe multi link filters by process (`pid` is a thread group): the id of a thread that
/// is not its process's leader is refused, naming the process to give instead. (A perf
/// event takes a thread id and counts that thread only.) An id `/proc` does not know is left
/// to the kernel, which says whether it exists.
fn refuse_thread_id(pid: i32, probe: &Probe) -> Result<(), Error> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Ok(());
    };
    let tgid = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse::<i32>().ok());
    match tgid {
        Some(tgid) if tgid != pid => Err(Error::invalid(
            format!("pid {pid} for {probe}"),
            format!(
                "{pid} is a thread of process {tgid}, and a uprobe multi link filters by \
                 process: give pid {tgid} (a plain program's perf event can filter one thread)"
            ),
        )),
        _ => Ok(()),
    }
}

/// `k` (which is `probe`) as a member of a kprobe multi link. A plain symbol goes as
/// given: it is checked against `/proc/kallsyms` only if the kernel rejects the link. An
/// address (checked against kallsyms) and a `MOD:SYM` (resolved there: the kernel's multi
/// link takes bare names only) go by address.
///
/// # Errors
/// An address no kernel function holds, a `MOD:SYM` that does not exist or is ambiguous.
pub(crate) fn kprobe_member(
    k: &Kprobe,
    probe: &Probe,
    session: bool,
    resolver: &mut Resolver,
) -> Result<(MultiKey, Member), Error> {
    let address = match k.address() {
        Some(a) => {
            resolver.kernel_function_at(a)?;
            Some(a)
        }
        None if k.symbol().contains(':') => Some(resolver.module_function(k.symbol())?),
        None => None,
    };
    let key = MultiKey::Kprobe {
        ret: k.is_retprobe(),
        by_address: address.is_some(),
        session,
    };
    let member = Member {
        probe: probe.clone(),
        offset: address.unwrap_or(0),
        symbol: if address.is_some() {
            String::new()
        } else {
            k.symbol().to_string()
        },
        ref_ctr: 0,
        cookie: k.cookie_value(),
    };
    Ok((key, member))
}

/// How a multi link is named in messages: its probe, or its size and target.
fn describe(key: &MultiKey, members: &[Member]) -> String {
    match (members, key) {
        ([one], _) => one.probe.to_string(),
        (_, MultiKey::Uprobe { binary, .. }) => format!(
            "a uprobe multi link of {} probes on {:?}",
            members.len(),
            binary.path()
        ),
        (_, MultiKey::Kprobe { .. }) => {
            format!("a kprobe multi link of {} kernel symbols", members.len())
        }
    }
}

/// Maps the errno of creating a uprobe multi link.
fn uprobe_multi_error(what: String, pid: Option<i32>, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ENOENT) => Error::not_found(what, "", Some(e)),
        Some(libc::EINVAL) => {
            Error::not_found(what, "the offset is outside the binary's text", Some(e))
        }
        Some(libc::ESRCH) => Error::not_found(
            format!("process {} (for {what})", pid.unwrap_or(-1)),
            "the pid does not exist",
            Some(e),
        ),
        Some(ENOTSUPP) => Error::unprobeable(what, e),
        Some(libc::EOPNOTSUPP) => Error::not_supported(
            "uprobe multi links",
            "the kernel has no uprobe_multi links (6.6+)",
            Some(e),
        ),
        _ => Error::syscall("BPF_LINK_CREATE", what, e),
    }
}

/// Maps the errno of creating a kprobe multi link.
fn kprobe_multi_error(what: String, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ESRCH | libc::EINVAL) => Error::not_found(
            what,
            "check /proc/kallsyms and available_filter_functions",
            Some(e),
        ),
        Some(libc::EOPNOTSUPP) => Error::not_supported(
            "kprobe multi links",
            "the kernel lacks CONFIG_FPROBE (kprobe_multi needs 5.18+)",
            Some(e),
        ),
        _ => Error::syscall("BPF_LINK_CREATE", what, e),
    }
}

fn flags(ret: bool) -> u32 {
    if ret {
        bpf::MULTI_RETURN
    } else {
        0
    }
}

/// Creates the multi link of one group: every member in one link, with its cookie.
///
/// # Errors
/// The kernel's answer, mapped once per link kind; a link the kernel refuses names its
/// probe (a one-probe link) or its size.
pub(crate) fn create(
    prog: BorrowedFd<'_>,
    key: &MultiKey,
    members: &[Member],
) -> Result<Attached, Error> {
    let cookies: Vec<u64> = members.iter().map(|m| m.cookie).collect();
    match key {
        MultiKey::Uprobe {
            binary, pid, ret, ..
        } => {
            let offsets: Vec<u64> = members.iter().map(|m| m.offset).collect();
            let refs: Vec<u64> = members.iter().map(|m| m.ref_ctr).collect();
            let refs = refs.iter().any(|&r| r != 0).then_some(&refs[..]);
            let c_path = CString::new(binary.kernel_path()).expect("an fd path has no NUL");
            let pid_arg = pid.map_or(0, i32::unsigned_abs);
            let link = bpf::UprobeMulti {
                attach_type: attach_type(key),
                path: &c_path,
                offsets: &offsets,
                ref_ctr_offsets: refs,
                cookies: Some(&cookies),
                flags: flags(*ret),
                pid: pid_arg,
            };
            let fd = bpf::link_create_uprobe_multi(prog, &link)
                .map_err(|e| uprobe_multi_error(describe(key, members), *pid, e))?;
            Ok(Attached::multi(
                fd,
                link_kind(key),
                Some(Arc::clone(binary.ident())),
            ))
        }
        MultiKey::Kprobe {
            ret,
            by_address: true,
            ..
        } => {
            let addrs: Vec<u64> = members.iter().map(|m| m.offset).collect();
            let kind = attach_type(key);
            let fd = bpf::link_create_kprobe_multi(
                prog,
                kind,
                bpf::KprobeTargets::Addresses(&addrs),
                Some(&cookies),
                flags(*ret),
            )
            .map_err(|e| kprobe_multi_error(describe(key, members), e))?;
            Ok(Attached::multi(fd, link_kind(key), None))
        }
        MultiKey::Kprobe {
            ret,
            by_address: false,
            ..
        } => {
            let names: Vec<CString> = members
                .iter()
                .map(|m| {
                    CString::new(m.symbol.as_str()).map_err(|_| {
                        Error::invalid(
                            format!("kprobe symbol {:?}", m.symbol),
                            "contains a NUL byte",
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
            let ptrs: Vec<&CStr> = names.iter().map(CString::as_c_str).collect();
            let kind = attach_type(key);
            let fd = bpf::link_create_kprobe_multi(
                prog,
                kind,
                bpf::KprobeTargets::Symbols(&ptrs),
                Some(&cookies),
                flags(*ret),
            )
            .map_err(|e| kprobe_multi_error(describe(key, members), e))?;
            Ok(Attached::multi(fd, link_kind(key), None))
        }
    }
}

/// Where [`create_or_bisect`] reports what became of each probe.
pub(crate) trait Sink {
    /// What the sink allocates for a link *before* it exists: once a link on libc exists,
    /// every allocation of this process may hit its own probes.
    type Prepared;
    /// Called before a link of `members` is created.
    fn prepare(&mut self, key: &MultiKey, members: &[Member]) -> Self::Prepared;
    /// A link was created for `members`.
    fn linked(&mut self, prepared: Self::Prepared, attached: Attached, members: Vec<Member>);
    /// `probe` could not be attached.
    fn failed(&mut self, probe: Probe, error: Error);
}

/// How far a group's kernel symbols have been checked (kprobe groups only).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Symbols {
    /// As the caller wrote them: the kernel is asked first, `/proc/kallsyms` (~120k lines,
    /// 50-800 ms to read) only when it says no.
    AsGiven,
    /// Checked against `/proc/kallsyms`, syscall prefix added where needed.
    Checked,
}

/// Creates a group's multi link; when the kernel rejects it (one bad probe fails the whole
/// link), checks kprobe symbols against `/proc/kallsyms` once, then bisects to find the
/// probes at fault, linking the rest.
pub(crate) fn create_or_bisect<S: Sink>(
    prog: BorrowedFd<'_>,
    key: &MultiKey,
    members: Vec<Member>,
    resolver: &mut Resolver,
    sink: &mut S,
) {
    bisect(prog, key, members, resolver, sink, Symbols::AsGiven);
}

fn bisect<S: Sink>(
    prog: BorrowedFd<'_>,
    key: &MultiKey,
    members: Vec<Member>,
    resolver: &mut Resolver,
    sink: &mut S,
    symbols: Symbols,
) {
    let prepared = sink.prepare(key, &members);
    let err = match create(prog, key, &members) {
        Ok(attached) => return sink.linked(prepared, attached, members),
        Err(e) => e,
    };
    drop(prepared);
    if matches!(
        key,
        MultiKey::Kprobe {
            by_address: false,
            ..
        }
    ) && symbols == Symbols::AsGiven
    {
        let mut checked = Vec::with_capacity(members.len());
        for mut m in members {
            let Probe::Kprobe(k) = &m.probe else {
                unreachable!("a kprobe group holds kprobes")
            };
            match resolver.kernel_symbol(k) {
                Ok(symbol) => {
                    m.symbol = symbol;
                    checked.push(m);
                }
                Err(e) => sink.failed(m.probe, e),
            }
        }
        if !checked.is_empty() {
            bisect(prog, key, checked, resolver, sink, Symbols::Checked);
        }
    } else if members.len() == 1 {
        let m = members.into_iter().next().expect("one");
        sink.failed(m.probe, err);
    } else {
        let mut left = members;
        let right = left.split_off(left.len() / 2);
        bisect(prog, key, left, resolver, sink, symbols);
        bisect(prog, key, right, resolver, sink, symbols);
    }
}

/// The errno of a uprobe multi link (`session`: a uprobe session link) from `prog` on a
/// path that does not exist: `ENOENT` when the program was loaded for that attach type (the
/// kernel got as far as the path), `EINVAL`/`EOPNOTSUPP` otherwise.
pub(crate) fn probe_uprobe_multi(prog: BorrowedFd<'_>, session: bool) -> Option<i32> {
    let path: &CStr = c"/nonexistent/probeset-feature-probe";
    let kind = if session {
        bpf::BPF_TRACE_UPROBE_SESSION
    } else {
        bpf::BPF_TRACE_UPROBE_MULTI
    };
    let link = bpf::UprobeMulti {
        attach_type: kind,
        path,
        offsets: &[0],
        ref_ctr_offsets: None,
        cookies: None,
        flags: 0,
        pid: 0,
    };
    bpf::link_create_uprobe_multi(prog, &link)
        .err()
        .map(|e| e.raw_os_error().unwrap_or(0))
}

/// The errno of a kprobe multi link (`session`: a kprobe session link) from `prog` on a
/// symbol that does not exist: a lookup failure when the program was loaded for that attach
/// type, `EINVAL`/`EOPNOTSUPP` otherwise.
pub(crate) fn probe_kprobe_multi(prog: BorrowedFd<'_>, session: bool) -> Option<i32> {
    let sym: &CStr = c"probeset_no_such_kernel_symbol";
    let kind = if session {
        bpf::BPF_TRACE_KPROBE_SESSION
    } else {
        bpf::BPF_TRACE_KPROBE_MULTI
    };
    bpf::link_create_kprobe_multi(prog, kind, bpf::KprobeTargets::Symbols(&[sym]), None, 0)
        .err()
        .map(|e| e.raw_os_error().unwrap_or(0))
}

/// `BPF_LINK_CREATE` with `BPF_TRACE_UPROBE_MULTI`, bare (for the benchmarks' floor).
pub(crate) fn create_uprobe_multi_raw(
    prog: BorrowedFd<'_>,
    path: &CStr,
    offsets: &[u64],
    cookies: &[u64],
    ret: bool,
) -> io::Result<OwnedFd> {
    let kind = bpf::BPF_TRACE_UPROBE_MULTI;
    let link = bpf::UprobeMulti {
        attach_type: kind,
        path,
        offsets,
        ref_ctr_offsets: None,
        cookies: Some(cookies),
        flags: flags(ret),
        pid: 0,
    };
    bpf::link_create_uprobe_multi(prog, &link)
}

/// `BPF_LINK_CREATE` with `BPF_TRACE_KPROBE_MULTI` on symbols, bare (for the benchmarks'
/// floor).
pub(crate) fn create_kprobe_multi_raw(
    prog: BorrowedFd<'_>,
    syms: &[&CStr],
    cookies: &[u64],
    ret: bool,
) -> io::Result<OwnedFd> {
    bpf::link_create_kprobe_multi(
        prog,
        bpf::BPF_TRACE_KPROBE_MULTI,
        bpf::KprobeTargets::Symbols(syms),
        Some(cookies),
        flags(ret),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uprobe::Uprobe;

    #[test]
    fn uprobe_multi_errnos() {
        let e = |n| uprobe_multi_error("u".into(), Some(7), io::Error::from_raw_os_error(n));
        assert!(e(libc::ENOENT).is_not_found());
        assert!(e(libc::EINVAL).is_not_found());
        assert!(e(libc::ESRCH).is_not_found());
        assert!(e(libc::ESRCH).to_string().starts_with("process 7 (for u)"));
        assert!(e(ENOTSUPP).is_unprobeable());
        assert!(e(libc::EOPNOTSUPP).is_not_supported());
        assert!(e(libc::EPERM).is_permission_denied());
        assert!(matches!(
            e(libc::EMFILE),
            Error::OutOfFileDescriptors { .. }
        ));
    }

    #[test]
    fn a_thread_id_is_refused_for_a_multi_link() {
        let probe: Probe = Uprobe::new("/bin/x", "f").into();
        let me = i32::try_from(std::process::id()).unwrap();
        refuse_thread_id(me, &probe).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let tid: i32 = status
                .lines()
                .find_map(|l| l.strip_prefix("Pid:"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            tx.send(tid).unwrap();
            let _ = stop_rx.recv();
        });
        let tid = rx.recv().unwrap();
        let e = refuse_thread_id(tid, &probe).unwrap_err();
        assert!(e.is_invalid_input(), "{e}");
        assert!(e.to_string().contains(&format!("give pid {me}")), "{e}");
        stop_tx.send(()).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn kprobe_multi_errnos() {
        let e = |n| kprobe_multi_error("k".into(), io::Error::from_raw_os_error(n));
        assert!(e(libc::ENOENT).is_not_found());
        assert!(e(libc::EINVAL).is_not_found());
        assert!(e(libc::EOPNOTSUPP).is_not_supported());
        assert!(e(libc::EPERM).is_permission_denied());
    }

    #[test]
    fn an_unprobeable_instruction_reads_the_same_on_every_path() {
        let multi = uprobe_multi_error("u".into(), None, io::Error::from_raw_os_error(ENOTSUPP));
        let single = Error::unprobeable("u", io::Error::from_raw_os_error(ENOTSUPP));
        assert_eq!(multi.to_string(), single.to_string());
        assert_eq!(multi.is_not_supported(), single.is_not_supported());
    }
}
