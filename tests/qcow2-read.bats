#!/usr/bin/env bats
# qcow2-read.bats: the qcow2 / qcow reader against images made by qemu-img and qemu-io.
# Every image is copied to raw and to qcow2 and judged by qemu-img compare and check.

load helpers

MKBAD=$BATS_TEST_DIRNAME/images/mkbad.py

setup() {
    requires qemu-img qemu-io
}

q2() { qemu-img create -q -f qcow2 "$@"; }
io() { qemu-io "$@" >/dev/null; }

# copy_ok SRC [COPY OPTION...]: copy SRC to a raw and to a qcow2 target; QEMU must find
# both identical to SRC and the qcow2 target clean.
copy_ok() {
    local src=$1
    shift
    rm -f "$T/out.raw" "$T/out.qcow2"
    run "$MI" copy -O raw "$@" "$src" "$T/out.raw"
    assert_success
    qemu_same "$src" "$T/out.raw"
    run "$MI" copy -O qcow2 "$@" "$src" "$T/out.qcow2"
    assert_success
    qemu_same "$src" "$T/out.qcow2"
    qcow2_ok "$T/out.qcow2"
}

# feature IMG TEXT: `mirror-img info` lists TEXT among the features
feature() {
    run "$MI" info "$1"
    assert_success
    assert_line --regexp "^features: (.*,)?$2(,.*)?\$"
}

@test "qcow2 v2 (compat=0.10)" {
    q2 -o compat=0.10 "$T/v2.qcow2" 64M
    io -f qcow2 -c 'write -P 0x11 0 3M' -c 'write -P 0x22 10M 64k' -c 'write -P 0x33 63M 1M' \
        "$T/v2.qcow2"
    copy_ok "$T/v2.qcow2"
    run "$MI" info "$T/v2.qcow2"
    assert_output --partial "version: 2"
}

@test "qcow2 v3 with zero clusters over data" {
    q2 "$T/v3.qcow2" 64M
    io -f qcow2 -c 'write -P 0x11 0 4M' -c 'write -z 1M 64k' -c 'write -z 2M 1M' \
        -c 'write -P 0x44 5000 3000' -c 'write -P 0x55 63M 1M' "$T/v3.qcow2"
    copy_ok "$T/v3.qcow2"
}

@test "zero clusters read as zero (not as the data they replaced), raw target stays sparse" {
    q2 "$T/z.qcow2" 256M
    io -f qcow2 -c 'write -P 0x11 0 64M' -c 'write -z 0 64M' -c 'write -P 0x22 100M 1M' "$T/z.qcow2"
    copy_ok "$T/z.qcow2"
    # 64 MiB of zero clusters and 155 MiB unallocated: only the 1 MiB of data is written
    [ "$(alloc_bytes "$T/out.raw")" -lt $((8 * 1024 * 1024)) ]
}

@test "zero clusters over backing data (raw backing)" {
    qemu-img create -q -f raw "$T/base.raw" 16M
    io -f raw -c 'write -P 0xaa 0 16M' "$T/base.raw"
    q2 -b base.raw -F raw "$T/top.qcow2" 16M
    io -f qcow2 -c 'write -z 1M 1M' -c 'write -P 0x11 4M 64k' -c 'write -z 8M 64k' "$T/top.qcow2"
    copy_ok "$T/top.qcow2"
}

@test "backing chain qcow2 -> qcow2 -> raw, relative names, opened from another directory" {
    mkdir "$T/d"
    qemu-img create -q -f raw "$T/d/base.raw" 32M
    io -f raw -c 'write -P 0xaa 0 32M' "$T/d/base.raw"
    q2 -b base.raw -F raw "$T/d/mid.qcow2" 64M
    io -f qcow2 -c 'write -P 0x11 1M 1M' -c 'write -z 4M 1M' "$T/d/mid.qcow2"
    q2 -b mid.qcow2 -F qcow2 "$T/d/top.qcow2" 64M
    io -f qcow2 -c 'write -P 0x22 1536k 1M' -c 'write -z 8M 128k' -c 'write -P 5 40M 1M' \
        "$T/d/top.qcow2"
    cd /
    copy_ok "$T/d/top.qcow2"
    run "$MI" info "$T/d/top.qcow2"
    assert_output --partial "mid.qcow2"
}

@test "backing file without a backing-format extension is probed" {
    q2 "$T/base.qcow2" 16M
    io -f qcow2 -c 'write -P 0x61 0 8M' "$T/base.qcow2"
    q2 -b base.qcow2 -F qcow2 "$T/top.qcow2" 16M
    io -f qcow2 -c 'write -P 0x62 1M 1M' "$T/top.qcow2"
    # hide the extension: an unknown type is skipped, so the format must be probed
    python3 "$MKBAD" "$T/top.qcow2" 'ext[0xe2792aca].type=0x12345678'
    copy_ok "$T/top.qcow2"
    run "$MI" info "$T/top.qcow2"
    assert_line "backing file format: qcow2"
}

@test "backing file shorter than its overlay reads as zeros past its end" {
    q2 "$T/short.qcow2" 1M
    io -f qcow2 -c 'write -P 0x66 0 1M' "$T/short.qcow2"
    qemu-img create -q -f raw "$T/short.raw" 1000448
    io -f raw -c 'write -P 0x67 0 1000448' "$T/short.raw"
    q2 -b short.qcow2 -F qcow2 "$T/long.qcow2" 8M
    io -f qcow2 -c 'write -P 0x11 6M 64k' "$T/long.qcow2"
    copy_ok "$T/long.qcow2"
    q2 -b short.raw -F raw "$T/long2.qcow2" 8M
    copy_ok "$T/long2.qcow2"
}

@test "zlib-compressed clusters" {
    q2 "$T/src.qcow2" 32M
    io -f qcow2 -c 'write -P 0x11 0 5M' -c 'write -P 0x22 7M 100k' -c 'write -z 1M 64k' "$T/src.qcow2"
    head -c 3M /dev/urandom > "$T/rand"
    io -f qcow2 -c "write -s $T/rand 20M 3M" "$T/src.qcow2"
    qemu-img convert -c -O qcow2 "$T/src.qcow2" "$T/z.qcow2"
    copy_ok "$T/z.qcow2"
}

@test "zstd-compressed clusters" {
    q2 "$T/src.qcow2" 32M
    io -f qcow2 -c 'write -P 0x11 0 5M' -c 'write -P 0x22 7M 100k' "$T/src.qcow2"
    head -c 3M /dev/urandom > "$T/rand"
    io -f qcow2 -c "write -s $T/rand 20M 3M" "$T/src.qcow2"
    qemu-img convert -c -O qcow2 -o compression_type=zstd "$T/src.qcow2" "$T/zs.qcow2"
    copy_ok "$T/zs.qcow2"
    feature "$T/zs.qcow2" "compression=zstd"
}

@test "compressed clusters with 4 KiB and 2 MiB clusters" {
    q2 "$T/src.qcow2" 16M
    io -f qcow2 -c 'write -P 0x11 0 5M' -c 'write -P 0x22 7M 100k' "$T/src.qcow2"
    qemu-img convert -c -O qcow2 -o cluster_size=4k "$T/src.qcow2" "$T/c4k.qcow2"
    copy_ok "$T/c4k.qcow2"
    qemu-img convert -c -O qcow2 -o cluster_size=2M,compression_type=zstd "$T/src.qcow2" "$T/c2m.qcow2"
    copy_ok "$T/c2m.qcow2"
}

@test "extended L2 entries: partially written subclusters over a backing file" {
    qemu-img create -q -f raw "$T/base.raw" 32M
    io -f raw -c 'write -P 0xaa 0 32M' "$T/base.raw"
    q2 -o extended_l2=on,cluster_size=64k -b base.raw -F raw "$T/ext.qcow2" 64M
    io -f qcow2 -c 'write -P 0x11 4k 8k' -c 'write -z 20k 4k' -c 'write -P 0x12 70k 2k' \
        -c 'write -P 0x13 1M 1M' -c 'write -z 3M 64k' -c 'write -z 5M 6k' \
        -c 'write -P 0x14 40M 2k' "$T/ext.qcow2"
    copy_ok "$T/ext.qcow2"
    feature "$T/ext.qcow2" extended_l2
}

@test "extended L2 entries with 2 MiB clusters, no backing" {
    q2 -o extended_l2=on,cluster_size=2M "$T/ext2.qcow2" 64M
    io -f qcow2 -c 'write -P 0x11 4k 8k' -c 'write -z 20k 4k' -c 'write -P 0x13 3M 100k' \
        -c 'write -P 0x14 0 64k' -c 'write -z 32k 16k' "$T/ext2.qcow2"
    copy_ok "$T/ext2.qcow2"
}

@test "internal snapshots: the active layer is copied" {
    q2 "$T/snap.qcow2" 16M
    io -f qcow2 -c 'write -P 0x11 0 4M' "$T/snap.qcow2"
    qemu-img snapshot -c s1 "$T/snap.qcow2"
    io -f qcow2 -c 'write -P 0x22 1M 1M' -c 'write -z 3M 64k' -c 'write -P 0x33 8M 1M' "$T/snap.qcow2"
    qemu-img snapshot -c s2 "$T/snap.qcow2"
    io -f qcow2 -c 'write -P 0x44 8M 64k' "$T/snap.qcow2"
    # clusters still shared with s1 have bit 63 clear: they are data all the same
    copy_ok "$T/snap.qcow2"
}

@test "preallocation=metadata, falloc and full" {
    local p
    for p in metadata falloc full; do
        q2 -o preallocation=$p "$T/pre-$p.qcow2" 16M
        io -f qcow2 -c 'write -P 0x11 1M 1M' -c 'write -z 4M 64k' "$T/pre-$p.qcow2"
        copy_ok "$T/pre-$p.qcow2"
    done
}

@test "cluster sizes 512 B, 4 KiB and 2 MiB" {
    local cs
    for cs in 512 4k 2M; do
        q2 -o cluster_size=$cs "$T/cs$cs.qcow2" 20M
        io -f qcow2 -c 'write -P 0x11 1000k 3M' -c 'write -P 0x12 19M 1M' -c 'write -z 1500k 512' \
            -c 'write -P 0x13 7M 512' "$T/cs$cs.qcow2"
        copy_ok "$T/cs$cs.qcow2"
    done
}

@test "virtual size not a multiple of the cluster size" {
    q2 "$T/odd.qcow2" 1000448
    io -f qcow2 -c 'write -P 0x11 900k 76288' -c 'write -P 0x12 0 512' "$T/odd.qcow2"
    copy_ok "$T/odd.qcow2"
    [ "$(stat -c %s "$T/out.raw")" -eq 1000448 ]
    q2 -o cluster_size=2M "$T/odd2.qcow2" 3146240
    io -f qcow2 -c 'write -P 0x11 3M 512' "$T/odd2.qcow2"
    copy_ok "$T/odd2.qcow2"
}

@test "an image shrunk by qemu-img resize (L1 table larger than the size needs)" {
    q2 "$T/sh.qcow2" 100G
    io -f qcow2 -c 'write -P 0x11 0 1M' -c 'write -P 0x12 1023M 1M' -c 'write -P 0x13 50G 1M' "$T/sh.qcow2"
    qemu-img resize -q --shrink "$T/sh.qcow2" 1G
    copy_ok "$T/sh.qcow2"
}

@test "refcount_bits 1, 8 and 64" {
    local rb
    for rb in 1 8 64; do
        q2 -o refcount_bits=$rb "$T/rb$rb.qcow2" 8M
        io -f qcow2 -c 'write -P 0x11 1M 1M' -c 'write -z 2M 64k' "$T/rb$rb.qcow2"
        copy_ok "$T/rb$rb.qcow2"
    done
}

@test "lazy refcounts, and a dirty image left by a crashed writer" {
    q2 -o lazy_refcounts=on "$T/lazy.qcow2" 8M
    io -f qcow2 -c 'write -P 0x11 1M 1M' "$T/lazy.qcow2"
    feature "$T/lazy.qcow2" lazy_refcounts
    copy_ok "$T/lazy.qcow2"
    q2 -o lazy_refcounts=on "$T/dirty.qcow2" 8M
    qemu-io -f qcow2 -c 'write -P 0x22 1M 2M' -c abort "$T/dirty.qcow2" >/dev/null 2>&1 || true
    feature "$T/dirty.qcow2" dirty
    copy_ok "$T/dirty.qcow2"
}

@test "an image marked corrupt can be read" {
    q2 "$T/c.qcow2" 8M
    io -f qcow2 -c 'write -P 0x11 1M 1M' "$T/c.qcow2"
    python3 "$MKBAD" "$T/c.qcow2" 'incompat|=2'
    feature "$T/c.qcow2" corrupt
    copy_ok "$T/c.qcow2"
}

@test "external data file, named relative to the image" {
    mkdir "$T/d"
    # qemu resolves the data file name against its working directory: work in the image's
    (cd "$T/d" && q2 -o data_file=data.raw ext.qcow2 16M &&
        io -f qcow2 -c 'write -P 0x11 0 64k' -c 'write -P 0x12 1M 1M' -c 'write -z 1536k 64k' ext.qcow2)
    feature "$T/d/ext.qcow2" external_data_file
    cd "$T/d"
    copy_ok ext.qcow2
    cd /
    rm -f "$T/out.raw"
    run "$MI" copy -O raw "$T/d/ext.qcow2" "$T/out.raw"
    assert_success
    cd "$T/d"
    qemu_same ext.qcow2 "$T/out.raw"
}

@test "external data file with data_file_raw and extended L2" {
    cd "$T"
    q2 -o data_file=raw.data,data_file_raw=on rawdf.qcow2 16M
    io -f qcow2 -c 'write -P 0x11 0 1M' rawdf.qcow2
    copy_ok rawdf.qcow2
    q2 -o data_file=ext.data,extended_l2=on extdf.qcow2 16M
    io -f qcow2 -c 'write -P 0x11 0 8k' -c 'write -P 0x12 1M 1M' -c 'write -z 1536k 4k' extdf.qcow2
    copy_ok extdf.qcow2
}

@test "qcow version 1: plain, compressed, with a raw backing file" {
    qemu-img create -q -f qcow "$T/v1.qcow" 64M
    io -f qcow -c 'write -P 0x33 64k 1M' -c 'write -P 0x34 10M 4k' -c 'write -P 0x35 63M 1M' "$T/v1.qcow"
    copy_ok "$T/v1.qcow"
    # (qemu-img 7.2 convert -c -O qcow fails: write compressed clusters with qemu-io)
    qemu-img create -q -f qcow "$T/v1c.qcow" 64M
    head -c 4096 /dev/urandom > "$T/rand"
    io -f qcow -c 'write -c -P 0x33 0 4k' -c 'write -c -P 0x34 8k 4k' -c "write -c -s $T/rand 1M 4k" \
        -c 'write -c -P 0x35 60M 4k' "$T/v1c.qcow"
    copy_ok "$T/v1c.qcow"
    qemu-img create -q -f raw "$T/base.raw" 32M
    io -f raw -c 'write -P 0xaa 0 32M' "$T/base.raw"
    qemu-img create -q -f qcow -b base.raw -F raw "$T/v1b.qcow" 64M
    io -f qcow -c 'write -P 0x33 64k 1M' -c 'write -P 0x36 20M 1000' "$T/v1b.qcow"
    copy_ok "$T/v1b.qcow"
    run "$MI" info "$T/v1b.qcow"
    assert_output --partial "format: qcow"
}

@test "legacy AES-encrypted qcow2 and qcow v1, with --password-file" {
    local s="secret,id=sec0,data=PASSWORD" img
    printf 'PASSWORD\n' > "$T/pw"
    q2 --object $s -o encrypt.format=aes,encrypt.key-secret=sec0 "$T/aes.qcow2" 64M
    qemu-img create -q -f raw "$T/base.raw" 16M
    io -f raw -c 'write -P 0xaa 0 16M' "$T/base.raw"
    q2 --object $s -o encrypt.format=aes,encrypt.key-secret=sec0 -b base.raw -F raw \
        "$T/aesb.qcow2" 64M
    qemu-img create -q -f qcow --object $s -o encrypt.format=aes,encrypt.key-secret=sec0 \
        "$T/aes1.qcow" 64M
    for img in aes.qcow2:qcow2 aesb.qcow2:qcow2 aes1.qcow:qcow; do
        qemu-io --object $s --image-opts "driver=${img#*:},file.filename=$T/${img%:*},encrypt.key-secret=sec0" \
            -c 'write -P 0x5a 0 1M' -c 'write -P 0x5b 5M 100k' -c 'write -P 0x5c 8M 64k' >/dev/null
        [ "${img#*:}" = qcow ] || qemu-io --object $s --image-opts \
            "driver=qcow2,file.filename=$T/${img%:*},encrypt.key-secret=sec0" -c 'write -z 8M 64k' >/dev/null
        qemu-img convert --object $s --image-opts \
            "driver=${img#*:},file.filename=$T/${img%:*},encrypt.key-secret=sec0" -O raw "$T/ref.raw"
        rm -f "$T/out.raw" "$T/out.qcow2"
        run "$MI" copy -O raw --password-file "$T/pw" "$T/${img%:*}" "$T/out.raw"
        assert_success
        cmp "$T/ref.raw" "$T/out.raw"
        run "$MI" copy -O qcow2 --password-file "$T/pw" "$T/${img%:*}" "$T/out.qcow2"
        assert_success
        qemu_same "$T/ref.raw" "$T/out.qcow2"
        qcow2_ok "$T/out.qcow2"
    done
}

@test "--sync=top copies only the top layer's allocation" {
    cd "$T"
    qemu-img create -q -f raw base.raw 16M
    io -f raw -c 'write -P 0xaa 0 16M' base.raw
    q2 -b base.raw -F raw top.qcow2 16M
    io -f qcow2 -c 'write -P 0x11 1M 1M' -c 'write -z 4M 64k' top.qcow2
    # info opens the top layer alone: only its own 1 MiB of data is allocated
    run "$MI" info top.qcow2
    assert_line "allocated: 1.0 MiB"
    run "$MI" copy -O qcow2 --sync=top top.qcow2 out.qcow2
    assert_success
    qemu_same top.qcow2 out.qcow2
    qcow2_ok out.qcow2
    # base data is not copied: out.qcow2 allocates the 1 MiB and the zero cluster only
    run qemu-img map --output=json out.qcow2
    assert_output --regexp '"start": 1048576, "length": 1048576, "depth": 0, "present": true, "zero": false, "data": true'
    assert_output --regexp '"start": 0, "length": 1048576, "depth": 1'
    assert_output --regexp '"start": 4194304, "length": 65536, "depth": 0, "present": true, "zero": true'
}

@test "a chain through an image larger than the L2 cache (4 KiB clusters, 10 GiB), 4 threads" {
    python3 - "$T/sp.raw" <<'EOF'
import os, sys
with open(sys.argv[1], 'wb') as f:
    f.truncate(10 << 30)
    for i in range(0, 10 << 30, 2 << 20):
        f.seek(i + (i >> 20) % 7 * 512)
        f.write(os.urandom(4096))
EOF
    qemu-img convert -O qcow2 -o cluster_size=4k "$T/sp.raw" "$T/sp.qcow2"
    rm -f "$T/sp.raw"
    run "$MI" copy -O raw -j 4 "$T/sp.qcow2" "$T/out.raw"
    assert_success
    qemu_same "$T/sp.qcow2" "$T/out.raw"
}

@test "contiguous clusters are read with few system calls" {
    requires strace
    q2 "$T/big.qcow2" 64M
    io -f qcow2 -c 'write -P 0x11 0 64M' "$T/big.qcow2"
    # (LeakSanitizer cannot run under ptrace)
    ASAN_OPTIONS=detect_leaks=0 run strace -f -c -e trace=pread64 -o "$T/st" "$MI" copy -O raw "$T/big.qcow2" "$T/out.raw"
    assert_success
    qemu_same "$T/big.qcow2" "$T/out.raw"
    # one pread per 64 KiB cluster would be 1024 of them
    local n
    n=$(awk '$NF == "pread64" { print $4 }' "$T/st")
    [ -n "$n" ] && [ "$n" -lt 200 ]
}
