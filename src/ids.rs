//! Names the driver trusts: volume and snapshot ids it mints and pool names
//! the operator gives.
//!
//! Volume ids and pool names are restricted to `[a-z0-9-]`, snapshot ids to
//! `[a-z0-9.-]` not starting with `.`, so each can be used as a single path
//! component with no way to express `..`, `/` or a hidden file. Clones share
//! one allocation: the volume table holds tens of thousands of them.

use std::fmt;
use std::sync::Arc;

use crate::error::{Echo, Error, Result};

/// Longest volume id accepted from a caller (CSI allows 128 bytes).
const MAX_ID_LEN: usize = 128;
/// Prefix of the ids this driver mints.
const MINTED_PREFIX: &str = "vol-";

/// A volume id: minted by [`VolumeId::mint`] or parsed and checked from a request.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct VolumeId(Arc<str>);

impl VolumeId {
    /// Mints the id for a CreateVolume name: the same name always gives the
    /// same id, so a create retried after a crash finds the volume it made.
    pub fn mint(name: &str) -> Self {
        VolumeId(format!("{MINTED_PREFIX}{:032x}", fnv1a_128(name.as_bytes())).into())
    }

    /// Checks an id sent by a caller: 1 to 128 characters of `[a-z0-9-]`.
    pub fn parse(raw: &str) -> Result<Self> {
        if raw.is_empty() {
            return Err(Error::Invalid("volume id is missing".into()));
        }
        if raw.len() > MAX_ID_LEN || !is_lower_alnum_dash(raw) {
            return Err(Error::Invalid(format!(
                "volume id {} is malformed: expected 1 to {MAX_ID_LEN} characters of [a-z0-9-]",
                Echo(raw)
            )));
        }
        Ok(VolumeId(raw.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Prefix of the snapshot ids this driver mints.
const SNAPSHOT_PREFIX: &str = "snap-";
/// Hex digits of the name's hash in a snapshot id.
const SNAPSHOT_HASH_LEN: usize = 32;

/// A snapshot id: `snap-<hash of the name>-<node>`, minted by
/// [`SnapshotId::mint`] or parsed and checked from a request. The node
/// part lets a node that does not hold a snapshot say which one does; a
/// node name that does not fit (longer than 64 bytes, or with characters
/// outside `[a-z0-9.-]`) is left out.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct SnapshotId(Arc<str>);

impl SnapshotId {
    /// Mints the id for a CreateSnapshot name taken on `node`: the same
    /// name on the same node always gives the same id.
    pub fn mint(name: &str, node: &str) -> Self {
        let hash = format!("{:032x}", fnv1a_128(name.as_bytes()));
        let fits = node.len() <= 64 && !node.starts_with('.') && is_snapshot_text(node);
        let id = if fits && !node.is_empty() {
            format!("{SNAPSHOT_PREFIX}{hash}-{node}")
        } else {
            format!("{SNAPSHOT_PREFIX}{hash}")
        };
        SnapshotId(id.into())
    }

    /// Checks an id sent by a caller: 1 to 128 characters of `[a-z0-9.-]`,
    /// not starting with `.`.
    pub fn parse(raw: &str) -> Result<Self> {
        if raw.is_empty() {
            return Err(Error::Invalid("snapshot id is missing".into()));
        }
        if raw.len() > MAX_ID_LEN || raw.starts_with('.') || !is_snapshot_text(raw) {
            return Err(Error::Invalid(format!(
                "snapshot id {} is malformed: expected 1 to {MAX_ID_LEN} characters of [a-z0-9.-], not starting with '.'",
                Echo(raw)
            )));
        }
        Ok(SnapshotId(raw.into()))
    }

    /// The node an id minted by this driver names, if it names one.
    pub fn node(&self) -> Option<&str> {
        let rest = self.0.strip_prefix(SNAPSHOT_PREFIX)?;
        let (hash, node) = rest.split_at_checked(SNAPSHOT_HASH_LEN)?;
        let node = node.strip_prefix('-')?;
        (hash.bytes().all(|b| b.is_ascii_hexdigit()) && !node.is_empty()).then_some(node)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SnapshotId {
    type Error = Error;
    fn try_from(raw: String) -> Result<Self> {
        SnapshotId::parse(&raw)
    }
}

impl From<SnapshotId> for String {
    fn from(id: SnapshotId) -> String {
        id.0.to_string()
    }
}

fn is_snapshot_text(s: &str) -> bool {
    s.bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.'))
}

/// The name of a storage pool, as given by `--pool NAME=PATH`.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct PoolName(Arc<str>);

impl PoolName {
    /// Checks a pool name: 1 to 63 characters of `[a-z0-9-]`, not starting with `-`.
    pub fn parse(raw: &str) -> Result<Self> {
        if raw.is_empty() || raw.len() > 63 || raw.starts_with('-') || !is_lower_alnum_dash(raw) {
            return Err(Error::Invalid(format!(
                "pool name {} is malformed: expected 1 to 63 characters of [a-z0-9-], not starting with '-'",
                Echo(raw)
            )));
        }
        Ok(PoolName(raw.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for VolumeId {
    type Error = Error;
    fn try_from(raw: String) -> Result<Self> {
        VolumeId::parse(&raw)
    }
}

impl From<VolumeId> for String {
    fn from(id: VolumeId) -> String {
        id.0.to_string()
    }
}

impl TryFrom<String> for PoolName {
    type Error = Error;
    fn try_from(raw: String) -> Result<Self> {
        PoolName::parse(&raw)
    }
}

impl From<PoolName> for String {
    fn from(name: PoolName) -> String {
        name.0.to_string()
    }
}

fn is_lower_alnum_dash(s: &str) -> bool {
    s.bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
}

/// FNV-1a with 128-bit state: stable across builds and platforms, unlike std's hasher.
fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    bytes.iter().fold(OFFSET, |hash, &b| {
        (hash ^ u128::from(b)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minting_is_stable_and_distinct() {
        let a = VolumeId::mint("pvc-1");
        assert_eq!(a, VolumeId::mint("pvc-1"));
        assert_ne!(a, VolumeId::mint("pvc-2"));
        assert!(
            a.as_str().starts_with(MINTED_PREFIX) && a.as_str().len() == 36,
            "{a}"
        );
        assert_eq!(VolumeId::parse(a.as_str()).unwrap(), a);
        // Pinned so that a change of hash (which would orphan every volume) fails here.
        assert_eq!(
            VolumeId::mint("").as_str(),
            "vol-6c62272e07bb014262b821756295c58d"
        );
    }

    #[test]
    fn volume_ids_from_callers_are_checked() {
        for bad in ["", "../x", "a/b", "A", ".", "x y", &"a".repeat(129)] {
            assert!(VolumeId::parse(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "some-vol-id", "0", &"a".repeat(128)] {
            assert!(VolumeId::parse(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn snapshot_ids_name_their_node_and_callers_cannot_climb_out() {
        let id = SnapshotId::mint("snapshot-1", "node-a.example");
        assert_eq!(id, SnapshotId::mint("snapshot-1", "node-a.example"));
        assert_ne!(id, SnapshotId::mint("snapshot-1", "node-b"));
        assert_eq!(id.node(), Some("node-a.example"));
        assert_eq!(SnapshotId::parse(id.as_str()).unwrap(), id);
        for unfit in ["Node_A", &"n".repeat(65), "", ".hidden"] {
            let id = SnapshotId::mint("s", unfit);
            assert_eq!(id.node(), None, "{unfit:?}");
            assert_eq!(id.as_str().len(), 37);
        }
        for bad in ["", "..", "../x", ".x", "a/b", "a\0b", "A", &"a".repeat(129)] {
            assert!(SnapshotId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(SnapshotId::parse("x..y").unwrap().node(), None);
    }

    #[test]
    fn pool_names_are_checked() {
        for bad in ["", "-a", "A", "a/b", "..", &"a".repeat(64)] {
            assert!(PoolName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(PoolName::parse("fast-1").unwrap().as_str(), "fast-1");
    }
}
