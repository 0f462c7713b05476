//! Kinds whose volume is a filesystem of its own mounted on `volumes/<id>`
//! (a tmpfs, a loop-mounted image): finding that mount, and measuring it.

use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::mount::MntFlags;
use nix::sys::statvfs::fstatvfs;

use super::VolumeStats;
use crate::beneath;
use crate::error::{Result, SysContext};
use crate::ids::VolumeId;
use crate::mounts::{self, MountEntry, MountIndex};
use crate::pool::Pool;

/// The volume directory, and whether a filesystem is mounted on it.
pub enum MountPoint {
    Missing,
    Unmounted(OwnedFd),
    Mounted(OwnedFd),
    /// A filesystem is mounted there that fails every access (EIO: an XFS
    /// shut down, its device gone); the mount table gives its device.
    Failing(u64),
}

/// Looks at `volumes/<id>`: mounted when it is on another device than the
/// pool (the root of a mount there).
pub fn look(pool: &Pool, id: &VolumeId) -> Result<MountPoint> {
    let what = || format!("volume {id}: open {}/volumes/{id}", pool.shown());
    let failing = |errno: Errno| -> Result<MountPoint> {
        match mounts::top_mount_dev(&pool.entry_path(id.as_str()))? {
            Some(dev) if errno == Errno::EIO => Ok(MountPoint::Failing(dev)),
            _ => Err(errno).context(what),
        }
    };
    let dir = match beneath::open_mount_root(&pool.volumes, id.as_str()) {
        Ok(dir) => dir,
        Err(Errno::ENOENT) => return Ok(MountPoint::Missing),
        Err(errno) => return failing(errno),
    };
    let dir_dev = match beneath::identity(&dir) {
        Ok((dev, _)) => dev,
        Err(errno) => return failing(errno),
    };
    let (pool_dev, _) = beneath::identity(&pool.volumes).context(what)?;
    Ok(if dir_dev == pool_dev {
        MountPoint::Unmounted(dir)
    } else {
        MountPoint::Mounted(dir)
    })
}

/// Reopens `volumes/<id>` after something was mounted on it.
pub fn reopen(pool: &Pool, id: &VolumeId) -> Result<OwnedFd> {
    beneath::open_mount_root(&pool.volumes, id.as_str()).context(|| {
        format!(
            "volume {id}: open the new mount on {}/volumes/{id}",
            pool.shown()
        )
    })
}

/// Unmounts the volume's own filesystem, if mounted.
pub fn unmount(pool: &Pool, id: &VolumeId) -> Result<()> {
    // The fd `look` opens must be closed before unmounting (EBUSY).
    let mounted = matches!(
        look(pool, id)?,
        MountPoint::Mounted(_) | MountPoint::Failing(_)
    );
    if mounted {
        let path = pool.entry_path(id.as_str());
        mounts::unmount(&path, MntFlags::UMOUNT_NOFOLLOW)
            .context(|| format!("volume {id}: unmount {}", path.display()))?;
    }
    Ok(())
}

/// Every mount of the volume's own filesystem except the one on `volumes/<id>`.
pub fn users(pool: &Pool, id: &VolumeId, mounts: &MountIndex) -> Result<Vec<MountEntry>> {
    let dev = match look(pool, id)? {
        MountPoint::Mounted(fd) => {
            beneath::identity(&fd)
                .context(|| format!("volume {id}: stat its filesystem"))?
                .0
        }
        MountPoint::Failing(dev) => dev,
        MountPoint::Missing | MountPoint::Unmounted(_) => return Ok(Vec::new()),
    };
    let own = pool.entry_path(id.as_str());
    Ok(mounts
        .of_device(dev)
        .iter()
        .filter(|m| m.mount_point != own)
        .cloned()
        .collect())
}

/// Usage straight from the filesystem: O(1), whatever it holds.
pub fn stats(id: &VolumeId, root: &OwnedFd) -> Result<VolumeStats> {
    let st = fstatvfs(root).context(|| format!("volume {id}: statvfs of its filesystem"))?;
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
