//! The seam between publishing and the kernel's mount table: every mount,
//! unmount and look at a target that publish, unpublish and the node's
//! stats make goes through a [`Mounter`]. The driver runs with
//! [`KernelMounter`]; unit tests give it a recording fake (`fake`), so the
//! decisions above it are tested without root or real mounts.

use std::os::fd::OwnedFd;
use std::path::Path;

use nix::sys::stat::SFlag;
use nix::sys::statvfs::{FsFlags, statvfs};

use crate::error::{Result, SysContext};
use crate::ids::VolumeId;
use crate::mounts::{self, BindPolicy, PathState};
use crate::target::Target;

/// Mount operations on publish targets.
pub trait Mounter: Send + Sync + std::fmt::Debug {
    /// What is at the target now (a symlink is seen, not followed).
    fn state(&self, target: &Target) -> Result<Option<PathState>>;

    /// Creates the target: a directory or an empty file.
    fn make(&self, target: &Target, is_dir: bool) -> Result<()>;

    /// Removes the unmounted target; missing is fine.
    fn remove(&self, target: &Target, file_type: SFlag) -> Result<()>;

    /// Unmounts the top mount at the target.
    fn unmount(&self, target: &Target) -> Result<()>;

    /// Attaches a restricted copy of `source`'s mount onto the target and
    /// checks that the mount there ended with the flags `policy` asks for.
    fn attach(
        &self,
        id: &VolumeId,
        source: &OwnedFd,
        target: &Target,
        policy: BindPolicy,
    ) -> Result<()>;

    /// The controlled flags (see [`mounts::flags`]) of the mount at the target.
    fn target_flags(&self, id: &VolumeId, target: &Target) -> Result<u64>;

    /// The controlled flags of `source`'s own mount (`None`), or those a
    /// publish of it with `policy` must end with.
    fn source_flags(
        &self,
        id: &VolumeId,
        source: &OwnedFd,
        policy: Option<BindPolicy>,
    ) -> Result<u64>;

    /// What is at an absolute path a request names (a volume path).
    fn path_state(&self, id: &VolumeId, path: &Path) -> Result<Option<PathState>>;

    /// Whether the mount holding an absolute path is read-only.
    fn path_read_only(&self, id: &VolumeId, path: &Path) -> Result<bool>;
}

/// The real thing: the new mount API, statx and statvfs.
#[derive(Debug, Default)]
pub struct KernelMounter;

impl Mounter for KernelMounter {
    fn state(&self, target: &Target) -> Result<Option<PathState>> {
        target.state()
    }

    fn make(&self, target: &Target, is_dir: bool) -> Result<()> {
        target.make(is_dir)
    }

    fn remove(&self, target: &Target, file_type: SFlag) -> Result<()> {
        target.remove(file_type)
    }

    fn unmount(&self, target: &Target) -> Result<()> {
        target.unmount()
    }

    fn attach(
        &self,
        id: &VolumeId,
        source: &OwnedFd,
        target: &Target,
        policy: BindPolicy,
    ) -> Result<()> {
        let target_fd = target.open_path()?;
        mounts::attach(id.as_str(), source, &target_fd, &target.path, policy)?;
        let mounted = target.open_path()?;
        mounts::check_flags(id.as_str(), source, &mounted, &target.path, policy)
    }

    fn target_flags(&self, id: &VolumeId, target: &Target) -> Result<u64> {
        let mounted = target.open_path()?;
        mounts::mount_flags(&mounted)
            .context(|| format!("volume {id}: statvfs {}", target.path.display()))
    }

    fn source_flags(
        &self,
        id: &VolumeId,
        source: &OwnedFd,
        policy: Option<BindPolicy>,
    ) -> Result<u64> {
        match policy {
            None => mounts::mount_flags(source),
            Some(policy) => mounts::expected_flags(source, policy),
        }
        .context(|| format!("volume {id}: statvfs of the volume source"))
    }

    fn path_state(&self, id: &VolumeId, path: &Path) -> Result<Option<PathState>> {
        mounts::path_state(path).context(|| format!("volume {id}: stat {}", path.display()))
    }

    fn path_read_only(&self, id: &VolumeId, path: &Path) -> Result<bool> {
        let flags = statvfs(path).context(|| format!("volume {id}: statvfs {}", path.display()))?;
        Ok(flags.flags().contains(FsFlags::ST_RDONLY))
    }
}

/// A mounter that keeps its mounts in memory and records every call, for
/// unit tests: targets are made and removed for real (in a temporary
/// directory), mounts are only pretended.
#[cfg(test)]
pub mod fake {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::Mutex;

    use super::*;
    use crate::error::Error;

    /// One pretended mount: the identity of its root and its flags.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Mounted {
        pub dev: u64,
        pub ino: u64,
        pub flags: u64,
    }

    #[derive(Debug, Default)]
    pub struct FakeMounter {
        /// Per target path, its mounts from bottom to top.
        pub mounts: Mutex<HashMap<PathBuf, Vec<Mounted>>>,
        /// Every call that changes something, in order: `attach <path>`,
        /// `unmount <path>`, `make <path>`, `remove <path>`.
        pub calls: Mutex<Vec<String>>,
        /// The flags every source's own mount has.
        pub source_flags: u64,
        /// Make the next attach fail (as a refused mount_setattr would).
        pub fail_attach: Mutex<bool>,
    }

    impl FakeMounter {
        fn record(&self, verb: &str, path: &Path) {
            let call = format!("{verb} {}", path.display());
            self.calls.lock().unwrap().push(call);
        }

        /// The calls made so far, emptied.
        pub fn take_calls(&self) -> Vec<String> {
            std::mem::take(&mut *self.calls.lock().unwrap())
        }

        /// Pretends `mounted` is on top of whatever is at `path`.
        pub fn stack(&self, path: &Path, mounted: Mounted) {
            let mut mounts = self.mounts.lock().unwrap();
            mounts.entry(path.to_owned()).or_default().push(mounted);
        }

        /// The mounts at `path`, bottom to top.
        pub fn at(&self, path: &Path) -> Vec<Mounted> {
            let mounts = self.mounts.lock().unwrap();
            mounts.get(path).cloned().unwrap_or_default()
        }

        fn top(&self, path: &Path) -> Option<Mounted> {
            self.at(path).last().copied()
        }

        /// What is at `path`, `real` as the filesystem shows it, with the
        /// top pretended mount's root in its place.
        fn seen(&self, path: &Path, real: Option<PathState>) -> Option<PathState> {
            match (real, self.top(path)) {
                (Some(real), Some(top)) => Some(PathState {
                    mount_root: true,
                    dev: top.dev,
                    ino: top.ino,
                    ..real
                }),
                (real, _) => real,
            }
        }
    }

    impl Mounter for FakeMounter {
        fn state(&self, target: &Target) -> Result<Option<PathState>> {
            Ok(self.seen(&target.path, target.state()?))
        }

        fn make(&self, target: &Target, is_dir: bool) -> Result<()> {
            self.record("make", &target.path);
            target.make(is_dir)
        }

        fn remove(&self, target: &Target, file_type: SFlag) -> Result<()> {
            self.record("remove", &target.path);
            if self.top(&target.path).is_some() {
                return Err(Error::sys(
                    "remove a mounted target",
                    nix::errno::Errno::EBUSY,
                ));
            }
            target.remove(file_type)
        }

        fn unmount(&self, target: &Target) -> Result<()> {
            self.record("unmount", &target.path);
            let mut mounts = self.mounts.lock().unwrap();
            match mounts.get_mut(&target.path).and_then(Vec::pop) {
                Some(_) => Ok(()),
                None => Err(Error::sys("unmount", nix::errno::Errno::EINVAL)),
            }
        }

        fn attach(
            &self,
            _id: &VolumeId,
            source: &OwnedFd,
            target: &Target,
            policy: BindPolicy,
        ) -> Result<()> {
            self.record("attach", &target.path);
            if std::mem::take(&mut *self.fail_attach.lock().unwrap()) {
                return Err(Error::sys("attach", nix::errno::Errno::EPERM));
            }
            let (dev, ino) = crate::beneath::identity(source).context(|| "fstat".into())?;
            let flags = mounts::flags_for(self.source_flags, policy);
            self.stack(&target.path, Mounted { dev, ino, flags });
            Ok(())
        }

        fn target_flags(&self, _id: &VolumeId, target: &Target) -> Result<u64> {
            Ok(self.top(&target.path).map_or(0, |m| m.flags))
        }

        fn source_flags(
            &self,
            _id: &VolumeId,
            _source: &OwnedFd,
            policy: Option<BindPolicy>,
        ) -> Result<u64> {
            Ok(match policy {
                None => self.source_flags,
                Some(policy) => mounts::flags_for(self.source_flags, policy),
            })
        }

        fn path_state(&self, _id: &VolumeId, path: &Path) -> Result<Option<PathState>> {
            let real = mounts::path_state(path).context(|| "stat".into())?;
            Ok(self.seen(path, real))
        }

        fn path_read_only(&self, _id: &VolumeId, path: &Path) -> Result<bool> {
            Ok(self
                .top(path)
                .is_some_and(|m| m.flags & mounts::flags::RDONLY != 0))
        }
    }
}
