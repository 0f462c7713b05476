//! Enforced capacity for directory volumes on loop-backed XFS and ext4 pools
//! that the test makes, through project quotas. Where the kernel cannot
//! mount them with project quotas (this repository's CI host, say) the
//! driver must report that and refuse `enforce: required`;
//! scripts/vm-test.sh runs this file again under a Debian kernel that can,
//! where every check is the full one.

mod common;

use std::path::{Path, PathBuf};

use common::{Scratch, TestDriver, create_request_with, enforced};
use hostpath_csi::project_quota;

/// A filesystem that can hold project quotas.
struct Fs {
    name: &'static str,
    /// mkfs for a filesystem with project quotas, and for one without.
    mkfs_quota: &'static [&'static str],
    mkfs_plain: &'static [&'static str],
}

const XFS: Fs = Fs {
    name: "xfs",
    mkfs_quota: &["mkfs.xfs", "-q"],
    mkfs_plain: &["mkfs.xfs", "-q"],
};

const EXT4: Fs = Fs {
    name: "ext4",
    mkfs_quota: &[
        "mkfs.ext4",
        "-q",
        "-O",
        "quota,project",
        "-E",
        "quotatype=prjquota",
    ],
    mkfs_plain: &["mkfs.ext4", "-q"],
};

async fn driver_on(scratch: Scratch, pool: PathBuf) -> TestDriver {
    TestDriver::start_in(scratch, move |c| c.pools[0].1 = pool).await
}

/// The project id `<pool>/volumes/<id>` hands down.
fn project(d: &TestDriver, id: &str) -> Option<u32> {
    let dir = std::fs::File::open(d.volume_dir(id)).unwrap();
    project_quota::project_of(&dir).unwrap()
}

/// A pool that cannot enforce says why, offers nothing to `enforce:
/// required` claims and refuses them, and still serves best-effort ones.
async fn cannot_enforce(mut d: TestDriver, why: &str) {
    enforced::refuses_required(&mut d, why).await;
    let id = d.create("tracked", 16 << 20).await;
    assert_eq!(project(&d, &id), None);
}

async fn project_quotas_hold_directory_volumes(fs: Fs) {
    let scratch = Scratch::new();
    let mounted = scratch.mount_image("quota", fs.mkfs_quota, fs.name, "prjquota");
    let Ok(pool) = mounted else {
        assert!(
            !common::full_kernel(),
            "{}: mount with prjquota refused: {mounted:?}",
            fs.name
        );
        // This kernel cannot hold the pool's projects: the driver must find
        // that out.
        let pool = scratch
            .mount_image("plain", fs.mkfs_plain, fs.name, "")
            .unwrap();
        let d = driver_on(scratch, pool).await;
        return cannot_enforce(d, "no project quotas").await;
    };
    let mut d = driver_on(scratch, pool).await;

    // Every volume has a project of its own, kept across restarts.
    let first = d
        .create_from(create_request_with(
            "a",
            8 << 20,
            &[("enforce", "required")],
        ))
        .await;
    let second = d.create_from(create_request_with("b", 8 << 20, &[])).await;
    let plain = d
        .create_from(create_request_with("c", 8 << 20, &[("enforce", "none")]))
        .await;
    let (p1, p2) = (project(&d, &first).unwrap(), project(&d, &second).unwrap());
    assert_ne!(p1, p2);
    assert_eq!(project(&d, &plain), None);
    // A retried create keeps the id it was given.
    d.create_from(create_request_with(
        "a",
        8 << 20,
        &[("enforce", "required")],
    ))
    .await;
    assert_eq!(project(&d, &first), Some(p1));

    let d = enforced::is_held_to_its_capacity_and_grows(d).await;
    assert_eq!(project(&d, &first), Some(p1));
    let pool = d.pool();
    // Both filesystems show a project's limit as the size of its tree.
    let target = d.target("pod-df");
    let mut d = d;
    d.publish(&first, &target, false).await.unwrap();
    let st = nix::sys::statvfs::statvfs(Path::new(&target)).unwrap();
    assert_eq!(st.blocks() * st.fragment_size(), 8 << 20);
    d.unpublish(&first, &target).await.unwrap();
    assert!(pool.join("volumes").join(&first).is_dir());

    // Its limit lifted behind the driver's back: its health says so, and
    // the next publish sets the limit again.
    let dir = std::fs::File::open(pool.join("volumes").join(&first)).unwrap();
    project_quota::set_limit(&dir, p1, 0).unwrap();
    let found = common::health(&mut d.csi, &first).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "QuotaNotEnforced");
    assert!(
        found[0].1.contains(&format!("project {p1} has no limit")),
        "{found:?}"
    );
    d.publish(&first, &target, false).await.unwrap();
    assert!(common::health(&mut d.csi, &first).await.is_empty());
    assert_eq!(project_quota::limit_bytes(&dir, p1).unwrap(), 8 << 20);
    d.unpublish(&first, &target).await.unwrap();

    // A pool whose volumes/ already hands down a project cannot give each
    // volume its own.
    let nested = pool.join("nested");
    std::fs::create_dir_all(nested.join("volumes")).unwrap();
    let volumes = std::fs::File::open(nested.join("volumes")).unwrap();
    project_quota::assign(&volumes, 77).unwrap();
    let mut other = driver_on(Scratch::new(), nested).await;
    enforced::refuses_required(&mut other, "hands down project 77").await;
    drop(other);
    drop(d);
}

/// Mounted without prjquota, the filesystem counts nothing: that is said.
async fn project_quotas_off(fs: Fs) {
    let scratch = Scratch::new();
    let pool = scratch
        .mount_image("plain", fs.mkfs_plain, fs.name, "")
        .unwrap();
    let d = driver_on(scratch, pool).await;
    let why = if common::full_kernel() {
        "no project quotas: they are off here"
    } else {
        "no project quotas"
    };
    cannot_enforce(d, why).await;
}

#[tokio::test]
async fn an_xfs_pool_holds_directory_volumes_by_project_quota() {
    project_quotas_hold_directory_volumes(XFS).await;
}

#[tokio::test]
async fn an_ext4_pool_holds_directory_volumes_by_project_quota() {
    project_quotas_hold_directory_volumes(EXT4).await;
}

#[tokio::test]
async fn an_xfs_pool_without_project_quotas_says_so() {
    project_quotas_off(XFS).await;
}

#[tokio::test]
async fn an_ext4_pool_without_project_quotas_says_so() {
    project_quotas_off(EXT4).await;
}
