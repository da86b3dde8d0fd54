#!/usr/bin/env bash
# run.sh: `make bench`.  mirror-img copy against nbdcopy, qemu-img convert -W -m 16 and
# cp --sparse=always, on tmpfs and on the project's disk (build/bench/disk).  Prints a
# table of medians and the issue's targets; writes build/bench/results.json and
# build/bench/chart.png.  Figures, not a test: the machine's noise shows in them.
#
# Environment: MI (binary, default build/mirror-img), BENCH_ROUNDS (default 3),
# BENCH_TMPFS (a tmpfs directory, default /dev/shm), BENCH_DISK=0 (skip the disk cases),
# BENCH_ONLY=case,case (e.g. raw->raw,zlib->raw), BENCH_STRICT=1 (exit 1 when a target
# is missed), BENCH_FOLLOW=0 (skip the follow figures: tests/writers/bench-shim.sh),
# BENCH_BASELINE=BIN (an earlier mirror-img, timed in the same rounds: before/after).
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
MI=${MI:-$top/build/mirror-img}
out=$top/build/bench

# Tools: the build and test dependencies (tests/deps.sh), plus gnuplot for the chart.
need="qemu-utils libnbd-bin nbdkit time python3 gnuplot-nox coreutils"
missing=
for p in $need; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "bench: missing Debian packages:$missing" >&2
        exit 1
    fi
    echo "bench: installing$missing"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
[ -x "$MI" ] || { echo "bench: $MI is not built (run make)" >&2; exit 1; }

base=${BENCH_TMPFS:-/dev/shm}
if [ "$(stat -f -c %T "$base")" != tmpfs ]; then
    echo "bench: $base is not a tmpfs (set BENCH_TMPFS to one)" >&2
    exit 1
fi
tmp=$(mktemp -d "$base/mirror-img-bench.XXXXXX")
disk=
[ "${BENCH_DISK:-1}" = 0 ] || disk=$out/disk
cleanup() { rm -rf "$tmp"; [ -z "$disk" ] || rm -rf "$disk"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$out"

follow=
if [ "${BENCH_FOLLOW:-1}" != 0 ] && [ -z "${BENCH_ONLY:-}" ] && [ -f "$top/tests/writers/bench-shim.sh" ] &&
    [ -f "$top/build/mirror-img-shim.so" ]; then
    follow=$top/tests/writers/bench-shim.sh
fi
# Bench a private copy: a rebuild of build/ during the run must not change the binary.
cp "$MI" "$tmp/mirror-img"
baseline=
if [ -n "${BENCH_BASELINE:-}" ]; then
    cp "$BENCH_BASELINE" "$tmp/mirror-img-baseline"
    baseline=$tmp/mirror-img-baseline
fi
# The floor: one thread writing the same bytes from memory, and that while another
# thread reads the source (tests/bench/floor.c).
floor=
if command -v cc >/dev/null && cc -O2 -pthread -o "$tmp/floor" "$top/tests/bench/floor.c"; then
    floor=$tmp/floor
fi
start=$(date +%s)
rc=0
python3 "$top/tests/bench/bench.py" --mi "$tmp/mirror-img" --tmpfs "$tmp" ${disk:+--disk "$disk"} \
    --out "$out" --rounds "${BENCH_ROUNDS:-3}" ${BENCH_ONLY:+--only "$BENCH_ONLY"} ${floor:+--floor "$floor"} \
    ${follow:+--follow-script "$follow"} ${baseline:+--baseline "$baseline"} || rc=$?
if [ "${BENCH_NBD:-1}" != 0 ]; then
    echo "== NBD: to nbdkit memory with 1 ms added latency (target: mirror-img <= 0.9 x nbdcopy)"
    MI="$tmp/mirror-img" bash "$top/tests/bench/nbd.sh" "${BENCH_ROUNDS:-3}" || rc=2
fi
if [ "${BENCH_JOURNAL:-1}" != 0 ] && [ -f "$top/build/mirror-img-shim.so" ]; then
    echo "== journal: incremental copy and complete's downtime"
    MI="$tmp/mirror-img" BENCH_TMPFS="$tmp" bash "$top/tests/bench/journal.sh" "${BENCH_ROUNDS:-3}" || rc=2
fi
echo "bench: total $(($(date +%s) - start)) s"
if [ "$rc" = 1 ] && [ "${BENCH_STRICT:-0}" != 1 ]; then
    rc=0 # a missed target is a finding, not a failed build
fi
exit "$rc"
