"""Buses: sorted ranges, conflicts, offsets and the all-ones answer for unknown addresses."""

from __future__ import annotations

import logging

import pytest

from kvmpy.devices.bus import Bus, BusConflictError, OffsetDevice


class Dev:
    def __init__(self) -> None:
        self.writes: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        return offset

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


def test_dispatch_is_relative_to_the_range_base() -> None:
    bus = Bus("pio")
    a, b = Dev(), Dev()
    bus.map(0x3F8, 8, a)
    bus.map(0x60, 1, b)
    bus.map(0x64, 1, OffsetDevice(b, 4))
    assert bus.read(0x3FA, 1) == 2
    assert bus.read(0x64, 1) == 4
    bus.write(0x3F8, 1, 0x41)
    assert a.writes == [(0, 1, 0x41)]


def test_overlaps_are_refused() -> None:
    bus = Bus("pio")
    bus.map(0x100, 0x10, Dev())
    for base, size in ((0x108, 4), (0xF8, 0x10), (0x100, 1), (0xF0, 0x100)):
        with pytest.raises(BusConflictError):
            bus.map(base, size, Dev())
    bus.map(0x110, 1, Dev())  # adjacent is fine


def test_unknown_addresses_read_all_ones_and_log_once(caplog) -> None:
    bus = Bus("mmio")
    caplog.set_level(logging.DEBUG, logger="kvmpy.devices.bus")
    for _ in range(3):
        assert bus.read(0x1234, 4) == 0xFFFFFFFF
        bus.write(0x1234, 2, 5)
    assert bus.read(0x9, 1) == 0xFF
    assert sum("0x1234" in r.message for r in caplog.records) == 1


def test_unmap() -> None:
    bus = Bus("pio")
    bus.map(0x80, 1, Dev())
    bus.unmap(0x80)
    assert bus.find(0x80) is None
    with pytest.raises(KeyError):
        bus.unmap(0x80)
