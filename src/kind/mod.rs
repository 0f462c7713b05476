//! Volume kinds: what backs a volume on a node (StorageClass parameter `kind`).
//!
//! The services deal with kinds only through [`VolumeKind`], so adding a kind
//! means adding one implementation and one [`KindName`] variant.

mod directory;
mod file;
mod memory;
mod own_mount;

use std::os::fd::{AsFd, OwnedFd};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::health::Finding;
use crate::ids::{PoolName, VolumeId};
use crate::mounts::{MountEntry, MountIndex};
use crate::pool::Pool;
use crate::record::VolumeRecord;

/// The kinds a StorageClass can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KindName {
    /// A directory per volume (the default).
    Directory,
    /// A tmpfs per volume, like emptyDir `medium: Memory`.
    Memory,
    /// An image file per volume, loop-mounted or served as a raw block device.
    File,
}

/// A filesystem the driver formats an image volume with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FsType {
    Ext4,
    Xfs,
}

impl FsType {
    /// Every filesystem offered; the first is the default.
    pub const ALL: [FsType; 2] = [FsType::Ext4, FsType::Xfs];

    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }

    pub fn parse(raw: &str) -> Option<FsType> {
        FsType::ALL.into_iter().find(|f| f.as_str() == raw)
    }
}

/// What a volume holds that the driver made inside it: nothing (`Raw`: a
/// directory or tmpfs as its kind makes it, or an unformatted image served
/// as a block device), or a filesystem in an image. Records store it as
/// the filesystem's name, "" for raw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Content {
    #[default]
    Raw,
    Fs(FsType),
}

impl Content {
    /// The filesystem's name, "" for raw.
    pub fn as_str(self) -> &'static str {
        match self {
            Content::Raw => "",
            Content::Fs(fs) => fs.as_str(),
        }
    }

    pub fn is_raw(self) -> bool {
        self == Content::Raw
    }
}

impl std::fmt::Display for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Content> for String {
    fn from(content: Content) -> String {
        content.as_str().to_owned()
    }
}

impl TryFrom<String> for Content {
    type Error = String;

    fn try_from(raw: String) -> std::result::Result<Content, String> {
        match raw.as_str() {
            "" => Ok(Content::Raw),
            name => FsType::parse(name)
                .map(Content::Fs)
                .ok_or_else(|| format!("unknown filesystem {name:?}")),
        }
    }
}

/// What a volume's capacity is taken from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Backing {
    /// The free space of a pool's filesystem.
    Disk(PoolName),
    /// The node's memory budget.
    Memory,
}

impl KindName {
    pub const ALL: [KindName; 3] = [KindName::Directory, KindName::Memory, KindName::File];

    pub fn as_str(self) -> &'static str {
        match self {
            KindName::Directory => "directory",
            KindName::Memory => "memory",
            KindName::File => "file",
        }
    }

    pub fn parse(raw: &str) -> Result<Self> {
        KindName::ALL
            .into_iter()
            .find(|k| k.as_str() == raw)
            .ok_or_else(|| {
                let known: Vec<_> = KindName::ALL.iter().map(|k| k.as_str()).collect();
                Error::Invalid(format!(
                    "parameter kind={raw:?} is not supported: supported kinds are {}",
                    known.join(", ")
                ))
            })
    }

    /// Where the capacity of a volume of this kind in `pool` comes from.
    pub fn backing(self, pool: &PoolName) -> Backing {
        match self {
            KindName::Directory | KindName::File => Backing::Disk(pool.clone()),
            KindName::Memory => Backing::Memory,
        }
    }

    /// Whether the capacity is a hard size that must not be 0 (a tmpfs
    /// with `size=0` would have no limit at all; an image needs bytes).
    pub fn sized(self) -> bool {
        self != KindName::Directory
    }

    /// The smallest volume of this kind (holding `content`, for kind=file).
    pub fn minimum_capacity(self, content: Content) -> u64 {
        match (self, content) {
            (KindName::Directory, _) => 0,
            (KindName::Memory, _) => memory::MINIMUM_SIZE,
            (KindName::File, Content::Fs(FsType::Xfs)) => file::XFS_MINIMUM,
            (KindName::File, Content::Raw) => file::RAW_MINIMUM,
            (KindName::File, Content::Fs(FsType::Ext4)) => file::EXT4_MINIMUM,
        }
    }

    /// The capacity a volume gets when the request names none.
    pub fn default_capacity(self) -> u64 {
        match self {
            KindName::Directory => 0,
            KindName::Memory => memory::DEFAULT_SIZE,
            KindName::File => file::DEFAULT_SIZE,
        }
    }

    /// The implementation behind this kind.
    pub fn backend(self) -> &'static dyn VolumeKind {
        match self {
            KindName::Directory => &directory::Directory,
            KindName::Memory => &memory::Memory,
            KindName::File => &file::File,
        }
    }
}

/// How a volume is presented to a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A mounted filesystem (a directory target).
    Mount,
    /// A raw block device (a file target); a read-only one refuses writes
    /// in the device itself, since a read-only bind of a device node does not.
    Block { read_only: bool },
}

/// A volume's backing opened for publishing.
#[derive(Debug)]
pub struct Opened {
    /// What a publish bind-mounts.
    pub fd: OwnedFd,
    /// The backing had lost its contents (a memory volume after a reboot)
    /// and was recreated empty to serve this call.
    pub recreated: bool,
}

/// What a snapshot, restore or clone is made from: a directory tree (a
/// btrfs subvolume's root, which can be snapshotted whole) or an image.
#[derive(Debug)]
pub enum Seed {
    Tree { dir: OwnedFd, subvolume: bool },
    Image(OwnedFd),
}

impl Seed {
    /// Bytes the seed's data takes (a tree's measured by a bounded walk).
    pub fn used_bytes(&self) -> Result<u64> {
        let fd = match self {
            Seed::Tree { dir, .. } => dir,
            Seed::Image(image) => image,
        };
        let used = match self {
            Seed::Tree { .. } => crate::beneath::usage(fd).map(|u| u.bytes),
            Seed::Image(_) => {
                nix::sys::stat::fstat(fd).map(|st| u64::try_from(st.st_blocks).unwrap_or(0) * 512)
            }
        };
        used.map_err(|errno| Error::sys("measure the data to copy", errno))
    }
}

/// Copies tree `seed` into volume `id`'s directory `dir`.
fn fill_tree(pool: &Pool, id: &VolumeId, seed: &Seed, dir: &OwnedFd) -> Result<()> {
    let Seed::Tree { dir: from, .. } = seed else {
        return Err(Error::Broken(format!(
            "volume {id}: an image cannot fill a directory"
        )));
    };
    let progress = crate::copy::Progress::default();
    crate::copy::tree(from.as_fd(), dir.as_fd(), &progress, &|| false).map_err(|err| {
        Error::failed(
            format!("volume {id}: copy into {}/volumes/{id}", pool.shown()),
            err,
        )
    })?;
    nix::unistd::syncfs(dir.as_fd())
        .map_err(|errno| Error::sys(format!("volume {id}: sync its filesystem"), errno))
}

/// Usage figures of one volume, as NodeGetVolumeStats reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VolumeStats {
    pub bytes_total: u64,
    pub bytes_used: u64,
    pub bytes_available: u64,
    pub inodes_total: u64,
    pub inodes_used: u64,
    pub inodes_available: u64,
}

/// The message for a volume whose directory is gone.
fn missing(pool: &Pool, id: &VolumeId) -> String {
    format!("volume {id}: {}/volumes/{id} is missing", pool.shown())
}

/// The error for a volume whose own filesystem fails every access.
fn failing(pool: &Pool, id: &VolumeId) -> Error {
    Error::WrongState(format!(
        "volume {id}: its filesystem on {}/volumes/{id} fails every access (I/O errors; an XFS shut down?); unpublish it everywhere and publish it again to mount it afresh",
        pool.shown()
    ))
}

/// How one kind creates, serves and removes its volumes inside a pool.
pub trait VolumeKind: Send + Sync {
    /// Creates the volume's backing, or accepts the one already there, so a
    /// retried create converges on one backing.
    fn create(&self, pool: &Pool, record: &VolumeRecord) -> Result<()>;

    /// Takes the backing out of service (into the pool's trash); a missing
    /// backing is fine, so a retried delete succeeds.
    fn delete(&self, pool: &Pool, id: &VolumeId) -> Result<()>;

    /// Opens what a publish bind-mounts for `access`, setting up what that
    /// needs and restoring a backing that a reboot took away (recreated
    /// empty); `None` when the backing is gone for good.
    fn open_source(
        &self,
        pool: &Pool,
        record: &VolumeRecord,
        access: Access,
    ) -> Result<Option<Opened>>;

    /// Bytes the volume takes, when that is O(1) to learn (an image's
    /// allocation, a qgroup); `None` otherwise.
    fn used_cheaply(&self, pool: &Pool, record: &VolumeRecord) -> Result<Option<u64>>;

    /// Opens what `access` is served from only if it is already set up
    /// (a mounted tmpfs or image, an attached loop device). Changes nothing.
    fn open_existing(
        &self,
        pool: &Pool,
        record: &VolumeRecord,
        access: Access,
    ) -> Result<Option<OwnedFd>>;

    /// What is wrong with the backing right now (nothing: empty), for a
    /// volume published somewhere or not. Changes nothing.
    fn health(&self, pool: &Pool, record: &VolumeRecord, published: bool) -> Result<Vec<Finding>>;

    /// Mounts that use the volume (published targets, subPath binds, any the
    /// driver lost track of), not counting the backing's own mount.
    fn users(&self, pool: &Pool, id: &VolumeId, mounts: &MountIndex) -> Result<Vec<MountEntry>>;

    /// Usage of the volume, measured through `source` (from `open_source`).
    fn stats(&self, pool: &Pool, record: &VolumeRecord, source: &OwnedFd) -> Result<VolumeStats>;

    /// Grows the backing to `record.capacity_bytes` (already raised in the
    /// record); a backing that large already is fine, so a retry converges.
    /// Returns whether the node must finish the job where the volume is
    /// published ([`VolumeKind::expand_on_node`]).
    fn expand(&self, pool: &Pool, record: &VolumeRecord) -> Result<bool>;

    /// Finishes an expansion where the volume is in use: makes devices and
    /// filesystems see the grown backing. Repeating it is harmless.
    fn expand_on_node(&self, _pool: &Pool, _record: &VolumeRecord) -> Result<()> {
        Ok(())
    }

    /// Opens what a snapshot or clone of the volume is made from.
    fn seed(&self, pool: &Pool, record: &VolumeRecord) -> Result<Seed>;

    /// Creates the volume's backing holding what `seed` holds (its record
    /// is new, or marked as still filling: nothing of an earlier attempt
    /// is left).
    fn create_from(&self, pool: &Pool, record: &VolumeRecord, seed: &Seed) -> Result<()>;

    /// Called after one of the volume's targets was taken down. A kind that
    /// sets up its backing only while it is in use (a loop device) takes it
    /// down once `mounts` shows no user left.
    fn release_if_unused(&self, _pool: &Pool, _id: &VolumeId, _mounts: &MountIndex) -> Result<()> {
        Ok(())
    }
}
