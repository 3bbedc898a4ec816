//! Background release of kernel objects dropped without an explicit detach, and the count
//! of operations still in flight.
//!
//! Dropping a [`Link`](crate::Link) or a [`ProbeSet`](crate::ProbeSet) must not block the
//! caller, yet closing a perf event costs ~0.1 s of kernel time. So drops hand their kernel
//! objects to one background thread, which releases them in order. [`wait_idle`] waits until
//! that thread has nothing left: call it before a process exits if every tracefs event must
//! be gone by then. At normal process exit (`exit()`, a return from `main`) the crate waits
//! up to 5 seconds for what is still pending; a process that is killed, or whose cleanup
//! takes longer, leaves the rest to the kernel, which closes the fds, and to the stale-event
//! reaper of a later process, which removes the tracefs events.

use std::sync::mpsc::{self, Sender};
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How long process exit waits for pending releases.
const EXIT_GRACE: Duration = Duration::from_secs(5);

type Job = Box<dyn FnOnce() + Send>;

struct Reclaimer {
    tx: Mutex<Option<Sender<Job>>>,
    pending: Mutex<usize>,
    idle: Condvar,
}

fn reclaimer() -> &'static Reclaimer {
    static R: OnceLock<Reclaimer> = OnceLock::new();
    R.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("probeset-cleanup".into())
            .spawn(move || {
                for job in rx {
                    // A panicking destructor must not stop later releases.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    done();
                }
            });
        if let Err(e) = crate::sys::at_exit(flush_at_exit) {
            tracing::debug!(error = %e, "could not register the exit-time flush");
        }
        Reclaimer {
            tx: Mutex::new(spawned.ok().map(|_| tx)),
            pending: Mutex::new(0),
            idle: Condvar::new(),
        }
    })
}

fn done() {
    let r = reclaimer();
    let mut n = r.pending.lock().unwrap_or_else(PoisonError::into_inner);
    *n -= 1;
    if *n == 0 {
        r.idle.notify_all();
    }
}

/// Drops `value` on the background thread (or right here if that thread cannot run).
pub(crate) fn defer<T: Send + 'static>(value: T) {
    defer_with(move || drop(value));
}

/// Runs `job` on the background thread (or right here if that thread cannot run).
pub(crate) fn defer_with(job: impl FnOnce() + Send + 'static) {
    let r = reclaimer();
    *r.pending.lock().unwrap_or_else(PoisonError::into_inner) += 1;
    let job: Job = Box::new(job);
    let sent = match r.tx.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
        Some(tx) => tx.send(job).map_err(|e| e.0),
        None => Err(job),
    };
    if let Err(job) = sent {
        job();
        done();
    }
}

/// Runs `job` on a thread of its own (counted as pending, so [`wait_idle`] waits for it),
/// for a release that is parallel inside and must not queue behind the background thread's
/// other work; on the background thread if no thread can be had.
pub(crate) fn spawn_with(job: impl FnOnce() + Send + 'static) {
    let r = reclaimer();
    *r.pending.lock().unwrap_or_else(PoisonError::into_inner) += 1;
    let job = std::sync::Arc::new(Mutex::new(Some(job)));
    let run = {
        let job = std::sync::Arc::clone(&job);
        move || {
            let taken = job.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(job) = taken {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
            done();
        }
    };
    let spawned = std::thread::Builder::new()
        .name("probeset-release".into())
        .spawn(run);
    if spawned.is_err() {
        let taken = job.lock().unwrap_or_else(PoisonError::into_inner).take();
        done();
        if let Some(job) = taken {
            defer_with(job);
        }
    }
}

/// Counts one operation in flight (a blocking attach or release, possibly abandoned by a
/// cancelled future) until dropped; [`wait_idle`] waits for it.
pub(crate) struct InFlight(());

impl InFlight {
    pub(crate) fn new() -> InFlight {
        *reclaimer()
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += 1;
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        done();
    }
}

/// How many operations are still in flight: releases of dropped links and sets, and
/// blocking attaches or detaches whose futures may have been dropped.
#[must_use]
pub fn pending() -> usize {
    *reclaimer()
        .pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Blocks until every release handed to the background, and every blocking operation in
/// flight (including those of cancelled futures, whose late results clean up after
/// themselves), has finished.
pub fn wait_idle_blocking() {
    let r = reclaimer();
    let mut n = r.pending.lock().unwrap_or_else(PoisonError::into_inner);
    while *n > 0 {
        n = r.idle.wait(n).unwrap_or_else(PoisonError::into_inner);
    }
}

/// Blocks until [`pending`] is 0 or `timeout` has passed; whether it reached 0.
pub fn wait_idle_timeout(timeout: Duration) -> bool {
    let r = reclaimer();
    let deadline = Instant::now() + timeout;
    let mut n = r.pending.lock().unwrap_or_else(PoisonError::into_inner);
    while *n > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        n = r
            .idle
            .wait_timeout(n, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
    true
}

extern "C" fn flush_at_exit() {
    // Never unwind out of an extern "C" function.
    let _ = std::panic::catch_unwind(|| {
        if pending() > 0 && !wait_idle_timeout(EXIT_GRACE) {
            tracing::warn!(
                pending = pending(),
                "exiting with probe releases still pending; the kernel closes the fds, the reaper of a later process removes tracefs events"
            );
        }
    });
}

/// Waits until [`pending`] is 0: every release handed to the background, and every
/// blocking operation in flight (including those of cancelled futures), has finished.
/// Does not block a runtime worker.
///
/// # Cancel safety
/// Cancel safe: dropping the future stops the waiting, not the releasing.
pub async fn wait_idle() {
    if pending() == 0 {
        return;
    }
    let _ = tokio::task::spawn_blocking(wait_idle_blocking).await;
}
