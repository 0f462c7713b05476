//! Benchmark (not a test): provisioning throughput, latency and memory of a
//! CSI driver as the number of volumes it holds grows, against the floor of
//! the same filesystem and mount syscalls issued in-process, measured in the
//! same run.
//!
//! Run as root (it mounts): `cargo build --release && cargo run --release
//! --example load_bench -- [OPTIONS]` (see `--help`). By default it starts
//! `target/release/hostpath-csi` on a pool in a scratch directory; with
//! `--endpoint` it drives any CSI driver already serving there.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hostpath_csi::beneath;
use hostpath_csi::client::CsiClient;
use hostpath_csi::csi::volume_capability::access_mode::Mode;
use hostpath_csi::csi::volume_capability::{AccessMode, AccessType, MountVolume};
use hostpath_csi::csi::{
    CreateVolumeRequest, DeleteVolumeRequest, NodePublishVolumeRequest, NodeUnpublishVolumeRequest,
    ProbeRequest, VolumeCapability,
};
use tokio::sync::Mutex;

mod support;
use support::{cleanup, median_f64, mib, quantiles, shown};

type Failure = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(about = "CSI provisioning load generator and syscall floor")]
struct Options {
    /// Volumes stored before each measurement, in rising order.
    #[arg(long, value_delimiter = ',', default_value = "0,1000,10000,50000")]
    scale: Vec<usize>,
    /// Full lifecycles (create, publish, unpublish, delete) per measurement.
    #[arg(long, default_value_t = 2000)]
    lifecycles: usize,
    /// Concurrent clients, each with a connection of its own.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// CreateVolume calls timed alone at each scale point (deleted again before the memory is read).
    #[arg(long, default_value_t = 2000)]
    creates: usize,
    /// Also time start-ups after dropping the page cache (as after a reboot;
    /// slows everything else on the machine for a while).
    #[arg(long)]
    cold_start: bool,
    /// Files in the volume whose DeleteVolume is timed (0: skip).
    #[arg(long, default_value_t = 100_000)]
    delete_files: usize,
    /// Serve-flag-compatible driver binary to start (default: the release
    /// hostpath-csi next to this example).
    #[arg(long)]
    driver: Option<PathBuf>,
    /// Drive an already running driver at this unix socket instead.
    #[arg(long, requires_all = ["pid", "kubelet_dir"])]
    endpoint: Option<PathBuf>,
    /// Its process id, for its memory.
    #[arg(long)]
    pid: Option<u32>,
    /// A directory beneath which it accepts target paths.
    #[arg(long)]
    kubelet_dir: Option<PathBuf>,
}

/// The driver under test and where it keeps things.
struct Subject {
    socket: PathBuf,
    pid: u32,
    kubelet_dir: PathBuf,
    /// Set when this benchmark started the driver (and may restart it).
    started: Option<Started>,
}

struct Started {
    child: Child,
    binary: PathBuf,
    pool: PathBuf,
    log: PathBuf,
}

impl Drop for Started {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let options = Options::parse();
    let scratch = tempfile::Builder::new()
        .prefix("hostpath-csi-load.")
        .tempdir()?;
    let outcome = run(&options, scratch.path()).await;
    cleanup(scratch.path());
    outcome
}

async fn run(options: &Options, scratch: &Path) -> Result<(), Failure> {
    let mut subject = match &options.endpoint {
        Some(socket) => Subject {
            socket: socket.clone(),
            pid: options.pid.expect("clap requires it"),
            kubelet_dir: options.kubelet_dir.clone().expect("clap requires it"),
            started: None,
        },
        None => start_ours(options, scratch)?,
    };
    wait_ready(&subject.socket).await?;
    // Targets in kubelet's layout, `pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount`,
    // the only place the driver publishes: see `target()`.
    let targets = subject.kubelet_dir.join("pods");
    std::fs::create_dir_all(&targets)?;
    let floor_dir = scratch.join("floor");
    std::fs::create_dir_all(&floor_dir)?;
    println!(
        "concurrency {}, {} lifecycles per point, pool and floor on the filesystem of {}\n",
        options.concurrency,
        options.lifecycles,
        floor_dir.display()
    );
    println!(
        "| stored | lifecycles/s | floor/s | driver/floor | lifecycle p50 | p99 | p99/p50 | create p50/p99 | publish p50/p99 | unpublish p50/p99 | delete p50/p99 | creates/s alone | floor/s | floor with fsync of volumes/ | RSS before → after, settled (HWM) | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut stored = 0;
    let mut first_rate = None;
    for &point in &options.scale {
        if point > stored {
            let (_, made) =
                creates(&subject, &format!("fill-{stored}"), point - stored, options).await?;
            check_errors("prefill", point - stored - made.len())?;
            stored = point;
        }
        let before = memory(subject.pid);
        // Driver and floor take turns, round by round, so that the other
        // tenants of a shared machine weigh on both sides of each ratio.
        let mut run = Run::default();
        let (mut rates, mut floors, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut alone, mut creates_floor, mut durable_floor, mut errors) =
            (Vec::new(), Vec::new(), Vec::new(), 0);
        let mut made_alone = Vec::new();
        for round in 0..ROUNDS {
            let floor = floor_run(&floor_dir, options.lifecycles / ROUNDS, options.concurrency)?;
            let batch = lifecycles(
                &subject,
                &targets,
                &format!("{point}-{round}"),
                options.lifecycles / ROUNDS,
                options,
            )
            .await?;
            rates.push(batch.per_second());
            floors.push(floor);
            ratios.push(batch.per_second() / floor);
            run.absorb(batch);
            creates_floor.push(floor_creates(
                &floor_dir,
                options.creates / ROUNDS,
                options.concurrency,
                false,
            )?);
            durable_floor.push(floor_creates(
                &floor_dir,
                options.creates / ROUNDS,
                options.concurrency,
                true,
            )?);
            let (rate, made) = creates(
                &subject,
                &format!("alone-{stored}-{round}"),
                options.creates / ROUNDS,
                options,
            )
            .await?;
            alone.push(rate);
            errors += options.creates / ROUNDS - made.len();
            made_alone.extend(made);
        }
        // Back to `point` stored, so that the memory after the churn is
        // measured at the same count as before it.
        errors += deletes(&subject, made_alone, options).await?;
        let after = memory(subject.pid);
        tokio::time::sleep(SETTLE).await;
        let settled = memory(subject.pid);
        let (rate, floor, ratio) = (median_f64(rates), median_f64(floors), median_f64(ratios));
        let (alone, creates_floor, durable_floor) = (
            median_f64(alone),
            median_f64(creates_floor),
            median_f64(durable_floor),
        );
        first_rate.get_or_insert(rate);
        let lifecycle = quantiles(&run.latencies["lifecycle"]);
        let phase = |name: &str| {
            let (p50, p99) = quantiles(&run.latencies[name]);
            format!("{}/{}", shown(p50), shown(p99))
        };
        println!(
            "| {point} | {rate:.0} | {floor:.0} | {:.0}% | {} | {} | {:.1} | {} | {} | {} | {} | {alone:.0} | {creates_floor:.0} | {durable_floor:.0} | {} → {}, {} ({}) | {} |",
            100.0 * ratio,
            shown(lifecycle.0),
            shown(lifecycle.1),
            lifecycle.1.as_secs_f64() / lifecycle.0.as_secs_f64(),
            phase("create"),
            phase("publish"),
            phase("unpublish"),
            phase("delete"),
            mib(before.rss),
            mib(after.rss),
            mib(settled.rss),
            mib(settled.hwm),
            run.errors + errors,
        );
    }
    if let (Some(first), Some(last)) = (first_rate, options.scale.last()) {
        println!(
            "\nrate with {last} stored is measured against {first:.0}/s with none stored (see table)"
        );
    }
    if subject.started.is_some() {
        println!(
            "\n| start-up with {stored} volumes stored | ready (Probe OK) after, median of 3 | each | RSS when ready |\n|---|---|---|---|"
        );
        // (page cache dropped, after a crash): a clean stop leaves a snapshot
        // of the records; a crash (SIGKILL) leaves every record to be read.
        let starts: &[(bool, bool)] = if options.cold_start {
            &[(false, false), (true, false), (false, true), (true, true)]
        } else {
            &[(false, false), (false, true)]
        };
        for &(cold, crash) in starts {
            let mut took = Vec::new();
            for _ in 0..3 {
                took.push(restart(&mut subject, cold, crash).await?);
            }
            took.sort();
            println!(
                "| {}, {} | {} | {} | {} |",
                if crash {
                    "after a crash"
                } else {
                    "after a clean stop"
                },
                if cold { "page cache dropped" } else { "warm" },
                shown(took[1]),
                took.iter()
                    .map(|d| shown(*d))
                    .collect::<Vec<_>>()
                    .join(", "),
                mib(memory(subject.pid).rss)
            );
        }
    }
    if options.delete_files > 0 {
        big_delete(&subject, &targets, options.delete_files).await?;
    }
    Ok(())
}

fn check_errors(phase: &str, errors: usize) -> Result<(), Failure> {
    if errors > 0 {
        return Err(format!("{phase}: {errors} calls failed").into());
    }
    Ok(())
}

fn start_ours(options: &Options, scratch: &Path) -> Result<Subject, Failure> {
    let binary = match &options.driver {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .ok_or("no target directory")?
            .join("hostpath-csi"),
    };
    let pool = scratch.join("pool");
    let kubelet_dir = scratch.join("kubelet");
    std::fs::create_dir_all(&pool)?;
    std::fs::create_dir_all(&kubelet_dir)?;
    let socket = scratch.join("csi.sock");
    let log = scratch.join("driver.log");
    let child = spawn(&binary, &socket, &pool, &kubelet_dir, &log)?;
    Ok(Subject {
        socket,
        pid: child.id(),
        kubelet_dir,
        started: Some(Started {
            child,
            binary,
            pool,
            log,
        }),
    })
}

fn spawn(
    binary: &Path,
    socket: &Path,
    pool: &Path,
    kubelet_dir: &Path,
    log: &Path,
) -> Result<Child, Failure> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let child = Command::new(binary)
        .arg("serve")
        .arg(format!("--endpoint=unix://{}", socket.display()))
        .arg("--node-id=bench")
        .arg(format!("--pool=default={}", pool.display()))
        .arg(format!("--kubelet-dir={}", kubelet_dir.display()))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("start {}: {e}", binary.display()))?;
    Ok(child)
}

fn stop(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).ok();
    child.wait().ok();
}

/// Polls until the driver answers Probe with ready; returns how long it took.
async fn wait_ready(socket: &Path) -> Result<Duration, Failure> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        if let Ok(mut csi) = CsiClient::connect(socket.to_owned()).await
            && let Ok(answer) = csi.identity.probe(ProbeRequest {}).await
            && answer.into_inner().ready != Some(false)
        {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Err(format!("no ready Probe at {} within 120 s", socket.display()).into())
}

/// Stops the driver (with SIGKILL when `crash`) and starts it again (after
/// dropping the page cache when `cold`); returns how long it took to answer
/// Probe ready.
async fn restart(subject: &mut Subject, cold: bool, crash: bool) -> Result<Duration, Failure> {
    let started = subject.started.as_mut().ok_or("not ours")?;
    if crash {
        started.child.kill().ok();
        started.child.wait().ok();
    } else {
        stop(&mut started.child);
    }
    if cold {
        nix::unistd::sync();
        std::fs::write("/proc/sys/vm/drop_caches", "3")?;
    }
    let start = Instant::now();
    started.child = spawn(
        &started.binary,
        &subject.socket,
        &started.pool,
        &subject.kubelet_dir,
        &started.log,
    )?;
    subject.pid = started.child.id();
    wait_ready(&subject.socket).await?;
    Ok(start.elapsed())
}

fn capability() -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    }
}

fn create_request(name: String) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name,
        volume_capabilities: vec![capability()],
        ..Default::default()
    }
}

/// `count` CreateVolume calls from the concurrent clients; returns the rate
/// and the ids of the volumes made (the calls that failed made none).
async fn creates(
    subject: &Subject,
    prefix: &str,
    count: usize,
    options: &Options,
) -> Result<(f64, Vec<String>), Failure> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..options.concurrency {
        let mut csi = CsiClient::connect(subject.socket.clone()).await?;
        let (next, prefix) = (next.clone(), prefix.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut made = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return made;
                }
                if let Ok(answer) = csi
                    .controller
                    .create_volume(create_request(format!("{prefix}-{i}")))
                    .await
                    && let Some(volume) = answer.into_inner().volume
                {
                    made.push(volume.volume_id);
                }
            }
        }));
    }
    let mut made = Vec::with_capacity(count);
    for task in tasks {
        made.extend(task.await?);
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    Ok((rate, made))
}

/// DeleteVolume of each of `ids` from the concurrent clients (not timed);
/// returns the number that failed.
async fn deletes(subject: &Subject, ids: Vec<String>, options: &Options) -> Result<usize, Failure> {
    let ids = Arc::new(ids);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..options.concurrency {
        let mut csi = CsiClient::connect(subject.socket.clone()).await?;
        let (ids, next) = (ids.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut failed = 0;
            while let Some(id) = ids.get(next.fetch_add(1, Ordering::Relaxed)) {
                let request = DeleteVolumeRequest {
                    volume_id: id.clone(),
                    secrets: Default::default(),
                };
                if csi.controller.delete_volume(request).await.is_err() {
                    failed += 1;
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for task in tasks {
        failed += task.await?;
    }
    Ok(failed)
}

/// How long the driver is left idle before its memory is read again.
const SETTLE: Duration = Duration::from_secs(3);

/// Rounds each measurement is split into (see `run`).
const ROUNDS: usize = 5;

/// What a batch of lifecycles measured.
#[derive(Default)]
struct Run {
    count: usize,
    took: Duration,
    latencies: BTreeMap<&'static str, Vec<Duration>>,
    errors: usize,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.count as f64 / self.took.as_secs_f64()
    }

    fn absorb(&mut self, other: Run) {
        self.count += other.count;
        self.took += other.took;
        self.errors += other.errors;
        for (name, mut took) in other.latencies {
            self.latencies.entry(name).or_default().append(&mut took);
        }
    }
}

async fn lifecycles(
    subject: &Subject,
    targets: &Path,
    label: &str,
    count: usize,
    options: &Options,
) -> Result<Run, Failure> {
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(BTreeMap::<&'static str, Vec<Duration>>::new()));
    let errors = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..options.concurrency {
        let mut csi = CsiClient::connect(subject.socket.clone()).await?;
        let (next, latencies, errors) = (next.clone(), latencies.clone(), errors.clone());
        let (targets, label) = (targets.to_owned(), label.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut mine: BTreeMap<&'static str, Vec<Duration>> = BTreeMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let target = match target(&targets, &format!("{label}-{i}")) {
                    Ok(target) => target,
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                match lifecycle(&mut csi, format!("life-{label}-{i}"), &target).await {
                    Ok(phases) => {
                        for (name, took) in phases {
                            mine.entry(name).or_default().push(took);
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let mut all = latencies.lock().await;
            for (name, mut took) in mine {
                all.entry(name).or_default().append(&mut took);
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let took = start.elapsed();
    let latencies = Arc::try_unwrap(latencies)
        .map_err(|_| "still shared")?
        .into_inner();
    Ok(Run {
        count,
        took,
        latencies,
        errors: errors.load(Ordering::Relaxed),
    })
}

/// The mount target of pod `pod` beneath `pods` (kubelet's `pods/`
/// directory), its parent made as kubelet makes it before publishing.
fn target(pods: &Path, pod: &str) -> std::io::Result<PathBuf> {
    let parent = pods.join(pod).join("volumes/kubernetes.io~csi/pv");
    std::fs::create_dir_all(&parent)?;
    Ok(parent.join("mount"))
}

/// One CreateVolume → NodePublishVolume → NodeUnpublishVolume →
/// DeleteVolume, timed call by call.
async fn lifecycle(
    csi: &mut CsiClient,
    name: String,
    target: &Path,
) -> Result<Vec<(&'static str, Duration)>, Failure> {
    let target = target.to_string_lossy().into_owned();
    let begin = Instant::now();
    let mut at = begin;
    let mut lap = |name: &'static str, phases: &mut Vec<(&'static str, Duration)>| {
        let now = Instant::now();
        phases.push((name, now - at));
        at = now;
    };
    let mut phases = Vec::with_capacity(5);
    let volume = csi
        .controller
        .create_volume(create_request(name))
        .await?
        .into_inner()
        .volume
        .ok_or("no volume")?;
    lap("create", &mut phases);
    let publish = NodePublishVolumeRequest {
        volume_id: volume.volume_id.clone(),
        target_path: target.clone(),
        volume_capability: Some(capability()),
        volume_context: volume.volume_context,
        ..Default::default()
    };
    csi.node.node_publish_volume(publish).await?;
    lap("publish", &mut phases);
    let unpublish = NodeUnpublishVolumeRequest {
        volume_id: volume.volume_id.clone(),
        target_path: target,
    };
    csi.node.node_unpublish_volume(unpublish).await?;
    lap("unpublish", &mut phases);
    let delete = DeleteVolumeRequest {
        volume_id: volume.volume_id,
        secrets: Default::default(),
    };
    csi.controller.delete_volume(delete).await?;
    lap("delete", &mut phases);
    phases.push(("lifecycle", begin.elapsed()));
    Ok(phases)
}

/// Runs `step(i)` for i in 0..count from `concurrency` threads; returns the
/// steps per second.
fn in_threads(
    count: usize,
    concurrency: usize,
    step: impl Fn(usize) -> Result<(), Failure> + Sync,
) -> Result<f64, Failure> {
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|scope| -> Result<(), Failure> {
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                scope.spawn(|| -> Result<(), Failure> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            return Ok(());
                        }
                        step(i)?;
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().map_err(|_| "floor worker panicked")??;
        }
        Ok(())
    })?;
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

/// A floor directory with `volumes/`, `meta/` and `targets/`, and `meta/` open.
fn floor_layout(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf, std::fs::File), Failure> {
    let (volumes, meta, targets) = (dir.join("volumes"), dir.join("meta"), dir.join("targets"));
    for d in [&volumes, &meta, &targets] {
        std::fs::create_dir_all(d)?;
    }
    let meta_fd = std::fs::File::open(&meta)?;
    Ok((volumes, meta, targets, meta_fd))
}

/// Record-sized bytes.
const RECORD: [u8; 200] = [b'x'; 200];

/// The same work as a lifecycle with no driver: mkdir of the volume, an
/// atomic record write (temp, fsync, rename, fsync of the directory), mkdir
/// of the target, a bind mount, its unmount, rmdir of the target and the
/// volume, and removal of the record (unlink, fsync of the directory).
fn floor_run(dir: &Path, count: usize, concurrency: usize) -> Result<f64, Failure> {
    let (volumes, meta, targets, meta_fd) = floor_layout(dir)?;
    in_threads(count, concurrency, |i| {
        let name = format!("v{i}");
        let volume = volumes.join(&name);
        let target = targets.join(&name);
        std::fs::create_dir(&volume)?;
        beneath::write_atomic(&meta_fd.as_fd(), &format!("{name}.json"), &RECORD)?;
        std::fs::create_dir(&target)?;
        nix::mount::mount(
            Some(&volume),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )?;
        nix::mount::umount2(&target, nix::mount::MntFlags::empty())?;
        std::fs::remove_dir(&target)?;
        std::fs::remove_dir(&volume)?;
        std::fs::remove_file(meta.join(format!("{name}.json")))?;
        nix::unistd::fsync(&meta_fd)?;
        Ok(())
    })
}

/// The same work as a CreateVolume with no driver: an atomic record write
/// and mkdir of the volume, then, when `durable_dir`, an fsync of
/// `volumes/` as the driver does before it answers; the volumes are removed
/// afterwards, untimed.
fn floor_creates(
    dir: &Path,
    count: usize,
    concurrency: usize,
    durable_dir: bool,
) -> Result<f64, Failure> {
    let (volumes, meta, _, meta_fd) = floor_layout(dir)?;
    let volumes_fd = std::fs::File::open(&volumes)?;
    let rate = in_threads(count, concurrency, |i| {
        let name = format!("c{i}");
        beneath::write_atomic(&meta_fd.as_fd(), &format!("{name}.json"), &RECORD)?;
        std::fs::create_dir(volumes.join(&name))?;
        if durable_dir {
            nix::unistd::fsync(&volumes_fd)?;
        }
        Ok(())
    })?;
    for i in 0..count {
        std::fs::remove_dir(volumes.join(format!("c{i}")))?;
        std::fs::remove_file(meta.join(format!("c{i}.json")))?;
    }
    Ok(rate)
}

/// DeleteVolume of a volume holding `files` files: how long the call takes,
/// and (for our driver) how long until its pool's trash is empty again.
async fn big_delete(subject: &Subject, targets: &Path, files: usize) -> Result<(), Failure> {
    let mut csi = CsiClient::connect(subject.socket.clone()).await?;
    let target = target(targets, "big")?;
    let volume = csi
        .controller
        .create_volume(create_request("big".into()))
        .await?
        .into_inner()
        .volume
        .ok_or("no volume")?;
    let id = volume.volume_id.clone();
    let publish = NodePublishVolumeRequest {
        volume_id: id.clone(),
        target_path: target.to_string_lossy().into_owned(),
        volume_capability: Some(capability()),
        volume_context: volume.volume_context,
        ..Default::default()
    };
    csi.node.node_publish_volume(publish).await?;
    for i in 0..files {
        let dir = target.join(format!("d{}", i / 1000));
        if i % 1000 == 0 {
            std::fs::create_dir(&dir)?;
        }
        std::fs::File::create(dir.join(i.to_string()))?;
    }
    let unpublish = NodeUnpublishVolumeRequest {
        volume_id: id.clone(),
        target_path: target.to_string_lossy().into_owned(),
    };
    csi.node.node_unpublish_volume(unpublish).await?;
    nix::unistd::sync();
    let start = Instant::now();
    csi.controller
        .delete_volume(DeleteVolumeRequest {
            volume_id: id,
            secrets: Default::default(),
        })
        .await?;
    let answered = start.elapsed();
    let gone = match &subject.started {
        Some(started) => {
            let trash = started.pool.join(".trash");
            while std::fs::read_dir(&trash)?.next().is_some() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            shown(start.elapsed())
        }
        None => "not measured (not our pool)".into(),
    };
    println!(
        "\n| DeleteVolume of a volume holding {files} files | answered after | data gone after |\n|---|---|---|"
    );
    println!("| | {} | {gone} |", shown(answered));
    Ok(())
}

/// VmRSS and VmHWM of a process, in KiB.
struct Memory {
    rss: u64,
    hwm: u64,
}

fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or(0)
    };
    Memory {
        rss: field("VmRSS:"),
        hwm: field("VmHWM:"),
    }
}
