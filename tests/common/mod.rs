//! Test harness: a real driver serving on a temporary unix socket, a real
//! gRPC client, and cleanup of every mount the test made, even on failure.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod enforced;
pub mod process;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hostpath_csi::client::CsiClient;
use hostpath_csi::csi::volume_capability::access_mode::Mode;
use hostpath_csi::csi::volume_capability::{AccessMode, AccessType, MountVolume};
use hostpath_csi::csi::{
    CapacityRange, CreateVolumeRequest, NodePublishVolumeRequest, NodeUnpublishVolumeRequest,
    VolumeCapability,
};
use hostpath_csi::driver::{Driver, DriverConfig};
use hostpath_csi::ids::PoolName;
use hostpath_csi::{loopdev, mounts, server, startup};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const NODE: &str = "test-node";
pub const DRIVER: &str = "hostpath-csi.dev";
pub const TOPOLOGY_KEY: &str = "topology.hostpath-csi.dev/node";

/// A scratch directory whose mounts are all detached when it is dropped.
pub struct Scratch {
    pub dir: TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            dir: tempfile::Builder::new()
                .prefix("hostpath-csi-test.")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Mounts a tmpfs of `size` (e.g. "16m") at `path`, created if missing.
    pub fn mount_tmpfs(&self, path: &Path, size: &str) {
        std::fs::create_dir_all(path).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .unwrap();
    }

    /// Makes a 512 MiB image `<name>.img` with `mkfs` (program, then its
    /// arguments; the image path goes last) and mounts it at `<name>` through
    /// a loop device with `options`. Both are undone when the scratch drops;
    /// a refused mount is returned.
    pub fn mount_image(
        &self,
        name: &str,
        mkfs: &[&str],
        fs_type: &str,
        options: &str,
    ) -> nix::Result<PathBuf> {
        self.mount_image_of(512 << 20, name, mkfs, fs_type, options)
    }

    /// [`Scratch::mount_image`] of `bytes` (sparse).
    pub fn mount_image_of(
        &self,
        bytes: u64,
        name: &str,
        mkfs: &[&str],
        fs_type: &str,
        options: &str,
    ) -> nix::Result<PathBuf> {
        let image = self.path().join(format!("{name}.img"));
        std::fs::File::create(&image)
            .unwrap()
            .set_len(bytes)
            .unwrap();
        let status = std::process::Command::new(mkfs[0])
            .args(&mkfs[1..])
            .arg(&image)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("{} is installed: {e}", mkfs[0]));
        assert!(status.success(), "{mkfs:?} failed");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&image)
            .unwrap();
        let attached = loopdev::attach(
            &file.into(),
            &image,
            loopdev::Lifetime::UntilDetached,
            false,
        )
        .unwrap();
        let mount_point = self.path().join(name);
        std::fs::create_dir(&mount_point).unwrap();
        let mounted = nix::mount::mount(
            Some(&attached.device.path),
            &mount_point,
            Some(fs_type),
            nix::mount::MsFlags::empty(),
            Some(options),
        );
        if let Err(errno) = mounted {
            std::fs::remove_dir(&mount_point).unwrap();
            loopdev::detach(&attached.device).unwrap();
            return Err(errno);
        }
        Ok(mount_point)
    }

    /// Mount points at or under this scratch directory.
    pub fn mounts(&self) -> Vec<PathBuf> {
        mounts::mount_table()
            .unwrap()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|m| m.starts_with(self.path()))
            .collect()
    }

    /// Loop devices whose backing file lies under this scratch directory.
    pub fn loop_devices(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/sys/block").unwrap().flatten() {
            let backing = entry.path().join("loop/backing_file");
            let ours = std::fs::read_to_string(backing)
                .is_ok_and(|text| Path::new(text.trim_end()).starts_with(self.path()));
            if ours {
                found.push(PathBuf::from("/dev").join(entry.file_name()));
            }
        }
        found
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Deepest first, lazily, so a half-failed test never leaves a mount
        // behind (and TempDir never deletes through one); then any loop
        // device still attached to a file of the test.
        let mut left = self.mounts();
        left.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in left {
            nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH).ok();
        }
        for path in self.loop_devices() {
            hostpath_csi::loopdev::detach(&hostpath_csi::loopdev::LoopDevice {
                path,
                read_only: false,
            })
            .ok();
        }
    }
}

/// A driver serving on `<scratch>/csi.sock` with pool `default` at `<scratch>/pool`.
pub struct TestDriver {
    pub csi: CsiClient,
    pub config: DriverConfig,
    driver: Arc<Driver>,
    stop: Option<oneshot::Sender<()>>,
    serving: Option<JoinHandle<()>>,
    // Dropped last: its mounts are detached after the server stops.
    pub scratch: Scratch,
}

impl TestDriver {
    pub async fn start() -> Self {
        Self::start_in(Scratch::new(), |_| {}).await
    }

    /// Starts a driver in `scratch`, after `tweak` adjusts the default config.
    pub async fn start_in(scratch: Scratch, tweak: impl FnOnce(&mut DriverConfig)) -> Self {
        let pool = scratch.path().join("pool");
        std::fs::create_dir_all(&pool).unwrap();
        let mut config = DriverConfig {
            driver_name: DRIVER.into(),
            node_id: NODE.into(),
            pools: vec![(PoolName::parse("default").unwrap(), pool)],
            max_volumes: 0,
            enable_quotas: false,
            memory_budget: 256 << 20,
            allowed_host_paths: Vec::new(),
            kubelet_dir: scratch.path().to_owned(),
            // Off: how full the machine's own disk is must not show up as a
            // problem in tests; the tests of the check set their own.
            nearly_full_percent: 0,
            volume_metrics: false,
        };
        tweak(&mut config);
        Self::serve(scratch, config).await
    }

    async fn serve(scratch: Scratch, config: DriverConfig) -> Self {
        let socket = scratch.path().join("csi.sock");
        let opened = config.clone();
        let driver = tokio::task::spawn_blocking(move || startup::open(opened))
            .await
            .unwrap()
            .unwrap();
        let driver = Arc::new(driver);
        hostpath_csi::snapshots::take::start_when_free(&driver);
        let listener = server::listen(&socket).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = socket.clone();
        let serving_driver = Arc::clone(&driver);
        let serving = tokio::spawn(async move {
            server::serve(serving_driver, listener, &served, async {
                stopped.await.ok();
            })
            .await
            .unwrap();
        });
        let csi = CsiClient::connect(socket).await.unwrap();
        TestDriver {
            csi,
            config,
            driver,
            stop: Some(stop),
            serving: Some(serving),
            scratch,
        }
    }

    /// Stops the driver as SIGTERM does (it snapshots its records) and
    /// starts a new one on the same pools; mounts are left as they are.
    pub async fn restart(mut self) -> Self {
        self.shutdown().await;
        self.start_again().await
    }

    /// Stops the server without the driver's clean stop, as a crash would,
    /// and starts a new one on the same pools.
    pub async fn restart_after_crash(mut self) -> Self {
        self.stop_serving().await;
        self.start_again().await
    }

    /// Starts a new driver once the old one is gone (and its pool locks
    /// with it).
    async fn start_again(mut self) -> Self {
        let config = self.config.clone();
        let scratch = std::mem::replace(&mut self.scratch, Scratch::new());
        drop(self);
        Self::serve(scratch, config).await
    }

    /// A clean stop, as on SIGTERM.
    pub async fn shutdown(&mut self) {
        if self.stop_serving().await {
            let driver = Arc::clone(&self.driver);
            tokio::task::spawn_blocking(move || {
                startup::stop(&driver, std::time::Duration::from_secs(10))
            })
            .await
            .unwrap();
        }
    }

    /// Stops the server; false when it was stopped already.
    async fn stop_serving(&mut self) -> bool {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
        match self.serving.take() {
            Some(serving) => {
                serving.await.unwrap();
                true
            }
            None => false,
        }
    }

    /// The driver behind the socket, for what only it can show (its
    /// metrics page).
    pub fn driver(&self) -> &Driver {
        &self.driver
    }

    pub fn pool(&self) -> PathBuf {
        self.config.pools[0].1.clone()
    }

    /// `<pool>/volumes/<id>`.
    pub fn volume_dir(&self, id: &str) -> PathBuf {
        self.pool().join("volumes").join(id)
    }

    /// A target path for publishing (its parent exists, as kubelet ensures).
    pub fn target(&self, name: &str) -> String {
        kubelet_target(self.scratch.path(), name)
    }

    /// Creates a volume from `request`; returns its id.
    pub async fn create_from(&mut self, request: CreateVolumeRequest) -> String {
        let response = self.csi.controller.create_volume(request).await.unwrap();
        response.into_inner().volume.unwrap().volume_id
    }

    /// Creates a volume with the default request; returns its id.
    pub async fn create(&mut self, name: &str, bytes: i64) -> String {
        let response = self
            .csi
            .controller
            .create_volume(create_request(name, bytes))
            .await
            .unwrap()
            .into_inner();
        response.volume.unwrap().volume_id
    }

    /// The byte figures NodeGetVolumeStats reports for `id` published at `path`.
    pub async fn byte_usage(&mut self, id: &str, path: &str) -> hostpath_csi::csi::VolumeUsage {
        let stats = self
            .csi
            .node
            .node_get_volume_stats(hostpath_csi::csi::NodeGetVolumeStatsRequest {
                volume_id: id.into(),
                volume_path: path.into(),
                staging_target_path: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let bytes = hostpath_csi::csi::volume_usage::Unit::Bytes as i32;
        stats.usage.into_iter().find(|u| u.unit == bytes).unwrap()
    }

    pub async fn publish(
        &mut self,
        id: &str,
        target: &str,
        readonly: bool,
    ) -> Result<(), tonic::Status> {
        self.csi
            .node
            .node_publish_volume(publish_request(id, target, readonly))
            .await
            .map(drop)
    }

    pub async fn unpublish(&mut self, id: &str, target: &str) -> Result<(), tonic::Status> {
        self.csi
            .node
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: id.into(),
                target_path: target.into(),
            })
            .await
            .map(drop)
    }
}

/// Where kubelet (whose directory is `kubelet_dir`) would publish a volume
/// for pod `pod`: `pods/<pod>/volumes/kubernetes.io~csi/pv/mount`, its
/// parent made as kubelet makes it.
pub fn kubelet_target(kubelet_dir: &Path, pod: &str) -> String {
    let parent = kubelet_dir.join(format!("pods/{pod}/volumes/kubernetes.io~csi/pv"));
    std::fs::create_dir_all(&parent).unwrap();
    parent.join("mount").to_string_lossy().into_owned()
}

pub fn mount_capability(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    }
}

pub fn create_request(name: &str, bytes: i64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_capability(Mode::SingleNodeWriter)],
        parameters: HashMap::new(),
        ..Default::default()
    }
}

/// `create_request` with StorageClass parameters.
pub fn create_request_with(name: &str, bytes: i64, params: &[(&str, &str)]) -> CreateVolumeRequest {
    let mut request = create_request(name, bytes);
    request.parameters = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    request
}

/// A NodePublishVolume request as kubelet makes it for a ReadWriteOnce
/// volume of a driver with SINGLE_NODE_MULTI_WRITER: several pods of the
/// node may have it.
pub fn publish_request(id: &str, target: &str, readonly: bool) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.into(),
        volume_capability: Some(mount_capability(Mode::SingleNodeMultiWriter)),
        readonly,
        ..Default::default()
    }
}

/// Whether the tests run where every kernel feature the driver can use is
/// present and allowed (scripts/vm-test.sh sets this), so that a missing
/// one fails the test instead of being checked as reported.
pub fn full_kernel() -> bool {
    std::env::var_os("HOSTPATH_CSI_FULL_KERNEL").is_some()
}

/// Asserts a call failed with `code` and a message containing `needle`.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    needle: &str,
) {
    let status = result.expect_err("call should have failed");
    assert_eq!(status.code(), code, "message: {}", status.message());
    assert!(
        status.message().contains(needle),
        "message {:?} lacks {needle:?}",
        status.message()
    );
}

/// The mount options of `target` as the kernel shows them, if it is mounted.
pub fn mount_options(target: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (Path::new(fields[4]) == target).then(|| fields[5].to_owned())
    })
}

/// Waits until `<pool>/.trash` is empty, for at most 5 minutes (a crowded
/// tree drained by the debug build beside other tests takes a while).
pub fn wait_trash_empty(pool: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while std::time::Instant::now() < deadline {
        if std::fs::read_dir(pool.join(".trash"))
            .unwrap()
            .next()
            .is_none()
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("trash of {} never drained", pool.display());
}

/// Each volume's id and capacity as ListVolumes shows them, in id order.
pub async fn listed(csi: &mut CsiClient) -> Vec<(String, i64)> {
    let mut volumes: Vec<(String, i64)> = listed_in_pages(csi, 0)
        .await
        .into_iter()
        .map(|e| e.volume.unwrap())
        .map(|v| (v.volume_id, v.capacity_bytes))
        .collect();
    volumes.sort();
    volumes
}

/// Every ListVolumes entry, walked `max_entries` at a time (each page is
/// checked to hold no more).
pub async fn listed_in_pages(
    csi: &mut CsiClient,
    max_entries: i32,
) -> Vec<hostpath_csi::csi::list_volumes_response::Entry> {
    let mut entries = Vec::new();
    let mut token = String::new();
    loop {
        let page = csi
            .controller
            .list_volumes(hostpath_csi::csi::ListVolumesRequest {
                max_entries,
                starting_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(max_entries == 0 || page.entries.len() <= max_entries as usize);
        entries.extend(page.entries);
        if page.next_token.is_empty() {
            return entries;
        }
        token = page.next_token;
    }
}

/// CreateVolume; the id of the volume made.
pub async fn made(csi: &mut CsiClient, request: CreateVolumeRequest) -> String {
    csi.controller
        .create_volume(request)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id
}

/// A DeleteVolume request for `id`.
pub fn delete(id: &str) -> hostpath_csi::csi::DeleteVolumeRequest {
    hostpath_csi::csi::DeleteVolumeRequest {
        volume_id: id.into(),
        secrets: Default::default(),
    }
}

/// A volume's health as (reason, message) pairs, asked of the controller
/// and of the node, which must agree; empty when healthy.
pub async fn health(csi: &mut CsiClient, id: &str) -> Vec<(String, String)> {
    let pairs = |health: Option<hostpath_csi::csi::VolumeHealth>| {
        let health = health.expect("volume_health is set");
        assert_eq!(health.volume_id, id);
        health
            .health_statuses
            .into_iter()
            .map(|e| {
                assert!(e.status > 0, "{e:?} has a status");
                (e.reason, e.message)
            })
            .collect::<Vec<_>>()
    };
    let controller = csi
        .controller
        .controller_get_volume_health(hostpath_csi::csi::ControllerGetVolumeHealthRequest {
            volume_id: id.into(),
            ..Default::default()
        })
        .await
        .expect("ControllerGetVolumeHealth")
        .into_inner()
        .volume_health;
    let node = csi
        .node
        .node_get_volume_health(hostpath_csi::csi::NodeGetVolumeHealthRequest {
            volume_id: id.into(),
            ..Default::default()
        })
        .await
        .expect("NodeGetVolumeHealth")
        .into_inner()
        .volume_health;
    let found = pairs(controller);
    assert_eq!(found, pairs(node), "controller and node agree");
    found
}

/// The reasons of a volume's health, e.g. `["BackingMissing"]`.
pub async fn health_reasons(csi: &mut CsiClient, id: &str) -> Vec<String> {
    health(csi, id).await.into_iter().map(|(r, _)| r).collect()
}

/// The pools' health as (reason, message) pairs; empty when healthy.
pub async fn storage_health(csi: &mut CsiClient) -> Vec<(String, String)> {
    csi.node
        .node_get_storage_health(hostpath_csi::csi::NodeGetStorageHealthRequest::default())
        .await
        .expect("NodeGetStorageHealth")
        .into_inner()
        .backend_health
        .into_iter()
        .map(|b| (b.reason, b.message))
        .collect()
}

/// Every volume's health as ControllerListVolumeHealth pages it,
/// `max_entries` at a time: (id, reasons, messages joined).
pub async fn listed_health_in_pages(
    csi: &mut CsiClient,
    max_entries: i32,
) -> Vec<(String, Vec<String>, String)> {
    let mut found = Vec::new();
    let mut token = String::new();
    loop {
        let page = csi
            .controller
            .controller_list_volume_health(hostpath_csi::csi::ControllerListVolumeHealthRequest {
                max_entries,
                starting_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(max_entries == 0 || page.entries.len() <= max_entries as usize);
        for health in page.entries {
            let (reasons, messages): (Vec<String>, Vec<String>) = health
                .health_statuses
                .into_iter()
                .map(|e| (e.reason, e.message))
                .unzip();
            found.push((health.volume_id, reasons, messages.join("; ")));
        }
        if page.next_token.is_empty() {
            return found;
        }
        token = page.next_token;
    }
}
