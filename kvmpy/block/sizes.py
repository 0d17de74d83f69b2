"""Sizes as qemu-img reads and prints them: "10G", "+512M", "1.5k"; "1 GiB", "204 KiB"."""

from __future__ import annotations

import math
import re

from kvmpy.block.errors import BlockError

_SUFFIX = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
           "p": 1 << 50, "e": 1 << 60}
_UNITS = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
MAX_SIZE = (1 << 63) - 1


def parse_size(text: str) -> int:
    """Parse a size with an optional binary suffix (k, M, G, T, P, E; case-insensitive)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([bBkKmMgGtTpPeE]?)\s*", text)
    if not m:
        raise BlockError("Invalid image size specified. You may use k, M, G, T, P or E suffixes "
                         "for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.")
    num, suf = m.groups()
    mult = _SUFFIX[suf.lower()]
    if "." in num:
        value = int(float(num) * mult)
    else:
        value = int(num) * mult
    if value > MAX_SIZE:
        raise BlockError("Image size must be less than 8 EiB!")
    return value


def human_size(n: int) -> str:
    """qemu's size_to_str(): three significant digits, switching unit at 1000 of the smaller one."""
    if n <= 0:
        return "0 B"
    _, e = math.frexp(n / (1000.0 / 1024.0))
    i = max(0, (e - 1) // 10)
    i = min(i, len(_UNITS) - 1)
    return f"{_format_g(n / (1 << (i * 10)))} {_UNITS[i]}B"


def _format_g(v: float) -> str:
    return "%0.3g" % v
