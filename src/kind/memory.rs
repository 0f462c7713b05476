//! `kind=memory`: each volume is a tmpfs mounted on `volumes/<id>`, like
//! emptyDir `medium: Memory` but with a hard size.
//!
//! The tmpfs has `size=` the volume's capacity, `nr_inodes=` one per 4 KiB
//! of it (at least 1024), and nosuid,nodev. Its contents die with the node:
//! after a reboot the directory beneath is empty disk, which is never served;
//! the next publish mounts a new, empty tmpfs and the volume reports that.
//!
//! Until its first publish a volume has a marker `volumes/.<id>.unused`: a
//! volume found without its tmpfs while the marker is there never held data
//! (a crash between the directory and the mount, or a reboot before any pod
//! used it), so it is mounted again and nothing is reported lost.

use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::mount::{MsFlags, mount};
use nix::sys::stat::fstatat;

use super::own_mount::{self, MountPoint};
use super::{Access, Opened, Seed, VolumeKind, VolumeStats, failing, fill_tree, missing};
use crate::beneath;
use crate::error::{Error, Result, SysContext};
use crate::failpoint;
use crate::health::{Finding, Reason};
use crate::ids::VolumeId;
use crate::mounts::{self, MountEntry, MountIndex, fd_path};
use crate::pool::Pool;
use crate::record::VolumeRecord;

/// Size of a memory volume whose request names no capacity: 64 MiB.
pub const DEFAULT_SIZE: u64 = 64 << 20;
/// The smallest memory volume: one page.
pub const MINIMUM_SIZE: u64 = 4096;
/// Bytes of capacity per inode the tmpfs allows.
const BYTES_PER_INODE: u64 = 4096;

pub struct Memory;

/// The tmpfs options for a volume of `capacity_bytes`.
fn tmpfs_options(capacity_bytes: u64) -> [(&'static str, String); 3] {
    let inodes = (capacity_bytes / BYTES_PER_INODE).max(1024);
    [
        ("size", capacity_bytes.to_string()),
        ("nr_inodes", inodes.to_string()),
        ("mode", "0755".to_owned()),
    ]
}

/// The options as mount(8) would show them, for messages and remounts.
fn shown(options: &[(&str, String)]) -> String {
    let pairs: Vec<String> = options.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(",")
}

/// Mounts the volume's tmpfs on its directory `dir` (new mount API, through
/// the fd: see [`mounts::mount_tmpfs`]) and opens the new mount's root.
fn mount_tmpfs(pool: &Pool, id: &VolumeId, dir: &OwnedFd, capacity_bytes: u64) -> Result<OwnedFd> {
    let options = tmpfs_options(capacity_bytes);
    mounts::mount_tmpfs(dir, &options).context(|| {
        format!(
            "volume {id}: mount tmpfs ({}) on {}/volumes/{id}",
            shown(&options),
            pool.shown()
        )
    })?;
    own_mount::reopen(pool, id)
}

/// The name of the marker of a volume never published.
fn marker(id: &VolumeId) -> String {
    format!(".{id}.unused")
}

/// Whether volume `id` was never published (its marker is there).
fn never_used(pool: &Pool, id: &VolumeId) -> Result<bool> {
    let name = marker(id);
    match fstatat(&pool.volumes, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(_) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(errno) => {
            Err(errno).context(|| format!("volume {id}: stat {}/volumes/{name}", pool.shown()))
        }
    }
}

/// Removes the marker, durably: from now on a missing tmpfs means lost data.
fn mark_used(pool: &Pool, id: &VolumeId) -> Result<()> {
    let name = marker(id);
    beneath::remove_file(&pool.volumes, name.as_str())
        .context(|| format!("volume {id}: remove {}/volumes/{name}", pool.shown()))
}

impl VolumeKind for Memory {
    fn create(&self, pool: &Pool, record: &VolumeRecord) -> Result<()> {
        let id = &record.id;
        // A volume whose tmpfs is gone after it was used lost its contents,
        // and the next publish must say so (see open_source); one never used
        // just gets its tmpfs.
        match own_mount::look(pool, id)? {
            MountPoint::Missing => {
                let name = marker(id);
                beneath::create_empty(&pool.volumes, name.as_str())
                    .context(|| format!("volume {id}: write {}/volumes/{name}", pool.shown()))?;
                let (dir, _) = beneath::ensure_dir(&pool.volumes, id.as_str(), 0o755)
                    .context(|| format!("volume {id}: create {}/volumes/{id}", pool.shown()))?;
                failpoint::hit("memory:dir-made");
                mount_tmpfs(pool, id, &dir, record.capacity_bytes)?;
            }
            MountPoint::Unmounted(dir) if never_used(pool, id)? => {
                mount_tmpfs(pool, id, &dir, record.capacity_bytes)?;
            }
            MountPoint::Unmounted(_) | MountPoint::Mounted(_) | MountPoint::Failing(_) => {}
        }
        Ok(())
    }

    /// The mounted tmpfs; one lost with a reboot has nothing to copy.
    fn seed(&self, pool: &Pool, record: &VolumeRecord) -> Result<Seed> {
        let id = &record.id;
        match own_mount::look(pool, id)? {
            MountPoint::Mounted(dir) => Ok(Seed::Tree {
                dir,
                subvolume: false,
            }),
            MountPoint::Failing(_) => Err(failing(pool, id)),
            MountPoint::Missing => Err(Error::WrongState(missing(pool, id))),
            MountPoint::Unmounted(_) => Err(Error::WrongState(format!(
                "volume {id}: its tmpfs on {}/volumes/{id} is not mounted (its contents were lost with a reboot): nothing to copy",
                pool.shown()
            ))),
        }
    }

    /// A new tmpfs with the tree copied in; from then on it holds data that
    /// a reboot loses (and reports).
    fn create_from(&self, pool: &Pool, record: &VolumeRecord, seed: &Seed) -> Result<()> {
        let id = &record.id;
        self.create(pool, record)?;
        let root = own_mount::reopen(pool, id)?;
        fill_tree(pool, id, seed, &root)?;
        mark_used(pool, id)
    }

    fn delete(&self, pool: &Pool, id: &VolumeId) -> Result<()> {
        own_mount::unmount(pool, id)?;
        pool.trash_volume(id.as_str())?;
        mark_used(pool, id)
    }

    fn open_source(
        &self,
        pool: &Pool,
        record: &VolumeRecord,
        _access: Access,
    ) -> Result<Option<Opened>> {
        let id = &record.id;
        let unused = never_used(pool, id)?;
        let opened = match own_mount::look(pool, id)? {
            MountPoint::Missing => return Ok(None),
            MountPoint::Failing(_) => return Err(failing(pool, id)),
            MountPoint::Mounted(fd) => Opened {
                fd,
                recreated: false,
            },
            MountPoint::Unmounted(dir) => {
                if !unused {
                    tracing::warn!(volume = %id, "tmpfs contents were lost; mounting an empty one");
                }
                let fd = mount_tmpfs(pool, id, &dir, record.capacity_bytes)?;
                Opened {
                    fd,
                    recreated: !unused,
                }
            }
        };
        if unused {
            mark_used(pool, id)?;
        }
        Ok(Some(opened))
    }

    fn open_existing(
        &self,
        pool: &Pool,
        record: &VolumeRecord,
        _access: Access,
    ) -> Result<Option<OwnedFd>> {
        Ok(match own_mount::look(pool, &record.id)? {
            MountPoint::Mounted(fd) => Some(fd),
            MountPoint::Missing | MountPoint::Unmounted(_) | MountPoint::Failing(_) => None,
        })
    }

    /// Remounts a mounted tmpfs with the larger size, online; an unmounted
    /// one gets the new size when it is next mounted.
    fn expand(&self, pool: &Pool, record: &VolumeRecord) -> Result<bool> {
        let id = &record.id;
        if let MountPoint::Mounted(fd) = own_mount::look(pool, id)? {
            let options = shown(&tmpfs_options(record.capacity_bytes));
            mount(
                None::<&str>,
                fd_path(&fd).as_str(),
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(options.as_str()),
            )
            .context(|| format!("volume {id}: remount its tmpfs with {options}"))?;
        }
        Ok(false)
    }

    /// The tmpfs's own count, while it is mounted (it draws on the memory
    /// budget, not on the pool's disk).
    fn used_cheaply(&self, pool: &Pool, record: &VolumeRecord) -> Result<Option<u64>> {
        match own_mount::look(pool, &record.id)? {
            MountPoint::Mounted(root) => Ok(Some(own_mount::stats(&record.id, &root)?.bytes_used)),
            _ => Ok(None),
        }
    }

    fn health(&self, pool: &Pool, record: &VolumeRecord, _published: bool) -> Result<Vec<Finding>> {
        let id = &record.id;
        Ok(match own_mount::look(pool, id)? {
            MountPoint::Missing => vec![Finding::new(Reason::BackingMissing, missing(pool, id))],
            MountPoint::Mounted(_) => Vec::new(),
            MountPoint::Failing(_) => vec![Finding::new(
                Reason::FilesystemFailing,
                failing(pool, id).to_string(),
            )],
            MountPoint::Unmounted(_) if never_used(pool, id)? => Vec::new(),
            MountPoint::Unmounted(_) => vec![Finding::new(
                Reason::TmpfsGone,
                format!(
                    "volume {id}: its tmpfs on {}/volumes/{id} is gone and its contents with it (node reboot?); the next publish mounts an empty one",
                    pool.shown()
                ),
            )],
        })
    }

    fn users(&self, pool: &Pool, id: &VolumeId, mounts: &MountIndex) -> Result<Vec<MountEntry>> {
        own_mount::users(pool, id, mounts)
    }

    fn stats(&self, _pool: &Pool, record: &VolumeRecord, source: &OwnedFd) -> Result<VolumeStats> {
        let id = &record.id;
        own_mount::stats(id, source)
    }
}
