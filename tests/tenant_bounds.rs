//! A tenant cannot take the node plugin down: whatever a volume holds, the
//! real binary's peak memory (VmHWM) stays bounded while the volume is
//! stat'ed, published, unpublished and deleted.
//!
//! The bounds asserted here carry generous slack over the figures
//! docs/benchmarks.md records for the release binary (`examples/tenant_bench.rs`):
//! this is the debug build, and other tests run beside it.

mod common;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use common::process::DriverProcess;
use common::{Scratch, create_request, delete, publish_request, wait_trash_empty};
use hostpath_csi::client::CsiClient;
use hostpath_csi::csi::{NodeGetVolumeStatsRequest, NodeUnpublishVolumeRequest};
use nix::sys::stat::{Mode, SFlag, mkdirat, mknodat};

/// Peak memory the debug binary may reach (the release binary's target is 32 MiB).
const PEAK_MIB: f64 = 64.0;

fn open_dir(path: &Path) -> OwnedFd {
    nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
        Mode::empty(),
    )
    .unwrap()
}

/// Makes `dir/wide/` with `entries` empty files of 200-byte names, and
/// `dir/deep/d/d/…` `levels` deep (through fds: no path is that long).
fn crowd(dir: &Path, entries: usize, levels: usize) {
    std::fs::create_dir(dir.join("wide")).unwrap();
    let wide = open_dir(&dir.join("wide"));
    for i in 0..entries {
        let name = format!("{i:0>200}");
        mknodat(
            &wide,
            name.as_str(),
            SFlag::S_IFREG,
            Mode::from_bits_truncate(0o644),
            0,
        )
        .unwrap();
    }
    std::fs::create_dir(dir.join("deep")).unwrap();
    let mut fd = open_dir(&dir.join("deep"));
    for _ in 0..levels {
        mkdirat(&fd, "d", Mode::from_bits_truncate(0o755)).unwrap();
        fd = hostpath_csi::beneath::open_dir(&fd, "d").unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crowded_volume_is_stated_published_and_deleted_in_bounded_memory() {
    const ENTRIES: usize = 400_000;
    const LEVELS: usize = 10_000;
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    scratch.mount_tmpfs(&pool, "4g");
    let driver = DriverProcess::start(scratch.path(), &pool, &[]);
    let mut csi = CsiClient::connect(driver.socket.clone()).await.unwrap();
    let created = csi
        .controller
        .create_volume(create_request("crowded", 0))
        .await
        .unwrap();
    let id = created.into_inner().volume.unwrap().volume_id;
    crowd(&pool.join("volumes").join(&id), ENTRIES, LEVELS);
    let before = driver.peak_mib();

    let parent = scratch
        .path()
        .join("pods/p1/volumes/kubernetes.io~csi/crowded");
    std::fs::create_dir_all(&parent).unwrap();
    let target = parent.join("mount").to_string_lossy().into_owned();
    csi.node
        .node_publish_volume(publish_request(&id, &target, false))
        .await
        .unwrap();
    // The first calls answer within the walk's budget with a lower bound;
    // the walk finishes in the background, and then the whole is reported.
    let stats = NodeGetVolumeStatsRequest {
        volume_id: id.clone(),
        volume_path: target.clone(),
        staging_target_path: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answer = csi.node.node_get_volume_stats(stats.clone()).await.unwrap();
        let inodes = answer
            .into_inner()
            .usage
            .iter()
            .map(|u| u.used)
            .max()
            .unwrap();
        // The root, wide/ and its entries, deep/ and the 64 levels a walk enters.
        if inodes >= (ENTRIES + 2) as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the walk never finished: {inodes} inodes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    csi.node
        .node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: target,
        })
        .await
        .unwrap();
    csi.controller.delete_volume(delete(&id)).await.unwrap();
    wait_trash_empty(&pool);

    let peak = driver.peak_mib();
    println!("VmHWM: {before:.1} MiB before, {peak:.1} MiB after stats, publish and delete");
    assert!(
        peak < PEAK_MIB,
        "peak memory {peak:.1} MiB (from {before:.1}) with {ENTRIES} entries in one directory"
    );
}

#[test]
fn a_crowded_tree_left_in_the_trash_drains_at_start_in_bounded_memory() {
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    scratch.mount_tmpfs(&pool, "4g");
    // What a driver killed while deleting a crowded volume leaves behind.
    let left = pool.join(".trash/vol-left.1");
    std::fs::create_dir_all(&left).unwrap();
    crowd(&left, 400_000, 10_000);
    let driver = DriverProcess::start(scratch.path(), &pool, &[]);
    wait_trash_empty(&pool);
    let peak = driver.peak_mib();
    println!("VmHWM after draining the trash: {peak:.1} MiB");
    assert!(peak < PEAK_MIB, "peak memory {peak:.1} MiB");
}

/// Threads the driver may run at once, whatever arrives: tokio's workers
/// (one per CPU), the bounded pool of blocking work (24), and the driver's
/// own few threads, with slack.
fn max_threads() -> u64 {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    u64::try_from(workers).unwrap() + 46
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_15000_calls_is_answered_with_bounded_threads_and_memory() {
    const CALLS: usize = 15_000;
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    std::fs::create_dir(&pool).unwrap();
    let driver = DriverProcess::start(scratch.path(), &pool, &[]);
    let csi = CsiClient::connect(driver.socket.clone()).await.unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..CALLS {
        let mut controller = csi.controller.clone();
        calls.spawn(async move {
            controller
                .delete_volume(delete(&format!("vol-{i:032x}")))
                .await
        });
    }
    let mut most_threads = 0;
    let mut answered = 0;
    let mut sampled = Instant::now();
    while let Some(answer) = calls.join_next().await {
        answer.unwrap().unwrap();
        answered += 1;
        if sampled.elapsed() > Duration::from_millis(5) {
            most_threads = most_threads.max(driver.status("Threads"));
            sampled = Instant::now();
        }
    }
    let peak = driver.peak_mib();
    println!("{answered} calls answered; at most {most_threads} threads; VmHWM {peak:.1} MiB");
    assert_eq!(answered, CALLS);
    assert!(most_threads <= max_threads(), "{most_threads} threads");
    assert!(peak < PEAK_MIB, "peak memory {peak:.1} MiB");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_megabyte_in_a_request_field_is_not_echoed_back() {
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    std::fs::create_dir(&pool).unwrap();
    let driver = DriverProcess::start(scratch.path(), &pool, &[]);
    let mut csi = CsiClient::connect(driver.socket.clone()).await.unwrap();
    let huge = "X".repeat(1 << 20);
    let refused = csi
        .controller
        .delete_volume(delete(&huge))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().len() < 1024,
        "{} bytes",
        refused.message().len()
    );
    assert!(
        refused.message().contains("(1048576 bytes)"),
        "{}",
        refused.message()
    );
    let mut request = create_request("v", 0);
    request.parameters.insert(huge.clone(), "x".into());
    let refused = csi.controller.create_volume(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().len() < 1024,
        "{} bytes",
        refused.message().len()
    );
}

/// Holds `count` connections to `address` open, each having sent one byte,
/// from a process of its own (a process may hold only so many fds; it raises
/// its soft limit as far as it needs); prints
/// "open" once they are, and lets them go when its stdin closes.
fn idle_connections(address: &str, count: usize) -> std::process::Child {
    let (host, port) = address.rsplit_once(':').unwrap();
    let script = format!(
        "import resource, socket, sys\n\
         soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n\
         want = {count} + 64\n\
         if hard != resource.RLIM_INFINITY and hard < want:\n\
         \x20   sys.exit(f'{{hard}} fds at most: too few for {count} connections')\n\
         if soft != resource.RLIM_INFINITY and soft < want:\n\
         \x20   resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))\n\
         held = []\n\
         for _ in range({count}):\n\
         \x20   s = socket.create_connection(('{host}', {port}))\n\
         \x20   s.send(b'G')\n\
         \x20   held.append(s)\n\
         print('open', flush=True)\n\
         sys.stdin.read()\n"
    );
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is installed");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(
        line.trim(),
        "open",
        "the connections could not all be opened"
    );
    child
}

/// One scrape of `/metrics` at `address`: the status line and the body.
fn scrape(address: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_thousand_idle_metrics_connections_neither_starve_grpc_nor_grow_memory() {
    let scratch = Scratch::new();
    let pool = scratch.path().join("pool");
    std::fs::create_dir(&pool).unwrap();
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let driver = DriverProcess::start(
        scratch.path(),
        &pool,
        &[format!("--metrics-address={address}")],
    );
    let mut csi = CsiClient::connect(driver.socket.clone()).await.unwrap();
    let floods: Vec<_> = (0..2).map(|_| idle_connections(&address, 10_000)).collect();
    // gRPC is served while the connections are held.
    for i in 0..20 {
        csi.controller
            .create_volume(create_request(&format!("during-{i}"), 0))
            .await
            .unwrap();
    }
    let peak = driver.peak_mib();
    for mut flood in floods {
        drop(flood.stdin.take());
        flood.wait().unwrap();
    }
    // A scrape works afterwards (slots held by the flood free within the
    // header timeout).
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        match scrape(&address) {
            Ok(answer) if answer.starts_with("HTTP/1.1 200 OK") => break answer,
            other => assert!(Instant::now() < deadline, "no scrape served: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        answer.contains("hostpath_csi_volumes{pool=\"default\",kind=\"directory\"} 20"),
        "{answer}"
    );
    // Without --volume-metrics, no series per volume.
    assert!(
        !answer.contains("hostpath_csi_volume_capacity_bytes"),
        "{answer}"
    );
    println!("VmHWM with 20,000 idle metrics connections: {peak:.1} MiB");
    assert!(peak < PEAK_MIB, "peak memory {peak:.1} MiB");
}
