"""F/D bit-pattern semantics: NaN boxing, sign injection, FCLASS, compares, min/max edge cases."""

from __future__ import annotations

from kvmpy.tcg.target.riscv.fpu import (BOX, CANONICAL_NAN_D, NV, POS_ZERO, QNAN, SNAN, fclass, fcompare,
                                        fminmax, fsgnj_s, unbox_s)

PZ_D, NZ_D, QNAN_D, SNAN_D, ONE_D = 0, 1 << 63, 0x7FF8000000000123, 0x7FF0000000000001, 0x3FF0000000000000
ONE_S, SNAN_S = BOX | 0x3F800000, BOX | 0x7F800001


def test_improperly_boxed_singles_read_as_the_canonical_nan():
    assert unbox_s(0x3F800000) == 0x7FC00000
    assert fclass(0x3F800000, 0) == QNAN
    assert fsgnj_s(1, 0x1234, ONE_S) == BOX | 0xFFC00000     # -(canonical NaN)
    assert fclass(SNAN_S, 0) == SNAN and fclass(BOX, 0) == POS_ZERO


def test_min_max_order_signed_zeros_and_skip_nans():
    assert fminmax(0, PZ_D, NZ_D, 1) == (NZ_D, 0)
    assert fminmax(1, NZ_D, PZ_D, 1) == (PZ_D, 0)
    assert fminmax(0, QNAN_D, ONE_D, 1) == (ONE_D, 0)
    assert fminmax(1, SNAN_D, ONE_D, 1) == (ONE_D, NV)
    assert fminmax(0, QNAN_D, SNAN_D, 1) == (CANONICAL_NAN_D, NV)
    assert fminmax(0, ONE_S, 0x1, 0) == (BOX | 0x3F800000, 0)   # unboxed operand is a NaN


def test_compares_signal_invalid_like_the_spec():
    assert fcompare(2, PZ_D, NZ_D, 1) == (1, 0)                  # feq: +0 == -0
    assert fcompare(1, NZ_D, PZ_D, 1) == (0, 0)                  # flt: -0 < +0 is false
    assert fcompare(0, NZ_D, PZ_D, 1) == (1, 0)
    assert fcompare(2, QNAN_D, QNAN_D, 1) == (0, 0)              # feq: quiet NaN is quiet
    assert fcompare(2, SNAN_D, ONE_D, 1) == (0, NV)
    assert fcompare(1, QNAN_D, ONE_D, 1) == (0, NV)              # flt/fle: any NaN is invalid


EDGE_D = [0, 1 << 63, 1, (1 << 63) | 1, 0x000FFFFFFFFFFFFF, 0x0010000000000000, 0x7FEFFFFFFFFFFFFF,
          0xFFEFFFFFFFFFFFFF, 0x7FF0000000000000, 0xFFF0000000000000, 0x7FF8000000000000, 0x7FF0000000000001,
          0x3FF0000000000000, 0xBFF0000000000000, 0x3FF0000000000001, 0x4000000000000000, 0x3CA0000000000000,
          0x0008000000000001, 0x3FE0000000000000]
EDGE_S = [BOX | v for v in (0, 0x80000000, 1, 0x80000001, 0x007FFFFF, 0x00800000, 0x7F7FFFFF, 0xFF7FFFFF,
                            0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0x3F800000, 0xBF800000, 0x3F800001,
                            0x40000000, 0x33800000, 0x00400001, 0x3F000000)] + [0x3F800000]   # last: unboxed


def test_arithmetic_on_edge_operands_matches_qemu_user(tmp_path):
    """FADD/FSUB/FMUL/FDIV/FSQRT (.S/.D) on every pair of edge values, every rounding
    mode: result bits and fflags against qemu-riscv64 7.2, one instruction at a time."""
    import struct

    from kvmpy.tcg.target.riscv.fpu import farith
    from tests.guests.riscv.asm import run_user
    cases = []
    for double, edge in ((1, EDGE_D), (0, EDGE_S)):
        for op in range(5):
            for a in edge:
                for b in (edge if op != 4 else [0]):
                    for rm in range(5):
                        cases.append((op, a, b, double, rm))
    # one instruction per case: fld a, fld b, op with static rm, fsd result, frflags + clear
    names = ("fadd", "fsub", "fmul", "fdiv", "fsqrt")
    rms = ("rne", "rtz", "rdn", "rup", "rmm")
    lines = [".option norvc", ".text", ".globl _start", "_start:",
             "la s0, inputs", "la s1, out"]
    for op, a, b, double, rm in cases:
        sfx = ".d" if double else ".s"
        srcs = "f1" if op == 4 else "f1, f2"
        lines += ["fld f1, 0(s0)", "fld f2, 8(s0)", f"{names[op]}{sfx} f3, {srcs}, {rms[rm]}",
                  "fsd f3, 0(s1)", "frflags t0", "sd t0, 8(s1)", "fsflags zero",
                  "addi s0, s0, 16", "addi s1, s1, 16"]
    lines += ["li a7, 64", "li a0, 1", "la a1, out", f"li a2, {16 * len(cases)}", "ecall",
              "li a7, 93", "li a0, 0", "ecall", ".data", ".balign 8", "inputs:"]
    lines += [f".dword {a:#x}, {b:#x}" for _, a, b, _, _ in cases]
    lines += ["out:", f".zero {16 * len(cases)}"]
    out = run_user(lines, tmp_path)
    want = list(struct.iter_unpack("<QQ", out))
    assert len(want) == len(cases) > 7000
    wrong = [(names[op], double, hex(a), hex(b), rm, hex(got[0]), got[1], hex(w[0]), w[1])
             for (op, a, b, double, rm), w in zip(cases, want)
             if (got := farith(op, a, b, double, rm)) != w]
    assert not wrong, f"{len(wrong)} of {len(cases)} differ, first: {wrong[:5]}"


EDGE_INT = [0, 1, (1 << 64) - 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x100000000, (1 << 63) - 1, 1 << 63,
            0xFFFFFFFF80000000, 0x20000001, 0x1FFFFFFFFFFFFF, 0x20000000000001, 0xFFFFFFFFFFFFFFFE, 12345]
EDGE_CVT_D = EDGE_D + [0x41DFFFFFFFC00000, 0x41E0000000000000, 0xC1E0000000000000, 0xC1E0000000200000,
                       0x43E0000000000000, 0xC3E0000000000000, 0x43F0000000000000, 0x4004000000000000,
                       0xC004000000000000, 0x3FF8000000000000, 0xBFE8000000000000]
EDGE_CVT_S = EDGE_S + [BOX | v for v in (0x4F000000, 0xCF000000, 0x5F000000, 0xDF000000, 0x5F800000,
                                         0x40200000, 0xC0200000, 0x3FC00000, 0xBF400000)]


def test_fma_and_conversions_on_edge_operands_match_qemu_user(tmp_path):
    """FMADD/FMSUB/FNMSUB/FNMADD on random edge triples, and every FCVT on edge values,
    all rounding modes: result bits and fflags against qemu-riscv64 7.2."""
    import random
    import struct

    from kvmpy.tcg.target.riscv.fpu import fcvt_float, fcvt_from_int, fcvt_to_int, ffma
    from tests.guests.riscv.asm import run_user
    rng = random.Random(16)
    rms = ("rne", "rtz", "rdn", "rup", "rmm")
    fma = ("fmadd", "fmsub", "fnmsub", "fnmadd")
    ints = ("w", "wu", "l", "lu")
    cases: list[tuple[str, tuple[int, int, int], object]] = []   # (asm, inputs, reference)
    for _ in range(1500):
        double = rng.randint(0, 1)
        edge = EDGE_D if double else EDGE_S
        kind, rm = rng.randrange(4), rng.randrange(5)
        a, b, c = rng.choice(edge), rng.choice(edge), rng.choice(edge)
        cases.append((f"{fma[kind]}.{'d' if double else 's'} f4, f1, f2, f3, {rms[rm]}", (a, b, c),
                      lambda a, b, c, k=kind, d=double, r=rm: ffma(k >> 1, k & 1, a, b, c, d, r)))
    for double, edge in ((1, EDGE_CVT_D), (0, EDGE_CVT_S)):
        fmt = "d" if double else "s"
        for v in edge:
            for rm in range(5):
                for it in range(4):
                    cases.append((f"fcvt.{ints[it]}.{fmt} t1, f1, {rms[rm]}\n fmv.d.x f4, t1", (v, 0, 0),
                                  lambda a, b, c, d=double, i=it, r=rm: fcvt_to_int(a, d, int(not i & 1),
                                                                                    64 if i & 2 else 32, r)))
                other = "s" if double else "d"
                if other == "d" and rm:
                    continue                    # fcvt.d.s is exact: the assembler takes no rm
                suffix = f", {rms[rm]}" if other == "s" else ""
                cases.append((f"fcvt.{other}.{fmt} f4, f1{suffix}", (v, 0, 0),
                              lambda a, b, c, d=double, r=rm: fcvt_float(a, 1 - d, r)))
    for v in EDGE_INT:
        for double in (0, 1):
            for rm in range(5):
                for it in range(4):
                    exact = double and it < 2       # fcvt.d.w[u]: no rm operand
                    if exact and rm:
                        continue
                    suffix = "" if exact else f", {rms[rm]}"
                    cases.append((f"fcvt.{'d' if double else 's'}.{ints[it]} f4, t1{suffix}", (v, 0, 0),
                                  lambda a, b, c, d=double, i=it, r=rm: fcvt_from_int(a, int(not i & 1),
                                                                                      64 if i & 2 else 32, d, r)))
    lines = [".option norvc", ".text", ".globl _start", "_start:", "la s0, inputs", "la s1, out"]
    for asm, _, _ in cases:
        lines += ["fld f1, 0(s0)", "fld f2, 8(s0)", "fld f3, 16(s0)", "ld t1, 0(s0)", asm,
                  "fsd f4, 0(s1)", "frflags t0", "sd t0, 8(s1)", "fsflags zero", "addi s0, s0, 24", "addi s1, s1, 16"]
    lines += ["li a7, 64", "li a0, 1", "la a1, out", f"li a2, {16 * len(cases)}", "ecall",
              "li a7, 93", "li a0, 0", "ecall", ".data", ".balign 8", "inputs:"]
    lines += [f".dword {a:#x}, {b:#x}, {c:#x}" for _, (a, b, c), _ in cases]
    lines += ["out:", f".zero {16 * len(cases)}"]
    want = list(struct.iter_unpack("<QQ", run_user(lines, tmp_path)))
    assert len(want) == len(cases)
    wrong = [(asm, [hex(x) for x in ins], [hex(x) for x in got], [hex(x) for x in w])
             for (asm, ins, ref), w in zip(cases, want) if (got := ref(*ins)) != w]
    assert not wrong, f"{len(wrong)} of {len(cases)} differ, first: {wrong[:4]}"
