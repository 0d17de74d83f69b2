"""The virt board's mask ROM: loaded bytes read back little-endian, the rest reads zero, writes are ignored."""

from __future__ import annotations

import pytest

from kvmpy.devices.riscv.mrom import Mrom


def test_reads_writes_and_bounds():
    rom = Mrom(0x100)
    rom.load(bytes(range(1, 9)))
    assert rom.read(0, 8) == 0x0807060504030201 and rom.read(2, 2) == 0x0403 and rom.read(0x80, 4) == 0
    rom.write(0, 4, 0xFFFFFFFF)
    rom.reset()
    assert rom.read(0, 4) == 0x04030201
    with pytest.raises(ValueError):
        rom.load(bytes(0x101))
