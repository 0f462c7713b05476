//! CSI Node: bind-mount volumes onto the targets kubelet asks for, take them
//! down again, finish expansions, and report usage and health.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use nix::mount::MsFlags;
use nix::sys::stat::SFlag;
use tonic::{Request, Response};

use super::{RpcResult, storage_health, volume_health, wire_bytes};
use crate::beneath;
use crate::csi::node_server::Node;
use crate::csi::node_service_capability::{Rpc, Type, rpc};
use crate::csi::volume_usage::Unit;
use crate::csi::{
    NodeExpandVolumeRequest, NodeExpandVolumeResponse, NodeGetCapabilitiesRequest,
    NodeGetCapabilitiesResponse, NodeGetInfoRequest, NodeGetInfoResponse,
    NodeGetStorageHealthRequest, NodeGetStorageHealthResponse, NodeGetVolumeHealthRequest,
    NodeGetVolumeHealthResponse, NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse,
    NodePublishVolumeRequest, NodePublishVolumeResponse, NodeServiceCapability,
    NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse, VolumeUsage,
};
use crate::driver::Driver;
use crate::error::{Echo, Error, Result, SysContext};
use crate::failpoint;
use crate::guard::Held;
use crate::health::{self, Severity};
use crate::host_path;
use crate::ids::VolumeId;
use crate::kind::Access;
use crate::lifecycle;
use crate::mounts::BindPolicy;
use crate::publish::{self, Publish};
use crate::record::VolumeRecord;
use crate::target::{self, Target};
use crate::validate::{self, Requested};
use crate::work::blocking;

/// Node capabilities this driver offers.
const CAPABILITIES: [rpc::Type; 5] = [
    rpc::Type::GetVolumeStats,
    rpc::Type::GetVolumeHealth,
    rpc::Type::GetStorageHealth,
    rpc::Type::SingleNodeMultiWriter,
    rpc::Type::ExpandVolume,
];

pub struct NodeService {
    driver: Arc<Driver>,
}

impl NodeService {
    pub fn new(driver: Arc<Driver>) -> Self {
        NodeService { driver }
    }
}

impl NodeService {
    /// One operation at a time per volume and per target: a second call on
    /// either gets ABORTED.
    fn claim(&self, id: &VolumeId, target: &std::path::Path) -> Result<[Held; 2]> {
        let guards = &self.driver.guards;
        Ok([
            guards.claim(format!("volume {id}"))?,
            guards.claim(format!("target {}", target.display()))?,
        ])
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    /// Bind-mounts the volume on `target_path` (created here, as the spec
    /// asks). Repeating the call is OK; the same target with a different
    /// read-only setting, or holding another mount, is ALREADY_EXISTS.
    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> RpcResult<NodePublishVolumeResponse> {
        let req = request.into_inner();
        let id = VolumeId::parse(&req.volume_id)?;
        let target_path = validate::host_path("target_path", &req.target_path)?;
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| Error::Invalid(format!("volume {id}: volume_capability is missing")))?;
        let requested =
            validate::capability(cap).map_err(|m| Error::Invalid(format!("volume {id}: {m}")))?;
        let sharing = validate::sharing(cap);
        let extra = match &requested {
            Requested::Mount { flags, .. } => *flags,
            Requested::Block => MsFlags::empty(),
        };
        let read_only =
            req.readonly || validate::is_reader_only(cap) || extra.contains(MsFlags::MS_RDONLY);
        let policy = BindPolicy {
            read_only,
            extra: extra - MsFlags::MS_RDONLY,
            devices: false,
        };
        let held = self.claim(&id, &target_path)?;
        let driver = Arc::clone(&self.driver);
        blocking(move || {
            let _held = held;
            let kubelet_dir = &driver.config.kubelet_dir;
            let Some(target) = Target::open(kubelet_dir, &id, "target_path", &req.target_path)?
            else {
                return Err(Error::Invalid(format!(
                    "volume {id}: the parent directory of target {} does not exist (the caller makes it)",
                    target_path.display()
                )));
            };
            let request = Publish {
                id,
                target,
                policy,
                requested,
                sharing,
                context: req.volume_context,
            };
            publish::publish(&driver, &request)
        })
        .await?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    /// Unmounts and removes the target. A missing or unmounted target is OK
    /// (also for an unknown volume, so kubelet never retries forever); a
    /// target still mounted after trying is an error, never OK.
    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> RpcResult<NodeUnpublishVolumeResponse> {
        let req = request.into_inner();
        let id = VolumeId::parse(&req.volume_id)?;
        let target_path = validate::host_path("target_path", &req.target_path)?;
        let held = self.claim(&id, &target_path)?;
        let driver = Arc::clone(&self.driver);
        blocking(move || {
            let _held = held;
            let kubelet_dir = &driver.config.kubelet_dir;
            match Target::open(kubelet_dir, &id, "target_path", &req.target_path)? {
                Some(target) => publish::unpublish(&driver, &id, &target),
                // No parent, so no target: nothing is published there.
                None => Ok(()),
            }
        })
        .await?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    /// Bytes and inodes of this volume (not of the whole pool).
    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> RpcResult<NodeGetVolumeStatsResponse> {
        let req = request.into_inner();
        let id = VolumeId::parse(&req.volume_id)?;
        if req.volume_path.is_empty() {
            return Err(Error::Invalid(format!("volume {id}: volume_path is missing")).into());
        }
        let driver = Arc::clone(&self.driver);
        let response = blocking(move || volume_stats(&driver, &id, &req.volume_path)).await?;
        Ok(Response::new(response))
    }

    /// What is wrong with the volume as this node sees it (nothing: an
    /// empty list), published or not. Static host paths keep no state here
    /// to check and answer an empty list.
    async fn node_get_volume_health(
        &self,
        request: Request<NodeGetVolumeHealthRequest>,
    ) -> RpcResult<NodeGetVolumeHealthResponse> {
        let id = VolumeId::parse(&request.into_inner().volume_id)?;
        let driver = Arc::clone(&self.driver);
        let health = blocking(move || {
            if id.as_str().starts_with(host_path::STATIC_ID_PREFIX) {
                return Ok(volume_health(&id, &[]));
            }
            health::check(&driver, &id).map(|findings| volume_health(&id, &findings))
        })
        .await?;
        Ok(Response::new(NodeGetVolumeHealthResponse {
            volume_health: Some(health),
        }))
    }

    /// What is wrong with the pools (nothing: an empty list).
    async fn node_get_storage_health(
        &self,
        _request: Request<NodeGetStorageHealthRequest>,
    ) -> RpcResult<NodeGetStorageHealthResponse> {
        let driver = Arc::clone(&self.driver);
        let backend_health = blocking(move || Ok(storage_health(&driver))).await?;
        Ok(Response::new(NodeGetStorageHealthResponse {
            backend_health,
        }))
    }

    /// Finishes an expansion where the volume is published (a loop device
    /// rereads its size, a filesystem grows online). A capacity larger than
    /// the volume's is first granted here, so a controller without the
    /// node's disks can leave the whole job to this call.
    async fn node_expand_volume(
        &self,
        request: Request<NodeExpandVolumeRequest>,
    ) -> RpcResult<NodeExpandVolumeResponse> {
        let req = request.into_inner();
        let id = VolumeId::parse(&req.volume_id)?;
        if req.volume_path.is_empty() {
            return Err(Error::Invalid(format!("volume {id}: volume_path is missing")).into());
        }
        let range = validate::capacity(req.capacity_range.as_ref())?;
        let held = self.driver.guards.claim(format!("volume {id}"))?;
        let driver = Arc::clone(&self.driver);
        let capacity = blocking(move || {
            let _held = held;
            let record = driver.volume(&id)?.record;
            published_source(&driver, &record, &req.volume_path)?;
            let (record, _) = lifecycle::expand(&driver, &id, range)?;
            let pool = driver.pool(Some(&record.pool))?;
            record.kind.backend().expand_on_node(pool, &record)?;
            failpoint::hit("node-expand:done");
            Ok(record.capacity_bytes)
        })
        .await?;
        Ok(Response::new(NodeExpandVolumeResponse {
            capacity_bytes: wire_bytes(capacity),
        }))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<NodeGetCapabilitiesRequest>,
    ) -> RpcResult<NodeGetCapabilitiesResponse> {
        let capabilities = CAPABILITIES
            .into_iter()
            .map(|t| NodeServiceCapability {
                r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })),
            })
            .collect();
        Ok(Response::new(NodeGetCapabilitiesResponse { capabilities }))
    }

    async fn node_get_info(
        &self,
        _request: Request<NodeGetInfoRequest>,
    ) -> RpcResult<NodeGetInfoResponse> {
        let config = &self.driver.config;
        Ok(Response::new(NodeGetInfoResponse {
            node_id: config.node_id.clone(),
            max_volumes_per_node: wire_bytes(config.max_volumes),
            accessible_topology: Some(self.driver.topology()),
        }))
    }
}

/// What the volume is served from, if it is published at `raw_path` (the
/// mount there is of this very source); NOT_FOUND otherwise. Sets nothing up.
fn published_source(driver: &Driver, record: &VolumeRecord, raw_path: &str) -> Result<OwnedFd> {
    let id = &record.id;
    let not_here = || {
        Error::Unknown(format!(
            "volume {id} is not published at {}",
            Echo(raw_path)
        ))
    };
    let path = target::volume_path(&driver.config.kubelet_dir, "volume_path", raw_path)
        .map_err(|_| not_here())?;
    let mounter = driver.mounter();
    let state = mounter.path_state(id, &path)?.ok_or_else(not_here)?;
    let access = if state.file_type == SFlag::S_IFDIR {
        Access::Mount
    } else {
        Access::Block {
            read_only: mounter.path_read_only(id, &path)?,
        }
    };
    let pool = driver.pool(Some(&record.pool))?;
    let source = record
        .kind
        .backend()
        .open_existing(pool, record, access)?
        .ok_or_else(not_here)?;
    let identity =
        beneath::identity(&source).context(|| format!("volume {id}: stat the volume source"))?;
    if identity != (state.dev, state.ino) {
        return Err(not_here());
    }
    Ok(source)
}

/// Usage of a published volume. A `volume_path` where this volume is not
/// mounted (missing, relative, or holding something else) is NOT_FOUND; a
/// volume whose backing is gone or failing is FAILED_PRECONDITION naming
/// what is wrong (its health, which kubelets before 1.37 see only so).
fn volume_stats(
    driver: &Driver,
    id: &VolumeId,
    raw_path: &str,
) -> Result<NodeGetVolumeStatsResponse> {
    let volume = driver.volume(id)?;
    let record = &volume.record;
    let pool = driver.pool(Some(&record.pool))?;
    let findings = health::check(driver, id)?;
    let unusable: Vec<&str> = findings
        .iter()
        .filter(|f| f.reason.severity() != Severity::Degraded)
        .map(|f| f.message.as_str())
        .collect();
    if !unusable.is_empty() {
        return Err(Error::WrongState(unusable.join("; ")));
    }
    let source = published_source(driver, record, raw_path)?;
    let stats = record.kind.backend().stats(pool, record, &source)?;
    let usage = |unit: Unit, total: u64, used: u64, available: u64| VolumeUsage {
        total: wire_bytes(total),
        used: wire_bytes(used),
        available: wire_bytes(available),
        unit: unit as i32,
    };
    Ok(NodeGetVolumeStatsResponse {
        // Inodes only where they are known (not for raw devices or qgroups).
        usage: [
            (
                Unit::Bytes,
                stats.bytes_total,
                stats.bytes_used,
                stats.bytes_available,
            ),
            (
                Unit::Inodes,
                stats.inodes_total,
                stats.inodes_used,
                stats.inodes_available,
            ),
        ]
        .into_iter()
        .filter(|(unit, total, ..)| *unit == Unit::Bytes || *total > 0)
        .map(|(unit, total, used, available)| usage(unit, total, used, available))
        .collect(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::kind::KindName;
    use crate::testing::{self, TestDriver};

    #[test]
    fn stats_answer_only_where_the_volume_is_published() {
        let t = TestDriver::open(|_| {});
        let id = lifecycle::create(&t.driver, testing::new_volume("v", KindName::Directory, 0))
            .unwrap()
            .id;
        let path = t.target_path("pod-a");
        let shown = path.to_str().unwrap();
        let request = Publish {
            id: id.clone(),
            target: Target::open(&t.kubelet_dir, &id, "target_path", shown)
                .unwrap()
                .unwrap(),
            policy: BindPolicy {
                read_only: false,
                extra: MsFlags::empty(),
                devices: false,
            },
            requested: testing::mount_access(),
            sharing: crate::validate::Sharing::Shared,
            context: HashMap::new(),
        };
        let not_found = |raw: &str| match volume_stats(&t.driver, &id, raw) {
            Err(err @ Error::Unknown(_)) => err.to_string(),
            other => panic!("{raw}: {other:?}"),
        };
        // Made, but nothing mounted there yet.
        std::fs::create_dir(&path).unwrap();
        assert!(not_found(shown).contains("is not published at"));
        std::fs::remove_dir(&path).unwrap();
        publish::publish(&t.driver, &request).unwrap();
        let stats = volume_stats(&t.driver, &id, shown).unwrap();
        assert_eq!(stats.usage[0].unit, Unit::Bytes as i32);
        not_found(t.target_path("pod-b").to_str().unwrap());
        not_found("/etc");
        not_found("relative/path");
    }
}
