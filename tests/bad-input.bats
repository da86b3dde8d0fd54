#!/usr/bin/env bats
# bad-input.bats: damaged or unsupported source images are refused with exit status 1 and
# a message naming the image and the problem, before any target file exists.
# The damage is done by tests/images/mkbad.py on images made by qemu-img and qemu-io.

load helpers

MKBAD=$BATS_TEST_DIRNAME/images/mkbad.py

setup() {
    requires qemu-img qemu-io python3
}

bad() { python3 "$MKBAD" "$@"; }

# img [QEMU-IMG CREATE OPTION...]: $T/b.qcow2, 16 MiB, with 1 MiB of data at 0
img() {
    qemu-img create -q -f qcow2 "$@" "$T/b.qcow2" 16M
    qemu-io -f qcow2 -c 'write -P 0x11 0 1M' "$T/b.qcow2" >/dev/null
}

# refused IMG MESSAGE [COPY OPTION...]: copying IMG fails with status 1 and MESSAGE (an
# extended regular expression), to a raw and to a qcow2 target, leaving neither behind.
refused() {
    local src=$1 msg=$2 fmt
    shift 2
    for fmt in raw qcow2; do
        run "$MI" copy -O $fmt "$@" "$src" "$T/out.$fmt"
        assert_failure 1
        assert_output --regexp "^mirror-img: .*$msg"
        [ ! -e "$T/out.$fmt" ]
    done
}

@test "not a qcow2 file read as qcow2: bad magic" {
    head -c 1M /dev/zero > "$T/plain"
    refused "$T/plain" "plain: not a qcow2 image \(bad magic\)" -f qcow2
}

@test "unsupported version" {
    img
    bad "$T/b.qcow2" version=4
    refused "$T/b.qcow2" "b.qcow2: unsupported qcow2 version 4"
}

@test "truncated header (v2 and v3)" {
    img
    bad "$T/b.qcow2" truncate=50
    refused "$T/b.qcow2" "b.qcow2: truncated header \(50 bytes\)"
    img
    bad "$T/b.qcow2" truncate=90
    refused "$T/b.qcow2" "b.qcow2: truncated header \(90 bytes\)"
}

@test "invalid header length" {
    img
    bad "$T/b.qcow2" header_length=100
    refused "$T/b.qcow2" "b.qcow2: header length 100 is invalid"
    img
    bad "$T/b.qcow2" header_length=0x20000
    refused "$T/b.qcow2" "b.qcow2: header length 131072 is invalid"
}

@test "cluster_bits out of range, and too small for extended L2 entries" {
    img
    bad "$T/b.qcow2" cluster_bits=8
    refused "$T/b.qcow2" "b.qcow2: cluster_bits 8 is out of range \(9..21\)"
    img
    bad "$T/b.qcow2" cluster_bits=22
    refused "$T/b.qcow2" "b.qcow2: cluster_bits 22 is out of range \(9..21\)"
    img -o extended_l2=on,cluster_size=16k
    bad "$T/b.qcow2" cluster_bits=13
    refused "$T/b.qcow2" "b.qcow2: extended L2 entries need a cluster size of at least 16 KiB"
}

@test "refcount_order above 6" {
    img
    bad "$T/b.qcow2" refcount_order=7
    refused "$T/b.qcow2" "b.qcow2: refcount_order 7 is invalid \(at most 6\)"
}

@test "unknown incompatible feature bits are named" {
    img
    bad "$T/b.qcow2" 'incompat|=0x80'
    refused "$T/b.qcow2" "b.qcow2: unknown incompatible feature bit 7"
    img
    bad "$T/b.qcow2" 'incompat|=0x8000000000000020'
    refused "$T/b.qcow2" "b.qcow2: unknown incompatible feature bit 5"
}

@test "unknown compression type, or a type the feature bit does not announce" {
    img
    bad "$T/b.qcow2" compression_type=2 'incompat|=8'
    refused "$T/b.qcow2" "b.qcow2: unknown compression type 2"
    img
    bad "$T/b.qcow2" compression_type=1
    refused "$T/b.qcow2" "b.qcow2: the compression type \(1\) and the compression type feature bit disagree"
}

@test "LUKS encryption is refused" {
    # (qemu-img's LUKS key derivation benchmark is slow and flaky here: set the method)
    img
    bad "$T/b.qcow2" crypt_method=2
    printf 'x\n' > "$T/pw"
    refused "$T/b.qcow2" "b.qcow2: LUKS encryption is not supported"
    refused "$T/b.qcow2" "b.qcow2: LUKS encryption is not supported" --password-file "$T/pw"
    img
    bad "$T/b.qcow2" crypt_method=3
    refused "$T/b.qcow2" "b.qcow2: unknown encryption method 3"
}

@test "AES-encrypted images need --password-file" {
    qemu-img create -q -f qcow2 --object secret,id=sec0,data=PW \
        -o encrypt.format=aes,encrypt.key-secret=sec0 "$T/aes.qcow2" 16M
    refused "$T/aes.qcow2" "aes.qcow2: image is encrypted \(AES\); give --password-file"
    qemu-img create -q -f qcow --object secret,id=sec0,data=PW \
        -o encrypt.format=aes,encrypt.key-secret=sec0 "$T/aes.qcow" 16M
    refused "$T/aes.qcow" "aes.qcow: image is encrypted \(AES\); give --password-file"
    refused "$T/aes.qcow" "aes.qcow: cannot open the password file $T/nopw" --password-file "$T/nopw"
}

@test "L1 table unaligned or beyond the end of the file" {
    img
    bad "$T/b.qcow2" l1_offset=0x30200
    refused "$T/b.qcow2" "b.qcow2: L1 table offset 0x30200 is not aligned"
    img
    bad "$T/b.qcow2" l1_offset=0x9000000
    refused "$T/b.qcow2" "b.qcow2: L1 table at 0x9000000 lies beyond the end of the file"
}

@test "L1 table too small for the virtual size, or absurdly large" {
    img
    bad "$T/b.qcow2" l1_size=0
    refused "$T/b.qcow2" "b.qcow2: L1 table has 0 entries, too few for the virtual size 16777216"
    img
    bad "$T/b.qcow2" size=0x100000000
    refused "$T/b.qcow2" "b.qcow2: L1 table has 1 entries, too few for the virtual size 4294967296 \(8 needed\)"
    img
    bad "$T/b.qcow2" l1_size=0x1000000
    refused "$T/b.qcow2" "b.qcow2: L1 table has 16777216 entries \(more than 32 MiB\)"
}

@test "backing file name too long or beyond the end of the file" {
    img
    bad "$T/b.qcow2" backing_offset=0x200 backing_size=1024
    refused "$T/b.qcow2" "b.qcow2: backing file name is 1024 bytes long \(at most 1023\)"
    img
    bad "$T/b.qcow2" backing_offset=0x9000000 backing_size=10
    refused "$T/b.qcow2" "b.qcow2: backing file name at 0x9000000 lies beyond the end of the file"
}

@test "L2 table beyond the end of the file or unaligned" {
    img
    bad "$T/b.qcow2" 'l1[0]=0x8000000005000000'
    refused "$T/b.qcow2" "b.qcow2: L2 table at 0x5000000 lies beyond the end of the file"
    # (qemu-img silently reads zeros there)
    img
    bad "$T/b.qcow2" 'l1[0]=0x8000000000030200'
    refused "$T/b.qcow2" "b.qcow2: L2 table at 0x30200 is not aligned"
}

@test "a broken L2 table far into the image: refused before writing, no new target left, an existing one (-n) untouched" {
    qemu-img create -q -f qcow2 "$T/b.qcow2" 1G
    qemu-io -f qcow2 -c 'write -P 0x11 0 4M' -c 'write -P 0x22 768M 1M' "$T/b.qcow2" >/dev/null
    bad "$T/b.qcow2" 'l1[1]=0x8000000005000000'
    refused "$T/b.qcow2" "b.qcow2: L2 table at 0x5000000 lies beyond the end of the file"
    truncate -s 1G "$T/t.raw"
    head -c 4M /dev/urandom | dd of="$T/t.raw" conv=notrunc status=none
    before=$(sha256sum < "$T/t.raw")
    run "$MI" copy -n -O raw "$T/b.qcow2" "$T/t.raw"
    assert_failure 1
    assert_output --regexp "^mirror-img: .*b.qcow2: L2 table at 0x5000000 lies beyond the end of the file"
    [ "$(sha256sum < "$T/t.raw")" = "$before" ]
}

@test "data cluster beyond the end of the file or unaligned" {
    img
    bad "$T/b.qcow2" 'l2[0x10000]=0x8000000007000000'
    refused "$T/b.qcow2" "b.qcow2: data cluster at 0x7000000 \(guest offset 0x10000\) lies beyond the end of the file"
    img
    bad "$T/b.qcow2" 'l2[0x10000]=0x8000000000070200'
    refused "$T/b.qcow2" "b.qcow2: data cluster at 0x70200 \(guest offset 0x10000\) is not cluster-aligned"
}

@test "compressed cluster beyond the end of the file" {
    img
    qemu-img convert -c -O qcow2 "$T/b.qcow2" "$T/c.qcow2"
    bad "$T/c.qcow2" 'l2[0x10000]=0x4000000007000000'
    refused "$T/c.qcow2" "c.qcow2: compressed cluster at 0x7000000 \(guest offset 0x10000\) lies beyond the end of the file"
}

@test "L2 entries with reserved bits, and subclusters both allocated and zero" {
    img
    bad "$T/b.qcow2" 'l2[0x10000]=0x8000000000070002'
    refused "$T/b.qcow2" "b.qcow2: invalid L2 entry 0x8000000000070002 for guest offset 0x10000"
    qemu-img create -q -f qcow2 -o extended_l2=on "$T/e.qcow2" 16M
    qemu-io -f qcow2 -c 'write -P 1 0 4k' "$T/e.qcow2" >/dev/null
    bad "$T/e.qcow2" 'l2bm[0]=0x100000001'
    refused "$T/e.qcow2" "e.qcow2: invalid L2 entry 0x[0-9a-f]+ for guest offset 0x0"
}

@test "header extension overruns the header" {
    img
    bad "$T/b.qcow2" 'ext[0x6803f857].len=0x100000'
    refused "$T/b.qcow2" "b.qcow2: header extension 0x6803f857 at offset 112 \(length 1048576\) overruns the header"
}

@test "compressed data that does not inflate to a cluster (zlib and zstd)" {
    img
    qemu-img convert -c -O qcow2 "$T/b.qcow2" "$T/z.qcow2"
    bad "$T/z.qcow2" 'garble[0x10000]=64'
    refused "$T/z.qcow2" "z.qcow2: compressed cluster at host offset 0x[0-9a-f]+ \(guest offset 0x10000\) does not inflate to exactly one cluster"
    qemu-img convert -c -O qcow2 -o compression_type=zstd "$T/b.qcow2" "$T/zs.qcow2"
    bad "$T/zs.qcow2" 'garble[0x10000]=64'
    refused "$T/zs.qcow2" "zs.qcow2: compressed cluster at host offset 0x[0-9a-f]+ \(guest offset 0x10000\)"
}

@test "backing chain loops are refused (qemu-img hangs on them)" {
    cd "$T"
    qemu-img create -q -f qcow2 a.qcow2 16M
    qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 b.qcow2
    qemu-img rebase -u -b b.qcow2 -F qcow2 a.qcow2
    refused b.qcow2 "b.qcow2: backing chain loops: b.qcow2 -> a.qcow2 -> b.qcow2"
    qemu-img create -q -f qcow2 self.qcow2 16M
    qemu-img rebase -u -b self.qcow2 -F qcow2 self.qcow2
    refused self.qcow2 "self.qcow2: backing chain loops: self.qcow2 -> self.qcow2"
    # also through another name for the same file
    ln -s self.qcow2 link.qcow2
    qemu-img rebase -u -b link.qcow2 -F qcow2 self.qcow2
    refused "$T/self.qcow2" "self.qcow2: backing chain loops: $T/self.qcow2 -> $T/link.qcow2"
}

@test "a backing chain longer than 64 images is refused" {
    cd "$T"
    local i
    qemu-img create -q -f qcow2 c0.qcow2 1M
    for i in $(seq 1 66); do
        qemu-img create -q -f qcow2 -b c$((i - 1)).qcow2 -F qcow2 c$i.qcow2
    done
    run "$MI" copy -O raw c60.qcow2 "$T/out.raw"
    assert_success
    rm -f "$T/out.raw"
    refused c66.qcow2 "c66.qcow2: backing chain is longer than 64 images"
}

@test "a missing backing file is named" {
    cd "$T"
    qemu-img create -q -f qcow2 -u -b missing.qcow2 -F qcow2 m.qcow2 16M
    refused m.qcow2 "m.qcow2: cannot open the backing file missing.qcow2: No such file or directory"
    mkdir d
    qemu-img create -q -f qcow2 -u -b gone.raw -F raw d/m.qcow2 16M
    refused d/m.qcow2 "d/m.qcow2: cannot open the backing file d/gone.raw: No such file or directory"
}

@test "backing files with a protocol prefix are refused" {
    cd "$T"
    local b
    for b in nbd:127.0.0.1:10809 'json:{"file.driver":"file","file.filename":"/etc/passwd"}' \
             file:/etc/passwd; do
        qemu-img create -q -f qcow2 -u -b "$b" -F raw p.qcow2 16M
        refused p.qcow2 "p.qcow2: backing file '.*' is not a local file name \(protocols are not supported\)"
        rm -f p.qcow2
    done
}

@test "--no-backing refuses any backing chain" {
    cd "$T"
    qemu-img create -q -f raw base.raw 16M
    qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2 16M
    refused top.qcow2 "top.qcow2: the image has a backing file \(base.raw\) and backing files are not allowed" \
        --no-backing
}

@test "external data file missing, or not named" {
    cd "$T"
    qemu-img create -q -f qcow2 -o data_file=data.raw df.qcow2 16M
    mv data.raw elsewhere.raw
    refused df.qcow2 "df.qcow2: cannot open the external data file data.raw: No such file or directory"
    bad df.qcow2 'ext[0x44415441].type=0x12345678'
    refused df.qcow2 "df.qcow2: the image uses an external data file but does not name it"
}
