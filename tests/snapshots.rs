//! Snapshots, restores and clones through the real gRPC interface, on
//! loop-backed pools the tests make: btrfs with quotas (read-only subvolume
//! snapshots), XFS with reflinks (cloned files and images) and ext4 (copies
//! in the background). Every kind is restored and cloned and its contents
//! compared, byte for byte, mode for mode.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Scratch, TestDriver, assert_code, create_request_with};
use hostpath_csi::csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
use hostpath_csi::csi::{
    CreateSnapshotRequest, CreateVolumeRequest, DeleteSnapshotRequest, GetCapacityRequest,
    GetSnapshotRequest, ListSnapshotsRequest, Snapshot, Topology, TopologyRequirement,
    VolumeContentSource,
};
use tonic::Code;

/// A pool of `fs` made by the test on a loop device.
async fn start_on(fs: &str) -> TestDriver {
    let scratch = Scratch::new();
    let (mkfs, options): (&[&str], &str) = match fs {
        "btrfs" => (&["mkfs.btrfs", "-q"], ""),
        "xfs" => (&["mkfs.xfs", "-q", "-m", "reflink=1"], ""),
        _ => (&["mkfs.ext4", "-q", "-F"], ""),
    };
    // Room for two XFS images (300 MiB each at least) and their snapshots.
    let pool = scratch
        .mount_image_of(1 << 30, fs, mkfs, fs, options)
        .unwrap();
    TestDriver::start_in(scratch, move |c| {
        c.pools[0].1 = pool;
        c.enable_quotas = true;
    })
    .await
}

fn snapshot_request(name: &str, source: &str) -> CreateSnapshotRequest {
    CreateSnapshotRequest {
        name: name.into(),
        source_volume_id: source.into(),
        ..Default::default()
    }
}

fn from_snapshot(mut request: CreateVolumeRequest, snapshot: &str) -> CreateVolumeRequest {
    request.volume_content_source = Some(VolumeContentSource {
        r#type: Some(Type::Snapshot(SnapshotSource {
            snapshot_id: snapshot.into(),
        })),
    });
    request
}

fn from_volume(mut request: CreateVolumeRequest, volume: &str) -> CreateVolumeRequest {
    request.volume_content_source = Some(VolumeContentSource {
        r#type: Some(Type::Volume(VolumeSource {
            volume_id: volume.into(),
        })),
    });
    request
}

/// Takes a snapshot and waits until it is ready, as the snapshotter does
/// (calling CreateSnapshot again).
async fn take(d: &mut TestDriver, name: &str, source: &str) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let snapshot = d
            .csi
            .controller
            .create_snapshot(snapshot_request(name, source))
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        if snapshot.ready_to_use {
            return snapshot;
        }
        assert!(Instant::now() < deadline, "snapshot {name} never got ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The method the snapshot's record names.
fn method(d: &TestDriver, snapshot: &str) -> String {
    let record = std::fs::read_to_string(
        d.pool()
            .join("snapshot-meta")
            .join(format!("{snapshot}.json")),
    )
    .unwrap();
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    record["method"].as_str().unwrap().to_owned()
}

/// Fills a mounted volume with what a tenant might hold: data with a hole,
/// an empty file, a nested tree, a symlink pointing out of the volume, a
/// FIFO, odd modes, owners, names of any bytes and an extended attribute.
fn fill(root: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let data = root.join("data.bin");
    let mut bytes = vec![7u8; 3 << 20];
    bytes[1 << 20..2 << 20].fill(0);
    std::fs::write(&data, &bytes).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::write(root.join("a/b/c/deep.txt"), b"deep").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("a/out")).unwrap();
    nix::unistd::mkfifo(
        &root.join("a/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    let odd = root.join(std::ffi::OsStr::from_bytes(b"name \xff\x01 with bytes"));
    std::fs::write(&odd, b"odd").unwrap();
    std::fs::set_permissions(&odd, std::fs::Permissions::from_mode(0o4751)).unwrap();
    std::os::unix::fs::chown(&odd, Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(root.join("a/out"), Some(42), Some(43)).unwrap();
    xattr_set(&data, "user.origin", b"tenant");
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: both strings are NUL-terminated and the value is `value.len()` bytes.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
}

fn xattr_get(path: &Path, name: &str) -> Vec<u8> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let mut value = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and the buffer 256 bytes long.
    let got = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    assert!(got >= 0, "getxattr: {}", std::io::Error::last_os_error());
    value.truncate(got as usize);
    value
}

/// What a tree holds, as compared between a volume and its copies: per
/// path, kind, mode, owner, size and contents (or link target).
fn inventory(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut found = BTreeMap::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let kind = meta.file_type();
            let what = if kind.is_dir() {
                pending.push(path.clone());
                "dir".to_owned()
            } else if kind.is_symlink() {
                format!("link {}", std::fs::read_link(&path).unwrap().display())
            } else if kind.is_fifo() {
                "fifo".to_owned()
            } else {
                format!("file {:x}", fnv(&std::fs::read(&path).unwrap()))
            };
            let mode = if kind.is_symlink() { 0 } else { meta.mode() };
            let rel = path.strip_prefix(root).unwrap().to_owned();
            if rel.as_os_str() == "lost+found" {
                continue;
            }
            found.insert(
                rel,
                format!(
                    "{what} mode {mode:o} owner {}:{} size {}",
                    meta.uid(),
                    meta.gid(),
                    meta.len()
                ),
            );
        }
    }
    found
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Publishes `id`, runs `look` on its target, unpublishes.
async fn with_published<T>(d: &mut TestDriver, id: &str, look: impl FnOnce(&Path) -> T) -> T {
    let target = d.target(&format!("pod-{id}"));
    d.publish(id, &target, false).await.unwrap();
    let seen = look(Path::new(&target));
    d.unpublish(id, &target).await.unwrap();
    seen
}

/// The whole round: fill a volume, snapshot it, restore and clone it,
/// delete the source and restore again; every copy holds what the source
/// held. Returns how the snapshot was made.
async fn round_trip(d: &mut TestDriver, params: &[(&str, &str)], bytes: i64) -> String {
    let source = d
        .create_from(create_request_with("source", bytes, params))
        .await;
    let before = with_published(d, &source, |root| {
        fill(root);
        inventory(root)
    })
    .await;
    assert!(before.len() >= 8, "{before:?}");

    let snapshot = take(d, "snap-1", &source).await;
    assert_eq!(snapshot.source_volume_id, source);
    assert_eq!(snapshot.size_bytes, bytes);
    assert!(snapshot.creation_time.is_some());
    assert_eq!(snapshot.accessible_topology.len(), 1);
    assert_eq!(
        snapshot.accessible_topology[0]
            .segments
            .get(common::TOPOLOGY_KEY)
            .map(String::as_str),
        Some(common::NODE)
    );
    let again = take(d, "snap-1", &source).await;
    assert_eq!(
        again.snapshot_id, snapshot.snapshot_id,
        "idempotent by name"
    );
    let got = d
        .csi
        .controller
        .get_snapshot(GetSnapshotRequest {
            snapshot_id: snapshot.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(got, again);
    let how = method(d, &snapshot.snapshot_id);

    // Writes after the snapshot do not reach it.
    with_published(d, &source, |root| {
        std::fs::write(root.join("later"), b"later").unwrap()
    })
    .await;

    let restored = d
        .create_from(from_snapshot(
            create_request_with("restored", bytes, params),
            &snapshot.snapshot_id,
        ))
        .await;
    let clone = d
        .create_from(from_volume(
            create_request_with("clone", 0, params),
            &source,
        ))
        .await;
    let restored_tree = with_published(d, &restored, inventory).await;
    assert_eq!(restored_tree, before, "restored from {how}");
    // Held to its capacity as any new volume (a lapsed qgroup or project
    // limit would show as QuotaNotEnforced).
    for id in [&restored, &clone] {
        assert!(common::health(&mut d.csi, id).await.is_empty(), "{id}");
    }
    let clone_tree = with_published(d, &clone, |root| {
        assert_eq!(xattr_get(&root.join("data.bin"), "user.origin"), b"tenant");
        inventory(root)
    })
    .await;
    assert!(
        clone_tree.contains_key(Path::new("later")),
        "a clone is of the volume now"
    );

    // The source goes; its snapshot and copies stay usable.
    d.csi
        .controller
        .delete_volume(common::delete(&source))
        .await
        .unwrap();
    let second = d
        .create_from(from_snapshot(
            create_request_with("restored-2", bytes, params),
            &snapshot.snapshot_id,
        ))
        .await;
    assert_eq!(with_published(d, &second, inventory).await, before);
    assert_eq!(with_published(d, &clone, inventory).await, clone_tree);

    for id in [restored, clone, second] {
        d.csi
            .controller
            .delete_volume(common::delete(&id))
            .await
            .unwrap();
    }
    d.csi
        .controller
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: snapshot.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(listed(d, "").await.is_empty());
    common::wait_trash_empty(&d.pool());
    assert_eq!(
        std::fs::read_dir(d.pool().join("snapshots"))
            .unwrap()
            .count(),
        0
    );
    how
}

/// Snapshot ids ListSnapshots gives for `source` ("" for all), in pages of 2.
async fn listed(d: &mut TestDriver, source: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = d
            .csi
            .controller
            .list_snapshots(ListSnapshotsRequest {
                max_entries: 2,
                starting_token: token,
                source_volume_id: source.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        ids.extend(
            page.entries
                .into_iter()
                .map(|e| e.snapshot.unwrap().snapshot_id),
        );
        if page.next_token.is_empty() {
            return ids;
        }
        token = page.next_token;
    }
}

#[tokio::test]
async fn directory_volumes_on_btrfs_snapshot_as_read_only_subvolumes() {
    let mut d = start_on("btrfs").await;
    assert_eq!(round_trip(&mut d, &[], 64 << 20).await, "btrfs-snapshot");
}

#[tokio::test]
async fn directory_volumes_on_xfs_snapshot_as_reflinked_trees() {
    let mut d = start_on("xfs").await;
    assert_eq!(
        round_trip(&mut d, &[("enforce", "none")], 64 << 20).await,
        "reflink-tree"
    );
}

#[tokio::test]
async fn directory_volumes_on_ext4_snapshot_as_copies() {
    let mut d = start_on("ext4").await;
    assert_eq!(
        round_trip(&mut d, &[("enforce", "none")], 64 << 20).await,
        "copy"
    );
}

#[tokio::test]
async fn file_volumes_snapshot_as_cloned_or_copied_images() {
    for (fs, expected) in [("xfs", "reflink"), ("ext4", "copy")] {
        let mut d = start_on(fs).await;
        let how = round_trip(&mut d, &[("kind", "file")], 64 << 20).await;
        assert_eq!(how, expected, "pool on {fs}");
    }
}

#[tokio::test]
async fn an_xfs_image_and_its_clone_are_mounted_side_by_side() {
    let mut d = start_on("xfs").await;
    let params = [("kind", "file"), ("fsType", "xfs")];
    let source = d
        .create_from(create_request_with("xfs-source", 300 << 20, &params))
        .await;
    let target = d.target("pod-xfs-source");
    d.publish(&source, &target, false).await.unwrap();
    std::fs::write(Path::new(&target).join("kept"), b"kept").unwrap();
    nix::unistd::sync();
    // The clone is taken while the source is mounted (its log is dirty) and
    // asks for no filesystem: it takes its source's.
    let clone = d
        .create_from(from_volume(
            create_request_with("xfs-clone", 0, &[("kind", "file")]),
            &source,
        ))
        .await;
    let clone_target = d.target("pod-xfs-clone");
    d.publish(&clone, &clone_target, false).await.unwrap();
    assert_eq!(
        std::fs::read(Path::new(&clone_target).join("kept")).unwrap(),
        b"kept"
    );
    d.unpublish(&clone, &clone_target).await.unwrap();
    d.unpublish(&source, &target).await.unwrap();
}

#[tokio::test]
async fn a_larger_restore_grows_the_image_and_its_filesystem() {
    let mut d = TestDriver::start().await;
    let params = [("kind", "file")];
    let source = d
        .create_from(create_request_with("small", 16 << 20, &params))
        .await;
    with_published(&mut d, &source, |root| {
        std::fs::write(root.join("file"), b"kept").unwrap()
    })
    .await;
    let snapshot = take(&mut d, "small-snap", &source).await;
    let restored = d
        .create_from(from_snapshot(
            create_request_with("bigger", 48 << 20, &params),
            &snapshot.snapshot_id,
        ))
        .await;
    let (total, kept) = with_published(&mut d, &restored, |root| {
        let st = nix::sys::statvfs::statvfs(root).unwrap();
        (
            st.blocks() * st.fragment_size(),
            std::fs::read(root.join("file")).unwrap(),
        )
    })
    .await;
    assert_eq!(kept, b"kept");
    assert!(
        total > 40 << 20,
        "the restored filesystem has {total} bytes"
    );
}

#[tokio::test]
async fn memory_volumes_snapshot_to_the_pool_disk_and_restore_to_memory() {
    let mut d = TestDriver::start().await;
    let params = [("kind", "memory")];
    let how = round_trip(&mut d, &params, 16 << 20).await;
    assert!(["copy", "reflink-tree"].contains(&how.as_str()), "{how}");
}

#[tokio::test]
async fn a_copy_counts_against_the_pool_and_survives_a_restart() {
    let mut d = start_on("ext4").await;
    let params = [("enforce", "none")];
    let source = d.create_from(create_request_with("big", 0, &params)).await;
    with_published(&mut d, &source, |root| {
        std::fs::write(root.join("blob"), vec![1u8; 48 << 20]).unwrap();
    })
    .await;
    let capacity = |d: &mut TestDriver| {
        let mut controller = d.csi.controller.clone();
        async move {
            controller
                .get_capacity(GetCapacityRequest {
                    parameters: [("enforce".to_owned(), "none".to_owned())].into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .available_capacity
        }
    };
    let before = capacity(&mut d).await;
    let snapshot = take(&mut d, "big-snap", &source).await;
    let after = capacity(&mut d).await;
    assert!(
        before - after >= 40 << 20,
        "GetCapacity fell by {} bytes only",
        before - after
    );
    let mut d = d.restart_after_crash().await;
    let again = take(&mut d, "big-snap", &source).await;
    assert_eq!(again.snapshot_id, snapshot.snapshot_id);
    assert_eq!(
        listed(&mut d, &source).await,
        vec![snapshot.snapshot_id.clone()]
    );
    assert!(listed(&mut d, "vol-unknown").await.is_empty());
    let restored = d
        .create_from(from_snapshot(
            create_request_with("big-restored", 0, &params),
            &snapshot.snapshot_id,
        ))
        .await;
    let size = with_published(&mut d, &restored, |root| {
        std::fs::metadata(root.join("blob")).unwrap().len()
    })
    .await;
    assert_eq!(size, 48 << 20);
}

#[tokio::test]
async fn bad_requests_get_the_codes_the_spec_names_and_hostile_ids_touch_nothing() {
    let mut d = TestDriver::start().await;
    let source = d.create("vol", 8 << 20).await;
    let c = &mut d.csi.controller;
    assert_code(
        c.create_snapshot(snapshot_request("s", "vol-nope")).await,
        Code::NotFound,
        "vol-nope",
    );
    assert_code(
        c.create_snapshot(snapshot_request("", &source)).await,
        Code::InvalidArgument,
        "name",
    );
    assert_code(
        c.create_snapshot(snapshot_request("s", "")).await,
        Code::InvalidArgument,
        "source_volume_id",
    );
    let mut odd = snapshot_request("s", &source);
    odd.parameters = [("colour".to_owned(), "red".to_owned())].into();
    assert_code(
        c.create_snapshot(odd).await,
        Code::InvalidArgument,
        "colour",
    );
    let mut elsewhere_only = snapshot_request("s", &source);
    elsewhere_only.accessibility_requirements = Some(TopologyRequirement {
        requisite: vec![Topology {
            segments: [(common::TOPOLOGY_KEY.to_owned(), "node-far-away".to_owned())].into(),
        }],
        preferred: Vec::new(),
    });
    assert_code(
        c.create_snapshot(elsewhere_only).await,
        Code::ResourceExhausted,
        common::NODE,
    );
    let snapshot = take(&mut d, "s", &source).await;
    let other = d.create("other", 8 << 20).await;
    let c = &mut d.csi.controller;
    assert_code(
        c.create_snapshot(snapshot_request("s", &other)).await,
        Code::AlreadyExists,
        "s",
    );

    let restore = |name: &str, bytes, params: &[(&str, &str)], id: &str| {
        let mut request = from_snapshot(create_request_with(name, bytes, params), id);
        if let Some(range) = request.capacity_range.as_mut() {
            range.limit_bytes = bytes;
        }
        request
    };
    assert_code(
        c.create_volume(restore("r", 0, &[], "snap-unknown")).await,
        Code::NotFound,
        "snap-unknown",
    );
    let elsewhere = format!("snap-{}-node-far-away", "0".repeat(32));
    assert_code(
        c.create_volume(restore("r", 0, &[], &elsewhere)).await,
        Code::ResourceExhausted,
        "node-far-away",
    );
    assert_code(
        c.create_volume(restore("r", 4 << 20, &[], &snapshot.snapshot_id))
            .await,
        Code::OutOfRange,
        "8388608",
    );
    assert_code(
        c.create_volume(restore(
            "r",
            0,
            &[("kind", "memory")],
            &snapshot.snapshot_id,
        ))
        .await,
        Code::InvalidArgument,
        "kind directory",
    );
    assert_code(
        c.create_volume(from_volume(create_request_with("r", 0, &[]), "vol-nope"))
            .await,
        Code::NotFound,
        "vol-nope",
    );
    assert_code(
        c.get_snapshot(GetSnapshotRequest {
            snapshot_id: "snap-nope".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "snap-nope",
    );

    // Ids a hostile caller might send: refused or unknown, never a path.
    let sentinel = d.scratch.path().join("sentinel");
    std::fs::write(&sentinel, b"keep").unwrap();
    let c = &mut d.csi.controller;
    for id in [
        "../sentinel",
        "/etc",
        "..",
        ".trash",
        "a\0b",
        &"s".repeat(4096),
        "snap-nope",
    ] {
        match c
            .delete_snapshot(DeleteSnapshotRequest {
                snapshot_id: id.into(),
                ..Default::default()
            })
            .await
        {
            Ok(_) => {}
            Err(status) => assert_eq!(status.code(), Code::InvalidArgument, "{id:?}: {status:?}"),
        }
    }
    assert_eq!(std::fs::read(&sentinel).unwrap(), b"keep");
    assert_eq!(listed(&mut d, "").await, vec![snapshot.snapshot_id.clone()]);
    assert!(
        d.pool()
            .join("snapshots")
            .join(&snapshot.snapshot_id)
            .exists()
    );
}
