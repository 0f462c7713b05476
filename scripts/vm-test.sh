#!/usr/bin/env bash
# Runs commands (test binaries, benchmarks) inside a virtual machine booted
# from Debian's stock kernel, for what the host's kernel or sandbox may not
# allow: XFS and ext4 project quotas (CONFIG_XFS_QUOTA, CONFIG_QFMT_V2) and
# growing a mounted ext4 (CAP_SYS_RESOURCE).
#
#   scripts/vm-test.sh 'COMMAND [ARG...]'...
#
# The guest sees the host's root read-only (virtio-9p) with fresh /dev,
# /proc, /sys and /run (its TMPDIR) of its own, and runs each command line from the
# repository root, as root, with HOSTPATH_CSI_FULL_KERNEL=1, which makes the
# tests demand those features instead of checking that their absence is
# reported. It fails when any command does. The kernel and
# the initramfs are cached in target/vm. The guest runs under software
# emulation (TCG): these machines' nested KVM hangs while the kernel boots.
set -euo pipefail

[ $# -gt 0 ] || { echo "usage: $0 'COMMAND [ARG...]'..." >&2; exit 2; }
repo=$(cd "$(dirname "$0")/.." && pwd)
cache="$repo/target/vm"
mkdir -p "$cache"

missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
# The guest has no libc of its own: its busybox must be the static one.
ldd /bin/busybox 2>&1 | grep -q 'not a dynamic executable' || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The kernel package Debian's linux-image-amd64 points at today (the package
# lists are refreshed once when they name none, or one no longer served).
kernel_package() {
    { apt-cache depends linux-image-amd64 2>/dev/null || true; } \
        | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}
package=$(kernel_package)
[ -n "$package" ] || { apt-get update -qq; package=$(kernel_package); }
[ -n "$package" ] || { echo "vm-test: no Debian kernel package found" >&2; exit 1; }
kernel_dir="$cache/$package"
if [ ! -f "$kernel_dir/done" ]; then
    rm -rf "$kernel_dir" && mkdir -p "$kernel_dir/deb"
    if ! (cd "$kernel_dir/deb" && apt-get download -qq "$package" 2>/dev/null); then
        apt-get update -qq
        package=$(kernel_package)
        kernel_dir="$cache/$package"
        rm -rf "$kernel_dir" && mkdir -p "$kernel_dir/deb"
        (cd "$kernel_dir/deb" && apt-get download -qq "$package" 2>/dev/null)
    fi
    dpkg-deb -x "$kernel_dir"/deb/*.deb "$kernel_dir/root"
    rm -rf "$kernel_dir/deb"
    touch "$kernel_dir/done"
fi
version=$(ls "$kernel_dir/root/lib/modules")
modules="$kernel_dir/root/lib/modules/$version"

# The initramfs: busybox, the modules the tests need (with what they depend
# on) and an init that mounts the host and runs the script named on the
# kernel command line.
initramfs="$kernel_dir/initramfs.cpio.gz"
if [ ! -f "$initramfs" ] || [ "$0" -nt "$initramfs" ]; then
    [ -f "$modules/modules.dep" ] || busybox depmod -b "$kernel_dir/root" "$version"
    staging=$(mktemp -d)
    trap 'rm -rf "$staging"' EXIT
    mkdir -p "$staging"/{bin,dev,proc,sys,host,lib/modules/"$version"}
    cp /bin/busybox "$staging/bin/busybox"
    wanted=(virtio_pci 9pnet_virtio 9p loop xfs ext4 quota_v2 btrfs crc32c_generic xxhash_generic)
    add_module() { # copies a module and, first, those it depends on
        local path=$1
        [ -f "$staging/lib/modules/$version/$path" ] && return
        local deps
        deps=$(awk -v m="$path:" '$1 == m { $1 = ""; print }' "$modules/modules.dep")
        for dep in $deps; do add_module "$dep"; done
        mkdir -p "$(dirname "$staging/lib/modules/$version/$path")"
        cp "$modules/$path" "$staging/lib/modules/$version/$path"
    }
    for name in "${wanted[@]}"; do
        path=$(awk -v n="/$name.ko:" 'index($1, n) { sub(":", "", $1); print $1; exit }' "$modules/modules.dep")
        [ -n "$path" ] || { echo "vm-test: module $name not in $package" >&2; exit 1; }
        add_module "$path"
    done
    busybox depmod -b "$staging" "$version"
    cat > "$staging/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# Modules the kernel asks for itself (crc32c, say) come from here too.
echo /bin/modprobe > /proc/sys/kernel/modprobe
for name in ${wanted[*]}; do modprobe \$name || echo "vm-test: modprobe \$name failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /host
# Scratch space (TMPDIR) lives here: the host's /tmp may hold the repository.
# Sparse pool images may be larger than the guest's memory.
mount -t tmpfs -o size=64g run /host/run
mount -t devtmpfs dev /host/dev
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
script=\$(sed -n 's/.*vmtest.script=\([^ ]*\).*/\1/p' /proc/cmdline)
chroot /host /bin/sh "\$script"
echo "vm-test: exit \$?"
poweroff -f
EOF
    chmod 755 "$staging/init"
    (cd "$staging" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$initramfs.new"
    mv "$initramfs.new" "$initramfs"
fi

# What the guest runs, from the repository root.
script="$cache/run.sh"
{
    echo 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    echo 'mkdir -p /run/tmp'
    echo 'export TMPDIR=/run/tmp HOME=/run/tmp HOSTPATH_CSI_FULL_KERNEL=1 RUST_BACKTRACE=0'
    echo "cd '$repo'"
    echo 'status=0'
    for command in "$@"; do
        printf 'echo %q\n' "== $command"
        echo "$command || status=1"
    done
    echo 'exit $status'
} > "$script"

log="$cache/console.log"
timeout 1200 qemu-system-x86_64 \
    -machine q35,accel=tcg -cpu max -smp 2 -m 3072 \
    -nographic -no-reboot -nodefaults -serial stdio \
    -kernel "$kernel_dir/root/boot/vmlinuz-$version" -initrd "$initramfs" \
    -append "console=ttyS0 quiet panic=-1 vmtest.script=$script" \
    -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap \
    -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
    </dev/null 2>&1 | tee "$log" | grep -v "^\[ *[0-9.]*\]" || true
status=$(sed -n 's/^vm-test: exit \([0-9]*\).*/\1/p' "$log" | tr -d '\r' | tail -1)
echo "vm-test: $package: guest exit status ${status:-none}"
[ "$status" = 0 ]
