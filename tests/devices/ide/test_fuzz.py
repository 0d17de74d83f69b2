"""Hypothesis: any sequence of IDE port writes, bus-master programming and PRD tables leaves the VMM standing.

After every step the channel must still answer: status reads work, and a plain PIO read
of sector 0 on a fresh command returns the disk's bytes (no state wedged for good).
"""

from __future__ import annotations

import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmpy.devices.ide import regs as r
from tests.devices.ide.host import RAM_SIZE, IdeHost, make_image

PORTS = [0x1F0 + i for i in range(8)] + [0x3F6] + [0x170 + i for i in range(8)] + [0x376]
COMMANDS = st.sampled_from([0x00, 0x08, 0x20, 0x24, 0x25, 0x29, 0x30, 0x34, 0x35, 0x39, 0x40, 0x42, 0x91, 0xA0,
                            0xA1, 0xC4, 0xC5, 0xC6, 0xC8, 0xCA, 0xE5, 0xE7, 0xEC, 0xEF, 0xF8]) | st.integers(0, 255)
ADDRS = st.sampled_from([0, 0x1000, RAM_SIZE - 8, RAM_SIZE, 0xFFFFFFF0]) | st.integers(0, 0xFFFFFFFF)

step = st.one_of(
    st.tuples(st.just("port"), st.sampled_from(PORTS), st.integers(0, 0xFFFF), st.sampled_from([1, 2, 4])),
    st.tuples(st.just("cmd"), st.sampled_from([0x1F7, 0x177]), COMMANDS, st.just(1)),
    st.tuples(st.just("read"), st.sampled_from(PORTS), st.just(0), st.sampled_from([1, 2, 4])),
    st.tuples(st.just("bm"), st.integers(0, 15), st.integers(0, 0xFFFFFFFF), st.sampled_from([1, 2, 4])),
    st.tuples(st.just("prd"), ADDRS, st.integers(0, 0xFFFFFFFF), st.booleans()),
    st.tuples(st.just("packet"), st.binary(min_size=12, max_size=12), st.integers(0, 0xFFFF), st.booleans()),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, max_size=40))
def test_no_port_sequence_breaks_the_controller(tmp_path_factory, steps) -> None:  # noqa: ANN001
    tmp: Path = tmp_path_factory.mktemp("ide")
    h = IdeHost()
    h.ide.channels[0].attach_disk(0, h.open(make_image(tmp / "a.raw", 1 << 20)))
    iso = tmp / "a.iso"
    iso.write_bytes(b"\x5a" * 2048 * 8)
    h.ide.channels[1].attach_cd(0, h.open(iso, readonly=True))
    try:
        for kind, a, b, c in steps:
            if kind == "port":
                h.outb(a, b & ((1 << (8 * c)) - 1), c)
            elif kind == "cmd":
                h.outb(a, b)
            elif kind == "read":
                h.inb(a, c)
            elif kind == "bm":
                h.bm_out(a, b & ((1 << (8 * c)) - 1), c)
                h.bm_in(a, c)
            elif kind == "prd":
                h.prd_table(0x1000, [(a & 0xFFFFFFFF, b & 0xFFFF, c), (a ^ 0x80000000, b >> 16, True)])
                h.bm_out(4, 0x1000, 4)
            else:
                h.select(0, 1)
                h.outb(0x171, int(c))
                h.outb(0x174, b & 0xFF)
                h.outb(0x175, b >> 8)
                h.outb(0x177, r.CMD_PACKET)
                h.pio_out(a, ch=1)
                for _ in range(64):
                    if not h.status(1) & r.ST_DRQ:
                        break
                    h.inb(0x170, 2)
        state = h.ide.save()
        h.ide.validate(state)
        h.bm_out(0, 0)
        h.outb(0x3F6, r.CTL_SRST)
        h.outb(0x3F6, 0)
        h.lba28(r.CMD_READ, 0, 1)
        assert struct.unpack_from("<Q", h.pio_in(512))[0] == 0
    finally:
        h.close()
