"""RISC-V instruction fields, immediates, and expansion of compressed (RVC) instructions.

``expand_compressed`` rewrites a 16-bit RV64C instruction into the equivalent
32-bit encoding, so the translator has one decoder.  Encodings that are reserved,
or that need an extension we do not implement (F/D loads and stores), expand to
``None`` and raise an illegal-instruction trap.
"""

from __future__ import annotations


def sext(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def imm_i(i: int) -> int:
    return sext(i >> 20, 12)


def imm_s(i: int) -> int:
    return sext(((i >> 25) << 5) | ((i >> 7) & 31), 12)


def imm_b(i: int) -> int:
    return sext((((i >> 31) & 1) << 12) | (((i >> 7) & 1) << 11) | (((i >> 25) & 0x3F) << 5)
                | (((i >> 8) & 0xF) << 1), 13)


def imm_u(i: int) -> int:
    return sext(i & 0xFFFFF000, 32)


def imm_j(i: int) -> int:
    return sext((((i >> 31) & 1) << 20) | (((i >> 12) & 0xFF) << 12) | (((i >> 20) & 1) << 11)
                | (((i >> 21) & 0x3FF) << 1), 21)


# ---- encoders used by the RVC expansion ------------------------------------
def _r(op: int, rd: int, f3: int, rs1: int, rs2: int, f7: int) -> int:
    return (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op


def _i(op: int, rd: int, f3: int, rs1: int, imm: int) -> int:
    return ((imm & 0xFFF) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op


def _s(op: int, f3: int, rs1: int, rs2: int, imm: int) -> int:
    imm &= 0xFFF
    return ((imm >> 5) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((imm & 31) << 7) | op


def _b(f3: int, rs1: int, rs2: int, imm: int) -> int:
    imm &= 0x1FFF
    return ((((imm >> 12) & 1) << 31) | (((imm >> 5) & 0x3F) << 25) | (rs2 << 20) | (rs1 << 15)
            | (f3 << 12) | (((imm >> 1) & 0xF) << 8) | (((imm >> 11) & 1) << 7) | 0x63)


def _j(rd: int, imm: int) -> int:
    imm &= 0x1FFFFF
    return ((((imm >> 20) & 1) << 31) | (((imm >> 1) & 0x3FF) << 21) | (((imm >> 11) & 1) << 20)
            | (((imm >> 12) & 0xFF) << 12) | (rd << 7) | 0x6F)


def _bit(c: int, src: int, dst: int) -> int:
    return ((c >> src) & 1) << dst


OP_IMM, OP_IMM32, OP, OP32, LOAD, STORE, LUI, JALR, SYSTEM = 0x13, 0x1B, 0x33, 0x3B, 0x03, 0x23, 0x37, 0x67, 0x73
LOAD_FP, STORE_FP = 0x07, 0x27


def expand_compressed(c: int) -> int | None:
    """The 32-bit equivalent of RVC instruction ``c``, or None if it is illegal here."""
    q = c & 3
    f3 = (c >> 13) & 7
    rd = (c >> 7) & 31
    rs2 = (c >> 2) & 31
    rdp = 8 + ((c >> 2) & 7)        # rd' / rs2'
    rs1p = 8 + ((c >> 7) & 7)       # rs1' / rd'
    imm6 = sext((((c >> 12) & 1) << 5) | ((c >> 2) & 31), 6)
    if q == 0:
        if f3 == 0:
            nzuimm = (((c >> 11) & 3) << 4) | (((c >> 7) & 0xF) << 6) | _bit(c, 6, 2) | _bit(c, 5, 3)
            return _i(OP_IMM, rdp, 0, 2, nzuimm) if nzuimm else None
        uimm_w = (((c >> 10) & 7) << 3) | _bit(c, 6, 2) | _bit(c, 5, 6)
        uimm_d = (((c >> 10) & 7) << 3) | (((c >> 5) & 3) << 6)
        if f3 == 2:
            return _i(LOAD, rdp, 2, rs1p, uimm_w)
        if f3 == 3:
            return _i(LOAD, rdp, 3, rs1p, uimm_d)
        if f3 == 1:
            return _i(LOAD_FP, rdp, 3, rs1p, uimm_d)          # c.fld
        if f3 == 5:
            return _s(STORE_FP, 3, rs1p, rdp, uimm_d)         # c.fsd
        if f3 == 6:
            return _s(STORE, 2, rs1p, rdp, uimm_w)
        if f3 == 7:
            return _s(STORE, 3, rs1p, rdp, uimm_d)
        return None
    if q == 1:
        if f3 == 0:
            return _i(OP_IMM, rd, 0, rd, imm6)
        if f3 == 1:
            return _i(OP_IMM32, rd, 0, rd, imm6) if rd else None
        if f3 == 2:
            return _i(OP_IMM, rd, 0, 0, imm6)
        if f3 == 3:
            if rd == 2:
                imm = sext(_bit(c, 12, 9) | _bit(c, 6, 4) | _bit(c, 5, 6) | (((c >> 3) & 3) << 7)
                           | _bit(c, 2, 5), 10)
                return _i(OP_IMM, 2, 0, 2, imm) if imm else None
            if imm6 == 0:
                return None
            return ((imm6 & 0xFFFFF) << 12) | (rd << 7) | LUI
        if f3 == 4:
            f2 = (c >> 10) & 3
            shamt = (((c >> 12) & 1) << 5) | ((c >> 2) & 31)
            if f2 == 0:
                return _i(OP_IMM, rs1p, 5, rs1p, shamt)
            if f2 == 1:
                return _i(OP_IMM, rs1p, 5, rs1p, shamt | 0x400)
            if f2 == 2:
                return _i(OP_IMM, rs1p, 7, rs1p, imm6)
            f = (c >> 5) & 3
            if not (c >> 12) & 1:
                f3r, f7 = ((0, 0x20), (4, 0), (6, 0), (7, 0))[f]
                return _r(OP, rs1p, f3r, rs1p, rdp, f7)
            if f == 0:
                return _r(OP32, rs1p, 0, rs1p, rdp, 0x20)
            if f == 1:
                return _r(OP32, rs1p, 0, rs1p, rdp, 0)
            return None
        if f3 == 5:
            off = sext(_bit(c, 12, 11) | _bit(c, 11, 4) | (((c >> 9) & 3) << 8) | _bit(c, 8, 10)
                       | _bit(c, 7, 6) | _bit(c, 6, 7) | (((c >> 3) & 7) << 1) | _bit(c, 2, 5), 12)
            return _j(0, off)
        off = sext(_bit(c, 12, 8) | (((c >> 10) & 3) << 3) | (((c >> 5) & 3) << 6)
                   | (((c >> 3) & 3) << 1) | _bit(c, 2, 5), 9)
        return _b(0 if f3 == 6 else 1, rs1p, 0, off)
    # q == 2
    if f3 == 0:
        shamt = (((c >> 12) & 1) << 5) | ((c >> 2) & 31)
        return _i(OP_IMM, rd, 1, rd, shamt)
    if f3 == 2:
        uimm = _bit(c, 12, 5) | (((c >> 4) & 7) << 2) | (((c >> 2) & 3) << 6)
        return _i(LOAD, rd, 2, 2, uimm) if rd else None
    if f3 in (1, 3):
        uimm = _bit(c, 12, 5) | (((c >> 5) & 3) << 3) | (((c >> 2) & 7) << 6)
        if f3 == 1:
            return _i(LOAD_FP, rd, 3, 2, uimm)                 # c.fldsp
        return _i(LOAD, rd, 3, 2, uimm) if rd else None
    if f3 == 4:
        if not (c >> 12) & 1:
            if rs2 == 0:
                return _i(JALR, 0, 0, rd, 0) if rd else None
            return _r(OP, rd, 0, 0, rs2, 0)
        if rs2 == 0:
            if rd == 0:
                return 0x00100073                    # ebreak
            return _i(JALR, 1, 0, rd, 0)
        return _r(OP, rd, 0, rd, rs2, 0)
    if f3 == 6:
        uimm = (((c >> 9) & 0xF) << 2) | (((c >> 7) & 3) << 6)
        return _s(STORE, 2, 2, rs2, uimm)
    if f3 in (5, 7):
        uimm = (((c >> 10) & 7) << 3) | (((c >> 7) & 7) << 6)
        return _s(STORE_FP if f3 == 5 else STORE, 3, 2, rs2, uimm)   # c.fsdsp / c.sdsp
    return None
