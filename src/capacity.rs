//! The capacity ledger: what each backing offers (a pool's disk, the node's
//! memory budget), what volumes were promised of it, and every decision that
//! follows: the size a new volume gets, whether a volume may grow, what
//! GetCapacity reports. A refusal is a [`Shortage`]; the service layer alone
//! turns it into a gRPC code.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::ids::PoolName;
use crate::kind::{Backing, Content, KindName};
use crate::pool::Pool;
use crate::validate::CapacityRequest;
use crate::volumes::VolumeTable;

/// Volume sizes are whole blocks of this many bytes.
pub const GRANULE: u64 = 4096;

/// How long CreateVolume and expansion reuse a pool's measured usage.
pub const USAGE_REFRESH: Duration = Duration::from_secs(10);

/// Bytes promised to volumes, per backing. The volume table keeps it in step
/// with its records; the ledger reads it.
#[derive(Debug, Default)]
pub struct Promises(HashMap<Backing, u64>);

impl Promises {
    pub fn add(&mut self, backing: Backing, bytes: u64) {
        *self.0.entry(backing).or_default() += bytes;
    }

    pub fn release(&mut self, backing: &Backing, bytes: u64) {
        if let Some(sum) = self.0.get_mut(backing) {
            *sum = sum.saturating_sub(bytes);
        }
    }

    /// Bytes promised to the volumes drawing on `backing`.
    pub fn of(&self, backing: &Backing) -> u64 {
        self.0.get(backing).copied().unwrap_or(0)
    }
}

/// What a shortage is short of, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A pool's disk: its name and path.
    Pool(PoolName, String),
    /// The memory budget of the named node.
    Memory(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Pool(name, path) => write!(f, "pool {name} ({path})"),
            Source::Memory(node) => write!(f, "the memory budget of node {node}"),
        }
    }
}

/// Why the ledger refuses a size.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Shortage {
    /// The request's limit is below the smallest volume of its kind.
    #[error(
        "volume {volume}: at most {limit} bytes allowed (limit_bytes), but a {kind} volume{holding} needs at least {minimum} bytes"
    )]
    BelowMinimum {
        volume: String,
        limit: u64,
        kind: &'static str,
        /// " holding <fs>" for an image with a filesystem, else empty.
        holding: String,
        minimum: u64,
    },
    /// The request's limit is below the size of the snapshot or volume the
    /// new volume is to hold.
    #[error(
        "volume {volume}: at most {limit} bytes allowed (limit_bytes), but {source_of} it is made from has {size} bytes"
    )]
    BelowSource {
        volume: String,
        limit: u64,
        source_of: String,
        size: u64,
    },
    /// The backing has fewer unpromised bytes than a new volume needs.
    #[error("volume {volume}: {needed} bytes needed but {source_of} can give {available} bytes")]
    NoRoom {
        volume: String,
        needed: u64,
        available: u64,
        source_of: Source,
    },
    /// The backing has fewer unpromised bytes than a volume would grow by.
    #[error(
        "volume {volume}: growing by {more} bytes, but only {available} bytes are left in {source_of}"
    )]
    NoRoomToGrow {
        volume: String,
        more: u64,
        available: u64,
        source_of: Source,
    },
    /// The node holds as many volumes as it may.
    #[error("volume {volume}: node {node} already holds its maximum of {max} volumes")]
    TooMany {
        volume: String,
        node: String,
        max: u64,
    },
    /// An expansion asked for less than the volume has.
    #[error(
        "volume {volume} has {current} bytes; shrinking to {required} bytes (limit {limit}) is not supported"
    )]
    Shrink {
        volume: String,
        current: u64,
        required: u64,
        limit: u64,
    },
    /// More bytes than a file can hold.
    #[error("volume {volume}: {bytes} bytes is too large")]
    TooLarge { volume: String, bytes: u64 },
}

/// A new volume's size request, as the ledger weighs it.
pub struct Ask<'a> {
    pub volume: &'a str,
    pub kind: KindName,
    /// What an image holds.
    pub content: Content,
    pub range: CapacityRequest,
}

/// The node's limits and what its pools' volumes were last measured to use.
#[derive(Debug)]
pub struct Ledger {
    node_id: String,
    /// Bytes of RAM that memory volumes may take in all.
    memory_budget: u64,
    /// Most volumes this node holds (0 = no limit).
    max_volumes: u64,
    /// Per pool: the bytes its volumes use of their promises, and when that
    /// was measured.
    used: Mutex<HashMap<PoolName, (u64, Instant)>>,
}

impl Ledger {
    pub fn new(node_id: String, memory_budget: u64, max_volumes: u64) -> Ledger {
        Ledger {
            node_id,
            memory_budget,
            max_volumes,
            used: Mutex::new(HashMap::new()),
        }
    }

    /// What a shortage of `backing` in `pool` is short of.
    fn source_of(&self, backing: &Backing, pool: &Pool) -> Source {
        match backing {
            Backing::Disk(_) => Source::Pool(pool.name.clone(), pool.shown().to_string()),
            Backing::Memory => Source::Memory(self.node_id.clone()),
        }
    }

    /// Bytes `backing` offers before promises: the memory budget, or the
    /// pool's free space plus what its volumes already use of their promises
    /// (those bytes are promised and gone from the free space both). The
    /// usage is measured again when `fresh`, else at most every
    /// [`USAGE_REFRESH`]. Takes the table's lock only briefly.
    pub fn offered(
        &self,
        backing: &Backing,
        pool: &Pool,
        table: &Mutex<VolumeTable>,
        fresh: bool,
    ) -> Result<u64> {
        match backing {
            Backing::Disk(_) => {
                Ok(pool.space()?.free_bytes + self.used_of_promises(pool, table, fresh)?)
            }
            Backing::Memory => Ok(self.memory_budget),
        }
    }

    /// Bytes the pool's disk volumes use of their promises, as
    /// [`Ledger::offered`] counts them (measured at most every
    /// [`USAGE_REFRESH`]).
    pub fn used_by_volumes(&self, pool: &Pool, table: &Mutex<VolumeTable>) -> Result<u64> {
        self.used_of_promises(pool, table, false)
    }

    /// What a new volume of `kind` in `pool` can get now: what the backing
    /// offers minus what its volumes were promised (measured fresh: this is
    /// what GetCapacity reports).
    pub fn available(
        &self,
        pool: &Pool,
        kind: KindName,
        table: &Mutex<VolumeTable>,
    ) -> Result<u64> {
        let backing = kind.backing(&pool.name);
        let total = self.offered(&backing, pool, table, true)?;
        let promised = lock(table).promised(&backing);
        Ok(total.saturating_sub(promised))
    }

    /// The capacity a new volume gets, given what its backing `offered` and
    /// the table (locked by the caller, who enters the volume before letting
    /// go, so concurrent creates see it promised): within the volume limit
    /// and the room left, see [`choose`].
    pub fn reserve(
        &self,
        table: &VolumeTable,
        pool: &Pool,
        offered: u64,
        ask: &Ask<'_>,
    ) -> std::result::Result<u64, Shortage> {
        if self.max_volumes > 0 && table.count() as u64 >= self.max_volumes {
            return Err(Shortage::TooMany {
                volume: ask.volume.to_owned(),
                node: self.node_id.clone(),
                max: self.max_volumes,
            });
        }
        let backing = ask.kind.backing(&pool.name);
        let available = offered.saturating_sub(table.promised(&backing));
        choose(ask, available).map_err(|shortfall| match shortfall {
            Shortfall::BelowMinimum(minimum) => Shortage::BelowMinimum {
                volume: ask.volume.to_owned(),
                limit: ask.range.limit,
                kind: ask.kind.as_str(),
                holding: match ask.content {
                    Content::Raw => String::new(),
                    Content::Fs(fs) => format!(" holding {}", fs.as_str()),
                },
                minimum,
            },
            Shortfall::NoRoom(needed) => Shortage::NoRoom {
                volume: ask.volume.to_owned(),
                needed,
                available,
                source_of: self.source_of(&backing, pool),
            },
        })
    }

    /// Whether a volume of `current` bytes drawing on `backing` may grow to
    /// `range.required` (0: stay as it is): a smaller size would shrink it,
    /// a larger one needs the difference unpromised. True when it grows.
    pub fn grow(
        &self,
        table: &VolumeTable,
        pool: &Pool,
        backing: &Backing,
        offered: u64,
        (volume, current): (&str, u64),
        range: CapacityRequest,
    ) -> std::result::Result<bool, Shortage> {
        if range.required != 0 && range.required < current {
            return Err(Shortage::Shrink {
                volume: volume.to_owned(),
                current,
                required: range.required,
                limit: range.limit,
            });
        }
        if range.required <= current {
            return Ok(false);
        }
        let available = offered.saturating_sub(table.promised(backing));
        let more = range.required - current;
        if more > available {
            return Err(Shortage::NoRoomToGrow {
                volume: volume.to_owned(),
                more,
                available,
                source_of: self.source_of(backing, pool),
            });
        }
        Ok(true)
    }

    /// Bytes the pool's disk volumes use, each up to its capacity, counting
    /// only volumes whose usage is O(1) to read (image files, qgroups); the
    /// others count as unused, which errs on the safe side.
    fn used_of_promises(
        &self,
        pool: &Pool,
        table: &Mutex<VolumeTable>,
        fresh: bool,
    ) -> Result<u64> {
        let cached = self
            .used
            .lock()
            .expect("usage estimate poisoned")
            .get(&pool.name)
            .copied();
        if let Some((used, at)) = cached
            && !fresh
            && at.elapsed() < USAGE_REFRESH
        {
            return Ok(used);
        }
        let disk = Backing::Disk(pool.name.clone());
        let records: Vec<_> = lock(table)
            .records_in(&pool.name)
            .filter(|r| r.kind.backing(&pool.name) == disk)
            .collect();
        let mut used = 0;
        for record in records {
            // A volume whose usage cannot be read counts as unused: safe.
            match record.kind.backend().used_cheaply(pool, &record) {
                Ok(Some(bytes)) => used += bytes.min(record.capacity_bytes),
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(volume = %record.id, %err, "usage unknown; counted as unused")
                }
            }
        }
        self.used
            .lock()
            .expect("usage estimate poisoned")
            .insert(pool.name.clone(), (used, Instant::now()));
        Ok(used)
    }
}

fn lock(table: &Mutex<VolumeTable>) -> std::sync::MutexGuard<'_, VolumeTable> {
    table.lock().expect("volume table poisoned")
}

/// Why no capacity fits a request.
#[derive(Debug, PartialEq, Eq)]
enum Shortfall {
    /// The limit is below the kind's minimum (this many bytes).
    BelowMinimum(u64),
    /// This many bytes are needed, more than there is room for.
    NoRoom(u64),
}

/// The capacity of a new volume with `available` bytes of room: nothing
/// asked → the kind's default (0, no limit, for a directory); a limit alone →
/// as much of it as there is room for; a size → that size, raised to the
/// kind's minimum and rounded up to [`GRANULE`] where the limit allows. A
/// sized request never gets 0 (which would mean "no limit"), however little
/// room is left.
fn choose(ask: &Ask<'_>, available: u64) -> std::result::Result<u64, Shortfall> {
    let (kind, range) = (ask.kind, ask.range);
    let sized = range.required != 0 || range.limit != 0;
    let minimum = kind
        .minimum_capacity(ask.content)
        .max(if sized { GRANULE } else { 0 });
    let limit = if range.limit == 0 {
        u64::MAX
    } else {
        range.limit
    };
    if limit < minimum {
        return Err(Shortfall::BelowMinimum(minimum));
    }
    let capacity = match (range.required, range.limit) {
        (0, 0) => kind.default_capacity(),
        (0, _) => limit.min(available) / GRANULE * GRANULE,
        (required, _) => {
            let wanted = required.max(minimum);
            let rounded = wanted.div_ceil(GRANULE).saturating_mul(GRANULE);
            if rounded <= limit { rounded } else { wanted }
        }
    };
    if capacity > available || (sized || kind.sized()) && capacity < minimum.max(1) {
        return Err(Shortfall::NoRoom(capacity.max(minimum)));
    }
    Ok(capacity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::FsType;

    const RAW: Content = Content::Raw;
    const XFS: Content = Content::Fs(FsType::Xfs);

    fn choose_for(
        kind: KindName,
        content: Content,
        (required, limit): (u64, u64),
        available: u64,
    ) -> std::result::Result<u64, Shortfall> {
        let ask = Ask {
            volume: "v",
            kind,
            content,
            range: CapacityRequest { required, limit },
        };
        choose(&ask, available)
    }

    #[test]
    fn sizes_round_up_to_blocks_and_the_kind_minimum_within_the_limit() {
        let room = 1 << 40;
        let dir = KindName::Directory;
        assert_eq!(choose_for(dir, RAW, (0, 0), room), Ok(0));
        assert_eq!(choose_for(dir, RAW, (1000, 0), room), Ok(4096));
        assert_eq!(choose_for(dir, RAW, (4097, 0), room), Ok(8192));
        assert_eq!(choose_for(dir, RAW, (4097, 5000), room), Ok(4097));
        assert_eq!(
            choose_for(dir, RAW, (0, 1000), room),
            Err(Shortfall::BelowMinimum(4096))
        );
        assert_eq!(choose_for(dir, RAW, (0, 10_000), room), Ok(8192));
        let xfs_minimum = KindName::File.minimum_capacity(XFS);
        assert_eq!(
            choose_for(KindName::File, XFS, (100 << 20, 0), room),
            Ok(xfs_minimum)
        );
        assert_eq!(
            choose_for(KindName::File, XFS, (0, 100 << 20), room),
            Err(Shortfall::BelowMinimum(xfs_minimum))
        );
        assert_eq!(choose_for(KindName::Memory, RAW, (100, 0), room), Ok(4096));
    }

    #[test]
    fn a_sized_request_never_gets_zero_from_a_full_pool() {
        let dir = KindName::Directory;
        assert_eq!(
            choose_for(dir, RAW, (0, 1 << 30), 0),
            Err(Shortfall::NoRoom(4096))
        );
        assert_eq!(
            choose_for(dir, RAW, (0, 1 << 30), 4095),
            Err(Shortfall::NoRoom(4096))
        );
        assert_eq!(choose_for(dir, RAW, (0, 1 << 30), 5000), Ok(4096));
        assert_eq!(
            choose_for(dir, RAW, (8192, 0), 5000),
            Err(Shortfall::NoRoom(8192))
        );
        // Nothing asked: no limit, whatever the room.
        assert_eq!(choose_for(dir, RAW, (0, 0), 0), Ok(0));
    }

    #[test]
    fn promises_follow_adds_and_releases_per_backing() {
        let mut promises = Promises::default();
        let disk = Backing::Disk(PoolName::parse("a").unwrap());
        promises.add(disk.clone(), 10);
        promises.add(Backing::Memory, 3);
        promises.release(&disk, 4);
        promises.release(&Backing::Memory, 99);
        assert_eq!((promises.of(&disk), promises.of(&Backing::Memory)), (6, 0));
    }
}
