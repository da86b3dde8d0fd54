#!/usr/bin/env bats
# Error policies (report, ignore, stop, enospc) with faults from nbdkit's error filter and
# a real full filesystem; control of a running copy through its socket.
load helpers

setup() {
    truncate -s 16M "$T/src.raw"
    dd if=/dev/urandom of="$T/src.raw" bs=1M count=4 seek=2 conv=notrunc status=none
    dd if=/dev/urandom of="$T/src.raw" bs=1M count=2 seek=12 conv=notrunc status=none
}

src_with_read_errors() { # errors on every read while $T/trigger exists
    touch "$T/trigger"
    nbdkit_start "$T/src.sock" --filter=error file "$T/src.raw" error=EIO \
        error-pread-rate=100% error-pread-file="$T/trigger"
    SRC="nbd+unix:///?socket=$T/src.sock"
}

@test "report (default): a source read error stops the job, exit 1, the range is named" {
    src_with_read_errors
    run "$MI" copy "$SRC" "$T/dst.raw"
    assert_failure 1
    assert_output --regexp "mirror-img: nbd\+unix:///\?socket=.*: read error at offset [0-9]+, length [0-9]+"
    [ ! -e "$T/dst.raw" ]
}

@test "ignore: failing chunks are retried and the copy completes once the errors stop" {
    src_with_read_errors
    ( sleep 0.4; rm -f "$T/trigger" ) &
    run "$MI" copy --json --on-source-error=ignore "$SRC" "$T/dst.raw"
    assert_success
    assert_output --partial '"event": "BLOCK_JOB_ERROR"'
    assert_output --partial '"action": "ignore"'
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "ignore: errors that never stop end with exit 1 naming the ranges still failing" {
    src_with_read_errors
    run "$MI" copy --on-source-error=ignore "$SRC" "$T/dst.raw"
    assert_failure 1
    assert_output --regexp "ranges still failing after [0-9]+ passes \(last error: .*read error at offset [0-9]+.*\): 2097152\+"
    [ ! -e "$T/dst.raw" ]
}

@test "stop: a target write error pauses the job with BLOCK_JOB_ERROR; resume finishes it exactly" {
    truncate -s 16M "$T/dst.raw"
    touch "$T/trigger"
    nbdkit_start "$T/dst.sock" --filter=error file "$T/dst.raw" error=EIO \
        error-pwrite-rate=100% error-pwrite-file="$T/trigger"
    "$MI" copy --json --on-target-error=stop --socket "$T/job.sock" \
        "$T/src.raw" "nbd+unix:///?socket=$T/dst.sock" > "$T/events" &
    pid=$!
    wait_for grep -q BLOCK_JOB_ERROR "$T/events"
    grep '"action": "stop"' "$T/events"
    run "$MI" status --json "$T/job.sock"
    assert_output --partial '"status": "paused"'
    rm -f "$T/trigger"
    run "$MI" resume "$T/job.sock"
    assert_success
    wait $pid
    grep -q BLOCK_JOB_COMPLETED "$T/events"
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "enospc: other errors are reported, not paused on" {
    truncate -s 16M "$T/dst.raw"
    nbdkit_start "$T/dst.sock" --filter=error file "$T/dst.raw" error=EIO error-pwrite-rate=100%
    run "$MI" copy --on-target-error=enospc "$T/src.raw" "nbd+unix:///?socket=$T/dst.sock"
    assert_failure 1
    assert_output --partial "write error at offset"
}

@test "enospc: a full filesystem pauses the job; after space is added, resume finishes exactly" {
    mkdir "$T/mnt"
    mount -t tmpfs -o size=3M tmpfs "$T/mnt" || skip "cannot mount a tmpfs here"
    on_exit "umount -l '$T/mnt'"
    "$MI" copy --json --on-target-error=enospc --socket "$T/job.sock" \
        "$T/src.raw" "$T/mnt/dst.raw" > "$T/events" &
    pid=$!
    wait_for grep -q BLOCK_JOB_ERROR "$T/events"
    grep -q 'No space left on device' "$T/events"
    mount -o remount,size=64M "$T/mnt"
    "$MI" resume "$T/job.sock"
    wait $pid
    cmp "$T/src.raw" "$T/mnt/dst.raw"
}

@test "report on a full filesystem: exit 1 with the reason, no target left" {
    mkdir "$T/mnt"
    mount -t tmpfs -o size=3M tmpfs "$T/mnt" || skip "cannot mount a tmpfs here"
    on_exit "umount -l '$T/mnt'"
    run "$MI" copy "$T/src.raw" "$T/mnt/dst.raw"
    assert_failure 1
    assert_output --partial "No space left on device"
    [ ! -e "$T/mnt/dst.raw" ]
}

@test "control: pause, status, set-speed, resume on a rate-limited copy" {
    "$MI" copy -s 1M --socket "$T/job.sock" "$T/src.raw" "$T/dst.raw" &
    pid=$!
    wait_for test -S "$T/job.sock"
    [ "$(stat -c %a "$T/job.sock")" = 600 ]
    run "$MI" pause "$T/job.sock"
    assert_success
    run "$MI" status "$T/job.sock"
    assert_output --partial 'status: "paused"'
    assert_output --partial 'speed: 1048576'
    "$MI" set-speed "$T/job.sock" 0
    run "$MI" status --json "$T/job.sock"
    assert_output --partial '"speed": 0'
    "$MI" resume "$T/job.sock"
    wait $pid
    cmp "$T/src.raw" "$T/dst.raw"
    [ ! -e "$T/job.sock" ]
}

@test "control: cancel ends the copy with exit 3 and BLOCK_JOB_CANCELLED, removing the new target" {
    "$MI" copy --json -s 1M --socket "$T/job.sock" "$T/src.raw" "$T/dst.raw" > "$T/events" &
    pid=$!
    wait_for test -S "$T/job.sock"
    "$MI" cancel "$T/job.sock"
    st=0
    wait $pid || st=$?
    [ "$st" -eq 3 ]
    grep -q BLOCK_JOB_CANCELLED "$T/events"
    [ ! -e "$T/dst.raw" ]
}

@test "SIGTERM and SIGINT mean cancel (exit 3)" {
    for sig in TERM INT; do
        "$MI" copy -s 1M "$T/src.raw" "$T/dst.raw" &
        pid=$!
        sleep 0.3
        kill -$sig $pid
        st=0
        wait $pid || st=$?
        [ "$st" -eq 3 ]
        [ ! -e "$T/dst.raw" ]
    done
}

@test "--speed limits the rate (2 MiB of data at 4M/s takes at least 0.3 s)" {
    truncate -s 8M "$T/s2.raw"
    dd if=/dev/urandom of="$T/s2.raw" bs=1M count=2 conv=notrunc status=none
    start=$(date +%s%N)
    "$MI" copy -s 4M "$T/s2.raw" "$T/d2.raw"
    elapsed=$(( ($(date +%s%N) - start) / 1000000 ))
    echo "elapsed ${elapsed} ms"
    [ "$elapsed" -ge 300 ]
    cmp "$T/s2.raw" "$T/d2.raw"
}

@test "control: a bad request gets an error answer, an unknown command CommandNotFound" {
    "$MI" copy -s 512K --socket "$T/job.sock" "$T/src.raw" "$T/dst.raw" &
    pid=$!
    wait_for test -S "$T/job.sock"
    run python3 - "$T/job.sock" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
f = s.makefile("rw")
for req in ['{"execute": "nope"}', 'not json', '{"execute": "query-block-jobs"}']:
    f.write(req + "\n"); f.flush(); print(f.readline().strip())
PY
    "$MI" cancel "$T/job.sock"
    wait $pid || true
    assert_line --index 0 --partial '"class": "CommandNotFound"'
    assert_line --index 1 --partial '"error"'
    assert_line --index 2 --partial '"return": {"device"'
}

@test "10% random EIO on source reads under ignore: retried until clean, identical" {
    nbdkit_start "$T/src.sock" --filter=error file "$T/src.raw" error=EIO error-pread-rate=10%
    run "$MI" copy --on-source-error=ignore "nbd+unix:///?socket=$T/src.sock" "$T/dst.raw"
    assert_success
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "10% random ENOSPC on target writes under enospc: every pause is resumed, identical" {
    truncate -s 16M "$T/dst.raw"
    nbdkit_start "$T/dst.sock" --filter=error file "$T/dst.raw" error=ENOSPC error-pwrite-rate=10%
    "$MI" copy --json -j 1 --buf-size 64K --on-target-error=enospc --socket "$T/job.sock" \
        "$T/src.raw" "nbd+unix:///?socket=$T/dst.sock" > "$T/events" &
    pid=$!
    pauses=0
    for _ in $(seq 600); do
        kill -0 $pid 2>/dev/null || break
        if "$MI" status --json "$T/job.sock" 2>/dev/null | grep -q '"status": "paused"'; then
            "$MI" resume "$T/job.sock" && pauses=$((pauses + 1))
        fi
        sleep 0.05
    done
    wait $pid
    echo "resumed $pauses times"
    grep -q '"action": "stop"' "$T/events"
    grep -q BLOCK_JOB_COMPLETED "$T/events"
    cmp "$T/src.raw" "$T/dst.raw"
}
