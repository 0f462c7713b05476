//! `kind=directory`: each volume is a directory `volumes/<id>` in its pool.
//!
//! Created like hostPath `DirectoryOrCreate`: mode 0755, owned by root. 0755
//! keeps other users of the node out of the data while letting any pod read
//! it; pods that run as non-root get write access through their `fsGroup`
//! (CSIDriver `fsGroupPolicy: File` makes kubelet hand the group the tree).
//! The mode is set once, at creation, so kubelet's changes are never undone.

use std::os::fd::OwnedFd;

use nix::errno::Errno;

use super::{Access, Opened, VolumeKind, VolumeStats};
use crate::beneath;
use crate::error::{Result, SysContext};
use crate::ids::VolumeId;
use crate::mounts::{MountEntry, MountIndex};
use crate::pool::Pool;
use crate::record::VolumeRecord;

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

/// The message for a volume whose directory is gone.
pub(super) fn missing(pool: &Pool, id: &VolumeId) -> String {
    format!("volume {id}: {}/volumes/{id} is missing", pool.shown())
}

impl VolumeKind for Directory {
    fn create(&self, pool: &Pool, record: &VolumeRecord) -> Result<()> {
        let id = &record.id;
        beneath::ensure_dir(&pool.volumes, id.as_str(), DIRECTORY_MODE)
            .map(drop)
            .context(|| {
                format!(
                    "volume {id}: create directory {}/volumes/{id}",
                    pool.shown()
                )
            })
    }

    fn delete(&self, pool: &Pool, id: &VolumeId) -> Result<()> {
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

    /// A directory has no size of its own: the record's promise is all.
    fn expand(&self, _pool: &Pool, _record: &VolumeRecord) -> Result<bool> {
        Ok(false)
    }

    fn problem(&self, pool: &Pool, id: &VolumeId) -> Result<Option<String>> {
        Ok(open_dir(pool, id)?.is_none().then(|| missing(pool, id)))
    }

    /// Binds whose root lies in `…/volumes/<id>` on the volume's filesystem.
    fn users(&self, pool: &Pool, id: &VolumeId, mounts: &MountIndex) -> Result<Vec<MountEntry>> {
        let candidates = mounts.of_volume_dir(id.as_str());
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let Some(dir) = open_dir(pool, id)? else {
            return Ok(Vec::new());
        };
        let (dev, _) = beneath::identity(&dir)
            .context(|| format!("volume {id}: stat {}/volumes/{id}", pool.shown()))?;
        Ok(candidates
            .iter()
            .filter(|m| m.dev == dev)
            .cloned()
            .collect())
    }

    /// A walk of the tree (see [`beneath::usage`]); the capacity is the total
    /// (the pool's room when none was asked for).
    fn stats(
        &self,
        pool: &Pool,
        id: &VolumeId,
        source: &OwnedFd,
        capacity_bytes: u64,
    ) -> Result<VolumeStats> {
        let used = beneath::usage(source)
            .context(|| format!("volume {id}: measure {}/volumes/{id}", pool.shown()))?;
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
