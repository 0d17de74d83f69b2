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


def test_two_contexts_per_hart_at_qemus_offsets():
    out = [[] for _ in range(8)]                          # 4 harts: contexts 2N (M) and 2N+1 (S)
    plic = Plic([o.append for o in out])
    src = plic.line(5)
    plic.write(4 * 5, 4, 1)
    ctx = 2 * 3 + 1                                       # hart 3, S-mode
    plic.write(0x2000 + 0x80 * ctx, 4, 1 << 5)
    src.set_level(True)
    assert [o[-1] for o in out] == [False] * 7 + [True]
    assert plic.read(0x2000 + 0x80 * ctx, 4) == 1 << 5
    plic.write(0x200000 + 0x1000 * ctx, 4, 1)             # threshold 1: priority 1 no longer exceeds it
    assert out[ctx][-1] is False and plic.read(0x200000 + 0x1000 * ctx, 4) == 1
    plic.write(0x200000 + 0x1000 * ctx, 4, 0)
    assert plic.read(0x200004 + 0x1000 * ctx, 4) == 5 and out[ctx][-1] is False     # claimed
    plic.write(0x200004 + 0x1000 * ctx, 4, 5)                                       # completed, still high
    assert out[ctx][-1] is True


@pytest.mark.parametrize("offset", [0x2000 + 0x80 * 4, 0x2000 + 0x80 * 100 + 4, 0x200000 + 0x1000 * 4,
                                    0x200004 + 0x1000 * 4, 0x200000 + 0x1000 * 1023, 0x5FFFFC])
def test_contexts_of_harts_that_do_not_exist_read_zero_and_ignore_writes(offset):
    plic = Plic([lambda lv: None] * 4)                    # 2 harts
    plic.write(4 * 3, 4, 7)
    plic.line(3).set_level(True)
    before = plic.save()
    plic.write(offset, 4, 0xFFFFFFFF)
    assert plic.read(offset, 4) == 0 and plic.save() == before
