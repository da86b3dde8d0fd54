/* floor.c: the least any copy tool can do for raw -> raw: write the source's non-zero data
 * runs (listed in LAYOUT as "offset length" lines) into a new sparse file of SIZE bytes
 * from one hot buffer, in one thread, reading nothing.  make bench times it next to the
 * tools: the wall time no tool writing through write(2) can beat on that file system.
 * Usage: floor LAYOUT DST SIZE [sync] */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: floor LAYOUT DST SIZE [sync]\n");
        return 2;
    }
    FILE *lay = fopen(argv[1], "r");
    int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (!lay || fd < 0 || ftruncate(fd, strtoll(argv[3], NULL, 10)) < 0) {
        perror("floor");
        return 1;
    }
    size_t cap = 4 << 20;
    char *buf = malloc(cap);
    if (!buf)
        return 1;
    memset(buf, 0x5a, cap);
    long long off, len;
    while (fscanf(lay, "%lld %lld", &off, &len) == 2) {
        while (len > 0) {
            size_t n = len < (long long)cap ? (size_t)len : cap;
            ssize_t w = pwrite(fd, buf, n, off);
            if (w <= 0) {
                perror("floor: pwrite");
                return 1;
            }
            off += w, len -= w;
        }
    }
    if (argc > 4 && fsync(fd) < 0) {
        perror("floor: fsync");
        return 1;
    }
    return close(fd) < 0;
}
