//! Identity service through the real gRPC interface.

mod common;

use common::{DRIVER, Scratch, TestDriver};
use hostpath_csi::csi::plugin_capability::{Type, service};
use hostpath_csi::csi::{GetPluginCapabilitiesRequest, GetPluginInfoRequest, ProbeRequest};

#[tokio::test]
async fn plugin_info_names_the_driver_and_version() {
    let mut d = TestDriver::start().await;
    for _ in 0..2 {
        let info = d
            .csi
            .identity
            .get_plugin_info(GetPluginInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.name, DRIVER);
        assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    }
}

#[tokio::test]
async fn capabilities_are_controller_and_topology() {
    let mut d = TestDriver::start().await;
    let first = d
        .csi
        .identity
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let caps = d
        .csi
        .identity
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    assert_eq!(caps, first.capabilities, "a repeat answers the same");
    let online = caps.iter().any(|c| {
        matches!(&c.r#type, Some(Type::VolumeExpansion(e))
            if e.r#type == hostpath_csi::csi::plugin_capability::volume_expansion::Type::Online as i32)
    });
    assert!(online, "online expansion is offered");
    let mut services: Vec<i32> = caps
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(Type::Service(s)) => Some(s.r#type),
            _ => None,
        })
        .collect();
    services.sort();
    assert_eq!(
        services,
        vec![
            service::Type::ControllerService as i32,
            service::Type::VolumeAccessibilityConstraints as i32,
            service::Type::SnapshotAccessibilityConstraints as i32
        ]
    );
}

#[tokio::test]
async fn probe_is_ready_only_while_every_pool_is_writable() {
    let scratch = Scratch::new();
    let fast = scratch.path().join("fast");
    scratch.mount_tmpfs(&fast, "4m");
    let mut d = TestDriver::start_in(scratch, |c| {
        c.pools.push((
            hostpath_csi::ids::PoolName::parse("fast").unwrap(),
            fast.clone(),
        ));
    })
    .await;
    let probe = d
        .csi
        .identity
        .probe(ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(true));
    assert_eq!(
        d.csi
            .identity
            .probe(ProbeRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready,
        Some(true)
    );

    // The second pool's filesystem turns read-only: the driver is not ready.
    nix::mount::mount(
        None::<&str>,
        &fast,
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .unwrap();
    common::assert_code(
        d.csi.identity.probe(ProbeRequest {}).await,
        tonic::Code::FailedPrecondition,
        "pool fast",
    );
}

#[tokio::test]
async fn capabilities_not_offered_answer_unimplemented() {
    use hostpath_csi::csi::{ControllerPublishVolumeRequest, NodeStageVolumeRequest};
    use tonic::Code;
    let mut d = TestDriver::start().await;
    let c = &mut d.csi.controller;
    let codes = [
        c.controller_publish_volume(ControllerPublishVolumeRequest::default())
            .await
            .map(drop),
        d.csi
            .node
            .node_stage_volume(NodeStageVolumeRequest::default())
            .await
            .map(drop),
    ];
    for result in codes {
        assert_eq!(result.unwrap_err().code(), Code::Unimplemented);
    }
}
