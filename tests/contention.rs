//! Many callers at once on one name or one target, a pool that runs out of
//! space mid-write, and what the socket lets in.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{Scratch, TestDriver, create_request, publish_request};
use hostpath_csi::csi::NodeUnpublishVolumeRequest;
use tonic::Code;

#[tokio::test]
async fn fifty_parallel_creates_of_one_name_make_one_volume() {
    let d = TestDriver::start().await;
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let mut csi = d.csi.clone();
            tokio::spawn(async move {
                csi.controller
                    .create_volume(create_request("pvc-contended", 1 << 20))
                    .await
                    .map(|answer| answer.into_inner().volume.unwrap().volume_id)
                    .map_err(|status| status.code())
            })
        })
        .collect();
    let mut ids = BTreeSet::new();
    let mut aborted = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(id) => {
                ids.insert(id);
            }
            Err(Code::Aborted) => aborted += 1,
            Err(code) => panic!("answered {code:?}"),
        }
    }
    assert_eq!(ids.len(), 1, "one id for one name: {ids:?}");
    assert!(aborted < 50, "at least one call made it");
    let id = ids.into_iter().next().unwrap();
    assert_eq!(
        std::fs::read_dir(d.pool().join("volumes")).unwrap().count(),
        1
    );
    assert_eq!(std::fs::read_dir(d.pool().join("meta")).unwrap().count(), 1);
    assert!(d.volume_dir(&id).is_dir());
}

#[tokio::test]
async fn parallel_publish_and_unpublish_of_one_target_leave_no_mount() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-racing", 1 << 20).await;
    let target = d.target("pod-racing");
    for _ in 0..10 {
        let calls: Vec<_> = (0..16)
            .map(|i| {
                let mut csi = d.csi.clone();
                let (id, target) = (id.clone(), target.clone());
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        csi.node
                            .node_publish_volume(publish_request(&id, &target, false))
                            .await
                            .map(drop)
                    } else {
                        csi.node
                            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                                volume_id: id,
                                target_path: target,
                            })
                            .await
                            .map(drop)
                    }
                })
            })
            .collect();
        for call in calls {
            if let Err(status) = call.await.unwrap() {
                assert_eq!(status.code(), Code::Aborted, "{}", status.message());
            }
        }
        let mounted = common::mount_options(Path::new(&target)).is_some();
        assert_eq!(
            d.scratch.mounts().len(),
            usize::from(mounted),
            "one mount at most"
        );
        d.unpublish(&id, &target).await.unwrap();
        assert!(d.scratch.mounts().is_empty(), "a mount leaked");
        assert!(!Path::new(&target).exists());
    }
}

#[tokio::test]
async fn a_full_pool_refuses_with_resource_exhausted_and_loses_nothing() {
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    scratch.mount_tmpfs(&pool, "256k");
    let mut d = TestDriver::start_in(scratch, |_| {}).await;
    let kept = d.create("pvc-kept", 0).await;
    // Fill what is left, so that the next record cannot be written.
    let filler = pool.join("filler");
    let mut bytes = 0usize;
    loop {
        let chunk = vec![7u8; 4096];
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&filler)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &chunk));
        if written.is_err() {
            break;
        }
        bytes += chunk.len();
        assert!(bytes < 1 << 20, "the tmpfs never filled");
    }
    let refused = d
        .csi
        .controller
        .create_volume(create_request("pvc-no-room", 0))
        .await
        .expect_err("a create on a full pool");
    assert_eq!(
        refused.code(),
        Code::ResourceExhausted,
        "{}",
        refused.message()
    );
    let meta: Vec<_> = std::fs::read_dir(pool.join("meta"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(meta, [format!("{kept}.json")], "no partial record");
    assert_eq!(std::fs::read_dir(pool.join("volumes")).unwrap().count(), 1);

    std::fs::remove_file(&filler).unwrap();
    let mut d = d.restart_after_crash().await;
    assert_eq!(common::listed(&mut d.csi).await, [(kept, 0)]);
    d.create("pvc-no-room", 0).await;
}

/// The socket inodes a process holds open.
fn socket_inodes(pid: u32) -> BTreeSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.unwrap().path()).ok())
        .filter_map(|link| {
            link.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect()
}

#[test]
fn the_socket_is_private_and_no_tcp_port_is_open() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("pool")).unwrap();
    let socket = dir.path().join("csi.sock");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hostpath-csi"))
        .arg("serve")
        .arg(format!("--endpoint=unix://{}", socket.display()))
        .arg("--node-id=n1")
        .arg(format!(
            "--pool=default={}",
            dir.path().join("pool").display()
        ))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(std::time::Instant::now() < deadline, "never served");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mode = socket.metadata().unwrap().permissions().mode() & 0o777;
    let held = socket_inodes(child.id());
    let tcp: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| line.split_whitespace().nth(9).map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(mode, 0o600, "only root may connect");
    assert!(!held.is_empty(), "the driver holds its unix socket");
    let open: Vec<_> = tcp.iter().filter(|inode| held.contains(*inode)).collect();
    assert!(open.is_empty(), "TCP sockets held: {open:?}");
}
