//! Bind mounts of volumes onto targets, unmounts, the kernel's mount table,
//! and looking at host paths (mount roots) the way mounting needs.
//!
//! The kernel is the truth about what is mounted: nothing here caches it.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sys::stat::SFlag;

use crate::error::{Error, Result, SysContext};
use crate::failpoint;

/// How a bind mount is restricted after it is made.
#[derive(Clone, Copy, Debug)]
pub struct BindPolicy {
    pub read_only: bool,
    /// Flags from the request's allowlisted `mount_flags`.
    pub extra: MsFlags,
    /// Keep device nodes usable (no `nodev`): only when the target is the
    /// device itself (raw block access, hostPath CharDevice/BlockDevice).
    pub devices: bool,
}

/// What `statx` says about a path, without following a final symlink.
#[derive(Clone, Copy, Debug)]
pub struct PathState {
    pub file_type: SFlag,
    /// The path is the root of a mount.
    pub mount_root: bool,
    pub dev: u64,
    pub ino: u64,
}

/// Looks at `path` (absolute) with statx; `None` when it does not exist.
pub fn path_state(path: &Path) -> nix::Result<Option<PathState>> {
    let path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL)?;
    statx_at(libc::AT_FDCWD, &path)
}

/// Looks at entry `name` of directory `dir` with statx, without following
/// a symlink there; `None` when it does not exist.
pub fn entry_state(dir: &impl AsRawFd, name: &CStr) -> nix::Result<Option<PathState>> {
    statx_at(dir.as_raw_fd(), name)
}

fn statx_at(dir: RawFd, path: &CStr) -> nix::Result<Option<PathState>> {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: path is NUL-terminated and stx points to writable memory of the right size.
    let rc = unsafe {
        libc::statx(
            dir,
            path.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_SYNC_AS_STAT,
            libc::STATX_TYPE | libc::STATX_INO,
            stx.as_mut_ptr(),
        )
    };
    match Errno::result(rc) {
        Ok(_) => {}
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    }
    // SAFETY: statx succeeded, so it filled the struct.
    let stx = unsafe { stx.assume_init() };
    let mount_flag = u64::from(libc::STATX_ATTR_MOUNT_ROOT as u32);
    Ok(Some(PathState {
        file_type: SFlag::from_bits_truncate(u32::from(stx.stx_mode)) & SFlag::S_IFMT,
        mount_root: stx.stx_attributes_mask & mount_flag != 0
            && stx.stx_attributes & mount_flag != 0,
        dev: nix::sys::stat::makedev(u64::from(stx.stx_dev_major), u64::from(stx.stx_dev_minor)),
        ino: stx.stx_ino,
    }))
}

/// `/proc/self/fd/N`: a path naming exactly the file an fd holds, for mount(2).
pub fn fd_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Per-mount flags a publish controls, as statvfs(3) reports them.
pub mod flags {
    pub const RDONLY: u64 = libc::ST_RDONLY;
    pub const NOSUID: u64 = libc::ST_NOSUID;
    pub const NODEV: u64 = libc::ST_NODEV;
    pub const NOEXEC: u64 = libc::ST_NOEXEC;
    /// ST_NOSYMFOLLOW (Linux 5.10), which libc does not name.
    pub const NOSYMFOLLOW: u64 = 0x2000;
    /// All of them: what a target's mount is compared on.
    pub const CONTROLLED: u64 = RDONLY | NOSUID | NODEV | NOEXEC | NOSYMFOLLOW;
}

/// The controlled per-mount flags (see [`flags`]) of the mount holding `fd`.
pub fn mount_flags(fd: &impl AsRawFd) -> nix::Result<u64> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: st points to writable memory of the right size.
    Errno::result(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatvfs succeeded, so it filled the struct.
    let st = unsafe { st.assume_init() };
    Ok(st.f_flag & flags::CONTROLLED)
}

/// The controlled flags a publish of `source` with `policy` must end with:
/// nosuid always, nodev unless devices are served, read-only and noexec
/// when asked or when the source's own mount has them, nosymfollow when asked.
pub fn expected_flags(source: &OwnedFd, policy: BindPolicy) -> nix::Result<u64> {
    Ok(flags_for(mount_flags(source)?, policy))
}

/// The controlled flags a publish with `policy` ends with, when the
/// source's own mount has `source_flags`.
pub fn flags_for(source_flags: u64, policy: BindPolicy) -> u64 {
    let inherited = source_flags & (flags::RDONLY | flags::NOEXEC | flags::NOSYMFOLLOW);
    let mut want = inherited | flags::NOSUID;
    if !policy.devices {
        want |= flags::NODEV;
    }
    if policy.read_only {
        want |= flags::RDONLY;
    }
    if policy.extra.contains(MsFlags::MS_NOEXEC) {
        want |= flags::NOEXEC;
    }
    if policy.extra.contains(MS_NOSYMFOLLOW) {
        want |= flags::NOSYMFOLLOW;
    }
    want
}

/// MS_NOSYMFOLLOW, which nix does not name.
pub const MS_NOSYMFOLLOW: MsFlags = MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW);

/// The mount_setattr(2) attributes for `policy` (applied on top of what
/// the source's mount has, which a clone keeps).
fn attributes(policy: BindPolicy) -> libc_mount::MountAttr {
    use libc_mount::*;
    let mut set = ATTR_NOSUID;
    let mut clear = 0;
    if !policy.devices {
        set |= ATTR_NODEV;
    }
    if policy.read_only {
        set |= ATTR_RDONLY;
    }
    let pairs = [
        (MsFlags::MS_NOEXEC, ATTR_NOEXEC),
        (MsFlags::MS_NODIRATIME, ATTR_NODIRATIME),
        (MS_NOSYMFOLLOW, ATTR_NOSYMFOLLOW),
    ];
    for (flag, attr) in pairs {
        if policy.extra.contains(flag) {
            set |= attr;
        }
    }
    // Access-time modes are one field: set one, clear the field first.
    for (flag, mode) in [
        (MsFlags::MS_NOATIME, ATTR_NOATIME),
        (MsFlags::MS_RELATIME, ATTR_RELATIME),
    ] {
        if policy.extra.contains(flag) {
            clear |= ATTR__ATIME;
            set = (set & !ATTR__ATIME) | mode;
        }
    }
    MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    }
}

/// Publishes `source` (a directory, a file or a device node) on `target`
/// (an `O_PATH` fd of the target, whose path is `target_path`) with the new
/// mount API: a detached copy of the source's mount is made
/// (open_tree(OPEN_TREE_CLONE)), restricted as `policy` says
/// (mount_setattr) while nobody can see it, and only then attached onto
/// the target fd (move_mount). No path is resolved, and the target never
/// shows an unrestricted mount, not even after a crash.
pub fn attach(
    volume: &str,
    source: &OwnedFd,
    target: &OwnedFd,
    target_path: &Path,
    policy: BindPolicy,
) -> Result<()> {
    let shown = target_path.display();
    let tree = libc_mount::open_tree_clone(source)
        .context(|| format!("volume {volume}: copy the volume's mount for {shown} (open_tree)"))?;
    let attributes = attributes(policy);
    libc_mount::set_attributes(&tree, &attributes).context(|| {
        format!("volume {volume}: restrict the mount for {shown} (mount_setattr {attributes:?})")
    })?;
    failpoint::hit("publish:restricted");
    libc_mount::move_onto(&tree, target)
        .context(|| format!("volume {volume}: attach the mount onto {shown} (move_mount)"))
}

/// Checks that `mounted`, the root of the mount at `target_path`, has
/// exactly the flags a publish of `source` with `policy` must end with (a
/// kernel that ignored one would otherwise go unnoticed).
pub fn check_flags(
    volume: &str,
    source: &OwnedFd,
    mounted: &OwnedFd,
    target_path: &Path,
    policy: BindPolicy,
) -> Result<()> {
    let shown = target_path.display();
    let want = expected_flags(source, policy)
        .context(|| format!("volume {volume}: statvfs of the volume source"))?;
    let have = mount_flags(mounted).context(|| format!("volume {volume}: statvfs {shown}"))?;
    if have != want {
        return Err(Error::Broken(format!(
            "volume {volume}: the mount at {shown} has flags {have:#x}, not the {want:#x} asked for"
        )));
    }
    Ok(())
}

/// Mounts a new tmpfs with `options` (`key=value` pairs, e.g. size) on the
/// directory `dir`, nosuid and nodev, with the new mount API: the
/// filesystem is made (fsopen, fsconfig), mounted detached with its flags
/// (fsmount) and attached onto `dir`'s fd (move_mount). No path is resolved.
pub fn mount_tmpfs(dir: &OwnedFd, options: &[(&str, String)]) -> nix::Result<()> {
    let context = libc_mount::fs_open(c"tmpfs")?;
    for (key, value) in options {
        let key = CString::new(*key).map_err(|_| Errno::EINVAL)?;
        let value = CString::new(value.as_str()).map_err(|_| Errno::EINVAL)?;
        libc_mount::fs_set(&context, &key, &value)?;
    }
    libc_mount::fs_create(&context)?;
    let tree = libc_mount::fs_mount(&context, libc_mount::ATTR_NOSUID | libc_mount::ATTR_NODEV)?;
    libc_mount::move_onto(&tree, dir)
}

/// Pauses between unmounts of a mount the kernel says is busy; after the
/// last, EBUSY is the answer (about 0.6 s in all).
const BUSY_PAUSES_MS: [u64; 6] = [10, 20, 40, 80, 160, 320];

/// Unmounts the top mount at `path` (not lazily), trying again for a moment
/// while it is busy: a process being started (mkfs and its kin by this
/// driver, anything by anyone) holds copies of every fd its parent had open
/// until it execs, so a mount just let go can be busy for a few
/// milliseconds. A mount still busy after the pauses is EBUSY.
pub fn unmount(path: &Path, flags: nix::mount::MntFlags) -> nix::Result<()> {
    let mut pauses = BUSY_PAUSES_MS.iter();
    loop {
        match nix::mount::umount2(path, flags) {
            Err(Errno::EBUSY) => match pauses.next() {
                Some(&ms) => std::thread::sleep(std::time::Duration::from_millis(ms)),
                None => return Err(Errno::EBUSY),
            },
            done => return done,
        }
    }
}

/// Whether the kernel has the new mount API publishing needs (mount_setattr,
/// the newest of its calls): asked with a bad fd, it says EBADF, not ENOSYS.
pub fn mount_api_available() -> bool {
    // SAFETY: no memory is passed (a null attr with size 0); fd -1 is refused.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            std::ptr::null::<libc::c_void>(),
            0usize,
        )
    };
    Errno::result(rc).err() != Some(Errno::ENOSYS)
}

/// The new mount API's system calls, which neither nix nor libc wrap.
mod libc_mount {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use nix::errno::Errno;

    pub const ATTR_RDONLY: u64 = 0x1;
    pub const ATTR_NOSUID: u64 = 0x2;
    pub const ATTR_NODEV: u64 = 0x4;
    pub const ATTR_NOEXEC: u64 = 0x8;
    pub const ATTR__ATIME: u64 = 0x70;
    pub const ATTR_RELATIME: u64 = 0x0;
    pub const ATTR_NOATIME: u64 = 0x10;
    pub const ATTR_NODIRATIME: u64 = 0x80;
    pub const ATTR_NOSYMFOLLOW: u64 = 0x0020_0000;
    const OPEN_TREE_CLONE: libc::c_uint = 0x1;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

    /// `struct mount_attr` of linux/mount.h.
    #[repr(C)]
    #[derive(Debug)]
    pub struct MountAttr {
        pub attr_set: u64,
        pub attr_clr: u64,
        pub propagation: u64,
        pub userns_fd: u64,
    }

    /// A detached copy of the mount at `source` (just that mount, no submounts).
    pub fn open_tree_clone(source: &OwnedFd) -> nix::Result<OwnedFd> {
        let flags =
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint;
        // SAFETY: the path is a NUL-terminated empty string; the flags are plain bits.
        let fd =
            unsafe { libc::syscall(libc::SYS_open_tree, source.as_raw_fd(), c"".as_ptr(), flags) };
        let fd = Errno::result(fd)?;
        // SAFETY: open_tree returned a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// mount_setattr(2) on the mount `mount` is the root of.
    pub fn set_attributes(mount: &OwnedFd, attr: &MountAttr) -> nix::Result<()> {
        // SAFETY: attr points to a live struct of the size passed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                mount.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH as libc::c_uint,
                attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        Errno::result(rc).map(drop)
    }

    /// A new filesystem context for filesystem type `fs_type` (fsopen).
    pub fn fs_open(fs_type: &std::ffi::CStr) -> nix::Result<OwnedFd> {
        const FSOPEN_CLOEXEC: libc::c_uint = 0x1;
        // SAFETY: fs_type is NUL-terminated.
        let fd = unsafe { libc::syscall(libc::SYS_fsopen, fs_type.as_ptr(), FSOPEN_CLOEXEC) };
        let fd = Errno::result(fd)?;
        // SAFETY: fsopen returned a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Sets option `key` to `value` in a filesystem context (fsconfig).
    pub fn fs_set(
        context: &OwnedFd,
        key: &std::ffi::CStr,
        value: &std::ffi::CStr,
    ) -> nix::Result<()> {
        const FSCONFIG_SET_STRING: libc::c_uint = 1;
        // SAFETY: key and value are NUL-terminated.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                context.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        };
        Errno::result(rc).map(drop)
    }

    /// Makes the filesystem of a configured context (fsconfig CMD_CREATE).
    pub fn fs_create(context: &OwnedFd) -> nix::Result<()> {
        const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
        // SAFETY: no pointers are passed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                context.as_raw_fd(),
                FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_void>(),
                0,
            )
        };
        Errno::result(rc).map(drop)
    }

    /// A detached mount of a created filesystem, with `attributes` (fsmount).
    pub fn fs_mount(context: &OwnedFd, attributes: u64) -> nix::Result<OwnedFd> {
        const FSMOUNT_CLOEXEC: libc::c_uint = 0x1;
        // SAFETY: plain integers only.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                context.as_raw_fd(),
                FSMOUNT_CLOEXEC,
                attributes as libc::c_uint,
            )
        };
        let fd = Errno::result(fd)?;
        // SAFETY: fsmount returned a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Attaches the detached mount `tree` onto `target` (an fd of it).
    pub fn move_onto(tree: &OwnedFd, target: &OwnedFd) -> nix::Result<()> {
        // SAFETY: both paths are NUL-terminated empty strings; fds are open.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                c"".as_ptr(),
                target.as_raw_fd(),
                c"".as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
            )
        };
        Errno::result(rc).map(drop)
    }
}

/// One line of /proc/self/mountinfo, reduced to what the driver needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Device number of the mounted filesystem.
    pub dev: u64,
    /// The directory of that filesystem that is mounted here.
    pub root: PathBuf,
    pub mount_point: PathBuf,
}

/// The mount table, indexed the two ways volumes are found in it.
#[derive(Debug, Default)]
pub struct MountIndex {
    /// Mounts whose root lies in a `…/volumes/<name>` directory, under that
    /// directory's path within its filesystem (once per such component).
    by_volume_dir: HashMap<PathBuf, Vec<MountEntry>>,
    /// Every mount, by the device of its filesystem.
    by_device: HashMap<u64, Vec<MountEntry>>,
}

impl MountIndex {
    /// Reads and indexes this process's mount table (one pass).
    pub fn read() -> Result<Self> {
        let mut index = MountIndex::default();
        for entry in mount_table()? {
            let parts: Vec<_> = entry.root.iter().collect();
            for (at, _) in parts.iter().enumerate().filter(|(_, p)| **p == "volumes") {
                if at + 1 < parts.len() {
                    let dir: PathBuf = parts[..=at + 1].iter().collect();
                    index
                        .by_volume_dir
                        .entry(dir)
                        .or_default()
                        .push(entry.clone());
                }
            }
            index.by_device.entry(entry.dev).or_default().push(entry);
        }
        Ok(index)
    }

    /// Mounts of the directory `dir` (a path within its filesystem, ending
    /// in `volumes/<id>`) or of anything inside it, on any device.
    pub fn of_volume_dir(&self, dir: &Path) -> &[MountEntry] {
        self.by_volume_dir.get(dir).map_or(&[], Vec::as_slice)
    }

    /// Where the directory `path` (canonical) lies within its filesystem,
    /// as mount roots name it: the root of the mount holding it, joined with
    /// the rest of the path.
    pub fn root_of(path: &Path) -> Result<PathBuf> {
        let table = mount_table()?;
        let holder = table
            .iter()
            .filter(|m| path.starts_with(&m.mount_point))
            .max_by_key(|m| m.mount_point.as_os_str().len())
            .ok_or_else(|| Error::Broken(format!("no mount holds {}", path.display())))?;
        let rest = path
            .strip_prefix(&holder.mount_point)
            .expect("prefix checked");
        Ok(holder.root.join(rest))
    }

    /// Mounts of the filesystem on device `dev`.
    pub fn of_device(&self, dev: u64) -> &[MountEntry] {
        self.by_device.get(&dev).map_or(&[], Vec::as_slice)
    }
}

/// Room made for /proc/self/mountinfo before reading it: the kernel reports
/// its size as 0, so a read sized by that starts at 32 bytes and doubles.
const MOUNTINFO_CHUNK: usize = 64 << 10;

/// The device of the filesystem mounted on top at `path`, as the mount
/// table says (which asks nothing of the filesystem, so it answers for one
/// that fails every access); `None` when nothing is mounted there.
pub fn top_mount_dev(path: &Path) -> Result<Option<u64>> {
    Ok(mount_table()?
        .into_iter()
        .rfind(|m| m.mount_point == path)
        .map(|m| m.dev))
}

/// Reads this process's mount table.
pub fn mount_table() -> Result<Vec<MountEntry>> {
    let read = || -> std::io::Result<String> {
        let mut text = String::with_capacity(MOUNTINFO_CHUNK);
        std::fs::File::open("/proc/self/mountinfo")?.read_to_string(&mut text)?;
        Ok(text)
    };
    let text = read().map_err(|e| Error::failed("read /proc/self/mountinfo", e))?;
    Ok(text.lines().filter_map(parse_line).collect())
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let mut fields = line.split(' ');
    let (_id, _parent) = (fields.next()?, fields.next()?);
    let (major, minor) = fields.next()?.split_once(':')?;
    let root = unescape(fields.next()?);
    let mount_point = unescape(fields.next()?);
    Some(MountEntry {
        dev: nix::sys::stat::makedev(major.parse().ok()?, minor.parse().ok()?),
        root,
        mount_point,
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space and so on).
fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_state_sees_types_and_mount_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = path_state(tmp.path()).unwrap().unwrap();
        assert_eq!(dir.file_type, SFlag::S_IFDIR);
        assert!(!dir.mount_root);
        assert!(path_state(&tmp.path().join("none")).unwrap().is_none());
        assert!(
            path_state(std::path::Path::new("/proc"))
                .unwrap()
                .unwrap()
                .mount_root
        );
    }

    #[test]
    fn mountinfo_lines_parse_with_escapes() {
        let line =
            "36 35 98:0 /pool/volumes/vol-1 /var/lib/k\\040x ro,nosuid shared:1 - ext4 /dev/vda rw";
        let e = parse_line(line).unwrap();
        assert_eq!(e.dev, nix::sys::stat::makedev(98, 0));
        assert_eq!(e.root, PathBuf::from("/pool/volumes/vol-1"));
        assert_eq!(e.mount_point, PathBuf::from("/var/lib/k x"));
        assert!(parse_line("garbage").is_none());
        let index = MountIndex::read().unwrap();
        assert!(
            index
                .of_volume_dir(Path::new("/volumes/vol-none"))
                .is_empty()
        );
        assert_eq!(
            MountIndex::root_of(Path::new("/proc/self")).unwrap(),
            PathBuf::from("/self")
        );
        assert!(
            !index
                .of_device(nix::sys::stat::stat("/proc").unwrap().st_dev)
                .is_empty()
        );
        assert!(!mount_table().unwrap().is_empty());
    }
}
