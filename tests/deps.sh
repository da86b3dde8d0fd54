#!/bin/sh
# Install the Debian packages mirror-img needs to build and test, when any is missing.
# Build: gcc make pkg-config libqcow-dev zlib1g-dev libzstd-dev libnbd-dev libssl-dev.
# Tests: bats bats-support bats-assert qemu-utils nbdkit libnbd-bin fio python3 groff,
# zsh and fish (completions), clang and its runtime (fuzzing), valgrind, gnuplot and
# hyperfine (make bench), openssl (TLS tests) and strace; mount (losetup), e2fsprogs,
# xfsprogs and btrfs-progs for the file systems that tests/run.sh and tests/soak.sh make
# on loop devices; qemu-system-x86, linux-image-cloud-amd64, busybox-static and cpio for
# the guest that writes its disk while followed (tests/follow-guest.bats).
set -e
pkgs="gcc make pkg-config libqcow-dev zlib1g-dev libzstd-dev libnbd-dev libssl-dev
      bats bats-support bats-assert qemu-utils nbdkit libnbd-bin fio python3 groff-base
      procps util-linux time zsh fish man-db clang-14 libclang-rt-14-dev valgrind
      gnuplot-nox hyperfine binutils mount e2fsprogs xfsprogs btrfs-progs openssl strace
      qemu-system-x86 linux-image-cloud-amd64 busybox-static cpio"
missing=
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "mirror-img: missing Debian packages:$missing (run 'make deps' as root, or install them)" >&2
    exit 1
fi
echo "Installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing >/dev/null
