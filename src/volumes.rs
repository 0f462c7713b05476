//! The in-memory table of this node's volumes, rebuilt from records at start.
//!
//! It answers lookups, pagination and capacity promised per pool in O(1) or
//! O(log n); the records on disk stay the durable truth.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::path::PathBuf;

use crate::ids::{PoolName, VolumeId};
use crate::record::VolumeRecord;

/// A volume and where it is published on this node.
#[derive(Clone, Debug)]
pub struct Volume {
    pub record: VolumeRecord,
    /// Target paths this volume is bind-mounted on.
    pub published: BTreeSet<PathBuf>,
}

#[derive(Debug, Default)]
pub struct VolumeTable {
    by_id: BTreeMap<VolumeId, Volume>,
    promised: HashMap<PoolName, u64>,
}

impl VolumeTable {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn get(&self, id: &VolumeId) -> Option<&Volume> {
        self.by_id.get(id)
    }

    pub fn get_mut(&mut self, id: &VolumeId) -> Option<&mut Volume> {
        self.by_id.get_mut(id)
    }

    /// Adds a volume (not yet published) and counts its capacity against its pool.
    pub fn insert(&mut self, record: VolumeRecord) {
        *self.promised.entry(record.pool.clone()).or_default() += record.capacity_bytes;
        let volume = Volume {
            record,
            published: BTreeSet::new(),
        };
        if let Some(old) = self.by_id.insert(volume.record.id.clone(), volume) {
            self.release(&old.record);
        }
    }

    pub fn remove(&mut self, id: &VolumeId) -> Option<Volume> {
        let removed = self.by_id.remove(id)?;
        self.release(&removed.record);
        Some(removed)
    }

    fn release(&mut self, record: &VolumeRecord) {
        if let Some(sum) = self.promised.get_mut(&record.pool) {
            *sum = sum.saturating_sub(record.capacity_bytes);
        }
    }

    /// Bytes promised to the volumes of `pool`.
    pub fn promised(&self, pool: &PoolName) -> u64 {
        self.promised.get(pool).copied().unwrap_or(0)
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
        }
    }

    #[test]
    fn promised_capacity_follows_inserts_and_removes() {
        let mut table = VolumeTable::default();
        let (a, b) = (PoolName::parse("a").unwrap(), PoolName::parse("b").unwrap());
        table.insert(record("x", "a", 10));
        table.insert(record("y", "a", 5));
        table.insert(record("z", "b", 7));
        table.insert(record("x", "a", 10));
        assert_eq!((table.promised(&a), table.promised(&b)), (15, 7));
        table.remove(&VolumeId::mint("x"));
        assert_eq!(table.promised(&a), 5);
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
