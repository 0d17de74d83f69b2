"""The PC board: its device table, the buses it wires, and a system reset that resets every device."""

from __future__ import annotations

import dataclasses

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
        assert list(board.devices) == [s.name for s in PC_DEVICES]
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
        changed = _states(devices)
        assert all(changed[n] != power_on[n] for n in ("serial0", "i8042", "rtc", "port80", "acpi-pm",
                                                        "reset-control")), changed
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
