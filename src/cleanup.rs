//! Background release of kernel objects dropped without an explicit detach.
//!
//! Dropping a [`Link`](crate::Link) or a [`ProbeSet`](crate::ProbeSet) must not block the
//! caller, yet closing a perf event costs ~0.1 s of kernel time. So drops hand their kernel
//! objects to one background thread, which releases them in order. [`wait_idle`] waits until
//! that thread has nothing left: call it before a process exits if every tracefs event must
//! be gone by then (a process that exits first leaves the rest to the kernel, which closes
//! the fds, and to the stale-event reaper of a later process, which removes the events).

use std::sync::mpsc::{self, Sender};
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};

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
    let r = reclaimer();
    *r.pending.lock().unwrap_or_else(PoisonError::into_inner) += 1;
    let job: Job = Box::new(move || drop(value));
    let sent = match r.tx.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
        Some(tx) => tx.send(job).map_err(|e| e.0),
        None => Err(job),
    };
    if let Err(job) = sent {
        job();
        done();
    }
}

/// How many dropped links (or sets) are still being released in the background.
#[must_use]
pub fn pending() -> usize {
    *reclaimer()
        .pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Blocks until every release handed to the background has finished.
pub fn wait_idle_blocking() {
    let r = reclaimer();
    let mut n = r.pending.lock().unwrap_or_else(PoisonError::into_inner);
    while *n > 0 {
        n = r.idle.wait(n).unwrap_or_else(PoisonError::into_inner);
    }
}

/// Waits until every release handed to the background has finished, without blocking a
/// runtime worker.
///
/// # Cancel safety
/// Cancel safe: dropping the future stops the waiting, not the releasing.
pub async fn wait_idle() {
    if pending() == 0 {
        return;
    }
    let _ = tokio::task::spawn_blocking(wait_idle_blocking).await;
}
