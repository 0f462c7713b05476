//! The cleanup after lost nodes (controller mode): what it decides from a
//! view of the cluster, and what it asks of a mocked API server (kube's
//! tower-test mock, answered by a small stateful fake of the API).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hostpath_csi::node_loss::decide::{self, Absences, Action, Gone, LostClaim, View};
use hostpath_csi::node_loss::{Counters, Reconciler, Settings};
use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

const DRIVER: &str = "hostpath-csi.dev";
const GRACE: Duration = Duration::from_secs(300);
const LEASE_PATH: &str =
    "/apis/coordination.k8s.io/v1/namespaces/hostpath-csi/leases/hostpath-csi-dev-node-loss";

fn object<T: serde::de::DeserializeOwned>(value: Value) -> Arc<T> {
    Arc::new(serde_json::from_value(value).expect("a valid object"))
}

fn node(name: &str, taints: Value) -> Value {
    json!({"metadata": {"name": name}, "spec": {"taints": taints}})
}

/// A PV of `driver` pinned to `node`, in `phase`, bound to `claim` (in
/// namespace `apps`) if given.
fn volume(
    name: &str,
    driver: &str,
    key: &str,
    node: &str,
    phase: &str,
    claim: Option<&str>,
) -> Value {
    let mut pv = json!({
        "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "7",
            "finalizers": ["kubernetes.io/pv-protection", decide::PROVISIONER_FINALIZER]},
        "spec": {
            "csi": {"driver": driver, "volumeHandle": format!("h-{name}")},
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": "hostpath",
            "nodeAffinity": {"required": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": key, "operator": "In", "values": [node]}]}]}}
        },
        "status": {"phase": phase}
    });
    if let Some(claim) = claim {
        pv["spec"]["claimRef"] =
            json!({"namespace": "apps", "name": claim, "uid": format!("uid-{claim}")});
    }
    pv
}

fn ours(name: &str, node: &str, phase: &str, claim: Option<&str>) -> Value {
    volume(
        name,
        DRIVER,
        &format!("topology.{DRIVER}/node"),
        node,
        phase,
        claim,
    )
}

fn claim(name: &str, class: &str, annotation: Option<&str>) -> Value {
    let mut pvc = json!({
        "metadata": {"name": name, "namespace": "apps", "uid": format!("uid-{name}")},
        "spec": {"storageClassName": class, "volumeName": format!("pv-{name}")}
    });
    if let Some(value) = annotation {
        pvc["metadata"]["annotations"] = json!({decide::CLAIM_ANNOTATION: value});
    }
    pvc
}

fn class(name: &str, on_node_loss: Option<&str>) -> Value {
    let mut class = json!({"metadata": {"name": name}, "provisioner": DRIVER});
    if let Some(value) = on_node_loss {
        class["parameters"] = json!({decide::CLASS_PARAMETER: value});
    }
    class
}

fn view(nodes: Vec<Value>, volumes: Vec<Value>, claims: Vec<Value>, classes: Vec<Value>) -> View {
    View {
        nodes: nodes.into_iter().map(object).collect(),
        volumes: volumes.into_iter().map(object).collect(),
        claims: claims.into_iter().map(object).collect(),
        classes: classes.into_iter().map(object).collect(),
    }
}

/// A StatefulSet-style claim, opted in, bound to a volume on node `lost`;
/// the cluster has `nodes`.
fn statefulset_on(nodes: Vec<Value>) -> View {
    view(
        nodes,
        vec![ours("pv-www-web-0", "lost", "Bound", Some("www-web-0"))],
        vec![claim("www-web-0", "hostpath", Some(decide::DELETE_CLAIM))],
        vec![class("hostpath", None)],
    )
}

fn decide_at(view: &View, absences: &mut Absences, now: Instant) -> Vec<Action> {
    decide::decide(view, DRIVER, absences, GRACE, now)
}

fn delete_claim(claim: &str, node: &str, gone: Gone) -> Action {
    Action::DeleteClaim(LostClaim {
        namespace: "apps".into(),
        claim: claim.into(),
        uid: format!("uid-{claim}"),
        pv: format!("pv-{claim}"),
        node: node.into(),
        gone,
    })
}

#[test]
fn a_deleted_node_is_gone_only_after_the_grace_period_and_not_if_it_comes_back() {
    let t0 = Instant::now();
    let mut absences = Absences::default();
    let without = statefulset_on(vec![node("alive", json!([]))]);
    let with = statefulset_on(vec![node("alive", json!([])), node("lost", json!([]))]);
    assert_eq!(decide_at(&without, &mut absences, t0), vec![]);
    assert_eq!(
        decide_at(&without, &mut absences, t0 + GRACE - Duration::from_secs(1)),
        vec![]
    );
    // Back (reinstalled under the same name) inside the grace period: the
    // absence is forgotten, and a later deletion starts the clock again.
    assert_eq!(
        decide_at(&with, &mut absences, t0 + Duration::from_secs(200)),
        vec![]
    );
    let again = t0 + Duration::from_secs(250);
    assert_eq!(decide_at(&without, &mut absences, again), vec![]);
    assert_eq!(
        decide_at(
            &without,
            &mut absences,
            t0 + GRACE + Duration::from_secs(10)
        ),
        vec![]
    );
    assert_eq!(
        decide_at(&without, &mut absences, again + GRACE),
        vec![delete_claim("www-web-0", "lost", Gone::Deleted)]
    );
}

#[test]
fn a_node_that_is_only_not_ready_keeps_everything() {
    let t0 = Instant::now();
    let mut absences = Absences::default();
    let not_ready = json!([
        {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"},
        {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}
    ]);
    let rebooting = statefulset_on(vec![node("lost", not_ready)]);
    for hours in [0, 1, 24] {
        let later = t0 + Duration::from_secs(hours * 3600);
        assert_eq!(decide_at(&rebooting, &mut absences, later), vec![]);
    }
}

#[test]
fn the_out_of_service_taint_counts_at_once() {
    let mut absences = Absences::default();
    let taint = json!([{"key": decide::OUT_OF_SERVICE_TAINT, "value": "nodeshutdown", "effect": "NoExecute"}]);
    let shut_down = statefulset_on(vec![node("lost", taint)]);
    assert_eq!(
        decide_at(&shut_down, &mut absences, Instant::now()),
        vec![delete_claim("www-web-0", "lost", Gone::OutOfService)]
    );
}

#[test]
fn claims_are_deleted_only_where_they_or_their_class_opted_in() {
    let classes = vec![
        class("opted", Some(decide::DELETE_CLAIM)),
        class("plain", None),
    ];
    let claims = vec![
        claim("by-annotation", "plain", Some(decide::DELETE_CLAIM)),
        claim("by-class", "opted", None),
        claim("not-opted", "plain", None),
        claim("kept-by-annotation", "opted", Some(decide::KEEP_CLAIM)),
        claim("unreadable-choice", "plain", Some("yes please")),
    ];
    let volumes = claims
        .iter()
        .map(|c| {
            let name = c["metadata"]["name"].as_str().unwrap();
            ours(&format!("pv-{name}"), "lost", "Bound", Some(name))
        })
        .collect();
    let cluster = view(vec![], volumes, claims, classes);
    let mut absences = Absences::default();
    let t0 = Instant::now();
    assert_eq!(decide_at(&cluster, &mut absences, t0), vec![]);
    let actions = decide_at(&cluster, &mut absences, t0 + GRACE);
    let verdicts: BTreeMap<String, bool> = actions
        .iter()
        .map(|action| match action {
            Action::DeleteClaim(lost) => (lost.claim.clone(), true),
            Action::KeepClaim(lost) => (lost.claim.clone(), false),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let want: BTreeMap<String, bool> = [
        ("by-annotation", true),
        ("by-class", true),
        ("not-opted", false),
        ("kept-by-annotation", false),
        ("unreadable-choice", false),
    ]
    .into_iter()
    .map(|(name, delete)| (name.to_owned(), delete))
    .collect();
    assert_eq!(verdicts, want);
}

#[test]
fn other_drivers_hostname_pinned_retained_and_available_volumes_are_left_alone() {
    let taint = json!([{"key": decide::OUT_OF_SERVICE_TAINT, "effect": "NoExecute"}]);
    let mut retained = ours("pv-retained", "lost", "Released", None);
    retained["spec"]["persistentVolumeReclaimPolicy"] = json!("Retain");
    let cluster = view(
        vec![node("lost", taint)],
        vec![
            volume(
                "pv-other",
                "other.csi.io",
                "kubernetes.io/hostname",
                "lost",
                "Released",
                None,
            ),
            volume(
                "pv-other-bound",
                "other.csi.io",
                "topology.other.csi.io/node",
                "lost",
                "Bound",
                Some("theirs"),
            ),
            retained,
            ours("pv-available", "lost", "Available", None),
            ours("pv-released", "lost", "Released", None),
            // Pinned by the hostname label, whose value need not be the
            // node's name: never matched.
            volume(
                "pv-static",
                DRIVER,
                "kubernetes.io/hostname",
                "lost",
                "Released",
                None,
            ),
        ],
        vec![claim("theirs", "other", Some(decide::DELETE_CLAIM))],
        vec![],
    );
    let actions = decide_at(&cluster, &mut Absences::default(), Instant::now());
    let deleted: Vec<&str> = actions
        .iter()
        .map(|action| match action {
            Action::DeleteVolume { pv, .. } => pv.as_str(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(deleted, ["pv-released"]);
}

/// One request the fake API server saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: Value,
}

/// A fake API server: a Lease, PVs and claims by path, answering as the
/// real one would for the calls the cleanup makes.
#[derive(Default)]
struct FakeApi {
    objects: HashMap<String, Value>,
    seen: Vec<Seen>,
}

impl FakeApi {
    fn answer(&mut self, method: &str, uri: &str, body: Value) -> (StatusCode, Value) {
        let path = uri.split('?').next().unwrap().to_owned();
        self.seen.push(Seen {
            method: method.into(),
            path: path.clone(),
            body: body.clone(),
        });
        if path.ends_with("/events") {
            return (StatusCode::CREATED, body);
        }
        match method {
            "GET" => match self.objects.get(&path) {
                Some(found) => (StatusCode::OK, found.clone()),
                None => not_found(),
            },
            "POST" => {
                let name = body["metadata"]["name"].as_str().unwrap();
                let path = format!("{path}/{name}");
                if self.objects.contains_key(&path) {
                    return (StatusCode::CONFLICT, status(409, "AlreadyExists"));
                }
                self.objects.insert(path, with_version(body.clone(), "1"));
                (StatusCode::CREATED, body)
            }
            "PUT" => {
                let stored = self.objects.get(&path).cloned().unwrap_or_default();
                if stored["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"] {
                    return (StatusCode::CONFLICT, status(409, "Conflict"));
                }
                let next = bump(&stored);
                self.objects.insert(path, with_version(body.clone(), &next));
                (StatusCode::OK, body)
            }
            "DELETE" => {
                let Some(stored) = self.objects.get(&path).cloned() else {
                    return not_found();
                };
                for field in ["uid", "resourceVersion"] {
                    let wanted = &body["preconditions"][field];
                    if !wanted.is_null() && *wanted != stored["metadata"][field] {
                        return (StatusCode::CONFLICT, status(409, "Conflict"));
                    }
                }
                let finalizers = stored["metadata"]["finalizers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if finalizers.is_empty() {
                    self.objects.remove(&path);
                    return (StatusCode::OK, status(200, "Success"));
                }
                let mut left = with_version(stored.clone(), &bump(&stored));
                left["metadata"]["deletionTimestamp"] = json!("2026-12-03T12:00:00Z");
                self.objects.insert(path, left.clone());
                (StatusCode::OK, left)
            }
            "PATCH" => {
                let Some(stored) = self.objects.get(&path).cloned() else {
                    return not_found();
                };
                if stored["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"] {
                    return (StatusCode::CONFLICT, status(409, "Conflict"));
                }
                let mut patched = with_version(stored.clone(), &bump(&stored));
                patched["metadata"]["finalizers"] = body["metadata"]["finalizers"].clone();
                let gone = patched["metadata"]["deletionTimestamp"].is_string()
                    && patched["metadata"]["finalizers"]
                        .as_array()
                        .is_none_or(Vec::is_empty);
                if gone {
                    self.objects.remove(&path);
                } else {
                    self.objects.insert(path, patched.clone());
                }
                (StatusCode::OK, patched)
            }
            other => panic!("unexpected method {other}"),
        }
    }

    /// The requests seen, as "METHOD path" without queries, leaving out
    /// the Lease's.
    fn calls(&self) -> Vec<String> {
        self.seen
            .iter()
            .filter(|seen| {
                !seen
                    .path
                    .starts_with(LEASE_PATH.rsplit_once('/').unwrap().0)
            })
            .map(|seen| format!("{} {}", seen.method, seen.path))
            .collect()
    }
}

fn with_version(mut object: Value, version: &str) -> Value {
    object["metadata"]["resourceVersion"] = json!(version);
    object
}

fn bump(object: &Value) -> String {
    let version: u64 = object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .parse()
        .unwrap();
    (version + 1).to_string()
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": if code < 300 { "Success" } else { "Failure" },
        "message": reason, "reason": reason, "code": code})
}

fn not_found() -> (StatusCode, Value) {
    (StatusCode::NOT_FOUND, status(404, "NotFound"))
}

/// A kube client whose requests `fake` answers.
fn client_of(fake: &Arc<Mutex<FakeApi>>) -> Client {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let fake = Arc::clone(fake);
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            let method = request.method().to_string();
            let path = request.uri().to_string();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            let (code, answer) = fake.lock().unwrap().answer(&method, &path, body);
            let mut response = Response::new(Body::from(serde_json::to_vec(&answer).unwrap()));
            *response.status_mut() = code;
            respond.send_response(response);
        }
    });
    Client::new(service, "hostpath-csi")
}

fn replica(fake: &Arc<Mutex<FakeApi>>, identity: &str) -> (Reconciler, Arc<Counters>) {
    let settings = Settings {
        driver: DRIVER.into(),
        grace: GRACE,
        identity: identity.into(),
        namespace: "hostpath-csi".into(),
    };
    let counters = Arc::new(Counters::default());
    (
        Reconciler::new(client_of(fake), settings, Arc::clone(&counters)),
        counters,
    )
}

/// Puts `object` in the fake at `path`, with a resourceVersion if it has none.
fn store(fake: &Arc<Mutex<FakeApi>>, path: &str, object: &Value) {
    let mut object = object.clone();
    if object["metadata"]["resourceVersion"].is_null() {
        object["metadata"]["resourceVersion"] = json!("1");
    }
    fake.lock().unwrap().objects.insert(path.into(), object);
}

#[tokio::test]
async fn the_leader_deletes_opted_in_claims_and_released_volumes_once() {
    let fake = Arc::new(Mutex::new(FakeApi::default()));
    let released = ours("pv-released", "lost", "Released", None);
    let bound = ours("pv-www-web-0", "lost", "Bound", Some("www-web-0"));
    let claimed = claim("www-web-0", "hostpath", Some(decide::DELETE_CLAIM));
    store(&fake, "/api/v1/persistentvolumes/pv-released", &released);
    store(
        &fake,
        "/api/v1/namespaces/apps/persistentvolumeclaims/www-web-0",
        &claimed,
    );
    let taint = json!([{"key": decide::OUT_OF_SERVICE_TAINT, "effect": "NoExecute"}]);
    // Another driver's Released PV on the same node: never touched.
    let theirs = volume(
        "pv-theirs",
        "other.csi.io",
        "kubernetes.io/hostname",
        "lost",
        "Released",
        None,
    );
    store(&fake, "/api/v1/persistentvolumes/pv-theirs", &theirs);
    let cluster = view(
        vec![node("lost", taint.clone())],
        vec![theirs, released, bound],
        vec![claimed],
        vec![],
    );
    let (mut reconciler, counters) = replica(&fake, "replica-a");

    let actions = reconciler.pass(&cluster, Instant::now()).await.unwrap();
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert_eq!(
        fake.lock().unwrap().calls(),
        [
            "GET /api/v1/persistentvolumes/pv-released",
            "GET /api/v1/nodes/lost",
            "DELETE /api/v1/persistentvolumes/pv-released",
            "PATCH /api/v1/persistentvolumes/pv-released",
            "POST /apis/events.k8s.io/v1/namespaces/default/events",
            "GET /api/v1/namespaces/apps/persistentvolumeclaims/www-web-0",
            "GET /api/v1/nodes/lost",
            "DELETE /api/v1/namespaces/apps/persistentvolumeclaims/www-web-0",
            "POST /apis/events.k8s.io/v1/namespaces/apps/events",
        ]
    );
    {
        let fake = fake.lock().unwrap();
        let seen = &fake.seen;
        let patch = seen.iter().find(|s| s.method == "PATCH").unwrap();
        assert_eq!(
            patch.body["metadata"]["finalizers"],
            json!(["kubernetes.io/pv-protection"])
        );
        let claim_delete = seen
            .iter()
            .find(|s| s.method == "DELETE" && s.path.contains("claims/www-web-0"))
            .unwrap();
        assert_eq!(
            claim_delete.body["preconditions"],
            json!({"uid": "uid-www-web-0", "resourceVersion": "1"})
        );
        let volume_delete = seen.iter().find(|s| s.method == "DELETE").unwrap();
        assert_eq!(
            volume_delete.body["preconditions"],
            json!({"uid": "uid-pv-released", "resourceVersion": "7"})
        );
        let event = seen.iter().rfind(|s| s.path.ends_with("/events")).unwrap();
        assert_eq!(event.body["reason"], json!("NodeLost"));
        assert_eq!(event.body["regarding"]["name"], json!("www-web-0"));
        let lease = &fake.objects[LEASE_PATH];
        assert_eq!(lease["spec"]["holderIdentity"], json!("replica-a"));
        // Left to Kubernetes: the pv-protection finalizer.
        let pv = &fake.objects["/api/v1/persistentvolumes/pv-released"];
        assert!(pv["metadata"]["deletionTimestamp"].is_string());
    }
    assert_eq!(counters.volumes_deleted.load(Ordering::Relaxed), 1);
    assert_eq!(counters.claims_deleted.load(Ordering::Relaxed), 1);
    assert_eq!(counters.leader.load(Ordering::Relaxed), 1);

    // A restarted controller sees the aftermath: the claim gone, the PV
    // being deleted without the provisioner's finalizer. Nothing more.
    fake.lock().unwrap().seen.clear();
    let aftermath = fake.lock().unwrap().objects["/api/v1/persistentvolumes/pv-released"].clone();
    let cluster = view(vec![node("lost", taint)], vec![aftermath], vec![], vec![]);
    let (mut restarted, counters) = replica(&fake, "replica-a");
    assert_eq!(
        restarted.pass(&cluster, Instant::now()).await.unwrap(),
        vec![]
    );
    assert_eq!(fake.lock().unwrap().calls(), Vec::<String>::new());
    assert_eq!(
        counters.leader.load(Ordering::Relaxed),
        1,
        "it renewed its own Lease"
    );
}

#[tokio::test]
async fn a_stale_view_never_deletes_a_claim_made_again_or_a_volume_since_retained() {
    let fake = Arc::new(Mutex::new(FakeApi::default()));
    let mut remade = claim("www-web-0", "hostpath", Some(decide::DELETE_CLAIM));
    remade["metadata"]["uid"] = json!("uid-of-the-new-claim");
    store(
        &fake,
        "/api/v1/namespaces/apps/persistentvolumeclaims/www-web-0",
        &remade,
    );
    let released = ours("pv-released", "lost", "Released", None);
    let mut retained = released.clone();
    retained["spec"]["persistentVolumeReclaimPolicy"] = json!("Retain");
    store(&fake, "/api/v1/persistentvolumes/pv-released", &retained);
    let taint = json!([{"key": decide::OUT_OF_SERVICE_TAINT, "effect": "NoExecute"}]);
    let mut stale = statefulset_on(vec![node("lost", taint)]);
    stale.volumes.push(object(released));
    let (mut reconciler, counters) = replica(&fake, "replica-a");
    assert_eq!(
        reconciler.pass(&stale, Instant::now()).await.unwrap().len(),
        2
    );
    assert_eq!(
        fake.lock().unwrap().calls(),
        [
            "GET /api/v1/namespaces/apps/persistentvolumeclaims/www-web-0",
            "GET /api/v1/persistentvolumes/pv-released",
        ]
    );
    assert_eq!(counters.volumes_deleted.load(Ordering::Relaxed), 0);
    assert!(
        fake.lock()
            .unwrap()
            .objects
            .contains_key("/api/v1/namespaces/apps/persistentvolumeclaims/www-web-0"),
        "the new claim survives"
    );
    assert_eq!(counters.claims_deleted.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_node_back_between_deciding_and_acting_loses_nothing() {
    let fake = Arc::new(Mutex::new(FakeApi::default()));
    let claimed = claim("www-web-0", "hostpath", Some(decide::DELETE_CLAIM));
    store(
        &fake,
        "/api/v1/namespaces/apps/persistentvolumeclaims/www-web-0",
        &claimed,
    );
    let released = ours("pv-released", "lost", "Released", None);
    store(&fake, "/api/v1/persistentvolumes/pv-released", &released);
    // The watches have not seen it yet, the API server has: the node is back.
    store(&fake, "/api/v1/nodes/lost", &node("lost", json!([])));
    let mut stale = statefulset_on(vec![]);
    stale.volumes.push(object(released));
    let (mut reconciler, counters) = replica(&fake, "replica-a");
    let t0 = Instant::now();
    reconciler.pass(&stale, t0).await.unwrap();
    assert_eq!(reconciler.pass(&stale, t0 + GRACE).await.unwrap().len(), 2);
    assert_eq!(
        fake.lock().unwrap().calls(),
        [
            "GET /api/v1/namespaces/apps/persistentvolumeclaims/www-web-0",
            "GET /api/v1/nodes/lost",
            "GET /api/v1/persistentvolumes/pv-released",
            "GET /api/v1/nodes/lost",
        ]
    );
    assert_eq!(counters.claims_deleted.load(Ordering::Relaxed), 0);
    assert_eq!(counters.volumes_deleted.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_replica_without_the_lease_does_nothing() {
    let fake = Arc::new(Mutex::new(FakeApi::default()));
    let (mut leader, _) = replica(&fake, "replica-a");
    let taint = json!([{"key": decide::OUT_OF_SERVICE_TAINT, "effect": "NoExecute"}]);
    let empty = view(vec![], vec![], vec![], vec![]);
    leader.pass(&empty, Instant::now()).await.unwrap();

    let cluster = statefulset_on(vec![node("lost", taint)]);
    store(
        &fake,
        "/api/v1/namespaces/apps/persistentvolumeclaims/www-web-0",
        &claim("www-web-0", "hostpath", Some(decide::DELETE_CLAIM)),
    );
    let (mut follower, counters) = replica(&fake, "replica-b");
    let t0 = Instant::now();
    // Well past a lease duration, the leader renewing every 5 s: the
    // follower never leads.
    for seconds in (0..=40).step_by(5) {
        let now = t0 + Duration::from_secs(seconds);
        let decided = follower.pass(&cluster, now).await.unwrap();
        assert_eq!(decided.len(), 1, "it decides, but does not act");
        leader.pass(&empty, now).await.unwrap();
    }
    assert_eq!(fake.lock().unwrap().calls(), Vec::<String>::new());
    assert_eq!(counters.leader.load(Ordering::Relaxed), 0);
    assert_eq!(counters.claims_deleted.load(Ordering::Relaxed), 0);

    // The leader stops renewing: once the follower has seen the same
    // record for a lease duration by its own clock, it takes over and acts.
    let last_seen = t0 + Duration::from_secs(45);
    follower.pass(&cluster, last_seen).await.unwrap();
    // (Looks come at least a third of a duration apart to reach the API.)
    let almost = last_seen + hostpath_csi::node_loss::LEASE_DURATION * 2 / 3;
    follower.pass(&cluster, almost).await.unwrap();
    assert_eq!(counters.leader.load(Ordering::Relaxed), 0);
    let later = last_seen + hostpath_csi::node_loss::LEASE_DURATION;
    follower.pass(&cluster, later).await.unwrap();
    assert_eq!(counters.leader.load(Ordering::Relaxed), 1);
    assert_eq!(counters.claims_deleted.load(Ordering::Relaxed), 1);
    let lease = fake.lock().unwrap().objects[LEASE_PATH].clone();
    assert_eq!(lease["spec"]["holderIdentity"], json!("replica-b"));
    assert_eq!(lease["spec"]["leaseTransitions"], json!(1));
}

#[tokio::test]
async fn a_node_back_inside_the_grace_period_loses_nothing_and_a_kept_claim_is_reported_once() {
    let fake = Arc::new(Mutex::new(FakeApi::default()));
    let (mut reconciler, counters) = replica(&fake, "replica-a");
    let not_opted = |nodes| {
        view(
            nodes,
            vec![ours("pv-data", "lost", "Bound", Some("data"))],
            vec![claim("data", "hostpath", None)],
            vec![class("hostpath", None)],
        )
    };
    // Opted in, and its node back inside the grace period: nothing is
    // deleted, then or a long time after.
    let opted = |nodes| {
        let mut cluster = not_opted(nodes);
        cluster.claims = vec![object(claim(
            "data",
            "hostpath",
            Some(decide::DELETE_CLAIM),
        ))];
        cluster
    };
    let t0 = Instant::now();
    let seconds = |s| t0 + Duration::from_secs(s);
    reconciler.pass(&opted(vec![]), t0).await.unwrap();
    let back = opted(vec![node("lost", json!([]))]);
    reconciler.pass(&back, seconds(60)).await.unwrap();
    // Deleted again at 90 s: the clock starts again there, so past the
    // first absence's grace period nothing happens.
    reconciler.pass(&opted(vec![]), seconds(90)).await.unwrap();
    reconciler
        .pass(&opted(vec![]), t0 + GRACE + Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(fake.lock().unwrap().calls(), Vec::<String>::new());

    // Gone for good, and the claim did not opt in: one Event (not one per
    // look), a gauge, nothing deleted.
    for look in 1..=3 {
        let now = seconds(90) + GRACE + Duration::from_secs(look);
        reconciler.pass(&not_opted(vec![]), now).await.unwrap();
    }
    assert_eq!(
        fake.lock().unwrap().calls(),
        ["POST /apis/events.k8s.io/v1/namespaces/apps/events"]
    );
    let event = fake
        .lock()
        .unwrap()
        .seen
        .iter()
        .rfind(|s| s.path.ends_with("/events"))
        .unwrap()
        .clone();
    let note = event.body["note"].as_str().unwrap();
    assert!(
        note.contains("pv-data")
            && note.contains("lost")
            && note.contains(decide::CLAIM_ANNOTATION),
        "{note}"
    );
    assert_eq!(counters.claims_kept.load(Ordering::Relaxed), 1);
    assert_eq!(counters.nodes_gone.load(Ordering::Relaxed), 1);
    assert_eq!(counters.claims_deleted.load(Ordering::Relaxed), 0);
    let metrics = counters.render();
    assert!(
        metrics.contains("hostpath_csi_node_loss_claims_kept 1\n"),
        "{metrics}"
    );
    // For promtool to lint (scripts/check-monitoring.sh).
    std::fs::write(
        concat!(env!("CARGO_TARGET_TMPDIR"), "/node-loss-scrape.prom"),
        &metrics,
    )
    .unwrap();
}

#[test]
fn the_binary_without_a_kubernetes_api_fails_at_start_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hostpath-csi-node-loss"))
        .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
        .env("HOME", dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("no Kubernetes API to talk to"), "{stderr}");
}

/// deploy/kubernetes lets the cleanup read and update one Lease by name
/// (scripts/manifest_checks.py `lease-names` checks every render uses the
/// same rule); it is the one the cleanup uses for the default driver name.
#[test]
fn the_manifests_name_the_lease_the_cleanup_uses() {
    let settings = Settings {
        driver: hostpath_csi::cli::DEFAULT_DRIVER_NAME.into(),
        grace: GRACE,
        identity: "hostpath-csi-controller-0".into(),
        namespace: "hostpath-csi".into(),
    };
    let rbac = include_str!("../deploy/kubernetes/rbac-controller.yaml");
    let rule = format!("resourceNames: [{}]", settings.lease_name());
    assert!(rbac.contains(&rule), "rbac-controller.yaml lacks {rule}");
}
