/* qcow2.h: qcow2 on-disk constants and L2 entry decoding, shared by the reader (qcow2.c),
 * the writer and the libqcow backend (qcow.c).  All on-disk numbers are big-endian; the
 * normative text is QEMU's docs/interop/qcow2.txt.
 */
#ifndef MI_QCOW2_H
#define MI_QCOW2_H

#include <stdbool.h>
#include <stdint.h>

#define QCOW2_MAGIC 0x514649fbu /* "QFI\xfb" */

/* Header field offsets (bytes from the start of the file). */
#define QCOW2_HDR_MAGIC 0
#define QCOW2_HDR_VERSION 4
#define QCOW2_HDR_BACKING_OFFSET 8 /* u64, 0 = no backing file */
#define QCOW2_HDR_BACKING_SIZE 16  /* u32, at most QCOW2_MAX_BACKING_NAME */
#define QCOW2_HDR_CLUSTER_BITS 20  /* u32 */
#define QCOW2_HDR_SIZE 24          /* u64 virtual size */
#define QCOW2_HDR_CRYPT_METHOD 32  /* u32, QCOW2_CRYPT_* */
#define QCOW2_HDR_L1_SIZE 36       /* u32 entries */
#define QCOW2_HDR_L1_OFFSET 40     /* u64 */
#define QCOW2_HDR_REFTABLE_OFFSET 48   /* u64 */
#define QCOW2_HDR_REFTABLE_CLUSTERS 56 /* u32 */
#define QCOW2_HDR_NB_SNAPSHOTS 60      /* u32 */
#define QCOW2_HDR_SNAPSHOTS_OFFSET 64  /* u64 */
/* v3 only: */
#define QCOW2_HDR_INCOMPAT 72       /* u64 */
#define QCOW2_HDR_COMPAT 80         /* u64 */
#define QCOW2_HDR_AUTOCLEAR 88      /* u64 */
#define QCOW2_HDR_REFCOUNT_ORDER 96 /* u32 */
#define QCOW2_HDR_LENGTH 100        /* u32 header length */
#define QCOW2_HDR_COMPRESSION 104   /* u8, when header length > 104 */

#define QCOW2_V2_HEADER_LEN 72   /* v2 header size (and v3 fields implied) */
#define QCOW2_V3_HEADER_LEN 104  /* minimum v3 header length */
#define QCOW2_V3_HEADER_LEN_COMP 112 /* v3 header with the compression type, padded */

#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
#define QCOW2_MIN_CLUSTER_BITS_EXTL2 14
#define QCOW2_MAX_REFCOUNT_ORDER 6
#define QCOW2_MAX_BACKING_NAME 1023

#define QCOW2_CRYPT_NONE 0
#define QCOW2_CRYPT_AES 1
#define QCOW2_CRYPT_LUKS 2

/* Incompatible feature bits. */
#define QCOW2_INCOMPAT_DIRTY (1ULL << 0)
#define QCOW2_INCOMPAT_CORRUPT (1ULL << 1)
#define QCOW2_INCOMPAT_DATA_FILE (1ULL << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ULL << 3)
#define QCOW2_INCOMPAT_EXTL2 (1ULL << 4)
#define QCOW2_INCOMPAT_KNOWN 0x1fULL

/* Compatible feature bits. */
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ULL << 0)

/* Autoclear feature bits. */
#define QCOW2_AUTOCLEAR_BITMAPS (1ULL << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (1ULL << 1)

#define QCOW2_COMPRESS_ZLIB 0
#define QCOW2_COMPRESS_ZSTD 1

/* Header extension types. */
#define QCOW2_EXT_END 0x00000000u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_FEATURE_NAMES 0x6803f857u
#define QCOW2_EXT_BITMAPS 0x23852875u
#define QCOW2_EXT_CRYPTO 0x0537be77u
#define QCOW2_EXT_DATA_FILE 0x44415441u

/* L1 entries. */
#define QCOW2_L1_OFFSET_MASK 0x00fffffffffffe00ULL /* bits 9..55: L2 table offset */
#define QCOW2_L1_RESERVED_MASK 0x7f000000000001ffULL
#define QCOW2_OFLAG_COPIED (1ULL << 63) /* refcount is exactly 1 (L1 and L2 entries) */

/* L2 entries (standard clusters). */
#define QCOW2_OFLAG_COMPRESSED (1ULL << 62)
#define QCOW2_OFLAG_ZERO (1ULL << 0) /* v3, not with extended L2 */
#define QCOW2_L2_OFFSET_MASK 0x00fffffffffffe00ULL /* bits 9..55: host cluster offset */
#define QCOW2_L2_STD_RESERVED_MASK 0x3f000000000001feULL

/* Extended L2: 16-byte entries, 32 subclusters per cluster. */
#define QCOW2_SUBCLUSTERS 32
#define QCOW2_L2E_SIZE 8
#define QCOW2_L2E_SIZE_EXT 16

/* What one guest cluster (or subcluster) is, decoded from its L2 entry. */
enum qcow2_ctype {
    QCOW2_C_UNALLOC = 0,    /* not allocated here: backing file (zeros without one) */
    QCOW2_C_ZERO = 1,       /* reads as zeros */
    QCOW2_C_NORMAL = 2,     /* data at host offset */
    QCOW2_C_COMPRESSED = 3, /* compressed data at host offset, csize bytes at most */
    QCOW2_C_INVALID = 4,    /* reserved bits or contradictory bitmap: corrupt image */
};

/* A decoded L2 entry. */
struct qcow2_l2dec {
    enum qcow2_ctype type;
    uint64_t host;  /* NORMAL: host cluster offset (cluster aligned); COMPRESSED: byte offset */
    uint64_t csize; /* COMPRESSED: bytes from host that hold the compressed data */
};

/* The bit that splits a compressed descriptor: bits 0..x-1 hold the host byte offset,
 * bits x..61 the number of additional 512-byte sectors. */
static inline unsigned qcow2_compressed_shift(unsigned cluster_bits)
{
    return 62 - (cluster_bits - 8);
}

/* Decode a compressed cluster descriptor: host byte offset and the byte count from it to
 * the end of the last sector it names (an upper bound of the compressed data length). */
static inline void qcow2_decode_compressed(uint64_t entry, unsigned cluster_bits,
                                           uint64_t *host, uint64_t *csize)
{
    unsigned x = qcow2_compressed_shift(cluster_bits);
    uint64_t off = entry & ((1ULL << x) - 1);
    uint64_t nsect = (entry & ~QCOW2_OFLAG_COPIED & ~QCOW2_OFLAG_COMPRESSED) >> x;
    *host = off;
    *csize = (nsect + 1) * 512 - (off & 511);
}

/* Encode a compressed descriptor (writer side): host byte offset and data length in bytes
 * (at least 1).  Returns the L2 entry (bit 62 set). */
static inline uint64_t qcow2_encode_compressed(uint64_t host, uint64_t len, unsigned cluster_bits)
{
    unsigned x = qcow2_compressed_shift(cluster_bits);
    uint64_t nsect = (((host & 511) + len + 511) >> 9) - 1;
    return QCOW2_OFLAG_COMPRESSED | nsect << x | host;
}

/* Is host offset 0 of an entry a real cluster?  Offset 0 means unallocated, except with
 * an external data file, where 0 is a valid host offset: there every cluster has refcount
 * 1, so the "copied" bit tells an allocated cluster at offset 0 from an unallocated one. */
static inline bool qcow2_l2_host_valid(uint64_t entry, bool data_file)
{
    return (entry & QCOW2_L2_OFFSET_MASK) || (data_file && (entry & QCOW2_OFLAG_COPIED));
}

/* Decode a standard (8-byte) L2 entry.  version 2 has no zero flag; data_file: the image
 * has an external data file. */
static inline struct qcow2_l2dec qcow2_decode_l2_df(uint64_t entry, unsigned cluster_bits,
                                                    int version, bool data_file)
{
    struct qcow2_l2dec d = {QCOW2_C_UNALLOC, 0, 0};
    if (entry & QCOW2_OFLAG_COMPRESSED) {
        d.type = data_file ? QCOW2_C_INVALID : QCOW2_C_COMPRESSED;
        qcow2_decode_compressed(entry, cluster_bits, &d.host, &d.csize);
        return d;
    }
    d.host = entry & QCOW2_L2_OFFSET_MASK;
    if (entry & QCOW2_L2_STD_RESERVED_MASK)
        d.type = QCOW2_C_INVALID;
    else if (version >= 3 && (entry & QCOW2_OFLAG_ZERO))
        d.type = QCOW2_C_ZERO; /* a preallocated zero cluster keeps its host offset */
    else if (version < 3 && (entry & QCOW2_OFLAG_ZERO))
        d.type = QCOW2_C_INVALID;
    else if (qcow2_l2_host_valid(entry, data_file))
        d.type = QCOW2_C_NORMAL;
    return d;
}

static inline struct qcow2_l2dec qcow2_decode_l2(uint64_t entry, unsigned cluster_bits,
                                                 int version)
{
    return qcow2_decode_l2_df(entry, cluster_bits, version, false);
}

/* Decode subcluster sc (0..31) of an extended L2 entry {entry, bitmap}.  For a normal
 * subcluster d.host is the host offset of the subcluster itself. */
static inline struct qcow2_l2dec qcow2_decode_l2_ext_df(uint64_t entry, uint64_t bitmap,
                                                        unsigned cluster_bits, unsigned sc,
                                                        bool data_file)
{
    struct qcow2_l2dec d = {QCOW2_C_UNALLOC, 0, 0};
    if (entry & QCOW2_OFLAG_COMPRESSED) {
        d.type = bitmap || data_file ? QCOW2_C_INVALID : QCOW2_C_COMPRESSED;
        qcow2_decode_compressed(entry, cluster_bits, &d.host, &d.csize);
        return d;
    }
    /* bit 0 is reserved with extended L2: zeros are in the bitmap */
    if (entry & (QCOW2_L2_STD_RESERVED_MASK | QCOW2_OFLAG_ZERO)) {
        d.type = QCOW2_C_INVALID;
        return d;
    }
    uint64_t host = entry & QCOW2_L2_OFFSET_MASK;
    bool valid = qcow2_l2_host_valid(entry, data_file);
    bool alloc = bitmap >> sc & 1, zero = bitmap >> (32 + sc) & 1;
    if ((bitmap & (bitmap >> 32) & 0xffffffffu) || (!valid && (bitmap & 0xffffffffu)))
        d.type = QCOW2_C_INVALID; /* allocated and zero, or allocated without a cluster */
    else if (zero)
        d.type = QCOW2_C_ZERO;
    else if (alloc) {
        d.type = QCOW2_C_NORMAL;
        d.host = host + ((uint64_t)sc << (cluster_bits - 5));
    }
    return d;
}

static inline struct qcow2_l2dec qcow2_decode_l2_ext(uint64_t entry, uint64_t bitmap,
                                                     unsigned cluster_bits, unsigned sc)
{
    return qcow2_decode_l2_ext_df(entry, bitmap, cluster_bits, sc, false);
}

/* Bytes of one L2 entry and entries per L2 table. */
static inline unsigned qcow2_l2_entry_size(bool extl2)
{
    return extl2 ? QCOW2_L2E_SIZE_EXT : QCOW2_L2E_SIZE;
}
static inline uint64_t qcow2_l2_entries(unsigned cluster_bits, bool extl2)
{
    return (1ULL << cluster_bits) / qcow2_l2_entry_size(extl2);
}

/* qcow version 1 L2 entries: bit 63 compressed (then bits 0..x-1 host byte offset and
 * bits x..62 the compressed size in bytes, x = 63 - cluster_bits); else the host offset
 * of the cluster, 0 = unallocated.  No zero flag. */
static inline struct qcow2_l2dec qcow1_decode_l2(uint64_t entry, unsigned cluster_bits)
{
    struct qcow2_l2dec d = {QCOW2_C_UNALLOC, 0, 0};
    if (entry >> 63) {
        unsigned x = 63 - cluster_bits;
        d.type = QCOW2_C_COMPRESSED;
        d.host = entry & ((1ULL << x) - 1);
        d.csize = (entry >> x) & ((1ULL << cluster_bits) - 1);
    } else if (entry) {
        d.type = QCOW2_C_NORMAL;
        d.host = entry;
    }
    return d;
}

/* ---- Between the qcow2 reader (qcow2.c) and the libqcow backend (qcow.c) ---- */

#include <sys/types.h>
struct ep;
struct ep_open_opts;

/* One image of a backing chain being opened, top first: to refuse loops. */
struct qcow2_chain {
    dev_t dev;
    ino_t ino;
    const char *name;
    const struct qcow2_chain *parent; /* the image that names this one, NULL for the top */
    int depth;                        /* 0 for the top */
};
#define QCOW2_MAX_CHAIN 64

/* Data reads through a foreign library (libqcow decrypts AES clusters): the mapping code
 * of qcow2.c decides what is data, zero or unallocated, and asks read() for guest ranges
 * that are allocated data (normal or compressed clusters) only. */
struct qcow2_hooks {
    int (*read)(void *opaque, void *buf, uint64_t len, uint64_t guest_off);
    void (*free)(void *opaque);
    void *opaque;
};

/* Open a qcow2 (v2, v3) image, or with hooks also a qcow v1 or AES-encrypted one, as one
 * link of a backing chain (parent NULL for the top).  Takes ownership of hooks: they are
 * freed on failure and at close.  Returns NULL with a message (mi_seterr) on failure. */
struct ep *qcow2_open_chain(const char *name, const struct ep_open_opts *opts,
                            const struct qcow2_chain *parent, const struct qcow2_hooks *hooks);

/* Inflate one compressed cluster (qcow2-create.c): in holds len bytes (the descriptor's
 * upper bound), out gets cs bytes.  True when exactly cs bytes came out. */
#include <stddef.h>
bool qcow2_inflate(int ctype, const uint8_t *in, size_t len, uint8_t *out, size_t cs);

/* qcow2-rw.c: open an existing qcow2 image to write into it (copy -n, follow's existing
 * qcow2 target).  Returns NULL with a message on failure or refusal. */
struct ep *qcow2_open_rw(const char *name);

/* qcow.c: open through libqcow (qcow v1, AES-encrypted qcow2) as a link of a chain. */
struct ep *qcow_open_chain(const char *name, const struct ep_open_opts *opts,
                           const struct qcow2_chain *parent);

#endif
