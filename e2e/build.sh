# shellcheck shell=bash
# Sourced by e2e/run.sh: builds (or reuses) every piece of the e2e cluster
# into target/e2e. Go's and cargo's caches make a warm run a few seconds.
#   bin/    kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
#           kubectl (k8s.io/kubernetes, pinned in e2e/kube/go.mod);
#           csi-provisioner (pinned in e2e/sidecars/go.mod), registrar and
#           pause (e2e/sidecars); hostpath-csi (cargo)
#   images/ pause.tar and busybox.tar: docker-archive images made here from
#           the pause binary and Debian's busybox-static, for `ctr import`

E2E_OUT="$REPO/target/e2e"
E2E_BIN="$E2E_OUT/bin"

# The sidecars' module is fetched by exact version: the proxy serves it but
# its checksum database has no entry, so go.sum (committed) is the pin.
export GONOSUMDB=github.com/kubernetes-csi/external-provisioner

build_binaries() {
  mkdir -p "$E2E_BIN"
  local version minor
  version=$(sed -n 's/^require k8s.io\/kubernetes //p' "$REPO/e2e/kube/go.mod")
  minor=$(echo "$version" | cut -d. -f2)
  echo "== e2e: Kubernetes $version (go build; cached after the first run)"
  # The version Kubernetes' own build stamps in (kubelet reports it, and
  # the control plane checks skew against it).
  local stamp="-X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1"
  stamp+=" -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
  stamp+=" -X k8s.io/client-go/pkg/version.gitVersion=$version -X k8s.io/client-go/pkg/version.gitMajor=1"
  stamp+=" -X k8s.io/client-go/pkg/version.gitMinor=$minor -X k8s.io/client-go/pkg/version.gitTreeState=clean"
  (cd "$REPO/e2e/kube" && go build -ldflags "$stamp" -o "$E2E_BIN/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl)
  echo "== e2e: csi-provisioner, registrar stand-in, pause"
  (cd "$REPO/e2e/sidecars" && go build -o "$E2E_BIN/" \
    github.com/kubernetes-csi/external-provisioner/v5/cmd/csi-provisioner)
  (cd "$REPO/e2e/sidecars" && CGO_ENABLED=0 go build -o "$E2E_BIN/" ./registrar ./pause)
  echo "== e2e: hostpath-csi"
  (cd "$REPO" && cargo build --locked --quiet)
  cp "$REPO/target/debug/hostpath-csi" "$E2E_BIN/hostpath-csi"
}

# image_archive OUT TAG ROOTFS CMD...: a one-layer docker-archive of ROOTFS
# that runs CMD, tagged TAG.
image_archive() {
  local out=$1 tag=$2 rootfs=$3
  shift 3
  local work
  work=$(mktemp -d)
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$rootfs" -cf "$work/layer.tar" .
  local diff_id cmd
  diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
  cmd=$(printf '"%s",' "$@")
  printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":[%s]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$(go env GOARCH)" "${cmd%,}" "$diff_id" >"$work/config.json"
  printf '[{"Config":"config.json","RepoTags":["%s"],"Layers":["layer.tar"]}]' "$tag" >"$work/manifest.json"
  tar -C "$work" -cf "$out" manifest.json config.json layer.tar
  rm -rf "$work"
}

build_images() {
  local images="$E2E_OUT/images" rootfs
  mkdir -p "$images"
  rootfs=$(mktemp -d)
  mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp"
  cp "$E2E_BIN/pause" "$rootfs/bin/pause"
  image_archive "$images/pause.tar" "$PAUSE_IMAGE" "$rootfs" /bin/pause
  rm -rf "$rootfs"

  rootfs=$(mktemp -d)
  mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/root"
  chmod 1777 "$rootfs/tmp"
  cp "$(command -v busybox)" "$rootfs/bin/busybox"
  local applet
  for applet in $(busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
  image_archive "$images/busybox.tar" "$BUSYBOX_IMAGE" "$rootfs" /bin/sh
  rm -rf "$rootfs"
}
