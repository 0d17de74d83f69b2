"""The board's MMIO router: I/O regions of each new FlatView become a bus with region-relative offsets."""

from __future__ import annotations

from kvmpy.boards.mmio import MmioRouter
from kvmpy.memory.address_space import AddressSpace
from kvmpy.memory.region import MemoryRegion


class Recorder:
    def __init__(self) -> None:
        self.log: list[tuple] = []

    def read(self, offset: int, size: int) -> int:
        self.log.append(("r", offset, size))
        return 0x1234

    def write(self, offset: int, size: int, value: int) -> None:
        self.log.append(("w", offset, size, value))


def test_mmio_dispatch_uses_region_relative_offsets() -> None:
    root = MemoryRegion.container("sys", 1 << 32)
    dev = Recorder()
    root.add_subregion(0xD0000000, MemoryRegion.io("dev", 0x1000, dev))
    a = AddressSpace("sys", root)
    mmio = MmioRouter()
    a.add_listener(mmio)
    a.commit()
    assert mmio.read(0xD0000010, 4) == 0x1234
    mmio.write(0xD0000020, 2, 7)
    assert dev.log == [("r", 0x10, 4), ("w", 0x20, 2, 7)]
    assert mmio.read(0xE0000000, 4) == 0xFFFFFFFF  # unassigned


def test_a_region_moved_away_no_longer_answers() -> None:
    root = MemoryRegion.container("sys", 1 << 32)
    dev = Recorder()
    region = MemoryRegion.io("dev", 0x1000, dev)
    root.add_subregion(0xD0000000, region)
    a = AddressSpace("sys", root)
    mmio = MmioRouter()
    a.add_listener(mmio)
    a.commit()
    root.del_subregion(region)
    a.commit()
    assert mmio.read(0xD0000000, 4) == 0xFFFFFFFF
    assert dev.log == []


def test_an_alias_into_the_middle_of_a_device_keeps_its_offset() -> None:
    root = MemoryRegion.container("sys", 1 << 32)
    dev = Recorder()
    io = MemoryRegion.io("dev", 0x1000, dev)
    root.add_subregion(0xE0000000, MemoryRegion.alias("dev-hi", io, 0x800, 0x800))
    a = AddressSpace("sys", root)
    mmio = MmioRouter()
    a.add_listener(mmio)
    a.commit()
    mmio.read(0xE0000004, 1)
    assert dev.log == [("r", 0x804, 1)]
