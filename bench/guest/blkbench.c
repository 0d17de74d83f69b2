/* Guest side of bench/virtio_blk.py: O_DIRECT sequential read/write MB/s and 4 KiB random-read IOPS
 * on a block device. Prints one "BLKBENCH name value unit" line per figure. Static, no libc extras. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    const char *dev = argc > 1 ? argv[1] : "/dev/vda";
    long long size_mb = argc > 2 ? atoll(argv[2]) : 128;   /* bytes covered by the sequential passes */
    double rand_secs = argc > 3 ? atof(argv[3]) : 5.0;     /* duration of the random-read pass */
    const size_t blk = 1 << 20;
    int fd = open(dev, O_RDWR | O_DIRECT);
    if (fd < 0) { perror(dev); return 1; }
    void *buf;
    if (posix_memalign(&buf, 4096, blk)) return 1;
    memset(buf, 0x5a, blk);
    long long total = size_mb << 20;
    double t0 = now();
    for (long long off = 0; off < total; off += blk)
        if (pwrite(fd, buf, blk, off) != (ssize_t)blk) { perror("pwrite"); return 1; }
    fdatasync(fd);
    double t1 = now();
    printf("BLKBENCH seq-write %.1f MB/s\n", total / 1e6 / (t1 - t0));
    for (long long off = 0; off < total; off += blk)
        if (pread(fd, buf, blk, off) != (ssize_t)blk) { perror("pread"); return 1; }
    double t2 = now();
    printf("BLKBENCH seq-read %.1f MB/s\n", total / 1e6 / (t2 - t1));
    uint64_t x = 88172645463325252ULL, n = 0, blocks = total / 4096;
    double end = now() + rand_secs, t3 = now();
    while (now() < end) {
        for (int i = 0; i < 64; i++, n++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            if (pread(fd, buf, 4096, (off_t)(x % blocks) * 4096) != 4096) { perror("pread4k"); return 1; }
        }
    }
    printf("BLKBENCH rand-read-4k %.0f IOPS\n", n / (now() - t3));
    fflush(stdout);
    return 0;
}
