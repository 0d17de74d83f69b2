"""i8042: the probe answers drivers expect, and the two ways to pulse the reset line."""

from __future__ import annotations

from kvmpy.devices.i8042 import I8042


def make():
    resets = []
    return I8042(on_reset=lambda: resets.append(1)), resets


def cmd(dev, c):
    dev.write(4, 1, c)


def data(dev):
    assert dev.read(4, 1) & 1, "output buffer should be full"
    return dev.read(0, 1)


def test_self_test_and_config_byte() -> None:
    dev, _ = make()
    cmd(dev, 0xAA)
    assert data(dev) == 0x55
    cmd(dev, 0x20)
    ctr = data(dev)
    cmd(dev, 0x60)
    dev.write(0, 1, ctr & ~1)
    cmd(dev, 0x20)
    assert data(dev) == ctr & ~1


def test_keyboard_reset_and_identify() -> None:
    dev, _ = make()
    dev.write(0, 1, 0xFF)
    assert [data(dev), data(dev)] == [0xFA, 0xAA]
    dev.write(0, 1, 0xF2)
    assert data(dev) == 0xFA and data(dev) == 0xAB


def test_reset_by_command_fe_and_by_output_port() -> None:
    dev, resets = make()
    cmd(dev, 0xFE)
    assert resets == [1]
    cmd(dev, 0xD1)
    dev.write(0, 1, 0xFE)  # bit 0 low: reset asserted
    assert resets == [1, 1]
    cmd(dev, 0xFF)  # pulse nothing
    assert resets == [1, 1]
