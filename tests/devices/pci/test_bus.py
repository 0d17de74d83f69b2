"""Config mechanism #1 and bus 0, checked against QEMU's pc machine (qtest) as the oracle."""

from __future__ import annotations

import random

import pytest

from kvmpy.devices.bus import Bus, OffsetDevice
from kvmpy.devices.pci.bus import PciBus, PciHost
from kvmpy.devices.pci.i440fx import I440fx
from kvmpy.devices.pci.piix3 import Piix3
from kvmpy.devices.irq import NullIrqLine

from .qtest import QemuQtest, have_qemu


def pc_ports() -> tuple[Bus, PciBus]:
    """The PC's 0xCF8-0xCFF windows on a port bus, as PcBoard maps them (0xCF9 left to the reset register)."""
    bus = PciBus()
    bus.plug(I440fx(), 0)
    piix3 = bus.plug(Piix3(irq_line=lambda irq: NullIrqLine()), 1)
    bus.router = piix3.set_intx
    host = PciHost(bus)
    pio = Bus("pio")
    pio.map(0xCF8, 1, host)
    pio.map(0xCFA, 2, OffsetDevice(host, 2))
    pio.map(0xCFC, 4, OffsetDevice(host, 4))
    return pio, bus


def cfg(pio: Bus, devfn: int, reg: int, size: int = 4, bus: int = 0) -> int:
    pio.write(0xCF8, 4, 0x80000000 | (bus << 16) | (devfn << 8) | (reg & 0xFC))
    return pio.read(0xCFC + (reg & 3), size)


def test_identity_of_the_two_bridges() -> None:
    pio, _ = pc_ports()
    assert cfg(pio, 0, 0) == 0x12378086 and cfg(pio, 0, 8) == 0x06000002
    assert cfg(pio, 8, 0) == 0x70008086 and cfg(pio, 8, 8) == 0x06010000
    assert cfg(pio, 8, 0x0E, 1) == 0x80  # PIIX3 is multi-function, as in QEMU
    assert cfg(pio, 0, 0x2C) == 0x11001AF4


def test_absent_functions_other_buses_and_the_enable_bit() -> None:
    pio, _ = pc_ports()
    assert cfg(pio, 2 << 3, 0) == 0xFFFFFFFF
    assert cfg(pio, 0, 0, bus=1) == 0xFFFFFFFF
    assert cfg(pio, 2 << 3, 0, 1) == 0xFF
    pio.write(0xCF8, 4, 0x00000000)  # enable bit clear
    assert pio.read(0xCFC, 4) == 0xFFFFFFFF
    pio.write(0xCFC, 4, 0)  # ignored
    assert cfg(pio, 0, 0) == 0x12378086


def test_config_address_takes_only_dword_writes() -> None:
    pio, _ = pc_ports()
    pio.write(0xCF8, 4, 0x80000800)
    pio.write(0xCF8, 1, 0x00)
    pio.write(0xCFA, 2, 0x0000)
    assert pio.read(0xCF8, 4) == 0x80000800
    assert pio.read(0xCFC, 2) == 0x8086


def test_byte_and_word_accesses_reach_the_register_at_the_port_offset() -> None:
    pio, _ = pc_ports()
    pio.write(0xCF8, 4, 0x80000860)
    pio.write(0xCFD, 1, 11)  # PIRQRC[B]
    pio.write(0xCFE, 2, 0x0A05)  # PIRQRC[C], PIRQRC[D]
    assert pio.read(0xCFC, 4) == 0x0A050B80
    assert pio.read(0xCFF, 1) == 0x0A


def _dump(read_cfg) -> list[int]:
    return [read_cfg(devfn, reg) for devfn in (0, 8) for reg in range(0, 256, 4)]


@pytest.mark.skipif(not have_qemu(), reason="qemu-system-x86_64 not installed")
def test_power_on_config_spaces_match_qemu() -> None:
    pio, _ = pc_ports()
    q = QemuQtest()
    try:
        def qemu_cfg(devfn: int, reg: int) -> int:
            q.write(0xCF8, 4, 0x80000000 | (devfn << 8) | reg)
            return q.read(0xCFC, 4)
        assert _dump(lambda d, r: cfg(pio, d, r)) == _dump(qemu_cfg)
    finally:
        q.close()


@pytest.mark.skipif(not have_qemu(), reason="qemu-system-x86_64 not installed")
def test_random_config_traffic_matches_qemu() -> None:
    # Writes go to the standard header and the PIRQ route registers (QEMU's i440FX SMRAM/PAM
    # registers have side effects kvmpy does not model); reads go anywhere, on any function.
    pio, _ = pc_ports()
    q = QemuQtest()
    rng = random.Random(1237)
    ours, theirs = [], []
    try:
        for _ in range(1500):
            devfn = rng.choice((0, 8, 8, 16, 0x0A))
            bus = rng.choice((0, 0, 0, 0, 0, 1))
            write = rng.random() < 0.5
            reg = rng.choice((rng.randrange(0, 0x40), rng.randrange(0x60, 0x64))) if write else rng.randrange(256)
            size = rng.choice((1, 2, 4))
            port = 0xCFC + (reg & 3)
            addr = 0x80000000 | (bus << 16) | (devfn << 8) | (reg & 0xFC)
            value = rng.choice((0, 0xFFFFFFFF, rng.getrandbits(32))) & ((1 << (8 * size)) - 1)
            for io, log in ((pio, ours), (q, theirs)):
                io.write(0xCF8, 4, addr)
                if write:
                    io.write(port, size, value)
                log.append(io.read(port, size))
        assert ours == theirs
        assert _dump(lambda d, r: cfg(pio, d, r)) == _dump(
            lambda d, r: (q.write(0xCF8, 4, 0x80000000 | (d << 8) | r), q.read(0xCFC, 4))[1])
    finally:
        q.close()


@pytest.mark.skipif(not have_qemu(), reason="qemu-system-x86_64 not installed")
def test_write_masks_match_qemu() -> None:
    # All-ones then zero into every header dword and the PIRQ routes: what sticks is the write mask.
    pio, _ = pc_ports()
    q = QemuQtest()
    try:
        for devfn in (0, 8):
            for reg in [*range(0, 0x40, 4), 0x60]:
                for value in (0xFFFFFFFF, 0):
                    got = []
                    for io in (pio, q):
                        io.write(0xCF8, 4, 0x80000000 | (devfn << 8) | reg)
                        io.write(0xCFC, 4, value)
                        got.append(io.read(0xCFC, 4))
                    assert got[0] == got[1], (devfn, hex(reg), hex(value), [hex(g) for g in got])
    finally:
        q.close()
