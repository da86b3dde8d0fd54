/* test-l2.c: L2 entry decoding (formats/qcow2.h), printing TAP. */
#include "qcow2.h"

#include <inttypes.h>
#include <stdio.h>

static int n, failed;

static void ok(int cond, const char *what, ...)
{
    n++;
    if (!cond)
        failed++;
    printf("%s %d - %s\n", cond ? "ok" : "not ok", n, what);
}

#define EXPECT(d, t, h) ((d).type == (t) && (d).host == (h))

static void standard(void)
{
    struct qcow2_l2dec d;
    d = qcow2_decode_l2(0, 16, 3);
    ok(d.type == QCOW2_C_UNALLOC, "v3: entry 0 is unallocated");
    d = qcow2_decode_l2(QCOW2_OFLAG_COPIED | 0x50000, 16, 3);
    ok(EXPECT(d, QCOW2_C_NORMAL, 0x50000), "v3: copied cluster at 0x50000 is normal data");
    d = qcow2_decode_l2(0x70000, 16, 2);
    ok(EXPECT(d, QCOW2_C_NORMAL, 0x70000), "v2: cluster shared with a snapshot (bit 63 clear) is data");
    d = qcow2_decode_l2(0x00ff000000000000ULL, 16, 3);
    ok(EXPECT(d, QCOW2_C_NORMAL, 0x00ff000000000000ULL), "offset uses bits 9..55");
    d = qcow2_decode_l2(QCOW2_OFLAG_ZERO, 16, 3);
    ok(d.type == QCOW2_C_ZERO, "v3: zero flag without an offset reads as zero");
    d = qcow2_decode_l2(QCOW2_OFLAG_COPIED | 0x30000 | QCOW2_OFLAG_ZERO, 16, 3);
    ok(d.type == QCOW2_C_ZERO && d.host == 0x30000, "v3: preallocated zero cluster is zero");
    d = qcow2_decode_l2(QCOW2_OFLAG_ZERO, 16, 2);
    ok(d.type == QCOW2_C_INVALID, "v2: bit 0 is reserved");
    d = qcow2_decode_l2(0x50000 | 0x100, 16, 3);
    ok(d.type == QCOW2_C_INVALID, "reserved bit 8 makes the entry invalid");
    d = qcow2_decode_l2(0x50000 | (1ULL << 56), 16, 3);
    ok(d.type == QCOW2_C_INVALID, "reserved bit 56 makes the entry invalid");
    d = qcow2_decode_l2(QCOW2_OFLAG_COPIED, 16, 3);
    ok(d.type == QCOW2_C_UNALLOC, "offset 0 with bit 63 and no data file: unallocated");
    d = qcow2_decode_l2_df(QCOW2_OFLAG_COPIED, 16, 3, true);
    ok(EXPECT(d, QCOW2_C_NORMAL, 0), "external data file: offset 0 with bit 63 is data at 0");
    d = qcow2_decode_l2_df(0, 16, 3, true);
    ok(d.type == QCOW2_C_UNALLOC, "external data file: entry 0 is unallocated");
    d = qcow2_decode_l2_df(QCOW2_OFLAG_COMPRESSED | 1, 16, 3, true);
    ok(d.type == QCOW2_C_INVALID, "external data file: compressed clusters are invalid");
}

/* Compressed descriptors: x = 62 - (cluster_bits - 8). */
static void compressed(void)
{
    static const struct { unsigned cb; uint64_t host; uint64_t nsect; } c[] = {
        {9, 0x12345, 0}, {12, 0x1000, 3}, {16, 0x50123, 7}, {16, 0x7fff0, 255},
        {20, 0x123456789ULL, 1000}, {21, 0x3ffffffffffULL, (1ULL << 13) - 1},
    };
    char what[160];
    for (unsigned i = 0; i < sizeof c / sizeof *c; i++) {
        unsigned x = 62 - (c[i].cb - 8);
        uint64_t e = QCOW2_OFLAG_COMPRESSED | c[i].nsect << x | c[i].host;
        uint64_t host, csize;
        qcow2_decode_compressed(e, c[i].cb, &host, &csize);
        snprintf(what, sizeof what, "cluster_bits %u: host 0x%" PRIx64 ", %" PRIu64
                 " more sectors: size %" PRIu64, c[i].cb, c[i].host, c[i].nsect,
                 (c[i].nsect + 1) * 512 - (c[i].host & 511));
        ok(qcow2_compressed_shift(c[i].cb) == x && host == c[i].host &&
           csize == (c[i].nsect + 1) * 512 - (c[i].host & 511), what);
        struct qcow2_l2dec d = qcow2_decode_l2(e | QCOW2_OFLAG_COPIED, c[i].cb, 3);
        snprintf(what, sizeof what, "cluster_bits %u: bit 63 does not leak into the size",
                 c[i].cb);
        ok(d.type == QCOW2_C_COMPRESSED && d.host == host && d.csize == csize, what);
    }
    /* 64 KiB clusters: x = 54; host 0x50200, 2 more sectors: the data may end anywhere in
     * sector 3, so the bound is 3 * 512 - 0x200 % 512 = 1536 bytes. */
    uint64_t host, csize;
    qcow2_decode_compressed(QCOW2_OFLAG_COMPRESSED | 2ULL << 54 | 0x50200, 16, &host, &csize);
    ok(host == 0x50200 && csize == 1536, "64 KiB: worked example (0x50200, 2 sectors)");
    qcow2_decode_compressed(QCOW2_OFLAG_COMPRESSED | 0ULL << 54 | 0x501ff, 16, &host, &csize);
    ok(host == 0x501ff && csize == 1, "64 KiB: unaligned offset at the end of a sector");
    for (uint64_t len = 1; len < 5000; len += 777) {
        uint64_t e = qcow2_encode_compressed(0x12345, len, 16);
        qcow2_decode_compressed(e, 16, &host, &csize);
        snprintf(what, sizeof what, "encode/decode round trip, %" PRIu64 " bytes", len);
        ok(host == 0x12345 && csize >= len && csize < len + 512, what);
    }
}

static void extended(void)
{
    const unsigned cb = 16; /* 64 KiB clusters: 2 KiB subclusters */
    uint64_t entry = QCOW2_OFLAG_COPIED | 0x40000;
    uint64_t bm = 0x5ULL | (0x2ULL << 32); /* sc 0, 2 allocated; sc 1 zero */
    struct qcow2_l2dec d;
    d = qcow2_decode_l2_ext(entry, bm, cb, 0);
    ok(EXPECT(d, QCOW2_C_NORMAL, 0x40000), "ext: subcluster 0 allocated at the cluster start");
    d = qcow2_decode_l2_ext(entry, bm, cb, 1);
    ok(d.type == QCOW2_C_ZERO, "ext: subcluster 1 reads as zero");
    d = qcow2_decode_l2_ext(entry, bm, cb, 2);
    ok(EXPECT(d, QCOW2_C_NORMAL, 0x40000 + 2 * 2048), "ext: subcluster 2 at cluster + 2 * 2 KiB");
    d = qcow2_decode_l2_ext(entry, bm, cb, 3);
    ok(d.type == QCOW2_C_UNALLOC, "ext: subcluster 3 is unallocated (backing)");
    d = qcow2_decode_l2_ext(entry, 1ULL << 31, cb, 31);
    ok(EXPECT(d, QCOW2_C_NORMAL, 0x40000 + 31 * 2048), "ext: subcluster 31");
    d = qcow2_decode_l2_ext(0, 0xffffffff00000000ULL, cb, 17);
    ok(d.type == QCOW2_C_ZERO, "ext: unallocated cluster with all zero bits reads as zero");
    d = qcow2_decode_l2_ext(entry, 0x1ULL | (0x1ULL << 32), cb, 5);
    ok(d.type == QCOW2_C_INVALID, "ext: a subcluster both allocated and zero is invalid");
    d = qcow2_decode_l2_ext(0, 0x1, cb, 0);
    ok(d.type == QCOW2_C_INVALID, "ext: allocated subcluster without a host cluster is invalid");
    d = qcow2_decode_l2_ext(entry | QCOW2_OFLAG_ZERO, 0x1, cb, 0);
    ok(d.type == QCOW2_C_INVALID, "ext: bit 0 of the entry is reserved");
    d = qcow2_decode_l2_ext(QCOW2_OFLAG_COMPRESSED | 0x12345, 0, cb, 9);
    ok(d.type == QCOW2_C_COMPRESSED && d.host == 0x12345, "ext: compressed cluster");
    d = qcow2_decode_l2_ext(QCOW2_OFLAG_COMPRESSED | 0x12345, 1, cb, 9);
    ok(d.type == QCOW2_C_INVALID, "ext: compressed cluster with a bitmap is invalid");
    d = qcow2_decode_l2_ext(0x200000, 1ULL << 4, 21, 4);
    ok(EXPECT(d, QCOW2_C_NORMAL, 0x200000 + 4 * 65536), "ext: 2 MiB clusters, 64 KiB subclusters");
    d = qcow2_decode_l2_ext_df(QCOW2_OFLAG_COPIED, 0x2, cb, 1, true);
    ok(EXPECT(d, QCOW2_C_NORMAL, 2048), "ext + external data file: cluster at host offset 0");
    ok(qcow2_l2_entries(16, true) == 4096 && qcow2_l2_entries(16, false) == 8192 &&
       qcow2_l2_entries(9, false) == 64, "entries per L2 table");
}

static void v1(void)
{
    struct qcow2_l2dec d = qcow1_decode_l2(0, 12);
    ok(d.type == QCOW2_C_UNALLOC, "qcow v1: 0 is unallocated");
    d = qcow1_decode_l2(0x3000, 12);
    ok(EXPECT(d, QCOW2_C_NORMAL, 0x3000), "qcow v1: plain offset");
    /* x = 63 - 12 = 51: size 1234 bytes at 0x4567 */
    d = qcow1_decode_l2(1ULL << 63 | 1234ULL << 51 | 0x4567, 12);
    ok(d.type == QCOW2_C_COMPRESSED && d.host == 0x4567 && d.csize == 1234,
       "qcow v1: compressed offset and byte size");
}

int main(void)
{
    standard();
    compressed();
    extended();
    v1();
    printf("1..%d\n", n);
    return failed != 0;
}
