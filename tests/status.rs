//! `hostpath-csi status`, the real binary, reading pools a driver is
//! serving: pools with mode and room, volumes with kind, size, usage,
//! targets and condition, as JSON and as a table, changing nothing; and,
//! given no pool, those of the `hostpath-csi serve` running beside it.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{Scratch, TestDriver, create_request_with};
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_hostpath-csi");

/// Every path beneath `dir` with its type, size and mtime.
fn tree(dir: &Path) -> BTreeMap<String, (bool, u64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(at) = todo.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.path().symlink_metadata().unwrap();
            if meta.is_dir() {
                todo.push(entry.path());
            }
            seen.insert(
                entry.path().display().to_string(),
                (meta.is_dir(), meta.len(), meta.mtime_nsec()),
            );
        }
    }
    seen
}

/// What `command` printed, once it succeeded.
fn printed(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn status(args: &[&str]) -> String {
    printed(Command::new(BINARY).arg("status").args(args))
}

#[tokio::test]
async fn status_reads_a_served_pool_and_changes_nothing() {
    let scratch = Scratch::new();
    std::fs::create_dir_all(scratch.path().join("pool/meta")).unwrap();
    std::fs::write(scratch.path().join("pool/meta/broken.json"), b"{").unwrap();
    let mut driver = TestDriver::start_in(scratch, |_| {}).await;
    let plain = driver
        .create_from(create_request_with("plain", 1 << 20, &[]))
        .await;
    let image = driver
        .create_from(create_request_with("image", 16 << 20, &[("kind", "file")]))
        .await;
    let ram = driver
        .create_from(create_request_with("ram", 8 << 20, &[("kind", "memory")]))
        .await;
    let target = driver.target("pod-a");
    driver.publish(&ram, &target, false).await.unwrap();
    std::fs::write(Path::new(&target).join("data"), vec![7u8; 1 << 20]).unwrap();
    // A record being written by the server right now: not status's to touch.
    let pool = driver.pool();
    std::fs::write(pool.join("meta/.in-flight.json.tmp"), b"").unwrap();
    let before = tree(&pool);

    let spec = format!("default={}", pool.display());
    // A pool that cannot be read is a row with its problem; the others are
    // reported all the same.
    let missing = "gone=/nonexistent/hostpath-csi-pool";
    let report: Value =
        serde_json::from_str(&status(&["--pool", &spec, "--pool", missing, "-o", "json"])).unwrap();
    assert_eq!(tree(&pool), before, "status changed the pool");

    let pools = report["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 2, "{report:#}");
    assert_eq!(pools[1]["name"], "gone");
    assert_eq!(pools[1]["problems"][0]["reason"], "PoolCheckFailed");
    assert_eq!(pools[0]["name"], "default");
    assert_eq!(pools[0]["mode"], "tracked");
    assert_eq!(pools[0]["promised_bytes"], (1 << 20) + (16 << 20));
    assert_eq!(pools[0]["memory_promised_bytes"], 8 << 20);
    assert_eq!(pools[0]["volumes"], 4);
    assert!(pools[0]["free_bytes"].as_u64().unwrap() > 0);
    let volumes: BTreeMap<String, &Value> = report["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["id"].as_str().unwrap().to_owned(), v))
        .collect();
    assert_eq!(volumes.len(), 4, "{report:#}");
    let plain_row = volumes[&plain];
    assert_eq!(
        (
            plain_row["kind"].as_str(),
            plain_row["capacity_bytes"].as_u64()
        ),
        (Some("directory"), Some(1 << 20))
    );
    assert!(plain_row["used_bytes"].is_null(), "a walk is not O(1)");
    assert_eq!(plain_row["problems"], Value::Array(Vec::new()));
    assert_eq!(volumes[&image]["kind"], "file");
    assert!(volumes[&image]["used_bytes"].as_u64().unwrap() > 0);
    let ram_row = volumes[&ram];
    assert_eq!(ram_row["published"], serde_json::json!([target]));
    assert!(
        ram_row["used_bytes"].as_u64().unwrap() >= 1 << 20,
        "{ram_row}"
    );
    let broken = volumes["broken"];
    assert_eq!(broken["problems"][0]["reason"], "RecordUnreadable");

    // The table: one row per pool and per volume, conditions named.
    let shown = status(&["--pool", &spec]);
    assert!(shown.starts_with("POOL "), "{shown}");
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with(&ram) && l.contains(" memory ") && l.contains("8Mi")),
        "{shown}"
    );
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("broken ") && l.contains("RecordUnreadable")),
        "{shown}"
    );

    // A backing gone shows as the health RPCs show it.
    let aside = pool.join("aside");
    std::fs::rename(driver.volume_dir(&plain), &aside).unwrap();
    let report: Value = serde_json::from_str(&status(&["--pool", &spec, "-o", "json"])).unwrap();
    let plain_row = report["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == plain.as_str())
        .unwrap();
    assert_eq!(plain_row["problems"][0]["reason"], "BackingMissing");
    std::fs::rename(&aside, driver.volume_dir(&plain)).unwrap();
    driver.unpublish(&ram, &target).await.unwrap();
    driver.shutdown().await;
}

#[test]
fn given_no_pool_status_reads_those_of_the_driver_serving_beside_it() {
    let scratch = Scratch::new();
    // The pool's own 1 MiB filesystem, 30% used: over the server's
    // threshold (20%), under the default (90%).
    let disk = scratch.path().join("disk");
    scratch.mount_tmpfs(&disk, "1m");
    std::fs::write(disk.join("filler"), vec![7u8; 300 << 10]).unwrap();
    let pool = disk.join("pool");
    std::fs::create_dir(&pool).unwrap();
    let socket = scratch.path().join("csi.sock");
    // A PID namespace of its own, so that the one driver there is this one;
    // it is waited for at most 60 s, and not at all once it has exited.
    let script = r#"
        "$1" serve --endpoint="unix://$2" --node-id=n --pool="spare=$3" \
            --kubelet-dir="$4" --memory-budget=64Mi --pool-nearly-full-percent=20 2>/dev/null &
        tries=0
        while [ ! -S "$2" ]; do
            kill -0 $! 2>/dev/null || { echo "the driver exited" >&2; exit 1; }
            tries=$((tries + 1))
            [ $tries -lt 1200 ] || { echo "the driver did not serve in 60 s" >&2; exit 1; }
            sleep 0.05
        done
        "$1" status --output=json
        code=$?
        kill $!
        wait
        exit $code
    "#;
    let out = printed(
        Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "sh", "-c", script, "sh"])
            .args([Path::new(BINARY), &socket, &pool, scratch.path()])
            .env_remove("HOSTPATH_CSI_POOLS"),
    );
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["pools"][0]["name"], "spare", "{report:#}");
    // The server's threshold, not the default.
    assert_eq!(
        report["pools"][0]["problems"][0]["reason"], "PoolNearlyFull",
        "{report:#}"
    );
    assert_eq!(
        report["pools"][0]["path"],
        pool.canonicalize().unwrap().display().to_string()
    );
}
