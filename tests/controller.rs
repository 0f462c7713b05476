//! Controller service through the real gRPC interface, on real pools.

mod common;

use common::{
    NODE, Scratch, TOPOLOGY_KEY, TestDriver, assert_code, create_request, create_request_with,
    delete, listed, mount_capability,
};
use hostpath_csi::csi::controller_service_capability::{Type, rpc};
use hostpath_csi::csi::volume_capability::access_mode::Mode;
use hostpath_csi::csi::volume_capability::{AccessType, BlockVolume};
use hostpath_csi::csi::{
    CapacityRange, ControllerGetCapabilitiesRequest, ControllerGetVolumeRequest,
    GetCapacityRequest, GetCapacityResponse, ListVolumesRequest, Topology, TopologyRequirement,
    ValidateVolumeCapabilitiesRequest, VolumeCapability, VolumeContentSource,
};
use tonic::Code;

/// A change that makes a valid CreateVolume request invalid.
type Mutation = Box<dyn Fn(&mut hostpath_csi::csi::CreateVolumeRequest)>;

fn topology(node: &str) -> Topology {
    Topology {
        segments: [(TOPOLOGY_KEY.to_owned(), node.to_owned())].into(),
    }
}

#[tokio::test]
async fn create_makes_one_directory_and_repeats_return_the_same_volume() {
    let mut d = TestDriver::start().await;
    let first = d
        .csi
        .controller
        .create_volume(create_request("pvc-a", 1 << 20))
        .await
        .unwrap()
        .into_inner();
    let volume = first.volume.unwrap();
    assert!(volume.volume_id.starts_with("vol-"));
    assert_eq!(volume.capacity_bytes, 1 << 20);
    assert_eq!(volume.accessible_topology, vec![topology(NODE)]);
    let dir = d.volume_dir(&volume.volume_id);
    let meta = std::fs::metadata(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o755,
        "DirectoryOrCreate mode"
    );
    assert!(
        d.pool()
            .join("meta")
            .join(format!("{}.json", volume.volume_id))
            .exists()
    );

    let again = d
        .csi
        .controller
        .create_volume(create_request("pvc-a", 1 << 20))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.volume.unwrap(), volume);
    assert_eq!(
        std::fs::read_dir(d.pool().join("volumes")).unwrap().count(),
        1
    );
}

#[tokio::test]
async fn create_with_incompatible_arguments_is_already_exists() {
    let scratch = Scratch::new();
    let fast = scratch.path().join("fast");
    std::fs::create_dir(&fast).unwrap();
    let mut d = TestDriver::start_in(scratch, |c| {
        c.pools.push((
            hostpath_csi::ids::PoolName::parse("fast").unwrap(),
            fast.clone(),
        ));
    })
    .await;
    d.create("pvc-b", 1 << 20).await;
    assert_code(
        d.csi
            .controller
            .create_volume(create_request("pvc-b", 2 << 20))
            .await,
        Code::AlreadyExists,
        "pvc-b",
    );
    let in_other_pool = create_request_with("pvc-b", 1 << 20, &[("pool", "fast")]);
    assert_code(
        d.csi.controller.create_volume(in_other_pool).await,
        Code::AlreadyExists,
        "pool default",
    );
    let unknown_pool = create_request_with("pvc-c", 1 << 20, &[("pool", "other")]);
    assert_code(
        d.csi.controller.create_volume(unknown_pool).await,
        Code::InvalidArgument,
        "pools are default, fast",
    );
    let in_fast = create_request_with("pvc-d", 1 << 20, &[("pool", "fast")]);
    let id = d.create_from(in_fast).await;
    assert!(fast.join("volumes").join(&id).is_dir());
}

#[tokio::test]
async fn create_rejects_bad_requests_with_invalid_argument() {
    let mut d = TestDriver::start().await;
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|r| r.name.clear()), "name is missing"),
        (
            Box::new(|r| r.volume_capabilities.clear()),
            "volume_capabilities",
        ),
        (
            Box::new(|r| {
                r.capacity_range = Some(CapacityRange {
                    required_bytes: -1,
                    limit_bytes: 0,
                })
            }),
            "negative",
        ),
        (
            Box::new(|r| {
                r.capacity_range = Some(CapacityRange {
                    required_bytes: 10,
                    limit_bytes: 5,
                })
            }),
            "exceeds",
        ),
        (
            Box::new(|r| {
                r.volume_capabilities = vec![mount_capability(Mode::MultiNodeMultiWriter)]
            }),
            "SINGLE_NODE_WRITER",
        ),
        (
            Box::new(|r| {
                r.volume_capabilities[0].access_type = Some(AccessType::Block(BlockVolume {}))
            }),
            "block",
        ),
        (
            Box::new(|r| {
                r.parameters.insert("colour".into(), "red".into());
            }),
            "known parameters are kind, pool, fsType",
        ),
        (
            Box::new(|r| {
                r.parameters.insert("kind".into(), "floppy".into());
            }),
            "supported kinds are directory",
        ),
        (
            Box::new(|r| {
                r.mutable_parameters.insert("iops".into(), "100".into());
            }),
            "mutable_parameters",
        ),
        (
            Box::new(|r| {
                if let Some(AccessType::Mount(m)) = &mut r.volume_capabilities[0].access_type {
                    m.mount_flags.push("suid".into());
                }
            }),
            "allowed flags are",
        ),
        (
            Box::new(|r| r.volume_content_source = Some(VolumeContentSource { r#type: None })),
            "volume_content_source",
        ),
    ];
    for (mutate, needle) in cases {
        let mut request = create_request("pvc-bad", 1 << 20);
        mutate(&mut request);
        assert_code(
            d.csi.controller.create_volume(request).await,
            Code::InvalidArgument,
            needle,
        );
    }
    let ok = create_request_with(
        "pvc-sidecar-keys",
        1 << 20,
        &[
            ("csi.storage.k8s.io/pvc/name", "data"),
            ("kind", "directory"),
            ("pool", "default"),
        ],
    );
    d.csi.controller.create_volume(ok).await.unwrap();
    assert_eq!(
        std::fs::read_dir(d.pool().join("volumes")).unwrap().count(),
        1
    );
}

#[tokio::test]
async fn create_beyond_the_pool_is_out_of_range_and_counts_promises() {
    let scratch = Scratch::new();
    let small = scratch.path().join("small");
    scratch.mount_tmpfs(&small, "16m");
    let mut d = TestDriver::start_in(scratch, |c| c.pools[0].1 = small.clone()).await;
    assert_code(
        d.csi
            .controller
            .create_volume(create_request("too-big", 1 << 30))
            .await,
        Code::OutOfRange,
        "pool default",
    );
    d.create("half", 10 << 20).await;
    // 10 MiB are promised, so another 10 MiB no longer fit in 16 MiB.
    assert_code(
        d.csi
            .controller
            .create_volume(create_request("second", 10 << 20))
            .await,
        Code::OutOfRange,
        "can give",
    );
    let capacity = d
        .csi
        .controller
        .get_capacity(GetCapacityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(capacity.available_capacity < 6 << 20, "{capacity:?}");
    assert!(capacity.available_capacity > 5 << 20, "{capacity:?}");
}

#[tokio::test]
async fn max_volumes_and_topology_limit_creation() {
    let mut d = TestDriver::start_in(Scratch::new(), |c| c.max_volumes = 1).await;
    d.create("one", 0).await;
    assert_code(
        d.csi
            .controller
            .create_volume(create_request("two", 0))
            .await,
        Code::ResourceExhausted,
        "maximum of 1",
    );
    d.create("one", 0).await; // a repeat is not a new volume

    let mut d = TestDriver::start().await;
    let mut elsewhere = create_request("elsewhere", 0);
    elsewhere.accessibility_requirements = Some(TopologyRequirement {
        requisite: vec![topology("other-node")],
        preferred: vec![topology("other-node")],
    });
    assert_code(
        d.csi.controller.create_volume(elsewhere).await,
        Code::ResourceExhausted,
        NODE,
    );
    let mut here = create_request("here", 0);
    here.accessibility_requirements = Some(TopologyRequirement {
        requisite: vec![topology("other-node"), topology(NODE)],
        preferred: vec![topology(NODE)],
    });
    d.csi.controller.create_volume(here).await.unwrap();
}

#[tokio::test]
async fn delete_removes_everything_and_tolerates_unknown_ids() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-del", 1 << 20).await;
    std::fs::write(d.volume_dir(&id).join("data"), b"x").unwrap();
    d.csi.controller.delete_volume(delete(&id)).await.unwrap();
    d.csi.controller.delete_volume(delete(&id)).await.unwrap();
    d.csi
        .controller
        .delete_volume(delete("vol-never-made"))
        .await
        .unwrap();
    assert_code(
        d.csi.controller.delete_volume(delete("")).await,
        Code::InvalidArgument,
        "missing",
    );
    assert_code(
        d.csi.controller.delete_volume(delete("../etc")).await,
        Code::InvalidArgument,
        "malformed",
    );
    assert!(!d.volume_dir(&id).exists());
    assert!(!d.pool().join("meta").join(format!("{id}.json")).exists());
    common::wait_trash_empty(&d.pool());
    assert_code(
        d.csi
            .controller
            .controller_get_volume(ControllerGetVolumeRequest { volume_id: id })
            .await,
        Code::NotFound,
        "does not exist",
    );
}

#[tokio::test]
async fn delete_of_a_published_volume_is_failed_precondition() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-pub", 0).await;
    let target = d.target("pod-1");
    d.publish(&id, &target, false).await.unwrap();
    assert_code(
        d.csi.controller.delete_volume(delete(&id)).await,
        Code::FailedPrecondition,
        &target,
    );
    assert!(d.volume_dir(&id).exists());
    d.unpublish(&id, &target).await.unwrap();
    d.csi.controller.delete_volume(delete(&id)).await.unwrap();
}

#[tokio::test]
async fn delete_never_follows_links_nor_crosses_mounts() {
    let mut d = TestDriver::start().await;
    let outside = d.scratch.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("precious"), b"keep").unwrap();
    let id = d.create("pvc-hostile", 0).await;
    let dir = d.volume_dir(&id);
    std::os::unix::fs::symlink(&outside, dir.join("dir-link")).unwrap();
    std::os::unix::fs::symlink(outside.join("precious"), dir.join("file-link")).unwrap();
    let inner = dir.join("inner-mount");
    d.scratch.mount_tmpfs(&inner, "1m");
    std::fs::write(inner.join("other-fs"), b"keep too").unwrap();

    d.csi.controller.delete_volume(delete(&id)).await.unwrap();
    assert!(!dir.exists());
    // The drain removes everything but the mount and the directory holding it.
    let trash = d.pool().join(".trash");
    let only_the_mount_left = || {
        let entries: Vec<_> = std::fs::read_dir(&trash)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.len() == 1
            && std::fs::read_dir(&entries[0])
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .eq(["inner-mount"])
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline && !only_the_mount_left() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        only_the_mount_left(),
        "drain did not finish around the mount"
    );
    let mounted = d.scratch.mounts();
    assert_eq!(mounted.len(), 1, "{mounted:?}");
    assert_eq!(
        std::fs::read(mounted[0].join("other-fs")).unwrap(),
        b"keep too"
    );
}

#[tokio::test]
async fn validate_volume_capabilities_confirms_only_what_is_supported() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-val", 0).await;
    let request = |id: &str, caps: Vec<VolumeCapability>| ValidateVolumeCapabilitiesRequest {
        volume_id: id.into(),
        volume_capabilities: caps,
        ..Default::default()
    };
    let ok = d
        .csi
        .controller
        .validate_volume_capabilities(request(
            &id,
            vec![mount_capability(Mode::SingleNodeMultiWriter)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.confirmed.is_some(), "{ok:?}");
    let again = d
        .csi
        .controller
        .validate_volume_capabilities(request(
            &id,
            vec![mount_capability(Mode::SingleNodeMultiWriter)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, ok);
    let no = d
        .csi
        .controller
        .validate_volume_capabilities(request(
            &id,
            vec![mount_capability(Mode::MultiNodeReaderOnly)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(no.confirmed.is_none());
    assert!(
        no.message.contains("MULTI_NODE_READER_ONLY"),
        "{}",
        no.message
    );
    assert_code(
        d.csi
            .controller
            .validate_volume_capabilities(request(&id, vec![]))
            .await,
        Code::InvalidArgument,
        "volume_capabilities",
    );
    assert_code(
        d.csi
            .controller
            .validate_volume_capabilities(request(
                "vol-none",
                vec![mount_capability(Mode::SingleNodeWriter)],
            ))
            .await,
        Code::NotFound,
        "vol-none",
    );
}

#[tokio::test]
async fn validation_compares_only_the_parameters_given() {
    let mut d = TestDriver::start().await;
    let id = d
        .create_from(create_request_with(
            "pvc-mem",
            1 << 20,
            &[("kind", "memory")],
        ))
        .await;
    let mut validate = async |params: &[(&str, &str)]| {
        let request = ValidateVolumeCapabilitiesRequest {
            volume_id: id.clone(),
            volume_capabilities: vec![mount_capability(Mode::SingleNodeWriter)],
            parameters: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let answer = d.csi.controller.validate_volume_capabilities(request).await;
        answer.unwrap().into_inner()
    };
    // No parameters, or only the sidecars' keys: nothing to compare.
    for params in [&[][..], &[("csi.storage.k8s.io/pv/name", "pv-1")]] {
        let answer = validate(params).await;
        assert!(answer.confirmed.is_some(), "{params:?}: {}", answer.message);
    }
    let answer = validate(&[("pool", "default")]).await;
    assert!(answer.confirmed.is_some(), "{}", answer.message);
    let answer = validate(&[("kind", "memory"), ("pool", "default")]).await;
    assert!(answer.confirmed.is_some(), "{}", answer.message);
    let answer = validate(&[("kind", "directory")]).await;
    assert!(answer.confirmed.is_none());
    assert!(answer.message.contains("kind memory"), "{}", answer.message);
}

#[tokio::test]
async fn a_list_volumes_page_is_capped_and_hands_a_token_for_the_rest() {
    let d = TestDriver::start().await;
    let total = hostpath_csi::driver::LIST_PAGE_MAX + 1;
    let mut creating = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let mut controller = d.csi.controller.clone();
        creating.spawn(async move {
            for i in (worker..total).step_by(8) {
                controller
                    .create_volume(create_request(&format!("pvc-{i}"), 0))
                    .await
                    .unwrap();
            }
        });
    }
    creating.join_all().await;
    let mut controller = d.csi.controller.clone();
    for max_entries in [0, 5000] {
        let first = controller
            .list_volumes(ListVolumesRequest {
                max_entries,
                starting_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first.entries.len(), hostpath_csi::driver::LIST_PAGE_MAX);
        assert!(!first.next_token.is_empty(), "max_entries {max_entries}");
        let rest = controller
            .list_volumes(ListVolumesRequest {
                max_entries,
                starting_token: first.next_token,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(rest.entries.len(), 1);
        assert!(rest.next_token.is_empty());
    }
}

#[tokio::test]
async fn list_volumes_pages_through_everything_once() {
    let mut d = TestDriver::start().await;
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(d.create(&format!("pvc-list-{i}"), 0).await);
    }
    let target = d.target("pod-list");
    d.publish(&made[0], &target, false).await.unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = d
            .csi
            .controller
            .list_volumes(ListVolumesRequest {
                max_entries: 2,
                starting_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.entries.len() <= 2);
        for entry in page.entries {
            let id = entry.volume.unwrap().volume_id;
            let status = entry.status.unwrap();
            let expected: Vec<String> = if id == made[0] {
                vec![NODE.into()]
            } else {
                vec![]
            };
            assert_eq!(status.published_node_ids, expected, "{id}");
            seen.push(id);
        }
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(pages, 3);
    seen.sort();
    made.sort();
    assert_eq!(seen, made);
    d.unpublish(&made[0], &target).await.ok();

    assert_code(
        d.csi
            .controller
            .list_volumes(ListVolumesRequest {
                max_entries: 0,
                starting_token: "invalid-token".into(),
            })
            .await,
        Code::Aborted,
        "invalid-token",
    );
    assert_code(
        d.csi
            .controller
            .list_volumes(ListVolumesRequest {
                max_entries: -1,
                starting_token: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "negative",
    );
}

/// GetCapacity's answer for a topology (none: any) and parameters.
async fn capacity(
    d: &mut TestDriver,
    topology: Option<Topology>,
    parameters: &[(&str, &str)],
) -> GetCapacityResponse {
    let request = GetCapacityRequest {
        accessible_topology: topology,
        parameters: parameters
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    };
    d.csi
        .controller
        .get_capacity(request)
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn get_capacity_is_free_space_minus_promises_and_zero_elsewhere() {
    // A pool of its own, so that other tests' writes do not move its free space.
    let scratch = Scratch::new();
    let pool = scratch.path().join("own");
    scratch.mount_tmpfs(&pool, "2g");
    let mut d = TestDriver::start_in(scratch, move |c| c.pools[0].1 = pool).await;
    let before = capacity(&mut d, None, &[]).await.available_capacity;
    d.create("pvc-cap", 1 << 30).await;
    let after = capacity(&mut d, Some(topology(NODE)), &[]).await;
    // The volume's directory and record take a block or two of their own.
    let drop = before - after.available_capacity;
    assert!(
        ((1 << 30)..(1 << 30) + (64 << 10)).contains(&drop),
        "{drop}"
    );
    assert_eq!(after.maximum_volume_size, Some(after.available_capacity));
    assert_eq!(
        after.minimum_volume_size,
        Some(0),
        "a directory has no minimum"
    );
    let xfs = capacity(&mut d, None, &[("kind", "file"), ("fsType", "xfs")]).await;
    assert_eq!(xfs.minimum_volume_size, Some(300 << 20));
    let elsewhere = capacity(&mut d, Some(topology("other")), &[]).await;
    assert_eq!(elsewhere.available_capacity, 0);
    // A pool other nodes may have (the chart's pools by node label): none
    // of it here, and a claim for it is refused saying why.
    let lacking = capacity(&mut d, None, &[("pool", "nvme")]).await;
    assert_eq!(lacking.available_capacity, 0);
    assert_eq!(lacking.maximum_volume_size, Some(0));
    assert_code(
        d.csi
            .controller
            .create_volume(create_request_with(
                "pvc-nvme",
                1 << 20,
                &[("pool", "nvme")],
            ))
            .await,
        Code::InvalidArgument,
        &format!("parameter pool=nvme names no pool on node {NODE}: pools are default"),
    );
    let bad = GetCapacityRequest {
        parameters: [("pool".to_owned(), "Not A Pool".to_owned())].into(),
        ..Default::default()
    };
    assert_code(
        d.csi.controller.get_capacity(bad).await,
        Code::InvalidArgument,
        "Not A Pool",
    );
}

#[tokio::test]
async fn controller_get_volume_reports_condition_and_publication() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-get", 0).await;
    let get = |id: &str| ControllerGetVolumeRequest {
        volume_id: id.into(),
    };
    let healthy = d
        .csi
        .controller
        .controller_get_volume(get(&id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(healthy.volume.unwrap().volume_id, id);
    let status = healthy.status.unwrap();
    assert!(common::health(&mut d.csi, &id).await.is_empty());
    assert!(status.published_node_ids.is_empty());

    let target = d.target("pod-get");
    d.publish(&id, &target, false).await.unwrap();
    let published = d
        .csi
        .controller
        .controller_get_volume(get(&id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        published.status.unwrap().published_node_ids,
        vec![NODE.to_owned()]
    );
    d.unpublish(&id, &target).await.unwrap();

    std::fs::remove_dir(d.volume_dir(&id)).unwrap();
    let gone = common::health(&mut d.csi, &id).await;
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].0, "BackingMissing");
    assert!(gone[0].1.contains("is missing"), "{}", gone[0].1);
    assert_code(
        d.csi.controller.controller_get_volume(get("vol-x")).await,
        Code::NotFound,
        "vol-x",
    );
    assert_code(
        d.csi.controller.controller_get_volume(get("")).await,
        Code::InvalidArgument,
        "missing",
    );
}

#[tokio::test]
async fn controller_capabilities_are_listed() {
    let mut d = TestDriver::start().await;
    let caps = d
        .csi
        .controller
        .controller_get_capabilities(ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    let mut got: Vec<i32> = caps
        .into_iter()
        .filter_map(|c| match c.r#type {
            Some(Type::Rpc(r)) => Some(r.r#type),
            _ => None,
        })
        .collect();
    got.sort();
    let mut want: Vec<i32> = [
        rpc::Type::CreateDeleteVolume,
        rpc::Type::ListVolumes,
        rpc::Type::GetCapacity,
        rpc::Type::GetVolume,
        rpc::Type::GetVolumeHealth,
        rpc::Type::ListVolumeHealth,
        rpc::Type::SingleNodeMultiWriter,
        rpc::Type::ListVolumesPublishedNodes,
        rpc::Type::ExpandVolume,
        rpc::Type::CreateDeleteSnapshot,
        rpc::Type::ListSnapshots,
        rpc::Type::GetSnapshot,
        rpc::Type::CloneVolume,
    ]
    .into_iter()
    .map(|t| t as i32)
    .collect();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_of_one_name_converge_on_one_volume() {
    let d = TestDriver::start().await;
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut controller = d.csi.controller.clone();
        calls.push(tokio::spawn(async move {
            controller
                .create_volume(create_request("pvc-race", 1 << 20))
                .await
        }));
    }
    let mut ids = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(response) => ids.push(response.into_inner().volume.unwrap().volume_id),
            Err(status) => assert_eq!(status.code(), Code::Aborted, "{}", status.message()),
        }
    }
    assert!(!ids.is_empty());
    ids.dedup();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        std::fs::read_dir(d.pool().join("volumes")).unwrap().count(),
        1
    );
    assert_eq!(std::fs::read_dir(d.pool().join("meta")).unwrap().count(), 1);
}

#[tokio::test]
async fn delete_is_refused_while_any_mount_of_the_volume_exists() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-subpath", 0).await;
    // A bind of a directory inside the volume (as kubelet makes for subPath),
    // which the driver itself never recorded.
    let inside = d.volume_dir(&id).join("sub");
    std::fs::create_dir(&inside).unwrap();
    let elsewhere = d.scratch.path().join("subpath-mount");
    std::fs::create_dir(&elsewhere).unwrap();
    nix::mount::mount(
        Some(&inside),
        &elsewhere,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    assert_code(
        d.csi.controller.delete_volume(delete(&id)).await,
        Code::FailedPrecondition,
        &elsewhere.display().to_string(),
    );
    assert!(inside.exists());
    nix::mount::umount2(&elsewhere, nix::mount::MntFlags::empty()).unwrap();
    d.csi.controller.delete_volume(delete(&id)).await.unwrap();
}

#[tokio::test]
async fn a_limit_alone_gets_what_the_pool_can_give() {
    let scratch = Scratch::new();
    let small = scratch.path().join("small");
    scratch.mount_tmpfs(&small, "16m");
    let mut d = TestDriver::start_in(scratch, |c| c.pools[0].1 = small.clone()).await;
    let mut request = create_request("pvc-limit", 0);
    request.capacity_range = Some(CapacityRange {
        required_bytes: 0,
        limit_bytes: 1 << 30,
    });
    let volume = d
        .csi
        .controller
        .create_volume(request)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert!(
        volume.capacity_bytes > 15 << 20 && volume.capacity_bytes <= 16 << 20,
        "{}",
        volume.capacity_bytes
    );
}

#[tokio::test]
async fn a_limit_alone_on_a_full_pool_is_refused_never_unlimited() {
    let scratch = Scratch::new();
    let small = scratch.path().join("small");
    scratch.mount_tmpfs(&small, "16m");
    let mut d = TestDriver::start_in(scratch, |c| c.pools[0].1 = small.clone()).await;
    let limit_only = |name: &str| {
        let mut request = create_request(name, 0);
        request.capacity_range = Some(CapacityRange {
            required_bytes: 0,
            limit_bytes: 1 << 30,
        });
        request
    };
    // The first takes all the pool can give; nothing is left to promise.
    let first = d.csi.controller.create_volume(limit_only("pvc-all")).await;
    let first = first.unwrap().into_inner().volume.unwrap();
    assert_code(
        d.csi
            .controller
            .create_volume(limit_only("pvc-none-left"))
            .await,
        Code::OutOfRange,
        "4096 bytes needed",
    );
    let volumes = listed(&mut d.csi).await;
    assert_eq!(volumes, vec![(first.volume_id, first.capacity_bytes)]);
}

#[tokio::test]
async fn sizes_are_rounded_up_to_whole_blocks() {
    let mut d = TestDriver::start().await;
    for (name, params) in [("pvc-dir", &[][..]), ("pvc-mem", &[("kind", "memory")])] {
        let request = create_request_with(name, 1000, params);
        let created = d.csi.controller.create_volume(request).await.unwrap();
        assert_eq!(
            created.into_inner().volume.unwrap().capacity_bytes,
            4096,
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_repeat_must_match_topology_and_validation_compares_parameters() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-topo", 0).await;
    let mut elsewhere = create_request("pvc-topo", 0);
    elsewhere.accessibility_requirements = Some(TopologyRequirement {
        requisite: vec![topology("other-node")],
        preferred: vec![],
    });
    assert_code(
        d.csi.controller.create_volume(elsewhere).await,
        Code::AlreadyExists,
        "reachable",
    );

    let mut request = ValidateVolumeCapabilitiesRequest {
        volume_id: id,
        volume_capabilities: vec![mount_capability(Mode::SingleNodeWriter)],
        ..Default::default()
    };
    request.parameters.insert("kind".into(), "directory".into());
    let same = d
        .csi
        .controller
        .validate_volume_capabilities(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(same.confirmed.is_some(), "{same:?}");
    request.parameters.insert("pool".into(), "nope".into());
    let other = d
        .csi
        .controller
        .validate_volume_capabilities(request)
        .await
        .unwrap()
        .into_inner();
    assert!(other.confirmed.is_none());
    assert!(other.message.contains("nope"), "{}", other.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deletes_converge_on_nothing_left() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-delete-race", 1 << 20).await;
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut controller = d.csi.controller.clone();
        let id = id.clone();
        calls.push(tokio::spawn(async move {
            controller.delete_volume(delete(&id)).await
        }));
    }
    for call in calls {
        if let Err(status) = call.await.unwrap() {
            assert_eq!(status.code(), Code::Aborted, "{}", status.message());
        }
    }
    // Whatever raced, a retry (as the provisioner makes) finishes the job.
    d.csi.controller.delete_volume(delete(&id)).await.unwrap();
    assert!(!d.volume_dir(&id).exists());
    assert_eq!(std::fs::read_dir(d.pool().join("meta")).unwrap().count(), 0);
}
