# shellcheck shell=bash
# Sourced by e2e/run.sh: builds (or reuses) every
# piece of the e2e cluster into target/e2e. Go's and cargo's caches make a
# warm run a few seconds.
#   bin/    kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
#           kubectl, agnhost (k8s.io/kubernetes, pinned in e2e/kube/go.mod);
#           csi-provisioner (e2e/sidecars/go.mod), csi-resizer
#           (e2e/resizer/go.mod), csi-snapshotter and snapshot-controller
#           (e2e/snapshotter/go.mod), the registrar and livenessprobe
#           stand-ins and pause (e2e/sidecars); hostpath-csi (cargo, release)
#   crds/   the snapshot CRDs of e2e/snapshotter's external-snapshotter
#   images/ docker-archive images made here for `ctr import` (images.env)
#   debs/   Debian packages the images are made of (apt-get download)

E2E_OUT="$REPO/target/e2e"
E2E_BIN="$E2E_OUT/bin"

# The sidecars' modules are fetched by exact version: the proxy serves them
# but its checksum database has no entry, so the committed go.sum is the pin.
export GONOSUMDB=github.com/kubernetes-csi/external-provisioner,github.com/kubernetes-csi/external-resizer

# kube_version: the k8s.io/kubernetes release e2e/kube/go.mod pins.
kube_version() {
  sed -n 's/^require k8s.io\/kubernetes //p' "$REPO/e2e/kube/go.mod"
}

# kube_stamp: the -ldflags that stamp the version in, as Kubernetes' own
# build does (kubelet reports it; the control plane and e2e.test check skew
# against it).
kube_stamp() {
  local version minor stamp package
  version=$(kube_version)
  minor=$(echo "$version" | cut -d. -f2)
  for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    stamp+=" -X $package.gitVersion=$version -X $package.gitMajor=1"
    stamp+=" -X $package.gitMinor=$minor -X $package.gitTreeState=clean"
  done
  echo "$stamp"
}

# built NAME OUTPUT... -- FUNCTION...: true if every OUTPUT exists and was
# built with e2e/kube's go.mod and go.sum and the FUNCTIONs as they are now
# (Go caches compiling, not linking, and linking Kubernetes takes minutes).
# Otherwise sets BUILT_MARK, for the caller to touch once it has built them.
built() {
  local name=$1 complete=yes mark
  shift
  while [ "$1" != -- ]; do
    [ -x "$E2E_BIN/$1" ] || complete=no
    shift
  done
  shift
  mark="$E2E_BIN/.$name-$({ cat "$REPO/e2e/kube/go.mod" "$REPO/e2e/kube/go.sum"; declare -f "$@"; } |
    sha256sum | cut -c1-16)"
  [ -e "$mark" ] && [ $complete = yes ] && return 0
  rm -f "$E2E_BIN/.$name-"*
  BUILT_MARK=$mark
  return 1
}

build_binaries() {
  mkdir -p "$E2E_BIN"
  echo "== e2e: Kubernetes $(kube_version) (go build; cached after the first run)"
  if ! built kube kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl agnhost \
    -- build_binaries kube_stamp; then
    (cd "$REPO/e2e/kube" && go build -ldflags "$(kube_stamp)" -o "$E2E_BIN/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl)
    (cd "$REPO/e2e/kube" && CGO_ENABLED=0 go build -o "$E2E_BIN/" k8s.io/kubernetes/test/images/agnhost)
    touch "$BUILT_MARK"
  fi
  echo "== e2e: csi-provisioner, csi-resizer, registrar and livenessprobe stand-ins, pause"
  # Static, like the official images (distroless).
  (cd "$REPO/e2e/sidecars" && CGO_ENABLED=0 go build -o "$E2E_BIN/" \
    github.com/kubernetes-csi/external-provisioner/v5/cmd/csi-provisioner ./registrar ./livenessprobe ./pause)
  (cd "$REPO/e2e/resizer" && CGO_ENABLED=0 go build -o "$E2E_BIN/" \
    github.com/kubernetes-csi/external-resizer/cmd/csi-resizer)
  echo "== e2e: csi-snapshotter, snapshot-controller and the snapshot CRDs"
  (cd "$REPO/e2e/snapshotter" && CGO_ENABLED=0 go build -o "$E2E_BIN/" \
    github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter \
    github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller)
  local client
  client=$(cd "$REPO/e2e/snapshotter" &&
    go list -m -f '{{.Dir}}' github.com/kubernetes-csi/external-snapshotter/client/v8)
  rm -rf "$E2E_OUT/crds"
  mkdir -p "$E2E_OUT/crds"
  cp "$client"/config/crd/snapshot.storage.k8s.io_*.yaml "$E2E_OUT/crds/"
  echo "== e2e: hostpath-csi (release)"
  # As the Dockerfile builds them: the driver without the Kubernetes client.
  (cd "$REPO" && cargo build --release --locked --quiet --bin hostpath-csi &&
    cargo build --release --locked --quiet --features node-loss --bin hostpath-csi-node-loss)
  cp "$REPO/target/release/hostpath-csi" "$REPO/target/release/hostpath-csi-node-loss" "$E2E_BIN/"
}

# pieces_built: every binary, CRD and image archive build_binaries and
# build_images make is there (whatever it was built from).
pieces_built() {
  local piece
  for piece in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl agnhost \
    csi-provisioner csi-resizer csi-snapshotter snapshot-controller registrar livenessprobe pause \
    hostpath-csi hostpath-csi-node-loss; do
    [ -x "$E2E_BIN/$piece" ] || return 1
  done
  compgen -G "$E2E_OUT/crds/snapshot.storage.k8s.io_*.yaml" >/dev/null || return 1
  for piece in "${IMAGE_ARCHIVES[@]}"; do
    [ -s "$E2E_OUT/images/$piece.tar" ] || return 1
  done
}

# build_suite: e2e.test, Kubernetes' own end-to-end suite, at the cluster's
# version.
build_suite() {
  echo "== e2e: e2e.test $(kube_version) (go test -c; cached after the first run)"
  built e2e.test e2e.test -- build_suite kube_stamp && return 0
  (cd "$REPO/e2e/kube" && go test -c -ldflags "$(kube_stamp)" -o "$E2E_BIN/e2e.test" k8s.io/kubernetes/test/e2e)
  touch "$BUILT_MARK"
}

# image_archive OUT ROOTFS CONFIG TAG...: a one-layer docker-archive of
# ROOTFS with the image config CONFIG (JSON members: "Cmd", "Entrypoint"),
# tagged with every TAG.
image_archive() {
  local out=$1 rootfs=$2 config=$3
  shift 3
  local work
  work=$(mktemp -d "$E2E_OUT/work/image.XXXXXX")
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$rootfs" -cf "$work/layer.tar" .
  local diff_id tags
  diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
  tags=$(printf '"%s",' "$@")
  printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],%s},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$(go env GOARCH)" "$config" "$diff_id" >"$work/config.json"
  printf '[{"Config":"config.json","RepoTags":[%s],"Layers":["layer.tar"]}]' "${tags%,}" >"$work/manifest.json"
  tar -C "$work" -cf "$out" manifest.json config.json layer.tar
  rm -rf "$work"
}

# new_rootfs: an empty root with Debian's merged /usr layout, /tmp, and
# root and nobody in /etc/passwd.
new_rootfs() {
  local rootfs
  rootfs=$(mktemp -d "$E2E_OUT/work/rootfs.XXXXXX")
  mkdir -p "$rootfs"/usr/{bin,sbin,lib,lib64} "$rootfs"/{etc,tmp,root,var/tmp,run}
  local dir
  for dir in bin sbin lib lib64; do
    ln -s "usr/$dir" "$rootfs/$dir"
  done
  chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
  echo "$rootfs"
}

# add_debian ROOTFS PACKAGE...: unpacks PACKAGE and everything it depends on
# (Debian's packages, as `apt-get install --no-install-recommends` would
# pick them) into ROOTFS. Maintainer scripts do not run.
add_debian() {
  local rootfs=$1
  shift
  local debs="$E2E_OUT/debs" packages package deb
  mkdir -p "$debs"
  apt-cache show "$@" >/dev/null 2>&1 || apt-get update -qq || return 1
  packages=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
    --no-breaks --no-replaces --no-enhances "$@" | grep -E '^[a-z0-9]' | sort -u) || return 1
  local absent=()
  for package in $packages; do
    compgen -G "$debs/${package}_*.deb" >/dev/null || absent+=("$package")
  done
  if [ ${#absent[@]} -gt 0 ]; then
    # Lists older than the mirror's files: refresh them once and retry.
    download "$debs" "${absent[@]}" || { apt-get update -qq && download "$debs" "${absent[@]}"; } || return 1
  fi
  for package in $packages; do
    for deb in "$debs/${package}"_*.deb; do
      dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink -C "$rootfs" || return 1
    done
  done
}

# download DIR PACKAGE...: the candidate .deb of each PACKAGE, into DIR.
download() {
  local dir=$1
  shift
  (cd "$dir" && apt-get download -qq -o APT::Sandbox::User=root "$@")
}

# add_busybox ROOTFS: Debian's static busybox and a link for each applet
# ROOTFS does not have yet.
add_busybox() {
  local rootfs=$1 applet
  cp "$(command -v busybox)" "$rootfs/bin/busybox"
  for applet in $(busybox --list); do
    [ -e "$rootfs/bin/$applet" ] || [ -e "$rootfs/sbin/$applet" ] || ln -s busybox "$rootfs/bin/$applet"
  done
}

# image NAME CONFIG TAG... (rootfs in $rootfs): writes images/NAME.tar and
# removes the rootfs.
image() {
  local name=$1
  shift
  image_archive "$E2E_OUT/images/$name.tar" "$rootfs" "$@"
  rm -rf "$rootfs"
}

build_images() {
  # Scratch space under target/, emptied here, so a failed build leaves
  # nothing in /tmp.
  rm -rf "$E2E_OUT/work"
  mkdir -p "$E2E_OUT/images" "$E2E_OUT/work"
  local rootfs

  rootfs=$(new_rootfs)
  cp "$E2E_BIN/pause" "$rootfs/bin/pause"
  image pause '"Entrypoint":["/bin/pause"]' "${PAUSE_IMAGES[@]}"

  rootfs=$(new_rootfs)
  add_busybox "$rootfs"
  image busybox '"Cmd":["/bin/sh"]' "${BUSYBOX_IMAGES[@]}"

  # agnhost's own image is a small base with a shell and /agnhost.
  rootfs=$(new_rootfs)
  add_busybox "$rootfs"
  cp "$E2E_BIN/agnhost" "$rootfs/agnhost"
  image agnhost '"Entrypoint":["/agnhost"]' "$AGNHOST_IMAGE"

  # The suite runs shell scripts in these; the real images are Debian's
  # nginx and Debian with dnsutils, made here from the same packages.
  rootfs=$(new_rootfs)
  add_debian "$rootfs" nginx-light || return 1
  add_busybox "$rootfs"
  echo 'www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin' >>"$rootfs/etc/passwd"
  echo 'www-data:x:33:' >>"$rootfs/etc/group"
  mkdir -p "$rootfs/var/log/nginx" "$rootfs/var/lib/nginx"
  image nginx '"Cmd":["nginx","-g","daemon off;"]' "$NGINX_IMAGE"

  rootfs=$(new_rootfs)
  add_debian "$rootfs" dash bash coreutils grep sed findutils bind9-dnsutils || return 1
  [ -e "$rootfs/bin/sh" ] || ln -s dash "$rootfs/bin/sh"
  image glibc-dns-testing '"Cmd":["/bin/sh"]' "$GLIBC_DNS_TESTING_IMAGE"

  # hostpath-csi's Dockerfile, runtime stage: Debian with e2fsprogs and
  # xfsprogs, and the release binaries.
  rootfs=$(new_rootfs)
  add_debian "$rootfs" e2fsprogs xfsprogs || return 1
  mkdir -p "$rootfs/usr/local/bin"
  cp "$E2E_BIN/hostpath-csi" "$E2E_BIN/hostpath-csi-node-loss" "$rootfs/usr/local/bin/"
  image hostpath-csi '"Entrypoint":["/usr/local/bin/hostpath-csi"]' "$DRIVER_IMAGE"

  # The sidecars: one static binary each, as in their distroless images.
  local sidecar
  for sidecar in csi-provisioner csi-resizer csi-snapshotter registrar livenessprobe; do
    rootfs=$(new_rootfs)
    cp "$E2E_BIN/$sidecar" "$rootfs/$sidecar"
    image "$sidecar" "\"Entrypoint\":[\"/$sidecar\"]" "$(sidecar_image "$sidecar")"
  done
}
