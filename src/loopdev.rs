//! Loop devices for image-file volumes: attach, find by backing file, detach.
//!
//! The kernel interface (ioctls on /dev/loop-control and /dev/loopN, and
//! /sys/block/loopN/loop/backing_file) is small enough to use directly.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::error::{Error, Result, SysContext};

const LOOP_CONTROL: &str = "/dev/loop-control";
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
const LOOP_SET_CAPACITY: libc::c_ulong = 0x4C07;
/// The device refuses writes.
const LO_FLAGS_READ_ONLY: u32 = 1;
/// Detach when the last opener (a mount) closes the device.
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// Do I/O straight to the backing file, skipping a second page cache.
const LO_FLAGS_DIRECT_IO: u32 = 16;
/// How often a free device is asked for when another process takes it first.
const ATTACH_TRIES: usize = 8;

/// `struct loop_info64` of <linux/loop.h>.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` of <linux/loop.h>.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

// The kernel reads and writes exactly these sizes.
const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

/// An attached loop device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub path: PathBuf,
    /// The device refuses writes.
    pub read_only: bool,
}

/// How a device is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// Detached by the kernel when its last user (a mount) goes away.
    UntilUnmounted,
    /// Stays until [`detach`]: for raw block publishing, where the pod, not
    /// a mount, holds the device.
    UntilDetached,
}

/// A device just attached, with the fd that configured it: a device attached
/// [`Lifetime::UntilUnmounted`] detaches as soon as this fd closes, so keep it
/// until the mount holds the device.
#[derive(Debug)]
pub struct Attached {
    pub device: LoopDevice,
    pub fd: OwnedFd,
}

/// Attaches `image` (an open read-write file) to a free loop device, which
/// refuses writes if `read_only`.
pub fn attach(
    image: &OwnedFd,
    shown: &Path,
    lifetime: Lifetime,
    read_only: bool,
) -> Result<Attached> {
    let control = nix::fcntl::open(
        LOOP_CONTROL,
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .context(|| format!("open {LOOP_CONTROL}"))?;
    for _ in 0..ATTACH_TRIES {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
        let number = Errno::result(unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) })
            .context(|| format!("find a free loop device for {}", shown.display()))?;
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let device = nix::fcntl::open(&path, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
            .context(|| format!("open {}", path.display()))?;
        let mut flags = match lifetime {
            Lifetime::UntilUnmounted => LO_FLAGS_DIRECT_IO | LO_FLAGS_AUTOCLEAR,
            Lifetime::UntilDetached => LO_FLAGS_DIRECT_IO,
        };
        if read_only {
            flags |= LO_FLAGS_READ_ONLY;
        }
        let config = LoopConfig {
            fd: image.as_raw_fd() as u32,
            // 512-byte sectors, whatever the image file's direct I/O
            // alignment: the kernel would otherwise take that alignment,
            // which XFS raises to 4 KiB for a reflinked image, and a
            // filesystem of 1 KiB blocks in it (small ext4) would no
            // longer mount. Where 512 is below that alignment the kernel
            // does buffered I/O instead.
            block_size: 512,
            info: LoopInfo64 {
                flags,
                ..zeroed_info()
            },
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads a loop_config, which `config` is.
        let configured = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config) };
        match Errno::result(configured) {
            Ok(_) => {
                return Ok(Attached {
                    device: LoopDevice { path, read_only },
                    fd: device,
                });
            }
            // Taken by someone else between GET_FREE and CONFIGURE: ask again.
            Err(Errno::EBUSY) => continue,
            // Direct I/O needs aligned backing storage (tmpfs has none): retry without.
            Err(Errno::EINVAL) if flags & LO_FLAGS_DIRECT_IO != 0 => {
                let config = LoopConfig {
                    info: LoopInfo64 {
                        flags: flags & !LO_FLAGS_DIRECT_IO,
                        ..zeroed_info()
                    },
                    ..config
                };
                // SAFETY: as above.
                let again = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config) };
                Errno::result(again)
                    .context(|| format!("attach {} to {}", shown.display(), path.display()))?;
                return Ok(Attached {
                    device: LoopDevice { path, read_only },
                    fd: device,
                });
            }
            Err(errno) => {
                return Err(Error::sys(
                    format!("attach {} to {}", shown.display(), path.display()),
                    errno,
                ));
            }
        }
    }
    Err(Error::NoneLeft(format!(
        "no free loop device for {} after {ATTACH_TRIES} tries",
        shown.display()
    )))
}

fn zeroed_info() -> LoopInfo64 {
    LoopInfo64 {
        device: 0,
        inode: 0,
        rdevice: 0,
        offset: 0,
        sizelimit: 0,
        number: 0,
        encrypt_type: 0,
        encrypt_key_size: 0,
        flags: 0,
        file_name: [0; 64],
        crypt_name: [0; 64],
        encrypt_key: [0; 32],
        init: [0; 2],
    }
}

/// Loop devices backed by the file at `image` whose device and inode are
/// `identity`: the path finds candidates cheaply, the identity (asked of each
/// device) makes sure a device that was reused meanwhile is not taken.
pub fn find(image: &Path, identity: (u64, u64)) -> Result<Vec<LoopDevice>> {
    let entries =
        std::fs::read_dir("/sys/block").map_err(|e| Error::failed("list /sys/block", e))?;
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| n.starts_with("loop")) else {
            continue;
        };
        let backing = entry.path().join("loop/backing_file");
        let Ok(text) = std::fs::read_to_string(&backing) else {
            continue; // not attached
        };
        if Path::new(text.trim_end_matches('\n')) != image {
            continue;
        }
        let path = PathBuf::from(format!("/dev/{name}"));
        if let Some((backing, read_only)) = status(&path)?
            && backing == identity
        {
            found.push(LoopDevice { path, read_only });
        }
    }
    Ok(found)
}

/// Device and inode of the file behind a loop device, and whether the
/// device is read-only; `None` when it is detached.
fn status(path: &Path) -> Result<Option<((u64, u64), bool)>> {
    let fd = match nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ENXIO) => return Ok(None),
        Err(errno) => return Err(Error::sys(format!("open {}", path.display()), errno)),
    };
    let mut info = zeroed_info();
    // SAFETY: LOOP_GET_STATUS64 fills a loop_info64, which `info` is.
    let status = unsafe { libc::ioctl(fd.as_raw_fd(), LOOP_GET_STATUS64, &mut info) };
    match Errno::result(status) {
        Ok(_) => Ok(Some((
            (info.device, info.inode),
            info.flags & LO_FLAGS_READ_ONLY != 0,
        ))),
        Err(Errno::ENXIO) => Ok(None),
        Err(errno) => Err(Error::sys(format!("status of {}", path.display()), errno)),
    }
}

/// Makes a loop device see the current size of its (grown) backing file.
pub fn refresh_capacity(device: &LoopDevice) -> Result<()> {
    let fd = nix::fcntl::open(
        &device.path,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .context(|| format!("open {}", device.path.display()))?;
    // SAFETY: LOOP_SET_CAPACITY takes no argument.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), LOOP_SET_CAPACITY, 0) })
        .map(drop)
        .context(|| format!("refresh the size of {}", device.path.display()))
}

/// Detaches a loop device; one already detached is fine.
pub fn detach(device: &LoopDevice) -> Result<()> {
    let fd = match nix::fcntl::open(
        &device.path,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ENXIO) => return Ok(()),
        Err(errno) => return Err(Error::sys(format!("open {}", device.path.display()), errno)),
    };
    // SAFETY: LOOP_CLR_FD takes no argument.
    match Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), LOOP_CLR_FD, 0) }) {
        Ok(_) | Err(Errno::ENXIO) => Ok(()),
        Err(errno) => Err(Error::sys(
            format!("detach {}", device.path.display()),
            errno,
        )),
    }
}
