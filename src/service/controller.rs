//! CSI Controller: create (empty, restored or cloned), delete, list,
//! describe and expand this node's volumes, snapshot them (see
//! `snapshots`), and report the capacity each pool can still give.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Response};

use super::{RpcResult, next_token, page_request, snapshots, volume_health, wire_bytes};
use crate::csi::controller_server::Controller;
use crate::csi::controller_service_capability::{Rpc, Type, rpc};
use crate::csi::validate_volume_capabilities_response::Confirmed;
use crate::csi::{
    ControllerExpandVolumeRequest, ControllerExpandVolumeResponse,
    ControllerGetCapabilitiesRequest, ControllerGetCapabilitiesResponse,
    ControllerGetVolumeHealthRequest, ControllerGetVolumeHealthResponse,
    ControllerGetVolumeRequest, ControllerGetVolumeResponse, ControllerListVolumeHealthRequest,
    ControllerListVolumeHealthResponse, ControllerServiceCapability, CreateSnapshotRequest,
    CreateSnapshotResponse, CreateVolumeRequest, CreateVolumeResponse, DeleteSnapshotRequest,
    DeleteSnapshotResponse, DeleteVolumeRequest, DeleteVolumeResponse, GetCapacityRequest,
    GetCapacityResponse, GetSnapshotRequest, GetSnapshotResponse, ListSnapshotsRequest,
    ListSnapshotsResponse, ListVolumesRequest, ListVolumesResponse,
    ValidateVolumeCapabilitiesRequest, ValidateVolumeCapabilitiesResponse, Volume, VolumeHealth,
    controller_get_volume_response, list_volumes_response,
};
use crate::driver::{Driver, Listed};
use crate::error::{Echo, Error};
use crate::health;
use crate::ids::VolumeId;
use crate::kind::{Content, FsType, KindName};
use crate::lifecycle::{self, NewVolume};
use crate::record::VolumeRecord;
use crate::validate::{self, Enforce};
use crate::volumes;
use crate::work::blocking;

pub struct ControllerService {
    driver: Arc<Driver>,
}

impl ControllerService {
    pub fn new(driver: Arc<Driver>) -> Self {
        ControllerService { driver }
    }
}

/// Controller capabilities this driver offers.
const CAPABILITIES: [rpc::Type; 13] = [
    rpc::Type::ExpandVolume,
    rpc::Type::CreateDeleteVolume,
    rpc::Type::ListVolumes,
    rpc::Type::GetCapacity,
    rpc::Type::GetVolume,
    rpc::Type::GetVolumeHealth,
    rpc::Type::ListVolumeHealth,
    rpc::Type::SingleNodeMultiWriter,
    rpc::Type::ListVolumesPublishedNodes,
    rpc::Type::CreateDeleteSnapshot,
    rpc::Type::ListSnapshots,
    rpc::Type::GetSnapshot,
    rpc::Type::CloneVolume,
];

#[tonic::async_trait]
impl Controller for ControllerService {
    /// Idempotent by name: the same name with compatible arguments returns the
    /// same volume; incompatible arguments give ALREADY_EXISTS.
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> RpcResult<CreateVolumeResponse> {
        let req = request.into_inner();
        let name = validate::volume_name(&req.name)?.to_owned();
        let range = validate::capacity(req.capacity_range.as_ref())?;
        let params = validate::parameters(&req.parameters)?;
        let content = validate::chosen_content(&params, &req.volume_capabilities)?;
        validate::capabilities(params.kind, content, &req.volume_capabilities)?;
        let source = snapshots::content_source(req.volume_content_source.as_ref())?;
        let adopt_filesystem = !validate::names_filesystem(&params, &req.volume_capabilities);
        if !req.mutable_parameters.is_empty() {
            return Err(Error::Invalid(format!(
                "volume {name}: mutable_parameters are not supported: this driver offers no volume modification"
            ))
            .into());
        }
        let request = NewVolume {
            id: VolumeId::mint(&name),
            name,
            range,
            params,
            requirement: req.accessibility_requirements,
            ephemeral: false,
            content,
            source,
            adopt_filesystem,
        };
        let held = self.driver.guards.claim(format!("volume {}", request.id))?;
        let driver = Arc::clone(&self.driver);
        let record = blocking(move || {
            let _held = held;
            lifecycle::create(&driver, request)
        })
        .await?;
        Ok(Response::new(CreateVolumeResponse {
            volume: Some(volume_message(&self.driver, &record)),
        }))
    }

    /// Unknown ids succeed; a volume still published is FAILED_PRECONDITION.
    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> RpcResult<DeleteVolumeResponse> {
        let id = VolumeId::parse(&request.into_inner().volume_id)?;
        let held = self.driver.guards.claim(format!("volume {id}"))?;
        let driver = Arc::clone(&self.driver);
        blocking(move || {
            let _held = held;
            lifecycle::delete(&driver, &id)
        })
        .await?;
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> RpcResult<ValidateVolumeCapabilitiesResponse> {
        let req = request.into_inner();
        let id = VolumeId::parse(&req.volume_id)?;
        if req.volume_capabilities.is_empty() {
            return Err(
                Error::Invalid(format!("volume {id}: volume_capabilities are missing")).into(),
            );
        }
        let record = self.driver.volume(&id)?.record;
        let verdict = req
            .volume_capabilities
            .iter()
            .try_for_each(|cap| validate::serves(record.kind, record.content, cap).map(drop))
            .and_then(|()| self.same_parameters(&record, &req.parameters));
        let response = match verdict {
            Ok(_) => ValidateVolumeCapabilitiesResponse {
                confirmed: Some(Confirmed {
                    volume_context: req.volume_context,
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    mutable_parameters: HashMap::new(),
                }),
                message: String::new(),
            },
            Err(message) => ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: format!("volume {id}: {message}"),
            },
        };
        Ok(Response::new(response))
    }

    /// Pages in id order; `next_token` names the id the next page starts at, so
    /// volumes deleted between pages never invalidate a token.
    async fn list_volumes(
        &self,
        request: Request<ListVolumesRequest>,
    ) -> RpcResult<ListVolumesResponse> {
        let req = request.into_inner();
        let (entries, next_token) = self
            .volume_page(req.max_entries, &req.starting_token, list_entry)
            .await?;
        Ok(Response::new(ListVolumesResponse {
            entries,
            next_token,
        }))
    }

    /// The health of a page of volumes, paged as ListVolumes is.
    async fn controller_list_volume_health(
        &self,
        request: Request<ControllerListVolumeHealthRequest>,
    ) -> RpcResult<ControllerListVolumeHealthResponse> {
        let req = request.into_inner();
        let (entries, next_token) = self
            .volume_page(req.max_entries, &req.starting_token, health_entry)
            .await?;
        Ok(Response::new(ControllerListVolumeHealthResponse {
            entries,
            next_token,
        }))
    }

    /// The health of one volume; NOT_FOUND for one this node does not hold.
    async fn controller_get_volume_health(
        &self,
        request: Request<ControllerGetVolumeHealthRequest>,
    ) -> RpcResult<ControllerGetVolumeHealthResponse> {
        let id = VolumeId::parse(&request.into_inner().volume_id)?;
        let driver = Arc::clone(&self.driver);
        let health = blocking(move || {
            health::check(&driver, &id).map(|findings| volume_health(&id, &findings))
        })
        .await?;
        Ok(Response::new(ControllerGetVolumeHealthResponse {
            volume_health: Some(health),
        }))
    }

    /// The pool's free bytes minus what its volumes were promised; 0 for a
    /// topology that is not this node, a pool this node lacks (other nodes
    /// may have it: the chart's pools by node label) or capabilities this
    /// driver cannot serve. CreateVolume says why such a pool is refused.
    async fn get_capacity(
        &self,
        request: Request<GetCapacityRequest>,
    ) -> RpcResult<GetCapacityResponse> {
        let req = request.into_inner();
        let params = validate::parameters(&req.parameters)?;
        let elsewhere = req
            .accessible_topology
            .as_ref()
            .is_some_and(|t| !self.driver.is_this_node(t));
        // A filesystem the capabilities or parameters name decides the minimum.
        let content = validate::chosen_content(&params, &req.volume_capabilities);
        let unsupported = match content {
            Ok(content) => req
                .volume_capabilities
                .iter()
                .any(|cap| validate::serves(params.kind, content, cap).is_err()),
            Err(_) => true,
        };
        let available = if elsewhere || unsupported {
            0
        } else {
            let driver = Arc::clone(&self.driver);
            let (pool, kind, params) = (params.pool.clone(), params.kind, params.clone());
            blocking(move || {
                let Ok(pool) = driver.pool(pool.as_ref()) else {
                    return Ok(0);
                };
                if lifecycle::refusal(pool, &params).is_some() {
                    return Ok(0);
                }
                driver.ledger.available(pool, kind, driver.volumes())
            })
            .await?
        };
        // Without capabilities a file volume would hold the parameter's
        // filesystem, else ext4; with block ones only, none.
        let holds = match (content, req.volume_capabilities.is_empty(), params.kind) {
            (_, true, KindName::File) => Content::Fs(
                params
                    .fs_type
                    .as_deref()
                    .and_then(FsType::parse)
                    .unwrap_or(FsType::ALL[0]),
            ),
            (Ok(content), ..) => content,
            (Err(_), ..) => Content::Raw,
        };
        let minimum = params.kind.minimum_capacity(holds);
        Ok(Response::new(GetCapacityResponse {
            available_capacity: wire_bytes(available),
            maximum_volume_size: Some(wire_bytes(available)),
            minimum_volume_size: Some(wire_bytes(minimum)),
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<ControllerGetCapabilitiesRequest>,
    ) -> RpcResult<ControllerGetCapabilitiesResponse> {
        let capabilities = CAPABILITIES
            .into_iter()
            .map(|t| ControllerServiceCapability {
                r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })),
            })
            .collect();
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities,
        }))
    }

    /// Grows the volume online (see `lifecycle::expand`); shrinking is
    /// OUT_OF_RANGE; the node finishes the job when a filesystem must grow.
    async fn controller_expand_volume(
        &self,
        request: Request<ControllerExpandVolumeRequest>,
    ) -> RpcResult<ControllerExpandVolumeResponse> {
        let req = request.into_inner();
        let id = VolumeId::parse(&req.volume_id)?;
        let range = validate::expansion(&id, req.capacity_range.as_ref())?;
        let held = self.driver.guards.claim(format!("volume {id}"))?;
        let driver = Arc::clone(&self.driver);
        let (record, node_expansion_required) = blocking(move || {
            let _held = held;
            if let Some(cap) = &req.volume_capability {
                let record = driver.volume(&id)?.record;
                validate::serves(record.kind, record.content, cap)
                    .map_err(|m| Error::Invalid(format!("volume {id}: {m}")))?;
            }
            lifecycle::expand(&driver, &id, range)
        })
        .await?;
        Ok(Response::new(ControllerExpandVolumeResponse {
            capacity_bytes: wire_bytes(record.capacity_bytes),
            node_expansion_required,
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<CreateSnapshotRequest>,
    ) -> RpcResult<CreateSnapshotResponse> {
        let snapshot = snapshots::create(&self.driver, request.into_inner()).await?;
        Ok(Response::new(CreateSnapshotResponse {
            snapshot: Some(snapshot),
        }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<DeleteSnapshotRequest>,
    ) -> RpcResult<DeleteSnapshotResponse> {
        snapshots::delete(&self.driver, request.into_inner()).await?;
        Ok(Response::new(DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        request: Request<ListSnapshotsRequest>,
    ) -> RpcResult<ListSnapshotsResponse> {
        Ok(Response::new(snapshots::list(
            &self.driver,
            &request.into_inner(),
        )?))
    }

    async fn get_snapshot(
        &self,
        request: Request<GetSnapshotRequest>,
    ) -> RpcResult<GetSnapshotResponse> {
        let snapshot = snapshots::get(&self.driver, &request.into_inner().snapshot_id)?;
        Ok(Response::new(GetSnapshotResponse {
            snapshot: Some(snapshot),
        }))
    }

    async fn controller_get_volume(
        &self,
        request: Request<ControllerGetVolumeRequest>,
    ) -> RpcResult<ControllerGetVolumeResponse> {
        let id = VolumeId::parse(&request.into_inner().volume_id)?;
        if self.driver.unreadable(&id).is_some() {
            return Ok(Response::new(ControllerGetVolumeResponse {
                volume: Some(unreadable_message(&self.driver, &id)),
                status: Some(controller_get_volume_response::VolumeStatus {
                    published_node_ids: Vec::new(),
                }),
            }));
        }
        let volume = self.driver.volume(&id)?;
        Ok(Response::new(ControllerGetVolumeResponse {
            volume: Some(volume_message(&self.driver, &volume.record)),
            status: Some(controller_get_volume_response::VolumeStatus {
                published_node_ids: published_nodes(&self.driver, &volume),
            }),
        }))
    }
}

impl ControllerService {
    /// A page of the volumes in id order, each made an entry by `entry`,
    /// and the next page's token. Off the async workers: a page reads the
    /// table under its lock, and an entry may look at the volume's backing.
    async fn volume_page<T: Send + 'static>(
        &self,
        max_entries: i32,
        starting_token: &str,
        entry: fn(&Driver, &Listed) -> T,
    ) -> crate::error::Result<(Vec<T>, String)> {
        let (start, max) =
            page_request(max_entries, starting_token, |id| VolumeId::parse(id).ok())?;
        let driver = Arc::clone(&self.driver);
        let (entries, next) = blocking(move || {
            let (page, next) = driver.listing(start.as_ref(), max);
            Ok((
                page.iter().map(|listed| entry(&driver, listed)).collect(),
                next,
            ))
        })
        .await?;
        Ok((entries, next_token(next)))
    }

    /// Whether the parameters given (only those: an absent key is not read
    /// as its default) describe volume `record`.
    fn same_parameters(
        &self,
        record: &VolumeRecord,
        parameters: &HashMap<String, String>,
    ) -> std::result::Result<(), String> {
        let params = validate::parameters(parameters).map_err(|e| e.to_string())?;
        if parameters.contains_key("kind") && params.kind != record.kind {
            return Err(format!(
                "parameters ask for kind {}, but the volume is kind {}",
                params.kind.as_str(),
                record.kind.as_str()
            ));
        }
        if let Some(pool) = params.pool.as_ref().filter(|p| **p != record.pool) {
            return Err(format!(
                "parameters ask for pool {pool}, but the volume is in pool {}",
                record.pool
            ));
        }
        if let Some(fs_type) = params
            .fs_type
            .as_ref()
            .filter(|f| f.as_str() != record.content.as_str())
        {
            return Err(format!(
                "parameters ask for fsType {}, but the volume holds {:?}",
                Echo(fs_type),
                record.content.as_str()
            ));
        }
        if params.enforce == Enforce::Required && !record.enforced {
            return Err(
                "parameters ask for enforce=required, but the volume's capacity is not enforced"
                    .into(),
            );
        }
        Ok(())
    }
}

/// The Volume message of a served volume.
fn volume_message(driver: &Driver, record: &VolumeRecord) -> Volume {
    Volume {
        capacity_bytes: wire_bytes(record.capacity_bytes),
        volume_id: record.id.to_string(),
        volume_context: HashMap::from([
            ("kind".to_owned(), record.kind.as_str().to_owned()),
            ("pool".to_owned(), record.pool.to_string()),
        ]),
        content_source: snapshots::content_source_message(record.content_source.as_ref()),
        accessible_topology: vec![driver.topology()],
    }
}

/// A volume whose record could not be read: its id and place, nothing the
/// record would have said.
fn unreadable_message(driver: &Driver, id: &VolumeId) -> Volume {
    Volume {
        volume_id: id.to_string(),
        accessible_topology: vec![driver.topology()],
        ..Volume::default()
    }
}

fn published_nodes(driver: &Driver, volume: &volumes::Volume) -> Vec<String> {
    if volume.published.is_empty() {
        Vec::new()
    } else {
        vec![driver.config.node_id.clone()]
    }
}

/// One ControllerListVolumeHealth entry: the volume's health, checked now.
fn health_entry(driver: &Driver, listed: &Listed) -> VolumeHealth {
    match listed {
        Listed::Served(volume) => {
            let findings = health::of_volume(driver, volume);
            driver.observe(&volume.record.id, &findings);
            volume_health(&volume.record.id, &findings)
        }
        Listed::Unreadable(id, problem) => volume_health(id, &[health::of_unreadable(id, problem)]),
    }
}

/// One ListVolumes entry.
fn list_entry(driver: &Driver, listed: &Listed) -> list_volumes_response::Entry {
    let (volume, published_node_ids) = match listed {
        Listed::Served(volume) => (
            volume_message(driver, &volume.record),
            published_nodes(driver, volume),
        ),
        Listed::Unreadable(id, _) => (unreadable_message(driver, id), Vec::new()),
    };
    list_volumes_response::Entry {
        volume: Some(volume),
        status: Some(list_volumes_response::VolumeStatus { published_node_ids }),
    }
}
