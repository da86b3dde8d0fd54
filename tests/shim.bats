#!/usr/bin/env bats
# The shim and its journal: real writers under `mirror-img run`, checked with `journal
# status --json` and `journal dump`.  Oracle for "no write missed": copying the dirty
# ranges from the written image onto a copy taken before must give the written image.
load helpers
bats_require_minimum_version 1.5.0

UNIT_DIR=${UNIT_DIR:-$TOP/build/tests}

setup_file() {
    export WBIN=$BATS_FILE_TMPDIR/writer JCTL=$BATS_FILE_TMPDIR/jctl
    gcc -O2 -Wall -pthread -o "$WBIN" "$TOP/tests/writers/writer.c"
    gcc -O2 -Wall -std=gnu11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -pthread -I"$TOP/lib" \
        -o "$JCTL" "$TOP/tests/writers/jctl.c" "${JOURNAL_SRC[@]}"
}

setup() {
    rand_file "$T/disk.raw" 16
    cp "$T/disk.raw" "$T/pre.raw"
}

# status J: the JSON status
status_json() { "$MI" journal status --json "$1"; }

# dirty_chunks J: the dirty chunk numbers, one a line
dirty_chunks() {
    status_json "$1" | python3 -c '
import json, sys
d = json.load(sys.stdin); g = d["granularity"]
for o, n in d["dirty"]:
    for c in range(o // g, (o + n) // g): print(c)'
}

# chunks_of G: the chunks touched by the "OFFSET LENGTH" lines on stdin
chunks_of() {
    python3 -c '
import sys
g = int(sys.argv[1]); s = set()
for l in sys.stdin:
    p = l.split()
    if len(p) == 2 and p[0].isdigit() and p[1].isdigit() and int(p[1]) > 0:
        o, n = int(p[0]), int(p[1]); s.update(range(o // g, (o + n - 1) // g + 1))
for c in sorted(s): print(c)' "$1"
}

# same_chunks J EXPECTED_FILE: the dirty chunks are exactly those listed
same_chunks() {
    dirty_chunks "$1" > "$T/got"
    diff -u "$2" "$T/got" || fail "dirty chunks differ from the ranges written"
}

# rebuilt J SRC PRE: copy the dirty (and copying) ranges of SRC onto a copy of PRE, set its
# size, and require the result to be byte-identical to SRC: nothing written was missed.
rebuilt() {
    cp "$3" "$T/rebuilt"
    status_json "$1" | python3 -c '
import json, os, sys
d = json.load(sys.stdin); src, dst = sys.argv[1], sys.argv[2]
with open(src, "rb") as s, open(dst, "r+b") as t:
    for o, n in d["dirty"] + d["copying"]:
        s.seek(o); t.seek(o); t.write(s.read(n))
    t.truncate(os.path.getsize(src))' "$2" "$T/rebuilt"
    cmp "$2" "$T/rebuilt" || fail "the dirty ranges do not rebuild $2"
}

untrusted() { status_json "$1" | python3 -c 'import json,sys; print(" ".join(u["reason"] for u in json.load(sys.stdin)["untrusted"]))'; }

@test "unit: journal API (create, validation, bitmaps, quiesce, lease, pivot, source record, ring)" {
    [ -x "$UNIT_DIR/test-journal" ] || fail "$UNIT_DIR/test-journal was not built"
    run "$UNIT_DIR/test-journal"
    echo "$output"
    assert_success
    refute_output --partial "not ok"
}

@test "dd conv=notrunc: exactly the chunks written are dirty, and dump shows the write" {
    run "$MI" run --journal "$T/j" "$T/disk.raw" -- \
        dd if=/dev/urandom of="$T/disk.raw" bs=64k seek=5 count=3 conv=notrunc status=none
    assert_success
    run status_json "$T/j"
    assert_output --partial '"dirty": [[327680, 196608]]'
    assert_output --partial '"trusted": true'
    run "$MI" journal dump "$T/j"
    assert_success
    assert_output --regexp 'write +327680 +65536'
    assert_output --regexp 'write +458752 +65536'
    rebuilt "$T/j" "$T/disk.raw" "$T/pre.raw"
}

@test "qemu-io on a raw image: exactly the range written" {
    requires qemu-io
    run "$MI" run --journal "$T/j" "$T/disk.raw" -- \
        qemu-io -f raw -c 'write -P 0xab 1M 64k' -c 'write -P 0xcd 3M 4k' "$T/disk.raw"
    assert_success
    echo "1048576 65536
3145728 4096" | chunks_of 65536 > "$T/want"
    same_chunks "$T/j" "$T/want"
    run "$MI" journal dump --json "$T/j"
    assert_output --partial '"op": "pwrite", "offset": 1048576, "length": 65536'
    [ "$(untrusted "$T/j")" = "" ]
    rebuilt "$T/j" "$T/disk.raw" "$T/pre.raw"
}

@test "qemu-io on a qcow2 image: the dirty ranges rebuild the file, QEMU checks it" {
    requires qemu-io qemu-img
    qemu-img create -q -f qcow2 "$T/disk.qcow2" 64M
    qemu-io -f qcow2 -c 'write -P 0x11 0 1M' "$T/disk.qcow2" >/dev/null
    cp "$T/disk.qcow2" "$T/pre.qcow2"
    run "$MI" run --journal "$T/j" "$T/disk.qcow2" -- qemu-io -f qcow2 \
        -c 'write -P 0xab 5M 64k' -c 'write -P 0xcd 40M 1M' -c 'write -z 0 64k' "$T/disk.qcow2"
    assert_success
    [ "$(untrusted "$T/j")" = "" ]
    rebuilt "$T/j" "$T/disk.qcow2" "$T/pre.qcow2"
    qcow2_ok "$T/rebuilt"
    qemu_same "$T/rebuilt" "$T/disk.qcow2"
    run qemu-io -f qcow2 -c 'read -P 0xcd 40M 1M' "$T/rebuilt"
    assert_success
}

@test "fio psync, pvsync, pvsync2: the dirty chunks are the ones fio wrote" {
    requires fio
    local e
    for e in psync pvsync pvsync2; do
        rm -f "$T/j" "$T/log"
        run "$MI" run --journal "$T/j" "$T/disk.raw" -- fio --name=x --filename="$T/disk.raw" \
            --ioengine=$e --rw=randwrite --bs=4k --size=16M --io_size=1M --direct=0 \
            --write_iolog="$T/log" --output=/dev/null
        assert_success
        awk '$(NF-2) == "write" { print $(NF-1), $NF }' "$T/log" | chunks_of 65536 > "$T/want"
        [ "$(wc -l < "$T/want")" -gt 100 ] || fail "$e: fio's log has too few writes"
        same_chunks "$T/j" "$T/want"
        [ "$(untrusted "$T/j")" = "" ] || fail "$e: untrusted"
    done
    rebuilt "$T/j" "$T/disk.raw" "$T/pre.raw"
}

@test "fio libaio: the journal is untrusted (io_submit) and says so" {
    requires fio
    run "$MI" run --journal "$T/j" "$T/disk.raw" -- fio --name=x --filename="$T/disk.raw" \
        --ioengine=libaio --rw=randwrite --bs=4k --size=16M --io_size=256k --direct=0 --output=/dev/null
    assert_success
    [ "$(untrusted "$T/j")" = "io_submit" ]
    run "$MI" journal status "$T/j"
    assert_output --regexp 'untrusted: +io_submit: Linux AIO'
}

@test "io_uring: fio's raw rings and qemu-io --aio io_uring are untrusted; qemu's event-loop rings are not" {
    requires fio qemu-io
    run "$MI" run --journal "$T/j" "$T/disk.raw" -- fio --name=x --filename="$T/disk.raw" \
        --ioengine=io_uring --rw=randwrite --bs=4k --size=16M --io_size=64k --direct=0 --output=/dev/null
    if [ "$status" -ne 0 ] && grep -q 'io_uring' <<<"$output"; then skip "io_uring is not available here"; fi
    assert_success
    [ "$(untrusted "$T/j")" = "io_uring_setup" ]
    rm "$T/j"
    run "$MI" run --journal "$T/j" "$T/disk.raw" -- qemu-io -f raw -c 'write 0 64k' "$T/disk.raw"
    assert_success
    [ "$(untrusted "$T/j")" = "" ]
    rm "$T/j"
    run "$MI" run --journal "$T/j" "$T/disk.raw" -- qemu-io -f raw --aio io_uring -c 'write 0 64k' "$T/disk.raw"
    assert_success
    [ "$(untrusted "$T/j")" = "io_uring" ]
}

@test "a multi-threaded writer mixing pwrite, pwritev, write and O_APPEND" {
    "$MI" run --journal "$T/j" "$T/disk.raw" -- "$WBIN" mt "$T/disk.raw" > "$T/wrote"
    [ "$(wc -l < "$T/wrote")" -eq 160 ]
    chunks_of 65536 < "$T/wrote" > "$T/want"
    same_chunks "$T/j" "$T/want"
    [ "$(stat -c %s "$T/disk.raw")" -eq $((16 * 1048576 + 40960)) ]
    rebuilt "$T/j" "$T/disk.raw" "$T/pre.raw"
}

@test "a writer that forks: the child registers under its own pid and its writes are marked" {
    "$MI" run --journal "$T/j" "$T/disk.raw" -- "$WBIN" fork "$T/disk.raw" > "$T/wrote"
    chunks_of 65536 < "$T/wrote" > "$T/want"
    same_chunks "$T/j" "$T/want"
    local child parent
    child=$(awk '$1 == "child" { print $2 }' "$T/wrote")
    parent=$(awk '$1 == "parent" { print $2 }' "$T/wrote")
    run "$MI" journal dump --json "$T/j"
    assert_output --partial "\"pid\": $child, \"tid\": $child, \"op\": \"pwrite\", \"offset\": 2097152"
    assert_output --partial "\"pid\": $parent, \"tid\": $parent, \"op\": \"pwrite\", \"offset\": 3145728"
}

@test "a writer that execs with the descriptor inherited (found again at load)" {
    "$MI" run --journal "$T/j" "$T/disk.raw" -- bash -c \
        "exec 3<>'$T/disk.raw'; exec dd if=/dev/urandom bs=64k seek=7 count=1 conv=notrunc status=none 1>&3"
    echo "458752 65536" | chunks_of 65536 > "$T/want"
    same_chunks "$T/j" "$T/want"
    rebuilt "$T/j" "$T/disk.raw" "$T/pre.raw"
}

@test "dup, dup2, dup3, F_DUPFD, F_DUPFD_CLOEXEC are tracked; numbers reused for another file are not" {
    rand_file "$T/other.raw" 16
    "$MI" run --journal "$T/j" "$T/disk.raw" -- "$WBIN" dup "$T/disk.raw" "$T/other.raw" > "$T/wrote"
    chunks_of 65536 < "$T/wrote" > "$T/want"
    [ "$(wc -l < "$T/want")" -eq 5 ]
    same_chunks "$T/j" "$T/want"
}

@test "mmap writer: writable shared mappings mark their range (msync, munmap, mprotect)" {
    "$MI" run --journal "$T/j" "$T/disk.raw" -- "$WBIN" mmap "$T/disk.raw" 1048576 131072 > "$T/wrote"
    chunks_of 65536 < "$T/wrote" > "$T/want"
    [ "$(wc -l < "$T/want")" -eq 4 ]
    same_chunks "$T/j" "$T/want"
    rebuilt "$T/j" "$T/disk.raw" "$T/pre.raw"
    run "$MI" journal dump "$T/j"
    assert_output --regexp 'mmap +1048576 +131072'
    assert_output --regexp 'munmap +9437184 +131072' # made writable by mprotect
}

@test "ftruncate growth, fallocate punch and zero, truncate by path" {
    requires fallocate truncate
    # Not every file system zeroes a range (tmpfs has no FALLOC_FL_ZERO_RANGE): probe it,
    # and where it fails expect only the punched range (a failed call changes nothing).
    local zero=yes
    truncate -s 64K "$T/probe"
    fallocate -z -o 0 -l 4K "$T/probe" 2>/dev/null || zero=no
    "$MI" run --journal "$T/j" "$T/disk.raw" -- truncate -s 20M "$T/disk.raw"
    run status_json "$T/j"
    assert_output --partial '"dirty": [[16777216, 4194304]]'
    "$MI" journal reset "$T/j"
    "$MI" run --journal "$T/j" "$T/disk.raw" -- fallocate -p -o 1M -l 128K "$T/disk.raw"
    local want='"dirty": [[1048576, 131072]]'
    if [ $zero = yes ]; then
        "$MI" run --journal "$T/j" "$T/disk.raw" -- fallocate -z -o 4M -l 64K "$T/disk.raw"
        want='"dirty": [[1048576, 131072], [4194304, 65536]]'
    fi
    run status_json "$T/j"
    assert_output --partial "$want"
    "$MI" journal reset "$T/j"
    "$MI" run --journal "$T/j" "$T/disk.raw" -- python3 -c "import os; os.truncate('$T/disk.raw', 12*1048576)"
    run status_json "$T/j"
    assert_output --partial '"dirty": [[12582912, 8388608]]'
    run "$MI" journal dump "$T/j"
    assert_output --regexp 'ftruncate +16777216 +4194304'
    assert_output --regexp 'fallocate +1048576 +131072'
    assert_output --regexp 'truncate +12582912 +8388608'
}

@test "copy_file_range, sendfile and splice into the source" {
    rand_file "$T/other.raw" 1
    "$MI" run --journal "$T/j" "$T/disk.raw" -- "$WBIN" xfer "$T/disk.raw" "$T/other.raw" > "$T/wrote"
    chunks_of 65536 < "$T/wrote" > "$T/want"
    same_chunks "$T/j" "$T/want"
    rebuilt "$T/j" "$T/disk.raw" "$T/pre.raw"
    run "$MI" journal dump "$T/j"
    assert_output --regexp 'copy_file_range +4194304 +65536'
    assert_output --regexp 'sendfile +5242880 +65536'
    assert_output --regexp 'splice +6291456 +65536'
}

@test "errno and return values are the real call's (EBADF on a read-only descriptor...)" {
    run "$MI" run --journal "$T/j" "$T/disk.raw" -- "$WBIN" errno "$T/disk.raw"
    echo "$output"
    assert_success
    assert_output --partial "errno-fails 0"
}

@test "a writer not under the shim is not tracked; run's journal is; LD_PRELOAD entries kept" {
    "$MI" run --journal "$T/j" "$T/disk.raw" -- true
    dd if=/dev/urandom of="$T/disk.raw" bs=64k seek=3 count=1 conv=notrunc status=none
    run status_json "$T/j"
    assert_output --partial '"dirty": []'
    run "$MI" run --journal "$T/j" "$T/disk.raw" -- sh -c 'echo "$LD_PRELOAD|$MIRROR_IMG_JOURNAL"'
    assert_output "$MIRROR_IMG_SHIM|$T/j"
    ASAN_OPTIONS=verify_asan_link_order=0 LD_PRELOAD=libm.so.6 run "$MI" run --journal "$T/j" "$T/disk.raw" -- sh -c 'echo "$LD_PRELOAD"'
    assert_output "$MIRROR_IMG_SHIM:libm.so.6"
}

@test "a program started without the shim that inherits the source open marks the journal untrusted" {
    # env -i clears MIRROR_IMG_JOURNAL and LD_PRELOAD: nothing would mark what the new
    # program writes through fd 5.  With the environment kept, or fd 5 closed on exec, or
    # no descriptor on the source, it is fine.
    "$MI" run --journal "$T/j" "$T/disk.raw" -- bash -c 'exec 5<> "$0"; env /bin/true; exec 5>&-; env -i /bin/true' "$T/disk.raw"
    [ "$(untrusted "$T/j")" = "" ]
    "$MI" run --journal "$T/j" "$T/disk.raw" -- bash -c 'exec 5<> "$0"; env -i /bin/true' "$T/disk.raw"
    [ "$(untrusted "$T/j")" = "exec_without_shim" ]
}

@test "stdio, POSIX aio and raw syscalls on the source mark the journal untrusted" {
    "$MI" run --journal "$T/j" "$T/disk.raw" -- "$WBIN" stdio "$T/disk.raw"
    [ "$(untrusted "$T/j")" = "stdio" ]
    "$MI" journal reset "$T/j"
    "$MI" run --journal "$T/j" "$T/disk.raw" -- "$WBIN" aio "$T/disk.raw"
    [ "$(untrusted "$T/j")" = "posix_aio" ]
    "$MI" journal reset "$T/j"
    "$MI" run --journal "$T/j" "$T/disk.raw" -- "$WBIN" raw "$T/disk.raw"
    [ "$(untrusted "$T/j")" = "raw_syscall" ]
    run "$MI" journal dump "$T/j"
    assert_output --regexp 'untrusted +raw_syscall'
}

# gap_over LOG FROM TO: no write completed inside (FROM, TO), and writes resumed after TO
no_write_between() {
    awk -v a="$2" -v b="$3" '$2 > a && $2 < b { bad++ } $2 >= b { after++ }
        END { if (bad) { print "writes while held: " bad; exit 1 } if (!after) { print "no write after release"; exit 1 } }' "$1"
}

@test "quiesce: writers are held while the lease is fresh and go on when released" {
    "$MI" run --journal "$T/j" "$T/disk.raw" -- true
    "$MI" run --journal "$T/j" "$T/disk.raw" -- "$WBIN" tick "$T/disk.raw" 300 5 > "$T/ticks" &
    on_exit "kill $! 2>/dev/null"
    wait_for grep -q '^20 ' "$T/ticks"
    run "$JCTL" hold "$T/j" 600 300 1
    assert_success
    echo "$output"
    local held released
    held=$(awk '$1 == "held" { print $2 }' <<<"$output")
    released=$(awk '$1 == "released" { print $2 }' <<<"$output")
    assert_output --regexp 'held [0-9]+ writers 1 '
    [ $((released - held)) -ge 600 ]
    wait
    no_write_between "$T/ticks" "$held" "$released"
    # the held write goes on at once when released (a futex wake, not a poll)
    local first
    first=$(awk -v r="$released" '$2 >= r { print $2 - r; exit }' "$T/ticks")
    echo "first write $first ms after the release"
    [ "$first" -le 40 ]
    [ "$(wc -l < "$T/ticks")" -eq 300 ]
    rebuilt "$T/j" "$T/disk.raw" "$T/pre.raw"
}

@test "a follower frozen with SIGSTOP holds writers no longer than its lease" {
    "$MI" run --journal "$T/j" "$T/disk.raw" -- true
    "$MI" run --journal "$T/j" "$T/disk.raw" -- "$WBIN" tick "$T/disk.raw" 400 5 > "$T/ticks" &
    local writer=$!
    on_exit "kill $writer 2>/dev/null"
    wait_for grep -q '^20 ' "$T/ticks"
    "$JCTL" hold "$T/j" 20000 500 1 > "$T/jctl" &
    local follower=$!
    on_exit "kill -CONT $follower; kill $follower 2>/dev/null"
    wait_for grep -q '^held' "$T/jctl"
    kill -STOP $follower
    local held
    held=$(awk '$1 == "held" { print $2 }' "$T/jctl")
    wait_for grep -q '^399 ' "$T/ticks" || fail "the writer is still held"
    wait $writer
    # the longest gap between two writes: about one lease, far from the 20 s hold
    awk 'NR > 1 && $2 - prev > max { max = $2 - prev } { prev = $2 } END { print max }' "$T/ticks" > "$T/gap"
    echo "longest gap $(cat "$T/gap") ms"
    [ "$(cat "$T/gap")" -ge 300 ]
    [ "$(cat "$T/gap")" -le 1500 ]
    awk -v h="$held" '$2 > h' "$T/ticks" | grep -q . || fail "no write after the hold began"
}

@test "pivot: writers switch to the target (same offset, flags) and go on writing there" {
    "$MI" run --journal "$T/j" "$T/disk.raw" -- true
    # one writer at explicit offsets (pwrite), one at its file position (write)
    "$MI" run --journal "$T/j" "$T/disk.raw" -- "$WBIN" tick "$T/disk.raw" 200 5 > "$T/ticks" &
    local w1=$!
    "$MI" run --journal "$T/j" "$T/disk.raw" -- "$WBIN" seqtick "$T/disk.raw" 200 5 8388608 > "$T/seqticks" &
    local w2=$!
    on_exit "kill $w1 $w2 2>/dev/null"
    wait_for grep -q '^30 ' "$T/ticks"
    wait_for grep -q '^30 ' "$T/seqticks"
    run "$JCTL" pivot "$T/j" "$T/target.raw"
    echo "$output"
    assert_success
    assert_output --regexp 'pivot ok switched [0-2] idle [0-2] failed 0'
    wait $w1
    wait $w2
    # the target has every tick of both; the source stopped receiving them at the pivot
    python3 - "$T/target.raw" "$T/disk.raw" <<'EOF'
import sys
t, s = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
for base in (0, 8 << 20):
    for i in range(200):
        assert t[base + i * 4096] == i % 251 + 1, f"target misses tick {i} at {base}"
        assert t[base + i * 4096 + 4095] == i % 251 + 1, f"target tick {i} at {base} torn"
    last = base + 199 * 4096
    assert s[last:last + 4096] != bytes([199 % 251 + 1]) * 4096, f"the source got the last tick at {base}"
EOF
    run "$MI" journal dump "$T/j"
    assert_output --regexp 'pivot +1 +0'
    run "$MI" journal status --json "$T/j"
    assert_output --partial '"pivot-generation": 1'
}

@test "pivot is refused while a writer has a writable shared mapping of the source" {
    "$MI" run --journal "$T/j" "$T/disk.raw" -- true
    "$MI" run --journal "$T/j" "$T/disk.raw" -- "$WBIN" maphold "$T/disk.raw" 5 > "$T/out" &
    on_exit "kill $! 2>/dev/null"
    wait_for grep -q mapped "$T/out"
    run "$MI" journal status --json "$T/j"
    assert_output --partial '"shared-mappings": 1'
    run "$JCTL" pivot "$T/j" "$T/target.raw"
    assert_failure
    assert_output --regexp 'writer pid [0-9]+ has a writable shared mapping of the source: cannot pivot'
}

@test "journal truncated under a running writer: the writer survives; the journal is refused" {
    "$MI" run --journal "$T/j" "$T/disk.raw" -- true
    "$MI" run --journal "$T/j" "$T/disk.raw" -- "$WBIN" tick "$T/disk.raw" 100 5 > "$T/ticks" 2> "$T/err" &
    local writer=$!
    wait_for grep -q '^10 ' "$T/ticks"
    truncate -s 0 "$T/j"
    local rc=0
    wait $writer || rc=$?
    [ "$rc" -eq 0 ] || fail "the writer exited with $rc"
    [ "$(wc -l < "$T/ticks")" -eq 100 ]
    grep -q 'journal truncated under this process: not journaling any more' "$T/err"
    run "$MI" journal status "$T/j"
    assert_failure 1
    assert_output "mirror-img: $T/j: not a mirror-img journal (empty file)"
    run "$MI" run --journal "$T/j" "$T/disk.raw" -- true
    assert_failure 1
    assert_output --partial "not a mirror-img journal"
}

@test "a journal naming another source is refused; one naming this source is reused" {
    "$MI" run --journal "$T/j" "$T/disk.raw" -- dd if=/dev/zero of="$T/disk.raw" bs=4k count=1 conv=notrunc status=none
    rand_file "$T/other.raw" 1
    run "$MI" run --journal "$T/j" "$T/other.raw" -- true
    assert_failure 1
    assert_output --regexp "^mirror-img: $T/j: journal is for $T/disk.raw \(device [0-9]+, inode [0-9]+\), not $T/other.raw\$"
    run "$MI" run --journal "$T/j" "$T/disk.raw" -- true
    assert_success
    run status_json "$T/j"
    assert_output --partial '"dirty": [[0, 65536]]'
    run "$MI" run --journal "$T/j" -g 4K "$T/disk.raw" -- true
    assert_failure 1
    assert_output --partial "journal has granularity 65536, not 4096"
    echo garbage > "$T/notj"
    run "$MI" run --journal "$T/notj" "$T/disk.raw" -- true
    assert_failure 1
    assert_output --partial "$T/notj: not a mirror-img journal"
    [ "$(cat "$T/notj")" = garbage ]
}

@test "granularity: -g 4K journals at 4 KiB" {
    "$MI" run --journal "$T/j" -g 4K "$T/disk.raw" -- dd if=/dev/zero of="$T/disk.raw" bs=4k seek=3 count=1 conv=notrunc status=none
    run status_json "$T/j"
    assert_output --partial '"granularity": 4096'
    assert_output --partial '"dirty": [[12288, 4096]]'
    run "$MI" run --journal "$T/j2" -g 3000 "$T/disk.raw" -- true
    assert_failure 2
    assert_output --partial "not a power of two"
}

@test "--max-size: writes beyond the covered size mark the journal untrusted" {
    "$MI" run --journal "$T/j" --max-size 16M "$T/disk.raw" -- \
        dd if=/dev/zero of="$T/disk.raw" bs=64k seek=255 count=2 conv=notrunc status=none
    run status_json "$T/j"
    assert_output --partial '"covered": 16777216'
    assert_output --partial '"dirty": [[16711680, 65536]]'
    [ "$(untrusted "$T/j")" = "beyond_covered_size" ]
    run "$MI" run --journal "$T/j2" --max-size 1M "$T/disk.raw" -- true
    assert_failure 1
    assert_output --partial "maximum size 1048576 is smaller than the source"
}

@test "journal reset: refused while a follower holds the journal, clears it otherwise" {
    "$MI" run --journal "$T/j" "$T/disk.raw" -- "$WBIN" raw "$T/disk.raw"
    "$MI" run --journal "$T/j" "$T/disk.raw" -- dd if=/dev/zero of="$T/disk.raw" bs=4k count=1 conv=notrunc status=none
    "$JCTL" lock "$T/j" 10 > "$T/jctl" &
    on_exit "kill $! 2>/dev/null"
    wait_for grep -q following "$T/jctl"
    local fpid
    fpid=$(awk '{ print $2 }' "$T/jctl")
    run "$MI" journal reset "$T/j"
    assert_failure 1
    assert_output "mirror-img: $T/j: another follower (pid $fpid) is using this journal"
    run "$MI" journal status "$T/j"
    assert_output --regexp "follower: +pid $fpid, lease"
    kill %1
    wait || true
    run "$MI" journal reset "$T/j"
    assert_success
    run status_json "$T/j"
    assert_output --partial '"dirty-chunks": 0'
    assert_output --partial '"trusted": true'
}

@test "journal status shows live writers; dump --json and -n" {
    "$MI" run --journal "$T/j" "$T/disk.raw" -- true
    "$MI" run --journal "$T/j" "$T/disk.raw" -- "$WBIN" tick "$T/disk.raw" 200 10 > "$T/ticks" &
    on_exit "kill $! 2>/dev/null"
    wait_for grep -q '^5 ' "$T/ticks"
    run status_json "$T/j"
    assert_output --regexp '"writers-alive": 1'
    run "$MI" journal status "$T/j"
    assert_output --regexp 'writer: +pid [0-9]+: 1 descriptor, 0 mappings'
    run "$MI" journal dump -n 2 --json "$T/j"
    assert_success
    [ "$(python3 -c 'import json,sys; print(len(json.load(sys.stdin)["records"]))' <<<"$output")" -eq 2 ]
    run "$MI" journal bogus "$T/j"
    assert_failure 2
    assert_output --partial "unknown action 'bogus'"
    run "$MI" journal status "$T/nope"
    assert_failure 1
    assert_output "mirror-img: $T/nope: no such journal"
}

@test "auto-converge: the follower's delay slows every write" {
    "$MI" run --journal "$T/j" "$T/disk.raw" -- true
    "$JCTL" delay "$T/j" 50000 5 > "$T/jctl" &
    on_exit "kill $! 2>/dev/null"
    wait_for grep -q following "$T/jctl"
    local t0=$SECONDS
    "$MI" run --journal "$T/j" "$T/disk.raw" -- "$WBIN" tick "$T/disk.raw" 20 0 > "$T/ticks"
    # 20 writes at 50 ms each: at least a second
    awk 'NR == 1 { a = $2 } END { print $2 - a }' "$T/ticks" > "$T/span"
    echo "span $(cat "$T/span") ms"
    [ "$(cat "$T/span")" -ge 900 ]
}

@test "run: the command's exit status, 128+signal, usage errors" {
    run "$MI" run --journal "$T/j" "$T/disk.raw" -- sh -c 'exit 7'
    assert_failure 7
    run "$MI" run --journal "$T/j" "$T/disk.raw" -- sh -c 'kill -TERM $$'
    assert_failure 143
    run -127 "$MI" run --journal "$T/j" "$T/disk.raw" -- /nonexistent/cmd
    assert_output --partial "mirror-img: /nonexistent/cmd: cannot run: No such file or directory"
    run "$MI" run "$T/disk.raw" -- true
    assert_failure 2
    assert_output --partial -- "--journal J is required"
    run "$MI" run --journal "$T/j" "$T/disk.raw"
    assert_failure 2
    assert_output --partial "expected a command"
    run "$MI" run --journal "$T/j" "$T/missing.raw" -- true
    assert_failure 1
    assert_output "mirror-img: $T/missing.raw: No such file or directory"
    # SIGTERM to run goes on to the command
    "$MI" run --journal "$T/j" "$T/disk.raw" -- sleep 30 &
    local pid=$!
    sleep 0.5
    kill -TERM $pid
    local rc=0
    wait $pid || rc=$?
    [ "$rc" -eq 143 ]
}
