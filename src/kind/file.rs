//! `kind=file`: each volume is an image file `volumes/<id>.img` (hostPath
//! FileOrCreate semantics: made if missing, mode 0644, in the existing
//! `volumes/` directory), sized to the capacity and sparse.
//!
//! Mount access: the image holds an ext4 or xfs filesystem (made at create by
//! mkfs with an argv array) that is loop-mounted on `volumes/<id>` while any
//! pod uses it, so the capacity is a hard limit on any host filesystem.
//! Block access: the image has no filesystem; a loop device for it is
//! bind-mounted onto each file target. Loop devices exist only while used:
//! a mount's device detaches itself when the mount goes (autoclear), a raw
//! one is detached when its last target is unpublished. After a restart the
//! devices in use are found by their backing file, never attached twice.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, renameat};
use nix::mount::{MsFlags, mount};
use nix::sys::stat::{Mode, fchmod, fstat, fstatat};
use nix::unistd::{fsync, ftruncate};

use super::own_mount::{self, MountPoint};
use super::{Access, Content, FsType, Opened, Seed, VolumeKind, VolumeStats, failing, missing};
use crate::beneath::{self, Mounts, SyncDir};
use crate::capacity::Shortage;
use crate::error::{Error, Result, SysContext};
use crate::failpoint;
use crate::health::{Finding, Reason};
use crate::ids::VolumeId;
use crate::loopdev::{self, Lifetime, LoopDevice};
use crate::mounts::fd_path;
use crate::mounts::{MountEntry, MountIndex};
use crate::pool::Pool;
use crate::record::VolumeRecord;

/// Size of a file volume whose request names no capacity: 64 MiB.
pub const DEFAULT_SIZE: u64 = 64 << 20;
/// The smallest filesystem mkfs.xfs makes.
pub const XFS_MINIMUM: u64 = 300 << 20;
/// The smallest ext4 image: room for its journal and a few files.
pub const EXT4_MINIMUM: u64 = 1 << 20;
/// The smallest raw block volume: one page.
pub const RAW_MINIMUM: u64 = 4096;
/// Mode of a new image (hostPath FileOrCreate's mode).
const IMAGE_MODE: u32 = 0o644;

pub struct File;

fn image_name(id: &VolumeId) -> String {
    format!("{id}.img")
}

/// The image's path as the kernel reports a loop device's backing file.
fn image_path(pool: &Pool, id: &VolumeId) -> PathBuf {
    pool.entry_path(&image_name(id))
}

fn open_image(pool: &Pool, id: &VolumeId) -> Result<Option<OwnedFd>> {
    let opened = beneath::open_at(
        &pool.volumes,
        image_name(id).as_str(),
        OFlag::O_RDWR | OFlag::O_NOFOLLOW,
        Mode::empty(),
        Mounts::Stay,
    );
    match opened {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        Err(errno) => {
            Err(errno).context(|| format!("volume {id}: open {}", image_path(pool, id).display()))
        }
    }
}

/// Runs a fixed filesystem tool with an argv array, no shell; its stderr
/// goes into the error.
fn run(id: &VolumeId, program: &str, args: &[&str], path: &std::path::Path) -> Result<()> {
    run_allowing(id, program, args, path, &[0])
}

/// How long mkfs may run before it is killed: a tool stuck on a hung device
/// must not hold the volume's guard, and a blocking slot, for ever. Tools
/// that change an existing filesystem (e2fsck, resize2fs, xfs_growfs) are
/// never killed: stopped half-way they could damage it.
const TOOL_DEADLINE: Duration = Duration::from_secs(300);

/// Most of a tool's stderr kept for the error message.
const TOOL_STDERR: usize = 4096;

/// [`run`], counting the exit codes in `ok` as success.
fn run_allowing(
    id: &VolumeId,
    program: &str,
    args: &[&str],
    path: &std::path::Path,
    ok: &[i32],
) -> Result<()> {
    let what = || format!("volume {id}: {program} {}", path.display());
    let stderr = tempfile::tempfile().context(|| format!("{}: make a file for stderr", what()))?;
    let mut child = Command::new(program)
        .args(args)
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            stderr
                .try_clone()
                .context(|| format!("{}: dup stderr", what()))?,
        )
        .spawn()
        .map_err(|e| {
            Error::WrongState(format!(
                "volume {id}: cannot run {program} (is it installed?): {e}"
            ))
        })?;
    let deadline = program
        .starts_with("mkfs.")
        .then(|| Instant::now() + TOOL_DEADLINE);
    let status = loop {
        if let Some(status) = child.try_wait().context(|| format!("{}: wait", what()))? {
            break status;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            child.kill().ok();
            child.wait().ok();
            return Err(Error::Broken(format!(
                "{}: still running after {TOOL_DEADLINE:?}, killed",
                what()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if status.code().is_some_and(|code| ok.contains(&code)) {
        return Ok(());
    }
    let mut said = Vec::new();
    std::io::Seek::rewind(&mut &stderr).ok();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(&stderr, TOOL_STDERR as u64),
        &mut said,
    )
    .ok();
    Err(Error::Broken(format!(
        "{} failed ({status}): {}",
        what(),
        String::from_utf8_lossy(&said).trim()
    )))
}

/// Reads a filesystem's size from the first KiB of its superblock.
type SuperblockSize = fn(&[u8; 1024]) -> Option<u64>;

/// Whether the filesystem in `image` is smaller than the image (it was
/// expanded while nobody had it mounted), from its superblock.
fn filesystem_smaller_than_image(id: &VolumeId, fs: FsType, image: &OwnedFd) -> Result<bool> {
    let what = || format!("volume {id}: read the {} superblock", fs.as_str());
    let mut block = [0u8; 1024];
    let (offset, fs_bytes): (i64, SuperblockSize) = match fs {
        FsType::Ext4 => (1024, ext4_bytes),
        FsType::Xfs => (0, xfs_bytes),
    };
    nix::sys::uio::pread(image, &mut block, offset).context(what)?;
    let fs_bytes = fs_bytes(&block).ok_or_else(|| Error::Broken(what()))?;
    let image_bytes = u64::try_from(fstat(image).context(what)?.st_size).unwrap_or(0);
    Ok(fs_bytes < image_bytes)
}

/// Size of an ext4 filesystem from its superblock (blocks × block size).
fn ext4_bytes(sb: &[u8; 1024]) -> Option<u64> {
    let u32_at = |at: usize| u32::from_le_bytes(sb[at..at + 4].try_into().expect("4 bytes"));
    if u16::from_le_bytes([sb[56], sb[57]]) != 0xEF53 {
        return None;
    }
    let incompat_64bit = u32_at(96) & 0x80 != 0;
    let high = if incompat_64bit {
        u64::from(u32_at(0x150))
    } else {
        0
    };
    let blocks = (high << 32) | u64::from(u32_at(4));
    Some(blocks << (10 + u32_at(24)))
}

/// Size of an xfs filesystem from its superblock (data blocks × block size).
fn xfs_bytes(sb: &[u8; 1024]) -> Option<u64> {
    if &sb[0..4] != b"XFSB" {
        return None;
    }
    let block_size = u32::from_be_bytes(sb[4..8].try_into().expect("4 bytes"));
    let data_blocks = u64::from_be_bytes(sb[8..16].try_into().expect("8 bytes"));
    Some(data_blocks * u64::from(block_size))
}

/// Whether this process holds CAP_SYS_RESOURCE, which the kernel demands
/// for growing a mounted ext4 filesystem.
fn has_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// Runs mkfs for `fs` on the file at `path` (built from the pool path
/// and a minted id: no caller's text), with an argv array and no shell.
fn make_filesystem(id: &VolumeId, fs: FsType, path: &std::path::Path) -> Result<()> {
    let (program, args): (&str, &[&str]) = match fs {
        FsType::Ext4 => ("mkfs.ext4", &["-q", "-F", "-m", "0", "-E", "nodiscard"]),
        FsType::Xfs => ("mkfs.xfs", &["-q", "-f", "-K"]),
    };
    run(id, program, args, path)
}

/// Makes the image under a temporary name, sizes and formats it, then
/// renames it into place: a crash leaves either no image or a whole one.
fn make_image(pool: &Pool, record: &VolumeRecord) -> Result<()> {
    let id = &record.id;
    let size = i64::try_from(record.capacity_bytes).map_err(|_| {
        Error::Capacity(Shortage::TooLarge {
            volume: id.to_string(),
            bytes: record.capacity_bytes,
        })
    })?;
    write_image(pool, id, |file, temp_path| {
        ftruncate(file, size).context(|| format!("volume {id}: size {}", temp_path.display()))?;
        match record.content {
            Content::Fs(fs) => make_filesystem(id, fs, temp_path),
            Content::Raw => Ok(()),
        }
    })
}

/// Writes the image `<id>.img` whole or not at all: `fill` gets a new,
/// empty `<id>.img.tmp` (and its path), which is then synced and renamed
/// into place.
fn write_image(
    pool: &Pool,
    id: &VolumeId,
    fill: impl FnOnce(&OwnedFd, &std::path::Path) -> Result<()>,
) -> Result<()> {
    let temp = format!("{}.tmp", image_name(id));
    let temp_path = pool.entry_path(&temp);
    let what = || format!("volume {id}: create {}", temp_path.display());
    let file = beneath::open_at(
        &pool.volumes,
        temp.as_str(),
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW,
        Mode::from_bits_truncate(IMAGE_MODE),
        Mounts::Stay,
    )
    .context(what)?;
    fchmod(&file, Mode::from_bits_truncate(IMAGE_MODE)).context(what)?;
    fill(&file, &temp_path)?;
    fsync(&file).context(what)?;
    renameat(
        &pool.volumes,
        temp.as_str(),
        &pool.volumes,
        image_name(id).as_str(),
    )
    .context(what)?;
    pool.volumes.sync().context(what)
}

/// Attaches the image to a loop device and mounts its filesystem on `dir`.
fn mount_image(pool: &Pool, record: &VolumeRecord, dir: &OwnedFd) -> Result<OwnedFd> {
    let id = &record.id;
    let shown = image_path(pool, id);
    let Content::Fs(fs) = record.content else {
        return Err(Error::WrongState(format!(
            "volume {id}: {} holds no filesystem to mount; it was created for block access",
            shown.display()
        )));
    };
    let image = open_image(pool, id)?
        .ok_or_else(|| Error::WrongState(format!("volume {id}: {} is missing", shown.display())))?;
    if let Some(raw) = attached(pool, id)?.first() {
        return Err(Error::WrongState(format!(
            "volume {id}: {} is attached raw as {}; it cannot be mounted as well",
            shown.display(),
            raw.path.display()
        )));
    }
    let grown = filesystem_smaller_than_image(id, fs, &image)?;
    if grown && fs == FsType::Ext4 {
        // Offline, before mounting: no privilege beyond root's is needed.
        run_allowing(id, "e2fsck", &["-f", "-p"], &shown, &[0, 1])?;
        run(id, "resize2fs", &[], &shown)?;
    }
    let attached = loopdev::attach(&image, &shown, Lifetime::UntilUnmounted, false)?;
    // A restored or cloned XFS image carries its source's UUID, which XFS
    // refuses to mount twice; `nouuid` skips that check. Giving the copy a
    // new UUID instead (xfs_admin -U) would need a clean log, and a copy
    // of a mounted filesystem has a dirty one until it is mounted.
    let data = (fs == FsType::Xfs).then_some("nouuid");
    mount(
        Some(attached.device.path.as_path()),
        fd_path(dir).as_str(),
        Some(fs.as_str()),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        data,
    )
    .context(|| {
        format!(
            "volume {id}: mount {} ({}, {}) on {}/volumes/{id}",
            attached.device.path.display(),
            fs.as_str(),
            shown.display(),
            pool.shown()
        )
    })?;
    // The mount now holds the device; closing our fd no longer detaches it.
    drop(attached);
    if grown && fs == FsType::Xfs {
        // xfs grows only while mounted.
        let mount_point = pool.entry_path(id.as_str());
        run(id, "xfs_growfs", &["-d"], &mount_point)?;
    }
    own_mount::reopen(pool, id)
}

/// The loop block devices' major number.
const LOOP_MAJOR: u64 = 7;

/// What is wrong with the filesystem of an image mounted on the volume's
/// mount point: its device detached, errors it recorded (ext4), or every
/// access failing (XFS shut down, the device gone).
fn filesystem_health(pool: &Pool, id: &VolumeId, fs: FsType) -> Result<Vec<Finding>> {
    let root = match own_mount::look(pool, id)? {
        MountPoint::Missing => {
            return Ok(vec![Finding::new(
                Reason::BackingMissing,
                missing(pool, id),
            )]);
        }
        MountPoint::Unmounted(_) => return Ok(Vec::new()),
        MountPoint::Failing(_) => {
            return Ok(vec![Finding::new(
                Reason::FilesystemFailing,
                failing(pool, id).to_string(),
            )]);
        }
        MountPoint::Mounted(root) => root,
    };
    let st = fstat(&root).context(|| format!("volume {id}: stat its filesystem"))?;
    let (major, minor) = (
        nix::sys::stat::major(st.st_dev),
        nix::sys::stat::minor(st.st_dev),
    );
    if major != LOOP_MAJOR {
        return Ok(Vec::new());
    }
    let sysfs = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if std::fs::metadata(sysfs.join("loop/backing_file")).is_err() {
        return Ok(vec![Finding::new(
            Reason::LoopDetached,
            format!("volume {id}: loop{minor}, which its filesystem is mounted from, is detached"),
        )]);
    }
    let errors = std::fs::read_to_string(format!("/sys/fs/ext4/loop{minor}/errors_count"))
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .filter(|&n| fs == FsType::Ext4 && n > 0);
    Ok(errors
        .map(|n| {
            let function = std::fs::read_to_string(format!(
                "/sys/fs/ext4/loop{minor}/first_error_func"
            ))
            .unwrap_or_default();
            Finding::new(
                Reason::FilesystemErrors,
                format!(
                    "volume {id}: its ext4 filesystem (loop{minor}) has recorded {n} error(s), the first in {}; unpublish it everywhere and run e2fsck on {}",
                    function.trim(),
                    image_path(pool, id).display()
                ),
            )
        })
        .into_iter()
        .collect())
}

/// The loop devices attached to the volume's image now (none if it is gone).
fn attached(pool: &Pool, id: &VolumeId) -> Result<Vec<LoopDevice>> {
    let Some(image) = open_image(pool, id)? else {
        return Ok(Vec::new());
    };
    let identity = beneath::identity(&image).context(|| format!("volume {id}: stat its image"))?;
    loopdev::find(&image_path(pool, id), identity)
}

/// The loop device serving the image raw, read-only or not: the one already
/// attached that way, or a new one.
fn raw_device(pool: &Pool, id: &VolumeId, read_only: bool) -> Result<Option<LoopDevice>> {
    let existing = attached(pool, id)?
        .into_iter()
        .find(|d| d.read_only == read_only);
    if existing.is_some() {
        return Ok(existing);
    }
    let Some(image) = open_image(pool, id)? else {
        return Ok(None);
    };
    let shown = image_path(pool, id);
    Ok(Some(
        loopdev::attach(&image, &shown, Lifetime::UntilDetached, read_only)?.device,
    ))
}

/// An `O_PATH` fd on a loop device node, for binding onto a target.
fn open_device(id: &VolumeId, device: &LoopDevice) -> Result<OwnedFd> {
    nix::fcntl::open(
        &device.path,
        OFlag::O_PATH | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .context(|| format!("volume {id}: open {}", device.path.display()))
}

/// Unmounts the image (its device detaches itself) and detaches raw devices.
fn release(pool: &Pool, id: &VolumeId) -> Result<()> {
    own_mount::unmount(pool, id)?;
    for device in attached(pool, id)? {
        loopdev::detach(&device)?;
    }
    Ok(())
}

/// Binds of the loop devices of the image (raw block targets).
fn block_users(pool: &Pool, id: &VolumeId, mounts: &MountIndex) -> Result<Vec<MountEntry>> {
    let mut users = Vec::new();
    for device in attached(pool, id)? {
        let Ok(node) = nix::sys::stat::stat(&device.path) else {
            continue;
        };
        let name = device.path.file_name().map(|n| PathBuf::from("/").join(n));
        users.extend(
            mounts
                .of_device(node.st_dev)
                .iter()
                .filter(|m| Some(&m.root) == name.as_ref())
                .cloned(),
        );
    }
    Ok(users)
}

impl VolumeKind for File {
    fn create(&self, pool: &Pool, record: &VolumeRecord) -> Result<()> {
        let id = &record.id;
        beneath::ensure_dir(&pool.volumes, id.as_str(), 0o755)
            .context(|| format!("volume {id}: create {}/volumes/{id}", pool.shown()))?;
        match fstatat(
            &pool.volumes,
            image_name(id).as_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(_) => Ok(()), // made by an earlier, interrupted call
            Err(Errno::ENOENT) => make_image(pool, record),
            Err(errno) => Err(errno)
                .context(|| format!("volume {id}: stat {}", image_path(pool, id).display())),
        }
    }

    /// The image, read-only: a clone of it is crash-consistent with what
    /// its filesystem had written out.
    fn seed(&self, pool: &Pool, record: &VolumeRecord) -> Result<Seed> {
        let id = &record.id;
        let opened = beneath::open_at(
            &pool.volumes,
            image_name(id).as_str(),
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW,
            Mode::empty(),
            Mounts::Stay,
        );
        match opened {
            Ok(image) => Ok(Seed::Image(image)),
            Err(Errno::ENOENT) => Err(Error::WrongState(format!(
                "volume {id}: {} is missing",
                image_path(pool, id).display()
            ))),
            Err(errno) => Err(errno)
                .context(|| format!("volume {id}: open {}", image_path(pool, id).display())),
        }
    }

    /// The image cloned (or copied, holes kept) under a temporary name,
    /// grown to the volume's capacity, then renamed into place.
    fn create_from(&self, pool: &Pool, record: &VolumeRecord, seed: &Seed) -> Result<()> {
        let id = &record.id;
        let Seed::Image(from) = seed else {
            return Err(Error::Broken(format!(
                "volume {id}: a directory tree cannot fill an image"
            )));
        };
        beneath::ensure_dir(&pool.volumes, id.as_str(), 0o755)
            .context(|| format!("volume {id}: create {}/volumes/{id}", pool.shown()))?;
        write_image(pool, id, |image, temp_path| {
            let what = || format!("volume {id}: fill {}", temp_path.display());
            crate::copy::file_contents(from, image).context(what)?;
            let size = u64::try_from(fstat(image).context(what)?.st_size).unwrap_or(0);
            if record.capacity_bytes > size {
                let grown = i64::try_from(record.capacity_bytes).unwrap_or(i64::MAX);
                ftruncate(image, grown).context(what)?;
            }
            Ok(())
        })
    }

    fn delete(&self, pool: &Pool, id: &VolumeId) -> Result<()> {
        release(pool, id)?;
        pool.trash_volume(&format!("{}.tmp", image_name(id)))?;
        pool.trash_volume(&image_name(id))?;
        pool.trash_volume(id.as_str())
    }

    fn open_source(
        &self,
        pool: &Pool,
        record: &VolumeRecord,
        access: Access,
    ) -> Result<Option<Opened>> {
        let id = &record.id;
        let fd = match access {
            Access::Mount => match own_mount::look(pool, id)? {
                MountPoint::Missing => return Ok(None),
                MountPoint::Failing(_) => return Err(failing(pool, id)),
                MountPoint::Mounted(fd) => fd,
                MountPoint::Unmounted(dir) => mount_image(pool, record, &dir)?,
            },
            Access::Block { read_only } => {
                let Some(device) = raw_device(pool, id, read_only)? else {
                    return Ok(None);
                };
                open_device(id, &device)?
            }
        };
        Ok(Some(Opened {
            fd,
            recreated: false,
        }))
    }

    fn open_existing(
        &self,
        pool: &Pool,
        record: &VolumeRecord,
        access: Access,
    ) -> Result<Option<OwnedFd>> {
        let id = &record.id;
        match access {
            Access::Mount => Ok(match own_mount::look(pool, id)? {
                MountPoint::Mounted(fd) => Some(fd),
                MountPoint::Missing | MountPoint::Unmounted(_) | MountPoint::Failing(_) => None,
            }),
            Access::Block { read_only } => match attached(pool, id)?
                .into_iter()
                .find(|d| d.read_only == read_only)
            {
                None => Ok(None),
                Some(device) => open_device(id, &device).map(Some),
            },
        }
    }

    /// Grows the image file (sparse); the node then makes its loop devices
    /// and filesystem see the new size.
    fn expand(&self, pool: &Pool, record: &VolumeRecord) -> Result<bool> {
        let id = &record.id;
        let image = open_image(pool, id)?.ok_or_else(|| {
            Error::WrongState(format!(
                "volume {id}: {} is missing",
                image_path(pool, id).display()
            ))
        })?;
        let what = || format!("volume {id}: grow {}", image_path(pool, id).display());
        let size = u64::try_from(fstat(&image).context(what)?.st_size).unwrap_or(0);
        if size < record.capacity_bytes {
            let target = i64::try_from(record.capacity_bytes).map_err(|_| {
                Error::Capacity(Shortage::TooLarge {
                    volume: id.to_string(),
                    bytes: record.capacity_bytes,
                })
            })?;
            ftruncate(&image, target).context(what)?;
            fsync(&image).context(what)?;
        }
        // A mounted filesystem grows on the node; an unmounted one at its
        // next mount (see mount_image).
        Ok(true)
    }

    /// Online: every loop device of the image rereads its size, then a
    /// mounted filesystem grows into it (resize2fs on the device, xfs_growfs
    /// on the mount point), each run by argv.
    fn expand_on_node(&self, pool: &Pool, record: &VolumeRecord) -> Result<()> {
        let id = &record.id;
        let devices = attached(pool, id)?;
        for device in &devices {
            loopdev::refresh_capacity(device)?;
        }
        failpoint::hit("node-expand:device-grown");
        let mounted = matches!(own_mount::look(pool, id)?, MountPoint::Mounted(_));
        if !mounted {
            return Ok(());
        }
        match record.content {
            Content::Fs(FsType::Ext4) => {
                let device = devices.iter().find(|d| !d.read_only).ok_or_else(|| {
                    Error::Broken(format!(
                        "volume {id}: mounted, but no loop device of its image was found"
                    ))
                })?;
                // With nothing to grow resize2fs succeeds; growing a mounted
                // ext4 is the kernel's job, which it does only for CAP_SYS_RESOURCE.
                run(id, "resize2fs", &[], &device.path).map_err(|err| {
                    if has_sys_resource() {
                        err
                    } else {
                        Error::WrongState(format!(
                            "{err}; growing a mounted ext4 filesystem needs CAP_SYS_RESOURCE, which this driver lacks: run the node plugin privileged; the filesystem grows at its next mount"
                        ))
                    }
                })
            }
            Content::Fs(FsType::Xfs) => {
                run(id, "xfs_growfs", &["-d"], &pool.entry_path(id.as_str()))
            }
            Content::Raw => Ok(()),
        }
    }

    /// The blocks the sparse image has allocated.
    fn used_cheaply(&self, pool: &Pool, record: &VolumeRecord) -> Result<Option<u64>> {
        let Some(image) = open_image(pool, &record.id)? else {
            return Ok(None);
        };
        let st = fstat(&image).context(|| format!("volume {}: stat its image", record.id))?;
        Ok(Some(u64::try_from(st.st_blocks).unwrap_or(0) * 512))
    }

    fn health(&self, pool: &Pool, record: &VolumeRecord, published: bool) -> Result<Vec<Finding>> {
        let id = &record.id;
        let shown = image_path(pool, id);
        let image = match fstatat(
            &pool.volumes,
            image_name(id).as_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            Err(Errno::ENOENT) => {
                return Ok(vec![Finding::new(
                    Reason::BackingMissing,
                    format!("volume {id}: {} is missing", shown.display()),
                )]);
            }
            Err(errno) => {
                return Err(errno).context(|| format!("volume {id}: stat {}", shown.display()));
            }
        };
        if image.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Ok(vec![Finding::new(
                Reason::BackingReplaced,
                format!(
                    "volume {id}: {} is no longer a regular file",
                    shown.display()
                ),
            )]);
        }
        let mut findings = Vec::new();
        let size = u64::try_from(image.st_size).unwrap_or(0);
        if size < record.capacity_bytes {
            findings.push(Finding::new(
                Reason::ImageTruncated,
                format!(
                    "volume {id}: {} is {size} bytes, shorter than its capacity of {} bytes",
                    shown.display(),
                    record.capacity_bytes
                ),
            ));
        }
        match record.content {
            Content::Fs(fs) => findings.extend(filesystem_health(pool, id, fs)?),
            Content::Raw if published && attached(pool, id)?.is_empty() => {
                findings.push(Finding::new(
                    Reason::LoopDetached,
                    format!(
                        "volume {id}: it is published, but no loop device serves {} any more: its targets fail every read and write until it is published again",
                        shown.display()
                    ),
                ));
            }
            Content::Raw => {}
        }
        Ok(findings)
    }

    fn users(&self, pool: &Pool, id: &VolumeId, mounts: &MountIndex) -> Result<Vec<MountEntry>> {
        let mut users = own_mount::users(pool, id, mounts)?;
        users.extend(block_users(pool, id, mounts)?);
        Ok(users)
    }

    /// A filesystem answers from statvfs; a raw device reports the bytes its
    /// image has allocated.
    fn stats(&self, pool: &Pool, record: &VolumeRecord, source: &OwnedFd) -> Result<VolumeStats> {
        let id = &record.id;
        let capacity_bytes = record.capacity_bytes;
        let st = fstat(source).context(|| format!("volume {id}: stat its source"))?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return own_mount::stats(id, source);
        }
        let image = open_image(pool, id)?.ok_or_else(|| {
            Error::Unknown(format!(
                "volume {id}: {} is missing",
                image_path(pool, id).display()
            ))
        })?;
        let used = u64::try_from(
            fstat(&image)
                .context(|| format!("volume {id}: stat its image"))?
                .st_blocks,
        )
        .unwrap_or(0)
            * 512;
        Ok(VolumeStats {
            bytes_total: capacity_bytes,
            bytes_used: used,
            bytes_available: capacity_bytes.saturating_sub(used),
            ..VolumeStats::default()
        })
    }

    fn release_if_unused(&self, pool: &Pool, id: &VolumeId, mounts: &MountIndex) -> Result<()> {
        if !self.users(pool, id, mounts)?.is_empty() {
            return Ok(());
        }
        release(pool, id)
    }
}
