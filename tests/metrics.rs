//! The real binary's Prometheus metrics: calls by method and code, room,
//! promises, trash, volume counts, per-volume series, health problems and
//! unreadable records, over HTTP on the address `--metrics-address` names.
//! The page is kept in target/tmp/metrics-scrape.prom for promtool to lint
//! (scripts/check-monitoring.sh).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hostpath_csi::client::CsiClient;
use hostpath_csi::csi::volume_capability::access_mode::Mode;
use hostpath_csi::csi::volume_capability::{AccessMode, AccessType, MountVolume};
use hostpath_csi::csi::{CapacityRange, CreateVolumeRequest, VolumeCapability};

/// The driver process, killed when the test ends whatever happens.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn get(address: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[tokio::test]
async fn metrics_show_each_pool_and_the_volumes_on_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("pool")).unwrap();
    // What an earlier run left: two trashed trees and a broken record.
    for sub in [".trash/left-1/a/b", ".trash/left-2", "meta"] {
        std::fs::create_dir_all(dir.path().join("pool").join(sub)).unwrap();
    }
    std::fs::write(dir.path().join("pool/.trash/left-1/a/b/f"), b"x").unwrap();
    std::fs::write(dir.path().join("pool/meta/broken.json"), b"{").unwrap();
    let socket = dir.path().join("csi.sock");
    // A free port, as the kernel picks one.
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let child = Command::new(env!("CARGO_BIN_EXE_hostpath-csi"))
        .arg("serve")
        .arg(format!("--endpoint=unix://{}", socket.display()))
        .arg(format!("--pool=main={}", dir.path().join("pool").display()))
        .arg(format!("--metrics-address={address}"))
        .arg("--memory-budget=1Gi")
        .arg("--volume-metrics")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _driver = Driver(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&address).is_err()
        || std::os::unix::net::UnixStream::connect(&socket).is_err()
    {
        assert!(Instant::now() < deadline, "the driver never served");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut csi = CsiClient::connect(socket).await.unwrap();
    let capability = VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    };
    let request = CreateVolumeRequest {
        name: "measured".into(),
        capacity_range: Some(CapacityRange {
            required_bytes: 1 << 20,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![capability.clone()],
        ..Default::default()
    };
    let id = csi
        .controller
        .create_volume(request)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;

    let snapshot = csi
        .controller
        .create_snapshot(hostpath_csi::csi::CreateSnapshotRequest {
            name: "counted".into(),
            source_volume_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(
        snapshot.ready_to_use,
        "an empty volume's copy is done at once"
    );

    // One call refused: counted under its code.
    let refused = csi
        .controller
        .create_volume(CreateVolumeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    // Two file volumes, whose usage is O(1) to read; one deleted again:
    // its image and its directory go through the trash, after the two
    // leftovers.
    let mut images = Vec::new();
    for name in ["image", "gone"] {
        let request = CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(CapacityRange {
                required_bytes: 16 << 20,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![capability.clone()],
            parameters: [("kind".to_owned(), "file".to_owned())].into(),
            ..Default::default()
        };
        let made = csi.controller.create_volume(request).await.unwrap();
        images.push(made.into_inner().volume.unwrap().volume_id);
    }
    let [image, gone] = <[String; 2]>::try_from(images).unwrap();
    let answer = get(&address, "/metrics");
    let used = answer
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                "hostpath_csi_volume_used_bytes{{pool=\"main\",kind=\"file\",volume=\"{image}\",name=\"image\"}} "
            ))
        })
        .unwrap_or_else(|| panic!("no usage of the image in\n{answer}"));
    assert!(used.parse::<u64>().unwrap() > 0, "{used}");
    csi.controller
        .delete_volume(hostpath_csi::csi::DeleteVolumeRequest {
            volume_id: gone,
            ..Default::default()
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let answer = get(&address, "/metrics");
        if answer.contains("hostpath_csi_pool_trash_removed_total{pool=\"main\"} 4\n") {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "the trash never drained:\n{answer}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    for line in [
        "hostpath_csi_rpc_requests_total{method=\"CreateVolume\",code=\"OK\"} 3",
        "hostpath_csi_rpc_requests_total{method=\"CreateVolume\",code=\"InvalidArgument\"} 1",
        "hostpath_csi_rpc_requests_total{method=\"DeleteVolume\",code=\"OK\"} 1",
        "hostpath_csi_rpc_duration_seconds_count{method=\"CreateVolume\"} 4",
        "hostpath_csi_rpc_duration_seconds_bucket{method=\"CreateSnapshot\",le=\"+Inf\"} 1",
        "hostpath_csi_pool_trash_entries{pool=\"main\"} 0",
        "hostpath_csi_records_unreadable{pool=\"main\"} 1",
        &format!(
            "hostpath_csi_volume_capacity_bytes{{pool=\"main\",kind=\"directory\",volume=\"{id}\",name=\"measured\"}} 1048576"
        ),
        "hostpath_csi_volume_series_omitted 0",
        "hostpath_csi_pool_enforcement{pool=\"main\",mode=\"tracked\"} 0",
        "hostpath_csi_pool_promised_bytes{pool=\"main\"} 17825792",
        "hostpath_csi_memory_budget_bytes 1073741824",
        "hostpath_csi_memory_promised_bytes 0",
        "hostpath_csi_volumes{pool=\"main\",kind=\"directory\"} 1",
        "hostpath_csi_volumes{pool=\"main\",kind=\"file\"} 1",
        "hostpath_csi_snapshots_not_ready{pool=\"main\"} 0",
    ] {
        assert!(
            answer.lines().any(|l| l == line),
            "{line} missing in\n{answer}"
        );
    }
    assert!(
        answer.contains("hostpath_csi_pool_free_bytes{pool=\"main\"} "),
        "{answer}"
    );
    // Copied, or reflinked where the scratch filesystem shares extents.
    assert!(
        answer.lines().any(
            |l| l == "hostpath_csi_snapshots{pool=\"main\",method=\"copy\"} 1"
                || l == "hostpath_csi_snapshots{pool=\"main\",method=\"reflink-tree\"} 1"
        ),
        "{answer}"
    );
    assert!(
        !answer.contains("hostpath_csi_volume_problems{")
            && !answer.contains("hostpath_csi_pool_problem{"),
        "{answer}"
    );

    // A backing gone, then the pool's directory moved away: the same facts
    // the health RPCs give, for kubelets that do not ask for them.
    let volume_dir = dir.path().join("pool").join("volumes").join(&id);
    std::fs::rename(&volume_dir, dir.path().join("aside")).unwrap();
    let answer = get(&address, "/metrics");
    let line = "hostpath_csi_volume_problems{pool=\"main\",kind=\"directory\",reason=\"BackingMissing\"} 1";
    assert!(
        answer.lines().any(|l| l == line),
        "{line} missing in\n{answer}"
    );
    std::fs::rename(dir.path().join("pool"), dir.path().join("pool-aside")).unwrap();
    let answer = get(&address, "/metrics");
    let line = "hostpath_csi_pool_problem{pool=\"main\",reason=\"PoolDirectoryGone\"} 1";
    assert!(
        answer.lines().any(|l| l == line),
        "{line} missing in\n{answer}"
    );
    // This page has every family: promtool lints it.
    std::fs::write(
        concat!(env!("CARGO_TARGET_TMPDIR"), "/metrics-scrape.prom"),
        answer.split_once("\r\n\r\n").unwrap().1,
    )
    .unwrap();
    std::fs::rename(dir.path().join("pool-aside"), dir.path().join("pool")).unwrap();
    std::fs::rename(dir.path().join("aside"), &volume_dir).unwrap();
    assert!(!get(&address, "/metrics").contains("_problem"));
    assert!(get(&address, "/other").starts_with("HTTP/1.1 404"));
}

/// An entry left in the trash that cannot be removed (a mount inside it)
/// stays counted as waiting, for the "trash not draining" alert, while the
/// others are removed and counted.
#[tokio::test]
async fn a_trash_entry_that_cannot_be_removed_stays_counted() {
    let scratch = common::Scratch::new();
    let pool = scratch.path().join("pool");
    std::fs::create_dir_all(pool.join(".trash/gone-1/a/b")).unwrap();
    scratch.mount_tmpfs(&pool.join(".trash/held-1/mnt"), "1m");
    let driver = common::TestDriver::start_in(scratch, |_| {}).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let page = loop {
        let page = hostpath_csi::metrics::node::render(driver.driver()).unwrap();
        if page.contains("hostpath_csi_pool_trash_removed_total{pool=\"default\"} 1\n") {
            break page;
        }
        assert!(Instant::now() < deadline, "gone-1 never removed:\n{page}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        page.contains("hostpath_csi_pool_trash_entries{pool=\"default\"} 1\n"),
        "{page}"
    );
    assert!(!pool.join(".trash/gone-1").exists());
    assert!(pool.join(".trash/held-1/mnt").exists());
}
