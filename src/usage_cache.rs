//! Usage of directory volumes that no filesystem limit measures: a tree
//! walk, bounded in time and cached, so NodeGetVolumeStats never blocks long
//! on a volume with millions of files.
//!
//! Staleness: a complete figure is served for up to [`FRESH`] after it was
//! measured. When none is fresh, a walk runs for at most [`BUDGET`] in the
//! call; if it cannot finish, the call gets the last complete figure (or, the
//! first time, the lower bound counted so far) and the walk finishes in the
//! background for the calls that follow. Calls made while it does get the
//! same answer at once, without walking again.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::beneath::{self, Usage};
use crate::error::{Result, SysContext};
use crate::ids::VolumeId;

/// How long a complete measurement is served.
pub const FRESH: Duration = Duration::from_secs(60);
/// How long a call may walk before answering with what it has.
pub const BUDGET: Duration = Duration::from_millis(200);

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The last complete measurement and when it was taken.
    complete: Option<(Usage, Instant)>,
    /// What a walk cut short by the budget counted, while none is complete.
    lower_bound: Option<Usage>,
    /// A walk is finishing in the background.
    walking: bool,
}

const NOTHING_KNOWN: Entry = Entry {
    complete: None,
    lower_bound: None,
    walking: false,
};

/// Measurements of one pool's directory volumes.
#[derive(Debug, Default)]
pub struct UsageCache {
    entries: Arc<Mutex<HashMap<VolumeId, Entry>>>,
}

impl UsageCache {
    /// The usage of volume `id`, whose directory is `dir` (see the module
    /// header for how fresh it is).
    pub fn usage(&self, id: &VolumeId, dir: &OwnedFd) -> Result<Usage> {
        let entry = self.entry(id);
        if let Some((usage, at)) = entry.complete
            && (at.elapsed() < FRESH || entry.walking)
        {
            return Ok(usage);
        }
        if entry.walking
            && let Some(bound) = entry.lower_bound
        {
            return Ok(bound);
        }
        let (usage, complete) = beneath::usage_until(dir, Some(Instant::now() + BUDGET))
            .context(|| format!("volume {id}: measure its directory"))?;
        if complete {
            self.store(id, Some((usage, Instant::now())), false);
            return Ok(usage);
        }
        if self.claim_walk(id, usage) {
            self.finish_in_background(id, dir)?;
        }
        Ok(entry.complete.map_or(usage, |(last, _)| last))
    }

    /// Drops what is known of a deleted volume.
    pub fn forget(&self, id: &VolumeId) {
        self.entries
            .lock()
            .expect("usage cache poisoned")
            .remove(id);
    }

    fn entry(&self, id: &VolumeId) -> Entry {
        self.entries
            .lock()
            .expect("usage cache poisoned")
            .get(id)
            .copied()
            .unwrap_or(NOTHING_KNOWN)
    }

    fn store(&self, id: &VolumeId, complete: Option<(Usage, Instant)>, walking: bool) {
        let mut entries = self.entries.lock().expect("usage cache poisoned");
        let entry = entries.entry(id.clone()).or_insert(NOTHING_KNOWN);
        if complete.is_some() {
            entry.complete = complete;
            entry.lower_bound = None;
        }
        entry.walking = walking;
    }

    /// Marks a background walk as started, keeping what the cut-short walk
    /// counted; false when one already is.
    fn claim_walk(&self, id: &VolumeId, counted: Usage) -> bool {
        let mut entries = self.entries.lock().expect("usage cache poisoned");
        let entry = entries.entry(id.clone()).or_insert(NOTHING_KNOWN);
        entry.lower_bound = Some(counted);
        !std::mem::replace(&mut entry.walking, true)
    }

    fn finish_in_background(&self, id: &VolumeId, dir: &OwnedFd) -> Result<()> {
        let dir = dir
            .as_fd()
            .try_clone_to_owned()
            .inspect_err(|_| self.store(id, None, false));
        let dir = dir.context(|| format!("volume {id}: dup its directory fd"))?;
        let (entries, id) = (Arc::clone(&self.entries), id.clone());
        let walker = id.clone();
        let spawned = std::thread::Builder::new()
            .name("usage-walk".into())
            .spawn(move || {
                let measured = beneath::usage(&dir);
                let mut entries = entries.lock().expect("usage cache poisoned");
                let Some(entry) = entries.get_mut(&walker) else {
                    return; // deleted meanwhile
                };
                entry.walking = false;
                entry.lower_bound = None;
                match measured {
                    Ok(usage) => entry.complete = Some((usage, Instant::now())),
                    Err(errno) => {
                        tracing::warn!(volume = %walker, %errno, "measuring a directory volume failed")
                    }
                }
            });
        if let Err(e) = spawned {
            // Without the walk, later calls must walk for themselves.
            self.store(&id, None, false);
            tracing::warn!(volume = %id, "no thread to finish measuring a directory volume: {e}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;

    #[test]
    fn a_measurement_is_cached_and_a_large_tree_is_finished_in_the_background() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("a"), vec![1u8; 8192]).unwrap();
        let dir = nix::fcntl::open(tmp.path(), OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        let cache = UsageCache::default();
        let id = VolumeId::parse("v").unwrap();
        let first = cache.usage(&id, &dir).unwrap();
        assert_eq!(first.inodes, 2);
        std::fs::write(tmp.path().join("b"), b"").unwrap();
        assert_eq!(
            cache.usage(&id, &dir).unwrap(),
            first,
            "served from the cache"
        );
        cache.forget(&id);
        assert_eq!(cache.usage(&id, &dir).unwrap().inodes, 3, "measured again");
    }

    #[test]
    fn calls_made_while_a_walk_finishes_in_the_background_do_not_walk_again() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("a"), b"").unwrap();
        let dir = nix::fcntl::open(tmp.path(), OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        let cache = UsageCache::default();
        let id = VolumeId::parse("v").unwrap();
        // As a call whose walk ran out of budget leaves it.
        let counted = Usage {
            bytes: 4096,
            inodes: 1,
        };
        assert!(cache.claim_walk(&id, counted));
        assert!(!cache.claim_walk(&id, counted), "one walk at a time");
        assert_eq!(cache.usage(&id, &dir).unwrap(), counted);
        cache.store(&id, None, false);
        assert_eq!(
            cache.usage(&id, &dir).unwrap().inodes,
            2,
            "with no walk running, the call walks"
        );
    }
}
