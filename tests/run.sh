#!/usr/bin/env bash
# run.sh: run every bats suite against the normal build; then the suites that write through
# the shim again with TMPDIR on a tmpfs, ext4, XFS and btrfs (normal build only, see
# tests/fs.bash); then every suite against the ASan/UBSan build.  Ends with one line
# "N passed, N failed, N skipped".  Usage: tests/run.sh [SUITE.bats...]
#
# MI_FS: the file systems of the matrix (default "tmpfs ext4 xfs btrfs"; "" for none).
# MI_FS_LOAD_SECONDS: load.bats's writing time on each of them (default 10: a minute on
# each would take make check past 20 minutes).  MI_SKIP_ASAN=1 leaves the ASan run out;
# MI_ASAN_LOAD_SECONDS (default 20) is load.bats's writing time there.
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
. tests/fs.bash
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(tests/*.bats)
passed=0 failed=0 skipped=0
log=$(mktemp)
failures=$(mktemp)
trap 'fs_remove_all; rm -f "$log" "$failures"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

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

# run_suites BUILD LABEL TAG ENV... -- SUITE...: run the suites with bats against BUILD
# (with the ENV assignments), add the results to the totals.  A non-empty TAG (the file
# system) is put in front of every test name, so that a failure says where it happened.
run_suites() {
    local build=$1 label=$2 tag=$3
    shift 3
    local env=()
    while [ "$1" != -- ]; do env+=("$1"); shift; done
    shift
    echo "== $label: $*"
    local t0=$SECONDS name='\1'
    [ -z "$tag" ] || name="\\1[$tag] "
    env "${env[@]}" MI="$top/$build/mirror-img" UNIT_DIR="$top/$build/tests" \
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
        bats --tap "$@" 2>&1 | sed -u -E "s/^((not )?ok [0-9]+ )/$name/" | tee "$log"
    local p f s
    p=$(grep -cE '^ok [0-9]+' "$log")
    s=$(grep -cE '^ok [0-9]+ .*# skip' "$log")
    f=$(grep -cE '^not ok [0-9]+' "$log")
    passed=$((passed + p - s)) failed=$((failed + f)) skipped=$((skipped + s))
    echo "== $label: $((p - s)) passed, $f failed, $s skipped in $((SECONDS - t0)) s"
    awk -v label="$label" '/^not ok [0-9]+/ { print label ": " $0 }' "$log" >> "$failures"
}

# matrix_row FS: the matrix suites with TMPDIR on a fresh FS; every test is counted as
# skipped, with the reason, when FS cannot be made here.
matrix_row() {
    local fs=$1 why n
    why=$(fs_why_not "$fs")
    if [ -z "$why" ] && ! fs_make "$fs"; then
        why=$FS_WHY
    fi
    if [ -n "$why" ]; then
        fs_remove "$fs"
        n=$(bats --count "${matrix[@]}")
        echo "== normal build on $fs: skipped ($n tests): $why"
        skipped=$((skipped + n))
        return
    fi
    run_suites build "normal build on $fs" "$fs" TMPDIR="$FS_MNT" \
        LOAD_SECONDS="${MI_FS_LOAD_SECONDS:-10}" -- "${matrix[@]}"
    fs_remove "$fs"
}

run_suites build "normal build" "" -- "${suites[@]}"
if [ ${#matrix[@]} -gt 0 ]; then
    fs_init "$top"
    for fs in ${MI_FS-$FS_ALL}; do
        matrix_row "$fs"
    done
fi
if [ -x build-asan/mirror-img ] && [ "${MI_SKIP_ASAN:-0}" != 1 ]; then
    # (a shorter load phase: the normal build has already written for a minute)
    run_suites build-asan "ASan/UBSan build" "" LOAD_SECONDS="${MI_ASAN_LOAD_SECONDS:-20}" -- "${suites[@]}"
fi
if [ -s "$failures" ]; then
    echo "== failed:"
    cat "$failures"
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
