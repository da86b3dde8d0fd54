#!/usr/bin/env bash
# journal.sh [ROUNDS] (run by make bench): the journal's figures.
#  - incremental: copy --incremental of a 2 GiB image (half data) in full, then again after
#    a writer under the shim changed 1% of it (20 MiB in 64 KiB writes at random places);
#    the ratio of the two times (target: at most 5%).
#  - downtime: `complete` on a 256 MiB image while a writer writes steadily under the shim
#    (target: writers held at most 20 ms); median of ROUNDS.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
MI=${MI:-$top/build/mirror-img}
export MIRROR_IMG_SHIM=${MIRROR_IMG_SHIM:-$top/build/mirror-img-shim.so}
rounds=${1:-3}
dir=$(mktemp -d "${BENCH_TMPFS:-/dev/shm}/mi-journal.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
ms() { echo $(( ($2 - $1) / 1000000 )); }
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

python3 - "$dir/src.raw" <<'PY'
import os, sys
with open(sys.argv[1], "wb") as f:
    f.truncate(2 << 30)
    for i in range(0, 2048, 2):
        f.seek(i << 20); f.write(os.urandom(1 << 20))
PY
full= inc=
for r in $(seq "$rounds"); do
    rm -f "$dir/dst.raw" "$dir/j"
    t0=$(date +%s%N); "$MI" copy -q --incremental --journal "$dir/j" "$dir/src.raw" "$dir/dst.raw"; t1=$(date +%s%N)
    full+="$(ms "$t0" "$t1") "
    "$MI" run --journal "$dir/j" "$dir/src.raw" -- python3 - "$dir/src.raw" <<'PY'
import os, random, sys
fd = os.open(sys.argv[1], os.O_RDWR)
r = random.Random(1)
for _ in range(320):                      # 320 x 64 KiB = 20 MiB = 1% of 2 GiB
    os.pwrite(fd, os.urandom(65536), r.randrange(32768) * 65536)
PY
    t0=$(date +%s%N); "$MI" copy -q --incremental --journal "$dir/j" "$dir/src.raw" "$dir/dst.raw"; t1=$(date +%s%N)
    inc+="$(ms "$t0" "$t1") "
    cmp "$dir/src.raw" "$dir/dst.raw"
done
f=$(median <<<"$full") i=$(median <<<"$inc")
echo "incremental: full copy median ${f} ms (${full}), after 1% changed median ${i} ms (${inc}): $(( 100 * i / (f ? f : 1) ))% of a full copy (target <= 5%)"

rm -f "$dir/src.raw" "$dir/dst.raw" "$dir/j"
truncate -s 256M "$dir/src.raw"
dd if=/dev/urandom of="$dir/src.raw" bs=1M count=128 conv=notrunc status=none
downs=
for r in $(seq "$rounds"); do
    rm -f "$dir/dst.raw" "$dir/j" "$dir/stop"
    "$MI" follow --json --journal "$dir/j" "$dir/src.raw" "$dir/dst.raw" > "$dir/ev" &
    f=$!
    for _ in $(seq 200); do grep -q BLOCK_JOB_READY "$dir/ev" && break; sleep 0.05; done
    "$MI" run --journal "$dir/j" "$dir/src.raw" -- python3 - "$dir/src.raw" "$dir/stop" <<'PY' &
import os, random, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
r = random.Random(2)
while not os.path.exists(sys.argv[2]):      # steady: about 4 MiB/s of 4 KiB writes
    os.pwrite(fd, os.urandom(4096), r.randrange(65536) * 4096)
    time.sleep(0.001)
PY
    w=$!
    sleep 1
    d=$("$MI" complete "$dir/j.sock" | sed -n 's/^downtime_ms: //p')
    wait $f
    touch "$dir/stop"; wait $w
    downs+="$d "
done
echo "complete: writers held median $(median <<<"$downs") ms (runs: ${downs}) on a 256 MiB image under steady writing (target <= 20 ms)"
