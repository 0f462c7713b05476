//! Carries out the decided actions against the API server: each re-reads
//! its object and the node and acts only if the decision still holds, and
//! deletes with preconditions (uid and resourceVersion of what it read), so
//! that neither a claim made again under the same name nor an object changed
//! since is ever the one deleted. Every action is logged, counted and
//! announced with an Event.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use either::Either;
use k8s_openapi::api::core::v1::{Node, ObjectReference, PersistentVolume, PersistentVolumeClaim};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder};

use super::Counters;
use super::decide::{
    Action, CLAIM_ANNOTATION, DELETE_CLAIM, Gone, LostClaim, OnNodeLoss, PROVISIONER_FINALIZER,
    has_provisioner_finalizer, out_of_service, pinned_node,
};

/// The Event reason of everything this controller announces.
const REASON: &str = "NodeLost";

/// Acts for one replica that leads.
pub struct Actor {
    pub client: Client,
    pub driver: String,
    pub grace: Duration,
    pub recorder: Recorder,
    /// Claims already told they are kept (by uid), so a kept claim gets
    /// one Event per controller run, not one per look.
    pub reported: HashSet<String>,
}

impl Actor {
    /// Carries out `action`; failures are logged and counted, and the next
    /// look tries again.
    pub async fn act(&mut self, action: &Action, counters: &Counters) {
        let outcome = match action {
            Action::DeleteVolume { pv, node, gone } => self.delete_volume(pv, node, *gone).await,
            Action::DeleteClaim(lost) => self.delete_claim(lost).await,
            Action::KeepClaim(lost) => self.keep_claim(lost).await,
        };
        match outcome {
            Ok(Done::Deleted(what)) => {
                let counter = match action {
                    Action::DeleteVolume { .. } => &counters.volumes_deleted,
                    _ => &counters.claims_deleted,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::info!(?action, "node loss: {what}");
            }
            Ok(Done::Nothing) => {}
            Err(err) => {
                counters.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(?action, %err, "node loss: action failed; retried at the next look");
            }
        }
    }

    async fn delete_volume(&self, name: &str, node: &str, gone: Gone) -> Result<Done, kube::Error> {
        let api: Api<PersistentVolume> = Api::all(self.client.clone());
        let Some(pv) = api.get_opt(name).await? else {
            return Ok(Done::Nothing);
        };
        // Still ours, still on that node, still Released with reclaim
        // Delete, or being deleted with the provisioner's finalizer left.
        let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
        let reclaim = pv
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref());
        let deleting = pv.metadata.deletion_timestamp.is_some();
        let finalizer = has_provisioner_finalizer(&pv);
        if pinned_node(&pv, &self.driver) != Some(node)
            || (deleting && !finalizer)
            || (!deleting && (phase != Some("Released") || reclaim != Some("Delete")))
            || !self.still_gone(node).await?
        {
            return Ok(Done::Nothing);
        }
        // The PV as the delete left it (its finalizers hold it), whose
        // resourceVersion the finalizer patch must carry.
        let mut current = pv;
        if !deleting {
            // Only the PV just read: changed since (Retain set, say), it
            // is a conflict, and the next look sees the change.
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: current.metadata.uid.clone(),
                    resource_version: current.metadata.resource_version.clone(),
                }),
                ..DeleteParams::default()
            };
            match api.delete(name, &params).await {
                Ok(Either::Left(left)) => current = left,
                Ok(Either::Right(_)) => {}
                Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {
                    return Ok(Done::Nothing);
                }
                Err(err) => return Err(err),
            }
        }
        if has_provisioner_finalizer(&current) {
            let rest: Vec<&String> = current
                .metadata
                .finalizers
                .iter()
                .flatten()
                .filter(|f| *f != PROVISIONER_FINALIZER)
                .collect();
            // The resourceVersion makes this a compare-and-swap of the list.
            let patch = serde_json::json!({"metadata": {
                "resourceVersion": current.metadata.resource_version,
                "finalizers": rest,
            }});
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(err) => return Err(err),
            }
        }
        let note = format!(
            "volume {name} was on node {node}, which is gone: {}; its data went with the node, \
             so the PV is deleted without DeleteVolume",
            gone.describe(self.grace)
        );
        self.announce(
            EventType::Normal,
            "DeleteVolume",
            &note,
            volume_ref(&current),
        )
        .await;
        Ok(Done::Deleted(note))
    }

    async fn delete_claim(&self, lost: &LostClaim) -> Result<Done, kube::Error> {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &lost.namespace);
        // The claim as it is now: the same one (uid), still bound to that
        // volume, not since told to stay; and its node still gone.
        let Some(claim) = api.get_opt(&lost.claim).await? else {
            return Ok(Done::Nothing);
        };
        let same = claim.metadata.uid.as_deref() == Some(lost.uid.as_str())
            && claim.metadata.deletion_timestamp.is_none()
            && claim.spec.as_ref().and_then(|s| s.volume_name.as_deref()) == Some(lost.pv.as_str());
        let told_to_stay = claim
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CLAIM_ANNOTATION))
            .is_some_and(|value| OnNodeLoss::parse(value) != Ok(OnNodeLoss::DeleteClaim));
        if !same || told_to_stay || !self.still_gone(&lost.node).await? {
            return Ok(Done::Nothing);
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(lost.uid.clone()),
                resource_version: claim.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match api.delete(&lost.claim, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {
                return Ok(Done::Nothing);
            }
            Err(err) => return Err(err),
        }
        let note = format!(
            "claim deleted (it opted in with {DELETE_CLAIM}): its volume {} was on node {}, \
             which is gone: {}",
            lost.pv,
            lost.node,
            lost.gone.describe(self.grace)
        );
        self.announce(EventType::Warning, "DeleteClaim", &note, claim_ref(lost))
            .await;
        Ok(Done::Deleted(note))
    }

    async fn keep_claim(&mut self, lost: &LostClaim) -> Result<Done, kube::Error> {
        if !self.reported.insert(lost.uid.clone()) {
            return Ok(Done::Nothing);
        }
        let note = format!(
            "volume {} was on node {}, which is gone: {}; the claim is kept because it did \
             not opt in: annotate it {CLAIM_ANNOTATION}={DELETE_CLAIM} (or set the class's \
             onNodeLoss parameter) to have it deleted so that its pod gets a new volume",
            lost.pv,
            lost.node,
            lost.gone.describe(self.grace)
        );
        tracing::warn!(namespace = %lost.namespace, claim = %lost.claim, "node loss: {note}");
        self.announce(EventType::Warning, "KeepClaim", &note, claim_ref(lost))
            .await;
        Ok(Done::Nothing)
    }

    /// Whether `node` is still gone as the API server sees it now: its Node
    /// object absent, or out of service. (The grace period was judged on
    /// the watched view; this catches a node that came back since.)
    async fn still_gone(&self, node: &str) -> Result<bool, kube::Error> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        Ok(nodes
            .get_opt(node)
            .await?
            .is_none_or(|n| out_of_service(&n)))
    }

    /// Publishes an Event; one that cannot be published is logged only.
    async fn announce(&self, type_: EventType, action: &str, note: &str, about: ObjectReference) {
        let event = Event {
            type_,
            reason: REASON.to_owned(),
            note: Some(note.to_owned()),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &about).await {
            tracing::warn!(%err, ?about, "node loss: could not publish an Event");
        }
    }
}

/// What an action came to.
enum Done {
    /// Something was deleted, as described.
    Deleted(String),
    /// Nothing needed doing (any more).
    Nothing,
}

fn volume_ref(pv: &PersistentVolume) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("PersistentVolume".to_owned()),
        name: pv.metadata.name.clone(),
        uid: pv.metadata.uid.clone(),
        ..ObjectReference::default()
    }
}

fn claim_ref(lost: &LostClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("PersistentVolumeClaim".to_owned()),
        namespace: Some(lost.namespace.clone()),
        name: Some(lost.claim.clone()),
        uid: Some(lost.uid.clone()),
        ..ObjectReference::default()
    }
}
