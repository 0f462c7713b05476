//! Controller mode's cleanup after nodes that are gone for good: watches
//! Nodes, PVs, PVCs and StorageClasses; when a node's Node object has been
//! deleted for a grace period, or it has the out-of-service taint, deletes
//! its Released PVs of ours and the claims that opted in, and reports the
//! rest. One replica acts, the holder of a Lease.

pub mod act;
pub mod decide;
pub mod lease;

use std::collections::HashSet;
use std::fmt::Debug;
use std::fmt::Write as _;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use act::Actor;
use decide::{Absences, Action, View};
use lease::Leadership;

/// How long a Lease lasts unrenewed; it is renewed every third of that.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// Least time between two looks that changes trigger.
const SETTLE: Duration = Duration::from_secs(1);

/// What the cleanup needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The CSI driver name: only PVs of this driver are touched.
    pub driver: String,
    /// How long a Node object must stay deleted before its volumes are
    /// written off.
    pub grace: Duration,
    /// This replica's name in the Lease (the pod's name).
    pub identity: String,
    /// Where the Lease lives (the controller's namespace).
    pub namespace: String,
}

impl Settings {
    /// The Lease's name, from the driver name.
    pub fn lease_name(&self) -> String {
        format!("{}-node-loss", self.driver.replace('.', "-"))
    }
}

/// What the cleanup has done, for metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub volumes_deleted: AtomicU64,
    pub claims_deleted: AtomicU64,
    pub failures: AtomicU64,
    /// Claims on gone nodes kept because they did not opt in (last look).
    pub claims_kept: AtomicU64,
    /// Nodes counted gone that hold volumes of ours (last look).
    pub nodes_gone: AtomicU64,
    /// 1 while this replica holds the Lease.
    pub leader: AtomicU64,
}

impl Counters {
    /// The counters in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        };
        metric(
            "hostpath_csi_node_loss_volumes_deleted_total",
            "counter",
            "Released PVs of gone nodes deleted.",
            &self.volumes_deleted,
        );
        metric(
            "hostpath_csi_node_loss_claims_deleted_total",
            "counter",
            "Opted-in claims of gone nodes' volumes deleted.",
            &self.claims_deleted,
        );
        metric(
            "hostpath_csi_node_loss_failures_total",
            "counter",
            "Cleanup actions that failed (retried at the next look).",
            &self.failures,
        );
        metric(
            "hostpath_csi_node_loss_claims_kept",
            "gauge",
            "Claims bound to volumes of gone nodes, kept because they did not opt in.",
            &self.claims_kept,
        );
        metric(
            "hostpath_csi_node_loss_nodes_gone",
            "gauge",
            "Gone nodes with volumes of this driver left to clean up or claims kept (last look).",
            &self.nodes_gone,
        );
        metric(
            "hostpath_csi_node_loss_leader",
            "gauge",
            "1 while this replica holds the cleanup's Lease.",
            &self.leader,
        );
        out
    }
}

/// One replica's cleanup: its Lease, what it remembers of absent nodes, and
/// how it acts.
pub struct Reconciler {
    settings: Settings,
    leadership: Leadership,
    absences: Absences,
    actor: Actor,
    counters: Arc<Counters>,
}

impl Reconciler {
    pub fn new(client: Client, settings: Settings, counters: Arc<Counters>) -> Self {
        let leases: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
        let leadership = Leadership::new(
            leases,
            &settings.lease_name(),
            &settings.identity,
            LEASE_DURATION,
        );
        let reporter = Reporter {
            controller: "hostpath-csi-controller".to_owned(),
            instance: Some(settings.identity.clone()),
        };
        let actor = Actor {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            driver: settings.driver.clone(),
            grace: settings.grace,
            reported: HashSet::new(),
        };
        Self {
            settings,
            leadership,
            absences: Absences::default(),
            actor,
            counters,
        }
    }

    /// One look at `view`: renews the Lease, decides, and acts if this
    /// replica leads. Answers the decided actions (acted on or not).
    pub async fn pass(&mut self, view: &View, now: Instant) -> Result<Vec<Action>, kube::Error> {
        let counters = Arc::clone(&self.counters);
        let renewed = self.leadership.renew(now).await;
        let leading = *renewed.as_ref().unwrap_or(&false);
        counters.leader.store(u64::from(leading), Ordering::Relaxed);
        renewed?;
        let actions = decide::decide(
            view,
            &self.settings.driver,
            &mut self.absences,
            self.settings.grace,
            now,
        );
        let gone: HashSet<&str> = actions.iter().map(Action::node).collect();
        let kept: HashSet<&str> = actions
            .iter()
            .filter_map(|a| match a {
                Action::KeepClaim(lost) => Some(lost.uid.as_str()),
                _ => None,
            })
            .collect();
        counters
            .claims_kept
            .store(kept.len() as u64, Ordering::Relaxed);
        counters
            .nodes_gone
            .store(gone.len() as u64, Ordering::Relaxed);
        self.actor
            .reported
            .retain(|uid| kept.contains(uid.as_str()));
        if leading {
            for action in &actions {
                // Every action ends while this replica still leads, or is
                // dropped (and retried by whoever leads next).
                let Some(until) = self.leadership.leading_until() else {
                    break;
                };
                let acting = self.actor.act(action, &counters);
                if tokio::time::timeout_at(until.into(), acting).await.is_err() {
                    counters.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        ?action,
                        "node loss: the Lease ran out during an action; stopped"
                    );
                    break;
                }
            }
        }
        Ok(actions)
    }

    /// When the next look is due with nothing changing: the next renewal,
    /// or sooner if an absent node's grace period ends first.
    pub fn next_look(&self, now: Instant) -> Instant {
        let renewal = now + LEASE_DURATION / 3;
        self.absences
            .next_deadline(self.settings.grace, now)
            .map_or(renewal, |deadline| deadline.min(renewal))
    }
}

/// Runs the cleanup for as long as the process runs: watches fill the
/// stores, and each change (or the Lease's renewal) triggers a look.
pub async fn run(client: Client, settings: Settings, counters: Arc<Counters>) {
    let changed = Arc::new(Notify::new());
    let nodes = watch::<Node>(Api::all(client.clone()), &changed);
    let volumes = watch::<PersistentVolume>(Api::all(client.clone()), &changed);
    let claims = watch::<PersistentVolumeClaim>(Api::all(client.clone()), &changed);
    let classes = watch::<StorageClass>(Api::all(client.clone()), &changed);
    for (what, ready) in [
        ("nodes", nodes.wait_until_ready().await),
        ("persistentvolumes", volumes.wait_until_ready().await),
        ("persistentvolumeclaims", claims.wait_until_ready().await),
        ("storageclasses", classes.wait_until_ready().await),
    ] {
        if let Err(err) = ready {
            tracing::error!(%err, "node loss: the watch of {what} ended before it was ready");
            return;
        }
    }
    tracing::info!(grace = ?settings.grace, identity = %settings.identity, lease = %settings.lease_name(), "node loss: watching");
    let mut reconciler = Reconciler::new(client, settings, counters);
    loop {
        let now = Instant::now();
        let view = View {
            nodes: nodes.state(),
            volumes: volumes.state(),
            claims: claims.state(),
            classes: classes.state(),
        };
        if let Err(err) = reconciler.pass(&view, now).await {
            tracing::warn!(%err, "node loss: could not renew the Lease");
        }
        let next = reconciler.next_look(now);
        tokio::select! {
            // A burst of changes (any user may create claims) costs one
            // look per SETTLE, not one per event: each look reads every
            // stored object.
            () = changed.notified() => tokio::time::sleep(SETTLE).await,
            () = tokio::time::sleep_until(next.into()) => {}
        }
    }
}

/// A store of `api`'s objects kept current by a watch, which notifies
/// `changed` at every event.
fn watch<K>(api: Api<K>, changed: &Arc<Notify>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (store, writer): (Store<K>, Writer<K>) = reflector::store();
    let changed = Arc::clone(changed);
    let events = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    );
    tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(err) => tracing::warn!(%err, "node loss: watch failed; retrying"),
            }
        }
    });
    store
}
