#!/usr/bin/env bats
# Copy offload: on XFS and btrfs (made here on loop devices) the data ranges of a raw file
# or of a qcow2 chain's normal clusters are cloned into a raw target (FICLONERANGE), the
# target is identical (cmp, qemu-img compare) and no larger than the data; compressed
# clusters, --no-offload, tmpfs, ext4 and a target on another file system are read and
# written as before.  Needs root (loop devices, mount): skipped otherwise, by name.
load helpers
. "$TOP/tests/fs.bash"

setup_file() {
    export OFF_FS="" OFF_DIR=""
    fs_init "$TOP"
    export FS_DIR
    for fs in xfs btrfs ext4 tmpfs; do
        [ -z "$(fs_why_not $fs)" ] && fs_make $fs 3G && OFF_FS="$OFF_FS $fs"
    done
}

teardown_file() {
    for fs in xfs btrfs ext4 tmpfs; do fs_remove $fs; done
    rmdir "$FS_DIR" 2>/dev/null || true
}

# on FS: the mount point of FS, or skip with the reason.
on() {
    case " $OFF_FS " in
    *" $1 "*) D=$FS_DIR/$1/$BATS_TEST_NUMBER; rm -rf "$D"; mkdir -p "$D"; on_exit "rm -rf $D" ;;
    *) skip "$1 could not be made here: $(fs_why_not "$1")" ;;
    esac
}

# src_raw FILE: 48 MiB, half data in 1 MiB runs (some of them zeros), holes between, and
# a 4 KiB piece at an odd 4 KiB offset.
src_raw() {
    truncate -s 48M "$1"
    for k in 0 2 4 8 16 30 40; do
        dd if=/dev/urandom of="$1" bs=1M seek=$k count=1 conv=notrunc status=none
    done
    dd if=/dev/zero of="$1" bs=1M seek=6 count=1 conv=notrunc status=none
    dd if=/dev/urandom of="$1" bs=4K seek=9001 count=1 conv=notrunc status=none
}

# copy_json ARGS...: run copy --json; CLONED and OFFLOADED from BLOCK_JOB_COMPLETED.
copy_json() {
    run "$MI" copy --json "$@"
    assert_success
    CLONED=$(echo "$output" | python3 -c 'import json,sys
for l in sys.stdin:
    e = json.loads(l)
    if e["event"] == "BLOCK_JOB_COMPLETED": print(e["data"]["bytes_cloned"], e["data"]["bytes_offloaded"])')
    OFFLOADED=${CLONED#* } CLONED=${CLONED% *}
}

used() { du -k "$1" | awk '{print $1}'; }

@test "offload: raw to raw on XFS and btrfs is cloned; identical, sparse" {
    for fs in xfs btrfs; do
        on $fs
        src_raw "$D/s.raw"
        copy_json "$D/s.raw" "$D/t.raw"
        cmp "$D/s.raw" "$D/t.raw"
        [ "$CLONED" -ge $((7 * 1024 * 1024)) ] || fail "[$fs] $CLONED bytes cloned"
        [ "$(used "$D/t.raw")" -le "$(used "$D/s.raw")" ] ||
            fail "[$fs] the target takes $(used "$D/t.raw") KiB, the source $(used "$D/s.raw")"
        # the same into an existing target
        copy_json -n "$D/s.raw" "$D/t.raw"
        cmp "$D/s.raw" "$D/t.raw"
        [ "$CLONED" -gt 0 ]
    done
}

@test "offload: qcow2 chains to raw clone the normal clusters, base and top; compressed ones are read" {
    for fs in xfs btrfs; do
        on $fs
        src_raw "$D/s.raw"
        qemu-img convert -f raw -O qcow2 "$D/s.raw" "$D/base.qcow2"
        qemu-img create -q -f qcow2 -b "$D/base.qcow2" -F qcow2 "$D/top.qcow2"
        qemu-io -f qcow2 -c 'write -P 0x61 1M 64k' -c 'write -z 2M 64k' -c 'write -P 0x62 20M 1M' \
            "$D/top.qcow2" > /dev/null
        copy_json -O raw "$D/top.qcow2" "$D/t.raw"
        run qemu-img compare -F raw "$D/top.qcow2" "$D/t.raw"
        assert_success
        [ "$CLONED" -ge $((7 * 1024 * 1024)) ] || fail "[$fs] $CLONED bytes cloned"
        qemu-img convert -f raw -O qcow2 -c "$D/s.raw" "$D/c.qcow2"
        copy_json -O raw "$D/c.qcow2" "$D/tc.raw"
        run qemu-img compare -F raw "$D/c.qcow2" "$D/tc.raw"
        assert_success
    done
}

@test "offload: an odd size (the tail is not a whole block), --no-offload" {
    on xfs
    head -c 1000003 /dev/urandom > "$D/odd.raw"
    copy_json "$D/odd.raw" "$D/t.raw"
    cmp "$D/odd.raw" "$D/t.raw"
    [ "$CLONED" -gt 0 ] && [ $((CLONED + OFFLOADED)) -le 1000003 ]
    src_raw "$D/s.raw"
    copy_json --no-offload "$D/s.raw" "$D/n.raw"
    cmp "$D/s.raw" "$D/n.raw"
    [ "$CLONED" -eq 0 ] && [ "$OFFLOADED" -eq 0 ] || fail "--no-offload offloaded $CLONED + $OFFLOADED"
}

@test "offload: tmpfs, ext4 and a target on another file system are read and written as before" {
    for fs in tmpfs ext4; do
        on $fs
        src_raw "$D/s.raw"
        copy_json "$D/s.raw" "$D/t.raw"
        cmp "$D/s.raw" "$D/t.raw"
        [ "$CLONED" -eq 0 ] || fail "[$fs] $CLONED bytes cloned"
    done
    on xfs
    X=$D
    on btrfs
    src_raw "$X/s.raw"
    copy_json "$X/s.raw" "$D/t.raw"
    cmp "$X/s.raw" "$D/t.raw"
    [ "$CLONED" -eq 0 ] || fail "$CLONED bytes cloned across file systems"
}
