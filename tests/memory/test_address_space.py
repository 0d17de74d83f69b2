"""Flattening the MemoryRegion tree: priorities, aliases and holes."""

from __future__ import annotations

import pytest

from kvmpy.memory.address_space import AddressSpace, render
from kvmpy.memory.ramblock import RAMBlock
from kvmpy.memory.region import MemoryRegion

MiB = 1 << 20


class Recorder:
    def __init__(self) -> None:
        self.log: list[tuple] = []

    def read(self, offset: int, size: int) -> int:
        self.log.append(("r", offset, size))
        return 0x1234

    def write(self, offset: int, size: int, value: int) -> None:
        self.log.append(("w", offset, size, value))


def test_ram_alias_split_like_the_pc_machine() -> None:
    block = RAMBlock.allocate("ram", 8 * MiB)
    ram = MemoryRegion.ram_region("ram", block)
    root = MemoryRegion.container("sys", 1 << 40)
    root.add_subregion(0, MemoryRegion.alias("low", ram, 0, 6 * MiB))
    root.add_subregion(1 << 32, MemoryRegion.alias("high", ram, 6 * MiB, 2 * MiB))
    view = render(root)
    assert [(r.addr, r.size, r.ram_offset) for r in view.ranges] == [(0, 6 * MiB, 0), (1 << 32, 2 * MiB, 6 * MiB)]
    assert view.lookup(6 * MiB) is None
    hit = view.lookup((1 << 32) + 5)
    assert hit.ram_offset + ((1 << 32) + 5 - hit.addr) == 6 * MiB + 5


def test_higher_priority_punches_a_hole_and_equal_priority_later_wins() -> None:
    block = RAMBlock.allocate("ram", 4 * MiB)
    root = MemoryRegion.container("sys", 1 << 32)
    root.add_subregion(0, MemoryRegion.ram_region("ram", block))
    dev = Recorder()
    root.add_subregion(MiB, MemoryRegion.io("dev", 4096, dev), priority=1)
    view = render(root)
    assert [(r.addr, r.size, r.region.name) for r in view.ranges] == [
        (0, MiB, "ram"), (MiB, 4096, "dev"), (MiB + 4096, 3 * MiB - 4096, "ram")]
    assert view.ranges[2].ram_offset == MiB + 4096
    other = Recorder()
    root.add_subregion(2 * MiB, MemoryRegion.io("late", 4096, other))  # same priority as RAM, added later
    assert render(root).lookup(2 * MiB).region.name == "late"


def test_listeners_see_each_commit() -> None:
    root = MemoryRegion.container("sys", 1 << 32)
    a = AddressSpace("sys", root)
    seen = []
    a.add_listener(lambda view: seen.append(len(view.ranges)))
    block = RAMBlock.allocate("dimm", MiB)
    region = MemoryRegion.ram_region("dimm", block)
    root.add_subregion(16 * MiB, region)
    a.commit()
    root.del_subregion(region)
    a.commit()
    assert seen == [0, 1, 0]


def test_bad_trees_are_refused() -> None:
    root = MemoryRegion.container("sys", MiB)
    block = RAMBlock.allocate("ram", MiB)
    with pytest.raises(ValueError):
        root.add_subregion(4096, MemoryRegion.ram_region("ram", block))  # does not fit
    with pytest.raises(ValueError):
        MemoryRegion.alias("a", MemoryRegion.ram_region("ram", block), MiB - 4096, 8192)
    with pytest.raises(ValueError):
        RAMBlock.allocate("odd", 1000)
