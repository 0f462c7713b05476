//! The state one driver process owns: its configuration, pools, volume table
//! and operation guards, opened and reconciled at start.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::beneath;
use crate::csi::Topology;
use crate::error::{Error, Result, SysContext};
use crate::guard::OperationGuards;
use crate::ids::{PoolName, VolumeId};
use crate::kind::{Backing, KindName};
use crate::mounts;
use crate::pool::Pool;
use crate::record;
use crate::snapshot;
use crate::validate;
use crate::volumes::{Volume, VolumeTable};
use nix::errno::Errno;

/// How long CreateVolume and expansion reuse a pool's measured usage.
pub const USAGE_REFRESH: Duration = Duration::from_secs(10);

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
}

/// The shared core behind the three CSI services.
#[derive(Debug)]
pub struct Driver {
    pub config: DriverConfig,
    pools: Vec<Pool>,
    volumes: Mutex<VolumeTable>,
    /// Per pool: the bytes its volumes use of their promises, and when that
    /// was measured.
    used_cache: Mutex<HashMap<PoolName, (u64, Instant)>>,
    /// Volumes whose record could not be read at start, with the problem:
    /// they are neither served nor overwritten until an operator repairs them.
    unreadable: BTreeMap<VolumeId, String>,
    pub guards: OperationGuards,
}

impl Driver {
    /// Opens every pool, loads their records and finds which volumes are
    /// still mounted (published mounts survive a restart untouched).
    pub fn open(config: DriverConfig) -> Result<Driver> {
        check_kernel()?;
        if config.pools.is_empty() {
            return Err(Error::InvalidArgument(
                "at least one --pool NAME=PATH is required".into(),
            ));
        }
        let mut pools: Vec<Pool> = Vec::new();
        for (name, path) in &config.pools {
            if pools.iter().any(|p| &p.name == name) {
                return Err(Error::InvalidArgument(format!(
                    "pool {name} is given twice"
                )));
            }
            pools.push(Pool::open(name.clone(), path, config.enable_quotas)?);
        }
        let mut table = VolumeTable::default();
        let mut unreadable = BTreeMap::new();
        // Per pool, the ids its meta/ holds a record file of, readable or not.
        let mut recorded: Vec<HashSet<String>> = Vec::new();
        for pool in &pools {
            let shown = pool.shown().to_string();
            let listed = record::list(&pool.meta, &shown)?;
            recorded.push(
                listed
                    .iter()
                    .filter_map(|l| l.shown.strip_suffix(".json").map(str::to_owned))
                    .collect(),
            );
            let (loaded, source) = match snapshot::take(&pool.root, &pool.meta, &shown, &listed) {
                Some(records) => (
                    record::Loaded {
                        records,
                        unreadable: Vec::new(),
                    },
                    "snapshot",
                ),
                None => (record::load(&pool.meta, &shown, &listed), "records"),
            };
            for bad in loaded.unreadable {
                tracing::error!(pool = %pool.name, problem = %bad.problem, "unreadable volume record left in place");
                if let Some(id) = bad.id {
                    unreadable.insert(id, bad.problem);
                }
            }
            let count = loaded.records.len();
            for mut rec in loaded.records {
                if rec.pool != pool.name {
                    tracing::error!(volume = %rec.id, pool = %pool.name, "record names pool {}; skipped", rec.pool);
                    continue;
                }
                rec.pool = pool.name.clone(); // one copy of the name for all
                table.insert(rec);
            }
            tracing::info!(pool = %pool.name, path = %pool.shown(), volumes = count, from = source, "pool open");
        }
        let driver = Driver {
            config,
            pools,
            volumes: Mutex::new(table),
            used_cache: Mutex::new(HashMap::new()),
            unreadable,
            guards: OperationGuards::default(),
        };
        driver.find_published()?;
        driver.quarantine_orphans(&recorded)?;
        Ok(driver)
    }

    /// Sets aside every entry of a pool's `volumes/` that belongs to no
    /// record (left by an operator, another tool, or a crash on a filesystem
    /// that reordered writes): reported, never served, never deleted. One
    /// that cannot be moved (a mount point) is reported and left.
    /// `recorded` holds, per pool, the ids of the record files in its
    /// `meta/`: whatever a record says, its volume's entries are not orphans.
    fn quarantine_orphans(&self, recorded: &[HashSet<String>]) -> Result<()> {
        for (pool, recorded) in self.pools.iter().zip(recorded) {
            let listed = beneath::list(&pool.volumes)
                .context(|| format!("pool {}: list {}/volumes", pool.name, pool.shown()))?;
            for entry in listed {
                let name = entry.name.to_string_lossy().into_owned();
                let owner = name.trim_start_matches('.');
                let owner = owner.split('.').next().unwrap_or_default();
                if recorded.contains(owner) {
                    continue;
                }
                match pool.quarantine(&name) {
                    Ok(kept) => {
                        tracing::error!(pool = %pool.name, quarantined = %kept.display(), "{}/volumes/{name} belongs to no volume record: set aside", pool.shown())
                    }
                    Err(err) => {
                        tracing::error!(pool = %pool.name, "{}/volumes/{name} belongs to no volume record and stays: {err}", pool.shown())
                    }
                }
            }
        }
        Ok(())
    }

    /// Marks as published every volume that the mount table shows in use
    /// (see [`VolumeKind::users`](crate::kind::VolumeKind::users)), so
    /// mounts made before a restart are known and left alone.
    fn find_published(&self) -> Result<()> {
        let index = mounts::MountIndex::read()?;
        let mut table = self.table();
        for volume in table.iter_mut() {
            let record = &volume.record;
            let pool = self.pool(Some(&record.pool))?;
            for entry in record.kind.backend().users(pool, &record.id, &index)? {
                tracing::info!(volume = %record.id, target = %entry.mount_point.display(), "found published");
                volume.published.insert(entry.mount_point);
            }
        }
        Ok(())
    }

    /// Ends the driver's work: refuses new operations, waits up to `patience`
    /// for those in flight, then writes each pool's snapshot so that the next
    /// start is quick. With an operation still running, no snapshot is
    /// written (the next start reads every record).
    pub fn stop(&self, patience: Duration) {
        if !self.guards.close(patience) {
            tracing::warn!("operations still running after {patience:?}: no snapshot written");
            return;
        }
        for pool in &self.pools {
            let records: Vec<_> = self.table().records_in(&pool.name).collect();
            let count = records.len();
            let shown = pool.shown().to_string();
            match snapshot::write(&pool.root, &pool.meta, &shown, records) {
                Ok(true) => tracing::info!(pool = %pool.name, volumes = count, "snapshot written"),
                Ok(false) => {}
                Err(err) => tracing::error!(pool = %pool.name, "no snapshot written: {err}"),
            }
        }
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

    /// The problem with a volume whose record could not be read at start.
    pub fn unreadable(&self, id: &VolumeId) -> Option<&str> {
        self.unreadable.get(id).map(String::as_str)
    }

    /// Locks the volume table (briefly: never held across I/O).
    pub fn table(&self) -> MutexGuard<'_, VolumeTable> {
        self.volumes.lock().expect("volume table poisoned")
    }

    /// A copy of the volume's entry, or NOT_FOUND naming it and this node.
    pub fn volume(&self, id: &VolumeId) -> Result<Volume> {
        self.table().get(id).cloned().ok_or_else(|| {
            Error::NotFound(format!(
                "volume {id} does not exist on node {}",
                self.config.node_id
            ))
        })
    }

    /// Checks that a target or volume path from a request lies beneath the
    /// kubelet's directory, the only place kubelet asks for mounts, and that
    /// its parent is reached from there without a symlink (one planted to
    /// lead elsewhere on the host is refused). A missing parent is left for
    /// the operation to report.
    pub fn target_path(&self, field: &str, raw: &str) -> Result<PathBuf> {
        let path = validate::host_path(field, raw)?;
        let dir = &self.config.kubelet_dir;
        if path == *dir || !path.starts_with(dir) {
            return Err(Error::InvalidArgument(format!(
                "{field} {raw:?} is not beneath the kubelet directory {} (--kubelet-dir)",
                dir.display()
            )));
        }
        let parent = path.parent().unwrap_or(dir);
        match beneath::open_without_symlinks(dir, parent) {
            Ok(_) | Err(Errno::ENOENT) => Ok(path),
            Err(Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV) => {
                Err(Error::InvalidArgument(format!(
                    "{field} {raw:?} is reached through a symlink or a non-directory beneath {}",
                    dir.display()
                )))
            }
            Err(errno) => {
                Err(errno).context(|| format!("{field} {raw:?}: open {}", parent.display()))
            }
        }
    }

    /// Records what happened to a volume for its condition to report.
    pub fn note(&self, id: &VolumeId, notice: String) {
        tracing::warn!(volume = %id, "{notice}");
        if let Some(volume) = self.table().get_mut(id) {
            volume.notice = Some(notice);
        }
    }

    /// FAILED_PRECONDITION when the volume's record could not be read at
    /// start: creating or deleting it could lose what the record describes.
    pub fn check_readable(&self, id: &VolumeId) -> Result<()> {
        match self.unreadable.get(id) {
            None => Ok(()),
            Some(problem) => Err(Error::FailedPrecondition(format!(
                "volume {id} has an unreadable record ({problem}); an operator must repair or remove it"
            ))),
        }
    }

    /// Bytes `backing` offers before promises: the memory budget, or the
    /// pool's free space plus what its volumes already use of their promises
    /// (those bytes are promised and gone from the free space both). The
    /// usage is measured again when `fresh`, else at most every
    /// [`USAGE_REFRESH`].
    pub fn offered(&self, backing: &Backing, pool: &Pool, fresh: bool) -> Result<u64> {
        match backing {
            Backing::Disk(_) => Ok(pool.space()?.free_bytes + self.used_of_promises(pool, fresh)?),
            Backing::Memory => Ok(self.config.memory_budget),
        }
    }

    /// What a new volume of `kind` in `pool` can get now: what the backing
    /// offers minus what its volumes were promised (measured fresh: this is
    /// what GetCapacity reports).
    pub fn available(&self, pool: &Pool, kind: KindName) -> Result<u64> {
        let backing = kind.backing(&pool.name);
        let total = self.offered(&backing, pool, true)?;
        Ok(total.saturating_sub(self.table().promised(&backing)))
    }

    /// Bytes the pool's disk volumes use, each up to its capacity, counting
    /// only volumes whose usage is O(1) to read (image files, qgroups); the
    /// others count as unused, which errs on the safe side.
    fn used_of_promises(&self, pool: &Pool, fresh: bool) -> Result<u64> {
        let cached = self
            .used_cache
            .lock()
            .expect("usage estimate poisoned")
            .get(&pool.name)
            .copied();
        if let Some((used, at)) = cached
            && !fresh
            && at.elapsed() < USAGE_REFRESH
        {
            return Ok(used);
        }
        let disk = Backing::Disk(pool.name.clone());
        let records: Vec<_> = self
            .table()
            .records_in(&pool.name)
            .filter(|r| r.kind.backing(&pool.name) == disk)
            .collect();
        let mut used = 0;
        for record in records {
            // A volume whose usage cannot be read counts as unused: safe.
            match record.kind.backend().used_cheaply(pool, &record) {
                Ok(Some(bytes)) => used += bytes.min(record.capacity_bytes),
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(volume = %record.id, %err, "usage unknown; counted as unused")
                }
            }
        }
        self.used_cache
            .lock()
            .expect("usage estimate poisoned")
            .insert(pool.name.clone(), (used, Instant::now()));
        Ok(used)
    }

    /// The named pool, or the default (first) one for `None`.
    pub fn pool(&self, name: Option<&PoolName>) -> Result<&Pool> {
        match name {
            None => Ok(&self.pools[0]),
            Some(name) => self.pools.iter().find(|p| &p.name == name).ok_or_else(|| {
                let known: Vec<_> = self.pools.iter().map(|p| p.name.as_str()).collect();
                Error::InvalidArgument(format!(
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

/// Refuses to run on a kernel that cannot say whether a path is a mount
/// root (STATX_ATTR_MOUNT_ROOT, Linux 5.8) or lacks the new mount API's
/// mount_setattr (Linux 5.12): publish and unpublish rely on both.
fn check_kernel() -> Result<()> {
    let root = mounts::path_state(std::path::Path::new("/"))
        .map_err(|errno| Error::sys("statx /", errno))?;
    if !root.is_some_and(|r| r.mount_root) {
        return Err(Error::FailedPrecondition(
            "this kernel does not report mount roots through statx (STATX_ATTR_MOUNT_ROOT, Linux 5.8 or later is needed)".into(),
        ));
    }
    if !mounts::mount_api_available() {
        return Err(Error::FailedPrecondition(
            "this kernel lacks mount_setattr (Linux 5.12 or later is needed: volumes are published with open_tree, mount_setattr and move_mount)".into(),
        ));
    }
    Ok(())
}

/// Most entries one ListVolumes page holds, whatever `max_entries` asks (0
/// included): the rest follow through `next_token`, so no answer outgrows
/// a client's receive limit (grpc-go's is 4 MiB) or holds the table long.
pub const LIST_PAGE_MAX: usize = 1000;

/// Most driver work (syscalls, fsync, tools) running at once. A burst of
/// calls waits its turn here, each a small future, instead of growing the
/// runtime's pool of blocking threads to hundreds, each with its stack and
/// malloc arena.
pub const MAX_BLOCKING_WORK: usize = 16;

/// Runs blocking driver work (syscalls, fsync) off the async workers, at
/// most [`MAX_BLOCKING_WORK`] at a time.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_BLOCKING_WORK);
    let slot = SLOTS
        .acquire()
        .await
        .map_err(|e| Error::Internal(format!("driver work queue closed: {e}")))?;
    // The work holds its slot to its end, even when its caller goes away.
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        work()
    })
    .await
    .map_err(|e| Error::Internal(format!("driver task failed: {e}")))?
}
