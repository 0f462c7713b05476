//! CSI Node: bind-mount volumes onto the targets kubelet asks for, take them
//! down again, and report usage and health.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sys::stat::{Mode, SFlag};
use nix::sys::statvfs::{FsFlags, statvfs};
use tonic::{Request, Response};

use super::{RpcResult, abnormal, healthy};
use crate::beneath;
use crate::csi::node_server::Node;
use crate::csi::node_service_capability::{Rpc, Type, rpc};
use crate::csi::volume_usage::Unit;
use crate::csi::{
    NodeGetCapabilitiesRequest, NodeGetCapabilitiesResponse, NodeGetInfoRequest,
    NodeGetInfoResponse, NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse,
    NodePublishVolumeRequest, NodePublishVolumeResponse, NodeServiceCapability,
    NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse, VolumeUsage,
};
use crate::driver::{Driver, blocking};
use crate::error::{Error, Result, SysContext};
use crate::ids::VolumeId;
use crate::mounts;
use crate::validate;

/// Node capabilities this driver offers.
const CAPABILITIES: [rpc::Type; 3] = [
    rpc::Type::GetVolumeStats,
    rpc::Type::VolumeCondition,
    rpc::Type::SingleNodeMultiWriter,
];

/// The key kubelet sets in volume_context for CSI ephemeral inline volumes.
const EPHEMERAL_KEY: &str = "csi.storage.k8s.io/ephemeral";

/// How often unpublish unmounts a target with stacked mounts before giving up.
const MAX_STACKED_MOUNTS: usize = 16;

pub struct NodeService {
    driver: Arc<Driver>,
}

impl NodeService {
    pub fn new(driver: Arc<Driver>) -> Self {
        NodeService { driver }
    }
}

/// A checked NodePublishVolume request.
struct Publish {
    id: VolumeId,
    target: PathBuf,
    read_only: bool,
    extra_flags: MsFlags,
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
        let target = validate::host_path("target_path", &req.target_path)?;
        let cap = req.volume_capability.as_ref().ok_or_else(|| {
            Error::InvalidArgument(format!("volume {id}: volume_capability is missing"))
        })?;
        let mount = validate::capability(cap)
            .map_err(|m| Error::InvalidArgument(format!("volume {id}: {m}")))?;
        if req
            .volume_context
            .get(EPHEMERAL_KEY)
            .is_some_and(|v| v == "true")
        {
            return Err(Error::InvalidArgument(format!(
                "volume {id}: CSI ephemeral inline volumes are not supported yet"
            ))
            .into());
        }
        let extra_flags = validate::mount_flags(&mount.mount_flags)?;
        let read_only = req.readonly
            || validate::is_reader_only(cap)
            || extra_flags.contains(MsFlags::MS_RDONLY);
        let publish = Publish {
            id,
            target,
            read_only,
            extra_flags: extra_flags - MsFlags::MS_RDONLY,
        };
        let held = self.driver.guards.claim(format!("volume {}", publish.id))?;
        let driver = Arc::clone(&self.driver);
        blocking(move || {
            let _held = held;
            publish_volume(&driver, &publish)
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
        let target = validate::host_path("target_path", &req.target_path)?;
        let held = self.driver.guards.claim(format!("volume {id}"))?;
        let driver = Arc::clone(&self.driver);
        blocking(move || {
            let _held = held;
            unpublish_volume(&id, &target)?;
            if let Some(volume) = driver.table().get_mut(&id) {
                volume.published.remove(&target);
            }
            Ok(())
        })
        .await?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    /// Bytes and inodes of this volume (not of the whole pool) and its health.
    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> RpcResult<NodeGetVolumeStatsResponse> {
        let req = request.into_inner();
        let id = VolumeId::parse(&req.volume_id)?;
        if req.volume_path.is_empty() {
            return Err(
                Error::InvalidArgument(format!("volume {id}: volume_path is missing")).into(),
            );
        }
        let driver = Arc::clone(&self.driver);
        let response = blocking(move || volume_stats(&driver, &id, &req.volume_path)).await?;
        Ok(Response::new(response))
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
            max_volumes_per_node: i64::try_from(config.max_volumes).unwrap_or(i64::MAX),
            accessible_topology: Some(self.driver.topology()),
        }))
    }
}

fn publish_volume(driver: &Driver, publish: &Publish) -> Result<()> {
    let Publish { id, target, .. } = publish;
    let record = driver.volume(id)?.record;
    let pool = driver.pool(Some(&record.pool))?;
    let source = record
        .kind
        .backend()
        .open_source(pool, id)?
        .ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "volume {id}: {}/volumes/{id} is missing",
                pool.shown()
            ))
        })?;
    let shown = target.display();
    let created =
        match beneath::path_state(target).context(|| format!("volume {id}: stat {shown}"))? {
            Some(state) if state.mount_root => {
                return confirm_existing(publish, &source, state)
                    .map(|()| mark_published(driver, publish));
            }
            Some(state) if state.file_type != SFlag::S_IFDIR => {
                return Err(Error::AlreadyExists(format!(
                    "volume {id}: target {shown} exists and is not a directory"
                )));
            }
            Some(_) => false,
            None => {
                nix::unistd::mkdir(target.as_path(), Mode::from_bits_truncate(0o750))
                    .context(|| format!("volume {id}: create target {shown}"))?;
                true
            }
        };
    let mounted = open_target(id, target).and_then(|target_fd| {
        mounts::bind(
            id.as_str(),
            &source,
            &target_fd,
            target,
            publish.read_only,
            publish.extra_flags,
        )
    });
    if let Err(err) = mounted {
        if created {
            std::fs::remove_dir(target).ok();
        }
        return Err(err);
    }
    tracing::info!(volume = %id, target = %shown, read_only = publish.read_only, "volume published");
    mark_published(driver, publish);
    Ok(())
}

/// A target that is already a mount: fine if it is this volume with the
/// same read-only setting, ALREADY_EXISTS otherwise. A bind that a crash left
/// without its nosuid/nodev remount is finished here with the flags asked for.
fn confirm_existing(publish: &Publish, source: &OwnedFd, state: beneath::PathState) -> Result<()> {
    let Publish {
        id,
        target,
        read_only,
        ..
    } = publish;
    let shown = target.display();
    let source_identity =
        beneath::identity(source).context(|| format!("volume {id}: stat volume directory"))?;
    if source_identity != (state.dev, state.ino) {
        return Err(Error::AlreadyExists(format!(
            "volume {id}: target {shown} already holds another mount"
        )));
    }
    let flags = statvfs(target.as_path())
        .context(|| format!("volume {id}: statvfs {shown}"))?
        .flags();
    if !flags.contains(FsFlags::ST_NOSUID | FsFlags::ST_NODEV) {
        tracing::warn!(volume = %id, target = %shown, "finishing a bind mount left half-done");
        return mounts::restrict(id.as_str(), source, target, *read_only, publish.extra_flags);
    }
    let mounted_read_only = flags.contains(FsFlags::ST_RDONLY);
    if mounted_read_only != *read_only {
        return Err(Error::AlreadyExists(format!(
            "volume {id}: already published at {shown} with readonly={mounted_read_only}, asked for readonly={read_only}"
        )));
    }
    Ok(())
}

fn mark_published(driver: &Driver, publish: &Publish) {
    if let Some(volume) = driver.table().get_mut(&publish.id) {
        volume.published.insert(publish.target.clone());
    }
}

/// Opens the target itself (not a symlink in its place) for mounting onto.
fn open_target(id: &VolumeId, target: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        target,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .context(|| format!("volume {id}: open target {}", target.display()))
}

fn unpublish_volume(id: &VolumeId, target: &Path) -> Result<()> {
    let shown = target.display();
    for _ in 0..MAX_STACKED_MOUNTS {
        match beneath::path_state(target).context(|| format!("volume {id}: stat {shown}"))? {
            None => return Ok(()),
            Some(state) if state.mount_root => mounts::unmount(id.as_str(), target)?,
            Some(state) => return remove_target(id, target, state.file_type),
        }
    }
    Err(Error::Internal(format!(
        "volume {id}: target {shown} is still mounted after {MAX_STACKED_MOUNTS} unmounts"
    )))
}

/// Removes the (unmounted) target this driver created at publish.
fn remove_target(id: &VolumeId, target: &Path, file_type: SFlag) -> Result<()> {
    let shown = target.display();
    let removed = match file_type {
        SFlag::S_IFDIR => std::fs::remove_dir(target),
        SFlag::S_IFREG => std::fs::remove_file(target),
        _ => {
            return Err(Error::FailedPrecondition(format!(
                "volume {id}: target {shown} is neither a directory nor a file; left in place"
            )));
        }
    };
    match removed {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other.context(|| format!("volume {id}: remove target {shown}")),
    }
}

/// Usage of a published volume. A `volume_path` where this volume is not
/// mounted (missing, relative, or holding something else) is NOT_FOUND.
fn volume_stats(
    driver: &Driver,
    id: &VolumeId,
    raw_path: &str,
) -> Result<NodeGetVolumeStatsResponse> {
    let record = driver.volume(id)?.record;
    let path = validate::host_path("volume_path", raw_path)
        .map_err(|_| Error::NotFound(format!("volume {id} is not published at {raw_path:?}")))?;
    let shown = path.display();
    let state = beneath::path_state(&path)
        .context(|| format!("volume {id}: stat {shown}"))?
        .ok_or_else(|| {
            Error::NotFound(format!("volume {id}: volume_path {shown} does not exist"))
        })?;
    let pool = driver.pool(Some(&record.pool))?;
    let backend = record.kind.backend();
    let Some(source) = backend.open_source(pool, id)? else {
        return Ok(NodeGetVolumeStatsResponse {
            usage: Vec::new(),
            volume_condition: Some(abnormal(format!(
                "volume {id}: {}/volumes/{id} is missing",
                pool.shown()
            ))),
        });
    };
    let identity =
        beneath::identity(&source).context(|| format!("volume {id}: stat volume directory"))?;
    if identity != (state.dev, state.ino) {
        return Err(Error::NotFound(format!(
            "volume {id} is not published at {shown}"
        )));
    }
    let used = backend.usage(pool, id, &source)?;
    let space = pool.space()?;
    let (bytes_total, bytes_available) = match record.capacity_bytes {
        0 => (used.bytes + space.free_bytes, space.free_bytes),
        capacity => (
            capacity,
            capacity.saturating_sub(used.bytes).min(space.free_bytes),
        ),
    };
    let usage = |unit: Unit, total: u64, used: u64, available: u64| VolumeUsage {
        total: i64::try_from(total).unwrap_or(i64::MAX),
        used: i64::try_from(used).unwrap_or(i64::MAX),
        available: i64::try_from(available).unwrap_or(i64::MAX),
        unit: unit as i32,
    };
    Ok(NodeGetVolumeStatsResponse {
        usage: vec![
            usage(Unit::Bytes, bytes_total, used.bytes, bytes_available),
            usage(
                Unit::Inodes,
                used.inodes + space.free_inodes,
                used.inodes,
                space.free_inodes,
            ),
        ],
        volume_condition: Some(healthy()),
    })
}
