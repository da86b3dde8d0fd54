#!/usr/bin/env bats
# Inputs that once crashed a fuzz harness (tests/fuzz/regress/NAME-*, NAME = qcow2,
# journal or json): mirror-img itself refuses each with a clean error (exit 1, one
# "mirror-img: OBJECT: ..." message, no sanitizer report), and the harness replays it
# without a crash when `make fuzz` (or `make fuzz-build`) has built it.
load helpers

R=$BATS_TEST_DIRNAME/fuzz/regress
FUZZ=${FUZZ_DIR:-$TOP/build/fuzz}

# clean_error: the last `run` failed with exit 1 and one mirror-img message.
clean_error() {
    assert_failure 1
    assert_output --regexp "^mirror-img: "
    refute_output --partial "Sanitizer"
    refute_output --partial "runtime error"
}

inputs() { ls "$R"/"$1"-* 2>/dev/null || true; }

@test "qcow2 regression inputs: info and copy refuse them cleanly" {
    local n=0 f
    for f in $(inputs qcow2); do
        n=$((n + 1))
        cp "$f" "$T/img"
        run timeout 20 "$MI" info "$T/img"
        echo "info $(basename "$f"): $output"
        clean_error
        run timeout 60 "$MI" copy -O raw "$T/img" "$T/out.raw"
        echo "copy $(basename "$f"): $output"
        clean_error
        [ ! -e "$T/out.raw" ]
    done
    echo "$n inputs"
    [ $n -gt 0 ] || skip "no regression inputs of this kind"
}

@test "journal regression inputs: journal status, run and follow refuse them cleanly" {
    local n=0 f
    truncate -s 1M "$T/src.raw"
    for f in $(inputs journal); do
        n=$((n + 1))
        cp "$f" "$T/j"
        run timeout 20 "$MI" journal status "$T/j"
        echo "status $(basename "$f"): $output"
        clean_error
        run timeout 20 "$MI" run --journal "$T/j" "$T/src.raw" -- true
        clean_error
        run timeout 20 "$MI" follow --journal "$T/j" "$T/src.raw" "$T/dst.raw"
        clean_error
    done
    echo "$n inputs"
    [ $n -gt 0 ] || skip "no regression inputs of this kind"
}

@test "the fuzz harnesses replay every regression input without a crash" {
    local name ran=0
    for name in qcow2 journal json; do
        [ -n "$(inputs $name)" ] || continue
        [ -x "$FUZZ/fuzz-$name" ] || continue
        run "$FUZZ/fuzz-$name" -runs=1 $(inputs $name)
        echo "$output" | tail -5
        assert_success
        ran=$((ran + 1))
    done
    [ $ran -gt 0 ] || skip "no harness built (make fuzz-build)"
}
