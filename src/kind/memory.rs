//! `kind=memory`: each volume is a tmpfs mounted on `volumes/<id>`, like
//! emptyDir `medium: Memory` but with a hard size.
//!
//! The tmpfs has `size=` the volume's capacity, `nr_inodes=` one per 4 KiB
//! of it (at least 1024), and nosuid,nodev. Its contents die with the node:
//! after a reboot the directory beneath is empty disk, which is never served;
//! the next publish mounts a new, empty tmpfs and the volume reports that.

use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::statfs::{TMPFS_MAGIC, fstatfs};
use nix::sys::statvfs::fstatvfs;

use super::directory::missing;
use super::{Opened, VolumeKind, VolumeStats};
use crate::beneath::{self, fd_path};
use crate::error::{Result, SysContext};
use crate::ids::VolumeId;
use crate::mounts::{MountEntry, MountIndex};
use crate::pool::Pool;

/// Size of a memory volume whose request names no capacity: 64 MiB.
pub const DEFAULT_SIZE: u64 = 64 << 20;
/// Bytes of capacity per inode the tmpfs allows.
const BYTES_PER_INODE: u64 = 4096;

pub struct Memory;

/// The volume directory, and whether a tmpfs is mounted on it.
enum State {
    Missing,
    Unmounted(OwnedFd),
    Mounted(OwnedFd),
}

fn state(pool: &Pool, id: &VolumeId) -> Result<State> {
    let dir = match beneath::open_mount_root(&pool.volumes, id.as_str()) {
        Ok(dir) => dir,
        Err(Errno::ENOENT) => return Ok(State::Missing),
        Err(errno) => {
            return Err(errno)
                .context(|| format!("volume {id}: open {}/volumes/{id}", pool.shown()));
        }
    };
    let what = || format!("volume {id}: stat {}/volumes/{id}", pool.shown());
    let (dir_dev, _) = beneath::identity(&dir).context(what)?;
    let (pool_dev, _) = beneath::identity(&pool.volumes).context(what)?;
    let is_tmpfs = fstatfs(&dir).context(what)?.filesystem_type() == TMPFS_MAGIC;
    Ok(if dir_dev != pool_dev && is_tmpfs {
        State::Mounted(dir)
    } else {
        State::Unmounted(dir)
    })
}

fn mount_tmpfs(pool: &Pool, id: &VolumeId, dir: &OwnedFd, capacity_bytes: u64) -> Result<OwnedFd> {
    let inodes = (capacity_bytes / BYTES_PER_INODE).max(1024);
    let options = format!("size={capacity_bytes},nr_inodes={inodes},mode=0755");
    mount(
        Some("tmpfs"),
        fd_path(dir).as_str(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .context(|| {
        format!(
            "volume {id}: mount tmpfs ({options}) on {}/volumes/{id}",
            pool.shown()
        )
    })?;
    beneath::open_mount_root(&pool.volumes, id.as_str()).context(|| {
        format!(
            "volume {id}: open the new tmpfs on {}/volumes/{id}",
            pool.shown()
        )
    })
}

impl VolumeKind for Memory {
    fn create(&self, pool: &Pool, id: &VolumeId, capacity_bytes: u64) -> Result<()> {
        let dir = match state(pool, id)? {
            State::Mounted(_) => return Ok(()),
            State::Unmounted(dir) => dir,
            State::Missing => beneath::ensure_dir(&pool.volumes, id.as_str(), 0o755)
                .map(|(dir, _)| dir)
                .context(|| format!("volume {id}: create {}/volumes/{id}", pool.shown()))?,
        };
        mount_tmpfs(pool, id, &dir, capacity_bytes).map(drop)
    }

    fn delete(&self, pool: &Pool, id: &VolumeId) -> Result<()> {
        // The fd state() opens must be closed before unmounting (EBUSY).
        let mounted = matches!(state(pool, id)?, State::Mounted(_));
        if mounted {
            let path = pool.path.join("volumes").join(id.as_str());
            umount2(&path, MntFlags::UMOUNT_NOFOLLOW)
                .context(|| format!("volume {id}: unmount tmpfs {}", path.display()))?;
        }
        pool.trash_volume(id.as_str())
    }

    fn open_source(
        &self,
        pool: &Pool,
        id: &VolumeId,
        capacity_bytes: u64,
    ) -> Result<Option<Opened>> {
        Ok(match state(pool, id)? {
            State::Missing => None,
            State::Mounted(fd) => Some(Opened {
                fd,
                recreated: false,
            }),
            State::Unmounted(dir) => {
                tracing::warn!(volume = %id, "tmpfs contents were lost; mounting an empty one");
                let fd = mount_tmpfs(pool, id, &dir, capacity_bytes)?;
                Some(Opened {
                    fd,
                    recreated: true,
                })
            }
        })
    }

    fn problem(&self, pool: &Pool, id: &VolumeId) -> Result<Option<String>> {
        Ok(match state(pool, id)? {
            State::Missing => Some(missing(pool, id)),
            State::Mounted(_) => None,
            State::Unmounted(_) => Some(format!(
                "volume {id}: its tmpfs on {}/volumes/{id} is gone and its contents with it (node reboot?); the next publish mounts an empty one",
                pool.shown()
            )),
        })
    }

    /// Every mount of the volume's tmpfs other than the one on `volumes/<id>`.
    fn users(&self, pool: &Pool, id: &VolumeId, mounts: &MountIndex) -> Result<Vec<MountEntry>> {
        let State::Mounted(fd) = state(pool, id)? else {
            return Ok(Vec::new());
        };
        let (dev, _) = beneath::identity(&fd).context(|| format!("volume {id}: stat its tmpfs"))?;
        let own = pool.path.join("volumes").join(id.as_str());
        Ok(mounts
            .of_device(dev)
            .iter()
            .filter(|m| m.mount_point != own)
            .cloned()
            .collect())
    }

    /// Straight from the tmpfs: O(1), whatever it holds.
    fn stats(
        &self,
        _pool: &Pool,
        id: &VolumeId,
        source: &OwnedFd,
        _capacity_bytes: u64,
    ) -> Result<VolumeStats> {
        let st = fstatvfs(source).context(|| format!("volume {id}: statvfs of its tmpfs"))?;
        let frsize = st.fragment_size();
        let bytes_total = st.blocks() * frsize;
        Ok(VolumeStats {
            bytes_total,
            bytes_used: bytes_total - st.blocks_free() * frsize,
            bytes_available: st.blocks_available() * frsize,
            inodes_total: st.files(),
            inodes_used: st.files() - st.files_free(),
            inodes_available: st.files_available(),
        })
    }
}
