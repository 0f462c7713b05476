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
