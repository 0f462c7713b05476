//! The real driver killed (SIGKILL, by its own failpoint) at every
//! side-effect boundary of CreateVolume (empty or restored), DeleteVolume,
//! NodePublishVolume, NodeUnpublishVolume, expansion, CreateSnapshot,
//! DeleteSnapshot and record writes; started again; the call
//! retried with identical arguments, as Kubernetes does; and the invariants
//! checked: nothing acknowledged is lost, nothing is leaked.
//!
//! Needs a test build (`--features failpoints`, as `scripts/test-all.sh`
//! runs); the counts go to `target/reliability-crash.txt`.
#![cfg(feature = "failpoints")]

mod common;

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Scratch, create_request_with, delete, kubelet_target, listed, made, publish_request};
use hostpath_csi::client::CsiClient;
use hostpath_csi::csi::volume_capability::AccessType as Type;
use hostpath_csi::csi::volume_content_source::{SnapshotSource, Type as Source};
use hostpath_csi::csi::{
    CapacityRange, ControllerExpandVolumeRequest, CreateSnapshotRequest, DeleteSnapshotRequest,
    NodeExpandVolumeRequest, NodeUnpublishVolumeRequest, VolumeContentSource,
};

/// A driver process on a pool in a scratch directory.
struct Node {
    scratch: Scratch,
    child: Option<Child>,
}

impl Node {
    fn new() -> Self {
        let scratch = Scratch::new();
        std::fs::create_dir(scratch.path().join("pool")).unwrap();
        Node {
            scratch,
            child: None,
        }
    }

    fn pool(&self) -> PathBuf {
        self.scratch.path().join("pool")
    }

    fn socket(&self) -> PathBuf {
        self.scratch.path().join("csi.sock")
    }

    fn target(&self, name: &str) -> String {
        kubelet_target(self.scratch.path(), name)
    }

    /// Starts the driver, armed to die at `failpoint`, and connects to it.
    async fn start(&mut self, failpoint: Option<&str>) -> CsiClient {
        assert!(self.child.is_none(), "a driver is running");
        let mut command = Command::new(env!("CARGO_BIN_EXE_hostpath-csi"));
        command
            .arg("serve")
            .arg(format!("--endpoint=unix://{}", self.socket().display()))
            .arg("--node-id=crash-node")
            .arg(format!("--pool=default={}", self.pool().display()))
            .arg(format!("--kubelet-dir={}", self.scratch.path().display()))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match failpoint {
            Some(point) => command.env("HOSTPATH_CSI_FAILPOINT", point),
            None => command.env_remove("HOSTPATH_CSI_FAILPOINT"),
        };
        let mut child = command.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                break;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "driver exited at start"
            );
            assert!(Instant::now() < deadline, "driver never served");
            std::thread::sleep(Duration::from_millis(5));
        }
        self.child = Some(child);
        CsiClient::connect(self.socket()).await.unwrap()
    }

    /// Waits for the driver to have killed itself at its failpoint.
    fn expect_killed(&mut self, point: &str) {
        let mut child = self.child.take().expect("a driver is running");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert_eq!(status.signal(), Some(9), "{point}: {status}");
                return;
            }
            if Instant::now() >= deadline {
                child.kill().ok();
                panic!("{point}: the driver never reached it");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the driver with SIGTERM and waits for it to exit, leaving the
    /// runtime free for the clients to see their calls through.
    async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("a driver is running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap()
    }

    /// Stops the driver as a crash would.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Directory,
    File,
    Memory,
}

impl Kind {
    fn parameter(self) -> &'static str {
        match self {
            Kind::Directory => "directory",
            Kind::File => "file",
            Kind::Memory => "memory",
        }
    }
}

const BYTES: i64 = 16 << 20;

fn create(kind: Kind, name: &str) -> hostpath_csi::csi::CreateVolumeRequest {
    create_request_with(name, BYTES, &[("kind", kind.parameter())])
}

fn unpublish(id: &str, target: &str) -> NodeUnpublishVolumeRequest {
    NodeUnpublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.into(),
    }
}

fn expand(id: &str, bytes: i64) -> ControllerExpandVolumeRequest {
    ControllerExpandVolumeRequest {
        volume_id: id.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        ..Default::default()
    }
}

/// What the node must hold after a case: these volumes (id → capacity), and
/// mounts only on these targets.
struct Expected {
    kind: Kind,
    volumes: Vec<(String, i64)>,
    published: Vec<String>,
}

/// Checks every invariant against the running driver; returns the
/// violations found.
async fn violations(node: &Node, csi: &mut CsiClient, expected: &Expected) -> Vec<String> {
    let mut found = Vec::new();
    let listed: BTreeSet<(String, i64)> = listed(csi).await.into_iter().collect();
    let wanted: BTreeSet<(String, i64)> = expected.volumes.iter().cloned().collect();
    if listed != wanted {
        found.push(format!("listed {listed:?}, expected {wanted:?}"));
    }
    let ids: BTreeSet<&str> = expected.volumes.iter().map(|(id, _)| id.as_str()).collect();
    for entry in std::fs::read_dir(node.pool().join("meta")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name
            .strip_suffix(".json")
            .is_some_and(|id| ids.contains(id))
        {
            found.push(format!("meta/{name} belongs to no kept volume"));
        }
    }
    for entry in std::fs::read_dir(node.pool().join("volumes")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        // A memory volume not yet published keeps a marker saying so.
        let id = name.strip_suffix(".img").unwrap_or(&name);
        let id = match (expected.kind, id.strip_prefix('.')) {
            (Kind::Memory, Some(marker)) => marker.strip_suffix(".unused").unwrap_or(id),
            _ => id,
        };
        if !ids.contains(id) {
            found.push(format!(
                "volumes/{name} belongs to no kept volume (an orphan)"
            ));
        }
    }
    for id in &ids {
        if !node
            .pool()
            .join("meta")
            .join(format!("{id}.json"))
            .is_file()
        {
            found.push(format!("the record of kept volume {id} is missing"));
        }
    }
    if let Ok(entries) = std::fs::read_dir(node.pool().join("quarantine")) {
        for entry in entries {
            found.push(format!(
                "quarantined at start: {:?}",
                entry.unwrap().file_name()
            ));
        }
    }
    if !trash_drains(&node.pool()) {
        found.push("the trash did not drain within 20 s".into());
    }
    let targets: BTreeSet<PathBuf> = expected.published.iter().map(PathBuf::from).collect();
    for mount in node.scratch.mounts() {
        match mount.strip_prefix(node.pool().join("volumes")) {
            // A backing: a memory volume's tmpfs lives as long as the volume,
            // a file volume's image is mounted only while it is in use.
            Ok(backing) => {
                let id = backing.to_str().unwrap_or_default();
                let unused = expected.published.is_empty();
                if !ids.contains(id) || (!matches!(expected.kind, Kind::Memory) && unused) {
                    found.push(format!("a backing left mounted at {}", mount.display()));
                }
            }
            Err(_) if !targets.contains(&mount) => {
                found.push(format!("mount left at {}", mount.display()))
            }
            Err(_) => {}
        }
    }
    if matches!(expected.kind, Kind::Memory) {
        // A kept memory volume holds its tmpfs, and is healthy: nothing it
        // held was lost.
        let mounted = node.scratch.mounts();
        for id in &ids {
            if !mounted.contains(&node.pool().join("volumes").join(id)) {
                found.push(format!("memory volume {id} has no tmpfs"));
            }
            for (reason, message) in common::health(csi, id).await {
                found.push(format!("memory volume {id}: {reason}: {message}"));
            }
        }
    }
    if expected.published.is_empty() && !node.scratch.loop_devices().is_empty() {
        found.push(format!(
            "loop devices left: {:?}",
            node.scratch.loop_devices()
        ));
    }
    found
}

fn trash_drains(pool: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::fs::read_dir(pool.join(".trash"))
            .unwrap()
            .next()
            .is_none()
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// What the whole run did, for the summary.
#[derive(Default)]
struct Tally {
    kills: usize,
    retries: usize,
    violations: Vec<String>,
}

impl Tally {
    fn note(&mut self, case: &str, found: Vec<String>) {
        self.violations
            .extend(found.into_iter().map(|v| format!("{case}: {v}")));
    }
}

/// Data written through a target and fsynced, then read back after a crash.
fn write_synced(target: &str, bytes: &[u8]) {
    let path = Path::new(target).join("kept");
    std::fs::write(&path, bytes).unwrap();
    std::fs::File::open(&path).unwrap().sync_all().unwrap();
}

async fn create_cases(kind: Kind, tally: &mut Tally) {
    let mut points = vec![
        "create:reserved",
        "write:temp-synced",
        "write:renamed",
        "create:record-saved",
        "create:made",
    ];
    if matches!(kind, Kind::Memory) {
        points.push("memory:dir-made");
    }
    for point in points {
        let case = format!("CreateVolume {kind:?} killed at {point}");
        let mut node = Node::new();
        let request = create(kind, "pvc-crash");
        let mut csi = node.start(Some(point)).await;
        assert!(csi.controller.create_volume(request.clone()).await.is_err());
        node.expect_killed(point);
        tally.kills += 1;
        let mut csi = node.start(None).await;
        let id = csi
            .controller
            .create_volume(request.clone())
            .await
            .unwrap_or_else(|e| panic!("{case}: retry: {e}"))
            .into_inner()
            .volume
            .unwrap()
            .volume_id;
        tally.retries += 1;
        let again = csi.controller.create_volume(request).await.unwrap();
        assert_eq!(again.into_inner().volume.unwrap().volume_id, id, "{case}");
        let expected = Expected {
            kind,
            volumes: vec![(id.clone(), BYTES)],
            published: Vec::new(),
        };
        tally.note(&case, violations(&node, &mut csi, &expected).await);
        // The volume made by the retry works end to end.
        let target = node.target("pod");
        csi.node
            .node_publish_volume(publish_request(&id, &target, false))
            .await
            .unwrap_or_else(|e| panic!("{case}: publish: {e}"));
        csi.node
            .node_unpublish_volume(unpublish(&id, &target))
            .await
            .unwrap();
        csi.controller.delete_volume(delete(&id)).await.unwrap();
        let empty = Expected {
            kind,
            volumes: Vec::new(),
            published: Vec::new(),
        };
        tally.note(&case, violations(&node, &mut csi, &empty).await);
    }
}

async fn delete_cases(kind: Kind, tally: &mut Tally) {
    for point in ["delete:trashed", "delete:record-removed"] {
        let case = format!("DeleteVolume {kind:?} killed at {point}");
        let mut node = Node::new();
        let mut csi = node.start(None).await;
        let id = made(&mut csi, create(kind, "pvc-gone")).await;
        let kept = made(&mut csi, create(kind, "pvc-kept")).await;
        node.kill();
        let mut csi = node.start(Some(point)).await;
        assert!(csi.controller.delete_volume(delete(&id)).await.is_err());
        node.expect_killed(point);
        tally.kills += 1;
        let mut csi = node.start(None).await;
        csi.controller
            .delete_volume(delete(&id))
            .await
            .unwrap_or_else(|e| panic!("{case}: retry: {e}"));
        tally.retries += 1;
        let expected = Expected {
            kind,
            volumes: vec![(kept, BYTES)],
            published: Vec::new(),
        };
        tally.note(&case, violations(&node, &mut csi, &expected).await);
    }
}

/// How a publish in the crash cases asks to be mounted: read-write, read-only,
/// or with a mount flag; and the mount options the target must end with.
const PUBLISH_VARIANTS: [(bool, Option<&str>, &[&str]); 3] = [
    (false, None, &["rw", "nosuid", "nodev"]),
    (true, None, &["ro", "nosuid", "nodev"]),
    (false, Some("noexec"), &["rw", "nosuid", "nodev", "noexec"]),
];

async fn publish_cases(kind: Kind, tally: &mut Tally) {
    let points = ["publish:target-made", "publish:restricted", "publish:done"];
    for (point, (readonly, flag, wanted)) in points
        .into_iter()
        .flat_map(|p| PUBLISH_VARIANTS.into_iter().map(move |v| (p, v)))
    {
        let case =
            format!("NodePublishVolume {kind:?} readonly={readonly} {flag:?} killed at {point}");
        let mut node = Node::new();
        let mut csi = node.start(None).await;
        let id = made(&mut csi, create(kind, "pvc-pub")).await;
        node.kill();
        let target = node.target("pod");
        let mut request = publish_request(&id, &target, readonly);
        if let Some(flag) = flag
            && let Some(Type::Mount(mount)) = request
                .volume_capability
                .as_mut()
                .and_then(|c| c.access_type.as_mut())
        {
            mount.mount_flags.push(flag.into());
        }
        let mut csi = node.start(Some(point)).await;
        assert!(csi.node.node_publish_volume(request.clone()).await.is_err());
        node.expect_killed(point);
        tally.kills += 1;
        let mut csi = node.start(None).await;
        csi.node
            .node_publish_volume(request.clone())
            .await
            .unwrap_or_else(|e| panic!("{case}: retry: {e}"));
        tally.retries += 1;
        // Asked again: the same mount, confirmed.
        csi.node
            .node_publish_volume(request.clone())
            .await
            .unwrap_or_else(|e| panic!("{case}: repeat: {e}"));
        let options = common::mount_options(Path::new(&target)).unwrap_or_default();
        let have: BTreeSet<&str> = options.split(',').collect();
        if let Some(missing) = wanted.iter().find(|o| !have.contains(*o)) {
            tally.note(
                &case,
                vec![format!(
                    "target mounted with {options:?}, without {missing}"
                )],
            );
        }
        if !readonly {
            write_synced(&target, b"acknowledged");
        }
        let published = Expected {
            kind,
            volumes: vec![(id.clone(), BYTES)],
            published: vec![target.clone()],
        };
        tally.note(&case, violations(&node, &mut csi, &published).await);
        csi.node
            .node_unpublish_volume(unpublish(&id, &target))
            .await
            .unwrap();
        let unpublished = Expected {
            kind,
            volumes: vec![(id.clone(), BYTES)],
            published: Vec::new(),
        };
        tally.note(&case, violations(&node, &mut csi, &unpublished).await);
        if !matches!(kind, Kind::Memory) && !readonly {
            // Disk-backed data outlives the driver and the mount.
            node.kill();
            let mut csi = node.start(None).await;
            csi.node.node_publish_volume(request).await.unwrap();
            let read = std::fs::read(Path::new(&target).join("kept")).unwrap_or_default();
            if read != b"acknowledged" {
                tally.note(&case, vec![format!("fsynced data read back as {read:?}")]);
            }
            csi.node
                .node_unpublish_volume(unpublish(&id, &target))
                .await
                .unwrap();
        }
    }
}

async fn unpublish_cases(kind: Kind, tally: &mut Tally) {
    let point = "unpublish:unmounted";
    let case = format!("NodeUnpublishVolume {kind:?} killed at {point}");
    let mut node = Node::new();
    let mut csi = node.start(None).await;
    let id = made(&mut csi, create(kind, "pvc-unpub")).await;
    let target = node.target("pod");
    csi.node
        .node_publish_volume(publish_request(&id, &target, false))
        .await
        .unwrap();
    node.kill();
    let mut csi = node.start(Some(point)).await;
    assert!(
        csi.node
            .node_unpublish_volume(unpublish(&id, &target))
            .await
            .is_err()
    );
    node.expect_killed(point);
    tally.kills += 1;
    let mut csi = node.start(None).await;
    csi.node
        .node_unpublish_volume(unpublish(&id, &target))
        .await
        .unwrap_or_else(|e| panic!("{case}: retry: {e}"));
    tally.retries += 1;
    let mut found = Vec::new();
    if Path::new(&target).exists() {
        found.push(format!("target {target} left"));
    }
    let expected = Expected {
        kind,
        volumes: vec![(id.clone(), BYTES)],
        published: Vec::new(),
    };
    found.extend(violations(&node, &mut csi, &expected).await);
    tally.note(&case, found);
}

async fn expand_cases(kind: Kind, tally: &mut Tally) {
    for point in [
        "write:temp-synced",
        "write:renamed",
        "expand:record-saved",
        "expand:grown",
    ] {
        let case = format!("ControllerExpandVolume {kind:?} killed at {point}");
        let mut node = Node::new();
        let mut csi = node.start(None).await;
        let id = made(&mut csi, create(kind, "pvc-grow")).await;
        node.kill();
        let mut csi = node.start(Some(point)).await;
        assert!(
            csi.controller
                .controller_expand_volume(expand(&id, 2 * BYTES))
                .await
                .is_err()
        );
        node.expect_killed(point);
        tally.kills += 1;
        let mut csi = node.start(None).await;
        let grown = csi
            .controller
            .controller_expand_volume(expand(&id, 2 * BYTES))
            .await
            .unwrap_or_else(|e| panic!("{case}: retry: {e}"))
            .into_inner();
        tally.retries += 1;
        let mut found = Vec::new();
        if grown.capacity_bytes != 2 * BYTES {
            found.push(format!("grown to {} bytes", grown.capacity_bytes));
        }
        let expected = Expected {
            kind,
            volumes: vec![(id.clone(), 2 * BYTES)],
            published: Vec::new(),
        };
        found.extend(violations(&node, &mut csi, &expected).await);
        tally.note(&case, found);
    }
}

/// NodeExpandVolume of a published file volume holding XFS (which grows
/// online here; ext4 needs CAP_SYS_RESOURCE, see tests/expansion.rs).
async fn node_expand_cases(tally: &mut Tally) {
    const XFS_BYTES: i64 = 320 << 20;
    for point in ["node-expand:device-grown", "node-expand:done"] {
        let case = format!("NodeExpandVolume File(xfs) killed at {point}");
        let mut node = Node::new();
        let mut csi = node.start(None).await;
        let request = create_request_with(
            "pvc-node-grow",
            XFS_BYTES,
            &[("kind", "file"), ("fsType", "xfs")],
        );
        let id = made(&mut csi, request).await;
        let target = node.target("pod");
        csi.node
            .node_publish_volume(publish_request(&id, &target, false))
            .await
            .unwrap();
        csi.controller
            .controller_expand_volume(expand(&id, 2 * XFS_BYTES))
            .await
            .unwrap();
        node.kill();
        let on_node = NodeExpandVolumeRequest {
            volume_id: id.clone(),
            volume_path: target.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: 2 * XFS_BYTES,
                limit_bytes: 0,
            }),
            ..Default::default()
        };
        let mut csi = node.start(Some(point)).await;
        assert!(csi.node.node_expand_volume(on_node.clone()).await.is_err());
        node.expect_killed(point);
        tally.kills += 1;
        let mut csi = node.start(None).await;
        let grown = csi
            .node
            .node_expand_volume(on_node)
            .await
            .unwrap_or_else(|e| panic!("{case}: retry: {e}"))
            .into_inner();
        tally.retries += 1;
        let mut found = Vec::new();
        let size = nix::sys::statvfs::statvfs(target.as_str()).unwrap();
        let bytes = size.blocks() * size.fragment_size();
        if grown.capacity_bytes != 2 * XFS_BYTES || bytes < (3 * XFS_BYTES / 2) as u64 {
            found.push(format!(
                "answered {} bytes, the filesystem holds {bytes}",
                grown.capacity_bytes
            ));
        }
        let expected = Expected {
            kind: Kind::File,
            volumes: vec![(id.clone(), 2 * XFS_BYTES)],
            published: vec![target.clone()],
        };
        found.extend(violations(&node, &mut csi, &expected).await);
        csi.node
            .node_unpublish_volume(unpublish(&id, &target))
            .await
            .unwrap();
        csi.controller.delete_volume(delete(&id)).await.unwrap();
        tally.note(&case, found);
    }
}

/// Every mount under the scratch directory, deepest first, and every loop
/// device of its files: what a reboot takes away.
fn reboot(node: &Node) {
    let mut mounts = node.scratch.mounts();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for mount in mounts {
        nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
    for path in node.scratch.loop_devices() {
        hostpath_csi::loopdev::detach(&hostpath_csi::loopdev::LoopDevice {
            path,
            read_only: false,
        })
        .ok();
    }
}

#[tokio::test]
async fn after_a_reboot_stale_targets_unpublish_and_disk_volumes_keep_their_data() {
    let mut node = Node::new();
    let mut csi = node.start(None).await;
    let mut published = Vec::new();
    for kind in [Kind::Directory, Kind::File, Kind::Memory] {
        let id = made(
            &mut csi,
            create(kind, &format!("pvc-reboot-{}", kind.parameter())),
        )
        .await;
        let target = node.target(&format!("pod-{}", kind.parameter()));
        csi.node
            .node_publish_volume(publish_request(&id, &target, false))
            .await
            .unwrap();
        write_synced(&target, b"before the reboot");
        published.push((kind, id, target));
    }
    node.kill();
    reboot(&node);
    // What lies on the disk beneath a memory volume's mount point must
    // never be served.
    let (_, memory_id, _) = &published[2];
    std::fs::write(
        node.pool().join("volumes").join(memory_id).join("beneath"),
        b"disk",
    )
    .unwrap();

    let mut csi = node.start(None).await;
    for (kind, id, target) in &published {
        csi.node
            .node_unpublish_volume(unpublish(id, target))
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: unpublish of a stale target: {e}"));
        assert!(!Path::new(target).exists(), "{kind:?}: stale target left");
        csi.node
            .node_publish_volume(publish_request(id, target, false))
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: publish after the reboot: {e}"));
        let names: BTreeSet<String> = std::fs::read_dir(target)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name != "lost+found")
            .collect();
        match kind {
            Kind::Memory => assert!(names.is_empty(), "memory volume served {names:?}"),
            _ => assert_eq!(
                std::fs::read(Path::new(target).join("kept")).unwrap(),
                b"before the reboot",
                "{kind:?}"
            ),
        }
        csi.node
            .node_unpublish_volume(unpublish(id, target))
            .await
            .unwrap();
        csi.controller.delete_volume(delete(id)).await.unwrap();
    }
    let empty = Expected {
        kind: Kind::File,
        volumes: Vec::new(),
        published: Vec::new(),
    };
    let found = violations(&node, &mut csi, &empty).await;
    assert!(found.is_empty(), "{found:?}");
}

/// One client's work in the soak: lifecycles on names of its own, every
/// second volume kept. `step` is where it stands in the current lifecycle.
struct Client {
    number: usize,
    lifecycle: usize,
    step: usize,
    /// Volumes created and not deleted, acknowledged.
    kept: Vec<String>,
}

/// Create, publish, write and fsync, unpublish, then delete or keep.
const STEPS: usize = 5;

impl Client {
    /// Runs the current step; `Err` when the driver did not answer (the step
    /// is then retried, identically, once the driver is back).
    async fn step(&mut self, csi: &mut CsiClient, targets: &Path) -> Result<(), tonic::Status> {
        let name = format!("soak-{}-{}", self.number, self.lifecycle);
        let id = hostpath_csi::ids::VolumeId::mint(&name).to_string();
        let target = kubelet_target(targets, &format!("soak-{}", self.number));
        match self.step {
            0 => drop(
                csi.controller
                    .create_volume(create(Kind::Directory, &name))
                    .await?,
            ),
            1 => drop(
                csi.node
                    .node_publish_volume(publish_request(&id, &target, false))
                    .await?,
            ),
            2 => write_synced(&target, name.as_bytes()),
            3 => drop(
                csi.node
                    .node_unpublish_volume(unpublish(&id, &target))
                    .await?,
            ),
            _ if self.lifecycle.is_multiple_of(2) => {
                drop(csi.controller.delete_volume(delete(&id)).await?)
            }
            _ => self.kept.push(id),
        }
        self.step += 1;
        if self.step == STEPS {
            self.step = 0;
            self.lifecycle += 1;
        }
        Ok(())
    }
}

/// A small xorshift generator: the soak's timing, reproducible from its seed.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test]
async fn a_soak_of_random_kills_and_stops_under_load_loses_and_leaks_nothing() {
    const ROUNDS: usize = 12;
    const CLIENTS: usize = 4;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut dice = Dice(seed);
    let mut node = Node::new();
    let targets = node.scratch.path().to_path_buf();
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|number| Client {
            number,
            lifecycle: 0,
            step: 0,
            kept: Vec::new(),
        })
        .collect();
    let (mut kills, mut stops, mut retries, mut steps) = (0, 0, 0, 0);
    for round in 0..ROUNDS {
        let csi = node.start(None).await;
        let working: Vec<_> = clients
            .drain(..)
            .map(|mut client| {
                let (mut csi, targets) = (csi.clone(), targets.clone());
                tokio::spawn(async move {
                    let mut done = 0;
                    while client.step(&mut csi, &targets).await.is_ok() {
                        done += 1;
                    }
                    (client, done)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20 + dice.below(200))).await;
        // Every third round is a clean stop under load: calls in flight
        // finish or fail cleanly, the driver exits 0 and removes its socket.
        if round % 3 == 2 {
            let status = node.terminate().await;
            assert!(
                status.success(),
                "seed {seed}: SIGTERM under load: {status}"
            );
            assert!(!node.socket().exists(), "seed {seed}: socket left");
            stops += 1;
        } else {
            node.kill();
            kills += 1;
        }
        for task in working {
            let (client, done) = task.await.unwrap();
            steps += done;
            retries += 1; // the step the driver's end interrupted
            clients.push(client);
        }
    }
    // Back up: every client finishes its lifecycle, retrying what was cut.
    let mut csi = node.start(None).await;
    for client in &mut clients {
        while client.step != 0 {
            client
                .step(&mut csi, &targets)
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: a retry failed: {e}"));
        }
    }
    let kept: Vec<String> = clients.iter().flat_map(|c| c.kept.clone()).collect();
    let expected = Expected {
        kind: Kind::Directory,
        volumes: kept.iter().map(|id| (id.clone(), BYTES)).collect(),
        published: Vec::new(),
    };
    let mut found = violations(&node, &mut csi, &expected).await;
    for client in &clients {
        for (lifecycle, id) in (1..).step_by(2).zip(&client.kept) {
            let written = format!("soak-{}-{lifecycle}", client.number);
            let path = node.pool().join("volumes").join(id).join("kept");
            if std::fs::read(&path).ok() != Some(written.clone().into_bytes()) {
                found.push(format!("{} does not hold {written:?}", path.display()));
            }
        }
    }
    let summary = format!(
        "soak: {ROUNDS} rounds ({kills} kills, {stops} SIGTERM stops under load) of {CLIENTS} clients, {steps} steps answered, {retries} interrupted steps retried, {} volumes kept, {} violations (seed {seed})\n",
        kept.len(),
        found.len()
    );
    let report = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/reliability-soak.txt");
    std::fs::write(&report, &summary).unwrap();
    assert!(found.is_empty(), "{summary}{}", found.join("\n"));
}

/// CreateSnapshot of `id` retried (as the snapshotter does) until ready;
/// returns the snapshot id.
async fn snapshot_ready(csi: &mut CsiClient, id: &str, case: &str) -> String {
    let request = CreateSnapshotRequest {
        name: "snapshot-crash".into(),
        source_volume_id: id.into(),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let snapshot = csi
            .controller
            .create_snapshot(request.clone())
            .await
            .unwrap_or_else(|e| panic!("{case}: CreateSnapshot: {e}"))
            .into_inner()
            .snapshot
            .unwrap();
        if snapshot.ready_to_use {
            return snapshot.snapshot_id;
        }
        assert!(Instant::now() < deadline, "{case}: never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The names in `dir` of the pool, sorted.
fn entries(node: &Node, dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(node.pool().join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// A kill at each step of CreateSnapshot, of a restore from it and of
/// DeleteSnapshot: the retry answers the same snapshot, ready, whose
/// restore holds what the volume held; nothing half made is left.
async fn snapshot_cases(kind: Kind, tally: &mut Tally) {
    let steps = [
        ("snapshot", "snapshot:record-saved"),
        ("snapshot", "snapshot:made"),
        ("restore", "create:record-saved"),
        ("restore", "create:made"),
        ("delete", "delete-snapshot:trashed"),
    ];
    for (step, point) in steps {
        let case = format!("{step} of a {kind:?} snapshot killed at {point}");
        let mut node = Node::new();
        let mut csi = node.start(None).await;
        let id = made(&mut csi, create(kind, "pvc-source")).await;
        let target = node.target("pod");
        csi.node
            .node_publish_volume(publish_request(&id, &target, false))
            .await
            .unwrap();
        write_synced(&target, b"before the snapshot");
        csi.node
            .node_unpublish_volume(unpublish(&id, &target))
            .await
            .unwrap();
        if step != "snapshot" {
            snapshot_ready(&mut csi, &id, &case).await;
        }
        node.kill();
        let mut csi = node.start(Some(point)).await;
        let snapshot_id = |csi: &mut CsiClient| {
            let mut csi = csi.clone();
            let id = id.clone();
            let case = case.clone();
            async move { snapshot_ready(&mut csi, &id, &case).await }
        };
        let restore = |snapshot: &str| {
            let mut request = create(kind, "pvc-restored");
            request.volume_content_source = Some(VolumeContentSource {
                r#type: Some(Source::Snapshot(SnapshotSource {
                    snapshot_id: snapshot.into(),
                })),
            });
            request
        };
        let delete_snapshot = |snapshot: &str| DeleteSnapshotRequest {
            snapshot_id: snapshot.into(),
            ..Default::default()
        };
        let interrupted = match step {
            "snapshot" => csi
                .controller
                .create_snapshot(CreateSnapshotRequest {
                    name: "snapshot-crash".into(),
                    source_volume_id: id.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
            "restore" => {
                let snapshot = snapshot_id(&mut csi).await;
                csi.controller
                    .create_volume(restore(&snapshot))
                    .await
                    .map(drop)
            }
            _ => {
                let snapshot = snapshot_id(&mut csi).await;
                csi.controller
                    .delete_snapshot(delete_snapshot(&snapshot))
                    .await
                    .map(drop)
            }
        };
        assert!(interrupted.is_err(), "{case}: the call was answered");
        node.expect_killed(point);
        tally.kills += 1;
        let mut csi = node.start(None).await;
        let mut found = Vec::new();
        let snapshot = snapshot_id(&mut csi).await;
        tally.retries += 1;
        if step == "delete" {
            csi.controller
                .delete_snapshot(delete_snapshot(&snapshot))
                .await
                .unwrap_or_else(|e| panic!("{case}: retry: {e}"));
            for dir in ["snapshots", "snapshot-meta"] {
                let left = entries(&node, dir);
                if !left.is_empty() {
                    found.push(format!("{dir} still holds {left:?}"));
                }
            }
            tally.note(&case, found);
            continue;
        }
        let restored = made(&mut csi, restore(&snapshot)).await;
        csi.node
            .node_publish_volume(publish_request(&restored, &target, false))
            .await
            .unwrap_or_else(|e| panic!("{case}: publish the restore: {e}"));
        let read = std::fs::read(Path::new(&target).join("kept")).ok();
        if read.as_deref() != Some(b"before the snapshot".as_slice()) {
            found.push(format!("the restore holds {read:?}"));
        }
        csi.node
            .node_unpublish_volume(unpublish(&restored, &target))
            .await
            .unwrap();
        if entries(&node, "snapshots") != [snapshot.clone()] {
            found.push(format!(
                "snapshots/ holds {:?}",
                entries(&node, "snapshots")
            ));
        }
        if entries(&node, "snapshot-meta") != [format!("{snapshot}.json")] {
            found.push(format!(
                "snapshot-meta/ holds {:?}",
                entries(&node, "snapshot-meta")
            ));
        }
        csi.controller
            .delete_snapshot(delete_snapshot(&snapshot))
            .await
            .unwrap();
        let expected = Expected {
            kind,
            volumes: vec![(id.clone(), BYTES), (restored, BYTES)],
            published: Vec::new(),
        };
        found.extend(violations(&node, &mut csi, &expected).await);
        if !entries(&node, "snapshots").is_empty() {
            found.push(format!(
                "snapshots/ holds {:?}",
                entries(&node, "snapshots")
            ));
        }
        tally.note(&case, found);
    }
}

#[tokio::test]
async fn a_kill_at_every_failpoint_then_a_retry_loses_and_leaks_nothing() {
    let mut tally = Tally::default();
    for kind in [Kind::Directory, Kind::File, Kind::Memory] {
        create_cases(kind, &mut tally).await;
        delete_cases(kind, &mut tally).await;
        publish_cases(kind, &mut tally).await;
        unpublish_cases(kind, &mut tally).await;
        snapshot_cases(kind, &mut tally).await;
    }
    for kind in [Kind::Directory, Kind::File] {
        expand_cases(kind, &mut tally).await;
    }
    node_expand_cases(&mut tally).await;
    let summary = format!(
        "crash tests: {} cases (operation × failpoint × kind), each killed once: {} kills, {} retries, {} violations\n",
        tally.kills,
        tally.kills,
        tally.retries,
        tally.violations.len()
    );
    let report = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/reliability-crash.txt");
    std::fs::write(&report, &summary).unwrap();
    assert!(
        tally.violations.is_empty(),
        "{summary}{}",
        tally.violations.join("\n")
    );
}
