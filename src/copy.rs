//! Copies for snapshots, restores and clones: a file's bytes by reflink
//! (FICLONE: the filesystem shares the extents, O(1) in bytes) where the
//! filesystem can, else a sparse copy; a directory tree entry by entry.
//!
//! A tree copy treats the source as a tenant's: it never follows a symlink
//! (links are copied as links), never enters another mount (such entries
//! are skipped and counted), reads each directory a buffer at a time (a
//! directory of millions of entries costs no more memory than one of ten),
//! and refuses trees deeper than [`MAX_DEPTH`] levels, holding two fds per
//! level. Modes, owners, extended attributes, times and holes are kept;
//! FIFOs, sockets and device nodes are made again (volumes are mounted
//! nodev); hard links become separate files.

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, copy_file_range, readlinkat};
use nix::sys::stat::{
    FileStat, Mode, SFlag, UtimensatFlags, fchmod, fstat, fstatat, futimens, mkdirat, mknodat,
    utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, Whence, fchown, fchownat, ftruncate, lseek, symlinkat};

use crate::beneath::{self, Mounts};

/// The deepest tree a copy takes (two fds per level are open at once).
pub const MAX_DEPTH: usize = 256;
/// `FICLONE`: make the destination share the source's extents.
const FICLONE: libc::c_ulong = 0x4004_9409;
/// Most bytes of extended attribute names, and of one value, copied per file.
const XATTR_MAX: usize = 64 << 10;
/// Bytes one copy_file_range call moves at most.
const CHUNK: usize = 16 << 20;

/// What a copy did, counted as it goes (a background copy reports progress
/// from it).
#[derive(Debug, Default)]
pub struct Progress {
    /// Entries made in the destination.
    pub entries: AtomicU64,
    /// Bytes of file data copied or shared.
    pub bytes: AtomicU64,
    /// Files whose extents were shared rather than copied.
    pub reflinked: AtomicU64,
    /// Entries left out: other mounts, or entries that changed type while
    /// they were copied.
    pub skipped: AtomicU64,
}

impl Progress {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one file whose extents were shared.
    pub fn note_reflinked(&self) {
        Progress::add(&self.reflinked, 1);
    }

    /// (entries, bytes, reflinked, skipped) so far.
    pub fn counts(&self) -> (u64, u64, u64, u64) {
        (
            self.entries.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.reflinked.load(Ordering::Relaxed),
            self.skipped.load(Ordering::Relaxed),
        )
    }
}

/// Why a tree copy stopped.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("the tree is deeper than {MAX_DEPTH} levels at {path}")]
    TooDeep { path: String },
    #[error("{path}: {errno}")]
    Sys { path: String, errno: Errno },
}

/// Gives `dst` the bytes of `src`: shared extents when the filesystem
/// allows (true), else a copy of the data regions only, holes left as
/// holes (false). `dst` ends exactly as long as `src`.
pub fn file_contents(src: impl AsFd, dst: impl AsFd) -> nix::Result<bool> {
    let (src, dst) = (src.as_fd(), dst.as_fd());
    // SAFETY: FICLONE takes the source fd as its argument.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) };
    match Errno::result(rc) {
        Ok(_) => return Ok(true),
        Err(Errno::EOPNOTSUPP | Errno::EXDEV | Errno::EINVAL | Errno::ENOTTY | Errno::ENOSYS) => {}
        Err(errno) => return Err(errno),
    }
    let size = fstat(src)?.st_size;
    let mut at = 0;
    while at < size {
        let data = match lseek(src, at, Whence::SeekData) {
            Ok(data) => data,
            Err(Errno::ENXIO) => break, // only a hole is left
            Err(errno) => return Err(errno),
        };
        let hole = lseek(src, data, Whence::SeekHole)?.min(size);
        copy_range(src, dst, data, hole)?;
        at = hole;
    }
    ftruncate(dst, size)?;
    Ok(false)
}

/// Copies bytes `from..to` of `src` to the same place in `dst`: in the
/// kernel where it can, else through a buffer (copy_file_range between two
/// filesystems needs Linux 5.19).
fn copy_range(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, from: i64, to: i64) -> nix::Result<()> {
    let (mut read_at, mut write_at) = (from, from);
    while read_at < to {
        let want = usize::try_from(to - read_at).unwrap_or(CHUNK).min(CHUNK);
        match copy_file_range(src, Some(&mut read_at), dst, Some(&mut write_at), want) {
            Ok(0) => return Ok(()), // the source shrank under the copy
            Ok(_) => {}
            Err(Errno::EXDEV | Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::EINVAL) => {
                return copy_through_buffer(src, dst, read_at, to);
            }
            Err(errno) => return Err(errno),
        }
    }
    Ok(())
}

fn copy_through_buffer(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    from: i64,
    to: i64,
) -> nix::Result<()> {
    let mut buffer = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let want = usize::try_from(to - at)
            .unwrap_or(buffer.len())
            .min(buffer.len());
        let got = nix::sys::uio::pread(src, &mut buffer[..want], at)?;
        if got == 0 {
            return Ok(());
        }
        let mut written = 0;
        while written < got {
            written += nix::sys::uio::pwrite(dst, &buffer[written..got], at + written as i64)?;
        }
        at += got as i64;
    }
    Ok(())
}

/// Copies everything beneath directory `src` into the empty directory
/// `dst`, then gives `dst` the attributes of `src`.
/// `stop` is asked before each entry: true ends the copy (ECANCELED).
pub fn tree(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    progress: &Progress,
    stop: &dyn Fn() -> bool,
) -> Result<(), CopyError> {
    let root = fstat(src).map_err(|errno| sys(".", errno))?;
    let walk = Walk {
        dev: root.st_dev,
        progress,
        stop,
    };
    walk.directory(src, dst, ".", 0)?;
    attributes(src, dst, &root).map_err(|errno| sys(".", errno))
}

fn sys(path: &str, errno: Errno) -> CopyError {
    CopyError::Sys {
        path: path.to_owned(),
        errno,
    }
}

struct Walk<'a> {
    /// The source's device: entries on another are other mounts.
    dev: u64,
    progress: &'a Progress,
    stop: &'a dyn Fn() -> bool,
}

impl Walk<'_> {
    /// Copies the entries of `src` into `dst`.
    fn directory(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        path: &str,
        depth: usize,
    ) -> Result<(), CopyError> {
        let mut failure = None;
        let listed = beneath::for_each_entry(src, |name, _, _| {
            if (self.stop)() {
                return Err(Errno::ECANCELED);
            }
            let child = format!("{path}/{}", name.to_string_lossy());
            match self.entry(src, dst, name, &child, depth) {
                Ok(()) => Ok(true),
                Err(err) => {
                    failure = Some(err);
                    Err(Errno::ECANCELED)
                }
            }
        });
        match (listed, failure) {
            (_, Some(err)) => Err(err),
            (Err(errno), None) => Err(sys(path, errno)),
            (Ok(_), None) => Ok(()),
        }
    }

    /// Copies entry `name` of `src` into `dst`; one that vanished or
    /// changed type meanwhile, or lies on another mount, is skipped.
    fn entry(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        path: &str,
        depth: usize,
    ) -> Result<(), CopyError> {
        let at = |errno| sys(path, errno);
        let st = match fstatat(src, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return self.skip(),
            Err(errno) => return Err(at(errno)),
        };
        if st.st_dev != self.dev {
            return self.skip();
        }
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        match kind {
            SFlag::S_IFDIR => {
                if depth + 1 >= MAX_DEPTH {
                    return Err(CopyError::TooDeep {
                        path: path.to_owned(),
                    });
                }
                let from = match open_same(src, name, OFlag::O_DIRECTORY, &st) {
                    Ok(Some(from)) => from,
                    Ok(None) => return self.skip(),
                    Err(errno) => return Err(at(errno)),
                };
                mkdirat(dst, name, Mode::from_bits_truncate(0o700)).map_err(at)?;
                let to = beneath::open_dir(dst, name).map_err(at)?;
                self.directory(from.as_fd(), to.as_fd(), path, depth + 1)?;
                attributes(from.as_fd(), to.as_fd(), &st).map_err(at)?;
            }
            SFlag::S_IFREG => {
                let from = match open_same(src, name, OFlag::O_RDONLY, &st) {
                    Ok(Some(from)) => from,
                    Ok(None) => return self.skip(),
                    Err(errno) => return Err(at(errno)),
                };
                let to = beneath::open_at(
                    dst,
                    name,
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
                    Mode::from_bits_truncate(0o600),
                    Mounts::Stay,
                )
                .map_err(at)?;
                if file_contents(&from, &to).map_err(at)? {
                    Progress::add(&self.progress.reflinked, 1);
                }
                Progress::add(&self.progress.bytes, u64::try_from(st.st_size).unwrap_or(0));
                attributes(from.as_fd(), to.as_fd(), &st).map_err(at)?;
            }
            SFlag::S_IFLNK => {
                let target = match readlinkat(src, name) {
                    Ok(target) => target,
                    Err(Errno::ENOENT | Errno::EINVAL) => return self.skip(),
                    Err(errno) => return Err(at(errno)),
                };
                symlinkat(target.as_os_str(), dst, name).map_err(at)?;
                entry_attributes(dst, name, &st, false).map_err(at)?;
            }
            _ => {
                let perm = Mode::from_bits_truncate(st.st_mode & 0o7777);
                mknodat(dst, name, kind, perm, st.st_rdev).map_err(at)?;
                entry_attributes(dst, name, &st, true).map_err(at)?;
            }
        }
        Progress::add(&self.progress.entries, 1);
        Ok(())
    }

    fn skip(&self) -> Result<(), CopyError> {
        Progress::add(&self.progress.skipped, 1);
        Ok(())
    }
}

/// Opens entry `name` of `dir` (without following a link or entering a
/// mount, and without blocking on a FIFO swapped in) if it is still the
/// file `st` describes.
fn open_same(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: OFlag,
    st: &FileStat,
) -> nix::Result<Option<OwnedFd>> {
    let opened = beneath::open_at(
        dir,
        name,
        flags | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK,
        Mode::empty(),
        Mounts::Stay,
    );
    let fd = match opened {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR) => return Ok(None),
        Err(errno) => return Err(errno),
    };
    let now = fstat(&fd)?;
    Ok((now.st_ino == st.st_ino && now.st_mode == st.st_mode).then_some(fd))
}

/// Gives the open file `to` the owner, mode, extended attributes and times
/// of `from` (whose status is `st`).
fn attributes(from: BorrowedFd<'_>, to: BorrowedFd<'_>, st: &FileStat) -> nix::Result<()> {
    fchown(
        to,
        Some(Uid::from_raw(st.st_uid)),
        Some(Gid::from_raw(st.st_gid)),
    )?;
    // After the owner: a change of owner clears the set-id bits.
    fchmod(to, Mode::from_bits_truncate(st.st_mode & 0o7777))?;
    xattrs(from, to)?;
    futimens(to, &atime(st), &mtime(st))
}

/// Gives entry `name` of `dir` (a link or a special file, which cannot be
/// opened to be changed) the owner, mode (unless a link) and times of `st`.
fn entry_attributes(
    dir: BorrowedFd<'_>,
    name: &CStr,
    st: &FileStat,
    with_mode: bool,
) -> nix::Result<()> {
    fchownat(
        dir,
        name,
        Some(Uid::from_raw(st.st_uid)),
        Some(Gid::from_raw(st.st_gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    if with_mode {
        nix::sys::stat::fchmodat(
            dir,
            name,
            Mode::from_bits_truncate(st.st_mode & 0o7777),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )?;
    }
    utimensat(
        dir,
        name,
        &atime(st),
        &mtime(st),
        UtimensatFlags::NoFollowSymlink,
    )
}

fn atime(st: &FileStat) -> TimeSpec {
    TimeSpec::new(st.st_atime, st.st_atime_nsec)
}

fn mtime(st: &FileStat) -> TimeSpec {
    TimeSpec::new(st.st_mtime, st.st_mtime_nsec)
}

/// Copies the extended attributes of `from` to `to` (names and values up
/// to [`XATTR_MAX`] bytes each; larger ones are beyond what ext4 and XFS
/// store in practice and are left out).
fn xattrs(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> nix::Result<()> {
    let mut names = vec![0u8; XATTR_MAX];
    // SAFETY: the buffer is XATTR_MAX bytes long.
    let len = unsafe { libc::flistxattr(from.as_raw_fd(), names.as_mut_ptr().cast(), names.len()) };
    let len = match Errno::result(len) {
        Ok(len) => len as usize,
        Err(Errno::ENOTSUP | Errno::ERANGE) => return Ok(()),
        Err(errno) => return Err(errno),
    };
    let mut value = vec![0u8; XATTR_MAX];
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::ffi::CString::new(name) else {
            continue;
        };
        // SAFETY: `name` is NUL-terminated and the buffer XATTR_MAX bytes long.
        let got = unsafe {
            libc::fgetxattr(
                from.as_raw_fd(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        let got = match Errno::result(got) {
            Ok(got) => got as usize,
            Err(Errno::ENODATA | Errno::ERANGE) => continue,
            Err(errno) => return Err(errno),
        };
        // SAFETY: `name` is NUL-terminated and `got` bytes of `value` are set.
        let set = unsafe {
            libc::fsetxattr(to.as_raw_fd(), name.as_ptr(), value.as_ptr().cast(), got, 0)
        };
        match Errno::result(set) {
            Ok(_) | Err(Errno::ENOTSUP) => {}
            Err(errno) => return Err(errno),
        }
    }
    Ok(())
}
