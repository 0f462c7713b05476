//! A clean stop's copy of a pool's records in one file,
//! `<pool>/records.snapshot`, so that the next start reads one file instead
//! of one per volume (after a reboot, tens of thousands of small reads are
//! most of the time to ready).
//!
//! A snapshot is trusted only as the start that finds it takes it: it is
//! removed, durably, before the driver can change anything, so a snapshot on
//! disk always describes the records as the last clean stop left them. A
//! start after a crash finds none and reads every record. It also names the
//! inode of each record file and the change time of `meta/` itself: unless
//! `meta/` still holds exactly those files and has not changed since (an
//! operator or another process edited it while the driver was stopped), the
//! snapshot is set aside and every record is read. A snapshot that cannot be
//! read or removed is not trusted either.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::sys::stat::fstat;
use nix::unistd::{UnlinkatFlags, unlinkat};
use serde::{Deserialize, Serialize};

use crate::beneath;
use crate::error::{Error, Result, SysContext};
use crate::record::{self, Listed, VolumeRecord};
use crate::shared_sync::SharedSyncDir;

const FILE: &str = "records.snapshot";
/// The temp file [`beneath::write_atomic`] writes first.
const TEMP: &str = ".records.snapshot.tmp";
/// Bumped when the layout changes; another version is set aside.
const VERSION: u32 = 2;
/// Far more than a million records take.
const MAX_BYTES: usize = 1 << 30;

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    /// The change time of `meta/` (seconds, nanoseconds) when written.
    meta_changed: (i64, i64),
    entries: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    /// The inode of `meta/<id>.json` when the snapshot was written.
    inode: u64,
    record: VolumeRecord,
}

/// Reads and removes the pool's snapshot. Returns its records when it
/// matches `listed` (the files now in `meta/`) and `meta/` is unchanged, or
/// `None` when there is no snapshot or it cannot be trusted (the reason is
/// logged).
pub fn take(
    root: impl AsFd,
    meta: impl AsFd,
    pool_path: &str,
    listed: &[Listed],
) -> Option<Vec<VolumeRecord>> {
    let root = root.as_fd();
    let set_aside = |why: String| {
        tracing::warn!(path = %format!("{pool_path}/{FILE}"), "snapshot set aside, reading every record: {why}");
        None
    };
    // Left by a stop killed while writing; the snapshot itself never is.
    match unlinkat(root, TEMP, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(errno) => tracing::warn!("remove {pool_path}/{TEMP}: {errno}"),
    }
    let file = CString::new(FILE).expect("no NUL in the snapshot's name");
    let bytes = match beneath::read_file(root, &file, MAX_BYTES) {
        Ok(bytes) => bytes,
        Err(Errno::ENOENT) => return None,
        Err(errno) => return set_aside(format!("read: {errno}")),
    };
    // Removed before anything can change, or not trusted at all.
    if let Err(errno) = beneath::remove_file(&root, FILE) {
        return set_aside(format!("remove: {errno}"));
    }
    let changed = match changed(meta) {
        Ok(changed) => changed,
        Err(errno) => return set_aside(format!("stat meta/: {errno}")),
    };
    matching(&bytes, changed, listed).map_or_else(set_aside, Some)
}

/// The change time of a directory.
fn changed(dir: impl AsFd) -> nix::Result<(i64, i64)> {
    let st = fstat(dir.as_fd())?;
    Ok((st.st_ctime, st.st_ctime_nsec))
}

/// The snapshot's records, if it names exactly the files listed and `meta/`
/// has not changed since it was written.
fn matching(
    bytes: &[u8],
    changed: (i64, i64),
    listed: &[Listed],
) -> std::result::Result<Vec<VolumeRecord>, String> {
    let snapshot: Snapshot = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if snapshot.version != VERSION {
        return Err(format!("version {} is not {VERSION}", snapshot.version));
    }
    if snapshot.meta_changed != changed {
        return Err("meta/ changed since it was written".into());
    }
    if snapshot.entries.len() != listed.len() {
        return Err(format!(
            "it holds {} records, meta/ {} files",
            snapshot.entries.len(),
            listed.len()
        ));
    }
    let mut inodes: HashMap<&str, u64> =
        listed.iter().map(|l| (l.shown.as_str(), l.inode)).collect();
    let mut records = Vec::with_capacity(snapshot.entries.len());
    for Entry { inode, record } in snapshot.entries {
        let name = record::file_name(&record.id);
        // Each file answers one entry only.
        if inodes.remove(name.as_str()) != Some(inode) {
            return Err(format!("meta/{name} was changed since"));
        }
        records.push(record);
    }
    Ok(records)
}

/// Writes the pool's snapshot of `records`, which must be every record in
/// `meta/`; otherwise nothing is written, the reason is logged and the
/// answer is `false`.
pub fn write(
    root: impl AsFd,
    meta: &SharedSyncDir,
    pool_path: &str,
    records: Vec<VolumeRecord>,
) -> Result<bool> {
    if meta.has_failed() {
        tracing::warn!(
            "no snapshot of {pool_path}: an fsync of meta/ failed in this run, so its records may differ from what the driver holds"
        );
        return Ok(false);
    }
    let listed = record::list(meta, pool_path, "meta")?;
    let inodes: HashMap<&str, u64> = listed.iter().map(|l| (l.shown.as_str(), l.inode)).collect();
    let mut entries = Vec::with_capacity(records.len());
    for record in records {
        let name = record::file_name(&record.id);
        let Some(&inode) = inodes.get(name.as_str()) else {
            tracing::warn!(volume = %record.id, "no snapshot of {pool_path}: meta/{name} is missing");
            return Ok(false);
        };
        entries.push(Entry { inode, record });
    }
    if entries.len() != listed.len() {
        tracing::warn!(
            "no snapshot of {pool_path}: meta/ holds {} files the driver does not serve (see the unreadable records reported at start)",
            listed.len() - entries.len()
        );
        return Ok(false);
    }
    let meta_changed = changed(meta).context(|| format!("stat {pool_path}/meta"))?;
    let bytes = serde_json::to_vec(&Snapshot {
        version: VERSION,
        meta_changed,
        entries,
    })
    .map_err(|e| Error::failed(format!("encode the snapshot of {pool_path}"), e))?;
    beneath::write_atomic(&root.as_fd(), FILE, &bytes)
        .context(|| format!("write {pool_path}/{FILE}"))?;
    Ok(true)
}
