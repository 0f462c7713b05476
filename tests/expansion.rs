//! Online expansion of every kind through ControllerExpandVolume and
//! NodeExpandVolume, while the volume is published.

mod common;

use std::io::Write;
use std::path::Path;

use common::{TestDriver, assert_code, create_request_with, mount_capability, publish_request};
use hostpath_csi::csi::volume_capability::access_mode::Mode;
use hostpath_csi::csi::volume_capability::{AccessType, BlockVolume};
use hostpath_csi::csi::{
    CapacityRange, ControllerExpandVolumeRequest, ControllerExpandVolumeResponse,
    GetCapacityRequest, NodeExpandVolumeRequest,
};
use tonic::Code;

async fn create(d: &mut TestDriver, name: &str, bytes: i64, params: &[(&str, &str)]) -> String {
    let request = create_request_with(name, bytes, params);
    d.create_from(request).await
}

async fn expand(
    d: &mut TestDriver,
    id: &str,
    bytes: i64,
) -> Result<ControllerExpandVolumeResponse, tonic::Status> {
    let request = ControllerExpandVolumeRequest {
        volume_id: id.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    Ok(d.csi
        .controller
        .controller_expand_volume(request)
        .await?
        .into_inner())
}

async fn expand_on_node(
    d: &mut TestDriver,
    id: &str,
    path: &str,
    bytes: i64,
) -> Result<i64, tonic::Status> {
    let request = NodeExpandVolumeRequest {
        volume_id: id.into(),
        volume_path: path.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    Ok(d.csi
        .node
        .node_expand_volume(request)
        .await?
        .into_inner()
        .capacity_bytes)
}

/// Whether this test process holds CAP_SYS_RESOURCE (bit 24 of CapEff).
fn has_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap();
    u64::from_str_radix(hex.trim(), 16).unwrap() & (1 << 24) != 0
}

fn write(path: &Path, bytes: usize) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(&vec![3u8; bytes])?;
    file.sync_all()
}

#[tokio::test]
async fn a_memory_volume_grows_online() {
    let mut d = TestDriver::start().await;
    let id = create(&mut d, "mem-grow", 1 << 20, &[("kind", "memory")]).await;
    let target = d.target("pod-mem-grow");
    d.publish(&id, &target, false).await.unwrap();
    let file = Path::new(&target).join("data");
    assert_eq!(
        write(&file, 3 << 20).unwrap_err().raw_os_error(),
        Some(libc::ENOSPC)
    );
    let grown = expand(&mut d, &id, 4 << 20).await.unwrap();
    assert_eq!(
        (grown.capacity_bytes, grown.node_expansion_required),
        (4 << 20, false)
    );
    write(&file, 3 << 20).unwrap();
    assert_eq!(d.byte_usage(&id, &target).await.total, 4 << 20);
    assert_eq!(
        expand(&mut d, &id, 4 << 20).await.unwrap().capacity_bytes,
        4 << 20
    );
    assert_code(
        expand(&mut d, &id, 2 << 20).await,
        Code::OutOfRange,
        "shrinking",
    );
    // The harness's memory budget is 256 MiB.
    assert_code(
        expand(&mut d, &id, 512 << 20).await,
        Code::ResourceExhausted,
        "memory budget",
    );
    d.unpublish(&id, &target).await.unwrap();
}

#[tokio::test]
async fn an_ext4_file_volume_grows_online_and_takes_the_larger_write() {
    let mut d = TestDriver::start().await;
    let id = create(&mut d, "file-grow", 16 << 20, &[("kind", "file")]).await;
    let target = d.target("pod-file-grow");
    d.publish(&id, &target, false).await.unwrap();
    let file = Path::new(&target).join("data");
    assert_eq!(
        write(&file, 48 << 20).unwrap_err().raw_os_error(),
        Some(libc::ENOSPC)
    );
    std::fs::remove_file(&file).unwrap();

    let grown = expand(&mut d, &id, 64 << 20).await.unwrap();
    assert_eq!(
        (grown.capacity_bytes, grown.node_expansion_required),
        (64 << 20, true)
    );
    if !has_sys_resource() {
        assert!(
            !common::full_kernel(),
            "the full kernel's root has CAP_SYS_RESOURCE"
        );
        // The kernel grows a mounted ext4 only for CAP_SYS_RESOURCE, which
        // some sandboxes withhold even from root: the driver says so.
        assert_code(
            expand_on_node(&mut d, &id, &target, 64 << 20).await,
            Code::FailedPrecondition,
            "CAP_SYS_RESOURCE",
        );
        // Kubelet retries after the pod comes back: the filesystem grew,
        // offline, at the mount.
        d.unpublish(&id, &target).await.unwrap();
        d.publish(&id, &target, false).await.unwrap();
    }
    assert_eq!(
        expand_on_node(&mut d, &id, &target, 64 << 20)
            .await
            .unwrap(),
        64 << 20
    );
    assert_eq!(
        expand_on_node(&mut d, &id, &target, 64 << 20)
            .await
            .unwrap(),
        64 << 20
    );
    write(&file, 48 << 20).unwrap();
    let bytes = d.byte_usage(&id, &target).await;
    assert!(
        bytes.total > 56 << 20 && bytes.total <= 64 << 20,
        "{bytes:?}"
    );
    d.unpublish(&id, &target).await.unwrap();
    assert!(d.scratch.loop_devices().is_empty());
}

#[tokio::test]
async fn an_xfs_file_volume_and_a_raw_block_volume_grow_online() {
    let mut d = TestDriver::start().await;
    let id = create(
        &mut d,
        "xfs-grow",
        300 << 20,
        &[("kind", "file"), ("fsType", "xfs")],
    )
    .await;
    let target = d.target("pod-xfs-grow");
    d.publish(&id, &target, false).await.unwrap();
    let before = d.byte_usage(&id, &target).await.total;
    expand(&mut d, &id, 400 << 20).await.unwrap();
    expand_on_node(&mut d, &id, &target, 400 << 20)
        .await
        .unwrap();
    let after = d.byte_usage(&id, &target).await.total;
    assert!(after > before + (90 << 20), "{before} -> {after}");
    d.unpublish(&id, &target).await.unwrap();

    let mut request = create_request_with("block-grow", 8 << 20, &[("kind", "file")]);
    let mut block = mount_capability(Mode::SingleNodeWriter);
    block.access_type = Some(AccessType::Block(BlockVolume {}));
    request.volume_capabilities = vec![block.clone()];
    let raw = d.create_from(request).await;
    let device_target = d.target("pod-block-grow");
    let mut publish = publish_request(&raw, &device_target, false);
    publish.volume_capability = Some(block);
    d.csi.node.node_publish_volume(publish).await.unwrap();
    expand(&mut d, &raw, 16 << 20).await.unwrap();
    expand_on_node(&mut d, &raw, &device_target, 16 << 20)
        .await
        .unwrap();
    let device = std::fs::File::open(&device_target).unwrap();
    let size = std::io::Seek::seek(&mut &device, std::io::SeekFrom::End(0)).unwrap();
    assert_eq!(size, 16 << 20);
    drop(device);
    d.unpublish(&raw, &device_target).await.unwrap();
    assert!(d.scratch.loop_devices().is_empty());
}

#[tokio::test]
async fn expansion_counts_against_capacity_and_names_its_errors() {
    // A pool of its own, so that other tests' writes do not move its free space.
    let scratch = common::Scratch::new();
    let pool = scratch.path().join("own");
    scratch.mount_tmpfs(&pool, "2g");
    let mut d = TestDriver::start_in(scratch, move |c| c.pools[0].1 = pool).await;
    let id = create(&mut d, "dir-grow", 1 << 20, &[]).await;
    let capacity = |d: &mut TestDriver| {
        let mut controller = d.csi.controller.clone();
        async move {
            controller
                .get_capacity(GetCapacityRequest::default())
                .await
                .unwrap()
                .into_inner()
                .available_capacity
        }
    };
    let before = capacity(&mut d).await;
    let grown = expand(&mut d, &id, 1 << 30).await.unwrap();
    assert_eq!(
        (grown.capacity_bytes, grown.node_expansion_required),
        (1 << 30, false)
    );
    let drop = before - capacity(&mut d).await;
    assert_eq!(
        drop,
        (1 << 30) - (1 << 20),
        "the promise grew by the difference"
    );

    let missing = ControllerExpandVolumeRequest {
        volume_id: id.clone(),
        ..Default::default()
    };
    assert_code(
        d.csi.controller.controller_expand_volume(missing).await,
        Code::InvalidArgument,
        "capacity_range",
    );
    assert_code(
        expand(&mut d, "vol-none", 1 << 20).await,
        Code::NotFound,
        "vol-none",
    );
    assert_code(
        expand(&mut d, &id, i64::MAX).await,
        Code::OutOfRange,
        "left in pool default",
    );
    let target = d.target("pod-not-published");
    assert_code(
        expand_on_node(&mut d, &id, &target, 1 << 30).await,
        Code::NotFound,
        "not published",
    );
    assert_code(
        expand_on_node(&mut d, &id, "", 1 << 30).await,
        Code::InvalidArgument,
        "volume_path",
    );

    // NodeExpandVolume may leave the size out: it then finishes at the volume's.
    let target = d.target("pod-grown");
    d.publish(&id, &target, false).await.unwrap();
    let no_size = NodeExpandVolumeRequest {
        volume_id: id.clone(),
        volume_path: target.clone(),
        ..Default::default()
    };
    let answered = d
        .csi
        .node
        .node_expand_volume(no_size)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answered.capacity_bytes, 1 << 30);
    d.unpublish(&id, &target).await.unwrap();
}

#[tokio::test]
async fn file_volumes_expanded_while_unpublished_come_back_larger() {
    let mut d = TestDriver::start().await;
    for (name, fs, from, to) in [
        ("ext4-offline", "ext4", 16 << 20, 64 << 20),
        ("xfs-offline", "xfs", 300 << 20, 400 << 20),
    ] {
        let id = create(&mut d, name, from, &[("kind", "file"), ("fsType", fs)]).await;
        let grown = expand(&mut d, &id, to).await.unwrap();
        assert_eq!(grown.capacity_bytes, to);
        assert_eq!(
            expand(&mut d, &id, to).await.unwrap().capacity_bytes,
            to,
            "a retry converges"
        );
        let target = d.target(name);
        d.publish(&id, &target, false).await.unwrap();
        // Nothing left to grow: the node step succeeds without privileges.
        assert_eq!(expand_on_node(&mut d, &id, &target, to).await.unwrap(), to);
        let total = d.byte_usage(&id, &target).await.total;
        assert!(total > from && total <= to, "{fs}: {total}");
        if fs == "ext4" {
            write(&Path::new(&target).join("data"), 48 << 20).unwrap();
        }
        d.unpublish(&id, &target).await.unwrap();
    }
    assert!(d.scratch.loop_devices().is_empty());
}
