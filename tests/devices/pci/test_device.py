"""The PCI function model: config-space masks, capabilities, BAR sizing and mapping, INTx, state."""

from __future__ import annotations

import pytest

from kvmpy.devices.bus import Bus, BusConflictError
from kvmpy.devices.device import DeviceStateError
from kvmpy.devices.pci.device import (BAR0, COMMAND, INTERRUPT_LINE, STATUS, STATUS_CAP_LIST, STATUS_INTERRUPT,
                                      Bar, BarKind, PciDevice, PciIdentity)
from kvmpy.devices.port80 import Port80


class BusBarSpace:
    """BARs on two real address-range buses (ports and memory), as a board maps them."""

    def __init__(self) -> None:
        self.io, self.mem = Bus("pio"), Bus("mmio")

    def map_bar(self, kind, base, size, device, name) -> bool:
        try:
            (self.io if kind is BarKind.IO else self.mem).map(base, size, device, name)
            return True
        except BusConflictError:
            return False

    def unmap_bar(self, kind, base) -> None:
        (self.io if kind is BarKind.IO else self.mem).unmap(base)


def make(space=None, **ident) -> tuple[PciDevice, Port80, Port80]:
    io_dev, mem_dev = Port80(), Port80()
    fn = PciDevice("test", PciIdentity(0x1234, 0x5678, 0x0200, revision=3, interrupt_pin=1, **ident),
                   (Bar(0, BarKind.IO, 32, io_dev), Bar(1, BarKind.MEM32, 0x1000, mem_dev),
                    Bar(2, BarKind.MEM64, 0x4000, mem_dev, prefetchable=True)))
    levels: list = []
    fn.plug(3 << 3, space or BusBarSpace(), lambda pin, level: levels.append((pin, level)))
    fn.levels = levels  # type: ignore[attr-defined]
    return fn, io_dev, mem_dev


def test_header_fields_are_read_only() -> None:
    fn, _, _ = make()
    before = fn.config_read(0, 4), fn.config_read(8, 4), fn.config_read(0x2C, 4), fn.config_read(0x3D, 1)
    for reg in (0x00, 0x08, 0x2C, 0x3C):
        fn.config_write(reg, 4, 0xFFFFFFFF)
    assert (fn.config_read(0, 4), fn.config_read(8, 4), fn.config_read(0x2C, 4), fn.config_read(0x3D, 1)) == before
    assert fn.config_read(0, 4) == 0x56781234 and fn.config_read(8, 4) == 0x02000003
    assert fn.config_read(INTERRUPT_LINE, 1) == 0xFF  # the line register is the guest's


def test_command_mask_and_status_write_one_to_clear() -> None:
    fn, _, _ = make()
    fn.config_write(COMMAND, 2, 0xFFFF)
    assert fn.config_read(COMMAND, 2) == 0x0507  # IO MEM MASTER SERR INTX_DISABLE, as QEMU
    fn.config[STATUS + 1] = 0xF9  # error bits the device latched
    fn.config_write(STATUS, 2, 0x0100)
    assert fn.config_read(STATUS, 2) == 0xF800
    fn.config_write(STATUS, 2, 0xFFFF)
    assert fn.config_read(STATUS, 2) == 0


def test_bar_sizing_reads_back_the_size_mask() -> None:
    fn, _, _ = make()
    for reg in range(BAR0, BAR0 + 24, 4):
        fn.config_write(reg, 4, 0xFFFFFFFF)
    assert fn.config_read(BAR0, 4) == 0xFFFFFFE1  # 32 ports, I/O space bit kept
    assert fn.config_read(BAR0 + 4, 4) == 0xFFFFF000  # 4 KiB, 32-bit memory
    assert fn.config_read(BAR0 + 8, 4) == 0xFFFFC00C  # 16 KiB, 64-bit prefetchable, low half
    assert fn.config_read(BAR0 + 12, 4) == 0xFFFFFFFF  # high half
    assert fn.config_read(BAR0 + 16, 4) == 0 and fn.config_read(BAR0 + 20, 4) == 0  # unimplemented


def test_bars_map_when_enabled_move_and_unmap() -> None:
    space = BusBarSpace()
    fn, io_dev, mem_dev = make(space)
    fn.config_write(BAR0, 4, 0xC000)
    fn.config_write(BAR0 + 4, 4, 0xFE000000)
    fn.config_write(BAR0 + 8, 4, 0x0)
    fn.config_write(BAR0 + 12, 4, 0x1)  # 64-bit BAR at 4 GiB
    assert space.io.ranges() == [] and space.mem.ranges() == []  # decoding off
    fn.config_write(COMMAND, 2, 0x3)
    assert space.io.find(0xC01F).device is io_dev and space.io.find(0xC020) is None
    assert space.mem.find(0xFE000FFF).device is mem_dev
    assert space.mem.find(0x100000000).device is mem_dev
    assert fn.mapped_bars() == {0: 0xC000, 1: 0xFE000000, 2: 0x100000000}
    fn.config_write(BAR0, 2, 0xD000)  # a word write moves the I/O BAR
    assert space.io.find(0xC000) is None and space.io.find(0xD000) is not None
    fn.config_write(COMMAND, 1, 0x2)  # I/O decoding off
    assert space.io.ranges() == [] and len(space.mem.ranges()) == 2
    fn.reset()
    assert space.mem.ranges() == [] and fn.mapped_bars() == {}


def test_unusable_bar_addresses_stay_unmapped() -> None:
    space = BusBarSpace()
    fn, _, _ = make(space)
    fn.config_write(COMMAND, 2, 0x3)
    fn.config_write(BAR0, 4, 0xFFFFFFE1)  # sizing value: beyond the 64 KiB port space
    fn.config_write(BAR0 + 4, 4, 0xFFFFF000)  # would end at 4 GiB exactly: allowed, fits
    fn.config_write(BAR0 + 8, 4, 0)  # address 0 is never decoded
    assert fn.mapped_bars() == {1: 0xFFFFF000}
    space.io.map(0x3F8, 8, Port80(), "serial")
    fn.config_write(BAR0, 4, 0x3E0)  # overlaps a port someone owns: refused, not an exception
    assert 0 not in fn.mapped_bars()


def test_capability_list_is_linked_and_read_only() -> None:
    fn, _, _ = make()
    fn.add_capability(0x09, 0x40, b"\x04\x11\x22")
    fn.add_capability(0x05, 0x50, b"\x00" * 8, writable=b"\x01" + b"\x00" * 7)
    assert fn.config_read(STATUS, 2) & STATUS_CAP_LIST
    assert fn.config_read(0x34, 1) == 0x50
    assert fn.config_read(0x50, 2) == 0x4005 and fn.config_read(0x40, 2) == 0x0009
    fn.config_write(0x40, 4, 0xFFFFFFFF)
    fn.config_write(0x50, 4, 0xFFFFFFFF)
    assert fn.config_read(0x40, 4) == 0x11040009 and fn.config_read(0x50, 4) == 0x00014005
    with pytest.raises(ValueError):
        fn.add_capability(0x09, 0x44, b"\0\0")  # overlaps


def test_intx_goes_to_the_bus_unless_disabled() -> None:
    fn, _, _ = make()
    fn.set_irq(True)
    assert fn.config_read(STATUS, 2) & STATUS_INTERRUPT
    fn.config_write(COMMAND, 2, 0x400)  # INTx disable drops the line, status still shows it
    fn.set_irq(False)
    fn.config_write(COMMAND, 2, 0)
    assert fn.levels == [(0, True), (0, False), (0, False), (0, False)]


def test_state_round_trip_remaps_and_refuses_read_only_changes() -> None:
    space = BusBarSpace()
    fn, _, _ = make(space)
    fn.config_write(BAR0, 4, 0xC000)
    fn.config_write(COMMAND, 2, 0x1)
    state = fn.save()
    fn.reset()
    assert space.io.ranges() == []
    fn.restore(state)
    assert space.io.find(0xC000) is not None
    bad = bytearray(state["config"])
    bad[0] ^= 1  # the vendor id
    with pytest.raises(DeviceStateError):
        fn.restore({"config": bytes(bad), "intx": False})
    with pytest.raises(DeviceStateError):
        fn.restore({"config": b"short", "intx": False})
    with pytest.raises(DeviceStateError):
        fn.restore({"config": state["config"], "intx": 1})
    assert fn.save() == state


@pytest.mark.parametrize("addr,size", [(-1, 4), (256, 1), (255, 4), (0, 3), (0, 8)])
def test_out_of_range_accesses_are_harmless(addr, size) -> None:
    fn, _, _ = make()
    before = bytes(fn.config)
    fn.config_write(addr, size, 0xFFFFFFFF)
    assert isinstance(fn.config_read(addr, size), int)
    assert bytes(fn.config)[:0x3C] == before[:0x3C]
