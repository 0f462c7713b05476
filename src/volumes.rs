//! The in-memory table of this node's volumes, rebuilt from records at start.
//!
//! It answers lookups, pagination and capacity promised per pool in O(1) or
//! O(log n); the records on disk stay the durable truth.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::PathBuf;

use crate::capacity::Promises;
use crate::health::Reason;
use crate::ids::{PoolName, VolumeId};
use crate::kind::Backing;
use crate::record::VolumeRecord;
use crate::validate::Sharing;

fn backing(record: &VolumeRecord) -> Backing {
    record.kind.backing(&record.pool)
}

/// A volume and where it is published on this node.
#[derive(Clone, Debug)]
pub struct Volume {
    pub record: VolumeRecord,
    /// Target paths this volume is bind-mounted on.
    pub published: BTreeMap<PathBuf, Publication>,
    /// Something that happened to the volume in this run that its
    /// health must report (e.g. contents lost and recreated).
    pub notice: Option<String>,
    /// The problems its last health check found (to log changes only).
    pub problems: Vec<Reason>,
}

/// What a publish on one target was; both unknown for a target found
/// mounted at start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Publication {
    /// Whether its access mode let other targets have the volume too.
    pub sharing: Option<Sharing>,
    /// Device and inode of what was bound there (still the mount's root
    /// when what serves it went away, e.g. a detached loop device).
    pub source: Option<(u64, u64)>,
}

#[derive(Debug, Default)]
pub struct VolumeTable {
    by_id: BTreeMap<VolumeId, Volume>,
    promised: Promises,
}

impl VolumeTable {
    /// How many volumes the node holds.
    pub fn count(&self) -> usize {
        self.by_id.len()
    }

    pub fn get(&self, id: &VolumeId) -> Option<&Volume> {
        self.by_id.get(id)
    }

    pub fn get_mut(&mut self, id: &VolumeId) -> Option<&mut Volume> {
        self.by_id.get_mut(id)
    }

    /// The records of the volumes in `pool`.
    pub fn records_in<'a>(&'a self, pool: &'a PoolName) -> impl Iterator<Item = VolumeRecord> + 'a {
        self.by_id
            .values()
            .filter(move |v| &v.record.pool == pool)
            .map(|v| v.record.clone())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Volume> {
        self.by_id.values()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Volume> {
        self.by_id.values_mut()
    }

    /// Adds a volume (not yet published) and counts its capacity against its pool.
    pub fn insert(&mut self, record: VolumeRecord) {
        self.promised.add(backing(&record), record.capacity_bytes);
        let volume = Volume {
            record,
            published: BTreeMap::new(),
            notice: None,
            problems: Vec::new(),
        };
        if let Some(old) = self.by_id.insert(volume.record.id.clone(), volume) {
            self.release(&old.record);
        }
    }

    /// Replaces a volume's record (a new capacity), keeping what is known of
    /// its publications; the promise follows the new capacity.
    pub fn update(&mut self, record: VolumeRecord) {
        let Some(volume) = self.by_id.get_mut(&record.id) else {
            return self.insert(record);
        };
        let old = std::mem::replace(&mut volume.record, record);
        let new_backing = backing(&volume.record);
        let added = volume.record.capacity_bytes;
        self.release(&old);
        self.promised.add(new_backing, added);
    }

    pub fn remove(&mut self, id: &VolumeId) -> Option<Volume> {
        let removed = self.by_id.remove(id)?;
        self.release(&removed.record);
        Some(removed)
    }

    fn release(&mut self, record: &VolumeRecord) {
        self.promised
            .release(&backing(record), record.capacity_bytes);
    }

    /// Bytes promised to the volumes drawing on `backing`.
    pub fn promised(&self, backing: &Backing) -> u64 {
        self.promised.of(backing)
    }

    /// Up to `max` volumes (all if 0) in id order from `start` on, and the id
    /// the next page starts at.
    pub fn page(&self, start: Option<&VolumeId>, max: usize) -> (Vec<Volume>, Option<VolumeId>) {
        let from = start.map_or(Bound::Unbounded, Bound::Included);
        let mut range = self.by_id.range((from, Bound::Unbounded));
        let take = if max == 0 { usize::MAX } else { max };
        let page: Vec<Volume> = range.by_ref().take(take).map(|(_, v)| v.clone()).collect();
        let next = range.next().map(|(id, _)| id.clone());
        (page, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::KindName;

    fn record(name: &str, pool: &str, capacity: u64) -> VolumeRecord {
        VolumeRecord {
            id: VolumeId::mint(name),
            name: name.into(),
            pool: PoolName::parse(pool).unwrap(),
            kind: KindName::Directory,
            capacity_bytes: capacity,
            ephemeral: false,
            content: crate::kind::Content::Raw,
            enforced: false,
            content_source: None,
            filling: false,
        }
    }

    #[test]
    fn promised_capacity_follows_inserts_and_removes() {
        let mut table = VolumeTable::default();
        let disk = |p: &str| Backing::Disk(PoolName::parse(p).unwrap());
        let (a, b) = (disk("a"), disk("b"));
        table.insert(record("x", "a", 10));
        table.insert(record("y", "a", 5));
        table.insert(record("z", "b", 7));
        table.insert(record("x", "a", 10));
        assert_eq!((table.promised(&a), table.promised(&b)), (15, 7));
        table.remove(&VolumeId::mint("x"));
        assert_eq!(table.promised(&a), 5);
        let mut grown = record("y", "a", 50);
        table
            .get_mut(&grown.id)
            .unwrap()
            .published
            .insert("/t".into(), Publication::default());
        grown.capacity_bytes = 50;
        table.update(grown.clone());
        assert_eq!(table.promised(&a), 50);
        assert_eq!(
            table.get(&grown.id).unwrap().published.len(),
            1,
            "publications kept"
        );
        assert!(table.remove(&VolumeId::mint("x")).is_none());
    }

    #[test]
    fn pages_cover_every_volume_once() {
        let mut table = VolumeTable::default();
        for i in 0..7 {
            table.insert(record(&format!("v{i}"), "a", 1));
        }
        let mut seen = Vec::new();
        let mut start = None;
        loop {
            let (page, next) = table.page(start.as_ref(), 3);
            assert!(page.len() <= 3);
            seen.extend(page.into_iter().map(|v| v.record.id));
            match next {
                Some(id) => start = Some(id),
                None => break,
            }
        }
        assert_eq!(seen.len(), 7);
        let (all, next) = table.page(None, 0);
        assert_eq!((all.len(), next), (7, None));
    }
}
