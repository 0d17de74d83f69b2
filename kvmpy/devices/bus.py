"""Address-range buses (port I/O and MMIO) that route guest accesses to devices.

A bus is a sorted map of non-overlapping ranges. Each device implements the
small ``Device`` protocol: ``read(offset, size) -> int`` and
``write(offset, size, value)``, where ``offset`` is relative to the start of the
range it was mapped at. Accesses that hit nothing read as all-ones and are
dropped on write, and each such address is logged once at debug level, so a
hostile guest can neither crash the VMM nor flood the log.
"""

from __future__ import annotations

import bisect
import logging
import threading
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)


class Device(Protocol):
    """What a bus needs from a device model."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


class OffsetDevice:
    """Presents a device at a shifted offset, e.g. one device mapped at two separate ranges."""

    def __init__(self, device: Device, delta: int) -> None:
        self.device = device
        self.delta = delta

    def read(self, offset: int, size: int) -> int:
        return self.device.read(offset + self.delta, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.device.write(offset + self.delta, size, value)


class BusConflictError(ValueError):
    """A device was mapped over a range that is already taken."""


@dataclass(frozen=True)
class BusRange:
    base: int
    size: int
    device: Device
    name: str

    @property
    def end(self) -> int:
        return self.base + self.size


@dataclass
class Bus:
    """A sorted address-range map; ``name`` is used in log messages ("pio", "mmio")."""

    name: str
    _starts: list[int] = field(default_factory=list)
    _ranges: list[BusRange] = field(default_factory=list)
    _unknown_seen: set[int] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # address -> BusRange (or None when unmapped), filled only by ``lookup()``; emptied in place
    # on every map/unmap, so a hot path may hold a reference and read it without a call.
    cache: dict[int, BusRange | None] = field(default_factory=dict)

    def map(self, base: int, size: int, device: Device, name: str = "") -> None:
        if size <= 0:
            raise ValueError(f"{self.name}: range size must be positive, got {size}")
        new = BusRange(base, size, device, name or type(device).__name__)
        with self._lock:
            i = bisect.bisect_right(self._starts, base)
            for neighbour in self._ranges[max(0, i - 1) : i + 1]:
                if neighbour.base < new.end and base < neighbour.end:
                    raise BusConflictError(
                        f"{self.name}: {new.name} at {base:#x}+{size:#x} overlaps "
                        f"{neighbour.name} at {neighbour.base:#x}+{neighbour.size:#x}"
                    )
            self._starts.insert(i, base)
            self._ranges.insert(i, new)
            self.cache.clear()

    def unmap(self, base: int) -> None:
        with self._lock:
            i = bisect.bisect_left(self._starts, base)
            if i == len(self._starts) or self._starts[i] != base:
                raise KeyError(f"{self.name}: nothing mapped at {base:#x}")
            del self._starts[i]
            del self._ranges[i]
            self.cache.clear()

    def find(self, addr: int) -> BusRange | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            r = self._ranges[i]
            if addr < r.end:
                return r
        return None

    def lookup(self, addr: int) -> BusRange | None:
        """``find()``, remembered in ``cache`` for the next access to the same address."""
        r = self.cache[addr] = self.find(addr)
        return r

    def ranges(self) -> list[BusRange]:
        return list(self._ranges)

    def read(self, addr: int, size: int) -> int:
        r = self.find(addr)
        if r is None:
            self._unknown(addr, "read", size)
            return (1 << (8 * size)) - 1
        return r.device.read(addr - r.base, size)

    def write(self, addr: int, size: int, value: int) -> None:
        r = self.find(addr)
        if r is None:
            self._unknown(addr, "write", size)
            return
        r.device.write(addr - r.base, size, value)

    def read_string(self, addr: int, size: int, count: int) -> bytes:
        """``count`` reads of ``size`` bytes at ``addr`` (a ``rep ins``), little-endian and back to back: in one
        call when the device has a ``read_string(offset, size, count)`` of its own (an IDE data port moving a
        sector), else read by read."""
        r = self.find(addr)
        bulk = getattr(r.device, "read_string", None) if r is not None else None
        if bulk is not None:
            return bulk(addr - r.base, size, count)
        return b"".join(self.read(addr, size).to_bytes(size, "little") for _ in range(count))

    def _unknown(self, addr: int, kind: str, size: int) -> None:
        if addr not in self._unknown_seen and len(self._unknown_seen) < 4096:
            self._unknown_seen.add(addr)
            log.debug("%s: unhandled %s of %d bytes at %#x", self.name, kind, size, addr)
