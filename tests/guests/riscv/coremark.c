/* A CoreMark-like mix: linked-list find/reverse, integer matrix multiply,
 * a byte-level state machine and CRC-16, iterated; prints the CRCs. */
#include "lib.h"

struct node { struct node *next; i64 key, val; };
#define NODES 256
static struct node pool[NODES];

static u32 crc16(u32 crc, u32 data) {
    for (int i = 0; i < 16; i++) {
        u32 x = (data ^ crc) & 1;
        data >>= 1;
        crc = (crc >> 1) ^ (x ? 0xa001 : 0);
    }
    return crc & 0xffff;
}

static struct node *list_build(void) {
    for (int i = 0; i < NODES; i++) {
        pool[i].key = (i * 7919) % NODES;
        pool[i].val = i * 3 - 100;
        pool[i].next = i + 1 < NODES ? &pool[i + 1] : 0;
    }
    return &pool[0];
}

static struct node *list_reverse(struct node *l) {
    struct node *prev = 0;
    while (l) { struct node *n = l->next; l->next = prev; prev = l; l = n; }
    return prev;
}

static i64 list_find(struct node *l, i64 key) {
    for (; l; l = l->next) if (l->key == key) return l->val;
    return -1;
}

typedef int i32;
#define M 16
static i32 ma[M][M], mb[M][M], mc[M][M];


static u32 matrix(u32 seed) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < M; j++) { seed = seed * 1664525 + 1013904223; ma[i][j] = (i32)(seed >> 20) - 2048; mb[j][i] = (i32)(seed >> 8) & 0xff; }
    u32 crc = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < M; j++) {
            i32 s = 0;
            for (int k = 0; k < M; k++) s += ma[i][k] * mb[k][j];
            mc[i][j] = s;
            crc = crc16(crc, (u32)s);
        }
    return crc;
}

static u32 state_machine(const char *s, int n) {
    int state = 0, counts[4] = {0};
    for (int i = 0; i < n; i++) {
        char c = s[i];
        switch (state) {
        case 0: state = (c >= '0' && c <= '9') ? 1 : (c == '-' ? 2 : 3); break;
        case 1: state = (c >= '0' && c <= '9') ? 1 : (c == '.' ? 2 : 0); break;
        case 2: state = (c >= '0' && c <= '9') ? 2 : (c == 'e' ? 3 : 0); break;
        default: state = c == ',' ? 0 : 3; break;
        }
        counts[state]++;
    }
    return (u32)(counts[0] * 1 + counts[1] * 3 + counts[2] * 5 + counts[3] * 7);
}

static const char text[] = "12.5e3,-7,abc,99.01,3e-2,,--1,42,0.5,x9,1234567,8.25e-1,foo.bar,77";

int main(void) {
    u32 crc = 0;
    for (int rep = 0; rep < guest_repeat; rep++) {
        crc = 0;
        struct node *l = list_build();
        for (int it = 0; it < 60; it++) {
            for (int k = 0; k < 8; k++) crc = crc16(crc, (u32)list_find(l, (it * 13 + k * 31) % NODES));
            l = list_reverse(l);
            crc = crc16(crc, matrix((u32)it));
            crc = crc16(crc, state_machine(text, sizeof(text) - 1));
        }
        BARRIER();
    }
    show("crc", crc);
    return 0;
}
