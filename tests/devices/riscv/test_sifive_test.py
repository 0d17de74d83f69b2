"""sifive_test: QEMU's pass/fail/reset finisher values end the machine; others are ignored."""

from __future__ import annotations

import pytest

from kvmpy.devices.riscv.sifive_test import SifiveTest
from kvmpy.tcg.errors import MachineExit


@pytest.mark.parametrize("value,status,reset", [(0x5555, 0, False), ((42 << 16) | 0x3333, 42, False),
                                                (0x7777, 0, True)])
def test_finisher(value, status, reset):
    with pytest.raises(MachineExit) as exc:
        SifiveTest().write(0, 4, value)
    assert (exc.value.status, exc.value.reset) == (status, reset)


def test_other_writes_are_ignored():
    dev = SifiveTest()
    dev.write(0, 4, 0x1234)
    dev.write(4, 4, 0x5555)            # only offset 0 is the finisher
    dev.reset()
    assert dev.read(0, 4) == 0
