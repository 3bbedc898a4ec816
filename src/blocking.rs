//! Running blocking work (sysfs and tracefs I/O, ELF parsing, `bpf()`, `perf_event_open`,
//! closing perf fds) on tokio's blocking pool, never on a runtime worker.

use crate::cleanup::InFlight;
use crate::error::Error;

/// Runs `f` on tokio's blocking pool and waits for it.
///
/// `f` owns everything it touches and returns only values that clean up after themselves,
/// so when the awaiting future is dropped, the late result is dropped on the pool and
/// releases what it created. A panic in `f` is resumed here.
///
/// Panics when called outside a tokio runtime (as `tokio::task::spawn_blocking` does).
pub(crate) async fn run<T, F>(f: F) -> Result<T, Error>
where
    F: FnOnce() -> Result<T, Error> + Send + 'static,
    T: Send + 'static,
{
    // The token travels with the result: when the awaiting future was dropped, tokio drops
    // the late result, then the token, so `cleanup::wait_idle` sees the cleanup finish.
    // The order matters: a tuple drops its fields first to last, so `result` must stay the
    // first field and `token` the second.
    let token = InFlight::new();
    let task = move || {
        let result = f();
        (result, token)
    };
    match tokio::task::spawn_blocking(task).await {
        Ok((result, _token)) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::RuntimeShutdown),
    }
}
