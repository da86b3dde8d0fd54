#!/usr/bin/env bash
# demo.sh (`make demo`): build a sample image with QEMU's tools, mirror it with mirror-img
# to raw and to qcow2, mirror it live while qemu-io writes it, let QEMU's tools judge the
# results, and time qemu-img convert on the same image.  Usage: tests/demo.sh [MIRROR-IMG]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
MI=${1:-${MI:-$top/build/mirror-img}}
[ -x "$MI" ] || { echo "demo: $MI is not built (run make)" >&2; exit 1; }
for t in qemu-img qemu-io; do
    command -v "$t" >/dev/null || { echo "demo: $t is missing (apt-get install qemu-utils)" >&2; exit 1; }
done

base=${TMPDIR:-/var/tmp}
free_kib=$(df -Pk "$base" | awk 'NR == 2 { print $4 }')
if [ "${free_kib:-0}" -lt $((2 * 1024 * 1024)) ]; then
    echo "demo: $base has less than 2 GiB free; set TMPDIR to a roomier place" >&2
    exit 1
fi
dir=$(mktemp -d "$base/mirror-img-demo.XXXXXX")
trap 'rm -rf "$dir"' EXIT
trap 'exit 130' INT TERM
cd "$dir"

bold() { if [ -t 1 ]; then printf '\n\033[1m== %s\033[0m\n' "$*"; else printf '\n== %s\n' "$*"; fi; }
show() { printf '$ %s\n' "$*"; "$@"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.0f MiB", b / 1048576 }'; }
disk_use() { echo $(($(stat -c %b "$1") * 512)); }

bold "Making a sample image in $dir"
# base.qcow2: 1 GiB, 128 MiB of random data in four runs.
qemu-img create -q -f raw base.raw 1G
for off in 0 256 512 900; do
    head -c 32M /dev/urandom | dd of=base.raw bs=1M seek="$off" conv=notrunc status=none
done
qemu-img convert -O qcow2 base.raw base.qcow2
rm -f base.raw
# disk.qcow2: an overlay on base.qcow2 with 128 MiB of its own data, a zeroed range over
# backing data, and holes that read through to the backing file or as zeros.
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 disk.qcow2 1G
qemu-io -f qcow2 \
    -c 'write -P 0x5a 64M 48M' \
    -c 'write -P 0xa5 300M 40M' \
    -c 'write -P 0x11 700M 40M' \
    -c 'write -z 256M 16M' \
    disk.qcow2 >/dev/null
show "$MI" info disk.qcow2

if [ -t 2 ]; then
    show_opt=-p   # a progress bar on the terminal
else
    show_opt=-v   # no terminal: print the settings and the result instead
fi

bold "mirror-img copy to raw (sparse)"
t0=$(now)
show "$MI" copy "$show_opt" -O raw disk.qcow2 mirror.raw
t_mi_raw=$(secs "$t0" "$(now)")
echo "done in $t_mi_raw s; mirror.raw takes $(mib "$(disk_use mirror.raw)") on disk for a 1 GiB disk"

bold "mirror-img copy to qcow2 (the source's format, as no -O is given)"
t0=$(now)
show "$MI" copy "$show_opt" disk.qcow2 mirror.qcow2
t_mi_q2=$(secs "$t0" "$(now)")
echo "done in $t_mi_q2 s"
show "$MI" info mirror.qcow2

bold "QEMU's judgement"
ok=true
show qemu-img compare disk.qcow2 mirror.raw || ok=false
show qemu-img compare disk.qcow2 mirror.qcow2 || ok=false
show qemu-img check mirror.qcow2 || ok=false
if [ "$(disk_use mirror.raw)" -ge $((1024 * 1024 * 1024)) ]; then
    echo "mirror.raw is not sparse"
    ok=false
fi

bold "Live mirror: follow mirrors the disk to raw while qemu-io writes disk.qcow2 under mirror-img run"
follow_opt=
[ -t 2 ] && follow_opt=-p
printf '$ %s &\n' "$MI follow $follow_opt --journal live.j -O raw disk.qcow2 live.raw"
"$MI" follow $follow_opt --journal live.j -O raw disk.qcow2 live.raw &
follow_pid=$!
for _ in $(seq 300); do
    "$MI" status --json live.j.sock 2>/dev/null | grep -q '"ready": *true' && break
    sleep 0.1
done
show "$MI" run --journal live.j disk.qcow2 -- qemu-io -f qcow2 \
    -c 'write -P 0x77 100M 8M' -c 'write -z 310M 4M' -c 'discard 710M 1M' \
    -c 'write -P 0x33 1000M 8M' disk.qcow2 >/dev/null
show "$MI" status live.j.sock
show "$MI" complete live.j.sock
wait "$follow_pid" || ok=false
show qemu-img compare disk.qcow2 live.raw || ok=false

bold "qemu-img convert of the same image, for comparison"
t0=$(now)
show qemu-img convert -O raw disk.qcow2 qemu.raw
t_q_raw=$(secs "$t0" "$(now)")
t0=$(now)
show qemu-img convert -O qcow2 disk.qcow2 qemu.qcow2
t_q_q2=$(secs "$t0" "$(now)")
rm -f qemu.raw qemu.qcow2

bold "Summary"
printf '%-10s %12s %18s\n' target mirror-img "qemu-img convert"
printf '%-10s %10s s %16s s\n' raw "$t_mi_raw" "$t_q_raw" qcow2 "$t_mi_q2" "$t_q_q2"
echo "(mirror-img flushes the target to disk before it reports success; times include that)"
if $ok; then
    echo "VERDICT: PASS: both mirrors and the live mirror are identical to the source (qemu-img compare), the qcow2 mirror passes qemu-img check, the raw mirror is sparse"
else
    echo "VERDICT: FAIL: see the messages above"
    exit 1
fi
