//! Publishing on a target: find what to mount (a pool volume, a new
//! ephemeral volume, or an admin's static host path), make the target, bind,
//! and take it all down again at unpublish.

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use nix::sys::stat::SFlag;

use crate::beneath;
use crate::driver::Driver;
use crate::error::{Echo, Error, Result, SysContext};
use crate::failpoint;
use crate::health;
use crate::host_path::{self, HostPathType};
use crate::ids::VolumeId;
use crate::kind::{Access, Content};
use crate::lifecycle::{self, NewVolume};
use crate::mounter::Mounter;
use crate::mounts::{self, BindPolicy, MountIndex};
use crate::target::Target;
use crate::validate::{self, Requested, Sharing};
use crate::volumes::Publication;

/// The key kubelet sets in volume_context for CSI ephemeral inline volumes.
pub const EPHEMERAL_KEY: &str = "csi.storage.k8s.io/ephemeral";

/// How often unpublish unmounts a target with stacked mounts before giving up.
const MAX_STACKED_MOUNTS: usize = 16;

/// A checked NodePublishVolume request.
pub struct Publish {
    pub id: VolumeId,
    pub target: Target,
    pub policy: BindPolicy,
    /// The access the capability asks for (checked by the caller).
    pub requested: Requested,
    /// Whether its access mode lets other targets have the volume too.
    pub sharing: Sharing,
    pub context: HashMap<String, String>,
}

/// What a publish mounts: an fd on a directory, or on a file or device
/// (bound onto a file target).
struct Source {
    fd: OwnedFd,
    is_dir: bool,
}

impl Source {
    /// The type of target it is mounted on.
    fn target_type(&self) -> SFlag {
        if self.is_dir {
            SFlag::S_IFDIR
        } else {
            SFlag::S_IFREG
        }
    }
}

/// Mounts the volume on the target, creating the target (a directory for a
/// directory, a file for anything else). A repeat is OK; a target holding
/// another mount or the same one read-only differently is ALREADY_EXISTS.
/// A failed publish leaves nothing behind: no backing set up for it, no
/// ephemeral volume made for it.
pub fn publish(driver: &Driver, request: &Publish) -> Result<()> {
    let made_now = make_ephemeral(driver, request)?;
    let outcome = mount_source(driver, request);
    if outcome.is_err() {
        undo(driver, &request.id, made_now);
    }
    outcome
}

/// Makes the volume of an inline ephemeral request if it does not exist
/// yet; true when this call made it.
fn make_ephemeral(driver: &Driver, request: &Publish) -> Result<bool> {
    let ephemeral = request
        .context
        .get(EPHEMERAL_KEY)
        .is_some_and(|v| v == "true");
    let id = &request.id;
    if !ephemeral {
        return Ok(false);
    }
    if let Ok(existing) = driver.volume(id) {
        if !existing.record.ephemeral {
            return Err(Error::Conflict(format!(
                "volume {id} already exists and is not an ephemeral inline volume"
            )));
        }
        return Ok(false);
    }
    let (params, size) = validate::ephemeral_attributes(&request.context)?;
    validate::kind_serves(params.kind, Content::Raw, &request.requested)
        .map_err(|m| Error::Invalid(format!("volume {id}: {m}")))?;
    lifecycle::create(
        driver,
        NewVolume {
            id: id.clone(),
            name: id.to_string(),
            range: validate::CapacityRequest {
                required: size,
                limit: 0,
            },
            params,
            requirement: None,
            ephemeral: true,
            content: Content::Raw,
            source: None,
            adopt_filesystem: false,
        },
    )?;
    Ok(true)
}

/// After a failed publish: releases a backing set up for it (a loop device,
/// a mounted image) and deletes an ephemeral volume it made. Best effort: the
/// publish's own error is what the caller hears.
fn undo(driver: &Driver, id: &VolumeId, made_now: bool) {
    let Ok(volume) = driver.volume(id) else {
        return;
    };
    let released = driver.pool(Some(&volume.record.pool)).and_then(|pool| {
        let mounts = MountIndex::read()?;
        volume
            .record
            .kind
            .backend()
            .release_if_unused(pool, id, &mounts)
    });
    if let Err(err) = released {
        tracing::error!(volume = %id, %err, "could not release the backing of a failed publish");
    }
    if made_now && let Err(err) = lifecycle::delete(driver, id) {
        tracing::error!(volume = %id, %err, "could not delete the ephemeral volume of a failed publish");
    }
}

fn mount_source(driver: &Driver, request: &Publish) -> Result<()> {
    check_sharing(driver, request)?;
    let mut request_policy = request.policy;
    let source = resolve(driver, request, &mut request_policy)?;
    let Publish { id, target, .. } = request;
    let shown = target.path.display();
    let mounter = driver.mounter();
    let created = match mounter.state(target)? {
        Some(state) if state.mount_root => {
            confirm_existing(mounter, id, target, &source.fd, state, request_policy)?;
            mark_published(driver, request, &source.fd);
            return Ok(());
        }
        // A file target must be a regular file: a symlink, fifo or device
        // in its place is not bound over.
        Some(state) if state.file_type != source.target_type() => {
            return Err(Error::Conflict(format!(
                "volume {id}: target {shown} exists and is not a {}",
                if source.is_dir { "directory" } else { "file" }
            )));
        }
        Some(_) => false,
        None => {
            mounter.make(target, source.is_dir)?;
            failpoint::hit("publish:target-made");
            true
        }
    };
    if let Err(err) = mounter.attach(id, &source.fd, target, request_policy) {
        take_down_mine(mounter, id, target, &source.fd).ok();
        if created {
            mounter.remove(target, source.target_type()).ok();
        }
        return Err(err);
    }
    failpoint::hit("publish:done");
    tracing::info!(volume = %id, target = %shown, read_only = request_policy.read_only, "volume published");
    mark_published(driver, request, &source.fd);
    Ok(())
}

/// Refuses a second target for a volume whose access mode allows one
/// (the new request's, or that of a publish still in place).
fn check_sharing(driver: &Driver, request: &Publish) -> Result<()> {
    let id = &request.id;
    let Ok(volume) = driver.volume(id) else {
        return Ok(());
    };
    let mut others = volume
        .published
        .iter()
        .filter(|(path, _)| **path != request.target.path);
    let conflict = match request.sharing {
        Sharing::Alone => others.next(),
        Sharing::Shared => others.find(|(_, p)| p.sharing == Some(Sharing::Alone)),
    };
    match conflict {
        None => Ok(()),
        Some((other, _)) => Err(Error::WrongState(format!(
            "volume {id}: it is published at {} already, and {} access mode allows one target per node (SINGLE_NODE_MULTI_WRITER allows several)",
            other.display(),
            if request.sharing == Sharing::Alone {
                "the requested"
            } else {
                "that publish's"
            }
        ))),
    }
}

/// Finds the source: a volume of this node's pools, else the static host
/// path the context names.
fn resolve(driver: &Driver, request: &Publish, policy: &mut BindPolicy) -> Result<Source> {
    let id = &request.id;
    if let Ok(volume) = driver.volume(id) {
        let record = &volume.record;
        validate::kind_serves(record.kind, record.content, &request.requested)
            .map_err(|m| Error::Invalid(format!("volume {id}: {m}")))?;
        let access = request.requested.access(policy.read_only);
        let pool = driver.pool(Some(&record.pool))?;
        let backend = record.kind.backend();
        let Some(opened) = backend.open_source(pool, record, access)? else {
            let findings = backend.health(pool, record, false)?;
            let problems: Vec<_> = findings.into_iter().map(|f| f.message).collect();
            return Err(Error::WrongState(if problems.is_empty() {
                format!("volume {id}: its backing cannot be opened")
            } else {
                problems.join("; ")
            }));
        };
        if opened.recreated {
            driver.note(id, format!(
                "volume {id}: its contents were lost (node reboot?) and it was recreated empty at publish"
            ));
        }
        // A raw block target is a device node: nodev would make it useless.
        policy.devices = matches!(access, Access::Block { .. });
        return Ok(Source {
            fd: opened.fd,
            is_dir: access == Access::Mount,
        });
    }
    let Some(path) = request.context.get(host_path::PATH_KEY) else {
        return Err(Error::Unknown(format!(
            "volume {id} does not exist on node {} and names no host path",
            driver.config.node_id
        )));
    };
    // Never the absence of a key: kubelet sends none of its own keys when
    // the CSIDriver has podInfoOnMount off, and a pod's inline volume then
    // passes whatever attributes its author wrote.
    if !id.as_str().starts_with(host_path::STATIC_ID_PREFIX) {
        return Err(Error::Invalid(format!(
            "volume {id} names host path {}, but only a PersistentVolume whose volumeHandle starts with {:?} may publish one (an inline volume cannot choose its id)",
            Echo(path),
            host_path::STATIC_ID_PREFIX
        )));
    }
    if let Some(ephemeral) = request.context.get(EPHEMERAL_KEY).filter(|v| *v != "false") {
        return Err(Error::Invalid(format!(
            "volume {id}: {EPHEMERAL_KEY}={} with a host path: only a PersistentVolume may publish one",
            Echo(ephemeral)
        )));
    }
    if !matches!(request.requested, Requested::Mount { .. }) {
        return Err(Error::Invalid(format!(
            "volume {id}: static hostPath volumes offer mount access only"
        )));
    }
    let kind = HostPathType::parse(
        request
            .context
            .get(host_path::TYPE_KEY)
            .map_or("", String::as_str),
    )?;
    let host = host_path::open(id.as_str(), &driver.config.allowed_host_paths, path, kind)?;
    policy.devices = matches!(host.file_type, SFlag::S_IFCHR | SFlag::S_IFBLK);
    Ok(Source {
        is_dir: host.file_type == SFlag::S_IFDIR,
        fd: host.fd,
    })
}

/// A target that is already a mount: fine if it is this source with the
/// flags this publish asks for (read-only, noexec, nosuid, nodev,
/// nosymfollow), ALREADY_EXISTS otherwise. A bind an earlier driver left
/// without its restricting remount (the flags of the source's own mount) is
/// finished here with the flags asked for.
fn confirm_existing(
    mounter: &dyn Mounter,
    id: &VolumeId,
    target: &Target,
    source: &OwnedFd,
    state: mounts::PathState,
    policy: BindPolicy,
) -> Result<()> {
    let shown = target.path.display();
    if !is_root_of(id, &state, source)? {
        return Err(Error::Conflict(format!(
            "volume {id}: target {shown} already holds another mount"
        )));
    }
    let have = mounter.target_flags(id, target)?;
    let want = mounter.source_flags(id, source, Some(policy))?;
    if have == want {
        return Ok(());
    }
    let bare = mounter.source_flags(id, source, None)?;
    if have == bare {
        // Replaced, not changed in place: flags set on an attached mount do
        // not reach the copies mount propagation made of it (the host's,
        // the pod's); a new restricted copy propagates whole.
        tracing::warn!(volume = %id, target = %shown, "replacing a bind mount left half-done");
        mounter.unmount(target)?;
        return mounter.attach(id, source, target, policy);
    }
    let mounted_read_only = have & mounts::flags::RDONLY != 0;
    if mounted_read_only != policy.read_only {
        return Err(Error::Conflict(format!(
            "volume {id}: already published at {shown} with readonly={mounted_read_only}, asked for readonly={}",
            policy.read_only
        )));
    }
    Err(Error::Conflict(format!(
        "volume {id}: already published at {shown} with mount flags {have:#x}, asked for {want:#x}"
    )))
}

fn mark_published(driver: &Driver, request: &Publish, source: &OwnedFd) {
    let publication = Publication {
        sharing: Some(request.sharing),
        source: beneath::identity(source).ok(),
    };
    if let Some(volume) = driver.table().get_mut(&request.id) {
        volume
            .published
            .insert(request.target.path.clone(), publication);
    }
}

/// Unmounts every mount of this volume stacked on the target and removes
/// it; a missing target is fine. A mount there that is not this volume's is
/// never taken down (FAILED_PRECONDITION). A backing set up for use is
/// released with its last user, and an ephemeral volume is deleted with its
/// last target.
pub fn unpublish(driver: &Driver, id: &VolumeId, target: &Target) -> Result<()> {
    let volume = driver.volume(id).ok();
    let bound = volume
        .as_ref()
        .and_then(|v| v.published.get(&target.path))
        .and_then(|p| p.source);
    let record = volume.map(|v| v.record);
    match &record {
        // This volume's mount is the one whose root is what the volume is
        // served from (the same device and inode), or what its publish
        // bound there (a loop device detached since still shows).
        Some(record) => {
            let pool = driver.pool(Some(&record.pool))?;
            let backend = record.kind.backend();
            take_down(driver.mounter(), id, target, bound, |top| {
                if bound == Some((top.dev, top.ino)) {
                    return Ok(true);
                }
                for access in [
                    Access::Mount,
                    Access::Block { read_only: false },
                    Access::Block { read_only: true },
                ] {
                    if let Some(source) = backend.open_existing(pool, record, access)?
                        && is_root_of(id, top, &source)?
                    {
                        return Ok(true);
                    }
                }
                Ok(false)
            })?;
        }
        // No record (an admin's static volume, a record that could not be
        // read, a pool no longer configured): whatever is mounted there,
        // unless the table knows it as another volume's publication.
        None => take_down(driver.mounter(), id, target, None, |_| {
            Ok(!driver
                .table()
                .iter_mut()
                .any(|v| v.published.contains_key(&target.path)))
        })?,
    }
    let Some(record) = driver.table().get_mut(id).map(|volume| {
        volume.published.remove(&target.path);
        volume.record.clone()
    }) else {
        return Ok(());
    };
    let pool = driver.pool(Some(&record.pool))?;
    let mounts = MountIndex::read()?;
    let backend = record.kind.backend();
    backend.release_if_unused(pool, id, &mounts)?;
    if record.ephemeral && backend.users(pool, id, &mounts)?.is_empty() {
        lifecycle::delete(driver, id)?;
    }
    Ok(())
}

/// Unmounts the mounts stacked on `target` while `is_mine` says the top one
/// is this volume's, then removes the target.
/// `bound` is what this volume's publish bound there (device, inode): a
/// mount whose filesystem fails every access (an XFS shut down) cannot be
/// looked at, and is taken down when the mount table shows that device.
fn take_down(
    mounter: &dyn Mounter,
    id: &VolumeId,
    target: &Target,
    bound: Option<(u64, u64)>,
    mut is_mine: impl FnMut(&mounts::PathState) -> Result<bool>,
) -> Result<()> {
    let shown = target.path.display();
    for _ in 0..MAX_STACKED_MOUNTS {
        let state = match mounter.state(target) {
            Err(err) if health::is_io_error(&err) => {
                let failing = mounts::top_mount_dev(&target.path)?;
                if failing.is_none() || failing != bound.map(|(dev, _)| dev) {
                    return Err(err);
                }
                mounter.unmount(target)?;
                continue;
            }
            other => other?,
        };
        match state {
            None => return Ok(()),
            Some(state) if state.mount_root => {
                if !is_mine(&state)? {
                    return Err(Error::WrongState(format!(
                        "volume {id}: target {shown} holds a mount that is not this volume's; it is left mounted"
                    )));
                }
                mounter.unmount(target)?;
                failpoint::hit("unpublish:unmounted");
            }
            Some(state) => return mounter.remove(target, state.file_type),
        }
    }
    Err(Error::Broken(format!(
        "volume {id}: target {shown} is still mounted after {MAX_STACKED_MOUNTS} unmounts"
    )))
}

/// Whether the mount whose root `state` describes is of `source` (the same
/// device and inode).
fn is_root_of(id: &VolumeId, state: &mounts::PathState, source: &OwnedFd) -> Result<bool> {
    let identity =
        beneath::identity(source).context(|| format!("volume {id}: stat the volume source"))?;
    Ok(identity == (state.dev, state.ino))
}

/// After a failed publish: takes down a mount of `source` it attached.
fn take_down_mine(
    mounter: &dyn Mounter,
    id: &VolumeId,
    target: &Target,
    source: &OwnedFd,
) -> Result<()> {
    match mounter.state(target)? {
        Some(state) if state.mount_root && is_root_of(id, &state, source)? => {
            mounter.unmount(target)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::kind::KindName;
    use crate::mounter::fake::Mounted;
    use crate::testing::{self, TestDriver};

    fn policy(read_only: bool) -> BindPolicy {
        BindPolicy {
            read_only,
            extra: nix::mount::MsFlags::empty(),
            devices: false,
        }
    }

    /// A driver holding one directory volume, and a target path for it.
    fn with_volume() -> (TestDriver, VolumeId, std::path::PathBuf) {
        let t = TestDriver::open(|_| {});
        let record =
            lifecycle::create(&t.driver, testing::new_volume("v", KindName::Directory, 0)).unwrap();
        let target = t.target_path("pod-a");
        (t, record.id, target)
    }

    fn request(t: &TestDriver, id: &VolumeId, path: &Path, read_only: bool) -> Publish {
        Publish {
            id: id.clone(),
            target: target(t, id, path),
            policy: policy(read_only),
            requested: testing::mount_access(),
            sharing: Sharing::Shared,
            context: HashMap::new(),
        }
    }

    fn target(t: &TestDriver, id: &VolumeId, path: &Path) -> Target {
        Target::open(&t.kubelet_dir, id, "target_path", path.to_str().unwrap())
            .unwrap()
            .expect("the target's parent exists")
    }

    /// The identity of the volume's directory, as a mount of it shows.
    fn volume_identity(t: &TestDriver, id: &VolumeId) -> (u64, u64) {
        let record = t.driver.volume(id).unwrap().record;
        let pool = t.driver.pool(Some(&record.pool)).unwrap();
        let source = record
            .kind
            .backend()
            .open_existing(pool, &record, Access::Mount)
            .unwrap()
            .unwrap();
        beneath::identity(&source).unwrap()
    }

    fn calls(t: &TestDriver, path: &Path) -> Vec<String> {
        let shown = path.display().to_string();
        t.mounter
            .take_calls()
            .into_iter()
            .map(|call| call.replace(&shown, "T"))
            .collect()
    }

    fn published(t: &TestDriver, id: &VolumeId) -> usize {
        t.driver.volume(id).unwrap().published.len()
    }

    #[test]
    fn a_publish_makes_the_target_and_binds_once_and_a_repeat_changes_nothing() {
        let (t, id, path) = with_volume();
        publish(&t.driver, &request(&t, &id, &path, false)).unwrap();
        assert_eq!(calls(&t, &path), ["make T", "attach T"]);
        let (dev, ino) = volume_identity(&t, &id);
        let flags = mounts::flags_for(0, policy(false));
        assert_eq!(t.mounter.at(&path), [Mounted { dev, ino, flags }]);
        assert_eq!(published(&t, &id), 1);
        publish(&t.driver, &request(&t, &id, &path, false)).unwrap();
        assert_eq!(
            calls(&t, &path),
            Vec::<String>::new(),
            "a repeat is OK as it is"
        );
        assert_eq!(t.mounter.at(&path).len(), 1);
    }

    #[test]
    fn a_repeat_with_another_read_only_setting_is_a_conflict_and_leaves_the_mount() {
        let (t, id, path) = with_volume();
        publish(&t.driver, &request(&t, &id, &path, false)).unwrap();
        t.mounter.take_calls();
        let err = publish(&t.driver, &request(&t, &id, &path, true)).unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{err}");
        assert!(err.to_string().contains("readonly=false"), "{err}");
        assert_eq!(calls(&t, &path), Vec::<String>::new());
        assert_eq!(t.mounter.at(&path).len(), 1);
    }

    #[test]
    fn a_half_done_bind_is_replaced_by_a_restricted_copy() {
        let (t, id, path) = with_volume();
        std::fs::create_dir(&path).unwrap();
        let (dev, ino) = volume_identity(&t, &id);
        // What an older driver left: the bind without its restricting flags.
        t.mounter.stack(&path, Mounted { dev, ino, flags: 0 });
        publish(&t.driver, &request(&t, &id, &path, true)).unwrap();
        assert_eq!(calls(&t, &path), ["unmount T", "attach T"]);
        let flags = mounts::flags_for(0, policy(true));
        assert_eq!(t.mounter.at(&path), [Mounted { dev, ino, flags }]);
        assert_eq!(published(&t, &id), 1);
    }

    #[test]
    fn a_target_holding_something_else_is_a_conflict_and_is_left_alone() {
        let (t, id, path) = with_volume();
        // Another mount there.
        std::fs::create_dir(&path).unwrap();
        let foreign = Mounted {
            dev: 1,
            ino: 1,
            flags: 0,
        };
        t.mounter.stack(&path, foreign);
        let err = publish(&t.driver, &request(&t, &id, &path, false)).unwrap_err();
        assert!(err.to_string().contains("another mount"), "{err}");
        assert!(matches!(err, Error::Conflict(_)));
        assert_eq!(t.mounter.at(&path), [foreign]);
        // A file where a directory target belongs.
        let other = t.target_path("pod-b");
        std::fs::write(&other, b"").unwrap();
        let err = publish(&t.driver, &request(&t, &id, &other, false)).unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
        assert!(other.is_file(), "left in place");
        assert_eq!(calls(&t, &path), Vec::<String>::new());
        assert_eq!(published(&t, &id), 0);
    }

    #[test]
    fn a_failed_attach_leaves_no_target_and_no_ephemeral_volume_behind() {
        let (t, id, path) = with_volume();
        *t.mounter.fail_attach.lock().unwrap() = true;
        let err = publish(&t.driver, &request(&t, &id, &path, false)).unwrap_err();
        assert!(matches!(err, Error::Sys { .. }), "{err}");
        assert_eq!(calls(&t, &path), ["make T", "attach T", "remove T"]);
        assert!(!testing::exists(&path), "the target made for it is gone");
        assert_eq!(published(&t, &id), 0);

        let inline = VolumeId::parse("csi-inline-1").unwrap();
        let mut ephemeral = request(&t, &inline, &t.target_path("pod-b"), false);
        ephemeral.context = HashMap::from([(EPHEMERAL_KEY.to_owned(), "true".to_owned())]);
        *t.mounter.fail_attach.lock().unwrap() = true;
        publish(&t.driver, &ephemeral).unwrap_err();
        assert!(
            t.driver.volume(&inline).is_err(),
            "the inline volume is deleted again"
        );
    }

    #[test]
    fn unpublish_takes_down_every_stacked_mount_of_the_volume_then_the_target() {
        let (t, id, path) = with_volume();
        publish(&t.driver, &request(&t, &id, &path, false)).unwrap();
        let mine = t.mounter.at(&path)[0];
        t.mounter.stack(&path, mine);
        t.mounter.stack(&path, mine);
        t.mounter.take_calls();
        unpublish(&t.driver, &id, &target(&t, &id, &path)).unwrap();
        assert_eq!(
            calls(&t, &path),
            ["unmount T", "unmount T", "unmount T", "remove T"]
        );
        assert!(!testing::exists(&path));
        assert_eq!(published(&t, &id), 0);
        // Again: nothing there, nothing to do.
        unpublish(&t.driver, &id, &target(&t, &id, &path)).unwrap();
        assert_eq!(calls(&t, &path), Vec::<String>::new());
    }

    #[test]
    fn unpublish_never_takes_down_a_mount_that_is_not_the_volumes() {
        let (t, id, path) = with_volume();
        publish(&t.driver, &request(&t, &id, &path, false)).unwrap();
        let foreign = Mounted {
            dev: 1,
            ino: 1,
            flags: 0,
        };
        t.mounter.stack(&path, foreign);
        t.mounter.take_calls();
        let err = unpublish(&t.driver, &id, &target(&t, &id, &path)).unwrap_err();
        assert!(matches!(err, Error::WrongState(_)), "{err}");
        assert_eq!(calls(&t, &path), Vec::<String>::new());
        assert_eq!(t.mounter.at(&path).len(), 2);
        // A target another volume is published on is not this one's to clear.
        let other =
            lifecycle::create(&t.driver, testing::new_volume("w", KindName::Directory, 0)).unwrap();
        let theirs = t.target_path("pod-b");
        publish(&t.driver, &request(&t, &other.id, &theirs, false)).unwrap();
        t.mounter.take_calls();
        let unknown = VolumeId::parse("gone-1").unwrap();
        unpublish(&t.driver, &unknown, &target(&t, &unknown, &theirs)).unwrap_err();
        assert_eq!(t.mounter.at(&theirs).len(), 1);
    }

    #[test]
    fn an_ephemeral_volume_is_made_at_publish_and_deleted_with_its_last_target() {
        let t = TestDriver::open(|_| {});
        let id = VolumeId::parse("csi-inline-2").unwrap();
        let path = t.target_path("pod-a");
        let mut inline = request(&t, &id, &path, false);
        inline.context = HashMap::from([
            (EPHEMERAL_KEY.to_owned(), "true".to_owned()),
            ("kind".to_owned(), "directory".to_owned()),
        ]);
        publish(&t.driver, &inline).unwrap();
        assert!(t.driver.volume(&id).unwrap().record.ephemeral);
        publish(&t.driver, &inline).unwrap();
        unpublish(&t.driver, &id, &target(&t, &id, &path)).unwrap();
        assert!(t.driver.volume(&id).is_err(), "deleted with its target");
    }
}
