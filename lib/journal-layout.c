/* journal-layout.c: mapping and validating a journal file (journal-layout.h).  Built into
 * mirror-img and into the shim. */
#include "journal-layout.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

struct mij_libc mij_libc = {open, close, read, pread, syscall};

/* ---------------------------------------------------------------------------------- */
/* Mapping and validation                                                               */


/* Every field that says where something is must be exactly what this version computes. */
static int validate(const struct mij_header *h, uint64_t fsize, const char *path)
{
    if (memcmp(h->magic, MIJ_MAGIC, 8))
        return mi_seterr(EINVAL, "%s: not a mirror-img journal (bad magic)", path);
    if (h->bom != MIJ_BOM)
        return mi_seterr(EINVAL, "%s: journal was written on a machine of another byte order", path);
    if (h->version != MIJ_VERSION)
        return mi_seterr(EINVAL, "%s: journal version %u is not supported (this mirror-img knows %u)",
                    path, h->version, MIJ_VERSION);
    uint64_t g = h->granularity;
    if (g < MIJ_MIN_GRANULARITY || g > MIJ_MAX_GRANULARITY || (g & (g - 1)))
        return mi_seterr(EINVAL, "%s: corrupted journal: granularity %llu", path, (unsigned long long)g);
    if (!h->nchunks || h->nchunks > MIJ_MAX_CHUNKS || h->covered / g != h->nchunks ||
        h->covered % g)
        return mi_seterr(EINVAL, "%s: corrupted journal: %llu chunks for %llu bytes", path,
                    (unsigned long long)h->nchunks, (unsigned long long)h->covered);
    uint64_t bb = mij_bitmap_bytes(h->nchunks);
    if (h->header_size != MIJ_HEADER_SIZE || h->bitmap_bytes != bb ||
        h->dirty_off != MIJ_HEADER_SIZE || h->copying_off != MIJ_HEADER_SIZE + bb ||
        h->file_size != MIJ_HEADER_SIZE + 2 * bb || h->slots_off != MIJ_OFF_SLOTS ||
        h->nslots != MIJ_NSLOTS || h->slot_size != sizeof(struct mij_slot) ||
        h->ring_off != MIJ_OFF_RING || h->nring != MIJ_NRING ||
        h->rec_size != sizeof(struct mij_rec) || h->paths_off != MIJ_OFF_SRC_PATH)
        return mi_seterr(EINVAL, "%s: corrupted journal: inconsistent layout", path);
    if (h->file_size != fsize)
        return mi_seterr(EINVAL, "%s: %s journal: %llu bytes, its header says %llu", path,
                    fsize < h->file_size ? "truncated" : "corrupted",
                    (unsigned long long)fsize, (unsigned long long)h->file_size);
    /* The three paths must end inside their 4 KiB: a read-only mapping cannot cut them. */
    for (unsigned i = 0; i < 3; i++)
        if (!memchr((const char *)h + MIJ_OFF_SRC_PATH + i * MIJ_PATH_MAX, '\0', MIJ_PATH_MAX))
            return mi_seterr(EINVAL, "%s: corrupted journal: unterminated path", path);
    if (h->src_type != S_IFREG && h->src_type != S_IFBLK)
        return mi_seterr(EINVAL, "%s: corrupted journal: source type %#x", path, h->src_type);
    return 0;
}

int mij_map(struct mij *j, int fd, const char *path, bool rdonly)
{
    struct stat st;
    memset(j, 0, sizeof *j);
    j->fd = -1;
    if (fstat(fd, &st) < 0)
        return mi_seterr(errno, "%s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return mi_seterr(EINVAL, "%s: not a mirror-img journal (not a regular file)", path);
    /* The journal steers writers (quiesce, pivot): only its owner may write it. */
    if (!rdonly && st.st_uid != geteuid())
        return mi_seterr(EPERM, "%s: journal is owned by uid %u, not by this user (uid %u): refusing it",
                    path, (unsigned)st.st_uid, (unsigned)geteuid());
    if (!rdonly && (st.st_mode & 022))
        return mi_seterr(EPERM, "%s: journal is writable by other users (mode %04o): refusing it", path,
                    (unsigned)(st.st_mode & 07777));
    if ((uint64_t)st.st_size < MIJ_HEADER_SIZE) {
        if (st.st_size >= 8) {
            char magic[8];
            if (mij_libc.pread(fd, magic, 8, 0) == 8 && !memcmp(magic, MIJ_MAGIC, 8))
                return mi_seterr(EINVAL, "%s: truncated journal: %llu bytes", path,
                            (unsigned long long)st.st_size);
        }
        return mi_seterr(EINVAL, "%s: not a mirror-img journal (%s)", path,
                    st.st_size ? "too small" : "empty file");
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ | (rdonly ? 0 : PROT_WRITE), MAP_SHARED,
                   fd, 0);
    if (p == MAP_FAILED)
        return mi_seterr(errno, "%s: cannot map the journal: %s", path, strerror(errno));
    int r = validate(p, (uint64_t)st.st_size, path);
    if (r < 0) {
        munmap(p, (size_t)st.st_size);
        return r;
    }
    j->base = p;
    j->h = p;
    j->size = (size_t)st.st_size;
    j->dirty = (uint64_t *)(j->base + j->h->dirty_off);
    j->copying = (uint64_t *)(j->base + j->h->copying_off);
    j->slots = (struct mij_slot *)(j->base + MIJ_OFF_SLOTS);
    j->ring = (struct mij_rec *)(j->base + MIJ_OFF_RING);
    j->nchunks = j->h->nchunks;
    j->covered = j->h->covered;
    j->words = (j->nchunks + 63) / 64;
    j->shift = (unsigned)__builtin_ctzll(j->h->granularity);
    j->rdonly = rdonly;
    /* Paths are NUL-terminated inside their 4 KiB (a corrupted one is cut, not overrun). */
    if (!rdonly)
        for (unsigned i = 0; i < 3; i++)
            j->base[MIJ_OFF_SRC_PATH + i * MIJ_PATH_MAX + MIJ_PATH_MAX - 1] = '\0';
    return 0;
}

void mij_unmap(struct mij *j)
{
    if (j->base)
        munmap(j->base, j->size);
    j->base = NULL;
    j->h = NULL;
}

