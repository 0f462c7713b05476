//! Volume kinds: what backs a volume on a node (StorageClass parameter `kind`).
//!
//! The services deal with kinds only through [`VolumeKind`], so adding a kind
//! means adding one implementation and one [`KindName`] variant.

mod directory;

use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use crate::beneath::Usage;
use crate::error::{Error, Result};
use crate::ids::VolumeId;
use crate::pool::Pool;

/// The kinds a StorageClass can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KindName {
    /// A directory per volume (the default).
    Directory,
}

impl KindName {
    pub const ALL: [KindName; 1] = [KindName::Directory];

    pub fn as_str(self) -> &'static str {
        match self {
            KindName::Directory => "directory",
        }
    }

    pub fn parse(raw: &str) -> Result<Self> {
        KindName::ALL
            .into_iter()
            .find(|k| k.as_str() == raw)
            .ok_or_else(|| {
                let known: Vec<_> = KindName::ALL.iter().map(|k| k.as_str()).collect();
                Error::InvalidArgument(format!(
                    "parameter kind={raw:?} is not supported: supported kinds are {}",
                    known.join(", ")
                ))
            })
    }

    /// The implementation behind this kind.
    pub fn backend(self) -> &'static dyn VolumeKind {
        match self {
            KindName::Directory => &directory::Directory,
        }
    }
}

/// How one kind creates, serves and removes its volumes inside a pool.
pub trait VolumeKind: Send + Sync {
    /// Creates the volume's backing, or accepts the one already there, so a
    /// retried create converges on one backing.
    fn create(&self, pool: &Pool, id: &VolumeId, capacity_bytes: u64) -> Result<()>;

    /// Takes the backing out of service (into the pool's trash); a missing
    /// backing is fine, so a retried delete succeeds.
    fn delete(&self, pool: &Pool, id: &VolumeId) -> Result<()>;

    /// Opens what a publish bind-mounts; `None` when the backing is gone.
    fn open_source(&self, pool: &Pool, id: &VolumeId) -> Result<Option<OwnedFd>>;

    /// Bytes and inodes the volume uses, measured through `source` (what
    /// [`VolumeKind::open_source`] returned).
    fn usage(&self, pool: &Pool, id: &VolumeId, source: &OwnedFd) -> Result<Usage>;
}
