//! What [`ProbeSet::apply`](super::ProbeSet::apply) takes and yields: [`Change`] and
//! [`Outcome`].

use crate::error::Error;
use crate::probe::Probe;

/// One change for [`ProbeSet::apply`](super::ProbeSet::apply).
///
/// ```
/// use probeset::{Change, Kprobe, Probe};
///
/// let on = Change::Attach(Kprobe::new("vfs_read").into());
/// let off = Change::Detach(Kprobe::new("vfs_read").into());
/// assert_eq!(on.probe(), off.probe());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Attach this probe (nothing happens if the set holds it already).
    Attach(Probe),
    /// Detach this probe (nothing happens if the set does not hold it).
    Detach(Probe),
}

impl Change {
    /// The probe this change is about.
    #[must_use]
    pub fn probe(&self) -> &Probe {
        match self {
            Change::Attach(p) | Change::Detach(p) => p,
        }
    }
}

/// What became of one [`Change`]: `Ok(true)` when the set changed, `Ok(false)` when it
/// already was as asked.
#[derive(Debug)]
#[non_exhaustive]
pub struct Outcome {
    /// The change.
    pub change: Change,
    /// Its result.
    pub result: Result<bool, Error>,
}
