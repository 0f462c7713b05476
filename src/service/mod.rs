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
pub mod status;

use crate::csi::node_get_storage_health_response::StorageBackendHealth;
use crate::csi::volume_health::VolumeHealthEntry;
use crate::csi::{StorageHealthErrorType, VolumeHealth, VolumeHealthErrorType};
use crate::driver::Driver;
use crate::health::{Finding, PoolSeverity, Severity};
use crate::ids::VolumeId;

/// What every RPC handler returns.
type RpcResult<T> = std::result::Result<tonic::Response<T>, tonic::Status>;

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
                message: finding.message.clone(),
            })
            .collect(),
    }
}

/// The health of this node's pools, as NodeGetStorageHealth reports it.
fn storage_health(driver: &Driver) -> Vec<StorageBackendHealth> {
    driver
        .storage_findings()
        .into_iter()
        .map(|finding| StorageBackendHealth {
            status: match finding.reason.severity() {
                PoolSeverity::Degraded => StorageHealthErrorType::StorageDegraded,
                PoolSeverity::Unreachable => StorageHealthErrorType::StorageUnreachable,
            } as i32,
            reason: finding.reason.as_str().to_owned(),
            message: finding.message,
            volume_capability: None,
        })
        .collect()
}
