#!/usr/bin/env bash
# soak.sh (make soak): the live mirror under writers that never pause, for SOAK_SECONDS
# (default 1800) split across a tmpfs, ext4, XFS and btrfs (made by tests/fs.bash on loop
# devices).  Each round: SOAK_PROCS processes x SOAK_THREADS threads (default 8 x 4) write
# an image under `mirror-img run` with unaligned writes (tests/writers/soakw.c), each write
# also to a reference file, while `follow` mirrors it.  Rounds take turns:
#   complete: the writers stop first, then `complete`; the target must equal the source
#             byte for byte (and the source the reference: every write landed);
#   pivot:    `complete --pivot` while they write; they go on on the target, then stop;
#             the target must equal the reference (no write lost across the pivot).
# Prints writes, bytes and writes lost (runs of differing bytes) per round, per file system
# and in total; exits 1 on any loss or error.
# SOAK_ROUND_SECONDS (default 20): the writing time of one round.  SOAK_MIB (default 256):
# the image's size (plus 12345 bytes, so that its last chunk is a partial one).  MI_FS: the
# file systems (default "tmpfs ext4 xfs btrfs").
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
. tests/fs.bash
MI=$top/build/mirror-img
export MIRROR_IMG_SHIM=$top/build/mirror-img-shim.so
TOTAL=${SOAK_SECONDS:-1800}
ROUND=${SOAK_ROUND_SECONDS:-20}
NPROC=${SOAK_PROCS:-8}
NTHREAD=${SOAK_THREADS:-4}
SIZE=$(( ${SOAK_MIB:-256} * 1048576 + 12345 ))
bin=$top/build/soak
mkdir -p "$bin"
gcc -O2 -Wall -Wextra -pthread -o "$bin/soakw" tests/writers/soakw.c || exit 1
SOAKW=$bin/soakw

pids=()        # the background processes of this file system's rounds: follow, the runners
W=             # the folder of the current rounds' files

# stop_all: end whatever is left of them (after a failed round, or on exit), by their ids:
# each runner and its child, the writer.  Only a live child of this script: an id that
# exited long ago may belong to someone else by now.
stop_all() {
    local p
    for p in "${pids[@]}"; do
        [ "$(ps -o ppid= -p "$p" | tr -d ' ')" = $$ ] || continue
        kill -9 $(pgrep -P "$p") "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    pids=()
}
cleanup() {
    stop_all
    fs_remove_all
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

errors=0
all_writes=0 all_bytes=0 all_lost=0 all_rounds=0

# error MSG: an error ends the round (and the file system's remaining rounds).
error() {
    echo "soak: $FS round $R: ERROR: $*"
    errors=$((errors + 1))
}

# wait_gone PID SECONDS: wait for PID to exit; its status, 124 when it did not in time.
wait_gone() {
    local deadline=$((SECONDS + $2))
    while kill -0 "$1" 2>/dev/null; do
        if [ $SECONDS -ge $deadline ]; then
            return 124
        fi
        sleep 0.1
    done
    wait "$1"
}

start_follow() {
    "$MI" follow --json --journal "$W/j" "$W/src.raw" "$W/dst.raw" > "$W/events" 2> "$W/follow.err" &
    FOLLOW=$!
    pids+=($FOLLOW)
    local i
    for i in $(seq 600); do
        grep -q BLOCK_JOB_READY "$W/events" && return 0
        kill -0 $FOLLOW 2>/dev/null || break
        sleep 0.1
    done
    error "follow never got ready: $(tail -n 3 "$W/follow.err")"
    return 1
}

start_writers() {
    local p
    rm -f "$W/stop" "$W"/count.*
    WRITERS=()
    for ((p = 0; p < NPROC; p++)); do
        "$MI" run --journal "$W/j" "$W/src.raw" -- "$SOAKW" write "$W/src.raw" "$W/ref.raw" \
            "$W/stop" $p $NPROC $NTHREAD > "$W/count.$p" 2> "$W/writer.$p.err" &
        WRITERS+=($!)
        pids+=($!)
    done
}

# stop_writers: each writer exits 0 within 30 s of the stop file (no deadlock).
stop_writers() {
    local p st ok=0
    touch "$W/stop"
    for p in "${WRITERS[@]}"; do
        st=0
        wait_gone "$p" 30 || st=$?
        if [ $st -eq 124 ]; then
            error "writer $p still runs 30 s after the stop: deadlock?"
            ok=1
        elif [ $st -ne 0 ]; then
            error "writer $p exited $st: $(cat "$W"/writer.*.err)"
            ok=1
        fi
    done
    return $ok
}

# complete [--pivot]: complete through the socket, then follow must exit 0 within 120 s.
complete() {
    local out st=0
    out=$(timeout 120 "$MI" complete "$@" "$W/j.sock" 2>&1) || st=$?
    if [ $st -ne 0 ]; then
        error "complete $* exited $st: $out"
        return 1
    fi
    st=0
    wait_gone $FOLLOW 120 || st=$?
    if [ $st -ne 0 ]; then
        error "follow exited $st after complete: $(tail -n 3 "$W/follow.err")"
        return 1
    fi
}

# diff_ranges A B [quiet]: runs of bytes where B differs from A (0 when cmp finds them the
# same); the first ones are shown unless quiet.
diff_ranges() {
    if cmp -s "$1" "$2"; then
        echo 0
        return
    fi
    "$SOAKW" diff "$1" "$2" 2> "$W/diff.err" | cut -d' ' -f1
    [ -n "${3:-}" ] || sed "s/^/soak: $FS round $R: /" "$W/diff.err" >&2
}

# round KIND SECS: one round on $W/src.raw (which equals $W/ref.raw when it starts);
# fails on any error.
round() {
    local kind=$1 secs=$2 t0=$SECONDS before=$errors writes bytes lost unwritten held
    rm -f "$W/j" "$W/j.sock" "$W/dst.raw"
    start_follow || return 1
    start_writers
    sleep "$secs"
    if [ "$kind" = complete ]; then
        stop_writers || return 1
        complete || return 1
        lost=$(diff_ranges "$W/src.raw" "$W/dst.raw")
        unwritten=$(diff_ranges "$W/ref.raw" "$W/src.raw")
        [ "$unwritten" -eq 0 ] || error "the source differs from the reference in $unwritten ranges"
    else
        complete --pivot || { stop_writers; return 1; }
        sleep 1                  # the writers go on, on the target now
        stop_writers || return 1
        lost=$(diff_ranges "$W/ref.raw" "$W/dst.raw")
        grep -q '"pivot": true' "$W/events" || error "no pivot in follow's events"
        # and the writers did go on after the pivot: the source misses those writes
        [ "$(diff_ranges "$W/ref.raw" "$W/src.raw" quiet)" -gt 0 ] ||
            error "no write reached the target after the pivot"
        # The target is the live image now: the next round mirrors it.
        mv "$W/dst.raw" "$W/src.raw"
    fi
    writes=$(awk '{ s += $1 } END { printf "%.0f\n", s }' "$W"/count.*)
    bytes=$(awk '{ s += $2 } END { printf "%.0f\n", s }' "$W"/count.*)
    held=$(sed -n 's/.*"downtime_ms": \([0-9]*\).*/\1/p' "$W/events" | tail -n 1)
    printf 'soak: %-5s round %2d %-8s %3d s: %9d writes, %6s, %d lost, writers held %s ms\n' \
        "$FS" "$R" "$kind" $((SECONDS - t0)) "$writes" "$(numfmt --to=iec-i "$bytes")B" \
        "$lost" "${held:-?}"
    [ "$lost" -eq 0 ] || error "$lost ranges lost ($kind): the target differs"
    fs_writes=$((fs_writes + writes)) fs_bytes=$((fs_bytes + bytes)) fs_lost=$((fs_lost + lost))
    fs_rounds=$((fs_rounds + 1))
    [ $errors -eq $before ]
}

# soak_fs BUDGET: rounds on $FS, taking turns, for BUDGET seconds (at least one of each).
soak_fs() {
    local end=$((SECONDS + $1)) left secs
    fs_writes=0 fs_bytes=0 fs_lost=0 fs_rounds=0
    W=$FS_MNT/soak
    mkdir -p "$W"
    truncate -s "$SIZE" "$W/src.raw"
    dd if=/dev/urandom of="$W/src.raw" bs=1M count=32 seek=16 conv=notrunc status=none
    cp --sparse=always "$W/src.raw" "$W/ref.raw"
    for ((R = 1; ; R++)); do
        left=$((end - SECONDS))
        [ $R -gt 2 ] && [ $left -lt 8 ] && break
        secs=$ROUND
        [ $((left - 5)) -ge $secs ] || secs=$((left - 5))
        [ $secs -ge 3 ] || secs=3
        kind=complete
        [ $((R % 2)) -eq 1 ] || kind=pivot
        round $kind $secs || break
    done
    echo "soak: $FS: $fs_rounds rounds, $fs_writes writes, $(numfmt --to=iec-i "$fs_bytes")B, $fs_lost lost"
    # (a round that broke off, or a script error, must not pass for a soak)
    [ $fs_rounds -ge 2 ] || error "only $fs_rounds rounds ran on $FS"
    stop_all
    all_writes=$((all_writes + fs_writes)) all_bytes=$((all_bytes + fs_bytes))
    all_lost=$((all_lost + fs_lost)) all_rounds=$((all_rounds + fs_rounds))
    W=
}

fs_init "$top"
usable=()
for FS in ${MI_FS-$FS_ALL}; do
    why=$(fs_why_not "$FS")
    if [ -n "$why" ]; then
        echo "soak: $FS: skipped: $why"
    else
        usable+=("$FS")
    fi
done
if [ ${#usable[@]} -eq 0 ]; then
    echo "soak: no file system to soak on"
    exit 1
fi
budget=$((TOTAL / ${#usable[@]}))
echo "soak: ${TOTAL} s on ${usable[*]} (${budget} s each), $NPROC writers x $NTHREAD threads," \
     "$SIZE-byte image, rounds of $ROUND s"
for FS in "${usable[@]}"; do
    R=0
    if ! fs_make "$FS" 3G; then
        error "cannot make $FS: $FS_WHY"
        fs_remove "$FS"
        continue
    fi
    soak_fs "$budget"
    fs_remove "$FS"
done
echo "soak: total: $all_rounds rounds, $all_writes writes, $(numfmt --to=iec-i "$all_bytes")B," \
     "$all_lost writes lost, $errors errors"
[ "$errors" -eq 0 ] && [ "$all_lost" -eq 0 ]
