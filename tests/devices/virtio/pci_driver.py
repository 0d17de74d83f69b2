"""A virtio-pci driver for host-side tests: the Linux virtio_pci_modern init sequence over real buses.

``PciRig`` is the PC's PCI plumbing without KVM: RAM in a real AddressSpace,
the board's ``PcBarSpace`` mapping BARs into it (MMIO served by the real
``MmioRouter``), the i440FX and PIIX3 on a ``PciBus`` behind ``PciHost`` on a
port bus, with PIIX3's PIRQ lines recorded. ``VirtioPciDriver`` finds the
vendor capabilities by walking the config space through 0xCF8/0xCFC, programs
BAR4 and talks to the common configuration, ISR and notify areas with MMIO
accesses of the sizes Linux uses; its queues are ``DriverQueue``s laid out in
the rig's RAM. ``plug_virtio`` is the prologue every transport test starts from
(a function plugged into a slot, its driver holding BAR4), and ``wait_used``/
``wait_for`` poll for what the transport's I/O thread does. ``fresh_config_space``
and ``qemu_pc`` give the two sides of a config-space comparison with QEMU.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pytest

from kvmpy.boards.mmio import MmioRouter
from kvmpy.boards.pc import PcBarSpace
from kvmpy.devices.bus import Bus, OffsetDevice
from kvmpy.devices.pci.bus import PciBus, PciHost
from kvmpy.devices.pci.device import PciDevice
from kvmpy.devices.pci.i440fx import I440fx
from kvmpy.devices.pci.piix3 import Piix3
from kvmpy.devices.virtio import pci as vp
from kvmpy.devices.virtio.device import VirtioDevice
from kvmpy.devices.virtio.pci import VirtioPci
from kvmpy.devices.virtio.device import (F_VERSION_1, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK,
                                         STATUS_FEATURES_OK)
from kvmpy.memory.address_space import AddressSpace
from kvmpy.memory.guest_memory import GuestMemory
from kvmpy.memory.ramblock import RAMBlock
from kvmpy.memory.region import MemoryRegion

from tests.devices.pci.qtest import QemuQtest, have_qemu

from .driver import DriverQueue, ring_bytes

RAM_SIZE = 16 << 20
BAR4_ADDR = 0xFE000000  # where SeaBIOS puts the first 64-bit prefetchable BAR on a small pc machine


class RecordingLine:
    def __init__(self, irq: int, levels: dict[int, bool]) -> None:
        self.irq, self.levels = irq, levels

    def set_level(self, level: bool) -> None:
        self.levels[self.irq] = level


class ConfigPorts:
    """Config mechanism #1 through a port bus ``pio`` (a rig's, or a PcBoard's)."""

    pio: Bus

    def cfg_read(self, devfn: int, reg: int, size: int = 4) -> int:
        self.pio.write(0xCF8, 4, 0x80000000 | (devfn << 8) | (reg & 0xFC))
        return self.pio.read(0xCFC + (reg & 3), size)

    def cfg_write(self, devfn: int, reg: int, size: int, value: int) -> None:
        self.pio.write(0xCF8, 4, 0x80000000 | (devfn << 8) | (reg & 0xFC))
        self.pio.write(0xCFC + (reg & 3), size, value)

    def config_space(self, devfn: int) -> bytes:
        return b"".join(self.cfg_read(devfn, r).to_bytes(4, "little") for r in range(0, 256, 4))


class BoardPorts(ConfigPorts):
    """A PcBoard's buses and RAM as the driver sees them (its INTx goes to KVM, so ``levels`` stays empty)."""

    def __init__(self, board) -> None:
        self.pio, self.mmio, self.memory = board.pio, board.mmio, board.memory
        self.levels: dict[int, bool] = {}


@dataclass
class PciRig(ConfigPorts):
    """What PcBarSpace needs of a board (``pio``, ``root``, ``address_space``), plus the PCI bus and RAM."""

    ram: RAMBlock = field(default_factory=lambda: RAMBlock.allocate("rig.ram", RAM_SIZE))
    levels: dict[int, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = MemoryRegion.container("system", 1 << 52)
        self.root.add_subregion(0, MemoryRegion.ram_region("rig.ram", self.ram))
        self.address_space = AddressSpace("system", self.root)
        self.mmio = MmioRouter()
        self.address_space.add_listener(self.mmio)
        self.address_space.commit()
        self.memory = GuestMemory(self.address_space)
        self.pio = Bus("pio")
        self.bus = PciBus(PcBarSpace(self))
        self.bus.plug(I440fx(), 0)
        piix3 = self.bus.plug(Piix3(irq_line=lambda irq: RecordingLine(irq, self.levels)), 1)
        self.bus.router = piix3.set_intx
        host = PciHost(self.bus)
        self.pio.map(0xCF8, 1, host)
        self.pio.map(0xCFA, 2, OffsetDevice(host, 2))
        self.pio.map(0xCFC, 4, OffsetDevice(host, 4))


class VirtioPciDriver:
    """The driver side of one virtio-pci function on a ``PciRig``."""

    def __init__(self, rig: "PciRig | BoardPorts", fn: PciDevice, bar4: int = BAR4_ADDR, irq: int = 11) -> None:
        self.rig, self.fn, self.devfn = rig, fn, fn.devfn
        self.caps = self.find_caps()
        self.bar4 = bar4
        # Firmware's part: BAR4, PIRQA -> irq, the interrupt line, memory decoding and bus mastering on.
        rig.cfg_write(self.devfn, 0x20, 4, bar4 & 0xFFFFFFFF)
        rig.cfg_write(self.devfn, 0x24, 4, bar4 >> 32)
        slot_pirq = ((self.devfn >> 3) + 0 - 1) & 3  # PIIX3: PIRQ (slot + pin - 1) mod 4, pin A = 0
        rig.cfg_write(1 << 3, 0x60 + slot_pirq, 1, irq)
        rig.cfg_write(self.devfn, 0x3C, 1, irq)
        rig.cfg_write(self.devfn, 0x04, 2, 0x0006)
        self.irq = irq
        self.queues: list[DriverQueue] = []

    def find_caps(self) -> dict[int, tuple[int, int, int]]:
        """cfg_type -> (config offset, BAR offset, length), walking the list as Linux's virtio_pci_find_capability."""
        out: dict[int, tuple[int, int, int]] = {}
        pos = self.rig.cfg_read(self.devfn, 0x34, 1)
        seen = 0
        while pos and seen < 48:
            if self.rig.cfg_read(self.devfn, pos, 1) == vp.CAP_VENDOR:
                t = self.rig.cfg_read(self.devfn, pos + 3, 1)
                out.setdefault(t, (pos, self.rig.cfg_read(self.devfn, pos + 8), self.rig.cfg_read(self.devfn, pos + 12)))
            pos = self.rig.cfg_read(self.devfn, pos + 1, 1)
            seen += 1
        return out

    # ---- BAR4 regions ---------------------------------------------------------------------
    def _addr(self, cfg_type: int, off: int) -> int:
        return self.bar4 + self.caps[cfg_type][1] + off

    def common_read(self, off: int, size: int) -> int:
        return self.rig.mmio.read(self._addr(vp.CAP_COMMON, off), size)

    def common_write(self, off: int, size: int, value: int) -> None:
        self.rig.mmio.write(self._addr(vp.CAP_COMMON, off), size, value)

    def isr(self) -> int:
        return self.rig.mmio.read(self._addr(vp.CAP_ISR, 0), 1)

    def device_cfg_read(self, off: int, size: int) -> int:
        return self.rig.mmio.read(self._addr(vp.CAP_DEVICE, off), size)

    def status(self) -> int:
        return self.common_read(vp.STATUS_REG, 1)

    def set_status(self, value: int) -> None:
        self.common_write(vp.STATUS_REG, 1, value)

    def device_features(self) -> int:
        out = 0
        for sel in (0, 1):
            self.common_write(vp.DFSELECT, 4, sel)
            out |= self.common_read(vp.DF, 4) << (32 * sel)
        return out

    def write_features(self, features: int) -> None:
        for sel in (0, 1):
            self.common_write(vp.GFSELECT, 4, sel)
            self.common_write(vp.GF, 4, (features >> (32 * sel)) & 0xFFFFFFFF)

    def kick(self, q: int) -> None:
        self.common_write(vp.Q_SELECT, 2, q)
        off = self.common_read(vp.Q_NOTIFY_OFF, 2)
        cap = self.caps[vp.CAP_NOTIFY][0]
        mult = self.rig.cfg_read(self.devfn, cap + 16)
        self.rig.mmio.write(self._addr(vp.CAP_NOTIFY, off * mult), 2, q)

    # ---- the init sequence (virtio 1.2, 3.1.1) ----------------------------------------------
    def negotiate(self, wanted: int | None = None) -> int:
        """Reset, ACK, DRIVER, features (all offered unless ``wanted``), FEATURES_OK; returns the status."""
        self.set_status(0)
        self.set_status(STATUS_ACKNOWLEDGE)
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER)
        offered = self.device_features()
        self.features = offered if wanted is None else wanted
        self.write_features(self.features)
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
        return self.status()

    def setup_queue(self, index: int, base: int, size: int | None = None, vector: int = vp.NO_VECTOR) -> DriverQueue:
        self.common_write(vp.Q_SELECT, 2, index)
        max_size = self.common_read(vp.Q_SIZE, 2)
        size = max_size if size is None else size
        self.common_write(vp.Q_SIZE, 2, size)
        event_idx = bool(self.features >> 29 & 1)
        dq = DriverQueue(self.rig.memory, base, size, event_idx=event_idx)
        for off, addr in ((vp.Q_DESC_LO, dq.desc), (vp.Q_DRIVER_LO, dq.avail), (vp.Q_DEVICE_LO, dq.used)):
            self.common_write(off, 4, addr & 0xFFFFFFFF)  # Linux's vp_iowrite64_twopart
            self.common_write(off + 4, 4, addr >> 32)
        self.common_write(vp.Q_MSIX, 2, vector)
        self.common_write(vp.Q_ENABLE, 2, 1)
        while len(self.queues) <= index:
            self.queues.append(dq)
        self.queues[index] = dq
        return dq

    def init(self, queue_base: int = 0x100000, wanted: int | None = None) -> None:
        """The whole sequence: negotiate, every queue at its maximum size from ``queue_base`` up, DRIVER_OK."""
        status = self.negotiate(wanted)
        assert status & STATUS_FEATURES_OK, f"FEATURES_OK refused (status {status:#x})"
        n = self.common_read(vp.NUM_QUEUES, 2)
        base = queue_base
        for i in range(n):
            self.common_write(vp.Q_SELECT, 2, i)
            size = self.common_read(vp.Q_SIZE, 2)
            self.setup_queue(i, base, size)
            base += (ring_bytes(size) + 0xFFF) & ~0xFFF
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)

    def intx_level(self) -> bool:
        return self.rig.levels.get(self.irq, False)


def plug_virtio(rig: PciRig, name: str, device: VirtioDevice, slot: int = 2, bar4: int = BAR4_ADDR,
                **transport) -> tuple[VirtioPci, VirtioPciDriver]:
    """``device`` behind a virtio-pci function (``transport``: VirtioPci's options) in ``slot``, and its driver."""
    fn = VirtioPci(name, device, rig.memory, **transport)
    rig.bus.plug(fn, slot)
    return fn, VirtioPciDriver(rig, fn, bar4=bar4)


def fresh_config_space(name: str, device: VirtioDevice, **transport) -> bytes:
    """The config space of ``device``'s function in slot 2 of a fresh rig, as firmware first sees it."""
    rig = PciRig()
    fn = VirtioPci(name, device, rig.memory, **transport)
    rig.bus.plug(fn, 2)
    try:
        return rig.config_space(2 << 3)
    finally:
        fn.close()


@contextmanager
def qemu_pc(device: str) -> Iterator[QemuQtest]:
    """QEMU's pc machine with ``-device device`` (slot 2), driven by qtest; skips the test where QEMU is missing."""
    if not have_qemu():
        pytest.skip("qemu-system-x86_64 not installed")
    qemu = QemuQtest("-device", device)
    try:
        yield qemu
    finally:
        qemu.close()


def wait_for(cond: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll ``cond`` until it is true (the I/O thread answers asynchronously); False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.002)
    return False


def wait_used(q: DriverQueue, timeout: float = 5.0) -> list[tuple[int, int]]:
    """The first non-empty batch of used entries of ``q`` (head, length), or [] after ``timeout``."""
    used: list[tuple[int, int]] = []
    wait_for(lambda: used.extend(q.get_used()) or used, timeout)
    return used


VERSION_1 = 1 << F_VERSION_1
