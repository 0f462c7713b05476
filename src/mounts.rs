//! Bind mounts of volumes onto targets, unmounts, the kernel's mount table,
//! and looking at host paths (mount roots) the way mounting needs.
//!
//! The kernel is the truth about what is mounted: nothing here caches it.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::SFlag;
use nix::sys::statvfs::{FsFlags, fstatvfs};

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
pub fn path_state(path: &std::path::Path) -> nix::Result<Option<PathState>> {
    let path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL)?;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: path is NUL-terminated and stx points to writable memory of the right size.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
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

/// Bind-mounts `source` (a directory or a file) onto `target` (an fd opened
/// on the target path, which is `target_path`), then [`restrict`]s it. If
/// the restriction fails the bind is taken down again.
pub fn bind(
    volume: &str,
    source: &OwnedFd,
    target: &OwnedFd,
    target_path: &Path,
    policy: BindPolicy,
) -> Result<()> {
    let shown = target_path.display();
    mount(
        Some(fd_path(source).as_str()),
        fd_path(target).as_str(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .context(|| format!("volume {volume}: bind mount onto {shown}"))?;
    failpoint::hit("publish:bound");
    if let Err(err) = restrict(volume, source, target_path, policy) {
        if let Err(errno) = umount2(
            target_path,
            MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW,
        ) {
            tracing::error!(volume, target = %shown, %errno, "could not take down a bind mount whose remount failed");
        }
        return Err(err);
    }
    Ok(())
}

/// Remounts the bind mount at `target_path` with nosuid, nodev (unless the
/// policy keeps devices), the source's own noexec/atime flags, the extra
/// flags and, if read-only, MS_RDONLY (the first MS_BIND ignores all of
/// these). Also finishes a bind left half-done.
pub fn restrict(
    volume: &str,
    source: &OwnedFd,
    target_path: &Path,
    policy: BindPolicy,
) -> Result<()> {
    let inherited = inherited_flags(source)
        .context(|| format!("volume {volume}: statvfs of the volume source"))?;
    let mut flags =
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | inherited | policy.extra;
    if !policy.devices {
        flags |= MsFlags::MS_NODEV;
    }
    if policy.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(None::<&str>, target_path, None::<&str>, flags, None::<&str>).context(|| {
        format!(
            "volume {volume}: remount {} with {flags:?}",
            target_path.display()
        )
    })
}

/// Per-mount flags of the filesystem a volume lives on that a bind must keep.
fn inherited_flags(source: &OwnedFd) -> nix::Result<MsFlags> {
    let have = fstatvfs(source)?.flags();
    let pairs = [
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
    ];
    Ok(pairs
        .into_iter()
        .filter(|(st, _)| have.contains(*st))
        .fold(MsFlags::empty(), |acc, (_, ms)| acc | ms))
}

/// Unmounts the top mount at `target` without following a symlink there.
pub fn unmount(volume: &str, target: &Path) -> Result<()> {
    umount2(target, MntFlags::UMOUNT_NOFOLLOW)
        .context(|| format!("volume {volume}: unmount {}", target.display()))
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
            .ok_or_else(|| Error::Internal(format!("no mount holds {}", path.display())))?;
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

/// Reads this process's mount table.
pub fn mount_table() -> Result<Vec<MountEntry>> {
    let read = || -> std::io::Result<String> {
        let mut text = String::with_capacity(MOUNTINFO_CHUNK);
        std::fs::File::open("/proc/self/mountinfo")?.read_to_string(&mut text)?;
        Ok(text)
    };
    let text = read().map_err(|e| Error::Internal(format!("read /proc/self/mountinfo: {e}")))?;
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
