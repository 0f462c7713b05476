//! Creating, expanding and deleting volumes in this node's pools: the work
//! behind CreateVolume, ControllerExpandVolume and DeleteVolume, shared with
//! ephemeral inline volumes and NodeExpandVolume.

use crate::csi::TopologyRequirement;
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::ids::VolumeId;
use crate::kind::{Backing, KindName};
use crate::mounts::MountIndex;
use crate::pool::{Enforcement, Pool};
use crate::record::{self, VolumeRecord};
use crate::validate::{CapacityRequest, Enforce, VolumeParams};

/// A checked CreateVolume request.
pub struct NewVolume {
    pub id: VolumeId,
    pub name: String,
    pub range: CapacityRequest,
    pub params: VolumeParams,
    pub requirement: Option<TopologyRequirement>,
    /// Made by a publish of a CSI ephemeral inline volume.
    pub ephemeral: bool,
    /// The filesystem a kind=file volume gets ("" for none).
    pub fs_type: String,
}

pub fn create(driver: &Driver, request: NewVolume) -> Result<VolumeRecord> {
    let pool = driver.pool(request.params.pool.as_ref())?;
    let id = &request.id;
    driver.check_readable(id)?;
    let existing = driver.table().get(id).map(|v| v.record.clone());
    if let Some(existing) = existing {
        check_same_request(&existing, &request, pool, reachable(driver, &request))?;
        // A retry after a crash between record and directory lands here.
        existing.kind.backend().create(pool, &existing)?;
        return Ok(existing);
    }
    check_accessibility(driver, &request)?;
    check_enforcement(pool, &request)?;
    let record = reserve(driver, pool, &request)?;
    failpoint::hit("create:reserved");
    let made = record::save(&pool.meta, &pool.shown().to_string(), &record).and_then(|()| {
        failpoint::hit("create:record-saved");
        record.kind.backend().create(pool, &record)
    });
    if let Err(err) = made {
        driver.table().remove(id);
        record::remove(&pool.meta, &pool.shown().to_string(), id).ok();
        return Err(err);
    }
    failpoint::hit("create:made");
    tracing::info!(volume = %id, name = %record.name, pool = %pool.name, capacity = record.capacity_bytes, "volume created");
    Ok(record)
}

/// Requisite topologies must include this node; preferred ones are only
/// preferences, and this node is the only place a volume can go.
fn reachable(driver: &Driver, request: &NewVolume) -> bool {
    request.requirement.as_ref().is_none_or(|r| {
        r.requisite.is_empty() || r.requisite.iter().any(|t| driver.is_this_node(t))
    })
}

fn check_accessibility(driver: &Driver, request: &NewVolume) -> Result<()> {
    if reachable(driver, request) {
        return Ok(());
    }
    Err(Error::ResourceExhausted(format!(
        "volume {}: accessibility_requirements do not include this node ({}={})",
        request.name,
        driver.topology_key(),
        driver.config.node_id
    )))
}

/// `enforce: required` refuses a directory volume the pool cannot hold to
/// its capacity; the other kinds always hold theirs.
fn check_enforcement(pool: &Pool, request: &NewVolume) -> Result<()> {
    let params = &request.params;
    let no_size = request.range.required == 0 && request.range.limit == 0;
    if params.kind == KindName::Directory && params.enforce == Enforce::Required && no_size {
        return Err(Error::InvalidArgument(format!(
            "volume {}: enforce=required needs a capacity to enforce",
            request.name
        )));
    }
    match refusal(pool, params) {
        Some(why) => Err(Error::FailedPrecondition(format!(
            "volume {}: enforce=required, but pool {} ({}) cannot enforce capacity: {why}",
            request.name,
            pool.name,
            pool.shown()
        ))),
        None => Ok(()),
    }
}

/// Why `pool` refuses volumes with these parameters, if it does (so that
/// GetCapacity offers such a pool nothing).
pub fn refusal<'a>(pool: &'a Pool, params: &VolumeParams) -> Option<&'a str> {
    match (&pool.enforcement, params.kind, params.enforce) {
        (Enforcement::Unavailable(why), KindName::Directory, Enforce::Required) => Some(why),
        _ => None,
    }
}

/// Whether a new volume is to be held to its capacity by the pool.
fn enforced(pool: &Pool, params: &VolumeParams) -> bool {
    params.kind == KindName::Directory
        && params.enforce != Enforce::None
        && pool.enforcement.available()
}

/// Checks the volume limit and the room left (the pool's disk, or the
/// memory budget for memory volumes), chooses the capacity (what is
/// required; else as much of the limit as there is room for; else the
/// kind's default), and enters the volume in the table so that concurrent
/// creates see it promised.
fn reserve(driver: &Driver, pool: &Pool, request: &NewVolume) -> Result<VolumeRecord> {
    let kind = request.params.kind;
    let backing = kind.backing(&pool.name);
    let total = driver.offered(&backing, pool, false)?;
    let mut table = driver.table();
    let max = driver.config.max_volumes;
    if max > 0 && table.count() as u64 >= max {
        return Err(Error::ResourceExhausted(format!(
            "volume {}: node {} already holds its maximum of {max} volumes",
            request.name, driver.config.node_id
        )));
    }
    let available = total.saturating_sub(table.promised(&backing));
    let capacity_bytes = choose_capacity(kind, &request.fs_type, request.range, available)
        .map_err(|shortfall| match shortfall {
            Shortfall::BelowMinimum(minimum) => Error::OutOfRange(format!(
                "volume {}: at most {} bytes allowed (limit_bytes), but a {} volume{} needs at least {minimum} bytes",
                request.name,
                request.range.limit,
                kind.as_str(),
                if request.fs_type.is_empty() {
                    String::new()
                } else {
                    format!(" holding {}", request.fs_type)
                }
            )),
            Shortfall::NoRoom(needed) => {
                let message = format!(
                    "volume {}: {needed} bytes needed but {} can give {available} bytes",
                    request.name,
                    match &backing {
                        Backing::Disk(_) => format!("pool {} ({})", pool.name, pool.shown()),
                        Backing::Memory =>
                            format!("the memory budget of node {}", driver.config.node_id),
                    }
                );
                match backing {
                    Backing::Disk(_) => Error::OutOfRange(message),
                    Backing::Memory => Error::ResourceExhausted(message),
                }
            }
        })?;
    let record = VolumeRecord {
        id: request.id.clone(),
        name: request.name.clone(),
        pool: pool.name.clone(),
        kind,
        capacity_bytes,
        ephemeral: request.ephemeral,
        fs_type: request.fs_type.clone(),
        enforced: enforced(pool, &request.params),
    };
    table.insert(record.clone());
    Ok(record)
}

/// Volume sizes are whole blocks of this many bytes.
const GRANULE: u64 = 4096;

/// Why no capacity fits a request.
#[derive(Debug, PartialEq, Eq)]
enum Shortfall {
    /// The limit is below the kind's minimum (this many bytes).
    BelowMinimum(u64),
    /// This many bytes are needed, more than there is room for.
    NoRoom(u64),
}

/// The capacity of a new volume of `kind` (holding `fs_type`) for `range`
/// with `available` bytes of room: nothing asked → the kind's default (0, no
/// limit, for a directory); a limit alone → as much of it as there is room
/// for; a size → that size, raised to the kind's minimum and rounded up to
/// [`GRANULE`] where the limit allows. A sized request never gets 0 (which
/// would mean "no limit"), however little room is left.
fn choose_capacity(
    kind: KindName,
    fs_type: &str,
    range: CapacityRequest,
    available: u64,
) -> std::result::Result<u64, Shortfall> {
    let sized = range.required != 0 || range.limit != 0;
    let minimum = kind
        .minimum_capacity(fs_type)
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

/// An existing volume answers a repeated request only if it satisfies it:
/// same name, kind and pool, capacity in range, and reachable from the
/// request's requisite topology.
fn check_same_request(
    existing: &VolumeRecord,
    request: &NewVolume,
    pool: &Pool,
    reachable: bool,
) -> Result<()> {
    let NewVolume {
        name,
        range,
        params,
        ..
    } = request;
    if existing.ephemeral != request.ephemeral {
        return Err(Error::AlreadyExists(format!(
            "volume {} already exists {} an ephemeral inline volume",
            existing.id,
            if existing.ephemeral {
                "as"
            } else {
                "and is not"
            }
        )));
    }
    if &existing.name != name {
        return Err(Error::Internal(format!(
            "volume id {} of name {name:?} is already used by name {:?}",
            existing.id, existing.name
        )));
    }
    if !reachable
        || !range.admits(existing.capacity_bytes)
        || existing.kind != params.kind
        || existing.fs_type != request.fs_type
        || existing.pool != pool.name
    {
        return Err(Error::AlreadyExists(format!(
            "volume {name} already exists as {} (kind {}, pool {}, {} bytes, filesystem {:?}), incompatible with this request (kind {}, pool {}, filesystem {:?}, required {} / limit {} bytes, reachable from its topology: {reachable})",
            existing.id,
            existing.kind.as_str(),
            existing.pool,
            existing.capacity_bytes,
            existing.fs_type,
            params.kind.as_str(),
            pool.name,
            request.fs_type,
            range.required,
            range.limit
        )));
    }
    Ok(())
}

/// Refuses while any mount of the volume exists (a published target, a
/// subPath bind, a mount the driver lost track of): the kernel's mount table,
/// not the driver's memory, decides.
pub fn delete(driver: &Driver, id: &VolumeId) -> Result<()> {
    driver.check_readable(id)?;
    let Some(volume) = driver.table().get(id).cloned() else {
        return Ok(());
    };
    let pool = driver.pool(Some(&volume.record.pool))?;
    let backend = volume.record.kind.backend();
    if let Some(mount) = backend.users(pool, id, &MountIndex::read()?)?.first() {
        return Err(Error::FailedPrecondition(format!(
            "volume {id} is still mounted at {}; unpublish it first",
            mount.mount_point.display()
        )));
    }
    backend.delete(pool, id)?;
    failpoint::hit("delete:trashed");
    record::remove(&pool.meta, &pool.shown().to_string(), id)?;
    failpoint::hit("delete:record-removed");
    driver.table().remove(id);
    tracing::info!(volume = %id, name = %volume.record.name, pool = %pool.name, "volume deleted");
    Ok(())
}

/// Grows a volume to `range.required_bytes`: the record's capacity is raised
/// (durably) and the kind grows its backing. The same size again changes
/// nothing (the backing is still checked, so a retry after a crash
/// converges); a smaller one would shrink it (OUT_OF_RANGE). Returns the
/// record and whether the node must finish the job.
pub fn expand(
    driver: &Driver,
    id: &VolumeId,
    range: CapacityRequest,
) -> Result<(VolumeRecord, bool)> {
    let mut record = driver.volume(id)?.record;
    let pool = driver.pool(Some(&record.pool))?;
    let current = record.capacity_bytes;
    // No size asked for (NodeExpandVolume may omit it): finish at the record's.
    if range.required != 0 && range.required < current {
        return Err(Error::OutOfRange(format!(
            "volume {id} has {current} bytes; shrinking to {} bytes (limit {}) is not supported",
            range.required, range.limit
        )));
    }
    if range.required > current {
        let backing = record.kind.backing(&pool.name);
        let total = driver.offered(&backing, pool, false)?;
        let mut table = driver.table();
        let available = total.saturating_sub(table.promised(&backing));
        let more = range.required - current;
        if more > available {
            let message = format!(
                "volume {id}: growing by {more} bytes, but only {available} bytes are left in {}",
                match backing {
                    Backing::Disk(_) => format!("pool {} ({})", pool.name, pool.shown()),
                    Backing::Memory => "the memory budget".to_owned(),
                }
            );
            return Err(match backing {
                Backing::Disk(_) => Error::OutOfRange(message),
                Backing::Memory => Error::ResourceExhausted(message),
            });
        }
        record.capacity_bytes = range.required;
        table.update(record.clone());
        drop(table);
        if let Err(err) = record::save(&pool.meta, &pool.shown().to_string(), &record) {
            let mut old = record.clone();
            old.capacity_bytes = current;
            driver.table().update(old);
            return Err(err);
        }
        failpoint::hit("expand:record-saved");
        tracing::info!(volume = %id, from = current, to = record.capacity_bytes, "volume expanded");
    }
    let node_step = record.kind.backend().expand(pool, &record)?;
    failpoint::hit("expand:grown");
    Ok((record, node_step))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(required: u64, limit: u64) -> CapacityRequest {
        CapacityRequest { required, limit }
    }

    #[test]
    fn sizes_round_up_to_blocks_and_the_kind_minimum_within_the_limit() {
        let room = 1 << 40;
        let dir = KindName::Directory;
        assert_eq!(choose_capacity(dir, "", range(0, 0), room), Ok(0));
        assert_eq!(choose_capacity(dir, "", range(1000, 0), room), Ok(4096));
        assert_eq!(choose_capacity(dir, "", range(4097, 0), room), Ok(8192));
        assert_eq!(choose_capacity(dir, "", range(4097, 5000), room), Ok(4097));
        assert_eq!(
            choose_capacity(dir, "", range(0, 1000), room),
            Err(Shortfall::BelowMinimum(4096))
        );
        assert_eq!(choose_capacity(dir, "", range(0, 10_000), room), Ok(8192));
        let xfs_minimum = KindName::File.minimum_capacity("xfs");
        assert_eq!(
            choose_capacity(KindName::File, "xfs", range(100 << 20, 0), room),
            Ok(xfs_minimum)
        );
        assert_eq!(
            choose_capacity(KindName::File, "xfs", range(0, 100 << 20), room),
            Err(Shortfall::BelowMinimum(xfs_minimum))
        );
        assert_eq!(
            choose_capacity(KindName::Memory, "", range(100, 0), room),
            Ok(4096)
        );
    }

    #[test]
    fn a_sized_request_never_gets_zero_from_a_full_pool() {
        let dir = KindName::Directory;
        assert_eq!(
            choose_capacity(dir, "", range(0, 1 << 30), 0),
            Err(Shortfall::NoRoom(4096))
        );
        assert_eq!(
            choose_capacity(dir, "", range(0, 1 << 30), 4095),
            Err(Shortfall::NoRoom(4096))
        );
        assert_eq!(choose_capacity(dir, "", range(0, 1 << 30), 5000), Ok(4096));
        assert_eq!(
            choose_capacity(dir, "", range(8192, 0), 5000),
            Err(Shortfall::NoRoom(8192))
        );
        // Nothing asked: no limit, whatever the room.
        assert_eq!(choose_capacity(dir, "", range(0, 0), 0), Ok(0));
    }
}
