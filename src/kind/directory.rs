//! `kind=directory`: each volume is a directory `volumes/<id>` in its pool.
//!
//! Created like hostPath `DirectoryOrCreate`: mode 0755, owned by root. 0755
//! keeps other users of the node out of the data while letting any pod read
//! it; pods that run as non-root get write access through their `fsGroup`
//! (CSIDriver `fsGroupPolicy: File` makes kubelet hand the group the tree).
//! The mode is set once, at creation, so kubelet's changes are never undone.

use std::os::fd::OwnedFd;
use std::sync::Mutex;

use nix::errno::Errno;
use nix::sys::stat::{Mode, fchmod};
use nix::unistd::fsync;

use super::{Access, Opened, Seed, VolumeKind, VolumeStats, fill_tree, missing};
use crate::beneath::SyncDir;
use crate::error::{Error, Result, SysContext, Within};
use crate::health::{Finding, Reason};
use crate::ids::VolumeId;
use crate::mounts::{self, MountEntry, MountIndex};
use crate::pool::Enforcement;
use crate::pool::Pool;
use crate::record::VolumeRecord;
use crate::{beneath, btrfs, project_quota};

/// The mode of a new volume directory (hostPath's DirectoryOrCreate mode).
const DIRECTORY_MODE: u32 = 0o755;

pub struct Directory;

/// Opens `volumes/<id>`; `None` when it is missing.
pub(super) fn open_dir(pool: &Pool, id: &VolumeId) -> Result<Option<OwnedFd>> {
    match beneath::open_dir(&pool.volumes, id.as_str()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        Err(errno) => {
            Err(errno).context(|| format!("volume {id}: open {}/volumes/{id}", pool.shown()))
        }
    }
}

/// Holds an enforced volume's directory to the record's capacity: its
/// subvolume's qgroup limit on btrfs, its project's block limit on XFS/ext4
/// (no limit for a volume that asked for no size).
fn limit(pool: &Pool, record: &VolumeRecord, dir: &OwnedFd) -> Result<()> {
    let id = &record.id;
    let bytes = record.capacity_bytes;
    match &pool.enforcement {
        Enforcement::BtrfsQgroups { .. } => {
            let subvolume = btrfs::subvolume_id(dir)?.ok_or_else(|| {
                Error::WrongState(format!(
                    "volume {id}: {}/volumes/{id} exists but is not a btrfs subvolume",
                    pool.shown()
                ))
            })?;
            if bytes > 0 {
                btrfs::set_limit(dir, subvolume, bytes).within(|| format!("volume {id}"))?;
            }
            Ok(())
        }
        Enforcement::ProjectQuotas => {
            let project = project_of(pool, id, dir)?.ok_or_else(|| {
                Error::WrongState(format!(
                    "volume {id}: {}/volumes/{id} exists but carries no project id",
                    pool.shown()
                ))
            })?;
            project_quota::set_limit(dir, project, bytes).context(|| {
                format!(
                    "volume {id}: limit project {project} of {}/volumes/{id} to {bytes} bytes",
                    pool.shown()
                )
            })
        }
        Enforcement::Unavailable(why) => Err(cannot_enforce(pool, id, why)),
    }
}

/// The error for an enforced volume in a pool that can no longer enforce
/// (its quotas were turned off since the volume was made).
fn cannot_enforce(pool: &Pool, id: &VolumeId, why: &str) -> Error {
    Error::WrongState(format!(
        "volume {id}: its capacity is to be enforced, but pool {} ({}) cannot: {why}",
        pool.name,
        pool.shown()
    ))
}

/// The project id the volume directory `dir` hands down, if any.
fn project_of(pool: &Pool, id: &VolumeId, dir: &OwnedFd) -> Result<Option<u32>> {
    project_quota::project_of(dir).context(|| {
        format!(
            "volume {id}: read the project id of {}/volumes/{id}",
            pool.shown()
        )
    })
}

/// Held while a project id is chosen and assigned, so that two new volumes,
/// even in two pools on one filesystem, never get the same one.
static CHOOSING_PROJECT: Mutex<()> = Mutex::new(());

/// Gives a new volume directory a project id of its own, limited to the
/// volume's capacity, durably (unless an earlier, interrupted call did).
/// The limit is set before the id is given: it marks the id as taken, and a
/// crash in between costs one id, never an unlimited volume.
fn assign_project(pool: &Pool, record: &VolumeRecord, dir: &OwnedFd) -> Result<()> {
    let id = &record.id;
    if project_of(pool, id, dir)?.is_some() {
        return limit(pool, record, dir);
    }
    let what = || {
        format!(
            "volume {id}: give {}/volumes/{id} a project id",
            pool.shown()
        )
    };
    // Each volume starts its search at an id of its own, so that choices
    // rarely meet.
    let key = id.as_str().bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let _choosing = CHOOSING_PROJECT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let project = project_quota::choose(dir, key).context(what)?;
    project_quota::set_limit(dir, project, record.capacity_bytes)
        .and_then(|()| project_quota::assign(dir, project))
        .and_then(|()| fsync(dir))
        .context(what)
}

/// Bytes charged to an enforced volume by its limit, in O(1); `None` when
/// the volume has no limit to ask.
fn limited_usage(pool: &Pool, record: &VolumeRecord, dir: &OwnedFd) -> Result<Option<u64>> {
    if !record.enforced {
        return Ok(None);
    }
    let id = &record.id;
    match &pool.enforcement {
        Enforcement::BtrfsQgroups { fsid } => match btrfs::subvolume_id(dir)? {
            Some(subvolume) => btrfs::referenced(fsid, subvolume).map(Some),
            None => Ok(None),
        },
        Enforcement::ProjectQuotas => match project_of(pool, id, dir)? {
            Some(project) => project_quota::used_bytes(dir, project)
                .context(|| {
                    format!(
                        "volume {id}: read the quota of project {project} of {}/volumes/{id}",
                        pool.shown()
                    )
                })
                .map(Some),
            None => Ok(None),
        },
        Enforcement::Unavailable(_) => Ok(None),
    }
}

/// Why an enforced volume's limit does not hold it now, if it does not
/// (quotas turned off, its qgroup or project limit gone).
fn enforcement_lapse(pool: &Pool, record: &VolumeRecord, dir: &OwnedFd) -> Result<Option<String>> {
    if !record.enforced {
        return Ok(None);
    }
    let id = &record.id;
    let bytes = record.capacity_bytes;
    Ok(match &pool.enforcement {
        Enforcement::BtrfsQgroups { fsid } => {
            if !btrfs::quotas_enabled(fsid) {
                Some(format!("btrfs quotas are off on pool {}", pool.name))
            } else if let Some(subvolume) = btrfs::subvolume_id(dir)? {
                (bytes > 0 && btrfs::limit_of(fsid, subvolume).is_none())
                    .then(|| format!("qgroup 0/{subvolume} has no limit"))
            } else {
                Some(format!(
                    "{}/volumes/{id} is not a btrfs subvolume",
                    pool.shown()
                ))
            }
        }
        Enforcement::ProjectQuotas => match project_quota::enforcing(&pool.root) {
            Err(why) => Some(why),
            Ok(()) => match project_of(pool, id, dir)? {
                None => Some(format!(
                    "{}/volumes/{id} carries no project id",
                    pool.shown()
                )),
                Some(project) => {
                    let limit = project_quota::limit_bytes(dir, project)
                        .context(|| format!("volume {id}: read the limit of project {project}"))?;
                    (bytes > 0 && limit == 0).then(|| format!("project {project} has no limit"))
                }
            },
        },
        Enforcement::Unavailable(why) => Some(why.clone()),
    })
}

impl VolumeKind for Directory {
    /// A plain directory, or on a pool that enforces capacity a btrfs
    /// subvolume whose qgroup is limited to the capacity.
    fn create(&self, pool: &Pool, record: &VolumeRecord) -> Result<()> {
        let id = &record.id;
        let what = || format!("volume {id}: create {}/volumes/{id}", pool.shown());
        if !record.enforced {
            return beneath::ensure_dir(&pool.volumes, id.as_str(), DIRECTORY_MODE)
                .map(drop)
                .context(what);
        }
        match &pool.enforcement {
            Enforcement::BtrfsQgroups { .. } => {}
            Enforcement::ProjectQuotas => {
                let (dir, _) = beneath::ensure_dir(&pool.volumes, id.as_str(), DIRECTORY_MODE)
                    .context(what)?;
                return assign_project(pool, record, &dir);
            }
            Enforcement::Unavailable(why) => return Err(cannot_enforce(pool, id, why)),
        }
        let created = match btrfs::create_subvolume(&pool.volumes, id.as_str()) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false, // made by an earlier, interrupted call
            Err(errno) => return Err(errno).context(what),
        };
        let dir = beneath::open_dir(&pool.volumes, id.as_str()).context(what)?;
        if created {
            fchmod(&dir, Mode::from_bits_truncate(DIRECTORY_MODE)).context(what)?;
            pool.volumes.sync().context(what)?;
        }
        limit(pool, record, &dir)
    }

    /// The directory, noting whether it is a subvolume (then snapshotted
    /// whole).
    fn seed(&self, pool: &Pool, record: &VolumeRecord) -> Result<Seed> {
        let id = &record.id;
        let dir = open_dir(pool, id)?.ok_or_else(|| Error::WrongState(missing(pool, id)))?;
        let subvolume = btrfs::subvolume_id(&dir)?.is_some();
        Ok(Seed::Tree { dir, subvolume })
    }

    /// A writable snapshot of a subvolume on the same btrfs (O(1)), its
    /// limit set as at create; else a new volume with the tree copied in.
    fn create_from(&self, pool: &Pool, record: &VolumeRecord, seed: &Seed) -> Result<()> {
        let id = &record.id;
        if let Seed::Tree {
            dir: from,
            subvolume: true,
        } = seed
        {
            match btrfs::snapshot(from, &pool.volumes, id.as_str(), false) {
                Ok(()) => {
                    let what =
                        || format!("volume {id}: snapshot into {}/volumes/{id}", pool.shown());
                    pool.volumes.sync().context(what)?;
                    let dir = beneath::open_dir(&pool.volumes, id.as_str()).context(what)?;
                    return if record.enforced {
                        limit(pool, record, &dir)
                    } else {
                        Ok(())
                    };
                }
                // Another filesystem: copied below.
                Err(Errno::EXDEV) => {}
                Err(errno) => {
                    return Err(errno).context(|| {
                        format!("volume {id}: snapshot into {}/volumes/{id}", pool.shown())
                    });
                }
            }
        }
        self.create(pool, record)?;
        let dir = open_dir(pool, id)?.ok_or_else(|| Error::WrongState(missing(pool, id)))?;
        fill_tree(pool, id, seed, &dir)
    }

    /// Moves the directory to the trash. A project's limit is lifted first,
    /// so that its id is free again once the trash has drained (a retry that
    /// finds the directory gone could no longer find the id).
    fn delete(&self, pool: &Pool, id: &VolumeId) -> Result<()> {
        pool.usage.forget(id);
        if let (Enforcement::ProjectQuotas, Some(dir)) = (&pool.enforcement, open_dir(pool, id)?)
            && let Some(project) = project_of(pool, id, &dir)?
        {
            project_quota::set_limit(&dir, project, 0).context(|| {
                format!(
                    "volume {id}: lift the limit of project {project} of {}/volumes/{id}",
                    pool.shown()
                )
            })?;
        }
        pool.trash_volume(id.as_str())
    }

    /// An enforced volume whose limit lapsed (quotas turned off and on
    /// again) gets it back here; if that fails it is still served.
    fn open_source(
        &self,
        pool: &Pool,
        record: &VolumeRecord,
        _access: Access,
    ) -> Result<Option<Opened>> {
        let Some(fd) = open_dir(pool, &record.id)? else {
            return Ok(None);
        };
        if record.enforced
            && enforcement_lapse(pool, record, &fd)?.is_some()
            && let Err(err) = limit(pool, record, &fd)
        {
            tracing::warn!(volume = %record.id, %err, "could not restore the volume's capacity limit");
        }
        Ok(Some(Opened {
            fd,
            recreated: false,
        }))
    }

    fn open_existing(
        &self,
        pool: &Pool,
        record: &VolumeRecord,
        _access: Access,
    ) -> Result<Option<OwnedFd>> {
        open_dir(pool, &record.id)
    }

    /// Raises the qgroup limit of an enforced volume; otherwise the
    /// record's promise is all there is to grow.
    fn expand(&self, pool: &Pool, record: &VolumeRecord) -> Result<bool> {
        if record.enforced
            && let Some(dir) = open_dir(pool, &record.id)?
        {
            limit(pool, record, &dir)?;
        }
        Ok(false)
    }

    /// An enforced volume's qgroup or project; a plain directory would need
    /// a walk.
    fn used_cheaply(&self, pool: &Pool, record: &VolumeRecord) -> Result<Option<u64>> {
        if !record.enforced {
            return Ok(None);
        }
        match open_dir(pool, &record.id)? {
            Some(dir) => limited_usage(pool, record, &dir),
            None => Ok(None),
        }
    }

    fn health(&self, pool: &Pool, record: &VolumeRecord, _published: bool) -> Result<Vec<Finding>> {
        let id = &record.id;
        let dir = match beneath::open_dir(&pool.volumes, id.as_str()) {
            Ok(dir) => dir,
            Err(Errno::ENOENT) => {
                return Ok(vec![Finding::new(
                    Reason::BackingMissing,
                    missing(pool, id),
                )]);
            }
            Err(Errno::ENOTDIR | Errno::ELOOP) => {
                return Ok(vec![Finding::new(
                    Reason::BackingReplaced,
                    format!(
                        "volume {id}: {}/volumes/{id} is no longer a directory",
                        pool.shown()
                    ),
                )]);
            }
            Err(errno) => {
                return Err(errno)
                    .context(|| format!("volume {id}: open {}/volumes/{id}", pool.shown()));
            }
        };
        Ok(enforcement_lapse(pool, record, &dir)?
            .map(|why| {
                Finding::new(
                    Reason::QuotaNotEnforced,
                    format!(
                        "volume {id}: created with its capacity of {} bytes enforced, but nothing holds it to that now: {why}",
                        record.capacity_bytes
                    ),
                )
            })
            .into_iter()
            .collect())
    }

    /// Binds whose root lies in `…/volumes/<id>` on the volume's filesystem.
    fn users(&self, pool: &Pool, id: &VolumeId, mounts: &MountIndex) -> Result<Vec<MountEntry>> {
        let in_fs = pool.entry_root(id.as_str());
        let candidates = mounts.of_volume_dir(&in_fs);
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let Some(dir) = open_dir(pool, id)? else {
            return Ok(Vec::new());
        };
        let (dev, _) = beneath::identity(&dir)
            .context(|| format!("volume {id}: stat {}/volumes/{id}", pool.shown()))?;
        // The device a mount point shows is compared, not mountinfo's: on
        // btrfs every subvolume has a device number of its own.
        Ok(candidates
            .iter()
            .filter(|m| {
                mounts::path_state(&m.mount_point)
                    .ok()
                    .flatten()
                    .is_some_and(|state| state.dev == dev)
            })
            .cloned()
            .collect())
    }

    /// An enforced volume answers from its qgroup (as of the last btrfs
    /// transaction commit) or its project quota, in O(1); a plain one from a
    /// bounded, cached walk (see [`crate::usage_cache`]).
    fn stats(&self, pool: &Pool, record: &VolumeRecord, source: &OwnedFd) -> Result<VolumeStats> {
        let id = &record.id;
        let capacity_bytes = record.capacity_bytes;
        if let Some(used) = limited_usage(pool, record, source)? {
            let free = pool.space()?.free_bytes;
            let total = if capacity_bytes == 0 {
                used + free
            } else {
                capacity_bytes
            };
            return Ok(VolumeStats {
                bytes_total: total,
                bytes_used: used,
                bytes_available: total.saturating_sub(used).min(free),
                ..VolumeStats::default()
            });
        }
        let used = pool.usage.usage(id, source)?;
        let space = pool.space()?;
        let (bytes_total, bytes_available) = match capacity_bytes {
            0 => (used.bytes + space.free_bytes, space.free_bytes),
            capacity => (
                capacity,
                capacity.saturating_sub(used.bytes).min(space.free_bytes),
            ),
        };
        Ok(VolumeStats {
            bytes_total,
            bytes_used: used.bytes,
            bytes_available,
            inodes_total: used.inodes + space.free_inodes,
            inodes_used: used.inodes,
            inodes_available: space.free_inodes,
        })
    }
}
