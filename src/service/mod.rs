//! The three CSI gRPC services, each a thin layer over the shared [`Driver`]:
//! validate the request, claim the volume, do the work off the async
//! workers, answer.
//!
//! [`Driver`]: crate::driver::Driver

pub mod controller;
pub mod identity;
pub mod node;

use crate::csi::VolumeCondition;

/// What every RPC handler returns.
type RpcResult<T> = std::result::Result<tonic::Response<T>, tonic::Status>;

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
