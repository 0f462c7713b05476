//! CSI Identity: who the plugin is, what it offers, and whether it is ready.

use std::sync::Arc;

use tonic::{Request, Response};

use super::RpcResult;
use crate::csi::identity_server::Identity;
use crate::csi::plugin_capability::{Service, Type, VolumeExpansion, service, volume_expansion};
use crate::csi::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse,
};
use crate::driver::Driver;
use crate::work::blocking;

pub struct IdentityService {
    driver_name: String,
    /// The node's driver; `None` in controller mode, which has no pools.
    driver: Option<Arc<Driver>>,
}

impl IdentityService {
    pub fn new(driver_name: String, driver: Option<Arc<Driver>>) -> Self {
        IdentityService {
            driver_name,
            driver,
        }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<GetPluginInfoRequest>,
    ) -> RpcResult<GetPluginInfoResponse> {
        Ok(Response::new(GetPluginInfoResponse {
            name: self.driver_name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<GetPluginCapabilitiesRequest>,
    ) -> RpcResult<GetPluginCapabilitiesResponse> {
        // Snapshots are taken on the node that holds them, and only there.
        let snapshots = self
            .driver
            .is_some()
            .then_some(service::Type::SnapshotAccessibilityConstraints);
        let offered = [
            service::Type::ControllerService,
            service::Type::VolumeAccessibilityConstraints,
        ]
        .into_iter()
        .chain(snapshots);
        let expansion = PluginCapability {
            r#type: Some(Type::VolumeExpansion(VolumeExpansion {
                r#type: volume_expansion::Type::Online as i32,
            })),
        };
        let capabilities = offered
            .map(|t| PluginCapability {
                r#type: Some(Type::Service(Service { r#type: t as i32 })),
            })
            .chain([expansion])
            .collect();
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    /// Ready when every pool can take a new file right now; otherwise
    /// FAILED_PRECONDITION naming the pool and the reason. Controller mode,
    /// without pools, is always ready.
    async fn probe(&self, _request: Request<ProbeRequest>) -> RpcResult<ProbeResponse> {
        let Some(driver) = self.driver.clone() else {
            return Ok(Response::new(ProbeResponse { ready: Some(true) }));
        };
        blocking(move || {
            driver
                .pools()
                .iter()
                .try_for_each(|pool| pool.check_writable())
        })
        .await?;
        Ok(Response::new(ProbeResponse { ready: Some(true) }))
    }
}
