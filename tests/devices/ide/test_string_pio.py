"""``rep insw`` on the IDE data port in one call (``read_string``) gives what the same reads one by one give.

SeaBIOS and GRUB move every disk and CD sector by PIO; kvmpy's vCPU loop hands a string read to
the port's device whole. Two identical channels run the same command: one is read access by
access, the other in strings of random sizes and counts, across sector and DRQ-block boundaries,
past the end of the transfer, and into a half-sector ATAPI byte limit. The bytes, the status and
the interrupt line must agree after every string.
"""

from __future__ import annotations

import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmpy.devices.bus import Bus
from kvmpy.devices.ide import atapi as a
from kvmpy.devices.ide import regs as r
from tests.devices.ide.host import IdeHost, make_image
from tests.devices.ide.test_atapi import make_iso

Reads = list[tuple[int, int]]
READS = st.lists(st.tuples(st.sampled_from([1, 2, 4]), st.integers(1, 1500)), min_size=1, max_size=8)


def _string(h: IdeHost, ch: int, size: int, count: int) -> bytes:
    dev, off = h.ports[h.base(ch)]
    return dev.read_string(off, size, count)


def _one_by_one(h: IdeHost, ch: int, size: int, count: int) -> bytes:
    return b"".join(h.inb(h.base(ch), size).to_bytes(size, "little") for _ in range(count))


def _compare(tmp: Path, start, reads: Reads, ch: int) -> None:
    hosts = [IdeHost(), IdeHost()]
    try:
        for h in hosts:
            if ch == 0:
                h.ide.channels[0].attach_disk(0, h.open(make_image(tmp / "d.raw", 1 << 20)))
            else:
                h.ide.channels[1].attach_cd(0, h.open(make_iso(tmp / "c.iso"), readonly=True))
            start(h)
        for size, count in reads:
            got = _string(hosts[1], ch, size, count)
            assert got == _one_by_one(hosts[0], ch, size, count)
            assert hosts[0].ide.channels[ch].cur.status == hosts[1].ide.channels[ch].cur.status
            assert hosts[0].lines[14 + ch].level == hosts[1].lines[14 + ch].level
    finally:
        for h in hosts:
            h.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sectors=st.integers(1, 4), multiple=st.booleans(), reads=READS)
def test_ata_pio_read_as_strings(tmp_path: Path, sectors: int, multiple: bool, reads: Reads) -> None:
    def start(h: IdeHost) -> None:
        if multiple:
            h.outb(0x1F2, 2)
            h.outb(0x1F7, r.CMD_SET_MULTIPLE)
        h.lba28(r.CMD_READ_MULTIPLE if multiple else r.CMD_READ, 9, sectors)

    _compare(tmp_path, start, reads, 0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sectors=st.integers(1, 3), limit=st.sampled_from([0xFFFE, 2048, 1000, 0x801]), reads=READS)
def test_atapi_read10_as_strings(tmp_path: Path, sectors: int, limit: int, reads: Reads) -> None:
    def start(h: IdeHost) -> None:
        h.packet(struct.pack(">BBIBHB", a.READ_10, 0, 5, 0, sectors, 0), limit=limit)

    _compare(tmp_path, start, reads, 1)


def test_a_device_without_read_string_is_read_access_by_access() -> None:
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def read(self, offset: int, size: int) -> int:
            self.n += 1
            return 0x0100 * self.n + offset

        def write(self, offset: int, size: int, value: int) -> None:
            pass

    bus = Bus("pio")
    bus.map(0x70, 2, Counter())
    assert bus.read_string(0x71, 2, 3) == struct.pack("<HHH", 0x101, 0x201, 0x301)
    assert bus.read_string(0x90, 1, 2) == b"\xff\xff"  # nothing mapped
