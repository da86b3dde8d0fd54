#!/usr/bin/env bats
# copy -n into an EXISTING qcow2 image: the guest content of the source is written into
# the target's own clusters, and the target keeps its layout (cluster size, compat,
# extended L2, compression type, virtual size, backing file name).
# Every result is judged by QEMU: `qemu-img compare` (same guest content, formats given
# explicitly) and `qemu-img check` (no error, no leak); the fixtures are checked with
# `qemu-img map` and `qemu-img info` before the copy, so a test never passes on a fixture
# that did not come out as meant.
load helpers

# The shared sources (made once in setup_file, only read by the tests).
S=$BATS_FILE_TMPDIR
MIB=$((1 << 20))

# mksrc_raw FILE: a 16 MiB raw source (offsets in MiB; "4k@x" is 4 KiB of random data at x):
#   [0,1) random | [1,2) zeros written | [2,4) hole, 4k@2+4k, 4k@2+12k, 4k@3+36k
#   | [4,6) hole, 4k@4+4k, zeros written [4+64k,4.5), 4k@5+20k, 0x5a [5.5,5.75)
#   | [6,7+4k) 0x5a | hole | [8,9+12k) zeros written, 4k@9+28k
#   | [10,12) hole, 4k@10+4k, zeros written [10.5,11), 4k@11+60k
#   | [12+4k,13+4k) random | hole | last 512 bytes random
# The 4 KiB pieces sit at odd 4 KiB offsets: inside a 1M or 2M target cluster, next to
# ranges that must read as zeros. The target fills below put stale data under [0,4) and
# [6,10), zero clusters under [4,6) and unallocated clusters under [10,12).
mksrc_raw() {
    local f=$1 b
    truncate -s 16M "$f"
    dd if=/dev/urandom of="$f" bs=1M count=1 conv=notrunc status=none
    dd if=/dev/zero of="$f" bs=1M seek=1 count=1 conv=notrunc status=none
    for b in 513 515 777 1025 1285 2311 2561 2831; do
        dd if=/dev/urandom of="$f" bs=4k seek=$b count=1 conv=notrunc status=none
    done
    dd if=/dev/zero of="$f" bs=64k seek=65 count=7 conv=notrunc status=none
    dd if=/dev/zero of="$f" bs=4k seek=2048 count=259 conv=notrunc status=none
    dd if=/dev/zero of="$f" bs=512k seek=21 count=1 conv=notrunc status=none
    dd if=/dev/urandom of="$f" bs=4k seek=3073 count=256 conv=notrunc status=none
    dd if=/dev/urandom of="$f" bs=512 seek=32767 count=1 conv=notrunc status=none
    qemu-io -f raw -c "write -P 0x5a 5632k 256k" -c "write -P 0x5a 6M 1028k" "$f" >/dev/null
}

setup_file() {
    command -v qemu-img >/dev/null && command -v qemu-io >/dev/null &&
        command -v python3 >/dev/null || return 0
    mksrc_raw "$S/src.raw"
    # qcow2, 4 KiB clusters: the written zeros of [1,2) as data clusters of zeros, zero
    # clusters over [8,9)
    qemu-img convert -f raw -O qcow2 -o cluster_size=4k "$S/src.raw" "$S/src.qcow2"
    qemu-io -f qcow2 -c "write -P 0 1M 1M" -c "write -z 8M 1M" "$S/src.qcow2" >/dev/null
    # zlib-compressed clusters (the 0x5a ranges compress, the random ones stay plain)
    qemu-img convert -f raw -O qcow2 -c "$S/src.raw" "$S/src-c.qcow2"
    qemu-img check "$S/src-c.qcow2" | grep -Eq '[1-9][0-9.]*% compressed clusters'
}

setup() {
    requires qemu-img qemu-io python3
    [ -s "$S/src-c.qcow2" ] || fail "setup_file did not make the sources"
}

# The three sources every matrix row copies: FORMAT:PATH.
SOURCES=(raw:src.raw qcow2:src.qcow2 qcow2:src-c.qcow2)

# layout IMG: what copy -n must keep of a qcow2 target: qemu-img info --output=json
# (virtual size, cluster size, compat, extended L2, compression type, refcount bits,
# lazy refcounts, backing file name and format) but for the file's allocated size.
layout() {
    qemu-img info --output=json -f qcow2 "$1" | grep -v '"actual-size"'
}

# vsize IMG: the virtual size.
vsize() {
    qemu-img info --output=json "$1" | sed -n 's/^ *"virtual-size": \([0-9]*\),*$/\1/p'
}

# same_layout ROW BEFORE IMG: the layout of IMG is still BEFORE.
same_layout() {
    local after
    after=$(layout "$3")
    [ "$after" = "$2" ] || fail "[$1] layout changed: $(diff <(echo "$2") <(echo "$after"))"
}

# runs IMG: qemu-img map of a flat image as merged runs KIND:START:LENGTH in KiB, KIND
# "data" (allocated data) or "zero" (reads as zeros: a zero cluster or unallocated).
runs() {
    qemu-img map --output=json -f qcow2 "$1" | awk '
match($0, /"start": [0-9]+/) {
    s = substr($0, RSTART + 9, RLENGTH - 9) + 0
    match($0, /"length": [0-9]+/)
    l = substr($0, RSTART + 10, RLENGTH - 10) + 0
    k = ($0 ~ /"data": true/) ? "data" : "zero"
    if (k == pk) { pl += l; next }
    if (pk != "") { printf "%s%s:%dK:%dK", sep, pk, ps / 1024, pl / 1024; sep = " " }
    pk = k; ps = s; pl = l
}
END { if (pk != "") printf "%s%s:%dK:%dK", sep, pk, ps / 1024, pl / 1024; print "" }'
}

# info_field IMG KEY...: a field of qemu-img info --output=json (keys go down the tree).
info_field() {
    local img=$1
    shift
    qemu-img info --output=json "$img" | python3 -c '
import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1:]:
    v = v.get(k) if isinstance(v, dict) else None
print(v)' "$@"
}

# incompat IMG: the incompatible feature bits of a v3 header (offset 72, big-endian u64).
incompat() {
    python3 -c '
import struct, sys
with open(sys.argv[1], "rb") as f:
    f.seek(72)
    print(struct.unpack(">Q", f.read(8))[0])' "$1"
}

# set_incompat IMG MASK: set bits in the incompatible features of a v3 header.
set_incompat() {
    python3 -c '
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(72)
    v = struct.unpack(">Q", f.read(8))[0] | int(sys.argv[2], 0)
    f.seek(72)
    f.write(struct.pack(">Q", v))' "$1" "$2"
}

# mktgt TGT FILL [CREATE-OPTIONS [SIZE]]: a qcow2 target made by qemu-img (default
# options, 16M), then filled, and the fill checked with qemu-img map:
#   fresh: nothing written | stale: 0xee over [0,16M)
#   mixed: stale, then zero clusters ('write -z') over [4M,6M) and [10M,12M) discarded
# (ranges aligned to 2M, so they are whole clusters at every cluster size). A target
# larger than 16M keeps its tail unallocated.
mktgt() {
    local tgt=$1 fill=$2 opts=${3:-} size=${4:-16M} want got
    rm -f "$tgt"
    qemu-img create -q -f qcow2 ${opts:+-o "$opts"} "$tgt" "$size"
    case $fill in
    fresh) return 0 ;;
    stale)
        qemu-io -f qcow2 -c "write -P 0xee 0 16M" "$tgt" >/dev/null
        want="data:0K:16384K"
        ;;
    mixed)
        qemu-io -f qcow2 -c "write -P 0xee 0 16M" -c "write -z 4M 2M" -c "discard 10M 2M" \
            "$tgt" >/dev/null
        want="data:0K:4096K zero:4096K:2048K data:6144K:4096K zero:10240K:2048K data:12288K:4096K"
        ;;
    esac
    local vs
    vs=$(vsize "$tgt")
    if [ "$vs" -gt $((16 * MIB)) ]; then
        want+=" zero:16384K:$(((vs >> 10) - 16384))K"
    fi
    got=$(runs "$tgt")
    [ "$got" = "$want" ] || fail "fixture $tgt ($fill, ${opts:-defaults}): map is '$got', meant '$want'"
    # the stale bytes are there, under the source's written zeros and its hole
    qemu-io -f qcow2 -r -c "read -P 0xee 1M 3M" "$tgt" >/dev/null ||
        fail "fixture $tgt: no stale 0xee at [1M,4M)"
}

# judge ROW SRC SRCFMT TGT: QEMU reads TGT (with its chain) as SRC, and qemu-img check
# finds neither an error nor a leak in TGT.
judge() {
    local row=$1 src=$2 sfmt=$3 tgt=$4 out st=0
    out=$(qemu-img compare -f "$sfmt" -F qcow2 "$src" "$tgt" 2>&1) ||
        fail "[$row] qemu-img compare $src $tgt: $out"
    out=$(qemu-img check -f qcow2 "$tgt" 2>&1) || st=$?
    [ "$st" -eq 0 ] || fail "[$row] qemu-img check exited $st: $out"
    [[ $out == *"No errors were found"* ]] || fail "[$row] qemu-img check: $out"
    [[ $out != *leaked* ]] || fail "[$row] qemu-img check finds leaks: $out"
}

# differs ROW SRC SRCFMT TGT: before the copy the target must not already read as the
# source (else the row would prove nothing).
differs() {
    local st=0
    qemu-img compare -q -f "$3" -F qcow2 "$2" "$4" >/dev/null 2>&1 || st=$?
    [ "$st" -eq 1 ] || fail "[$1] fixture: qemu-img compare before the copy exited $st, not 1"
}

# copy_ok ROW ARGS...: mirror-img copy ARGS exits 0.
copy_ok() {
    local row=$1
    shift
    run "$MI" copy "$@"
    [ "$status" -eq 0 ] || fail "[$row] mirror-img copy $* exited $status: $output"
}

# into_existing FILL CREATE-OPTIONS [SIZE]: the matrix row. For each source: make the
# target, copy -n -O qcow2 into it, judge, and check the layout is kept.
into_existing() {
    local fill=$1 opts=$2 size=${3:-16M} s sfmt src row before after
    for s in "${SOURCES[@]}"; do
        sfmt=${s%%:*} src=$S/${s#*:}
        row="${s#*:} -> ${opts:-defaults} $size $fill"
        mktgt "$T/tgt.qcow2" "$fill" "$opts" "$size"
        differs "$row" "$src" "$sfmt" "$T/tgt.qcow2"
        before=$(layout "$T/tgt.qcow2")
        copy_ok "$row" -n -O qcow2 "$src" "$T/tgt.qcow2"
        judge "$row" "$src" "$sfmt" "$T/tgt.qcow2"
        same_layout "$row" "$before" "$T/tgt.qcow2"
    done
}

# refused KEYWORD TGT COPY-ARGS...: the copy fails with status 1 or 2 before writing:
# the target's bytes are unchanged, the message starts with "mirror-img: ", names the
# target file and says KEYWORD (case-insensitive).
refused() {
    local kw=$1 tgt=$2 before
    shift 2
    before=$(sha256sum <"$tgt")
    run "$MI" copy "$@"
    [ "$status" -eq 1 ] || [ "$status" -eq 2 ] ||
        fail "copy $* exited $status, not 1 or 2: $output"
    [[ $output == "mirror-img: "* ]] || fail "the message does not start with 'mirror-img: ': $output"
    [[ $output == *"$(basename "$tgt")"* ]] || fail "the message does not name $(basename "$tgt"): $output"
    grep -qi -- "$kw" <<<"$output" || fail "the message does not say '$kw': $output"
    [ "$(sha256sum <"$tgt")" = "$before" ] || fail "the refused copy changed $tgt"
}

# ---------------------------------------------------------------- 1. the matrix
# Each test: the raw, qcow2 and compressed qcow2 sources in turn into a target of one
# kind; stale data under the source's zeros and holes must go, source data must land in
# stale, zero and unallocated target clusters, and the target keeps its layout.

# 512-byte clusters: every 4 KiB source piece spans 8 target clusters.
@test "copy -n into existing qcow2: cluster_size=512, stale data everywhere" {
    into_existing stale cluster_size=512
}

@test "copy -n into existing qcow2: cluster_size=4k, stale data everywhere" {
    into_existing stale cluster_size=4k
}

# default 64 KiB clusters, v3, over stale data, zero clusters and unallocated clusters
@test "copy -n into existing qcow2: cluster_size=64k, mixed stale/zero/unallocated" {
    into_existing mixed ""
}

# 1 MiB and 2 MiB clusters: the odd 4 KiB pieces are partial-cluster writes next to
# ranges that must read as zeros, where the cluster held stale data or was a zero cluster.
@test "copy -n into existing qcow2: cluster_size=1M, mixed" {
    into_existing mixed cluster_size=1M
}

@test "copy -n into existing qcow2: cluster_size=2M, stale" {
    into_existing stale cluster_size=2M
}

@test "copy -n into existing qcow2: cluster_size=2M, mixed" {
    into_existing mixed cluster_size=2M
}

# version 2 images have no zero clusters: zeros over stale data must still read as zeros.
@test "copy -n into existing qcow2: compat=0.10 (v2), stale" {
    into_existing stale compat=0.10
}

@test "copy -n into existing qcow2: compat=0.10 (v2), mixed, 2M clusters" {
    into_existing mixed compat=0.10,cluster_size=2M
}

@test "copy -n into existing qcow2: compat=1.1 explicit, 4k clusters, mixed" {
    into_existing mixed compat=1.1,cluster_size=4k
}

# extended L2: subclusters of 2 KiB (64k) and 32 KiB (1M); zero and unallocated
# subclusters next to the odd 4 KiB pieces.
@test "copy -n into existing qcow2: extended_l2=on, 64k clusters, mixed" {
    into_existing mixed extended_l2=on,cluster_size=64k
}

@test "copy -n into existing qcow2: extended_l2=on, 1M clusters, mixed" {
    into_existing mixed extended_l2=on,cluster_size=1M
}

# preallocated targets: every cluster has a host offset before the fill.
@test "copy -n into existing qcow2: preallocation=metadata, stale and mixed" {
    into_existing stale preallocation=metadata
    into_existing mixed preallocation=metadata,cluster_size=1M
}

@test "copy -n into existing qcow2: preallocation=falloc, mixed, 1M clusters" {
    into_existing mixed preallocation=falloc,cluster_size=1M
}

# the compression type of the target is kept (zstd target, zlib-compressed source)
@test "copy -n into existing qcow2: compression_type=zstd target keeps it" {
    into_existing stale compression_type=zstd
}

# a target larger than the source keeps its virtual size; its unallocated tail reads zero
@test "copy -n into existing qcow2: 24M target for a 16M source keeps its size" {
    into_existing mixed cluster_size=1M 24M
}

# ---------------------------------------------------------------- 2. backing files

# mkbase: $T/base.qcow2, 16M, 0xbb in [0,12M), unallocated after.
mkbase() {
    qemu-img create -q -f qcow2 "$T/base.qcow2" 16M
    qemu-io -f qcow2 -c "write -P 0xbb 0 12M" "$T/base.qcow2" >/dev/null
}

# --sync=full into a target with a backing file: everything the source reads (its zeros
# and holes included) is written into the target's top layer, so no 0xbb of the backing
# shows through; the backing file name stays. v2 (no zero clusters) and v3, 64k and 1M.
@test "copy -n --sync=full into an overlay: the backing does not show through" {
    mkbase
    local opts row before after
    for opts in compat=1.1 compat=0.10 cluster_size=1M; do
        row="src.raw -> overlay $opts"
        rm -f "$T/tgt.qcow2"
        qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 -o "$opts" "$T/tgt.qcow2"
        qemu-io -f qcow2 -c "write -P 0xee 0 2M" -c "write -P 0xee 8M 1M" "$T/tgt.qcow2" >/dev/null
        qemu-io -f qcow2 -r -c "read -P 0xbb 2M 6M" "$T/tgt.qcow2" >/dev/null ||
            fail "[$row] fixture: the backing does not show at [2M,8M)"
        differs "$row" "$S/src.raw" raw "$T/tgt.qcow2"
        before=$(layout "$T/tgt.qcow2")
        copy_ok "$row" -n -O qcow2 "$S/src.raw" "$T/tgt.qcow2"
        judge "$row" "$S/src.raw" raw "$T/tgt.qcow2"
        same_layout "$row" "$before" "$T/tgt.qcow2"
        [ "$(info_field "$T/tgt.qcow2" backing-filename)" = base.qcow2 ] ||
            fail "[$row] backing file name changed"
    done
}

# --sync=top: top.qcow2 over base.qcow2 has data, zero writes (over 0xbb) and unallocated
# ranges; the target, another overlay over the same base, holds stale data where top has
# data and where top is unallocated (which must then read the backing again) and where
# neither top nor base has anything. Afterwards both chains read the same.
@test "copy -n --sync=top into an overlay of the same base" {
    mkbase
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$T/top.qcow2"
    qemu-io -f qcow2 -c "write -P 0x77 1M 1M" -c "write -P 0x78 5124k 4k" \
        -c "write -z 8M 1M" -c "write -z 3M 64k" -c "write -P 0x79 13M 64k" \
        "$T/top.qcow2" >/dev/null
    local opts row before after
    for opts in cluster_size=64k cluster_size=1M extended_l2=on,cluster_size=1M; do
        row="top.qcow2 -> overlay $opts"
        rm -f "$T/tgt.qcow2"
        qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 -o "$opts" "$T/tgt.qcow2"
        qemu-io -f qcow2 -c "write -P 0xee 1536k 1M" -c "write -P 0xee 6M 1M" \
            -c "write -P 0xee 8196k 4k" -c "write -P 0xee 14M 64k" "$T/tgt.qcow2" >/dev/null
        qemu-io -f qcow2 -r -c "read -P 0xee 6M 1M" -c "read -P 0xee 14M 64k" "$T/tgt.qcow2" \
            >/dev/null || fail "[$row] fixture: no stale data where top is unallocated"
        run qemu-img compare -f qcow2 -F qcow2 "$T/top.qcow2" "$T/tgt.qcow2"
        [ "$status" -eq 1 ] || fail "[$row] fixture: compare before the copy exited $status"
        before=$(layout "$T/tgt.qcow2")
        copy_ok "$row" -n --sync=top -O qcow2 "$T/top.qcow2" "$T/tgt.qcow2"
        judge "$row" "$T/top.qcow2" qcow2 "$T/tgt.qcow2"
        same_layout "$row" "$before" "$T/tgt.qcow2"
        [ "$(info_field "$T/tgt.qcow2" backing-filename)" = base.qcow2 ] ||
            fail "[$row] backing file name changed"
    done
}

# --sync=top needs the target's backing file to stand for the source's: an existing
# qcow2 without one is refused before writing; the same target takes --sync=full.
@test "copy -n --sync=top into an existing qcow2 without a backing file is refused" {
    mkbase
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$T/top.qcow2"
    qemu-io -f qcow2 -c "write -P 0x77 1M 1M" "$T/top.qcow2" >/dev/null
    mktgt "$T/tgt.qcow2" stale
    before=$(sha256sum <"$T/tgt.qcow2")
    run "$MI" copy -n --sync=top -O qcow2 "$T/top.qcow2" "$T/tgt.qcow2"
    [ "$status" -eq 1 ] || [ "$status" -eq 2 ] || fail "exited $status, not 1 or 2: $output"
    [[ $output == "mirror-img: "* ]] || fail "the message does not start with 'mirror-img: ': $output"
    assert_output --partial tgt.qcow2
    [ "$(sha256sum <"$T/tgt.qcow2")" = "$before" ] || fail "the refused copy changed the target"
    # the refusal is about --sync=top: the full chain goes into the same target
    copy_ok "sync=full" -n -O qcow2 "$T/top.qcow2" "$T/tgt.qcow2"
    judge "sync=full" "$T/top.qcow2" qcow2 "$T/tgt.qcow2"
}

# ---------------------------------------------------------------- 3. refusals
# Each before writing: status 1 or 2, "mirror-img: " naming the target and the reason,
# the target's bytes unchanged.

@test "copy -n refuses a qcow2 target with a smaller virtual size" {
    qemu-img create -q -f qcow2 "$T/tgt.qcow2" 8M
    qemu-io -f qcow2 -c "write -P 0xee 0 8M" "$T/tgt.qcow2" >/dev/null
    refused smaller "$T/tgt.qcow2" -n -O qcow2 "$S/src.raw" "$T/tgt.qcow2"
}

# the corrupt bit (incompatible feature bit 1) set by QEMU on an inconsistency
@test "copy -n refuses a qcow2 target marked corrupt" {
    mktgt "$T/tgt.qcow2" stale
    set_incompat "$T/tgt.qcow2" 0x2
    [ "$(info_field "$T/tgt.qcow2" format-specific data corrupt)" = True ] ||
        fail "fixture: qemu-img info does not see the corrupt bit"
    refused corrupt "$T/tgt.qcow2" -n -O qcow2 "$S/src.raw" "$T/tgt.qcow2"
}

@test "copy -n refuses a qcow2 target with an unknown incompatible feature bit" {
    mktgt "$T/tgt.qcow2" stale
    set_incompat "$T/tgt.qcow2" 0x80
    [ "$(incompat "$T/tgt.qcow2")" -eq 128 ] || fail "fixture: incompatible bits $(incompat "$T/tgt.qcow2")"
    run qemu-img info "$T/tgt.qcow2"
    assert_failure
    refused incompatible "$T/tgt.qcow2" -n -O qcow2 "$S/src.raw" "$T/tgt.qcow2"
}

@test "copy -n refuses a qcow2 target with an internal snapshot" {
    mktgt "$T/tgt.qcow2" stale
    qemu-img snapshot -c snap1 "$T/tgt.qcow2"
    run qemu-img snapshot -l "$T/tgt.qcow2"
    assert_output --partial snap1
    refused snapshot "$T/tgt.qcow2" -n -O qcow2 "$S/src.raw" "$T/tgt.qcow2"
}

@test "copy -n refuses a qcow2 target with a persistent dirty bitmap" {
    mktgt "$T/tgt.qcow2" stale
    qemu-img bitmap --add "$T/tgt.qcow2" b0
    run qemu-img info "$T/tgt.qcow2"
    assert_output --regexp 'name: b0'
    refused bitmap "$T/tgt.qcow2" -n -O qcow2 "$S/src.raw" "$T/tgt.qcow2"
}

# LUKS: made by qemu-img where its key derivation benchmark works; where it fails
# ("Unable to get accurate CPU usage", as in some sandboxes) the encryption method of a
# plain image is set to LUKS (2) in the header, as bad-input.bats does.
@test "copy -n refuses a LUKS-encrypted qcow2 target" {
    if qemu-img create -q -f qcow2 --object secret,id=s0,data=pw \
        -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10 \
        "$T/tgt.qcow2" 16M 2>/dev/null; then
        run qemu-img info "$T/tgt.qcow2"
        assert_output --partial "encrypted: yes"
    else
        # (qemu-img 7.2 crashes in info on such an image: check the header field itself)
        mktgt "$T/tgt.qcow2" stale
        python3 -c '
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(32)
    f.write(struct.pack(">I", 2))
    f.seek(32)
    assert struct.unpack(">I", f.read(4))[0] == 2' "$T/tgt.qcow2"
    fi
    refused encrypt "$T/tgt.qcow2" -n -O qcow2 "$S/src.raw" "$T/tgt.qcow2"
}

# legacy AES encryption (qemu-img still makes it): also refused as a target
@test "copy -n refuses an AES-encrypted qcow2 target" {
    qemu-img create -q -f qcow2 --object secret,id=s0,data=pw \
        -o encrypt.format=aes,encrypt.key-secret=s0 "$T/tgt.qcow2" 16M
    run qemu-img info "$T/tgt.qcow2"
    assert_output --partial "encrypted: yes"
    refused encrypt "$T/tgt.qcow2" -n -O qcow2 "$S/src.raw" "$T/tgt.qcow2"
}

# an external data file: neither the qcow2 file nor the data file is written
@test "copy -n refuses a qcow2 target with an external data file" {
    qemu-img create -q -f qcow2 -o data_file="$T/d.raw" "$T/tgt.qcow2" 16M
    qemu-io -f qcow2 -c "write -P 0xee 0 4M" "$T/tgt.qcow2" >/dev/null
    [ "$(info_field "$T/tgt.qcow2" format-specific data data-file)" = "$T/d.raw" ] ||
        fail "fixture: no data file"
    local d
    d=$(sha256sum <"$T/d.raw")
    refused "data file" "$T/tgt.qcow2" -n -O qcow2 "$S/src.raw" "$T/tgt.qcow2"
    [ "$(sha256sum <"$T/d.raw")" = "$d" ] || fail "the refused copy changed the data file"
}

# Without -O the target format is the source's: a raw source would be written as raw
# bytes over the qcow2 file. That is refused (naming -O), for a sparse target and for a
# preallocated one whose file is larger than the source (which a raw -n would accept).
@test "copy -n of a raw source into a qcow2 target without -O is refused" {
    mktgt "$T/tgt.qcow2" stale
    refused "-O" "$T/tgt.qcow2" -n "$S/src.raw" "$T/tgt.qcow2"
    mktgt "$T/tgt.qcow2" stale preallocation=falloc
    [ "$(stat -c %s "$T/tgt.qcow2")" -gt $((16 * MIB)) ] || fail "fixture: falloc file too small"
    refused "-O" "$T/tgt.qcow2" -n "$S/src.raw" "$T/tgt.qcow2"
    run qemu-img check "$T/tgt.qcow2"
    assert_success
}

# ... and a qcow2 source without -O goes into the qcow2 target as qcow2.
@test "copy -n of a qcow2 source into a qcow2 target without -O writes it as qcow2" {
    local s
    for s in src.qcow2 src-c.qcow2; do
        mktgt "$T/tgt.qcow2" mixed cluster_size=1M
        before=$(layout "$T/tgt.qcow2")
        copy_ok "$s no -O" -n "$S/$s" "$T/tgt.qcow2"
        judge "$s no -O" "$S/$s" qcow2 "$T/tgt.qcow2"
        same_layout "$s no -O" "$before" "$T/tgt.qcow2"
    done
}

# ---------------------------------------------------------------- 4. a dirty target
# lazy_refcounts=on and a writer that aborted: the dirty bit is set and the refcounts
# are stale (qemu-img check sees errors). copy -n repairs or rebuilds them: the result
# reads as the source, checks clean and is no longer dirty.
@test "copy -n into a dirty lazy-refcounts qcow2 left by a crashed writer" {
    qemu-img create -q -f qcow2 -o lazy_refcounts=on "$T/tgt.qcow2" 16M
    (ulimit -c 0; qemu-io -f qcow2 -c "write -P 0xee 0 1M" -c "write -P 0xee 6M 2M" \
        -c abort "$T/tgt.qcow2" >/dev/null 2>&1) >/dev/null 2>&1 || true
    [ "$(info_field "$T/tgt.qcow2" dirty-flag)" = True ] || fail "fixture: not dirty"
    [ $(( $(incompat "$T/tgt.qcow2") & 1 )) -eq 1 ] || fail "fixture: dirty bit 0 not set"
    run qemu-img check "$T/tgt.qcow2"
    [ "$status" -ne 0 ] || fail "fixture: qemu-img check sees nothing wrong: $output"
    copy_ok dirty -n -O qcow2 "$S/src.raw" "$T/tgt.qcow2"
    [ "$(info_field "$T/tgt.qcow2" dirty-flag)" = False ] || fail "still dirty after the copy"
    [ $(( $(incompat "$T/tgt.qcow2") & 1 )) -eq 0 ] || fail "dirty bit 0 still set"
    judge dirty "$S/src.raw" raw "$T/tgt.qcow2"
    [ "$(info_field "$T/tgt.qcow2" format-specific data lazy-refcounts)" = True ] ||
        fail "lazy_refcounts not kept"
}

# ---------------------------------------------------------------- 5. an interrupted run
# kill -9 in the middle of a rate-limited copy: the image may leak clusters but holds no
# error; a second, unlimited run makes it identical and clean.
@test "copy -n into existing qcow2 killed with SIGKILL, then run again" {
    rand_file "$T/big.raw" 32
    mktgt "$T/tgt.qcow2" mixed "" 32M
    cp "$T/tgt.qcow2" "$T/fixture.qcow2"
    "$MI" copy -n -O qcow2 --speed=4M -j 2 "$T/big.raw" "$T/tgt.qcow2" \
        >"$T/bg.out" 2>&1 3>&- &
    local pid=$!
    on_exit "kill -9 $pid"
    sleep 1.2
    kill -0 "$pid" 2>/dev/null || { wait "$pid" || true; fail "the limited copy ended before 1.2 s: $(cat "$T/bg.out")"; }
    kill -9 "$pid"
    wait "$pid" 2>/dev/null || true
    run qemu-img check "$T/tgt.qcow2"
    [ "$status" -eq 0 ] || [ "$status" -eq 3 ] || fail "qemu-img check after SIGKILL exited $status: $output"
    refute_output --partial ERROR
    # it had started writing: the target no longer reads as the fixture
    run qemu-img compare -q -f qcow2 -F qcow2 "$T/fixture.qcow2" "$T/tgt.qcow2"
    [ "$status" -eq 1 ] || fail "nothing was written in 1.2 s (compare exited $status)"
    copy_ok rerun -n -O qcow2 "$T/big.raw" "$T/tgt.qcow2"
    judge rerun "$T/big.raw" raw "$T/tgt.qcow2"
}

# ---------------------------------------------------------------- 6. --target-is-zero
# a freshly created target (all unallocated) reads as zeros: zero ranges may be skipped,
# the data must all land. v3 64k, v3 2M, v2.
@test "copy -n --target-is-zero into a fresh qcow2" {
    local opts s sfmt src row
    for opts in "" cluster_size=2M compat=0.10; do
        for s in "${SOURCES[@]}"; do
            sfmt=${s%%:*} src=$S/${s#*:}
            row="${s#*:} -> fresh ${opts:-defaults} --target-is-zero"
            mktgt "$T/tgt.qcow2" fresh "$opts"
            copy_ok "$row" -n --target-is-zero -O qcow2 "$src" "$T/tgt.qcow2"
            judge "$row" "$src" "$sfmt" "$T/tgt.qcow2"
        done
    done
}

# ---------------------------------------------------------------- 7. a source chain
# --sync=full (default) reads top.qcow2 through base.qcow2 (zero writes in top over 0xbb
# must read zero) into a flat target full of stale data; the target stays flat.
@test "copy -n --sync=full of a source chain into an existing flat qcow2" {
    mkbase
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$T/top.qcow2"
    qemu-io -f qcow2 -c "write -P 0x77 1M 1M" -c "write -P 0x78 5124k 4k" \
        -c "write -z 8M 1M" -c "write -z 3M 64k" -c "write -P 0x79 13M 64k" \
        "$T/top.qcow2" >/dev/null
    local opts row before
    for opts in stale:cluster_size=64k stale:cluster_size=2M mixed:compat=0.10,cluster_size=1M; do
        row="top.qcow2+base -> ${opts#*:} ${opts%%:*}"
        mktgt "$T/tgt.qcow2" "${opts%%:*}" "${opts#*:}"
        differs "$row" "$T/top.qcow2" qcow2 "$T/tgt.qcow2"
        before=$(layout "$T/tgt.qcow2")
        copy_ok "$row" -n --sync=full -O qcow2 "$T/top.qcow2" "$T/tgt.qcow2"
        judge "$row" "$T/top.qcow2" qcow2 "$T/tgt.qcow2"
        same_layout "$row" "$before" "$T/tgt.qcow2"
        [ "$(info_field "$T/tgt.qcow2" backing-filename)" = None ] || fail "[$row] got a backing file"
    done
}

# ---- a target write that fails once (tests/faults/shortio.c's SHORTIO_EIO_AT), retried
# under --on-target-error=ignore's next pass: nothing the failed write was to change may
# read differently, and the cluster it took must not leak.

SHORTIO=${SHORTIO:-$TOP/build/tests/shortio.so}

eio_copy() {
    [ -f "$SHORTIO" ] || fail "$SHORTIO is missing: run make"
    local at=$1
    shift
    SHORTIO_EIO_AT=$at LD_PRELOAD=$SHORTIO \
        ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 \
        run "$MI" copy --json -n -O qcow2 -g 4K --buf-size=4K -j1 --on-target-error=ignore "$@"
    # the write did fail (else the test proves nothing)
    assert_output --partial '"BLOCK_JOB_ERROR"'
}

same_and_clean() { # same_and_clean SRC DST [compare options]
    run qemu-img compare "${@:3}" "$1" "$2"
    assert_success
    run qemu-img check "$2"
    assert_success
    refute_output --partial leaked
}

# A preallocated zero cluster (stale bytes under it): its entry must not say data before
# the data is there.
@test "a failed write into a preallocated zero cluster leaves it zero (retried: identical, no leak)" {
    qemu-img create -q -f qcow2 "$T/t.qcow2" 1M
    qemu-io -f qcow2 -c 'write -P 0xee 0 64k' -c 'write -z 0 64k' "$T/t.qcow2" > /dev/null
    host=$(qemu-img map --output=json "$T/t.qcow2" | python3 -c 'import json,sys; print([e["offset"] for e in json.load(sys.stdin) if e.get("offset") is not None][0])')
    truncate -s 1M "$T/s.raw"
    qemu-io -f raw -c 'write -P 1 4k 4k' "$T/s.raw" > /dev/null
    eio_copy "$host" "$T/s.raw" "$T/t.qcow2"
    assert_success
    same_and_clean "$T/s.raw" "$T/t.qcow2" -f raw
}

# Extended L2 under --sync=top: a subcluster's bitmap must not say allocated before its data
# is written, or the backing stops showing through next to it.
@test "a failed subcluster write (extended L2, --sync=top) keeps the backing file showing through" {
    qemu-img create -q -f qcow2 "$T/base.qcow2" 4M
    qemu-io -f qcow2 -c 'write -P 0xbb 0 4M' "$T/base.qcow2" > /dev/null
    qemu-img create -q -f qcow2 -o cluster_size=2M,extended_l2=on -b "$T/base.qcow2" -F qcow2 "$T/t.qcow2" 4M
    qemu-img create -q -f qcow2 -o cluster_size=4096 -b "$T/base.qcow2" -F qcow2 "$T/s.qcow2" 4M
    qemu-io -f qcow2 -c 'write -z 4k 4k' -c 'write -P 1 1M 4k' "$T/s.qcow2" > /dev/null
    # new clusters go at the end of the file: the L2 table first, then the data
    end=$(stat -c %s "$T/t.qcow2")
    eio_copy $(( (end + 2097151) / 2097152 * 2097152 + 2097152 )) --sync=top "$T/s.qcow2" "$T/t.qcow2"
    assert_success
    same_and_clean "$T/s.qcow2" "$T/t.qcow2"
}

@test "a failed write into a new cluster leaks nothing" {
    qemu-img create -q -f qcow2 "$T/t.qcow2" 1M
    truncate -s 1M "$T/s.raw"
    qemu-io -f raw -c 'write -P 1 0 64k' "$T/s.raw" > /dev/null
    # new clusters go at the end of the file: the L2 table first, then the data
    end=$(stat -c %s "$T/t.qcow2")
    eio_copy $(( (end + 65535) / 65536 * 65536 + 65536 )) "$T/s.raw" "$T/t.qcow2"
    assert_success
    same_and_clean "$T/s.raw" "$T/t.qcow2" -f raw
}

# QEMU opens no image whose refcount table is over 8 MiB: 512-byte clusters with 64-bit
# refcounts reach it near 32 GiB of file.
@test "the refcount table never grows past QEMU's 8 MiB" {
    qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 "$T/t.qcow2" 1M
    truncate -s 30G "$T/t.qcow2"
    truncate -s 1M "$T/s.raw"
    qemu-io -f raw -c 'write -P 5 0 1M' "$T/s.raw" > /dev/null
    run "$MI" copy -n -O qcow2 "$T/s.raw" "$T/t.qcow2"
    if [ "$status" -eq 0 ]; then
        same_and_clean "$T/s.raw" "$T/t.qcow2" -f raw
    else
        assert_output --partial "refcount table would outgrow"
        run qemu-img check "$T/t.qcow2"
        assert_success
    fi
    rt=$(python3 -c 'import struct,sys; f=open(sys.argv[1],"rb"); f.seek(56); print(struct.unpack(">I", f.read(4))[0])' "$T/t.qcow2")
    [ $((rt * 512)) -le $((8 << 20)) ] || fail "the refcount table has $rt clusters"
}

@test "-c and -o with -n are refused: they shape a new image" {
    qemu-img create -q -f qcow2 "$T/t.qcow2" 16M
    for opt in -c "-o cluster_size=4096"; do
        # shellcheck disable=SC2086
        run "$MI" copy -n -O qcow2 $opt "$S/src.raw" "$T/t.qcow2"
        assert_failure 2
        assert_output --partial "-n writes into the existing one as it is"
    done
}
