//! Hostile input: every id, name, parameter, volume_context value, mount
//! flag, target and staging path tried with `..`, absolute paths, symlinks,
//! NUL and control characters, over-long strings and shell metacharacters.
//! Each call must be refused with INVALID_ARGUMENT (NOT_FOUND where the spec
//! says so) or, for input that is odd but harmless, served inside the pool;
//! and nothing outside the pool and the targets may change — checked against
//! a sentinel tree hashed before and after.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};

use common::{
    Scratch, TestDriver, create_request_with, delete, kubelet_target, mount_capability,
    publish_request,
};
use hostpath_csi::csi::volume_capability::access_mode::Mode;
use hostpath_csi::csi::volume_capability::{AccessType, MountVolume};
use hostpath_csi::csi::{
    CapacityRange, ControllerExpandVolumeRequest, ControllerGetVolumeRequest,
    NodeExpandVolumeRequest, NodeGetVolumeStatsRequest, NodePublishVolumeRequest,
    NodeStageVolumeRequest, NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest,
};
use tonic::Code;

/// Strings that must never become a path, a command or a mount option.
fn hostile(scratch: &Path) -> Vec<String> {
    let sentinel = scratch.join("sentinel");
    vec![
        "..".into(),
        "../../sentinel".into(),
        format!("{}", sentinel.display()),
        format!("{}/../sentinel", scratch.join("kubelet").display()),
        "/etc/passwd".into(),
        "vol-x/../../sentinel".into(),
        "a\0b".into(),
        "tab\there".into(),
        "new\nline".into(),
        "\u{1b}[31mred".into(),
        "$(touch /tmp/hostpath-csi-pwned)".into(),
        "`touch /tmp/hostpath-csi-pwned`".into(),
        "; rm -rf / #".into(),
        "x".repeat(5000),
        String::new(),
    ]
}

/// Path → (type, mode, size, content or link target) of everything under
/// `root`, symlinks not followed.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, u64, Vec<u8>)> {
    let mut seen = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let content = if meta.file_type().is_symlink() {
            std::fs::read_link(&path)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else if meta.is_file() {
            std::fs::read(&path).unwrap()
        } else {
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
            Vec::new()
        };
        seen.insert(path, (meta.mode(), meta.len(), content));
    }
    seen
}

/// A driver whose kubelet directory is `<scratch>/kubelet`, allowing static
/// volumes beneath `<scratch>/host`, beside a sentinel tree and symlinks
/// planted to lead out to it.
async fn setup() -> (TestDriver, PathBuf) {
    let scratch = Scratch::new();
    let root = scratch.path().to_path_buf();
    let sentinel = root.join("sentinel");
    std::fs::create_dir_all(sentinel.join("dir")).unwrap();
    std::fs::write(sentinel.join("file"), b"precious").unwrap();
    std::fs::write(sentinel.join("dir/nested"), b"also precious").unwrap();
    symlink("/etc/hostname", sentinel.join("link")).unwrap();
    let kubelet = root.join("kubelet");
    let host = root.join("host");
    std::fs::create_dir_all(kubelet.join("pods")).unwrap();
    std::fs::create_dir_all(&host).unwrap();
    symlink(&sentinel, kubelet.join("pods/escape")).unwrap();
    symlink(&sentinel, host.join("escape")).unwrap();
    let d = TestDriver::start_in(scratch, |c| {
        c.kubelet_dir = kubelet.clone();
        c.allowed_host_paths = vec![host.clone()];
    })
    .await;
    (d, root)
}

/// The outcome of one hostile call: refused with one of `allowed`, or served.
#[track_caller]
fn refused<T>(what: &str, result: Result<T, tonic::Status>, allowed: &[Code]) {
    match result {
        Ok(_) => panic!("{what}: served"),
        Err(status) => assert!(
            allowed.contains(&status.code()),
            "{what}: {:?} {}",
            status.code(),
            status.message()
        ),
    }
}

const INVALID: &[Code] = &[Code::InvalidArgument];
const INVALID_OR_MISSING: &[Code] = &[Code::InvalidArgument, Code::NotFound];

#[tokio::test]
async fn hostile_fields_are_refused_and_nothing_outside_the_pool_changes() {
    let (mut d, root) = setup().await;
    let sentinel = root.join("sentinel");
    let before = snapshot(&sentinel);
    let kubelet = root.join("kubelet");
    let good = d.create("pvc-good", 1 << 20).await;
    let target = kubelet_target(&kubelet, "good");
    let mut calls = 0;

    for text in hostile(&root) {
        let shown = format!("{:?}", text.chars().take(40).collect::<String>());
        // Names are only hashed into ids: odd ones are served inside the
        // pool, malformed ones (empty, control characters, too long) refused.
        let named = d
            .csi
            .controller
            .create_volume(create_request_with(&text, 1 << 20, &[]))
            .await;
        calls += 1;
        match named {
            Ok(answer) => {
                let id = answer.into_inner().volume.unwrap().volume_id;
                assert!(
                    id.starts_with("vol-") && d.volume_dir(&id).is_dir(),
                    "{shown}: {id}"
                );
                d.csi.controller.delete_volume(delete(&id)).await.unwrap();
            }
            Err(status) => assert_eq!(status.code(), Code::InvalidArgument, "name {shown}"),
        }

        for key in ["pool", "kind", "fsType", "enforce", text.as_str()] {
            let value = if key == text { "x" } else { text.as_str() };
            if key.is_empty() {
                continue;
            }
            refused(
                &format!("parameter {key:?}={shown}"),
                d.csi
                    .controller
                    .create_volume(create_request_with("pvc-params", 1 << 20, &[(key, value)]))
                    .await,
                INVALID,
            );
            calls += 1;
        }

        // Ids are checked before anything is looked up.
        let id = text.clone();
        refused(
            &format!("DeleteVolume {shown}"),
            d.csi.controller.delete_volume(delete(&id)).await,
            INVALID,
        );
        refused(
            &format!("ControllerGetVolume {shown}"),
            d.csi
                .controller
                .controller_get_volume(ControllerGetVolumeRequest {
                    volume_id: id.clone(),
                })
                .await,
            INVALID_OR_MISSING,
        );
        refused(
            &format!("ControllerExpandVolume {shown}"),
            d.csi
                .controller
                .controller_expand_volume(ControllerExpandVolumeRequest {
                    volume_id: id.clone(),
                    capacity_range: Some(CapacityRange {
                        required_bytes: 2 << 20,
                        limit_bytes: 0,
                    }),
                    ..Default::default()
                })
                .await,
            INVALID,
        );
        refused(
            &format!("NodePublishVolume id {shown}"),
            d.csi
                .node
                .node_publish_volume(publish_request(&id, &target, false))
                .await,
            INVALID,
        );
        refused(
            &format!("NodeUnpublishVolume id {shown}"),
            d.csi
                .node
                .node_unpublish_volume(NodeUnpublishVolumeRequest {
                    volume_id: id.clone(),
                    target_path: target.clone(),
                })
                .await,
            INVALID,
        );
        refused(
            &format!("NodeGetVolumeStats id {shown}"),
            d.csi
                .node
                .node_get_volume_stats(NodeGetVolumeStatsRequest {
                    volume_id: id.clone(),
                    volume_path: target.clone(),
                    staging_target_path: String::new(),
                })
                .await,
            INVALID,
        );
        refused(
            &format!("NodeExpandVolume id {shown}"),
            d.csi
                .node
                .node_expand_volume(NodeExpandVolumeRequest {
                    volume_id: id.clone(),
                    volume_path: target.clone(),
                    ..Default::default()
                })
                .await,
            INVALID,
        );
        calls += 7;

        // Targets, volume paths and staging paths: absolute, normal, in
        // kubelet's layout beneath the kubelet directory, reached without a
        // symlink.
        let in_layout = |pod: &str| {
            format!(
                "{}/pods/{pod}/volumes/kubernetes.io~csi/pv/mount",
                kubelet.display()
            )
        };
        for path in [
            text.clone(),
            format!("{}/{text}", kubelet.display()),
            format!("{}/pods/escape/{text}", kubelet.display()),
            in_layout("escape"),
            in_layout(&text),
        ] {
            let served_path = path == in_layout(&text)
                && !text.contains('/')
                && !text.is_empty()
                && text != ".."
                && !text.contains('\0')
                && text.len() < 255;
            if served_path {
                // kubelet makes the parent.
                std::fs::create_dir_all(Path::new(&path).parent().unwrap()).unwrap();
            }
            let published = d
                .csi
                .node
                .node_publish_volume(publish_request(&good, &path, false))
                .await;
            calls += 1;
            if served_path {
                // An odd but harmless pod uid.
                published.unwrap_or_else(|e| panic!("target {path:?}: {e}"));
                d.unpublish(&good, &path).await.unwrap();
                assert!(!Path::new(&path).exists());
            } else {
                refused(
                    &format!("target {:?}", path.chars().take(80).collect::<String>()),
                    published,
                    INVALID,
                );
            }
            refused(
                &format!("NodeGetVolumeStats path {shown}"),
                d.csi
                    .node
                    .node_get_volume_stats(NodeGetVolumeStatsRequest {
                        volume_id: good.clone(),
                        volume_path: path.clone(),
                        staging_target_path: String::new(),
                    })
                    .await,
                INVALID_OR_MISSING,
            );
            refused(
                &format!("NodeStageVolume path {shown}"),
                d.csi
                    .node
                    .node_stage_volume(NodeStageVolumeRequest {
                        volume_id: good.clone(),
                        staging_target_path: path.clone(),
                        volume_capability: Some(mount_capability(Mode::SingleNodeWriter)),
                        ..Default::default()
                    })
                    .await,
                &[Code::InvalidArgument, Code::Unimplemented],
            );
            refused(
                &format!("NodeUnstageVolume path {shown}"),
                d.csi
                    .node
                    .node_unstage_volume(NodeUnstageVolumeRequest {
                        volume_id: good.clone(),
                        staging_target_path: path.clone(),
                    })
                    .await,
                &[Code::InvalidArgument, Code::Unimplemented],
            );
            calls += 3;
        }

        // Mount flags come from an allowlist.
        let mut request = publish_request(&good, &target, false);
        request.volume_capability = Some(hostpath_csi::csi::VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume {
                fs_type: String::new(),
                mount_flags: vec![text.clone()],
                ..Default::default()
            })),
            ..mount_capability(Mode::SingleNodeWriter)
        });
        refused(
            &format!("mount flag {shown}"),
            d.csi.node.node_publish_volume(request).await,
            INVALID,
        );
        calls += 1;

        // volume_context: a static hostPath's path and type, an inline
        // volume's attributes.
        for (key, value) in [
            ("path", text.clone()),
            (
                "path",
                format!("{}/escape/{text}", root.join("host").display()),
            ),
            (
                "path",
                format!("{}/../sentinel/{text}", root.join("host").display()),
            ),
            ("type", text.clone()),
        ] {
            let mut context = HashMap::from([
                (
                    "path".to_owned(),
                    root.join("host/new").display().to_string(),
                ),
                ("type".to_owned(), "DirectoryOrCreate".to_owned()),
            ]);
            context.insert(key.to_owned(), value.clone());
            let mut request = publish_request("static-pv", &target, false);
            request.volume_context = context;
            refused(
                &format!(
                    "volume_context {key}={:?}",
                    value.chars().take(80).collect::<String>()
                ),
                d.csi.node.node_publish_volume(request).await,
                &[
                    Code::InvalidArgument,
                    Code::FailedPrecondition,
                    Code::NotFound,
                ],
            );
            calls += 1;
        }
        for key in ["kind", "pool", "size", text.as_str()] {
            if key.is_empty() {
                continue;
            }
            let mut request: NodePublishVolumeRequest =
                publish_request("csi-inline-hostile", &target, false);
            request.volume_context = HashMap::from([
                ("csi.storage.k8s.io/ephemeral".to_owned(), "true".to_owned()),
                (key.to_owned(), text.clone()),
            ]);
            refused(
                &format!("inline attribute {key:?}={shown}"),
                d.csi.node.node_publish_volume(request).await,
                INVALID,
            );
            calls += 1;
        }
    }

    assert_eq!(snapshot(&sentinel), before, "the sentinel tree changed");
    assert!(!Path::new("/tmp/hostpath-csi-pwned").exists());
    assert_eq!(d.scratch.mounts(), Vec::<PathBuf>::new(), "mounts left");
    let mut top: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, ["csi.sock", "host", "kubelet", "pool", "sentinel"]);
    assert!(
        !root.join("host/new").exists(),
        "a refused static publish made its path"
    );
    let pool_volumes = std::fs::read_dir(d.pool().join("volumes")).unwrap().count();
    assert_eq!(pool_volumes, 1, "only pvc-good is left in the pool");
    let summary = format!(
        "hostile input: {} strings, {calls} calls, all refused or served inside the pool; sentinel tree unchanged, no mount left\n",
        hostile(&root).len()
    );
    let report = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/reliability-hostile.txt");
    std::fs::write(report, summary).unwrap();
}

/// Links a pod could plant in its volume: symlinks out to the sentinel, a
/// hard link to one of its files.
/// (through the target; the hard link beside the volume's data, in the
/// pool, as a link cannot cross the bind mount).
fn plant_links(target: &Path, volume: &Path, sentinel: &Path) {
    symlink(sentinel, target.join("out")).unwrap();
    symlink(sentinel.join("file"), target.join("file-out")).unwrap();
    std::fs::create_dir(target.join("sub")).unwrap();
    symlink("../../../sentinel", target.join("sub/up")).unwrap();
    std::fs::hard_link(sentinel.join("dir/nested"), volume.join("hard")).unwrap();
}

#[tokio::test]
async fn links_planted_in_a_volume_lead_nowhere_on_stats_unpublish_or_delete() {
    let (mut d, root) = setup().await;
    let sentinel = root.join("sentinel");
    let before = snapshot(&sentinel);
    let id = d.create("pvc-links", 1 << 20).await;
    let target = kubelet_target(&root.join("kubelet"), "links");
    d.publish(&id, &target, false).await.unwrap();
    plant_links(Path::new(&target), &d.volume_dir(&id), &sentinel);
    let usage = d.byte_usage(&id, &target).await;
    assert!(
        usage.used < 4096 * 8,
        "the walk followed a link: {} bytes",
        usage.used
    );
    d.unpublish(&id, &target).await.unwrap();
    d.csi.controller.delete_volume(delete(&id)).await.unwrap();
    common::wait_trash_empty(&d.pool());
    // The hard link's file lost one name; its content and the tree are intact.
    assert_eq!(snapshot(&sentinel), before);
}

#[tokio::test]
async fn a_directory_swapped_for_a_symlink_while_deleted_never_leads_out() {
    const ROUNDS: usize = 200;
    let (mut d, root) = setup().await;
    let sentinel = root.join("sentinel");
    let before = snapshot(&sentinel);
    let mut swaps = 0;
    for round in 0..ROUNDS {
        let id = d.create(&format!("pvc-race-{round}"), 0).await;
        let volume = d.volume_dir(&id);
        std::fs::create_dir_all(volume.join("d/deeper")).unwrap();
        for i in 0..8 {
            std::fs::write(volume.join(format!("d/f{i}")), b"x").unwrap();
        }
        symlink(&sentinel, volume.join("d.link")).unwrap();
        // The racer holds the volume directory by fd, so it follows it into
        // the trash, and swaps `d` and `d.link` there as fast as it can.
        let held = std::fs::File::open(&volume).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let racer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut swapped = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let exchanged = nix::fcntl::renameat2(
                        &held,
                        "d",
                        &held,
                        "d.link",
                        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                    );
                    if exchanged.is_err() {
                        break;
                    }
                    swapped += 1;
                }
                swapped
            })
        };
        d.csi.controller.delete_volume(delete(&id)).await.unwrap();
        // The racer goes on into the drain for a moment, then stops, as a
        // process holding the old directory would end.
        tokio::time::sleep(std::time::Duration::from_millis(round as u64 % 7)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swaps += racer.join().unwrap();
        common::wait_trash_empty(&d.pool());
        assert_eq!(
            snapshot(&sentinel),
            before,
            "round {round}: the sentinel changed"
        );
    }
    assert!(swaps > ROUNDS, "the racer hardly ran: {swaps} swaps");
}
