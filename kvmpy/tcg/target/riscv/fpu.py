"""F and D register-file semantics that are pure functions of bit patterns.

Floating-point registers hold 64-bit patterns.  A single-precision value is
NaN-boxed: its upper 32 bits are all ones; a single-precision operation that
reads a register that is not properly boxed sees the canonical NaN instead.
This module owns boxing, sign injection of singles, FCLASS, comparisons and
min/max; the arithmetic (rounding) is not implemented yet.
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


# ---- comparisons and min/max: exact, no rounding -------------------------------------
NV = 1 << 4                          # fflags: invalid operation
CANONICAL_NAN_D = 0x7FF8000000000000


def _fields(v: int, double: int) -> tuple[int, int, int]:
    """(bits, width, exponent width) of the operand as the op sees it."""
    return (v, 64, 11) if double else (unbox_s(v), 32, 8)


def _nan_kind(x: int, width: int, exp_bits: int) -> int:
    """0: not a NaN, 1: quiet NaN, 2: signaling NaN."""
    frac_bits = width - 1 - exp_bits
    exp = x >> frac_bits & ((1 << exp_bits) - 1)
    frac = x & ((1 << frac_bits) - 1)
    if exp != (1 << exp_bits) - 1 or frac == 0:
        return 0
    return 1 if frac >> (frac_bits - 1) else 2


def _key(x: int, width: int) -> int:
    """An integer that orders like the (non-NaN) value; -0 sorts just below +0."""
    sign = x >> (width - 1)
    mag = x & ((1 << (width - 1)) - 1)
    return -mag - 1 if sign else mag


def fcompare(op: int, a: int, b: int, double: int) -> tuple[int, int]:
    """FLE (op 0), FLT (1), FEQ (2): (result, fflags).  ±0 compare equal; a NaN operand
    gives 0, and NV for FLT/FLE (any NaN) or FEQ (signaling NaN)."""
    x, width, eb = _fields(a, double)
    y, _, _ = _fields(b, double)
    kx, ky = _nan_kind(x, width, eb), _nan_kind(y, width, eb)
    if kx or ky:
        return 0, NV if op != 2 or kx == 2 or ky == 2 else 0
    zero = x << 1 & ((1 << width) - 1) == 0 and y << 1 & ((1 << width) - 1) == 0
    if zero:
        return int(op != 1), 0
    sx, sy = _key(x, width), _key(y, width)
    return int(sx <= sy if op == 0 else sx < sy if op == 1 else sx == sy), 0


def fminmax(op: int, a: int, b: int, double: int) -> tuple[int, int]:
    """FMIN (op 0) / FMAX (1), IEEE 754-2019 minimumNumber/maximumNumber as the F/D
    spec v2.2 requires: a NaN operand yields the other one, two NaNs the canonical NaN,
    NV for any signaling NaN, -0 < +0.  Singles come back NaN-boxed."""
    x, width, eb = _fields(a, double)
    y, _, _ = _fields(b, double)
    kx, ky = _nan_kind(x, width, eb), _nan_kind(y, width, eb)
    flags = NV if kx == 2 or ky == 2 else 0
    if kx and ky:
        r = CANONICAL_NAN_D if double else CANONICAL_NAN_S
    elif kx:
        r = y
    elif ky:
        r = x
    else:
        pick_x = _key(x, width) <= _key(y, width) if op == 0 else _key(x, width) >= _key(y, width)
        r = x if pick_x else y
    return (r if double else BOX | r), flags
