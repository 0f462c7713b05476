# shellcheck shell=bash
# Sourced by e2e/inside.sh: the scenarios of the storage tutorial, each a
# function that runs in a subshell with its own Kubernetes namespace ($NS)
# and calls `fail` on the first assertion that does not hold. Pods come from
# deploy/examples where an example exists.

# shellcheck disable=SC2034 # read by inside.sh
SCENARIOS=(memory-ephemeral static-hostpath default-class statefulset reclaim restarts fsgroup health snapshot-restore-clone node-loss observe)
POOL=/var/lib/hostpath-csi/default

fail() {
  echo "FAIL: $*"
  exit 1
}

# must CMD...: runs CMD, failing the scenario if it fails.
must() {
  "$@" || fail "$*"
}

k() {
  kubectl -n "$NS" "$@"
}

# expect_eq WHAT GOT WANT
expect_eq() {
  [ "$2" = "$3" ] || fail "$1: got '$2', want '$3'"
}

# example FILE [DOC]: a deploy/examples manifest (only its DOC-th document,
# from 1, if given) with the image made locally and never pulled, and this
# node's name.
example() {
  sed -E -e "s|^( *)image: busybox:1.36$|\1image: $BUSYBOX_IMAGE\n\1imagePullPolicy: Never|" \
    -e "s/NODE-NAME/$NODE/" "$REPO/deploy/examples/$1" |
    awk -v doc="${2:-0}" 'BEGIN {n = 1} /^---$/ {n++; if (doc == 0) print; next} doc == 0 || n == doc'
}

# claim NAME SIZE [CLASS] [SPEC-LINE]: a PVC (SPEC-LINE adds a field to its spec).
claim() {
  local class=""
  [ -z "${3:-}" ] || class="storageClassName: $3"
  k apply -f - >/dev/null <<YAML || fail "could not apply claim $1"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: $1}
spec:
  accessModes: [ReadWriteOnce]
  $class
  resources: {requests: {storage: $2}}
  ${4:-}
YAML
}

# pod NAME CLAIM SCRIPT [POD-SECURITY-CONTEXT]: a pod that runs SCRIPT once
# (restartPolicy Never), with CLAIM at /data.
pod() {
  k apply -f - >/dev/null <<YAML || fail "could not apply pod $1"
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  restartPolicy: Never
  securityContext: {${4:-}}
  containers:
    - name: main
      image: $BUSYBOX_IMAGE
      imagePullPolicy: Never
      command: [sh, -c, '$3']
      volumeMounts: [{name: data, mountPath: /data}]
  volumes:
    - name: data
      persistentVolumeClaim: {claimName: $2}
YAML
}

ready() {
  must k wait --for=condition=Ready "pod/$1" --timeout=180s >/dev/null
}

phase() {
  k get "$@" -o 'jsonpath={.status.phase}'
}

# finished POD PHASE: waits for the pod to end, and checks how.
finished() {
  wait_for 180 "pod $1 to end" sh -c "kubectl -n $NS get pod $1 -o 'jsonpath={.status.phase}' | grep -qE 'Succeeded|Failed'" ||
    fail "pod $1 did not end"
  expect_eq "pod $1's phase" "$(phase pod "$1")" "$2"
}

gone() {
  must k delete "$@" --grace-period=1 --wait=true --timeout=120s >/dev/null
}

# volume_of CLAIM: the driver's directory of a bound claim.
volume_of() {
  local pv
  pv=$(k get pvc "$1" -o 'jsonpath={.spec.volumeName}')
  [ -n "$pv" ] || fail "claim $1 is not bound"
  echo "$POOL/volumes/$(kubectl get pv "$pv" -o 'jsonpath={.spec.csi.volumeHandle}')"
}

# mount_target POD NAME: where kubelet has the driver publish a volume,
# NAME being its PV's name, or for an inline volume the pod's name for it.
mount_target() {
  echo "$KUBELET_DIR/pods/$(k get pod "$1" -o 'jsonpath={.metadata.uid}')/volumes/kubernetes.io~csi/$2/mount"
}

# driver_restarts: how often kubelet has started the node plugin's driver
# container again.
driver_restarts() {
  kubectl -n hostpath-csi get "$(node_plugin)" \
    -o 'jsonpath={.status.containerStatuses[?(@.name=="driver")].restartCount}'
}

# driver_restarted_since COUNT: driver_restarts has passed COUNT.
driver_restarted_since() {
  [ "$(driver_restarts)" -gt "$1" ]
}

# 1. emptyDir medium Memory as a CSI ephemeral volume: two containers share
#    a tmpfs of the requested size; it is unmounted with the pod.
scenario_memory_ephemeral() {
  example memory-emptydir.yaml | k apply -f - >/dev/null || fail "could not apply memory-emptydir.yaml"
  ready memory-emptydir
  wait_for 30 "the reader's output" sh -c "kubectl -n $NS logs memory-emptydir -c reader | grep -q ." ||
    fail "the reader printed nothing"
  expect_eq "what the reader read" "$(k logs memory-emptydir -c reader)" "hellok8s!"
  expect_eq "the volume's size in the pod (KiB)" \
    "$(k exec memory-emptydir -c reader -- df -k /cache | awk 'NR == 2 {print $2}')" 65536
  local target
  target=$(mount_target memory-emptydir cache)
  expect_eq "the filesystem kubelet got" "$(findmnt -n -o FSTYPE "$target")" tmpfs
  findmnt -n -o OPTIONS "$target" | grep -q 'size=65536k' || fail "no size=65536k on $target"
  gone pod memory-emptydir
  ! findmnt "$target" >/dev/null || fail "$target still mounted after the pod is gone"
}

# 2. Static hostPath PVs: DirectoryOrCreate makes the host directory and the
#    pod's writes land in it; FileOrCreate hands a host file in read-only.
scenario_static_hostpath() {
  [ ! -e /srv/hostpath/shared ] || fail "/srv/hostpath/shared exists before the PV"
  example static-hostpath-directory.yaml | k apply -f - >/dev/null || fail "could not apply static-hostpath-directory.yaml"
  ready static-directory
  expect_eq "claim static-directory" "$(phase pvc static-directory)" Bound
  wait_for 30 "the pod's write" test -s /srv/hostpath/shared/written-by-pod ||
    fail "nothing in /srv/hostpath/shared/written-by-pod"
  expect_eq "mode of the directory DirectoryOrCreate made" "$(stat -c %a /srv/hostpath/shared)" 755
  expect_eq "the file as the pod reads it" \
    "$(k exec static-directory -- cat /data/written-by-pod)" "$(cat /srv/hostpath/shared/written-by-pod)"

  echo "setting=from-the-host" >/srv/hostpath/app.conf
  example static-hostpath-file.yaml | k apply -f - >/dev/null || fail "could not apply static-hostpath-file.yaml"
  ready static-file
  expect_eq "what the pod read" "$(k logs static-file)" "setting=from-the-host"
  findmnt -n -o OPTIONS "$(mount_target static-file static-file)" | grep -qE '(^|,)ro(,|$)' ||
    fail "the driver did not publish the read-only PV read-only"
  local refused
  refused=$(k exec static-file -- sh -c 'echo x >> /etc/app/app.conf' 2>&1) &&
    fail "a read-only file volume took a write"
  grep -q 'Read-only file system' <<<"$refused" || fail "the write failed otherwise: $refused"
  expect_eq "the host file" "$(cat /srv/hostpath/app.conf)" "setting=from-the-host"

  gone pod static-directory static-file
  gone pvc static-directory static-file
  must kubectl delete pv static-directory static-file >/dev/null
  [ -s /srv/hostpath/shared/written-by-pod ] || fail "the host's data went with the PV"
}

# 3. The default StorageClass (WaitForFirstConsumer): nothing is made until
#    a pod is scheduled; then a volume on this node. A claim larger than the
#    pool keeps its pod Pending, and the scheduler says why.
scenario_default_class() {
  example pvc-default-class.yaml 1 | k apply -f - >/dev/null || fail "could not apply pvc-default-class.yaml 1"
  wait_for 30 "the WaitForFirstConsumer event" sh -c \
    "kubectl -n $NS get events --field-selector involvedObject.name=data -o 'jsonpath={.items[*].reason}' | grep -q WaitForFirstConsumer" ||
    fail "no WaitForFirstConsumer event on claim data"
  expect_eq "claim data before any pod" "$(phase pvc data)" Pending
  expect_eq "its volume before any pod" "$(k get pvc data -o 'jsonpath={.spec.volumeName}')" ""

  example pvc-default-class.yaml 2 | k apply -f - >/dev/null || fail "could not apply pvc-default-class.yaml 2"
  ready data-user
  expect_eq "claim data" "$(phase pvc data)" Bound
  local pv
  pv=$(k get pvc data -o 'jsonpath={.spec.volumeName}')
  expect_eq "PV $pv" "$(kubectl get pv "$pv" -o 'jsonpath={.status.phase}')" Bound
  expect_eq "PV $pv's node" \
    "$(kubectl get pv "$pv" -o 'jsonpath={.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}')" "$NODE"
  kubectl get pv,pvc -n "$NS"
  local volume
  volume=$(volume_of data)
  wait_for 30 "the pod's write" test -s "$volume/file" || fail "nothing in $volume/file"
  expect_eq "the pod's data on the node" "$(cat "$volume/file")" stored

  claim too-big 64Gi
  pod too-big-user too-big 'echo never'
  wait_for 120 "the scheduler's verdict" sh -c \
    "kubectl -n $NS get events --field-selector involvedObject.name=too-big-user,reason=FailedScheduling -o 'jsonpath={.items[*].message}' | grep -q 'enough free storage'" ||
    fail "no FailedScheduling event saying the node lacks free storage"
  k get events --field-selector involvedObject.name=too-big-user,reason=FailedScheduling \
    -o 'jsonpath={.items[0].message}{"\n"}'
  expect_eq "pod too-big-user" "$(phase pod too-big-user)" Pending
  expect_eq "claim too-big" "$(phase pvc too-big)" Pending
  expect_eq "claim too-big's volume" "$(k get pvc too-big -o 'jsonpath={.spec.volumeName}')" ""
}

# 4. A StatefulSet: each replica has its own claim; a deleted pod comes back
#    with the same volume and finds what it wrote.
scenario_statefulset() {
  example statefulset.yaml | k apply -f - >/dev/null || fail "could not apply statefulset.yaml"
  must k rollout status statefulset/web --timeout=240s >/dev/null
  local i
  for i in 0 1; do
    wait_for 30 "web-$i's line" sh -c "kubectl -n $NS exec web-$i -- cat /www/index.html | grep -q ." ||
      fail "web-$i wrote nothing"
    expect_eq "web-$i's file" "$(k exec "web-$i" -- cat /www/index.html)" "This host is web-$i"
  done
  local volume0 volume1 uid0
  volume0=$(k get pvc www-web-0 -o 'jsonpath={.spec.volumeName}')
  volume1=$(k get pvc www-web-1 -o 'jsonpath={.spec.volumeName}')
  if [ -z "$volume0" ] || [ "$volume0" = "$volume1" ]; then
    fail "replicas share or lack volumes: '$volume0' '$volume1'"
  fi
  uid0=$(k get pod web-0 -o 'jsonpath={.metadata.uid}')
  gone pod web-0
  wait_for 120 "web-0 to come back" sh -c \
    "uid=\$(kubectl -n $NS get pod web-0 -o 'jsonpath={.metadata.uid}') && [ -n \"\$uid\" ] && [ \"\$uid\" != $uid0 ]" ||
    fail "web-0 did not come back"
  ready web-0
  expect_eq "web-0's claim's volume" "$(k get pvc www-web-0 -o 'jsonpath={.spec.volumeName}')" "$volume0"
  expect_eq "web-0's file after its restart" "$(k exec web-0 -- cat /www/index.html)" \
    "$(printf 'This host is web-0\nThis host is web-0')"
}

# 5. Reclaim policies: Delete removes the volume's data with the claim;
#    Retain leaves the PV Released and the data in place.
scenario_reclaim() {
  claim doomed 64Mi
  pod doomed-user doomed 'echo doomed > /data/file'
  finished doomed-user Succeeded
  local doomed
  doomed=$(volume_of doomed)
  expect_eq "the data before the claim is deleted" "$(cat "$doomed/file")" doomed
  local pv
  pv=$(k get pvc doomed -o 'jsonpath={.spec.volumeName}')
  gone pod doomed-user
  gone pvc doomed
  wait_for 60 "PV $pv to go" sh -c "! kubectl get pv $pv" || fail "PV $pv outlived its claim"
  [ ! -e "$doomed" ] || fail "$doomed outlived its claim (reclaim policy Delete)"

  example retain.yaml | k apply -f - >/dev/null || fail "could not apply retain.yaml"
  ready kept-user
  local kept
  kept=$(volume_of kept)
  pv=$(k get pvc kept -o 'jsonpath={.spec.volumeName}')
  wait_for 30 "the pod's write" test -s "$kept/file" || fail "nothing in $kept/file"
  gone pod kept-user
  gone pvc kept
  wait_for 60 "PV $pv to be Released" sh -c \
    "kubectl get pv $pv -o 'jsonpath={.status.phase}' | grep -qx Released" || fail "PV $pv is not Released"
  expect_eq "the retained data" "$(cat "$kept/file")" survives-the-claim
  must kubectl delete pv "$pv" >/dev/null
}

# 6. kubelet and the driver restart under running pods: the pods keep their
#    mounts and data, and unmount cleanly when deleted afterwards. A pod
#    deleted while kubelet is down is unmounted by the restarted kubelet,
#    which knows of its volume only from what it finds on disk.
scenario_restarts() {
  local name
  for name in steady parting; do
    claim "$name" 64Mi
    # restartPolicy Never: a container the restarts ended would leave its
    # pod not Ready for good, rather than be quietly started again.
    pod "$name-user" "$name" 'echo before >> /data/log && sleep 3600'
  done
  example memory-emptydir.yaml | k apply -f - >/dev/null || fail "could not apply memory-emptydir.yaml"
  ready steady-user
  ready parting-user
  ready memory-emptydir
  local targets target parting
  targets="$(mount_target steady-user "$(k get pvc steady -o 'jsonpath={.spec.volumeName}')")"
  targets+=" $(mount_target memory-emptydir cache)"
  parting=$(mount_target parting-user "$(k get pvc parting -o 'jsonpath={.spec.volumeName}')")
  for target in $targets $parting; do
    findmnt "$target" >/dev/null || fail "$target is not mounted"
  done

  local heartbeat
  stop kubelet
  heartbeat=$(node_heartbeat)
  must k delete pod parting-user --wait=false --grace-period=1 >/dev/null
  start_kubelet
  wait_for 60 "kubelet's health after its restart" kubelet_healthy || fail "kubelet is not healthy after its restart"
  wait_for 60 "the restarted kubelet's first node status" heartbeat_after "$heartbeat" ||
    fail "the restarted kubelet posted no node status"
  node_ready || fail "node not Ready after kubelet's restart"
  wait_for 120 "the pod deleted while kubelet was down to go" sh -c "! kubectl -n $NS get pod parting-user" ||
    fail "parting-user, deleted while kubelet was down, is still there"
  ! findmnt "$parting" >/dev/null || fail "$parting still mounted after its pod is gone"
  # The driver's container ends (SIGTERM) and kubelet starts it again.
  local driver restarts
  driver=$(driver_pid)
  [ -n "$driver" ] || fail "no driver process"
  restarts=$(driver_restarts)
  kill -TERM "$driver"
  wait_for 120 "the driver's container to be started again" driver_restarted_since "$restarts" ||
    fail "the driver's container was not started again"
  wait_for 120 "hostpath-csi's pods to be Ready again" rolled_out || fail "hostpath-csi's pods are not Ready again"

  ready steady-user
  ready memory-emptydir
  expect_eq "container restarts" \
    "$(k get pods -o 'jsonpath={.items[*].status.containerStatuses[*].restartCount}')" "0 0 0"
  for target in $targets; do
    findmnt "$target" >/dev/null || fail "$target lost its mount"
  done
  expect_eq "the claim's data after the restarts" \
    "$(k exec steady-user -- sh -c 'echo after >> /data/log && cat /data/log')" "$(printf 'before\nafter')"
  expect_eq "the memory volume after the restarts" "$(k exec memory-emptydir -c reader -- cat /cache/hello)" "hellok8s!"

  gone pod steady-user memory-emptydir
  for target in $targets; do
    ! findmnt "$target" >/dev/null || fail "$target still mounted after its pod is gone"
  done

  # The provisioner, which exits when the driver's socket goes, is back.
  claim afterwards 64Mi
  pod afterwards-user afterwards 'cat /proc/mounts >/dev/null'
  finished afterwards-user Succeeded
}

# 7. fsGroup: a non-root pod with fsGroup may write to its new volume (the
#    CSIDriver's fsGroupPolicy File); without fsGroup it may not.
scenario_fsgroup() {
  claim grouped 64Mi
  pod grouped-writer grouped 'id && echo written > /data/out' 'runAsUser: 1000, runAsGroup: 1000, fsGroup: 2000'
  finished grouped-writer Succeeded
  local volume
  volume=$(volume_of grouped)
  expect_eq "the file's owner:group on the node" "$(stat -c %u:%g "$volume/out")" 1000:2000
  expect_eq "its contents" "$(cat "$volume/out")" written

  claim ungrouped 64Mi
  pod ungrouped-writer ungrouped 'echo written > /data/out' 'runAsUser: 1000, runAsGroup: 1000'
  finished ungrouped-writer Failed
  k logs ungrouped-writer | grep -q 'Permission denied' || fail "the pod without fsGroup failed for another reason"
}

# volume_health POD VOLUME: the reasons kubelet reports in the pod's status
# for one of its volumes (CSIVolumeHealth), space-separated.
volume_health() {
  k get pod "$1" -o "jsonpath={.status.volumeHealth[?(@.name==\"$2\")].healthConditions[*].reason}"
}

# health_is POD VOLUME REASONS: volume_health says REASONS ("" for none).
health_is() {
  [ "$(volume_health "$1" "$2")" = "$3" ]
}

# 8. Volume health reaches Kubernetes: the backing of a running pod's volume
#    disappears on the node, kubelet (1.37, CSIVolumeHealth) asks the driver
#    and writes the finding into the pod's status; restored, it clears.
scenario_health() {
  claim watched 64Mi
  pod watched watched 'echo kept > /data/file && sleep 3600'
  ready watched
  local volume
  volume=$(volume_of watched)
  wait_for 30 "the pod's write" test -f "$volume/file" || fail "the pod wrote nothing"
  health_is watched data "" || fail "health reported while fine: $(volume_health watched data)"
  must mv "$volume" "$volume.aside"
  wait_for 90 "kubelet to report BackingMissing" health_is watched data BackingMissing ||
    fail "no BackingMissing in the pod's status: $(k get pod watched -o 'jsonpath={.status.volumeHealth}')"
  expect_eq "the condition's status" \
    "$(k get pod watched -o 'jsonpath={.status.volumeHealth[0].healthConditions[0].status}')" DataLoss
  must mv "$volume.aside" "$volume"
  wait_for 90 "kubelet to clear the condition" health_is watched data "" ||
    fail "the condition stayed: $(k get pod watched -o 'jsonpath={.status.volumeHealth}')"
  expect_eq "the pod's data" "$(k exec watched -- cat /data/file)" kept
}

# claim_from NAME SIZE KIND SOURCE: a PVC of the default class filled from
# SOURCE, a VolumeSnapshot or a PersistentVolumeClaim (KIND).
claim_from() {
  local group=""
  [ "$3" != VolumeSnapshot ] || group="apiGroup: snapshot.storage.k8s.io"
  claim "$1" "$2" "" "dataSource: {kind: $3, name: $4, $group}"
}

# reads CLAIM WANT: a pod reading /data/file of CLAIM finds WANT.
reads() {
  pod "read-$1" "$1" 'cat /data/file'
  finished "read-$1" Succeeded
  expect_eq "$1's file" "$(k logs "read-$1")" "$2"
  gone pod "read-$1"
}

snapshot_ready() {
  [ "$(k get volumesnapshot "$1" -o 'jsonpath={.status.readyToUse}')" = true ]
}

# 9. Snapshots and clones, as a backup or a test environment is made: data
#    written to a claim is snapshotted (VolumeSnapshot of class hostpath-csi,
#    taken by the node's csi-snapshotter), restored into a new claim and
#    read; a claim cloned from the first reads the same; with the first
#    claim deleted, the clone and a second restore still read.
scenario_snapshot_restore_clone() {
  claim origin 64Mi
  pod writer origin 'echo snapshotted > /data/file && sync'
  finished writer Succeeded
  gone pod writer
  k apply -f - >/dev/null <<YAML || fail "could not apply the snapshot"
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: origin-snap}
spec:
  volumeSnapshotClassName: hostpath-csi
  source: {persistentVolumeClaimName: origin}
YAML
  wait_for 120 "the snapshot to be ready" snapshot_ready origin-snap ||
    fail "the snapshot never got ready: $(k get volumesnapshot origin-snap -o 'jsonpath={.status}')"
  expect_eq "its restore size" "$(k get volumesnapshot origin-snap -o 'jsonpath={.status.restoreSize}')" 64Mi
  claim_from restored 64Mi VolumeSnapshot origin-snap
  reads restored snapshotted
  claim_from cloned 64Mi PersistentVolumeClaim origin
  reads cloned snapshotted
  local handle
  handle=$(kubectl get pv "$(k get pvc origin -o 'jsonpath={.spec.volumeName}')" -o 'jsonpath={.spec.csi.volumeHandle}')
  gone pvc origin
  wait_for 60 "the first claim's volume to go" sh -c "! test -e $POOL/volumes/$handle" ||
    fail "volume $handle stayed after its claim was deleted"
  reads cloned snapshotted
  claim_from restored-again 64Mi VolumeSnapshot origin-snap
  reads restored-again snapshotted
  gone volumesnapshot origin-snap
}

# lost_volume NAME CLAIM: a PV of ours as the node-deployed provisioner
# would have made it on node $LOST, bound to CLAIM in this namespace.
lost_volume() {
  kubectl apply -f - >/dev/null <<YAML || fail "could not apply PV $1"
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $1
  annotations: {pv.kubernetes.io/provisioned-by: hostpath-csi.dev}
  finalizers: [external-provisioner.volume.kubernetes.io/finalizer]
spec:
  capacity: {storage: 64Mi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  storageClassName: hostpath
  csi: {driver: hostpath-csi.dev, volumeHandle: $1}
  claimRef: {namespace: $NS, name: $2}
  nodeAffinity:
    required:
      nodeSelectorTerms:
        - matchExpressions: [{key: topology.hostpath-csi.dev/node, operator: In, values: [$LOST]}]
YAML
}

# 10. A node gone for good: a second Node object (no kubelet behind it)
#     holds a StatefulSet's volume (its claim opted in) and another claim's
#     (not opted in). Once the Node has been deleted for the controller's
#     grace period (20 s here), the opted-in claim and its PV are deleted,
#     the StatefulSet makes the claim again, it provisions on the real node
#     and the pod runs; the other claim stays, with an Event saying why.
#     When that claim is deleted, its Released PV is deleted too.
scenario_node_loss() {
  LOST=lost-$NS
  kubectl apply -f - >/dev/null <<YAML || fail "could not register node $LOST"
apiVersion: v1
kind: Node
metadata:
  name: $LOST
  labels: {kubernetes.io/hostname: $LOST}
spec:
  # What a node that stopped reporting gets: the cleanup must not count it
  # gone for that.
  taints: [{key: node.kubernetes.io/not-ready, effect: NoSchedule}]
YAML
  lost_volume "pv-$NS-db" www-db-0
  lost_volume "pv-$NS-kept" kept
  claim www-db-0 64Mi hostpath "volumeName: pv-$NS-db"
  must k annotate pvc www-db-0 hostpath-csi.dev/on-node-loss=delete-claim >/dev/null
  claim kept 64Mi hostpath "volumeName: pv-$NS-kept"
  wait_for 60 "the claims to bind" sh -c \
    "[ \"\$(kubectl -n $NS get pvc www-db-0 kept -o 'jsonpath={.items[*].status.phase}')\" = 'Bound Bound' ]" ||
    fail "the claims did not bind to the PVs on $LOST"
  local old_uid
  old_uid=$(k get pvc www-db-0 -o 'jsonpath={.metadata.uid}')
  k apply -f - >/dev/null <<YAML || fail "could not apply the StatefulSet"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  selector: {matchLabels: {app: db}}
  serviceName: db
  replicas: 1
  template:
    metadata: {labels: {app: db}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: main
          image: $BUSYBOX_IMAGE
          imagePullPolicy: Never
          command: [sh, -c, 'echo fresh > /data/file && sleep 3600']
          volumeMounts: [{name: www, mountPath: /data}]
  volumeClaimTemplates:
    - metadata:
        name: www
        annotations: {hostpath-csi.dev/on-node-loss: delete-claim}
      spec:
        accessModes: [ReadWriteOnce]
        storageClassName: hostpath
        resources: {requests: {storage: 64Mi}}
YAML
  wait_for 60 "db-0 to be created" k get pod db-0 || fail "db-0 was not created"
  sleep 5
  expect_eq "db-0 while its volume is on $LOST" "$(phase pod db-0)" Pending

  must kubectl delete node "$LOST" >/dev/null
  wait_for 180 "the claim www-db-0 to be made again" sh -c \
    "uid=\$(kubectl -n $NS get pvc www-db-0 -o 'jsonpath={.metadata.uid}') && [ -n \"\$uid\" ] && [ \"\$uid\" != $old_uid ]" ||
    fail "www-db-0 was not deleted and made again"
  wait_for 120 "PV pv-$NS-db to go" sh -c "! kubectl get pv pv-$NS-db" || fail "PV pv-$NS-db stayed"
  ready db-0
  expect_eq "db-0's node" "$(k get pod db-0 -o 'jsonpath={.spec.nodeName}')" "$NODE"
  expect_eq "db-0's file" "$(k exec db-0 -- cat /data/file)" fresh
  expect_eq "the new volume's node" "$(kubectl get pv "$(k get pvc www-db-0 -o 'jsonpath={.spec.volumeName}')" \
    -o 'jsonpath={.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}')" "$NODE"

  wait_for 60 "the NodeLost Event of claim kept" sh -c \
    "kubectl -n $NS get events --field-selector involvedObject.name=kept,reason=NodeLost -o name | grep -q ." ||
    fail "no NodeLost Event for the claim that did not opt in"
  k get events --field-selector involvedObject.name=kept,reason=NodeLost -o 'jsonpath={.items[0].message}{"\n"}'
  expect_eq "claim kept" "$(phase pvc kept)" Bound
  expect_eq "claim kept's volume" "$(k get pvc kept -o 'jsonpath={.spec.volumeName}')" "pv-$NS-kept"
  gone pvc kept
  wait_for 120 "PV pv-$NS-kept to go once Released" sh -c "! kubectl get pv pv-$NS-kept" ||
    fail "the Released PV pv-$NS-kept of the gone node stayed"
  kubectl -n hostpath-csi logs deployment/hostpath-csi-controller -c node-loss | grep 'node loss' | tail -n 5
}

# 11. What an operator sees: `hostpath-csi status` run in the driver's
#     container lists a pod's volume with its kind, capacity, target and
#     condition; the node plugin's metrics, scraped on its pod IP, count the
#     calls kubelet made and the volumes held.
scenario_observe() {
  claim seen 32Mi
  pod seen seen 'echo x > /data/file && sleep 3600'
  ready seen
  local pv handle uid report
  pv=$(k get pvc seen -o 'jsonpath={.spec.volumeName}')
  handle=$(kubectl get pv "$pv" -o 'jsonpath={.spec.csi.volumeHandle}')
  uid=$(k get pod seen -o 'jsonpath={.metadata.uid}')
  report=$(kubectl -n hostpath-csi exec "$(node_plugin)" -c driver -- hostpath-csi status --output=json) ||
    fail "hostpath-csi status failed in the driver's container"
  python3 - "$report" "$handle" "$pv" "pods/$uid/volumes/kubernetes.io~csi/$pv/mount" <<'PY' || fail "status: $report"
import json, sys
report, handle, pv, target = json.loads(sys.argv[1]), *sys.argv[2:]
[row] = [v for v in report["volumes"] if v["id"] == handle]
assert (row["name"], row["kind"], row["pool"]) == (pv, "directory", "default"), row
assert row["capacity_bytes"] == 32 << 20 and row["problems"] == [], row
assert [p for p in row["published"] if p.endswith(target)], row
assert any(p["name"] == "default" and p["promised_bytes"] >= 32 << 20 for p in report["pools"]), report["pools"]
PY
  kubectl -n hostpath-csi exec "$(node_plugin)" -c driver -- hostpath-csi status |
    grep -E "^$handle +default +directory +32Mi .* OK +1 +$pv\$" >/dev/null ||
    fail "no row for $handle in the table"
  local ip page
  ip=$(kubectl -n hostpath-csi get "$(node_plugin)" -o 'jsonpath={.status.podIP}')
  page=$(python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
    "http://$ip:9809/metrics") || fail "no metrics from $ip:9809"
  grep -E '^hostpath_csi_rpc_requests_total\{method="NodePublishVolume",code="OK"\} [1-9]' <<<"$page" >/dev/null ||
    fail "no NodePublishVolume counted: $(grep rpc_requests <<<"$page")"
  grep -E '^hostpath_csi_rpc_duration_seconds_count\{method="CreateVolume"\} [1-9]' <<<"$page" >/dev/null ||
    fail "no CreateVolume timed"
  grep -E '^hostpath_csi_volumes\{pool="default",kind="directory"\} [1-9]' <<<"$page" >/dev/null ||
    fail "no directory volume counted: $(grep '^hostpath_csi_volumes' <<<"$page")"
}

# run_scenario NAME: runs one scenario in a namespace of its own, then
# deletes the namespace (and with it the scenario's claims and pods).
run_scenario() {
  local name=$1 began=$SECONDS rc
  kubectl create namespace "$name" >/dev/null
  wait_for 60 "namespace $name's service account" kubectl -n "$name" get serviceaccount default
  (NS=$name && "scenario_${name//-/_}") >"$LOGS/scenario-$name.log" 2>&1
  rc=$?
  # The examples' shells ignore SIGTERM: their pods go at once rather than
  # after the 30 s grace period the namespace's deletion would give them
  # (a StatefulSet first, or it makes them again).
  kubectl -n "$name" delete statefulsets --all --cascade=orphan >/dev/null 2>&1
  kubectl -n "$name" delete pods --all --grace-period=1 --wait=false >/dev/null 2>&1
  kubectl delete namespace "$name" --timeout=180s >/dev/null 2>&1 || rc=1
  if [ $rc = 0 ]; then
    echo "ok   $name ($((SECONDS - began))s)"
  else
    echo "FAIL $name ($((SECONDS - began))s); its log ($LOGS/scenario-$name.log) ends:"
    tail -n 15 "$LOGS/scenario-$name.log" | sed 's/^/     /'
  fi
  return $rc
}
