# hostpath-csi: one image for the node plugin and the controller.
#   docker build -t hostpath-csi:0.1.0 .
# Build stage: the release binaries (protox compiles the proto, so no protoc
# is needed): the driver without the Kubernetes client, then the node loss
# cleanup with it (feature node-loss), each in a build of its own so that the
# client's features never reach the driver.
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin hostpath-csi \
 && cargo build --release --locked --features node-loss --bin hostpath-csi-node-loss

# Runtime: Debian slim plus exactly the tools the driver runs (by argv, never
# through a shell): mkfs.ext4, e2fsck and resize2fs (e2fsprogs) and mkfs.xfs
# and xfs_growfs (xfsprogs), for kind=file volumes. Mounts, loop devices and
# btrfs quotas go through system calls, so no mount, losetup or btrfs tool.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends e2fsprogs xfsprogs \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/hostpath-csi /usr/local/bin/hostpath-csi
# The controller Deployment's cleanup after lost nodes (its own container).
COPY --from=build /src/target/release/hostpath-csi-node-loss /usr/local/bin/hostpath-csi-node-loss
# Root by default: the node plugin must mount (CAP_SYS_ADMIN) and runs
# privileged. The controller Deployment runs it as an unprivileged user.
ENTRYPOINT ["/usr/local/bin/hostpath-csi"]
