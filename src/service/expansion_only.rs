//! CSI Controller of the driver in controller mode, which runs centrally
//! (beside csi-resizer) and has none of the nodes' disks: it approves an
//! expansion and leaves the work to NodeExpandVolume on the volume's node,
//! which grants the new size itself.

use tonic::{Request, Response};

use super::{RpcResult, wire_bytes};
use crate::csi::controller_server::Controller;
use crate::csi::controller_service_capability::{Rpc, Type, rpc};
use crate::csi::{
    ControllerExpandVolumeRequest, ControllerExpandVolumeResponse,
    ControllerGetCapabilitiesRequest, ControllerGetCapabilitiesResponse,
    ControllerServiceCapability,
};
use crate::ids::VolumeId;
use crate::validate;

pub struct ExpansionOnlyController;

#[tonic::async_trait]
impl Controller for ExpansionOnlyController {
    /// The size asked for, always with `node_expansion_required`: only the
    /// node can tell whether its pool or memory budget has the room (it
    /// answers OUT_OF_RANGE or RESOURCE_EXHAUSTED there otherwise).
    async fn controller_expand_volume(
        &self,
        request: Request<ControllerExpandVolumeRequest>,
    ) -> RpcResult<ControllerExpandVolumeResponse> {
        let req = request.into_inner();
        let id = VolumeId::parse(&req.volume_id)?;
        let range = validate::expansion(&id, req.capacity_range.as_ref())?;
        Ok(Response::new(ControllerExpandVolumeResponse {
            capacity_bytes: wire_bytes(range.required),
            node_expansion_required: true,
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<ControllerGetCapabilitiesRequest>,
    ) -> RpcResult<ControllerGetCapabilitiesResponse> {
        let expand = ControllerServiceCapability {
            r#type: Some(Type::Rpc(Rpc {
                r#type: rpc::Type::ExpandVolume as i32,
            })),
        };
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: vec![expand],
        }))
    }
}
