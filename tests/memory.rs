//! kind=memory: tmpfs volumes with a hard size, a node budget, and honest
//! behaviour after a reboot, through the real gRPC interface.

mod common;

use std::io::Write;
use std::path::Path;

use common::{TestDriver, assert_code, create_request_with, delete, publish_request};
use hostpath_csi::csi::{ControllerGetVolumeRequest, GetCapacityRequest};
use tonic::Code;

async fn create_memory(
    d: &mut TestDriver,
    name: &str,
    bytes: i64,
) -> Result<String, tonic::Status> {
    let request = create_request_with(name, bytes, &[("kind", "memory")]);
    let volume = d
        .csi
        .controller
        .create_volume(request)
        .await?
        .into_inner()
        .volume
        .unwrap();
    Ok(volume.volume_id)
}

/// Whether the volume's health reports a problem, and what all of it says.
async fn condition(d: &mut TestDriver, id: &str) -> (bool, String) {
    let found = common::health(&mut d.csi, id).await;
    let text: Vec<String> = found.iter().map(|(r, m)| format!("{r}: {m}")).collect();
    (!found.is_empty(), text.join("; "))
}

#[tokio::test]
async fn a_memory_volume_is_a_tmpfs_of_its_size_and_refuses_more() {
    let mut d = TestDriver::start().await;
    let id = create_memory(&mut d, "mem-a", 1 << 20).await.unwrap();
    assert_eq!(create_memory(&mut d, "mem-a", 1 << 20).await.unwrap(), id);
    let target = d.target("pod-mem");
    d.publish(&id, &target, false).await.unwrap();
    let options = common::mount_options(Path::new(&target)).unwrap();
    assert!(
        options.contains("nosuid") && options.contains("nodev"),
        "{options}"
    );
    let st = nix::sys::statfs::statfs(Path::new(&target)).unwrap();
    assert_eq!(st.filesystem_type(), nix::sys::statfs::TMPFS_MAGIC);

    let mut file = std::fs::File::create(Path::new(&target).join("big")).unwrap();
    let err = file.write_all(&vec![1u8; 2 << 20]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    drop(file);
    std::fs::remove_file(Path::new(&target).join("big")).unwrap();
    std::fs::write(Path::new(&target).join("half"), vec![1u8; 512 << 10]).unwrap();

    let bytes = d.byte_usage(&id, &target).await;
    assert_eq!(bytes.total, 1 << 20);
    assert_eq!(bytes.used, 512 << 10);
    assert_eq!(bytes.available, 512 << 10);

    assert_code(
        d.csi.controller.delete_volume(delete(&id)).await,
        Code::FailedPrecondition,
        &target,
    );
    d.unpublish(&id, &target).await.unwrap();
    d.csi.controller.delete_volume(delete(&id)).await.unwrap();
    assert!(!d.volume_dir(&id).exists());
    assert!(d.scratch.mounts().is_empty(), "the tmpfs is unmounted");
}

#[tokio::test]
async fn memory_volumes_draw_on_the_node_budget() {
    // The harness gives the driver a 256 MiB budget.
    let mut d = TestDriver::start().await;
    let memory = |kind: &str| GetCapacityRequest {
        parameters: [("kind".to_owned(), kind.to_owned())].into(),
        ..Default::default()
    };
    let before = d
        .csi
        .controller
        .get_capacity(memory("memory"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.available_capacity, 256 << 20);
    let big = create_memory(&mut d, "mem-big", 200 << 20).await.unwrap();
    assert_code(
        create_memory(&mut d, "mem-more", 100 << 20).await,
        Code::ResourceExhausted,
        "memory budget",
    );
    let after = d
        .csi
        .controller
        .get_capacity(memory("memory"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.available_capacity, 56 << 20);
    let disk = d
        .csi
        .controller
        .get_capacity(memory("directory"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        disk.available_capacity > 56 << 20,
        "disk capacity is separate"
    );
    // Without a size a memory volume gets 64 MiB, which no longer fits.
    assert_code(
        create_memory(&mut d, "mem-default", 0).await,
        Code::ResourceExhausted,
        "67108864",
    );
    d.csi.controller.delete_volume(delete(&big)).await.unwrap();
    let id = create_memory(&mut d, "mem-default", 0).await.unwrap();
    let volume = d
        .csi
        .controller
        .controller_get_volume(ControllerGetVolumeRequest { volume_id: id })
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(volume.capacity_bytes, 64 << 20);
}

#[tokio::test]
async fn after_a_reboot_a_memory_volume_comes_back_empty_and_says_so() {
    let mut d = TestDriver::start().await;
    let id = create_memory(&mut d, "mem-reboot", 1 << 20).await.unwrap();
    let target = d.target("pod-reboot");
    d.publish(&id, &target, false).await.unwrap();
    std::fs::write(Path::new(&target).join("data"), b"in memory").unwrap();
    assert!(!condition(&mut d, &id).await.0);

    // A reboot: every mount is gone, the driver starts again.
    d.shutdown().await;
    nix::mount::umount2(Path::new(&target), nix::mount::MntFlags::empty()).unwrap();
    nix::mount::umount2(&d.volume_dir(&id), nix::mount::MntFlags::empty()).unwrap();
    // Whatever lies on the disk beneath must never be served.
    std::fs::write(d.volume_dir(&id).join("beneath"), b"disk").unwrap();
    let mut d = d.restart().await;

    let (abnormal, message) = condition(&mut d, &id).await;
    assert!(
        abnormal && message.contains("TmpfsGone: ") && message.contains("is gone"),
        "{message}"
    );
    d.unpublish(&id, &target).await.unwrap();
    d.publish(&id, &target, false).await.unwrap();
    let names: Vec<_> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(names.is_empty(), "served {names:?}");
    let (abnormal, message) = condition(&mut d, &id).await;
    assert!(
        abnormal && message.contains("ContentsLost: ") && message.contains("recreated empty"),
        "{message}"
    );
    d.unpublish(&id, &target).await.unwrap();
    d.csi.controller.delete_volume(delete(&id)).await.unwrap();
    assert!(d.scratch.mounts().is_empty());
}

#[tokio::test]
async fn a_published_memory_volume_is_recognised_after_a_restart() {
    let mut d = TestDriver::start().await;
    let id = create_memory(&mut d, "mem-restart", 1 << 20).await.unwrap();
    let target = d.target("pod-restart");
    d.publish(&id, &target, false).await.unwrap();
    std::fs::write(Path::new(&target).join("data"), b"kept").unwrap();
    let mut d = d.restart().await;
    assert_code(
        d.csi.controller.delete_volume(delete(&id)).await,
        Code::FailedPrecondition,
        &target,
    );
    assert_eq!(
        std::fs::read(Path::new(&target).join("data")).unwrap(),
        b"kept"
    );
    assert!(!condition(&mut d, &id).await.0);
    d.unpublish(&id, &target).await.unwrap();
    d.csi.controller.delete_volume(delete(&id)).await.unwrap();
}

#[tokio::test]
async fn an_inline_memory_volume_is_a_sized_emptydir() {
    let mut d = TestDriver::start().await;
    let target = d.target("pod-inline-mem");
    let mut request = publish_request("csi-mem-inline", &target, false);
    for (k, v) in [
        ("csi.storage.k8s.io/ephemeral", "true"),
        ("kind", "memory"),
        ("size", "1Mi"),
    ] {
        request.volume_context.insert(k.into(), v.into());
    }
    d.csi.node.node_publish_volume(request).await.unwrap();
    let st = nix::sys::statvfs::statvfs(Path::new(&target)).unwrap();
    assert_eq!(st.blocks() * st.fragment_size(), 1 << 20);
    d.unpublish("csi-mem-inline", &target).await.unwrap();
    assert!(d.scratch.mounts().is_empty());
    assert!(!d.volume_dir("csi-mem-inline").exists());
}
