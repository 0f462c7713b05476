//! Enforced capacity for directory volumes on a loop-backed btrfs pool that
//! the test makes: subvolumes with qgroup limits, O(1) usage, expansion.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Scratch, TestDriver, assert_code, create_request_with};
use hostpath_csi::csi::{
    CapacityRange, ControllerExpandVolumeRequest, DeleteVolumeRequest, GetCapacityRequest,
    NodeExpandVolumeRequest,
};
use hostpath_csi::loopdev::{self, Lifetime};
use tonic::Code;

/// Makes a 512 MiB btrfs image under the scratch directory and mounts it at
/// `<scratch>/btrfs` through a loop device (both undone when `scratch` drops).
fn btrfs_pool(scratch: &Scratch) -> PathBuf {
    let image = scratch.path().join("btrfs.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    let status = Command::new("mkfs.btrfs")
        .arg("-q")
        .arg(&image)
        .stdout(Stdio::null())
        .status()
        .expect("mkfs.btrfs is installed");
    assert!(status.success());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image)
        .unwrap();
    let attached = loopdev::attach(&file.into(), &image, Lifetime::UntilDetached, false).unwrap();
    let mount_point = scratch.path().join("btrfs");
    std::fs::create_dir(&mount_point).unwrap();
    nix::mount::mount(
        Some(&attached.device.path),
        &mount_point,
        Some("btrfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    mount_point
}

async fn start(enable_quotas: bool) -> TestDriver {
    let scratch = Scratch::new();
    let pool = btrfs_pool(&scratch);
    TestDriver::start_in(scratch, move |c| {
        c.pools[0].1 = pool;
        c.enable_quotas = enable_quotas;
    })
    .await
}

fn write(path: &Path, bytes: usize) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(&vec![5u8; bytes])?;
    file.sync_all()
}

async fn available(d: &mut TestDriver) -> i64 {
    d.csi
        .controller
        .get_capacity(GetCapacityRequest::default())
        .await
        .unwrap()
        .into_inner()
        .available_capacity
}

#[tokio::test]
async fn a_directory_volume_on_btrfs_is_held_to_its_capacity_and_grows() {
    let mut d = start(true).await;
    let before = available(&mut d).await;
    let request = create_request_with("enforced", 16 << 20, &[("enforce", "required")]);
    let id = d.create_from(request).await;
    let promised = before - available(&mut d).await;
    // A new subvolume already uses a few KiB of its own promise.
    assert!((promised - (16 << 20)).abs() < 1 << 20, "{promised}");

    let target = d.target("pod-quota");
    d.publish(&id, &target, false).await.unwrap();
    let delete = DeleteVolumeRequest {
        volume_id: id.clone(),
        secrets: Default::default(),
    };
    assert_code(
        d.csi.controller.delete_volume(delete.clone()).await,
        Code::FailedPrecondition,
        &target,
    );
    // A restart finds the publication from the mount table, on btrfs too.
    let mut d = d.restart().await;
    assert_code(
        d.csi.controller.delete_volume(delete).await,
        Code::FailedPrecondition,
        &target,
    );
    let err = write(&Path::new(&target).join("too-big"), 32 << 20).unwrap_err();
    assert!(
        matches!(err.raw_os_error(), Some(libc::EDQUOT | libc::ENOSPC)),
        "{err}"
    );
    std::fs::remove_file(Path::new(&target).join("too-big")).unwrap();
    write(&Path::new(&target).join("eight"), 8 << 20).unwrap();
    nix::unistd::sync();
    let bytes = d.byte_usage(&id, &target).await;
    assert_eq!(bytes.total, 16 << 20);
    assert!((bytes.used - (8 << 20)).abs() < 1 << 20, "{bytes:?}");

    let grow = ControllerExpandVolumeRequest {
        volume_id: id.clone(),
        capacity_range: Some(CapacityRange {
            required_bytes: 64 << 20,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    d.csi
        .controller
        .controller_expand_volume(grow)
        .await
        .unwrap();
    let on_node = NodeExpandVolumeRequest {
        volume_id: id.clone(),
        volume_path: target.clone(),
        capacity_range: Some(CapacityRange {
            required_bytes: 64 << 20,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    d.csi.node.node_expand_volume(on_node).await.unwrap();
    write(&Path::new(&target).join("forty-eight"), 48 << 20).unwrap();

    d.unpublish(&id, &target).await.unwrap();
    // btrfs shows written and freed space in statfs after a commit.
    nix::unistd::sync();
    let before_delete = available(&mut d).await;
    let delete = DeleteVolumeRequest {
        volume_id: id.clone(),
        secrets: Default::default(),
    };
    d.csi.controller.delete_volume(delete).await.unwrap();
    common::wait_trash_empty(&d.pool());
    nix::unistd::sync();
    let after_delete = available(&mut d).await;
    assert!(
        after_delete > before_delete + (60 << 20),
        "the promise is released: {before_delete} -> {after_delete}"
    );
}

#[tokio::test]
async fn enforcement_follows_the_pool_and_the_parameter() {
    // Quotas off and not to be turned on: required is refused, best effort tracks.
    let mut d = start(false).await;
    assert_code(
        d.csi
            .controller
            .create_volume(create_request_with(
                "must",
                16 << 20,
                &[("enforce", "required")],
            ))
            .await,
        Code::FailedPrecondition,
        "btrfs quotas are off",
    );
    let id = d.create("tracked", 16 << 20).await;
    let target = d.target("pod-tracked");
    d.publish(&id, &target, false).await.unwrap();
    write(&Path::new(&target).join("over"), 32 << 20).unwrap();
    d.unpublish(&id, &target).await.unwrap();

    // Quotas on, but enforce=none: a plain, unlimited directory.
    let mut d = start(true).await;
    let request = create_request_with("free", 16 << 20, &[("enforce", "none")]);
    let id = d.create_from(request).await;
    let target = d.target("pod-free");
    d.publish(&id, &target, false).await.unwrap();
    write(&Path::new(&target).join("over"), 32 << 20).unwrap();
    d.unpublish(&id, &target).await.unwrap();
    assert_code(
        d.csi
            .controller
            .create_volume(create_request_with(
                "unsized",
                0,
                &[("enforce", "required")],
            ))
            .await,
        Code::InvalidArgument,
        "needs a capacity",
    );
    assert_code(
        d.csi
            .controller
            .create_volume(create_request_with("odd", 1, &[("enforce", "always")]))
            .await,
        Code::InvalidArgument,
        "required, best-effort, none",
    );
}

#[tokio::test]
async fn a_pool_that_is_not_btrfs_cannot_be_required_to_enforce() {
    let mut d = TestDriver::start().await;
    let required = GetCapacityRequest {
        parameters: [("enforce".to_owned(), "required".to_owned())].into(),
        ..Default::default()
    };
    let offered = d
        .csi
        .controller
        .get_capacity(required)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        offered.available_capacity, 0,
        "the scheduler must not send such claims here"
    );
    assert_code(
        d.csi
            .controller
            .create_volume(create_request_with(
                "must",
                16 << 20,
                &[("enforce", "required")],
            ))
            .await,
        Code::FailedPrecondition,
        "not btrfs",
    );
}
