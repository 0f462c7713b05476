//! `kind=directory`: each volume is a directory `volumes/<id>` in its pool.
//!
//! Created like hostPath `DirectoryOrCreate`: mode 0755, owned by root. 0755
//! keeps other users of the node out of the data while letting any pod read
//! it; pods that run as non-root get write access through their `fsGroup`
//! (CSIDriver `fsGroupPolicy: File` makes kubelet hand the group the tree).
//! The mode is set once, at creation, so kubelet's changes are never undone.

use std::os::fd::OwnedFd;

use nix::errno::Errno;

use super::VolumeKind;
use crate::beneath::{self, Usage};
use crate::error::{Result, SysContext};
use crate::ids::VolumeId;
use crate::pool::Pool;

/// The mode of a new volume directory (hostPath's DirectoryOrCreate mode).
const DIRECTORY_MODE: u32 = 0o755;

pub struct Directory;

impl VolumeKind for Directory {
    fn create(&self, pool: &Pool, id: &VolumeId, _capacity_bytes: u64) -> Result<()> {
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

    fn open_source(&self, pool: &Pool, id: &VolumeId) -> Result<Option<OwnedFd>> {
        match beneath::open_dir(&pool.volumes, id.as_str()) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::ENOENT) => Ok(None),
            Err(errno) => {
                Err(errno).context(|| format!("volume {id}: open {}/volumes/{id}", pool.shown()))
            }
        }
    }

    fn usage(&self, pool: &Pool, id: &VolumeId, source: &OwnedFd) -> Result<Usage> {
        beneath::usage(source)
            .context(|| format!("volume {id}: measure {}/volumes/{id}", pool.shown()))
    }
}
