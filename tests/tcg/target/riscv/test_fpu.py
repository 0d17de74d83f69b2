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
