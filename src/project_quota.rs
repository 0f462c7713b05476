//! XFS and ext4 project quotas, by ioctl and `quotactl_fd`, for directory
//! volumes whose capacity the filesystem itself enforces: each volume's
//! directory carries a project id of its own, inherited by everything made
//! inside it, and that project's block limit is the volume's capacity.

use std::os::fd::{AsFd, AsRawFd};

use nix::errno::Errno;
use nix::sys::statfs::{EXT4_SUPER_MAGIC, XFS_SUPER_MAGIC, fstatfs};

const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;
/// New entries in the directory take its project id.
const FS_XFLAG_PROJINHERIT: u32 = 0x200;

/// `QCMD(cmd, PRJQUOTA)` for the XFS-style quotactl commands, which XFS and
/// the generic quota code behind ext4 both answer.
const fn project_command(xqm: u32) -> u32 {
    const PRJQUOTA: u32 = 2;
    ((((b'X' as u32) << 8) + xqm) << 8) | PRJQUOTA
}
const Q_XGETQUOTA: u32 = project_command(3);
const Q_XSETQLIM: u32 = project_command(4);
const Q_XGETQSTATV: u32 = project_command(8);
const FS_QUOTA_PDQ_ACCT: u16 = 1 << 4;
const FS_QUOTA_PDQ_ENFD: u16 = 1 << 5;
const FS_DQUOT_VERSION: i8 = 1;
const FS_PROJ_QUOTA: i8 = 2;
const FS_DQ_BHARD: u16 = 1 << 3;
/// Quota block counts are in 512-byte units.
const BASIC_BLOCK: u64 = 512;

/// Project ids the driver hands out lie in `[FIRST_ID, FIRST_ID + ID_SPAN)`,
/// clear of the small ids administrators number their own projects with.
const FIRST_ID: u32 = 1 << 24;
const ID_SPAN: u32 = (1 << 31) - FIRST_ID;
/// Ids tried before giving up: far more than a pool has volumes.
const MAX_PROBES: u64 = 1 << 20;

/// `struct fsxattr`.
#[repr(C)]
#[derive(Default)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

/// `struct fs_quota_statv`: only its flags are read.
#[repr(C)]
struct QuotaStatV {
    version: i8,
    pad1: u8,
    flags: u16,
    rest: [u8; 156],
}

/// `struct fs_disk_quota`.
#[repr(C)]
#[derive(Default)]
struct DiskQuota {
    version: i8,
    flags: i8,
    fieldmask: u16,
    id: u32,
    blk_hardlimit: u64,
    blk_softlimit: u64,
    ino_hardlimit: u64,
    ino_softlimit: u64,
    bcount: u64,
    icount: u64,
    rest: [u64; 7],
}

// The kernel reads and writes exactly these sizes.
const _: () = assert!(std::mem::size_of::<FsXattr>() == 28);
const _: () = assert!(std::mem::size_of::<QuotaStatV>() == 160);
const _: () = assert!(std::mem::size_of::<DiskQuota>() == 112);

/// Whether the filesystem behind `fd` is XFS or ext4.
pub fn is_candidate(fd: impl AsFd) -> bool {
    fstatfs(fd).is_ok_and(|st| {
        let magic = st.filesystem_type();
        magic == XFS_SUPER_MAGIC || magic == EXT4_SUPER_MAGIC
    })
}

/// An fd no file is open on, to ask the kernel whether it knows quotactl.
const NO_FD: libc::c_int = -1;

/// `quotactl_fd(fd, cmd, id, addr)`: quotactl on the filesystem holding
/// `fd`, with no device path to find.
fn quotactl<T>(fd: impl AsRawFd, cmd: u32, id: u32, arg: &mut T) -> nix::Result<()> {
    // SAFETY: every command used here reads or writes one `T` of the size the
    // kernel expects for it (asserted above).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            fd.as_raw_fd(),
            cmd,
            id,
            arg as *mut T,
        )
    };
    Errno::result(rc).map(drop)
}

/// `Ok` when project quotas are both counted and enforced on the filesystem
/// holding `fd`; otherwise why not, for the operator.
pub fn enforcing(fd: impl AsFd) -> std::result::Result<(), String> {
    let mut stat = QuotaStatV {
        version: 1,
        pad1: 0,
        flags: 0,
        rest: [0; 156],
    };
    let fix = "mount XFS with -o prjquota, which needs a kernel with CONFIG_XFS_QUOTA; make ext4 with -O quota,project and mount it with -o prjquota, which needs CONFIG_QUOTA and CONFIG_QFMT_V2";
    match quotactl(fd.as_fd(), Q_XGETQSTATV, 0, &mut stat) {
        Ok(()) => {}
        // A kernel built without quotactl answers ENOSYS even for a bad fd;
        // one with it answers ENOSYS or EINVAL for a filesystem whose
        // project quotas are off.
        Err(Errno::ENOSYS) if quotactl(NO_FD, Q_XGETQSTATV, 0, &mut stat) == Err(Errno::ENOSYS) => {
            return Err(
                "no project quotas: this kernel was built without quota support (CONFIG_QUOTACTL)"
                    .into(),
            );
        }
        Err(Errno::ENOSYS | Errno::EINVAL | Errno::ESRCH) => {
            return Err(format!("no project quotas: they are off here ({fix})"));
        }
        Err(errno) => {
            return Err(format!(
                "no project quotas: reading their state failed: {errno}"
            ));
        }
    }
    if stat.flags & FS_QUOTA_PDQ_ACCT == 0 {
        return Err(format!("no project quotas: they are off here ({fix})"));
    }
    if stat.flags & FS_QUOTA_PDQ_ENFD == 0 {
        return Err(format!(
            "no project quotas: they are counted but not enforced here ({fix})"
        ));
    }
    Ok(())
}

fn get_xattr(dir: impl AsFd) -> nix::Result<FsXattr> {
    let mut attr = FsXattr::default();
    // SAFETY: FS_IOC_FSGETXATTR fills a struct fsxattr, which `attr` is.
    let rc = unsafe { libc::ioctl(dir.as_fd().as_raw_fd(), FS_IOC_FSGETXATTR, &mut attr) };
    Errno::result(rc).map(|_| attr)
}

/// The project id `dir` hands down to new entries; `None` when it hands
/// down none.
pub fn project_of(dir: impl AsFd) -> nix::Result<Option<u32>> {
    let attr = get_xattr(dir)?;
    Ok((attr.xflags & FS_XFLAG_PROJINHERIT != 0 && attr.projid != 0).then_some(attr.projid))
}

/// Gives the empty directory `dir` project `id`, inherited by all it holds.
pub fn assign(dir: impl AsFd, id: u32) -> nix::Result<()> {
    let dir = dir.as_fd();
    let mut attr = get_xattr(dir)?;
    attr.projid = id;
    attr.xflags |= FS_XFLAG_PROJINHERIT;
    // SAFETY: FS_IOC_FSSETXATTR reads a struct fsxattr, which `attr` is.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), FS_IOC_FSSETXATTR, &attr) };
    Errno::result(rc).map(drop)
}

fn quota_of(fd: impl AsFd, id: u32) -> nix::Result<DiskQuota> {
    let mut quota = DiskQuota::default();
    match quotactl(fd.as_fd(), Q_XGETQUOTA, id, &mut quota) {
        // A project nothing has ever been charged to has no quota entry.
        Ok(()) | Err(Errno::ENOENT) => Ok(quota),
        Err(errno) => Err(errno),
    }
}

/// Bytes charged to project `id` on the filesystem holding `fd`.
pub fn used_bytes(fd: impl AsFd, id: u32) -> nix::Result<u64> {
    quota_of(fd, id).map(|quota| quota.bcount * BASIC_BLOCK)
}

/// The block limit of project `id` in bytes (0: no limit).
pub fn limit_bytes(fd: impl AsFd, id: u32) -> nix::Result<u64> {
    quota_of(fd, id).map(|quota| quota.blk_hardlimit * BASIC_BLOCK)
}

/// Sets the block limit of project `id` (0: no limit), rounded up to
/// whole 512-byte units.
pub fn set_limit(fd: impl AsFd, id: u32, bytes: u64) -> nix::Result<()> {
    let mut quota = DiskQuota {
        version: FS_DQUOT_VERSION,
        flags: FS_PROJ_QUOTA,
        fieldmask: FS_DQ_BHARD,
        id,
        blk_hardlimit: bytes.div_ceil(BASIC_BLOCK),
        ..DiskQuota::default()
    };
    quotactl(fd.as_fd(), Q_XSETQLIM, id, &mut quota)
}

/// Chooses a project id for the volume named `key`: the first id, from one
/// derived from `key`, that no file is charged to and no limit is set on.
/// Callers hold a lock on id choice until the id is assigned. ENOSPC when
/// [`MAX_PROBES`] ids in a row are taken.
pub fn choose(fd: impl AsFd, key: u32) -> nix::Result<u32> {
    let fd = fd.as_fd();
    let start = u64::from(key) % u64::from(ID_SPAN);
    for step in 0..MAX_PROBES {
        let offset = (start + step) % u64::from(ID_SPAN);
        let id = FIRST_ID + u32::try_from(offset).expect("below ID_SPAN");
        let quota = quota_of(fd, id)?;
        if quota.icount == 0 && quota.bcount == 0 && quota.blk_hardlimit == 0 {
            return Ok(id);
        }
    }
    Err(Errno::ENOSPC)
}
