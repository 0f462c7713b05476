//! CSI ephemeral inline volumes: made at publish, gone at unpublish.

mod common;

use std::path::Path;

use common::{TestDriver, assert_code, listed_in_pages, publish_request};
use hostpath_csi::csi::{ControllerGetVolumeRequest, NodePublishVolumeRequest};
use tonic::Code;

fn inline(id: &str, target: &str, attributes: &[(&str, &str)]) -> NodePublishVolumeRequest {
    let mut request = publish_request(id, target, false);
    request
        .volume_context
        .insert("csi.storage.k8s.io/ephemeral".into(), "true".into());
    request
        .volume_context
        .insert("csi.storage.k8s.io/pod.name".into(), "web-0".into());
    for (k, v) in attributes {
        request.volume_context.insert(k.to_string(), v.to_string());
    }
    request
}

#[tokio::test]
async fn an_inline_volume_lives_exactly_as_long_as_its_publication() {
    let mut d = TestDriver::start().await;
    let id = "csi-0123abcd";
    let target = d.target("pod-inline");
    let request = inline(id, &target, &[("size", "8Mi")]);
    d.csi
        .node
        .node_publish_volume(request.clone())
        .await
        .unwrap();
    d.csi.node.node_publish_volume(request).await.unwrap();
    std::fs::write(Path::new(&target).join("scratch"), b"temporary").unwrap();
    assert_eq!(
        std::fs::read(d.volume_dir(id).join("scratch")).unwrap(),
        b"temporary"
    );
    let volume = d
        .csi
        .controller
        .controller_get_volume(ControllerGetVolumeRequest {
            volume_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(volume.capacity_bytes, 8 << 20);

    d.unpublish(id, &target).await.unwrap();
    assert!(!Path::new(&target).exists());
    assert!(!d.volume_dir(id).exists());
    assert!(!d.pool().join("meta").join(format!("{id}.json")).exists());
    common::wait_trash_empty(&d.pool());
    d.unpublish(id, &target).await.unwrap();
}

#[tokio::test]
async fn inline_attributes_are_checked() {
    let mut d = TestDriver::start().await;
    let target = d.target("pod-bad-inline");
    let cases = [
        (vec![("colour", "red")], "kind, pool, size"),
        (vec![("size", "lots")], "quantity"),
        (vec![("kind", "floppy")], "supported kinds"),
        (vec![("pool", "nope")], "pools are default"),
    ];
    for (attributes, needle) in cases {
        assert_code(
            d.csi
                .node
                .node_publish_volume(inline("csi-bad", &target, &attributes))
                .await,
            Code::InvalidArgument,
            needle,
        );
    }
    assert!(!Path::new(&target).exists());
    assert_eq!(std::fs::read_dir(d.pool().join("meta")).unwrap().count(), 0);
}

#[tokio::test]
async fn a_failed_inline_publish_leaves_no_volume_behind() {
    use hostpath_csi::csi::volume_capability::{AccessType, BlockVolume};
    let mut d = TestDriver::start().await;
    let target = d.target("pod-failing");
    let mut block = inline("csi-block", &target, &[("kind", "memory"), ("size", "1Mi")]);
    block.volume_capability.as_mut().unwrap().access_type = Some(AccessType::Block(BlockVolume {}));
    assert_code(
        d.csi.node.node_publish_volume(block).await,
        Code::InvalidArgument,
        "only kind=file",
    );
    assert_code(
        d.csi
            .node
            .node_publish_volume(inline("csi-file", &target, &[("kind", "file")]))
            .await,
        Code::InvalidArgument,
        "directory or memory",
    );
    // Made, mounted, then the target is in the way: the volume goes again.
    std::fs::write(&target, b"in the way").unwrap();
    assert_code(
        d.csi
            .node
            .node_publish_volume(inline(
                "csi-blocked",
                &target,
                &[("kind", "memory"), ("size", "1Mi")],
            ))
            .await,
        Code::AlreadyExists,
        "not a directory",
    );
    assert_eq!(std::fs::read_dir(d.pool().join("meta")).unwrap().count(), 0);
    assert!(d.scratch.mounts().is_empty(), "{:?}", d.scratch.mounts());
}

#[tokio::test]
async fn pages_of_volumes_cross_inline_and_provisioned_ids() {
    let mut d = TestDriver::start().await;
    let mut all = vec![d.create("pvc-1", 0).await, d.create("pvc-2", 0).await];
    let target = d.target("pod-inline-list");
    d.csi
        .node
        .node_publish_volume(inline("csi-aaaa", &target, &[]))
        .await
        .unwrap();
    all.push("csi-aaaa".into());
    let seen: Vec<String> = listed_in_pages(&mut d.csi, 1)
        .await
        .into_iter()
        .map(|e| e.volume.unwrap().volume_id)
        .collect();
    all.sort();
    assert_eq!(seen, all);
    d.unpublish("csi-aaaa", &target).await.unwrap();
}
