//! Running blocking work (sysfs and tracefs I/O, ELF parsing, `bpf()`, `perf_event_open`,
//! closing perf fds) on tokio's blocking pool, never on a runtime worker.

use crate::Error;

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
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::RuntimeShutdown),
    }
}
