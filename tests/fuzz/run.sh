#!/usr/bin/env bash
# run.sh FUZZDIR: run each libFuzzer harness built in FUZZDIR (by `make fuzz`) for
# FUZZ_SECONDS (default 60) on its corpus, and fail if any finds a crash, a leak, a
# timeout or an out-of-memory.
#
#   FUZZDIR/corpus/NAME   the working corpus (kept between runs: it only grows)
#   FUZZDIR/seeds/NAME    made by tests/fuzz/seeds.sh (again when the script or $MI, which
#                         writes the journal seeds, is newer)
#   FUZZDIR/crashes/      what a harness found (NAME-crash-*, NAME-leak-*, ...)
#   tests/fuzz/regress/   NAME-*: inputs that once crashed; replayed first, every time
#
# Every crash found must become a regression input: copy it to tests/fuzz/regress/NAME-WHAT
# (tests/fuzz-regress.bats replays it and runs mirror-img on it).  FUZZ_HARNESSES restricts
# the run ("qcow2 json"); FUZZ_JOBS=N (N > 1) runs the harnesses at the same time.
set -u
dir=${1:?usage: run.sh FUZZDIR}
top=$(cd "$(dirname "$0")/../.." && pwd)
secs=${FUZZ_SECONDS:-60}
names=${FUZZ_HARNESSES:-qcow2 journal json}
jobs=${FUZZ_JOBS:-1}

declare -A max_len=([qcow2]=1048576 [journal]=262144 [json]=4096)
declare -A dict=([qcow2]=qcow2.dict [json]=json.dict)

MI=${MI:-$top/build/mirror-img}
if [ ! -d "$dir/seeds" ] || [ "$top/tests/fuzz/seeds.sh" -nt "$dir/seeds" ] ||
    [ "$MI" -nt "$dir/seeds" ]; then
    rm -rf "$dir/seeds" "$dir/seeds.tmp"
    bash "$top/tests/fuzz/seeds.sh" "$dir/seeds.tmp" && mv "$dir/seeds.tmp" "$dir/seeds" || exit 1
fi
mkdir -p "$dir/crashes"

fuzz_one() {
    local n=$1 bin=$dir/fuzz-$1 log=$dir/fuzz-$1.log
    local corpus=$dir/corpus/$n
    mkdir -p "$corpus"
    local regress=("$top"/tests/fuzz/regress/"$n"-*)
    if [ -e "${regress[0]}" ]; then
        if ! "$bin" -runs=1 "${regress[@]}" >"$dir/replay-$n.log" 2>&1; then
            echo "fuzz-$n: a regression input crashes again (see $dir/replay-$n.log)"
            return 1
        fi
    fi
    local opts=(-max_total_time="$secs" -max_len="${max_len[$n]}" -timeout=20
                -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$dir/crashes/$n-")
    [ -n "${dict[$n]:-}" ] && opts+=(-dict="$top/tests/fuzz/${dict[$n]}")
    ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1 \
        "$bin" "${opts[@]}" "$corpus" "$dir/seeds/$n" >"$log" 2>&1
    local st=$?
    local execs
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [ $st -ne 0 ]; then
        echo "fuzz-$n: FAILED after ${execs:-?} executions (exit $st); see $log and $dir/crashes/"
        grep -E '^(==[0-9]+==ERROR|SUMMARY|.*runtime error)' "$log" | head -5
        return 1
    fi
    echo "fuzz-$n: ${execs:-?} executions in ${secs}s, corpus $(ls "$corpus" | wc -l) inputs, no crash"
}

fail=0 pids=()
for n in $names; do
    if [ "$jobs" -gt 1 ]; then
        fuzz_one "$n" &
        pids+=($!)
    else
        fuzz_one "$n" || fail=1
    fi
done
for p in "${pids[@]}"; do wait "$p" || fail=1; done
exit $fail
