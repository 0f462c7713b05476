//! Health: what is wrong with a volume or a pool right now, found without
//! changing anything, each finding with a reason for machines and a message
//! for people. The health RPCs answer with findings, the metrics count them
//! and the driver logs each as it appears and clears.

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;
use nix::sys::statvfs::{FsFlags, fstatvfs};

use crate::btrfs;
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::ids::{PoolName, VolumeId};
use crate::pool::{Enforcement, Pool};
use crate::project_quota;
use crate::volumes::Volume;

/// How bad a volume's problem is (CSI's VolumeHealthErrorType).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Usable, but not as promised.
    Degraded,
    /// Not usable from this node now.
    Inaccessible,
    /// Its data is gone or known to be damaged.
    DataLoss,
}

/// What is wrong with a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Its directory, image or mount point is gone.
    BackingMissing,
    /// Something other than what the driver made is in its place.
    BackingReplaced,
    /// It was created with an enforced capacity that nothing holds it to now.
    QuotaNotEnforced,
    /// Its image file is shorter than its capacity.
    ImageTruncated,
    /// It is published raw, but no loop device serves its image any more.
    LoopDetached,
    /// Its image's filesystem has recorded errors (ext4's error count).
    FilesystemErrors,
    /// Its image's filesystem fails every access (XFS shut down, I/O errors).
    FilesystemFailing,
    /// Its tmpfs is gone and its contents with it.
    TmpfsGone,
    /// Its contents were lost and recreated empty in this run.
    ContentsLost,
    /// Its record could not be read at start.
    RecordUnreadable,
    /// Its health could not be checked.
    CheckFailed,
}

impl Reason {
    /// The CamelCase tag the RPCs, logs and metrics carry.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BackingMissing => "BackingMissing",
            Reason::BackingReplaced => "BackingReplaced",
            Reason::QuotaNotEnforced => "QuotaNotEnforced",
            Reason::ImageTruncated => "ImageTruncated",
            Reason::LoopDetached => "LoopDetached",
            Reason::FilesystemErrors => "FilesystemErrors",
            Reason::FilesystemFailing => "FilesystemFailing",
            Reason::TmpfsGone => "TmpfsGone",
            Reason::ContentsLost => "ContentsLost",
            Reason::RecordUnreadable => "RecordUnreadable",
            Reason::CheckFailed => "CheckFailed",
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            Reason::QuotaNotEnforced | Reason::FilesystemErrors => Severity::Degraded,
            Reason::LoopDetached
            | Reason::FilesystemFailing
            | Reason::RecordUnreadable
            | Reason::CheckFailed => Severity::Inaccessible,
            Reason::BackingMissing
            | Reason::BackingReplaced
            | Reason::ImageTruncated
            | Reason::TmpfsGone
            | Reason::ContentsLost => Severity::DataLoss,
        }
    }
}

/// One problem of a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub reason: Reason,
    pub message: String,
}

impl Finding {
    pub fn new(reason: Reason, message: String) -> Finding {
        Finding { reason, message }
    }
}

/// Whether an error is the kernel failing I/O (a filesystem shut down or
/// its device gone), which health reports instead of failing on.
pub fn is_io_error(err: &Error) -> bool {
    matches!(
        err.innermost(),
        Error::Sys {
            errno: Errno::EIO,
            ..
        }
    )
}

/// The findings of a served volume: its backing's state now, then what
/// happened to it in this run.
pub fn of_volume(driver: &Driver, volume: &Volume) -> Vec<Finding> {
    let record = &volume.record;
    let checked = driver.pool(Some(&record.pool)).and_then(|pool| {
        record
            .kind
            .backend()
            .health(pool, record, !volume.published.is_empty())
    });
    let mut findings = checked.unwrap_or_else(|err| {
        vec![Finding::new(
            Reason::CheckFailed,
            format!(
                "volume {}: its health could not be checked: {err}",
                record.id
            ),
        )]
    });
    if let Some(notice) = &volume.notice {
        findings.push(Finding::new(Reason::ContentsLost, notice.clone()));
    }
    findings
}

/// The findings of volume `id` (served or with an unreadable record), noted
/// by the driver; NOT_FOUND for a volume this node does not hold.
pub fn check(driver: &Driver, id: &VolumeId) -> Result<Vec<Finding>> {
    if let Some(problem) = driver.unreadable(id) {
        return Ok(vec![of_unreadable(id, problem)]);
    }
    let volume = driver.volume(id)?;
    let findings = of_volume(driver, &volume);
    driver.observe(id, &findings);
    Ok(findings)
}

/// The finding of a volume whose record could not be read at start.
pub fn of_unreadable(id: &VolumeId, problem: &str) -> Finding {
    Finding::new(
        Reason::RecordUnreadable,
        format!(
            "volume {id}: its record could not be read ({problem}); an operator must repair or remove it"
        ),
    )
}

/// Logs the findings of a volume that were not there at its last check, and
/// the reasons that cleared since; returns the reasons now found.
pub fn log_changes(id: &VolumeId, before: &[Reason], findings: &[Finding]) -> Vec<Reason> {
    for finding in findings.iter().filter(|f| !before.contains(&f.reason)) {
        tracing::warn!(volume = %id, reason = finding.reason.as_str(), "{}", finding.message);
    }
    let now: Vec<Reason> = findings.iter().map(|f| f.reason).collect();
    for cleared in before.iter().filter(|r| !now.contains(r)) {
        tracing::info!(volume = %id, reason = cleared.as_str(), "volume health problem cleared");
    }
    now
}

/// How bad a pool's problem is (CSI's StorageHealthErrorType).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolSeverity {
    Degraded,
    Unreachable,
}

/// What is wrong with a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PoolReason {
    /// Its path no longer leads to the directory the driver opened.
    PoolDirectoryGone,
    /// Another process holds the lock of what is at its path now.
    PoolLockHeldElsewhere,
    /// Its filesystem is mounted read-only.
    PoolReadOnly,
    /// Its filesystem's use is at or above the threshold.
    PoolNearlyFull,
    /// It enforced capacity at start and no longer can.
    PoolQuotasOff,
    /// Its state could not be read.
    PoolCheckFailed,
}

impl PoolReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolReason::PoolDirectoryGone => "PoolDirectoryGone",
            PoolReason::PoolLockHeldElsewhere => "PoolLockHeldElsewhere",
            PoolReason::PoolReadOnly => "PoolReadOnly",
            PoolReason::PoolNearlyFull => "PoolNearlyFull",
            PoolReason::PoolQuotasOff => "PoolQuotasOff",
            PoolReason::PoolCheckFailed => "PoolCheckFailed",
        }
    }

    pub fn severity(self) -> PoolSeverity {
        match self {
            PoolReason::PoolDirectoryGone
            | PoolReason::PoolLockHeldElsewhere
            | PoolReason::PoolCheckFailed => PoolSeverity::Unreachable,
            PoolReason::PoolReadOnly | PoolReason::PoolNearlyFull | PoolReason::PoolQuotasOff => {
                PoolSeverity::Degraded
            }
        }
    }
}

/// One problem of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolFinding {
    pub pool: PoolName,
    pub reason: PoolReason,
    pub message: String,
}

/// The findings of a pool: `nearly_full` is the percentage of its
/// filesystem in use at which it counts as nearly full (0: never).
pub fn of_pool(pool: &Pool, nearly_full: u8) -> Vec<PoolFinding> {
    let found = |reason, message: String| PoolFinding {
        pool: pool.name.clone(),
        reason,
        message: format!("pool {} ({}): {message}", pool.name, pool.shown()),
    };
    let mut findings = Vec::new();
    if let Some((reason, message)) = path_problem(pool) {
        findings.push(found(reason, message));
    }
    match fstatvfs(&pool.root) {
        Err(errno) => findings.push(found(
            PoolReason::PoolCheckFailed,
            format!("statvfs failed: {errno}"),
        )),
        Ok(st) => {
            if st.flags().contains(FsFlags::ST_RDONLY) {
                findings.push(found(
                    PoolReason::PoolReadOnly,
                    "its filesystem is read-only: no volume can be created or written".into(),
                ));
            }
            let total = st.blocks();
            let used = total.saturating_sub(st.blocks_free());
            // Percent of the blocks a non-root user could have that are used.
            let usable = used + st.blocks_available();
            if nearly_full > 0 && usable > 0 && used * 100 >= usable * u64::from(nearly_full) {
                findings.push(found(
                    PoolReason::PoolNearlyFull,
                    format!(
                        "{}% of its filesystem is used (threshold {nearly_full}%)",
                        used * 100 / usable
                    ),
                ));
            }
        }
    }
    if let Some(why) = quotas_lapsed(pool) {
        findings.push(found(
            PoolReason::PoolQuotasOff,
            format!(
                "it enforced the capacity of directory volumes at start and no longer can: {why}"
            ),
        ));
    }
    findings
}

/// Whether the pool's path still leads to the directory the driver holds;
/// if something else is there, whether another process has locked it.
fn path_problem(pool: &Pool) -> Option<(PoolReason, String)> {
    let held = crate::beneath::identity(&pool.root).ok()?;
    let now = match nix::fcntl::open(
        pool.path.as_path(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(errno) => {
            return Some((
                PoolReason::PoolDirectoryGone,
                format!("its directory is gone ({errno}); volumes in it can no longer be served"),
            ));
        }
    };
    if crate::beneath::identity(&now).ok() == Some(held) {
        return None;
    }
    Some(match Flock::lock(now, FlockArg::LockSharedNonblock) {
        Err((_, Errno::EWOULDBLOCK)) => (
            PoolReason::PoolLockHeldElsewhere,
            "its path now leads to another directory, which another process holds the pool lock of: this driver serves a directory no one else sees".into(),
        ),
        _ => (
            PoolReason::PoolDirectoryGone,
            "its path now leads to another directory: the one this driver opened was moved or removed".into(),
        ),
    })
}

/// Why a pool that enforced capacity at start cannot now, if it cannot.
fn quotas_lapsed(pool: &Pool) -> Option<String> {
    match &pool.enforcement {
        Enforcement::BtrfsQgroups { fsid } => (!btrfs::quotas_enabled(fsid))
            .then(|| "btrfs quotas were turned off (`btrfs quota enable` turns them on; each volume's limit is set again at its next publish)".to_owned()),
        Enforcement::ProjectQuotas => project_quota::enforcing(&pool.root).err(),
        Enforcement::Unavailable(_) => None,
    }
}
