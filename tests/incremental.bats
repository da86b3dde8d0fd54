#!/usr/bin/env bats
# copy --incremental: cron-style replication from the shim's journal.
load helpers

setup() {
    truncate -s 64M "$T/src.raw"
    dd if=/dev/urandom of="$T/src.raw" bs=1M count=8 seek=4 conv=notrunc status=none
    J="$T/j"
}

under() { "$MI" run --journal "$J" "$T/src.raw" -- "$@"; }

# inc [OPTS...]: one incremental run to dst.raw; sets COPIED and REASON from the events.
inc() {
    run "$MI" copy --json --incremental --journal "$J" "$@" "$T/src.raw" "${DST:-$T/dst.raw}"
    assert_success
    COPIED=$(echo "$output" | python3 -c 'import json,sys; print([json.loads(l) for l in sys.stdin if "COMPLETED" in l][0]["data"]["bytes_copied"])')
    INCR=$(echo "$output" | python3 -c 'import json,sys; print([json.loads(l) for l in sys.stdin if "COMPLETED" in l][0]["data"]["incremental"])')
}

@test "incremental: the first run copies everything, later runs only what the shim saw change" {
    inc
    [ "$INCR" = False ]
    [ "$COPIED" -eq $(( 8 * 1024 * 1024 )) ]
    cmp "$T/src.raw" "$T/dst.raw"
    under dd if=/dev/urandom of="$T/src.raw" bs=4K count=3 seek=5000 conv=notrunc status=none
    under qemu-io -f raw -c 'write -P 0x77 40M 64k' "$T/src.raw" >/dev/null
    inc
    echo "copied $COPIED"
    [ "$INCR" = True ]
    [ "$COPIED" -le $(( 3 * 65536 )) ]
    cmp "$T/src.raw" "$T/dst.raw"
    inc
    [ "$COPIED" -eq 0 ]
}

@test "incremental: holes punched by a writer are zeroed in the target" {
    inc
    under fallocate -p -o 5M -l 1M "$T/src.raw"
    inc
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "incremental: a write that bypassed the shim forces an announced full pass" {
    inc
    dd if=/dev/urandom of="$T/src.raw" bs=4K count=1 seek=100 conv=notrunc status=none
    inc
    [ "$INCR" = False ]
    assert_output --partial '"full_pass_reason": "the source changed behind the shim'
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "incremental: a run killed at any point loses nothing; the next one finishes the job" {
    inc
    under dd if=/dev/urandom of="$T/src.raw" bs=1M count=16 seek=20 conv=notrunc status=none
    for delay in 0.05 0.1 0.2; do
        "$MI" copy --incremental --journal "$J" -s 8M "$T/src.raw" "$T/dst.raw" &
        pid=$!
        sleep $delay
        kill -9 $pid
        wait $pid || true
    done
    inc
    [ "$INCR" = True ]
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "incremental: overlapping runs on one journal refuse, exit 1" {
    inc
    under dd if=/dev/urandom of="$T/src.raw" bs=1M count=8 seek=30 conv=notrunc status=none
    "$MI" copy --incremental --journal "$J" -s 2M "$T/src.raw" "$T/dst.raw" &
    pid=$!
    sleep 0.3
    run "$MI" copy --incremental --journal "$J" "$T/src.raw" "$T/dst.raw"
    assert_failure 1
    assert_output --partial "another follower"
    kill $pid
    wait $pid || true
}

@test "incremental: another target needs -n (full pass); the recorded one resumes" {
    inc
    rand_file "$T/other.raw" 64
    run "$MI" copy --incremental --journal "$J" "$T/src.raw" "$T/other.raw"
    assert_failure 1
    assert_output --partial "already exists"
    DST=$T/other.raw inc -n
    [ "$INCR" = False ]
    cmp "$T/src.raw" "$T/other.raw"
}

@test "incremental --verify reads the target back" {
    inc --verify
    under dd if=/dev/urandom of="$T/src.raw" bs=4K count=1 seek=9 conv=notrunc status=none
    inc --verify
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "incremental to an NBD target (nbdkit file plugin)" {
    truncate -s 64M "$T/remote.raw"
    nbdkit_start "$T/nbd.sock" file "$T/remote.raw"
    DST="nbd+unix:///?socket=$T/nbd.sock" inc
    [ "$INCR" = False ]
    under dd if=/dev/urandom of="$T/src.raw" bs=4K count=2 seek=300 conv=notrunc status=none
    DST="nbd+unix:///?socket=$T/nbd.sock" inc
    [ "$INCR" = True ]
    [ "$COPIED" -le 131072 ]
    cmp "$T/src.raw" "$T/remote.raw"
}

@test "incremental: usage errors (no --journal, format conversion)" {
    run "$MI" copy --incremental "$T/src.raw" "$T/dst.raw"
    assert_failure 2
    assert_output --partial "--incremental needs --journal"
    run "$MI" copy --incremental --journal "$J" -O qcow2 "$T/src.raw" "$T/dst.raw"
    assert_failure 2
    [ ! -e "$T/dst.raw" ]
}
