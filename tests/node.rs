//! Node service through the real gRPC interface, with real bind mounts.

mod common;

use std::path::Path;

use common::{
    NODE, TOPOLOGY_KEY, TestDriver, assert_code, create_request_with, mount_capability,
    mount_options, publish_request,
};
use hostpath_csi::csi::node_service_capability::{Type, rpc};
use hostpath_csi::csi::volume_capability::AccessType;
use hostpath_csi::csi::volume_capability::access_mode::Mode;
use hostpath_csi::csi::volume_usage::Unit;
use hostpath_csi::csi::{
    NodeGetCapabilitiesRequest, NodeGetInfoRequest, NodeGetVolumeStatsRequest,
    NodePublishVolumeRequest,
};
use tonic::Code;

#[tokio::test]
async fn publish_bind_mounts_the_volume_nosuid_nodev_and_repeats_are_ok() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-pub", 0).await;
    let target = d.target("pod-a");
    d.publish(&id, &target, false).await.unwrap();
    d.publish(&id, &target, false).await.unwrap();
    std::fs::write(Path::new(&target).join("hello"), b"from the pod").unwrap();
    assert_eq!(
        std::fs::read(d.volume_dir(&id).join("hello")).unwrap(),
        b"from the pod"
    );
    let options = mount_options(Path::new(&target)).expect("target is mounted");
    for flag in ["rw", "nosuid", "nodev"] {
        assert!(
            options.split(',').any(|o| o == flag),
            "{flag} missing in {options}"
        );
    }
    assert_eq!(
        d.scratch.mounts().len(),
        1,
        "a repeat must not stack mounts"
    );
    d.unpublish(&id, &target).await.unwrap();
}

#[tokio::test]
async fn read_only_publish_refuses_writes_and_a_different_mode_is_already_exists() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-ro", 0).await;
    let target = d.target("pod-ro");
    d.publish(&id, &target, true).await.unwrap();
    let err = std::fs::write(Path::new(&target).join("x"), b"no").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let options = mount_options(Path::new(&target)).unwrap();
    assert!(
        options.starts_with("ro,") && options.contains("nosuid") && options.contains("nodev"),
        "{options}"
    );
    d.publish(&id, &target, true).await.unwrap();
    assert_code(
        d.publish(&id, &target, false).await,
        Code::AlreadyExists,
        "readonly=true",
    );

    // A READER_ONLY access mode also means read-only.
    let reader_target = d.target("pod-reader");
    let mut request = publish_request(&id, &reader_target, false);
    request
        .volume_capability
        .as_mut()
        .unwrap()
        .access_mode
        .as_mut()
        .unwrap()
        .mode = Mode::SingleNodeReaderOnly as i32;
    // It allows one target, and the volume has one already.
    assert_code(
        d.csi.node.node_publish_volume(request.clone()).await,
        Code::FailedPrecondition,
        "published at",
    );
    d.unpublish(&id, &target).await.unwrap();
    d.csi.node.node_publish_volume(request).await.unwrap();
    assert!(
        mount_options(Path::new(&reader_target))
            .unwrap()
            .starts_with("ro,")
    );
    d.unpublish(&id, &reader_target).await.unwrap();
}

/// A publish request for `id` at `target` with access mode `mode`.
fn with_mode(id: &str, target: &str, mode: Mode) -> NodePublishVolumeRequest {
    let mut request = publish_request(id, target, false);
    request.volume_capability = Some(mount_capability(mode));
    request
}

#[tokio::test]
async fn access_modes_of_one_target_refuse_a_second_and_multi_writer_shares() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-modes", 0).await;
    let (first, second, third) = (d.target("pod-1"), d.target("pod-2"), d.target("pod-3"));
    let one_target = [
        Mode::SingleNodeSingleWriter,
        Mode::SingleNodeWriter,
        Mode::SingleNodeReaderOnly,
    ];
    for held in one_target {
        let request = with_mode(&id, &first, held);
        d.csi
            .node
            .node_publish_volume(request.clone())
            .await
            .unwrap();
        d.csi.node.node_publish_volume(request).await.unwrap();
        for mode in one_target.into_iter().chain([Mode::SingleNodeMultiWriter]) {
            assert_code(
                d.csi
                    .node
                    .node_publish_volume(with_mode(&id, &second, mode))
                    .await,
                Code::FailedPrecondition,
                "allows one target per node",
            );
            assert!(
                !Path::new(&second).exists(),
                "{held:?} then {mode:?}: nothing made"
            );
        }
        d.unpublish(&id, &first).await.unwrap();
        // Free again: the second target may have it now.
        let request = with_mode(&id, &second, held);
        d.csi.node.node_publish_volume(request).await.unwrap();
        d.unpublish(&id, &second).await.unwrap();
    }
    // SINGLE_NODE_MULTI_WRITER shares, until one asks to be alone.
    for target in [&first, &second] {
        let request = with_mode(&id, target, Mode::SingleNodeMultiWriter);
        d.csi.node.node_publish_volume(request).await.unwrap();
    }
    assert_code(
        d.csi
            .node
            .node_publish_volume(with_mode(&id, &third, Mode::SingleNodeSingleWriter))
            .await,
        Code::FailedPrecondition,
        "published at",
    );
    // A mode no node-local volume has is refused as a bad argument.
    assert_code(
        d.csi
            .node
            .node_publish_volume(with_mode(&id, &third, Mode::MultiNodeMultiWriter))
            .await,
        Code::InvalidArgument,
        "",
    );
    for target in [&first, &second] {
        d.unpublish(&id, target).await.unwrap();
    }
}

#[tokio::test]
async fn publish_applies_allowed_mount_flags_and_refuses_others() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-flags", 0).await;
    let target = d.target("pod-flags");
    let with_flags = |flags: &[&str]| {
        let mut request = publish_request(&id, &target, false);
        if let Some(AccessType::Mount(m)) =
            &mut request.volume_capability.as_mut().unwrap().access_type
        {
            m.mount_flags = flags.iter().map(|f| f.to_string()).collect();
        }
        request
    };
    assert_code(
        d.csi.node.node_publish_volume(with_flags(&["suid"])).await,
        Code::InvalidArgument,
        "allowed flags are",
    );
    assert!(
        !Path::new(&target).exists(),
        "a refused publish leaves no target"
    );
    d.csi
        .node
        .node_publish_volume(with_flags(&["noexec", "noatime"]))
        .await
        .unwrap();
    let options = mount_options(Path::new(&target)).unwrap();
    assert!(
        options.contains("noexec") && options.contains("noatime"),
        "{options}"
    );
    d.unpublish(&id, &target).await.unwrap();
}

#[tokio::test]
async fn publish_errors_name_what_is_wrong() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-err", 0).await;
    let target = d.target("pod-err");
    assert_code(
        d.publish("vol-unknown", &target, false).await,
        Code::NotFound,
        "vol-unknown",
    );
    assert_code(
        d.publish(&id, "relative/path", false).await,
        Code::InvalidArgument,
        "absolute",
    );
    assert_code(
        d.publish(&id, "", false).await,
        Code::InvalidArgument,
        "target_path is missing",
    );
    let mut no_cap = publish_request(&id, &target, false);
    no_cap.volume_capability = None;
    assert_code(
        d.csi.node.node_publish_volume(no_cap).await,
        Code::InvalidArgument,
        "volume_capability",
    );
    let mut ephemeral = publish_request(&id, &target, false);
    ephemeral
        .volume_context
        .insert("csi.storage.k8s.io/ephemeral".into(), "true".into());
    assert_code(
        d.csi.node.node_publish_volume(ephemeral).await,
        Code::AlreadyExists,
        "is not an ephemeral inline volume",
    );

    // Another volume already mounted on the target.
    let other = d.create("pvc-err-2", 0).await;
    d.publish(&other, &target, false).await.unwrap();
    assert_code(
        d.publish(&id, &target, false).await,
        Code::AlreadyExists,
        "another mount",
    );
    d.unpublish(&other, &target).await.unwrap();

    // A symlink planted at the target is not followed.
    let elsewhere = d.scratch.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &target).unwrap();
    assert_code(
        d.publish(&id, &target, false).await,
        Code::AlreadyExists,
        "not a directory",
    );
    assert!(d.scratch.mounts().is_empty());
}

#[tokio::test]
async fn unpublish_unmounts_removes_the_target_and_is_idempotent() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-unpub", 0).await;
    let target = d.target("pod-u");
    d.publish(&id, &target, false).await.unwrap();
    std::fs::write(Path::new(&target).join("kept"), b"data").unwrap();
    d.unpublish(&id, &target).await.unwrap();
    assert!(!Path::new(&target).exists());
    assert!(d.scratch.mounts().is_empty());
    assert_eq!(
        std::fs::read(d.volume_dir(&id).join("kept")).unwrap(),
        b"data"
    );
    d.unpublish(&id, &target).await.unwrap();
    d.unpublish("vol-unknown", &target).await.unwrap();
    assert_code(
        d.unpublish("", &target).await,
        Code::InvalidArgument,
        "volume id is missing",
    );
    assert_code(
        d.unpublish(&id, "").await,
        Code::InvalidArgument,
        "target_path",
    );

    // Stacked mounts (e.g. after an uncertain retry) are all taken down.
    d.publish(&id, &target, false).await.unwrap();
    let source = d.volume_dir(&id);
    nix::mount::mount(
        Some(&source),
        Path::new(&target),
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    d.unpublish(&id, &target).await.unwrap();
    assert!(d.scratch.mounts().is_empty());
    assert!(!Path::new(&target).exists());
}

#[tokio::test]
async fn volume_stats_measure_this_volume_only() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-stats", 64 << 20).await;
    let target = d.target("pod-s");
    d.publish(&id, &target, false).await.unwrap();
    std::fs::create_dir(Path::new(&target).join("sub")).unwrap();
    std::fs::write(Path::new(&target).join("sub/blob"), vec![7u8; 4 << 20]).unwrap();
    let stats = |id: &str, path: &str| NodeGetVolumeStatsRequest {
        volume_id: id.into(),
        volume_path: path.into(),
        staging_target_path: String::new(),
    };
    let response = d
        .csi
        .node
        .node_get_volume_stats(stats(&id, &target))
        .await
        .unwrap()
        .into_inner();
    let bytes = response
        .usage
        .iter()
        .find(|u| u.unit == Unit::Bytes as i32)
        .unwrap();
    let inodes = response
        .usage
        .iter()
        .find(|u| u.unit == Unit::Inodes as i32)
        .unwrap();
    assert_eq!(bytes.total, 64 << 20);
    assert!(bytes.used >= 4 << 20 && bytes.used < 5 << 20, "{bytes:?}");
    assert_eq!(bytes.available, bytes.total - bytes.used);
    assert_eq!(inodes.used, 3, "root, sub and blob");
    let again = d
        .csi
        .node
        .node_get_volume_stats(stats(&id, &target))
        .await
        .unwrap()
        .into_inner();
    // Other tests share the disk, so only this volume's own figures must repeat.
    let used =
        |usage: &[hostpath_csi::csi::VolumeUsage]| usage.iter().map(|u| u.used).collect::<Vec<_>>();
    assert_eq!(used(&again.usage), used(&response.usage));

    assert_code(
        d.csi
            .node
            .node_get_volume_stats(stats("vol-none", &target))
            .await,
        Code::NotFound,
        "vol-none",
    );
    let other = d.target("pod-not-published");
    std::fs::create_dir(&other).unwrap();
    assert_code(
        d.csi.node.node_get_volume_stats(stats(&id, &other)).await,
        Code::NotFound,
        "not published",
    );
    assert_code(
        d.csi.node.node_get_volume_stats(stats(&id, "")).await,
        Code::InvalidArgument,
        "volume_path",
    );
    d.unpublish(&id, &target).await.unwrap();
}

#[tokio::test]
async fn node_info_and_capabilities() {
    let mut d = TestDriver::start_in(common::Scratch::new(), |c| c.max_volumes = 250).await;
    let info = d
        .csi
        .node
        .node_get_info(NodeGetInfoRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, NODE);
    assert_eq!(info.max_volumes_per_node, 250);
    assert_eq!(
        info.accessible_topology
            .unwrap()
            .segments
            .get(TOPOLOGY_KEY)
            .map(String::as_str),
        Some(NODE)
    );
    let caps = d
        .csi
        .node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut got: Vec<i32> = caps
        .capabilities
        .into_iter()
        .filter_map(|c| match c.r#type {
            Some(Type::Rpc(r)) => Some(r.r#type),
            _ => None,
        })
        .collect();
    got.sort();
    let mut want = vec![
        rpc::Type::GetVolumeStats as i32,
        rpc::Type::GetVolumeHealth as i32,
        rpc::Type::GetStorageHealth as i32,
        rpc::Type::SingleNodeMultiWriter as i32,
        rpc::Type::ExpandVolume as i32,
    ];
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_bind_left_half_done_by_a_crash_is_finished_by_the_retry() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-half", 0).await;
    for (name, readonly) in [("pod-half-rw", false), ("pod-half-ro", true)] {
        let target = d.target(name);
        bind_as_a_crash_left_it(&d, &id, &target);
        let before = mount_options(Path::new(&target)).unwrap();
        assert!(!before.contains("nosuid"), "{before}");
        d.publish(&id, &target, readonly).await.unwrap();
        let after = mount_options(Path::new(&target)).unwrap();
        assert!(
            after.contains("nosuid") && after.contains("nodev"),
            "{after}"
        );
        assert_eq!(after.starts_with("ro,"), readonly, "{after}");
        d.unpublish(&id, &target).await.unwrap();
    }
    assert!(d.scratch.mounts().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishes_and_unpublishes_leave_one_consistent_state() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-race", 0).await;
    let target = d.target("pod-race");
    for round in 0..2 {
        let mut calls = Vec::new();
        for _ in 0..8 {
            let mut node = d.csi.node.clone();
            let (id, target) = (id.clone(), target.clone());
            calls.push(tokio::spawn(async move {
                if round == 0 {
                    node.node_publish_volume(publish_request(&id, &target, false))
                        .await
                        .map(drop)
                } else {
                    node.node_unpublish_volume(hostpath_csi::csi::NodeUnpublishVolumeRequest {
                        volume_id: id,
                        target_path: target,
                    })
                    .await
                    .map(drop)
                }
            }));
        }
        let mut succeeded = 0;
        for call in calls {
            match call.await.unwrap() {
                Ok(()) => succeeded += 1,
                Err(status) => assert_eq!(status.code(), Code::Aborted, "{}", status.message()),
            }
        }
        assert!(succeeded >= 1);
        let expected_mounts = if round == 0 { 1 } else { 0 };
        assert_eq!(d.scratch.mounts().len(), expected_mounts, "round {round}");
    }
    assert!(!Path::new(&target).exists());
    d.unpublish(&id, &target).await.unwrap();
}

#[tokio::test]
async fn targets_outside_the_kubelet_directory_are_refused() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-outside", 0).await;
    // The harness's kubelet directory is its scratch directory.
    let outside = common::Scratch::new(); // detaches its mounts when dropped
    let target = outside.path().join("mount").to_string_lossy().into_owned();
    assert_code(
        d.publish(&id, &target, false).await,
        Code::InvalidArgument,
        "--kubelet-dir",
    );
    assert!(!Path::new(&target).exists());
    // Unpublish elsewhere touches nothing, not even an existing mount.
    let held = outside.path().join("held");
    outside.mount_tmpfs(&held, "1m");
    let held_path = held.to_string_lossy().into_owned();
    assert_code(
        d.unpublish(&id, &held_path).await,
        Code::InvalidArgument,
        "--kubelet-dir",
    );
    assert!(
        mount_options(&held).is_some(),
        "the mount outside was left alone"
    );
    nix::mount::umount2(&held, nix::mount::MntFlags::MNT_DETACH).unwrap();
}

/// A bind of volume `id` onto `target` without the restricting remount, as
/// an older driver that died between the two left it.
fn bind_as_a_crash_left_it(d: &TestDriver, id: &str, target: &str) {
    std::fs::create_dir(target).unwrap();
    nix::mount::mount(
        Some(&d.volume_dir(id)),
        Path::new(target),
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
}

/// A bind an older driver left without its restricting remount (a crash
/// between the two): for a memory volume its flags are the tmpfs's own,
/// nosuid and nodev, which once looked finished. A read-only publish or one
/// with noexec must finish it with every flag, not answer ALREADY_EXISTS or
/// drop noexec.
#[tokio::test]
async fn a_half_done_bind_is_finished_with_every_flag_asked_for() {
    let mut d = TestDriver::start().await;
    for (name, readonly, flag, wanted) in [
        ("ro", true, None, ["ro", "nosuid", "nodev"]),
        (
            "noexec",
            false,
            Some("noexec"),
            ["noexec", "nosuid", "nodev"],
        ),
    ] {
        let id = d
            .create_from(create_request_with(
                &format!("pvc-{name}"),
                1 << 20,
                &[("kind", "memory")],
            ))
            .await;
        let target = d.target(&format!("pod-{name}"));
        bind_as_a_crash_left_it(&d, &id, &target);
        let mut request = publish_request(&id, &target, readonly);
        if let (Some(flag), Some(AccessType::Mount(mount))) = (
            flag,
            request
                .volume_capability
                .as_mut()
                .and_then(|c| c.access_type.as_mut()),
        ) {
            mount.mount_flags.push(flag.to_owned());
        }
        d.csi.node.node_publish_volume(request).await.unwrap();
        let options = mount_options(Path::new(&target)).unwrap();
        for flag in wanted {
            assert!(
                options.split(',').any(|o| o == flag),
                "{name}: {flag} missing in {options}"
            );
        }
        d.unpublish(&id, &target).await.unwrap();
    }
}
