"""PLIC: priorities, enables, thresholds, claim/complete of level-triggered sources, reset and state."""

from __future__ import annotations

import pytest

from kvmpy.devices.riscv.plic import NUM_SOURCES, Plic

ENABLE0, THRESHOLD0, CLAIM0 = 0x2000, 0x200000, 0x200004
ENABLE1, CLAIM1 = 0x2080, 0x201004


@pytest.fixture
def lines():
    return [[], []]


@pytest.fixture
def plic(lines) -> Plic:
    return Plic([lines[0].append, lines[1].append])


def test_claim_complete_and_threshold(plic, lines):
    uart, disk = plic.line(10), plic.line(3)
    plic.write(4 * 10, 4, 2)
    plic.write(4 * 3, 4, 5)
    plic.write(ENABLE0, 4, (1 << 10) | (1 << 3))
    uart.set_level(True)
    disk.set_level(True)
    assert lines[0][-1] is True and lines[1][-1] is False     # context 1 has nothing enabled
    assert plic.read(0x1000, 4) == (1 << 10) | (1 << 3)      # pending bits
    assert plic.read(CLAIM0, 4) == 3                          # highest priority first
    assert plic.read(CLAIM0, 4) == 10
    assert plic.read(CLAIM0, 4) == 0 and lines[0][-1] is False
    plic.write(CLAIM0, 4, 10)                                 # complete while still high: pending again
    assert plic.read(0x1000, 4) == 1 << 10 and lines[0][-1] is True
    plic.write(THRESHOLD0, 4, 2)                              # priority must exceed the threshold
    assert lines[0][-1] is False and plic.read(CLAIM0, 4) == 0
    with pytest.raises(ValueError):
        plic.line(NUM_SOURCES)


def test_reset_and_save_restore(plic, lines):
    plic.write(4 * 7, 4, 3)
    plic.write(ENABLE1, 4, 1 << 7)
    plic.line(7).set_level(True)
    assert lines[1][-1] is True
    state = plic.save()
    plic.reset()
    assert plic.save()["priority"] == [0] * NUM_SOURCES and lines[1][-1] is False
    plic.restore(state)
    assert lines[1][-1] is True and plic.read(CLAIM1, 4) == 7
    bad = dict(state, priority=state["priority"][:-1])
    with pytest.raises(ValueError):
        plic.restore(bad)
    with pytest.raises(ValueError):
        plic.restore(dict(state, pending=1))                  # source 0 does not exist
    assert plic.save()["claimed"] == 1 << 7                   # a bad state changed nothing
