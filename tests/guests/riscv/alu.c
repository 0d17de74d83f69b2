/* Integer ALU coverage (RV64IM): every operation on a table of edge values,
 * including division by zero and overflow, printed as a running hash and samples. */
#include "lib.h"

static const u64 vals[] = {
    0, 1, 2, 3, 7, 31, 32, 63, 64, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff,
    0x7fffffff, 0x80000000, 0xffffffff, 0x100000000, 0x7fffffffffffffff,
    0x8000000000000000, 0xffffffffffffffff, 0xfffffffffffffffe, 0x123456789abcdef0,
    0xfedcba9876543210, 0x00000000deadbeef, 0xffffffff80000001,
};
#define N (sizeof(vals) / sizeof(vals[0]))

static u64 h = 0xcbf29ce484222325;
static void mix(u64 v) { h = (h ^ v) * 0x100000001b3; }

#define OP(name, insn) static u64 name(u64 a, u64 b) { u64 r; __asm__ volatile(insn " %0, %1, %2" : "=r"(r) : "r"(a), "r"(b)); return r; }
OP(op_add, "add") OP(op_sub, "sub") OP(op_sll, "sll") OP(op_srl, "srl") OP(op_sra, "sra")
OP(op_slt, "slt") OP(op_sltu, "sltu") OP(op_xor, "xor") OP(op_or, "or") OP(op_and, "and")
OP(op_addw, "addw") OP(op_subw, "subw") OP(op_sllw, "sllw") OP(op_srlw, "srlw") OP(op_sraw, "sraw")
OP(op_mul, "mul") OP(op_mulh, "mulh") OP(op_mulhsu, "mulhsu") OP(op_mulhu, "mulhu")
OP(op_div, "div") OP(op_divu, "divu") OP(op_rem, "rem") OP(op_remu, "remu")
OP(op_mulw, "mulw") OP(op_divw, "divw") OP(op_divuw, "divuw") OP(op_remw, "remw") OP(op_remuw, "remuw")

typedef u64 (*binop)(u64, u64);
static const binop ops[] = {
    op_add, op_sub, op_sll, op_srl, op_sra, op_slt, op_sltu, op_xor, op_or, op_and,
    op_addw, op_subw, op_sllw, op_srlw, op_sraw, op_mul, op_mulh, op_mulhsu, op_mulhu,
    op_div, op_divu, op_rem, op_remu, op_mulw, op_divw, op_divuw, op_remw, op_remuw,
};
static const char *names[] = {
    "add", "sub", "sll", "srl", "sra", "slt", "sltu", "xor", "or", "and",
    "addw", "subw", "sllw", "srlw", "sraw", "mul", "mulh", "mulhsu", "mulhu",
    "div", "divu", "rem", "remu", "mulw", "divw", "divuw", "remw", "remuw",
};

#define IMM(name, insn, imm) static u64 name(u64 a) { u64 r; __asm__ volatile(insn " %0, %1, " #imm : "=r"(r) : "r"(a)); return r; }
IMM(i_addi, "addi", -2048) IMM(i_slti, "slti", -1) IMM(i_sltiu, "sltiu", -1) IMM(i_xori, "xori", -1)
IMM(i_ori, "ori", 0x555) IMM(i_andi, "andi", -16) IMM(i_slli, "slli", 63) IMM(i_srli, "srli", 33)
IMM(i_srai, "srai", 63) IMM(i_addiw, "addiw", 2047) IMM(i_slliw, "slliw", 31) IMM(i_srliw, "srliw", 31)
IMM(i_sraiw, "sraiw", 17)
typedef u64 (*unop)(u64);
static const unop iops[] = { i_addi, i_slti, i_sltiu, i_xori, i_ori, i_andi, i_slli, i_srli,
                             i_srai, i_addiw, i_slliw, i_srliw, i_sraiw };

static volatile u8 membuf[64];

int main(void) {
    for (unsigned k = 0; k < sizeof(ops) / sizeof(ops[0]); k++) {
        u64 before = h;
        for (unsigned i = 0; i < N; i++)
            for (unsigned j = 0; j < N; j++)
                mix(ops[k](vals[i], vals[j]));
        rt_puts(names[k]);
        rt_putc(' ');
        rt_puthex(h ^ before);
        rt_nl();
    }
    for (unsigned k = 0; k < sizeof(iops) / sizeof(iops[0]); k++)
        for (unsigned i = 0; i < N; i++)
            mix(iops[k](vals[i]));
    show("imm", h);
    /* loads and stores of every width and signedness, aligned and not */
    for (unsigned i = 0; i < 64; i++) membuf[i] = (u8)(i * 37 + 11);
    for (unsigned off = 0; off < 16; off++) {
        volatile u8 *p = membuf + off;
        mix(*(volatile signed char *)p);
        mix(*(volatile short *)p);
        mix(*(volatile unsigned short *)p);
        mix(*(volatile int *)p);
        mix(*(volatile unsigned int *)p);
        mix(*(volatile u64 *)p);
    }
    for (unsigned off = 0; off < 8; off++) {
        *(volatile u64 *)(membuf + 32 + off) = h;
        *(volatile u32 *)(membuf + 8 + off) = (u32)(h >> 7);
        *(volatile unsigned short *)(membuf + 20 + off) = (unsigned short)(h >> 13);
        mix(*(volatile u64 *)(membuf + 32));
        mix(*(volatile u64 *)(membuf + 8));
    }
    show("mem", h);
    u64 pc1, pc2;
    __asm__ volatile("auipc %0, 0\n\tauipc %1, 0x12345" : "=r"(pc1), "=r"(pc2));
    show("auipc", pc2 - pc1);
    return 0;
}
