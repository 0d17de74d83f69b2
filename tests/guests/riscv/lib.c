#include "lib.h"

void show(const char *label, u64 v) {
    rt_puts(label);
    rt_putc('=');
    rt_puthex(v);
    rt_nl();
}

void *memcpy(void *d, const void *s, unsigned long n) {
    u8 *dp = d;
    const u8 *sp = s;
    while (n--) *dp++ = *sp++;
    return d;
}

void *memset(void *d, int c, unsigned long n) {
    u8 *dp = d;
    while (n--) *dp++ = (u8)c;
    return d;
}
