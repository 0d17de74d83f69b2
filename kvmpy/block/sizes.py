"""Sizes as qemu-img reads and prints them: "10G", "+512M", "1.5k"; "1 GiB", "204 KiB"."""

from __future__ import annotations

import math

from kvmpy import units
from kvmpy.block.errors import BlockError

_UNITS = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
MAX_SIZE = (1 << 63) - 1


def parse_size(text: str) -> int:
    """A size with an optional binary suffix (k, M, G, T, P, E; case-insensitive), with qemu-img's messages.

    The parsing itself is kvmpy.units.parse_size (exact, bounded); only the wording is qemu-img's.
    """
    try:
        return units.parse_size(text, default_unit=1, maximum=MAX_SIZE)
    except units.SizeError as exc:
        if exc.too_large:
            raise BlockError("Image size must be less than 8 EiB!") from None
        raise BlockError("Invalid image size specified. You may use k, M, G, T, P or E suffixes "
                         "for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.") from None


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
