//! The front doors for one probe: [`Kprobe::attach`], [`Uprobe::attach`],
//! [`Probe::attach`] (async) and their `attach_blocking` twins; and `attach_one`, the one
//! path a probe takes onto the kernel, which [`ProbeSet`](crate::probe_set::ProbeSet)'s
//! per-probe links share.
//!
//! A plain program goes on a perf event (`perf_event`) with a BPF perf link (`perf_link`);
//! a program loaded for a multi link goes on a one-probe multi link (`multi_link`).

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use crate::backend::Backend;
use crate::blocking;
use crate::error::Error;
use crate::kprobe::Kprobe;
use crate::link::{Attached, Link};
use crate::multi_link;
use crate::perf_event::{self, ProbeSpec};
use crate::perf_link;
use crate::probe::{Probe, ProbeKind};
use crate::program::{self, ProgramKind};
use crate::resolve::{syscall_prefixed, FileIdent, Resolver, UprobeTarget};
use crate::tracefs::probe_event::ProbeEvent;
use crate::uprobe::{Target, Uprobe};
use crate::validate;

impl Kprobe {
    /// Attaches `prog` to this probe.
    ///
    /// `prog` must be a `BPF_PROG_TYPE_KPROBE` program; its fd is duplicated for the
    /// duration of the call. A plain program goes on a perf event (from the kprobe PMU, or
    /// tracefs `kprobe_events`, as [`Backend`] says) with a BPF perf link; a program loaded
    /// for `kprobe_multi` goes on a one-symbol kprobe multi link. A `sys_*` symbol that is
    /// not found is retried with the architecture's syscall prefix (`__x64_sys_*`).
    ///
    /// All blocking work runs on tokio's blocking pool. Must be called within a tokio
    /// runtime; [`Kprobe::attach_blocking`] needs none.
    ///
    /// ```no_run
    /// # async fn f(prog: std::os::fd::OwnedFd) -> Result<(), probeset::Error> {
    /// use probeset::Kprobe;
    ///
    /// let link = Kprobe::new("vfs_read").cookie(1).attach(&prog).await?;
    /// let ret = Kprobe::retprobe("vfs_read").cookie(2).attach(&prog).await?;
    /// // ... the program runs on every vfs_read entry and return ...
    /// link.detach().await?;
    /// ret.detach().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// - [`Error::is_invalid_input`]: malformed symbol, offset on a return probe, bad
    ///   `maxactive`, a program fd that is not a kprobe program (checked before the kernel
    ///   is asked to create anything).
    /// - [`Error::is_not_supported`]: no kprobes in this kernel (neither the kprobe PMU nor
    ///   `kprobe_events`), a multi-only program on a kernel without kprobe multi links, a
    ///   cookie on a kernel without perf links.
    /// - [`Error::is_not_found`]: the symbol does not exist, is not traceable, or the
    ///   offset is not on an instruction boundary.
    /// - [`Error::is_permission_denied`]: not root (or without `CAP_BPF`+`CAP_PERFMON`).
    ///
    /// Nothing that was created survives an error.
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped, whatever the attach created is released.
    ///
    /// # Minimum kernel version
    /// 4.17 for the PMU, older with tracefs; cookies 5.15; multi links 5.18.
    pub async fn attach(self, prog: impl AsFd) -> Result<Link, Error> {
        Probe::Kprobe(self).attach(prog).await
    }

    /// [`Kprobe::attach`] on the calling thread, without an async runtime (for threads and
    /// programs that do not use tokio). Blocks for the syscalls (~0.2 ms for a perf event).
    ///
    /// # Errors
    /// As [`Kprobe::attach`].
    pub fn attach_blocking(self, prog: impl AsFd) -> Result<Link, Error> {
        Probe::Kprobe(self).attach_blocking(prog)
    }
}

impl Uprobe {
    /// Attaches `prog` to this probe.
    ///
    /// `prog` must be a `BPF_PROG_TYPE_KPROBE` program; its fd is duplicated for the
    /// duration of the call. The symbol is looked up in the binary's ELF symbol tables
    /// (parsed once per file and cached). A plain program goes on a perf event (from the
    /// uprobe PMU, or tracefs `uprobe_events`, as [`Backend`] says) with a BPF perf link; a
    /// program loaded for `uprobe_multi` goes on a one-offset uprobe multi link.
    ///
    /// All blocking work runs on tokio's blocking pool. Must be called within a tokio
    /// runtime; [`Uprobe::attach_blocking`] needs none.
    ///
    /// ```no_run
    /// # async fn f(prog: std::os::fd::OwnedFd) -> Result<(), probeset::Error> {
    /// use probeset::Uprobe;
    ///
    /// let libc = "/lib/x86_64-linux-gnu/libc.so.6";
    /// let malloc = Uprobe::new(libc, "malloc").cookie(0).attach(&prog).await?;
    /// let free_ret = Uprobe::retprobe(libc, "free").cookie(1).pid(1234).attach(&prog).await?;
    /// # drop((malloc, free_ret));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// - [`Error::is_invalid_input`]: empty binary or symbol, pid <= 0, a binary that is not
    ///   ELF, a program fd that is not a kprobe program, [`Backend::Tracefs`] with a
    ///   multi-only program.
    /// - [`Error::is_not_found`]: the binary, the symbol or the pid does not exist, or the
    ///   offset is outside the file.
    /// - [`Error::is_not_supported`]: no uprobes in this kernel, a cookie on a kernel
    ///   without perf links, a multi-only program on a kernel without uprobe multi links.
    /// - [`Error::is_permission_denied`]: not root (or without `CAP_BPF`+`CAP_PERFMON`).
    ///
    /// Nothing that was created survives an error.
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped, whatever the attach created is released.
    ///
    /// # Minimum kernel version
    /// 4.17 for the PMU, older with tracefs; cookies 5.15; uprobe multi links 6.6.
    pub async fn attach(self, prog: impl AsFd) -> Result<Link, Error> {
        Probe::Uprobe(self).attach(prog).await
    }

    /// [`Uprobe::attach`] on the calling thread, without an async runtime (for threads and
    /// programs that do not use tokio). Blocks for the ELF lookup and the syscalls.
    ///
    /// # Errors
    /// As [`Uprobe::attach`].
    pub fn attach_blocking(self, prog: impl AsFd) -> Result<Link, Error> {
        Probe::Uprobe(self).attach_blocking(prog)
    }
}

impl Probe {
    /// Attaches `prog` to this probe: [`Kprobe::attach`] or [`Uprobe::attach`].
    ///
    /// # Errors
    /// As [`Kprobe::attach`] and [`Uprobe::attach`].
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped, whatever it created is released.
    pub async fn attach(self, prog: impl AsFd) -> Result<Link, Error> {
        validate::probe(&self)?;
        let prog = program::dup(prog.as_fd())?;
        blocking::run(move || attach_validated(self, prog.as_fd())).await
    }

    /// [`Probe::attach`] on the calling thread, without an async runtime.
    ///
    /// # Errors
    /// As [`Probe::attach`].
    pub fn attach_blocking(self, prog: impl AsFd) -> Result<Link, Error> {
        validate::probe(&self)?;
        attach_validated(self, prog.as_fd())
    }
}

/// The single attach after validation: the program's kind, then [`attach_one`].
fn attach_validated(probe: Probe, prog: BorrowedFd<'_>) -> Result<Link, Error> {
    let kind = program::kind(prog)?;
    let span = tracing::debug_span!("probeset_attach", probe = %probe, program = ?kind);
    let _entered = span.enter();
    let attached = attach_one(prog, kind, &probe, &mut Resolver::default())
        .inspect_err(|e| tracing::debug!(error = %e, "attach failed"))?;
    tracing::debug!(link = ?attached.kind, backend = ?attached.backend, "attached");
    Ok(Link::new(attached, probe))
}

/// Attaches `prog` (of `kind`) to one validated probe and returns what the attachment
/// owns: a perf event with its link for a plain program, a one-probe multi link for a
/// multi-only one.
pub(crate) fn attach_one(
    prog: BorrowedFd<'_>,
    kind: ProgramKind,
    probe: &Probe,
    resolver: &mut Resolver,
) -> Result<Attached, Error> {
    if let Some(e) = kind.refuse(probe) {
        return Err(e);
    }
    match (kind.is_multi(), probe) {
        (true, _) => one_probe_multi(prog, kind, probe, resolver),
        (false, Probe::Kprobe(k)) => match k.address() {
            Some(address) => kprobe_perf_at(prog, k, address, resolver),
            None => kprobe_perf(prog, k),
        },
        (false, Probe::Uprobe(u)) => uprobe_perf(prog, u, resolver),
    }
}

/// A one-probe multi link; a `sys_*` kprobe symbol that is not found is retried with the
/// syscall prefix.
fn one_probe_multi(
    prog: BorrowedFd<'_>,
    kind: ProgramKind,
    probe: &Probe,
    resolver: &mut Resolver,
) -> Result<Attached, Error> {
    validate::for_multi_link(probe)?;
    let (key, mut member) = match probe {
        Probe::Kprobe(k) => multi_link::kprobe_member(k, probe, kind.is_session(), resolver)?,
        Probe::Uprobe(u) => multi_link::uprobe_member(u, probe, kind.is_session(), resolver)?,
    };
    match multi_link::create(prog, &key, std::slice::from_ref(&member)) {
        Err(e) if e.is_not_found() => match syscall_prefixed(&member.symbol) {
            Some(prefixed) => {
                tracing::debug!(
                    symbol = member.symbol,
                    prefixed,
                    "not found; retrying with the syscall prefix"
                );
                member.symbol = prefixed;
                multi_link::create(prog, &key, std::slice::from_ref(&member)).map_err(|e2| {
                    if e2.is_not_found() {
                        e
                    } else {
                        e2
                    }
                })
            }
            None => Err(e),
        },
        other => other,
    }
}

/// A kprobe on a perf event; a `sys_*` symbol that is not found is retried with the
/// syscall prefix.
fn kprobe_perf(prog: BorrowedFd<'_>, k: &Kprobe) -> Result<Attached, Error> {
    let try_symbol = |symbol: &str| {
        let display = Kprobe::new(symbol)
            .offset(k.offset_value())
            .with_ret(k.is_retprobe())
            .to_string();
        let spec = ProbeSpec {
            kind: ProbeKind::Kprobe,
            ret: k.is_retprobe(),
            name: symbol,
            offset: k.offset_value(),
            ref_ctr_offset: 0,
            pid: None,
            maxactive: k.maxactive_value(),
            address: None,
            event_hint: symbol,
            display: &display,
        };
        attach_perf(prog, &spec, k.backend_value(), k.cookie_value(), None)
    };
    match try_symbol(k.symbol()) {
        Err(e) if e.is_not_found() => match syscall_prefixed(k.symbol()) {
            Some(prefixed) => {
                tracing::debug!(
                    symbol = k.symbol(),
                    prefixed,
                    "not found; retrying with the syscall prefix"
                );
                try_symbol(&prefixed).map_err(|e2| if e2.is_not_found() { e } else { e2 })
            }
            None => Err(e),
        },
        other => other,
    }
}

/// A kprobe at a kernel text address on a perf event, the address checked against
/// `/proc/kallsyms` first.
fn kprobe_perf_at(
    prog: BorrowedFd<'_>,
    k: &Kprobe,
    address: u64,
    resolver: &mut Resolver,
) -> Result<Attached, Error> {
    let (function, offset) = resolver.kernel_function_at(address)?;
    let name = format!("{address:#x}");
    let display = format!("{k} ({function}+{offset:#x})");
    let hint = format!("{function}_{offset:x}");
    let spec = ProbeSpec {
        kind: ProbeKind::Kprobe,
        ret: k.is_retprobe(),
        name: &name,
        offset: 0,
        ref_ctr_offset: 0,
        pid: None,
        maxactive: k.maxactive_value(),
        address: Some(address),
        event_hint: &hint,
        display: &display,
    };
    attach_perf(prog, &spec, k.backend_value(), k.cookie_value(), None)
}

/// A uprobe on a perf event.
fn uprobe_perf(
    prog: BorrowedFd<'_>,
    u: &Uprobe,
    resolver: &mut Resolver,
) -> Result<Attached, Error> {
    let target = resolver.uprobe(u)?;
    let hint = event_hint(u, &target);
    let display = u.to_string();
    let spec = ProbeSpec {
        kind: ProbeKind::Uprobe,
        ret: u.is_retprobe(),
        name: target.binary.kernel_path(),
        offset: target.offset,
        ref_ctr_offset: u.ref_ctr_offset_value(),
        pid: u.pid_value(),
        maxactive: None,
        address: None,
        event_hint: &hint,
        display: &display,
    };
    let binary = Some(Arc::clone(target.binary.ident()));
    attach_perf(prog, &spec, u.backend_value(), u.cookie_value(), binary)
}

/// What a tracefs event of `u` is named after: the binary's file name and the symbol (or
/// the offset), so that an operator reading `uprobe_events` can tell which binary an event
/// is on (the line itself shows the `/proc/self/fd/N` path the kernel was given).
fn event_hint(u: &Uprobe, target: &UprobeTarget) -> String {
    // The file name first, cut to 16 bytes, so that the symbol (cut with a hash by the
    // kernel's 63-byte limit when long) keeps its telling part.
    let mut file = target
        .binary
        .path()
        .file_name()
        .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
    if file.len() > 16 {
        let mut cut = 16;
        while !file.is_char_boundary(cut) {
            cut -= 1;
        }
        file.truncate(cut);
    }
    match u.target() {
        Target::Symbol(s) if u.offset_value() == 0 => format!("{file}_{s}"),
        _ => format!("{file}_off_{:x}", target.offset),
    }
}

/// The perf-event path of one probe: open the event, put the program on it.
fn attach_perf(
    prog: BorrowedFd<'_>,
    spec: &ProbeSpec<'_>,
    backend: Backend,
    cookie: u64,
    binary: Option<Arc<FileIdent>>,
) -> Result<Attached, Error> {
    let ev = perf_event::open(spec, backend)?;
    let (link, kind) = perf_link::attach(prog, ev.fd.as_fd(), cookie, spec.display)?;
    // A BPF perf link holds the perf event itself (and releases it when it is closed): keep
    // one descriptor per probe, not two. Under the ioctl path the event fd is the attachment.
    let perf = if link.is_some() { None } else { Some(ev.fd) };
    Ok(Attached {
        link,
        perf,
        tracefs_event_name: ev.event.as_ref().map(ProbeEvent::qualified_name),
        event: ev.event,
        kind,
        backend: Some(ev.backend),
        binary,
    })
}
