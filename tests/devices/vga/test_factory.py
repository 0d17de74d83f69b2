"""The VGA on the PC board: -vga/-device front end, PCI placement, legacy windows, firmware ROM, migration RAM."""

from __future__ import annotations

import pytest

from kvmpy.cli import UsageError, parse_qemu_args
from kvmpy.config import MachineConfig
from kvmpy.config_devices import DeviceSpec
from kvmpy.devices.vga.factory import find_display
from kvmpy.errors import ConfigError
from tests.guests.build import build_guest

MiB = 1 << 20


def test_vga_front_end() -> None:
    cfg = parse_qemu_args(["-enable-kvm", "-vga", "std", "-kernel", "k", "-device", "virtio-rng-pci"])
    assert [d.driver for d in cfg.devices] == ["VGA", "virtio-rng-pci"]  # the card first, as QEMU creates it
    assert [d.driver for d in parse_qemu_args(["-enable-kvm", "-vga", "none", "-kernel", "k"]).devices] == []
    assert parse_qemu_args(["-enable-kvm", "-kernel", "k"]).devices == ()  # kvmpy stays headless by default
    with pytest.raises(UsageError, match="unknown vga type: 'foo'|unknown vga type: foo"):
        parse_qemu_args(["-vga", "foo", "-kernel", "k"])
    with pytest.raises(UsageError, match="cirrus is not supported"):
        parse_qemu_args(["-vga", "cirrus", "-kernel", "k"])


@pytest.mark.kvm_host
def test_vga_on_the_pc_board() -> None:
    from kvmpy.machine import Machine

    cfg = MachineConfig(kernel=build_guest("counter"), memory=32 * MiB, serial="null",
                        devices=(DeviceSpec(driver="VGA", props=(("vgamem_mb", "3"),)),
                                 DeviceSpec(driver="virtio-rng-pci"))).validate()
    machine = Machine(cfg)
    try:
        board = machine.board
        vga = find_display(board.devices.values())
        assert vga is not None and vga.devfn == 2 << 3  # 00:02.0, the rng at 00:03.0
        assert vga.vram.size == 4 * MiB  # 3 MiB rounds up to a power of two, as QEMU does
        assert vga.vram in machine.ram_blocks  # video memory migrates with guest RAM
        # The guest's view: DISPI through port 0x1CE/0x1CF, text through the 0xB8000 window.
        board.pio.write(0x1CE, 2, 0)
        assert board.pio.read(0x1CF, 2) == 0xB0C5
        board.mmio.write(0xB8000, 2, 0x0741)  # at reset no plane is write-enabled and 0xB8000 is not mapped
        assert bytes(vga.vram.mv[:8]) == bytes(8)
        for port, value in ((0x3C4, 0x0302), (0x3C4, 0x0204), (0x3CE, 0x1005), (0x3CE, 0x0E06)):  # text mode
            board.pio.write(port, 2, value)
        board.mmio.write(0xB8000, 2, 0x0741)  # 'A', grey on black: planes 0 and 1, odd/even
        assert board.mmio.read(0xB8000, 2) == 0x0741 and bytes(vga.vram.mv[:2]) == b"\x41\x07"
        # BAR0 programmed as firmware would: the framebuffer becomes guest RAM at that address.
        host = board.pci_host
        assert host is not None
        host.write(0, 4, 0x80000000 | (2 << 11) | 0x10)
        host.write(4, 4, 0xE0000000)
        host.write(0, 4, 0x80000000 | (2 << 11) | 0x04)
        host.write(4, 2, 0x0003)
        board.memory.write(0xE0000000 + 0x100, b"\x11\x22\x33\x44")
        assert bytes(vga.vram.mv[0x100:0x104]) == b"\x11\x22\x33\x44"
        state = vga.save()
        vga.restore(state)
        with pytest.raises(ValueError):
            vga.restore({**state, "vga": {**state["vga"], "vbe_regs": [0] * 3}})
    finally:
        machine.close()


@pytest.mark.kvm_host
def test_two_std_vgas_and_unknown_properties_are_refused() -> None:
    from kvmpy.machine import Machine

    for devices, message in (((DeviceSpec(driver="VGA"), DeviceSpec(driver="VGA")), "Only one global VGA"),
                             ((DeviceSpec(driver="VGA", props=(("foo", "1"),)),), "Property 'VGA.foo' not found")):
        cfg = MachineConfig(kernel=build_guest("counter"), memory=32 * MiB, serial="null", devices=devices).validate()
        with pytest.raises(ConfigError, match=message):
            Machine(cfg).close()


@pytest.mark.kvm_host
def test_bochs_display_has_no_legacy_vga() -> None:
    from kvmpy.machine import Machine

    cfg = MachineConfig(kernel=build_guest("counter"), memory=32 * MiB, serial="null",
                        devices=(DeviceSpec(driver="bochs-display", props=(("vgamem_mb", "8"),)),)).validate()
    machine = Machine(cfg)
    try:
        board = machine.board
        dev = find_display(board.devices.values())
        assert dev is not None and not dev.legacy and dev.config_read(0x08, 4) >> 8 == 0x038000
        assert board.pio.lookup(0x3C0) is None and board.pio.lookup(0x1CE) is None
        assert dev.mmio_read(0x500, 2) == 0xB0C5 and dev.mmio_read(0x514, 2) == 8 * MiB >> 16
        assert dev.mmio_read(0x400, 1) == 0  # no VGA registers behind BAR2 either
        assert dev.refresh().frame.width == 640  # nothing programmed: a blank screen
    finally:
        machine.close()
