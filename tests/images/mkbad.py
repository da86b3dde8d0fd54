#!/usr/bin/env python3
"""mkbad.py: damage a qcow2 image made by qemu-img in one controlled way.

Usage: mkbad.py IMAGE EDIT...   where each EDIT is one of

  FIELD=VALUE        set a header field (names below; VALUE decimal or 0x hex)
  FIELD|=VALUE       set bits in a header field
  l1[N]=VALUE        set L1 entry N
  l2[GUEST]=VALUE    set the L2 entry of the cluster holding guest offset GUEST
  l2bm[GUEST]=VALUE  set the subcluster bitmap of that entry (extended L2 images)
  ext[TYPE].len=N    set the length field of the header extension of type TYPE
  ext[TYPE].type=N   change the type of that header extension
  garble[GUEST]=N    overwrite the first N bytes of the data of the cluster holding guest
                     offset GUEST (normal or compressed) with 0xff
  truncate=N         cut the file to N bytes
  print=WHAT         print a value instead: l1[N], l2[GUEST], size, cluster_size

The L2 lookups read the image as it is before the edit, so an edit can name the guest
offset of a cluster that qemu-io wrote.
"""
import os
import struct
import sys

FIELDS = {  # name: (offset, struct format)
    'magic': (0, '>I'), 'version': (4, '>I'),
    'backing_offset': (8, '>Q'), 'backing_size': (16, '>I'),
    'cluster_bits': (20, '>I'), 'size': (24, '>Q'), 'crypt_method': (32, '>I'),
    'l1_size': (36, '>I'), 'l1_offset': (40, '>Q'),
    'refcount_table_offset': (48, '>Q'), 'refcount_table_clusters': (56, '>I'),
    'nb_snapshots': (60, '>I'), 'snapshots_offset': (64, '>Q'),
    'incompat': (72, '>Q'), 'compat': (80, '>Q'), 'autoclear': (88, '>Q'),
    'refcount_order': (96, '>I'), 'header_length': (100, '>I'),
    'compression_type': (104, '>B'),
}


def num(s):
    return int(s, 0)


class Image:
    def __init__(self, path):
        self.f = open(path, 'r+b')

    def get(self, off, fmt):
        self.f.seek(off)
        return struct.unpack(fmt, self.f.read(struct.calcsize(fmt)))[0]

    def put(self, off, fmt, val):
        self.f.seek(off)
        self.f.write(struct.pack(fmt, val))

    def field(self, name):
        return FIELDS[name]

    @property
    def cluster_bits(self):
        return self.get(20, '>I')

    @property
    def extl2(self):
        return self.get(4, '>I') >= 3 and self.get(72, '>Q') & 16

    def l2_entry_addr(self, guest):
        cb = self.cluster_bits
        esize = 16 if self.extl2 else 8
        entries = (1 << cb) // esize
        l1i, l2i = divmod(guest >> cb, entries)
        l2off = self.get(self.get(40, '>Q') + 8 * l1i, '>Q') & 0x00fffffffffffe00
        if not l2off:
            sys.exit('mkbad.py: no L2 table for guest offset %#x' % guest)
        return l2off + esize * l2i

    def host_offset(self, guest):
        """Host offset of the data of the cluster holding guest (normal or compressed)."""
        e = self.get(self.l2_entry_addr(guest), '>Q')
        if e & (1 << 62):
            x = 62 - (self.cluster_bits - 8)
            return e & ((1 << x) - 1)
        if not e & 0x00fffffffffffe00:
            sys.exit('mkbad.py: guest offset %#x is not allocated' % guest)
        return e & 0x00fffffffffffe00

    def ext_addr(self, typ):
        off = self.get(100, '>I') if self.get(4, '>I') >= 3 else 72
        while True:
            t, n = self.get(off, '>I'), self.get(off + 4, '>I')
            if t == typ:
                return off
            if t == 0:
                sys.exit('mkbad.py: no header extension %#x' % typ)
            off += 8 + (n + 7) // 8 * 8

    def where(self, lhs):
        """(offset, format) of an edit target."""
        if lhs in FIELDS:
            return FIELDS[lhs]
        name, _, rest = lhs.partition('[')
        key, _, attr = rest.partition(']')
        if name == 'l1':
            return self.get(40, '>Q') + 8 * num(key), '>Q'
        if name == 'l2':
            return self.l2_entry_addr(num(key)), '>Q'
        if name == 'l2bm':
            return self.l2_entry_addr(num(key)) + 8, '>Q'
        if name == 'ext' and attr == '.len':
            return self.ext_addr(num(key)) + 4, '>I'
        if name == 'ext' and attr == '.type':
            return self.ext_addr(num(key)), '>I'
        if name == 'garble':
            return self.host_offset(num(key)), 'garble'
        sys.exit('mkbad.py: unknown edit target %r' % lhs)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    img = Image(sys.argv[1])
    edits = []
    for e in sys.argv[2:]:  # resolve every address first: edits may break the lookups
        lhs, op, rhs = (e.partition('|=') if '|=' in e else e.partition('='))
        if lhs == 'truncate':
            edits.append(('truncate', None, None, num(rhs)))
        elif lhs == 'print':
            if rhs == 'cluster_size':
                print(1 << img.cluster_bits)
            else:
                off, fmt = img.where(rhs)
                print('%#x' % img.get(off, fmt))
        else:
            off, fmt = img.where(lhs)
            edits.append((op, off, fmt, num(rhs)))
    for op, off, fmt, val in edits:
        if op == 'truncate':
            img.f.truncate(val)
        elif fmt == 'garble':
            img.f.seek(off)
            img.f.write(b'\xff' * val)
        elif op == '|=':
            img.put(off, fmt, img.get(off, fmt) | val)
        else:
            img.put(off, fmt, val)
    img.f.close()


if __name__ == '__main__':
    main()
