#!/usr/bin/env bash
# bench-shim.sh [RUNS] [SECONDS]: the shim's cost to a writer.  fio, 4k random pwrite (psync)
# on tmpfs, alternating runs without and with the shim (through `mirror-img run`); prints
# each run and the medians.  Figures, not a test: run it on a quiet machine.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
MI=${MI:-$top/build/mirror-img}
export MIRROR_IMG_SHIM=${MIRROR_IMG_SHIM:-$top/build/mirror-img-shim.so}
runs=${1:-3} secs=${2:-10}
dir=$(mktemp -d /dev/shm/mi-bench.XXXXXX)
trap 'rm -rf "$dir"' EXIT
truncate -s 256M "$dir/disk.raw"
iops() {
    "$@" fio --name=bench --filename="$dir/disk.raw" --ioengine=psync --rw=randwrite --bs=4k \
        --size=256M --time_based --runtime="$secs" --direct=0 --output-format=json |
        python3 -c 'import json,sys; print(int(json.load(sys.stdin)["jobs"][0]["write"]["iops"]))'
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
plain=() shim=()
for i in $(seq "$runs"); do
    p=$(iops env)
    s=$(iops "$MI" run --journal "$dir/j" "$dir/disk.raw" --)
    plain+=("$p") shim+=("$s")
    echo "run $i: without shim $p IOPS, with shim $s IOPS"
done
mp=$(median "${plain[@]}") ms=$(median "${shim[@]}")
echo "median: without shim $mp IOPS, with shim $ms IOPS ($(python3 -c "print(f'{100*(1-$ms/$mp):.1f}')")% cost)"
"$MI" journal status "$dir/j" | sed -n '/dirty/p;/written/p'
