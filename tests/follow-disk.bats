#!/usr/bin/env bats
# follow in disk mode: a qcow2 source whose target cannot be a byte-identical copy of the
# file (-O raw, an NBD export, a backing chain) is mirrored as the DISK a guest sees, the
# backing chain flattened.  The writers are qemu-io under `mirror-img run`; QEMU is the
# oracle: once the writer has finished and complete returned 0, `qemu-img compare` of the
# source image (chain and all) against the raw target or the NBD export must find them
# identical.
load helpers

MiB=$((1024 * 1024))
GiB=$((1024 * MiB))
K=1024

setup() {
    requires qemu-img qemu-io
    J=$T/j
    SRC=$T/top.qcow2
    DST=$T/dst.raw
}

# vsize IMG: the virtual size of a qcow2 image.
vsize() {
    qemu-img info --output=json "$1" | sed -n 's/^ *"virtual-size": \([0-9]*\).*/\1/p' | head -1
}

# qio_plain IMG QEMU-IO-ARGS...: qemu-io on IMG without the shim (setting images up).
qio_plain() {
    local img=$1
    shift
    qemu-io -f qcow2 "$@" "$img" > "$T/qio.out" 2>&1 && ! grep -qi "failed\|error" "$T/qio.out" ||
        { cat "$T/qio.out"; fail "qemu-io on $img failed"; }
}

# qio QEMU-IO-ARGS...: the writer: qemu-io on $SRC under the shim (its output in
# $T/qio.out: this qemu-io has no -q).
qio() {
    under qemu-io -f qcow2 "$@" "$SRC" > "$T/qio.out" 2>&1 && ! grep -qi "failed\|error" "$T/qio.out" ||
        { cat "$T/qio.out"; fail "the qemu-io writer failed"; }
}

# chain: base.qcow2 (64K clusters, a 2 GiB disk: four L2 tables) with data in two L2
# tables' ranges, top.qcow2 over it with data of its own; SRC is the top.
#   base: [0, 4M) 0x11, [100M, 101M) 0x12, [1G, 1G+8M) 0x13
#   top:  [2M, 3M) 0x21, [1G+2M, 1G+2M+64K) 0x22
chain() {
    qemu-img create -q -f qcow2 -o cluster_size=64k "$T/base.qcow2" 2G
    qio_plain "$T/base.qcow2" -c 'write -P 0x11 0 4M' -c 'write -P 0x12 100M 1M' \
        -c "write -P 0x13 1G 8M"
    qemu-img create -q -f qcow2 -o cluster_size=64k -b "$T/base.qcow2" -F qcow2 "$SRC"
    qio_plain "$SRC" -c 'write -P 0x21 2M 1M' -c "write -P 0x22 $((GiB + 2 * MiB)) 64k"
}

# small_chain: the same on a 64 MiB disk.
#   base: [0, 4M) 0x11, [20M, 21M) 0x12;  top: [2M, 3M) 0x21
small_chain() {
    qemu-img create -q -f qcow2 "$T/base.qcow2" 64M
    qio_plain "$T/base.qcow2" -c 'write -P 0x11 0 4M' -c 'write -P 0x12 20M 1M'
    qemu-img create -q -f qcow2 -b "$T/base.qcow2" -F qcow2 "$SRC"
    qio_plain "$SRC" -c 'write -P 0x21 2M 1M'
}

# spawn_follow [OPTS...]: follow $SRC into $DST in the background (pid in FOLLOW, JSON
# events in $T/events, stderr in $T/follow.err; killed at the end of the test).
spawn_follow() {
    rm -f "$J.sock"
    "$MI" follow --json --journal "$J" "$@" "$SRC" "$DST" > "$T/events" 2> "$T/follow.err" 3>&- &
    FOLLOW=$!
    on_exit "kill -9 $FOLLOW"
}

# wait_ready: until BLOCK_JOB_READY (follow's stderr shown when it never comes).
wait_ready() {
    local i
    for i in $(seq 300); do
        grep -q BLOCK_JOB_READY "$T/events" && return 0
        kill -0 "$FOLLOW" 2>/dev/null || break
        sleep 0.1
    done
    echo "follow's stderr:"; cat "$T/follow.err"
    fail "follow never got ready"
}

# ready_or_exit: wait until follow is READY (0) or has exited (1, its status in FOLLOW_RC).
ready_or_exit() {
    local i
    for i in $(seq 300); do
        grep -q BLOCK_JOB_READY "$T/events" && return 0
        if ! kill -0 "$FOLLOW" 2>/dev/null; then
            FOLLOW_RC=0
            wait "$FOLLOW" || FOLLOW_RC=$?
            return 1
        fi
        sleep 0.1
    done
    fail "follow neither got ready nor exited: $(cat "$T/follow.err")"
}

# start_follow [OPTS...]: spawn_follow and wait_ready.
start_follow() {
    spawn_follow "$@"
    wait_ready
}

# status_field NAME: a member of follow's status answer (JSON value as Python prints it).
status_field() {
    "$MI" status --json "$J.sock" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["return"][sys.argv[1]])' "$1"
}

# wait_in_sync: follow is in sync (nothing dirty, nothing in flight).
wait_in_sync() {
    local i
    for i in $(seq 100); do
        "$MI" status --json "$J.sock" 2>/dev/null | grep -q '"in_sync": true' && return 0
        sleep 0.1
    done
    fail "follow did not get in sync: $("$MI" status "$J.sock" 2>&1)"
}

# finish: complete exits 0, follow exits 0 with BLOCK_JOB_COMPLETED.
finish() {
    run "$MI" complete "$J.sock"
    [ "$status" -eq 0 ] || { echo "follow's stderr:"; cat "$T/follow.err"; }
    assert_success
    assert_output --partial "downtime_ms"
    local st=0
    wait_exit "$FOLLOW" || st=$?
    [ "$st" -eq 0 ] || { cat "$T/follow.err"; fail "follow exited $st after complete"; }
    grep -q BLOCK_JOB_COMPLETED "$T/events" || fail "no BLOCK_JOB_COMPLETED event"
}

# disk_same TARGET: QEMU reads the source's disk (chain flattened) and TARGET (a raw file
# or an NBD URI) the same.
disk_same() {
    run qemu-img compare -f qcow2 -F raw "$SRC" "$1"
    [ "$status" -eq 0 ] || echo "follow's stderr: $(cat "$T/follow.err")"
    assert_success
    assert_output --partial "Images are identical"
}

# raw_same: $DST is a raw file of the disk's size, reading as the disk.
raw_same() {
    disk_same "$DST"
    [ "$(stat -c %s "$DST")" -eq "$(vsize "$SRC")" ] ||
        fail "$DST has $(stat -c %s "$DST") bytes, the disk $(vsize "$SRC")"
}

# copied: bytes_copied of the BLOCK_JOB_COMPLETED event.
copied() {
    python3 -c '
import json, sys
for l in open(sys.argv[1]):
    e = json.loads(l)
    if e["event"] == "BLOCK_JOB_COMPLETED":
        print(e["data"]["bytes_copied"])' "$T/events"
}

# The writer of the first case, in two runs: allocating writes, zero writes (unmapping or
# not), discards, partial writes over backing data (copy-on-write from the base), full
# clusters over backing data, writes that allocate new L2 tables (600M: the second table;
# 1.5G and the last MiB: the fourth), and rewrites of what it wrote.
WRITES1=(-c 'write -P 0x31 8M 1M'
         -c "write -P 0x32 $((GiB + 4096)) 4k"
         -c 'write -P 0x33 1M 1M'
         -c 'write -z 0 512k'
         -c 'write -z -u 2M 128k'
         -c 'discard 2304k 256k'
         -c 'discard 100M 64k'
         -c 'write -P 0x34 1536M 1M'
         -c "write -P 0x35 $((2 * GiB - MiB)) 1M"
         -c 'write -P 0x36 600M 64k'
         -c "write -z $((GiB + 4 * MiB)) 1M")
WRITES2=(-c 'write -P 0x41 1536M 64k'
         -c 'discard 8M 64k'
         -c "write -P 0x42 $((8 * MiB + 32 * K)) 4k"
         -c "write -P 0x43 $((GiB + 2 * MiB + 8192)) 8k"
         -c 'write -z 600M 64k'
         -c 'write -P 0x44 3M 64k')

@test "disk mode: a qcow2 overlay on a qcow2 base into a raw file (-O raw): the flattened disk" {
    chain
    start_follow -O raw
    run "$MI" status --json "$J.sock"
    assert_success
    assert_output --partial '"mode": "disk"'
    # the job is the disk's size, not the file's
    grep BLOCK_JOB_READY "$T/events" | grep -q "\"len\": $((2 * GiB))" ||
        fail "READY's len is not the disk's: $(grep BLOCK_JOB_READY "$T/events")"
    qio "${WRITES1[@]}"
    wait_in_sync
    qio "${WRITES2[@]}"
    finish
    raw_same
    # the base was only read
    qcow2_ok "$T/base.qcow2"
    qcow2_ok "$SRC"
}

@test "disk mode: writes while the first pass is still copying (throttled)" {
    # 32 MiB of random data in the base, at [64M, 96M) of a 2 GiB disk
    truncate -s 2G "$T/b.raw"
    head -c $((32 * MiB)) /dev/urandom | dd of="$T/b.raw" bs=1M seek=64 conv=notrunc status=none
    qemu-img convert -f raw -O qcow2 "$T/b.raw" "$T/base.qcow2"
    rm "$T/b.raw"
    qemu-img create -q -f qcow2 -b "$T/base.qcow2" -F qcow2 "$SRC"
    spawn_follow -O raw -s 8M
    # wait until it copies data (the holes before 64M go fast)
    wait_for sh -c "'$MI' status --json '$J.sock' | grep -qv '\"bytes_copied\": 0,'" ||
        fail "follow did not start copying"
    # writes all over: behind the copy, at its cursor, ahead of it; new clusters over the
    # base's data (whole and partial), holes, zeroes, discards, new L2 tables
    local args=() i
    for i in $(seq 0 23); do
        args+=(-c "write -P $((0x50 + i)) $((64 * MiB + i * 1331 * K)) $(((i % 4 + 1) * 4))k")
    done
    for i in $(seq 0 7); do
        args+=(-c "write -P $((0x70 + i)) $((i * 256 * MiB + 3 * MiB)) 128k")
    done
    args+=(-c "write -z $((70 * MiB)) 256k" -c "discard $((90 * MiB)) 1M"
           -c "write -z $((95 * MiB)) 64k" -c "write -P 0x7f $((80 * MiB)) 2M")
    qio "${args[@]}"
    [ "$(status_field ready)" = False ] ||
        fail "the first pass ended before the writer did: the test proves nothing (speed?)"
    grep -q BLOCK_JOB_READY "$T/events" && fail "READY came before the writer ended"
    # more writes, still during the pass, from a second process
    qio -c "write -P 0x99 $((65 * MiB)) 64k" -c "write -P 0x9a $((95 * MiB + 4096)) 4k"
    "$MI" set-speed "$J.sock" 0
    wait_ready
    finish
    raw_same
}

@test "disk mode: into an nbdkit memory export the disk's size" {
    requires nbdkit
    chain
    nbdkit_start "$T/m.sock" memory $((2 * GiB))
    DST="nbd+unix:///?socket=$T/m.sock"
    start_follow
    run "$MI" status --json "$J.sock"
    assert_output --partial '"mode": "disk"'
    qio "${WRITES1[@]}"
    qio "${WRITES2[@]}"
    finish
    disk_same "$DST"
}

@test "disk mode: a qcow2 without backing into a qemu-nbd export of a raw file" {
    requires qemu-nbd
    qemu-img create -q -f qcow2 "$SRC" 256M
    qio_plain "$SRC" -c 'write -P 0x11 0 3M' -c 'write -P 0x12 200M 1M'
    truncate -s 256M "$T/remote.raw"
    qemu-nbd --fork --pid-file="$T/qnbd.pid" -k "$T/q.sock" -f raw -t "$T/remote.raw" \
        </dev/null >"$T/qnbd.log" 2>&1 3>&- ||
        fail "qemu-nbd did not start: $(cat "$T/qnbd.log")"
    qpid=$(cat "$T/qnbd.pid")
    on_exit "kill $qpid"
    DST="nbd+unix:///?socket=$T/q.sock"
    start_follow
    run "$MI" status --json "$J.sock"
    assert_output --partial '"mode": "disk"'
    qio -c 'write -P 0x21 1M 64k' -c 'write -z 2M 64k' -c 'discard 0 64k' \
        -c 'write -P 0x22 100M 2M' -c 'write -P 0x23 255M 1M'
    finish
    disk_same "$DST"
    kill "$qpid"
    for _ in $(seq 100); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.05; done
    run qemu-img compare -f qcow2 -F raw "$SRC" "$T/remote.raw"
    assert_success
}

@test "disk mode: an overlay on a compressed base (qemu-img convert -c) into raw" {
    # compressible, but different in every cluster: base64 of random bytes; and a run of
    # one pattern (many compressed clusters to a host cluster)
    truncate -s 256M "$T/b.raw"
    head -c $((6 * MiB)) /dev/urandom | base64 -w0 | head -c $((8 * MiB)) |
        dd of="$T/b.raw" bs=1M seek=1 conv=notrunc status=none
    qemu-io -f raw -c 'write -P 0x55 20M 4M' "$T/b.raw" >/dev/null
    qemu-img convert -c -f raw -O qcow2 "$T/b.raw" "$T/base.qcow2"
    rm "$T/b.raw"
    [ "$(stat -c %s "$T/base.qcow2")" -lt $((8 * MiB)) ] || fail "the base is not compressed"
    qemu-img create -q -f qcow2 -b "$T/base.qcow2" -F qcow2 "$SRC"
    qio_plain "$SRC" -c 'write -P 0x21 3M 64k'
    start_follow -O raw
    qio -c "write -P 0x31 $((MiB + 4 * K)) 4k" -c 'write -P 0x32 5M 1M' -c 'write -z 2M 64k' \
        -c 'discard 6M 128k' -c "write -P 0x33 $((21 * MiB + 60 * K)) 8k" \
        -c 'write -P 0x34 100M 64k' -c "write -P 0x35 $((3 * MiB + 32 * K)) 4k"
    wait_in_sync
    qio -c 'write -P 0x36 22M 64k' -c 'write -z 1M 4k'
    finish
    raw_same
}

@test "disk mode: a compressed image without backing written in place, compressed writes too" {
    truncate -s 64M "$T/b.raw"
    head -c $((3 * MiB)) /dev/urandom | base64 -w0 | head -c $((4 * MiB)) |
        dd of="$T/b.raw" bs=1M seek=1 conv=notrunc status=none
    qemu-io -f raw -c 'write -P 0x55 20M 2M' "$T/b.raw" >/dev/null
    qemu-img convert -c -f raw -O qcow2 "$T/b.raw" "$SRC"
    rm "$T/b.raw"
    start_follow -O raw
    # over compressed clusters (decompress, rewrite elsewhere, free the compressed one),
    # new compressed clusters in holes (packed with others into host clusters), zeroes and
    # discards of compressed clusters
    qio -c "write -P 0x31 $((MiB + 4 * K)) 4k" -c 'write -c -P 0x32 40M 256k' \
        -c 'write -z 2M 64k' -c 'discard 3M 128k' -c "write -P 0x33 $((20 * MiB + 60 * K)) 8k" \
        -c 'write -c -P 0x34 48M 64k'
    wait_in_sync
    qio -c "write -P 0x35 $((40 * MiB + 64 * K)) 4k" -c 'write -c -P 0x36 50M 128k' \
        -c 'discard 21M 64k'
    finish
    raw_same
    qcow2_ok "$SRC"
}

@test "disk mode: an extended-L2 overlay (sub-clusters) written 4K at a time, into raw" {
    qemu-img create -q -f qcow2 -o cluster_size=64k "$T/base.qcow2" 256M
    qio_plain "$T/base.qcow2" -c 'write -P 0x11 0 8M' -c 'write -P 0x12 100M 1M'
    qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k -b "$T/base.qcow2" -F qcow2 \
        "$SRC"
    qemu-img info "$SRC" | grep -q "extended l2: true" || fail "not an extended-L2 image"
    qio_plain "$SRC" -c "write -P 0x21 $((MiB + 8 * K)) 4k"
    start_follow -O raw
    # sub-cluster writes over backing data (the other sub-clusters read the base), in holes,
    # zeroes and discards of sub-clusters, and a whole cluster
    qio -c 'write -P 0x31 4k 4k' \
        -c "write -P 0x32 $((MiB + 16 * K)) 4k" \
        -c "write -P 0x33 $((50 * MiB + 32 * K)) 4k" \
        -c "write -z $((2 * MiB + 8 * K)) 4k" \
        -c "discard $((MiB + 8 * K)) 4k" \
        -c "write -P 0x34 $((100 * MiB + 60 * K)) 4k" \
        -c 'write -P 0x35 3M 64k' \
        -c "write -z $((3 * MiB + 4 * K)) 4k"
    wait_in_sync
    qio -c "write -P 0x36 $((50 * MiB + 36 * K)) 4k" -c "write -P 0x37 $((4 * MiB + 2 * K)) 2k" \
        -c 'discard 3M 64k'
    finish
    raw_same
}

@test "disk mode: a standalone extended-L2 image (no backing) into raw" {
    qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k "$SRC" 128M
    qio_plain "$SRC" -c 'write -P 0x11 0 1M' -c "write -P 0x12 $((8 * MiB + 4 * K)) 4k"
    start_follow -O raw
    qio -c "write -P 0x31 $((8 * MiB + 12 * K)) 4k" -c "write -P 0x32 $((20 * MiB + 4 * K)) 4k" \
        -c 'write -z 4k 4k' -c 'discard 64k 8k' -c "write -P 0x33 $((127 * MiB + 60 * K)) 4k"
    finish
    raw_same
}

@test "disk mode: 4K clusters on a 64K-cluster base (many L2 tables to a journal chunk)" {
    qemu-img create -q -f qcow2 -o cluster_size=64k "$T/base.qcow2" 256M
    qio_plain "$T/base.qcow2" -c 'write -P 0x11 0 4M' -c 'write -P 0x12 100M 1M'
    qemu-img create -q -f qcow2 -o cluster_size=4k -b "$T/base.qcow2" -F qcow2 "$SRC"
    qio_plain "$SRC" -c 'write -P 0x21 1M 64k'
    start_follow -O raw
    local args=() i
    for i in $(seq 0 39); do # one write in each of 40 L2 tables (2 MiB each)
        args+=(-c "write -P $((0x30 + i)) $((i * 6 * MiB + 12288)) 4k")
    done
    qio "${args[@]}" -c 'write -z 1M 4k' -c 'discard 2M 8k' \
        -c "write -P 0x77 $((100 * MiB + 2 * K)) 1k"
    wait_in_sync
    qio -c 'write -P 0x78 12k 4k' -c 'write -P 0x79 200M 256k'
    finish
    raw_same
}

@test "disk mode: follow killed with -9 after the first pass and restarted resumes (raw)" {
    chain
    start_follow -O raw
    qio -c 'write -P 0x31 8M 1M' -c 'write -P 0x32 1536M 1M'
    wait_in_sync
    kill -9 "$FOLLOW"
    wait "$FOLLOW" || true
    # data rewritten in place (the overlay's own clusters) and an allocation in the first
    # L2 table; no new L2 table (a changed L1 is, after a restart, a change anywhere)
    qio -c 'write -P 0x41 2M 64k' -c 'write -P 0x42 20M 1M' \
        -c "write -P 0x43 $((GiB + 2 * MiB)) 4k" -c "write -P 0x44 $((1536 * MiB + 64 * K)) 4k"
    start_follow -O raw
    ! grep -q "copying everything" "$T/follow.err" || fail "a full pass: $(cat "$T/follow.err")"
    finish
    raw_same
    c=$(copied)
    echo "bytes copied after the restart: $c"
    # The disk holds 16 MiB of data (and 2 GiB in all).  What the restart must copy: the
    # first L2 table's range ([0, 512M): 7 MiB of data there; its table changed and the
    # old one is unknown after a restart) and the two clusters rewritten elsewhere, 7 MiB
    # and 128 KiB; not the 8 MiB at 1G nor the 1 MiB at 1.5G.
    [ "$c" -ge $((MiB + 8192)) ] || fail "copied $c bytes, less than was written"
    [ "$c" -le $((15 * MiB / 2)) ] || fail "copied $c bytes after the restart: the whole disk again?"
}

@test "disk mode: follow killed with -9 after the first pass and restarted resumes (NBD)" {
    requires nbdkit
    chain
    nbdkit_start "$T/m.sock" memory $((2 * GiB))
    DST="nbd+unix:///?socket=$T/m.sock"
    start_follow
    qio -c 'write -P 0x31 8M 1M'
    wait_in_sync
    kill -9 "$FOLLOW"
    wait "$FOLLOW" || true
    qio -c 'write -P 0x41 2M 64k' -c 'write -P 0x42 20M 1M' \
        -c "write -P 0x43 $((GiB + 2 * MiB)) 4k"
    start_follow
    ! grep -q "copying everything" "$T/follow.err" || fail "a full pass: $(cat "$T/follow.err")"
    finish
    disk_same "$DST"
    c=$(copied)
    echo "bytes copied after the restart: $c"
    # 15 MiB of data on the disk; the first L2 table's range holds 7 MiB, and one cluster
    # was rewritten at 1G+2M: 7 MiB and 64 KiB to copy, not the 8 MiB at 1G.
    [ "$c" -ge $((MiB + 4096)) ] || fail "copied $c bytes, less than was written"
    [ "$c" -le $((15 * MiB / 2)) ] || fail "copied $c bytes after the restart: the whole disk again?"
}

@test "disk mode: killed during the first pass and restarted: the target still ends whole" {
    truncate -s 1G "$T/b.raw"
    head -c $((16 * MiB)) /dev/urandom | dd of="$T/b.raw" bs=1M seek=32 conv=notrunc status=none
    qemu-img convert -f raw -O qcow2 "$T/b.raw" "$T/base.qcow2"
    rm "$T/b.raw"
    qemu-img create -q -f qcow2 -b "$T/base.qcow2" -F qcow2 "$SRC"
    spawn_follow -O raw -s 8M
    wait_for sh -c "'$MI' status --json '$J.sock' | grep -qv '\"bytes_copied\": 0,'" ||
        fail "follow did not start copying"
    qio -c "write -P 0x31 $((33 * MiB)) 64k" -c "write -P 0x32 $((47 * MiB)) 64k" \
        -c 'write -P 0x33 500M 1M'
    kill -9 "$FOLLOW"
    wait "$FOLLOW" || true
    qio -c "write -P 0x41 $((40 * MiB)) 4k" -c 'write -z 34M 64k'
    start_follow -O raw
    finish
    raw_same
}

@test "disk mode: internal snapshots created, written past and applied (L1 rewritten)" {
    chain
    start_follow -O raw
    qio -c 'write -P 0x31 1M 64k' -c 'write -P 0x32 1G 64k'
    under qemu-img snapshot -c s1 "$SRC"
    # after the snapshot every cluster is shared: writes copy them (new clusters, new L2
    # tables); a new table in the fourth range
    qio -c 'write -P 0x41 1M 64k' -c 'write -P 0x42 0 4k' -c 'write -P 0x43 1600M 1M' \
        -c "write -P 0x44 $GiB 4k"
    wait_in_sync
    # back to s1: the active L1 table is overwritten with the snapshot's
    under qemu-img snapshot -a s1 "$SRC"
    qio -c 'write -P 0x51 3M 64k'
    finish
    raw_same
    qcow2_ok "$SRC"
}

@test "disk mode: an existing raw target of garbage, larger than the disk (-n): written all over" {
    small_chain
    rand_file "$DST" 80
    start_follow -O raw -n
    grep -q "copying everything" "$T/follow.err"
    qio -c 'write -P 0x31 8M 64k' -c 'write -z 1M 64k'
    finish
    raw_same
}

@test "disk mode: the backing file switched while followed (rebase -u) never completes stale" {
    small_chain
    qemu-img create -q -f qcow2 "$T/other.qcow2" 64M
    qio_plain "$T/other.qcow2" -c 'write -P 0x77 0 8M'
    start_follow -O raw
    qio -c 'write -P 0x31 8M 64k'
    # what the guest sees below the top changes: 0x77 where it saw 0x11 and zeroes
    under qemu-img rebase -u -b "$T/other.qcow2" -F qcow2 "$SRC"
    run "$MI" complete "$J.sock"
    if [ "$status" -eq 0 ]; then
        wait_exit "$FOLLOW" || true
        run qemu-img compare -f qcow2 -F raw "$SRC" "$DST"
        [ "$status" -eq 0 ] ||
            fail "complete exited 0 but the target is stale (the old backing file's data): $output"
    else
        st=0
        wait_exit "$FOLLOW" || st=$?
        [ "$st" -eq 1 ] || { cat "$T/follow.err"; fail "follow exited $st"; }
        grep -q "backing file" "$T/follow.err" || { cat "$T/follow.err"; fail "no reason given"; }
    fi
}

@test "a target recorded by a file-mode follow is not resumed in disk mode (-O raw)" {
    qemu-img create -q -f qcow2 "$SRC" 64M
    qio_plain "$SRC" -c 'write -P 0x11 0 4M'
    start_follow
    [ "$(status_field mode)" = file ]
    finish
    cmp "$SRC" "$DST"
    # the same journal and the same target, now as a disk: the target holds the qcow2
    # file, not the disk; a resume would copy only what changed.  Either a full pass, or a
    # refusal naming the mode.
    qio -c 'write -P 0x22 1M 64k'
    spawn_follow -O raw
    if ! ready_or_exit; then
        [ "$FOLLOW_RC" -eq 1 ] || fail "follow exited $FOLLOW_RC: $(cat "$T/follow.err")"
        grep -qi "mode" "$T/follow.err" || fail "refused without naming the mode: $(cat "$T/follow.err")"
        return 0
    fi
    [ "$(status_field mode)" = disk ]
    finish
    run qemu-img compare -f qcow2 -F raw "$SRC" "$DST"
    [ "$status" -eq 0 ] ||
        fail "complete exited 0 but $DST is not the disk (it still holds the qcow2 file): $output"
    raw_same
}

@test "a target recorded by a disk-mode follow is not resumed in file mode" {
    qemu-img create -q -f qcow2 "$SRC" 64M
    qio_plain "$SRC" -c 'write -P 0x11 0 4M'
    start_follow -O raw
    finish
    raw_same
    # the same journal and the same target, now file to file: the target holds the disk,
    # not the file.  Either a full pass, or a refusal naming the mode.
    qio -c 'write -P 0x22 1M 64k'
    spawn_follow
    if ! ready_or_exit; then
        [ "$FOLLOW_RC" -eq 1 ] || fail "follow exited $FOLLOW_RC: $(cat "$T/follow.err")"
        grep -qi "mode" "$T/follow.err" || fail "refused without naming the mode: $(cat "$T/follow.err")"
        return 0
    fi
    [ "$(status_field mode)" = file ]
    finish
    cmp "$SRC" "$DST" || fail "complete exited 0 but $DST is not the qcow2 file"
}

@test "disk mode refusals: complete --pivot (follow goes on), -O qcow2 of a raw source" {
    chain
    start_follow -O raw
    run "$MI" complete --pivot "$J.sock"
    assert_failure 1
    assert_output --partial "cannot pivot in disk mode"
    kill -0 "$FOLLOW" || fail "follow ended after the refused pivot"
    [ "$(status_field status)" = ready ]
    qio -c 'write -P 0x31 8M 64k' -c 'write -P 0x32 1536M 64k'
    finish
    raw_same
    grep -q '"pivot": false' "$T/events"

    # a raw source asked to become qcow2: a usage error
    truncate -s 8M "$T/src.raw"
    run "$MI" follow --journal "$T/j2" -O qcow2 "$T/src.raw" "$T/x.qcow2"
    assert_failure 2
    assert_output --partial "converting to qcow2 this way is not possible"
    [ ! -e "$T/x.qcow2" ]
}

@test "a backing chain followed into a .qcow2 target (no -O, or -O qcow2) becomes a flat qcow2; a restart resumes into it, --force replaces it" {
    chain
    for opt in "" "-O qcow2"; do
        rm -f "$J" "$J.sock" "$T/events"
        DST=$T/flat.qcow2
        rm -f "$DST"
        # shellcheck disable=SC2086
        start_follow $opt
        [ "$(status_field mode)" = disk ]
        qio -c 'write -P 0x31 8M 64k' -c 'write -z 2M 64k' -c 'discard 4M 64k' \
            -c 'write -P 0x32 1536M 64k'
        finish
        run qemu-img compare "$SRC" "$DST"
        assert_success
        run qemu-img check "$DST"
        assert_success
        run qemu-img info --output=json "$DST"
        refute_output --partial backing-filename
        # the journal records the target: a restart resumes into it
        qio -c 'write -P 0x33 9M 64k' -c 'write -z 8M 4k'
        # shellcheck disable=SC2086
        start_follow $opt
        ! grep -q "copying everything" "$T/follow.err" || fail "a full pass: $(cat "$T/follow.err")"
        finish
        run qemu-img compare "$SRC" "$DST"
        assert_success
        run qemu-img check "$DST"
        assert_success
        refute_output --partial leaked
    done
    # --force replaces it with a full pass
    qio -c 'write -P 0x41 9M 64k'
    start_follow --force
    finish
    run qemu-img compare "$SRC" "$DST"
    assert_success
}

# l1_offset: where the image's header says its L1 table is.
l1_offset() {
    python3 -c 'import struct,sys; f=open(sys.argv[1],"rb"); f.seek(40); print(struct.unpack(">Q", f.read(8))[0])' "$1"
}

@test "disk mode: the disk grows while followed (qemu-img resize: the L1 table grows and moves); raw and qcow2 targets grow with it" {
    for fmt in raw qcow2; do
        rm -f "$J" "$J.sock" "$T/events" "$T"/*.qcow2 "$T"/*.raw
        chain
        DST=$T/dst.$fmt
        start_follow -O $fmt
        qio -c 'write -P 0x31 8M 1M'
        wait_in_sync
        local l1=$(l1_offset "$SRC")
        under qemu-img resize -q -f qcow2 "$SRC" 3G
        [ "$(l1_offset "$SRC")" != "$l1" ] || fail "the L1 table did not move: the test proves nothing"
        qio -c "write -P 0x61 $((2 * GiB + 5 * MiB)) 1M" -c "write -P 0x62 $((3 * GiB - 64 * K)) 64k" \
            -c 'write -P 0x63 9M 4k'
        wait_in_sync
        qio -c "write -P 0x64 $((2 * GiB + 100 * MiB)) 4k"
        finish
        [ "$(vsize "$DST")" -eq $((3 * GiB)) ] || fail "[$fmt] the target has $(vsize "$DST") bytes"
        run qemu-img compare "$SRC" "$DST"
        assert_success
        if [ $fmt = qcow2 ]; then
            run qemu-img check "$DST"
            assert_success
            refute_output --partial leaked
        fi
    done
}

@test "disk mode: a disk that shrinks while followed fails the job by name" {
    chain
    start_follow -O raw
    wait_in_sync
    under qemu-img resize -q -f qcow2 --shrink "$SRC" 1G
    wait_exit "$FOLLOW" && fail "follow went on after the disk shrank"
    grep -q "shrank" "$T/follow.err" || fail "no message: $(cat "$T/follow.err")"
}

@test "disk mode: follow into a qcow2 target killed with -9 (in sync, and during the first pass) and restarted resumes; the image checks clean" {
    chain
    DST=$T/flat.qcow2
    start_follow
    qio -c 'write -P 0x31 8M 1M' -c 'write -P 0x32 1536M 1M'
    wait_in_sync
    kill -9 "$FOLLOW"
    wait "$FOLLOW" || true
    # what a killed run leaves opens: leaks at most, no error
    run qemu-img check "$DST"
    [ "$status" -eq 0 ] || [ "$status" -eq 3 ] || fail "qemu-img check after kill -9: $output"
    refute_output --partial ERROR
    qio -c 'write -P 0x41 2M 64k' -c 'write -P 0x42 20M 1M' \
        -c "write -P 0x43 $((GiB + 2 * MiB)) 4k" -c "write -P 0x44 $((1536 * MiB + 64 * K)) 4k"
    start_follow
    ! grep -q "copying everything" "$T/follow.err" || fail "a full pass: $(cat "$T/follow.err")"
    qio -c 'write -P 0x45 3M 4k'
    finish
    run qemu-img compare "$SRC" "$DST"
    assert_success
    run qemu-img check "$DST"
    assert_success
    refute_output --partial leaked
    c=$(copied)
    echo "bytes copied after the restart: $c"
    cat "$T/follow.err"
    [ "$c" -le $((15 * MiB / 2)) ] || fail "copied $c bytes after the restart: the whole disk again?"
    # killed in its first pass (rate-limited): the restart copies what is not known copied
    rm -f "$DST" "$J" "$J.sock" "$T/events"
    spawn_follow -s 4M
    sleep 1
    kill -9 "$FOLLOW"
    wait "$FOLLOW" || true
    qio -c 'write -P 0x51 5M 64k'
    start_follow
    finish
    run qemu-img compare "$SRC" "$DST"
    assert_success
    run qemu-img check "$DST"
    assert_success
    refute_output --partial leaked
}

@test "file mode unchanged: a qcow2 without backing into a .qcow2 target stays byte-identical" {
    qemu-img create -q -f qcow2 "$SRC" 256M
    qio_plain "$SRC" -c 'write -P 0x11 0 2M' -c 'write -P 0x12 100M 1M'
    DST=$T/dst.qcow2
    start_follow
    run "$MI" status --json "$J.sock"
    assert_output --partial '"mode": "file"'
    qio -c 'write -P 0x21 10M 3M' -c 'write -z 0 64k' -c 'discard 100M 64k' \
        -c 'write -P 0x22 255M 1M'
    finish
    cmp "$SRC" "$DST"
    qcow2_ok "$DST"
    run qemu-img compare "$SRC" "$DST"
    assert_success
    # -O qcow2 (the source's own format) is file mode too
    rm -f "$J" "$J.sock" "$DST"
    start_follow -O qcow2
    run "$MI" status --json "$J.sock"
    assert_output --partial '"mode": "file"'
    qio -c 'write -P 0x31 20M 1M'
    finish
    cmp "$SRC" "$DST"
}

@test "a write into the backing file while followed (no journal tracks it) fails follow, naming the file" {
    small_chain
    start_follow -O raw
    # qemu-io on the base itself, as a commit into it would write: not tracked by any journal
    qio_plain "$T/base.qcow2" -c 'write -P 0x55 20M 64k'
    local st=0
    wait_exit "$FOLLOW" 10 || st=$?
    [ "$st" -eq 1 ] || { cat "$T/follow.err"; fail "follow exited $st, not 1"; }
    grep -q "the backing file $T/base.qcow2 changed while followed" "$T/follow.err" ||
        { cat "$T/follow.err"; fail "no message naming the backing file"; }
    ! grep -q BLOCK_JOB_COMPLETED "$T/events" || fail "a job whose backing file changed completed"
}

@test "follow --sync=top into another directory: a new overlay naming the backing file by a name that resolves there" {
    mkdir -p "$T/a" "$T/b"
    qemu-img create -q -f qcow2 "$T/a/base.qcow2" 64M
    qio_plain "$T/a/base.qcow2" -c 'write -P 0x11 0 8M' -c 'write -P 0x12 20M 1M'
    (cd "$T/a" && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2)
    SRC=$T/a/top.qcow2
    qio_plain "$SRC" -c 'write -P 0x21 2M 1M'
    cd "$T"
    DST=b/st.qcow2
    start_follow --sync=top
    [ "$(status_field mode)" = disk ]
    # over backing data, zeros over backing data, a discard of top data, new data
    qio -c 'write -P 0x31 4M 64k' -c 'write -z 6M 128k' -c 'discard 2M 64k' \
        -c 'write -P 0x32 40M 1M'
    finish
    run qemu-img compare "$SRC" "$DST"
    assert_success
    run qemu-img check "$DST"
    assert_success
    run qemu-img info --output=json "$DST"
    assert_output --partial "\"backing-filename\": \"$(realpath "$T/a/base.qcow2")\""
    # only the top layer is in the overlay: the base's untouched data is not copied
    run qemu-img map --output=json "$DST"
    python3 -c '
import json, sys
m = json.loads(sys.argv[1])
at0 = [e for e in m if e["start"] == 0][0]
sys.exit(0 if at0["depth"] == 1 else 1)' "$output" || fail "offset 0 was copied into the overlay: $output"
}

@test "follow --sync=top: a cluster that becomes unallocated again (snapshot revert) shows the backing data" {
    small_chain
    qemu-img snapshot -c before "$SRC"
    DST=$T/st.qcow2
    start_follow --sync=top
    # allocate clusters over the base's data, then revert: they are unallocated again
    qio -c 'write -P 0x31 0 128k' -c 'write -P 0x32 20M 64k' -c 'write -P 0x33 2M 64k'
    wait_in_sync
    under qemu-img snapshot -a before "$SRC"
    finish
    run qemu-img compare "$SRC" "$DST"
    assert_success
    run qemu-img check "$DST"
    assert_success
}
