#!/usr/bin/env bats
# A QEMU guest (TCG, a Debian cloud kernel and a busybox initramfs built here) writes its
# qcow2 disk, an overlay on a base with data, while follow mirrors the disk to raw in disk
# mode; QEMU's writes go through the shim (`mirror-img run`).  Once the guest powered off,
# complete; qemu-img compare of the chain against the raw target judges.
load helpers

# The kernel and its virtio modules (tests/deps.sh installs linux-image-cloud-amd64).
guest_kernel() {
    local k
    for k in /boot/vmlinuz-*-cloud-amd64 /boot/vmlinuz-*; do
        [ -r "$k" ] && [ -d "/lib/modules/${k#/boot/vmlinuz-}/kernel/drivers/block" ] &&
            { echo "$k"; return 0; }
    done
    return 1
}

setup_file() {
    local d=$BATS_FILE_TMPDIR k ver m mods
    k=$(guest_kernel) || return 0
    ver=${k#/boot/vmlinuz-}
    mods=/lib/modules/$ver/kernel/drivers
    mkdir -p "$d/root/bin" "$d/root/dev" "$d/root/lib"
    cp "$(command -v busybox)" "$d/root/bin/busybox" || return 0
    for m in virtio/virtio_ring virtio/virtio virtio/virtio_pci_legacy_dev \
             virtio/virtio_pci_modern_dev virtio/virtio_pci block/virtio_blk; do
        [ -e "$mods/$m.ko" ] && cp "$mods/$m.ko" "$d/root/lib/"
    done
    # The guest: load virtio, then write its disk: random data over holes, zeros over
    # the backing file's data, small writes in a new L2 table's range, each flushed.
    cat > "$d/root/init" <<'INIT'
#!/bin/busybox sh
B=/bin/busybox
$B mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
    [ -e /lib/$m.ko ] && $B insmod /lib/$m.ko
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 300 ]; do $B sleep 0.1; i=$((i + 1)); done
[ -b /dev/vda ] || { echo GUEST-NO-DISK; $B poweroff -f; }
$B dd if=/dev/urandom of=/dev/vda bs=64k count=64 seek=100 conv=fsync 2>/dev/null
$B dd if=/dev/zero of=/dev/vda bs=64k count=8 seek=0 conv=fsync 2>/dev/null
$B dd if=/dev/urandom of=/dev/vda bs=4k count=50 seek=150000 conv=fsync 2>/dev/null
$B dd if=/dev/urandom of=/dev/vda bs=64k count=16 seek=104 conv=fsync 2>/dev/null
$B sync
echo GUEST-DONE
$B poweroff -f
INIT
    chmod +x "$d/root/init"
    (cd "$d/root" && find . | cpio -o -H newc 2>/dev/null | gzip > "$d/initramfs.gz")
    echo "$k" > "$d/kernel"
}

@test "a QEMU guest writes its qcow2 overlay while follow mirrors the disk to raw" {
    requires qemu-system-x86_64 qemu-img qemu-io busybox cpio
    [ -s "$BATS_FILE_TMPDIR/kernel" ] || skip "no kernel with modules in /boot (linux-image-cloud-amd64)"
    local kernel d=$BATS_FILE_TMPDIR
    kernel=$(cat "$d/kernel")
    qemu-img create -q -f qcow2 "$T/base.qcow2" 1G
    qemu-io -f qcow2 -c 'write -P 0x11 0 32M' -c 'write -P 0x12 600M 4M' "$T/base.qcow2" >/dev/null
    qemu-img create -q -f qcow2 -b "$T/base.qcow2" -F qcow2 "$T/disk.qcow2"
    "$MI" follow --json --journal "$T/j" -O raw "$T/disk.qcow2" "$T/dst.raw" \
        > "$T/events" 2> "$T/follow.err" &
    local follow=$!
    on_exit "kill -9 $follow"
    local i
    for i in $(seq 300); do
        grep -q BLOCK_JOB_READY "$T/events" && break
        kill -0 "$follow" || { cat "$T/follow.err"; fail "follow exited"; }
        sleep 0.1
    done
    grep -q BLOCK_JOB_READY "$T/events" || fail "follow never got ready"
    run timeout 300 "$MI" run --journal "$T/j" "$T/disk.qcow2" -- \
        qemu-system-x86_64 -accel tcg -m 256 -nographic -no-reboot -kernel "$kernel" \
        -initrd "$d/initramfs.gz" -append "console=ttyS0 panic=-1 quiet" \
        -drive "file=$T/disk.qcow2,format=qcow2,if=virtio,aio=threads,cache=writeback"
    assert_success
    assert_output --partial GUEST-DONE
    run "$MI" status --json "$T/j.sock"
    assert_output --partial '"mode": "disk"'
    run "$MI" complete "$T/j.sock"
    assert_success
    wait_exit "$follow" || { cat "$T/follow.err"; fail "follow failed after complete"; }
    run qemu-img compare -f qcow2 -F raw "$T/disk.qcow2" "$T/dst.raw"
    assert_success
    # the guest changed the disk: the target is not simply the base
    run qemu-img compare -f qcow2 -F raw "$T/base.qcow2" "$T/dst.raw"
    assert_failure
}
