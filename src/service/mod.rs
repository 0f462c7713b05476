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

use crate::csi::VolumeCondition;
use crate::driver::Driver;
use crate::volumes::Volume;

/// What every RPC handler returns.
type RpcResult<T> = std::result::Result<tonic::Response<T>, tonic::Status>;

/// Bytes as the wire's int64 fields carry them (a size beyond i64::MAX,
/// which no request can ask for, shows as the largest there is).
fn wire_bytes(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// A condition saying the volume is healthy.
fn healthy() -> VolumeCondition {
    VolumeCondition {
        abnormal: false,
        message: "volume is healthy".into(),
    }
}

/// A condition saying what is wrong with the volume.
fn abnormal(message: String) -> VolumeCondition {
    VolumeCondition {
        abnormal: true,
        message,
    }
}

/// The volume's health: what is wrong with its backing now, else what
/// happened to it in this run, else healthy.
fn condition(driver: &Driver, volume: &Volume) -> VolumeCondition {
    let record = &volume.record;
    let problem = driver
        .pool(Some(&record.pool))
        .and_then(|pool| record.kind.backend().problem(pool, &record.id));
    match (problem, &volume.notice) {
        (Ok(Some(problem)), _) => abnormal(problem),
        (Err(err), _) => abnormal(err.to_string()),
        (Ok(None), Some(notice)) => abnormal(notice.clone()),
        (Ok(None), None) => healthy(),
    }
}
