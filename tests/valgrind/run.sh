#!/usr/bin/env bash
# run.sh: `make check-valgrind`.  Runs under valgrind's memcheck, each with
# --error-exitcode=1 --leak-check=full (definite and possible leaks are errors):
#   1. copy qcow2 -> raw (normal, compressed, zero and unallocated clusters, a backing file)
#   2. copy raw -> qcow2 (and -c, compressed)
#   3. follow, with a writer under the shim, then complete (the follower, and the client)
#   4. a writer under the shim: `mirror-img run` and the writer it starts (with the shim
#      preloaded) both under memcheck (--trace-children=yes)
# Each result is checked (qemu-img compare, cmp).  Suppressions: mirror-img.supp beside
# this script, for system libraries only (see the comments there).  MI: the binary.
set -u
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
MI=${MI:-$top/build/mirror-img}
export MIRROR_IMG_SHIM=${MIRROR_IMG_SHIM:-$(dirname "$MI")/mirror-img-shim.so}
for t in valgrind qemu-img qemu-io gcc; do
    command -v $t >/dev/null || { echo "check-valgrind: $t is not installed" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
cd "$work"
VG=(valgrind --tool=memcheck --error-exitcode=1 --leak-check=full
    --errors-for-leak-kinds=definite,possible --show-leak-kinds=definite,possible
    --track-origins=yes --suppressions="$here/mirror-img.supp" --quiet)
fail=0 n=0

# step NAME CMD...: run one step; its valgrind output goes to NAME.vg.
step() {
    local name=$1
    shift
    n=$((n + 1))
    if "$@" > "$name.out" 2>&1; then
        echo "ok $n $name"
    else
        echo "not ok $n $name"
        sed 's/^/#   /' "$name.out" | tail -40
        fail=1
    fi
}

vg() { local name=$1; shift; "${VG[@]}" --log-file="$work/$name.vg" "$@"; }
clean_log() { # valgrind logs are empty when nothing was found (--quiet)
    local f
    for f in "$work"/"$1"*.vg; do
        [ -s "$f" ] && { cat "$f"; return 1; }
    done
    return 0
}

# --- images
head -c 1048576 /dev/urandom > base.raw
truncate -s 4M base.raw
qemu-img create -q -f qcow2 -o cluster_size=65536 -b base.raw -F raw src.qcow2 4M
qemu-io -f qcow2 -c 'write -P 0x11 1M 256k' -c 'write -z 2M 128k' -c 'write -c -P 0x22 3M 64k' \
    src.qcow2 >/dev/null
truncate -s 8M src.raw
head -c 2097152 /dev/urandom | dd of=src.raw bs=1M seek=2 conv=notrunc status=none

copy_qcow2_raw() {
    vg copy1 "$MI" copy -O raw src.qcow2 out.raw && clean_log copy1 &&
        qemu-img compare -q src.qcow2 out.raw
}
copy_raw_qcow2() {
    vg copy2 "$MI" copy -O qcow2 src.raw out.qcow2 && clean_log copy2 &&
        qemu-img compare -q src.raw out.qcow2 && qemu-img check -q out.qcow2 &&
        vg copy3 "$MI" copy -c -O qcow2 -o cluster_size=4096 src.raw outc.qcow2 && clean_log copy3 &&
        qemu-img compare -q src.raw outc.qcow2
}

# A writer for the shim: pwrite, pwritev, write after lseek, ftruncate, fork, mmap+msync.
cat > vwriter.c <<'C'
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDWR);
    if (fd < 0) return 1;
    char buf[8192];
    memset(buf, 0x5a, sizeof buf);
    for (int i = 0; i < 64; i++)
        if (pwrite(fd, buf, 4096, (off_t)i * 65536) != 4096) return 1;
    struct iovec iov[2] = {{buf, 1000}, {buf + 1000, 3096}};
    if (pwritev(fd, iov, 2, 1 << 20) != 4096) return 1;
    lseek(fd, 3 << 20, SEEK_SET);
    if (write(fd, buf, sizeof buf) != sizeof buf) return 1;
    pid_t p = fork();
    if (p == 0) _exit(pwrite(fd, buf, 4096, 5 << 20) == 4096 ? 0 : 1);
    int st;
    waitpid(p, &st, 0);
    char *m = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 6 << 20);
    if (m == MAP_FAILED) return 1;
    memset(m, 0x33, 4096);
    msync(m, 65536, MS_SYNC);
    munmap(m, 65536);
    if (ftruncate(fd, 9 << 20) < 0) return 1;
    close(fd);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}
C
gcc -O1 -g -o vwriter vwriter.c

follow_complete() {
    cp src.raw fsrc.raw
    vg follow "$MI" follow --json --journal fj fsrc.raw fdst.raw > follow.events 2> follow.err &
    local f=$! i
    for i in $(seq 300); do grep -q BLOCK_JOB_READY follow.events 2>/dev/null && break; sleep 0.1; done
    grep -q BLOCK_JOB_READY follow.events || { cat follow.err; return 1; }
    "$MI" run --journal fj fsrc.raw -- ./vwriter fsrc.raw || return 1
    sleep 0.5
    vg complete "$MI" complete fj.sock || { cat follow.err; return 1; }
    wait $f || { cat follow.err; clean_log follow; return 1; }
    clean_log follow && clean_log complete && cmp fsrc.raw fdst.raw
}

shim_writer() {
    cp src.raw wsrc.raw
    vg run "$MI" run --journal wj wsrc.raw -- "${VG[@]}" --log-file="$work/run-writer.vg" \
        --trace-children=yes ./vwriter wsrc.raw || return 1
    # the shim journaled the writer's calls (64 pwrite, pwritev, write, the child's pwrite,
    # msync, ftruncate...), under memcheck
    clean_log run &&
        "$MI" journal status wj | grep -Eq "written: .* in ([7-9][0-9]|[1-9][0-9]{2,}) calls"
}

step "copy qcow2 -> raw" copy_qcow2_raw
step "copy raw -> qcow2" copy_raw_qcow2
step "follow with a writer under the shim, then complete" follow_complete
step "a writer under the shim (and mirror-img run)" shim_writer
echo "valgrind: $n steps, $([ $fail = 0 ] && echo clean || echo FAILED)"
exit $fail
