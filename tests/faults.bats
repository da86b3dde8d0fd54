#!/usr/bin/env bats
# Short reads, short writes and EINTR (tests/faults/shortio.c, preloaded into mirror-img):
# every copy, compare and verify ends with an exact target or a clear error naming the
# range, never a wrong target.  Each test also requires that faults were injected.
load helpers

SHORTIO=${SHORTIO:-$TOP/build/tests/shortio.so}

setup() {
    [ -f "$SHORTIO" ] || fail "$SHORTIO is missing: run make"
    requires qemu-img qemu-io
    # The library matches the paths the kernel gives back: the real path of $T.
    R=$(realpath "$T")
    # 64 MiB sparse source: data at 1M, 40M and 36000K, allocated zeros at 20M, holes between.
    truncate -s 64M "$T/src.raw"
    dd if=/dev/urandom of="$T/src.raw" bs=1M count=3 seek=1 conv=notrunc status=none
    dd if=/dev/zero of="$T/src.raw" bs=1M count=4 seek=20 conv=notrunc status=none
    dd if=/dev/urandom of="$T/src.raw" bs=64K count=5 seek=640 conv=notrunc status=none
    dd if=/dev/urandom of="$T/src.raw" bs=4K count=100 seek=9000 conv=notrunc status=none
}

# faulty CMD...: run CMD with RATE percent (default 20) of its reads and writes of files
# under $T disturbed (MODE: mixed, eintr, short or write0; PATHS: other prefixes;
# SHORT_MAX: the most bytes of a short transfer); the counts of each process go to
# $T/faults.  A command that hangs or spins is stopped after 60 s (exit status 124).
# Small chunks and buffers (SMALL) make hundreds of calls, so that faults land on data,
# metadata and headers alike.
faulty() {
    rm -f "$T/faults"
    LD_PRELOAD=$SHORTIO SHORTIO_PATHS=${PATHS:-$R/} SHORTIO_RATE=${RATE:-20} \
        SHORTIO_MODE=${MODE:-mixed} SHORTIO_SHORT_MAX=${SHORT_MAX:-0} \
        SHORTIO_SEED=${SEED:-$RANDOM} SHORTIO_REPORT=$T/faults \
        ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 timeout 60 "$@"
}
SMALL=(-j 4 -g 4K --buf-size 64K)

# injected: the faults of the last faulty command; fails when there were none (the test
# would prove nothing).
injected() {
    cat "$T/faults"
    local n
    n=$(sed -n 's/.* faults=\([0-9]*\) .*/\1/p' "$T/faults" | awk '{s += $1} END {print s + 0}')
    [ "$n" -gt 0 ] || fail "no fault was injected"
}

@test "faults: raw to raw, sparse source: identical, holes kept" {
    run faulty "$MI" copy "${SMALL[@]}" "$T/src.raw" "$T/dst.raw"
    assert_success
    injected
    cmp "$T/src.raw" "$T/dst.raw"
    [ "$(alloc_bytes "$T/dst.raw")" -le $(( 5 * 1024 * 1024 )) ]
}

@test "faults: qcow2 (plain and compressed) and qcow v1 to raw: identical" {
    qemu-img convert -f raw -O qcow2 "$T/src.raw" "$T/src.qcow2"
    qemu-img convert -c -f raw -O qcow2 "$T/src.raw" "$T/srcc.qcow2"
    qemu-img convert -f raw -O qcow2 -o compression_type=zstd,cluster_size=4k -c \
        "$T/src.raw" "$T/srcz.qcow2"
    qemu-img convert -f raw -O qcow "$T/src.raw" "$T/src.qcow"
    for img in src.qcow2 srcc.qcow2 srcz.qcow2 src.qcow; do
        rm -f "$T/dst.raw"
        run faulty "$MI" copy -O raw "${SMALL[@]}" "$T/$img" "$T/dst.raw"
        assert_success
        injected
        cmp "$T/src.raw" "$T/dst.raw"
    done
}

@test "faults: raw to qcow2, and qcow2 (compressed) to qcow2 and to compressed qcow2" {
    qemu-img convert -c -f raw -O qcow2 "$T/src.raw" "$T/srcc.qcow2"
    for args in "$T/src.raw" "$T/srcc.qcow2" "-c $T/srcc.qcow2" "-o cluster_size=4k $T/src.raw"; do
        rm -f "$T/dst.qcow2"
        run faulty "$MI" copy -O qcow2 "${SMALL[@]}" $args "$T/dst.qcow2"
        assert_success
        injected
        qemu_same "$T/src.raw" "$T/dst.qcow2"
        qcow2_ok "$T/dst.qcow2"
    done
}

@test "faults: a backing chain with --sync=full (to qcow2 and raw) and --sync=top" {
    qemu-img convert -f raw -O qcow2 "$T/src.raw" "$T/base.qcow2"
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$T/top.qcow2" 64M
    qemu-io -f qcow2 -c 'write -P 0x5a 2M 1M' -c 'write -z 40M 64k' -c 'write -P 0x11 60M 300k' \
        "$T/top.qcow2" >/dev/null
    qemu-img convert -O raw "$T/top.qcow2" "$T/top.raw"
    run faulty "$MI" copy --sync=full "${SMALL[@]}" "$T/top.qcow2" "$T/full.qcow2"
    assert_success
    injected
    qemu_same "$T/top.raw" "$T/full.qcow2"
    qcow2_ok "$T/full.qcow2"
    run qemu-img info "$T/full.qcow2"
    refute_output --partial "backing file"
    run faulty "$MI" copy --sync=full -O raw "${SMALL[@]}" "$T/top.qcow2" "$T/full.raw"
    assert_success
    injected
    cmp "$T/top.raw" "$T/full.raw"
    run faulty "$MI" copy --sync=top "${SMALL[@]}" "$T/top.qcow2" "$T/top2.qcow2"
    assert_success
    injected
    qcow2_ok "$T/top2.qcow2"
    qemu_same "$T/top.raw" "$T/top2.qcow2"
}

@test "faults: compare says identical and different exactly" {
    qemu-img convert -f raw -O qcow2 "$T/src.raw" "$T/src.qcow2"
    cp "$T/src.raw" "$T/other.raw"
    printf 'x' | dd of="$T/other.raw" bs=1 seek=$(( 40 * 1024 * 1024 + 12345 )) conv=notrunc status=none
    # Compare reads in large pieces (some 20 calls): a higher rate, and a few rounds.
    for i in 1 2 3; do
        RATE=50 run faulty "$MI" compare "$T/src.qcow2" "$T/src.raw"
        assert_success
        assert_output --partial "identical"
        injected
        RATE=50 run faulty "$MI" compare "$T/src.qcow2" "$T/other.raw"
        assert_failure 1
        assert_output --partial "Content mismatch at offset $(( 40 * 1024 * 1024 + 12345 ))"
        injected
    done
}

@test "faults: copy --verify reads both back under faults and passes" {
    qemu-img convert -c -f raw -O qcow2 "$T/src.raw" "$T/srcc.qcow2"
    run faulty "$MI" copy --verify -O raw "${SMALL[@]}" "$T/srcc.qcow2" "$T/dst.raw"
    assert_success
    injected
    cmp "$T/src.raw" "$T/dst.raw"
    run faulty "$MI" copy --verify -O qcow2 "${SMALL[@]}" "$T/src.raw" "$T/dst.qcow2"
    assert_success
    injected
    qemu_same "$T/src.raw" "$T/dst.qcow2"
    qcow2_ok "$T/dst.qcow2"
}

@test "faults: copy --incremental, a first run and one after writes under the shim" {
    J="$T/j"
    run faulty "$MI" copy -q --incremental --journal "$J" "${SMALL[@]}" "$T/src.raw" "$T/dst.raw"
    assert_success
    injected
    cmp "$T/src.raw" "$T/dst.raw"
    "$MI" run --journal "$J" "$T/src.raw" -- \
        dd if=/dev/urandom of="$T/src.raw" bs=4K count=30 seek=5000 conv=notrunc status=none
    "$MI" run --journal "$J" "$T/src.raw" -- \
        qemu-io -f raw -c 'write -P 0x77 30M 640k' -c 'write -z 1M 64k' "$T/src.raw" >/dev/null
    run faulty "$MI" copy -q --incremental --verify --journal "$J" -j 4 "$T/src.raw" "$T/dst.raw"
    assert_success
    injected
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "faults: writes that keep returning 0 end with exit 1 naming the range, no target left" {
    MODE=write0 RATE=100 run faulty "$MI" copy "$T/src.raw" "$T/dst.raw"
    assert_failure 1
    assert_output --regexp "^mirror-img: $T/dst.raw: write error at offset [0-9]+, length [0-9]+: "
    injected
    [ ! -e "$T/dst.raw" ]
    MODE=write0 RATE=100 run faulty "$MI" copy -O qcow2 "$T/src.raw" "$T/dst.qcow2"
    assert_failure 1
    assert_output --regexp "^mirror-img: $T/dst.qcow2: .*at offset [0-9]+.*: "
    injected
    [ ! -e "$T/dst.qcow2" ]
    # One write in three returns 0, wherever it falls (header, tables or data).
    MODE=write0 RATE=30 run faulty "$MI" copy -O qcow2 "${SMALL[@]}" -o cluster_size=4k \
        "$T/src.raw" "$T/dst.qcow2"
    assert_failure 1
    assert_output --regexp "^mirror-img: $T/dst.qcow2: .*at offset [0-9]+.*: "
    injected
    [ ! -e "$T/dst.qcow2" ]
}

@test "faults: a qcow2 source cut short is refused by name before a target exists" {
    qemu-img convert -f raw -O qcow2 "$T/src.raw" "$T/src.qcow2"
    truncate -s 1M "$T/src.qcow2"
    # Opening it makes a few reads only: disturb every one.
    RATE=100 run faulty "$MI" copy -O raw "${SMALL[@]}" "$T/src.qcow2" "$T/dst.raw"
    assert_failure 1
    assert_output --regexp "^mirror-img: $T/src.qcow2: data cluster at 0x[0-9a-f]+ .*lies beyond the end of the file"
    injected
    [ ! -e "$T/dst.raw" ]
}

@test "faults: the password file of an AES image read a few bytes at a time" {
    local s="secret,id=sec0,data=PASSWORD"
    printf 'PASSWORD\n' > "$T/pw"
    qemu-img create -q -f qcow2 --object $s -o encrypt.format=aes,encrypt.key-secret=sec0 \
        "$T/aes.qcow2" 16M
    qemu-io --object $s --image-opts "driver=qcow2,file.filename=$T/aes.qcow2,encrypt.key-secret=sec0" \
        -c 'write -P 0x5a 0 1M' -c 'write -P 0x5b 5M 100k' >/dev/null
    qemu-img convert --object $s --image-opts \
        "driver=qcow2,file.filename=$T/aes.qcow2,encrypt.key-secret=sec0" -O raw "$T/ref.raw"
    # Only the password file is disturbed: every read of it returns 4 bytes at most.
    PATHS=$R/pw MODE=short SHORT_MAX=4 RATE=100 run faulty "$MI" copy -O raw --password-file "$T/pw" \
        "$T/aes.qcow2" "$T/dst.raw"
    assert_success
    injected
    cmp "$T/ref.raw" "$T/dst.raw"
}
