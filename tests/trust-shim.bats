#!/usr/bin/env bats
# trust-shim: the live mirror's contract where the shim is easiest to get wrong.  After the
# writers are done, `mirror-img complete` either exits 0 with DST == SRC byte for byte, or
# exits 1 with a message naming why the journal cannot be trusted; it never exits 0 with
# DST != SRC.  "Tracked" scenarios must end with exit 0 and DST == SRC; "refused" ones
# with exit 1 naming the reason.
#
# Every write under test lands after follow's first pass (BLOCK_JOB_READY) and writes
# random bytes the target does not have, so a write the shim misses leaves a target that
# cmp tells apart.  Where a write could escape the shim, the writer also makes an ordinary
# tracked pwrite right after it (tests/writers/trust.c), and follow is stopped (SIGSTOP)
# while the writer runs: the follower's bypass detection (size or change time moved while
# no shim write happened) and its size tracking then see only the end state, never a
# moment between the two writes, so they cannot save the day by luck and a miss shows
# every time.
load helpers
bats_require_minimum_version 1.5.0

KiB=1024
MiB=$((1024 * 1024))

setup_file() {
    export TRUST=$BATS_FILE_TMPDIR/trust
    gcc -O2 -Wall -std=gnu11 -pthread -o "$TRUST" "$TOP/tests/writers/trust.c"
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
    "$MI" follow --json --journal "$J" "$SRC" "$DST" > "$T/events" 2> "$T/follow.err" 3>&- &
    FOLLOW=$!
    on_exit "kill -9 $FOLLOW"
    wait_for grep -q BLOCK_JOB_READY "$T/events" || { cat "$T/follow.err"; fail "follow never got ready"; }
}





# reason_named TEXT REGEX: complete's message or follow's stderr names the reason.  (follow
# may have stopped on its own already, saying why, before complete reached it.)
reason_named() {
    grep -Eq -- "$2" <<<"$1" || grep -Eq -- "$2" "$T/follow.err"
}

# refused STATUS OUTPUT REGEX: a complete that exited STATUS saying OUTPUT refused, and it
# (or follow, which may have stopped already) names the untrusted reason REGEX.
refused() {
    echo "complete: status $1: $2"
    if [ "$1" -eq 0 ]; then
        same || fail "complete exited 0 with $DST different from $SRC (it must refuse, naming $3)"
        fail "complete exited 0 where it must refuse, naming $3 (the target happens to be identical)"
    fi
    [ "$1" -eq 1 ] || fail "complete exited $1: $2"
    reason_named "$2" "$3" || { cat "$T/follow.err"; fail "complete refused without naming $3: $2"; }
}

# expect_refused REGEX: complete exits 1 naming the untrusted reason.
expect_refused() {
    run "$MI" complete "$J.sock"
    refused "$status" "$output" "$1"
}

# synced: the follower has copied everything the journal marks and the target has the
# source's size.
synced() {
    [ "$(stat -L -c %s "$SRC")" = "$(stat -c %s "$DST")" ] || return 1
    "$MI" journal status --json "$J" | python3 -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if not d["dirty"] and not d["copying"] else 1)'
}

# quiescing: a complete holds the writers.
quiescing() { "$MI" journal status --json "$J" | grep -q '"quiesce": true'; }

# in_sync: follow reports in_sync.
in_sync() { "$MI" status --json "$J.sock" 2>/dev/null | grep -q '"in_sync": true'; }

# journal_untrusted: the reasons journal status lists now, space-separated.
journal_untrusted() {
    "$MI" journal status --json "$J" | python3 -c 'import json,sys; print(" ".join(u["reason"] for u in json.load(sys.stdin)["untrusted"]))'
}

# probe_or_skip CMD...: run a probe; exit 77 skips the test with the probe's reason.
probe_or_skip() {
    run "$@"
    [ "$status" -eq 77 ] && skip "${output#unsupported: }"
    [ "$status" -eq 0 ] || fail "probe failed: $output"
}

# --- 1. descriptors the shim never saw opened ------------------------------------------
# A descriptor can reach a process without any open() the shim wraps.  The shim decides
# what is the source at the moment a descriptor appears, so every such way must be
# followed (or the journal said untrusted); otherwise writes through it are silently
# missing from the target.

# 1a. SCM_RIGHTS: a helper outside the shim opens SRC and passes the descriptor over a Unix
# socket; the writer under run receives it with recvmsg and pwrites through it.  This is
# how privilege-separated programs and fd-passing daemons hand out images.
@test "1a: a source descriptor received with recvmsg (SCM_RIGHTS) is tracked" {
    src_image 32
    start_follow
    "$TRUST" sendfd "$T/fd.sock" "$SRC" 3>&- &
    helper=$!
    on_exit "kill $helper"
    wait_for test -S "$T/fd.sock"
    frozen under "$TRUST" recvfd "$T/fd.sock" "$SRC" $((5 * MiB + 512)) $((256 * KiB))
    wait_exit $helper
    expect_tracked
}

# 1a'. The same descriptor passing through recvmmsg (the batched receive).
@test "1a: a source descriptor received with recvmmsg (SCM_RIGHTS) is tracked" {
    src_image 32
    start_follow
    "$TRUST" sendfd "$T/fd.sock" "$SRC" 3>&- &
    helper=$!
    on_exit "kill $helper"
    wait_for test -S "$T/fd.sock"
    frozen under "$TRUST" recvfd "$T/fd.sock" "$SRC" $((9 * MiB + 4096)) $((128 * KiB)) mmsg
    wait_exit $helper
    expect_tracked
}

# 1b. openat2 has no glibc wrapper: programs call syscall(SYS_openat2, ...) (systemd and
# container runtimes do, for RESOLVE_* path safety); the descriptor it returns is the
# source like any other.
@test "1b: SRC opened with syscall(SYS_openat2) and written with pwrite is tracked" {
    src_image 32
    start_follow
    run frozen under "$TRUST" openat2 "$SRC" $((7 * MiB + 100)) $((200 * KiB))
    [ "$status" -eq 77 ] && skip "${output#unsupported: }"
    [ "$status" -eq 0 ] || fail "writer failed: $output"
    expect_tracked
}

# 1c. pidfd_getfd copies a descriptor out of another process (debuggers, supervisors and
# checkpointing tools do it); that descriptor refers to the source.
@test "1c: a source descriptor taken from another process with pidfd_getfd is tracked" {
    src_image 32
    start_follow
    "$TRUST" holdfd "$SRC" "$T/holder" 3>&- &
    holder=$!
    on_exit "kill $holder"
    wait_for test -s "$T/holder" || fail "the holder never opened the source"
    read -r hpid hfd < "$T/holder"
    run frozen under "$TRUST" getfd "$hpid" "$hfd" "$SRC" $((11 * MiB)) $((192 * KiB))
    [ "$status" -eq 77 ] && skip "${output#unsupported: }"
    [ "$status" -eq 0 ] || fail "writer failed: $output"
    # the writers are done: the holder (outside the shim, the source open read-write) too
    kill $holder
    wait_exit $holder || true
    expect_tracked
}

# 1d. open_by_handle_at opens a file from a handle, without a path (NFS servers in user
# space, backup tools, fanotify users).
@test "1d: SRC opened with name_to_handle_at + open_by_handle_at is tracked" {
    src_image 32
    # tmpfs, ext4, XFS and btrfs give handles; skip where the file system (or the lack of
    # CAP_DAC_READ_SEARCH) says no
    probe_or_skip "$TRUST" handle-probe "$SRC"
    start_follow
    frozen under "$TRUST" handle "$SRC" $((13 * MiB + 3)) $((100 * KiB))
    expect_tracked
}

# --- 2. writes through glibc's internal write ---------------------------------------------
# stdio and dprintf write with glibc's internal __write, which no preloaded symbol can
# intercept, and posix_spawn opens its file actions with internal calls.  The shim must
# either track what they change or say "stdio" (or another reason): never a silent miss.

# 2a. A program whose stdout is the image opened read-write by the shell (`1<> SRC`), which
# seeks and printf's at an offset.  Stdout was never fopen'ed, so the shim's fopen check
# never sees the stream: it must notice the inherited stream another way.
@test "2a: stdout redirected onto the source (1<> SRC), printf at an offset: refused, naming stdio" {
    src_image 32
    start_follow
    frozen under bash -c 'exec "$0" stdout $((3 * 1024 * 1024 + 77)) 65536 $((20 * 1024 * 1024)) 1<>"$1"' \
        "$TRUST" "$SRC"
    expect_refused 'stdio'
}

# 2b. The same with `> SRC`: the shell's O_TRUNC empties the image (a tracked open), then
# the program printf's.  Once the follower has mirrored the truncation the printf's bytes
# are new, and either tracked (DST == SRC) or refused with "stdio".
@test "2b: stdout redirected onto the source with O_TRUNC (> SRC), printf: tracked or refused naming stdio" {
    src_image 32
    start_follow
    under_bg bash -c 'exec 1>"$1"; : > "$2.truncated"; while [ ! -e "$2.go" ]; do sleep 0.02; done
                      exec "$0" stdout 1000000 65536 4096' "$TRUST" "$SRC" "$T/flag"
    wait_for test -e "$T/flag.truncated"
    wait_for synced || fail "the follower never mirrored the truncation"
    frozen eval 'touch "$T/flag.go"; wait_exit $WRITER'
    run "$MI" complete "$J.sock"
    echo "complete: status $status: $output"
    if [ "$status" -eq 0 ]; then
        never_stale
    else
        [ "$status" -eq 1 ] || fail "complete exited $status: $output"
        reason_named "$output" 'stdio' || fail "complete refused without naming stdio: $output"
    fi
}

# 2c. dprintf formats into a stream on the caller's descriptor and writes it with the
# internal write: the bytes land at the descriptor's position, and must be tracked.
@test "2c: dprintf on a source descriptor at an offset is tracked" {
    src_image 32
    start_follow
    frozen under "$TRUST" dprintf "$SRC" $((6 * MiB + 999)) $((80 * KiB))
    expect_tracked
}

# 2d. posix_spawn with a file action that opens SRC with O_TRUNC: the child empties the
# image before its exec, with glibc's internal open.  The parent then writes near 8 MiB.
# Either the truncation is mirrored (DST == SRC: zeros below 8 MiB) or complete refuses.
@test "2d: posix_spawn with addopen(SRC, O_WRONLY|O_TRUNC): tracked or refused, never stale" {
    src_image 32
    start_follow
    frozen under "$TRUST" spawn "$SRC" $((8 * MiB)) $((1 * MiB))
    [ "$(stat -c %s "$SRC")" -eq $((9 * MiB)) ]
    run "$MI" complete "$J.sock"
    echo "complete: status $status: $output"
    if [ "$status" -eq 0 ]; then
        never_stale
    else
        [ "$status" -eq 1 ] || fail "complete exited $status: $output"
        reason_named "$output" 'untrusted|died inside a write|stdio|raw_syscall|spawn' ||
            fail "complete refused without naming a reason: $output"
    fi
}

# --- 3. pwritev2(RWF_NOAPPEND) -------------------------------------------------------------
# Linux 6.9 added RWF_NOAPPEND: a positional write on an O_APPEND descriptor.  It lands at
# the offset given, not at the end, so it must not be marked as an append.
@test "3: pwritev2 with RWF_NOAPPEND on an O_APPEND descriptor, in the middle of SRC, is tracked" {
    src_image 32
    probe_or_skip "$TRUST" noappend-probe "$T/probe.noappend"
    start_follow
    under "$TRUST" noappend "$SRC" $((10 * MiB + 123)) $((300 * KiB))
    [ "$(stat -c %s "$SRC")" -eq $((32 * MiB)) ]
    expect_tracked
}

# --- 4. block devices ----------------------------------------------------------------------
# A block device image (LVM, a loop device) is changed by ioctls as well as by writes:
# BLKZEROOUT and BLKDISCARD change its content, and fallocate on a device zeroes or punches.
# A loop device over a file in TMPDIR: BLKDISCARD punches the backing file, so the range
# reads back zeros; the test compares the target with what the device really holds.
@test "4: a loop device source: BLKZEROOUT, BLKDISCARD and fallocate zero/punch are tracked" {
    requires losetup
    [ -e /dev/loop-control ] || ls /dev/loop[0-9]* >/dev/null 2>&1 || skip "no loop devices (/dev/loop*)"
    rand_file "$T/backing.img" 32
    DEV=$(losetup -f --show "$T/backing.img" 2>"$T/losetup.err") ||
        skip "losetup cannot attach a loop device: $(cat "$T/losetup.err")"
    on_exit "losetup -d $DEV"
    SRC=$DEV
    start_follow
    run under "$TRUST" blkdev "$DEV"
    [ "$status" -eq 0 ] || fail "writer failed: $output"
    echo "$output"
    grep -q '^BLKZEROOUT .* ok$' <<<"$output" || grep -q '^BLKDISCARD .* ok$' <<<"$output" ||
        skip "the loop device takes neither BLKZEROOUT nor BLKDISCARD"
    # what must read zeros now does (BLKDISCARD promises nothing: cmp judges it below)
    while read -r op off len res; do
        [ "$res" = ok ] && [ "$op" != BLKDISCARD ] || continue
        cmp -n "$len" -i "$off:0" "$DEV" /dev/zero || fail "$op did not zero $off+$len"
    done <<<"$output"
    expect_tracked
}

# --- 5. exec while another thread is inside a write ---------------------------------------
# execve kills every other thread; one inside a 64 MiB pwrite dies part-way, and the shim
# never marks what it wrote (the writer waits until the follower copied its first write,
# so those bytes are new to the target).  The new image keeps the pid (and the start
# time), so only the in-flight marker it left tells: the journal must say writer_died, a
# complete must not claim a consistent target, and after the full pass that follows a
# retried complete must succeed.  The exec'd program lives on (sleep) while complete runs.
@test "5: exec while a thread is inside a write: writer_died, never a stale target, then complete succeeds" {
    src_image 64
    start_follow
    under_bg "$TRUST" exec "$SRC" "$DST" "$T/pid" /bin/bash -c ': > "$0"; exec sleep 60' "$T/execed"
    wait_for test -e "$T/execed" || fail "the writer never exec'd"
    # the exec'd program's shim has registered by now (its constructor ran before main)
    run timeout 20 "$MI" complete "$J.sock"
    first=$output
    echo "first complete: status $status: $output"
    [ "$status" -ne 124 ] || fail "complete hung"
    if [ "$status" -eq 0 ]; then
        never_stale
    else
        [ "$status" -eq 1 ] || fail "complete exited $status: $output"
        reason_named "$output" 'writer_died|died inside a write' ||
            fail "complete refused without naming writer_died: $output"
        wait_for in_sync || fail "follow never got back in sync after the full pass"
        run timeout 20 "$MI" complete "$J.sock"
        [ "$status" -eq 0 ] || fail "the retried complete exited $status: $output"
        never_stale
    fi
    reason_named "$first" 'writer_died|died inside a write' || grep -q writer_died <<<"$(journal_untrusted)" ||
        fail "nobody reported writer_died (complete: $first; follow: $(cat "$T/follow.err"))"
}

# --- 6. a thread cancelled inside a write ---------------------------------------------------
# pwrite is a cancellation point: pthread_cancel unwinds a thread from inside the shim's
# wrapper, past the code that lowers its in-flight marker, while the process lives on.
# A quiesce that waits for that marker waits for ever: complete must not hang (or time
# out), and must end with DST == SRC.  (A shim that cannot tell what the cancelled call
# wrote may say writer_died once: then the retried complete, after the full pass, must
# succeed.)
@test "6: a thread cancelled inside a write, the process living on: complete does not hang, DST == SRC" {
    src_image 32
    start_follow
    under_bg "$TRUST" cancel "$SRC" "$DST" "$T/cancelled"
    wait_for test -e "$T/cancelled" || fail "the writer thread was never cancelled"
    run timeout 20 "$MI" complete "$J.sock"
    echo "complete: status $status: $output"
    [ "$status" -ne 124 ] || fail "complete hung (killed by timeout after 20 s)"
    if [ "$status" -ne 0 ]; then
        # a cancelled write whose range is unknown may cost one full pass (writer_died)
        reason_named "$output" 'writer_died|died inside a write' || fail "complete failed: $output"
        wait_for in_sync || fail "follow never got back in sync after the full pass"
        run timeout 20 "$MI" complete "$J.sock"
        [ "$status" -ne 124 ] || fail "the retried complete hung"
        [ "$status" -eq 0 ] || fail "the retried complete exited $status: $output"
    fi
    never_stale
}

# --- 7. libaio on tmpfs --------------------------------------------------------------------
# On tmpfs a buffered io_submit writes before it returns, and the shim can only say
# io_submit after the call (never before what it warns about); those writes are not held by
# a quiesce either.  Follow's own tick stops on the reason, but nothing else did: a complete
# that got in first (the tick is off while complete runs) drained and reported a
# consistent target.  To meet that moment every time rather than by luck, fio runs while
# complete drains a backlog throttled to 1 MiB/s, and is done before complete ends: complete
# must refuse, naming io_submit, and never exit 0 with DST != SRC.  The test mounts its own
# tmpfs so that it always runs there.
@test "7: fio libaio (buffered) on a tmpfs image while complete drains: refused naming io_submit, never stale" {
    requires fio
    mkdir "$T/tmpfs"
    mount -t tmpfs -o size=160m tmpfs "$T/tmpfs" 2>"$T/mount.err" ||
        skip "cannot mount a tmpfs: $(cat "$T/mount.err")"
    on_exit "umount -l '$T/tmpfs'"
    SRC=$T/tmpfs/src.raw
    DST=$T/tmpfs/dst.raw
    J=$T/tmpfs/j
    src_image 32
    start_follow
    "$MI" set-speed "$J.sock" 1M
    under dd if=/dev/urandom of="$SRC" bs=1M count=4 seek=20 conv=notrunc status=none
    "$MI" complete "$J.sock" > "$T/complete.out" 2>&1 3>&- &
    completer=$!
    on_exit "kill $completer"
    wait_for quiescing || fail "complete never quiesced the writers"
    under fio --name=w --filename="$SRC" --ioengine=libaio --direct=0 --iodepth=8 \
        --rw=randwrite --bs=64k --size=32M --io_size=16M --randrepeat=0 >"$T/fio.out" 2>&1 ||
        { cat "$T/fio.out"; fail "fio failed"; }
    kill -0 $completer 2>/dev/null ||
        fail "complete ended before fio did: fio did not write while complete drained ($(cat "$T/complete.out"))"
    st=0
    wait_exit $completer 30 || st=$?
    refused "$st" "$(cat "$T/complete.out")" 'io_submit'
}

# --- 8. a mixed workload, five rounds -------------------------------------------------------
# Everything the shim does track, in one program: pwrite, pwritev(2), writev and write at
# the file position, dup'd descriptors, O_APPEND (also set by F_SETFL), ftruncate growing
# and shrinking, fallocate in every mode the file system has, sendfile, copy_file_range,
# splice, O_DIRECT, a MAP_SHARED mapping with stores, msync and munmap, a forked child
# writing too, and last a shared mapping the writer never unmaps, stored to after the
# follower copied what its msync marked (most programs just exit: only complete's quiesce,
# from the mappings the writer published, can find those stores).  Five rounds of follow
# (resuming on the recorded target), writer, complete: each must end with exit 0 and
# DST == SRC.
@test "8: a mixed workload writer, five rounds of follow and complete: exit 0 and DST == SRC each time" {
    src_image 32
    for round in 1 2 3 4 5; do
        echo "round $round"
        start_follow
        under "$TRUST" mixed "$SRC" "$T" "$DST" 2>"$T/mixed.err" || { cat "$T/mixed.err"; fail "writer failed"; }
        [ $round -eq 1 ] && cat "$T/mixed.err"
        expect_tracked
    done
}
