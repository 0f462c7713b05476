//! Benchmark (not a test): NodeGetVolumeStats latency on volumes holding
//! 100,000 files, for each way a volume is measured, against the tree walk
//! it replaces, as ratios measured in the same run.
//!
//! Run as root: `cargo run --release --example stats_bench [FILES] [CALLS]`.
//! It makes its own pools (a directory on the scratch disk, a loop-backed
//! btrfs with quotas, a loop-backed XFS with project quotas where the kernel
//! can mount one, a tmpfs budget) and removes them when it ends.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hostpath_csi::client::CsiClient;
use hostpath_csi::csi::volume_capability::access_mode::Mode;
use hostpath_csi::csi::volume_capability::{AccessMode, AccessType, MountVolume};
use hostpath_csi::csi::{
    CapacityRange, CreateVolumeRequest, NodeGetVolumeStatsRequest, NodePublishVolumeRequest,
    NodeUnpublishVolumeRequest, VolumeCapability,
};
use hostpath_csi::driver::DriverConfig;
use hostpath_csi::ids::PoolName;
use hostpath_csi::{beneath, server, startup};

mod support;
use support::{cleanup, loop_pool, quantiles, shown};

type Failure = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let mut args = std::env::args().skip(1);
    let files: usize = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let calls: usize = args.next().map_or(Ok(25), |a| a.parse())?;
    let scratch = tempfile::Builder::new()
        .prefix("hostpath-csi-bench.")
        .tempdir()?;
    let outcome = run(scratch.path(), files, calls).await;
    cleanup(scratch.path());
    outcome
}

async fn run(scratch: &Path, files: usize, calls: usize) -> Result<(), Failure> {
    let plain = scratch.join("plain");
    std::fs::create_dir(&plain)?;
    let mut pools = vec![
        (PoolName::parse("plain")?, plain),
        (
            PoolName::parse("btrfs")?,
            loop_pool(scratch, "btrfs", &["mkfs.btrfs", "-q"], "")?,
        ),
    ];
    match loop_pool(scratch, "xfs", &["mkfs.xfs", "-q"], "prjquota") {
        Ok(xfs) => pools.push((PoolName::parse("xfs")?, xfs)),
        Err(e) => println!("(no XFS row: this kernel cannot mount XFS with prjquota: {e})\n"),
    }
    let with_xfs = pools.len() == 3;
    let socket = scratch.join("csi.sock");
    let config = DriverConfig {
        driver_name: "hostpath-csi.dev".into(),
        node_id: "bench".into(),
        pools,
        max_volumes: 0,
        enable_quotas: true,
        memory_budget: 8 << 30,
        allowed_host_paths: Vec::new(),
        kubelet_dir: scratch.to_owned(),
        nearly_full_percent: 90,
        volume_metrics: false,
    };
    let driver = Arc::new(startup::open(config)?);
    let listener = server::listen(&socket)?;
    let served = socket.clone();
    tokio::spawn(
        async move { server::serve(driver, listener, &served, std::future::pending()).await },
    );
    let mut csi = CsiClient::connect(socket).await?;

    println!(
        "| volume | measured by | stats p50 | stats p99 | walk p50 | walk p99 | walk/stats (p50) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut cases = vec![
        (
            "directory, plain pool",
            "cached bounded walk",
            &[("pool", "plain")][..],
        ),
        (
            "directory, btrfs pool",
            "qgroup",
            &[("pool", "btrfs"), ("enforce", "required")][..],
        ),
        (
            "file (ext4 image)",
            "statvfs",
            &[("pool", "plain"), ("kind", "file")][..],
        ),
        (
            "memory (tmpfs)",
            "statvfs",
            &[("pool", "plain"), ("kind", "memory")][..],
        ),
    ];
    if with_xfs {
        cases.insert(
            2,
            (
                "directory, XFS pool",
                "project quota",
                &[("pool", "xfs"), ("enforce", "required")][..],
            ),
        );
    }
    for (i, (label, how, params)) in cases.into_iter().enumerate() {
        // A target in kubelet's layout, its parent made as kubelet does.
        let parent = scratch.join(format!("pods/bench-{i}/volumes/kubernetes.io~csi/pv"));
        std::fs::create_dir_all(&parent)?;
        let target = parent.join("mount");
        let id = create_and_publish(&mut csi, &format!("bench-{i}"), params, &target).await?;
        fill(&target, files)?;
        nix::unistd::sync();
        let stats = time(calls, || async {
            let request = NodeGetVolumeStatsRequest {
                volume_id: id.clone(),
                volume_path: target.to_string_lossy().into_owned(),
                staging_target_path: String::new(),
            };
            csi.node
                .clone()
                .node_get_volume_stats(request)
                .await
                .map(drop)
        })
        .await?;
        let dir = nix::fcntl::open(
            &target,
            nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )?;
        let walk = time(calls.min(5), || async { beneath::usage(&dir).map(drop) }).await?;
        drop(dir); // an open fd would keep the target busy at unpublish
        println!(
            "| {label} | {how} | {} | {} | {} | {} | {:.0}× |",
            shown(stats.0),
            shown(stats.1),
            shown(walk.0),
            shown(walk.1),
            walk.0.as_secs_f64() / stats.0.as_secs_f64()
        );
        let request = NodeUnpublishVolumeRequest {
            volume_id: id,
            target_path: target.to_string_lossy().into_owned(),
        };
        csi.node.node_unpublish_volume(request).await?;
    }
    Ok(())
}

async fn create_and_publish(
    csi: &mut CsiClient,
    name: &str,
    params: &[(&str, &str)],
    target: &Path,
) -> Result<String, Failure> {
    let capability = VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    };
    let request = CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: 4 << 30,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![capability.clone()],
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let id = csi
        .controller
        .create_volume(request)
        .await?
        .into_inner()
        .volume
        .ok_or("no volume")?
        .volume_id;
    let publish = NodePublishVolumeRequest {
        volume_id: id.clone(),
        target_path: target.to_string_lossy().into_owned(),
        volume_capability: Some(capability),
        ..Default::default()
    };
    csi.node.node_publish_volume(publish).await?;
    Ok(id)
}

/// `files` empty files, 1,000 to a directory.
fn fill(root: &Path, files: usize) -> std::io::Result<()> {
    for i in 0..files {
        let dir = root.join(format!("d{}", i / 1000));
        if i % 1000 == 0 {
            std::fs::create_dir(&dir)?;
        }
        std::fs::File::create(dir.join(i.to_string()))?;
    }
    Ok(())
}

/// Median and 99th percentile of `calls` runs of `f`.
async fn time<F, Fut, E>(calls: usize, mut f: F) -> Result<(Duration, Duration), Failure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let mut took = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        f().await?;
        took.push(start.elapsed());
    }
    Ok(quantiles(&took))
}
