"""Sizes as users type them ("512", "512M", "1.5G", "65536K", "10GiB"): kvmpy's one size parser.

The machine config (``-m``, YAML ``memory:``), kvmpy-migrate's bandwidth and
qemu-img's sizes all parse through ``parse_size``. Arithmetic is exact: the
number is read as a ``Decimal`` (no float rounding, no ``OverflowError``, no
limit on digits) and compared with ``maximum`` before any integer is built,
so hundreds of digits give a clear "too large" instead of a crash.
"""

from __future__ import annotations

import decimal
import re
from dataclasses import dataclass

# Binary multipliers of the suffix letters, as in QEMU's qemu_strtosz.
SUFFIXES = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50, "e": 1 << 60}
MAX_SIZE = (1 << 64) - 1  # no size kvmpy deals in is larger; callers pass their own tighter maximum

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([bkmgtpe]?)(i?b)?\s*", re.IGNORECASE | re.ASCII)


class SizeError(ValueError):
    """``text`` is not a size (``too_large`` False) or is larger than the caller's maximum (True)."""

    def __init__(self, text: object, too_large: bool) -> None:
        super().__init__(f"{'too large' if too_large else 'invalid'} size {str(text)[:40]!r}")
        self.too_large = too_large


@dataclass(frozen=True)
class _Parsed:
    number: decimal.Decimal
    multiplier: int


def _split(text: str, default_unit: int, decorated: bool) -> _Parsed:
    m = _SIZE_RE.fullmatch(text)
    if m is None:
        raise SizeError(text, False)
    digits, letter, tail = m.groups()
    if tail is not None:
        # "MiB"/"MB" (kvmpy's -m) only when the caller accepts decorations; "B" alone means bytes.
        if not decorated or (letter == "" and tail.lower() == "ib") or letter.lower() == "b":
            raise SizeError(text, False)
        letter = letter or "b"
    multiplier = SUFFIXES[letter.lower()] if letter else default_unit
    return _Parsed(decimal.Decimal(digits), multiplier)


def parse_size(text: str | int, *, default_unit: int = 1, maximum: int = MAX_SIZE,
               decorated: bool = False) -> int:
    """Bytes in ``text``: a number with an optional binary suffix (b k M G T P E, any case).

    A bare number counts ``default_unit`` bytes; an ``int`` is such a bare number.
    ``decorated`` also accepts "MiB"/"MB" spellings. Fractions are exact and round
    down to whole bytes ("1.5k" is 1536). Raises SizeError; never OverflowError.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise SizeError(text, False)
    if isinstance(text, int):
        if text < 0:
            raise SizeError(text, False)
        if text > maximum // max(default_unit, 1):  # compare before multiplying a huge int
            raise SizeError("<integer>", True)
        return text * default_unit
    parsed = _split(text, default_unit, decorated)
    digits = len(parsed.number.as_tuple().digits)
    ctx = decimal.Context(prec=digits + 40, rounding=decimal.ROUND_FLOOR, Emax=decimal.MAX_EMAX,
                          Emin=decimal.MIN_EMIN, traps=[decimal.InvalidOperation])
    exact = ctx.multiply(parsed.number, decimal.Decimal(parsed.multiplier))  # exact: prec covers every digit
    if exact > maximum:
        raise SizeError(text, True)
    return int(exact.to_integral_value(rounding=decimal.ROUND_FLOOR))
