#!/usr/bin/env bats
# Load: eight writer processes of four threads each write one image under the shim while
# `follow` runs; then `complete` (the target equals the source) and, with the writers still
# writing, `complete --pivot` (no write is lost: the target equals a reference that got
# every write too).  LOAD_SECONDS (default 60: a minute of writing) is the writing time
# of the two rounds together.
load helpers

NPROC=8
NTHREAD=4
SIZE_MIB=64

setup_file() {
    # loadw IMG REF STOP P: NTHREAD threads; thread t owns slice P*NTHREAD+t of the image
    # (NPROC*NTHREAD slices), and writes random 4 KiB blocks in it, each to IMG and then
    # the same bytes at the same offset to REF, until the file STOP exists.  One writer per
    # slice, so REF ends with the last write of every block.  Prints the count of writes.
    cat > "$BATS_FILE_TMPDIR/loadw.c" <<EOF
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#define NPROC $NPROC
#define NTHREAD $NTHREAD
static int img, ref, proc;
static const char *stop;
static long slice_blocks;
static long counts[NTHREAD];
static void *run(void *arg) {
    long t = (long)arg, slice = proc * NTHREAD + t;
    unsigned seed = (unsigned)(slice * 7919 + getpid());
    char buf[4096];
    for (long n = 0;; n++) {
        if (n % 256 == 0 && access(stop, F_OK) == 0)
            break;
        for (int i = 0; i < 4096; i += 4) *(unsigned *)(buf + i) = (unsigned)rand_r(&seed);
        off_t off = (off_t)(slice * slice_blocks + rand_r(&seed) % slice_blocks) * 4096;
        if (pwrite(img, buf, 4096, off) != 4096 || pwrite(ref, buf, 4096, off) != 4096) {
            perror("pwrite");
            exit(1);
        }
        counts[t]++;
    }
    return NULL;
}
int main(int argc, char **argv) {
    struct stat st;
    if (argc != 5) { fprintf(stderr, "usage: loadw IMG REF STOP P\n"); return 2; }
    if ((img = open(argv[1], O_RDWR)) < 0 || (ref = open(argv[2], O_RDWR)) < 0 || fstat(img, &st) < 0) {
        perror("open");
        return 1;
    }
    stop = argv[3];
    proc = atoi(argv[4]);
    slice_blocks = st.st_size / 4096 / (NPROC * NTHREAD);
    pthread_t th[NTHREAD];
    for (long t = 0; t < NTHREAD; t++) pthread_create(&th[t], NULL, run, (void *)t);
    long total = 0;
    for (int t = 0; t < NTHREAD; t++) { pthread_join(th[t], NULL); total += counts[t]; }
    printf("%ld\n", total);
    return 0;
}
EOF
    gcc -O2 -pthread -o "$BATS_FILE_TMPDIR/loadw" "$BATS_FILE_TMPDIR/loadw.c"
}

setup() {
    J="$T/j"
    SECS=$(( ${LOAD_SECONDS:-60} / 2 ))
    truncate -s ${SIZE_MIB}M "$T/src.raw"
    dd if=/dev/urandom of="$T/src.raw" bs=1M count=16 seek=8 conv=notrunc status=none
}

start_follow() {
    "$MI" follow --json --journal "$J" "$@" "$T/src.raw" "$T/dst.raw" > "$T/events" 2> "$T/follow.err" &
    FOLLOW=$!
    on_exit "kill -9 $FOLLOW"
    wait_for grep -q BLOCK_JOB_READY "$T/events" || { cat "$T/follow.err"; fail "follow never got ready"; }
}

# start_writers REF: NPROC writer processes under the shim; their counts go to $T/count.P.
start_writers() {
    rm -f "$T/stop"
    WRITERS=()
    local p
    for ((p = 0; p < NPROC; p++)); do
        "$MI" run --journal "$J" "$T/src.raw" -- "$BATS_FILE_TMPDIR/loadw" "$T/src.raw" "$1" \
            "$T/stop" $p > "$T/count.$p" 2> "$T/writer.$p.err" &
        WRITERS+=($!)
        on_exit "kill -9 $!"
    done
}

# stop_writers: ask them to stop; each must exit 0 within 30 s (no deadlock).
stop_writers() {
    touch "$T/stop"
    local p deadline=$((SECONDS + 30))
    for p in "${WRITERS[@]}"; do
        while kill -0 "$p" 2>/dev/null; do
            [ $SECONDS -lt $deadline ] || fail "writer $p still running 30 s after stop: deadlock?"
            sleep 0.1
        done
        wait "$p" || fail "writer $p failed: $(cat "$T"/writer.*.err)"
    done
}

total_writes() { cat "$T"/count.* | awk '{ s += $1 } END { print s + 0 }'; }

# diff_blocks A B: how many 4 KiB blocks differ (block by block: `cmp -l | awk` took 8 s
# of both CPUs on two images that differ everywhere).
diff_blocks() {
    python3 -c '
import sys
n = 0
with open(sys.argv[1], "rb") as a, open(sys.argv[2], "rb") as b:
    while True:
        x, y = a.read(4096), b.read(4096)
        if not x and not y:
            break
        n += x != y
print(n)' "$1" "$2"
}

# wait_follow: follow exits 0 within 60 s.
wait_follow() {
    local deadline=$((SECONDS + 60))
    while kill -0 $FOLLOW 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || fail "follow still running 60 s after complete: deadlock?"
        sleep 0.1
    done
    wait $FOLLOW || { cat "$T/follow.err"; fail "follow failed"; }
}

@test "load: 8 writers x 4 threads under the shim with follow; complete, then complete --pivot while they write: no lost write" {
    # Round 1: writers, then complete: the target equals the source.
    cp "$T/src.raw" "$T/ref.raw"
    start_follow
    start_writers "$T/ref.raw"
    sleep "$SECS"
    stop_writers
    w1=$(total_writes)
    run timeout 60 "$MI" complete "$J.sock"
    assert_success
    wait_follow
    cmp "$T/src.raw" "$T/dst.raw"
    cmp "$T/src.raw" "$T/ref.raw"
    echo "round 1: $w1 writes, $(diff_blocks "$T/src.raw" "$T/dst.raw") lost"

    # Round 2: the writers keep writing through complete --pivot, onto the target.
    start_follow
    start_writers "$T/ref.raw"
    sleep "$SECS"
    run timeout 60 "$MI" complete --pivot "$J.sock"
    assert_success
    assert_output --partial "pivot: true"
    wait_follow
    sleep 1                      # the writers go on, on the target now
    stop_writers
    w2=$(total_writes)
    lost=$(diff_blocks "$T/ref.raw" "$T/dst.raw")
    moved=$(diff_blocks "$T/ref.raw" "$T/src.raw")
    echo "round 2: $w2 writes, $lost lost (blocks where the target differs from the reference)"
    echo "         $moved blocks written after the pivot (the source no longer has them)"
    grep -h downtime "$T/events" | sed -n 's/.*"downtime_ms": \([0-9]*\).*/         writers held for \1 ms/p'
    echo "# load: $((w1 + w2)) writes, $lost lost" >&3
    [ "$lost" -eq 0 ]
    [ "$moved" -gt 0 ]
    cmp "$T/ref.raw" "$T/dst.raw"
}
