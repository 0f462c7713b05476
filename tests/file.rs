//! kind=file: image files loop-mounted with a hard size, raw block volumes,
//! and loop devices that exist only while used, through the real gRPC
//! interface with real loop devices.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::{
    TestDriver, assert_code, create_request_with, delete, mount_capability, publish_request,
};
use hostpath_csi::csi::volume_capability::access_mode::Mode;
use hostpath_csi::csi::volume_capability::{AccessType, BlockVolume};
use hostpath_csi::csi::{
    CapacityRange, CreateVolumeRequest, NodePublishVolumeRequest, VolumeCapability,
};
use tonic::Code;

fn block_capability() -> VolumeCapability {
    let mut cap = mount_capability(Mode::SingleNodeMultiWriter);
    cap.access_type = Some(AccessType::Block(BlockVolume {}));
    cap
}

fn block_request(name: &str, bytes: i64) -> CreateVolumeRequest {
    let mut request = create_request_with(name, bytes, &[("kind", "file")]);
    request.volume_capabilities = vec![block_capability()];
    request
}

fn block_publish(id: &str, target: &str) -> NodePublishVolumeRequest {
    let mut request = publish_request(id, target, false);
    request.volume_capability = Some(block_capability());
    request
}

async fn create(d: &mut TestDriver, request: CreateVolumeRequest) -> Result<String, tonic::Status> {
    Ok(d.csi
        .controller
        .create_volume(request)
        .await?
        .into_inner()
        .volume
        .unwrap()
        .volume_id)
}

fn image(d: &TestDriver, id: &str) -> std::path::PathBuf {
    d.pool().join("volumes").join(format!("{id}.img"))
}

#[tokio::test]
async fn a_file_volume_is_a_sparse_ext4_image_with_a_hard_size() {
    let mut d = TestDriver::start().await;
    let id = create(
        &mut d,
        create_request_with("file-a", 16 << 20, &[("kind", "file")]),
    )
    .await
    .unwrap();
    assert_eq!(
        create(
            &mut d,
            create_request_with("file-a", 16 << 20, &[("kind", "file")])
        )
        .await
        .unwrap(),
        id
    );
    let meta = std::fs::metadata(image(&d, &id)).unwrap();
    assert_eq!(meta.len(), 16 << 20);
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o644,
        "FileOrCreate mode"
    );
    assert!(
        meta.blocks() * 512 < 16 << 20,
        "sparse: {} bytes allocated",
        meta.blocks() * 512
    );
    assert!(
        d.scratch.loop_devices().is_empty(),
        "no loop device until published"
    );

    let target = d.target("pod-file");
    d.publish(&id, &target, false).await.unwrap();
    d.publish(&id, &target, false).await.unwrap();
    assert_eq!(d.scratch.loop_devices().len(), 1);
    let st = nix::sys::statfs::statfs(Path::new(&target)).unwrap();
    assert_eq!(st.filesystem_type(), nix::sys::statfs::EXT4_SUPER_MAGIC);
    let mut file = std::fs::File::create(Path::new(&target).join("big")).unwrap();
    let err = file
        .write_all(&vec![7u8; 20 << 20])
        .and_then(|()| file.sync_all())
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(file);

    let bytes = d.byte_usage(&id, &target).await;
    assert!(
        bytes.total <= 16 << 20 && bytes.total > 12 << 20,
        "{bytes:?}"
    );
    assert!(bytes.used > 10 << 20, "{bytes:?}");

    assert_code(
        d.csi.controller.delete_volume(delete(&id)).await,
        Code::FailedPrecondition,
        &target,
    );
    d.unpublish(&id, &target).await.unwrap();
    assert!(d.scratch.mounts().is_empty(), "{:?}", d.scratch.mounts());
    assert!(
        d.scratch.loop_devices().is_empty(),
        "the loop device goes with the last user"
    );
    d.csi.controller.delete_volume(delete(&id)).await.unwrap();
    assert!(!image(&d, &id).exists());
}

#[tokio::test]
async fn data_survives_unpublish_and_a_restart_reuses_the_device() {
    let mut d = TestDriver::start().await;
    let id = create(
        &mut d,
        create_request_with("file-keep", 16 << 20, &[("kind", "file")]),
    )
    .await
    .unwrap();
    let (a, b) = (d.target("pod-a"), d.target("pod-b"));
    d.publish(&id, &a, false).await.unwrap();
    std::fs::write(Path::new(&a).join("kept"), b"on the image").unwrap();
    d.unpublish(&id, &a).await.unwrap();
    d.publish(&id, &a, false).await.unwrap();
    assert_eq!(
        std::fs::read(Path::new(&a).join("kept")).unwrap(),
        b"on the image"
    );

    let mut d = d.restart().await;
    d.publish(&id, &a, false).await.unwrap();
    d.publish(&id, &b, true).await.unwrap();
    assert_eq!(
        d.scratch.loop_devices().len(),
        1,
        "recognised, not duplicated"
    );
    assert_eq!(
        std::fs::read(Path::new(&b).join("kept")).unwrap(),
        b"on the image"
    );
    d.unpublish(&id, &a).await.unwrap();
    assert_eq!(d.scratch.loop_devices().len(), 1, "still used by pod-b");
    d.unpublish(&id, &b).await.unwrap();
    assert!(d.scratch.loop_devices().is_empty());
    assert!(d.scratch.mounts().is_empty());
}

#[tokio::test]
async fn a_block_volume_reads_and_writes_through_the_published_device() {
    let mut d = TestDriver::start().await;
    let id = create(&mut d, block_request("file-block", 8 << 20))
        .await
        .unwrap();
    let target = d.target("pod-block");
    d.csi
        .node
        .node_publish_volume(block_publish(&id, &target))
        .await
        .unwrap();
    d.csi
        .node
        .node_publish_volume(block_publish(&id, &target))
        .await
        .unwrap();
    assert!(
        std::fs::metadata(&target)
            .unwrap()
            .file_type()
            .is_block_device()
    );

    let mut device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&target)
        .unwrap();
    device.seek(SeekFrom::Start(4096)).unwrap();
    device.write_all(b"raw block bytes").unwrap();
    device.sync_all().unwrap();
    drop(device);
    let mut stored = vec![0u8; 15];
    let mut img = std::fs::File::open(image(&d, &id)).unwrap();
    img.seek(SeekFrom::Start(4096)).unwrap();
    img.read_exact(&mut stored).unwrap();
    assert_eq!(&stored, b"raw block bytes");

    assert_code(
        d.csi.controller.delete_volume(delete(&id)).await,
        Code::FailedPrecondition,
        &target,
    );
    // A mount of a block-only volume is refused: it holds no filesystem.
    assert_code(
        d.publish(&id, &d.target("pod-mount"), false).await,
        Code::InvalidArgument,
        "block access only",
    );
    d.unpublish(&id, &target).await.unwrap();
    assert!(!Path::new(&target).exists());
    assert!(d.scratch.loop_devices().is_empty());
    d.csi.controller.delete_volume(delete(&id)).await.unwrap();
}

#[tokio::test]
async fn xfs_on_request_and_block_only_for_kind_file() {
    let mut d = TestDriver::start().await;
    // Below the xfs minimum: refused only where the limit forbids raising it.
    let mut small =
        create_request_with("file-xfs-small", 0, &[("kind", "file"), ("fsType", "xfs")]);
    small.capacity_range = Some(CapacityRange {
        required_bytes: 16 << 20,
        limit_bytes: 16 << 20,
    });
    assert_code(create(&mut d, small).await, Code::OutOfRange, "xfs needs");
    let request = create_request_with(
        "file-xfs",
        100 << 20,
        &[("kind", "file"), ("fsType", "xfs")],
    );
    let created = d.csi.controller.create_volume(request).await.unwrap();
    let volume = created.into_inner().volume.unwrap();
    assert_eq!(
        volume.capacity_bytes,
        300 << 20,
        "raised to the xfs minimum"
    );
    let id = volume.volume_id;
    let target = d.target("pod-xfs");
    d.publish(&id, &target, false).await.unwrap();
    let st = nix::sys::statfs::statfs(Path::new(&target)).unwrap();
    assert_eq!(st.filesystem_type(), nix::sys::statfs::XFS_SUPER_MAGIC);
    d.unpublish(&id, &target).await.unwrap();
    assert!(d.scratch.loop_devices().is_empty());

    let mut directory_block = block_request("dir-block", 1 << 20);
    directory_block.parameters.clear();
    assert_code(
        create(&mut d, directory_block).await,
        Code::InvalidArgument,
        "only kind=file",
    );
    assert_code(
        create(
            &mut d,
            create_request_with(
                "file-btrfs",
                16 << 20,
                &[("kind", "file"), ("fsType", "btrfs")],
            ),
        )
        .await,
        Code::InvalidArgument,
        "ext4, xfs",
    );
    assert_code(
        create(
            &mut d,
            create_request_with("dir-fs", 0, &[("fsType", "ext4")]),
        )
        .await,
        Code::InvalidArgument,
        "kind=file only",
    );
    assert!(d.scratch.mounts().is_empty());
}

#[tokio::test]
async fn after_a_reboot_the_image_is_mounted_again_with_its_data() {
    let mut d = TestDriver::start().await;
    let id = create(
        &mut d,
        create_request_with("file-reboot", 16 << 20, &[("kind", "file")]),
    )
    .await
    .unwrap();
    let target = d.target("pod-reboot");
    d.publish(&id, &target, false).await.unwrap();
    std::fs::write(Path::new(&target).join("kept"), b"on disk").unwrap();
    nix::unistd::sync();

    // A reboot: the driver stops, every mount goes, the loop device with it.
    d.shutdown().await;
    nix::mount::umount2(Path::new(&target), nix::mount::MntFlags::empty()).unwrap();
    nix::mount::umount2(
        &d.pool().join("volumes").join(&id),
        nix::mount::MntFlags::empty(),
    )
    .unwrap();
    assert!(d.scratch.loop_devices().is_empty());
    let mut d = d.restart().await;

    d.unpublish(&id, &target).await.unwrap();
    d.publish(&id, &target, false).await.unwrap();
    assert_eq!(
        std::fs::read(Path::new(&target).join("kept")).unwrap(),
        b"on disk"
    );
    d.unpublish(&id, &target).await.unwrap();
    assert!(d.scratch.loop_devices().is_empty());
    assert!(d.scratch.mounts().is_empty());
}

#[tokio::test]
async fn a_failed_publish_releases_what_it_set_up_and_access_types_never_mix() {
    let mut d = TestDriver::start().await;
    let formatted = create(
        &mut d,
        create_request_with("file-fs", 16 << 20, &[("kind", "file")]),
    )
    .await
    .unwrap();
    let raw = create(&mut d, block_request("file-raw", 8 << 20))
        .await
        .unwrap();

    // A formatted image is never also served raw.
    let target = d.target("pod-mix");
    assert_code(
        d.csi
            .node
            .node_publish_volume(block_publish(&formatted, &target))
            .await,
        Code::InvalidArgument,
        "created for mount access",
    );

    // The image gets mounted, then the target turns out to be a file: nothing stays.
    std::fs::write(&target, b"in the way").unwrap();
    assert_code(
        d.publish(&formatted, &target, false).await,
        Code::AlreadyExists,
        "not a directory",
    );
    assert!(
        d.scratch.loop_devices().is_empty(),
        "{:?}",
        d.scratch.loop_devices()
    );
    assert!(d.scratch.mounts().is_empty(), "{:?}", d.scratch.mounts());
    std::fs::remove_file(&target).unwrap();

    // The same for a raw device whose target is a directory.
    std::fs::create_dir(&target).unwrap();
    assert_code(
        d.csi
            .node
            .node_publish_volume(block_publish(&raw, &target))
            .await,
        Code::AlreadyExists,
        "not a file",
    );
    assert!(
        d.scratch.loop_devices().is_empty(),
        "{:?}",
        d.scratch.loop_devices()
    );

    // A symlink in the place of a file target is not bound over.
    std::fs::remove_dir(&target).unwrap();
    let elsewhere = d.scratch.path().join("elsewhere");
    std::fs::write(&elsewhere, b"").unwrap();
    std::os::unix::fs::symlink(&elsewhere, &target).unwrap();
    assert_code(
        d.csi
            .node
            .node_publish_volume(block_publish(&raw, &target))
            .await,
        Code::AlreadyExists,
        "not a file",
    );
    assert!(d.scratch.mounts().is_empty());
}

#[tokio::test]
async fn a_read_only_block_publish_refuses_writes_in_the_device() {
    let mut d = TestDriver::start().await;
    let id = create(&mut d, block_request("file-block-ro", 8 << 20))
        .await
        .unwrap();
    let (ro, rw) = (d.target("pod-ro"), d.target("pod-rw"));
    let mut request = block_publish(&id, &ro);
    request.readonly = true;
    d.csi
        .node
        .node_publish_volume(request.clone())
        .await
        .unwrap();
    d.csi.node.node_publish_volume(request).await.unwrap();
    d.csi
        .node
        .node_publish_volume(block_publish(&id, &rw))
        .await
        .unwrap();
    assert_eq!(
        d.scratch.loop_devices().len(),
        2,
        "one read-only device, one writable"
    );

    let written = std::fs::OpenOptions::new()
        .write(true)
        .open(&ro)
        .and_then(|mut device| device.write_all(b"nope").and_then(|()| device.sync_all()));
    assert!(written.is_err(), "a read-only block volume took a write");
    let mut device = std::fs::OpenOptions::new().write(true).open(&rw).unwrap();
    device.write_all(b"fine").unwrap();
    device.sync_all().unwrap();
    drop(device);

    d.unpublish(&id, &ro).await.unwrap();
    d.unpublish(&id, &rw).await.unwrap();
    assert!(d.scratch.loop_devices().is_empty());
}
