//! Driver work off the async workers: blocking syscalls, fsync and tools
//! run on tokio's blocking pool, a bounded number at a time.

use crate::error::{Error, Result};

/// Most driver work (syscalls, fsync, tools) running at once. A burst of
/// calls waits its turn here, each a small future, instead of growing the
/// runtime's pool of blocking threads to hundreds, each with its stack and
/// malloc arena.
pub const MAX_BLOCKING_WORK: usize = 16;

/// Runs blocking driver work (syscalls, fsync) off the async workers, at
/// most [`MAX_BLOCKING_WORK`] at a time.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_BLOCKING_WORK);
    let slot = SLOTS
        .acquire()
        .await
        .map_err(|e| Error::failed("driver work queue closed", e))?;
    // The work holds its slot to its end, even when its caller goes away.
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        work()
    })
    .await
    .map_err(|e| Error::failed("driver task failed", e))?
}
