//! Creating (empty, or from a snapshot or another volume), expanding and
//! deleting volumes in this node's pools: the work behind CreateVolume,
//! ControllerExpandVolume and DeleteVolume, shared with ephemeral inline
//! volumes and NodeExpandVolume.

use crate::capacity::{Ask, Shortage};
use crate::csi::TopologyRequirement;
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::ids::VolumeId;
use crate::kind::{Content, KindName, Seed};
use crate::mounts::MountIndex;
use crate::pool::{Enforcement, Pool};
use crate::record::{self, ContentSource, VolumeRecord};
use crate::snapshots::take as snapshots;
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
    /// What a kind=file volume holds: a filesystem, or raw for block access.
    pub content: Content,
    /// What the volume is to be made from: a snapshot, or a clone of a volume.
    pub source: Option<ContentSource>,
    /// The request named no filesystem: a restore or clone of an image
    /// takes its source's.
    pub adopt_filesystem: bool,
}

pub fn create(driver: &Driver, mut request: NewVolume) -> Result<VolumeRecord> {
    let pool = driver.pool(request.params.pool.as_ref())?;
    let id = &request.id.clone();
    driver.check_readable(id)?;
    let existing = driver.table().get(id).map(|v| v.record.clone());
    if let Some(existing) = existing {
        if request.adopt_filesystem && request.source.is_some() && !request.content.is_raw() {
            request.content = existing.content;
        }
        check_same_request(&existing, &request, pool, reachable(driver, &request))?;
        if existing.filling {
            // A create interrupted while it filled the volume starts over.
            let seed = open_source(driver, &mut request)?;
            existing.kind.backend().delete(pool, id)?;
            existing
                .kind
                .backend()
                .create_from(pool, &existing, &seed)?;
            return filled(driver, pool, existing);
        }
        // A retry after a crash between record and directory lands here.
        existing.kind.backend().create(pool, &existing)?;
        return Ok(existing);
    }
    check_accessibility(driver, &request)?;
    check_enforcement(pool, &request)?;
    let seed = match request.source {
        Some(_) => Some(open_source(driver, &mut request)?),
        None => None,
    };
    let record = reserve(driver, pool, &request)?;
    failpoint::hit("create:reserved");
    let backend = record.kind.backend();
    let made = record::save(&pool.meta, &pool.shown().to_string(), &record).and_then(|()| {
        failpoint::hit("create:record-saved");
        match &seed {
            None => backend.create(pool, &record),
            Some(seed) => backend.create_from(pool, &record, seed),
        }
    });
    if let Err(err) = made {
        // A half-filled backing must not outlive its record: a later create
        // of the same name would take it for made.
        if seed.is_some()
            && let Err(cleanup) = backend.delete(pool, id)
        {
            tracing::error!(volume = %id, "a half-filled volume stays with its record: {cleanup}");
            return Err(err);
        }
        driver.table().remove(id);
        record::remove::<VolumeRecord>(&pool.meta, &pool.shown().to_string(), id).ok();
        return Err(err);
    }
    failpoint::hit("create:made");
    let record = if seed.is_some() {
        filled(driver, pool, record)?
    } else {
        record
    };
    tracing::info!(volume = %id, name = %record.name, pool = %pool.name, capacity = record.capacity_bytes, source = ?record.content_source, "volume created");
    Ok(record)
}

/// Marks a volume whose backing now holds its source's data as done,
/// durably.
fn filled(driver: &Driver, pool: &Pool, mut record: VolumeRecord) -> Result<VolumeRecord> {
    record.filling = false;
    record::save(&pool.meta, &pool.shown().to_string(), &record)?;
    driver.table().update(record.clone());
    Ok(record)
}

/// Opens what the request's content source holds, checking that it can
/// become this volume (same kind; for an image, the same filesystem, which
/// a request naming none takes from it) and raising the capacity asked to
/// at least the source's size.
fn open_source(driver: &Driver, request: &mut NewVolume) -> Result<Seed> {
    let Some(source) = &request.source else {
        return Err(Error::Broken(format!(
            "volume {}: no content source",
            request.name
        )));
    };
    let (shown, kind, content, size, seed) = match source {
        ContentSource::Snapshot(id) => {
            let (snapshot, seed) = snapshots::open(driver, id)?;
            (
                format!("snapshot {id}"),
                snapshot.kind,
                snapshot.content,
                snapshot.size_bytes,
                seed,
            )
        }
        ContentSource::Volume(id) => {
            driver.check_readable(id)?;
            let volume = driver.volume(id)?.record;
            if volume.filling {
                return Err(Error::Busy(format!("volume {id} is still being filled")));
            }
            let pool = driver.pool(Some(&volume.pool))?;
            let seed = volume.kind.backend().seed(pool, &volume)?;
            let size = match volume.capacity_bytes {
                0 => seed.used_bytes()?,
                capacity => capacity,
            };
            (
                format!("volume {id}"),
                volume.kind,
                volume.content,
                size,
                seed,
            )
        }
    };
    let name = &request.name;
    if kind != request.params.kind {
        return Err(Error::Invalid(format!(
            "volume {name}: {shown} is of kind {}, but kind {} is asked for",
            kind.as_str(),
            request.params.kind.as_str()
        )));
    }
    if request.adopt_filesystem && !request.content.is_raw() && !content.is_raw() {
        request.content = content;
    }
    if content != request.content {
        return Err(Error::Invalid(format!(
            "volume {name}: {shown} holds {:?}, but {:?} is asked for",
            content.as_str(),
            request.content.as_str()
        )));
    }
    let range = &mut request.range;
    if range.limit > 0 && range.limit < size {
        return Err(Error::Capacity(Shortage::BelowSource {
            volume: name.clone(),
            limit: range.limit,
            source_of: shown,
            size,
        }));
    }
    range.required = range.required.max(size);
    Ok(seed)
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
    Err(Error::NotHere(format!(
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
        return Err(Error::Invalid(format!(
            "volume {}: enforce=required needs a capacity to enforce",
            request.name
        )));
    }
    match refusal(pool, params) {
        Some(why) => Err(Error::WrongState(format!(
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

/// Asks the ledger for the new volume's capacity (within the volume limit
/// and the room its backing has left) and enters the volume in the table
/// under the same lock, so that concurrent creates see it promised.
fn reserve(driver: &Driver, pool: &Pool, request: &NewVolume) -> Result<VolumeRecord> {
    let kind = request.params.kind;
    let backing = kind.backing(&pool.name);
    let offered = driver
        .ledger
        .offered(&backing, pool, driver.volumes(), false)?;
    let mut table = driver.table();
    let ask = Ask {
        volume: &request.name,
        kind,
        content: request.content,
        range: request.range,
    };
    let capacity_bytes = driver.ledger.reserve(&table, pool, offered, &ask)?;
    let record = VolumeRecord {
        id: request.id.clone(),
        name: request.name.clone(),
        pool: pool.name.clone(),
        kind,
        capacity_bytes,
        ephemeral: request.ephemeral,
        content: request.content,
        enforced: enforced(pool, &request.params),
        content_source: request.source.clone(),
        filling: request.source.is_some(),
    };
    table.insert(record.clone());
    Ok(record)
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
        return Err(Error::Conflict(format!(
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
        return Err(Error::Broken(format!(
            "volume id {} of name {name:?} is already used by name {:?}",
            existing.id, existing.name
        )));
    }
    if !reachable
        || !range.admits(existing.capacity_bytes)
        || existing.kind != params.kind
        || existing.content != request.content
        || existing.pool != pool.name
        || existing.content_source != request.source
    {
        return Err(Error::Conflict(format!(
            "volume {name} already exists as {} (kind {}, pool {}, {} bytes, filesystem {:?}, made from {:?}), incompatible with this request (kind {}, pool {}, filesystem {:?}, required {} / limit {} bytes, made from {:?}, reachable from its topology: {reachable})",
            existing.id,
            existing.kind.as_str(),
            existing.pool,
            existing.capacity_bytes,
            existing.content.as_str(),
            existing.content_source,
            params.kind.as_str(),
            pool.name,
            request.content.as_str(),
            range.required,
            range.limit,
            request.source
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
    if let Some(snapshot) = driver.snapshots().copying_from(id) {
        return Err(Error::Busy(format!(
            "volume {id}: snapshot {snapshot} is being copied from it; try again when the copy ends"
        )));
    }
    let pool = driver.pool(Some(&volume.record.pool))?;
    let backend = volume.record.kind.backend();
    if let Some(mount) = backend.users(pool, id, &MountIndex::read()?)?.first() {
        return Err(Error::WrongState(format!(
            "volume {id} is still mounted at {}; unpublish it first",
            mount.mount_point.display()
        )));
    }
    backend.delete(pool, id)?;
    failpoint::hit("delete:trashed");
    record::remove::<VolumeRecord>(&pool.meta, &pool.shown().to_string(), id)?;
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
    let backing = record.kind.backing(&pool.name);
    // Only a growth needs the room measured.
    let offered = if range.required > current {
        driver
            .ledger
            .offered(&backing, pool, driver.volumes(), false)?
    } else {
        0
    };
    let mut table = driver.table();
    // No size asked for (NodeExpandVolume may omit it): finish at the record's.
    let grows = driver.ledger.grow(
        &table,
        pool,
        &backing,
        offered,
        (id.as_str(), current),
        range,
    )?;
    if grows {
        record.capacity_bytes = range.required;
        table.update(record.clone());
    }
    drop(table);
    if grows {
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
    use crate::capacity::{Shortage, Source};
    use crate::csi::Topology;
    use crate::testing::{TestDriver, new_volume};

    fn sized(required: u64) -> CapacityRequest {
        CapacityRequest { required, limit: 0 }
    }

    /// The capacity the table and the record on disk hold for `id`.
    fn stored_capacity(t: &TestDriver, id: &VolumeId) -> (u64, u64) {
        let in_table = t.driver.volume(id).unwrap().record.capacity_bytes;
        let pool = t.driver.pool(None).unwrap();
        let shown = pool.shown().to_string();
        let listed = record::list(&pool.meta, &shown, "meta").unwrap();
        let loaded = record::load::<VolumeRecord>(&pool.meta, &shown, &listed);
        let on_disk = loaded.records.iter().find(|r| &r.id == id).unwrap();
        (in_table, on_disk.capacity_bytes)
    }

    /// More bytes than any disk a test runs on has.
    const HUGE: u64 = 1 << 60;

    #[test]
    fn a_repeated_create_returns_the_same_volume_and_an_incompatible_one_conflicts() {
        let t = TestDriver::open(|_| {});
        let first = create(&t.driver, new_volume("a", KindName::Directory, 1 << 20)).unwrap();
        let again = create(&t.driver, new_volume("a", KindName::Directory, 1 << 20)).unwrap();
        assert_eq!(
            (again.id, again.capacity_bytes),
            (first.id.clone(), 1 << 20)
        );
        let bigger = create(&t.driver, new_volume("a", KindName::Directory, 2 << 20)).unwrap_err();
        assert!(matches!(bigger, Error::Conflict(_)), "{bigger}");
        let other_kind = create(&t.driver, new_volume("a", KindName::Memory, 1 << 20)).unwrap_err();
        assert!(matches!(other_kind, Error::Conflict(_)), "{other_kind}");
        assert_eq!(t.driver.table().count(), 1);
    }

    #[test]
    fn the_ledger_refuses_what_the_pool_or_the_volume_limit_cannot_give() {
        let t = TestDriver::open(|c| c.max_volumes = 2);
        let err = create(&t.driver, new_volume("a", KindName::Directory, HUGE)).unwrap_err();
        let Error::Capacity(Shortage::NoRoom {
            needed, source_of, ..
        }) = &err
        else {
            panic!("{err}");
        };
        assert_eq!(*needed, HUGE);
        assert!(matches!(source_of, Source::Pool(..)), "{source_of:?}");
        assert!(
            t.driver.volume(&VolumeId::mint("a")).is_err(),
            "nothing left of a"
        );
        create(&t.driver, new_volume("b", KindName::Directory, 1 << 20)).unwrap();
        create(&t.driver, new_volume("c", KindName::Directory, 0)).unwrap();
        let err = create(&t.driver, new_volume("d", KindName::Directory, 0)).unwrap_err();
        assert!(
            matches!(err, Error::Capacity(Shortage::TooMany { max: 2, .. })),
            "{err}"
        );
    }

    #[test]
    fn a_volume_for_another_node_is_not_made_here() {
        let t = TestDriver::open(|_| {});
        let mut request = new_volume("a", KindName::Directory, 0);
        let elsewhere = Topology {
            segments: [(t.driver.topology_key(), "node-2".to_owned())].into(),
        };
        request.requirement = Some(TopologyRequirement {
            requisite: vec![elsewhere],
            preferred: Vec::new(),
        });
        let err = create(&t.driver, request).unwrap_err();
        assert!(matches!(err, Error::NotHere(_)), "{err}");
        assert_eq!(t.driver.table().count(), 0);
    }

    #[test]
    fn expansion_grows_durably_refuses_shrinking_and_beyond_the_pool_and_repeats_as_no_change() {
        let t = TestDriver::open(|_| {});
        let id = create(&t.driver, new_volume("a", KindName::Directory, 8 << 20))
            .unwrap()
            .id;
        let shrink = expand(&t.driver, &id, sized(4 << 20)).unwrap_err();
        assert!(
            matches!(shrink, Error::Capacity(Shortage::Shrink { .. })),
            "{shrink}"
        );
        let (record, _) = expand(&t.driver, &id, sized(16 << 20)).unwrap();
        assert_eq!(record.capacity_bytes, 16 << 20);
        assert_eq!(stored_capacity(&t, &id), (16 << 20, 16 << 20));
        // The same size again, or none: no change.
        expand(&t.driver, &id, sized(16 << 20)).unwrap();
        expand(&t.driver, &id, sized(0)).unwrap();
        assert_eq!(stored_capacity(&t, &id), (16 << 20, 16 << 20));
        let err = expand(&t.driver, &id, sized(HUGE)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Capacity(Shortage::NoRoomToGrow { more, .. }) if more == HUGE - (16 << 20)
            ),
            "{err}"
        );
        assert_eq!(stored_capacity(&t, &id), (16 << 20, 16 << 20), "unchanged");
        let unknown = expand(&t.driver, &VolumeId::mint("nope"), sized(1)).unwrap_err();
        assert!(matches!(unknown, Error::Unknown(_)), "{unknown}");
    }

    #[test]
    fn delete_removes_the_volume_and_its_record_and_repeats_as_ok() {
        let t = TestDriver::open(|_| {});
        let id = create(&t.driver, new_volume("a", KindName::Directory, 1 << 20))
            .unwrap()
            .id;
        let pool = t.driver.pool(None).unwrap();
        let disk = KindName::Directory.backing(&pool.name);
        assert_eq!(t.driver.table().promised(&disk), 1 << 20);
        let shown = pool.shown().to_string();
        assert_eq!(record::list(&pool.meta, &shown, "meta").unwrap().len(), 1);
        delete(&t.driver, &id).unwrap();
        assert!(t.driver.volume(&id).is_err());
        assert_eq!(record::list(&pool.meta, &shown, "meta").unwrap().len(), 0);
        assert_eq!(
            t.driver.table().promised(&disk),
            0,
            "its promise is released"
        );
        delete(&t.driver, &id).unwrap();
        delete(&t.driver, &VolumeId::mint("never-made")).unwrap();
    }
}
