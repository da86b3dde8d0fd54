#!/usr/bin/env bats
# copy between raw images: exact bytes, sparse targets, -n, --force, refusals.
load helpers

setup() {
    # 64 MiB sparse source: random data at 1M and 40M, zeros written at 20M (allocated zeros).
    truncate -s 64M "$T/src.raw"
    dd if=/dev/urandom of="$T/src.raw" bs=1M count=3 seek=1 conv=notrunc status=none
    dd if=/dev/zero of="$T/src.raw" bs=1M count=4 seek=20 conv=notrunc status=none
    dd if=/dev/urandom of="$T/src.raw" bs=64K count=5 seek=640 conv=notrunc status=none
}

@test "copy raw to raw: identical, and sparse where the source has holes or zeros" {
    run "$MI" copy "$T/src.raw" "$T/dst.raw"
    assert_success
    assert_output ""
    cmp "$T/src.raw" "$T/dst.raw"
    qemu_same "$T/src.raw" "$T/dst.raw"
    # Data is 3 MiB + 320 KiB; the 4 MiB of written zeros must not be allocated.
    [ "$(alloc_bytes "$T/dst.raw")" -le $(( 4 * 1024 * 1024 )) ]
    [ "$(stat -c %s "$T/dst.raw")" -eq $(( 64 * 1024 * 1024 )) ]
}

@test "copy: a virtual size that is not a multiple of the chunk size" {
    truncate -s $(( 5 * 1024 * 1024 + 4096 )) "$T/odd.raw"
    dd if=/dev/urandom of="$T/odd.raw" bs=4096 count=3 seek=1279 conv=notrunc status=none
    run "$MI" copy -g 1M "$T/odd.raw" "$T/odd-out.raw"
    assert_success
    cmp "$T/odd.raw" "$T/odd-out.raw"
}

@test "copy -n over random bytes: the target ends identical (zero ranges are zeroed)" {
    rand_file "$T/dst.raw" 64
    run "$MI" copy -n "$T/src.raw" "$T/dst.raw"
    assert_success
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "copy -n into a larger target keeps its size and mirrors the source's range" {
    rand_file "$T/dst.raw" 80
    "$MI" copy -n "$T/src.raw" "$T/dst.raw"
    [ "$(stat -c %s "$T/dst.raw")" -eq $(( 80 * 1024 * 1024 )) ]
    cmp -n $(( 64 * 1024 * 1024 )) "$T/src.raw" "$T/dst.raw"
}

@test "copy -n into a smaller target is refused before writing" {
    rand_file "$T/small.raw" 8
    cp "$T/small.raw" "$T/small.orig"
    run "$MI" copy -n "$T/src.raw" "$T/small.raw"
    assert_failure 1
    assert_output --partial "small.raw: target is smaller than the source"
    cmp "$T/small.raw" "$T/small.orig"
}

@test "copy -n needs an existing target" {
    run "$MI" copy -n "$T/src.raw" "$T/none.raw"
    assert_failure 1
    assert_output --partial "none.raw: does not exist"
    [ ! -e "$T/none.raw" ]
}

@test "copy refuses to clobber an existing target without -n or --force" {
    echo keep > "$T/dst.raw"
    run "$MI" copy "$T/src.raw" "$T/dst.raw"
    assert_failure 1
    assert_output --partial "dst.raw: already exists"
    [ "$(cat "$T/dst.raw")" = keep ]
}

@test "copy --force replaces an existing target" {
    rand_file "$T/dst.raw" 100
    run "$MI" copy --force "$T/src.raw" "$T/dst.raw"
    assert_success
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "copy refuses a target that is the source, also through a link" {
    ln -s "$T/src.raw" "$T/link.raw"
    ln "$T/src.raw" "$T/hard.raw"
    cp "$T/src.raw" "$T/orig.raw"
    for t in src.raw link.raw hard.raw; do
        run "$MI" copy -n "$T/src.raw" "$T/$t"
        assert_failure 1
        assert_output --partial "is the source"
        run "$MI" copy --force "$T/src.raw" "$T/$t"
        assert_failure 1
    done
    cmp "$T/src.raw" "$T/orig.raw"
}

@test "copy of a missing source fails clearly and creates nothing" {
    run "$MI" copy "$T/nothing.raw" "$T/dst.raw"
    assert_failure 1
    assert_output --partial "mirror-img: $T/nothing.raw: cannot open: No such file or directory"
    [ ! -e "$T/dst.raw" ]
}

@test "copy -j1 and -j4 with small buffers give the same bytes" {
    for j in 1 4; do
        "$MI" copy -j $j --buf-size 64K -g 4K "$T/src.raw" "$T/out$j.raw"
        cmp "$T/src.raw" "$T/out$j.raw"
    done
}

@test "copy --json: QMP-shaped events, BLOCK_JOB_COMPLETED with bytes_copied and duration_ms" {
    run "$MI" copy --json "$T/src.raw" "$T/dst.raw"
    assert_success
    echo "$output" | python3 -c '
import json, sys
evs = [json.loads(l) for l in sys.stdin if l.strip()]
for e in evs:
    assert set(e) == {"timestamp", "event", "data"}, e
    assert set(e["timestamp"]) == {"seconds", "microseconds"}
names = [e["event"] for e in evs]
assert names[0] == "JOB_STATUS_CHANGE" and evs[0]["data"]["status"] == "running", names
done = [e for e in evs if e["event"] == "BLOCK_JOB_COMPLETED"]
assert len(done) == 1, names
d = done[0]["data"]
assert d["bytes_copied"] == 3 * 1048576 + 5 * 65536, d
assert d["len"] == d["offset"] and d["duration_ms"] >= 0 and d["device"].endswith("dst.raw"), d
'
}

@test "copy -q prints nothing; -v prints the settings in force" {
    run "$MI" copy -q "$T/src.raw" "$T/a.raw"
    assert_success
    assert_output ""
    run "$MI" copy -v -j 3 -g 128K "$T/src.raw" "$T/b.raw"
    assert_success
    assert_output --partial "granularity 128.0 KiB, 3 threads"
}

@test "copy --verify reads the target back" {
    run "$MI" copy --verify "$T/src.raw" "$T/dst.raw"
    assert_success
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "copy -p draws a progress bar on a terminal" {
    requires script
    script -qec "$MI copy -p '$T/src.raw' '$T/dst.raw'" /dev/null > "$T/tty.out"
    grep -q '100.0%' "$T/tty.out"
    grep -q 'ETA' "$T/tty.out"
    # every redraw clears to the end of the line: nothing of a longer line stays behind
    draws=$(tr '\r' '\n' < "$T/tty.out" | grep -c 'ETA')
    clears=$(tr '\r' '\n' < "$T/tty.out" | grep -c $'ETA [0-9:-]*\e\[K')
    [ "$draws" -gt 0 ] && [ "$draws" -eq "$clears" ]
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "copy to a block device (loop) with -n" {
    requires losetup
    truncate -s 64M "$T/backing.img"
    dev=$(losetup -f --show "$T/backing.img" 2>/dev/null) || skip "no loop devices here"
    on_exit "losetup -d $dev"
    run "$MI" copy -n "$T/src.raw" "$dev"
    assert_success
    cmp "$T/src.raw" "$dev"
}

@test "copy: a source that shrinks or is written during the copy fails (exit 1), no target left" {
    # -s keeps the copy running about two seconds: the source changes under it.
    "$MI" copy -s 2M "$T/src.raw" "$T/dst.raw" 2> "$T/err" &
    pid=$!
    on_exit "kill -9 $pid"
    sleep 0.5
    truncate -s 32M "$T/src.raw"
    rc=0
    wait $pid || rc=$?
    [ "$rc" -eq 1 ]
    grep -q "src.raw: changed size during the copy (67108864 -> 33554432 bytes)" "$T/err"
    [ ! -e "$T/dst.raw" ]

    truncate -s 64M "$T/src.raw"
    "$MI" copy -s 2M "$T/src.raw" "$T/dst.raw" 2> "$T/err" &
    pid=$!
    on_exit "kill -9 $pid"
    sleep 0.5
    dd if=/dev/urandom of="$T/src.raw" bs=4K count=1 seek=300 conv=notrunc status=none
    rc=0
    wait $pid || rc=$?
    [ "$rc" -eq 1 ]
    grep -q "src.raw: was written during the copy" "$T/err"
    [ ! -e "$T/dst.raw" ]
}
