"""The PC memory map matches what QEMU's pc machine and SeaBIOS report."""

import pytest

from kvmpy.loader.e820 import E820_RAM, pc_e820, pci_holes, split_ram

MiB = 1 << 20


def test_small_guest() -> None:
    m = [(e.addr, e.size, e.type) for e in pc_e820(64 * MiB, amd=False)]
    assert m == [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2), (0x100000, 0x3EE0000, 1),
                 (0x3FE0000, 0x20000, 2), (0xFEFFC000, 0x4000, 2), (0xFFFC0000, 0x40000, 2)]


def test_large_guest_splits_at_3g_and_amd_hole() -> None:
    assert split_ram(4096 * MiB) == (3072 * MiB, 1024 * MiB)
    assert split_ram(3500 * MiB) == (3500 * MiB, 0)
    entries = pc_e820(4096 * MiB, amd=True)
    ram = [(e.addr, e.size) for e in entries if e.type == E820_RAM]
    assert ram[-1] == (1 << 32, 1 << 30)
    assert entries[-1].addr == 0xFD00000000


@pytest.mark.parametrize("memory", [128 << 20, 0xDFF00000, 0xE0000000, 6 << 30])
def test_the_pci_holes_are_where_qemu_puts_them_and_miss_ram(memory):
    holes = pci_holes(memory)
    below, above = split_ram(memory)
    assert holes.low == (below, 0xFEBFFFFF)
    assert holes.high[0] % (1 << 30) == 0 and holes.high[0] >= (1 << 32) + above
    assert holes.high[1] - holes.high[0] + 1 == 1 << 31
    for e in pc_e820(memory, amd=False):
        if e.type == E820_RAM:
            for lo, hi in (holes.low, holes.high):
                assert e.addr + e.size <= lo or e.addr > hi, (e, lo, hi)
