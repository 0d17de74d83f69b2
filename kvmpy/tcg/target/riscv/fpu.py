"""F and D register-file semantics that are pure functions of bit patterns.

Floating-point registers hold 64-bit patterns.  A single-precision value is
NaN-boxed: its upper 32 bits are all ones; a single-precision operation that
reads a register that is not properly boxed sees the canonical NaN instead.
This module owns boxing, sign injection of singles and FCLASS; the arithmetic
(rounding, fflags) is not implemented yet.
"""

from __future__ import annotations

BOX = 0xFFFFFFFF00000000
CANONICAL_NAN_S = 0x7FC00000
SIGN_S = 1 << 31
SIGN_D = 1 << 63

# FCLASS result bits
NEG_INF, NEG_NORMAL, NEG_SUBNORMAL, NEG_ZERO = 1 << 0, 1 << 1, 1 << 2, 1 << 3
POS_ZERO, POS_SUBNORMAL, POS_NORMAL, POS_INF = 1 << 4, 1 << 5, 1 << 6, 1 << 7
SNAN, QNAN = 1 << 8, 1 << 9


def unbox_s(v: int) -> int:
    """The single in register pattern ``v``: the canonical NaN unless properly boxed."""
    return v & 0xFFFFFFFF if v & BOX == BOX else CANONICAL_NAN_S


def fsgnj_s(kind: int, a: int, b: int) -> int:
    """FSGNJ.S (kind 0), FSGNJN.S (1), FSGNJX.S (2), result NaN-boxed."""
    x, y = unbox_s(a), unbox_s(b)
    if kind == 0:
        sign = y & SIGN_S
    elif kind == 1:
        sign = ~y & SIGN_S
    else:
        sign = (x ^ y) & SIGN_S
    return BOX | (x & ~SIGN_S) | sign


def _classify(v: int, exp_bits: int, frac_bits: int) -> int:
    sign = v >> (exp_bits + frac_bits) & 1
    exp = v >> frac_bits & ((1 << exp_bits) - 1)
    frac = v & ((1 << frac_bits) - 1)
    if exp == (1 << exp_bits) - 1:
        if frac:
            return QNAN if frac >> (frac_bits - 1) else SNAN
        return NEG_INF if sign else POS_INF
    if exp == 0:
        if frac == 0:
            return NEG_ZERO if sign else POS_ZERO
        return NEG_SUBNORMAL if sign else POS_SUBNORMAL
    return NEG_NORMAL if sign else POS_NORMAL


def fclass(v: int, double: int) -> int:
    """FCLASS.D (double != 0) or FCLASS.S of register pattern ``v``."""
    if double:
        return _classify(v, 11, 52)
    return _classify(unbox_s(v), 8, 23)
