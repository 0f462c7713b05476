//! Gives the heap memory freed by a burst of calls back to the kernel once
//! the burst is over.
//!
//! glibc keeps freed memory for reuse; after thousands of creates and
//! deletes, megabytes of it stay resident although the driver's live data is
//! back where it was, and reading the records at start leaves as much behind.
//! `malloc_trim` returns those pages. It runs only after a quiet second that
//! followed start-up or activity, so an idle driver does no work and a busy
//! one does not refault what it is using.

use std::time::Duration;

use crate::guard::OperationGuards;

/// How often activity is looked for; a trim follows one quiet period.
const QUIET: Duration = Duration::from_secs(1);

/// Trims the heap after every burst of operations, for as long as the
/// runtime runs.
pub async fn trim_after_bursts(guards: OperationGuards) {
    let mut seen = guards.claims();
    // Start-up, which read every record, counts as the first burst.
    let mut trimmed = None;
    loop {
        tokio::time::sleep(QUIET).await;
        let now = guards.claims();
        if now == seen && trimmed != Some(now) {
            trimmed = Some(now);
            // SAFETY: malloc_trim only returns free pages of glibc's heap to
            // the kernel; it takes the allocator's own locks.
            tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) })
                .await
                .ok();
        }
        seen = now;
    }
}
