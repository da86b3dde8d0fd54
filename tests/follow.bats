#!/usr/bin/env bats
# follow: live mirroring while real writers run under the shim; complete, pivot, resume,
# untrusted journals, a frozen follower.
load helpers

W="$BATS_TEST_DIRNAME/writers/mwrite.py"

setup() {
    truncate -s 32M "$T/src.raw"
    dd if=/dev/urandom of="$T/src.raw" bs=1M count=4 seek=1 conv=notrunc status=none
    J="$T/j"
}

# start_follow [OPTS...]: follow src.raw into dst.raw in the background, events in
# $T/events; waits for BLOCK_JOB_READY.
start_follow() {
    "$MI" follow --json --journal "$J" "$@" "$T/src.raw" "$T/dst.raw" > "$T/events" 2> "$T/follow.err" &
    FOLLOW=$!
    on_exit "kill -9 $FOLLOW"
    wait_for grep -q BLOCK_JOB_READY "$T/events" || { cat "$T/follow.err"; fail "follow never got ready"; }
}

# under CMD...: run a writer under the shim.
under() { "$MI" run --journal "$J" "$T/src.raw" -- "$@"; }

# finish: complete, wait for follow to exit 0, compare.
finish() {
    run "$MI" complete "$J.sock"
    [ "$status" -eq 0 ] || { echo "follow's stderr:"; cat "$T/follow.err"; }
    assert_success
    assert_output --partial "downtime_ms"
    wait $FOLLOW
    grep -q BLOCK_JOB_COMPLETED "$T/events"
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "follow: initial copy, then dd conv=notrunc writes, complete: identical" {
    start_follow
    under dd if=/dev/urandom of="$T/src.raw" bs=64K count=30 seek=200 conv=notrunc status=none
    under dd if=/dev/urandom of="$T/src.raw" bs=4K count=1 seek=7000 conv=notrunc status=none
    finish
    qemu_same "$T/src.raw" "$T/dst.raw"
}

@test "follow: qemu-io on a raw image (writes, zero writes, discards)" {
    start_follow
    under qemu-io -f raw -c 'write -P 0xab 3M 1M' -c 'write -z 1M 512k' -c 'discard 4M 256k' \
        -c 'write -P 0x12 31M 1M' "$T/src.raw" >/dev/null
    finish
}

@test "follow: qemu-io on a qcow2 image: the target is the same qcow2 file, byte for byte" {
    rm "$T/src.raw"
    qemu-img create -q -f qcow2 "$T/src.raw" 64M
    qemu-io -f qcow2 -c 'write -P 0x11 0 2M' "$T/src.raw" >/dev/null
    start_follow
    under qemu-io -f qcow2 -c 'write -P 0x22 10M 3M' -c 'write -z 0 64k' -c 'write -P 0x33 60M 1M' \
        "$T/src.raw" >/dev/null
    finish
    run qemu-img check "$T/dst.raw"
    assert_success
    qemu_same "$T/src.raw" "$T/dst.raw"
}

@test "follow: fio psync, pvsync and pvsync2 writers" {
    requires fio
    start_follow
    for engine in psync pvsync pvsync2; do
        under fio --name=w --filename="$T/src.raw" --ioengine=$engine --rw=randwrite --bs=4k \
            --size=32M --io_size=2M --randrepeat=0 >/dev/null
    done
    finish
}

@test "follow: fio libaio is reported as untrusted (io_submit) and follow stops, exit 1" {
    requires fio
    start_follow
    under fio --name=w --filename="$T/src.raw" --ioengine=libaio --rw=randwrite --bs=4k \
        --size=32M --io_size=1M >/dev/null 2>&1 || true
    st=0
    wait $FOLLOW || st=$?
    [ "$st" -eq 1 ]
    grep -q "journal untrusted: io_submit" "$T/follow.err"
}

@test "follow: a multi-threaded writer mixing pwrite, pwritev and write" {
    start_follow
    under python3 "$W" threads "$T/src.raw" 4
    finish
}

@test "follow: a writer that forks and one that execs with the descriptor inherited" {
    start_follow
    under python3 "$W" fork "$T/src.raw" 3
    under python3 "$W" exec "$T/src.raw" 200
    finish
}

@test "follow: an mmap writer (MAP_SHARED, msync, munmap)" {
    start_follow
    under python3 "$W" mmap "$T/src.raw" 300
    finish
}

@test "follow: the target grows as the source file grows" {
    start_follow
    under dd if=/dev/urandom of="$T/src.raw" bs=1M count=2 seek=40 conv=notrunc status=none
    finish
    [ "$(stat -c %s "$T/dst.raw")" -eq $(( 42 * 1024 * 1024 )) ]
}

@test "complete --pivot under continuous writing: the target equals a reference that got every write" {
    cp "$T/src.raw" "$T/ref.raw"
    start_follow
    under python3 "$W" pivot "$T/src.raw" "$T/ref.raw" "$T/stop" > "$T/count" &
    writer=$!
    # writing (a busy machine may take a while to start python)
    wait_for sh -c "'$MI' journal status --json '$J' | grep -qE '\"writes\": [0-9]{3}'" ||
        fail "the writer did not start writing"
    run "$MI" complete --pivot "$J.sock"
    assert_success
    wait $FOLLOW
    sleep 0.5          # the writer keeps writing, now to the target
    touch "$T/stop"
    wait $writer
    echo "writes: $(cat "$T/count")"
    [ "$(cat "$T/count")" -gt 100 ]
    cmp "$T/ref.raw" "$T/dst.raw"
    grep -q '"pivot": true' "$T/events"
}

@test "complete --pivot is refused while a writable shared mapping is active" {
    start_follow
    under python3 - "$T/src.raw" "$T/mapped" <<'PY' &
import mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
m[0:4] = b"MMAP"
open(sys.argv[2] + ".2", "w").close()
deadline = time.time() + 30
while not os.path.exists(sys.argv[2] + ".go") and time.time() < deadline:
    time.sleep(0.02)
PY
    mapper=$!
    wait_for test -e "$T/mapped.2"
    run "$MI" complete --pivot "$J.sock"
    assert_failure 1
    assert_output --partial "writable shared mapping"
    touch "$T/mapped.go"         # the mapping goes away
    wait $mapper
    finish
}

@test "follow killed with -9 and restarted resumes: it copies what was dirty, not the image" {
    start_follow
    kill -9 $FOLLOW
    wait $FOLLOW || true
    under dd if=/dev/urandom of="$T/src.raw" bs=64K count=2 seek=100 conv=notrunc status=none
    rm -f "$J.sock"
    start_follow
    finish
    copied=$(python3 -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1]) if "COMPLETED" in l][0]["data"]["bytes_copied"])' "$T/events")
    echo "bytes copied after restart: $copied"
    [ "$copied" -le $(( 256 * 1024 )) ]
}

@test "follow refuses an existing target the journal does not record, unless -n or --force" {
    rand_file "$T/dst.raw" 32
    run "$MI" follow --journal "$J" "$T/src.raw" "$T/dst.raw"
    assert_failure 1
    assert_output --partial "dst.raw: already exists"
    start_follow -n
    finish
}

@test "follow refuses to convert formats, and a journal that names another file" {
    run "$MI" follow --journal "$J" -O qcow2 "$T/src.raw" "$T/dst.raw"
    assert_failure 2
    assert_output --partial "converting to qcow2 this way is not possible"
    [ ! -e "$T/dst.raw" ]
    truncate -s 1M "$T/other.raw"
    "$MI" run --journal "$J" "$T/other.raw" -- true
    run "$MI" follow --journal "$J" "$T/src.raw" "$T/dst.raw"
    assert_failure 1
    assert_output --partial "other.raw"
    [ ! -e "$T/dst.raw" ]
}

@test "complete refuses while a process not under the shim has the source open for writing, or mapped" {
    # A writer someone forgot to start under `mirror-img run`: nothing marks what it writes,
    # so the target cannot be called consistent while it is there.  A reader is fine.
    start_follow
    python3 -c 'import os,sys,time; fd=os.open(sys.argv[1],os.O_RDONLY); time.sleep(30)' "$T/src.raw" &
    reader=$!
    on_exit "kill $reader"
    python3 -c 'import os,sys,time; fd=os.open(sys.argv[1],os.O_RDWR); os.pwrite(fd,os.urandom(4096),8192); time.sleep(30)' "$T/src.raw" &
    fw=$!
    on_exit "kill $fw"
    wait_for sh -c "ls -l /proc/$fw/fd | grep -q src.raw" || fail "the writer did not open the source"
    run "$MI" complete "$J.sock"
    assert_failure
    assert_output --partial "pid $fw (python3) has $T/src.raw open for writing without the shim"
    kill $fw; wait $fw || true
    # a writable shared mapping with its descriptor closed counts too
    python3 -c '
import mmap,os,sys,time
fd=os.open(sys.argv[1],os.O_RDWR); m=mmap.mmap(fd,65536,mmap.MAP_SHARED); os.close(fd)
m[0:4096]=os.urandom(4096); time.sleep(30)' "$T/src.raw" &
    fm=$!
    on_exit "kill $fm"
    wait_for grep -q src.raw /proc/$fm/maps || fail "the writer did not map the source"
    sleep 0.2 # its descriptor closed
    run "$MI" complete "$J.sock"
    assert_failure
    assert_output --partial "pid $fm (python3)"
    kill $fm; wait $fm || true
    # once it is gone, a full pass makes the target whole again
    for _ in $(seq 100); do
        "$MI" status --json "$J.sock" 2>/dev/null | grep -q '"in_sync": true' && break
        sleep 0.1
    done
    finish
}

@test "follow: a write that bypassed the shim is detected and forces a full pass" {
    start_follow
    sleep 0.5
    dd if=/dev/urandom of="$T/src.raw" bs=4K count=1 seek=3000 conv=notrunc status=none
    sleep 1.5
    finish
    grep -q "changed behind the shim" "$T/follow.err"
}

@test "a follower frozen with SIGSTOP during complete holds a writer no longer than the lease" {
    start_follow --lease 1s
    "$MI" set-speed "$J.sock" 64K
    under dd if=/dev/urandom of="$T/src.raw" bs=1M count=4 seek=8 conv=notrunc status=none
    "$MI" complete "$J.sock" > "$T/complete.out" 2>&1 &
    completer=$!
    sleep 0.5
    kill -STOP $FOLLOW
    on_exit "kill -CONT $FOLLOW"
    ms=$(under python3 "$W" latency "$T/src.raw")
    echo "write took $ms ms"
    [ "$ms" -lt 2500 ]
    kill -CONT $FOLLOW
    "$MI" set-speed "$J.sock" 0
    wait $completer || true
    grep -q "lease ran out" "$T/complete.out"
    # Following goes on; a second complete succeeds.
    finish
}

@test "status reports in_sync, backlog and write rate live; cancel exits 3 with BLOCK_JOB_CANCELLED" {
    start_follow
    run "$MI" status --json "$J.sock"
    assert_output --partial '"in_sync": true'
    assert_output --partial '"backlog": 0'
    assert_output --partial '"write_rate"'
    run "$MI" cancel "$J.sock"
    st=0
    wait $FOLLOW || st=$?
    [ "$st" -eq 3 ]
    grep -q BLOCK_JOB_CANCELLED "$T/events"
}

@test "follow into an NBD export (nbdkit file plugin) while a writer runs under the shim" {
    truncate -s 32M "$T/remote.raw"
    nbdkit_start "$T/nbd.sock" file "$T/remote.raw"
    "$MI" follow --json --journal "$J" "$T/src.raw" "nbd+unix:///?socket=$T/nbd.sock" > "$T/events" 2> "$T/follow.err" &
    FOLLOW=$!
    on_exit "kill -9 $FOLLOW"
    wait_for grep -q BLOCK_JOB_READY "$T/events" || { cat "$T/follow.err"; fail "follow never got ready"; }
    under python3 "$W" threads "$T/src.raw" 2
    under qemu-io -f raw -c 'write -z 1M 256k' "$T/src.raw" >/dev/null
    run "$MI" complete --pivot "$J.sock"
    assert_failure 1
    assert_output --partial "--pivot needs a local file target"
    run "$MI" complete "$J.sock"
    assert_success
    wait $FOLLOW
    cmp "$T/src.raw" "$T/remote.raw"
}
