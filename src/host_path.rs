//! Static hostPath volumes: an admin's PV names a host `path` and a hostPath
//! `type`, published with Kubernetes' hostPath semantics, but only beneath a
//! prefix the operator allowed and never through a symlink.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag, fchmod, fstat, mkdirat};

use crate::beneath::{self, Mounts};
use crate::error::{Echo, Error, Result, SysContext};
use crate::validate;

/// volume_context key holding the host path.
pub const PATH_KEY: &str = "path";
/// volume_context key holding the hostPath type.
pub const TYPE_KEY: &str = "type";
/// What a static volume's id (the PV's `volumeHandle`) must start with: the
/// positive sign that an admin wrote it. Only a PV's author chooses a
/// volume id; a pod's inline `csi:` volume gets one minted by kubelet
/// (`csi-` and a hash), and the volumes this driver makes are `vol-…`.
pub const STATIC_ID_PREFIX: &str = "static-";

/// The eight hostPath types Kubernetes defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPathType {
    /// `""`: no check beyond existence.
    Unchecked,
    DirectoryOrCreate,
    Directory,
    FileOrCreate,
    File,
    Socket,
    CharDevice,
    BlockDevice,
}

impl HostPathType {
    const NAMES: [(&'static str, HostPathType); 8] = [
        ("", HostPathType::Unchecked),
        ("DirectoryOrCreate", HostPathType::DirectoryOrCreate),
        ("Directory", HostPathType::Directory),
        ("FileOrCreate", HostPathType::FileOrCreate),
        ("File", HostPathType::File),
        ("Socket", HostPathType::Socket),
        ("CharDevice", HostPathType::CharDevice),
        ("BlockDevice", HostPathType::BlockDevice),
    ];

    pub fn parse(raw: &str) -> Result<Self> {
        Self::NAMES
            .iter()
            .find(|(name, _)| *name == raw)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                let known: Vec<String> =
                    Self::NAMES.iter().map(|(n, _)| format!("{n:?}")).collect();
                Error::Invalid(format!(
                    "hostPath type {} is not known: types are {}",
                    Echo(raw),
                    known.join(", ")
                ))
            })
    }

    /// The file type the path must have, if this type demands one.
    fn required(self) -> Option<SFlag> {
        match self {
            HostPathType::Unchecked => None,
            HostPathType::DirectoryOrCreate | HostPathType::Directory => Some(SFlag::S_IFDIR),
            HostPathType::FileOrCreate | HostPathType::File => Some(SFlag::S_IFREG),
            HostPathType::Socket => Some(SFlag::S_IFSOCK),
            HostPathType::CharDevice => Some(SFlag::S_IFCHR),
            HostPathType::BlockDevice => Some(SFlag::S_IFBLK),
        }
    }
}

/// An opened host path, ready to be bind-mounted.
#[derive(Debug)]
pub struct HostSource {
    /// An `O_PATH` fd on the host path itself.
    pub fd: OwnedFd,
    pub file_type: SFlag,
}

/// Opens (creating it for the `…OrCreate` types) the host path of a static
/// volume beneath one of the `allowed` prefixes, refusing symlinks anywhere
/// below the prefix, and checks its type.
pub fn open(
    volume: &str,
    allowed: &[PathBuf],
    raw_path: &str,
    kind: HostPathType,
) -> Result<HostSource> {
    let path = validate::host_path("volumeAttributes path", raw_path)?;
    let prefix = allowed.iter().find(|p| path.starts_with(p)).ok_or_else(|| {
        let shown: Vec<_> = allowed.iter().map(|p| p.display().to_string()).collect();
        Error::Invalid(format!(
            "volume {volume}: host path {raw_path} is not under an allowed prefix ({}); the operator allows one with --allow-host-path PREFIX",
            if shown.is_empty() { "none allowed".to_owned() } else { shown.join(", ") }
        ))
    })?;
    let relative = path.strip_prefix(prefix).expect("prefix checked");
    let root = nix::fcntl::open(
        prefix.as_path(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .context(|| format!("volume {volume}: open allowed prefix {}", prefix.display()))?;
    match kind {
        HostPathType::DirectoryOrCreate => create_dirs(volume, &root, prefix, relative)?,
        HostPathType::FileOrCreate => create_file(volume, &root, &path, relative)?,
        _ => {}
    }
    let fd = open_beneath(&root, relative).map_err(|errno| match errno {
        Errno::ENOENT => Error::Unknown(format!(
            "volume {volume}: host path {raw_path} does not exist"
        )),
        Errno::ELOOP => Error::Invalid(format!(
            "volume {volume}: host path {raw_path} goes through a symlink, which is refused"
        )),
        Errno::ENOTDIR => Error::WrongState(format!(
            "volume {volume}: host path {raw_path} goes through something that is not a directory"
        )),
        errno => Error::sys(format!("volume {volume}: open host path {raw_path}"), errno),
    })?;
    let file_type = SFlag::from_bits_truncate(
        fstat(&fd)
            .context(|| format!("volume {volume}: stat {raw_path}"))?
            .st_mode,
    ) & SFlag::S_IFMT;
    if let Some(required) = kind.required().filter(|r| *r != file_type) {
        return Err(Error::WrongState(format!(
            "volume {volume}: host path {raw_path} is a {}, but type {kind:?} needs a {}",
            type_name(file_type),
            type_name(required)
        )));
    }
    Ok(HostSource { fd, file_type })
}

/// Opens `relative` beneath `root` as O_PATH; a symlink anywhere, the last
/// component included, is ELOOP.
fn open_beneath(root: &OwnedFd, relative: &Path) -> nix::Result<OwnedFd> {
    let relative = if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    };
    beneath::open_at(root, relative, OFlag::O_PATH, Mode::empty(), Mounts::Enter)
}

/// DirectoryOrCreate: each missing directory is made with mode 0755, one
/// component at a time, never through a symlink.
fn create_dirs(volume: &str, root: &OwnedFd, prefix: &Path, relative: &Path) -> Result<()> {
    let mut dir = root
        .as_fd()
        .try_clone_to_owned()
        .context(|| format!("volume {volume}: dup fd"))?;
    let mut walked = prefix.to_path_buf();
    for part in relative.iter() {
        walked.push(part);
        let shown = walked.display();
        let created = match mkdirat(&dir, part, Mode::from_bits_truncate(0o755)) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(errno) => {
                return Err(Error::sys(
                    format!("volume {volume}: create {shown}"),
                    errno,
                ));
            }
        };
        let opened = beneath::open_at(
            &dir,
            part,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
            Mounts::Enter,
        );
        let next = match opened {
            Ok(next) => next,
            Err(Errno::ELOOP) => {
                return Err(Error::Invalid(format!(
                    "volume {volume}: {shown} is a symlink, which is refused"
                )));
            }
            // Something other than a directory is there: the type check reports it.
            Err(Errno::ENOTDIR) => return Ok(()),
            Err(errno) => return Err(Error::sys(format!("volume {volume}: open {shown}"), errno)),
        };
        if created {
            // Exactly 0755 whatever the umask; existing directories keep theirs.
            fchmod(&next, Mode::from_bits_truncate(0o755))
                .context(|| format!("volume {volume}: chmod {shown}"))?;
        }
        dir = next;
    }
    Ok(())
}

/// FileOrCreate: an empty file with mode 0644 if nothing is there; the
/// parent directory must already exist.
fn create_file(volume: &str, root: &OwnedFd, path: &Path, relative: &Path) -> Result<()> {
    let (Some(parent), Some(name)) = (relative.parent(), relative.file_name()) else {
        return Ok(()); // the prefix itself: the type check reports it
    };
    let parent_fd = match open_beneath(root, parent) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => {
            return Err(Error::Unknown(format!(
                "volume {volume}: the parent directory of {} does not exist (FileOrCreate does not create it)",
                path.display()
            )));
        }
        Err(_) => return Ok(()), // symlinks and the like: reported by the final open
    };
    let created = beneath::open_at(
        &parent_fd,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
        Mode::from_bits_truncate(0o644),
        Mounts::Enter,
    );
    match created {
        Ok(file) => fchmod(&file, Mode::from_bits_truncate(0o644))
            .context(|| format!("volume {volume}: chmod {}", path.display())),
        Err(Errno::EEXIST) => Ok(()),
        Err(errno) => Err(Error::sys(
            format!("volume {volume}: create {}", path.display()),
            errno,
        )),
    }
}

fn type_name(t: SFlag) -> &'static str {
    match t {
        SFlag::S_IFDIR => "directory",
        SFlag::S_IFREG => "file",
        SFlag::S_IFSOCK => "socket",
        SFlag::S_IFCHR => "character device",
        SFlag::S_IFBLK => "block device",
        SFlag::S_IFLNK => "symlink",
        SFlag::S_IFIFO => "fifo",
        _ => "file of unknown type",
    }
}
