"""GuestMemory: reads and writes across region boundaries, holes, and VMM-side dirty marking."""

from __future__ import annotations

import numpy as np
import pytest

from kvmpy.memory.address_space import AddressSpace
from kvmpy.memory.guest_memory import GuestMemory, GuestMemoryError
from kvmpy.memory.ramblock import RAMBlock
from kvmpy.memory.region import MemoryRegion

MiB = 1 << 20


@pytest.fixture
def two_dimms():
    a = RAMBlock.allocate("a", MiB)
    b = RAMBlock.allocate("b", MiB)
    root = MemoryRegion.container("sys", 1 << 32)
    root.add_subregion(0, MemoryRegion.ram_region("a", a))
    root.add_subregion(MiB, MemoryRegion.ram_region("b", b))  # adjacent: accesses may straddle
    root.add_subregion(4 * MiB, MemoryRegion.ram_region("a-again", a, 0, 4096, readonly=True))
    space = AddressSpace("sys", root)
    space.commit()
    return GuestMemory(space), a, b


def test_write_and_read_across_a_block_boundary(two_dimms) -> None:
    mem, a, b = two_dimms
    data = bytes(range(256)) * 64
    mem.write(MiB - 100, data)
    assert mem.read(MiB - 100, len(data)) == data
    assert bytes(a.array[-100:]) == data[:100]
    assert bytes(b.array[: len(data) - 100]) == data[100:]


def test_vmm_writes_mark_dirty_pages(two_dimms) -> None:
    mem, a, b = two_dimms
    mem.write(MiB - 1, b"xy")
    assert np.flatnonzero(a.take_vmm_dirty()).tolist() == [255]
    assert np.flatnonzero(b.take_vmm_dirty()).tolist() == [0]
    assert not any(a.vmm_dirty)  # taking clears


def test_holes_and_readonly_are_errors_without_partial_writes(two_dimms) -> None:
    mem, a, b = two_dimms
    with pytest.raises(GuestMemoryError, match="unmapped"):
        mem.read(2 * MiB - 2, 4)
    before = bytes(b.array[-2:])
    with pytest.raises(GuestMemoryError):
        mem.write(2 * MiB - 2, b"abcd")
    assert bytes(b.array[-2:]) == before
    with pytest.raises(GuestMemoryError, match="read-only"):
        mem.write(4 * MiB, b"z")
    with pytest.raises(GuestMemoryError):
        mem.read(-1, 1)
    with pytest.raises(GuestMemoryError):
        mem.read(1 << 60, 1)


def test_u32_u64_and_views(two_dimms) -> None:
    mem, a, _ = two_dimms
    mem.write_u64(0x1000, 0x1122334455667788)
    assert mem.read_u32(0x1000) == 0x55667788
    assert mem.read_u64(0x1000) == 0x1122334455667788
    assert mem.view(0x1000, 2).tolist() == [0x88, 0x77]
    with pytest.raises(GuestMemoryError):
        mem.view(MiB - 1, 2)


def test_check_refuses_holes_and_readonly_for_writes_without_touching_memory(two_dimms) -> None:
    mem, a, b = two_dimms
    mem.check(MiB - 100, 200)                 # straddles two RAM blocks
    mem.check(4 * MiB, 4096)                  # read-only RAM reads fine
    mem.check(0, 0)
    with pytest.raises(GuestMemoryError, match="read-only"):
        mem.check(4 * MiB, 1, write=True)
    with pytest.raises(GuestMemoryError, match="unmapped"):
        mem.check(2 * MiB - 2, 4)
    with pytest.raises(GuestMemoryError):
        mem.check((1 << 64) - 8, 16)
    assert not any(a.vmm_dirty) and not any(b.vmm_dirty)
