//! The crate's one error type.
//!
//! Every failure carries what the caller gave (symbol, path, offset) and, where a syscall
//! failed, the call's name and the `io::Error` as its [`source`](std::error::Error::source).
//! Errnos are normalised once, where they are read (as cilium/ebpf's `link/kprobe.go`
//! does); callers branch on [`Error::is_not_supported`], [`Error::is_not_found`],
//! [`Error::is_invalid_input`] and [`Error::is_permission_denied`].

use std::io;
use std::sync::Arc;

use crate::probe::Probe;

/// Everything that can go wrong while attaching or detaching a probe.
///
/// Branch on the predicates, which answer the same for a single probe and for a batch (a
/// batch error answers as its first failure does):
///
/// ```no_run
/// # async fn f(prog: std::os::fd::OwnedFd) {
/// use probeset::Kprobe;
///
/// match Kprobe::new("vfs_read").attach(&prog).await {
///     Ok(link) => drop(link),
///     Err(e) if e.is_not_supported() => eprintln!("no kprobes here: {e}"),
///     Err(e) if e.is_permission_denied() => eprintln!("not allowed: {e}"),
///     Err(e) if e.is_not_found() => eprintln!("no such function: {e}"),
///     Err(e) => eprintln!("{e}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input was rejected before the kernel was asked.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// What was wrong, with the value the caller gave.
        what: String,
        /// Why, and what to do instead.
        reason: String,
    },

    /// The file descriptor given as the program is not a BPF program.
    #[error(
        "the program fd is not a BPF program ({what}): pass the fd of a loaded \
         BPF_PROG_TYPE_KPROBE program"
    )]
    NotBpfProgram {
        /// What the fd is, as `/proc/self/fd` names it (`anon_inode:bpf-map`, a path).
        what: String,
        /// What `BPF_OBJ_GET_INFO_BY_FD` said.
        #[source]
        source: io::Error,
    },

    /// The program is a BPF program, but not of type `BPF_PROG_TYPE_KPROBE`.
    #[error(
        "the program is a {} program (BPF program type {found}), not BPF_PROG_TYPE_KPROBE (2): \
         load it as a kprobe/uprobe program",
        prog_type_name(*.found)
    )]
    WrongProgramType {
        /// The `bpf_prog_type` the kernel reported.
        found: u32,
    },

    /// The symbol, binary, offset or process does not exist.
    #[error("{what} not found{hint}")]
    NotFound {
        /// What was looked for, as the caller gave it.
        what: String,
        /// A hint, starting with `: `, or empty.
        hint: String,
        /// The kernel's answer, when it was the kernel that said so.
        #[source]
        source: Option<io::Error>,
    },

    /// The kernel (or its configuration) lacks what this needs.
    #[error("{what} is not supported here: {hint}")]
    NotSupported {
        /// The feature.
        what: String,
        /// What is missing and what to do.
        hint: String,
        /// The kernel's answer, when it was the kernel that said so.
        #[source]
        source: Option<io::Error>,
    },

    /// The kernel refused for lack of privilege.
    #[error("permission denied: {call} for {target}; it needs {needs}")]
    PermissionDenied {
        /// The syscall or file operation.
        call: &'static str,
        /// What it was for.
        target: String,
        /// The privilege the operation needs, as the kernel checks it (a capability, or a
        /// file permission).
        needs: String,
        /// The errno.
        #[source]
        source: io::Error,
    },

    /// The kernel cannot place a uprobe on the instruction at that offset (`ENOTSUPP`): a
    /// trap instruction such as `int3`, or one uprobes refuse to single-step. Not a missing
    /// kernel feature: another path (tracefs) would refuse it too.
    #[error(
        "{what}: the kernel cannot probe the instruction there ({hint}); probe another offset"
    )]
    Unprobeable {
        /// The probe.
        what: String,
        /// What the instruction is, as far as it is known.
        hint: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },

    /// A kernel symbol name that `/proc/kallsyms` lists more than once (static functions of
    /// the same name in different files or modules): the kernel cannot tell which one is
    /// meant (`EADDRNOTAVAIL` since 6.6). Attach each candidate with
    /// [`Kprobe::at_address`](crate::kprobe::Kprobe::at_address), or `MOD:SYM` for one in a
    /// module.
    #[error(
        "kernel symbol {symbol:?} is ambiguous: {}; attach one with Kprobe::at_address",
        list_candidates(candidates)
    )]
    AmbiguousSymbol {
        /// The name given.
        symbol: String,
        /// Each function of that name: its address and module (`None`: the kernel image).
        candidates: Vec<(u64, Option<String>)>,
        /// The kernel's answer, when it was the kernel that said so.
        #[source]
        source: Option<io::Error>,
    },

    /// A syscall or file operation failed in a way none of the other variants describes.
    #[error("{call} failed for {target}")]
    Syscall {
        /// The syscall or file operation.
        call: &'static str,
        /// What it was for.
        target: String,
        /// The errno.
        #[source]
        source: io::Error,
    },

    /// The process (`EMFILE`) or the system (`ENFILE`) ran out of file descriptors. Each
    /// per-probe link holds one; a multi link holds one for its whole batch.
    #[error("{call} failed for {target}: out of file descriptors; {hint}")]
    OutOfFileDescriptors {
        /// The syscall.
        call: &'static str,
        /// What it was for.
        target: String,
        /// Which limit was hit, and what to do.
        hint: String,
        /// The errno.
        #[source]
        source: io::Error,
    },

    /// The tokio runtime shut down while the operation ran on its blocking pool.
    #[error("the tokio runtime is shutting down; the operation was abandoned and cleaned up")]
    RuntimeShutdown,

    /// Some probes of a batch failed; the batch was rolled back. Lists each failed probe
    /// with its own error (classified by the first).
    #[error("{} of {total} probes failed{}", failures.len(), list_failures(failures))]
    Probes {
        /// How many probes the batch had.
        total: usize,
        /// Each failed probe with its error.
        failures: Vec<(Probe, Error)>,
    },

    /// One probe of a group that failed as a whole: a multi link the kernel refused, a
    /// rebuild that could not be made, a batch whose program could not be used. The group's
    /// error is shared by every probe in it, with its kind and cause: the predicates answer
    /// as the shared error does.
    #[error("{probe}: failed with its group")]
    Batch {
        /// The probe, as text.
        probe: String,
        /// The group's error.
        #[source]
        source: Arc<Error>,
    },

    /// Several operations failed; the first is the source.
    #[error("{count} operations failed; the first: {first}")]
    Many {
        /// How many failed.
        count: usize,
        /// The first failure.
        #[source]
        first: Box<Error>,
    },
}

/// The name of a `bpf_prog_type`, for messages.
fn prog_type_name(t: u32) -> &'static str {
    const NAMES: [&str; 33] = [
        "BPF_PROG_TYPE_UNSPEC",
        "BPF_PROG_TYPE_SOCKET_FILTER",
        "BPF_PROG_TYPE_KPROBE",
        "BPF_PROG_TYPE_SCHED_CLS",
        "BPF_PROG_TYPE_SCHED_ACT",
        "BPF_PROG_TYPE_TRACEPOINT",
        "BPF_PROG_TYPE_XDP",
        "BPF_PROG_TYPE_PERF_EVENT",
        "BPF_PROG_TYPE_CGROUP_SKB",
        "BPF_PROG_TYPE_CGROUP_SOCK",
        "BPF_PROG_TYPE_LWT_IN",
        "BPF_PROG_TYPE_LWT_OUT",
        "BPF_PROG_TYPE_LWT_XMIT",
        "BPF_PROG_TYPE_SOCK_OPS",
        "BPF_PROG_TYPE_SK_SKB",
        "BPF_PROG_TYPE_CGROUP_DEVICE",
        "BPF_PROG_TYPE_SK_MSG",
        "BPF_PROG_TYPE_RAW_TRACEPOINT",
        "BPF_PROG_TYPE_CGROUP_SOCK_ADDR",
        "BPF_PROG_TYPE_LWT_SEG6LOCAL",
        "BPF_PROG_TYPE_LIRC_MODE2",
        "BPF_PROG_TYPE_SK_REUSEPORT",
        "BPF_PROG_TYPE_FLOW_DISSECTOR",
        "BPF_PROG_TYPE_CGROUP_SYSCTL",
        "BPF_PROG_TYPE_RAW_TRACEPOINT_WRITABLE",
        "BPF_PROG_TYPE_CGROUP_SOCKOPT",
        "BPF_PROG_TYPE_TRACING",
        "BPF_PROG_TYPE_STRUCT_OPS",
        "BPF_PROG_TYPE_EXT",
        "BPF_PROG_TYPE_LSM",
        "BPF_PROG_TYPE_SK_LOOKUP",
        "BPF_PROG_TYPE_SYSCALL",
        "BPF_PROG_TYPE_NETFILTER",
    ];
    usize::try_from(t)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("newer")
}

/// `0xADDR, 0xADDR [mod]` for an ambiguous symbol's candidates.
fn list_candidates(candidates: &[(u64, Option<String>)]) -> String {
    use std::fmt::Write as _;
    let mut s = format!("{} functions of that name", candidates.len());
    for (i, (addr, module)) in candidates.iter().take(8).enumerate() {
        let _ = write!(s, "{}{addr:#x}", if i == 0 { " at " } else { ", " });
        if let Some(m) = module {
            let _ = write!(s, " [{m}]");
        }
    }
    if candidates.len() > 8 {
        let _ = write!(s, ", ...");
    }
    s
}

/// `: PROBE: ERROR; PROBE: ERROR; ...` for the first few failures of a batch.
fn list_failures(failures: &[(Probe, Error)]) -> String {
    use std::fmt::Write as _;
    const SHOWN: usize = 5;
    let mut s = String::new();
    // Each error names its probe already; its causes (the errno) follow it, as nothing else
    // carries them out of the list.
    for (i, (_, e)) in failures.iter().take(SHOWN).enumerate() {
        let _ = write!(s, "{}{e}", if i == 0 { ": " } else { "; " });
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            let _ = write!(s, " ({c})");
            cause = c.source();
        }
    }
    if failures.len() > SHOWN {
        let _ = write!(s, "; and {} more", failures.len() - SHOWN);
    }
    s
}

impl Error {
    /// The kernel or its configuration lacks the feature (for example, no `CONFIG_KPROBES`).
    #[must_use]
    pub fn is_not_supported(&self) -> bool {
        match self {
            Error::NotSupported { .. } => true,
            Error::Many { first, .. } => first.is_not_supported(),
            Error::Batch { source, .. } => source.is_not_supported(),
            Error::Probes { failures, .. } => {
                failures.first().is_some_and(|(_, e)| e.is_not_supported())
            }
            _ => false,
        }
    }

    /// The symbol, binary, offset or pid does not exist.
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::NotFound { .. } => true,
            Error::Many { first, .. } => first.is_not_found(),
            Error::Batch { source, .. } => source.is_not_found(),
            Error::Probes { failures, .. } => {
                failures.first().is_some_and(|(_, e)| e.is_not_found())
            }
            _ => false,
        }
    }

    /// The input was rejected before it reached the kernel (or names something the kernel
    /// cannot resolve as given: an ambiguous symbol).
    #[must_use]
    pub fn is_invalid_input(&self) -> bool {
        match self {
            Error::InvalidInput { .. }
            | Error::NotBpfProgram { .. }
            | Error::WrongProgramType { .. }
            | Error::AmbiguousSymbol { .. } => true,
            Error::Many { first, .. } => first.is_invalid_input(),
            Error::Batch { source, .. } => source.is_invalid_input(),
            Error::Probes { failures, .. } => {
                failures.first().is_some_and(|(_, e)| e.is_invalid_input())
            }
            _ => false,
        }
    }

    /// The kernel refused for lack of privilege (`EPERM`, `EACCES`).
    #[must_use]
    pub fn is_permission_denied(&self) -> bool {
        match self {
            Error::PermissionDenied { .. } => true,
            Error::Many { first, .. } => first.is_permission_denied(),
            Error::Batch { source, .. } => source.is_permission_denied(),
            Error::Probes { failures, .. } => failures
                .first()
                .is_some_and(|(_, e)| e.is_permission_denied()),
            _ => false,
        }
    }

    /// The kernel cannot probe the instruction at the probe's offset (`ENOTSUPP`: a trap
    /// instruction such as `int3`). The same answer on every path (the PMU, tracefs, a
    /// uprobe multi link); [`Backend::Auto`](crate::backend::Backend::Auto) does not fall
    /// back for it.
    #[must_use]
    pub fn is_unprobeable(&self) -> bool {
        match self {
            Error::Unprobeable { .. } => true,
            Error::Many { first, .. } => first.is_unprobeable(),
            Error::Batch { source, .. } => source.is_unprobeable(),
            Error::Probes { failures, .. } => {
                failures.first().is_some_and(|(_, e)| e.is_unprobeable())
            }
            _ => false,
        }
    }

    /// The errno behind this error, if a syscall produced it.
    #[must_use]
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::NotBpfProgram { source, .. }
            | Error::PermissionDenied { source, .. }
            | Error::Unprobeable { source, .. }
            | Error::Syscall { source, .. }
            | Error::OutOfFileDescriptors { source, .. } => source.raw_os_error(),
            Error::NotFound { source, .. }
            | Error::NotSupported { source, .. }
            | Error::AmbiguousSymbol { source, .. } => {
                source.as_ref().and_then(io::Error::raw_os_error)
            }
            Error::Many { first, .. } => first.raw_os_error(),
            Error::Batch { source, .. } => source.raw_os_error(),
            Error::Probes { failures, .. } => failures.first().and_then(|(_, e)| e.raw_os_error()),
            _ => None,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::InvalidInput {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn not_found(
        what: impl Into<String>,
        hint: &str,
        source: Option<io::Error>,
    ) -> Error {
        Error::NotFound {
            what: what.into(),
            hint: if hint.is_empty() {
                String::new()
            } else {
                format!(": {hint}")
            },
            source,
        }
    }

    pub(crate) fn not_supported(
        what: impl Into<String>,
        hint: impl Into<String>,
        source: Option<io::Error>,
    ) -> Error {
        Error::NotSupported {
            what: what.into(),
            hint: hint.into(),
            source,
        }
    }

    /// A syscall failure: `EPERM`/`EACCES` become [`Error::PermissionDenied`],
    /// `EMFILE`/`ENFILE` [`Error::OutOfFileDescriptors`], anything else [`Error::Syscall`].
    pub(crate) fn syscall(
        call: &'static str,
        target: impl Into<String>,
        source: io::Error,
    ) -> Error {
        let target = target.into();
        match source.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => Error::PermissionDenied {
                call,
                target,
                needs: "root, or CAP_BPF and CAP_PERFMON".into(),
                source,
            },
            Some(libc::EMFILE) => {
                let limit = crate::sys::nofile_soft_limit()
                    .map_or_else(|| "its".to_owned(), |soft| soft.to_string());
                Error::OutOfFileDescriptors {
                    call,
                    target,
                    hint: format!(
                        "the process is at its limit of {limit} (RLIMIT_NOFILE) and each \
                         per-probe link holds a descriptor: raise the soft limit (`ulimit -n`, \
                         setrlimit) or use a multi-link program (one descriptor per batch)"
                    ),
                    source,
                }
            }
            Some(libc::ENFILE) => Error::OutOfFileDescriptors {
                call,
                target,
                hint: "the system's file table is full (sysctl fs.file-max): close descriptors \
                       or raise fs.file-max"
                    .to_owned(),
                source,
            },
            _ => Error::Syscall {
                call,
                target,
                source,
            },
        }
    }

    /// The failed probes of a batch, or `None` when none failed.
    pub(crate) fn probes(total: usize, failures: Vec<(Probe, Error)>) -> Option<Error> {
        (!failures.is_empty()).then_some(Error::Probes { total, failures })
    }

    /// `ENOTSUPP` from a uprobe registration: the kernel cannot probe the instruction at
    /// that offset (a trap instruction such as `int3`). The same kind and message on every
    /// path that can get this answer (the PMU, tracefs, a uprobe multi link).
    pub(crate) fn unprobeable(what: impl Into<String>, source: io::Error) -> Error {
        Error::Unprobeable {
            what: what.into(),
            hint: "a trap instruction such as int3, or one uprobes cannot single-step".into(),
            source,
        }
    }

    /// A permission error that says what the operation needs.
    pub(crate) fn permission(
        call: &'static str,
        target: impl Into<String>,
        needs: impl Into<String>,
        source: io::Error,
    ) -> Error {
        Error::PermissionDenied {
            call,
            target: target.into(),
            needs: needs.into(),
            source,
        }
    }

    /// This error, shared by every probe of the group it stands for (see [`Error::Batch`]).
    pub(crate) fn shared(self) -> Arc<Error> {
        Arc::new(self)
    }

    /// One probe's copy of a group's error (see [`Error::Batch`]).
    pub(crate) fn in_batch(probe: &Probe, group: &Arc<Error>) -> Error {
        Error::Batch {
            probe: probe.to_string(),
            source: Arc::clone(group),
        }
    }

    /// What a permission error says the operation needs, or the hint of a not-supported
    /// error, or the whole message.
    pub(crate) fn needs_or_hint(&self) -> String {
        match self {
            Error::PermissionDenied { needs, .. } => needs.clone(),
            other => format!("(missing: {})", other.hint()),
        }
    }

    /// The hint of a not-supported error, or its whole message.
    pub(crate) fn hint(&self) -> String {
        match self {
            Error::NotSupported { hint, .. } => hint.clone(),
            other => other.to_string(),
        }
    }

    /// A not-supported error that names the probe it was for (`what` gains the probe's
    /// description); other errors unchanged.
    pub(crate) fn naming(self, probe: &str) -> Error {
        match self {
            Error::NotSupported { what, hint, source } => Error::NotSupported {
                what: format!("{probe}: {what}"),
                hint,
                source,
            },
            other => other,
        }
    }

    /// Folds a list of failures into one error: `None` when empty, the error itself when
    /// there is one, [`Error::Many`] otherwise.
    pub(crate) fn collect(mut errors: Vec<Error>) -> Option<Error> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            count => Some(Error::Many {
                count,
                first: Box::new(errors.swap_remove(0)),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_maps_privilege_errnos() {
        let e = Error::syscall(
            "perf_event_open",
            "x",
            io::Error::from_raw_os_error(libc::EPERM),
        );
        assert!(e.is_permission_denied());
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        let e = Error::syscall(
            "perf_event_open",
            "x",
            io::Error::from_raw_os_error(libc::EBADF),
        );
        assert!(!e.is_permission_denied());
        assert!(matches!(e, Error::Syscall { .. }));
    }

    #[test]
    fn syscall_maps_descriptor_exhaustion() {
        let e = Error::syscall(
            "perf_event_open",
            "uprobe /bin/true:0x10",
            io::Error::from_raw_os_error(libc::EMFILE),
        );
        assert!(matches!(e, Error::OutOfFileDescriptors { .. }), "{e:?}");
        assert_eq!(e.raw_os_error(), Some(libc::EMFILE));
        let msg = e.to_string();
        assert!(msg.starts_with("perf_event_open failed for uprobe /bin/true:0x10: out of file descriptors; the process is at its limit of "), "{msg}");
        assert!(msg.contains("ulimit -n"), "{msg}");
        let e = Error::syscall("bpf", "x", io::Error::from_raw_os_error(libc::ENFILE));
        assert!(e.to_string().contains("fs.file-max"), "{e}");
    }

    #[test]
    fn batch_failures_carry_their_causes() {
        let e = Error::probes(
            3,
            vec![(
                crate::kprobe::Kprobe::new("vfs_read").into(),
                Error::syscall(
                    "perf_event_open",
                    "kprobe \"vfs_read\"",
                    io::Error::from_raw_os_error(libc::EBUSY),
                ),
            )],
        )
        .unwrap();
        let msg = e.to_string();
        assert!(
            msg.starts_with(
                "1 of 3 probes failed: perf_event_open failed for kprobe \"vfs_read\" ("
            ) && msg.contains("os error 16"),
            "{msg}"
        );
    }

    #[test]
    fn a_shared_group_error_keeps_its_kind_and_cause() {
        let group = Error::not_found(
            "a uprobe multi link of 2 probes",
            "",
            Some(io::Error::from_raw_os_error(libc::EINVAL)),
        )
        .shared();
        let p: Probe = crate::uprobe::Uprobe::new("/bin/x", "f").into();
        let e = Error::in_batch(&p, &group);
        assert!(e.is_not_found());
        assert!(!e.is_invalid_input());
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        assert_eq!(
            e.to_string(),
            "uprobe \"/bin/x\":\"f\": failed with its group"
        );
        let listed = Error::probes(2, vec![(p, e)]).unwrap().to_string();
        assert!(
            listed.contains("failed with its group (a uprobe multi link of 2 probes not found)"),
            "{listed}"
        );
    }

    #[test]
    fn many_classifies_by_first() {
        let e = Error::collect(vec![
            Error::not_found("symbol \"x\"", "", None),
            Error::invalid("offset", "bad"),
        ])
        .unwrap();
        assert!(e.is_not_found());
        assert!(!e.is_invalid_input());
        assert!(e.to_string().starts_with("2 operations failed"));
        assert!(Error::collect(Vec::new()).is_none());
    }

    #[test]
    fn messages_name_the_input() {
        let e = Error::not_found("kernel symbol \"nope\"", "check /proc/kallsyms", None);
        assert_eq!(
            e.to_string(),
            "kernel symbol \"nope\" not found: check /proc/kallsyms"
        );
    }
}
