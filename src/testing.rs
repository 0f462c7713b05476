//! Unit-test fixtures: a driver over a pool in a temporary directory whose
//! mounts go to a [`FakeMounter`], and the requests tests build often.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::driver::{Driver, DriverConfig};
use crate::ids::{PoolName, VolumeId};
use crate::kind::{Content, KindName};
use crate::lifecycle::NewVolume;
use crate::mounter::fake::FakeMounter;
use crate::startup;
use crate::validate::{self, CapacityRequest, Requested};

/// A driver that lives as long as its temporary directory. Unit tests make
/// no real mounts: dropping one that finds a mount beneath its directory
/// takes it down and fails the test.
pub struct TestDriver {
    pub driver: Driver,
    pub mounter: Arc<FakeMounter>,
    /// The kubelet directory targets are made beneath.
    pub kubelet_dir: PathBuf,
    _scratch: tempfile::TempDir,
}

impl TestDriver {
    /// A driver with one pool, `default`, a 64 MiB memory budget, the
    /// nearly-full check off (the host disk's fullness is no pool problem in
    /// a test) and the settings `tweak` changes.
    pub fn open(tweak: impl FnOnce(&mut DriverConfig)) -> TestDriver {
        let scratch = tempfile::tempdir().expect("make a scratch directory");
        let pool = scratch.path().join("pool");
        let kubelet_dir = scratch.path().join("kubelet");
        std::fs::create_dir(&pool).unwrap();
        std::fs::create_dir(&kubelet_dir).unwrap();
        let mut config = DriverConfig {
            driver_name: "hostpath.csi.test".into(),
            node_id: "node-1".into(),
            pools: vec![(PoolName::parse("default").unwrap(), pool)],
            max_volumes: 0,
            enable_quotas: false,
            memory_budget: 64 << 20,
            allowed_host_paths: Vec::new(),
            kubelet_dir: kubelet_dir.clone(),
            nearly_full_percent: 0,
            volume_metrics: false,
        };
        tweak(&mut config);
        let mounter = Arc::new(FakeMounter::default());
        let driver = startup::open_with(config, mounter.clone()).expect("open the driver");
        TestDriver {
            driver,
            mounter,
            kubelet_dir,
            _scratch: scratch,
        }
    }

    /// A mount target path in kubelet's layout for pod `pod`, its parent made.
    pub fn target_path(&self, pod: &str) -> PathBuf {
        let parent = self
            .kubelet_dir
            .join(format!("pods/{pod}/volumes/kubernetes.io~csi/pv"));
        std::fs::create_dir_all(&parent).unwrap();
        parent.join("mount")
    }
}

impl Drop for TestDriver {
    fn drop(&mut self) {
        let scratch = self._scratch.path();
        let mut left: Vec<PathBuf> = crate::mounts::mount_table()
            .expect("read the mount table")
            .into_iter()
            .map(|entry| entry.mount_point)
            .filter(|point| point.starts_with(scratch))
            .collect();
        // Deepest first, so that each unmount finds what it names.
        left.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
        for point in &left {
            nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH).ok();
        }
        if !left.is_empty() && !std::thread::panicking() {
            panic!(
                "a unit test mounted for real beneath {}: {left:?}",
                scratch.display()
            );
        }
    }
}

/// A CreateVolume request of `kind` named `name` for `required` bytes.
pub fn new_volume(name: &str, kind: KindName, required: u64) -> NewVolume {
    let parameters = HashMap::from([("kind".to_owned(), kind.as_str().to_owned())]);
    NewVolume {
        id: VolumeId::mint(name),
        name: name.to_owned(),
        range: CapacityRequest { required, limit: 0 },
        params: validate::parameters(&parameters).unwrap(),
        requirement: None,
        ephemeral: false,
        content: Content::Raw,
        source: None,
        adopt_filesystem: false,
    }
}

/// Mount access of any filesystem, with no mount flags.
pub fn mount_access() -> Requested {
    Requested::Mount {
        fs_type: String::new(),
        flags: nix::mount::MsFlags::empty(),
    }
}

/// Whether anything is at `path` (a symlink included).
pub fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}
