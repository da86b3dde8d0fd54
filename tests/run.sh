#!/usr/bin/env bash
# run.sh: run every bats suite against the normal build; the suites that write through the
# shim again with TMPDIR on a tmpfs, ext4, XFS and btrfs (normal build only, see
# tests/fs.bash); and every suite against the ASan/UBSan build.  Ends with one line
# "N passed, N failed, N skipped".  Usage: tests/run.sh [SUITE.bats...]
#
# The configurations (normal build, each file system, ASan) run in MI_LANES lanes at once
# (default 2: most suites wait on timers and sockets, not on the CPU), each lane its
# configurations one after the other, each configuration with a TMPDIR of its own; the
# output of a configuration is printed whole when it ends.  load.bats saturates both CPUs,
# so it never runs beside another suite: with more than one lane, every configuration's
# load.bats runs first, one after the other, before the lanes start (its results are
# reported in its configuration, in their place).  MI_LANES=1 runs everything in turn.
#
# MI_FS: the file systems of the matrix (default "tmpfs ext4 xfs btrfs"; "" for none).
# MI_FS_LOAD_SECONDS: load.bats's writing time on each of them (default 10: a minute on
# each would take make check past 20 minutes).  MI_SKIP_ASAN=1 leaves the ASan run out;
# MI_ASAN_LOAD_SECONDS (default 20) is load.bats's writing time there.  MI_SUITE_TIMES=FILE
# appends a line per suite run to FILE: configuration|suite|wall seconds|CPU seconds.
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
. tests/fs.bash
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(tests/*.bats)
work=$(mktemp -d)
lane_pids=()

# On INT, TERM or HUP: interrupt the lanes (bats runs the tests' teardown on INT), give them
# 20 s, kill what is left; the EXIT trap then unmounts and detaches what the matrix made.
stop_lanes() {
    local pid i
    trap '' INT TERM HUP
    for pid in "${lane_pids[@]}"; do kill -INT -- "-$pid" 2>/dev/null; done
    for i in $(seq 100); do
        [ -n "$(jobs -rp)" ] || break
        sleep 0.2
    done
    for pid in "${lane_pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null; done
    wait
    exit "$1"
}
trap '[ -z "${FS_DIR:-}" ] || { FS_MADE=($FS_ALL); fs_remove_all; }; rm -rf "$work"' EXIT
trap 'stop_lanes 130' INT
trap 'stop_lanes 143' TERM
trap 'stop_lanes 129' HUP

# The suites of the file-system matrix: those that write images through the shim.
matrix=()
for s in tests/follow.bats tests/shim.bats tests/crash.bats tests/load.bats \
         tests/incremental.bats tests/trust-*.bats; do
    [ -e "$s" ] || continue
    for u in "${suites[@]}"; do
        if [ "$u" -ef "$s" ]; then
            matrix+=("$s")
            break
        fi
    done
done

# config ID: the build (c_build), label (c_label), tag (c_tag: put in front of every test
# name, so that a failure says where it happened), environment (c_env) and suites
# (c_suites) of a configuration: normal, asan or fs-FS.
config() {
    case $1 in
        normal)
            mkdir -p "$work/tmp-normal"
            c_build=build c_label="normal build" c_tag=
            c_env=(TMPDIR="$work/tmp-normal") c_suites=("${suites[@]}") ;;
        asan)
            # (a shorter load phase: the normal build has already written for a minute)
            mkdir -p "$work/tmp-asan"
            c_build=build-asan c_label="ASan/UBSan build" c_tag=
            c_env=(TMPDIR="$work/tmp-asan" LOAD_SECONDS="${MI_ASAN_LOAD_SECONDS:-20}")
            c_suites=("${suites[@]}") ;;
        fs-*)
            c_build=build c_label="normal build on ${1#fs-}" c_tag=${1#fs-}
            c_env=(TMPDIR="$FS_DIR/${1#fs-}" LOAD_SECONDS="${MI_FS_LOAD_SECONDS:-10}")
            c_suites=("${matrix[@]}") ;;
    esac
}

# cpu_seconds FILE: CPU, the user and system time of this shell's finished children
# (`times` runs in this shell: a subshell's children are its own).
cpu_seconds() {
    times > "$1"
    CPU=$(awk 'NR == 2 { gsub(/[ms]/, " "); print $1 * 60 + $2 + $3 * 60 + $4 }' "$1")
}

# run_bats ID SUITE RAW: run one suite of configuration ID (after `config ID`) with bats;
# its TAP output goes to RAW, and to the terminal as it comes when there is one lane.
run_bats() {
    local id=$1 s=$2 raw=$3 t0=$SECONDS c0
    cpu_seconds "$work/$id.times"
    c0=$CPU
    env "${c_env[@]}" MI="$top/$c_build/mirror-img" UNIT_DIR="$top/$c_build/tests" \
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
        bats --tap "$s" </dev/null 2>&1 |
        if [ "$lanes" -gt 1 ]; then cat > "$raw"; else tee "$raw" | tap_filter "$n" "$c_tag"; fi
    echo $((SECONDS - t0)) > "$raw.secs"
    if [ -n "${MI_SUITE_TIMES:-}" ]; then
        cpu_seconds "$work/$id.times"
        echo "$c_label|$(basename "$s")|$((SECONDS - t0))|$(awk -v a="$CPU" -v b="$c0" 'BEGIN { print a - b }')" >> "$MI_SUITE_TIMES"
    fi
}

# tap_filter OFFSET TAG: bats' TAP output with the tests numbered from OFFSET + 1 (as in
# one bats run over all the suites) and "[TAG] " in front of every test name; the plan
# lines are left out (one for all the suites comes first).
tap_filter() {
    awk -v off="$1" -v tag="${2:+[$2] }" '
        /^1\.\.[0-9]+$/ { next }
        /^(not )?ok [0-9]+/ {
            not = ($1 == "not"); num = (not ? $3 : $2) + off
            sub(/^(not )?ok [0-9]+ ?/, "")
            print (not ? "not ok " : "ok ") num " " tag $0
            fflush(); next
        }
        { print; fflush() }'
}

# run_config ID: the suites of a configuration, one bats run each (a suite that has run
# already, load.bats before the lanes, is only reported); its counts go to $work/ID.res,
# its failed tests to $work/ID.fail, and its output to the terminal (under a lock).
run_config() {
    local id=$1 s raw body=$work/$1.body log=$work/$1.log n=0 secs=0 p f sk
    config "$id"
    : > "$body"
    if [ "$lanes" -eq 1 ]; then
        echo "== $c_label: ${c_suites[*]}"
        echo "1..$(bats --count "${c_suites[@]}")"
    fi
    for s in "${c_suites[@]}"; do
        raw=$work/$id.$(basename "$s").tap
        [ -e "$raw.secs" ] || run_bats "$id" "$s" "$raw"
        secs=$((secs + $(cat "$raw.secs")))
        tap_filter "$n" "$c_tag" < "$raw" > "$log"
        n=$((n + $(grep -cE '^(not )?ok [0-9]+' "$log")))
        cat "$log" >> "$body"
    done
    p=$(grep -cE '^ok [0-9]+' "$body")
    sk=$(grep -cE '^ok [0-9]+ .*# skip' "$body")
    f=$(grep -cE '^not ok [0-9]+' "$body")
    awk -v label="$c_label" '/^not ok [0-9]+/ { print label ": " $0 }' "$body" > "$work/$id.fail"
    echo "$((p - sk)) $f $sk" > "$work/$id.res"
    {
        flock -x 9
        if [ "$lanes" -gt 1 ]; then
            echo "== $c_label: ${c_suites[*]}"
            echo "1..$n"
            cat "$body"
        fi
        echo "== $c_label: $((p - sk)) passed, $f failed, $sk skipped in $secs s"
    } 9>>"$work/print.lock"
}

# fs_row FS: make FS for its matrix row, unless it was made already (before the lanes);
# when it cannot be made here, the reason is in $work/fs-FS.why.
fs_row() {
    local fs=$1 why
    [ ! -e "$work/fs-$fs.made" ] && [ ! -e "$work/fs-$fs.why" ] || return 0
    why=$(fs_why_not "$fs")
    if [ -z "$why" ] && ! fs_make "$fs"; then
        why=$FS_WHY
    fi
    if [ -n "$why" ]; then
        fs_remove "$fs"
        echo "$why" > "$work/fs-$fs.why"
    else
        : > "$work/fs-$fs.made"
    fi
}

# matrix_row FS: the matrix suites with TMPDIR on a fresh FS; every test is counted as
# skipped, with the reason, when FS cannot be made here.
matrix_row() {
    local fs=$1 n
    fs_row "$fs"
    if [ -e "$work/fs-$fs.why" ]; then
        n=$(bats --count "${matrix[@]}")
        echo "0 0 $n" > "$work/fs-$fs.res"
        : > "$work/fs-$fs.fail"
        { flock -x 9; echo "== normal build on $fs: skipped ($n tests): $(cat "$work/fs-$fs.why")"; } 9>>"$work/print.lock"
        return
    fi
    run_config "fs-$fs"
    fs_remove "$fs"
}

# The configurations, in the order of the summary, with a rough weight each (a matrix row
# takes about 40% of the time of a full run).
configs=(normal) weights=(5)
if [ ${#matrix[@]} -gt 0 ]; then
    fs_init "$top"
    for fs in ${MI_FS-$FS_ALL}; do
        configs+=("fs-$fs") weights+=(2)
    done
fi
if [ -x build-asan/mirror-img ] && [ "${MI_SKIP_ASAN:-0}" != 1 ]; then
    configs+=(asan) weights+=(5)
fi

# The lanes: each configuration, heaviest first, goes to the lane with the least weight.
lanes=${MI_LANES:-2}
[ "$lanes" -ge 1 ] 2>/dev/null || lanes=1
[ "$lanes" -le ${#configs[@]} ] || lanes=${#configs[@]}
lane_cfgs=() lane_w=()
for ((l = 0; l < lanes; l++)); do lane_cfgs+=("") lane_w+=(0); done
for w in 5 2; do
    for ((i = 0; i < ${#configs[@]}; i++)); do
        [ "${weights[$i]}" = "$w" ] || continue
        best=0
        for ((l = 1; l < lanes; l++)); do
            [ "${lane_w[$l]}" -ge "${lane_w[$best]}" ] || best=$l
        done
        lane_cfgs[best]+=" ${configs[i]}"
        lane_w[best]=$((lane_w[best] + w))
    done
done

# lane CMD...: run CMD in the background in a process group of its own (set -m), so that
# stop_lanes reaches all its processes.
lane() {
    set -m
    (
        set +m
        trap - EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        trap 'exit 129' HUP
        "$@"
    ) </dev/null &
    lane_pids+=($!)
    set +m
}

# preload: each configuration's load.bats, one after the other (for a matrix row, on its
# file system, made here for the row).
preload() {
    local c s n=0
    for c in "${configs[@]}"; do
        config "$c"
        case $c in fs-*) fs_row "${c#fs-}"; [ -e "$work/$c.why" ] && continue ;; esac
        for s in "${c_suites[@]}"; do
            [ "$(basename "$s")" = load.bats ] || continue
            run_bats "$c" "$s" "$work/$c.load.bats.tap"
        done
    done
}

# lane_run CONFIG...: the configurations of one lane, one after the other.
lane_run() {
    local c
    for c in "$@"; do
        case $c in
            fs-*) matrix_row "${c#fs-}" ;;
            *) run_config "$c" ;;
        esac
    done
}

n=0
if [ "$lanes" -gt 1 ]; then
    lane preload
    wait
fi
for ((l = 0; l < lanes; l++)); do
    # shellcheck disable=SC2086
    lane lane_run ${lane_cfgs[$l]}
done
wait

passed=0 failed=0 skipped=0
: > "$work/failures"
for c in "${configs[@]}"; do
    if [ -s "$work/$c.res" ]; then
        read -r p f s < "$work/$c.res"
        passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
        cat "$work/$c.fail" >> "$work/failures"
    else
        failed=$((failed + 1))
        echo "$c: did not finish" >> "$work/failures"
    fi
done
if [ -s "$work/failures" ]; then
    echo "== failed:"
    cat "$work/failures"
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
