"""The ACPI memory-hotplug controller (QEMU's registers at 0x0A00) and the GPE0 block."""

from __future__ import annotations

import pytest

from kvmpy.devices.acpi_gpe import GPE_MEMORY_HOTPLUG, AcpiGpe
from kvmpy.devices.acpi_memhp import MemoryHotplugController
from kvmpy.devices.device import DeviceStateError


class Line:
    def __init__(self) -> None:
        self.level = False

    def set_level(self, level: bool) -> None:
        self.level = level


def controller(slots: int = 4):
    line = Line()
    gpe = AcpiGpe(sci=line)
    osts: list = []
    ejects: list = []
    c = MemoryHotplugController(slots, lambda: gpe.raise_event(GPE_MEMORY_HOTPLUG), osts.append, ejects.append)
    return c, gpe, line, osts, ejects


def test_plug_reports_through_the_registers_and_gpe3() -> None:
    c, gpe, line, _, _ = controller()
    gpe.write(2, 2, 1 << GPE_MEMORY_HOTPLUG)  # the guest enables GPE 3
    c.plug(1, 0x1_2000_0000, 0x2000_0000, 0, "d0")
    assert line.level and gpe.read(0, 2) == 1 << 3
    c.write(0, 4, 1)  # select slot 1
    assert [c.read(off, 4) for off in (0, 4, 8, 0xC, 0x10)] == [0x2000_0000, 1, 0x2000_0000, 0, 0]
    assert c.read(0x14, 1) == 0b011  # enabled, insert event
    c.write(0x14, 1, 2)  # clear the insert event
    assert c.read(0x14, 1) == 0b001
    gpe.write(0, 2, 1 << 3)  # the guest acknowledges the GPE
    assert not line.level


def test_unplug_request_eject_and_ost() -> None:
    c, gpe, line, osts, ejects = controller()
    c.plug(0, 1 << 32, 1 << 27, 0, "d0", hotplug=False)
    assert gpe.read(0, 2) == 0  # a DIMM present at start raises no event
    c.request_unplug(0)
    c.write(0, 4, 0)
    assert c.read(0x14, 1) == 0b101
    c.write(4, 4, 3)
    c.write(8, 4, 0x80)  # _OST: eject request, status "in progress"
    assert osts == [{"device": "d0", "source": 3, "status": 0x80, "slot": "0", "slot-type": "DIMM"}]
    c.write(0x14, 1, 8)
    assert ejects == [0]
    c.unplug(0)
    c.write(0x14, 1, 8)  # ejecting an empty slot does nothing
    assert ejects == [0]


def test_bad_selector_and_unknown_offsets() -> None:
    c, *_ = controller(2)
    c.write(0, 4, 7)
    assert c.read(0x14, 1) == 0
    c.write(0x14, 1, 8)
    c.write(0, 4, 0)
    assert c.read(0x18 - 4, 4) == 0 and c.read(0x15, 1) == 0xFF


def test_state_round_trip_and_hostile_state() -> None:
    c, *_ = controller()
    c.plug(2, 1 << 32, 1 << 28, 0, "d2")
    state = c.save()
    d, *_ = controller()
    d.restore(state)
    assert d.save() == state
    for bad in ({"selector": 0, "slots": []}, {"selector": -1, "slots": state["slots"]},
                {"selector": 0, "slots": [dict(state["slots"][0], enabled=1)] * 4}):
        with pytest.raises(DeviceStateError):
            d.restore(bad)
    assert d.save() == state


def test_gpe_state() -> None:
    line = Line()
    g = AcpiGpe(sci=line)
    g.write(2, 1, 0x08)
    g.raise_event(3)
    h = AcpiGpe(sci=Line())
    h.restore(g.save())
    assert h.save() == {"sts": 8, "en": 8} and h.sci.level  # type: ignore[attr-defined]
    with pytest.raises(DeviceStateError):
        h.restore({"sts": 1 << 16, "en": 0})


def test_shared_sci_is_the_or_of_its_sources() -> None:
    from kvmpy.devices.irq import SharedIrq

    line = Line()
    shared = SharedIrq(line)
    a, b = shared.source(), shared.source()
    a.set_level(True)
    b.set_level(True)
    a.set_level(False)
    assert line.level
    b.set_level(False)
    assert not line.level
