#!/usr/bin/env bats
# trust-follow: who may steer the writers, and what `complete` promises.  The journal can
# hold writers (quiesce) and move their descriptors (pivot), so only its owner may use it
# and only the follower that holds the lease may act through it; `complete` ends with the
# target a consistent copy (exit 0) or says why not (exit 1), never exit 0 with a target
# that lacks a write; `complete --pivot` moves every writer, idle ones too, whatever they
# do next; and the shim never changes what a writer's signals do.
#
# The writers are tests/writers/tfollow.c (and jctl.c's forge-* commands play a program
# that writes the journal without being the follower).  They talk to the test through
# files in $T, so every step waits for a condition (wait_for), never for a guessed time.
load helpers
bats_require_minimum_version 1.5.0

MiB=$((1024 * 1024))
MARK_OFF=$((2 * MiB)) # tfollow.c: where writers put their marker after a pivot
READ_OFF=$((3 * MiB)) # tfollow.c: where idle writers read after a pivot

setup_file() {
    local d=$BATS_FILE_TMPDIR
    export TF=$d/tfollow TFBUS=$d/tfbus JCTL=$d/jctl SHORTIO_SO=$d/shortio.so
    gcc -O2 -Wall -std=gnu11 -o "$TF" "$TOP/tests/writers/tfollow.c"
    # tfbus: the same program linked with libtfbus.so, whose constructor installs a SIGBUS
    # handler before the shim's constructor runs.
    gcc -O2 -Wall -std=gnu11 -fPIC -shared -DTFBUS_LIB -o "$d/libtfbus.so" "$TOP/tests/writers/tfollow.c"
    gcc -O2 -Wall -std=gnu11 -DTFBUS -o "$TFBUS" "$TOP/tests/writers/tfollow.c" \
        -L"$d" -ltfbus -Wl,-rpath,"$d"
    gcc -O2 -Wall -std=gnu11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -pthread -I"$TOP/lib" \
        -o "$JCTL" "$TOP/tests/writers/jctl.c" "${JOURNAL_SRC[@]}"
    gcc -std=gnu11 -Wall -D_GNU_SOURCE -O2 -fPIC -shared -fvisibility=hidden \
        -o "$SHORTIO_SO" "$TOP/tests/faults/shortio.c" -ldl
}

setup() {
    SRC=$T/src.raw
    DST=$T/dst.raw
    REF=$T/ref.raw
    J=$T/j
    FOLLOW_ENV=()
}

# src_image MiB: $SRC full of random bytes.
src_image() { rand_file "$SRC" "$1"; }

# start_follow [OPTS...]: follow $SRC into $DST through $J in the background (with the
# environment assignments in FOLLOW_ENV), pid in FOLLOW, JSON events in $T/events, stderr
# in $T/follow.err; killed at the end of the test; returns once follow is READY.
start_follow() {
    : > "$T/events"
    env "${FOLLOW_ENV[@]}" "$MI" follow --json --journal "$J" "$@" "$SRC" "$DST" \
        > "$T/events" 2> "$T/follow.err" 3>&- &
    FOLLOW=$!
    on_exit "kill -9 $FOLLOW; wait $FOLLOW"
    wait_for grep -q BLOCK_JOB_READY "$T/events" || { cat "$T/follow.err"; fail "follow never got ready"; }
}


# release DIR...: at the end of the test, create every file a tfollow writer in DIR may be
# waiting for, so that it and any child it forked exit (a test that failed half-way leaves
# no writer behind holding the file system).
release() {
    local d
    for d in "$@"; do
        on_exit "touch '$d/go' '$d/go2' '$d/quit' '$d/stop'"
    done
}


# synced: the follower copied everything the journal marks.
synced() {
    "$MI" journal status --json "$J" | python3 -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if not d["dirty"] and not d["copying"] else 1)'
}

# quiescing: a complete holds the writers.
quiescing() { "$MI" journal status --json "$J" | grep -q '"quiesce": true'; }

# count [DIR]: the writes a tfollow periodic or pair writer made so far (read until two
# reads agree: the writer rewrites the file in place while we read it).
count() {
    local a b i
    for i in 1 2 3 4 5; do
        a=$(cat "${1:-$T}/count" 2>/dev/null) || a=0
        b=$(cat "${1:-$T}/count" 2>/dev/null) || b=0
        [ "$a" = "$b" ] && break
    done
    echo $((a))
}
count_ge() { [ "$(count "${2:-$T}")" -ge "$1" ]; }

# fd_is PID FD FILE: /proc/PID/fd/FD names FILE.
fd_is() {
    local got
    got=$(readlink "/proc/$1/fd/$2") || fail "process $1 has no descriptor $2"
    [ "$got" = "$(realpath "$3")" ] || fail "descriptor $2 of process $1 names $got, not $3"
}

# marker_at FILE: the 4 KiB block at MARK_OFF is the writers' marker (all 'M').
marker_at() {
    [ "$(dd if="$1" bs=4096 skip=$((MARK_OFF / 4096)) count=1 status=none | tr -d M | wc -c)" -eq 0 ]
}

# hex16 FILE OFF: 16 bytes of FILE at OFF, in hex.
hex16() { od -An -tx1 -N16 -j "$2" "$1" | tr -d ' \n'; }

# refused_journal JNAME TEXT CMD...: CMD exits 1, its stderr starts "mirror-img: JNAME: "
# and contains TEXT, and the journal is left as it was.  (Commands that would run on are
# stopped after 5 s: exit 124.)
refused_journal() {
    local jn=$1 text=$2
    shift 2
    local before
    before=$(sha256sum < "$jn")
    run --separate-stderr timeout 5 "$@"
    [ "$status" -eq 1 ] || fail "'$*' exited $status, not 1 (expected a refusal naming '$text'): $stderr"
    [[ "${stderr_lines[0]}" == "mirror-img: $jn: "* ]] ||
        fail "'$*': the message does not start with 'mirror-img: $jn: ': $stderr"
    [[ "$stderr" == *"$text"* ]] || fail "'$*': the message does not say '$text': $stderr"
    [ "$(sha256sum < "$jn")" = "$before" ] || fail "'$*' changed the journal it refused"
}

# --- 1. journal takeover -----------------------------------------------------------------
# The journal steers writers: whoever can write it can hold them (quiesce) or send their
# descriptors elsewhere (pivot).  run and follow must refuse a journal another user owns
# or may write, and never reach one through a symbolic link (a link planted in a shared
# directory would hand the journal to whoever planted it).  Paths are given relative
# (cd $T) so that "J as given" is checked too.

# 1a. Another user owns the journal at the path (they created it first, or chowned it):
# using it would let that user steer root's writers.
@test "1a: a journal owned by another user is refused by run and follow (owned by), no target made" {
    src_image 16
    cd "$T"
    "$MI" run --journal j src.raw -- true
    chown 65534:65534 j
    chmod 0600 j
    refused_journal j "owned by" "$MI" run --journal j src.raw -- true
    refused_journal j "owned by" "$MI" follow --journal j src.raw dst.raw
    [ ! -e dst.raw ] || fail "follow created dst.raw although it refused the journal"
}

# 1b. A journal root owns but others may write (mode 0666, or group-writable 0620) is as
# good as theirs.
@test "1b: a root-owned journal writable by group or others (0666, 0620) is refused (writable by other users)" {
    src_image 16
    cd "$T"
    "$MI" run --journal j src.raw -- true
    for mode in 0666 0620; do
        chmod "$mode" j
        refused_journal j "writable by other users" "$MI" run --journal j src.raw -- true
        refused_journal j "writable by other users" "$MI" follow --journal j src.raw dst.raw
        [ ! -e dst.raw ] || fail "follow created dst.raw although it refused the journal (mode $mode)"
    done
}

# 1c. A symbolic link to a perfectly valid journal: refused by name, never followed.
@test "1c: a symbolic link to a valid root-owned journal is refused by run and follow (symbolic link)" {
    src_image 16
    cd "$T"
    "$MI" run --journal j src.raw -- true
    ln -s j jl
    refused_journal jl "symbolic link" "$MI" run --journal jl src.raw -- true
    refused_journal jl "symbolic link" "$MI" follow --journal jl src.raw dst.raw
    [ ! -e dst.raw ] || fail "follow created dst.raw although it refused the journal"
}

# 1d. The shim loaded by hand (LD_PRELOAD and MIRROR_IMG_JOURNAL, no `run`) with a journal
# another user owns: it must not journal (nor register, nor obey it), must say so, and
# must leave the writer exactly as it would be without it.
@test "1d: the shim preloaded directly with a journal owned by another user: writer unchanged, says it does not journal, journal untouched" {
    src_image 16
    cp "$SRC" "$T/plain.raw"
    head -c 4096 /dev/urandom > "$T/data"
    "$MI" run --journal "$J" "$SRC" -- true
    chown 65534:65534 "$J"
    chmod 0600 "$J"
    before=$(sha256sum < "$J")
    writer='dd if="$1" of="$2" bs=4096 seek=10 conv=notrunc status=none && echo written; exit 7'
    run --separate-stderr sh -c "$writer" sh "$T/data" "$T/plain.raw"
    plain_status=$status plain_out=$output
    [ "$plain_status" -eq 7 ] && [ "$plain_out" = written ] || fail "the writer itself misbehaves: $status $output $stderr"
    run --separate-stderr env LD_PRELOAD="$MIRROR_IMG_SHIM" MIRROR_IMG_JOURNAL="$J" \
        sh -c "$writer" sh "$T/data" "$SRC"
    echo "status $status, stdout: $output, stderr: $stderr"
    [ "$status" -eq "$plain_status" ] || fail "exit status $status with the shim, $plain_status without"
    [ "$output" = "$plain_out" ] || fail "stdout '$output' with the shim, '$plain_out' without"
    grep -Eq '^mirror-img-shim: .*not journal' <<<"$stderr" ||
        fail "no 'mirror-img-shim: ... not journaling' line on stderr: $stderr"
    cmp "$SRC" "$T/plain.raw" || fail "the write did not happen as without the shim"
    [ "$(sha256sum < "$J")" = "$before" ] || fail "the shim modified a journal owned by another user"
}

# forged_pivot: a writer under run writes SRC every 20 ms; jctl forges a pivot to a copy of
# SRC; the writer must go on writing SRC and the copy must stay untouched.
forged_pivot() {
    src_image 16
    cp "$SRC" "$T/forged.raw"
    local sum wpid wfd n
    sum=$(sha256sum < "$T/forged.raw")
    "$MI" run --journal "$J" "$SRC" -- true
    under_bg "$TF" periodic "$SRC" "$T" $((4 * MiB))
    release "$T"
    wait_for test -s "$T/ready" || fail "the writer did not start"
    read -r wpid wfd < "$T/ready"
    run "$JCTL" forge-pivot "$J" "$T/forged.raw"
    assert_success
    n=$(count)
    wait_for count_ge $((n + 5)) || fail "the writer stopped writing after the forged pivot"
    fd_is "$wpid" "$wfd" "$SRC"
    [ "$(sha256sum < "$T/forged.raw")" = "$sum" ] || fail "the writer wrote to the forged pivot target"
    touch "$T/stop"
    wait_exit "$WRITER" || fail "the writer failed"
}

# 1e. Forged pivot: a program that is not the follower (no lock, no lease, no quiesce)
# writes a path into the pivot area and bumps the generation.  Writers must not move:
# otherwise anything that can write the journal redirects a VM's disk writes.
@test "1e: a forged pivot (path + pivot_gen, no lease, no quiesce) moves no writer" {
    forged_pivot
}

# 1f. Forged hold: quiesce = 1 under an hour-long lease "held" by a pid that is not alive
# and without the follower's lock.  Nobody follows, so nobody may hold the writers: the
# next write must go through at once (within 3 s), not in an hour.
@test "1f: a forged quiesce with an hour-long lease of a dead follower holds no writer (< 3 s)" {
    src_image 16
    "$MI" run --journal "$J" "$SRC" -- true
    under_bg "$TF" periodic "$SRC" "$T" $((4 * MiB))
    release "$T"
    wait_for test -s "$T/ready" || fail "the writer did not start"
    run "$JCTL" forge-quiesce "$J"
    assert_success
    n=$(count) t0=$(date +%s%N)
    # a deadline, not a sleep: poll for the writer's progress for 3 s at most
    while ! count_ge $((n + 2)) && [ $(($(date +%s%N) - t0)) -lt 3000000000 ]; do sleep 0.05; done
    count_ge $((n + 2)) || fail "a running writer is held by a forged quiesce (no write in 3 s)"
    t0=$(date +%s%N)
    run timeout 10 "$MI" run --journal "$J" "$SRC" -- \
        dd if=/dev/urandom of="$SRC" bs=4096 seek=100 count=1 conv=notrunc status=none
    ms=$((($(date +%s%N) - t0) / 1000000))
    [ "$status" -eq 0 ] || fail "a new writer exited $status ($output) after ${ms} ms"
    [ "$ms" -lt 3000 ] || fail "a new writer's write took ${ms} ms under a forged quiesce"
    touch "$T/stop"
    wait_exit "$WRITER" || fail "the writer failed"
}

# --- 2. pivot and idle writers -------------------------------------------------------------
# A writer idle during `complete --pivot` (a source descriptor open, written once) switches
# at its next call on the descriptor.  Whatever that call is, it must see the target: an
# exec'd image or a forked-and-exec'd child writing through the inherited descriptor, a
# read, a shared mapping, an fsync.  Otherwise the writer reads stale data from, or writes
# to, a source nobody mirrors any more, and the writes are lost.
# After the pivot the test writes 'S' bytes into SRC at READ_OFF (outside the shim): a
# writer that reads or maps the source would see them.

# pivot_idle MODE: the scenario for one tfollow idle MODE.
pivot_idle() {
    local mode=$1 wpid wfd pid
    src_image 32
    start_follow
    under_bg "$TF" idle "$SRC" "$T" "$mode"
    release "$T"
    wait_for test -s "$T/ready" || fail "the writer did not start"
    read -r wpid wfd < "$T/ready"
    run "$MI" complete --pivot "$J.sock"
    assert_success
    assert_output --partial "pivot: true"
    wait_exit "$FOLLOW" || { cat "$T/follow.err"; fail "follow failed after complete --pivot"; }
    cmp "$SRC" "$DST" || fail "the target is not the source at the pivot"
    head -c 4096 /dev/zero | tr '\0' S | dd of="$SRC" bs=4096 seek=$((READ_OFF / 4096)) conv=notrunc status=none
    local dst_bytes
    dst_bytes=$(hex16 "$DST" $READ_OFF)
    touch "$T/go"
    pid=$wpid
    case $mode in
    exec | forkexec)
        wait_for test -s "$T/done" || fail "the exec'd writer did not write"
        pid=$(cat "$T/done")
        if [ "$mode" = exec ] && [ "$pid" != "$wpid" ]; then fail "exec changed the pid ($wpid -> $pid)"; fi
        if [ "$mode" = forkexec ] && [ "$pid" = "$wpid" ]; then fail "the child has the parent's pid"; fi
        ;;
    *)
        wait_for test -e "$T/op-done" || fail "the writer did not do its $mode"
        fd_is "$pid" "$wfd" "$DST"
        if [ "$mode" = pread ] || [ "$mode" = mmap ]; then
            [ "$(cat "$T/read")" = "$dst_bytes" ] ||
                fail "$mode after the pivot read $(cat "$T/read"), the target holds $dst_bytes (the source: $(hex16 "$SRC" $READ_OFF))"
        fi
        if [ "$mode" = mmap ]; then
            grep -qF "$(realpath "$DST")" "/proc/$pid/maps" || fail "the new mapping is not of the target"
            ! grep -qF "$(realpath "$SRC")" "/proc/$pid/maps" || fail "the new mapping is of the source"
        fi
        touch "$T/go2"
        wait_for test -s "$T/done" || fail "the writer did not write after its $mode"
        ;;
    esac
    fd_is "$pid" "$wfd" "$DST"
    marker_at "$DST" || fail "the write after the pivot ($mode) did not land in the target"
    ! marker_at "$SRC" || fail "the write after the pivot ($mode) landed in the source"
    touch "$T/quit"
    wait_exit "$WRITER" || fail "the writer failed"
}

@test "2i: pivot, then the idle writer execs a program writing through the inherited fd: it writes the target" {
    pivot_idle exec
}

@test "2ii: pivot, then the idle writer forks and the child execs a program writing the inherited fd: the target" {
    pivot_idle forkexec
}

@test "2iii: pivot, then the idle writer preads its fd: the descriptor and the data are the target's" {
    pivot_idle pread
}

@test "2iv: pivot, then the idle writer mmaps its fd MAP_SHARED: it maps, reads and writes the target" {
    pivot_idle mmap
}

@test "2v: pivot, then the idle writer fsyncs its fd: the descriptor is the target's, later writes land there" {
    pivot_idle fsync
}

# --- 3. the lease runs out during complete --pivot ----------------------------------------
# While complete holds the writers, only the follower's lease keeps them held.  If the lease
# runs out after the drain (the flush of the target is slow and the follower gets no CPU:
# here fsync of the target sleeps 600 ms, twice the 300 ms lease, and the test freezes the
# follower with SIGSTOP inside that fsync until the writer has gone on writing), the
# writers go on writing the source, and a pivot after that would move them onto a target
# that lacks those writes.  (A slow flush alone does not lapse the lease: follow's main
# loop renews it every 100 ms on another thread.  Hence the freeze.)
# The writer writes every block to SRC and then to REF.  Whatever complete says, no write
# may be lost: if it reports the pivot, DST == REF; otherwise every write is still in SRC
# (SRC == REF) and a plain complete ends with DST == SRC, or follow stopped with an error.
# flushed_or_ended PID: complete (PID) reached the target's flush, or has ended.
flushed_or_ended() { test -s "$T/fsyncs" || ! kill -0 "$1" 2>/dev/null; }

@test "3: the lease lapses during complete --pivot (slow target flush): no write is lost" {
    src_image 32
    cp "$SRC" "$REF"
    local real
    real=$(realpath "$T")
    # (an ASan build of follow wants its runtime first: it is, through the binary itself)
    FOLLOW_ENV=(ASAN_OPTIONS="${ASAN_OPTIONS:-}:verify_asan_link_order=0"
        LD_PRELOAD="$SHORTIO_SO" SHORTIO_PATHS="$real/dst.raw" SHORTIO_RATE=0
        SHORTIO_FSYNC_DELAY_MS=600 SHORTIO_FSYNC_DELAY_IF="$T/slow"
        SHORTIO_FSYNC_MARK="$T/fsyncs" SHORTIO_REPORT="$T/shortio.report")
    start_follow --lease 300ms
    under_bg "$TF" pair "$SRC" "$REF" "$T"
    release "$T"
    wait_for count_ge 200 || fail "the writer does not write"
    touch "$T/slow"
    "$MI" complete --pivot "$J.sock" > "$T/complete.out" 2>&1 3>&- &
    completer=$!
    on_exit "kill $completer"
    # The flush; or, on a starved machine (a loaded btrfs once stalled the follower past the
    # 300 ms lease before it got there), a lease that ran out earlier: complete then fails on
    # its own, and the checks below judge that outcome the same way.
    wait_for flushed_or_ended "$completer" ||
        fail "complete neither flushed the target nor ended: $(cat "$T/complete.out")"
    if [ -s "$T/fsyncs" ]; then
        kill -STOP "$FOLLOW"
        on_exit "kill -CONT $FOLLOW"
        n=$(count)
        wait_for count_ge $((n + 20)) ||
            { kill -CONT "$FOLLOW"; fail "the writer stayed held by a frozen follower (the lease never ran out)"; }
        kill -CONT "$FOLLOW"
    else
        grep -q "lease ran out" "$T/complete.out" ||
            fail "complete ended before the flush, and not on a lapsed lease: $(cat "$T/complete.out")"
    fi
    st=0
    wait_exit $completer 30 || st=$?
    out=$(cat "$T/complete.out")
    echo "complete --pivot: status $st: $out"
    rm -f "$T/slow"
    touch "$T/stop"
    wait_exit "$WRITER" || fail "the writer failed"
    if [ "$st" -eq 0 ] && grep -q "pivot: true" <<<"$out"; then
        cmp "$REF" "$DST" || fail "complete --pivot succeeded but the target lacks writes made while the lease had run out"
        return
    fi
    [ "$st" -ne 0 ] || fail "complete --pivot exited 0 without reporting the pivot: $out"
    cmp "$REF" "$SRC" || fail "complete --pivot failed, but not every write is in the source: some writers moved to the target"
    if kill -0 "$FOLLOW" 2>/dev/null; then
        run "$MI" complete "$J.sock"
        [ "$status" -eq 0 ] || { cat "$T/follow.err"; fail "the plain complete after the failed pivot exited $status: $output"; }
        wait_exit "$FOLLOW" || { cat "$T/follow.err"; fail "follow failed after the plain complete"; }
        cmp "$SRC" "$DST" || fail "the plain complete exited 0 but the target differs from the source"
    else
        fst=0
        wait "$FOLLOW" || fst=$?
        [ "$fst" -ne 0 ] || fail "follow exited 0 after a failed pivot"
        [ -s "$T/follow.err" ] || fail "follow exited $fst without a message"
    fi
}

# --- 4. untrusted while complete drains ---------------------------------------------------
# A writer that starts stdio on the source (fopen "r+", fprintf, fclose) while complete
# drains: glibc writes through its internal calls, which the shim cannot hold or mark, so
# the journal becomes untrusted (stdio) in the middle of the completion.  complete must fail
# naming stdio; exiting 0 would claim a consistent copy that may lack the stdio write.  The
# drain is made to take seconds (16 MiB dirty, copied at 4 MiB/s), and the test checks
# that the stdio writer was done before complete ended.
@test "4: a stdio writer starts while complete drains: complete fails naming stdio, never exit 0" {
    src_image 32
    start_follow
    "$MI" set-speed "$J.sock" 4M
    under dd if=/dev/urandom of="$SRC" bs=1M count=16 seek=8 conv=notrunc status=none
    "$MI" complete "$J.sock" > "$T/complete.out" 2>&1 3>&- &
    completer=$!
    on_exit "kill $completer"
    wait_for quiescing || fail "complete never quiesced the writers"
    under "$TF" stdio "$SRC" $((1 * MiB)) "written through stdio while complete drains" ||
        fail "the stdio writer failed"
    kill -0 $completer 2>/dev/null ||
        fail "complete ended before the stdio writer was done ($(cat "$T/complete.out"))"
    st=0
    wait_exit $completer 30 || st=$?
    out=$(cat "$T/complete.out")
    echo "complete: status $st: $out"
    if [ "$st" -eq 0 ]; then
        cmp -s "$SRC" "$DST" && fail "complete exited 0 with the journal untrusted (stdio); the target happens to be identical"
        fail "complete exited 0 with the journal untrusted (stdio), and the target differs from the source"
    fi
    grep -q stdio <<<"$out" || fail "complete failed without naming stdio: $out"
}

# --- 5. a mapping its writer never unmapped ----------------------------------------------
# Writer A maps SRC MAP_SHARED read-write, stores into it after the follower copied what
# its mmap marked, and exits without msync or munmap (most programs just exit).  No call
# marks those stores; only complete's quiesce can, from the mappings A published.  Writer B
# keeps running (it writes elsewhere in SRC, then idles) so that the journal still has a
# live writer when complete comes.  complete must end with DST == SRC, or fail naming a
# reason: never exit 0 with a target that lacks A's stores.
@test "5: a writer exits with a stored-to shared mapping (no msync/munmap) while another writer lives: complete exit 0 means DST == SRC" {
    src_image 32
    mkdir "$T/a" "$T/b"
    start_follow
    under_bg "$TF" periodic "$SRC" "$T/b" $((24 * MiB))
    release "$T/b"
    wait_for test -s "$T/b/ready" || fail "writer B did not start"
    under "$TF" mapexit "$SRC" "$T/a" $((8 * MiB)) $((4 * MiB)) &
    apid=$!
    on_exit "kill $apid"
    release "$T/a"
    wait_for test -s "$T/a/ready" || fail "writer A did not map the source"
    touch "$T/b/pause"
    wait_for synced || fail "follow did not copy what A's mmap marked"
    rm "$T/b/pause"
    touch "$T/a/go"
    wait_exit $apid || fail "writer A failed"
    n=$(count "$T/b")
    wait_for count_ge $((n + 5)) "$T/b" || fail "writer B stopped writing"
    touch "$T/b/pause"
    run "$MI" complete "$J.sock"
    echo "complete: status $status: $output"
    if [ "$status" -eq 0 ]; then
        wait_exit "$FOLLOW" || { cat "$T/follow.err"; fail "follow failed after complete"; }
        cmp "$SRC" "$DST" || fail "complete exited 0 but the target lacks the stores of the writer that exited without munmap"
    else
        [ "$status" -eq 1 ] && [ -n "$output" ] || fail "complete exited $status without naming a reason: $output"
    fi
    touch "$T/b/stop"
    wait_exit "$WRITER" || fail "writer B failed"
}

# --- 6. SIGBUS goes where it would without the shim -----------------------------------------
# The shim catches SIGBUS only for faults in the journal's mapping (a journal truncated
# under the writer); everything else must go to the program's own disposition exactly as
# without the shim: ignored stays ignored (here inherited across exec, so that the shim's
# handler is installed over SIG_IGN), a handler installed before the shim's (by a library's
# constructor) runs, a program's own handler runs, and a real fault kills with SIGBUS
# (run: 135).  The pass-through must be in the shim itself, not an undefined symbol.
@test "6: SIGBUS under the shim: ignored, handled and fatal exactly as without it; no undefined mij_ symbol" {
    requires nm
    src_image 16
    run nm -D --undefined-only "$MIRROR_IMG_SHIM"
    assert_success
    local bad=() undefined
    undefined=$(grep -o 'mij_[A-Za-z0-9_]*' <<<"$output" | tr '\n' ' ')
    [ -z "$undefined" ] || bad+=("the shim needs undefined symbols: $undefined")
    local prog mode
    # the programs without the shim do what the cases say (ign, handler and pre exit 0,
    # fault dies of SIGBUS), and under run exactly the same
    local c prog mode want rc out want_rc want_out
    for c in "$TF ign 0" "$TF handler 0" "$TFBUS pre 0" "$TF fault 135"; do
        read -r prog mode want <<<"$c"
        out=$(timeout 10 "$prog" sigbus "$mode" "$T" 2>&1) && rc=0 || rc=$?
        want_rc=$rc want_out=$out
        [ "$want_rc" -eq "$want" ] || bad+=("$mode: exits $want_rc without the shim, not $want: $want_out")
        out=$(timeout 10 "$MI" run --journal "$J" "$SRC" -- "$prog" sigbus "$mode" "$T" 2>&1) && rc=0 || rc=$?
        echo "$mode: without the shim: $want_rc '$want_out'; under run: $rc '$out'"
        [ "$rc" -eq "$want_rc" ] && [ "$out" = "$want_out" ] ||
            bad+=("$mode: exit $rc '$out' under run, $want_rc '$want_out' without the shim")
    done
    [ ${#bad[@]} -eq 0 ] || fail "$(printf '%s\n' "${bad[@]}")"
}

# --- 7. the mmap writer, ten times --------------------------------------------------------
# follow.bats's "an mmap writer (MAP_SHARED, msync, munmap)" was seen to end with a
# differing target on tmpfs now and then.  Ten rounds, each with a fresh image, journal and
# target (the writer stores the same blocks every round: only a fresh image makes a missed
# store show), each must end with exit 0 and DST == SRC.
@test "7: an mmap writer (MAP_SHARED, msync, munmap), ten rounds: complete exit 0 and DST == SRC every time" {
    local round
    for round in $(seq "${MMAP_ROUNDS:-10}"); do
        rm -f "$SRC" "$DST" "$J" "$J.sock"
        truncate -s 32M "$SRC"
        dd if=/dev/urandom of="$SRC" bs=1M count=4 seek=1 conv=notrunc status=none
        start_follow
        under python3 "$BATS_TEST_DIRNAME/writers/mwrite.py" mmap "$SRC" 300 ||
            fail "round $round: the mmap writer failed"
        run "$MI" complete "$J.sock"
        [ "$status" -eq 0 ] || fail "round $round: complete exited $status: $output"
        wait_exit "$FOLLOW" || { cat "$T/follow.err"; fail "round $round: follow failed"; }
        cmp "$SRC" "$DST" || fail "round $round: complete exited 0 but the target differs from the source"
    done
}
