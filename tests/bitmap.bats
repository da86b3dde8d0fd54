#!/usr/bin/env bats
# Incremental copies from QEMU's dirty bitmaps: a qcow2's persistent bitmap (qemu-img
# bitmap --add, updated by qemu-io's writes) or an NBD export's qemu:dirty-bitmap
# (qemu-nbd -B) copied onto an earlier full copy: identical by qemu-img compare, only the
# dirty clusters read; bad bitmaps refused by name.
load helpers

setup() {
    requires qemu-img qemu-io python3
    # 64 MiB, 40 MiB of data, copied in full; then the bitmap, then writes
    qemu-img create -q -f qcow2 "$T/d.qcow2" 64M
    qemu-io -f qcow2 -c 'write -P 0x11 0 40M' "$T/d.qcow2" > /dev/null
    "$MI" copy -q -O raw "$T/d.qcow2" "$T/full.raw"
    qemu-img bitmap --add "$T/d.qcow2" b0
    qemu-io -f qcow2 -c 'write -P 0x22 1M 64k' -c 'write -z 8M 128k' -c 'discard 16M 64k' \
        -c 'write -P 0x33 50M 4k' -c 'write -P 0x34 63M 64k' "$T/d.qcow2" > /dev/null
    run qemu-img compare -F raw "$T/d.qcow2" "$T/full.raw"
    assert_failure 1
}

# field NAME: a member of BLOCK_JOB_COMPLETED in $output.
field() {
    echo "$output" | python3 -c 'import json,sys
for l in sys.stdin:
    e = json.loads(l)
    if e["event"] == "BLOCK_JOB_COMPLETED": print(e["data"][sys.argv[1]])' "$1"
}

@test "copy -n --bitmap from a qcow2's persistent bitmap: identical, only the dirty clusters read" {
    run "$MI" copy --json -n --bitmap=b0 "$T/d.qcow2" "$T/full.raw"
    assert_success
    run qemu-img compare -F raw "$T/d.qcow2" "$T/full.raw"
    assert_success
    run "$MI" copy --json -n --bitmap=b0 "$T/d.qcow2" "$T/full.raw"
    # dirty: 1M, 8M-8M+128k, 16M, 50M, 63M: six 64 KiB granules, three of them hold data
    [ "$(field bytes_read)" -le $((3 * 65536)) ] || fail "read $(field bytes_read) bytes"
    [ "$(field bytes_read)" -gt 0 ]
}

@test "copy -n --bitmap into an existing qcow2 copy (QEMU's own check stays clean)" {
    qemu-img convert -O qcow2 -f raw "$T/full.raw" "$T/full.qcow2"
    run "$MI" copy -n -O qcow2 --bitmap=b0 "$T/d.qcow2" "$T/full.qcow2"
    assert_success
    run qemu-img compare "$T/d.qcow2" "$T/full.qcow2"
    assert_success
    qcow2_ok "$T/full.qcow2"
}

@test "copy -n --bitmap through qemu-nbd -B: the export's qemu:dirty-bitmap" {
    requires qemu-nbd
    qemu-nbd -r -t -k "$T/n.sock" -B b0 -f qcow2 "$T/d.qcow2" &
    on_exit "kill $!"
    for i in $(seq 50); do [ -S "$T/n.sock" ] && break; sleep 0.1; done
    run "$MI" copy --json -n --bitmap=b0 "nbd+unix:///?socket=$T/n.sock" "$T/full.raw"
    assert_success
    [ "$(field bytes_read)" -le $((3 * 65536)) ] || fail "read $(field bytes_read) bytes"
    run qemu-img compare -F raw "$T/d.qcow2" "$T/full.raw"
    assert_success
    run "$MI" copy -n --bitmap=nope "nbd+unix:///?socket=$T/n.sock" "$T/full.raw"
    assert_failure 1
    assert_output --partial "offers no qemu:dirty-bitmap:nope"
}

@test "info lists persistent bitmaps" {
    run "$MI" info "$T/d.qcow2"
    assert_success
    assert_output --partial "b0: granularity 65536, auto"
    run "$MI" info --json "$T/d.qcow2"
    assert_output --partial '"bitmaps": [{"name": "b0", "granularity": 65536, "flags": ["auto"]}]'
}

# set_dir_field OFF VALUE(u64|u32:...): patch the first bitmap directory entry.
patch_entry() {
    python3 - "$T/d.qcow2" "$1" "$2" <<'PY'
import struct, sys
f = open(sys.argv[1], 'r+b')
h = f.read(4096)
hl = struct.unpack('>I', h[100:104])[0]
off = hl
while True:
    t, l = struct.unpack('>II', h[off:off + 8])
    if t == 0x23852875:
        nb, _, dsize, doff = struct.unpack('>IIQQ', h[off + 8:off + 32])
        break
    off += 8 + (l + 7) // 8 * 8
fld, val = int(sys.argv[2]), int(sys.argv[3], 0)
f.seek(doff + fld)
f.write(struct.pack('>Q' if fld == 0 else '>I', val))
PY
}

@test "bad bitmaps are refused by name, before anything is written" {
    cp "$T/full.raw" "$T/before.raw"
    run "$MI" copy -n --bitmap=nope "$T/d.qcow2" "$T/full.raw"
    assert_failure 1
    assert_output --partial "has no bitmap 'nope'"
    # in use: a QEMU holds it, or crashed with it
    cp "$T/d.qcow2" "$T/keep.qcow2"
    patch_entry 12 0x3
    run "$MI" copy -n --bitmap=b0 "$T/d.qcow2" "$T/full.raw"
    assert_failure 1
    assert_output --partial "bitmap 'b0' is in use"
    # a table that does not fit the image, or lies beyond the file
    cp "$T/keep.qcow2" "$T/d.qcow2"
    patch_entry 8 7
    run "$MI" copy -n --bitmap=b0 "$T/d.qcow2" "$T/full.raw"
    assert_failure 1
    assert_output --partial "bitmap 'b0' is inconsistent"
    cp "$T/keep.qcow2" "$T/d.qcow2"
    patch_entry 0 $((1 << 40))
    run "$MI" copy -n --bitmap=b0 "$T/d.qcow2" "$T/full.raw"
    assert_failure 1
    assert_output --partial "inconsistent"
    cmp "$T/before.raw" "$T/full.raw"
    # usage: --bitmap needs -n, excludes --checksum; a raw source has no bitmaps
    run "$MI" copy --bitmap=b0 "$T/keep.qcow2" "$T/new.raw"
    assert_failure 2
    run "$MI" copy -n --checksum --bitmap=b0 "$T/keep.qcow2" "$T/full.raw"
    assert_failure 2
    run "$MI" copy -n --bitmap=b0 "$T/full.raw" "$T/before.raw"
    assert_failure 1
    assert_output --partial "has no dirty bitmaps"
    cmp "$T/before.raw" "$T/full.raw"
}

# map SOCK BITMAP: QEMU's own reading of a bitmap (qemu-nbd serves it, nbdinfo lists it).
map() {
    nbdinfo --map="qemu:dirty-bitmap:$2" "nbd+unix:///?socket=$1"
}

serve() { # serve IMG BITMAP SOCK
    qemu-nbd -r -t -k "$3" -B "$2" -f qcow2 "$1" &
    on_exit "kill $!"
    for i in $(seq 50); do [ -S "$3" ] && break; sleep 0.1; done
}

@test "copy --bitmaps carries the persistent bitmaps into a new qcow2: QEMU reads them back the same" {
    requires qemu-nbd nbdinfo
    qemu-img bitmap --add -g 4096 "$T/d.qcow2" b1
    qemu-io -f qcow2 -c 'write -P 0x55 3M 4k' -c 'write -P 0x56 33M 20k' "$T/d.qcow2" > /dev/null
    qemu-img bitmap --disable "$T/d.qcow2" b1
    run "$MI" copy --bitmaps "$T/d.qcow2" "$T/c.qcow2"
    assert_success
    qcow2_ok "$T/c.qcow2"
    run qemu-img compare "$T/d.qcow2" "$T/c.qcow2"
    assert_success
    run qemu-img info --output=json "$T/c.qcow2"
    assert_output --partial '"name": "b1"'
    assert_output --partial '"granularity": 4096'
    for b in b0 b1; do
        serve "$T/d.qcow2" $b "$T/$b-d.sock"
        serve "$T/c.qcow2" $b "$T/$b-c.sock"
        map "$T/$b-d.sock" $b > "$T/$b-d.map"
        map "$T/$b-c.sock" $b > "$T/$b-c.map"
        grep -q dirty "$T/$b-d.map" || fail "bitmap $b of the source is empty: the test proves nothing"
        diff "$T/$b-d.map" "$T/$b-c.map" || fail "bitmap $b differs in the copy"
    done
}

@test "copy --bitmaps refusals: with -n, into raw, from a raw source" {
    run "$MI" copy --bitmaps -n "$T/d.qcow2" "$T/full.raw"
    assert_failure 2
    run "$MI" copy --bitmaps -O raw "$T/d.qcow2" "$T/x.raw"
    assert_failure 2
    run "$MI" copy --bitmaps -O qcow2 "$T/full.raw" "$T/x.qcow2"
    assert_failure 1
    assert_output --partial "has no persistent bitmaps"
    [ ! -e "$T/x.raw" ] && [ ! -e "$T/x.qcow2" ]
}
