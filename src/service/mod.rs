//! The CSI gRPC services, each a thin layer over the shared [`Driver`]:
//! validate the request, claim the volume, do the work off the async
//! workers, answer; `status` turns any error into the gRPC code the spec
//! asks for. Controller mode serves `expansion_only` instead of
//! `controller` and `node`, with no Driver.
//!
//! [`Driver`]: crate::driver::Driver

pub mod controller;
pub mod expansion_only;
pub mod identity;
pub mod node;
pub mod snapshots;
pub mod status;

use std::collections::BTreeMap;

use crate::csi::node_get_storage_health_response::StorageBackendHealth;
use crate::csi::volume_health::VolumeHealthEntry;
use crate::csi::{StorageHealthErrorType, VolumeHealth, VolumeHealthErrorType};
use crate::driver::Driver;
use crate::error::{Echo, Error, Result};
use crate::health::{Finding, PoolReason, PoolSeverity, Severity};
use crate::ids::VolumeId;

/// What every RPC handler returns.
type RpcResult<T> = std::result::Result<tonic::Response<T>, tonic::Status>;

/// Paging tokens (ListVolumes, ControllerListVolumeHealth, ListSnapshots)
/// are this prefix and the id the next page starts at, so entries deleted
/// between pages never invalidate a token.
const TOKEN_PREFIX: &str = "from:";

/// The first id and the page size a paged request asks for (`parse` reads
/// an id of the listed kind); a token this driver did not issue is ABORTED
/// (the caller starts over).
fn page_request<Id>(
    max_entries: i32,
    token: &str,
    parse: impl Fn(&str) -> Option<Id>,
) -> Result<(Option<Id>, usize)> {
    let max = usize::try_from(max_entries)
        .map_err(|_| Error::Invalid(format!("max_entries {max_entries} is negative")))?;
    let start = match token {
        "" => None,
        token => Some(
            token
                .strip_prefix(TOKEN_PREFIX)
                .and_then(parse)
                .ok_or_else(|| {
                    Error::Busy(format!(
                        "starting_token {} was not issued by this driver",
                        Echo(token)
                    ))
                })?,
        ),
    };
    Ok((start, max))
}

/// The token of the page starting at `next`; empty after the last page.
fn next_token(next: Option<impl std::fmt::Display>) -> String {
    next.map(|id| format!("{TOKEN_PREFIX}{id}"))
        .unwrap_or_default()
}

/// Bytes as the wire's int64 fields carry them (a size beyond i64::MAX,
/// which no request can ask for, shows as the largest there is).
fn wire_bytes(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// The VolumeHealth message of a volume's findings.
fn volume_health(id: &VolumeId, findings: &[Finding]) -> VolumeHealth {
    VolumeHealth {
        volume_id: id.to_string(),
        health_statuses: findings
            .iter()
            .map(|finding| VolumeHealthEntry {
                status: match finding.reason.severity() {
                    Severity::Degraded => VolumeHealthErrorType::Degraded,
                    Severity::Inaccessible => VolumeHealthErrorType::Inaccessible,
                    Severity::DataLoss => VolumeHealthErrorType::DataLoss,
                } as i32,
                reason: finding.reason.as_str().to_owned(),
                message: bounded(finding.message.clone()),
            })
            .collect(),
    }
}

/// The health of this node's pools, as NodeGetStorageHealth reports it:
/// one entry per reason (the spec allows no two with the same status and
/// reason), naming every pool it holds for.
fn storage_health(driver: &Driver) -> Vec<StorageBackendHealth> {
    let mut by_reason: BTreeMap<PoolReason, Vec<String>> = BTreeMap::new();
    for finding in driver.storage_findings() {
        by_reason
            .entry(finding.reason)
            .or_default()
            .push(finding.message);
    }
    by_reason
        .into_iter()
        .map(|(reason, messages)| StorageBackendHealth {
            status: match reason.severity() {
                PoolSeverity::Degraded => StorageHealthErrorType::StorageDegraded,
                PoolSeverity::Unreachable => StorageHealthErrorType::StorageUnreachable,
            } as i32,
            reason: reason.as_str().to_owned(),
            message: bounded(messages.join("; ")),
            volume_capability: None,
        })
        .collect()
}

/// Most bytes of a health message: what Kubernetes stores in a pod's or
/// CSINode's status (longer ones would fail its validation).
const HEALTH_MESSAGE_MAX: usize = 1024;

/// `message` cut to [`HEALTH_MESSAGE_MAX`] bytes at a character boundary.
fn bounded(mut message: String) -> String {
    if message.len() > HEALTH_MESSAGE_MAX {
        let mut end = HEALTH_MESSAGE_MAX - '…'.len_utf8();
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_messages_fit_what_kubernetes_stores() {
        assert_eq!(bounded("short".into()), "short");
        let long = "é".repeat(HEALTH_MESSAGE_MAX);
        let cut = bounded(long);
        assert!(
            cut.len() <= HEALTH_MESSAGE_MAX && cut.ends_with('…'),
            "{}",
            cut.len()
        );
    }
}
