"""Hypothesis drives random 0xCF8/0xCFC traffic of every size and offset at the PC's PCI functions.

Invariants: no access raises, every read fits its size, the read-only identity of
each function never changes, BAR type bits survive any write, and the BARs that
are mapped are exactly the ones the config space says decode (on the real buses).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from kvmpy.devices.bus import Bus, OffsetDevice
from kvmpy.devices.pci.bus import PciBus, PciHost
from kvmpy.devices.pci.device import BAR0, Bar, BarKind, PciDevice, PciIdentity
from kvmpy.devices.pci.i440fx import I440fx
from kvmpy.devices.pci.piix3 import Piix3
from kvmpy.devices.port80 import Port80

from .test_device import BusBarSpace

IDENTITY = (0x00, 0x08, 0x0E, 0x2C, 0x34, 0x3D)  # id, rev/class, header type, subsystem, cap ptr, pin


class RecordingLine:
    def __init__(self, irq: int, levels: dict) -> None:
        self.irq, self.levels = irq, levels

    def set_level(self, level: bool) -> None:
        self.levels[self.irq] = level


def machine():
    space = BusBarSpace()
    bus = PciBus(space)
    levels: dict[int, bool] = {}
    bus.plug(I440fx(), 0)
    piix3 = bus.plug(Piix3(irq_line=lambda irq: RecordingLine(irq, levels)), 1)
    bus.router = piix3.set_intx
    nic = PciDevice("nic", PciIdentity(0x1AF4, 0x1000, 0x0200, interrupt_pin=1),
                    (Bar(0, BarKind.IO, 32, Port80()), Bar(1, BarKind.MEM32, 0x1000, Port80()),
                     Bar(2, BarKind.MEM64, 0x4000, Port80(), prefetchable=True)))
    nic.add_capability(0x09, 0x40, b"\x10" + b"\0" * 13)
    bus.plug(nic, 3)
    host = PciHost(bus)
    pio = Bus("pio")
    pio.map(0xCF8, 1, host)
    pio.map(0xCFA, 2, OffsetDevice(host, 2))
    pio.map(0xCFC, 4, OffsetDevice(host, 4))
    return pio, bus, space, piix3, nic, levels


access = st.tuples(
    st.sampled_from(["addr", "read", "write", "irq"]),
    st.integers(0xCF8, 0xCFF),
    st.sampled_from([1, 2, 4]),
    st.one_of(st.sampled_from([0, 0xFFFFFFFF, 0x80000000, 0x80001800, 0x80000800, 0x80001810]),
              st.integers(0, 0xFFFFFFFF)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(access, min_size=1, max_size=120))
def test_random_config_traffic_keeps_the_invariants(ops) -> None:
    pio, bus, space, piix3, nic, levels = machine()
    identity = {fn.devfn: [fn.config_read(r, 4 if r % 4 == 0 else 1) for r in IDENTITY] for fn in bus}
    for kind, port, size, value in ops:
        if kind == "addr":
            pio.write(0xCF8, 4, value)
        elif kind == "write":
            pio.write(port, size, value & ((1 << (8 * size)) - 1))
        elif kind == "irq":
            nic.set_irq(bool(value & 1))
        else:
            assert 0 <= pio.read(port, size) < 1 << (8 * size)
    for fn in bus:
        assert [fn.config_read(r, 4 if r % 4 == 0 else 1) for r in IDENTITY] == identity[fn.devfn]
    assert nic.config_read(BAR0, 1) & 0x3 == 0x1 and nic.config_read(BAR0 + 4, 1) & 0xF == 0x0
    assert nic.config_read(BAR0 + 8, 1) & 0xF == 0xC
    want = {b.index: nic.bar_address(b) for b in nic.bars.values()}
    assert nic.mapped_bars() == {i: a for i, a in want.items() if a is not None}
    assert {r.base for r in space.io.ranges()} | {r.base for r in space.mem.ranges()} == set(nic.mapped_bars().values())
    # An IRQ is asserted only if an enabled PIRQ routes the asserted INTA of slot 3 (PIRQ C) to it.
    route = piix3.route(2)
    asserted = {irq for irq, level in levels.items() if level}
    expect_high = nic.config_read(0x06, 2) & 0x8 and not nic.config_read(0x04, 2) & 0x400
    assert asserted == ({route} if expect_high and route is not None else set())
