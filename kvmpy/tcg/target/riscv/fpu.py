"""F and D register-file semantics that are pure functions of bit patterns.

Floating-point registers hold 64-bit patterns.  A single-precision value is
NaN-boxed: its upper 32 bits are all ones; a single-precision operation that
reads a register that is not properly boxed sees the canonical NaN instead.
This module owns boxing, sign injection of singles, FCLASS, comparisons and
min/max; the arithmetic (rounding) is not implemented yet.
"""

from __future__ import annotations

import math

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


# ---- arithmetic: exact rational result, then one IEEE rounding -------------------------
NX, UF, OF, DZ = 1 << 0, 1 << 1, 1 << 2, 1 << 3
RNE, RTZ, RDN, RUP, RMM = 0, 1, 2, 3, 4


def _unpack(x: int, width: int, eb: int) -> tuple[int, int, int, int]:
    """(sign, class, m, e) with value m * 2**e for finite x; class 0 finite, 1 inf, 2 NaN."""
    fb = width - 1 - eb
    sign = x >> (width - 1)
    exp = x >> fb & ((1 << eb) - 1)
    frac = x & ((1 << fb) - 1)
    bias = (1 << (eb - 1)) - 1
    if exp == (1 << eb) - 1:
        return sign, (2 if frac else 1), 0, 0
    if exp == 0:
        return sign, 0, frac, 1 - bias - fb
    return sign, 0, frac | 1 << fb, exp - bias - fb


def _pack(sign: int, n: int, d: int, width: int, eb: int, rm: int) -> tuple[int, int]:
    """Round sign * n/d (n > 0, d > 0) to the format: (bits, flags)."""
    fb = width - 1 - eb
    bias = (1 << (eb - 1)) - 1
    emin, emax = 1 - bias, bias
    e = n.bit_length() - d.bit_length()                # 2**e <= n/d < 2**(e+2)
    if (n << max(0, -e)) < (d << max(0, e)):
        e -= 1                                          # now 2**e <= n/d < 2**(e+1)

    def round_at(exp: int) -> tuple[int, bool]:
        """The significand of n/d in units of 2**(exp - fb), rounded; and whether inexact."""
        k = fb - exp
        num, den = (n << k, d) if k >= 0 else (n, d << -k)
        i, r = divmod(num, den)
        if r:
            if rm == RNE:
                up = 2 * r > den or (2 * r == den and i & 1)
            elif rm == RMM:
                up = 2 * r >= den
            elif rm == RUP:
                up = not sign
            elif rm == RDN:
                up = bool(sign)
            else:
                up = False
            i += up
        return i, r != 0

    i, inexact = round_at(max(e, emin))
    flags = NX if inexact else 0
    tiny_unbounded, _ = round_at(e)                     # tininess after rounding (unbounded exponent)
    if inexact and (e < emin and not (e == emin - 1 and tiny_unbounded >> (fb + 1))):
        flags |= UF
    exp = max(e, emin)
    if i >> (fb + 1):                                   # rounding carried into a new binade
        i >>= 1
        exp += 1
    if exp > emax:
        flags |= OF | NX
        to_inf = rm in (RNE, RMM) or (rm == RUP and not sign) or (rm == RDN and sign)
        body = ((1 << eb) - 1) << fb if to_inf else (((1 << eb) - 2) << fb) | ((1 << fb) - 1)
        return sign << (width - 1) | body, flags
    if i >> fb == 0:                                    # subnormal (or rounded to zero)
        return sign << (width - 1) | i, flags
    return sign << (width - 1) | (exp + bias) << fb | (i & ((1 << fb) - 1)), flags


def farith(op: int, a: int, b: int, double: int, rm: int) -> tuple[int, int]:
    """FADD (0), FSUB (1), FMUL (2), FDIV (3), FSQRT (4; ``b`` ignored), correctly rounded
    in mode ``rm`` (0-4): (result bits, fflags); singles NaN-boxed, NaN results canonical."""
    x, width, eb = _fields(a, double)
    y, _, _ = _fields(b, double)
    nan = CANONICAL_NAN_D if double else CANONICAL_NAN_S
    box = 0 if double else BOX
    inf_bits = ((1 << eb) - 1) << (width - 1 - eb)
    sx, cx, mx, ex = _unpack(x, width, eb)
    sy, cy, my, ey = _unpack(y, width, eb)
    if op == 4:
        cy, my, sy = 0, 1, 0
    snan = _nan_kind(x, width, eb) == 2 or (op != 4 and _nan_kind(y, width, eb) == 2)
    if cx == 2 or cy == 2:
        return box | nan, NV if snan else 0
    if op == 1:
        sy ^= 1
    if op in (0, 1):
        if cx == 1 and cy == 1:
            return (box | nan, NV) if sx != sy else (box | sx << (width - 1) | inf_bits, 0)
        if cx == 1 or cy == 1:
            return box | (sx if cx == 1 else sy) << (width - 1) | inf_bits, 0
        # exact sum of two dyadic values
        e = min(ex, ey)
        total = (-1 if sx else 1) * (mx << (ex - e)) + (-1 if sy else 1) * (my << (ey - e))
        if total == 0:
            if mx == 0 and my == 0:                     # ±0 + ±0
                zero_sign = sx & sy if rm != RDN else sx | sy
            else:                                       # x + (-x): +0, or -0 rounding down
                zero_sign = int(rm == RDN)
            return box | zero_sign << (width - 1), 0
        n, d, sign = abs(total), 1, int(total < 0)
        if e >= 0:
            n <<= e
        else:
            d <<= -e
    elif op == 2:
        sign = sx ^ sy
        if cx == 1 or cy == 1:
            if (cx == 1 and cy == 0 and my == 0) or (cy == 1 and cx == 0 and mx == 0):
                return box | nan, NV                    # inf * 0
            return box | sign << (width - 1) | inf_bits, 0
        if mx == 0 or my == 0:
            return box | sign << (width - 1), 0
        n, d, e = mx * my, 1, ex + ey
        n, d = (n << e, 1) if e >= 0 else (n, 1 << -e)
    elif op == 3:
        sign = sx ^ sy
        if cx == 1:
            return (box | nan, NV) if cy == 1 else (box | sign << (width - 1) | inf_bits, 0)
        if cy == 1:
            return box | sign << (width - 1), 0
        if my == 0:
            if mx == 0:
                return box | nan, NV                    # 0 / 0
            return box | sign << (width - 1) | inf_bits, DZ
        if mx == 0:
            return box | sign << (width - 1), 0
        e = ex - ey
        n, d = (mx << e, my) if e >= 0 else (mx, my << -e)
    else:
        if mx == 0 and cx == 0:
            return box | sx << (width - 1), 0           # sqrt(±0) = ±0
        if sx:
            return box | nan, NV
        if cx == 1:
            return box | inf_bits, 0
        m, e = mx, ex
        if e & 1:
            m, e = m << 1, e - 1
        p = 64
        big = m << (2 * p)
        r = math.isqrt(big)
        n, d = (r, 1) if r * r == big else (2 * r + 1, 2)
        half = e // 2 - p
        n, d = (n << half, d) if half >= 0 else (n, d << -half)
        sign = 0
    bits, flags = _pack(sign, n, d, width, eb, rm)
    return box | bits, flags


def _exact(m: int, e: int) -> tuple[int, int]:
    """m * 2**e as n / d."""
    return (m << e, 1) if e >= 0 else (m, 1 << -e)


def ffma(neg_prod: int, neg_add: int, a: int, b: int, c: int, double: int, rm: int) -> tuple[int, int]:
    """(-1)**neg_prod * a*b + (-1)**neg_add * c, rounded once: FMADD (0, 0), FMSUB (0, 1),
    FNMSUB (1, 0), FNMADD (1, 1)."""
    x, width, eb = _fields(a, double)
    y, _, _ = _fields(b, double)
    z, _, _ = _fields(c, double)
    nan = CANONICAL_NAN_D if double else CANONICAL_NAN_S
    box = 0 if double else BOX
    inf_bits = ((1 << eb) - 1) << (width - 1 - eb)
    sx, cx, mx, ex = _unpack(x, width, eb)
    sy, cy, my, ey = _unpack(y, width, eb)
    sz, cz, mz, ez = _unpack(z, width, eb)
    sp, sz = sx ^ sy ^ neg_prod, sz ^ neg_add
    kinds = [_nan_kind(v, width, eb) for v in (x, y, z)]
    inf_zero = (cx == 1 and cy == 0 and my == 0) or (cy == 1 and cx == 0 and mx == 0)
    if inf_zero:
        return box | nan, NV
    if 2 in kinds or 1 in kinds:
        return box | nan, NV if 2 in kinds else 0
    if cx == 1 or cy == 1:
        if cz == 1 and sz != sp:
            return box | nan, NV                        # inf - inf
        return box | sp << (width - 1) | inf_bits, 0
    if cz == 1:
        return box | sz << (width - 1) | inf_bits, 0
    e = min(ex + ey, ez)
    total = (-1 if sp else 1) * ((mx * my) << (ex + ey - e)) + (-1 if sz else 1) * (mz << (ez - e))
    if total == 0:
        if mx * my == 0 and mz == 0:
            zero_sign = sp & sz if rm != RDN else sp | sz
        else:
            zero_sign = int(rm == RDN)
        return box | zero_sign << (width - 1), 0
    n, d = _exact(abs(total), e)
    bits, flags = _pack(int(total < 0), n, d, width, eb, rm)
    return box | bits, flags


def _round_int(sign: int, n: int, d: int, rm: int) -> tuple[int, bool]:
    """n/d (>= 0) rounded to an integer magnitude in mode rm, and whether inexact."""
    i, r = divmod(n, d)
    if r:
        if rm == RNE:
            i += 2 * r > d or (2 * r == d and i & 1)
        elif rm == RMM:
            i += 2 * r >= d
        elif rm == RUP:
            i += not sign
        elif rm == RDN:
            i += bool(sign)
    return i, r != 0


def fcvt_to_int(v: int, double: int, signed: int, bits: int, rm: int) -> tuple[int, int]:
    """FCVT.{W,WU,L,LU}.{S,D}: (integer register value, fflags).  Out of range or NaN:
    NV and the saturated value (NaN saturates to the maximum); 32-bit results sign-extended."""
    x, width, eb = _fields(v, double)
    s, cls, m, e = _unpack(x, width, eb)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if cls == 2:
        r, flags = hi, NV
    elif cls == 1:
        r, flags = (lo if s else hi), NV
    else:
        n, d = _exact(m, e)
        mag, inexact = _round_int(s, n, d, rm)
        val = -mag if s else mag
        if val < lo or val > hi:
            r, flags = (lo if val < lo else hi), NV
        else:
            r, flags = val, NX if inexact else 0
    r &= (1 << bits) - 1
    if bits == 32 and r >> 31:
        r |= 0xFFFFFFFF00000000
    return r, flags


def fcvt_from_int(v: int, signed: int, bits: int, double: int, rm: int) -> tuple[int, int]:
    """FCVT.{S,D}.{W,WU,L,LU}: the low ``bits`` of integer register ``v`` to a float."""
    v &= (1 << bits) - 1
    if signed and v >> (bits - 1):
        v -= 1 << bits
    box = 0 if double else BOX
    if v == 0:
        return box, 0
    width, eb = (64, 11) if double else (32, 8)
    bits_out, flags = _pack(int(v < 0), abs(v), 1, width, eb, rm)
    return box | bits_out, flags


def fcvt_float(v: int, to_double: int, rm: int) -> tuple[int, int]:
    """FCVT.D.S (to_double) or FCVT.S.D: NaNs become the canonical NaN (NV if signaling)."""
    src_double = 0 if to_double else 1
    x, width, eb = _fields(v, src_double)
    s, cls, m, e = _unpack(x, width, eb)
    kind = _nan_kind(x, width, eb)
    width_o, eb_o = (64, 11) if to_double else (32, 8)
    box = 0 if to_double else BOX
    if kind:
        return box | (CANONICAL_NAN_D if to_double else CANONICAL_NAN_S), NV if kind == 2 else 0
    if cls == 1:
        return box | s << (width_o - 1) | ((1 << eb_o) - 1) << (width_o - 1 - eb_o), 0
    if m == 0:
        return box | s << (width_o - 1), 0
    n, d = _exact(m, e)
    bits_out, flags = _pack(s, n, d, width_o, eb_o, rm)
    return box | bits_out, flags
