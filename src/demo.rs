//! `hostpath-csi demo`: a driver on a temporary pool and socket, and one
//! volume walked through create → publish → write → stats → unpublish → delete,
//! each call printed with its gRPC result.

use std::fmt::Debug;
use std::sync::Arc;

use crate::client::CsiClient;
use crate::csi::volume_capability::access_mode::Mode;
use crate::csi::volume_capability::{AccessMode, AccessType, MountVolume};
use crate::csi::{
    CapacityRange, CreateVolumeRequest, DeleteVolumeRequest, GetCapacityRequest,
    GetPluginInfoRequest, NodeGetVolumeStatsRequest, NodePublishVolumeRequest,
    NodeUnpublishVolumeRequest, ProbeRequest, VolumeCapability,
};
use crate::driver::DriverConfig;
use crate::ids::PoolName;
use crate::server;
use crate::startup;

/// Prints a call and its outcome; stops the demo at the first failure.
fn show<T: Debug>(
    step: &str,
    outcome: Result<tonic::Response<T>, tonic::Status>,
) -> Result<T, String> {
    match outcome {
        Ok(response) => {
            let body = response.into_inner();
            println!("==> {step}: OK\n    {body:?}");
            Ok(body)
        }
        Err(status) => {
            println!("==> {step}: {:?}: {}", status.code(), status.message());
            Err(format!("{step} failed: {}", status.message()))
        }
    }
}

pub async fn run() -> Result<(), String> {
    let scratch = tempfile::tempdir().map_err(|e| format!("create a temporary directory: {e}"))?;
    let pool_path = scratch.path().join("pool");
    std::fs::create_dir(&pool_path).map_err(|e| e.to_string())?;
    let socket = scratch.path().join("csi.sock");
    let config = DriverConfig {
        driver_name: crate::cli::DEFAULT_DRIVER_NAME.into(),
        node_id: "demo-node".into(),
        pools: vec![(
            PoolName::parse("default").expect("valid name"),
            pool_path.clone(),
        )],
        max_volumes: 0,
        enable_quotas: false,
        memory_budget: 1 << 30,
        allowed_host_paths: Vec::new(),
        kubelet_dir: scratch.path().to_owned(),
        nearly_full_percent: 90,
        volume_metrics: false,
    };
    println!("pool {} · socket {}", pool_path.display(), socket.display());
    let driver = Arc::new(startup::open(config).map_err(|e| e.to_string())?);
    let listener = server::listen(&socket).map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served_socket = socket.clone();
    let serving = tokio::spawn(async move {
        server::serve(driver, listener, &served_socket, async {
            stopped.await.ok();
        })
        .await
    });
    // Where kubelet would publish it for a pod (its parent is kubelet's to make).
    let parent = scratch
        .path()
        .join("pods/demo-pod/volumes/kubernetes.io~csi/demo-pv");
    std::fs::create_dir_all(&parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    let target = parent.join("mount");
    let walked = walk(&socket, &target).await;
    // If a step failed after publishing, take the mount down before the
    // scratch directory is removed.
    nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).ok();
    stop.send(()).ok();
    serving
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    walked
}

async fn walk(socket: &std::path::Path, target: &std::path::Path) -> Result<(), String> {
    let mut csi = CsiClient::connect(socket.to_owned())
        .await
        .map_err(|e| format!("connect to {}: {e}", socket.display()))?;
    show(
        "GetPluginInfo",
        csi.identity.get_plugin_info(GetPluginInfoRequest {}).await,
    )?;
    show("Probe", csi.identity.probe(ProbeRequest {}).await)?;
    show(
        "GetCapacity",
        csi.controller
            .get_capacity(GetCapacityRequest::default())
            .await,
    )?;
    let capability = VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    };
    let created = show(
        "CreateVolume demo-claim (64 MiB)",
        csi.controller
            .create_volume(CreateVolumeRequest {
                name: "demo-claim".into(),
                capacity_range: Some(CapacityRange {
                    required_bytes: 64 << 20,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![capability.clone()],
                ..Default::default()
            })
            .await,
    )?;
    let volume_id = created.volume.map(|v| v.volume_id).unwrap_or_default();
    let target_path = target.to_string_lossy().into_owned();
    show(
        "NodePublishVolume",
        csi.node
            .node_publish_volume(NodePublishVolumeRequest {
                volume_id: volume_id.clone(),
                target_path: target_path.clone(),
                volume_capability: Some(capability),
                ..Default::default()
            })
            .await,
    )?;
    let file = target.join("hello.txt");
    std::fs::write(&file, vec![b'x'; 1 << 20])
        .map_err(|e| format!("write {}: {e}", file.display()))?;
    println!("==> wrote 1 MiB to {}", file.display());
    show(
        "NodeGetVolumeStats",
        csi.node
            .node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: volume_id.clone(),
                volume_path: target_path.clone(),
                staging_target_path: String::new(),
            })
            .await,
    )?;
    show(
        "NodeUnpublishVolume",
        csi.node
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: volume_id.clone(),
                target_path,
            })
            .await,
    )?;
    show(
        "DeleteVolume",
        csi.controller
            .delete_volume(DeleteVolumeRequest {
                volume_id,
                secrets: Default::default(),
            })
            .await,
    )?;
    Ok(())
}
