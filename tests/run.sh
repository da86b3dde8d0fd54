#!/usr/bin/env bash
# run.sh: run every bats suite against the normal build and the ASan/UBSan build, and end
# with one line "N passed, N failed".  Usage: tests/run.sh [SUITE.bats...]
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(tests/*.bats)
passed=0 failed=0 skipped=0
log=$(mktemp)
run_build() {
    local build=$1 label=$2
    echo "== $label: ${suites[*]}"
    MI=$top/$build/mirror-img UNIT_DIR=$top/$build/tests \
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
        bats --tap "${suites[@]}" 2>&1 | tee "$log"
    local p f s
    p=$(grep -cE '^ok [0-9]+' "$log")
    s=$(grep -cE '^ok [0-9]+ .*# skip' "$log")
    f=$(grep -cE '^not ok [0-9]+' "$log")
    passed=$((passed + p - s)) failed=$((failed + f)) skipped=$((skipped + s))
}
run_build build "normal build"
if [ -x build-asan/mirror-img ] && [ "${MI_SKIP_ASAN:-0}" != 1 ]; then
    run_build build-asan "ASan/UBSan build"
fi
rm -f "$log"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
