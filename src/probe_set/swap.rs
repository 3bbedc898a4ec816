//! A program hot swap: every probe of a set moves to a new program, make before break.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use super::held::{MultiLinks, Singles};
use super::set::ProbeSet;
use crate::attach::attach_one;
use crate::blocking;
use crate::error::Error;
use crate::link::{self, Attached};
use crate::multi_link;
use crate::probe::Probe;
use crate::program::{self, ProgramKind};
use crate::resolve::{FileIdent, Resolver};

/// The new attachments of a swap, released (in parallel, in the background) if they are
/// dropped before the set takes them: a cancelled swap leaves the set on the old program
/// and nothing of the new one.
struct Replacements {
    singles: Vec<(Probe, Attached)>,
    multis: Vec<(u64, Attached)>,
}

impl Drop for Replacements {
    fn drop(&mut self) {
        let items: Vec<Attached> = self
            .singles
            .drain(..)
            .map(|(_, a)| a)
            .chain(self.multis.drain(..).map(|(_, a)| a))
            .collect();
        link::release_all_in_background(items);
    }
}

/// Checks that a per-probe uprobe's path still names the file (inode) the probe is on: a
/// per-probe link keeps only the file's identity, not a descriptor, so the new link is made
/// through the path, and it must not move the probe onto another file.
fn same_file(
    probe: &Probe,
    file: Option<&FileIdent>,
    resolver: &mut Resolver,
) -> Result<(), Error> {
    let (Probe::Uprobe(u), Some(file)) = (probe, file) else {
        return Ok(());
    };
    if resolver.binary(u)?.ident().id == file.id {
        return Ok(());
    }
    Err(Error::not_found(
        format!("the file {probe} is on"),
        "its path now names another file (it was replaced); attach the probe again to follow \
         the new file, or remove it, before the swap",
        None,
    ))
}

/// Re-creates every attachment on `prog` (blocking); the first failure undoes the rest.
fn replace_all(
    prog: &OwnedFd,
    singles: Singles,
    multis: MultiLinks,
) -> Result<Replacements, Error> {
    let mut out = Replacements {
        singles: Vec::with_capacity(singles.len()),
        multis: Vec::with_capacity(multis.len()),
    };
    // Dropping `out` on an error releases what was made so far.
    for (id, key, members) in multis {
        let new = multi_link::create(prog.as_fd(), &key, &members)?;
        out.multis.push((id, new));
    }
    // One resolver: the file `same_file` checked is the one `attach_one` then uses.
    let mut resolver = Resolver::default();
    for (probe, file) in singles {
        same_file(&probe, file.as_deref(), &mut resolver)?;
        let new = attach_one(prog.as_fd(), ProgramKind::Plain, &probe, &mut resolver)?;
        out.singles.push((probe, new));
    }
    Ok(out)
}

impl ProbeSet {
    /// Moves every probe to `prog`, with its cookie: make before break. Each multi link is
    /// created again on the new program, then the old one closes; each per-probe link
    /// likewise, the old ones released in parallel on the blocking pool. During the swap
    /// every probe runs at least one of the two programs on every hit (both, for the short
    /// time both links exist); once it returns, only the new one.
    ///
    /// All or nothing: when any new link cannot be made, those made are released and the
    /// set still runs the old program everywhere. Multi links are made again on the very file
    /// they are on; a per-probe uprobe whose binary's path now names another file (a
    /// replaced binary) fails the swap rather than move onto the new file.
    ///
    /// ```no_run
    /// # async fn f(set: &mut probeset::ProbeSet) -> Result<(), probeset::Error> {
    /// use probeset::counter::{Counter, Flavour};
    ///
    /// let v2 = Counter::load(Flavour::UprobeMulti, 1024)?;
    /// set.replace_program(&v2).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::is_invalid_input`] when `prog` is not a kprobe program or attaches
    /// differently from the set's program (another [`ProgramKind`]: load it the same way);
    /// the kernel's answer for a link that could not be made.
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped before the new links are in place, the set
    /// keeps the old program and the new links are released; after that, the old links are
    /// released on the blocking pool.
    pub async fn replace_program(&mut self, prog: impl AsFd) -> Result<(), Error> {
        program::check(prog.as_fd())?;
        let new = Arc::new(program::dup(prog.as_fd())?);
        let probe_new = Arc::clone(&new);
        let new_kind = blocking::run(move || program::kind(probe_new.as_fd())).await?;
        if let Some(old_kind) = self.kind.filter(|_| self.held.len() > 0) {
            if old_kind != new_kind {
                return Err(Error::invalid(
                    "the new program",
                    format!(
                        "it attaches as {new_kind:?}, the set's program as {old_kind:?}; load \
                         it with the same expected_attach_type"
                    ),
                ));
            }
        }
        let (singles, multis) = self.held.swap_plan();
        let creating = Arc::clone(&new);
        let replacements = blocking::run(move || replace_all(&creating, singles, multis)).await?;
        // No await from here until the set holds the new links.
        let mut replacements = replacements;
        let old = self.held.swap_in(
            std::mem::take(&mut replacements.singles),
            std::mem::take(&mut replacements.multis),
        );
        self.prog = new;
        self.kind = Some(new_kind);
        for e in link::release_all(old)
            .await
            .into_iter()
            .filter_map(Result::err)
        {
            tracing::warn!(error = %e, "releasing a link of the replaced program");
        }
        Ok(())
    }
}
