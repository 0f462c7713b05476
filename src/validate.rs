//! Pure checks of request fields: names, capacity, access, parameters, paths.
//!
//! Nothing here touches the system; every function returns the checked value
//! or an `InvalidArgument` error that says what was wrong and what is allowed.

use std::collections::HashMap;
use std::path::PathBuf;

use nix::mount::MsFlags;

use crate::csi::volume_capability::AccessType;
use crate::csi::volume_capability::access_mode::Mode;
use crate::csi::{CapacityRange, VolumeCapability};
use crate::error::{Echo, Error, Result};
use crate::ids::{PoolName, VolumeId};
use crate::kind::{Access, Content, FsType, KindName};
use crate::on_node_loss::OnNodeLoss;

/// Parameter keys a StorageClass may set (besides `csi.storage.k8s.io/*`).
pub const PARAMETER_KEYS: [&str; 5] = ["kind", "pool", "fsType", "enforce", "onNodeLoss"];
/// Prefix of the keys external-provisioner adds; accepted and ignored.
const SIDECAR_PREFIX: &str = "csi.storage.k8s.io/";

/// Access modes of a single node, the only ones a node-local volume can offer.
pub const SUPPORTED_MODES: [Mode; 4] = [
    Mode::SingleNodeWriter,
    Mode::SingleNodeReaderOnly,
    Mode::SingleNodeSingleWriter,
    Mode::SingleNodeMultiWriter,
];

/// `mount_flags` a request may add, and the bind-remount flag each sets.
const MOUNT_FLAGS: [(&str, MsFlags); 10] = [
    ("ro", MsFlags::MS_RDONLY),
    ("rw", MsFlags::empty()),
    ("exec", MsFlags::empty()),
    ("noexec", MsFlags::MS_NOEXEC),
    ("nosuid", MsFlags::MS_NOSUID),
    ("nodev", MsFlags::MS_NODEV),
    ("noatime", MsFlags::MS_NOATIME),
    ("nodiratime", MsFlags::MS_NODIRATIME),
    ("relatime", MsFlags::MS_RELATIME),
    ("nosymfollow", crate::mounts::MS_NOSYMFOLLOW),
];

/// A CreateVolume name: 1 to 256 bytes with no control characters. Names
/// are only hashed into ids, never used as paths.
pub fn volume_name(name: &str) -> Result<&str> {
    checked_name("volume", name)
}

/// A CreateSnapshot name, checked as a volume name is.
pub fn snapshot_name(name: &str) -> Result<&str> {
    checked_name("snapshot", name)
}

fn checked_name<'a>(what: &str, name: &'a str) -> Result<&'a str> {
    if name.is_empty() {
        return Err(Error::Invalid(format!("{what} name is missing")));
    }
    if name.len() > 256 || name.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "{what} name {} is malformed: expected 1 to 256 bytes without control characters",
            Echo(name)
        )));
    }
    Ok(name)
}

/// CreateSnapshot parameters: none of this driver's own; the ones the
/// snapshotter adds (`csi.storage.k8s.io/…`) are accepted and unused.
pub fn snapshot_parameters(parameters: &HashMap<String, String>) -> Result<()> {
    match parameters
        .keys()
        .find(|key| !key.starts_with("csi.storage.k8s.io/"))
    {
        None => Ok(()),
        Some(key) => Err(Error::Invalid(format!(
            "snapshot parameter {} is not supported: this driver takes none",
            Echo(key)
        ))),
    }
}

/// Whether the request names a filesystem (parameter fsType, or a mount
/// capability's fs_type).
pub fn names_filesystem(params: &VolumeParams, caps: &[VolumeCapability]) -> bool {
    params.fs_type.is_some()
        || caps
            .iter()
            .any(|c| matches!(&c.access_type, Some(AccessType::Mount(m)) if !m.fs_type.is_empty()))
}

/// A CSI driver name: at most 63 characters of `[a-zA-Z0-9.-]`, starting and
/// ending with an alphanumeric.
pub fn driver_name(name: &str) -> Result<&str> {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let ok = name.len() <= 63
        && edge_ok(name.chars().next())
        && edge_ok(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !ok {
        return Err(Error::Invalid(format!(
            "driver name {} is malformed: expected at most 63 characters of [a-zA-Z0-9.-], starting and ending with a letter or digit",
            Echo(name)
        )));
    }
    Ok(name)
}

/// The bytes a volume must get: `required` (0 = any) up to `limit` (0 = no limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapacityRequest {
    pub required: u64,
    pub limit: u64,
}

impl CapacityRequest {
    /// Whether an existing volume of `capacity` bytes satisfies this request.
    pub fn admits(self, capacity: u64) -> bool {
        capacity >= self.required && (self.limit == 0 || capacity <= self.limit)
    }
}

/// The capacity a ControllerExpandVolume asks for: a range with a
/// `required_bytes` (the size to grow to).
pub fn expansion(volume: &VolumeId, range: Option<&CapacityRange>) -> Result<CapacityRequest> {
    let checked = capacity(range)?;
    if checked.required == 0 {
        return Err(Error::Invalid(format!(
            "volume {volume}: capacity_range.required_bytes is missing"
        )));
    }
    Ok(checked)
}

pub fn capacity(range: Option<&CapacityRange>) -> Result<CapacityRequest> {
    let Some(range) = range else {
        return Ok(CapacityRequest::default());
    };
    let (required, limit) = (range.required_bytes, range.limit_bytes);
    if required < 0 || limit < 0 {
        return Err(Error::Invalid(format!(
            "capacity_range is negative: required_bytes={required}, limit_bytes={limit}"
        )));
    }
    if limit > 0 && required > limit {
        return Err(Error::Invalid(format!(
            "capacity_range required_bytes={required} exceeds limit_bytes={limit}"
        )));
    }
    Ok(CapacityRequest {
        required: required as u64,
        limit: limit as u64,
    })
}

/// The access a capability asks for, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requested {
    /// A filesystem: the type it names ("" for any) and its allowlisted
    /// mount flags.
    Mount {
        fs_type: String,
        flags: MsFlags,
    },
    Block,
}

impl Requested {
    /// The access to serve, `read_only` as the publish asks.
    pub fn access(&self, read_only: bool) -> Access {
        match self {
            Requested::Mount { .. } => Access::Mount,
            Requested::Block => Access::Block { read_only },
        }
    }
}

/// Checks the parts of a capability every kind shares: an access type, a
/// single-node access mode and allowlisted mount flags. The error text says
/// what is supported.
pub fn capability(cap: &VolumeCapability) -> std::result::Result<Requested, String> {
    let access = match &cap.access_type {
        Some(AccessType::Mount(mount)) => Requested::Mount {
            fs_type: mount.fs_type.clone(),
            flags: mount_flags(&mount.mount_flags).map_err(|e| e.to_string())?,
        },
        Some(AccessType::Block(_)) => Requested::Block,
        None => return Err("volume capability has no access_type (mount or block)".into()),
    };
    let mode = cap.access_mode.map(|m| m.mode).unwrap_or_default();
    if !SUPPORTED_MODES.iter().any(|m| *m as i32 == mode) {
        let shown = Mode::try_from(mode)
            .map_or_else(|_| format!("mode {mode}"), |m| m.as_str_name().into());
        let supported: Vec<_> = SUPPORTED_MODES.iter().map(|m| m.as_str_name()).collect();
        return Err(format!(
            "access mode {shown} is not supported: supported modes are {}",
            supported.join(", ")
        ));
    }
    Ok(access)
}

/// Checks a capability against what a volume of `kind` holding `content`
/// can serve.
pub fn serves(
    kind: KindName,
    content: Content,
    cap: &VolumeCapability,
) -> std::result::Result<Requested, String> {
    let access = capability(cap)?;
    kind_serves(kind, content, &access)?;
    Ok(access)
}

/// Checks access already asked for against what a volume of `kind`
/// holding `content` can serve.
pub fn kind_serves(
    kind: KindName,
    content: Content,
    access: &Requested,
) -> std::result::Result<(), String> {
    match (kind, access, content) {
        (KindName::File, Requested::Block, Content::Fs(fs)) => {
            return Err(format!(
                "the volume holds an {} filesystem; it was created for mount access, not block",
                fs.as_str()
            ));
        }
        (KindName::File, Requested::Block, Content::Raw) => {}
        (_, Requested::Block, _) => {
            return Err(format!(
                "block access is not supported by kind={}: only kind=file offers it",
                kind.as_str()
            ));
        }
        (KindName::File, Requested::Mount { .. }, Content::Raw) => {
            return Err(
                "the volume was created for block access only; it holds no filesystem".into(),
            );
        }
        (KindName::File, Requested::Mount { fs_type: asked, .. }, held)
            if !asked.is_empty() && asked != held.as_str() =>
        {
            return Err(format!(
                "fs_type {} asked for, but the volume holds {held}",
                Echo(asked)
            ));
        }
        _ => {}
    }
    Ok(())
}

/// Checks a list of capabilities (at least one) as CreateVolume needs:
/// each must be one that a volume of `kind` holding `content` can serve.
pub fn capabilities(kind: KindName, content: Content, caps: &[VolumeCapability]) -> Result<()> {
    if caps.is_empty() {
        return Err(Error::Invalid("volume_capabilities are missing".into()));
    }
    caps.iter()
        .try_for_each(|c| serves(kind, content, c).map(drop))
        .map_err(Error::Invalid)
}

/// What a new volume holds: for kind=file with any mount capability, the
/// filesystem the `fsType` parameter or the capabilities' fs_type name
/// (they must agree), else the first of [`FsType::ALL`]; raw otherwise (no
/// filesystem of its own, or block access only).
pub fn chosen_content(params: &VolumeParams, caps: &[VolumeCapability]) -> Result<Content> {
    let asked: Vec<&str> = caps
        .iter()
        .filter_map(|c| match &c.access_type {
            Some(AccessType::Mount(m)) => Some(m.fs_type.as_str()),
            _ => None,
        })
        .collect();
    if params.kind != KindName::File {
        if params.fs_type.is_some() {
            return Err(Error::Invalid(
                "parameter fsType applies to kind=file only".into(),
            ));
        }
        return Ok(Content::Raw);
    }
    if asked.is_empty() {
        if params.fs_type.is_some() && !caps.is_empty() {
            return Err(Error::Invalid(
                "parameter fsType names a filesystem, but the capabilities ask for block access only".into(),
            ));
        }
        return Ok(Content::Raw);
    }
    let mut named = params
        .fs_type
        .iter()
        .map(String::as_str)
        .chain(asked.into_iter().filter(|f| !f.is_empty()));
    let chosen = named.next().unwrap_or(FsType::ALL[0].as_str());
    if let Some(other) = named.find(|f| *f != chosen) {
        return Err(Error::Invalid(format!(
            "fsType {} and fs_type {} disagree",
            Echo(chosen),
            Echo(other)
        )));
    }
    match FsType::parse(chosen) {
        Some(fs) => Ok(Content::Fs(fs)),
        None => {
            let known: Vec<_> = FsType::ALL.iter().map(|f| f.as_str()).collect();
            Err(Error::Invalid(format!(
                "fsType {} is not supported: supported filesystems are {}",
                Echo(chosen),
                known.join(", ")
            )))
        }
    }
}

/// Whether a volume published with an access mode may be published at
/// other targets of the node at the same time (CSI's table of repeated
/// NodePublishVolume calls).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sharing {
    /// SINGLE_NODE_MULTI_WRITER: any number of targets.
    Shared,
    /// SINGLE_NODE_WRITER, SINGLE_NODE_READER_ONLY and
    /// SINGLE_NODE_SINGLE_WRITER: one target at a time.
    Alone,
}

/// How the capability's access mode lets a volume be shared on the node.
pub fn sharing(cap: &VolumeCapability) -> Sharing {
    match cap.access_mode.map(|m| m.mode) {
        Some(mode) if mode == Mode::SingleNodeMultiWriter as i32 => Sharing::Shared,
        _ => Sharing::Alone,
    }
}

/// Whether a capability's access mode allows only reading.
pub fn is_reader_only(cap: &VolumeCapability) -> bool {
    cap.access_mode
        .is_some_and(|m| m.mode == Mode::SingleNodeReaderOnly as i32)
}

/// StorageClass parameters after checking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeParams {
    pub kind: KindName,
    /// The pool asked for; `None` means the node's default pool.
    pub pool: Option<PoolName>,
    /// The filesystem asked for (kind=file only).
    pub fs_type: Option<String>,
    /// How strictly a directory volume's capacity must be enforced.
    pub enforce: Enforce,
}

/// The StorageClass parameter `enforce`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Enforce {
    /// Refuse a pool that cannot hold the volume to its capacity.
    Required,
    /// Enforce where the pool can, track elsewhere.
    #[default]
    BestEffort,
    /// Only track, even where the pool could enforce.
    None,
}

impl Enforce {
    fn parse(raw: &str) -> Result<Self> {
        match raw {
            "required" => Ok(Enforce::Required),
            "best-effort" => Ok(Enforce::BestEffort),
            "none" => Ok(Enforce::None),
            other => Err(Error::Invalid(format!(
                "parameter enforce={} is not known: values are required, best-effort, none",
                Echo(other)
            ))),
        }
    }
}

pub fn parameters(params: &HashMap<String, String>) -> Result<VolumeParams> {
    let mut checked = VolumeParams {
        kind: KindName::Directory,
        pool: None,
        fs_type: None,
        enforce: Enforce::default(),
    };
    for (key, value) in params {
        match key.as_str() {
            "kind" => checked.kind = KindName::parse(value)?,
            "pool" => checked.pool = Some(PoolName::parse(value)?),
            "fsType" => checked.fs_type = Some(value.clone()),
            "enforce" => checked.enforce = Enforce::parse(value)?,
            // Read by controller mode's node loss cleanup; checked here so
            // that a typo fails the first claim rather than a lost node's.
            "onNodeLoss" => {
                OnNodeLoss::parse(value).map_err(Error::Invalid)?;
            }
            k if k.starts_with(SIDECAR_PREFIX) => {}
            unknown => {
                return Err(Error::Invalid(format!(
                    "parameter {} is not known: known parameters are {} and {SIDECAR_PREFIX}*",
                    Echo(unknown),
                    PARAMETER_KEYS.join(", ")
                )));
            }
        }
    }
    Ok(checked)
}

/// Attribute keys of a CSI ephemeral inline volume (besides `csi.storage.k8s.io/*`).
pub const EPHEMERAL_KEYS: [&str; 3] = ["kind", "pool", "size"];

/// The attributes of an inline ephemeral volume: its kind and pool (as
/// StorageClass parameters) and its `size` (a quantity such as `64Mi`;
/// missing means no size promised).
pub fn ephemeral_attributes(context: &HashMap<String, String>) -> Result<(VolumeParams, u64)> {
    let mut params = HashMap::new();
    let mut size = 0;
    for (key, value) in context {
        match key.as_str() {
            "kind" | "pool" => {
                params.insert(key.clone(), value.clone());
            }
            "size" => size = quantity("size", value)?,
            k if k.starts_with(SIDECAR_PREFIX) => {}
            unknown => {
                return Err(Error::Invalid(format!(
                    "ephemeral volume attribute {} is not known: known attributes are {}",
                    Echo(unknown),
                    EPHEMERAL_KEYS.join(", ")
                )));
            }
        }
    }
    let params = parameters(&params)?;
    if !matches!(params.kind, KindName::Directory | KindName::Memory) {
        return Err(Error::Invalid(format!(
            "ephemeral volumes are kind directory or memory, not {}",
            params.kind.as_str()
        )));
    }
    Ok((params, size))
}

/// A Kubernetes quantity of bytes in whole units: `1048576`, `512Ki`,
/// `64Mi`, `1Gi`, `2Ti`, or decimal `500M`, `1G`.
pub fn quantity(field: &str, raw: &str) -> Result<u64> {
    const UNITS: [(&str, u64); 10] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
    ];
    let (digits, unit) = UNITS
        .iter()
        .find_map(|(suffix, unit)| raw.strip_suffix(suffix).map(|d| (d, *unit)))
        .unwrap_or((raw, 1));
    digits
        .parse::<u64>()
        .ok()
        .filter(|_| !digits.starts_with('+'))
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{field} {} is not a quantity of bytes: expected whole numbers such as 1073741824, 512Mi or 1Gi",
                Echo(raw)
            ))
        })
}

/// Turns `mount_flags` into bind-remount flags; anything outside the
/// allowlist is refused by name.
pub fn mount_flags(flags: &[String]) -> Result<MsFlags> {
    flags.iter().try_fold(MsFlags::empty(), |acc, flag| {
        MOUNT_FLAGS
            .iter()
            .find(|(name, _)| name == flag)
            .map(|(_, bits)| acc | *bits)
            .ok_or_else(|| {
                let allowed: Vec<_> = MOUNT_FLAGS.iter().map(|(n, _)| *n).collect();
                Error::Invalid(format!(
                    "mount flag {} is not allowed: allowed flags are {}",
                    Echo(flag),
                    allowed.join(", ")
                ))
            })
    })
}

/// Longest path and path component Linux takes (PATH_MAX, NAME_MAX).
const MAX_PATH_BYTES: usize = 4095;
const MAX_NAME_BYTES: usize = 255;

/// A host path from a request (a target, a volume path, a static PV's path):
/// absolute, normal components only, no longer than Linux takes.
pub fn host_path(field: &str, raw: &str) -> Result<PathBuf> {
    if raw.is_empty() {
        return Err(Error::Invalid(format!("{field} is missing")));
    }
    if raw.len() > MAX_PATH_BYTES || raw.split('/').any(|c| c.len() > MAX_NAME_BYTES) {
        return Err(Error::Invalid(format!(
            "{field} of {} bytes is too long: at most {MAX_PATH_BYTES} bytes, {MAX_NAME_BYTES} per component",
            raw.len()
        )));
    }
    let normal = raw
        .split('/')
        .skip(1)
        .all(|c| !c.is_empty() && c != "." && c != "..");
    if !raw.starts_with('/') || !normal || raw.contains('\0') {
        return Err(Error::Invalid(format!(
            "{field} {} must be an absolute path without '.' or '..' components",
            Echo(raw)
        )));
    }
    Ok(PathBuf::from(raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::volume_capability::{AccessMode, BlockVolume, MountVolume};

    fn cap(mode: Mode, access: AccessType) -> VolumeCapability {
        VolumeCapability {
            access_mode: Some(AccessMode { mode: mode as i32 }),
            access_type: Some(access),
        }
    }

    fn mount() -> AccessType {
        AccessType::Mount(MountVolume::default())
    }

    #[test]
    fn capacity_ranges() {
        let range = |required, limit| CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        };
        assert_eq!(capacity(None).unwrap(), CapacityRequest::default());
        assert_eq!(
            capacity(Some(&range(10, 20))).unwrap(),
            CapacityRequest {
                required: 10,
                limit: 20
            }
        );
        for (required, limit) in [(-1, 0), (0, -1), (11, 10)] {
            assert!(matches!(
                capacity(Some(&range(required, limit))),
                Err(Error::Invalid(_))
            ));
        }
        let req = capacity(Some(&range(10, 20))).unwrap();
        assert!(req.admits(10) && req.admits(20) && !req.admits(9) && !req.admits(21));
    }

    #[test]
    fn access_modes_and_types() {
        for mode in SUPPORTED_MODES {
            assert!(capability(&cap(mode, mount())).is_ok(), "{mode:?}");
        }
        let err = capability(&cap(Mode::MultiNodeMultiWriter, mount())).unwrap_err();
        assert!(
            err.contains("MULTI_NODE_MULTI_WRITER") && err.contains("SINGLE_NODE_WRITER"),
            "{err}"
        );
        let block = cap(Mode::SingleNodeWriter, AccessType::Block(BlockVolume {}));
        assert_eq!(capability(&block).unwrap(), Requested::Block);
        let err = serves(KindName::Directory, Content::Raw, &block).unwrap_err();
        assert!(err.contains("only kind=file"), "{err}");
        assert_eq!(
            serves(KindName::File, Content::Raw, &block).unwrap(),
            Requested::Block
        );
        let err = serves(
            KindName::File,
            Content::Raw,
            &cap(Mode::SingleNodeWriter, mount()),
        )
        .unwrap_err();
        assert!(err.contains("block access only"), "{err}");
        assert!(
            serves(
                KindName::File,
                Content::Fs(FsType::Ext4),
                &cap(Mode::SingleNodeWriter, mount())
            )
            .is_ok()
        );
        assert!(capabilities(KindName::Directory, Content::Raw, &[]).is_err());
        assert!(is_reader_only(&cap(Mode::SingleNodeReaderOnly, mount())));
        assert!(!is_reader_only(&cap(Mode::SingleNodeWriter, mount())));
    }

    #[test]
    fn file_volumes_choose_one_filesystem() {
        let params = |kind, fs_type: Option<&str>| VolumeParams {
            kind,
            pool: None,
            fs_type: fs_type.map(str::to_owned),
            enforce: Enforce::default(),
        };
        let with_fs = |fs: &str| {
            let mut c = cap(Mode::SingleNodeWriter, mount());
            if let Some(AccessType::Mount(m)) = &mut c.access_type {
                m.fs_type = fs.into();
            }
            c
        };
        let block = cap(Mode::SingleNodeWriter, AccessType::Block(BlockVolume {}));
        let file = KindName::File;
        assert_eq!(
            chosen_content(&params(file, None), &[with_fs("")]).unwrap(),
            Content::Fs(FsType::Ext4)
        );
        assert_eq!(
            chosen_content(&params(file, None), &[with_fs("xfs")]).unwrap(),
            Content::Fs(FsType::Xfs)
        );
        assert_eq!(
            chosen_content(&params(file, Some("xfs")), &[with_fs("")]).unwrap(),
            Content::Fs(FsType::Xfs)
        );
        assert_eq!(
            chosen_content(&params(file, None), std::slice::from_ref(&block)).unwrap(),
            Content::Raw
        );
        assert!(chosen_content(&params(file, Some("xfs")), &[with_fs("ext4")]).is_err());
        assert!(chosen_content(&params(file, None), &[with_fs("btrfs")]).is_err());
        assert!(
            chosen_content(&params(KindName::Directory, Some("ext4")), &[with_fs("")]).is_err()
        );
        assert_eq!(
            chosen_content(&params(KindName::Directory, None), &[with_fs("ext4")]).unwrap(),
            Content::Raw
        );
    }

    #[test]
    fn parameters_are_checked_by_name() {
        let p = |pairs: &[(&str, &str)]| {
            parameters(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert_eq!(p(&[]).unwrap().kind, KindName::Directory);
        let with_pool = p(&[("pool", "fast"), ("csi.storage.k8s.io/pvc/name", "x")]).unwrap();
        assert_eq!(with_pool.pool.unwrap().as_str(), "fast");
        let err = p(&[("colour", "red")]).unwrap_err().to_string();
        assert!(
            err.contains("colour") && err.contains("kind, pool"),
            "{err}"
        );
        assert!(p(&[("kind", "floppy")]).is_err());
        assert!(p(&[("pool", "../x")]).is_err());
        assert!(p(&[("onNodeLoss", "delete-claim")]).is_ok());
        assert!(p(&[("onNodeLoss", "keep")]).is_ok());
        let err = p(&[("onNodeLoss", "yes")]).unwrap_err().to_string();
        assert!(err.contains("delete-claim"), "{err}");
    }

    #[test]
    fn mount_flags_pass_an_allowlist() {
        assert_eq!(
            mount_flags(&["noexec".into(), "noatime".into()]).unwrap(),
            MsFlags::MS_NOEXEC | MsFlags::MS_NOATIME
        );
        let err = mount_flags(&["suid".into()]).unwrap_err().to_string();
        assert!(err.contains("suid") && err.contains("noexec"), "{err}");
    }

    #[test]
    fn quantities_and_ephemeral_attributes() {
        assert_eq!(quantity("size", "64Mi").unwrap(), 64 << 20);
        assert_eq!(quantity("size", "1G").unwrap(), 1_000_000_000);
        assert_eq!(quantity("size", "4096").unwrap(), 4096);
        for bad in ["", "1.5Gi", "-1", "+1", "Mi", "1Xi", "99999999999Pi"] {
            assert!(quantity("size", bad).is_err(), "{bad:?}");
        }
        let context = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let (params, size) = ephemeral_attributes(&context(&[
            ("size", "1Mi"),
            ("pool", "fast"),
            ("csi.storage.k8s.io/pod.name", "web-0"),
        ]))
        .unwrap();
        assert_eq!((params.pool.unwrap().as_str(), size), ("fast", 1 << 20));
        let err = ephemeral_attributes(&context(&[("colour", "red")])).unwrap_err();
        assert!(err.to_string().contains("kind, pool, size"), "{err}");
    }

    #[test]
    fn names_and_paths() {
        assert!(volume_name("pvc-1").is_ok());
        assert!(volume_name("").is_err());
        assert!(volume_name("a\nb").is_err());
        assert!(driver_name("hostpath-csi.dev").is_ok());
        for bad in ["", "-a", "a-", "a_b", &"a".repeat(64)] {
            assert!(driver_name(bad).is_err(), "{bad:?}");
        }
        assert!(host_path("target_path", "/var/lib/kubelet/pods/x/mount").is_ok());
        for bad in ["", "relative", "/a/../b", "/a/./b", "/", "/a//b", "/a/"] {
            assert!(host_path("target_path", bad).is_err(), "{bad:?}");
        }
    }
}
