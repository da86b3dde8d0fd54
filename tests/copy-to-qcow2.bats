#!/usr/bin/env bats
# copy into a new qcow2 target: the writer (formats/qcow2-create.c) through the CLI.
# Every result is judged by QEMU: `qemu-img compare` (same content) and `qemu-img check`
# (no error, no leak); the layout claims by `qemu-img map` and `qemu-img info`.
load helpers

setup() {
    requires qemu-img qemu-io python3
}

# mksrc FILE SIZE: a raw source with random data, zeros written as data, a hole, a
# constant pattern (compressible) and data in its very last sector.
#   [0, 1M) random | [1M, 2M) zeros written | [2M, 3M) hole | [3M, 4M) pattern 0x5a
#   | hole | last 512 bytes random
mksrc() {
    local f=$1 size=$2
    truncate -s "$size" "$f"
    dd if=/dev/urandom of="$f" bs=1M count=1 conv=notrunc status=none
    dd if=/dev/zero of="$f" bs=1M seek=1 count=1 conv=notrunc status=none
    qemu-io -f raw -c "write -P 0x5a 3M 1M" "$f" >/dev/null
    dd if=/dev/urandom of="$f" bs=512 seek=$(($(stat -c %s "$f") / 512 - 1)) count=1 \
        conv=notrunc status=none
}

# judge SRC DST: identical content, a consistent image without leaks.
judge() {
    qemu_same "$1" "$2"
    qcow2_ok "$2"
}

# map_data DST START LEN: print the data entries of qemu-img map overlapping the range.
map_data() {
    qemu-img map --output=json "$1" | python3 -c '
import json, sys
start, length = int(sys.argv[1]), int(sys.argv[2])
for e in json.load(sys.stdin):
    if e["data"] and e["start"] < start + length and start < e["start"] + e["length"]:
        print(e)' "$2" "$3"
}

# info_field DST KEY...: a field of qemu-img info --output=json (keys go down the tree).
info_field() {
    local img=$1
    shift
    qemu-img info --output=json "$img" | python3 -c '
import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1:]:
    v = v[k]
print(v)' "$@"
}

@test "raw to qcow2: data, written zeros and holes; zeros stay unallocated" {
    mksrc "$T/src.raw" 6M
    run "$MI" copy -O qcow2 "$T/src.raw" "$T/dst.qcow2"
    assert_success
    judge "$T/src.raw" "$T/dst.qcow2"
    run info_field "$T/dst.qcow2" format-specific data compat
    assert_output "1.1"
    run info_field "$T/dst.qcow2" cluster-size
    assert_output "65536"
    # [1M, 3M): zeros written in the source and a hole: no data in the target
    run map_data "$T/dst.qcow2" $((1 << 20)) $((2 << 20))
    assert_success
    assert_output ""
    run map_data "$T/dst.qcow2" 0 $((1 << 20))
    refute_output ""
}

@test "raw to qcow2: virtual size not a multiple of the cluster size" {
    mksrc "$T/src.raw" $((5 * 1024 * 1024 + 1536))
    run "$MI" copy -O qcow2 "$T/src.raw" "$T/dst.qcow2"
    assert_success
    judge "$T/src.raw" "$T/dst.qcow2"
    run info_field "$T/dst.qcow2" virtual-size
    assert_output "$((5 * 1024 * 1024 + 1536))"
}

@test "raw to qcow2: -o cluster_size=512" {
    mksrc "$T/src.raw" $((4 * 1024 * 1024 + 512))
    run "$MI" copy -O qcow2 -o cluster_size=512 "$T/src.raw" "$T/dst.qcow2"
    assert_success
    judge "$T/src.raw" "$T/dst.qcow2"
    run info_field "$T/dst.qcow2" cluster-size
    assert_output "512"
}

@test "raw to qcow2: -o cluster_size=4096, size not a multiple of it" {
    mksrc "$T/src.raw" $((4 * 1024 * 1024 + 3584))
    run "$MI" copy -O qcow2 -o cluster_size=4096 "$T/src.raw" "$T/dst.qcow2"
    assert_success
    judge "$T/src.raw" "$T/dst.qcow2"
    run info_field "$T/dst.qcow2" cluster-size
    assert_output "4096"
}

@test "raw to qcow2: -o cluster_size=2M, size not a multiple of it" {
    mksrc "$T/src.raw" $((9 * 1024 * 1024 + 512))
    run "$MI" copy -O qcow2 -o cluster_size=2M "$T/src.raw" "$T/dst.qcow2"
    assert_success
    judge "$T/src.raw" "$T/dst.qcow2"
    run info_field "$T/dst.qcow2" cluster-size
    assert_output "2097152"
}

@test "raw to qcow2: -o compat=0.10 writes a version 2 image, zeros unallocated" {
    mksrc "$T/src.raw" 6M
    run "$MI" copy -O qcow2 -o compat=0.10 "$T/src.raw" "$T/dst.qcow2"
    assert_success
    judge "$T/src.raw" "$T/dst.qcow2"
    run info_field "$T/dst.qcow2" format-specific data compat
    assert_output "0.10"
    run map_data "$T/dst.qcow2" $((1 << 20)) $((2 << 20))
    assert_output ""
}

@test "raw to qcow2: -c (zlib) stores compressible clusters compressed" {
    mksrc "$T/src.raw" $((6 * 1024 * 1024 + 512))
    run "$MI" copy -O qcow2 -c "$T/src.raw" "$T/dst.qcow2"
    assert_success
    judge "$T/src.raw" "$T/dst.qcow2"
    run info_field "$T/dst.qcow2" format-specific data compression-type
    assert_output "zlib"
    # the 0x5a megabyte is compressed (data without a host offset), the random one is not
    run qemu-img map --output=json "$T/dst.qcow2"
    assert_output --partial '{ "start": 3145728, "length": 1048576, "depth": 0, "present": true, "zero": false, "data": true}'
    assert_output --regexp '"start": 0, "length": [0-9]+, [^}]*"offset"'
    run qemu-img check "$T/dst.qcow2"
    assert_output --regexp '[1-9][0-9.]*% compressed clusters'
}

@test "raw to qcow2: -c -o compression_type=zstd" {
    mksrc "$T/src.raw" 6M
    run "$MI" copy -O qcow2 -c -o compression_type=zstd "$T/src.raw" "$T/dst.qcow2"
    assert_success
    judge "$T/src.raw" "$T/dst.qcow2"
    run info_field "$T/dst.qcow2" format-specific data compression-type
    assert_output "zstd"
    run qemu-img check "$T/dst.qcow2"
    assert_output --regexp '[1-9][0-9.]*% compressed clusters'
}

@test "raw to qcow2: -c with 512-byte and 2M clusters" {
    mksrc "$T/src.raw" $((5 * 1024 * 1024 + 512))
    run "$MI" copy -O qcow2 -c -o cluster_size=512 "$T/src.raw" "$T/a.qcow2"
    assert_success
    judge "$T/src.raw" "$T/a.qcow2"
    run "$MI" copy -O qcow2 -c -o cluster_size=2M,compression_type=zstd "$T/src.raw" "$T/b.qcow2"
    assert_success
    judge "$T/src.raw" "$T/b.qcow2"
}

@test "raw to qcow2: -c makes a compressible image small" {
    truncate -s 64M "$T/src.raw"
    qemu-io -f raw -c "write -P 0x61 0 64M" "$T/src.raw" >/dev/null
    run "$MI" copy -O qcow2 -c "$T/src.raw" "$T/dst.qcow2"
    assert_success
    judge "$T/src.raw" "$T/dst.qcow2"
    [ "$(stat -c %s "$T/dst.qcow2")" -lt $((2 * 1024 * 1024)) ]
}

# prealloc MODE: every cluster allocated, in guest order; falloc and full take the space.
prealloc() {
    mksrc "$T/src.raw" $((6 * 1024 * 1024 + 512))
    run "$MI" copy -O qcow2 -o preallocation="$1" "$T/src.raw" "$T/dst.qcow2"
    assert_success
    judge "$T/src.raw" "$T/dst.qcow2"
    run qemu-img map --output=json "$T/dst.qcow2"
    python3 -c '
import json, sys
m = json.loads(sys.argv[1])
assert all("offset" in e for e in m), "a cluster is not allocated"
assert all(b["offset"] - a["offset"] == b["start"] - a["start"] for a, b in zip(m, m[1:])), \
    "not in guest order"
assert sum(e["length"] for e in m) == 6 * 1024 * 1024 + 512' "$output"
}

@test "raw to qcow2: -o preallocation=metadata" {
    prealloc metadata
}

@test "raw to qcow2: -o preallocation=falloc" {
    prealloc falloc
    [ "$(alloc_bytes "$T/dst.qcow2")" -ge $((6 * 1024 * 1024)) ]
}

@test "raw to qcow2: -o preallocation=full" {
    prealloc full
    [ "$(alloc_bytes "$T/dst.qcow2")" -ge $((6 * 1024 * 1024)) ]
}

@test "raw to qcow2: compression and preallocation are refused, nothing left behind" {
    mksrc "$T/src.raw" 6M
    run "$MI" copy -O qcow2 -c -o preallocation=metadata "$T/src.raw" "$T/dst.qcow2"
    assert_failure
    assert_output --partial "dst.qcow2: compression and preallocation cannot be combined"
    [ ! -e "$T/dst.qcow2" ]
}

@test "qcow2 --sync=top: backing file recorded, zero clusters hide the backing data" {
    mksrc "$T/base.raw" 6M
    qemu-img create -q -f qcow2 -F raw -b base.raw "$T/top.qcow2"
    qemu-io -c "write -P 0x44 64k 64k" -c "write -z 0 64k" -c "write -z 3M 128k" \
        "$T/top.qcow2" >/dev/null
    run "$MI" copy --sync=top -O qcow2 "$T/top.qcow2" "$T/dst.qcow2"
    assert_success
    judge "$T/top.qcow2" "$T/dst.qcow2"
    run info_field "$T/dst.qcow2" backing-filename
    assert_output "base.raw"
    run info_field "$T/dst.qcow2" backing-filename-format
    assert_output "raw"
    run qemu-img map --output=json "$T/dst.qcow2"
    # zeroed in the top layer: a zero cluster of the target, over random backing data
    assert_output --partial '{ "start": 0, "length": 65536, "depth": 0, "present": true, "zero": true, "data": false}'
    assert_output --partial '{ "start": 3145728, "length": 131072, "depth": 0, "present": true, "zero": true, "data": false}'
    # untouched: read from the backing file
    assert_output --regexp '"start": 131072, [^}]*"depth": 1'
}

@test "--verify reads the qcow2 target back: compressed clusters, backing file" {
    mksrc "$T/base.raw" 6M
    run "$MI" copy --verify -c -O qcow2 "$T/base.raw" "$T/c.qcow2"
    assert_success
    judge "$T/base.raw" "$T/c.qcow2"
    qemu-img create -q -f qcow2 -F raw -b base.raw "$T/top.qcow2"
    qemu-io -c "write -P 0x44 64k 64k" -c "write -z 3M 128k" "$T/top.qcow2" >/dev/null
    run "$MI" copy --verify --sync=top "$T/top.qcow2" "$T/dst.qcow2"
    assert_success
    judge "$T/top.qcow2" "$T/dst.qcow2"
}


@test "copy -O qcow2 of a raw file whose size is not a multiple of 512: rounded up, tail zero" {
    head -c 1000003 /dev/urandom > "$T/odd.raw"
    run "$MI" copy -O qcow2 "$T/odd.raw" "$T/odd.qcow2"
    assert_success
    assert_output --partial "virtual size rounded up from 1000003 to 1000448 bytes"
    [ "$(qemu-img info --output=json "$T/odd.qcow2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')" -eq 1000448 ]
    qemu_same "$T/odd.raw" "$T/odd.qcow2"
    qcow2_ok "$T/odd.qcow2"
    run "$MI" compare "$T/odd.raw" "$T/odd.qcow2"
    assert_success
    # and back: the raw copy has the padded size, the same bytes and zeros after them
    run "$MI" copy -O raw "$T/odd.qcow2" "$T/back.raw"
    assert_success
    cmp -n 1000003 "$T/odd.raw" "$T/back.raw"
    qemu_same "$T/odd.raw" "$T/back.raw"
}

@test "qcow2 --sync=top into another directory: the backing name resolves from the target's directory" {
    mkdir -p "$T/a" "$T/b" "$T/c"
    qemu-img create -q -f qcow2 "$T/a/base.qcow2" 4M
    qemu-io -f qcow2 -c "write -P 0x11 0 2M" "$T/a/base.qcow2" >/dev/null
    (cd "$T/a" && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2)
    qemu-io -f qcow2 -c "write -P 0x22 1M 1M" "$T/a/top.qcow2" >/dev/null
    # run from $T: the source's relative backing name is relative to a/, not to the cwd
    cd "$T"
    run "$MI" copy --sync=top a/top.qcow2 b/st.qcow2
    assert_success
    run qemu-img info --output=json b/st.qcow2
    assert_success
    assert_output --partial "\"backing-filename\": \"$(realpath "$T/a/base.qcow2")\""
    run qemu-img compare a/top.qcow2 b/st.qcow2
    assert_success
    # beside the source's backing file, the relative name resolves: kept as it is
    cp a/base.qcow2 c/base.qcow2
    (cd c && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2)
    run "$MI" copy --sync=top c/top.qcow2 c/st.qcow2
    assert_success
    run qemu-img info --output=json c/st.qcow2
    assert_output --partial '"backing-filename": "base.qcow2"'
    run qemu-img compare c/top.qcow2 c/st.qcow2
    assert_success
}
