//! Volume and storage health through the real gRPC interface: each test
//! makes an abnormal state for real (a backing removed, a loop device
//! detached, an ext4 error raised in the kernel, an XFS filesystem shut
//! down, a pool remounted read-only or filled), sees the health RPCs report
//! it, repairs it and sees the report clear.

mod common;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    Scratch, TestDriver, assert_code, create_request_with, health, health_reasons,
    mount_capability, publish_request, storage_health,
};
use hostpath_csi::csi::volume_capability::access_mode::Mode;
use hostpath_csi::csi::volume_capability::{AccessType, BlockVolume};
use hostpath_csi::csi::{NodeGetVolumeHealthRequest, NodeGetVolumeStatsRequest};
use tonic::Code;

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{program} is installed: {e}"));
    assert!(status.success(), "{program} {args:?} failed");
}

fn image(d: &TestDriver, id: &str) -> PathBuf {
    d.pool().join("volumes").join(format!("{id}.img"))
}

/// The loop device (e.g. `loop3`) the volume's own mount is served from.
fn mounted_device(d: &TestDriver, id: &str) -> String {
    let st = nix::sys::stat::stat(&d.volume_dir(id)).unwrap();
    assert_eq!(nix::sys::stat::major(st.st_dev), 7, "a loop device");
    format!("loop{}", nix::sys::stat::minor(st.st_dev))
}

async fn stats_code(d: &mut TestDriver, id: &str, target: &str) -> Result<(), tonic::Status> {
    d.csi
        .node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: id.into(),
            volume_path: target.into(),
            ..Default::default()
        })
        .await
        .map(drop)
}

#[tokio::test]
async fn a_healthy_volume_reports_nothing_and_an_unknown_one_is_not_found() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-fine", 0).await;
    assert!(health(&mut d.csi, &id).await.is_empty());
    assert!(storage_health(&mut d.csi).await.is_empty());
    assert_code(
        d.csi
            .node
            .node_get_volume_health(NodeGetVolumeHealthRequest {
                volume_id: "vol-00000000000000000000000000000000".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "does not exist",
    );
    assert_code(
        d.csi
            .node
            .node_get_volume_health(NodeGetVolumeHealthRequest::default())
            .await,
        Code::InvalidArgument,
        "",
    );
}

#[tokio::test]
async fn a_directory_removed_or_replaced_is_reported_until_restored() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-dir", 0).await;
    let dir = d.volume_dir(&id);
    let aside = d.pool().join("aside");
    std::fs::rename(&dir, &aside).unwrap();
    let found = health(&mut d.csi, &id).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "BackingMissing");
    assert!(found[0].1.contains(&id) && found[0].1.contains("is missing"));
    // Listed as well, paged.
    let listed = common::listed_health_in_pages(&mut d.csi, 1).await;
    assert_eq!(
        listed,
        vec![(
            id.clone(),
            vec!["BackingMissing".to_owned()],
            found[0].1.clone()
        )]
    );

    std::fs::write(&dir, b"not a directory").unwrap();
    assert_eq!(health_reasons(&mut d.csi, &id).await, ["BackingReplaced"]);
    std::fs::remove_file(&dir).unwrap();
    std::os::unix::fs::symlink("/etc", &dir).unwrap();
    assert_eq!(health_reasons(&mut d.csi, &id).await, ["BackingReplaced"]);
    std::fs::remove_file(&dir).unwrap();

    std::fs::rename(&aside, &dir).unwrap();
    assert!(health(&mut d.csi, &id).await.is_empty());
}

#[tokio::test]
async fn an_image_missing_or_truncated_is_reported_until_restored() {
    let mut d = TestDriver::start().await;
    let request = create_request_with("pvc-img", 8 << 20, &[("kind", "file")]);
    let id = d.create_from(request).await;
    let image = image(&d, &id);
    let aside = d.pool().join("aside.img");
    std::fs::rename(&image, &aside).unwrap();
    assert_eq!(health_reasons(&mut d.csi, &id).await, ["BackingMissing"]);
    std::fs::rename(&aside, &image).unwrap();
    assert!(health(&mut d.csi, &id).await.is_empty());

    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    file.set_len(4 << 20).unwrap();
    let found = health(&mut d.csi, &id).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "ImageTruncated");
    assert!(found[0].1.contains("4194304 bytes"), "{}", found[0].1);
    file.set_len(8 << 20).unwrap();
    assert!(health(&mut d.csi, &id).await.is_empty());
}

#[tokio::test]
async fn ext4_errors_in_an_image_are_reported_until_fsck_repairs_it() {
    let mut d = TestDriver::start().await;
    let request = create_request_with("pvc-ext4", 16 << 20, &[("kind", "file")]);
    let id = d.create_from(request).await;
    let target = d.target("pod-ext4");
    d.publish(&id, &target, false).await.unwrap();
    assert!(health(&mut d.csi, &id).await.is_empty());

    // The kernel's own error path: ext4_error() counts it in the superblock.
    let device = mounted_device(&d, &id);
    std::fs::write(
        format!("/sys/fs/ext4/{device}/trigger_fs_error"),
        "hostpath-csi health test",
    )
    .unwrap();
    let found = health(&mut d.csi, &id).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "FilesystemErrors");
    assert!(found[0].1.contains("e2fsck"), "{}", found[0].1);
    // Degraded, not gone: its usage is still reported.
    stats_code(&mut d, &id, &target).await.unwrap();

    d.unpublish(&id, &target).await.unwrap();
    run("e2fsck", &["-f", "-y", image(&d, &id).to_str().unwrap()]);
    d.publish(&id, &target, false).await.unwrap();
    assert!(health(&mut d.csi, &id).await.is_empty());
    d.unpublish(&id, &target).await.unwrap();
}

#[tokio::test]
async fn an_xfs_shutdown_is_reported_until_it_is_mounted_again() {
    let mut d = TestDriver::start().await;
    let request = create_request_with("pvc-xfs", 300 << 20, &[("kind", "file"), ("fsType", "xfs")]);
    let id = d.create_from(request).await;
    let target = d.target("pod-xfs");
    d.publish(&id, &target, false).await.unwrap();
    let mut data = std::fs::File::create(Path::new(&target).join("data")).unwrap();
    std::io::Write::write_all(&mut data, b"kept").unwrap();
    data.sync_all().unwrap();
    drop(data);
    assert!(health(&mut d.csi, &id).await.is_empty());

    run(
        "xfs_io",
        &[
            "-x",
            "-c",
            "shutdown -f",
            d.volume_dir(&id).to_str().unwrap(),
        ],
    );
    assert_eq!(health_reasons(&mut d.csi, &id).await, ["FilesystemFailing"]);
    // Unusable: stats say why instead of a figure.
    assert_code(
        stats_code(&mut d, &id, &target).await,
        Code::FailedPrecondition,
        "fails every access",
    );

    d.unpublish(&id, &target).await.unwrap();
    d.publish(&id, &target, false).await.unwrap();
    assert!(health(&mut d.csi, &id).await.is_empty());
    assert_eq!(
        std::fs::read(Path::new(&target).join("data")).unwrap(),
        b"kept"
    );
    d.unpublish(&id, &target).await.unwrap();
}

#[tokio::test]
async fn a_loop_device_detached_under_a_block_target_is_reported_until_republished() {
    let mut d = TestDriver::start().await;
    let mut block = mount_capability(Mode::SingleNodeMultiWriter);
    block.access_type = Some(AccessType::Block(BlockVolume {}));
    let mut request = create_request_with("pvc-raw", 8 << 20, &[("kind", "file")]);
    request.volume_capabilities = vec![block.clone()];
    let id = d.create_from(request).await;
    let target = d.target("pod-raw");
    let mut publish = publish_request(&id, &target, false);
    publish.volume_capability = Some(block);
    d.csi
        .node
        .node_publish_volume(publish.clone())
        .await
        .unwrap();
    assert!(
        std::fs::metadata(&target)
            .unwrap()
            .file_type()
            .is_block_device()
    );
    assert!(health(&mut d.csi, &id).await.is_empty());

    let devices = d.scratch.loop_devices();
    assert_eq!(devices.len(), 1, "{devices:?}");
    hostpath_csi::loopdev::detach(&hostpath_csi::loopdev::LoopDevice {
        path: devices[0].clone(),
        read_only: false,
    })
    .unwrap();
    let found = health(&mut d.csi, &id).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "LoopDetached");

    // Its target is still recognised as its own and comes down.
    d.unpublish(&id, &target).await.unwrap();
    assert!(!Path::new(&target).exists());
    d.csi.node.node_publish_volume(publish).await.unwrap();
    assert!(health(&mut d.csi, &id).await.is_empty());
    d.unpublish(&id, &target).await.unwrap();
}

#[tokio::test]
async fn a_memory_volumes_tmpfs_unmounted_is_reported() {
    let mut d = TestDriver::start().await;
    let request = create_request_with("pvc-mem", 1 << 20, &[("kind", "memory")]);
    let id = d.create_from(request).await;
    let target = d.target("pod-mem");
    d.publish(&id, &target, false).await.unwrap();
    d.unpublish(&id, &target).await.unwrap();
    assert!(health(&mut d.csi, &id).await.is_empty());
    nix::mount::umount2(&d.volume_dir(&id), nix::mount::MntFlags::empty()).unwrap();
    let found = health(&mut d.csi, &id).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "TmpfsGone");
    assert!(found[0].1.contains("is gone"), "{}", found[0].1);
    // Published again, it is an empty tmpfs: the loss stays reported.
    d.publish(&id, &target, false).await.unwrap();
    assert_eq!(health_reasons(&mut d.csi, &id).await, ["ContentsLost"]);
    d.unpublish(&id, &target).await.unwrap();
}

/// A driver whose pool is a tmpfs of its own (so the test can remount it
/// read-only and fill it), nearly full at 50 %.
async fn on_own_tmpfs() -> TestDriver {
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool-fs");
    scratch.mount_tmpfs(&pool, "8m");
    TestDriver::start_in(scratch, move |c| {
        c.pools[0].1 = pool;
        c.nearly_full_percent = 50;
    })
    .await
}

fn reasons(found: &[(String, String)]) -> Vec<&str> {
    found.iter().map(|(r, _)| r.as_str()).collect()
}

#[tokio::test]
async fn a_pool_remounted_read_only_or_nearly_full_is_reported_until_fixed() {
    let mut d = on_own_tmpfs().await;
    assert!(storage_health(&mut d.csi).await.is_empty());
    let pool = d.pool();
    let remount = |flags: nix::mount::MsFlags| {
        nix::mount::mount(
            None::<&str>,
            &pool,
            None::<&str>,
            nix::mount::MsFlags::MS_REMOUNT | flags,
            None::<&str>,
        )
        .unwrap();
    };
    remount(nix::mount::MsFlags::MS_RDONLY);
    let found = storage_health(&mut d.csi).await;
    assert_eq!(reasons(&found), ["PoolReadOnly"]);
    assert!(found[0].1.contains("pool default"), "{}", found[0].1);
    remount(nix::mount::MsFlags::empty());
    assert!(storage_health(&mut d.csi).await.is_empty());

    let filler = pool.join("filler");
    std::fs::write(&filler, vec![1u8; 5 << 20]).unwrap();
    let found = storage_health(&mut d.csi).await;
    assert_eq!(reasons(&found), ["PoolNearlyFull"]);
    assert!(found[0].1.contains("threshold 50%"), "{}", found[0].1);
    std::fs::remove_file(&filler).unwrap();
    assert!(storage_health(&mut d.csi).await.is_empty());
}

#[tokio::test]
async fn a_pool_directory_moved_away_or_locked_by_another_process_is_reported() {
    let mut d = TestDriver::start().await;
    let pool = d.pool();
    let aside = d.scratch.path().join("pool-aside");
    std::fs::rename(&pool, &aside).unwrap();
    assert_eq!(
        reasons(&storage_health(&mut d.csi).await),
        ["PoolDirectoryGone"]
    );
    // Another process (its own open file) locks what is at the path now.
    std::fs::create_dir(&pool).unwrap();
    let other = std::fs::File::open(&pool).unwrap();
    let held = nix::fcntl::Flock::lock(other, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();
    let found = storage_health(&mut d.csi).await;
    assert_eq!(reasons(&found), ["PoolLockHeldElsewhere"]);
    assert!(found[0].1.contains("another process"), "{}", found[0].1);
    drop(held);
    assert_eq!(
        reasons(&storage_health(&mut d.csi).await),
        ["PoolDirectoryGone"]
    );
    std::fs::remove_dir(&pool).unwrap();
    std::fs::rename(&aside, &pool).unwrap();
    assert!(storage_health(&mut d.csi).await.is_empty());
}

#[tokio::test]
async fn pools_with_the_same_problem_share_one_entry_naming_each() {
    let scratch = Scratch::new();
    let (first, second) = (scratch.path().join("fs-a"), scratch.path().join("fs-b"));
    scratch.mount_tmpfs(&first, "8m");
    scratch.mount_tmpfs(&second, "8m");
    let (a, b) = (first.clone(), second.clone());
    let mut d = TestDriver::start_in(scratch, move |c| {
        c.pools = vec![
            (hostpath_csi::ids::PoolName::parse("a").unwrap(), a),
            (hostpath_csi::ids::PoolName::parse("b").unwrap(), b),
        ];
        c.nearly_full_percent = 50;
    })
    .await;
    for pool in [&first, &second] {
        std::fs::write(pool.join("filler"), vec![1u8; 5 << 20]).unwrap();
    }
    let found = storage_health(&mut d.csi).await;
    assert_eq!(reasons(&found), ["PoolNearlyFull"], "{found:?}");
    assert!(
        found[0].1.contains("pool a") && found[0].1.contains("pool b"),
        "{}",
        found[0].1
    );
}
