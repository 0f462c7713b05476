//! Starting and stopping a node driver: check the kernel, open the pools,
//! load their records (or the snapshot the last stop wrote), find which
//! volumes are still mounted, set aside what belongs to no record; and at
//! the end, let running operations finish and write each pool's snapshot.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::beneath;
use crate::driver::{Driver, DriverConfig, Unreadable};
use crate::error::{Error, Result, SysContext};
use crate::mounter::{KernelMounter, Mounter};
use crate::mounts;
use crate::pool::Pool;
use crate::record::{self, Durable};
use crate::record_cache;
use crate::snapshots::{SnapshotRecord, SnapshotTable};
use crate::volumes::{Publication, VolumeTable};

/// Opens every pool, loads their records and finds which volumes are
/// still mounted (published mounts survive a restart untouched).
pub fn open(config: DriverConfig) -> Result<Driver> {
    open_with(config, Arc::new(KernelMounter))
}

/// [`open`] with the mounter publishing goes through.
pub fn open_with(config: DriverConfig, mounter: Arc<dyn Mounter>) -> Result<Driver> {
    check_kernel()?;
    if config.pools.is_empty() {
        return Err(Error::Invalid(
            "at least one --pool NAME=PATH is required".into(),
        ));
    }
    let mut pools: Vec<Pool> = Vec::new();
    for (name, path) in &config.pools {
        if pools.iter().any(|p| &p.name == name) {
            return Err(Error::Invalid(format!("pool {name} is given twice")));
        }
        pools.push(Pool::open(name.clone(), path, config.enable_quotas)?);
    }
    let mut table = VolumeTable::default();
    let mut unreadable = Unreadable::default();
    let mut snapshots = SnapshotTable::default();
    // Per pool, the ids its meta/ holds a record file of, readable or not.
    let mut recorded: Vec<HashSet<String>> = Vec::new();
    for pool in &pools {
        let shown = pool.shown().to_string();
        let listed = record::list(&pool.meta, &shown, "meta")?;
        recorded.push(
            listed
                .iter()
                .filter_map(|l| l.shown.strip_suffix(".json").map(str::to_owned))
                .collect(),
        );
        let (loaded, source) = match record_cache::take(&pool.root, &pool.meta, &shown, &listed) {
            Some(records) => (
                record::Loaded {
                    records,
                    unreadable: Vec::new(),
                },
                "record cache",
            ),
            None => (record::load(&pool.meta, &shown, &listed), "records"),
        };
        for bad in loaded.unreadable {
            tracing::error!(pool = %pool.name, problem = %bad.problem, "unreadable volume record left in place");
            *unreadable.per_pool.entry(pool.name.clone()).or_default() += 1;
            if let Some(id) = bad.id {
                unreadable.by_id.insert(id, bad.problem);
            }
        }
        let count = loaded.records.len();
        for mut rec in loaded.records {
            if rec.pool != pool.name {
                tracing::error!(volume = %rec.id, pool = %pool.name, "record names pool {}; skipped", rec.pool);
                continue;
            }
            rec.pool = pool.name.clone(); // one copy of the name for all
            table.insert(rec);
        }
        tracing::info!(pool = %pool.name, path = %pool.shown(), volumes = count, from = source, "pool open");
        load_snapshots(pool, &mut snapshots)?;
    }
    let driver = Driver::new(config, pools, table, snapshots, unreadable, mounter);
    find_published(&driver)?;
    quarantine_orphans(&driver, &recorded)?;
    Ok(driver)
}

/// Enters the snapshots whose records `pool` holds; those not ready are
/// made again once the driver runs ([`take::start_when_free`]). Unreadable
/// records are reported and left in place.
///
/// [`take::start_when_free`]: crate::snapshots::take::start_when_free
fn load_snapshots(pool: &Pool, snapshots: &mut SnapshotTable) -> Result<()> {
    let shown = pool.shown().to_string();
    let listed = record::list(&pool.snapshot_meta, &shown, SnapshotRecord::DIR)?;
    let loaded = record::load::<SnapshotRecord>(&pool.snapshot_meta, &shown, &listed);
    for bad in loaded.unreadable {
        tracing::error!(pool = %pool.name, problem = %bad.problem, "unreadable snapshot record left in place");
    }
    for record in loaded.records {
        if record.pool != pool.name {
            tracing::error!(snapshot = %record.id, pool = %pool.name, "record names pool {}; skipped", record.pool);
            continue;
        }
        snapshots.insert(record);
    }
    Ok(())
}

/// Sets aside every entry of a pool's `volumes/` that belongs to no
/// record (left by an operator, another tool, or a crash on a filesystem
/// that reordered writes): reported, never served, never deleted. One
/// that cannot be moved (a mount point) is reported and left.
/// `recorded` holds, per pool, the ids of the record files in its
/// `meta/`: whatever a record says, its volume's entries are not orphans.
fn quarantine_orphans(driver: &Driver, recorded: &[HashSet<String>]) -> Result<()> {
    for (pool, recorded) in driver.pools().iter().zip(recorded) {
        let listed = beneath::list(&pool.volumes)
            .context(|| format!("pool {}: list {}/volumes", pool.name, pool.shown()))?;
        for entry in listed {
            let name = entry.name.to_string_lossy().into_owned();
            let owner = name.trim_start_matches('.');
            let owner = owner.split('.').next().unwrap_or_default();
            if recorded.contains(owner) {
                continue;
            }
            match pool.quarantine(&name) {
                Ok(kept) => {
                    tracing::error!(pool = %pool.name, quarantined = %kept.display(), "{}/volumes/{name} belongs to no volume record: set aside", pool.shown())
                }
                Err(err) => {
                    tracing::error!(pool = %pool.name, "{}/volumes/{name} belongs to no volume record and stays: {err}", pool.shown())
                }
            }
        }
    }
    Ok(())
}

/// Marks as published every volume that the mount table shows in use
/// (see [`VolumeKind::users`](crate::kind::VolumeKind::users)), so
/// mounts made before a restart are known and left alone.
fn find_published(driver: &Driver) -> Result<()> {
    let index = mounts::MountIndex::read()?;
    let mut table = driver.table();
    for volume in table.iter_mut() {
        let record = &volume.record;
        let pool = driver.pool(Some(&record.pool))?;
        for entry in record.kind.backend().users(pool, &record.id, &index)? {
            tracing::info!(volume = %record.id, target = %entry.mount_point.display(), "found published");
            volume
                .published
                .insert(entry.mount_point, Publication::default());
        }
    }
    Ok(())
}

/// Ends the driver's work: refuses new operations, waits up to `patience`
/// for those in flight, then writes each pool's snapshot so that the next
/// start is quick. With an operation still running, no snapshot is
/// written (the next start reads every record).
pub fn stop(driver: &Driver, patience: Duration) {
    if !driver.guards.close(patience) {
        tracing::warn!("operations still running after {patience:?}: no record cache written");
        return;
    }
    for pool in driver.pools() {
        let records: Vec<_> = driver.table().records_in(&pool.name).collect();
        let count = records.len();
        let shown = pool.shown().to_string();
        match record_cache::write(&pool.root, &pool.meta, &shown, records) {
            Ok(true) => tracing::info!(pool = %pool.name, volumes = count, "record cache written"),
            Ok(false) => {}
            Err(err) => tracing::error!(pool = %pool.name, "no record cache written: {err}"),
        }
    }
}

/// Refuses to run on a kernel that cannot say whether a path is a mount
/// root (STATX_ATTR_MOUNT_ROOT, Linux 5.8) or lacks the new mount API's
/// mount_setattr (Linux 5.12): publish and unpublish rely on both.
fn check_kernel() -> Result<()> {
    let root = mounts::path_state(std::path::Path::new("/"))
        .map_err(|errno| Error::sys("statx /", errno))?;
    if !root.is_some_and(|r| r.mount_root) {
        return Err(Error::WrongState(
            "this kernel does not report mount roots through statx (STATX_ATTR_MOUNT_ROOT, Linux 5.8 or later is needed)".into(),
        ));
    }
    if !mounts::mount_api_available() {
        return Err(Error::WrongState(
            "this kernel lacks mount_setattr (Linux 5.12 or later is needed: volumes are published with open_tree, mount_setattr and move_mount)".into(),
        ));
    }
    Ok(())
}
