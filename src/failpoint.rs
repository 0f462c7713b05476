//! Named points at the side-effect boundaries of each operation, where a
//! test build kills the driver to show that a crash there loses nothing.
//!
//! Built only with `--features failpoints` (the test command enables it);
//! otherwise [`hit`] is empty and the environment is never read. In a test
//! build, `HOSTPATH_CSI_FAILPOINT=<name>` makes the driver SIGKILL itself the
//! first time it reaches `<name>`, and `<name>@<n>` the n-th time.

#[cfg(feature = "failpoints")]
mod armed {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The armed point and on which hit it fires.
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);

    fn armed() -> &'static Option<(String, u64)> {
        ARMED.get_or_init(|| {
            let raw = std::env::var("HOSTPATH_CSI_FAILPOINT").ok()?;
            Some(match raw.split_once('@') {
                Some((name, nth)) => (name.to_owned(), nth.parse().unwrap_or(1)),
                None => (raw, 1),
            })
        })
    }

    pub fn hit(name: &str) {
        if let Some((armed, nth)) = armed()
            && armed == name
            && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth
        {
            tracing::warn!(failpoint = name, "failpoint reached: killing the driver");
            nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL).ok();
        }
    }
}

/// Marks a failpoint; the driver dies here when a test build armed it.
#[inline(always)]
pub fn hit(_name: &str) {
    #[cfg(feature = "failpoints")]
    armed::hit(_name);
}
