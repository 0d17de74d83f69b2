/* SHA-256 of a generated 16 KiB buffer, 4 rounds (x REPEAT); prints the digest. */
#include "lib.h"

static const u32 K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void block(u32 *st, const u8 *p) {
    u32 w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (u32)p[4 * i] << 24 | (u32)p[4 * i + 1] << 16 | (u32)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        u32 s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        u32 s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    u32 a = st[0], b = st[1], c = st[2], d = st[3], e = st[4], f = st[5], g = st[6], h = st[7];
    for (int i = 0; i < 64; i++) {
        u32 t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        u32 t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    st[0] += a; st[1] += b; st[2] += c; st[3] += d; st[4] += e; st[5] += f; st[6] += g; st[7] += h;
}

static void sha256(const u8 *data, u64 len, u32 *st) {
    static const u32 init[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    u8 tail[128];
    for (int i = 0; i < 8; i++) st[i] = init[i];
    u64 n = len & ~63UL;
    for (u64 i = 0; i < n; i += 64) block(st, data + i);
    u64 rem = len - n;
    memset(tail, 0, sizeof(tail));
    memcpy(tail, data + n, rem);
    tail[rem] = 0x80;
    u64 tl = rem < 56 ? 64 : 128;
    u64 bits = len * 8;
    for (int i = 0; i < 8; i++) tail[tl - 1 - i] = (u8)(bits >> (8 * i));
    for (u64 i = 0; i < tl; i += 64) block(st, tail + i);
}

#define LEN (16 * 1024)
static u8 buf[LEN];

int main(void) {
    u32 st[8];
    for (int rep = 0; rep < guest_repeat; rep++) {
        u32 x = 1;
        for (int i = 0; i < LEN; i++) { x = x * 1103515245 + 12345; buf[i] = (u8)(x >> 16); }
        for (int round = 0; round < 4; round++) {
            sha256(buf, LEN - round, st);
            buf[round] ^= (u8)st[0];
        }
        BARRIER();
    }
    rt_puts("sha256 ");
    for (int i = 0; i < 8; i++) { rt_puthex(st[i]); }
    rt_nl();
    sha256((const u8 *)"abc", 3, st);
    rt_puts("abc ");
    for (int i = 0; i < 8; i++) rt_puthex(st[i]);
    rt_nl();
    return 0;
}
