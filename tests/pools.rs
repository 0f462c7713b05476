//! Several pools on one node: each holds its own volumes and reports its own
//! capacity, and no claim lands in a pool that cannot hold it.

mod common;

use common::{Scratch, TestDriver, assert_code, create_request_with};
use hostpath_csi::csi::GetCapacityRequest;
use hostpath_csi::ids::PoolName;
use tonic::Code;

async fn capacity(d: &mut TestDriver, pool: &str) -> i64 {
    let request = GetCapacityRequest {
        parameters: [("pool".to_owned(), pool.to_owned())].into(),
        ..Default::default()
    };
    d.csi
        .controller
        .get_capacity(request)
        .await
        .unwrap()
        .into_inner()
        .available_capacity
}

#[tokio::test]
async fn two_pools_report_and_spend_their_own_capacity() {
    let scratch = Scratch::new();
    let (small, large) = (scratch.path().join("small"), scratch.path().join("large"));
    scratch.mount_tmpfs(&small, "16m");
    scratch.mount_tmpfs(&large, "64m");
    let (s, l) = (small.clone(), large.clone());
    let mut d = TestDriver::start_in(scratch, |c| {
        c.pools = vec![
            (PoolName::parse("small").unwrap(), s),
            (PoolName::parse("large").unwrap(), l),
        ];
    })
    .await;
    let (small_before, large_before) = (
        capacity(&mut d, "small").await,
        capacity(&mut d, "large").await,
    );
    assert!(
        small_before <= 16 << 20 && small_before > 15 << 20,
        "{small_before}"
    );
    assert!(
        large_before <= 64 << 20 && large_before > 63 << 20,
        "{large_before}"
    );

    let id = d
        .create_from(create_request_with(
            "in-large",
            32 << 20,
            &[("pool", "large")],
        ))
        .await;
    assert!(large.join("volumes").join(&id).is_dir());
    // The volume's directory and record take a few blocks of their own.
    let spent = large_before - capacity(&mut d, "large").await;
    assert!(
        (32 << 20..(32 << 20) + (64 << 10)).contains(&spent),
        "{spent}"
    );
    assert_eq!(capacity(&mut d, "small").await, small_before);

    // The default (first) pool cannot hold 32 MiB even though the other could.
    assert_code(
        d.csi
            .controller
            .create_volume(create_request_with("too-big", 32 << 20, &[]))
            .await,
        Code::OutOfRange,
        "pool small",
    );
    let id = d
        .create_from(create_request_with("in-default", 8 << 20, &[]))
        .await;
    assert!(small.join("volumes").join(&id).is_dir());
}

#[tokio::test]
async fn capacity_counts_only_what_volumes_have_not_used_yet() {
    use std::io::Write;
    let scratch = Scratch::new();
    let pool = scratch.path().join("own");
    scratch.mount_tmpfs(&pool, "512m");
    let mut d = TestDriver::start_in(scratch, move |c| c.pools[0].1 = pool).await;
    let file = |d: &mut TestDriver| {
        let mut controller = d.csi.controller.clone();
        async move {
            let request = GetCapacityRequest {
                parameters: [("kind".to_owned(), "file".to_owned())].into(),
                ..Default::default()
            };
            controller
                .get_capacity(request)
                .await
                .unwrap()
                .into_inner()
                .available_capacity
        }
    };
    let empty = file(&mut d).await;
    let id = d
        .create_from(create_request_with(
            "half-used",
            64 << 20,
            &[("kind", "file")],
        ))
        .await;
    let promised = file(&mut d).await;
    let near = |a: i64, b: i64| (a - b).abs() < 2 << 20;
    assert!(near(empty - promised, 64 << 20), "{empty} -> {promised}");

    // Writing into the volume spends its promise, not the pool's room again.
    let target = d.target("pod-half");
    d.publish(&id, &target, false).await.unwrap();
    let mut data = std::fs::File::create(std::path::Path::new(&target).join("data")).unwrap();
    data.write_all(&vec![9u8; 32 << 20]).unwrap();
    data.sync_all().unwrap();
    drop(data);
    let written = file(&mut d).await;
    assert!(
        near(written, promised),
        "{promised} -> {written}: the 32 MiB counted twice"
    );
    d.unpublish(&id, &target).await.unwrap();
}
