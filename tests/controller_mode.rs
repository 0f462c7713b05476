//! The real binary in controller mode: no pools, Identity and expansion only.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hostpath_csi::client::CsiClient;
use hostpath_csi::csi::controller_service_capability::{Type, rpc};
use hostpath_csi::csi::{
    CapacityRange, ControllerExpandVolumeRequest, ControllerGetCapabilitiesRequest,
    CreateVolumeRequest, GetPluginInfoRequest, NodeGetInfoRequest, ProbeRequest,
};
use tonic::Code;

/// The driver process, killed when the test ends whatever happens.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

async fn start(dir: &std::path::Path) -> (Driver, CsiClient) {
    let socket = dir.join("controller.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_hostpath-csi"))
        .args([
            "serve",
            "--mode=controller",
            "--driver-name=hostpath-csi.dev",
        ])
        .arg(format!("--endpoint=unix://{}", socket.display()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let driver = Driver(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "controller mode never served");
        std::thread::sleep(Duration::from_millis(20));
    }
    (driver, CsiClient::connect(socket).await.unwrap())
}

#[tokio::test]
async fn controller_mode_approves_expansion_for_the_node_and_offers_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (_driver, mut csi) = start(dir.path()).await;
    let info = csi
        .identity
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "hostpath-csi.dev");
    assert_eq!(
        csi.identity
            .probe(ProbeRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready,
        Some(true)
    );
    let caps = csi
        .controller
        .controller_get_capabilities(ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    let offered: Vec<_> = caps
        .into_iter()
        .filter_map(|c| match c.r#type {
            Some(Type::Rpc(r)) => Some(r.r#type),
            _ => None,
        })
        .collect();
    assert_eq!(offered, vec![rpc::Type::ExpandVolume as i32]);

    let expand = |bytes: Option<i64>| ControllerExpandVolumeRequest {
        volume_id: "vol-0123".into(),
        capacity_range: bytes.map(|b| CapacityRange {
            required_bytes: b,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    let granted = csi
        .controller
        .controller_expand_volume(expand(Some(1 << 30)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (granted.capacity_bytes, granted.node_expansion_required),
        (1 << 30, true)
    );
    let again = csi
        .controller
        .controller_expand_volume(expand(Some(1 << 30)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, granted);
    let missing = csi
        .controller
        .controller_expand_volume(expand(None))
        .await
        .unwrap_err();
    assert_eq!(
        missing.code(),
        Code::InvalidArgument,
        "{}",
        missing.message()
    );

    let create = csi
        .controller
        .create_volume(CreateVolumeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(create.code(), Code::Unimplemented);
    let node = csi
        .node
        .node_get_info(NodeGetInfoRequest::default())
        .await
        .unwrap_err();
    assert_eq!(node.code(), Code::Unimplemented);
}
