//! A storage pool: a host directory the driver owns, opened once as an fd.
//!
//! Layout beneath the pool root:
//! `volumes/<id>` (volume data), `meta/<id>.json` (records),
//! `snapshots/<snapshot-id>` and `snapshot-meta/<snapshot-id>.json`
//! (snapshot data and records) and `.trash/` (deletions in progress,
//! drained by a background thread).

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, Flock, FlockArg, OFlag, renameat};
use nix::sys::stat::{Mode, fstatat};
use nix::sys::statvfs::{FsFlags, fstatvfs};
use nix::unistd::fsync;

use crate::beneath::{self, Mounts, SyncDir};
use crate::error::{Error, Result, SysContext, Within};
use crate::ids::PoolName;
use crate::mounts::MountIndex;
use crate::shared_sync::SharedSyncDir;
use crate::usage_cache::UsageCache;
use crate::{btrfs, project_quota};

/// Name of the file a writability probe writes where O_TMPFILE is missing.
const PROBE_FILE: &str = ".probe";

/// Free space of the filesystem holding a pool.
#[derive(Clone, Copy, Debug)]
pub struct Space {
    /// Size of the filesystem.
    pub size_bytes: u64,
    /// Bytes an unprivileged writer could still use.
    pub free_bytes: u64,
    /// Bytes in use (by anything on the filesystem).
    pub used_bytes: u64,
    pub free_inodes: u64,
}

/// How a pool can hold a directory volume to its capacity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// btrfs with quotas on: each volume is a subvolume with a qgroup limit.
    BtrfsQgroups { fsid: String },
    /// XFS or ext4 with project quotas enforced: each volume's directory
    /// carries a project id whose block limit is its capacity.
    ProjectQuotas,
    /// Capacity is only tracked; the text says why.
    Unavailable(String),
}

impl Enforcement {
    /// Finds out what the pool's filesystem offers, enabling btrfs quotas
    /// first when `enable_quotas` asks for it. `parents` are the directories
    /// volumes are made in and moved to.
    fn detect(root: &OwnedFd, parents: [&OwnedFd; 2], enable_quotas: bool) -> Result<Enforcement> {
        if project_quota::is_candidate(root) {
            if let Err(why) = project_quota::enforcing(root) {
                return Ok(Enforcement::Unavailable(why));
            }
            // New volumes would start in an inherited project, and the
            // filesystem refuses renames between projects: one id per volume
            // is impossible then.
            return Ok(
                match parents
                    .into_iter()
                    .find_map(|dir| project_quota::project_of(dir).ok().flatten())
                {
                    Some(inherited) => Enforcement::Unavailable(format!(
                        "no project quotas: volumes/ or .trash/ hands down project {inherited} (clear it with `chattr -P -p 0` on both)"
                    )),
                    None => Enforcement::ProjectQuotas,
                },
            );
        }
        if !btrfs::is_btrfs(root) {
            return Ok(Enforcement::Unavailable(
                "its filesystem is neither btrfs (qgroups) nor XFS/ext4 (project quotas)".into(),
            ));
        }
        let fsid = btrfs::fsid(root)?;
        if !btrfs::quotas_enabled(&fsid) {
            if !enable_quotas {
                return Ok(Enforcement::Unavailable(
                    "btrfs quotas are off (start the driver with --enable-quotas, or run `btrfs quota enable` on the pool)".into(),
                ));
            }
            btrfs::enable_quotas(root)?;
        }
        Ok(Enforcement::BtrfsQgroups { fsid })
    }

    /// Whether the pool holds enforced volumes to their capacity.
    pub fn available(&self) -> bool {
        !matches!(self, Enforcement::Unavailable(_))
    }

    /// The mode's name, as logs and metrics show it.
    pub fn mode(&self) -> &'static str {
        match self {
            Enforcement::BtrfsQgroups { .. } => "btrfs-qgroups",
            Enforcement::ProjectQuotas => "project-quotas",
            Enforcement::Unavailable(_) => "tracked",
        }
    }
}

/// An open pool. All access to its contents goes through its directory fds.
#[derive(Debug)]
pub struct Pool {
    pub name: PoolName,
    pub path: PathBuf,
    /// The pool's directory.
    pub root: OwnedFd,
    /// Held while the pool is open: one driver process per pool (none when
    /// only inspected).
    lock: Option<Flock<OwnedFd>>,
    /// `volumes/`: one entry per volume.
    pub volumes: SharedSyncDir,
    /// `meta/`: one record per volume.
    pub meta: SharedSyncDir,
    /// `snapshots/`: one entry per snapshot.
    pub snapshots: SharedSyncDir,
    /// `snapshot-meta/`: one record per snapshot.
    pub snapshot_meta: SharedSyncDir,
    /// Whether the pool's filesystem shares extents between files (FICLONE).
    pub reflinks: bool,
    trash: OwnedFd,
    drain: mpsc::Sender<Trashed>,
    trash_counts: Arc<TrashCounts>,
    /// Where the pool lies within its filesystem, as the mount table's
    /// roots name it (bind mounts of its volumes are found by it).
    pub fs_root: PathBuf,
    /// Whether directory volumes can be held to their capacity here.
    pub enforcement: Enforcement,
    /// Measurements of the directory volumes no limit measures.
    pub usage: UsageCache,
}

/// Where entries of `volumes/` found with no record are set aside.
const QUARANTINE: &str = "quarantine";

impl Pool {
    /// Opens the pool at `path` (which must be an existing directory; it is
    /// kept in canonical form, as the mount table shows it), creates
    /// its layout if missing, and starts the trash drain, which first empties
    /// what an earlier run left in `.trash/`.
    pub fn open(name: PoolName, path: &Path, enable_quotas: bool) -> Result<Pool> {
        if !path.is_absolute() {
            return Err(Error::Invalid(format!(
                "pool {name}: path {} is not absolute",
                path.display()
            )));
        }
        let (path, root) = open_root(&name, path)?;
        let path = &path;
        let lock = lock(&name, path, &root)?;
        let sub = |dir: &str| -> Result<OwnedFd> {
            beneath::ensure_dir(&root, dir, 0o700)
                .map(|(fd, _)| fd)
                .context(|| format!("pool {name}: open {}/{dir}", path.display()))
        };
        let (volumes, meta, trash) = (sub("volumes")?, sub("meta")?, sub(".trash")?);
        let (snapshots, snapshot_meta) = (sub("snapshots")?, sub("snapshot-meta")?);
        let reflinks = shares_extents(&snapshot_meta);
        let trash_counts = Arc::new(TrashCounts::default());
        let drain = spawn_drain(&name, path, &trash, &trash_counts)?;
        let enforcement = Enforcement::detect(&root, [&volumes, &trash], enable_quotas)
            .within(|| format!("pool {name}"))?;
        match &enforcement {
            Enforcement::Unavailable(why) => {
                tracing::info!(pool = %name, "capacity of directory volumes tracked, not enforced: {why}")
            }
            enforced => {
                tracing::info!(pool = %name, mode = enforced.mode(), "capacity of directory volumes enforced")
            }
        }
        let fs_root = MountIndex::root_of(path).within(|| format!("pool {name}"))?;
        let pool = Pool {
            fs_root,
            name,
            path: path.to_owned(),
            root,
            lock: Some(lock),
            volumes: SharedSyncDir::new(volumes),
            meta: SharedSyncDir::new(meta),
            snapshots: SharedSyncDir::new(snapshots),
            snapshot_meta: SharedSyncDir::new(snapshot_meta),
            reflinks,
            trash,
            drain,
            trash_counts,
            enforcement,
            usage: UsageCache::default(),
        };
        pool.drain
            .send(Trashed::Leftovers {
                before: now_nanos(),
            })
            .ok();
        Ok(pool)
    }

    /// Opens the pool at `path` to read it while a driver may serve it:
    /// no lock, nothing created or changed (a missing layout is an error),
    /// no trash drain; extents are assumed not shared.
    pub fn inspect(name: PoolName, path: &Path) -> Result<Pool> {
        let (path, root) = open_root(&name, path)?;
        let path = &path;
        let sub = |dir: &str| -> Result<OwnedFd> {
            beneath::open_dir(&root, dir)
                .context(|| format!("pool {name}: open {}/{dir}", path.display()))
        };
        let (volumes, meta, trash) = (sub("volumes")?, sub("meta")?, sub(".trash")?);
        let (snapshots, snapshot_meta) = (sub("snapshots")?, sub("snapshot-meta")?);
        let enforcement = Enforcement::detect(&root, [&volumes, &trash], false)
            .within(|| format!("pool {name}"))?;
        let fs_root = MountIndex::root_of(path).within(|| format!("pool {name}"))?;
        Ok(Pool {
            fs_root,
            name,
            path: path.to_owned(),
            root,
            lock: None,
            volumes: SharedSyncDir::new(volumes),
            meta: SharedSyncDir::new(meta),
            snapshots: SharedSyncDir::new(snapshots),
            snapshot_meta: SharedSyncDir::new(snapshot_meta),
            reflinks: false,
            trash,
            // An inspected pool is only read (the methods that move
            // entries assert it): no drain thread, a sender to nowhere.
            drain: mpsc::channel().0,
            trash_counts: Arc::default(),
            enforcement,
            usage: UsageCache::default(),
        })
    }

    /// The path of entry `name` of the pool's `volumes/`, for messages,
    /// the mount table and tools that take a path (never to open it: that
    /// goes through the `volumes` fd).
    pub fn entry_path(&self, name: &str) -> PathBuf {
        self.path.join("volumes").join(name)
    }

    /// Entry `name` of `volumes/` as the mount table's roots name it: its
    /// path within the pool's filesystem.
    pub fn entry_root(&self, name: &str) -> PathBuf {
        self.fs_root.join("volumes").join(name)
    }

    /// The pool path as text, for messages.
    pub fn shown(&self) -> std::path::Display<'_> {
        self.path.display()
    }

    /// Space on the pool's filesystem right now.
    pub fn space(&self) -> Result<Space> {
        let st = fstatvfs(&self.root)
            .context(|| format!("pool {}: statvfs {}", self.name, self.shown()))?;
        let frsize = st.fragment_size();
        Ok(Space {
            size_bytes: st.blocks() * frsize,
            free_bytes: st.blocks_available() * frsize,
            used_bytes: st.blocks().saturating_sub(st.blocks_free()) * frsize,
            free_inodes: st.files_available(),
        })
    }

    /// Succeeds when a file can be created in the pool right now.
    pub fn check_writable(&self) -> Result<()> {
        let st = fstatvfs(&self.root)
            .context(|| format!("pool {}: statvfs {}", self.name, self.shown()))?;
        if st.flags().contains(FsFlags::ST_RDONLY) {
            return Err(Error::WrongState(format!(
                "pool {}: {} is on a read-only filesystem",
                self.name,
                self.shown()
            )));
        }
        // An unnamed temp file proves writability and leaves nothing behind;
        // filesystems without O_TMPFILE get a named file, removed at once.
        let probe = beneath::open_at(
            &self.meta,
            ".",
            OFlag::O_TMPFILE | OFlag::O_WRONLY,
            Mode::from_bits_truncate(0o600),
            Mounts::Stay,
        );
        let written = match probe {
            Err(Errno::EOPNOTSUPP | Errno::EISDIR) => {
                beneath::write_atomic(&self.meta, PROBE_FILE, b"")
                    .and_then(|()| beneath::remove_file(&self.meta, PROBE_FILE))
            }
            other => other.map(drop),
        };
        written.context(|| format!("pool {}: create a file in {}/meta", self.name, self.shown()))
    }

    /// Moves `volumes/<name>`, found with no record, to
    /// `quarantine/<name>.<nanoseconds>` for an operator to inspect: it is
    /// neither served nor deleted. Returns where it went.
    pub fn quarantine(&self, name: &str) -> Result<PathBuf> {
        debug_assert!(self.lock.is_some(), "an inspected pool is only read");
        let kept = format!("{name}.{}", now_nanos());
        let moved = beneath::ensure_dir(&self.root, QUARANTINE, 0o700)
            .and_then(|(dir, _)| {
                renameat(&self.volumes, name, &dir, kept.as_str())?;
                fsync(&dir)
            })
            .and_then(|()| self.volumes.sync());
        moved.context(|| {
            format!(
                "move {0}/volumes/{name} to {0}/{QUARANTINE}/{kept}",
                self.shown()
            )
        })?;
        Ok(self.path.join(QUARANTINE).join(kept))
    }

    /// Moves `volumes/<name>` into the trash (missing is fine) and queues its
    /// removal. After this returns the data is no longer reachable as a volume.
    pub fn trash_volume(&self, name: &str) -> Result<()> {
        self.trash_entry(&self.volumes, "volumes", name)
    }

    /// Moves `snapshots/<name>` into the trash, as [`Pool::trash_volume`].
    pub fn trash_snapshot(&self, name: &str) -> Result<()> {
        self.trash_entry(&self.snapshots, "snapshots", name)
    }

    fn trash_entry(&self, dir: &SharedSyncDir, dir_name: &str, name: &str) -> Result<()> {
        debug_assert!(self.lock.is_some(), "an inspected pool is only read");
        let trashed = format!("{name}.{}", now_nanos());
        match renameat(dir, name, &self.trash, trashed.as_str()) {
            Ok(()) => {}
            Err(Errno::ENOENT) => return Ok(()),
            Err(errno) => {
                return Err(Error::sys(
                    format!(
                        "move {0}/{dir_name}/{name} to {0}/.trash/{trashed}",
                        self.shown()
                    ),
                    errno,
                ));
            }
        }
        // The fsync of `volumes/` is what matters: once it returns, the
        // volume can never reappear. On the journaled filesystems pools live
        // on (ext4, XFS, btrfs) it also makes the `.trash/` entry durable,
        // the rename being logged as one operation; without a journal a
        // crash could lose that entry, leaving the tree to fsck's
        // lost+found: space, never a volume.
        dir.sync()
            .context(|| format!("fsync {}/{dir_name}", self.shown()))?;
        let entry = CString::new(trashed).expect("no NUL in a volume id");
        self.trash_counts.waiting.fetch_add(1, Ordering::Relaxed);
        self.drain.send(Trashed::Entry(entry)).ok();
        Ok(())
    }

    /// The trash's backlog now and what was removed from it since start.
    pub fn trash_counts(&self) -> Drained {
        Drained {
            waiting: self.trash_counts.waiting.load(Ordering::Relaxed),
            removed: self.trash_counts.removed.load(Ordering::Relaxed),
        }
    }
}

/// The trash drain's figures, shared with its thread.
#[derive(Debug, Default)]
struct TrashCounts {
    /// Entries queued or listed and not removed: one that could not be
    /// removed stays counted (and in `.trash/`) until the next start.
    waiting: AtomicU64,
    /// Entries removed.
    removed: AtomicU64,
}

impl TrashCounts {
    /// Accounts for what became of a counted entry.
    fn note(&self, outcome: Drain) {
        if outcome == Drain::Kept {
            return;
        }
        // Never below zero, whatever the filesystem did behind the count.
        let _ = self
            .waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
        if outcome == Drain::Removed {
            self.removed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A pool's trash at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drained {
    pub waiting: u64,
    pub removed: u64,
}

/// Whether files in directory `dir` can share extents: two unnamed files
/// made there are cloned one into the other.
fn shares_extents(dir: &OwnedFd) -> bool {
    let unnamed = || {
        beneath::open_at(
            dir,
            ".",
            OFlag::O_TMPFILE | OFlag::O_RDWR,
            Mode::from_bits_truncate(0o600),
            Mounts::Stay,
        )
    };
    let (Ok(source), Ok(clone)) = (unnamed(), unnamed()) else {
        return false;
    };
    nix::unistd::write(&source, &[0u8; 4096]).is_ok()
        && fsync(&source).is_ok()
        && crate::copy::file_contents(&source, &clone).unwrap_or(false)
}

/// The pool's directory in canonical form (as the mount table shows it),
/// and an fd of it.
fn open_root(name: &PoolName, path: &Path) -> Result<(PathBuf, OwnedFd)> {
    let path = std::fs::canonicalize(path)
        .context(|| format!("pool {name}: resolve {}", path.display()))?;
    let root = nix::fcntl::open(
        path.as_path(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .context(|| format!("pool {name}: open {}", path.display()))?;
    Ok((path, root))
}

/// Takes the pool's lock (an exclusive flock of its directory), or refuses:
/// two driver processes on one pool, or one pool given twice, would undo
/// each other's work.
fn lock(name: &PoolName, path: &Path, root: &OwnedFd) -> Result<Flock<OwnedFd>> {
    let fd = root
        .try_clone()
        .context(|| format!("pool {name}: dup fd of {}", path.display()))?;
    Flock::lock(fd, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| match errno {
        Errno::EWOULDBLOCK => Error::WrongState(format!(
            "pool {name}: {} is in use by another hostpath-csi process (or given twice)",
            path.display()
        )),
        errno => Error::sys(format!("pool {name}: lock {}", path.display()), errno),
    })
}

/// Further attempts at a trashed tree that kept changing while removed.
const DRAIN_RETRIES: usize = 20;

/// Work for the trash drain.
enum Trashed {
    /// One entry of `.trash/`, just moved there.
    Entry(CString),
    /// What `.trash/` holds from before `before` (nanoseconds since the
    /// epoch; left by an earlier process), counted, then read a batch at a
    /// time and removed as it is read, so its size costs no memory. Entries
    /// trashed since have an [`Trashed::Entry`] of their own.
    Leftovers { before: u128 },
}

/// Nanoseconds since the epoch, which trashed and quarantined names end in.
fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Whether trash entry `entry` was there before `before`: its name ends in
/// an earlier time, or in none (a subtree an interrupted removal moved up).
fn left_before(entry: &CStr, before: u128) -> bool {
    let name = entry.to_string_lossy();
    name.rsplit_once('.')
        .and_then(|(_, nanos)| nanos.parse::<u128>().ok())
        .is_none_or(|nanos| nanos < before)
}

/// What became of one trash entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drain {
    Removed,
    /// Already gone.
    Missing,
    /// It could not be removed (logged): it stays for the next start.
    Kept,
}

/// Starts the thread that removes trashed trees one at a time. It ends when
/// the pool (the sender) is dropped.
fn spawn_drain(
    name: &PoolName,
    path: &Path,
    trash: &OwnedFd,
    counts: &Arc<TrashCounts>,
) -> Result<mpsc::Sender<Trashed>> {
    let (tx, rx) = mpsc::channel::<Trashed>();
    let trash = trash
        .as_fd()
        .try_clone_to_owned()
        .context(|| format!("pool {name}: dup fd of {}/.trash", path.display()))?;
    let shown = format!("{}/.trash", path.display());
    let counts = Arc::clone(counts);
    std::thread::Builder::new()
        .name(format!("trash-{name}"))
        .spawn(move || {
            for work in rx {
                match work {
                    Trashed::Entry(entry) => {
                        let outcome = drain_one(&trash, &entry, &shown);
                        counts.note(outcome);
                    }
                    Trashed::Leftovers { before } => {
                        let mut left = 0;
                        let counted = beneath::for_each_entry(&trash, |entry, _, _| {
                            left += u64::from(left_before(entry, before));
                            Ok(true)
                        });
                        counts.waiting.fetch_add(left, Ordering::Relaxed);
                        let listed = counted.and_then(|_| {
                            beneath::for_each_entry(&trash, |entry, _, _| {
                                if left_before(entry, before) {
                                    // One that is missing was not counted: a
                                    // subtree this removal moved up and removed.
                                    match drain_one(&trash, entry, &shown) {
                                        Drain::Missing => {}
                                        outcome => counts.note(outcome),
                                    }
                                }
                                Ok(true)
                            })
                        });
                        if let Err(errno) = listed {
                            tracing::error!(path = %shown, %errno,
                                "could not read the trash; what it holds stays until the next start");
                        }
                    }
                }
            }
        })
        .map_err(|e| Error::failed(format!("pool {name}: start trash thread"), e))?;
    Ok(tx)
}

/// Removes entry `entry` of the trash and everything beneath it; a failure
/// is logged and the entry stays for the next start.
fn drain_one(trash: &OwnedFd, entry: &CStr, shown: &str) -> Drain {
    let path = format!("{shown}/{}", entry.to_string_lossy());
    // Any other failure to look the removal meets again, and says.
    if let Err(Errno::ENOENT) = fstatat(trash, entry, AtFlags::AT_SYMLINK_NOFOLLOW) {
        return Drain::Missing;
    }
    let mut removed = beneath::remove_tree(trash, entry);
    // A tree still changing under the removal is tried again a little
    // later, a bounded number of times.
    for _ in 0..DRAIN_RETRIES {
        if removed != Err(Errno::EAGAIN) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        removed = beneath::remove_tree(trash, entry);
    }
    match removed {
        Ok(()) => return Drain::Removed,
        Err(Errno::EBUSY) => tracing::error!(%path,
            "a deleted volume holds a mount; the mount and its parents stay in the trash"),
        Err(errno) => tracing::error!(%path, %errno,
            "could not remove a deleted volume; it stays in the trash until the next start"),
    }
    Drain::Kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_the_entries_named_before_the_start() {
        let start = 1_700_000_000_000_000_000;
        assert!(left_before(c"vol-1.1699999999999999999", start));
        assert!(left_before(c".snap-1.tmp.42", start));
        // A subtree an interrupted removal moved up, or any other name.
        assert!(left_before(c"deep-7-0", start));
        assert!(left_before(c"vol-1.img.x", start));
        assert!(!left_before(c"vol-1.1700000000000000000", start));
        assert!(!left_before(c"vol-1.img.1700000000000000001", start));
    }

    #[test]
    fn the_backlog_never_goes_below_zero() {
        let counts = TrashCounts::default();
        counts.waiting.store(1, Ordering::Relaxed);
        counts.note(Drain::Kept);
        assert_eq!(counts.waiting.load(Ordering::Relaxed), 1);
        counts.note(Drain::Removed);
        counts.note(Drain::Missing);
        assert_eq!(counts.waiting.load(Ordering::Relaxed), 0);
        assert_eq!(counts.removed.load(Ordering::Relaxed), 1);
    }
}
