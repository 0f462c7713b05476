//! What survives a driver restart: volumes, published mounts, half-done work.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{
    NODE, TestDriver, assert_code, create_request, delete, listed_in_pages, mount_options,
};
use hostpath_csi::csi::{
    CapacityRange, ControllerExpandVolumeRequest, ControllerGetVolumeRequest, ListVolumesRequest,
};
use tonic::Code;

#[tokio::test]
async fn volumes_and_published_mounts_survive_a_restart() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-keep", 1 << 20).await;
    let idle = d.create("pvc-idle", 0).await;
    let target = d.target("pod-keep");
    d.publish(&id, &target, true).await.unwrap();
    std::fs::write(d.volume_dir(&id).join("data"), b"survives").unwrap();

    let mut d = d.restart().await;
    assert!(
        mount_options(Path::new(&target))
            .unwrap()
            .starts_with("ro,"),
        "mount left alone"
    );
    assert_eq!(
        std::fs::read(Path::new(&target).join("data")).unwrap(),
        b"survives"
    );
    let listed = d
        .csi
        .controller
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 2);
    let got = d
        .csi
        .controller
        .controller_get_volume(ControllerGetVolumeRequest {
            volume_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.status.unwrap().published_node_ids,
        vec![NODE.to_owned()]
    );
    assert_eq!(got.volume.unwrap().capacity_bytes, 1 << 20);
    assert_code(
        d.csi.controller.delete_volume(delete(&id)).await,
        Code::FailedPrecondition,
        &target,
    );
    // The same publish again is recognised as done; the other mode is not.
    d.publish(&id, &target, true).await.unwrap();
    assert_code(
        d.publish(&id, &target, false).await,
        Code::AlreadyExists,
        "readonly",
    );
    assert_eq!(d.create("pvc-keep", 1 << 20).await, id);

    d.unpublish(&id, &target).await.unwrap();
    d.csi.controller.delete_volume(delete(&id)).await.unwrap();
    d.csi.controller.delete_volume(delete(&idle)).await.unwrap();
    assert!(d.scratch.mounts().is_empty());
}

#[tokio::test]
async fn a_create_retried_after_a_crash_returns_the_same_volume_with_one_directory() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-crash", 1 << 20).await;
    // As if the driver died after writing the record but before mkdir.
    std::fs::remove_dir(d.volume_dir(&id)).unwrap();
    let mut d = d.restart_after_crash().await;
    assert_eq!(d.create("pvc-crash", 1 << 20).await, id);
    assert!(d.volume_dir(&id).is_dir());
    assert_eq!(
        std::fs::read_dir(d.pool().join("volumes")).unwrap().count(),
        1
    );
    assert_eq!(std::fs::read_dir(d.pool().join("meta")).unwrap().count(), 1);
}

#[tokio::test]
async fn a_delete_interrupted_after_the_rename_finishes_on_retry_and_at_start() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-half-deleted", 0).await;
    std::fs::write(d.volume_dir(&id).join("data"), b"x").unwrap();
    // As if the driver died after moving the directory to the trash but
    // before removing the record and emptying the trash.
    let trashed = d.pool().join(".trash").join(format!("{id}.1"));
    std::fs::rename(d.volume_dir(&id), &trashed).unwrap();
    let mut d = d.restart_after_crash().await;
    common::wait_trash_empty(&d.pool());
    d.csi.controller.delete_volume(delete(&id)).await.unwrap();
    assert!(!d.pool().join("meta").join(format!("{id}.json")).exists());
}

#[tokio::test]
async fn a_fifo_or_socket_named_as_a_record_is_reported_and_does_not_hang_the_start() {
    let mut d = TestDriver::start().await;
    let good = d.create("pvc-good", 0).await;
    let meta = d.pool().join("meta");
    nix::unistd::mkfifo(
        &meta.join("vol-fifo.json"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(meta.join("vol-socket.json")).unwrap();
    let restarted = tokio::time::timeout(Duration::from_secs(30), d.restart_after_crash()).await;
    let mut d = restarted.expect("the driver started within 30 s");
    let mut seen: Vec<(String, bool, String)> = common::listed_health_in_pages(&mut d.csi, 10)
        .await
        .into_iter()
        .map(|(id, reasons, message)| {
            assert!(
                reasons.iter().all(|r| r == "RecordUnreadable"),
                "{reasons:?}"
            );
            (id, !reasons.is_empty(), message)
        })
        .collect();
    seen.sort();
    let ids: Vec<&str> = seen.iter().map(|(id, _, _)| id.as_str()).collect();
    let mut expected = vec![good.as_str(), "vol-fifo", "vol-socket"];
    expected.sort();
    assert_eq!(ids, expected);
    for (id, abnormal, message) in &seen {
        let odd = id != &good;
        assert_eq!(*abnormal, odd, "{id}: {message}");
        assert_eq!(
            message.contains("not a regular file"),
            odd,
            "{id}: {message}"
        );
    }
}

#[tokio::test]
async fn a_corrupt_record_does_not_stop_the_others_being_served() {
    let mut d = TestDriver::start().await;
    let good = d.create("pvc-good", 0).await;
    let bad = d.create("pvc-bad", 0).await;
    let record = d.pool().join("meta").join(format!("{bad}.json"));
    std::fs::write(&record, b"{\"id\":\"vol-").unwrap();
    std::fs::write(d.pool().join("meta").join(".vol-x.json.tmp"), b"half").unwrap();
    let mut d = d.restart_after_crash().await;
    // Listed, one page at a time, with the unreadable one abnormal.
    let mut seen = Vec::new();
    for (id, reasons, message) in common::listed_health_in_pages(&mut d.csi, 1).await {
        seen.push((id, !reasons.is_empty(), message));
    }
    assert_eq!(listed_in_pages(&mut d.csi, 1).await.len(), 2);
    seen.sort();
    let mut ids: Vec<&String> = seen.iter().map(|(id, _, _)| id).collect();
    ids.sort();
    let mut expected = vec![&bad, &good];
    expected.sort();
    assert_eq!(ids, expected);
    for (id, abnormal, message) in &seen {
        assert_eq!(*abnormal, id == &bad, "{id}: {message}");
    }
    let got = common::health(&mut d.csi, &bad).await;
    assert!(
        got.len() == 1 && got[0].0 == "RecordUnreadable" && got[0].1.contains("could not be read"),
        "{got:?}"
    );
    assert!(record.exists(), "a corrupt record is left for the operator");
    assert!(!d.pool().join("meta").join(".vol-x.json.tmp").exists());
    // The unreadable volume is neither overwritten nor deleted.
    assert_code(
        d.csi
            .controller
            .create_volume(create_request("pvc-bad", 0))
            .await,
        Code::FailedPrecondition,
        "unreadable record",
    );
    assert_code(
        d.csi.controller.delete_volume(delete(&bad)).await,
        Code::FailedPrecondition,
        "unreadable record",
    );
    assert_eq!(std::fs::read(&record).unwrap(), b"{\"id\":\"vol-");
    assert!(d.volume_dir(&bad).is_dir());
    let target = d.target("pod-good");
    d.publish(&good, &target, false).await.unwrap();
    d.unpublish(&good, &target).await.unwrap();
    assert_code(
        d.csi
            .controller
            .create_volume(create_request("pvc-good", 5))
            .await,
        Code::AlreadyExists,
        "pvc-good",
    );
}

#[tokio::test]
async fn publications_are_found_when_the_pool_path_itself_holds_a_volumes_directory() {
    // A pool at <scratch>/volumes/pool: its volumes live in
    // <scratch>/volumes/pool/volumes/<id>, two "volumes" in the path.
    let scratch = common::Scratch::new();
    let pool = scratch.path().join("volumes").join("pool");
    std::fs::create_dir_all(&pool).unwrap();
    let mut d = TestDriver::start_in(scratch, move |c| c.pools[0].1 = pool).await;
    let id = d.create("pvc-nested-name", 0).await;
    let target = d.target("pod-nested");
    d.publish(&id, &target, false).await.unwrap();
    assert_code(
        d.csi.controller.delete_volume(delete(&id)).await,
        Code::FailedPrecondition,
        &target,
    );
    let mut d = d.restart().await;
    assert_code(
        d.csi.controller.delete_volume(delete(&id)).await,
        Code::FailedPrecondition,
        &target,
    );
    d.unpublish(&id, &target).await.unwrap();
    d.csi.controller.delete_volume(delete(&id)).await.unwrap();
}

#[tokio::test]
async fn a_clean_stop_snapshots_the_records_and_a_stale_or_broken_snapshot_is_set_aside() {
    let mut d = TestDriver::start().await;
    let a = d.create("pvc-a", 1 << 20).await;
    let b = d.create("pvc-b", 2 << 20).await;
    let c = d.create("pvc-c", 0).await;
    let snapshot = d.pool().join("records.snapshot");
    d.shutdown().await;
    assert!(snapshot.is_file(), "a clean stop writes the snapshot");
    let old = d.scratch.path().join("old.snapshot");
    std::fs::copy(&snapshot, &old).unwrap();

    let mut d = d.restart().await;
    assert!(!snapshot.exists(), "the start that reads it removes it");
    let mut expected = vec![(a.clone(), 1 << 20), (b.clone(), 2 << 20), (c.clone(), 0)];
    expected.sort();
    assert_eq!(common::listed(&mut d.csi).await, expected);

    // Changed since the old snapshot: one record replaced by another (same
    // count, other names); then, since the second, one record rewritten in
    // place (same names, another inode).
    d.csi.controller.delete_volume(delete(&c)).await.unwrap();
    let e = d.create("pvc-e", 0).await;
    d.shutdown().await;
    let second = d.scratch.path().join("second.snapshot");
    std::fs::copy(&snapshot, &second).unwrap();
    let mut d = d.restart().await;
    d.csi
        .controller
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: a.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: 4 << 20,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut expected = vec![(a.clone(), 4 << 20), (b.clone(), 2 << 20), (e.clone(), 0)];
    expected.sort();
    let broken = b"{\"version\":1,\"entr".to_vec();
    for planted in [
        std::fs::read(&old).unwrap(),
        std::fs::read(&second).unwrap(),
        broken,
    ] {
        d.shutdown().await;
        std::fs::write(&snapshot, &planted).unwrap();
        std::fs::write(d.pool().join(".records.snapshot.tmp"), b"half").unwrap();
        d = d.restart().await;
        assert!(!snapshot.exists());
        assert!(!d.pool().join(".records.snapshot.tmp").exists());
        assert_eq!(
            common::listed(&mut d.csi).await,
            expected,
            "a planted snapshot is not believed"
        );
    }

    // A crash writes none; the next start reads every record.
    let mut d = d.restart_after_crash().await;
    assert!(!snapshot.exists());
    assert_eq!(common::listed(&mut d.csi).await, expected);
}

#[tokio::test]
async fn entries_without_a_record_are_quarantined_at_start_never_deleted() {
    let mut d = TestDriver::start().await;
    let kept = d.create("pvc-kept", 0).await;
    std::fs::write(d.volume_dir(&kept).join("data"), b"mine").unwrap();
    let volumes = d.pool().join("volumes");
    std::fs::create_dir(volumes.join("vol-orphan")).unwrap();
    std::fs::write(volumes.join("vol-orphan/data"), b"whose?").unwrap();
    std::fs::write(volumes.join("stray file"), b"?").unwrap();
    // A mount point cannot be moved: it is reported and left alone.
    d.scratch.mount_tmpfs(&volumes.join("vol-mounted"), "1m");

    let mut d = d.restart_after_crash().await;
    let mut left: Vec<String> = std::fs::read_dir(&volumes)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, [kept.clone(), "vol-mounted".to_owned()]);
    let quarantined: Vec<std::path::PathBuf> = std::fs::read_dir(d.pool().join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(quarantined.len(), 2, "{quarantined:?}");
    let orphan = quarantined
        .iter()
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("vol-orphan.")
        })
        .expect("the orphan directory is kept");
    assert_eq!(std::fs::read(orphan.join("data")).unwrap(), b"whose?");
    assert_eq!(
        std::fs::read(d.volume_dir(&kept).join("data")).unwrap(),
        b"mine"
    );
    let target = d.target("pod-kept");
    d.publish(&kept, &target, false).await.unwrap();
    d.unpublish(&kept, &target).await.unwrap();
}

#[tokio::test]
async fn a_snapshot_is_set_aside_when_meta_changed_even_with_the_same_files() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-edited", 1 << 20).await;
    d.shutdown().await;
    assert!(d.pool().join("records.snapshot").is_file());
    // Edited in place (same inode) by a tool that also left and removed a
    // file beside it: only meta/'s change time tells.
    let record = d.pool().join("meta").join(format!("{id}.json"));
    let text = std::fs::read_to_string(&record).unwrap();
    std::fs::write(&record, text.replace("1048576", "2097152")).unwrap();
    std::fs::write(d.pool().join("meta/.edit.swp"), b"").unwrap();
    std::fs::remove_file(d.pool().join("meta/.edit.swp")).unwrap();
    let mut d = d.restart().await;
    assert_eq!(common::listed(&mut d.csi).await, vec![(id, 2 << 20)]);
}

#[tokio::test]
async fn entries_of_a_record_naming_another_pool_are_not_quarantined() {
    let d = TestDriver::start().await;
    let foreign = "vol-foreign";
    let record = format!(
        r#"{{"id":"{foreign}","name":"pvc-foreign","pool":"elsewhere","kind":"directory","capacity_bytes":0}}"#
    );
    std::fs::write(d.pool().join(format!("meta/{foreign}.json")), record).unwrap();
    std::fs::create_dir(d.pool().join("volumes").join(foreign)).unwrap();
    let d = d.restart_after_crash().await;
    assert!(d.pool().join("volumes").join(foreign).is_dir());
    assert!(!d.pool().join("quarantine").exists());
}

#[tokio::test]
async fn a_pool_serves_one_driver_process_at_a_time() {
    let d = TestDriver::start().await;
    let second = hostpath_csi::startup::open(d.config.clone()).unwrap_err();
    assert!(second.to_string().contains("in use by another"), "{second}");
    // Nor one pool under two names.
    let scratch = common::Scratch::new();
    let mut twice = d.config.clone();
    twice.pools = ["a", "b"]
        .iter()
        .map(|name| {
            (
                hostpath_csi::ids::PoolName::parse(name).unwrap(),
                scratch.path().to_owned(),
            )
        })
        .collect();
    let refused = hostpath_csi::startup::open(twice).unwrap_err();
    assert!(refused.to_string().contains("given twice"), "{refused}");
}
