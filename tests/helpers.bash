# helpers.bash: shared set-up for the bats suites.
# MI is the binary under test (build/mirror-img, or the ASan build when run.sh says so).
bats_load_library bats-support 2>/dev/null || load /usr/lib/bats/bats-support/load
bats_load_library bats-assert 2>/dev/null || load /usr/lib/bats/bats-assert/load

TOP=$(cd "$BATS_TEST_DIRNAME/.." && pwd)
MI=${MI:-$TOP/build/mirror-img}
export MIRROR_IMG_SHIM=${MIRROR_IMG_SHIM:-$TOP/build/mirror-img-shim.so}
T=$BATS_TEST_TMPDIR
# The journal code a test program (a follower or writer of its own) is built from.
JOURNAL_SRC=("$TOP"/lib/journal-{layout,writer,follower}.c "$TOP/lib/proc.c" "$TOP/lib/util.c")

# requires CMD...: skip (never pass) when a tool is missing.
requires() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || skip "$c is not installed"
    done
}

# Cleanup actions registered with on_exit run in teardown, last first.
_MI_CLEANUP=()
on_exit() { _MI_CLEANUP+=("$*"); }
teardown() {
    local i
    for ((i = ${#_MI_CLEANUP[@]} - 1; i >= 0; i--)); do
        eval "${_MI_CLEANUP[$i]}" >/dev/null 2>&1 || true
    done
    _MI_CLEANUP=()
}

# qemu_same A B: QEMU's own judgement that two images read the same.
qemu_same() {
    run qemu-img compare "$1" "$2"
    assert_success
}

# qcow2_ok IMG: qemu-img check finds no error and no leak.
qcow2_ok() {
    run qemu-img check "$1"
    assert_success
}

# alloc_bytes FILE: bytes the file takes on disk.
alloc_bytes() { echo $(( $(stat -c %b "$1") * 512 )); }

# rand_file FILE SIZE_MIB: a file of random bytes.
rand_file() { head -c "$(( $2 * 1024 * 1024 ))" /dev/urandom > "$1"; }

# nbdkit_start SOCK ARGS...: start nbdkit on a Unix socket in the background (stopped at
# teardown); the URI is nbd+unix:///?socket=SOCK.
nbdkit_start() {
    local sock=$1
    shift
    requires nbdkit
    nbdkit -f --exit-with-parent -U "$sock" -P "$sock.pid" "$@" </dev/null >"$sock.log" 2>&1 3>&- &
    local i
    for i in $(seq 50); do [ -S "$sock" ] && [ -s "$sock.pid" ] && break; sleep 0.1; done
    [ -S "$sock" ] || fail "nbdkit did not start on $sock"
    on_exit "kill \$(cat '$sock.pid') 2>/dev/null"
}

# wait_for CMD...: retry CMD for up to 10 s.
wait_for() {
    local i
    for i in $(seq 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}

# The live mirror's suites (trust-*): J the journal, SRC the image its writers write.
# under CMD...: run a writer under the shim, journaling $SRC.
under() { "$MI" run --journal "$J" "$SRC" -- "$@"; }

# under_bg CMD...: the same in the background (the pid of `run` in WRITER, killed at the
# end of the test: run passes the signal on to CMD; fd 3, bats' own, is not inherited).
under_bg() {
    "$MI" run --journal "$J" "$SRC" -- "$@" 3>&- &
    WRITER=$!
    on_exit "kill $WRITER"
}

# wait_exit PID [SECONDS]: the exit status of a background PID; one that does not exit in
# time (default 60 s) is killed and counts as 124: a hang fails the test, not the suite.
wait_exit() {
    local pid=$1 deadline=$((SECONDS + ${2:-60}))
    while kill -0 "$pid" 2>/dev/null; do
        if [ $SECONDS -ge $deadline ]; then
            kill -9 "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
            echo "pid $pid did not exit in ${2:-60} s" >&2
            return 124
        fi
        sleep 0.1
    done
    wait "$pid"
}

# same: DST is SRC byte for byte (a block device source reads as its content).
same() { cmp "$SRC" "$DST"; }

# never_stale: what every complete that exited 0 must give.
never_stale() {
    same || fail "complete exited 0 but $DST differs from $SRC: a write was missed and the target is stale"
}

# expect_tracked: complete exits 0, follow exits 0, DST == SRC.
expect_tracked() {
    run "$MI" complete "$J.sock"
    if [ "$status" -ne 0 ]; then
        echo "follow's stderr:"; cat "$T/follow.err"
        fail "complete exited $status where the writes must be tracked: $output"
    fi
    local st=0
    wait_exit "$FOLLOW" || st=$?
    [ "$st" -eq 0 ] || { cat "$T/follow.err"; fail "follow exited $st after complete"; }
    never_stale
}

# frozen CMD...: run CMD while follow is stopped (SIGSTOP; the writers are never held, no
# quiesce being asked for), then let follow go on.
frozen() {
    on_exit "kill -CONT $FOLLOW"
    kill -STOP "$FOLLOW"
    local st=0
    "$@" || st=$?
    kill -CONT "$FOLLOW"
    return $st
}
