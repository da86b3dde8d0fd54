#!/bin/bash
# nbd.sh [REPS] (run by make bench): 1 GiB raw image, half data (1 MiB data / 1 MiB hole alternating),
# copied to a fresh `nbdkit --filter=delay memory 1G wdelay=1ms rdelay=1ms` on a Unix socket.
# mirror-img (default options, and -j 8) against `nbdcopy SRC URI`; interleaved; medians.
set -u
MI=${MI:-$(cd "$(dirname "$0")/../.." && pwd)/build/mirror-img}
reps=${1:-3}
dir=$(mktemp -d /tmp/nbd-bench.XXXXXX)
trap 'rm -rf "$dir"' EXIT
python3 - "$dir/src.raw" <<'PY'
import os, sys
with open(sys.argv[1], "wb") as f:
    f.truncate(1 << 30)
    for i in range(0, 1024, 2):
        f.seek(i << 20); f.write(os.urandom(1 << 20))
PY
one() { # one LABEL CMD...: print elapsed ms of CMD SRC URI against a fresh server
    local s=$dir/m.sock t0 t1
    rm -f "$s" "$s.pid"
    nice -n -15 nbdkit -f -U "$s" -P "$s.pid" --filter=delay memory 1G wdelay=1ms rdelay=1ms \
        </dev/null >/dev/null 2>&1 3>&- &
    for _ in $(seq 100); do [ -S "$s" ] && [ -s "$s.pid" ] && break; sleep 0.05; done
    t0=$(date +%s%N)
    nice -n -15 "$@" "$dir/src.raw" "nbd+unix:///?socket=$s" || echo "FAILED: $*" >&2
    t1=$(date +%s%N)
    kill "$(cat "$s.pid")"; wait
    echo $(( (t1 - t0) / 1000000 ))
}
declare -A res
variants=("nbdcopy|nbdcopy" "mirror-img|$MI copy" "mirror-img -j 4|$MI copy -j 4")
for _ in $(seq "$reps"); do
    for v in "${variants[@]}"; do res[${v%%|*}]+="$(one ${v#*|}) "; done
done
for v in "${variants[@]}"; do
    l=${v%%|*}
    med=$(tr ' ' '\n' <<<"${res[$l]}" | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    echo "$l: median ${med} ms (runs: ${res[$l]})"
done
