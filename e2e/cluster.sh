# shellcheck shell=bash
# Sourced by e2e/inside.sh, inside the e2e namespaces: starts and stops the
# single-node cluster. The control plane, containerd and kubelet are host
# processes of this PID namespace, logging to $LOGS/<name>.log, their PIDs
# kept in $STATE/<name>.pid; hostpath-csi runs as deploy/kubernetes has it,
# a DaemonSet and a Deployment whose pods' logs are copied to $LOGS/pods.

NODE=e2e-node
NODE_IP=10.234.0.1
PKI=$STATE/pki
KUBELET_DIR=/var/lib/kubelet
PLUGIN_DIR=$KUBELET_DIR/plugins/hostpath-csi.dev
CONTAINERD_SOCK=/run/containerd/containerd.sock
export KUBECONFIG=$PKI/admin.kubeconfig

# start NAME CMD...: runs CMD in the background as daemon NAME.
start() {
  local name=$1
  shift
  "$@" >>"$LOGS/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
}

# stop NAME: SIGTERM, then SIGKILL after 20 s; waits until it is gone.
stop() {
  local pid
  pid=$(cat "$STATE/$1.pid" 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 200); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f "$STATE/$1.pid"
}

# wait_for SECONDS DESCRIPTION CMD...: polls CMD every half second.
wait_for() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      echo "timed out after ${seconds}s waiting for $what" >&2
      return 1
    fi
    sleep 0.5
  done
}

# The node's filesystem, private to this mount namespace: kubelet, the
# pools, container state and logs live on tmpfs at their usual paths, so
# nothing is written to the host's /var or /run and all of it goes with the
# namespace.
setup_node_filesystem() {
  mount -t tmpfs -o mode=0755 e2e-run /run
  mount -t tmpfs -o mode=0755 e2e-var-lib /var/lib
  mount -t tmpfs -o mode=0755 e2e-var-log /var/log
  mount -t tmpfs -o mode=0755 e2e-srv /srv
  mkdir -p "$KUBELET_DIR/plugins_registry" "$PLUGIN_DIR" /srv/hostpath /var/lib/cni
  # The pools of the DaemonSet; `default` is a tmpfs of its own, of a size
  # (a cap: only what is written takes memory) that a claim can exceed.
  local pool
  for pool in default fast std; do
    mkdir -p "/var/lib/hostpath-csi/$pool"
  done
  mount -t tmpfs -o size=16g e2e-pool-default /var/lib/hostpath-csi/default
  # The DaemonSet mounts kubelet's directory and the pools with
  # Bidirectional propagation, which needs shared mounts (as under systemd).
  # Shared within this mount namespace only: the host's stay as they are.
  mount --make-rshared /
}

# An empty bridge carries the node's address (this kernel may lack the
# dummy device); pods get a bridge of their own from the CNI plugin.
setup_node_network() {
  ip link set lo up
  ip link add e2e0 type bridge
  ip addr add "$NODE_IP/24" dev e2e0
  ip link set e2e0 up
  ip route add default dev e2e0
  # The kubernetes Service (10.96.0.1:443), through which the sidecars in
  # the pods reach the API server: the one rule kube-proxy would make for
  # it, for pods (PREROUTING) and the node (OUTPUT).
  local chain
  for chain in PREROUTING OUTPUT; do
    iptables -t nat -A "$chain" -d 10.96.0.1/32 -p tcp --dport 443 -j DNAT --to-destination "$NODE_IP:6443"
  done
  mkdir -p /etc/cni/net.d
  mount -t tmpfs e2e-cni /etc/cni/net.d
  cat >/etc/cni/net.d/10-e2e.conflist <<CNI
{"cniVersion": "0.4.0", "name": "e2e", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.235.0.0/24"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "/var/lib/cni/networks"}},
  {"type": "loopback"}]}
CNI
}

# sign NAME SUBJECT [SANS]: a key and a certificate signed by the e2e CA.
sign() {
  local name=$1 subject=$2 sans=${3:-}
  openssl req -new -newkey rsa:2048 -nodes -subj "$subject" \
    -keyout "$PKI/$name.key" -out "$PKI/$name.csr" 2>/dev/null
  local ext=$PKI/$name.ext
  echo "extendedKeyUsage = serverAuth, clientAuth" >"$ext"
  [ -z "$sans" ] || echo "subjectAltName = $sans" >>"$ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -CAcreateserial -days 2 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
}

# kubeconfig NAME USER-FLAGS...: a kubeconfig for the e2e API server.
kubeconfig() {
  local name=$1
  shift
  local file=$PKI/$name.kubeconfig
  kubectl config --kubeconfig="$file" set-cluster e2e --server="https://$NODE_IP:6443" \
    --certificate-authority="$PKI/ca.crt" >/dev/null
  kubectl config --kubeconfig="$file" set-credentials "$name" "$@" >/dev/null
  kubectl config --kubeconfig="$file" set-context e2e --cluster=e2e --user="$name" >/dev/null
  kubectl config --kubeconfig="$file" use-context e2e >/dev/null
}

make_pki() {
  mkdir -p "$PKI"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=hostpath-e2e-ca \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
  sign apiserver /CN=kube-apiserver \
    "IP:$NODE_IP,IP:127.0.0.1,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:localhost"
  sign admin "/O=system:masters/CN=e2e-admin"
  sign kubelet "/O=system:nodes/CN=system:node:$NODE"
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  kubeconfig admin --client-certificate="$PKI/admin.crt" --client-key="$PKI/admin.key"
  kubeconfig kubelet --client-certificate="$PKI/kubelet.crt" --client-key="$PKI/kubelet.key"
}

start_control_plane() {
  start etcd etcd --name e2e --data-dir "$STATE/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster e2e=http://127.0.0.1:2380
  start kube-apiserver kube-apiserver --etcd-servers=http://127.0.0.1:2379 \
    --advertise-address="$NODE_IP" --secure-port=6443 \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" --authorization-mode=Node,RBAC --kubelet-preferred-address-types=InternalIP \
    --kubelet-client-certificate="$PKI/admin.crt" --kubelet-client-key="$PKI/admin.key" \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc --service-cluster-ip-range=10.96.0.0/24 \
    --allow-privileged=true --feature-gates=CSIVolumeHealth=true
  wait_for 120 "the API server" kubectl get --raw /readyz || return 1
  start kube-controller-manager kube-controller-manager --kubeconfig="$KUBECONFIG" \
    --leader-elect=false --bind-address=127.0.0.1 --root-ca-file="$PKI/ca.crt" \
    --service-account-private-key-file="$PKI/sa.key" --use-service-account-credentials=false
  start kube-scheduler kube-scheduler --kubeconfig="$KUBECONFIG" --leader-elect=false \
    --bind-address=127.0.0.1
  # Snapshots: the CRDs, and the controller that hands each snapshot to the
  # csi-snapshotter of the node holding its volume.
  kubectl apply -f "$E2E_OUT/crds" >/dev/null || return 1
  kubectl wait --for=condition=Established --timeout=60s -f "$E2E_OUT/crds" >/dev/null || return 1
  start snapshot-controller snapshot-controller --kubeconfig="$KUBECONFIG" \
    --enable-distributed-snapshotting
}

start_containerd() {
  mkdir -p "$STATE/containerd"
  cat >"$STATE/containerd/config.toml" <<TOML
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${PAUSE_IMAGES[0]}"
  # Root here lacks CAP_SYS_RESOURCE: a container may not get a lower OOM
  # score than containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
TOML
  start containerd containerd --config "$STATE/containerd/config.toml"
  wait_for 60 containerd ctr --address "$CONTAINERD_SOCK" version || return 1
  local image
  for image in "${IMAGE_ARCHIVES[@]}"; do
    ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$E2E_OUT/images/$image.tar" >/dev/null || return 1
  done
}

# kubelet's cgroupRoot must exist in every cgroup hierarchy it uses (the v1
# ones, or the unified one where /sys/fs/cgroup is v2); v1 cpuset's needs
# CPUs and memory nodes before any task can join it. (run.sh removes it.)
make_cgroup_root() {
  local hierarchies
  if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
    hierarchies=/sys/fs/cgroup
  else
    hierarchies=$(awk '$3 == "cgroup" {print $2}' /proc/mounts)
  fi
  local hierarchy
  for hierarchy in $hierarchies; do
    mkdir -p "$hierarchy/$CGROUP_ROOT"
  done
  local cpuset=/sys/fs/cgroup/cpuset
  if [ -f "$cpuset/$CGROUP_ROOT/cpuset.cpus" ]; then
    cat "$cpuset/cpuset.cpus" >"$cpuset/$CGROUP_ROOT/cpuset.cpus"
    cat "$cpuset/cpuset.mems" >"$cpuset/$CGROUP_ROOT/cpuset.mems"
  fi
}

start_kubelet() {
  make_cgroup_root
  cat >"$STATE/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
resolvConf: ""
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
# Kubernetes 1.37's kubelet asks CSI drivers for volume and storage health
# (NodeGetVolumeHealth, NodeGetStorageHealth) behind this alpha gate, once
# per volume stats period: pod.status.volumeHealth, CSINode's storageHealth.
featureGates: {CSIVolumeHealth: true}
volumeStatsAggPeriod: 10s
YAML
  start kubelet kubelet --config="$STATE/kubelet.yaml" --kubeconfig="$PKI/kubelet.kubeconfig" \
    --hostname-override="$NODE" --node-ip="$NODE_IP" --cert-dir="$STATE/kubelet-pki" --v=2
}

# driver_pid: the PID of the node plugin's driver (its container's process,
# seen from this PID namespace).
driver_pid() {
  pgrep -f '^/usr/local/bin/hostpath-csi serve .*--node-id=' | head -n 1
}

# node_plugin: the node plugin's pod on $NODE (pod/NAME), of whichever
# DaemonSet runs there (e2e/helm-values.yaml gives $NODE a pool group's).
node_plugin() {
  kubectl -n hostpath-csi get pods -l app.kubernetes.io/name=hostpath-csi-node \
    --field-selector "spec.nodeName=$NODE" -o name
}

# check_pool_group: with the chart, $NODE's node plugin is its pool group's
# (e2e/helm-values.yaml) and has that group's pools.
check_pool_group() {
  [ "$INSTALL" = helm ] || return 0
  local pod owner pools
  pod=$(node_plugin)
  owner=$(kubectl -n hostpath-csi get "$pod" -o 'jsonpath={.metadata.ownerReferences[0].name}')
  pools=$(kubectl -n hostpath-csi exec "$pod" -c driver -- hostpath-csi status --output=json |
    python3 -c 'import json, sys; print(",".join(p["name"] for p in json.load(sys.stdin)["pools"]))')
  if [ "$owner" != "hostpath-csi-node-$NODE" ] || [ "$pools" != default,fast,std,group ]; then
    echo "e2e: $pod is of DaemonSet $owner with pools $pools, not of hostpath-csi-node-$NODE with default,fast,std,group" >&2
    return 1
  fi
  echo "== e2e: $NODE runs $pod of DaemonSet $owner, pools $pools"
}

# rolled_out: the DaemonSets' (the chart may make one per pool group) and
# the Deployment's pods are all Ready.
rolled_out() {
  local daemonset
  for daemonset in $(kubectl -n hostpath-csi get daemonsets -o name); do
    kubectl -n hostpath-csi rollout status "$daemonset" --timeout=1s || return 1
  done
  kubectl -n hostpath-csi rollout status deployment/hostpath-csi-controller --timeout=1s
}

# save_pod_logs: the logs of hostpath-csi's pods (every container, every
# restart), for after the namespaces are gone.
save_pod_logs() {
  mkdir -p "$LOGS/pods"
  cp -r /var/log/pods/hostpath-csi_* "$LOGS/pods/" 2>/dev/null || true
}

node_ready() {
  kubectl get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -qx True
}

node_heartbeat() {
  kubectl get node "$NODE" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}'
}

# heartbeat_after TIME: kubelet has posted the node's status since TIME.
heartbeat_after() {
  [ "$(node_heartbeat)" != "$1" ]
}

kubelet_healthy() {
  curl -fs http://127.0.0.1:10248/healthz
}

driver_registered() {
  kubectl get csinode "$NODE" -o jsonpath='{.spec.drivers[*].name}' | grep -qw hostpath-csi.dev
}

# install_driver: hostpath-csi's objects, by kustomize (deploy/kubernetes
# and deploy/snapshots as e2e/manifests renames their images) or by the
# chart, installed as docs/deploy.md says (the namespace made and labelled
# first; e2e/helm-values.yaml has the same renames). Before any node is up:
# nothing waits for the pods here.
install_driver() {
  case $INSTALL in
    kustomize) kubectl apply -k "$REPO/e2e/manifests" >/dev/null ;;
    helm)
      kubectl create namespace hostpath-csi >/dev/null &&
        kubectl label namespace hostpath-csi pod-security.kubernetes.io/enforce=privileged >/dev/null &&
        HELM_CACHE_HOME=$STATE/helm/cache HELM_CONFIG_HOME=$STATE/helm/config HELM_DATA_HOME=$STATE/helm/data \
          "$HELM" install hostpath-csi "$REPO/charts/hostpath-csi" --namespace hostpath-csi \
          --values "$REPO/e2e/helm-values.yaml" >>"$LOGS/helm.log" 2>&1
      ;;
    *) return 1 ;;
  esac
}

start_cluster() {
  setup_node_filesystem || return 1
  setup_node_network || return 1
  make_pki || return 1
  start_control_plane || return 1
  install_driver || return 1
  start_containerd || return 1
  start_kubelet
  wait_for 180 "node $NODE to be Ready" node_ready || return 1
  wait_for 180 "hostpath-csi's pods to be Ready" rolled_out || return 1
  wait_for 60 "kubelet to register the driver" driver_registered || return 1
  check_pool_group || return 1
  # Pods run under their namespace's default service account.
  wait_for 60 "the default service account" kubectl -n default get serviceaccount default
}

stop_cluster() {
  save_pod_logs
  local name
  for name in kubelet containerd snapshot-controller kube-scheduler \
    kube-controller-manager kube-apiserver etcd; do
    stop "$name"
  done
}
