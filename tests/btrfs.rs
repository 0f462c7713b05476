//! Enforced capacity for directory volumes on a loop-backed btrfs pool that
//! the test makes: subvolumes with qgroup limits, O(1) usage, expansion.

mod common;

use std::path::Path;

use common::{Scratch, TestDriver, assert_code, create_request_with, enforced};
use tonic::Code;

async fn start(enable_quotas: bool) -> TestDriver {
    let scratch = Scratch::new();
    let pool = scratch
        .mount_image("btrfs", &["mkfs.btrfs", "-q"], "btrfs", "")
        .unwrap();
    TestDriver::start_in(scratch, move |c| {
        c.pools[0].1 = pool;
        c.enable_quotas = enable_quotas;
    })
    .await
}

#[tokio::test]
async fn a_directory_volume_on_btrfs_is_held_to_its_capacity_and_grows() {
    let d = start(true).await;
    enforced::is_held_to_its_capacity_and_grows(d).await;
}

#[tokio::test]
async fn enforcement_follows_the_pool_and_the_parameter() {
    // Quotas off and not to be turned on: required is refused, best effort tracks.
    let mut d = start(false).await;
    enforced::refuses_required(&mut d, "btrfs quotas are off").await;
    let id = d.create("tracked", 16 << 20).await;
    let target = d.target("pod-tracked");
    d.publish(&id, &target, false).await.unwrap();
    enforced::write(&Path::new(&target).join("over"), 32 << 20).unwrap();
    d.unpublish(&id, &target).await.unwrap();

    // Quotas on, but enforce=none: a plain, unlimited directory.
    let mut d = start(true).await;
    let request = create_request_with("free", 16 << 20, &[("enforce", "none")]);
    let id = d.create_from(request).await;
    let target = d.target("pod-free");
    d.publish(&id, &target, false).await.unwrap();
    enforced::write(&Path::new(&target).join("over"), 32 << 20).unwrap();
    d.unpublish(&id, &target).await.unwrap();
    assert_code(
        d.csi
            .controller
            .create_volume(create_request_with(
                "unsized",
                0,
                &[("enforce", "required")],
            ))
            .await,
        Code::InvalidArgument,
        "needs a capacity",
    );
    assert_code(
        d.csi
            .controller
            .create_volume(create_request_with("odd", 1, &[("enforce", "always")]))
            .await,
        Code::InvalidArgument,
        "required, best-effort, none",
    );
}

#[tokio::test]
async fn a_pool_without_limits_cannot_be_required_to_enforce() {
    let mut d = TestDriver::start().await;
    enforced::refuses_required(&mut d, "cannot enforce capacity").await;
}

#[tokio::test]
async fn quotas_turned_off_are_reported_until_on_again_and_the_limit_is_restored() {
    let mut d = start(true).await;
    let id = d.create("held", 16 << 20).await;
    let target = d.target("pod-held");
    d.publish(&id, &target, false).await.unwrap();
    assert!(common::health(&mut d.csi, &id).await.is_empty());
    assert!(common::storage_health(&mut d.csi).await.is_empty());
    let pool = d.pool();
    let btrfs = |args: &[&str]| {
        let status = std::process::Command::new("btrfs")
            .args(args)
            .arg(&pool)
            .status()
            .unwrap();
        assert!(status.success(), "btrfs {args:?}");
    };
    btrfs(&["quota", "disable"]);
    let found = common::health(&mut d.csi, &id).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "QuotaNotEnforced");
    assert!(
        found[0].1.contains("btrfs quotas are off"),
        "{}",
        found[0].1
    );
    let pools = common::storage_health(&mut d.csi).await;
    assert_eq!(pools.len(), 1, "{pools:?}");
    assert_eq!(pools[0].0, "PoolQuotasOff");

    // On again, the pool is fine, but the volume's limit went with them ...
    btrfs(&["quota", "enable"]);
    assert!(common::storage_health(&mut d.csi).await.is_empty());
    let found = common::health(&mut d.csi, &id).await;
    assert!(found[0].1.contains("has no limit"), "{found:?}");
    // ... until its next publish sets it again.
    d.unpublish(&id, &target).await.unwrap();
    d.publish(&id, &target, false).await.unwrap();
    assert!(common::health(&mut d.csi, &id).await.is_empty());
    enforced::write(&Path::new(&target).join("over"), 32 << 20).unwrap_err();
    d.unpublish(&id, &target).await.unwrap();
}
