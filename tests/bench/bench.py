#!/usr/bin/env python3
"""bench.py: mirror-img against nbdcopy, qemu-img convert and cp (driven by run.sh).

Generates the images, runs every tool of a case on the same source in alternating rounds
(the order rotates each round), drops the target after each run, verifies a mirror-img
copy of each case with qemu-img compare (an untimed warm-up run), then prints the table
of medians, checks the targets of the speed issue and writes results.json and chart.png.

Wall time is measured here (perf_counter around the child); CPU time (user + sys) and
peak RSS come from /usr/bin/time -f, which reports the child's rusage.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

MiB = 1 << 20
GiB = 1 << 30

# ---------------------------------------------------------------- images


class Pool:
    """64 MiB of random bytes; each run takes a slice at its own odd offset, so no two
    runs hold the same bytes (nobody can dedupe) and generation costs one urandom call."""

    def __init__(self):
        self.size = 64 * MiB
        self.buf = os.urandom(self.size + MiB)

    def run(self, k):
        off = (k * 1048573 * 7) % self.size
        return self.buf[off:off + MiB]

    def compressible(self, k):
        """1 MiB that deflates to about half: each 4 KiB block is 2 KiB random, 2 KiB zeros."""
        src = self.run(k)
        z = bytes(2048)
        return b"".join(src[i:i + 2048] + z for i in range(0, MiB, 4096))


def write_raw(path, size, runs):
    """A sparse raw file of size bytes with 1 MiB runs [(offset, bytes)]: the rest is holes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        for off, data in runs:
            os.pwrite(fd, data, off)
    finally:
        os.close(fd)


def half_data(pool, mib, compressible=False):
    """The issue's layout: every other MiB is data, a tenth of the data runs zero-filled
    (written zeros: allocated, so they must be read and detected), the rest holes."""
    zero = bytes(MiB)
    for i in range(0, mib, 2):
        k = i // 2
        data = zero if k % 10 == 9 else pool.compressible(k) if compressible else pool.run(k)
        yield i * MiB, data


def sh(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def convert(src, dst, *opts, zero_runs=()):
    """raw -> qcow2.  qemu-img turns zero-filled runs into unallocated clusters (and -S 0
    would allocate the holes too), so the zero-filled runs are written again as data
    with qemu-io: the qcow2 then holds the same allocated zeros as the raw file."""
    sh("qemu-img", "convert", "-W", "-m", "16", "-f", "raw", "-O", "qcow2", *opts, src, dst)
    cmds = [a for off in zero_runs for a in ("-c", f"write -q -P 0 {off} 1M")]
    for i in range(0, len(cmds), 400):
        sh("qemu-io", "-f", "qcow2", *cmds[i:i + 400], dst)


def zeros_of(runs):
    zero = bytes(MiB)
    return [off for off, data in runs if data == zero]


def check_room(path, need):
    st = os.statvfs(path)
    if st.f_bavail * st.f_frsize < need:
        raise SystemExit(f"bench: {path} has less than {need >> 30} GiB free")
    with open("/proc/meminfo") as f:
        avail = {l.split(":")[0]: int(l.split()[1]) for l in f}["MemAvailable"] << 10
    if avail < need + 4 * GiB:
        raise SystemExit(f"bench: less than {(need >> 30) + 4} GiB of memory available")


def make_images(d, disk):
    t0 = time.time()
    check_room(d, 7 * GiB)  # sources about 4.5 GiB, one target at a time
    if disk:
        os.makedirs(disk, exist_ok=True)
        check_room(disk, 4 * GiB)
    pool = Pool()
    img = {}
    img["raw"] = f"{d}/disk.raw"
    write_raw(img["raw"], 2 * GiB, half_data(pool, 2048))
    # What the floor program writes: the non-zero runs, the bytes every tool must write.
    img["layout"] = f"{d}/disk.layout"
    zero = bytes(MiB)
    with open(img["layout"], "w") as f:
        f.writelines(f"{off} {len(data)}\n" for off, data in half_data(pool, 2048) if data != zero)
    img["qcow2"] = f"{d}/disk.qcow2"
    convert(img["raw"], img["qcow2"], zero_runs=zeros_of(half_data(pool, 2048)))
    # 256 GiB with 1 GiB of data (1 MiB every 256 MiB), and the same bytes packed into
    # 1 GiB: the reference that says what copying the data alone costs.
    tmp = f"{d}/tmp.raw"
    write_raw(tmp, 256 * GiB, ((k * 256 * MiB, pool.run(k)) for k in range(1024)))
    img["sparse"] = f"{d}/sparse256g.qcow2"
    convert(tmp, img["sparse"])
    write_raw(tmp, GiB, ((k * MiB, pool.run(k)) for k in range(1024)))
    img["alone"] = f"{d}/alone1g.qcow2"
    convert(tmp, img["alone"])
    write_raw(tmp, 256 * MiB, half_data(pool, 256))
    img["c512"] = f"{d}/c512.qcow2"
    convert(tmp, img["c512"], "-o", "cluster_size=512", zero_runs=zeros_of(half_data(pool, 256)))
    write_raw(tmp, 512 * MiB, half_data(pool, 512, compressible=True))
    img["zlib"] = f"{d}/zlib.qcow2"
    convert(tmp, img["zlib"], "-c", "-o", "compression_type=zlib")
    os.unlink(tmp)
    if disk:
        img["disk-raw"] = f"{disk}/disk.raw"
        # -S 0 keeps the written zeros written; the holes stay holes on a raw target
        sh("qemu-img", "convert", "-f", "raw", "-O", "raw", "-S", "0", img["raw"], img["disk-raw"])
        img["disk-qcow2"] = f"{disk}/disk.qcow2"
        sh("cp", "--sparse=never", img["qcow2"], img["disk-qcow2"])
        sh("sync")
    return img, time.time() - t0


# ---------------------------------------------------------------- tools


def tool_cmd(tool, src, sfmt, dst, dfmt, durable, mi):
    """The command line of one tool, or None when it does not do this case.  durable:
    the target is on a real disk; every tool then makes it durable before exiting
    (mirror-img always does), so all of them do the same work."""
    if tool == "mirror-img":
        return [mi, "copy", "-q", "-f", sfmt, "-O", dfmt, src, dst]
    if tool == "baseline":
        if not BASELINE.get("bin"):
            return None
        return [BASELINE["bin"], "copy", "-q", "-f", sfmt, "-O", dfmt, src, dst]
    if tool == "qemu-img":
        t = ["-t", "writeback"] if durable else []  # qemu-img's default (unsafe) never flushes
        return ["qemu-img", "convert", "-W", "-m", "16", *t, "-f", sfmt, "-O", dfmt, src, dst]
    if tool == "nbdcopy":
        if dfmt != "raw":
            return None
        f = ["--flush"] if durable else []
        if sfmt == "raw":
            return ["nbdcopy", *f, src, dst]
        return ["nbdcopy", *f, "--", "[", "qemu-nbd", "-r", "-f", sfmt, src, "]", dst]
    if tool in ("floor", "floor+read"):
        if not FLOOR.get("bin") or src not in FLOOR["layouts"] or dfmt != "raw":
            return None
        return [FLOOR["bin"], *(["-s"] if durable else []),
                *(["-r", src] if tool == "floor+read" else []),
                FLOOR["layouts"][src], dst, str(os.path.getsize(src))]
    if tool == "cp":
        if sfmt != "raw" or dfmt != "raw":
            return None
        if durable:
            return ["sh", "-c", 'cp --sparse=always "$1" "$2" && sync "$2"', "cp", src, dst]
        return ["cp", "--sparse=always", src, dst]
    raise ValueError(tool)


def cpu_stall_us():
    """Microseconds runnable tasks have waited for a CPU, machine-wide (PSI), or None."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().split("total=")[1])
    except (OSError, IndexError, ValueError):
        return None


def timed(cmd, tf):
    """Run cmd under /usr/bin/time; returns (wall s, cpu s, peak RSS KiB, stall %): stall is
    the machine's CPU pressure during the run (others' load too), to tell noise from speed."""
    full = ["/usr/bin/time", "-f", "%e %U %S %M", "-o", tf, *cmd]
    s0 = cpu_stall_us()
    t0 = time.perf_counter()
    p = subprocess.run(full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    s1 = cpu_stall_us()
    stall = round(100 * (s1 - s0) / 1e6 / wall, 1) if s0 is not None and s1 is not None else None
    if p.returncode != 0:
        sys.stderr.write(p.stderr.decode(errors="replace"))
        raise SystemExit(f"bench: failed ({p.returncode}): {' '.join(cmd)}")
    with open(tf) as f:
        last = f.read().split("\n")
    e, u, s, m = [x for x in last if x.strip()][-1].split()
    return wall, float(u) + float(s), int(m), stall


def drop(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def verify(src, sfmt, dst, dfmt):
    p = subprocess.run(["qemu-img", "compare", "-f", sfmt, "-F", dfmt, src, dst],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        raise SystemExit(f"bench: WRONG COPY: {dst} differs from {src}: {p.stdout.decode()}")
    if dfmt == "qcow2":
        p = subprocess.run(["qemu-img", "check", dst], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
        if p.returncode != 0:
            raise SystemExit(f"bench: {dst}: qemu-img check failed: {p.stdout.decode()}")


TOOLS = ["mirror-img", "baseline", "nbdcopy", "qemu-img", "cp", "floor", "floor+read"]
# --baseline: an earlier mirror-img binary run in the same rounds (before/after a change)
BASELINE = {}
# floor (tests/bench/floor.c): not a peer but the bound under every tool: one thread
# writing the same non-zero bytes into a new file from memory, reading nothing.
# floor+read: the same while a second thread reads those runs from the source, as every
# copy must (the least a copy can take on this machine).
FLOOR = {"bin": None, "layouts": {}}
NOT_PEERS = ("mirror-img", "baseline", "floor", "floor+read")


def run_case(case, args, tf):
    name, fs, src, sfmt, dfmt, tools = case
    ddir = args.tmpfs if fs == "tmpfs" else args.disk
    dst = f"{ddir}/target.{dfmt}"
    durable = fs == "disk"
    cmds = {t: tool_cmd(t, src, sfmt, dst, dfmt, durable, args.mi) for t in tools}
    cmds = {t: c for t, c in cmds.items() if c}
    res = {t: {"wall": [], "cpu": [], "rss_kib": [], "stall_pct": []} for t in cmds}
    order = list(cmds)
    # Warm-up, untimed: the first run after memory was freed pays for touching cold pages
    # (on a VM more than anywhere), which would bias against whichever tool goes first.
    # It is also the copy that is verified.
    drop(dst)
    timed(cmds["mirror-img"], tf)
    verify(src, sfmt, dst, dfmt)
    for r in range(args.rounds):
        rot = order[r % len(order):] + order[:r % len(order)]
        for t in rot:
            drop(dst)
            if durable:
                sh("sync")
            w, c, m, st = timed(cmds[t], tf)
            res[t]["wall"].append(round(w, 4))
            res[t]["cpu"].append(round(c, 3))
            res[t]["rss_kib"].append(m)
            res[t]["stall_pct"].append(st)
        print(f"  {name} [{fs}] round {r + 1}: " +
              ", ".join(f"{t} {res[t]['wall'][-1]:.2f}s" for t in order), flush=True)
    drop(dst)
    for t in res:
        res[t]["median_wall"] = statistics.median(res[t]["wall"])
        res[t]["median_cpu"] = statistics.median(res[t]["cpu"])
        res[t]["peak_rss_kib"] = max(res[t]["rss_kib"])
        res[t]["command"] = " ".join(cmds[t])
    for what, key in (("median_wall", "ratio_to_fastest_peer"), ("median_cpu", "cpu_ratio_to_leanest_peer")):
        peers = [res[t][what] for t in res if t not in NOT_PEERS]
        best = min(peers) if peers else None
        for t in res:
            res[t][key] = round(res[t][what] / best, 3) if best else None
    stalls = [x for t in res for x in res[t]["stall_pct"] if x is not None]
    noise = statistics.median(stalls) if stalls else None
    return {"case": name, "fs": fs, "source": os.path.basename(src), "source_format": sfmt,
            "target_format": dfmt, "cpu_stall_pct": noise, "tools": res}


# ---------------------------------------------------------------- report


def targets(results):
    by = {(c["case"], c["fs"]): c["tools"] for c in results}
    out = []

    def med(case, tool, what="median_wall", fs="tmpfs"):
        t = by.get((case, fs), {}).get(tool)
        return t[what] if t else None

    def check(label, value, limit, unit=""):
        if value is None or limit is None:
            return
        out.append({"target": label, "value": round(value, 3), "limit": round(limit, 3),
                    "unit": unit, "pass": value <= limit})

    m = med("raw->raw", "mirror-img")
    peers = [x for x in (med("raw->raw", "nbdcopy"), med("raw->raw", "qemu-img")) if x]
    if m and peers:
        check("raw->raw <= 0.80 x min(nbdcopy, qemu-img)", m, 0.80 * min(peers), "s")
    for case in ("qcow2->raw", "raw->qcow2", "qcow2->qcow2"):
        check(f"{case} <= 0.80 x qemu-img", med(case, "mirror-img"),
              (med(case, "qemu-img") or 0) * 0.80 or None, "s")
    mc, nc = med("raw->raw", "mirror-img", "median_cpu"), med("raw->raw", "nbdcopy", "median_cpu")
    if mc is not None and nc:
        check("raw->raw CPU <= 0.60 x nbdcopy CPU", mc, 0.60 * nc, "s")
    rss = [c["tools"]["mirror-img"]["peak_rss_kib"] for c in results if "mirror-img" in c["tools"]]
    if rss:
        check("peak RSS (every case) <= 64 MiB", max(rss) / 1024, 64, "MiB")
    s, a = med("256G-sparse->raw", "mirror-img"), med("1G-alone->raw", "mirror-img")
    if s and a:
        check("256G sparse qcow2 -> raw <= 1.2 x the 1 GiB alone", s, 1.2 * a, "s")
    return out


def table(results, tg):
    lines = []
    hdr = (f"{'case':<17} {'fs':<5} {'tool':<10} {'wall s':>7} {'cpu s':>6} {'RSS MiB':>7} "
           f"{'wall/peer':>9} {'cpu/peer':>8} {'stall':>5}")
    lines += [hdr, "-" * len(hdr)]

    def x(v):
        return f"{v:.2f}x" if v else "-"
    for c in results:
        for t, r in c["tools"].items():
            st = c["cpu_stall_pct"]
            lines.append(f"{c['case']:<17} {c['fs']:<5} {t:<10} {r['median_wall']:>7.3f} "
                         f"{r['median_cpu']:>6.2f} {r['peak_rss_kib'] / 1024:>7.1f} "
                         f"{x(r['ratio_to_fastest_peer']):>9} "
                         f"{x(r['cpu_ratio_to_leanest_peer']):>8} "
                         f"{(f'{st:.0f}%' if st is not None else '-'):>5}")
    lines.append("")
    lines.append("wall/peer, cpu/peer: median over the fastest (leanest) of the other tools.  stall: "
                 "the machine's CPU pressure\nduring the case (PSI; other load makes wall times "
                 "noisy, CPU times much less so).")
    lines.append("")
    for c in results:
        f, fr, m = (c["tools"].get(t) for t in ("floor", "floor+read", "mirror-img"))
        if f and m:
            lines.append(f"floor, {c['case']} [{c['fs']}]: {f['median_wall']:.3f} s wall, "
                         f"{f['median_cpu']:.2f} s CPU: one thread writing the same non-zero "
                         f"bytes from memory, reading nothing; mirror-img takes "
                         f"{m['median_wall'] / f['median_wall']:.2f}x its wall time.")
        if fr and m:
            lines.append(f"floor+read, {c['case']} [{c['fs']}]: {fr['median_wall']:.3f} s wall, "
                         f"{fr['median_cpu']:.2f} s CPU: the same while another thread reads "
                         f"those runs from the source; mirror-img takes "
                         f"{m['median_wall'] / fr['median_wall']:.2f}x its wall time.")
    lines.append("")
    lines.append("targets (tmpfs, medians of the same run):")
    for t in tg:
        lines.append(f"  {'PASS' if t['pass'] else 'FAIL'}  {t['target']}: {t['value']} "
                     f"{t['unit']} (limit {t['limit']})")
    stalls = [c["cpu_stall_pct"] for c in results if c["fs"] == "tmpfs" and c["cpu_stall_pct"] is not None]
    if stalls and statistics.median(stalls) > 30:
        lines.append(f"  note: the machine was busy (CPU pressure {statistics.median(stalls):.0f}% "
                     "during the tmpfs cases): wall times are noisy, rerun on a quiet machine")
    return "\n".join(lines)


def chart(results, out):
    """Two clustered histograms, median wall time above and CPU time below."""
    dat, png = f"{out}/chart.dat", f"{out}/chart.png"
    tools = [t for t in TOOLS if any(t in c["tools"] for c in results)]
    with open(dat, "w") as f:
        f.write("# case, then per tool: median wall s, median cpu s: " + " ".join(tools) + "\n")
        for c in results:
            row = []
            for t in tools:
                r = c["tools"].get(t)
                row += [f"{r['median_wall']:.3f}", f"{r['median_cpu']:.3f}"] if r else ["-", "-"]
            label = c["case"] + (" (disk)" if c["fs"] == "disk" else "")
            f.write(f'"{label}" ' + " ".join(row) + "\n")

    def plot(col):
        return ", ".join(f"'{dat}' using {2 + 2 * i + col}:xtic(1) title '{t}'"
                         for i, t in enumerate(tools))
    script = f"""
set terminal pngcairo size 1400,900 font ',10'
set output '{png}'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set datafile missing '-'
set key top right
set grid ytics
set yrange [0:*]
set rmargin 12
set multiplot layout 2,1 title 'mirror-img bench (medians; lower is better)'
set ylabel 'wall seconds'
set xtics rotate by -20 scale 0
plot {plot(0)}
set ylabel 'CPU seconds (user + sys)'
plot {plot(1)}
unset multiplot
"""
    subprocess.run(["gnuplot"], input=script.encode(), check=True)
    return png


def follow_figures(script):
    """The follow issue's figures, from its own script (shim overhead so far); None when
    the script is missing or fails (the copy figures stand on their own)."""
    if not script or not os.path.exists(script):
        return None
    print(f"bench: follow figures: {script}", flush=True)
    p = subprocess.run(["bash", script, "3", "3"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    out = p.stdout.strip().split("\n")
    for line in out:
        print(f"  {line}")
    doc = {"command": f"bash {script} 3 3", "exit": p.returncode, "output": out}
    for line in out:
        if line.startswith("median:") and "% cost" in line:
            try:
                doc["shim_cost_pct"] = float(line.split("(")[-1].split("%")[0])
            except ValueError:
                pass
    return doc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mi", required=True)
    ap.add_argument("--tmpfs", required=True)
    ap.add_argument("--disk", default="")
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--floor", default="", help="the floor program (tests/bench/floor.c)")
    ap.add_argument("--follow-script", default="", help="script printing the follow figures")
    ap.add_argument("--baseline", default="", help="an earlier mirror-img, timed in the same rounds")
    args = ap.parse_args()
    BASELINE["bin"] = args.baseline or None
    t_start = time.time()
    os.makedirs(args.out, exist_ok=True)
    print(f"bench: generating images in {args.tmpfs}" + (f" and {args.disk}" if args.disk else ""),
          flush=True)
    img, gen_s = make_images(args.tmpfs, args.disk)
    print(f"bench: images ready in {gen_s:.1f} s", flush=True)
    FLOOR["bin"] = args.floor or None
    FLOOR["layouts"] = {img["raw"]: img["layout"]}
    if "disk-raw" in img:
        FLOOR["layouts"][img["disk-raw"]] = img["layout"]
    all4, qi = TOOLS, ["mirror-img", "baseline", "qemu-img"]
    cases = [
        ("raw->raw", "tmpfs", img["raw"], "raw", "raw", all4),
        ("qcow2->raw", "tmpfs", img["qcow2"], "qcow2", "raw", ["mirror-img", "baseline", "nbdcopy", "qemu-img"]),
        ("raw->qcow2", "tmpfs", img["raw"], "raw", "qcow2", qi),
        ("qcow2->qcow2", "tmpfs", img["qcow2"], "qcow2", "qcow2", qi),
        ("256G-sparse->raw", "tmpfs", img["sparse"], "qcow2", "raw", qi),
        ("1G-alone->raw", "tmpfs", img["alone"], "qcow2", "raw", qi),
        ("512-cluster->raw", "tmpfs", img["c512"], "qcow2", "raw", qi),
        ("zlib->raw", "tmpfs", img["zlib"], "qcow2", "raw", qi),
    ]
    if args.disk:
        cases += [
            ("raw->raw", "disk", img["disk-raw"], "raw", "raw", all4),
            ("qcow2->raw", "disk", img["disk-qcow2"], "qcow2", "raw", qi),
            ("raw->qcow2", "disk", img["disk-raw"], "raw", "qcow2", qi),
            ("qcow2->qcow2", "disk", img["disk-qcow2"], "qcow2", "qcow2", qi),
        ]
    if args.only:
        want = set(args.only.split(","))
        cases = [c for c in cases if c[0] in want]
    tf = f"{args.tmpfs}/time.out"
    results = [run_case(c, args, tf) for c in cases]
    tg = targets(results)
    follow = follow_figures(args.follow_script)
    total = time.time() - t_start
    print()
    print(table(results, tg))
    if BASELINE["bin"]:
        print(f"\nbaseline {BASELINE['bin']} against mirror-img, medians of the same {args.rounds} rounds:")
        for c in results:
            m, b = c["tools"].get("mirror-img"), c["tools"].get("baseline")
            if m and b:
                print(f"  {c['case']:18s} {c['fs']:6s} wall {b['median_wall']:.3f} -> {m['median_wall']:.3f} s "
                      f"({m['median_wall'] / b['median_wall']:.3f}x), cpu {b['median_cpu']:.2f} -> "
                      f"{m['median_cpu']:.2f} s ({m['median_cpu'] / max(b['median_cpu'], 0.001):.3f}x)")
    png = chart(results, args.out)
    doc = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"kernel": platform.release(), "cpus": os.cpu_count()},
        "rounds": args.rounds,
        "versions": {
            "mirror-img": args.mi,
            "qemu-img": subprocess.run(["qemu-img", "--version"], stdout=subprocess.PIPE,
                                       text=True).stdout.split("\n")[0],
            "nbdcopy": subprocess.run(["nbdcopy", "--version"], stdout=subprocess.PIPE,
                                      text=True).stdout.split("\n")[0],
        },
        "image_generation_seconds": round(gen_s, 1),
        "total_seconds": round(total, 1),
        "cases": results,
        "targets": tg,
        "follow": follow,
    }
    with open(f"{args.out}/results.json", "w") as f:
        json.dump(doc, f, indent=1)
    print(f"\nbench: {len(results)} cases in {total:.0f} s (images {gen_s:.0f} s); "
          f"wrote {args.out}/results.json and {png}")
    return 0 if all(x["pass"] for x in tg) else 1


if __name__ == "__main__":
    sys.exit(main())
