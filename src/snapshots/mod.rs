//! Snapshots of this node's volumes: what each is (its durable record), how
//! it was made, and the table of them the driver serves from. Taking,
//! copying and removing them is [`take`]'s job.
//!
//! A snapshot lives in the pool of its volume, at `snapshots/<id>`: a
//! read-only btrfs snapshot of the volume's subvolume, a directory tree, or
//! an image file, as [`Method`] says.

pub mod take;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::copy::Progress;
use crate::ids::{PoolName, SnapshotId, VolumeId};
use crate::kind::{Content, KindName};
use crate::record::Durable;

/// How a snapshot's data was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// A read-only btrfs snapshot of the volume's subvolume: O(1).
    BtrfsSnapshot,
    /// The image file cloned (FICLONE): O(1) in bytes.
    Reflink,
    /// The tree copied with each regular file cloned: O(files).
    ReflinkTree,
    /// The bytes copied, holes kept: O(bytes), done in the background.
    Copy,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::BtrfsSnapshot => "btrfs-snapshot",
            Method::Reflink => "reflink",
            Method::ReflinkTree => "reflink-tree",
            Method::Copy => "copy",
        }
    }

    /// Whether the snapshot shares its bytes with its volume (copy-on-write)
    /// rather than holding its own.
    pub fn shares_bytes(self) -> bool {
        matches!(self, Method::BtrfsSnapshot | Method::Reflink)
    }
}

/// What the driver knows about a snapshot that must survive a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: SnapshotId,
    /// The CreateSnapshot name the id was minted from.
    pub name: String,
    /// The volume it was taken of (which may be deleted since).
    pub source: VolumeId,
    pub pool: PoolName,
    pub kind: KindName,
    /// What an image holds, as the volume's record says.
    #[serde(rename = "fs_type")]
    pub content: Content,
    /// The smallest volume a restore makes: the source's capacity then
    /// (or the bytes it held, for a volume with none).
    pub size_bytes: u64,
    /// When it was taken, in nanoseconds since the epoch.
    pub created_nanos: u64,
    pub method: Method,
    /// Whether its data is complete and durable (a copy in the background
    /// is not, until it ends).
    pub ready: bool,
}

impl Durable for SnapshotRecord {
    type Id = SnapshotId;
    const DIR: &'static str = "snapshot-meta";
    const WHAT: &'static str = "snapshot";
    fn id(&self) -> &SnapshotId {
        &self.id
    }
    fn parse_id(raw: &str) -> Option<SnapshotId> {
        SnapshotId::parse(raw).ok()
    }
}

/// A copy running in the background, and a way to stop it.
#[derive(Debug, Default)]
pub struct Running {
    pub progress: Progress,
    cancelled: AtomicBool,
}

impl Running {
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}

/// This node's snapshots, rebuilt from records at start, and the copies
/// running for those not ready yet.
#[derive(Debug, Default)]
pub struct SnapshotTable {
    by_id: BTreeMap<SnapshotId, SnapshotRecord>,
    running: HashMap<SnapshotId, Arc<Running>>,
    /// Why the last copy of a snapshot failed, for its next CreateSnapshot.
    failed: HashMap<SnapshotId, String>,
}

impl SnapshotTable {
    pub fn insert(&mut self, record: SnapshotRecord) {
        self.by_id.insert(record.id.clone(), record);
    }

    pub fn get(&self, id: &SnapshotId) -> Option<&SnapshotRecord> {
        self.by_id.get(id)
    }

    pub fn remove(&mut self, id: &SnapshotId) {
        self.by_id.remove(id);
        self.failed.remove(id);
    }

    /// Up to `max` snapshots in id order from `start` on, taken of
    /// `source` if given, and the id the next page starts at.
    pub fn page(
        &self,
        start: Option<&SnapshotId>,
        source: Option<&VolumeId>,
        max: usize,
    ) -> (Vec<SnapshotRecord>, Option<SnapshotId>) {
        let from = start.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Included);
        let mut matching = self
            .by_id
            .range((from, std::ops::Bound::Unbounded))
            .map(|(_, record)| record)
            .filter(|record| source.is_none_or(|s| &record.source == s));
        let page: Vec<SnapshotRecord> = matching.by_ref().take(max).cloned().collect();
        (page, matching.next().map(|record| record.id.clone()))
    }

    /// Snapshots in `pool` by how they were made, and how many are not ready.
    pub fn counts(&self, pool: &PoolName) -> (BTreeMap<Method, u64>, u64) {
        let mut by_method = BTreeMap::new();
        let mut pending = 0;
        for record in self.by_id.values().filter(|r| &r.pool == pool) {
            *by_method.entry(record.method).or_default() += 1;
            pending += u64::from(!record.ready);
        }
        (by_method, pending)
    }

    /// The copy running for snapshot `id`, if one is.
    pub fn running(&self, id: &SnapshotId) -> Option<Arc<Running>> {
        self.running.get(id).cloned()
    }

    /// Whether a copy is reading volume `source` now.
    pub fn copying_from(&self, source: &VolumeId) -> Option<SnapshotId> {
        self.running
            .keys()
            .find(|id| self.by_id.get(*id).is_some_and(|r| &r.source == source))
            .cloned()
    }

    fn start(&mut self, id: &SnapshotId) -> Arc<Running> {
        self.failed.remove(id);
        let running = Arc::new(Running::default());
        self.running.insert(id.clone(), Arc::clone(&running));
        running
    }

    fn finish(&mut self, id: &SnapshotId, outcome: Result<SnapshotRecord, String>) {
        self.running.remove(id);
        match outcome {
            Ok(record) => {
                if self.by_id.contains_key(id) {
                    self.by_id.insert(id.clone(), record);
                }
            }
            Err(why) => {
                self.failed.insert(id.clone(), why);
            }
        }
    }

    /// How many copies run now.
    pub fn running_count(&self) -> usize {
        self.running.len()
    }

    /// A snapshot not ready whose data no copy is making, and whose last
    /// copy did not fail: the next to copy.
    fn next_waiting(&self) -> Option<SnapshotRecord> {
        self.by_id
            .values()
            .find(|r| {
                !r.ready && !self.running.contains_key(&r.id) && !self.failed.contains_key(&r.id)
            })
            .cloned()
    }

    /// Forgets that the last copy of snapshot `id` failed, so that it is
    /// copied again.
    pub fn retry(&mut self, id: &SnapshotId) {
        self.failed.remove(id);
    }

    /// Why the last copy of snapshot `id` failed, if it did.
    pub fn failure(&self, id: &SnapshotId) -> Option<&str> {
        self.failed.get(id).map(String::as_str)
    }
}
