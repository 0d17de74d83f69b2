"""CLINT: msip, mtimecmp and mtime registers, the MTIP/MSIP lines, reset and save/restore."""

from __future__ import annotations

import pytest

from kvmpy.devices.riscv.clint import MTIME_OFF, MTIMECMP_OFF, Clint


class Hart:
    def __init__(self) -> None:
        self.time = 100
        self.msip = self.mtip = None

    def clint(self) -> Clint:
        return Clint(lambda: self.time, self.set_time, [self.set_msip], [self.set_mtip])

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
    assert (c.msip, c.mtimecmp, hart.msip, hart.mtip) == ([0], [0], False, True)   # MTIP pending at boot
    other = Hart()
    d = other.clint()
    d.restore(state)
    assert (d.msip, d.mtimecmp, other.msip, other.mtip) == ([1], [1 << 40], True, False)
    with pytest.raises(ValueError):
        d.restore({"msip": [2], "mtimecmp": [0]})
    with pytest.raises(ValueError):
        d.restore({"msip": [0], "mtimecmp": [1 << 64]})
    with pytest.raises(ValueError):
        d.restore({"msip": [0, 0], "mtimecmp": [0, 0]})        # state of a machine with two harts
    assert d.save() == state                                  # a bad state changed nothing


class Harts:
    """Several harts' MSIP/MTIP lines on one CLINT, and the shared mtime."""

    def __init__(self, n: int) -> None:
        self.time = 100
        self.msip: list[bool | None] = [None] * n
        self.mtip: list[bool | None] = [None] * n
        self.clint = Clint(lambda: self.time, self.set_time,
                           [lambda lv, i=i: self.msip.__setitem__(i, lv) for i in range(n)],
                           [lambda lv, i=i: self.mtip.__setitem__(i, lv) for i in range(n)])

    def set_time(self, v: int) -> None:
        self.time = v


def test_each_hart_has_its_msip_and_mtimecmp_at_qemus_offsets():
    h = Harts(4)
    c = h.clint
    c.write(4 * 2, 4, 1)                                     # hart 2's msip
    assert h.msip == [None, None, True, None] and c.read(8, 4) == 1 and c.read(0, 4) == 0
    c.write(MTIMECMP_OFF + 8 * 3, 8, 1000)                   # hart 3's mtimecmp
    c.write(MTIMECMP_OFF + 8 * 1 + 4, 4, 1)                  # hart 1's high half
    assert c.read(MTIMECMP_OFF + 8 * 3, 8) == 1000 and c.read(MTIMECMP_OFF + 8, 8) == 1 << 32
    assert h.mtip == [True, False, True, False]              # 0 and 2 still have mtimecmp 0 <= mtime
    h.time = 1000
    c.update()
    assert h.mtip == [True, False, True, True]
    assert c.read(MTIME_OFF, 8) == 1000
    c.reset()
    assert h.msip == [False] * 4 and h.mtip == [True] * 4


@pytest.mark.parametrize("offset", [4 * 2, 4 * 2 + 3, 0x3FFC, MTIMECMP_OFF + 8 * 2, MTIMECMP_OFF + 8 * 2 + 4,
                                    MTIME_OFF - 8, 0x7FF8])
def test_registers_of_harts_that_do_not_exist_read_zero_and_ignore_writes(offset):
    h = Harts(2)
    c = h.clint
    before = c.save()
    c.write(offset, 4, 0xFFFFFFFF)
    assert c.read(offset, 4) == 0 and c.save() == before and h.msip == [None, None]


def test_hart_count_is_checked():
    with pytest.raises(ValueError):
        Clint(lambda: 0, lambda v: None, [], [])
    with pytest.raises(ValueError):
        Clint(lambda: 0, lambda v: None, [lambda lv: None], [])
