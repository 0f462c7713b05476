//! Benchmark (not a test): what a hostile tenant can cost the node plugin,
//! measured on the release binary run as a child process, as on a node.
//!
//! - **A. Hostile volume contents.** A directory volume holding one directory
//!   of 1,000,000 empty files with 200-byte names and a tree 10,000 levels
//!   deep: the time of each step (NodePublishVolume, NodeGetVolumeStats until
//!   it reports the complete figure, NodeUnpublishVolume, DeleteVolume, the
//!   trash drain) and the driver's peak memory (VmHWM) before and after it,
//!   against the same walk, bind mount, unmount and removal done
//!   in-process; then the same tree left in `.trash/` before the driver
//!   starts (drained at start).
//! - **B. Metrics port abuse.** CreateVolume latency over gRPC, quiet and
//!   while 20,000 idle TCP connections (each having sent one byte) are held
//!   on the metrics port; the driver's memory, threads and fds meanwhile; and
//!   how soon a scrape is answered while they are held and once they go.
//! - **C. Burst.** 15,000 concurrent DeleteVolume calls on one connection:
//!   all answered?, the most threads the driver ran, its peak memory and its
//!   rate, against 1,000 sequential calls in the same round.
//!
//! Times are medians over rounds (A, C) or over calls (B), and ratios compare
//! two measurements of the same run: the machine may be noisy.
//!
//! Run as root (the pools are on a tmpfs it mounts in a scratch directory and
//! unmounts at the end, whatever happens): `cargo build --release --bin
//! hostpath-csi && cargo run --release --example tenant_bench -- [OPTIONS]`
//! (see `--help`). The idle connections are held by two python3 processes,
//! as a process may hold only so many fds. It takes a few minutes.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hostpath_csi::beneath;
use hostpath_csi::client::CsiClient;
use hostpath_csi::csi::volume_capability::access_mode::Mode as AccessModeKind;
use hostpath_csi::csi::volume_capability::{AccessMode, AccessType, MountVolume};
use hostpath_csi::csi::volume_usage::Unit;
use hostpath_csi::csi::{
    CreateVolumeRequest, DeleteVolumeRequest, NodeGetVolumeStatsRequest, NodePublishVolumeRequest,
    NodeUnpublishVolumeRequest, ProbeRequest, VolumeCapability,
};
use nix::sys::stat::{Mode, SFlag, mkdirat, mknodat};

mod support;
use support::{cleanup, median, median_f64, mib, quantiles, shown};

type Failure = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(about = "What a hostile tenant costs the CSI driver: memory, latency, threads")]
struct Options {
    /// Empty files in the crowded volume's one wide directory (A).
    #[arg(long, default_value_t = 1_000_000)]
    entries: usize,
    /// Levels of the crowded volume's deep tree (A).
    #[arg(long, default_value_t = 10_000)]
    levels: usize,
    /// Rounds of A and of C, each on a driver of its own.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Sequential CreateVolume calls timed in each condition of B.
    #[arg(long, default_value_t = 200)]
    calls: usize,
    /// Idle connections held on the metrics port (B), half by each of two processes.
    #[arg(long, default_value_t = 20_000)]
    connections: usize,
    /// Concurrent DeleteVolume calls of a burst (C).
    #[arg(long, default_value_t = 15_000)]
    burst: usize,
    /// Sequential DeleteVolume calls of the baseline (C).
    #[arg(long, default_value_t = 1_000)]
    sequential: usize,
    /// Sections to run.
    #[arg(long, value_delimiter = ',', default_value = "a,b,c")]
    only: Vec<String>,
    /// The driver binary (default: the release hostpath-csi next to this example).
    #[arg(long)]
    driver: Option<PathBuf>,
}

/// Set on Ctrl-C: the in-process tree builders stop at their next check.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The peak memory the driver is meant to stay under, whatever it is fed.
const TARGET_MIB: f64 = 32.0;

/// How long any one wait (a walk, a drain, a scrape) may take before the
/// benchmark gives up.
const PATIENCE: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let options = Options::parse();
    if !nix::unistd::geteuid().is_root() {
        return Err("run as root: the pools are on a tmpfs this benchmark mounts".into());
    }
    let binary = match &options.driver {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .ok_or("no target directory")?
            .join("hostpath-csi"),
    };
    if !binary.is_file() {
        return Err(format!(
            "no driver at {} (cargo build --release --bin hostpath-csi)",
            binary.display()
        )
        .into());
    }
    let scratch = tempfile::Builder::new()
        .prefix("hostpath-csi-tenant.")
        .tempdir()?;
    // Dropped before `scratch` (declared after it), on return or panic.
    let _unmount = Unmount(scratch.path().to_owned());
    let tmpfs = scratch.path().join("tmpfs");
    std::fs::create_dir(&tmpfs)?;
    nix::mount::mount(
        Some("tmpfs"),
        &tmpfs,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=8g"),
    )?;
    let bench = Bench {
        binary,
        scratch: scratch.path().to_owned(),
        tmpfs,
        options,
    };
    println!(
        "driver {}, scratch {} (pools on a tmpfs)\n",
        bench.binary.display(),
        bench.scratch.display()
    );
    tokio::select! {
        outcome = bench.run() => outcome,
        _ = tokio::signal::ctrl_c() => {
            INTERRUPTED.store(true, Ordering::Relaxed);
            Err("interrupted".into())
        }
    }
}

/// Takes down every mount under the scratch directory when dropped.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        cleanup(&self.0);
    }
}

struct Bench {
    binary: PathBuf,
    /// The kubelet directory, and where sockets and logs go.
    scratch: PathBuf,
    /// The tmpfs the pools are made in, one per driver started.
    tmpfs: PathBuf,
    options: Options,
}

impl Bench {
    async fn run(&self) -> Result<(), Failure> {
        let only = |s: &str| self.options.only.iter().any(|o| o == s);
        if only("a") {
            self.hostile_contents().await?;
        }
        if only("b") {
            self.metrics_abuse().await?;
        }
        if only("c") {
            self.burst().await?;
        }
        Ok(())
    }

    /// A new, empty pool directory on the tmpfs.
    fn pool(&self, label: &str) -> Result<PathBuf, Failure> {
        let pool = self.tmpfs.join(label);
        std::fs::create_dir(&pool)?;
        Ok(pool)
    }
}

// ---------------------------------------------------------------------------
// The driver process.

/// A `hostpath-csi serve` child process; killed when dropped.
struct Driver {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Driver {
    /// Starts the driver on `pool` (socket and log named by `label` in the
    /// scratch directory, which is also its kubelet directory) and waits
    /// until it answers Probe ready; returns it and how long that took.
    async fn start(
        bench: &Bench,
        label: &str,
        pool: &Path,
        extra: &[String],
    ) -> Result<(Self, Duration), Failure> {
        let socket = bench.scratch.join(format!("{label}.sock"));
        let log = bench.scratch.join(format!("{label}.log"));
        let started = Instant::now();
        let child = Command::new(&bench.binary)
            .arg("serve")
            .arg(format!("--endpoint=unix://{}", socket.display()))
            .arg("--node-id=bench")
            .arg(format!("--pool=default={}", pool.display()))
            .arg(format!("--kubelet-dir={}", bench.scratch.display()))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .map_err(|e| format!("start {}: {e}", bench.binary.display()))?;
        let mut driver = Driver { child, socket, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            driver.check_alive()?;
            if let Ok(mut csi) = CsiClient::connect(driver.socket.clone()).await
                && let Ok(answer) = csi.identity.probe(ProbeRequest {}).await
                && answer.into_inner().ready != Some(false)
            {
                return Ok((driver, started.elapsed()));
            }
            if Instant::now() > deadline {
                return Err(format!("no ready Probe within 60 s: {}", driver.log_tail()).into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn client(&self) -> Result<CsiClient, Failure> {
        Ok(CsiClient::connect(self.socket.clone()).await?)
    }

    fn check_alive(&mut self) -> Result<(), Failure> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => {
                Err(format!("the driver exited ({status}): {}", self.log_tail()).into())
            }
        }
    }

    /// A field of /proc/<pid>/status, in its unit (kB for memory).
    fn status(&self, field: &str) -> u64 {
        status_field(self.pid(), field)
    }

    fn hwm(&self) -> u64 {
        self.status("VmHWM")
    }

    /// What the process holds now.
    fn vitals(&self) -> Vitals {
        Vitals {
            rss: self.status("VmRSS"),
            hwm: self.status("VmHWM"),
            threads: self.status("Threads"),
            fds: std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |fds| fds.count()),
        }
    }

    /// The last lines the driver logged.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Polls until `<pool>/.trash` is empty; returns when it was seen so.
    async fn wait_trash_empty(&mut self, pool: &Path) -> Result<Instant, Failure> {
        let trash = pool.join(".trash");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if std::fs::read_dir(&trash)?.next().is_none() {
                return Ok(Instant::now());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                return Err(format!("{} never drained", trash.display()).into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

/// Memory (kB), threads and fds of the driver at one moment.
struct Vitals {
    rss: u64,
    hwm: u64,
    threads: u64,
    fds: usize,
}

impl Vitals {
    fn row(&self, label: &str) -> String {
        format!(
            "| {label} | {} | {} | {} | {} |",
            mib(self.rss),
            mib(self.hwm),
            self.threads,
            self.fds
        )
    }
}

// ---------------------------------------------------------------------------
// A. Hostile volume contents.

/// One timed step of a crowded volume's life, and the driver's VmHWM (kB)
/// after it.
struct Step {
    name: String,
    took: Duration,
    hwm_after: u64,
}

/// What one round of A measured.
struct CrowdedRound {
    steps: Vec<Step>,
    stats_calls: usize,
    inodes: i64,
    /// In-process `beneath::usage` of the same tree, before and after the
    /// driver's walk.
    walk_floor: [Duration; 2],
    /// In-process bind mounts of the volume and their unmounts, before the
    /// driver's publish and after its unpublish.
    bind_floor: [Duration; 2],
    unmount_floor: [Duration; 2],
}

/// What one round of the drain at start measured.
struct DrainRound {
    ready: Duration,
    drained: Duration,
    hwm: u64,
    /// In-process `beneath::remove_tree` of a tree like it.
    remove_floor: Duration,
}

impl Bench {
    async fn hostile_contents(&self) -> Result<(), Failure> {
        let (entries, levels, rounds) = (
            self.options.entries,
            self.options.levels,
            self.options.rounds,
        );
        println!(
            "## A. A volume holding {entries} empty files of 200-byte names in one directory and a tree {levels} levels deep ({rounds} rounds, a driver each)\n"
        );
        let (mut crowded, mut drains) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            crowded.push(self.crowded_round(round).await?);
            drains.push(self.drain_round(round).await?);
            eprintln!("A: round {} of {rounds} done", round + 1);
        }

        println!(
            "| step | took, median | each round | driver VmHWM before → after (highest of the rounds) |"
        );
        println!("|---|---|---|---|");
        let mut before = "—".to_string();
        for (i, name) in crowded[0].steps.iter().map(|s| &s.name).enumerate() {
            let took: Vec<Duration> = crowded.iter().map(|r| r.steps[i].took).collect();
            let after = mib(crowded
                .iter()
                .map(|r| r.steps[i].hwm_after)
                .max()
                .unwrap_or(0));
            println!(
                "| {name} | {} | {} | {before} → {after} |",
                shown(median(&took)),
                each(&took),
            );
            before = after;
        }
        let calls: Vec<String> = crowded.iter().map(|r| r.stats_calls.to_string()).collect();
        println!(
            "\nNodeGetVolumeStats calls until the complete figure ({} inodes): {} (one every 20 ms).\n",
            crowded[0].inodes,
            calls.join(", ")
        );

        let step = |name: &str| -> Vec<Duration> {
            crowded
                .iter()
                .filter_map(|r| r.steps.iter().find(|s| s.name.starts_with(name)))
                .map(|s| s.took)
                .collect()
        };
        let walk_floor: Vec<Duration> = crowded.iter().flat_map(|r| r.walk_floor).collect();
        let bind_floor: Vec<Duration> = crowded.iter().flat_map(|r| r.bind_floor).collect();
        let unmount_floor: Vec<Duration> = crowded.iter().flat_map(|r| r.unmount_floor).collect();
        let remove_floor: Vec<Duration> = drains.iter().map(|r| r.remove_floor).collect();
        let drain_at_start: Vec<Duration> = drains.iter().map(|r| r.drained).collect();
        println!(
            "| the driver's work | median | against the same work in-process, no driver | median | driver / in-process |"
        );
        println!("|---|---|---|---|---|");
        for (what, driver, floor_name, floor) in [
            (
                "NodePublishVolume",
                step("NodePublishVolume"),
                "a bind mount of the volume (the driver copies the mount and restricts it), before and after the driver",
                &bind_floor,
            ),
            (
                "NodeUnpublishVolume",
                step("NodeUnpublishVolume"),
                "its unmount",
                &unmount_floor,
            ),
            (
                "NodeGetVolumeStats until complete",
                step("NodeGetVolumeStats"),
                "`beneath::usage` of the volume, once before and once after the driver",
                &walk_floor,
            ),
            (
                "trash drained after DeleteVolume",
                step("trash drained"),
                "`beneath::remove_tree` of a tree like it",
                &remove_floor,
            ),
            (
                "trash drained at start (below)",
                drain_at_start.clone(),
                "`beneath::remove_tree` of a tree like it",
                &remove_floor,
            ),
        ] {
            let (d, f) = (median(&driver), median(floor));
            println!(
                "| {what} | {} | {floor_name} | {} | {:.2}× |",
                shown(d),
                shown(f),
                d.as_secs_f64() / f.as_secs_f64()
            );
        }

        println!(
            "\n| the same tree left in `.trash/` before the driver starts | median | each round |"
        );
        println!("|---|---|---|");
        let ready: Vec<Duration> = drains.iter().map(|r| r.ready).collect();
        println!(
            "| start → Probe ready | {} | {} |",
            shown(median(&ready)),
            each(&ready)
        );
        println!(
            "| start → `.trash/` empty | {} | {} |",
            shown(median(&drain_at_start)),
            each(&drain_at_start)
        );
        let hwm: Vec<u64> = drains.iter().map(|r| r.hwm).collect();
        println!(
            "| driver VmHWM once drained | {} | {} |",
            mib(median(&hwm)),
            hwm.iter().map(|&k| mib(k)).collect::<Vec<_>>().join(", ")
        );

        let highest = crowded
            .iter()
            .flat_map(|r| r.steps.iter().map(|s| s.hwm_after))
            .chain(hwm.iter().copied())
            .max()
            .unwrap_or(0);
        println!(
            "\nHighest driver VmHWM in A: {} (target < {TARGET_MIB} MiB: {}).\n",
            mib(highest),
            verdict(highest as f64 / 1024.0 < TARGET_MIB)
        );
        Ok(())
    }

    async fn crowded_round(&self, round: usize) -> Result<CrowdedRound, Failure> {
        let (entries, levels) = (self.options.entries, self.options.levels);
        let pool = self.pool(&format!("a{round}"))?;
        let (mut driver, ready) = Driver::start(self, &format!("a{round}"), &pool, &[]).await?;
        let hwm_ready = driver.hwm();
        // Start to ready is timed by `start`.
        let mut steps = vec![Step {
            name: "start → Probe ready".into(),
            took: ready,
            hwm_after: hwm_ready,
        }];
        let mut lap = |name: String, since: Instant, driver: &Driver| {
            steps.push(Step {
                name,
                took: since.elapsed(),
                hwm_after: driver.hwm(),
            });
        };
        let mut csi = driver.client().await?;

        let at = Instant::now();
        let id = csi
            .controller
            .create_volume(create_request("crowded"))
            .await?
            .into_inner()
            .volume
            .ok_or("no volume")?
            .volume_id;
        lap("CreateVolume".into(), at, &driver);

        let volume = pool.join("volumes").join(&id);
        let at = Instant::now();
        let dir = volume.clone();
        tokio::task::spawn_blocking(move || crowd(&dir, entries, levels)).await??;
        lap(
            "filling it (the benchmark, in-process, through fds)".into(),
            at,
            &driver,
        );

        // The floor: the same walk the driver makes, in this process, once
        // before the driver's and once after it (neither side always first).
        let (floor_usage, walk_before) = walk(&volume).await?;
        let floor_target = self.scratch.join(format!("floor-target-{round}"));
        let (bind_before, unmount_before) = bind_and_unmount(&volume, &floor_target).await?;

        let parent = self
            .scratch
            .join(format!("pods/p{round}/volumes/kubernetes.io~csi/crowded"));
        std::fs::create_dir_all(&parent)?;
        let target = parent.join("mount").to_string_lossy().into_owned();
        let at = Instant::now();
        csi.node
            .node_publish_volume(NodePublishVolumeRequest {
                volume_id: id.clone(),
                target_path: target.clone(),
                volume_capability: Some(capability()),
                ..Default::default()
            })
            .await?;
        lap("NodePublishVolume".into(), at, &driver);

        // The first call walks for its budget and answers a lower bound; the
        // walk finishes in the background, and the calls that follow get
        // the complete figure once it has.
        let request = NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: target.clone(),
            staging_target_path: String::new(),
        };
        let at = Instant::now();
        let mut stats_calls = 0;
        let inodes = loop {
            let answer = csi.node.node_get_volume_stats(request.clone()).await?;
            stats_calls += 1;
            let inodes = answer
                .into_inner()
                .usage
                .iter()
                .find(|u| u.unit == Unit::Inodes as i32)
                .map_or(0, |u| u.used);
            if inodes >= floor_usage.inodes as i64 {
                break inodes;
            }
            if at.elapsed() > PATIENCE {
                return Err(format!("the walk never finished: {inodes} inodes").into());
            }
            driver.check_alive()?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        lap(
            "NodeGetVolumeStats, until the complete figure".into(),
            at,
            &driver,
        );
        let (_, walk_after) = walk(&volume).await?;

        let at = Instant::now();
        csi.node
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: id.clone(),
                target_path: target,
            })
            .await?;
        lap("NodeUnpublishVolume".into(), at, &driver);
        let (bind_after, unmount_after) = bind_and_unmount(&volume, &floor_target).await?;

        let at = Instant::now();
        csi.controller.delete_volume(delete_request(&id)).await?;
        lap("DeleteVolume (answered)".into(), at, &driver);

        let answered = Instant::now();
        driver.wait_trash_empty(&pool).await?;
        lap(
            "trash drained (after DeleteVolume's answer)".into(),
            answered,
            &driver,
        );
        Ok(CrowdedRound {
            steps,
            stats_calls,
            inodes,
            walk_floor: [walk_before, walk_after],
            bind_floor: [bind_before, bind_after],
            unmount_floor: [unmount_before, unmount_after],
        })
    }

    /// The crowded tree left in `.trash/`, as by a driver killed while it
    /// drained: a driver started on the pool drains it.
    async fn drain_round(&self, round: usize) -> Result<DrainRound, Failure> {
        let (entries, levels) = (self.options.entries, self.options.levels);
        let pool = self.pool(&format!("drain{round}"))?;
        let floor = self.pool(&format!("floor{round}"))?;
        let left = pool.join(".trash/vol-left.1");
        let remove_floor = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&left)?;
            crowd(&left, entries, levels)?;
            // The floor: a tree like it, removed in this process (before
            // the driver starts, so that the two do not overlap).
            std::fs::create_dir(floor.join("tree"))?;
            crowd(&floor.join("tree"), entries, levels)?;
            let top = open_dir(&floor)?;
            let at = Instant::now();
            beneath::remove_tree(&top, c"tree")?;
            Ok::<_, Failure>(at.elapsed())
        })
        .await??;
        let started = Instant::now();
        let (mut driver, ready) = Driver::start(self, &format!("drain{round}"), &pool, &[]).await?;
        let drained = driver.wait_trash_empty(&pool).await? - started;
        Ok(DrainRound {
            ready,
            drained,
            hwm: driver.hwm(),
            remove_floor,
        })
    }
}

/// `beneath::usage` of the directory at `path`, in this process, and how
/// long it took.
async fn walk(path: &Path) -> Result<(beneath::Usage, Duration), Failure> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let fd = open_dir(&path)?;
        let at = Instant::now();
        let usage = beneath::usage(&fd)?;
        Ok((usage, at.elapsed()))
    })
    .await?
}

/// A bind mount of `volume` at `target` (made if missing) and its unmount,
/// in this process; how long each took.
async fn bind_and_unmount(volume: &Path, target: &Path) -> Result<(Duration, Duration), Failure> {
    let (volume, target) = (volume.to_owned(), target.to_owned());
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&target)?;
        let at = Instant::now();
        nix::mount::mount(
            Some(&volume),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )?;
        let bound = at.elapsed();
        let at = Instant::now();
        nix::mount::umount2(&target, nix::mount::MntFlags::UMOUNT_NOFOLLOW)?;
        Ok((bound, at.elapsed()))
    })
    .await?
}

fn open_dir(path: &Path) -> nix::Result<OwnedFd> {
    nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
        Mode::empty(),
    )
}

/// Makes `dir/wide/` holding `entries` empty files of 200-byte names, and
/// `dir/deep/d/d/…` `levels` deep, through fds (no path is that long).
fn crowd(dir: &Path, entries: usize, levels: usize) -> Result<(), Failure> {
    let interrupted = || {
        if INTERRUPTED.load(Ordering::Relaxed) {
            Err("interrupted")
        } else {
            Ok(())
        }
    };
    std::fs::create_dir(dir.join("wide"))?;
    let wide = open_dir(&dir.join("wide"))?;
    for i in 0..entries {
        if i % 4096 == 0 {
            interrupted()?;
        }
        let name = format!("{i:0>200}");
        mknodat(
            &wide,
            name.as_str(),
            SFlag::S_IFREG,
            Mode::from_bits_truncate(0o644),
            0,
        )?;
    }
    std::fs::create_dir(dir.join("deep"))?;
    let mut fd = open_dir(&dir.join("deep"))?;
    for _ in 0..levels {
        interrupted()?;
        mkdirat(&fd, "d", Mode::from_bits_truncate(0o755))?;
        fd = beneath::open_dir(&fd, "d")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// B. Metrics port abuse.

/// A python3 process holding idle connections to the metrics port; killed
/// when dropped.
struct Flood {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Flood {
    /// Starts a process that opens `count` connections to `address`, each
    /// sending one byte, prints "open" once they are and lets them go when
    /// its stdin closes.
    fn start(address: &str, count: usize) -> Result<Self, Failure> {
        let (host, port) = address.rsplit_once(':').ok_or("no port")?;
        let script = format!(
            "import socket, sys\n\
             held = []\n\
             for _ in range({count}):\n\
             \x20   s = socket.create_connection(('{host}', {port}))\n\
             \x20   try:\n\
             \x20       s.send(b'G')\n\
             \x20   except OSError:\n\
             \x20       pass\n\
             \x20   held.append(s)\n\
             print('open', flush=True)\n\
             sys.stdin.read()\n"
        );
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("python3: {e}"))?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(Flood { child, stdout })
    }

    /// Waits for "open" (the connections are all held).
    fn wait_open(&mut self) -> Result<(), Failure> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        if line.trim() != "open" {
            return Err("a flood process could not open all its connections".into());
        }
        Ok(())
    }

    /// Lets the connections go and waits for the process to end.
    fn end(mut self) -> Result<(), Failure> {
        drop(self.child.stdin.take());
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// One scrape of `/metrics`: whether it was answered 200 OK.
fn scrape(address: &str) -> bool {
    let answer = (|| -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect(address)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(stream, "GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    })();
    answer.is_ok_and(|a| a.starts_with("HTTP/1.1 200 OK"))
}

/// Scrapes every 20 ms until one is answered 200 OK; returns how long that took.
async fn first_scrape(address: &str) -> Result<Duration, Failure> {
    let at = Instant::now();
    loop {
        let address_ = address.to_owned();
        if tokio::task::spawn_blocking(move || scrape(&address_)).await? {
            return Ok(at.elapsed());
        }
        if at.elapsed() > PATIENCE {
            return Err(format!("no scrape answered at {address}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `count` sequential CreateVolume calls of fresh names; their latencies.
async fn timed_creates(
    csi: &mut CsiClient,
    prefix: &str,
    count: usize,
) -> Result<Vec<Duration>, Failure> {
    let mut took = Vec::with_capacity(count);
    for i in 0..count {
        let at = Instant::now();
        csi.controller
            .create_volume(create_request(&format!("{prefix}-{i}")))
            .await?;
        took.push(at.elapsed());
    }
    Ok(took)
}

impl Bench {
    async fn metrics_abuse(&self) -> Result<(), Failure> {
        let (calls, connections) = (self.options.calls, self.options.connections);
        println!(
            "## B. {connections} idle connections held on the metrics port, each having sent one byte\n"
        );
        let address = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .to_string();
        let pool = self.pool("b")?;
        let (driver, _) =
            Driver::start(self, "b", &pool, &[format!("--metrics-address={address}")]).await?;
        let mut csi = driver.client().await?;
        first_scrape(&address).await?;
        let idle = driver.vitals();
        let quiet = timed_creates(&mut csi, "quiet", calls).await?;

        let at = Instant::now();
        let mut floods = vec![
            Flood::start(&address, connections / 2)?,
            Flood::start(&address, connections - connections / 2)?,
        ];
        floods = tokio::task::spawn_blocking(move || {
            for flood in &mut floods {
                flood.wait_open()?;
            }
            Ok::<_, Failure>(floods)
        })
        .await??;
        let opened = at.elapsed();
        let held = driver.vitals();
        let flooded = timed_creates(&mut csi, "flooded", calls).await?;
        let held_after = driver.vitals();
        let scrape_during = first_scrape(&address).await?;
        for flood in floods {
            flood.end()?;
        }
        let scrape_after = first_scrape(&address).await?;
        let after = timed_creates(&mut csi, "after", calls).await?;
        let gone = driver.vitals();

        let (quiet_p50, _) = quantiles(&quiet);
        println!(
            "| {calls} sequential CreateVolume calls over gRPC, fresh names | p50 | p99 | p50 / quiet p50 |"
        );
        println!("|---|---|---|---|");
        for (label, took) in [
            ("quiet, before the flood", &quiet),
            ("while the connections are held", &flooded),
            ("quiet, after the flood", &after),
        ] {
            let (p50, p99) = quantiles(took);
            println!(
                "| {label} | {} | {} | {:.2}× |",
                shown(p50),
                shown(p99),
                p50.as_secs_f64() / quiet_p50.as_secs_f64()
            );
        }
        println!("\n| driver | VmRSS | VmHWM | threads | open fds |");
        println!("|---|---|---|---|---|");
        println!("{}", idle.row("idle, before the flood"));
        println!("{}", held.row("connections just opened"));
        println!("{}", held_after.row("held, after the calls"));
        println!("{}", gone.row("after the flood"));
        println!(
            "\nThe {connections} connections were open after {} (two processes). While they were held, a scrape was answered 200 OK after {} of trying; once they were let go, after {}.",
            shown(opened),
            shown(scrape_during),
            shown(scrape_after)
        );
        let highest = [idle.hwm, held.hwm, held_after.hwm, gone.hwm]
            .into_iter()
            .max()
            .unwrap_or(0);
        println!(
            "Highest driver VmHWM in B: {} (target < {TARGET_MIB} MiB: {}).\n",
            mib(highest),
            verdict(highest as f64 / 1024.0 < TARGET_MIB)
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// C. A burst of calls on one connection.

/// Reads the driver's Threads and VmRSS every millisecond until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, u64)>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (mut threads, mut rss) = (0, 0);
            while !stopped.load(Ordering::Relaxed) {
                threads = threads.max(status_field(pid, "Threads"));
                rss = rss.max(status_field(pid, "VmRSS"));
                std::thread::sleep(Duration::from_millis(1));
            }
            (threads, rss)
        });
        Sampler { stop, thread }
    }

    /// The most threads and the highest VmRSS (kB) seen.
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or((0, 0))
    }
}

struct BurstRound {
    sequential_rate: f64,
    answered: usize,
    failed: usize,
    took: Duration,
    rate: f64,
    threads: u64,
    rss: u64,
}

impl Bench {
    async fn burst(&self) -> Result<(), Failure> {
        let (burst, sequential, rounds) = (
            self.options.burst,
            self.options.sequential,
            self.options.rounds,
        );
        println!(
            "## C. {burst} concurrent DeleteVolume calls (unknown ids) on one connection, against {sequential} sequential ones ({rounds} rounds, one driver)\n"
        );
        let pool = self.pool("c")?;
        let (driver, _) = Driver::start(self, "c", &pool, &[]).await?;
        let idle = driver.vitals();
        let csi = driver.client().await?;
        let mut results = Vec::new();
        for round in 0..rounds {
            let mut controller = csi.controller.clone();
            let at = Instant::now();
            for i in 0..sequential {
                let id = format!("vol-{:032x}", (1u128 << 64) + i as u128);
                controller.delete_volume(delete_request(&id)).await?;
            }
            let sequential_rate = sequential as f64 / at.elapsed().as_secs_f64();

            let sampler = Sampler::start(driver.pid());
            let at = Instant::now();
            let mut calls = tokio::task::JoinSet::new();
            for i in 0..burst {
                let mut controller = csi.controller.clone();
                calls.spawn(async move {
                    controller
                        .delete_volume(delete_request(&format!("vol-{i:032x}")))
                        .await
                });
            }
            let (mut answered, mut failed) = (0, 0);
            while let Some(answer) = calls.join_next().await {
                match answer? {
                    Ok(_) => answered += 1,
                    Err(_) => failed += 1,
                }
            }
            let took = at.elapsed();
            let (threads, rss) = sampler.finish();
            results.push(BurstRound {
                sequential_rate,
                answered,
                failed,
                took,
                rate: burst as f64 / took.as_secs_f64(),
                threads,
                rss,
            });
            eprintln!("C: round {} of {rounds} done", round + 1);
        }
        let hwm = driver.hwm();

        println!(
            "| round | sequential calls/s | burst answered OK | failed | took | calls/s | burst / sequential | most threads | highest VmRSS |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for (i, r) in results.iter().enumerate() {
            println!(
                "| {} | {:.0} | {} | {} | {} | {:.0} | {:.2}× | {} | {} |",
                i + 1,
                r.sequential_rate,
                r.answered,
                r.failed,
                shown(r.took),
                r.rate,
                r.rate / r.sequential_rate,
                r.threads,
                mib(r.rss)
            );
        }
        let ratios: Vec<f64> = results.iter().map(|r| r.rate / r.sequential_rate).collect();
        let took: Vec<Duration> = results.iter().map(|r| r.took).collect();
        println!(
            "| median | {:.0} | | | {} | {:.0} | {:.2}× | {} (most) | {} (highest) |",
            median_f64(results.iter().map(|r| r.sequential_rate).collect()),
            shown(median(&took)),
            median_f64(results.iter().map(|r| r.rate).collect()),
            median_f64(ratios),
            results.iter().map(|r| r.threads).max().unwrap_or(0),
            mib(results.iter().map(|r| r.rss).max().unwrap_or(0))
        );
        let all = results.iter().all(|r| r.answered == burst);
        println!(
            "\nIdle before: {} threads, VmRSS {}. Every call answered OK: {}. Driver VmHWM after all rounds: {} (target < {TARGET_MIB} MiB: {}).\n",
            idle.threads,
            mib(idle.rss),
            if all { "yes" } else { "no" },
            mib(hwm),
            verdict(hwm as f64 / 1024.0 < TARGET_MIB)
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Requests and figures.

fn capability() -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode {
            mode: AccessModeKind::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    }
}

fn create_request(name: &str) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        volume_capabilities: vec![capability()],
        ..Default::default()
    }
}

fn delete_request(id: &str) -> DeleteVolumeRequest {
    DeleteVolumeRequest {
        volume_id: id.into(),
        secrets: Default::default(),
    }
}

/// Each round's time, in order.
fn each(took: &[Duration]) -> String {
    took.iter()
        .map(|d| shown(*d))
        .collect::<Vec<_>>()
        .join(", ")
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}
