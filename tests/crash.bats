#!/usr/bin/env bats
# Crashes: kill -9 of copy, of follow during its first pass and of a writer (also inside a
# write); what a killed follower leaves in the journal (a quiesce with a lease from another
# boot, an auto-converge delay); journals that are truncated, corrupted or name another
# source; a journal truncated under a writer and under a follower.
# (kill -9 of a follower that is in sync, and its restart, is in follow.bats.)
load helpers

setup_file() {
    # A writer for the shim: NTHREADS threads pwrite 4 KiB blocks of random bytes at random
    # 4 KiB-aligned offsets in IMG, as fast as they can, for SECONDS (or until killed).
    # With a fifth argument "main-exits" the main thread ends (pthread_exit) once it has
    # started them: the process then shows as a zombie while its threads write.
    cat > "$BATS_FILE_TMPDIR/loop.c" <<'EOF'
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
static int fd;
static long blocks;
static double secs;
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static void *run(void *arg) {
    unsigned seed = (unsigned)(long)arg * 7919u + (unsigned)getpid();
    char buf[4096];
    double end = now() + secs;
    for (long n = 0; now() < end; n++) {
        for (int i = 0; i < 4096; i++) buf[i] = (char)rand_r(&seed);
        if (pwrite(fd, buf, sizeof buf, (off_t)(rand_r(&seed) % blocks) * 4096) != 4096) { perror("pwrite"); exit(1); }
    }
    return NULL;
}
int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) { fprintf(stderr, "usage: loop IMG SECONDS NTHREADS [main-exits]\n"); return 2; }
    struct stat st;
    if ((fd = open(argv[1], O_RDWR)) < 0 || fstat(fd, &st) < 0) { perror(argv[1]); return 1; }
    blocks = st.st_size / 4096;
    secs = atof(argv[2]);
    int n = atoi(argv[3]);
    pthread_t t[64];
    for (long i = 0; i < n; i++) pthread_create(&t[i], NULL, run, (void *)i);
    if (argc == 5) pthread_exit(NULL);
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    return 0;
}
EOF
    gcc -O2 -pthread -o "$BATS_FILE_TMPDIR/loop" "$BATS_FILE_TMPDIR/loop.c"
}

LOOP() { "$BATS_FILE_TMPDIR/loop" "$@"; }

setup() {
    J="$T/j"
}

# src_image MiB: $T/src.raw, random data with holes.
src_image() {
    truncate -s "$1M" "$T/src.raw"
    dd if=/dev/urandom of="$T/src.raw" bs=1M count=$(( $1 / 2 )) seek=1 conv=notrunc status=none
    dd if=/dev/urandom of="$T/src.raw" bs=64K count=3 seek=$(( $1 * 16 - 5 )) conv=notrunc status=none
}

# random_ms LO HI
random_ms() { echo $(( $1 + RANDOM % ($2 - $1 + 1) )); }
sleep_ms() { sleep "$(printf '0.%03d' "$1")"; }

# bytes_copied EVENTS: bytes_copied of BLOCK_JOB_COMPLETED.
bytes_copied() {
    python3 -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1]) if "COMPLETED" in l][0]["data"]["bytes_copied"])' "$1"
}

# start_follow: follow $T/src.raw to $T/dst.raw through $J in the background (its pid in
# FOLLOW, events in $T/events), killed at the end of the test; returns once it is ready.
start_follow() {
    "$MI" follow --json --journal "$J" "$T/src.raw" "$T/dst.raw" > "$T/events" 2>"$T/err" &
    FOLLOW=$!
    on_exit "kill -9 $FOLLOW"
    wait_for grep -q BLOCK_JOB_READY "$T/events" || { cat "$T/err"; fail "follow never got ready"; }
}

# complete_follow: complete the follow running as $FOLLOW (socket $J.sock) and wait for it
# to exit 0.  A complete that finds a writer dead inside a write is refused (a full pass
# follows): retry at once (as a script would), then wait until in sync between retries.
complete_follow() {
    local i
    for i in 1 2 3 4 5; do
        run "$MI" complete "$J.sock"
        [ "$status" -eq 0 ] && break
        echo "complete refused: $output"
        [[ "$output" == *"died inside a write"* ]] || fail "complete failed: $output"
        [ $i -eq 1 ] && continue
        for _ in $(seq 100); do
            "$MI" status --json "$J.sock" 2>/dev/null | grep -q '"in_sync": true' && break
            sleep 0.1
        done
    done
    assert_success
    local st=0
    wait_exit $FOLLOW || st=$?
    [ "$st" -eq 0 ] || { cat "$T/err"; fail "follow exited $st"; }
}

@test "copy killed with -9 at random moments, then copy -n: identical (raw and qcow2 sources)" {
    src_image 24
    qemu-img convert -f raw -O qcow2 -o cluster_size=65536 "$T/src.raw" "$T/src.qcow2"
    for i in 1 2 3 4 5; do
        src=$T/src.raw
        [ $((i % 2)) -eq 0 ] && src=$T/src.qcow2
        rm -f "$T/dst.raw"
        "$MI" copy -O raw -s 16M "$src" "$T/dst.raw" 2>/dev/null &
        pid=$!
        ms=$(random_ms 100 900)
        sleep_ms "$ms"
        kill -9 $pid 2>/dev/null || true
        wait $pid || true
        echo "iteration $i: $src killed after $ms ms, $(stat -c %s "$T/dst.raw" 2>/dev/null || echo no) target bytes"
        if [ -e "$T/dst.raw" ]; then
            "$MI" copy -n -O raw "$src" "$T/dst.raw"
        else
            "$MI" copy -O raw "$src" "$T/dst.raw"
        fi
        cmp "$T/src.raw" "$T/dst.raw"
    done
    qemu_same "$T/src.qcow2" "$T/dst.raw"
}

@test "follow killed with -9 during its first pass: restarted, it resumes and copies less than a full pass" {
    src_image 32
    "$MI" follow --json -s 8M --journal "$J" "$T/src.raw" "$T/dst.raw" > "$T/events1" 2>"$T/err1" &
    pid=$!
    on_exit "kill -9 $pid"
    sleep 1.5
    grep -q BLOCK_JOB_READY "$T/events1" && fail "the first pass finished before the kill"
    kill -9 $pid
    wait $pid || true
    rm -f "$J.sock"
    start_follow
    run "$MI" complete "$J.sock"
    assert_success
    wait_exit $FOLLOW
    cmp "$T/src.raw" "$T/dst.raw"
    copied=$(bytes_copied "$T/events")
    data=$(( 16 * 1024 * 1024 + 3 * 65536 ))
    echo "copied after the restart: $copied of $data bytes of data"
    [ "$copied" -lt "$data" ]
}

@test "a writer killed with -9 in a tight write loop: the journal stays readable, follow ends identical" {
    src_image 16
    start_follow
    "$MI" run --journal "$J" "$T/src.raw" -- "$BATS_FILE_TMPDIR/loop" "$T/src.raw" 30 4 &
    runner=$!
    on_exit "kill -9 $runner"
    sleep 0.5
    writer=$(pgrep -P $runner -f "$BATS_FILE_TMPDIR/loop")
    [ -n "$writer" ]
    kill -9 "$writer"
    st=0
    wait_exit $runner || st=$?
    [ "$st" -eq 137 ]      # run reports the command's death by SIGKILL
    run "$MI" journal status "$J"
    assert_success
    assert_output --partial "src.raw"
    run "$MI" journal status --json "$J"
    assert_success
    # The follower drains what the writer dirtied and looks at the writers; one that died
    # inside a write costs a full pass (its range is unknown), never a stale target.
    for _ in $(seq 30); do
        "$MI" status --json "$J.sock" 2>/dev/null | grep -q '"in_sync": true' && break
        sleep 0.1
    done
    kill -0 $FOLLOW || { cat "$T/err"; fail "follow stopped"; }
    complete_follow
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "a writer whose main thread ended while its threads write is alive, not dead inside a write" {
    # Its main thread is a zombie, and so is a process whose first thread went under
    # kill -9 while another still finishes its write: the process counts as dead only
    # when no thread is left (a write counted dead too early is lost).
    src_image 16
    start_follow
    "$MI" run --journal "$J" "$T/src.raw" -- "$BATS_FILE_TMPDIR/loop" "$T/src.raw" 2 2 main-exits &
    runner=$!
    on_exit "kill -9 $runner"
    sleep 0.3
    writer=$(pgrep -P $runner)  # (a zombie main thread has no command line for -f)
    [ "$(cut -d' ' -f3 /proc/$writer/stat)" = Z ] || fail "the writer's main thread did not end"
    run "$MI" journal status --json "$J"
    assert_success
    assert_output --partial '"writers-alive": 1,'
    wait_exit $runner
    run "$MI" journal status --json "$J"
    assert_success
    refute_output --partial writer_died
    run cat "$T/err"
    refute_output --partial writer_died
    complete_follow
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "a writer killed under a tracer that has not reaped its threads is dead (all its threads are zombies)" {
    # A tracer (gdb, strace) reaps a killed tracee's threads itself: until it does, they
    # are zombies counted in the main thread's num_threads, and none of them can write.
    cat > "$T/tracer.c" <<'EOF2'
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ptrace.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char d[64]; snprintf(d, sizeof d, "/proc/%s/task", argv[1]);
    DIR *dir = opendir(d); struct dirent *e; int n = 0;
    while (dir && (e = readdir(dir))) { int tid = atoi(e->d_name); if (tid > 0 && ptrace(PTRACE_SEIZE, tid, 0, 0) == 0) n++; }
    printf("%d\n", n); fflush(stdout);
    sleep(atoi(argv[2]));
    return 0;
}
EOF2
    gcc -O2 -o "$T/tracer" "$T/tracer.c"
    truncate -s 8M "$T/src.raw"
    "$MI" run --journal "$J" "$T/src.raw" -- "$BATS_FILE_TMPDIR/loop" "$T/src.raw" 30 3 &
    runner=$!
    on_exit "kill -9 $runner"
    sleep 0.3
    writer=$(pgrep -P $runner)
    "$T/tracer" "$writer" 20 > "$T/seized" &
    tracer=$!
    on_exit "kill -9 $tracer"
    wait_for test -s "$T/seized"
    [ "$(cat "$T/seized")" -eq 4 ]
    run "$MI" journal status --json "$J"
    assert_output --partial '"writers-alive": 1,'
    kill -9 "$writer"
    is_zombie() { [ "$(cut -d' ' -f3 "/proc/$1/stat")" = Z ]; }
    wait_for is_zombie "$writer"
    [ "$(cut -d' ' -f20 /proc/$writer/stat)" -gt 1 ]   # its threads wait for the tracer
    run "$MI" journal status --json "$J"
    assert_success
    assert_output --partial '"writers-alive": 0,'
    kill -9 $tracer
}

@test "a writer that died inside a write costs a full pass, never a stale target" {
    truncate -s 8M "$T/src.raw"
    start_follow
    # What kill -9 inside a pwrite leaves: the bytes landed, the journal never heard of
    # them, and the writer's slot still counts a call in flight (slot 5: in-flight count
    # at +0, pid at +64; slots start at 16384).
    true & dead=$!
    wait $dead
    dd if=/dev/urandom of="$T/src.raw" bs=4k count=1 seek=999 conv=notrunc status=none
    python3 - "$J" "$dead" <<'PY'
import mmap, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, os.fstat(fd).st_size)
slot = 16384 + 5 * 256
m[slot + 64:slot + 68] = struct.pack("=i", int(sys.argv[2]))
m[slot:slot + 4] = struct.pack("=I", 1)
# and it counted the write as started (ring head, u64 at 384), as the shim does before the
# call: the change is not a bypass of the shim, only the journal's word can tell.
head, = struct.unpack("=Q", m[384:392])
m[384:392] = struct.pack("=Q", head + 1)
m.flush()
PY
    complete_follow
    cmp "$T/src.raw" "$T/dst.raw"
}

# poke J FIELD=VALUE...: set header fields of a journal as a follower killed with -9 (or a
# machine that crashed) leaves them: quiesce (u32 at 256), delay_us (u32 at 260),
# lease_expiry (u64 at 272, CLOCK_MONOTONIC; "+S"/"-S" seconds from now), lease_ns (u64
# at 528), follower_pid (i32 at 512).
poke() {
    python3 - "$@" <<'PY'
import mmap, os, struct, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 4096)
fields = {"quiesce": (256, "=I"), "delay_us": (260, "=I"), "lease_expiry": (272, "=Q"),
          "lease_ns": (528, "=Q"), "follower_pid": (512, "=i")}
for a in sys.argv[2:]:
    k, v = a.split("=")
    off, fmt = fields[k]
    if k == "lease_expiry" and v[0] in "+-":
        v = time.clock_gettime_ns(time.CLOCK_MONOTONIC) + int(float(v) * 1e9)
    m[off:off + struct.calcsize(fmt)] = struct.pack(fmt, int(v))
m.flush()
PY
}

# elapsed_ms CMD...: run CMD, print how long it took.
elapsed_ms() {
    local t0=$(date +%s%N)
    "$@" >/dev/null 2>&1 || true
    echo $(( ($(date +%s%N) - t0) / 1000000 ))
}

@test "a quiesce left by a follower that died, with a lease from another boot's clock, holds no writer" {
    truncate -s 8M "$T/src.raw"
    "$MI" run --journal "$J" "$T/src.raw" -- true
    true & dead=$!
    wait $dead
    # Killed during complete on a machine that then rebooted: CLOCK_MONOTONIC started over,
    # and the old expiry lies a day ahead of it.
    poke "$J" quiesce=1 lease_ns=2000000000 lease_expiry=+86400 follower_pid=$dead
    ms=$(elapsed_ms timeout 8 "$MI" run --journal "$J" "$T/src.raw" -- \
        dd if=/dev/zero of="$T/src.raw" bs=4k count=1 conv=notrunc status=none)
    echo "the write took $ms ms"
    [ "$ms" -lt 4000 ]
}

@test "a follower killed with -9 while it slowed the writers (auto-converge) slows them no more" {
    truncate -s 8M "$T/src.raw"
    "$MI" run --journal "$J" "$T/src.raw" -- true
    true & dead=$!
    wait $dead
    # 100 ms before each write, and the follower's lease ran out a while ago.
    poke "$J" delay_us=100000 lease_ns=2000000000 lease_expiry=-10 follower_pid=$dead
    ms=$(elapsed_ms "$MI" run --journal "$J" "$T/src.raw" -- \
        dd if=/dev/zero of="$T/src.raw" bs=4k count=30 conv=notrunc status=none)
    echo "30 writes took $ms ms"
    [ "$ms" -lt 1500 ]
}

# refused CMD...: exit 1 (within 20 s), one message naming the journal, no target created.
refused() {
    run timeout 20 "$@"
    assert_failure 1
    assert_output --regexp "^mirror-img: $J: "
    [ "${#lines[@]}" -eq 1 ]
    [ ! -e "$T/dst.raw" ]
}

# all_refuse WHAT: follow, run and journal status refuse $J with a message matching WHAT,
# and leave it as it was.
all_refuse() {
    cp "$J" "$T/j.before"
    refused "$MI" follow --journal "$J" "$T/src.raw" "$T/dst.raw"
    assert_output --regexp "$1"
    refused "$MI" run --journal "$J" "$T/src.raw" -- touch "$T/ran"
    assert_output --regexp "$1"
    [ ! -e "$T/ran" ]
    refused "$MI" journal status "$J"
    assert_output --regexp "$1"
    cmp "$J" "$T/j.before"
}

@test "a truncated journal is refused clearly by follow, run and journal status" {
    truncate -s 8M "$T/src.raw"
    "$MI" run --journal "$J" "$T/src.raw" -- true
    full=$(stat -c %s "$J")
    truncate -s 200000 "$J"
    all_refuse "truncated journal: 200000 bytes, its header says $full"
    truncate -s 4000 "$J"
    all_refuse "truncated journal: 4000 bytes"
    truncate -s 0 "$J"
    all_refuse "not a mirror-img journal \(empty file\)"
}

@test "a journal with garbage in its header is refused clearly by follow, run and journal status" {
    truncate -s 8M "$T/src.raw"
    "$MI" run --journal "$J" "$T/src.raw" -- true
    cp "$J" "$T/j.good"
    dd if=/dev/urandom of="$J" bs=64 count=1 conv=notrunc status=none
    all_refuse "not a mirror-img journal \(bad magic\)"
    # Garbage after an intact magic: the layout fields no longer add up.
    for off in 8 12 16 32 40 64 96; do
        cp "$T/j.good" "$J"
        printf '\x5a\xa5\x5a\xa5\x5a\xa5\x5a\xa5' | dd of="$J" bs=1 seek=$off conv=notrunc status=none
        all_refuse "(corrupted journal|another byte order|version [0-9]+ is not supported)"
    done
}

@test "a journal whose paths run into the rest of the file is refused, never read past its end" {
    truncate -s 8M "$T/src.raw"
    "$MI" run --journal "$J" -g 1G "$T/src.raw" -- true
    # No NUL from the source path (at 4096) to the end of the file: a reader that trusts
    # the path runs off the mapping (tests/fuzz/regress/journal-unterminated-path).
    python3 -c 'import sys; p = sys.argv[1]; b = bytearray(open(p, "rb").read())
b[4096:] = b"A" * (len(b) - 4096); open(p, "wb").write(b)' "$J"
    all_refuse "corrupted journal"
}

@test "a journal that belongs to another source is refused by follow and run" {
    truncate -s 8M "$T/src.raw" "$T/other.raw"
    "$MI" run --journal "$J" "$T/other.raw" -- true
    cp "$J" "$T/j.before"
    refused "$MI" follow --journal "$J" "$T/src.raw" "$T/dst.raw"
    assert_output --partial "journal is for $T/other.raw"
    refused "$MI" run --journal "$J" "$T/src.raw" -- touch "$T/ran"
    assert_output --partial "journal is for $T/other.raw"
    [ ! -e "$T/ran" ]
    cmp "$J" "$T/j.before"
    # A new file at the old path is another source too (another inode).
    truncate -s 8M "$T/other.new"
    mv "$T/other.new" "$T/other.raw"
    refused "$MI" run --journal "$J" "$T/other.raw" -- true
    assert_output --partial "journal is for $T/other.raw"
}

@test "a writer whose journal is truncated under it goes on: exit 0, no SIGBUS" {
    truncate -s 16M "$T/src.raw"
    "$MI" run --journal "$J" "$T/src.raw" -- "$BATS_FILE_TMPDIR/loop" "$T/src.raw" 1.5 4 \
        2> "$T/err" &
    runner=$!
    on_exit "kill -9 $runner"
    sleep 0.5
    truncate -s 0 "$J"
    st=0
    wait_exit $runner 30 || st=$?
    cat "$T/err"
    [ "$st" -eq 0 ]
    grep -q "truncated under this process" "$T/err"
    # The journal is refused from now on (a new one can be made in its place).
    run "$MI" journal status "$J"
    assert_failure 1
    rm "$J"
    "$MI" run --journal "$J" "$T/src.raw" -- "$BATS_FILE_TMPDIR/loop" "$T/src.raw" 0.2 2
}

@test "a follower whose journal is truncated under it stops with a clear error, no SIGBUS" {
    truncate -s 16M "$T/src.raw"
    start_follow
    "$MI" run --journal "$J" "$T/src.raw" -- "$BATS_FILE_TMPDIR/loop" "$T/src.raw" 1.5 2 2>/dev/null &
    runner=$!
    sleep 0.5
    truncate -s 0 "$J"
    st=0
    wait_exit $runner 30 || st=$?
    [ "$st" -eq 0 ]
    st=0
    wait_exit $FOLLOW 10 || st=$?
    cat "$T/err"
    [ "$st" -eq 1 ]        # not 135 (SIGBUS)
    grep -q "^mirror-img: $J: the journal was truncated" "$T/err"
}
