//! `kind=directory`: each volume is a directory `volumes/<id>` in its pool.
//!
//! Created like hostPath `DirectoryOrCreate`: mode 0755, owned by root. 0755
//! keeps other users of the node out of the data while letting any pod read
//! it; pods that run as non-root get write access through their `fsGroup`
//! (CSIDriver `fsGroupPolicy: File` makes kubelet hand the group the tree).
//! The mode is set once, at creation, so kubelet's changes are never undone.

use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::sys::stat::{Mode, fchmod};
use nix::unistd::fsync;

use super::{Access, Opened, VolumeKind, VolumeStats, missing};
use crate::error::{Error, Result, SysContext};
use crate::ids::VolumeId;
use crate::mounts::{self, MountEntry, MountIndex};
use crate::pool::Enforcement;
use crate::pool::Pool;
use crate::record::VolumeRecord;
use crate::{beneath, btrfs};

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

/// Sets the qgroup limit of an enforced volume's subvolume to its capacity
/// (no limit for a volume that asked for no size).
fn limit(pool: &Pool, record: &VolumeRecord, dir: &OwnedFd) -> Result<()> {
    let id = &record.id;
    let subvolume = btrfs::subvolume_id(dir)?.ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "volume {id}: {}/volumes/{id} exists but is not a btrfs subvolume",
            pool.shown()
        ))
    })?;
    if record.capacity_bytes > 0 {
        btrfs::set_limit(dir, subvolume, record.capacity_bytes)
            .map_err(|e| Error::Internal(format!("volume {id}: {e}")))?;
    }
    Ok(())
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
        let created = match btrfs::create_subvolume(&pool.volumes, id.as_str()) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false, // made by an earlier, interrupted call
            Err(errno) => return Err(errno).context(what),
        };
        let dir = beneath::open_dir(&pool.volumes, id.as_str()).context(what)?;
        if created {
            fchmod(&dir, Mode::from_bits_truncate(DIRECTORY_MODE)).context(what)?;
            fsync(&pool.volumes).context(what)?;
        }
        limit(pool, record, &dir)
    }

    fn delete(&self, pool: &Pool, id: &VolumeId) -> Result<()> {
        pool.usage.forget(id);
        pool.trash_volume(id.as_str())
    }

    fn open_source(
        &self,
        pool: &Pool,
        record: &VolumeRecord,
        _access: Access,
    ) -> Result<Option<Opened>> {
        Ok(open_dir(pool, &record.id)?.map(|fd| Opened {
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

    /// An enforced volume's qgroup; a plain directory would need a walk.
    fn used_cheaply(&self, pool: &Pool, record: &VolumeRecord) -> Result<Option<u64>> {
        let Enforcement::BtrfsQgroups { fsid } = &pool.enforcement else {
            return Ok(None);
        };
        if !record.enforced {
            return Ok(None);
        }
        let Some(dir) = open_dir(pool, &record.id)? else {
            return Ok(None);
        };
        match btrfs::subvolume_id(&dir)? {
            Some(subvolume) => btrfs::referenced(fsid, subvolume).map(Some),
            None => Ok(None),
        }
    }

    fn problem(&self, pool: &Pool, id: &VolumeId) -> Result<Option<String>> {
        Ok(open_dir(pool, id)?.is_none().then(|| missing(pool, id)))
    }

    /// Binds whose root lies in `…/volumes/<id>` on the volume's filesystem.
    fn users(&self, pool: &Pool, id: &VolumeId, mounts: &MountIndex) -> Result<Vec<MountEntry>> {
        let in_fs = pool.fs_root.join("volumes").join(id.as_str());
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

    /// An enforced volume answers from its qgroup in O(1) (as of the last
    /// transaction commit); a plain one from a bounded, cached walk (see
    /// [`crate::usage_cache`]).
    fn stats(&self, pool: &Pool, record: &VolumeRecord, source: &OwnedFd) -> Result<VolumeStats> {
        let id = &record.id;
        let capacity_bytes = record.capacity_bytes;
        if record.enforced
            && let Enforcement::BtrfsQgroups { fsid } = &pool.enforcement
        {
            let what = || format!("volume {id}: find its subvolume");
            let subvolume = btrfs::subvolume_id(source)?.ok_or_else(|| Error::Internal(what()))?;
            let used = btrfs::referenced(fsid, subvolume)?;
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
