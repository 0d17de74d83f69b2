"""kvmpy.units.parse_size: the one size parser; exact arithmetic and a clear refusal for any length of digits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from kvmpy.units import MAX_SIZE, SizeError, parse_size

MiB = 1 << 20


def test_suffixes_and_fractions_are_exact() -> None:
    assert parse_size("512") == 512
    assert parse_size("512", default_unit=MiB) == 512 * MiB
    assert parse_size("1.5k") == 1536
    assert parse_size(".5M") == 512 * 1024
    assert parse_size("3E") == 3 << 60
    assert parse_size("0.1k") == 102  # floor of 102.4, computed without a float
    assert parse_size("9007199254740993") == 9007199254740993  # 2**53 + 1: a float would lose the 1
    assert parse_size("512MiB", decorated=True) == parse_size("512MB", decorated=True) == 512 * MiB
    assert parse_size("512B") == 512


@pytest.mark.parametrize("text", ["", "abc", "-1", "1.2.3", "12Q", "1 2", "512MiB", "1e9", "٣"])
def test_not_a_size(text: str) -> None:
    with pytest.raises(SizeError) as info:
        parse_size(text)
    assert not info.value.too_large


@pytest.mark.parametrize("text", ["9" * 400, "9" * 5000 + "G", "1" + "0" * 30 + ".5", "16E"])
def test_hundreds_of_digits_are_too_large_not_a_crash(text: str) -> None:
    with pytest.raises(SizeError) as info:
        parse_size(text)
    assert info.value.too_large


def test_integers_are_bounded_before_multiplying() -> None:
    with pytest.raises(SizeError):
        parse_size(10 ** 4000, default_unit=MiB)
    with pytest.raises(SizeError):
        parse_size(True)
    assert parse_size(64, default_unit=MiB) == 64 * MiB


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60) | st.from_regex(r"\d{1,6000}(\.\d{0,300})?[kKmMgGtTpPeE]?", fullmatch=True))
def test_any_text_is_a_size_or_a_size_error(text: str) -> None:
    try:
        value = parse_size(text, default_unit=MiB, decorated=True)
    except SizeError:
        return
    assert 0 <= value <= MAX_SIZE
