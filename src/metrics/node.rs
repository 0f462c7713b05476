//! The node plugin's metrics page: calls served, each pool's room, promises
//! and trash, volumes and snapshots by kind, health problems, unreadable
//! records, and (opt-in) each volume's capacity and usage.
//!
//! A scrape builds a fresh registry from the driver's state; only the call
//! counts and latencies live between scrapes (in [`super::rpc`]).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::health::{self, Reason};
use crate::kind::Backing;

/// Most volumes with series of their own when `--volume-metrics` is on (the
/// first by id); `hostpath_csi_volume_series_omitted` counts the rest.
pub const MAX_VOLUME_SERIES: usize = 1000;

type Labels = Vec<(&'static str, String)>;

/// The page of one scrape, in the Prometheus text format.
pub fn render(driver: &Driver) -> Result<String> {
    let mut page = Page::default();
    driver.rpcs.register(&mut page.registry);
    page.gauge(
        "hostpath_csi_build_info",
        "1, labelled with the driver's version and node",
        [(
            labels([
                ("version", env!("CARGO_PKG_VERSION")),
                ("node", &driver.config.node_id),
            ]),
            1,
        )],
    );
    pools(driver, &mut page);
    volumes(driver, &mut page);
    snapshots(driver, &mut page);
    page.gauge(
        "hostpath_csi_memory_budget_bytes",
        "RAM that memory volumes may take in all",
        [(Labels::new(), driver.config.memory_budget)],
    );
    page.gauge(
        "hostpath_csi_memory_promised_bytes",
        "RAM promised to memory volumes",
        [(Labels::new(), driver.table().promised(&Backing::Memory))],
    );
    let mut text = String::new();
    prometheus_text::encode(&mut text, &page.registry)
        .map_err(|e| Error::failed("encode the metrics page", e))?;
    Ok(text)
}

/// Each pool's filesystem, promises, enforcement, trash and problems. A
/// pool whose filesystem cannot be read has no room series; its problem
/// (`PoolCheckFailed`) says why, and the other pools are reported as usual.
fn pools(driver: &Driver, page: &mut Page) {
    let mut room = [const { Vec::new() }; 5];
    let (mut enforcement, mut trash, mut removed) = (Vec::new(), Vec::new(), Vec::new());
    for pool in driver.pools() {
        let name = || labels([("pool", pool.name.as_str())]);
        let disk = Backing::Disk(pool.name.clone());
        let measured = pool.space().and_then(|space| {
            let used_by_volumes = driver.ledger.used_by_volumes(pool, driver.volumes())?;
            Ok([
                space.size_bytes,
                space.free_bytes,
                space.used_bytes,
                driver.table().promised(&disk),
                used_by_volumes,
            ])
        });
        match measured {
            Ok(figures) => {
                for (series, value) in room.iter_mut().zip(figures) {
                    series.push((name(), value));
                }
            }
            Err(err) => tracing::debug!(pool = %pool.name, %err, "metrics: no room series"),
        }
        enforcement.push((
            labels([
                ("pool", pool.name.as_str()),
                ("mode", pool.enforcement.mode()),
            ]),
            u64::from(pool.enforcement.available()),
        ));
        let drained = pool.trash_counts();
        trash.push((name(), drained.waiting));
        removed.push((name(), drained.removed));
    }
    let [size, free, used, promised, volumes_used] = room;
    page.gauge(
        "hostpath_csi_pool_size_bytes",
        "Size of the pool's filesystem",
        size,
    );
    page.gauge(
        "hostpath_csi_pool_free_bytes",
        "Bytes of the pool's filesystem an unprivileged writer could still use",
        free,
    );
    page.gauge(
        "hostpath_csi_pool_used_bytes",
        "Bytes of the pool's filesystem in use, by anything on it",
        used,
    );
    page.gauge(
        "hostpath_csi_pool_promised_bytes",
        "Capacity promised to the disk volumes of the pool",
        promised,
    );
    page.gauge(
        "hostpath_csi_pool_volumes_used_bytes",
        "Bytes the pool's disk volumes use of their capacity, where that is O(1) to read (images, quotas); the others count 0",
        volumes_used,
    );
    page.gauge(
        "hostpath_csi_pool_enforcement",
        "Whether the pool holds directory volumes to their capacity (1) or only tracks it (0), and how",
        enforcement,
    );
    page.gauge(
        "hostpath_csi_pool_trash_entries",
        "Deleted volumes and snapshots of the pool still waiting to be removed",
        trash,
    );
    page.counter(
        "hostpath_csi_pool_trash_removed",
        "Deleted volumes and snapshots removed from the pool's trash since the driver started",
        removed,
    );
    page.gauge(
        "hostpath_csi_pool_problem",
        "1 for each health problem a pool has now, by pool and reason (as NodeGetStorageHealth reports them)",
        driver.storage_findings().into_iter().map(|f| {
            (
                labels([("pool", f.pool.as_str()), ("reason", f.reason.as_str())]),
                1,
            )
        }),
    );
}

/// Volume counts, health problems, unreadable records and, when asked,
/// each volume's capacity and usage.
fn volumes(driver: &Driver, page: &mut Page) {
    // Each volume's backing is looked at outside the table's lock.
    let served: Vec<_> = driver.table().iter().cloned().collect();
    let mut counts: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut problems: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
    for volume in &served {
        let record = &volume.record;
        *counts
            .entry((record.pool.as_str(), record.kind.as_str()))
            .or_default() += 1;
        let findings = health::of_volume(driver, volume);
        driver.observe(&record.id, &findings);
        for finding in findings {
            *problems
                .entry((
                    record.pool.as_str(),
                    record.kind.as_str(),
                    finding.reason.as_str(),
                ))
                .or_default() += 1;
        }
    }
    page.gauge(
        "hostpath_csi_volumes",
        "Volumes on this node, by pool and kind",
        counts
            .into_iter()
            .map(|((pool, kind), n)| (labels([("pool", pool), ("kind", kind)]), n)),
    );
    page.gauge(
        "hostpath_csi_volume_problems",
        "Volumes with a health problem now, by pool, kind and reason (as NodeGetVolumeHealth reports them)",
        problems.into_iter().map(|((pool, kind, reason), n)| {
            (
                labels([("pool", pool), ("kind", kind), ("reason", reason)]),
                n,
            )
        }),
    );
    page.gauge(
        "hostpath_csi_records_unreadable",
        &format!(
            "Volume records that could not be read at start, by pool (each volume's health says {})",
            Reason::RecordUnreadable.as_str()
        ),
        driver
            .unreadable_per_pool()
            .iter()
            .map(|(pool, n)| (labels([("pool", pool.as_str())]), *n)),
    );
    if driver.config.volume_metrics {
        each_volume(driver, &served, page);
    }
}

/// Capacity and O(1) usage of the first [`MAX_VOLUME_SERIES`] volumes.
fn each_volume(driver: &Driver, served: &[crate::volumes::Volume], page: &mut Page) {
    let (mut capacity, mut used) = (Vec::new(), Vec::new());
    for volume in served.iter().take(MAX_VOLUME_SERIES) {
        let record = &volume.record;
        let series = labels([
            ("pool", record.pool.as_str()),
            ("kind", record.kind.as_str()),
            ("volume", &record.id.to_string()),
            ("name", &record.name),
        ]);
        let cheap = driver
            .pool(Some(&record.pool))
            .and_then(|pool| record.kind.backend().used_cheaply(pool, record));
        match cheap {
            Ok(Some(bytes)) => used.push((series.clone(), bytes)),
            Ok(None) => {}
            Err(err) => tracing::debug!(volume = %record.id, %err, "usage unknown; no series"),
        }
        capacity.push((series, record.capacity_bytes));
    }
    page.gauge(
        "hostpath_csi_volume_capacity_bytes",
        "Capacity of each volume (0: none was asked)",
        capacity,
    );
    page.gauge(
        "hostpath_csi_volume_used_bytes",
        "Bytes each volume uses, for volumes where that is O(1) to read (images, quotas, tmpfs); others have no series",
        used,
    );
    page.gauge(
        "hostpath_csi_volume_series_omitted",
        &format!("Volumes beyond the first {MAX_VOLUME_SERIES} that have no series of their own"),
        [(
            Labels::new(),
            served.len().saturating_sub(MAX_VOLUME_SERIES) as u64,
        )],
    );
}

/// Snapshots by pool and method, and those whose copy has not ended.
fn snapshots(driver: &Driver, page: &mut Page) {
    let (mut made, mut not_ready) = (Vec::new(), Vec::new());
    for pool in driver.pools() {
        let (by_method, pending) = driver.snapshots().counts(&pool.name);
        made.extend(by_method.into_iter().map(|(method, n)| {
            (
                labels([("pool", pool.name.as_str()), ("method", method.as_str())]),
                n,
            )
        }));
        not_ready.push((labels([("pool", pool.name.as_str())]), pending));
    }
    page.gauge(
        "hostpath_csi_snapshots",
        "Snapshots on this node, by pool and how they were made (btrfs-snapshot, reflink, reflink-tree, copy)",
        made,
    );
    page.gauge(
        "hostpath_csi_snapshots_not_ready",
        "Snapshots of the pool whose copy has not ended (running, waiting for a copier, or failed)",
        not_ready,
    );
}

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.into_iter().map(|(k, v)| (k, v.to_owned())).collect()
}

/// A registry filled with values read now.
#[derive(Default)]
struct Page {
    registry: Registry,
}

impl Page {
    fn gauge(&mut self, name: &str, help: &str, samples: impl IntoIterator<Item = (Labels, u64)>) {
        let family = Family::<Labels, Gauge<u64, AtomicU64>>::default();
        for (labels, value) in samples {
            family.get_or_create(&labels).set(value);
        }
        self.registry.register(name, help, family);
    }

    /// `name` without `_total`, which the encoder appends.
    fn counter(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, u64)>,
    ) {
        let family = Family::<Labels, Counter>::default();
        for (labels, value) in samples {
            family.get_or_create(&labels).inc_by(value);
        }
        self.registry.register(name, help, family);
    }
}
