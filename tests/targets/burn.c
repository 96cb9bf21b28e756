/* A C target for the sampler: CPU burnt in burn_c_inner, called from burn_c_outer, for 8 s.
 * Built with gcc -O2 (no frame pointers: unwinding needs .eh_frame). */
#include <stdint.h>
#include <stdio.h>
#include <time.h>

__attribute__((noinline)) uint64_t burn_c_inner(uint64_t n) {
    uint64_t x = n | 1;
    for (uint64_t i = 0; i < 20000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x += i;
    }
    return x;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) uint64_t burn_c_outer(double seconds) {
    double end = now() + seconds;
    uint64_t acc = 0;
    while (now() < end) {
        acc += burn_c_inner(acc);
    }
    return acc;
}

int main(void) {
    printf("ready\n");
    fflush(stdout);
    fprintf(stderr, "%llu\n", (unsigned long long)burn_c_outer(8.0));
    return 0;
}
