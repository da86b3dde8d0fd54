#!/usr/bin/env bats
# The C unit tests (tests/unit/test-*.c), each printing TAP.
load helpers

UNIT_DIR=${UNIT_DIR:-$TOP/build/tests}

unit() {
    [ -x "$UNIT_DIR/$1" ] || fail "$UNIT_DIR/$1 was not built"
    run "$UNIT_DIR/$1"
    echo "$output"
    assert_success
    refute_output --partial "not ok"
    assert_output --regexp '1\.\.[1-9]'
}

@test "unit: bitmap, token bucket, JSON, size parser" { unit test-core; }
@test "unit: qcow2 writer" { unit test-qcow2-create; }
@test "unit: L2 decoding" { unit test-l2; }
@test "unit: block-status comparer" { unit test-compare; }
@test "unit: sync engine (full pass, resume, growth, bypass, lease, pivot, refusals)" { unit test-sync; }
@test "unit: journal" { unit test-journal; }
