#!/usr/bin/env bash
# seeds.sh OUTDIR: make the seed corpora of the fuzz harnesses (tests/fuzz/fuzz-*.c):
#   OUTDIR/qcow2/    images made by qemu-img and qemu-io: v2, v3, v1 (qcow), cluster sizes
#                    from 512 B, compression (zlib, zstd), extended L2, zero clusters,
#                    discards, backing files, snapshots, an external data file, refcount
#                    widths, preallocation; virtual sizes of a few MiB so files stay small
#   OUTDIR/journal/  journals made by `mirror-img run` (and one used by `follow`), with the
#                    smallest layout (64 chunks: 155648 bytes)
#   OUTDIR/json/     control requests
# Backing and data file names are "base.qcow2" and "base.raw": fuzz-qcow2 provides files
# of those names beside the image.  MI: the mirror-img binary (default build/mirror-img).
set -eu
out=${1:?usage: seeds.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
top=$(cd "$(dirname "$0")/../.." && pwd)
MI=${MI:-$top/build/mirror-img}
export MIRROR_IMG_SHIM=${MIRROR_IMG_SHIM:-$(dirname "$MI")/mirror-img-shim.so}
mkdir -p "$out/qcow2" "$out/journal" "$out/json"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"

q() { qemu-img "$@" >/dev/null; }
io() { # io FMT IMG CMD...: qemu-io commands
    local fmt=$1 img=$2 a=()
    shift 2
    for c in "$@"; do a+=(-c "$c"); done
    qemu-io -f "$fmt" "${a[@]}" "$img" >/dev/null
}
keep() { cp "$1" "$out/qcow2/$2"; }

if command -v qemu-img >/dev/null && command -v qemu-io >/dev/null; then
    head -c 262144 /dev/urandom > base.raw
    q create -f qcow2 -o cluster_size=4096 base.qcow2 1M
    io qcow2 base.qcow2 'write -P 0x5a 0 64k' 'write -P 0x11 512k 4k'

    # version 3, several cluster sizes, data, zero clusters, discards
    for cs in 512 4096 65536; do
        q create -f qcow2 -o cluster_size=$cs v3.qcow2 2M
        io qcow2 v3.qcow2 'write -P 0xab 0 8k' 'write -z 64k 16k' 'write -P 0xcd 1M 4k' \
            'discard 1M 4k' 'write -P 0x01 2040k 8k'
        keep v3.qcow2 v3-c$cs.qcow2
    done
    # version 2 (compat 0.10): no zero flag
    q create -f qcow2 -o compat=0.10,cluster_size=4096 v2.qcow2 2M
    io qcow2 v2.qcow2 'write -P 0x22 4k 12k' 'write -z 64k 4k'
    keep v2.qcow2 v2.qcow2
    # compressed clusters, zlib and zstd
    head -c 65536 /dev/urandom > data.raw
    yes mirror-img | head -c 196608 >> data.raw
    truncate -s 1M data.raw
    for ct in zlib zstd; do
        q convert -c -f raw -O qcow2 -o cluster_size=4096,compression_type=$ct data.raw c-$ct.qcow2
        keep c-$ct.qcow2 compressed-$ct.qcow2
    done
    q convert -c -f raw -O qcow2 -o compat=0.10,cluster_size=4096 data.raw c-v2.qcow2
    keep c-v2.qcow2 compressed-v2.qcow2
    # extended L2 entries: subclusters (16 KiB clusters: 512-byte subclusters)
    q create -f qcow2 -o extended_l2=on,cluster_size=16384 e.qcow2 2M
    io qcow2 e.qcow2 'write -P 0x33 0 512' 'write -P 0x44 4k 1k' 'write -z 8k 2k' \
        'write -P 0x55 1M 16k' 'discard 1M 512'
    keep e.qcow2 extl2.qcow2
    q create -f qcow2 -o extended_l2=on,cluster_size=32768,compression_type=zstd e2.qcow2 1M
    io qcow2 e2.qcow2 'write -c -P 0x66 0 32k' 'write -P 0x77 64k 1k'
    keep e2.qcow2 extl2-compressed.qcow2
    # backing files (raw and qcow2), with and without the format extension
    q create -f qcow2 -o cluster_size=4096 -b base.raw -F raw b-raw.qcow2 1M
    io qcow2 b-raw.qcow2 'write -P 0x88 8k 4k'
    keep b-raw.qcow2 backing-raw.qcow2
    q create -f qcow2 -o cluster_size=4096 -b base.qcow2 -F qcow2 b-q.qcow2 1M
    io qcow2 b-q.qcow2 'write -P 0x99 0 4k' 'write -z 512k 4k'
    keep b-q.qcow2 backing-qcow2.qcow2
    q create -f qcow2 -o compat=0.10,cluster_size=4096 -b base.qcow2 -F qcow2 b-nofmt.qcow2 1M
    # no backing format extension (older qemu-img wrote such images): the reader probes
    python3 -c 'import sys; p = sys.argv[1]; b = bytearray(open(p, "rb").read())
i = b.find(bytes.fromhex("e2792aca"), 0, 4096); b[i:i + 4] = bytes(4); open(p, "wb").write(b)' b-nofmt.qcow2
    keep b-nofmt.qcow2 backing-noformat-v2.qcow2
    # snapshots
    q create -f qcow2 -o cluster_size=4096 s.qcow2 1M
    io qcow2 s.qcow2 'write -P 0x10 0 8k'
    q snapshot -c one s.qcow2
    io qcow2 s.qcow2 'write -P 0x20 4k 8k'
    q snapshot -c two s.qcow2
    keep s.qcow2 snapshots.qcow2
    # refcount widths, lazy refcounts, preallocation
    q create -f qcow2 -o cluster_size=4096,refcount_bits=1,lazy_refcounts=on r1.qcow2 1M
    io qcow2 r1.qcow2 'write -P 0x31 0 4k'
    keep r1.qcow2 refcount1-lazy.qcow2
    q create -f qcow2 -o cluster_size=4096,refcount_bits=64,preallocation=metadata r64.qcow2 256k
    keep r64.qcow2 refcount64-prealloc.qcow2
    # an external data file
    cp base.raw d.raw
    q create -f qcow2 -o cluster_size=4096,data_file=base.raw,data_file_raw=on df.qcow2 256k
    io qcow2 df.qcow2 'write -P 0x42 0 4k'
    keep df.qcow2 data-file.qcow2
    cp d.raw base.raw
    # qcow version 1
    q create -f qcow v1.qcow 1M
    io qcow v1.qcow 'write -P 0x61 0 4k'
    keep v1.qcow v1.qcow
    # a larger virtual size than the file by far
    q create -f qcow2 -o cluster_size=65536 big.qcow2 64G
    io qcow2 big.qcow2 'write -P 0x71 0 4k' 'write -P 0x72 63G 4k'
    keep big.qcow2 big-sparse.qcow2
else
    echo "seeds.sh: qemu-img/qemu-io missing: no qcow2 seeds" >&2
fi

if [ -x "$MI" ]; then
    truncate -s 2M src.raw
    "$MI" run --journal j1 -g 1G src.raw -- true
    cp j1 "$out/journal/fresh"
    "$MI" run --journal j2 -g 512 --max-size 2M src.raw -- \
        dd if=/dev/urandom of=src.raw bs=4k count=8 seek=16 conv=notrunc status=none
    "$MI" run --journal j2 src.raw -- \
        dd if=/dev/urandom of=src.raw bs=512 count=3 seek=1000 conv=notrunc status=none
    cp j2 "$out/journal/written"
    "$MI" run --journal j3 -g 32K --max-size 2M src.raw -- \
        sh -c 'dd if=/dev/zero of=src.raw bs=64k count=2 conv=notrunc status=none; truncate -s 2M src.raw'
    "$MI" follow --journal j3 src.raw dst.raw 2>/dev/null &
    f=$!
    for _ in $(seq 50); do [ -S j3.sock ] && break; sleep 0.1; done
    sleep 0.5
    "$MI" complete j3.sock >/dev/null 2>&1 || true
    wait $f || true
    cp j3 "$out/journal/followed"
else
    echo "seeds.sh: $MI missing: no journal seeds" >&2
fi

i=0
while IFS= read -r line; do
    i=$((i + 1))
    printf '%s' "$line" > "$out/json/req$i"
done <<'JSON'
{"execute": "query-block-jobs"}
{"execute": "job-complete", "arguments": {"pivot": true}}
{"execute": "job-complete", "arguments": {}}
{"execute": "block-job-set-speed", "arguments": {"device": "dst.raw", "speed": 1048576}}
{"execute": "job-pause", "id": 7}
{"execute": "job-resume", "id": "a\"b\\c\u0041"}
{"execute":"job-cancel","arguments":{"force":false,"x":null,"y":-1.5e3}}
 { "arguments" : { "a" : "\n\t\r\b\f\/" } , "execute" : "x" } 
JSON
