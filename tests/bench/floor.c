/* floor.c: the least any copy tool can do for raw -> raw: write the source's non-zero data
 * runs (listed in LAYOUT as "offset length" lines) into a new sparse file of SIZE bytes
 * from one hot buffer, in one thread.  make bench times it next to the tools: the wall
 * time no tool writing through write(2) can beat on that file system.
 *
 * With -r SRC a second thread reads the same runs from SRC meanwhile (into a buffer of its
 * own, the bytes not used): what every copy adds at the least, reading its source once
 * while it writes.  With -s the target is fsync'ed before exit.
 * Usage: floor [-s] [-r SRC] LAYOUT DST SIZE */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CAP (4u << 20)

struct run {
    long long off, len;
};

static struct run *runs;
static size_t nruns;
static const char *src_path;

static void *reader(void *arg)
{
    (void)arg;
    int fd = open(src_path, O_RDONLY);
    char *buf = malloc(CAP);
    if (fd < 0 || !buf) {
        perror("floor: reader");
        exit(1);
    }
    for (size_t i = 0; i < nruns; i++) {
        long long off = runs[i].off, len = runs[i].len;
        while (len > 0) {
            size_t n = len < (long long)CAP ? (size_t)len : CAP;
            ssize_t r = pread(fd, buf, n, off);
            if (r <= 0) {
                perror("floor: pread");
                exit(1);
            }
            off += r, len -= r;
        }
    }
    free(buf);
    close(fd);
    return NULL;
}

int main(int argc, char **argv)
{
    int sync = 0, c;
    while ((c = getopt(argc, argv, "sr:")) != -1) {
        if (c == 's')
            sync = 1;
        else if (c == 'r')
            src_path = optarg;
        else
            return 2;
    }
    if (argc - optind != 3) {
        fprintf(stderr, "usage: floor [-s] [-r SRC] LAYOUT DST SIZE\n");
        return 2;
    }
    FILE *lay = fopen(argv[optind], "r");
    if (!lay) {
        perror(argv[optind]);
        return 1;
    }
    size_t cap = 0;
    long long off, len;
    while (fscanf(lay, "%lld %lld", &off, &len) == 2) {
        if (nruns == cap) {
            cap = cap ? 2 * cap : 1024;
            runs = realloc(runs, cap * sizeof *runs);
            if (!runs)
                return 1;
        }
        runs[nruns++] = (struct run){off, len};
    }
    fclose(lay);
    int fd = open(argv[optind + 1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    char *buf = malloc(CAP);
    if (fd < 0 || !buf || ftruncate(fd, strtoll(argv[optind + 2], NULL, 10)) < 0) {
        perror("floor");
        return 1;
    }
    memset(buf, 0x5a, CAP);
    pthread_t t;
    if (src_path && pthread_create(&t, NULL, reader, NULL) != 0) {
        perror("floor: thread");
        return 1;
    }
    for (size_t i = 0; i < nruns; i++) {
        off = runs[i].off, len = runs[i].len;
        while (len > 0) {
            size_t n = len < (long long)CAP ? (size_t)len : CAP;
            ssize_t w = pwrite(fd, buf, n, off);
            if (w <= 0) {
                perror("floor: pwrite");
                return 1;
            }
            off += w, len -= w;
        }
    }
    if (src_path)
        pthread_join(t, NULL);
    if (sync && fsync(fd) < 0) {
        perror("floor: fsync");
        return 1;
    }
    return close(fd) < 0;
}
