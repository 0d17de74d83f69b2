/* Recursive quicksort of 20000 pseudo-random 64-bit keys, then a checksum. */
#include "lib.h"

#define N 20000
static i64 a[N];

static void qs(i64 *v, long lo, long hi) {
    while (lo < hi) {
        i64 p = v[(lo + hi) / 2];
        long i = lo, j = hi;
        while (i <= j) {
            while (v[i] < p) i++;
            while (v[j] > p) j--;
            if (i <= j) { i64 t = v[i]; v[i] = v[j]; v[j] = t; i++; j--; }
        }
        if (j - lo < hi - i) { qs(v, lo, j); lo = i; } else { qs(v, i, hi); hi = j; }
    }
}

int main(void) {
    for (int rep = 0; rep < guest_repeat; rep++) {
        u64 x = 88172645463325252UL;
        for (int i = 0; i < N; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            a[i] = (i64)x;
        }
        qs(a, 0, N - 1);
        BARRIER();
    }
    u64 sum = 0;
    for (int i = 1; i < N; i++) {
        if (a[i - 1] > a[i]) { rt_puts("not sorted\n"); return 1; }
        sum = sum * 31 + (u64)a[i];
    }
    show("sorted", sum);
    show("min", (u64)a[0]);
    show("max", (u64)a[N - 1]);
    return 0;
}
