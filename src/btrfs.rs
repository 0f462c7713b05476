//! btrfs subvolumes, their snapshots and qgroup limits, by ioctl, for
//! directory volumes whose capacity the filesystem itself enforces.

use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sys::statfs::{BTRFS_SUPER_MAGIC, fstatfs};

use crate::error::{Error, Result, SysContext};

const IOC_SUBVOL_CREATE: libc::c_ulong = 0x5000_940e;
const IOC_INO_LOOKUP: libc::c_ulong = 0xd000_9412;
const IOC_QUOTA_CTL: libc::c_ulong = 0xc010_9428;
const IOC_QGROUP_LIMIT: libc::c_ulong = 0x8030_942b;
const IOC_FS_INFO: libc::c_ulong = 0x8400_941f;
const IOC_SNAP_CREATE_V2: libc::c_ulong = 0x5000_9417;
const IOC_SUBVOL_GETFLAGS: libc::c_ulong = 0x8008_9419;
const IOC_SUBVOL_SETFLAGS: libc::c_ulong = 0x4008_941a;
/// A subvolume (or snapshot) that refuses every change.
const SUBVOL_RDONLY: u64 = 1 << 1;
const QUOTA_CTL_ENABLE: u64 = 1;
/// The limit applies to the bytes the qgroup refers to.
const QGROUP_LIMIT_MAX_RFER: u64 = 1;
/// Inode number of the root directory of every subvolume.
const FIRST_FREE_OBJECTID: u64 = 256;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

/// `struct btrfs_ioctl_vol_args_v2`, without the qgroup inheritance.
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

/// `struct btrfs_ioctl_quota_ctl_args`.
#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

/// `struct btrfs_ioctl_qgroup_limit_args`.
#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// `struct btrfs_ioctl_fs_info_args`: 1024 bytes, the fsid at offset 16.
#[repr(C)]
struct FsInfoArgs {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; 16],
    rest: [u8; 992],
}

// The kernel reads and writes exactly these sizes.
const _: () = assert!(std::mem::size_of::<VolArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<InoLookupArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);
const _: () = assert!(std::mem::size_of::<QuotaCtlArgs>() == 16);
const _: () = assert!(std::mem::size_of::<QgroupLimitArgs>() == 48);
const _: () = assert!(std::mem::size_of::<FsInfoArgs>() == 1024);

/// Whether the file behind `fd` lives on btrfs.
pub fn is_btrfs(fd: impl AsFd) -> bool {
    fstatfs(fd).is_ok_and(|st| st.filesystem_type() == BTRFS_SUPER_MAGIC)
}

/// The filesystem's UUID, as /sys/fs/btrfs names it.
pub fn fsid(fd: impl AsFd) -> Result<String> {
    let mut args = FsInfoArgs {
        max_id: 0,
        num_devices: 0,
        fsid: [0; 16],
        rest: [0; 992],
    };
    // SAFETY: BTRFS_IOC_FS_INFO fills a 1024-byte fs_info_args, which `args` is.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), IOC_FS_INFO, &mut args) };
    Errno::result(rc).context(|| "btrfs: read the filesystem id".to_owned())?;
    let hex: String = args.fsid.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

fn qgroups_dir(fsid: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/btrfs/{fsid}/qgroups"))
}

/// Whether quotas are enabled on the filesystem.
pub fn quotas_enabled(fsid: &str) -> bool {
    qgroups_dir(fsid).is_dir()
}

/// Enables quotas on the filesystem holding `fd`.
pub fn enable_quotas(fd: impl AsFd) -> Result<()> {
    let mut args = QuotaCtlArgs {
        cmd: QUOTA_CTL_ENABLE,
        status: 0,
    };
    // SAFETY: BTRFS_IOC_QUOTA_CTL reads and writes a quota_ctl_args.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), IOC_QUOTA_CTL, &mut args) };
    Errno::result(rc)
        .map(drop)
        .context(|| "btrfs: enable quotas".to_owned())
}

/// Creates subvolume `name` in the directory `parent`; EEXIST when
/// something of that name is there.
pub fn create_subvolume(parent: impl AsFd, name: &str) -> nix::Result<()> {
    let mut args = VolArgs {
        fd: 0,
        name: [0; 4088],
    };
    if name.is_empty() || name.len() >= args.name.len() || name.contains('/') {
        return Err(Errno::EINVAL);
    }
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: BTRFS_IOC_SUBVOL_CREATE reads a vol_args holding a NUL-terminated name.
    let rc = unsafe { libc::ioctl(parent.as_fd().as_raw_fd(), IOC_SUBVOL_CREATE, &args) };
    Errno::result(rc).map(drop)
}

/// Makes `name` in directory `parent` a snapshot of the subvolume whose
/// root `source` is, read-only when asked: O(1) whatever it holds. EEXIST
/// when something of that name is there.
pub fn snapshot(
    source: impl AsFd,
    parent: impl AsFd,
    name: &str,
    read_only: bool,
) -> nix::Result<()> {
    let mut args = VolArgsV2 {
        fd: i64::from(source.as_fd().as_raw_fd()),
        transid: 0,
        flags: if read_only { SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; 4040],
    };
    if name.is_empty() || name.len() >= args.name.len() || name.contains('/') {
        return Err(Errno::EINVAL);
    }
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: BTRFS_IOC_SNAP_CREATE_V2 reads a vol_args_v2 holding a source
    // fd and a NUL-terminated name.
    let rc = unsafe { libc::ioctl(parent.as_fd().as_raw_fd(), IOC_SNAP_CREATE_V2, &args) };
    Errno::result(rc).map(drop)
}

/// Lets the subvolume whose root `fd` is be changed again (so that it can
/// be emptied and removed), if it was read-only.
pub fn make_writable(fd: impl AsFd) -> nix::Result<()> {
    let fd = fd.as_fd().as_raw_fd();
    let mut flags: u64 = 0;
    // SAFETY: BTRFS_IOC_SUBVOL_GETFLAGS writes one u64.
    Errno::result(unsafe { libc::ioctl(fd, IOC_SUBVOL_GETFLAGS, &mut flags) })?;
    if flags & SUBVOL_RDONLY == 0 {
        return Ok(());
    }
    let flags = flags & !SUBVOL_RDONLY;
    // SAFETY: BTRFS_IOC_SUBVOL_SETFLAGS reads one u64.
    Errno::result(unsafe { libc::ioctl(fd, IOC_SUBVOL_SETFLAGS, &flags) }).map(drop)
}

/// The id of the subvolume whose root `fd` is; `None` for a plain directory.
pub fn subvolume_id(fd: impl AsFd) -> Result<Option<u64>> {
    let st = nix::sys::stat::fstat(fd.as_fd()).context(|| "btrfs: stat".to_owned())?;
    if st.st_ino != FIRST_FREE_OBJECTID {
        return Ok(None);
    }
    let mut args = InoLookupArgs {
        treeid: 0,
        objectid: FIRST_FREE_OBJECTID,
        name: [0; 4080],
    };
    // SAFETY: BTRFS_IOC_INO_LOOKUP reads and writes an ino_lookup_args.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), IOC_INO_LOOKUP, &mut args) };
    Errno::result(rc).context(|| "btrfs: look up a subvolume id".to_owned())?;
    Ok(Some(args.treeid))
}

/// Limits the bytes subvolume `id` may refer to (its qgroup 0/id).
pub fn set_limit(fd: impl AsFd, id: u64, bytes: u64) -> Result<()> {
    let args = QgroupLimitArgs {
        qgroupid: id,
        flags: QGROUP_LIMIT_MAX_RFER,
        max_rfer: bytes,
        max_excl: 0,
        rsv_rfer: 0,
        rsv_excl: 0,
    };
    // SAFETY: BTRFS_IOC_QGROUP_LIMIT reads a qgroup_limit_args.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), IOC_QGROUP_LIMIT, &args) };
    Errno::result(rc)
        .map(drop)
        .context(|| format!("btrfs: limit qgroup 0/{id} to {bytes} bytes"))
}

/// The limit on the bytes subvolume `id` may refer to; `None` when it has
/// none (or quotas are off, which drops every limit).
pub fn limit_of(fsid: &str, id: u64) -> Option<u64> {
    std::fs::read_to_string(qgroups_dir(fsid).join(format!("0_{id}/max_referenced")))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .filter(|&bytes| bytes > 0)
}

/// Bytes subvolume `id` refers to, as of the last transaction commit.
pub fn referenced(fsid: &str, id: u64) -> Result<u64> {
    let path = qgroups_dir(fsid).join(format!("0_{id}/referenced"));
    std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| Error::Broken(format!("btrfs: read {}", path.display())))
}
