//! A directory whose fsync is shared by the concurrent calls that need it
//! (group commit).
//!
//! Eight creates that each add an entry to `meta/` and ask for it to be
//! durable need not make eight fsyncs of `meta/` one after another: a caller
//! takes a ticket after its change, and any fsync that began after that
//! ticket was taken covers it. While one fsync runs, the callers queued
//! behind it share the next one.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::unistd::fsync;

use crate::beneath::SyncDir;

#[derive(Debug)]
pub struct SharedSyncDir {
    fd: OwnedFd,
    /// Tickets handed out: one per `sync` call, taken after its change.
    tickets: AtomicU64,
    /// The highest ticket a completed fsync covers. Held across the fsync.
    covered: Mutex<u64>,
    /// An fsync failed: what the directory holds may differ from what the
    /// callers were told.
    failed: AtomicBool,
}

impl SharedSyncDir {
    pub fn new(fd: OwnedFd) -> Self {
        SharedSyncDir {
            fd,
            tickets: AtomicU64::new(0),
            covered: Mutex::new(0),
            failed: AtomicBool::new(false),
        }
    }

    /// Whether any fsync of the directory has failed in this run.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
}

impl AsFd for SharedSyncDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl SyncDir for SharedSyncDir {
    fn sync(&self) -> nix::Result<()> {
        let mine = self.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        let mut covered = self.covered.lock().unwrap_or_else(|p| p.into_inner());
        if *covered >= mine {
            return Ok(());
        }
        // Every ticket up to here was taken after its change was made, so
        // the fsync that starts now covers them all.
        let upto = self.tickets.load(Ordering::SeqCst);
        if let Err(errno) = fsync(&self.fd) {
            self.failed.store(true, Ordering::SeqCst);
            return Err(errno);
        }
        *covered = upto;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn concurrent_syncs_all_return_and_changes_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let fd = nix::fcntl::open(
            tmp.path(),
            nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        let dir = Arc::new(SharedSyncDir::new(fd));
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let dir = Arc::clone(&dir);
                std::thread::spawn(move || {
                    for j in 0..50 {
                        crate::beneath::write_atomic(&*dir, &format!("f{i}-{j}"), b"x").unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 400);
        assert_eq!(dir.tickets.load(Ordering::SeqCst), 400);
        assert!(
            *dir.covered.lock().unwrap() == 400,
            "the last sync covers every ticket"
        );
    }
}
