//! The snapshot RPCs of the Controller service (CreateSnapshot,
//! DeleteSnapshot, ListSnapshots, GetSnapshot) and the messages they and
//! CreateVolume exchange about content sources.

use std::sync::Arc;

use super::{next_token, page_request, wire_bytes};
use crate::csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
use crate::csi::{
    CreateSnapshotRequest, DeleteSnapshotRequest, ListSnapshotsRequest, ListSnapshotsResponse,
    Snapshot, VolumeContentSource, list_snapshots_response,
};
use crate::driver::{Driver, LIST_PAGE_MAX};
use crate::error::{Error, Result};
use crate::ids::{SnapshotId, VolumeId};
use crate::record::ContentSource;
use crate::snapshots::SnapshotRecord;
use crate::snapshots::take::{self, NewSnapshot};
use crate::validate;
use crate::work::blocking;

/// Takes a snapshot, or answers with the one of that name.
pub async fn create(driver: &Arc<Driver>, req: CreateSnapshotRequest) -> Result<Snapshot> {
    let name = validate::snapshot_name(&req.name)?.to_owned();
    if req.source_volume_id.is_empty() {
        return Err(Error::Invalid(format!(
            "snapshot {name}: source_volume_id is missing"
        )));
    }
    let source = VolumeId::parse(&req.source_volume_id)?;
    validate::snapshot_parameters(&req.parameters)?;
    // A snapshot is on its volume's node and nowhere else.
    if let Some(requirement) = &req.accessibility_requirements
        && !requirement.requisite.is_empty()
        && !requirement.requisite.iter().any(|t| driver.is_this_node(t))
    {
        return Err(Error::NotHere(format!(
            "snapshot {name}: accessibility_requirements do not include node {}, which holds volume {source}",
            driver.config.node_id
        )));
    }
    let id = SnapshotId::mint(&name, &driver.config.node_id);
    let held = driver.guards.claim(format!("snapshot {id}"))?;
    let source_held = driver.guards.claim(format!("volume {source}"))?;
    let worker = Arc::clone(driver);
    let record = blocking(move || {
        let _held = (held, source_held);
        take::create(&worker, NewSnapshot { id, name, source })
    })
    .await?;
    Ok(message(driver, &record))
}

/// Removes a snapshot; an unknown one is fine, a malformed id is not.
pub async fn delete(driver: &Arc<Driver>, req: DeleteSnapshotRequest) -> Result<()> {
    let id = SnapshotId::parse(&req.snapshot_id)?;
    let held = driver.guards.claim(format!("snapshot {id}"))?;
    let worker = Arc::clone(driver);
    blocking(move || {
        let _held = held;
        take::delete(&worker, &id)
    })
    .await
}

/// One snapshot by id (none when unknown or malformed: a list, not a
/// lookup), or a page of all of them or of one volume's, in id order.
pub fn list(driver: &Driver, req: &ListSnapshotsRequest) -> Result<ListSnapshotsResponse> {
    let (start, max) = page_request(req.max_entries, &req.starting_token, |id| {
        SnapshotId::parse(id).ok()
    })?;
    let take = if max == 0 {
        LIST_PAGE_MAX
    } else {
        max.min(LIST_PAGE_MAX)
    };
    let source = match req.source_volume_id.as_str() {
        "" => None,
        raw => match VolumeId::parse(raw) {
            Ok(id) => Some(id),
            Err(_) => return Ok(ListSnapshotsResponse::default()),
        },
    };
    let (page, next) = if req.snapshot_id.is_empty() {
        driver
            .snapshots()
            .page(start.as_ref(), source.as_ref(), take)
    } else {
        let found = SnapshotId::parse(&req.snapshot_id)
            .ok()
            .and_then(|id| driver.snapshots().get(&id).cloned())
            .filter(|record| source.as_ref().is_none_or(|s| &record.source == s));
        (found.into_iter().collect(), None)
    };
    Ok(ListSnapshotsResponse {
        entries: page
            .iter()
            .map(|record| list_snapshots_response::Entry {
                snapshot: Some(message(driver, record)),
            })
            .collect(),
        next_token: next_token(next),
    })
}

/// One snapshot, or NOT_FOUND.
pub fn get(driver: &Driver, raw_id: &str) -> Result<Snapshot> {
    let id = SnapshotId::parse(raw_id)?;
    let record = driver.snapshots().get(&id).cloned().ok_or_else(|| {
        Error::Unknown(format!(
            "snapshot {id} does not exist on node {}",
            driver.config.node_id
        ))
    })?;
    Ok(message(driver, &record))
}

/// The Snapshot message of a snapshot: it lives on this node.
fn message(driver: &Driver, record: &SnapshotRecord) -> Snapshot {
    let nanos = record.created_nanos;
    Snapshot {
        size_bytes: wire_bytes(record.size_bytes),
        snapshot_id: record.id.to_string(),
        source_volume_id: record.source.to_string(),
        creation_time: Some(prost_types::Timestamp {
            seconds: i64::try_from(nanos / 1_000_000_000).unwrap_or(i64::MAX),
            nanos: i32::try_from(nanos % 1_000_000_000).unwrap_or(0),
        }),
        ready_to_use: record.ready,
        group_snapshot_id: String::new(),
        accessible_topology: vec![driver.topology()],
    }
}

/// A CreateVolume content source, checked.
pub fn content_source(source: Option<&VolumeContentSource>) -> Result<Option<ContentSource>> {
    let Some(source) = source else {
        return Ok(None);
    };
    match &source.r#type {
        Some(Type::Snapshot(SnapshotSource { snapshot_id })) => Ok(Some(ContentSource::Snapshot(
            SnapshotId::parse(snapshot_id)?,
        ))),
        Some(Type::Volume(VolumeSource { volume_id })) => {
            Ok(Some(ContentSource::Volume(VolumeId::parse(volume_id)?)))
        }
        None => Err(Error::Invalid(
            "volume_content_source names neither a snapshot nor a volume".into(),
        )),
    }
}

/// The content source message of a volume made from one.
pub fn content_source_message(source: Option<&ContentSource>) -> Option<VolumeContentSource> {
    source.map(|source| VolumeContentSource {
        r#type: Some(match source {
            ContentSource::Snapshot(id) => Type::Snapshot(SnapshotSource {
                snapshot_id: id.to_string(),
            }),
            ContentSource::Volume(id) => Type::Volume(VolumeSource {
                volume_id: id.to_string(),
            }),
        }),
    })
}
