//! Benchmark (not a test): CreateSnapshot (until ready) and a restore from
//! it, of a directory volume holding FILES files (1 GiB in 100,000 files by
//! default), on a btrfs pool (read-only subvolume snapshots), an XFS pool
//! with reflinks (reflinked trees) and an ext4 pool (copies), each beside
//! `tar | tar` of the same tree into the same filesystem, timed in the same
//! run; the ratios are what matters on a noisy machine.
//!
//! Run as root: `cargo run --release --example snapshot_bench -- [FILES]
//! [BYTES_PER_FILE] [ROUNDS]`. It makes its own loop-backed pools and
//! removes them when it ends.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hostpath_csi::client::CsiClient;
use hostpath_csi::csi::volume_capability::access_mode::Mode;
use hostpath_csi::csi::volume_capability::{AccessMode, AccessType, MountVolume};
use hostpath_csi::csi::volume_content_source::{SnapshotSource, Type};
use hostpath_csi::csi::{
    CapacityRange, CreateSnapshotRequest, CreateVolumeRequest, DeleteSnapshotRequest,
    DeleteVolumeRequest, VolumeCapability, VolumeContentSource,
};
use hostpath_csi::driver::DriverConfig;
use hostpath_csi::ids::PoolName;
use hostpath_csi::{server, startup};

mod support;
use support::{cleanup, loop_pool, median, shown};

type Failure = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let mut args = std::env::args().skip(1);
    let files: usize = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let bytes: usize = args.next().map_or(Ok(10_737), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(3), |a| a.parse())?;
    let scratch = tempfile::Builder::new()
        .prefix("hostpath-csi-bench.")
        .tempdir()?;
    let outcome = run(scratch.path(), files, bytes, rounds).await;
    cleanup(scratch.path());
    outcome
}

/// One pool of the run: its name, filesystem, and the parameters of its
/// source volume.
struct Case {
    pool: &'static str,
    params: &'static [(&'static str, &'static str)],
}

async fn run(scratch: &Path, files: usize, bytes: usize, rounds: usize) -> Result<(), Failure> {
    let pools = vec![
        (
            PoolName::parse("btrfs")?,
            loop_pool(scratch, "btrfs", &["mkfs.btrfs", "-q"], "")?,
        ),
        (
            PoolName::parse("xfs")?,
            loop_pool(scratch, "xfs", &["mkfs.xfs", "-q", "-m", "reflink=1"], "")?,
        ),
        (
            PoolName::parse("ext4")?,
            loop_pool(scratch, "ext4", &["mkfs.ext4", "-q", "-F"], "")?,
        ),
    ];
    let socket = scratch.join("csi.sock");
    let config = DriverConfig {
        driver_name: "hostpath-csi.dev".into(),
        node_id: "bench".into(),
        pools: pools.clone(),
        max_volumes: 0,
        enable_quotas: true,
        memory_budget: 1 << 30,
        allowed_host_paths: Vec::new(),
        kubelet_dir: scratch.to_owned(),
        nearly_full_percent: 90,
        volume_metrics: false,
    };
    let driver = Arc::new(startup::open(config)?);
    hostpath_csi::snapshots::take::start_when_free(&driver);
    let listener = server::listen(&socket)?;
    let served = socket.clone();
    tokio::spawn(
        async move { server::serve(driver, listener, &served, std::future::pending()).await },
    );
    let mut csi = CsiClient::connect(socket).await?;
    let cases = [
        Case {
            pool: "btrfs",
            params: &[("pool", "btrfs"), ("enforce", "required")],
        },
        Case {
            pool: "xfs",
            params: &[("pool", "xfs"), ("enforce", "none")],
        },
        Case {
            pool: "ext4",
            params: &[("pool", "ext4"), ("enforce", "none")],
        },
    ];
    println!(
        "{files} files of {bytes} bytes ({:.2} GiB), median of {rounds} rounds\n",
        (files * bytes) as f64 / f64::from(1 << 30)
    );
    println!(
        "| pool | method | CreateSnapshot (ready) | restore | tar \\| tar | tar / snapshot | tar / restore |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (case, (_, root)) in cases.iter().zip(&pools) {
        let source = create(
            &mut csi,
            &format!("source-{}", case.pool),
            case.params,
            None,
        )
        .await?;
        let tree = root.join("volumes").join(&source);
        fill(&tree, files, bytes)?;
        let (mut taken, mut restored, mut tarred) = (Vec::new(), Vec::new(), Vec::new());
        let mut method = String::new();
        for round in 0..rounds {
            let copy = root.join(format!("tar-{round}"));
            std::fs::create_dir(&copy)?;
            let began = Instant::now();
            tar_copy(&tree, &copy)?;
            tarred.push(began.elapsed());
            std::fs::remove_dir_all(&copy)?;

            let name = format!("snap-{}-{round}", case.pool);
            let began = Instant::now();
            let snapshot = snapshot_ready(&mut csi, &name, &source).await?;
            taken.push(began.elapsed());
            method = recorded_method(root, &snapshot)?;

            let began = Instant::now();
            let restore = create(
                &mut csi,
                &format!("restored-{}-{round}", case.pool),
                case.params,
                Some(&snapshot),
            )
            .await?;
            restored.push(began.elapsed());
            csi.controller
                .delete_volume(DeleteVolumeRequest {
                    volume_id: restore,
                    ..Default::default()
                })
                .await?;
            csi.controller
                .delete_snapshot(DeleteSnapshotRequest {
                    snapshot_id: snapshot,
                    ..Default::default()
                })
                .await?;
            wait_trash_empty(root);
        }
        let (snap, restore, tar) = (median(&taken), median(&restored), median(&tarred));
        println!(
            "| {} | {method} | {} | {} | {} | {:.0}× | {:.0}× |",
            case.pool,
            shown(snap),
            shown(restore),
            shown(tar),
            tar.as_secs_f64() / snap.as_secs_f64(),
            tar.as_secs_f64() / restore.as_secs_f64(),
        );
        std::io::stdout().flush()?;
    }
    Ok(())
}

/// A directory volume of 2 GiB (or what `snapshot` restores); its id.
async fn create(
    csi: &mut CsiClient,
    name: &str,
    params: &[(&str, &str)],
    snapshot: Option<&str>,
) -> Result<String, Failure> {
    let request = CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: 2 << 30,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![VolumeCapability {
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
            access_type: Some(AccessType::Mount(MountVolume::default())),
        }],
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        volume_content_source: snapshot.map(|id| VolumeContentSource {
            r#type: Some(Type::Snapshot(SnapshotSource {
                snapshot_id: id.into(),
            })),
        }),
        ..Default::default()
    };
    let volume = csi.controller.create_volume(request).await?.into_inner();
    Ok(volume.volume.ok_or("no volume")?.volume_id)
}

/// CreateSnapshot called until the snapshot is ready, as the snapshotter
/// does; its id.
async fn snapshot_ready(csi: &mut CsiClient, name: &str, source: &str) -> Result<String, Failure> {
    loop {
        let snapshot = csi
            .controller
            .create_snapshot(CreateSnapshotRequest {
                name: name.into(),
                source_volume_id: source.into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .snapshot
            .ok_or("no snapshot")?;
        if snapshot.ready_to_use {
            return Ok(snapshot.snapshot_id);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn recorded_method(pool: &Path, snapshot: &str) -> Result<String, Failure> {
    let record = std::fs::read(pool.join("snapshot-meta").join(format!("{snapshot}.json")))?;
    let record: serde_json::Value = serde_json::from_slice(&record)?;
    Ok(record["method"].as_str().unwrap_or("?").to_owned())
}

/// `files` files of `bytes` each, 1,000 to a directory, then synced.
fn fill(tree: &Path, files: usize, bytes: usize) -> Result<(), Failure> {
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    for n in 0..files {
        let dir = tree.join(format!("d{}", n / 1000));
        if n % 1000 == 0 {
            std::fs::create_dir_all(&dir)?;
        }
        std::fs::write(dir.join(format!("f{n}")), &data)?;
    }
    sync_fs(tree)
}

/// `tar -cf - . | tar -xf -` from `from` into `to`, then synced: what a
/// driver that snapshots with tar does.
fn tar_copy(from: &Path, to: &Path) -> Result<(), Failure> {
    let mut reader = Command::new("tar")
        .arg("-C")
        .arg(from)
        .args(["-cf", "-", "."])
        .stdout(Stdio::piped())
        .spawn()?;
    let pipe = reader.stdout.take().ok_or("no pipe")?;
    let writer = Command::new("tar")
        .arg("-C")
        .arg(to)
        .args(["-xf", "-"])
        .stdin(pipe)
        .status()?;
    if !reader.wait()?.success() || !writer.success() {
        return Err("tar failed".into());
    }
    sync_fs(to)
}

fn sync_fs(path: &Path) -> Result<(), Failure> {
    let dir = std::fs::File::open(path)?;
    nix::unistd::syncfs(&dir)?;
    Ok(())
}

fn wait_trash_empty(pool: &Path) {
    let trash: PathBuf = pool.join(".trash");
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline
        && std::fs::read_dir(&trash).is_ok_and(|mut d| d.next().is_some())
    {
        std::thread::sleep(Duration::from_millis(50));
    }
}
