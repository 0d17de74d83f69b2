"""CLINT: msip, mtimecmp and mtime registers, the MTIP/MSIP lines, reset and save/restore."""

from __future__ import annotations

import pytest

from kvmpy.devices.riscv.clint import MTIME_OFF, MTIMECMP_OFF, Clint


class Hart:
    def __init__(self) -> None:
        self.time = 100
        self.msip = self.mtip = None

    def clint(self) -> Clint:
        return Clint(lambda: self.time, self.set_time, self.set_msip, self.set_mtip)

    def set_time(self, v: int) -> None:
        self.time = v

    def set_msip(self, level: bool) -> None:
        self.msip = level

    def set_mtip(self, level: bool) -> None:
        self.mtip = level


def test_registers_and_lines():
    hart = Hart()
    c = hart.clint()
    c.write(0, 4, 0xFF)
    assert c.read(0, 4) == 1 and hart.msip is True           # only bit 0 is implemented
    c.write(MTIMECMP_OFF, 4, 200)                            # low half
    c.write(MTIMECMP_OFF + 4, 4, 0)
    assert c.read(MTIMECMP_OFF, 8) == 200 and hart.mtip is False
    hart.time = 200
    c.update()
    assert hart.mtip is True
    c.write(MTIME_OFF + 4, 4, 1)                             # mtime high half: time jumps by 2^32
    assert hart.time == (1 << 32) + 200 and c.read(MTIME_OFF + 4, 4) == 1
    assert c.read(0x8000, 4) == 0                            # a hole reads as zero


def test_reset_and_save_restore():
    hart = Hart()
    c = hart.clint()
    c.write(0, 4, 1)
    c.write(MTIMECMP_OFF, 8, 1 << 40)
    state = c.save()
    c.reset()
    assert (c.msip, c.mtimecmp, hart.msip, hart.mtip) == (0, 0, False, True)   # MTIP pending at boot
    other = Hart()
    d = other.clint()
    d.restore(state)
    assert (d.msip, d.mtimecmp, other.msip, other.mtip) == (1, 1 << 40, True, False)
    with pytest.raises(ValueError):
        d.restore({"msip": 2, "mtimecmp": 0})
    with pytest.raises(ValueError):
        d.restore({"msip": 0, "mtimecmp": 1 << 64})
    assert d.save() == state                                  # a bad state changed nothing
