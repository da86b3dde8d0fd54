#!/usr/bin/env bash
# bench-shim.sh [RUNS] [SECONDS]: the shim's cost to a writer.  fio, 4k random pwrite (psync)
# on tmpfs, alternating runs without and with the shim (through `mirror-img run`); prints
# each run and the medians.  Then, with FOLLOW=1 (the default), the same alternation while
# `mirror-img follow` drains the image into a target on the same tmpfs: the writer's IOPS
# with the shim and a concurrent follower, against plain runs of that phase (on another
# file of the same size: a write behind the shim's back would cost the follower a full
# pass).
# Figures, not a test: run it on a quiet machine.
#   MIRROR_IMG_SHIM=PATH   the shim to measure (default: build/mirror-img-shim.so)
#   BASE_SHIM=PATH         also measure this shim (an older build) in the same alternation
#   FOLLOW=0               skip the follow phase
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
MI=${MI:-$top/build/mirror-img}
shim_new=${MIRROR_IMG_SHIM:-$top/build/mirror-img-shim.so}
base=${BASE_SHIM:-}
runs=${1:-3} secs=${2:-10}
dir=$(mktemp -d /dev/shm/mi-bench.XXXXXX)
fpid=
cleanup() {
    [ -z "$fpid" ] || kill "$fpid" 2>/dev/null || true
    [ -z "$fpid" ] || wait "$fpid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
truncate -s 256M "$dir/disk.raw" "$dir/other.raw"
plain_file=disk.raw
iops() {
    local f=disk.raw
    [ "$1" != env ] || f=$plain_file
    "$@" fio --name=bench --filename="$dir/$f" --ioengine=psync --rw=randwrite --bs=4k \
        --size=256M --time_based --runtime="$secs" --direct=0 --output-format=json |
        python3 -c 'import json,sys; print(int(json.load(sys.stdin)["jobs"][0]["write"]["iops"]))'
}
with_shim() { MIRROR_IMG_SHIM=$1; export MIRROR_IMG_SHIM; shift; "$MI" run --journal "$dir/j" "$dir/disk.raw" -- "$@"; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
pct() { python3 -c "print(f'{100*($1)/($2):.1f}')"; }

# phase LABEL: RUNS alternations of plain / shim (/ base shim); sets mp ms mb
phase() {
    local plain=() shim=() old=() p s b
    for i in $(seq "$runs"); do
        p=$(iops env)
        s=$(iops with_shim "$shim_new")
        plain+=("$p") shim+=("$s")
        if [ -n "$base" ]; then
            b=$(iops with_shim "$base")
            old+=("$b")
            echo "$1 run $i: without shim $p IOPS, with shim $s IOPS, with base shim $b IOPS"
        else
            echo "$1 run $i: without shim $p IOPS, with shim $s IOPS"
        fi
    done
    mp=$(median "${plain[@]}") ms=$(median "${shim[@]}") mb=
    [ -z "$base" ] || mb=$(median "${old[@]}")
}

phase alone
echo "median: without shim $mp IOPS, with shim $ms IOPS ($(pct "$mp - $ms" "$mp")% cost)"
[ -z "$base" ] || echo "median: with base shim $mb IOPS ($(pct "$mp - $mb" "$mp")% cost)"
"$MI" journal status "$dir/j" | sed -n '/dirty/p;/written/p'

if [ "${FOLLOW:-1}" != 0 ]; then
    "$MI" follow --json --journal "$dir/j" "$dir/disk.raw" "$dir/copy.raw" \
        > "$dir/follow.out" 2> "$dir/follow.err" &
    fpid=$!
    for _ in $(seq 300); do
        grep -q BLOCK_JOB_READY "$dir/follow.out" 2>/dev/null && break
        sleep 0.1
    done
    grep -q BLOCK_JOB_READY "$dir/follow.out" || { cat "$dir/follow.err" >&2; exit 1; }
    plain_file=other.raw
    phase follow
    echo "median with follow draining: without shim $mp IOPS, with shim $ms IOPS" \
        "($(pct "$ms" "$mp")% kept)"
    [ -z "$base" ] || echo "median with follow draining: with base shim $mb IOPS ($(pct "$mb" "$mp")% kept)"
    kill -TERM "$fpid" 2>/dev/null || true # cancel
    wait "$fpid" 2>/dev/null || true
    grep -i "untrusted\|full pass" "$dir/follow.err" >&2 || true
    fpid=
fi
