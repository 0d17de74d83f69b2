"""The PC board: its device table, the buses it wires, and a system reset that resets every device."""

from __future__ import annotations

import dataclasses
import time

import pytest

from kvmpy.boards.pc import COM1_PORT, PC_DEVICES, DeviceSlot, PcBoard, Window
from kvmpy.config import DebugExitConfig, MachineConfig
from kvmpy.devices.chardev import BufferBackend
from kvmpy.devices.port80 import Port80
from kvmpy.lifecycle import MachineEvent
from kvmpy.machine import Machine
from kvmpy.vcpu.thread import VcpuEvent
from tests.guests.build import build_guest

pytestmark = pytest.mark.kvm_host

MOVING = {"ticks", "offset"}  # the PM timer and the RTC's clock run on their own


def _config(**kw) -> MachineConfig:
    base = dict(kernel=build_guest("hello"), memory=32 << 20, serial="stdio", no_reboot=True,
                debug_exit=DebugExitConfig(0xF4, 4))
    base.update(kw)
    return MachineConfig(**base).validate()


def _board(cfg: MachineConfig, devices=PC_DEVICES) -> tuple[PcBoard, list, list]:
    posted: list[MachineEvent] = []
    vcpu_events: list[VcpuEvent] = []
    return PcBoard(cfg, posted.append, vcpu_events.append, BufferBackend(), devices), posted, vcpu_events


def _states(devices: dict) -> dict:
    return {n: {k: v for k, v in d.save().items() if k not in MOVING} for n, d in devices.items()}


def test_the_table_builds_and_maps_every_device() -> None:
    board, posted, _ = _board(_config())
    try:
        # every line but the memory-hotplug controller, which exists only with -m slots= (as in QEMU),
        # fw_cfg, which exists only for firmware boots (no -kernel): tests/boards/test_pc_firmware.py, and the
        # IDE function, which exists only with an IDE drive: tests/devices/ide/test_firmware_boot.py
        assert list(board.devices) == [s.name for s in PC_DEVICES
                                       if s.name not in ("acpi-memhp", "fw_cfg", "piix3-ide")]
        names = {r.name: (r.base, r.size) for r in board.pio.ranges()}
        assert names["serial0"] == (COM1_PORT, 8)
        assert names["i8042-data"] == (0x60, 1) and names["i8042-cmd"] == (0x64, 1)
        assert names["rtc"] == (0x70, 2) and names["isa-debug-exit"] == (0xF4, 4)
        board.pio.write(0xF4, 1, 3)  # the debug-exit device reports through post
        assert posted == [MachineEvent("exit", 7)]
        board.pio.write(0x64, 1, 0xFE)  # i8042 pulse-reset command, via the offset window
        assert posted[-1] == MachineEvent("reset", message="i8042 reset")
    finally:
        board.close()


def test_configuration_decides_which_devices_exist_and_where() -> None:
    board, _, _ = _board(_config(debug_exit=None, serial="none"))
    try:
        assert "isa-debug-exit" not in board.devices
        assert "serial0" in board.devices  # kept for its state, but "-serial none" maps no COM1
        assert board.pio.find(COM1_PORT) is None
    finally:
        board.close()


def test_a_new_device_is_one_line_in_the_table() -> None:
    extra = DeviceSlot("post-code", lambda b: Port80(), pio=(Window(0x84, 1),))
    board, _, _ = _board(_config(), PC_DEVICES + (extra,))
    try:
        board.pio.write(0x84, 1, 0x42)
        assert board.devices["post-code"].save() == {"last": 0x42}
        board.reset_devices()
        assert board.devices["post-code"].save() == {"last": 0}
    finally:
        board.close()


def test_the_mmio_router_hears_the_boards_memory_map() -> None:
    board, _, _ = _board(_config())
    try:
        assert board.mmio.read(0xD0000000, 4) == 0xFFFFFFFF  # nothing there
    finally:
        board.close()


def test_system_reset_resets_every_device_in_the_table_including_the_rtc() -> None:
    machine = Machine(_config(), console=BufferBackend())
    try:
        devices = machine.board.devices
        power_on = _states(devices)
        pio = machine.board.pio
        pio.write(COM1_PORT + 7, 1, 0x5A)  # serial scratch register
        pio.write(0x64, 1, 0x60)  # i8042: write command byte...
        pio.write(0x60, 1, 0x00)  # ...as 0
        pio.write(0x70, 1, 0x0B)  # RTC register B: periodic + alarm interrupt enables
        pio.write(0x71, 1, 0x62)
        pio.write(0x80, 1, 0x99)  # port 80
        pio.write(0x600 + 2, 2, 0x0100)  # ACPI PM1_EN
        pio.write(0xCF9, 1, 0x02)  # reset control, without RST_CPU
        pio.write(0xCF8, 4, 0x80000860)  # PIIX3 PIRQRC[A] -> IRQ 11
        pio.write(0xCFC, 1, 11)
        pio.write(0xCF8, 4, 0x80000004)  # i440FX command register
        pio.write(0xCFC, 2, 0x0006)
        changed = _states(devices)
        assert all(changed[n] != power_on[n] for n in ("serial0", "i8042", "rtc", "port80", "acpi-pm",
                                                        "reset-control", "pci-host", "i440fx", "piix3")), changed
        machine.reset()
        assert _states(devices) == power_on
    finally:
        machine.close()


def test_reset_keeps_the_rtc_time_and_cmos_memory() -> None:
    machine = Machine(_config(), console=BufferBackend())
    try:
        rtc = machine.board.devices["rtc"]
        pio = machine.board.pio
        pio.write(0x70, 1, 0x40)
        pio.write(0x71, 1, 0xAB)  # a CMOS memory byte
        before = rtc.save()
        machine.reset()
        after = rtc.save()
        assert after["cmos"][0x40] == 0xAB and after["offset"] == before["offset"]
    finally:
        machine.close()


def test_the_board_is_built_from_a_config_it_never_changes() -> None:
    cfg = _config()
    snapshot = dataclasses.asdict(cfg)
    machine = Machine(cfg, console=BufferBackend())
    try:
        machine.migration.start_incoming("defer")
        assert dataclasses.asdict(cfg) == snapshot  # -incoming no longer flips start_paused
    finally:
        machine.close()


def _cfg_write(pio, devfn: int, reg: int, size: int, value: int) -> None:
    pio.write(0xCF8, 4, 0x80000000 | (devfn << 8) | (reg & 0xFC))
    pio.write(0xCFC + (reg & 3), size, value)


def test_pci_config_ports_sit_around_the_reset_register() -> None:
    board, posted, _ = _board(_config())
    try:
        names = {r.name: (r.base, r.size) for r in board.pio.ranges()}
        assert names["reset-control"] == (0xCF9, 1) and names["pci-conf-data"] == (0xCFC, 4)
        board.pio.write(0xCF8, 4, 0x80000800)
        assert board.pio.read(0xCF8, 4) == 0x80000800 and board.pio.read(0xCFC, 4) == 0x70008086
        board.pio.write(0xCF9, 1, 0x06)  # still the reset control register
        assert posted == [MachineEvent("reset", message="0xcf9 reset")]
        assert [(f.devfn, f.identity.device) for f in board.pci] == [(0, 0x1237), (8, 0x7000)]
    finally:
        board.close()


def test_bars_appear_on_the_boards_buses_below_ram() -> None:
    from kvmpy.devices.pci.device import Bar, BarKind, PciDevice, PciIdentity

    board, _, _ = _board(_config())
    try:
        io_dev, mem_dev = Port80(), Port80()
        fn = board.pci.plug(PciDevice("test", PciIdentity(0x1234, 0x11, 0x0200),
                                      (Bar(0, BarKind.IO, 16, io_dev), Bar(1, BarKind.MEM32, 0x1000, mem_dev))), 3)
        _cfg_write(board.pio, 0x18, 0x10, 4, 0xC040)
        _cfg_write(board.pio, 0x18, 0x14, 4, 0xFEB00000)
        _cfg_write(board.pio, 0x18, 0x04, 2, 0x3)
        assert board.pio.find(0xC04F).device is io_dev
        board.pio.write(0xC040, 1, 0x5A)
        assert io_dev.save() == {"last": 0x5A}
        board.mmio.write(0xFEB00000, 1, 0x77)
        assert mem_dev.save() == {"last": 0x77}
        _cfg_write(board.pio, 0x18, 0x14, 4, 0x00100000)  # over RAM: RAM keeps the address
        assert board.mmio.bus.find(0x00100000) is None and board.mmio.bus.find(0xFEB00000) is None
        board.memory.write(0x00100000, b"\x12")
        assert board.memory.read(0x00100000, 1) == b"\x12"
        _cfg_write(board.pio, 0x18, 0x10, 4, 0x3F8)  # over COM1: left unmapped, COM1 untouched
        assert board.pio.find(0x3F8).name == "serial0" and 0 not in fn.mapped_bars()
        _cfg_write(board.pio, 0x18, 0x10, 4, 0xC040)
        assert board.pio.find(0xC040) is not None
        fn.reset()  # (a device of the table is reset by reset_devices; this one was plugged by hand)
        assert board.pio.find(0xC040) is None and fn.mapped_bars() == {}
        assert len(board.root.subregions) == len([s for s in board.root.subregions if s.priority >= 0])
    finally:
        board.close()


def test_intx_reaches_kvms_pic_through_the_piix3_route() -> None:
    from kvmpy.devices.pci.device import PciDevice, PciIdentity
    from kvmpy.kvm import abi

    def slave_last_irr(board) -> int:
        return board.vm.get_irqchip(abi.IRQCHIP_PIC_SLAVE)[8]  # kvm_irqchip: chip_id, pad, then last_irr

    board, _, _ = _board(_config())
    try:
        fn = board.pci.plug(PciDevice("intx", PciIdentity(0x1234, 0x22, 0x0200, interrupt_pin=1)), 3)
        fn.set_irq(True)  # INTA of slot 3 is PIRQC, still disabled: nothing reaches the PIC
        assert slave_last_irr(board) & 0x08 == 0
        _cfg_write(board.pio, 0x08, 0x62, 1, 11)  # PIRQRC[C] -> IRQ 11
        assert slave_last_irr(board) & 0x08
        fn.set_irq(False)
        assert slave_last_irr(board) & 0x08 == 0
        fn.set_irq(True)
        _cfg_write(board.pio, 0x08, 0x62, 1, 0x80)  # route disabled again: the line drops
        assert slave_last_irr(board) & 0x08 == 0
    finally:
        board.close()


def test_msi_vectors_from_the_board_keep_the_intx_route() -> None:
    from kvmpy.devices.pci.device import PciDevice, PciIdentity
    from kvmpy.kvm import abi

    board, _, _ = _board(_config())
    try:
        vcpu = board.vcpus[0]
        regs = bytearray(vcpu.get_lapic_regs())
        regs[0xF1] |= 1  # SVR: software-enable the APIC
        vcpu.set_lapic_regs(bytes(regs))
        vec = board.msi.vector()
        vec.update(0xFEE00000, 0x45)
        vec.unmask()
        vec.trigger()
        irr = lambda: int.from_bytes(vcpu.get_lapic_regs()[0x220:0x224], "little")  # noqa: E731 (vectors 64-95)
        for _ in range(1000):
            if irr() & 1 << 5:
                break
            time.sleep(0.002)
        assert irr() & 1 << 5 and board.msi.commits == 1
        fn = board.pci.plug(PciDevice("intx", PciIdentity(0x1234, 0x22, 0x0200, interrupt_pin=1)), 3)
        _cfg_write(board.pio, 0x08, 0x62, 1, 11)  # PIRQRC[C] -> IRQ 11
        fn.set_irq(True)  # the replaced routing table still carries GSI 11 to the PIC
        assert board.vm.get_irqchip(abi.IRQCHIP_PIC_SLAVE)[8] & 0x08
        vec.release()
    finally:
        board.close()
