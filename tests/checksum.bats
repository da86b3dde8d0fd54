#!/usr/bin/env bats
# mirror-img checksum and copy --checksum: one hash of the guest-visible content, the same
# in every format, computed by an independent implementation of the documented algorithm
# (python's hashlib over the bytes qemu-img reads out) and different after a one-byte change.
load helpers

# The man page's algorithm, by hand: SHA-256 of each 64 KiB block, of each 1024 digests,
# of the segment digests followed by the virtual size (little-endian 64-bit).
oracle() {
    python3 - "$1" <<'PY'
import hashlib, struct, sys
data = open(sys.argv[1], 'rb').read()
B, S = 64 * 1024, 1024
blocks = [hashlib.sha256(data[i:i + B]).digest() for i in range(0, len(data), B)]
segs = [hashlib.sha256(b''.join(blocks[i:i + S])).digest() for i in range(0, len(blocks), S)]
print(hashlib.sha256(b''.join(segs) + struct.pack('<Q', len(data))).hexdigest())
PY
}

ck() { "$MI" checksum "$@" | awk '{print $1}'; }

setup() {
    requires qemu-img qemu-io python3
    # 80 MiB (two segments, the second short): data, written zeros, holes, a partial tail
    truncate -s 80M "$T/a.raw"
    qemu-io -f raw -c 'write -P 0x11 0 3M' -c 'write -P 0 5M 1M' -c 'write -P 0x22 65M 4k' \
        -c "write -P 0x33 $((80 * 1024 * 1024 - 4096)) 4k" "$T/a.raw" > /dev/null
    dd if=/dev/urandom of="$T/a.raw" bs=64K seek=200 count=7 conv=notrunc status=none
}

@test "checksum: the documented algorithm (an independent implementation agrees)" {
    run "$MI" checksum "$T/a.raw"
    assert_success
    assert_output "$(oracle "$T/a.raw")  $T/a.raw"
}

@test "checksum: the same for raw, qcow2, compressed qcow2, a backing chain and an NBD export; one byte changes it" {
    qemu-img convert -f raw -O qcow2 "$T/a.raw" "$T/a.qcow2"
    qemu-img convert -f raw -O qcow2 -c -o cluster_size=4k "$T/a.raw" "$T/c.qcow2"
    # a chain: the base holds part, the top the rest (and zeros over base data)
    qemu-img convert -f raw -O qcow2 "$T/a.raw" "$T/base.qcow2"
    qemu-io -f qcow2 -c 'write -P 0x44 5M 1M' "$T/base.qcow2" > /dev/null
    qemu-img create -q -f qcow2 -b "$T/base.qcow2" -F qcow2 "$T/top.qcow2"
    qemu-io -f qcow2 -c 'write -z 5M 1M' "$T/top.qcow2" > /dev/null
    qemu_same "$T/a.raw" "$T/top.qcow2"
    want=$(oracle "$T/a.raw")
    for img in a.raw a.qcow2 c.qcow2 top.qcow2; do
        [ "$(ck "$T/$img")" = "$want" ] || fail "$img: $(ck "$T/$img"), not $want"
    done
    if command -v nbdkit > /dev/null; then
        nbdkit_start "$T/n.sock" file "$T/a.raw"
        [ "$(ck "nbd+unix:///?socket=$T/n.sock")" = "$want" ] || fail "the NBD export differs"
    fi
    printf '\x01' | dd of="$T/a.raw" bs=1 seek=$((70 * 1024 * 1024 + 3)) conv=notrunc status=none
    [ "$(ck "$T/a.raw")" != "$want" ] || fail "a one-byte change left the hash as it was"
    [ "$(ck "$T/a.raw")" = "$(oracle "$T/a.raw")" ]
}

@test "checksum: the virtual size counts; an odd size (not a block multiple)" {
    head -c 1000003 /dev/urandom > "$T/odd.raw"
    [ "$(ck "$T/odd.raw")" = "$(oracle "$T/odd.raw")" ]
    cp "$T/a.raw" "$T/b.raw"
    truncate -s 96M "$T/b.raw" # the same bytes and 16 MiB of zeros more
    [ "$(ck "$T/b.raw")" != "$(ck "$T/a.raw")" ] || fail "the size does not count"
    [ "$(ck "$T/b.raw")" = "$(oracle "$T/b.raw")" ]
}

@test "checksum --json, several images, and a missing one (exit 1, named)" {
    run "$MI" checksum --json "$T/a.raw"
    assert_success
    assert_output --partial "\"checksum\": \"$(oracle "$T/a.raw")\""
    assert_output --partial '"algorithm": "blkhash-sha256-64k"'
    run "$MI" checksum "$T/a.raw" "$T/nope.raw"
    assert_failure 1
    assert_output --partial "$(oracle "$T/a.raw")  $T/a.raw"
    assert_output --partial "mirror-img: $T/nope.raw"
}

@test "copy --checksum prints the source's checksum, into new and existing targets, raw and qcow2, any granularity" {
    want=$(oracle "$T/a.raw")
    run "$MI" copy --checksum "$T/a.raw" "$T/o.raw"
    assert_success
    assert_output "$want  $T/o.raw"
    cmp "$T/a.raw" "$T/o.raw"
    run "$MI" copy --checksum -g 4K -O qcow2 "$T/a.raw" "$T/o.qcow2"
    assert_success
    assert_output "$want  $T/o.qcow2"
    qemu-img create -q -f qcow2 "$T/e.qcow2" 80M
    qemu-io -f qcow2 -c 'write -P 0xee 0 80M' "$T/e.qcow2" > /dev/null
    run "$MI" copy --checksum -n -O qcow2 "$T/o.qcow2" "$T/e.qcow2"
    assert_success
    assert_output "$want  $T/e.qcow2"
    run "$MI" copy --json --checksum -O raw "$T/e.qcow2" "$T/p.raw"
    assert_success
    assert_output --partial "\"checksum\": \"$want\""
    [ "$(ck "$T/p.raw")" = "$want" ]
}

@test "copy --checksum is refused where what is copied is not the image" {
    qemu-img create -q -f qcow2 -b "$T/a.raw" -F raw "$T/top.qcow2"
    run "$MI" copy --checksum --sync=top "$T/top.qcow2" "$T/x.qcow2"
    assert_failure 2
    assert_output --partial "--checksum"
    run "$MI" follow --checksum --journal "$T/j" "$T/a.raw" "$T/x.raw"
    assert_failure 2
    assert_output --partial "--checksum"
    [ ! -e "$T/x.qcow2" ] && [ ! -e "$T/x.raw" ]
}
