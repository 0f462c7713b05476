//! The scenario every pool that enforces the capacity of directory volumes
//! must pass, whatever does the enforcing (btrfs qgroups, project quotas).

use std::io::Write;
use std::path::Path;

use hostpath_csi::csi::{
    CapacityRange, ControllerExpandVolumeRequest, DeleteVolumeRequest, GetCapacityRequest,
    NodeExpandVolumeRequest,
};
use tonic::Code;

use super::{TestDriver, assert_code, create_request_with};

/// Writes `bytes` to a new file at `path` and syncs it, as a pod would:
/// without CAP_SYS_RESOURCE, which lets a writer pass ext4's quota limits.
/// Capabilities belong to a thread, so the write gets a thread of its own.
pub fn write(path: &Path, bytes: usize) -> std::io::Result<()> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        drop_sys_resource();
        let mut file = std::fs::File::create(path)?;
        file.write_all(&vec![5u8; bytes])?;
        file.sync_all()
    })
    .join()
    .unwrap()
}

/// Removes CAP_SYS_RESOURCE from the calling thread's effective set.
fn drop_sys_resource() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Sets {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_SYS_RESOURCE: u32 = 24;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut sets = [Sets::default(); 2];
    // SAFETY: capget/capset take a version 3 header and two sets.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut header, sets.as_mut_ptr()),
            0
        );
        sets[0].effective &= !(1 << CAP_SYS_RESOURCE);
        assert_eq!(libc::syscall(libc::SYS_capset, &header, sets.as_ptr()), 0);
    }
}

/// What GetCapacity offers for the default parameters.
pub async fn available(d: &mut TestDriver) -> i64 {
    d.csi
        .controller
        .get_capacity(GetCapacityRequest::default())
        .await
        .unwrap()
        .into_inner()
        .available_capacity
}

/// A pool that cannot enforce offers nothing to `enforce: required` claims
/// (so the scheduler sends none) and refuses them, saying `why`.
pub async fn refuses_required(d: &mut TestDriver, why: &str) {
    let required = GetCapacityRequest {
        parameters: [("enforce".to_owned(), "required".to_owned())].into(),
        ..Default::default()
    };
    let offered = d.csi.controller.get_capacity(required).await.unwrap();
    assert_eq!(offered.into_inner().available_capacity, 0);
    let request = create_request_with("must", 16 << 20, &[("enforce", "required")]);
    assert_code(
        d.csi.controller.create_volume(request).await,
        Code::FailedPrecondition,
        why,
    );
}

/// A 16 MiB volume with `enforce: required` refuses a 32 MiB write, reports
/// its own usage and its capacity, survives a restart, grows to 64 MiB while
/// published and then takes 48 MiB; GetCapacity follows its promise.
/// Returns the driver for checks of the pool's own.
pub async fn is_held_to_its_capacity_and_grows(mut d: TestDriver) -> TestDriver {
    let before = available(&mut d).await;
    let request = create_request_with("enforced", 16 << 20, &[("enforce", "required")]);
    let id = d.create_from(request).await;
    let promised = before - available(&mut d).await;
    // A new volume already uses a few KiB of its own promise.
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
    // A restart finds the publication from the mount table.
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

    let range = Some(CapacityRange {
        required_bytes: 64 << 20,
        limit_bytes: 0,
    });
    let grow = ControllerExpandVolumeRequest {
        volume_id: id.clone(),
        capacity_range: range,
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
        capacity_range: range,
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
    super::wait_trash_empty(&d.pool());
    // Filesystems may free a deleted tree's blocks a little later (XFS
    // frees inodes in the background): wait, bounded.
    let mut after_delete = 0;
    for _ in 0..100 {
        nix::unistd::sync();
        after_delete = available(&mut d).await;
        if after_delete > before_delete + (60 << 20) {
            return d;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the promise is not released: {before_delete} -> {after_delete}");
}
