#!/usr/bin/env python3
"""mwrite.py: writers for the follow tests, run under `mirror-img run`.

  mwrite.py threads IMG N       N threads mixing pwrite, pwritev and write (lseek+write)
  mwrite.py fork IMG N          a parent and N forked children write through one descriptor
  mwrite.py exec IMG N          opens IMG, then execs itself with the descriptor inherited
  mwrite.py mmap IMG N          writes through a writable MAP_SHARED mapping
  mwrite.py pivot IMG REF STOP  writes random blocks to IMG and the same to REF until the
                                file STOP exists (every write lands in both, whatever
                                descriptor IMG's turns into)
  mwrite.py latency IMG         one pwrite; prints how long it took in ms

Blocks are 4 KiB of random bytes at random 4 KiB-aligned offsets within the file's size.
Deterministic per seed so failures can be replayed.
"""
import mmap
import os
import random
import sys
import threading
import time

BS = 4096


def blocks(path):
    return os.path.getsize(path) // BS


def do_threads(img, n):
    fd = os.open(img, os.O_RDWR)
    nb = blocks(img)
    lock = threading.Lock()  # guards the shared file offset for lseek+write

    def work(seed):
        r = random.Random(seed)
        for i in range(200):
            off = r.randrange(nb) * BS
            data = r.randbytes(BS)
            k = i % 3
            if k == 0:
                os.pwrite(fd, data, off)
            elif k == 1:
                os.pwritev(fd, [data[:1000], data[1000:]], off)
            else:
                with lock:
                    os.lseek(fd, off, os.SEEK_SET)
                    os.write(fd, data)

    ts = [threading.Thread(target=work, args=(s,)) for s in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    os.close(fd)


def do_fork(img, n):
    fd = os.open(img, os.O_RDWR)
    nb = blocks(img)
    pids = []
    for c in range(n):
        pid = os.fork()
        if pid == 0:
            r = random.Random(100 + c)
            for _ in range(100):
                os.pwrite(fd, r.randbytes(BS), r.randrange(nb) * BS)
            os._exit(0)
        pids.append(pid)
    r = random.Random(99)
    for _ in range(100):
        os.pwrite(fd, r.randbytes(BS), r.randrange(nb) * BS)
    for pid in pids:
        _, st = os.waitpid(pid, 0)
        assert st == 0
    os.close(fd)


def do_exec(img, n):
    if os.environ.get("MWRITE_FD"):
        fd = int(os.environ["MWRITE_FD"])
        nb = blocks(img)
        r = random.Random(7)
        for _ in range(n):
            os.pwrite(fd, r.randbytes(BS), r.randrange(nb) * BS)
        return
    fd = os.open(img, os.O_RDWR)
    os.set_inheritable(fd, True)
    os.environ["MWRITE_FD"] = str(fd)
    os.execv(sys.executable, [sys.executable, __file__, "exec", img, str(n)])


def do_mmap(img, n):
    fd = os.open(img, os.O_RDWR)
    size = os.path.getsize(img)
    m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    r = random.Random(5)
    for _ in range(n):
        off = r.randrange(size // BS) * BS
        m[off:off + BS] = r.randbytes(BS)
    m.flush()
    m.close()
    os.close(fd)


def do_pivot(img, ref, stop):
    fd = os.open(img, os.O_RDWR)
    rfd = os.open(ref, os.O_RDWR)
    nb = blocks(img)
    r = random.Random(11)
    count = 0
    while not os.path.exists(stop):
        off = r.randrange(nb) * BS
        data = r.randbytes(BS)
        os.pwrite(fd, data, off)
        os.pwrite(rfd, data, off)
        count += 1
        if count % 50 == 0:
            time.sleep(0.002)
    os.close(fd)
    os.close(rfd)
    print(count)


def do_latency(img):
    fd = os.open(img, os.O_RDWR)
    t = time.monotonic()
    os.pwrite(fd, b"L" * BS, 0)
    print(int((time.monotonic() - t) * 1000))
    os.close(fd)


def main():
    mode, img = sys.argv[1], sys.argv[2]
    if mode == "threads":
        do_threads(img, int(sys.argv[3]))
    elif mode == "fork":
        do_fork(img, int(sys.argv[3]))
    elif mode == "exec":
        do_exec(img, int(sys.argv[3]))
    elif mode == "mmap":
        do_mmap(img, int(sys.argv[3]))
    elif mode == "pivot":
        do_pivot(img, sys.argv[3], sys.argv[4])
    elif mode == "latency":
        do_latency(img)
    else:
        sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main()
