"""AddressSpace: flattens a MemoryRegion tree into a FlatView and tells listeners when it changes.

The FlatView is a sorted list of non-overlapping ranges, each pointing at a
leaf region (RAM or I/O) and an offset inside it. Listeners (the KVM slot
manager, a board's MMIO router) receive every new FlatView on ``commit()``.
This module deals only in regions; routing device accesses is the board's job.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from typing import Callable

from kvmpy.memory.region import MemoryRegion, RegionKind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FlatRange:
    addr: int
    size: int
    region: MemoryRegion  # a RAM or IO leaf
    offset: int  # where ``addr`` falls inside ``region``

    @property
    def end(self) -> int:
        return self.addr + self.size

    @property
    def is_ram(self) -> bool:
        return self.region.kind is RegionKind.RAM

    @property
    def ram_offset(self) -> int:
        """Offset of ``addr`` inside the backing RAMBlock."""
        return self.region.ram_offset + self.offset


@dataclass(frozen=True)
class FlatView:
    ranges: tuple[FlatRange, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", [r.addr for r in self.ranges])

    def lookup(self, addr: int) -> FlatRange | None:
        i = bisect.bisect_right(self._starts, addr) - 1  # type: ignore[attr-defined]
        if i >= 0 and addr < self.ranges[i].end:
            return self.ranges[i]
        return None

    def ram_ranges(self) -> list[FlatRange]:
        return [r for r in self.ranges if r.is_ram]


class _Covered:
    """Disjoint, sorted intervals already claimed by higher-priority regions."""

    def __init__(self) -> None:
        self.spans: list[tuple[int, int]] = []

    def gaps(self, lo: int, hi: int) -> list[tuple[int, int]]:
        out = []
        cur = lo
        for s, e in self.spans:
            if e <= cur:
                continue
            if s >= hi:
                break
            if s > cur:
                out.append((cur, min(s, hi)))
            cur = max(cur, e)
            if cur >= hi:
                break
        if cur < hi:
            out.append((cur, hi))
        return out

    def add(self, lo: int, hi: int) -> None:
        bisect.insort(self.spans, (lo, hi))


def render(root: MemoryRegion) -> FlatView:
    covered = _Covered()
    pieces: list[FlatRange] = []

    def walk(region: MemoryRegion, base: int, lo: int, hi: int, depth: int) -> None:
        if lo >= hi:
            return
        if depth > 32:
            raise ValueError(f"memory tree nests too deeply at {region.name!r} (alias loop?)")
        if region.kind is RegionKind.CONTAINER:
            # Higher priority first; among equals the most recently added wins, as in QEMU.
            order = sorted(enumerate(region.subregions), key=lambda t: (-t[1].priority, -t[0]))
            for _, sub in order:
                start = base + sub.offset
                walk(sub.region, start, max(lo, start), min(hi, start + sub.region.size), depth + 1)
        elif region.kind is RegionKind.ALIAS:
            assert region.alias_of is not None
            walk(region.alias_of, base - region.alias_offset, lo, hi, depth + 1)
        else:
            for g_lo, g_hi in covered.gaps(lo, hi):
                pieces.append(FlatRange(g_lo, g_hi - g_lo, region, g_lo - base))
                covered.add(g_lo, g_hi)

    walk(root, 0, 0, root.size, 0)
    pieces.sort(key=lambda r: r.addr)
    merged: list[FlatRange] = []
    for p in pieces:
        last = merged[-1] if merged else None
        if last and last.region is p.region and last.end == p.addr and last.offset + last.size == p.offset:
            merged[-1] = FlatRange(last.addr, last.size + p.size, last.region, last.offset)
        else:
            merged.append(p)
    return FlatView(tuple(merged))


FlatViewListener = Callable[[FlatView], None]


class AddressSpace:
    """A root region plus its current FlatView; call ``commit()`` after changing the tree."""

    def __init__(self, name: str, root: MemoryRegion) -> None:
        self.name = name
        self.root = root
        self.flatview = FlatView(())
        self._listeners: list[FlatViewListener] = []

    def add_listener(self, listener: FlatViewListener) -> None:
        self._listeners.append(listener)
        listener(self.flatview)

    def commit(self) -> None:
        view = render(self.root)
        self.flatview = view
        for listener in self._listeners:
            listener(view)
