//! Taking and removing snapshots, and opening one for a restore: the work
//! behind CreateSnapshot, DeleteSnapshot and a CreateVolume from a snapshot.
//!
//! A snapshot's record is written (not ready) before its data is made, and
//! marked ready only once the data is complete and durable; a start that
//! finds one not ready makes its data again from the start (see
//! [`start_when_free`]). O(1) methods run in the call; copies run in the
//! background, at most [`COPIERS`] at once, and CreateSnapshot answers
//! `ready_to_use: false` until theirs ends.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{OFlag, renameat};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{fsync, syncfs};

use super::{Method, Running, SnapshotRecord};
use crate::beneath::{self, Mounts, SyncDir};
use crate::btrfs;
use crate::copy;
use crate::driver::Driver;
use crate::error::{Error, Result, SysContext};
use crate::failpoint;
use crate::ids::{SnapshotId, VolumeId};
use crate::kind::{KindName, Seed};
use crate::pool::Pool;
use crate::record;

/// Most copies running at once; further snapshots wait for one to end.
pub const COPIERS: usize = 2;
/// How long CreateSnapshot waits for a copy before answering not ready (a
/// small volume's copy is done by then).
const READY_WAIT: Duration = Duration::from_secs(2);

/// A checked CreateSnapshot request.
pub struct NewSnapshot {
    pub id: SnapshotId,
    pub name: String,
    pub source: VolumeId,
}

/// Takes the snapshot, or answers with the one taken before under the same
/// name (ALREADY_EXISTS if that was of another volume).
pub fn create(driver: &Arc<Driver>, request: NewSnapshot) -> Result<SnapshotRecord> {
    let existing = driver.snapshots().get(&request.id).cloned();
    if let Some(existing) = existing {
        if existing.name != request.name || existing.source != request.source {
            return Err(Error::Conflict(format!(
                "snapshot {} already exists as {} of volume {}, not of volume {}",
                request.name, existing.id, existing.source, request.source
            )));
        }
        if existing.ready {
            return Ok(existing);
        }
        // A copy that failed is tried again.
        driver.snapshots().retry(&existing.id);
        start_when_free(driver);
        return wait_ready(driver, &existing.id);
    }
    driver.check_readable(&request.source)?;
    let volume = driver.volume(&request.source)?.record;
    if volume.filling {
        return Err(Error::Busy(format!(
            "snapshot {}: volume {} is still being filled from its source",
            request.name, volume.id
        )));
    }
    let pool = driver.pool(Some(&volume.pool))?;
    let seed = volume.kind.backend().seed(pool, &volume)?;
    let method = match (&seed, pool.reflinks) {
        (
            Seed::Tree {
                subvolume: true, ..
            },
            _,
        ) => Method::BtrfsSnapshot,
        (Seed::Image(_), true) => Method::Reflink,
        (Seed::Tree { .. }, true) => Method::ReflinkTree,
        (_, false) => Method::Copy,
    };
    // Measured only where it matters (a walk of the tree is O(files)): the
    // room a copy needs, and the size of a volume that has no capacity.
    let used = if method.shares_bytes() && volume.capacity_bytes > 0 {
        0
    } else {
        seed.used_bytes()?
    };
    if !method.shares_bytes() {
        let available = driver
            .ledger
            .available(pool, KindName::Directory, driver.volumes())?;
        if used > available {
            return Err(Error::NoneLeft(format!(
                "snapshot {}: a copy of volume {} needs {used} bytes, but pool {} ({}) can give {available} bytes",
                request.name,
                volume.id,
                pool.name,
                pool.shown()
            )));
        }
    }
    let record = SnapshotRecord {
        id: request.id.clone(),
        name: request.name,
        source: volume.id.clone(),
        pool: pool.name.clone(),
        kind: volume.kind,
        content: volume.content,
        size_bytes: if volume.capacity_bytes > 0 {
            volume.capacity_bytes
        } else {
            used
        },
        created_nanos: now_nanos(),
        method,
        ready: false,
    };
    record::save(&pool.snapshot_meta, &pool.shown().to_string(), &record)?;
    failpoint::hit("snapshot:record-saved");
    tracing::info!(snapshot = %record.id, volume = %record.source, method = method.as_str(), "taking snapshot");
    if method.shares_bytes() {
        let running = {
            let mut table = driver.snapshots();
            table.insert(record.clone());
            table.start(&record.id)
        };
        let outcome = make(pool, &record, seed, &running);
        return finish(driver, &record, outcome);
    }
    driver.snapshots().insert(record.clone());
    start_when_free(driver);
    wait_ready(driver, &record.id)
}

/// Removes the snapshot (an unknown one is fine); a copy still running is
/// stopped first.
pub fn delete(driver: &Driver, id: &SnapshotId) -> Result<()> {
    let Some(record) = driver.snapshots().get(id).cloned() else {
        return Ok(());
    };
    if let Some(running) = driver.snapshots().running(id) {
        running.cancel();
        let deadline = Instant::now() + READY_WAIT;
        while driver.snapshots().running(id).is_some() {
            if Instant::now() > deadline {
                return Err(Error::Busy(format!(
                    "snapshot {id}: its copy is being stopped; try again"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let pool = driver.pool(Some(&record.pool))?;
    remove_data(pool, id)?;
    failpoint::hit("delete-snapshot:trashed");
    record::remove::<SnapshotRecord>(&pool.snapshot_meta, &pool.shown().to_string(), id)?;
    driver.snapshots().remove(id);
    tracing::info!(snapshot = %id, volume = %record.source, "snapshot deleted");
    Ok(())
}

/// Opens a ready snapshot's data for a restore. An unknown id is NOT_FOUND,
/// or RESOURCE_EXHAUSTED naming the node it was taken on when that is
/// another node (so that the claim is scheduled again).
pub fn open(driver: &Driver, id: &SnapshotId) -> Result<(SnapshotRecord, Seed)> {
    let Some(record) = driver.snapshots().get(id).cloned() else {
        return Err(match id.node() {
            Some(node) if node != driver.config.node_id => Error::NotHere(format!(
                "snapshot {id} is held by node {node}, not by node {}",
                driver.config.node_id
            )),
            _ => Error::Unknown(format!(
                "snapshot {id} does not exist on node {}",
                driver.config.node_id
            )),
        });
    };
    if !record.ready {
        return Err(Error::Busy(format!(
            "snapshot {id} is not ready yet (its copy is running)"
        )));
    }
    let pool = driver.pool(Some(&record.pool))?;
    let what = || format!("snapshot {id}: open {}/snapshots/{id}", pool.shown());
    let seed = if record.kind == KindName::File {
        let image = beneath::open_at(
            &pool.snapshots,
            id.as_str(),
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW,
            Mode::empty(),
            Mounts::Stay,
        )
        .context(what)?;
        Seed::Image(image)
    } else {
        let dir = beneath::open_dir(&pool.snapshots, id.as_str()).context(what)?;
        Seed::Tree {
            dir,
            subvolume: record.method == Method::BtrfsSnapshot,
        }
    };
    Ok((record, seed))
}

/// Starts the copies of snapshots not ready (after a restart, or waiting
/// for a copier) while fewer than [`COPIERS`] run.
pub fn start_when_free(driver: &Arc<Driver>) {
    loop {
        let next = {
            let mut table = driver.snapshots();
            if table.running_count() >= COPIERS {
                return;
            }
            let Some(record) = table.next_waiting() else {
                return;
            };
            let running = table.start(&record.id);
            (record, running)
        };
        let (record, running) = next;
        let driver = Arc::clone(driver);
        let spawned = std::thread::Builder::new()
            .name(format!("copy-{}", record.id))
            .spawn(move || {
                let outcome = driver
                    .pool(Some(&record.pool))
                    .and_then(|pool| copy_of_volume(&driver, pool, &record, &running));
                if let Err(err) = finish(&driver, &record, outcome) {
                    tracing::error!(snapshot = %record.id, "snapshot not made: {err}");
                }
                start_when_free(&driver);
            });
        if let Err(err) = spawned {
            tracing::error!("could not start a snapshot copy: {err}");
            return;
        }
    }
}

/// Makes the data of snapshot `record` again from its volume.
fn copy_of_volume(
    driver: &Driver,
    pool: &Pool,
    record: &SnapshotRecord,
    running: &Running,
) -> Result<()> {
    let volume = driver.volume(&record.source).map_err(|_| {
        Error::WrongState(format!(
            "snapshot {}: volume {} was deleted before its copy was made",
            record.id, record.source
        ))
    })?;
    let seed = volume.record.kind.backend().seed(pool, &volume.record)?;
    make(pool, record, seed, running)
}

/// Ends a making of `record`'s data: marks it ready, durably, or keeps why
/// it failed for the next CreateSnapshot.
fn finish(driver: &Driver, record: &SnapshotRecord, outcome: Result<()>) -> Result<SnapshotRecord> {
    let pool = driver.pool(Some(&record.pool))?;
    let saved = outcome.and_then(|()| {
        failpoint::hit("snapshot:made");
        let ready = SnapshotRecord {
            ready: true,
            ..record.clone()
        };
        record::save(&pool.snapshot_meta, &pool.shown().to_string(), &ready).map(|()| ready)
    });
    let mut table = driver.snapshots();
    match saved {
        Ok(ready) => {
            table.finish(&record.id, Ok(ready.clone()));
            drop(table);
            tracing::info!(snapshot = %record.id, volume = %record.source, method = record.method.as_str(), "snapshot ready");
            Ok(ready)
        }
        Err(err) => {
            table.finish(&record.id, Err(err.to_string()));
            Err(err)
        }
    }
}

/// Waits up to [`READY_WAIT`] for snapshot `id`'s copy, and answers with
/// its record as it is then.
fn wait_ready(driver: &Driver, id: &SnapshotId) -> Result<SnapshotRecord> {
    let deadline = Instant::now() + READY_WAIT;
    loop {
        let (record, running, failure) = {
            let table = driver.snapshots();
            (
                table.get(id).cloned(),
                table.running(id).is_some(),
                table.failure(id).map(str::to_owned),
            )
        };
        match (record, failure) {
            (None, _) => {
                return Err(Error::Unknown(format!(
                    "snapshot {id} was deleted while it was taken"
                )));
            }
            (Some(_), Some(why)) => {
                return Err(Error::WrongState(format!(
                    "snapshot {id}: its copy failed: {why}"
                )));
            }
            (Some(record), None) if record.ready || Instant::now() > deadline => {
                return Ok(record);
            }
            (Some(record), None) if !running && driver.snapshots().running_count() < COPIERS => {
                // Neither running nor waiting for a copier: nothing will change.
                return Ok(record);
            }
            (Some(_), None) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Makes `snapshots/<id>` hold what `seed` holds, as `record.method` says,
/// starting from nothing (what an interrupted attempt left is trashed).
fn make(pool: &Pool, record: &SnapshotRecord, seed: Seed, running: &Running) -> Result<()> {
    let id = &record.id;
    remove_data(pool, id)?;
    let what = || format!("snapshot {id}: make {}/snapshots/{id}", pool.shown());
    match seed {
        Seed::Tree { dir, .. } if record.method == Method::BtrfsSnapshot => {
            btrfs::snapshot(&dir, &pool.snapshots, id.as_str(), true).context(what)?;
            pool.snapshots.sync().context(what)
        }
        Seed::Image(image) => clone_image(pool, id, &image, running),
        Seed::Tree { dir, .. } => {
            mkdirat(
                &pool.snapshots,
                id.as_str(),
                Mode::from_bits_truncate(0o700),
            )
            .context(what)?;
            let copy = beneath::open_dir(&pool.snapshots, id.as_str()).context(what)?;
            let stop = || running.is_cancelled();
            copy::tree(dir.as_fd(), copy.as_fd(), &running.progress, &stop)
                .map_err(|err| Error::failed(what(), err))?;
            syncfs(&copy).context(what)?;
            pool.snapshots.sync().context(what)?;
            let (entries, bytes, reflinked, skipped) = running.progress.counts();
            tracing::info!(snapshot = %id, entries, bytes, reflinked, skipped, "snapshot tree copied");
            Ok(())
        }
    }
}

/// Clones (or copies) an image into `snapshots/<id>` under a temporary
/// name, then renames it into place.
fn clone_image(pool: &Pool, id: &SnapshotId, image: &OwnedFd, running: &Running) -> Result<()> {
    let temp = format!(".{id}.tmp");
    let what = || {
        format!(
            "snapshot {id}: copy the image into {}/snapshots/{id}",
            pool.shown()
        )
    };
    let copy = beneath::open_at(
        &pool.snapshots,
        temp.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW,
        Mode::from_bits_truncate(0o600),
        Mounts::Stay,
    )
    .context(what)?;
    if copy::file_contents(image, &copy).context(what)? {
        running.progress.note_reflinked();
    }
    fsync(&copy).context(what)?;
    renameat(&pool.snapshots, temp.as_str(), &pool.snapshots, id.as_str()).context(what)?;
    pool.snapshots.sync().context(what)
}

/// Moves a snapshot's data (and any temporary copy) to the trash; a btrfs
/// snapshot is made writable first so that the trash can empty it.
fn remove_data(pool: &Pool, id: &SnapshotId) -> Result<()> {
    match beneath::open_dir(&pool.snapshots, id.as_str()) {
        Ok(dir) => {
            if btrfs::subvolume_id(&dir)?.is_some() {
                btrfs::make_writable(&dir).context(|| {
                    format!(
                        "snapshot {id}: make {}/snapshots/{id} writable",
                        pool.shown()
                    )
                })?;
            }
        }
        Err(Errno::ENOENT | Errno::ENOTDIR) => {}
        Err(errno) => {
            return Err(errno)
                .context(|| format!("snapshot {id}: open {}/snapshots/{id}", pool.shown()));
        }
    }
    pool.trash_snapshot(&format!(".{id}.tmp"))?;
    pool.trash_snapshot(id.as_str())
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
