//! File operations confined beneath a directory fd.
//!
//! Every open goes through [`open_at`]: `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`, so no symlink is followed
//! and no path escapes the directory; with [`Mounts::Stay`] (the default of
//! every walk here) also `RESOLVE_NO_XDEV`, so none crosses into another
//! mount.

use std::ffi::{CStr, CString};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2, renameat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, fsync, unlinkat};

use crate::failpoint;

/// How a directory is opened to read its entries.
const DIRECTORY: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW);

fn confined() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
        | ResolveFlag::RESOLVE_NO_XDEV
}

/// Whether an open beneath a directory may enter another mount on its way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mounts {
    /// Never (`RESOLVE_NO_XDEV`): within the directory's own filesystem.
    Stay,
    /// Yes: a target that is a mount point is opened at the mount's root.
    Enter,
}

/// Opens `name` (a relative path) beneath directory `dir` with `flags`
/// (`O_CLOEXEC` added; `mode` for a file it creates):
/// never above `dir`, never through a symlink, magic links included, and
/// into another mount only as `mounts` says. The one way the driver opens
/// a path beneath a directory it holds.
pub fn open_at<P: ?Sized + nix::NixPath>(
    dir: impl AsFd,
    name: &P,
    flags: OFlag,
    mode: Mode,
    mounts: Mounts,
) -> nix::Result<OwnedFd> {
    let resolve = match mounts {
        Mounts::Stay => confined(),
        Mounts::Enter => confined() - ResolveFlag::RESOLVE_NO_XDEV,
    };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(mode)
        .resolve(resolve);
    openat2(dir, name, how)
}

/// Opens directory `path` (`O_PATH`), reached from directory `root` (which
/// it lies beneath, else EXDEV) without a symlink, whatever mounts lie
/// between.
pub fn open_without_symlinks(root: &Path, path: &Path) -> nix::Result<OwnedFd> {
    let relative = path.strip_prefix(root).map_err(|_| Errno::EXDEV)?;
    let root = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    if relative.as_os_str().is_empty() {
        return Ok(root);
    }
    open_at(
        &root,
        relative,
        OFlag::O_PATH | OFlag::O_DIRECTORY,
        Mode::empty(),
        Mounts::Enter,
    )
}

/// Opens the directory `name` beneath `parent`.
pub fn open_dir<P: ?Sized + nix::NixPath>(parent: impl AsFd, name: &P) -> nix::Result<OwnedFd> {
    open_at(parent, name, DIRECTORY, Mode::empty(), Mounts::Stay)
}

/// Opens the directory entry `name` of `parent` even when a filesystem is
/// mounted on it (a memory volume's tmpfs). `name` is one component, so
/// that is the only mount crossed; symlinks are still refused.
pub fn open_mount_root(parent: impl AsFd, name: &str) -> nix::Result<OwnedFd> {
    if name.contains('/') {
        return Err(Errno::EINVAL);
    }
    open_at(parent, name, DIRECTORY, Mode::empty(), Mounts::Enter)
}

/// A directory whose entry changes can be made durable.
pub trait SyncDir: AsFd {
    /// Makes every change to the directory's entries made so far durable.
    fn sync(&self) -> nix::Result<()> {
        fsync(self.as_fd())
    }
}

impl SyncDir for OwnedFd {}
impl SyncDir for BorrowedFd<'_> {}

/// Creates directory `name` with exactly `mode` (umask ignored) if it is
/// missing, durably, and opens it. The flag is true when this call created
/// it; an existing non-directory is ENOTDIR.
pub fn ensure_dir(
    parent: &(impl SyncDir + ?Sized),
    name: &str,
    mode: u32,
) -> nix::Result<(OwnedFd, bool)> {
    let fd = parent.as_fd();
    match mkdirat(fd, name, Mode::from_bits_truncate(mode)) {
        Ok(()) => {
            let dir = open_dir(fd, name)?;
            fchmod(&dir, Mode::from_bits_truncate(mode))?;
            parent.sync()?;
            Ok((dir, true))
        }
        Err(Errno::EEXIST) => Ok((open_dir(fd, name)?, false)),
        Err(e) => Err(e),
    }
}

/// Replaces file `name` in `dir` with `bytes` atomically and durably:
/// temp file, fsync, rename over, fsync of the directory.
pub fn write_atomic(dir: &(impl SyncDir + ?Sized), name: &str, bytes: &[u8]) -> nix::Result<()> {
    let fd = dir.as_fd();
    let temp = format!(".{name}.tmp");
    let mut file = std::fs::File::from(open_at(
        fd,
        temp.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW,
        Mode::from_bits_truncate(0o600),
        Mounts::Stay,
    )?);
    let written = file
        .write_all(bytes)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        .and_then(|()| fsync(&file))
        .and_then(|()| {
            failpoint::hit("write:temp-synced");
            renameat(fd, temp.as_str(), fd, name)
        });
    if let Err(errno) = written {
        // A full disk must not leave half a file behind.
        unlinkat(fd, temp.as_str(), UnlinkatFlags::NoRemoveDir).ok();
        return Err(errno);
    }
    failpoint::hit("write:renamed");
    dir.sync()
}

/// Creates the empty file `name` in `dir` if it is missing (a marker),
/// durably.
pub fn create_empty(dir: &(impl SyncDir + ?Sized), name: &str) -> nix::Result<()> {
    drop(open_at(
        dir.as_fd(),
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW,
        Mode::from_bits_truncate(0o600),
        Mounts::Stay,
    )?);
    dir.sync()
}

/// Reads the regular file `name` beneath `dir`, up to `limit` bytes (EFBIG
/// when it holds more; EINVAL when it is not a regular file: a FIFO, a
/// socket or a device is never read, and opening one never blocks). No size
/// is asked first: a small file takes one read and the read that finds its
/// end.
pub fn read_file(dir: impl AsFd, name: &CStr, limit: usize) -> nix::Result<Vec<u8>> {
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW;
    // A unix socket cannot be opened at all (ENXIO): not a regular file either.
    let fd = open_at(dir, name, flags, Mode::empty(), Mounts::Stay).map_err(|e| match e {
        Errno::ENXIO => Errno::EINVAL,
        e => e,
    })?;
    if SFlag::from_bits_truncate(fstat(&fd)?.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(Errno::EINVAL);
    }
    let file = std::fs::File::from(fd);
    let mut bytes = Vec::with_capacity(limit.min(4096) + 1);
    std::io::Read::read_to_end(
        &mut std::io::Read::take(&file, limit as u64 + 1),
        &mut bytes,
    )
    .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    if bytes.len() > limit {
        return Err(Errno::EFBIG);
    }
    Ok(bytes)
}

/// Removes file `name` from `dir` (missing is fine) and makes that durable.
pub fn remove_file(dir: &(impl SyncDir + ?Sized), name: &str) -> nix::Result<()> {
    match unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => dir.sync(),
        Err(e) => Err(e),
    }
}

/// An entry of a directory, as its listing shows it.
pub struct Entry {
    pub name: CString,
    /// The type, when the filesystem tells it without a stat.
    pub kind: Option<Type>,
    pub inode: u64,
}

/// Lists the entries of a directory, without `.` and `..`. Only for
/// directories the driver fills itself (`meta/`, `volumes/`): a tenant's
/// directory is read with [`for_each_entry`], never collected.
pub fn list(dir: impl AsFd) -> nix::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for_each_entry(dir, |name, kind, inode| {
        entries.push(Entry {
            name: name.to_owned(),
            kind,
            inode,
        });
        Ok(true)
    })?;
    Ok(entries)
}

/// Hands each entry of a directory (without `.` and `..`) to `visit` as it
/// is read, and stops when `visit` answers false (then false is returned).
/// Memory stays bounded whatever the directory holds: readdir(3) fills one
/// buffer of fixed size (32 KiB, at most 1 MiB for filesystems that ask for
/// more) per getdents64 call and hands its entries out one at a time, so a
/// directory of a million entries never becomes a list. `visit` may remove
/// the entry it is given.
pub fn for_each_entry(
    dir: impl AsFd,
    mut visit: impl FnMut(&CStr, Option<Type>, u64) -> nix::Result<bool>,
) -> nix::Result<bool> {
    let mut listing = Dir::from_fd(open_dir(dir, ".")?)?;
    for entry in listing.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." && !visit(name, entry.file_type(), entry.ino())? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The deepest directory level a walk holds open at once (one fd per level).
pub const MAX_DEPTH: usize = 64;

/// Removes entry `name` of directory `top` and everything under it; missing
/// is fine. Symlinks are removed, never followed. A mount found inside is
/// never entered: the rest is removed, and the call ends with EBUSY so that
/// the caller knows something stays. Subtrees deeper than [`MAX_DEPTH`] are
/// first moved up into `top` and removed in turn, so a hostile tree of any
/// depth costs a bounded number of fds and stack; entries are unlinked as
/// they are read, so a directory of any width costs bounded memory.
pub fn remove_tree(top: impl AsFd, name: &CStr) -> nix::Result<()> {
    let top = top.as_fd();
    let mut walk = Removal {
        top,
        spills: Spills::new(),
        held_by_mount: false,
        restarts: REMOVE_RESTARTS,
    };
    walk.remove(top, name, 0)?;
    // Spilled subtrees may spill again; each is an entry of `top`, named
    // by its number, so what is pending is a count, not a list.
    let mut next = 0;
    while next < walk.spills.made {
        let spilled = walk.spills.name(next);
        walk.remove(top, &spilled, 0)?;
        next += 1;
    }
    if walk.held_by_mount {
        Err(Errno::EBUSY)
    } else {
        Ok(())
    }
}

struct Removal<'a> {
    top: BorrowedFd<'a>,
    spills: Spills,
    held_by_mount: bool,
    /// Restarts left (see [`REMOVE_RESTARTS`]).
    restarts: usize,
}

/// The names deep subtrees of one removal are moved to: `deep-<token>-<n>`
/// for n = 0, 1, …, with a token no other removal of this process shares.
struct Spills {
    token: String,
    made: u64,
}

impl Spills {
    fn new() -> Self {
        static REMOVALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = REMOVALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Spills {
            token: format!("{nanos}-{n}"),
            made: 0,
        }
    }

    fn name(&self, n: u64) -> CString {
        CString::new(format!("deep-{}-{n}", self.token)).expect("no NUL")
    }
}

/// How often a removal starts an entry over, in all, when the tree changes
/// under it.
const REMOVE_RESTARTS: usize = 64;

impl Removal<'_> {
    /// Removes `name` from `parent`. A tree that changes while it is removed
    /// (an entry swapped between a directory and a symlink, a file appearing)
    /// makes this entry start over, within one budget for the whole removal
    /// (then EAGAIN); whatever it becomes, a symlink is only ever unlinked.
    fn remove(&mut self, parent: BorrowedFd<'_>, name: &CStr, depth: usize) -> nix::Result<()> {
        loop {
            match self.remove_once(parent, name, depth) {
                Err(Errno::ELOOP | Errno::ENOTDIR | Errno::EISDIR | Errno::ENOTEMPTY)
                    if self.restarts > 0 =>
                {
                    self.restarts -= 1;
                }
                Err(Errno::ELOOP | Errno::ENOTDIR | Errno::EISDIR | Errno::ENOTEMPTY) => {
                    return Err(Errno::EAGAIN);
                }
                other => return other,
            }
        }
    }

    fn remove_once(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        depth: usize,
    ) -> nix::Result<()> {
        let is_dir = match fstatat(parent, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        };
        if !is_dir {
            return unlink_missing_ok(parent, name, UnlinkatFlags::NoRemoveDir);
        }
        if depth == MAX_DEPTH {
            return self.spill(parent, name);
        }
        let dir = match open_dir(parent, name) {
            Ok(dir) => dir,
            Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::EXDEV) => {
                self.held_by_mount = true;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        for_each_entry(&dir, |child, kind, _| {
            match kind {
                Some(Type::Directory) | None => self.remove(dir.as_fd(), child, depth + 1)?,
                Some(_) => match unlink_missing_ok(&dir, child, UnlinkatFlags::NoRemoveDir) {
                    Err(Errno::EISDIR) => self.remove(dir.as_fd(), child, depth + 1)?,
                    other => other?,
                },
            }
            Ok(true)
        })?;
        match unlink_missing_ok(parent, name, UnlinkatFlags::RemoveDir) {
            Err(Errno::ENOTEMPTY | Errno::EBUSY) if self.held_by_mount => Ok(()),
            other => other,
        }
    }

    /// Moves a deep subtree up into `top` to be removed from there.
    fn spill(&mut self, parent: BorrowedFd<'_>, name: &CStr) -> nix::Result<()> {
        let moved = self.spills.name(self.spills.made);
        renameat(parent, name, self.top, moved.as_c_str())?;
        self.spills.made += 1;
        Ok(())
    }
}

fn unlink_missing_ok(dir: impl AsFd, name: &CStr, flag: UnlinkatFlags) -> nix::Result<()> {
    match unlinkat(dir.as_fd(), name, flag) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Space and inodes taken by a directory tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of allocated blocks (what the files really take on disk).
    pub bytes: u64,
    /// Files, directories and links, the root included.
    pub inodes: u64,
}

/// Adds up the blocks and inodes under `dir`, never following a symlink nor
/// crossing into another mount. Directories deeper than [`MAX_DEPTH`] are
/// counted themselves but not entered, which bounds the fds a walk holds.
pub fn usage(dir: impl AsFd) -> nix::Result<Usage> {
    usage_until(dir, None).map(|(usage, _)| usage)
}

/// [`usage`], stopping at `deadline` if one is given: the flag is false when
/// the walk stopped early, and the usage then a lower bound.
pub fn usage_until(dir: impl AsFd, deadline: Option<Instant>) -> nix::Result<(Usage, bool)> {
    let root = fstat(dir.as_fd())?;
    let mut walk = UsageWalk {
        total: Usage {
            bytes: allocated(&root),
            inodes: 1,
        },
        deadline,
    };
    let complete = walk.add(dir.as_fd(), 1)?;
    Ok((walk.total, complete))
}

struct UsageWalk {
    total: Usage,
    deadline: Option<Instant>,
}

impl UsageWalk {
    /// Counts the entries of `dir` as they are read; false when the
    /// deadline stopped it.
    fn add(&mut self, dir: BorrowedFd<'_>, depth: usize) -> nix::Result<bool> {
        for_each_entry(dir, |name, _, _| {
            if self.total.inodes.is_multiple_of(1024)
                && self.deadline.is_some_and(|d| Instant::now() >= d)
            {
                return Ok(false);
            }
            let st = match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => return Ok(true),
                Err(e) => return Err(e),
            };
            self.total.bytes += allocated(&st);
            self.total.inodes += 1;
            let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
            if is_dir && depth < MAX_DEPTH {
                match open_dir(dir, name) {
                    Ok(child) => return self.add(child.as_fd(), depth + 1),
                    // A mount point or an entry removed meanwhile: not part of this tree.
                    Err(Errno::EXDEV | Errno::ENOENT) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(true)
        })
    }
}

fn allocated(st: &nix::sys::stat::FileStat) -> u64 {
    u64::try_from(st.st_blocks).unwrap_or(0) * 512
}

/// The identity of a file: device and inode.
pub fn identity(fd: impl AsFd) -> nix::Result<(u64, u64)> {
    let st = fstat(fd.as_fd())?;
    Ok((st.st_dev, st.st_ino))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn open(path: &std::path::Path) -> OwnedFd {
        nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap()
    }

    #[test]
    fn symlinks_and_dotdot_do_not_escape() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), tmp.path().join("link")).unwrap();
        let root = open(tmp.path());
        // ELOOP or ENOTDIR depending on which check the kernel meets first.
        assert!(open_dir(&root, "link").is_err());
        assert_eq!(open_dir(&root, "../").unwrap_err(), Errno::EXDEV);
        assert_eq!(open_dir(&root, "/etc").unwrap_err(), Errno::EXDEV);
    }

    #[test]
    fn ensure_dir_sets_the_exact_mode_once() {
        let tmp = tempfile::tempdir().unwrap();
        let root = open(tmp.path());
        assert!(ensure_dir(&root, "v", 0o755).unwrap().1);
        let meta = std::fs::metadata(tmp.path().join("v")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
        std::fs::set_permissions(tmp.path().join("v"), PermissionsExt::from_mode(0o2770)).unwrap();
        assert!(!ensure_dir(&root, "v", 0o755).unwrap().1);
        let meta = std::fs::metadata(tmp.path().join("v")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o2770, "mode reset");
        std::fs::write(tmp.path().join("f"), b"").unwrap();
        assert_eq!(ensure_dir(&root, "f", 0o755).unwrap_err(), Errno::ENOTDIR);
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let tmp = tempfile::tempdir().unwrap();
        let root = open(tmp.path());
        write_atomic(&root, "r.json", b"one").unwrap();
        write_atomic(&root, "r.json", b"two").unwrap();
        assert_eq!(read_file(&root, c"r.json", 3).unwrap(), b"two");
        assert_eq!(read_file(&root, c"r.json", 2), Err(Errno::EFBIG));
        let names: Vec<_> = list(&root).unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, vec![c"r.json".to_owned()]);
        remove_file(&root, "r.json").unwrap();
        remove_file(&root, "r.json").unwrap();
        assert!(list(&root).unwrap().is_empty());
    }

    #[test]
    fn remove_tree_deletes_links_not_their_targets() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tempfile::tempdir().unwrap();
        std::fs::write(victim.path().join("keep"), b"precious").unwrap();
        let tree = tmp.path().join("t");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/file"), b"x").unwrap();
        symlink(victim.path(), tree.join("a/escape")).unwrap();
        symlink(victim.path().join("keep"), tree.join("filelink")).unwrap();
        let root = open(tmp.path());
        remove_tree(&root, c"t").unwrap();
        assert!(!tree.exists());
        assert_eq!(
            std::fs::read(victim.path().join("keep")).unwrap(),
            b"precious"
        );
        remove_tree(&root, c"t").unwrap();
    }

    /// Makes `dir/d/d/…` `levels` deep through fds (the path is too long for one call).
    fn deep_tree(dir: &std::path::Path, levels: usize) {
        let mut fd = open(dir);
        for _ in 0..levels {
            mkdirat(&fd, "d", Mode::from_bits_truncate(0o755)).unwrap();
            fd = open_dir(&fd, "d").unwrap();
        }
        std::fs::write(crate::mounts::fd_path(&fd) + "/leaf", b"x").unwrap();
    }

    #[test]
    fn trees_of_any_depth_are_removed_and_measured_with_bounded_fds() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("t")).unwrap();
        deep_tree(&tmp.path().join("t"), 5000);
        let root = open(tmp.path());
        let t = open_dir(&root, "t").unwrap();
        let u = usage(&t).unwrap();
        assert_eq!(u.inodes, MAX_DEPTH as u64 + 1, "counted to the depth limit");
        remove_tree(&root, c"t").unwrap();
        assert!(
            list(&root).unwrap().is_empty(),
            "spilled subtrees removed too"
        );
    }

    #[test]
    fn a_walk_past_its_deadline_stops_with_a_lower_bound() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..3000 {
            std::fs::write(tmp.path().join(i.to_string()), b"").unwrap();
        }
        let dir = open(tmp.path());
        let (partial, complete) = usage_until(&dir, Some(Instant::now())).unwrap();
        assert!(!complete);
        assert!(partial.inodes < 3001, "{partial:?}");
        let (full, complete) = usage_until(&dir, None).unwrap();
        assert!(complete);
        assert_eq!(full.inodes, 3001);
    }

    #[test]
    fn usage_counts_blocks_and_inodes() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        std::fs::write(tmp.path().join("d/f"), vec![1u8; 64 * 1024]).unwrap();
        symlink("/etc", tmp.path().join("l")).unwrap();
        let u = usage(open(tmp.path())).unwrap();
        assert_eq!(u.inodes, 4);
        assert!(u.bytes >= 64 * 1024, "{u:?}");
    }
}
