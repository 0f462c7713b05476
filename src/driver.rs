//! The registry one node driver shares between its services: its settings,
//! pools, volume table, capacity ledger, operation guards and mounter.
//! Opening and stopping it is `startup`'s job.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::capacity::Ledger;
use crate::csi::Topology;
use crate::error::{Error, Result};
use crate::guard::OperationGuards;
use crate::health::{self, Finding, PoolFinding, PoolReason};
use crate::ids::{PoolName, VolumeId};
use crate::metrics::rpc::RpcMetrics;
use crate::mounter::Mounter;
use crate::pool::Pool;
use crate::snapshots::SnapshotTable;
use crate::volumes::{Volume, VolumeTable};

/// Most entries one ListVolumes page holds, whatever `max_entries` asks (0
/// included): the rest follow through `next_token`, so no answer outgrows
/// a client's receive limit (grpc-go's is 4 MiB) or holds the table long.
pub const LIST_PAGE_MAX: usize = 1000;

/// A volume as ListVolumes shows it.
#[derive(Debug)]
pub enum Listed {
    Served(Volume),
    /// Its record could not be read at start: the id and the problem.
    Unreadable(VolumeId, String),
}

impl Listed {
    pub fn id(&self) -> &VolumeId {
        match self {
            Listed::Served(volume) => &volume.record.id,
            Listed::Unreadable(id, _) => id,
        }
    }
}

/// Settings of one driver process (see `hostpath-csi serve --help`).
#[derive(Clone, Debug)]
pub struct DriverConfig {
    pub driver_name: String,
    pub node_id: String,
    /// Pools in the order given; the first is the default.
    pub pools: Vec<(PoolName, PathBuf)>,
    /// Most volumes this node holds (0 = no limit).
    pub max_volumes: u64,
    /// Turn btrfs quotas on in pools where they are off.
    pub enable_quotas: bool,
    /// Bytes of RAM that memory volumes may take in all.
    pub memory_budget: u64,
    /// Host directories beneath which static hostPath volumes may be published.
    pub allowed_host_paths: Vec<PathBuf>,
    /// The kubelet's directory: every target and volume path lies beneath it.
    pub kubelet_dir: PathBuf,
    /// Percent of a pool's filesystem in use at which its health says
    /// nearly full (0: never).
    pub nearly_full_percent: u8,
    /// Serve each volume's capacity and usage as metrics of its own.
    pub volume_metrics: bool,
}

/// Volume records that could not be read at start: those volumes are
/// neither served nor overwritten until an operator repairs them.
#[derive(Debug, Default)]
pub struct Unreadable {
    /// The volumes a record file's name gives, with the problem.
    pub by_id: BTreeMap<VolumeId, String>,
    /// How many record files of each pool could not be read, named or not.
    pub per_pool: BTreeMap<PoolName, u64>,
}

/// The shared core behind the three CSI services.
#[derive(Debug)]
pub struct Driver {
    pub config: DriverConfig,
    pools: Vec<Pool>,
    volumes: Mutex<VolumeTable>,
    snapshots: Mutex<SnapshotTable>,
    /// Records that could not be read at start.
    unreadable: Unreadable,
    pub guards: OperationGuards,
    pub ledger: Ledger,
    /// Counts and latencies of the calls served, for the metrics page.
    pub rpcs: RpcMetrics,
    mounter: Arc<dyn Mounter>,
    /// The pool problems found at the last look, to log each as it appears
    /// and clears.
    pool_problems: Mutex<BTreeSet<(PoolName, PoolReason)>>,
}

impl Driver {
    /// A driver over pools already opened and a table already loaded.
    pub fn new(
        config: DriverConfig,
        pools: Vec<Pool>,
        table: VolumeTable,
        snapshots: SnapshotTable,
        unreadable: Unreadable,
        mounter: Arc<dyn Mounter>,
    ) -> Driver {
        let ledger = Ledger::new(
            config.node_id.clone(),
            config.memory_budget,
            config.max_volumes,
        );
        Driver {
            config,
            pools,
            volumes: Mutex::new(table),
            snapshots: Mutex::new(snapshots),
            unreadable,
            guards: OperationGuards::default(),
            ledger,
            rpcs: RpcMetrics::default(),
            mounter,
            pool_problems: Mutex::default(),
        }
    }

    /// What mounts and unmounts targets and reads their state.
    pub fn mounter(&self) -> &dyn Mounter {
        self.mounter.as_ref()
    }

    /// The volume table behind its lock, for the ledger to read.
    pub fn volumes(&self) -> &Mutex<VolumeTable> {
        &self.volumes
    }

    /// Up to `max` volumes (at most [`LIST_PAGE_MAX`], also when `max` is 0) in id order from `start` on — those
    /// served and those whose record could not be read — and the id the next
    /// page starts at.
    pub fn listing(&self, start: Option<&VolumeId>, max: usize) -> (Vec<Listed>, Option<VolumeId>) {
        let take = if max == 0 {
            LIST_PAGE_MAX
        } else {
            max.min(LIST_PAGE_MAX)
        };
        let (served, next) = self.table().page(start, take);
        let unreadable = self
            .unreadable
            .by_id
            .iter()
            .filter(|(id, _)| {
                start.is_none_or(|s| *id >= s) && next.as_ref().is_none_or(|n| *id < n)
            })
            .map(|(id, problem)| Listed::Unreadable(id.clone(), problem.clone()));
        let mut page: Vec<Listed> = served
            .into_iter()
            .map(Listed::Served)
            .chain(unreadable)
            .collect();
        page.sort_by(|a, b| a.id().cmp(b.id()));
        if page.len() > take {
            let next = page[take].id().clone();
            page.truncate(take);
            return (page, Some(next));
        }
        (page, next)
    }

    /// How many record files of each pool could not be read at start.
    pub fn unreadable_per_pool(&self) -> &BTreeMap<PoolName, u64> {
        &self.unreadable.per_pool
    }

    /// The problem with a volume whose record could not be read at start.
    pub fn unreadable(&self, id: &VolumeId) -> Option<&str> {
        self.unreadable.by_id.get(id).map(String::as_str)
    }

    /// Locks the volume table (briefly: never held across I/O).
    pub fn table(&self) -> MutexGuard<'_, VolumeTable> {
        self.volumes.lock().expect("volume table poisoned")
    }

    /// Locks the snapshot table (briefly: never held across I/O).
    pub fn snapshots(&self) -> MutexGuard<'_, SnapshotTable> {
        self.snapshots.lock().expect("snapshot table poisoned")
    }

    /// A copy of the volume's entry, or NOT_FOUND naming it and this node.
    pub fn volume(&self, id: &VolumeId) -> Result<Volume> {
        self.table().get(id).cloned().ok_or_else(|| {
            Error::Unknown(format!(
                "volume {id} does not exist on node {}",
                self.config.node_id
            ))
        })
    }

    /// Notes a volume's findings: logs those new since its last check and
    /// the reasons that cleared.
    pub fn observe(&self, id: &VolumeId, findings: &[Finding]) {
        if let Some(volume) = self.table().get_mut(id) {
            volume.problems = health::log_changes(id, &volume.problems, findings);
        }
    }

    /// What is wrong with each pool now, logged as problems appear and clear.
    pub fn storage_findings(&self) -> Vec<PoolFinding> {
        let findings: Vec<PoolFinding> = self
            .pools
            .iter()
            .flat_map(|pool| health::of_pool(pool, self.config.nearly_full_percent))
            .collect();
        let now: BTreeSet<_> = findings
            .iter()
            .map(|f| (f.pool.clone(), f.reason))
            .collect();
        let mut before = self
            .pool_problems
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for finding in findings
            .iter()
            .filter(|f| !before.contains(&(f.pool.clone(), f.reason)))
        {
            tracing::warn!(pool = %finding.pool, reason = finding.reason.as_str(), "{}", finding.message);
        }
        for (pool, reason) in before.difference(&now) {
            tracing::info!(%pool, reason = reason.as_str(), "pool health problem cleared");
        }
        *before = now;
        findings
    }

    /// Records what happened to a volume for its health to report.
    pub fn note(&self, id: &VolumeId, notice: String) {
        tracing::warn!(volume = %id, "{notice}");
        if let Some(volume) = self.table().get_mut(id) {
            volume.notice = Some(notice);
        }
    }

    /// FAILED_PRECONDITION when the volume's record could not be read at
    /// start: creating or deleting it could lose what the record describes.
    pub fn check_readable(&self, id: &VolumeId) -> Result<()> {
        match self.unreadable.by_id.get(id) {
            None => Ok(()),
            Some(problem) => Err(Error::WrongState(format!(
                "volume {id} has an unreadable record ({problem}); an operator must repair or remove it"
            ))),
        }
    }

    /// The named pool, or the default (first) one for `None`.
    pub fn pool(&self, name: Option<&PoolName>) -> Result<&Pool> {
        match name {
            None => Ok(&self.pools[0]),
            Some(name) => self.pools.iter().find(|p| &p.name == name).ok_or_else(|| {
                let known: Vec<_> = self.pools.iter().map(|p| p.name.as_str()).collect();
                Error::Invalid(format!(
                    "parameter pool={name} names no pool on node {}: pools are {}",
                    self.config.node_id,
                    known.join(", ")
                ))
            }),
        }
    }

    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// The topology key of this driver: `topology.<driver-name>/node`.
    pub fn topology_key(&self) -> String {
        format!("topology.{}/node", self.config.driver_name)
    }

    /// This node's topology segment.
    pub fn topology(&self) -> Topology {
        Topology {
            segments: [(self.topology_key(), self.config.node_id.clone())].into(),
        }
    }

    /// Whether `topology` names exactly this node.
    pub fn is_this_node(&self, topology: &Topology) -> bool {
        topology.segments.len() == 1
            && topology.segments.get(&self.topology_key()) == Some(&self.config.node_id)
    }
}
