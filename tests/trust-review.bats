#!/usr/bin/env bats
# trust-review: one test per hole an adversarial review of the live mirror found, each the
# review's reproducer made deterministic.  The contract is trust-shim's and trust-follow's:
# `mirror-img complete` either exits 0 with DST == SRC byte for byte, or exits 1 naming why
# (or follow has stopped already, saying why, and exits non-zero); it never exits 0 with
# DST != SRC; after `complete --pivot` exits 0 the writers' later writes land in DST, and a
# writer never writes any other file than the one the follower pivoted to.
#
# The writers are tests/writers/review.c (one program, a subcommand per scenario; also
# built statically for the program that runs without the shim).  They talk to the test
# through files in $T, so every step waits for a condition, never for a guessed time.
# Where a write could escape the shim, an ordinary tracked write follows it while follow is
# stopped (SIGSTOP, as in trust-shim.bats): the follower's bypass detection (size or change
# time moved while no shim write happened) then sees only the end state and cannot save
# the day by luck, so a miss shows every time.
load helpers
bats_require_minimum_version 1.5.0

KiB=1024
MiB=$((1024 * 1024))

setup_file() {
    local d=$BATS_FILE_TMPDIR
    export REVIEW=$d/review REVIEW_STATIC=$d/review-static REVIEW_STATIC_ERR=$d/static.err
    gcc -O2 -Wall -std=gnu11 -I"$TOP/lib" -o "$REVIEW" "$TOP/tests/writers/review.c"
    # the same program linked statically: LD_PRELOAD never loads the shim into it (test 7
    # skips without it, saying why)
    if [ "$(gcc -print-file-name=libc.a)" = libc.a ]; then
        echo "libc.a is missing (the static C library: libc6-dev)" > "$REVIEW_STATIC_ERR"
    elif ! gcc -O2 -Wall -std=gnu11 -static -I"$TOP/lib" -o "$REVIEW_STATIC" \
        "$TOP/tests/writers/review.c" 2> "$REVIEW_STATIC_ERR"; then
        rm -f "$REVIEW_STATIC"
    fi
}

setup() {
    SRC=$T/src.raw
    DST=$T/dst.raw
    J=$T/j
}

# src_image MiB: $SRC full of random bytes.
src_image() { rand_file "$SRC" "$1"; }

# start_follow: follow $SRC into $DST through $J in the background (pid in FOLLOW, JSON
# events in $T/events, stderr in $T/follow.err), killed at the end of the test; returns
# once follow is READY (its first pass is done).
start_follow() {
    : > "$T/events"
    "$MI" follow --json --journal "$J" "$SRC" "$DST" > "$T/events" 2> "$T/follow.err" 3>&- &
    FOLLOW=$!
    FOLLOW_ST=
    on_exit "kill -9 $FOLLOW; wait $FOLLOW"
    wait_for grep -q BLOCK_JOB_READY "$T/events" || { cat "$T/follow.err"; fail "follow never got ready"; }
}

# release NAME...: at the end of the test, create the files a writer may still wait for.
release() {
    local n
    for n in "$@"; do on_exit "touch '$T/$n'"; done
}


# follow_done: wait for follow to exit (once); its status in FOLLOW_ST.
follow_done() {
    [ -n "$FOLLOW_ST" ] && return 0
    FOLLOW_ST=0
    wait_exit "$FOLLOW" || FOLLOW_ST=$?
}



# refused STATUS OUTPUT REGEX: a complete that exited STATUS saying OUTPUT refused, naming
# REGEX in its message or in follow's stderr.  follow may have stopped on its own, saying
# why, before complete reached it (complete then cannot connect): when complete's message
# does not name the reason, follow must exit (non-zero) and its stderr must.
refused() {
    echo "complete: status $1: $2"
    if [ "$1" -eq 0 ]; then
        same || fail "complete exited 0 with $DST different from $SRC (it must refuse, naming $3)"
        fail "complete exited 0 where it must refuse, naming $3 (the target happens to be identical)"
    fi
    [ "$1" -eq 1 ] || fail "complete exited $1: $2"
    grep -Eq -- "$3" <<<"$2" && return 0
    follow_done
    [ "$FOLLOW_ST" -ne 0 ] || fail "complete failed ($2) and follow exited 0"
    grep -Eq -- "$3" "$T/follow.err" || { cat "$T/follow.err"; fail "complete refused without naming $3: $2"; }
}

# tracked_or_refused REGEX: complete exits 0 with DST == SRC, or exits 1 naming REGEX (a
# reason a full pass cures); then follow gets back in sync and a second complete exits 0
# with DST == SRC.  (Which one depends on whether follow's tick or complete meets the
# reason first; a complete that meets a transient reason words it as "writer(s) died
# inside a write" whatever the reason: REGEX allows for that.)
tracked_or_refused() {
    run "$MI" complete "$J.sock"
    echo "complete: status $status: $output"
    if [ "$status" -ne 0 ]; then
        [ "$status" -eq 1 ] || fail "complete exited $status: $output"
        grep -Eq -- "$1" <<<"$output" || { cat "$T/follow.err"; fail "complete refused without naming $1: $output"; }
        wait_for in_sync || { cat "$T/follow.err"; fail "follow never got back in sync after the full pass"; }
        run "$MI" complete "$J.sock"
        [ "$status" -eq 0 ] || fail "the complete after the full pass exited $status: $output"
    fi
    local st=0
    wait_exit "$FOLLOW" || st=$?
    [ "$st" -eq 0 ] || { cat "$T/follow.err"; fail "follow exited $st after complete"; }
    never_stale
}

# synced: the follower copied everything the journal marks, and the target has the
# source's size.
synced() {
    [ "$(stat -L -c %s "$SRC")" = "$(stat -c %s "$DST")" ] || return 1
    "$MI" journal status --json "$J" | python3 -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if not d["dirty"] and not d["copying"] else 1)'
}

# in_sync: follow reports in_sync.
in_sync() { "$MI" status --json "$J.sock" 2>/dev/null | grep -q '"in_sync": true'; }

# probe_or_skip CMD...: run a probe; exit 77 skips the test with the probe's reason.
probe_or_skip() {
    run "$@"
    [ "$status" -eq 77 ] && skip "${output#unsupported: }"
    [ "$status" -eq 0 ] || fail "probe failed: $output"
}

# block_is FILE OFF CHAR: the 4 KiB block of FILE at OFF is all CHAR.
block_is() {
    [ "$(dd if="$1" bs=4096 skip=$(($2 / 4096)) count=1 status=none | tr -d "$3" | wc -c)" -eq 0 ] &&
        [ "$(dd if="$1" bs=4096 skip=$(($2 / 4096)) count=1 status=none | wc -c)" -eq 4096 ]
}

# fd_is PID FD FILE: /proc/PID/fd/FD names FILE.
fd_is() {
    local got
    got=$(readlink "/proc/$1/fd/$2") || fail "process $1 has no descriptor $2"
    [ "$got" = "$(realpath "$3")" ] || fail "descriptor $2 of process $1 names $got, not $3"
}

# count: the rounds a sig-pivot writer made so far (read until two reads agree).
count() {
    local a b i
    for i in 1 2 3 4 5; do
        a=$(cat "$T/count" 2>/dev/null) || a=0
        b=$(cat "$T/count" 2>/dev/null) || b=0
        [ "$a" = "$b" ] && break
    done
    echo $((a))
}
count_ge() { [ "$(count)" -ge "$1" ]; }

# pivot_idle_writer: an idle writer (review idle: SRC open, no call on it) through a
# `complete --pivot` that exits 0; follow is done; the writer waits for $T/go.
pivot_idle_writer() {
    under_bg "$REVIEW" idle "$SRC" "$T"
    release go
    wait_for test -s "$T/ready" || fail "the writer did not start"
    run "$MI" complete --pivot "$J.sock"
    assert_success
    assert_output --partial "pivot: true"
    wait_exit "$FOLLOW" || { cat "$T/follow.err"; fail "follow failed after complete --pivot"; }
    cmp "$SRC" "$DST" || fail "the target is not the source at the pivot"
}

# --- 1. a write behind the shim right before complete ------------------------------------
# repro_bypass_complete.sh: a process not under `run` (gone by the time complete scans
# /proc) writes the source right after the follower recorded its size and change time, and
# no shim write happens after it: exactly what the bypass check is for.  complete drained
# and reported a consistent target without ever looking (and then recorded the new change
# time, so nothing saw the write later either).  The write lands just after one of
# follow's idle checks (the next is 100 ms away) and complete starts at once, so it is
# complete, not follow's tick, that meets it.
@test "1: a write behind the shim right before complete: refused naming bypass (then a full pass), never stale" {
    src_image 16
    start_follow
    run "$REVIEW" after-observe "$J" "$SRC" $((1 * MiB)) 4096 "$MI" complete "$J.sock"
    echo "complete: status $status: $output"
    if [ "$status" -eq 0 ]; then
        # follow's tick met the write first (complete was slow to start): a full pass
        never_stale
    else
        [ "$status" -eq 1 ] || fail "complete exited $status: $output"
        grep -q bypass <<<"$output" || fail "complete refused without naming bypass: $output"
        wait_for in_sync || { cat "$T/follow.err"; fail "follow never got back in sync after the full pass"; }
        run "$MI" complete "$J.sock"
        [ "$status" -eq 0 ] || fail "the complete after the full pass exited $status: $output"
        never_stale
    fi
}

# --- 2. SRC renamed over -------------------------------------------------------------------
# repro_rename.sh: the source path replaced by another file (editors, `sed -i`, `cp
# --remove-destination` and `install` rename over it): follow went on mirroring the old
# inode and complete exited 0 with a target that is not what SRC names.
@test "2: SRC renamed over by another file: follow or complete refuses (renamed over), never exit 0" {
    src_image 16
    start_follow
    cp "$SRC" "$T/new.raw"
    dd if=/dev/urandom of="$T/new.raw" bs=4096 count=1 seek=10 conv=notrunc status=none
    mv "$T/new.raw" "$SRC"
    run "$MI" complete "$J.sock"
    refused "$status" "$output" 'renamed over|names another file'
    follow_done
    [ "$FOLLOW_ST" -ne 0 ] || fail "follow exited 0 although SRC names another file"
}

# --- 3. O_APPEND changed by another process sharing the description -----------------------
# repro_append_share.sh: O_APPEND belongs to the open file description.  A forked child
# sets it (clears it) with F_SETFL; the parent's pwrite at 0 then appends at the end (lands
# at 0), while the parent's shim, which never saw the change, marked the other range.
@test "3: O_APPEND set, then cleared, by a forked child sharing the description: exit 0, DST == SRC" {
    local mode bad=()
    for mode in set clear; do
        mkdir "$T/$mode"
        SRC=$T/$mode/src.raw DST=$T/$mode/dst.raw J=$T/$mode/j
        src_image 16
        start_follow
        frozen under "$REVIEW" append "$mode" "$SRC"
        run "$MI" complete "$J.sock"
        echo "$mode: complete: status $status: $output"
        if [ "$status" -ne 0 ]; then
            bad+=("$mode: complete exited $status where the writes must be tracked: $output")
        elif ! same; then
            bad+=("$mode: complete exited 0 but $DST differs from $SRC: a write was missed and the target is stale")
        fi
        wait_exit "$FOLLOW" || bad+=("$mode: follow failed: $(cat "$T/follow.err")")
    done
    [ ${#bad[@]} -eq 0 ] || fail "$(printf '%s\n' "${bad[@]}")"
}

# --- 4. raw recvmsg / recvmmsg -----------------------------------------------------------
# repro_raw_recvmsg.sh: a descriptor received through syscall(SYS_recvmsg) (or recvmmsg)
# was never looked at: its writes were not marked.
@test "4: source descriptors received through syscall(SYS_recvmsg) and syscall(SYS_recvmmsg): exit 0, DST == SRC" {
    src_image 16
    start_follow
    frozen under "$REVIEW" raw-recv "$SRC" $((1 * MiB)) $((5 * MiB + 512)) $((64 * KiB))
    expect_tracked
}

# --- 5. raw truncate -----------------------------------------------------------------------
# repro_raw_truncate.sh: syscall(SYS_truncate, SRC, 0) names the file by path, and the
# shim's raw-syscall check took its first argument for a descriptor: the truncation was
# neither marked nor reported.  A write then gives the file its old size again.
@test "5: syscall(SYS_truncate, SRC, 0) then a write back to the old size: tracked or refused (full pass), never stale" {
    src_image 16
    start_follow
    frozen under "$REVIEW" raw-truncate "$SRC"
    [ "$(stat -c %s "$SRC")" -eq $((16 * MiB)) ]
    tracked_or_refused 'raw_syscall|died inside a write'
}

# --- 6. open_by_handle_at with O_TRUNC -------------------------------------------------------
# repro_handle_trunc.sh: open_by_handle_at(O_RDWR | O_TRUNC) empties the source, and the
# shim only tracked the new descriptor: the truncation was never marked.  (Handles need
# CAP_DAC_READ_SEARCH and a file system that gives them: skipped where refused.)
@test "6: open_by_handle_at(O_TRUNC) on the source then a write back to the old size: tracked or refused (full pass), never stale" {
    src_image 16
    probe_or_skip "$REVIEW" handle-probe "$SRC"
    start_follow
    frozen under "$REVIEW" handle-trunc "$SRC"
    [ "$(stat -c %s "$SRC")" -eq $((16 * MiB)) ]
    tracked_or_refused 'raw_syscall|died inside a write'
}

# --- 7. a static program exec'd with the source open ------------------------------------
# repro_static_exec2.sh: a shell under the shim opens SRC on fd 3 and execs a statically
# linked program (LD_PRELOAD never loads the shim into it), which writes through fd 3.  It
# keeps the pid of a registered writer, so the /proc scan for writers without the shim
# passed it over, and a tracked write elsewhere hid the change from the bypass check.
# complete must refuse, naming the process.
@test "7: a static program exec'd with the source open writes it: refused naming its pid and name" {
    [ -x "$REVIEW_STATIC" ] ||
        skip "no static build (gcc -static): $(grep -m1 -iE 'missing|cannot find|error' "$REVIEW_STATIC_ERR")"
    src_image 16
    start_follow
    release quit
    static_then_poke() {
        under_bg sh -c 'exec 3<>"$1"; exec "$0" static-write 3 "$2" 65536 "$3"' \
            "$REVIEW_STATIC" "$SRC" $((1 * MiB)) "$T"
        wait_for test -s "$T/written" || fail "the static program did not write"
        under "$REVIEW" poke "$SRC" $((8 * MiB))
    }
    frozen static_then_poke
    local spid
    spid=$(cat "$T/written")
    [ "$(cat "/proc/$spid/comm")" = review-static ] || fail "pid $spid is not the static program"
    run "$MI" complete "$J.sock"
    refused "$status" "$output" "pid $spid \\(review-static\\)"
}

# --- 8. system() after clearenv ----------------------------------------------------------
# repro_system.sh: system() (and popen()) spawn /bin/sh with glibc's internal posix_spawn:
# the exec check never ran, so a program that cleared its environment ran the shell
# without the shim, and the shell wrote the inherited source unseen.
@test "8: system() after clearenv(), the shell writing the inherited source: refused naming exec_without_shim" {
    src_image 16
    start_follow
    frozen under "$REVIEW" system "$SRC" $((1 * MiB))
    run "$MI" complete "$J.sock"
    refused "$status" "$output" 'exec_without_shim'
}

# --- 9. printf + fflush on a stdout on the source, then _exit ----------------------------
# repro_stdout.sh: the check of a stdout on the source ran only at the program's next
# tracked call, a close or exit; a program that printf's, flushes and then makes no such
# call (sleeps, is killed, _exit) was never seen.
@test "9: stdout on the source, printf + fflush, then _exit: refused naming stdio" {
    src_image 16
    start_follow
    stdout_then_poke() {
        under sh -c 'exec "$0" stdout "$2" 8192 1<>"$1"' "$REVIEW" "$SRC" $((1 * MiB + 77))
        under "$REVIEW" poke "$SRC" $((8 * MiB))
    }
    frozen stdout_then_poke
    run "$MI" complete "$J.sock"
    refused "$status" "$output" 'stdio'
}

# --- 10. mremap of part of a tracked mapping ------------------------------------------------
# repro_mremap.sh: the shim knew a mapping by its start address only.  The second half of a
# shared mapping moved elsewhere, then a munmap of the original range dropped the whole
# mapping from the writer's table, so neither msync nor complete's quiesce marked stores
# through the moved half.  The writer lives on, its mapping live, while complete runs.
@test "10: a store through the mremap'd half of a shared mapping (original range unmapped): exit 0, DST == SRC" {
    src_image 16
    start_follow
    under_bg "$REVIEW" mremap "$SRC" "$T"
    release go quit
    wait_for test -s "$T/unmapped" || fail "the writer did not map and move"
    wait_for synced || fail "the follower never copied what the munmap marked"
    store_then_poke() {
        touch "$T/go"
        wait_for test -s "$T/stored" || fail "the writer did not store through the moved half"
        under "$REVIEW" poke "$SRC" $((8 * MiB))
    }
    frozen store_then_poke
    expect_tracked
    touch "$T/quit"
    wait_exit "$WRITER" || fail "the writer failed"
}

# --- 11. dup'd descriptors through a pivot ---------------------------------------------------
# repro_pivot_dup.sh: a pivot gave each descriptor its own open file description on the
# target, so two dup'd descriptors stopped sharing their file position: the write through
# the second landed over the write through the first.  POSIX: A at 0, B at 4 KiB, C at
# 8 KiB.
@test "11: dup'd descriptors after complete --pivot keep one file position: B at 4 KiB and C at 8 KiB of DST" {
    src_image 16
    start_follow
    under_bg "$REVIEW" pivot-dup "$SRC" "$T"
    release go
    wait_for test -s "$T/ready" || fail "the writer did not start"
    run "$MI" complete --pivot "$J.sock"
    assert_success
    assert_output --partial "pivot: true"
    wait_exit "$FOLLOW" || { cat "$T/follow.err"; fail "follow failed after complete --pivot"; }
    cmp "$SRC" "$DST" || fail "the target is not the source at the pivot"
    block_is "$DST" 0 A || fail "the write before the pivot is not at 0 of the target"
    touch "$T/go"
    wait_exit "$WRITER" || fail "the writer failed"
    ! block_is "$SRC" 4096 B || fail "the write after the pivot landed in the source"
    ! block_is "$SRC" 8192 C || fail "the write after the pivot landed in the source"
    block_is "$DST" 4096 B || fail "B is not at 4 KiB of the target (the descriptors' positions split): $(od -An -c -N4 -j4096 "$DST")"
    block_is "$DST" 8192 C || fail "C is not at 8 KiB of the target (the descriptors' positions split): $(od -An -c -N4 -j8192 "$DST")"
    [ "$(cat "$T/done")" -eq 12288 ] || fail "the descriptors' common position is $(cat "$T/done"), not 12288"
}

# --- 12. the target replaced by a symbolic link before an idle writer switches ---------------
# repro_idle_pivot_swap.sh: an idle writer switches at its next call, opening the target by
# path.  Replaced by a symbolic link to another file in the meantime (the admin moved the
# target to its final place), the path led the writer into that file.
@test "12: the target path replaced by a symbolic link before an idle writer switches: the other file is never written" {
    src_image 16
    head -c $((2 * MiB)) /dev/zero > "$T/victim"
    local sum
    sum=$(sha256sum < "$T/victim")
    start_follow
    pivot_idle_writer
    mv "$DST" "$T/final.raw"
    ln -s "$T/victim" "$DST"
    touch "$T/go"
    wait_exit "$WRITER" || fail "the writer failed"
    [ "$(sha256sum < "$T/victim")" = "$sum" ] ||
        fail "the writer wrote through the symbolic link into another file ($(od -An -c -N4 -j$MiB "$T/victim"))"
    block_is "$SRC" $MiB I || block_is "$T/final.raw" $MiB I || fail "the writer's write landed nowhere"
}

# --- 13. another user's file at the target path before an idle writer switches ---------------
# repro_idle_pivot_user.sh: the target lives in a sticky world-writable directory; after
# `complete --pivot` exits 0 the admin moves it to its final place, and another local user
# (uid 4242) puts a file of their own at the target path: the root writer, opening the path
# at its next call, wrote the guest's data into that user's file.
@test "13: another user's file at the target path before an idle root writer switches: that file is never written" {
    [ "$(id -u)" -eq 0 ] || skip "needs root (a root writer, a file of another user)"
    mkdir "$T/shared"
    chmod 1777 "$T/shared"
    DST=$T/shared/dst.raw
    src_image 16
    start_follow
    pivot_idle_writer
    mv "$DST" "$T/final.raw"
    probe_or_skip "$REVIEW" create-as 4242 "$T/shared" dst.raw $((2 * MiB))
    [ "$(stat -c %u "$DST")" -eq 4242 ] || fail "the planted file is not uid 4242's"
    local sum
    sum=$(sha256sum < "$DST")
    touch "$T/go"
    wait_exit "$WRITER" || fail "the writer failed"
    [ "$(sha256sum < "$DST")" = "$sum" ] ||
        fail "the root writer wrote into uid 4242's file ($(od -An -c -N4 -j$MiB "$DST"))"
    block_is "$SRC" $MiB I || block_is "$T/final.raw" $MiB I || fail "the writer's write landed nowhere"
}

# --- 14. a signal handler writing the source during the pivot ---------------------------------
# repro_sig_pivot.sh: a SIGALRM handler that writes the source, run while its thread was
# switching its descriptors (15000 of them: the switch takes a while), waited for the
# switch it had interrupted: the writer spun for ever (and complete --pivot failed, or
# exited 0 with the writer stuck).  The handler writes once the switch has begun in the
# main loop's write (review.c, on_sig), so a signal comes in during the switch every time.
@test "14: a SIGALRM handler writing the source during the pivot: the writer keeps running, complete --pivot exits 0" {
    src_image 16
    start_follow
    under_bg "$REVIEW" sig-pivot "$SRC" 15000 "$T"
    wait_for test -s "$T/ready" || fail "the writer did not start"
    local wpid wfd nfds n
    read -r wpid wfd nfds < "$T/ready"
    on_exit "kill -9 $wpid"
    echo "writer $wpid: $nfds descriptors on the source"
    wait_for count_ge 50 || fail "the writer does not beat"
    run timeout 15 "$MI" complete --pivot "$J.sock"
    echo "complete --pivot: status $status: $output"
    [ "$status" -eq 0 ] || fail "complete --pivot exited $status: $output"
    assert_output --partial "pivot: true"
    n=$(count)
    wait_for count_ge $((n + 100)) || fail "the writer stopped after the pivot (heartbeat stuck at $(count))"
    fd_is "$wpid" "$wfd" "$DST"
    local sum
    sum=$(head -c 8192 "$SRC" | sha256sum)
    n=$(count)
    wait_for count_ge $((n + 50)) || fail "the writer stopped after the pivot"
    [ "$(head -c 8192 "$SRC" | sha256sum)" = "$sum" ] || fail "the writer still writes the source after the pivot"
}
