//! Names the driver trusts: volume ids it mints and pool names the operator gives.
//!
//! Both are restricted to `[a-z0-9-]`, so either can be used as a single path
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
    fn pool_names_are_checked() {
        for bad in ["", "-a", "A", "a/b", "..", &"a".repeat(64)] {
            assert!(PoolName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(PoolName::parse("fast-1").unwrap().as_str(), "fast-1");
    }
}
