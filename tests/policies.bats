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
    "$MI" copy --json -j 4 --buf-size 256K --on-target-error=enospc --socket "$T/job.sock" \
        "$T/src.raw" "$T/mnt/dst.raw" > "$T/events" 3>&- &
    pid=$!
    on_exit "kill $pid"
    wait_for grep -q BLOCK_JOB_ERROR "$T/events"
    grep -q 'No space left on device' "$T/events"
    # One pause, one error: what the other workers had read is not written into the same
    # full disk once the job paused.
    wait_for paused_idle
    [ "$(grep -c BLOCK_JOB_ERROR "$T/events")" -eq 1 ]
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

# ---- random faults under report and stop: an exact target or a clear error naming the
# ranges, never a silently wrong target ----

# Small requests (64 KiB, 4 workers), so that a 10% rate fails some of them.
SMALL=(-g 64K -j 4 --buf-size 256K)

# prefilled FILE: a 16 MiB target filled with 0xaa bytes ("untouched" when read back).
prefilled() { head -c 16M /dev/zero | tr '\0' '\252' > "$1"; }

# faulty_src ERRNO RATE: the source (with data in [2M, 14M) this time: more reads to fail)
# through nbdkit, failing RATE of the reads with ERRNO while $T/trigger exists; sets SRC.
faulty_src() {
    dd if=/dev/urandom of="$T/src.raw" bs=1M count=6 seek=6 conv=notrunc status=none
    touch "$T/trigger"
    nbdkit_start "$T/src.sock" --filter=error file "$T/src.raw" error="$1" \
        error-pread-rate="$2" error-pread-file="$T/trigger"
    SRC="nbd+unix:///?socket=$T/src.sock"
}

# faulty_dst ERRNO RATE: $T/dst.raw (prefilled) through nbdkit, failing RATE of the writes
# and zero requests with ERRNO while $T/trigger exists; sets DST.
faulty_dst() {
    prefilled "$T/dst.raw"
    touch "$T/trigger"
    nbdkit_start "$T/dst.sock" --filter=error file "$T/dst.raw" error="$1" \
        error-pwrite-rate="$2" error-pwrite-file="$T/trigger" \
        error-zero-rate="$2" error-zero-file="$T/trigger"
    DST="nbd+unix:///?socket=$T/dst.sock"
}

# target_honest EVENTS [DONE]: every 64 KiB chunk of $T/dst.raw holds the source's bytes,
# or is untouched (0xaa), or lies in a range a BLOCK_JOB_ERROR event of EVENTS named; and
# the exact chunks hold at least the bytes the job says it has done (DONE, and the offset
# of each of those events).
target_honest() {
    python3 - "$T/src.raw" "$T/dst.raw" "$1" "${2:-0}" <<'PY'
import json, sys
src, dst, events, done = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
a, b = open(src, "rb").read(), open(dst, "rb").read()
chunk, bad, exact = 65536, 0, 0
named = []
for line in open(events):
    e = json.loads(line)
    if e["event"] == "BLOCK_JOB_ERROR":
        d = e["data"]
        named.append((d["error_offset"], d["error_offset"] + d["error_len"]))
        done = max(done, d["offset"])
for off in range(0, len(a), chunk):
    x, y = a[off:off + chunk], b[off:off + chunk]
    if x == y:
        exact += len(x)
    elif y != b"\xaa" * len(y) and not any(s <= off and off + len(y) <= e for s, e in named):
        print("chunk at %d: neither the source's bytes nor untouched, in no named range" % off)
        bad += 1
print("%d bytes exact, %d named ranges, %d bytes said done" % (exact, len(named), done))
if exact < done:
    print("fewer exact bytes than the job says it has done")
    bad += 1
sys.exit(1 if bad else 0)
PY
}

# run_events CMD...: run CMD with its standard output (the events) in $T/events; output is
# what it wrote on standard error.
run_events() { run bash -c 'f=$1; shift; "$@" 2>&1 >"$f"' _ "$T/events" "$@"; }

# report_fails OP EVENTS: the run failed with exit 1 and a message naming the offset and
# length of a failed request (a write or zero request for OP write); each BLOCK_JOB_ERROR
# of EVENTS says report and names an OP range (error_offset, error_len), and one of them
# holds the offset of the message.
report_fails() {
    local op=$1 events=$2 what=read
    [ "$op" = read ] || what="(write|zero)"
    assert_failure 1
    assert_output --regexp "^mirror-img: nbd\+unix:///\?socket=$T/(src|dst)\.sock: $what error at offset [0-9]+, length [0-9]+: "
    python3 - "$events" "$op" "$output" <<'PY'
import json, re, sys
events, op, msg = sys.argv[1], sys.argv[2], sys.argv[3]
errs = [json.loads(l)["data"] for l in open(events) if '"BLOCK_JOB_ERROR"' in l]
assert errs, "no BLOCK_JOB_ERROR event"
for d in errs:
    assert d["action"] == "report" and d["operation"] == op and d["error_len"] > 0, d
at = int(re.search(r"error at offset (\d+)", msg).group(1))
assert any(d["error_offset"] <= at < d["error_offset"] + d["error_len"] for d in errs), (at, errs)
assert not any('"BLOCK_JOB_COMPLETED"' in l for l in open(events))
PY
}

@test "10% random EIO on source reads under report: exit 1 naming the range, nothing silently wrong; a rerun is exact" {
    faulty_src EIO 10%
    prefilled "$T/dst.raw"
    run_events "$MI" copy --json -n "${SMALL[@]}" "$SRC" "$T/dst.raw"
    report_fails read "$T/events"
    target_honest "$T/events"
    rm -f "$T/trigger"
    "$MI" copy -n "${SMALL[@]}" "$SRC" "$T/dst.raw"
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "10% random EIO on target writes under report: exit 1 naming the range, nothing silently wrong; a rerun is exact" {
    faulty_dst EIO 10%
    run_events "$MI" copy --json "${SMALL[@]}" "$T/src.raw" "$DST"
    report_fails write "$T/events"
    target_honest "$T/events"
    rm -f "$T/trigger"
    "$MI" copy "${SMALL[@]}" "$T/src.raw" "$DST"
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "10% random ENOSPC on target writes under report: exit 1 naming the range, no pause; a rerun is exact" {
    faulty_dst ENOSPC 10%
    run_events "$MI" copy --json "${SMALL[@]}" "$T/src.raw" "$DST"
    report_fails write "$T/events"
    assert_output --partial "No space left on device"
    target_honest "$T/events"
    ! grep -q '"status": "paused"' "$T/events"
    rm -f "$T/trigger"
    "$MI" copy "${SMALL[@]}" "$T/src.raw" "$DST"
    cmp "$T/src.raw" "$T/dst.raw"
}

# paused_idle: the job on $T/job.sock is paused with no request in flight; sets DONE to
# the bytes it says are done.
paused_idle() {
    local s
    s=$("$MI" status --json "$T/job.sock" 2>/dev/null) || return 1
    [[ $s == *'"status": "paused"'* && $s == *'"busy": false'* ]] || return 1
    DONE=$(grep -o '"offset": [0-9]*' <<< "$s" | grep -o '[0-9]*$')
}

# pause_said OP: every line of $T/err names an OP error's range and says the job paused
# under the stop policy and how to go on; there is at least one.
pause_said() {
    local what=read side=source
    [ "$1" = read ] || what="(write|zero)" side=target
    [ -s "$T/err" ]
    run grep -cvE "^mirror-img: nbd\+unix:///\?socket=$T/(src|dst)\.sock: $what error at offset [0-9]+, length [0-9]+: .*; job paused \(--on-$side-error=stop\): 'mirror-img resume $T/job.sock' retries, 'mirror-img cancel $T/job.sock' gives up$" "$T/err"
    assert_output 0
}

# stop_until_done OP ARGS...: run the copy (ARGS) of $SRC to $DST under the stop policy and
# resume it whenever it pauses on an error, until it ends.  At a pause, once no request is
# in flight, the last BLOCK_JOB_ERROR must say stop and name an OP range, and (at the first
# pauses and every fourth: the check takes a moment) the target must be honest
# (target_honest) about the bytes status says are done; standard error must say so too
# (pause_said).  Sets PAUSES.
stop_until_done() {
    local op=$1 st=0 i
    shift
    "$MI" copy --json "${SMALL[@]}" "$@" --on-source-error=stop --on-target-error=stop \
        --socket "$T/job.sock" "$SRC" "$DST" > "$T/events" 2> "$T/err" 3>&- &
    local pid=$!
    on_exit "kill $pid"
    PAUSES=0
    for i in $(seq 3000); do
        kill -0 $pid 2>/dev/null || break
        if paused_idle; then
            if [ $PAUSES -lt 3 ] || [ $((PAUSES % 4)) -eq 0 ]; then
                target_honest "$T/events" "$DONE"
            fi
            grep BLOCK_JOB_ERROR "$T/events" | tail -1 > "$T/last"
            grep -q "\"operation\": \"$op\", \"action\": \"stop\", \"error_offset\": [0-9]*, \"error_len\": [1-9]" "$T/last"
            "$MI" resume "$T/job.sock"
            PAUSES=$((PAUSES + 1))
        else
            sleep 0.01
        fi
    done
    wait $pid || st=$?
    echo "resumed $PAUSES times"
    [ "$st" -eq 0 ]
    pause_said "$op"
}

@test "10% random EIO on source reads under stop: each error pauses naming the range, the done bytes are exact; resumed, identical" {
    faulty_src EIO 10%
    DST=$T/dst.raw
    prefilled "$DST"
    stop_until_done read -n
    [ "$PAUSES" -gt 0 ]
    grep -q BLOCK_JOB_COMPLETED "$T/events"
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "10% random EIO on target writes under stop: each error pauses naming the range, the done bytes are exact; resumed, identical" {
    faulty_dst EIO 10%
    SRC=$T/src.raw
    stop_until_done write
    [ "$PAUSES" -gt 0 ]
    grep -q BLOCK_JOB_COMPLETED "$T/events"
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "10% random ENOSPC on target writes under stop: each error pauses naming the range, the done bytes are exact; resumed, identical" {
    faulty_dst ENOSPC 10%
    SRC=$T/src.raw
    stop_until_done write
    [ "$PAUSES" -gt 0 ]
    grep -q 'No space left on device' "$T/events"
    grep -q BLOCK_JOB_COMPLETED "$T/events"
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "10% random EIO on source reads under stop, cancelled at the first pause: exit 3, the range named; a rerun with -n is exact" {
    faulty_src EIO 10%
    prefilled "$T/dst.raw"
    "$MI" copy --json -n "${SMALL[@]}" --on-source-error=stop --socket "$T/job.sock" \
        "$SRC" "$T/dst.raw" > "$T/events" 2> "$T/err" 3>&- &
    pid=$!
    on_exit "kill $pid"
    wait_for paused_idle
    paused_idle
    target_honest "$T/events" "$DONE"
    pause_said read
    run "$MI" cancel "$T/job.sock"
    assert_success
    st=0
    wait $pid || st=$?
    [ "$st" -eq 3 ]
    grep -q BLOCK_JOB_CANCELLED "$T/events"
    tail -1 "$T/err" | grep -qx "mirror-img: $T/dst.raw: cancelled"
    target_honest "$T/events" "$DONE"
    rm -f "$T/trigger"
    "$MI" copy -n "${SMALL[@]}" --on-source-error=stop "$SRC" "$T/dst.raw"
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "stop without --socket: the pause is announced on stderr with the way out; SIGTERM cancels (exit 3)" {
    faulty_src EIO 100%
    "$MI" copy --on-source-error=stop "$SRC" "$T/dst.raw" 2> "$T/err" 3>&- &
    pid=$!
    on_exit "kill $pid"
    wait_for grep -q 'job paused' "$T/err"
    kill -TERM $pid
    st=0
    wait $pid || st=$?
    [ "$st" -eq 3 ]
    [ ! -e "$T/dst.raw" ]
    # One line for each failed request (the workers had several in flight), then the end.
    run grep -cvE "^mirror-img: nbd\+unix:///\?socket=$T/src\.sock: read error at offset [0-9]+, length [0-9]+: Input/output error; job paused \(--on-source-error=stop\) with no --socket to resume it: SIGINT or SIGTERM cancels$" "$T/err"
    assert_output 1
    run tail -1 "$T/err"
    assert_output "mirror-img: $T/dst.raw: cancelled"
}
