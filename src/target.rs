//! Publish targets, only where kubelet puts them, and only through fds.
//!
//! A target path must have the shape of kubelet's CSI layout beneath the
//! kubelet directory: `pods/<pod uid>/volumes/kubernetes.io~csi/<pv>/mount`
//! (mount access) or `plugins/kubernetes.io/csi/volumeDevices/publish/<pv>/
//! <pod uid>` (raw block). Anything else (kubelet's own files, another
//! pod's projected token, `pki/`) is refused before it is touched. The
//! target's parent is then opened once, beneath the kubelet directory with
//! no symlink on the way, and every later step (stat, create, open, remove)
//! is made relative to that fd, so no path is resolved twice and a parent
//! swapped for a symlink meanwhile leads nowhere.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use crate::beneath::{self, Mounts};
use crate::error::{Echo, Error, Result, SysContext};
use crate::ids::VolumeId;
use crate::mounts::{self, PathState};
use crate::validate;

/// Where kubelet publishes CSI volumes, beneath its directory: `*` is any
/// one component (a pod uid, a PV or spec name).
const LAYOUTS: [&[&str]; 2] = [
    &["pods", "*", "volumes", "kubernetes.io~csi", "*", "mount"],
    &[
        "plugins",
        "kubernetes.io",
        "csi",
        "volumeDevices",
        "publish",
        "*",
        "*",
    ],
];

/// A target path in kubelet's layout, with its parent directory open.
pub struct Target {
    /// The volume the target is for, for messages.
    volume: VolumeId,
    /// The whole path, for messages and the mount table.
    pub path: PathBuf,
    parent: OwnedFd,
    name: CString,
}

/// Whether `relative` (beneath the kubelet directory) has the shape of one
/// of [`LAYOUTS`].
fn in_layout(relative: &Path) -> bool {
    let parts: Vec<&std::ffi::OsStr> = relative
        .components()
        .map(|c| match c {
            Component::Normal(part) => part,
            _ => std::ffi::OsStr::new("/"),
        })
        .collect();
    LAYOUTS.iter().any(|layout| {
        layout.len() == parts.len()
            && layout
                .iter()
                .zip(&parts)
                .all(|(want, part)| *want == "*" || std::ffi::OsStr::new(want) == *part)
    })
}

impl Target {
    /// Checks target `raw` (request field `field`) against kubelet's layout
    /// beneath `kubelet_dir` and opens its parent: INVALID_ARGUMENT for a
    /// path of another shape or one reached through a symlink, `None` when
    /// the parent does not exist.
    pub fn open(
        kubelet_dir: &Path,
        id: &VolumeId,
        field: &str,
        raw: &str,
    ) -> Result<Option<Target>> {
        let path = validate::host_path(field, raw)?;
        let relative = path.strip_prefix(kubelet_dir).ok().filter(|r| in_layout(r));
        let Some(relative) = relative else {
            return Err(Error::Invalid(format!(
                "volume {id}: {field} {} is not where kubelet publishes CSI volumes: expected {kubelet}/pods/<pod uid>/volumes/kubernetes.io~csi/<pv>/mount or {kubelet}/plugins/kubernetes.io/csi/volumeDevices/publish/<pv>/<pod uid> (--kubelet-dir)",
                Echo(raw),
                kubelet = kubelet_dir.display()
            )));
        };
        let name = relative.file_name().expect("a layout ends in a name");
        let name = CString::new(name.as_encoded_bytes())
            .map_err(|_| Error::Invalid(format!("volume {id}: {field} holds a NUL byte")))?;
        let parent_path = path.parent().expect("a layout has a parent");
        let parent = match beneath::open_without_symlinks(kubelet_dir, parent_path) {
            Ok(parent) => parent,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV) => {
                return Err(Error::Invalid(format!(
                    "volume {id}: {field} {} is reached through a symlink or a non-directory beneath {}",
                    path.display(),
                    kubelet_dir.display()
                )));
            }
            Err(errno) => {
                return Err(errno).context(|| {
                    format!("volume {id}: open the parent of {field} {}", path.display())
                });
            }
        };
        Ok(Some(Target {
            volume: id.clone(),
            path,
            parent,
            name,
        }))
    }

    /// What is at the target now (a symlink is seen, not followed).
    pub fn state(&self) -> Result<Option<PathState>> {
        mounts::entry_state(&self.parent, &self.name)
            .context(|| format!("volume {}: stat {}", self.volume, self.path.display()))
    }

    /// Creates the target: a directory (mode 0750) or an empty file (0640).
    pub fn make(&self, is_dir: bool) -> Result<()> {
        let made = if is_dir {
            mkdirat(
                &self.parent,
                self.name.as_c_str(),
                Mode::from_bits_truncate(0o750),
            )
        } else {
            beneath::open_at(
                &self.parent,
                self.name.as_c_str(),
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
                Mode::from_bits_truncate(0o640),
                Mounts::Enter,
            )
            .map(drop)
        };
        made.context(|| {
            format!(
                "volume {}: create target {}",
                self.volume,
                self.path.display()
            )
        })
    }

    /// Opens the target itself (`O_PATH`, never a symlink in its place); a
    /// mount on it is entered, so the fd is of the mount's root.
    pub fn open_path(&self) -> Result<OwnedFd> {
        beneath::open_at(
            &self.parent,
            self.name.as_c_str(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW,
            Mode::empty(),
            Mounts::Enter,
        )
        .context(|| {
            format!(
                "volume {}: open target {}",
                self.volume,
                self.path.display()
            )
        })
    }

    /// Unmounts the top mount at the target, not lazily: a mount still in
    /// use after [`mounts::unmount`]'s pauses is EBUSY, reported, and
    /// kubelet retries. The target is named through its parent's fd
    /// (`/proc/self/fd/<parent>/<name>`), never following a symlink in its
    /// place.
    pub fn unmount(&self) -> Result<()> {
        let mut path = std::ffi::OsString::from(mounts::fd_path(&self.parent));
        path.push("/");
        path.push(std::ffi::OsStr::from_bytes(self.name.as_bytes()));
        mounts::unmount(Path::new(&path), nix::mount::MntFlags::UMOUNT_NOFOLLOW)
            .context(|| format!("volume {}: unmount {}", self.volume, self.path.display()))
    }

    /// Removes the (unmounted) target; missing is fine. Only a directory or
    /// a regular file is removed, and a directory only when empty.
    pub fn remove(&self, file_type: SFlag) -> Result<()> {
        let how = match file_type {
            SFlag::S_IFDIR => UnlinkatFlags::RemoveDir,
            SFlag::S_IFREG => UnlinkatFlags::NoRemoveDir,
            _ => {
                return Err(Error::WrongState(format!(
                    "volume {}: target {} is neither a directory nor a file; left in place",
                    self.volume,
                    self.path.display()
                )));
            }
        };
        match unlinkat(&self.parent, self.name.as_c_str(), how) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(errno) => Err(errno).context(|| {
                format!(
                    "volume {}: remove target {}",
                    self.volume,
                    self.path.display()
                )
            }),
        }
    }
}

/// Checks that a volume path from a request (NodeGetVolumeStats,
/// NodeExpandVolume) lies beneath the
/// kubelet's directory, the only place kubelet asks for mounts, and that
/// its parent is reached from there without a symlink (one planted to
/// lead elsewhere on the host is refused). A missing parent is left for
/// the operation to report.
pub fn volume_path(kubelet_dir: &Path, field: &str, raw: &str) -> Result<PathBuf> {
    let path = validate::host_path(field, raw)?;
    let dir = kubelet_dir;
    if path == dir || !path.starts_with(dir) {
        return Err(Error::Invalid(format!(
            "{field} {raw:?} is not beneath the kubelet directory {} (--kubelet-dir)",
            dir.display()
        )));
    }
    let parent = path.parent().unwrap_or(dir);
    match beneath::open_without_symlinks(dir, parent) {
        Ok(_) | Err(Errno::ENOENT) => Ok(path),
        Err(Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV) => Err(Error::Invalid(format!(
            "{field} {raw:?} is reached through a symlink or a non-directory beneath {}",
            dir.display()
        ))),
        Err(errno) => Err(errno).context(|| format!("{field} {raw:?}: open {}", parent.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kubelets_csi_layout_is_a_target() {
        for good in [
            "pods/0b1c/volumes/kubernetes.io~csi/pvc-1/mount",
            "plugins/kubernetes.io/csi/volumeDevices/publish/pvc-1/0b1c",
        ] {
            assert!(in_layout(Path::new(good)), "{good}");
        }
        for bad in [
            "config.yaml",
            "pki",
            "pods/0b1c/volumes/kubernetes.io~projected/kube-api-access-x",
            "pods/0b1c/volumes/kubernetes.io~csi/pvc-1/vol_data.json",
            "pods/0b1c/volumes/kubernetes.io~csi/pvc-1/mount/deeper",
            "pods/0b1c/volumes/kubernetes.io~csi/mount",
            "plugins/kubernetes.io/csi/volumeDevices/staging/pvc-1/0b1c",
            "plugins/kubernetes.io/csi/volumeDevices/publish/pvc-1",
            "",
        ] {
            assert!(!in_layout(Path::new(bad)), "{bad}");
        }
    }
}
