//! What to do about the volumes of nodes that are gone, decided from a view
//! of the cluster alone: no API calls, no clocks beyond the `now` given.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;

pub use crate::on_node_loss::{
    CLAIM_ANNOTATION, CLASS_PARAMETER, DELETE_CLAIM, KEEP_CLAIM, OnNodeLoss,
};

/// The taint that says a node is shut down for good (or out of service long
/// enough that its volumes are written off).
pub const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";
/// The finalizer external-provisioner puts on the PVs it made, removed by it
/// after DeleteVolume, which a gone node's provisioner will never call.
pub const PROVISIONER_FINALIZER: &str = "external-provisioner.volume.kubernetes.io/finalizer";

/// The objects the decision reads, as the watches last saw them.
#[derive(Debug, Default, Clone)]
pub struct View {
    pub nodes: Vec<Arc<Node>>,
    pub volumes: Vec<Arc<PersistentVolume>>,
    pub claims: Vec<Arc<PersistentVolumeClaim>>,
    pub classes: Vec<Arc<StorageClass>>,
}

/// Why a node counts as gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// Its Node object has been absent for the whole grace period.
    Deleted,
    /// It carries the out-of-service taint.
    OutOfService,
}

impl Gone {
    pub fn describe(self, grace: Duration) -> String {
        match self {
            Gone::Deleted => format!("its Node object has been deleted for over {grace:?}"),
            Gone::OutOfService => format!("it has the {OUT_OF_SERVICE_TAINT} taint"),
        }
    }
}

/// One thing to do (or to report) about a gone node's volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A Released PV (reclaim Delete) whose data went with its node: delete
    /// it and drop the provisioner's finalizer.
    DeleteVolume {
        pv: String,
        node: String,
        gone: Gone,
    },
    /// A claim bound to such a volume that opted in: delete it.
    DeleteClaim(LostClaim),
    /// A claim that did not opt in: kept, and reported.
    KeepClaim(LostClaim),
}

impl Action {
    /// The gone node the action is about.
    pub fn node(&self) -> &str {
        match self {
            Action::DeleteVolume { node, .. } => node,
            Action::DeleteClaim(lost) | Action::KeepClaim(lost) => &lost.node,
        }
    }
}

/// A claim bound to a volume of a gone node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostClaim {
    pub namespace: String,
    pub claim: String,
    /// The claim's uid: only this claim, not one made again under its name.
    pub uid: String,
    pub pv: String,
    pub node: String,
    pub gone: Gone,
}

/// When each absent node that still has volumes of ours was first seen
/// absent. Starts empty: after a restart the grace period starts again,
/// which errs on the side of keeping data.
#[derive(Debug, Default)]
pub struct Absences {
    since: HashMap<String, Instant>,
}

impl Absences {
    /// Records which of `pinned` nodes are absent from `present` at `now`,
    /// and forgets nodes that came back or hold nothing of ours any more.
    pub fn update(&mut self, present: &BTreeSet<&str>, pinned: &BTreeSet<&str>, now: Instant) {
        self.since
            .retain(|node, _| pinned.contains(node.as_str()) && !present.contains(node.as_str()));
        for node in pinned.difference(present) {
            self.since.entry((*node).to_owned()).or_insert(now);
        }
    }

    /// Whether `node` has been absent for at least `grace` at `now`.
    pub fn absent_for(&self, node: &str, grace: Duration, now: Instant) -> bool {
        self.since
            .get(node)
            .is_some_and(|since| now.saturating_duration_since(*since) >= grace)
    }

    /// The earliest moment after `now` at which a tracked absence ends its
    /// grace period, for the next look.
    pub fn next_deadline(&self, grace: Duration, now: Instant) -> Option<Instant> {
        self.since
            .values()
            .map(|since| *since + grace)
            .filter(|deadline| *deadline > now)
            .min()
    }
}

/// The node a PV of `driver` is pinned to, by the driver's topology key
/// (whose value is the node's name: the DaemonSet's `--node-id`). PVs
/// pinned otherwise, such as static PVs by `kubernetes.io/hostname` (a label
/// whose value need not be the node's name), are never matched.
pub fn pinned_node<'a>(pv: &'a PersistentVolume, driver: &str) -> Option<&'a str> {
    let spec = pv.spec.as_ref()?;
    if spec.csi.as_ref()?.driver != driver {
        return None;
    }
    let topology_key = format!("topology.{driver}/node");
    let terms = &spec
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|term| term.match_expressions.iter().flatten())
        .find(|expr| expr.key == topology_key && expr.operator == "In")
        .and_then(|expr| match expr.values.as_deref() {
            Some([node]) => Some(node.as_str()),
            _ => None,
        })
}

/// Whether `node` has the out-of-service taint.
pub fn out_of_service(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|spec| spec.taints.as_ref())
        .is_some_and(|taints| taints.iter().any(|t| t.key == OUT_OF_SERVICE_TAINT))
}

/// Whether `pv` still waits for the provisioner's DeleteVolume.
pub fn has_provisioner_finalizer(pv: &PersistentVolume) -> bool {
    pv.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == PROVISIONER_FINALIZER)
}

/// The nodes of the view, and whether each has the out-of-service taint.
fn node_states(view: &View) -> BTreeMap<&str, bool> {
    view.nodes
        .iter()
        .filter_map(|node| Some((node.metadata.name.as_deref()?, out_of_service(node))))
        .collect()
}

/// Updates `absences` from the view, then lists what to do about every PV
/// of `driver` whose node is gone (deleted for `grace`, or out of service).
pub fn decide(
    view: &View,
    driver: &str,
    absences: &mut Absences,
    grace: Duration,
    now: Instant,
) -> Vec<Action> {
    let nodes = node_states(view);
    let pinned: Vec<(&PersistentVolume, &str)> = view
        .volumes
        .iter()
        .filter_map(|pv| Some((pv.as_ref(), pinned_node(pv, driver)?)))
        .collect();
    let present: BTreeSet<&str> = nodes.keys().copied().collect();
    let pinned_nodes: BTreeSet<&str> = pinned.iter().map(|(_, node)| *node).collect();
    absences.update(&present, &pinned_nodes, now);

    let mut actions = Vec::new();
    for (pv, node) in pinned {
        let gone = match nodes.get(node) {
            Some(true) => Gone::OutOfService,
            Some(false) => continue,
            None if absences.absent_for(node, grace, now) => Gone::Deleted,
            None => continue,
        };
        if let Some(action) = volume_action(view, pv, node, gone) {
            actions.push(action);
        }
    }
    actions
}

/// What to do about one PV of a gone node, if anything.
fn volume_action(view: &View, pv: &PersistentVolume, node: &str, gone: Gone) -> Option<Action> {
    let name = pv.metadata.name.clone()?;
    let spec = pv.spec.as_ref()?;
    let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
    let reclaim_delete = spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete");
    let delete = Action::DeleteVolume {
        pv: name.clone(),
        node: node.to_owned(),
        gone,
    };
    // Being deleted: only the provisioner's finalizer may be left to us.
    if pv.metadata.deletion_timestamp.is_some() {
        return has_provisioner_finalizer(pv).then_some(delete);
    }
    if phase == Some("Released") && reclaim_delete {
        return Some(delete);
    }
    if phase != Some("Bound") {
        return None;
    }
    let claim_ref = spec.claim_ref.as_ref()?;
    let claim = view.claims.iter().find(|claim| {
        claim.metadata.namespace == claim_ref.namespace
            && claim.metadata.name == claim_ref.name
            && (claim_ref.uid.is_none() || claim.metadata.uid == claim_ref.uid)
    })?;
    if claim.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let lost = LostClaim {
        namespace: claim.metadata.namespace.clone()?,
        claim: claim.metadata.name.clone()?,
        uid: claim.metadata.uid.clone().unwrap_or_default(),
        pv: name,
        node: node.to_owned(),
        gone,
    };
    Some(
        match choice(view, claim, spec.storage_class_name.as_deref()) {
            OnNodeLoss::DeleteClaim => Action::DeleteClaim(lost),
            OnNodeLoss::Keep => Action::KeepClaim(lost),
        },
    )
}

/// The claim's choice: its annotation, else its class's parameter, else
/// keep. A value that does not parse keeps the claim.
fn choice(view: &View, claim: &PersistentVolumeClaim, pv_class: Option<&str>) -> OnNodeLoss {
    if let Some(value) = claim
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CLAIM_ANNOTATION))
    {
        return OnNodeLoss::parse(value).unwrap_or(OnNodeLoss::Keep);
    }
    let class_name = claim
        .spec
        .as_ref()
        .and_then(|spec| spec.storage_class_name.as_deref())
        .or(pv_class);
    view.classes
        .iter()
        .find(|class| class.metadata.name.as_deref() == class_name && class_name.is_some())
        .and_then(|class| class.parameters.as_ref()?.get(CLASS_PARAMETER))
        .map_or(OnNodeLoss::Keep, |value| {
            OnNodeLoss::parse(value).unwrap_or(OnNodeLoss::Keep)
        })
}
