//! Static hostPath volumes: the eight Kubernetes types, allowed prefixes,
//! symlinks refused, through the real gRPC interface with real bind mounts.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{Scratch, TestDriver, assert_code, delete, mount_options, publish_request};

use tonic::Code;

/// A driver allowing static volumes beneath `<scratch>/host`.
async fn driver() -> (TestDriver, PathBuf) {
    let scratch = Scratch::new();
    let host = scratch.path().join("host");
    std::fs::create_dir(&host).unwrap();
    let allowed = host.clone();
    let d = TestDriver::start_in(scratch, |c| c.allowed_host_paths = vec![allowed]).await;
    (d, host)
}

async fn publish_static(
    d: &mut TestDriver,
    target: &str,
    path: &Path,
    kind: &str,
    readonly: bool,
) -> Result<(), tonic::Status> {
    let mut request = publish_request("static-pv", target, readonly);
    request
        .volume_context
        .insert("path".into(), path.to_string_lossy().into_owned());
    request.volume_context.insert("type".into(), kind.into());
    d.csi.node.node_publish_volume(request).await.map(drop)
}

fn mknod(path: &Path, kind: nix::sys::stat::SFlag, major: u64, minor: u64) {
    nix::sys::stat::mknod(
        path,
        kind,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(major, minor),
    )
    .unwrap();
}

#[tokio::test]
async fn only_a_pv_whose_handle_says_static_publishes_a_host_path() {
    let (mut d, host) = driver().await;
    std::fs::create_dir(host.join("secret")).unwrap();
    std::fs::write(host.join("secret/key"), b"admin's").unwrap();
    let path = host.join("secret").to_string_lossy().into_owned();
    // An inline volume as kubelet sends it with podInfoOnMount off: a
    // minted id and the pod author's attributes, no ephemeral key; then the
    // same with the key forged, and an admin's handle without the prefix.
    let inline_id = format!("csi-{}", "ab".repeat(32));
    let cases = [
        (inline_id.as_str(), None, "static-"),
        (inline_id.as_str(), Some("false"), "static-"),
        ("shared-data", None, "static-"),
        ("static-pv", Some("True"), "ephemeral"),
    ];
    for (id, ephemeral, message) in cases {
        let target = d.target(&format!("pod-{id}-{ephemeral:?}"));
        let mut request = publish_request(id, &target, false);
        request.volume_context.insert("path".into(), path.clone());
        request
            .volume_context
            .insert("type".into(), "Directory".into());
        if let Some(value) = ephemeral {
            request
                .volume_context
                .insert("csi.storage.k8s.io/ephemeral".into(), value.into());
        }
        assert_code(
            d.csi.node.node_publish_volume(request).await,
            Code::InvalidArgument,
            message,
        );
        assert!(!Path::new(&target).exists(), "{id}");
    }
    assert!(d.scratch.mounts().is_empty());
    // A PV's handle, with the key kubelet adds when podInfoOnMount is on.
    let target = d.target("pod-pv");
    let mut request = publish_request("static-pv", &target, false);
    request.volume_context.insert("path".into(), path);
    request
        .volume_context
        .insert("type".into(), "Directory".into());
    request
        .volume_context
        .insert("csi.storage.k8s.io/ephemeral".into(), "false".into());
    d.csi.node.node_publish_volume(request).await.unwrap();
    assert_eq!(
        std::fs::read(Path::new(&target).join("key")).unwrap(),
        b"admin's"
    );
    d.unpublish("static-pv", &target).await.unwrap();
}

#[tokio::test]
async fn directory_or_create_makes_missing_parents_0755_and_serves_them() {
    let (mut d, host) = driver().await;
    let path = host.join("a/b/c");
    let target = d.target("pod-doc");
    publish_static(&mut d, &target, &path, "DirectoryOrCreate", false)
        .await
        .unwrap();
    for dir in [host.join("a"), host.join("a/b"), path.clone()] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755, "{}", dir.display());
    }
    std::fs::write(Path::new(&target).join("written"), b"by the pod").unwrap();
    assert_eq!(std::fs::read(path.join("written")).unwrap(), b"by the pod");
    publish_static(&mut d, &target, &path, "DirectoryOrCreate", false)
        .await
        .unwrap();
    d.unpublish("static-pv", &target).await.unwrap();
    assert!(
        path.join("written").exists(),
        "unpublish never touches host data"
    );
}

#[tokio::test]
async fn directory_and_unchecked_must_exist() {
    let (mut d, host) = driver().await;
    std::fs::create_dir(host.join("dir")).unwrap();
    std::fs::write(host.join("file"), b"x").unwrap();
    let target = d.target("pod-dir");
    publish_static(&mut d, &target, &host.join("dir"), "Directory", false)
        .await
        .unwrap();
    d.unpublish("static-pv", &target).await.unwrap();
    publish_static(&mut d, &target, &host.join("dir"), "", false)
        .await
        .unwrap();
    d.unpublish("static-pv", &target).await.unwrap();
    for kind in ["Directory", ""] {
        assert_code(
            publish_static(&mut d, &target, &host.join("missing"), kind, false).await,
            Code::NotFound,
            "does not exist",
        );
    }
    assert_code(
        publish_static(&mut d, &target, &host.join("file"), "Directory", false).await,
        Code::FailedPrecondition,
        "is a file, but type Directory needs a directory",
    );
    assert_code(
        publish_static(
            &mut d,
            &target,
            &host.join("file/below"),
            "Directory",
            false,
        )
        .await,
        Code::FailedPrecondition,
        "not a directory",
    );
    assert!(!Path::new(&target).exists());
}

#[tokio::test]
async fn file_or_create_makes_a_0644_file_and_binds_it_onto_a_file_target() {
    let (mut d, host) = driver().await;
    let path = host.join("config.txt");
    let target = d.target("pod-file");
    publish_static(&mut d, &target, &path, "FileOrCreate", false)
        .await
        .unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o644);
    assert!(std::fs::metadata(&target).unwrap().is_file());
    std::fs::write(&target, b"through the target").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"through the target");
    d.unpublish("static-pv", &target).await.unwrap();
    assert!(!Path::new(&target).exists());
    assert_code(
        publish_static(
            &mut d,
            &target,
            &host.join("no-parent/x.txt"),
            "FileOrCreate",
            false,
        )
        .await,
        Code::NotFound,
        "parent directory",
    );
    assert!(!host.join("no-parent").exists());
}

#[tokio::test]
async fn file_socket_and_devices_must_be_that_type() {
    let (mut d, host) = driver().await;
    std::fs::write(host.join("file"), b"x").unwrap();
    std::fs::create_dir(host.join("dir")).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(host.join("socket")).unwrap();
    mknod(&host.join("null"), nix::sys::stat::SFlag::S_IFCHR, 1, 3);
    mknod(&host.join("loop"), nix::sys::stat::SFlag::S_IFBLK, 7, 0);
    let target = d.target("pod-types");
    for (name, kind) in [
        ("file", "File"),
        ("socket", "Socket"),
        ("null", "CharDevice"),
        ("loop", "BlockDevice"),
    ] {
        publish_static(&mut d, &target, &host.join(name), kind, false)
            .await
            .unwrap();
        let meta = std::fs::metadata(&target).unwrap();
        let ft = meta.file_type();
        assert!(
            ft.is_file() || ft.is_socket() || ft.is_char_device() || ft.is_block_device(),
            "{kind}"
        );
        if kind == "CharDevice" {
            // Devices the admin chose stay usable: no nodev on this bind.
            std::fs::write(&target, b"discarded").unwrap();
            assert!(!mount_options(Path::new(&target)).unwrap().contains("nodev"));
        }
        d.unpublish("static-pv", &target).await.unwrap();
        assert!(!Path::new(&target).exists(), "{kind}");
    }
    let wrong = [
        ("dir", "File", "is a directory"),
        ("file", "Socket", "is a file"),
        ("loop", "CharDevice", "is a block device"),
        ("null", "BlockDevice", "is a character device"),
        ("socket", "File", "is a socket"),
    ];
    for (name, kind, found) in wrong {
        assert_code(
            publish_static(&mut d, &target, &host.join(name), kind, false).await,
            Code::FailedPrecondition,
            found,
        );
    }
    for kind in ["File", "Socket", "CharDevice", "BlockDevice"] {
        assert_code(
            publish_static(&mut d, &target, &host.join("missing"), kind, false).await,
            Code::NotFound,
            "missing",
        );
    }
    assert!(d.scratch.mounts().is_empty());
}

#[tokio::test]
async fn symlinks_prefixes_and_bad_types_are_refused() {
    let (mut d, host) = driver().await;
    let outside = d.scratch.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, host.join("link")).unwrap();
    let target = d.target("pod-hostile");
    for kind in ["Directory", "DirectoryOrCreate", "FileOrCreate", ""] {
        assert_code(
            publish_static(&mut d, &target, &host.join("link/x"), kind, false).await,
            Code::InvalidArgument,
            "symlink",
        );
    }
    assert_code(
        publish_static(&mut d, &target, &host.join("link"), "Directory", false).await,
        Code::InvalidArgument,
        "symlink",
    );
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing made outside"
    );
    assert_code(
        publish_static(&mut d, &target, Path::new("/etc"), "Directory", false).await,
        Code::InvalidArgument,
        "--allow-host-path",
    );
    assert_code(
        publish_static(
            &mut d,
            &target,
            &host.join("../outside"),
            "Directory",
            false,
        )
        .await,
        Code::InvalidArgument,
        "'..'",
    );
    assert_code(
        publish_static(&mut d, &target, &host, "Pipe", false).await,
        Code::InvalidArgument,
        "DirectoryOrCreate",
    );
    assert!(d.scratch.mounts().is_empty());

    // With no prefix allowed, static volumes are refused with a hint.
    let mut none = TestDriver::start().await;
    let target = none.target("pod-none");
    assert_code(
        publish_static(&mut none, &target, &host, "Directory", false).await,
        Code::InvalidArgument,
        "none allowed",
    );
}

#[tokio::test]
async fn read_only_static_volumes_and_delete_never_touches_host_data() {
    let (mut d, host) = driver().await;
    std::fs::write(host.join("keep"), b"admin data").unwrap();
    let target = d.target("pod-ro");
    publish_static(&mut d, &target, &host, "Directory", true)
        .await
        .unwrap();
    let err = std::fs::write(Path::new(&target).join("new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    d.unpublish("static-pv", &target).await.unwrap();
    d.csi
        .controller
        .delete_volume(delete("static-pv"))
        .await
        .unwrap();
    assert_eq!(std::fs::read(host.join("keep")).unwrap(), b"admin data");
}
