"""VirtioMmio: the virtio 1.x MMIO transport (virtio 1.2, 4.2.2, "version 2") carrying one VirtioDevice.

The sibling of ``kvmpy/devices/virtio/pci.py`` for boards without PCI (QEMU's
riscv ``virt`` has eight of these at 0x10001000 + 0x1000*i). Registers, all
32-bit, as QEMU 7.2's ``virtio-mmio`` (non-legacy) lays them out:

    0x000 MagicValue 0x74726976 ("virt")    0x004 Version 2
    0x008 DeviceID (0: no device)           0x00c VendorID 0x554d4551 ("QEMU")
    0x010 DeviceFeatures (window DeviceFeaturesSel 0x014)
    0x020 DriverFeatures (window DriverFeaturesSel 0x024)
    0x030 QueueSel   0x034 QueueNumMax   0x038 QueueNum   0x044 QueueReady
    0x050 QueueNotify   0x060 InterruptStatus   0x064 InterruptACK   0x070 Status
    0x080/0x084 QueueDesc, 0x090/0x094 QueueDriver, 0x0a0/0x0a4 QueueDevice (low/high)
    0x0fc ConfigGeneration   0x100... the device configuration (any width)

An empty transport (no device) reads its magic, version, vendor and DeviceID 0
and ignores everything else, as QEMU's does.

Kicks are plain MMIO writes: a TCG board has no ioeventfd, so a QueueNotify
write calls ``device.queue_notify`` on the writing (CPU) thread and returns when
the device is done with what the driver queued. Interrupts: InterruptStatus
bit 0 (used buffer) and bit 1 (configuration change) drive one level-triggered
line (a PLIC source) while either is set; InterruptACK clears them.

The driver is hostile, as on PCI: registers are bounded, features not offered
(or a driver without VERSION_1) are refused at FEATURES_OK, queue registers are
frozen while the queue is ready, and a ``VirtQueueError`` (bad size, rings
outside RAM, a bad chain) or any device failure at activation or in a kick sets
NEEDS_RESET and raises the configuration interrupt instead of reaching the CPU
loop. Accesses that are not 4 bytes wide below 0x100 are ignored (read 0).

``after_io`` (optional) runs after each kick the device served: a TCG board uses it
to drop translated code from pages the device wrote into.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from kvmpy.devices.virtio.device import STATUS_FEATURES_OK, STATUS_NEEDS_RESET, VirtioContext, VirtioDevice
from kvmpy.devices.virtio.queue import GuestRam, SplitQueue, VirtQueueError
from kvmpy.devices.virtio.transport import (TRANSPORT_FEATURES, activate_queue, start_device, status_write,
                                            write_ring_address)

log = logging.getLogger(__name__)

MAGIC = 0x74726976  # "virt"
VERSION = 2
VENDOR_ID_VALUE = 0x554D4551  # "QEMU", as QEMU 7.2's transport reports
SIZE = 0x1000
CONFIG_OFF = 0x100

MAGIC_VALUE, VERSION_REG, DEVICE_ID, VENDOR_ID = 0x000, 0x004, 0x008, 0x00C
DEVICE_FEATURES, DEVICE_FEATURES_SEL = 0x010, 0x014
DRIVER_FEATURES, DRIVER_FEATURES_SEL = 0x020, 0x024
QUEUE_SEL, QUEUE_NUM_MAX, QUEUE_NUM, QUEUE_READY = 0x030, 0x034, 0x038, 0x044
QUEUE_NOTIFY, INTERRUPT_STATUS, INTERRUPT_ACK, STATUS = 0x050, 0x060, 0x064, 0x070
QUEUE_DESC_LOW, QUEUE_DRIVER_LOW, QUEUE_DEVICE_LOW = 0x080, 0x090, 0x0A0
CONFIG_GENERATION = 0x0FC
Q_ADDRS = {QUEUE_DESC_LOW: "desc_addr", QUEUE_DRIVER_LOW: "avail_addr", QUEUE_DEVICE_LOW: "used_addr"}

INT_VRING, INT_CONFIG = 1, 2


class VirtioMmio:
    """One virtio-mmio transport slot; ``device`` None is an empty slot (DeviceID 0)."""

    def __init__(self, name: str, irq: Callable[[bool], None], device: VirtioDevice | None = None,
                 memory: GuestRam | None = None, after_io: Callable[[], None] | None = None) -> None:
        self.name = name
        self.irq = irq
        self.after_io = after_io
        self.device: VirtioDevice | None = None
        self.queues: list[SplitQueue] = []
        self._lock = threading.RLock()  # device threads (net receive) raise interrupts; the CPU thread writes
        self._reset_state()
        if device is not None:
            if memory is None:
                raise ValueError(f"{name}: a virtio-mmio device needs guest memory")
            self.plug(device, memory)

    def plug(self, device: VirtioDevice, memory: GuestRam) -> None:
        """Put ``device`` into this empty slot (the board does it before the guest runs)."""
        if self.device is not None:
            raise ValueError(f"{self.name}: the transport already carries {self.device.name}")
        self.queues = [SplitQueue(memory, n) for n in device.queue_max_sizes]
        self.device = device
        self._reset_state()

    def _reset_state(self) -> None:
        self.dfselect = 0
        self.gfselect = 0
        self.driver_features = 0
        self.features = 0
        self.status = 0
        self.generation = 0
        self.queue_select = 0
        self.interrupt_status = 0
        self.active = False
        self.broken = False
        for q in self.queues:
            q.reset()

    # ---- bus interface -------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        try:
            if offset >= CONFIG_OFF:
                if self.device is None or size not in (1, 2, 4, 8):
                    return 0
                return self.device.config_read(offset - CONFIG_OFF, size) & ((1 << (8 * size)) - 1)
            if size != 4:
                log.debug("%s: %d-byte read at %#x ignored", self.name, size, offset)
                return 0
            with self._lock:
                return self._reg_read(offset) & 0xFFFFFFFF
        except Exception:  # a device bug must not reach the CPU loop
            log.exception("%s: read at %#x failed", self.name, offset)
            return 0

    def write(self, offset: int, size: int, value: int) -> None:
        try:
            if self.device is None:
                return
            if offset >= CONFIG_OFF:
                if size in (1, 2, 4, 8):
                    self.device.config_write(offset - CONFIG_OFF, size, value & ((1 << (8 * size)) - 1))
                return
            if size != 4:
                log.debug("%s: %d-byte write at %#x ignored", self.name, size, offset)
                return
            self._reg_write(offset, value & 0xFFFFFFFF)
        except Exception:
            log.exception("%s: write at %#x failed", self.name, offset)

    def reset(self) -> None:
        """Machine reset: the device stopped, every register back to power-on."""
        self.virtio_reset()

    # ---- registers ------------------------------------------------------------------------
    def offered_features(self) -> int:
        if self.device is None:
            return 0
        return (self.device.device_features() | TRANSPORT_FEATURES) & ((1 << 64) - 1)

    def _selected(self) -> SplitQueue | None:
        i = self.queue_select
        return self.queues[i] if i < len(self.queues) else None

    def _reg_read(self, off: int) -> int:
        if off == MAGIC_VALUE:
            return MAGIC
        if off == VERSION_REG:
            return VERSION
        if off == DEVICE_ID:
            return int(self.device.device_type) if self.device is not None else 0
        if off == VENDOR_ID:
            return VENDOR_ID_VALUE
        if self.device is None:
            return 0
        if off == DEVICE_FEATURES:
            return (self.offered_features() >> (32 * self.dfselect)) & 0xFFFFFFFF if self.dfselect < 2 else 0
        if off == INTERRUPT_STATUS:
            return self.interrupt_status
        if off == STATUS:
            return self.status
        if off == CONFIG_GENERATION:
            return self.generation
        q = self._selected()
        if off == QUEUE_NUM_MAX:
            return q.max_size if q is not None else 0
        if off == QUEUE_READY:
            return int(q.ready) if q is not None else 0
        return 0  # write-only registers and holes read 0

    def _reg_write(self, off: int, value: int) -> None:
        if off == STATUS:
            self._write_status(value & 0xFF)
            return
        if off == QUEUE_NOTIFY:
            self.kick(value & 0xFFFF)
            return
        if off == QUEUE_READY:
            self._write_ready(value & 1)
            return
        with self._lock:
            if off == INTERRUPT_ACK:
                self.interrupt_status &= ~value
                self._update_irq()
            elif off == DEVICE_FEATURES_SEL:
                self.dfselect = value
            elif off == DRIVER_FEATURES_SEL:
                self.gfselect = value
            elif off == DRIVER_FEATURES:
                if self.gfselect < 2 and not self.status & STATUS_FEATURES_OK:
                    shift = 32 * self.gfselect
                    self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | (value << shift)
            elif off == QUEUE_SEL:
                self.queue_select = value
            else:
                self._queue_register_write(off, value)

    def _queue_register_write(self, off: int, value: int) -> None:
        q = self._selected()
        if q is None or q.ready:  # no such queue, or frozen while the queue is ready
            return
        if off == QUEUE_NUM:
            q.size = value & 0xFFFF  # checked (power of two, <= max) when the queue is activated
            return
        write_ring_address(q, Q_ADDRS, off, value)

    def _write_ready(self, ready: int) -> None:
        with self._lock:
            q = self._selected()
            if q is None or bool(ready) == q.ready:
                return
            if not ready:
                if q.active:
                    return  # a running queue stops only with a device reset
                q.ready = False
                return
            q.ready = True
            running = self.active and not self.broken
        if running:  # a queue enabled after DRIVER_OK starts now
            self._activate_queue(self.queue_select)

    def _write_status(self, value: int) -> None:
        if value == 0:
            self.virtio_reset()
            return
        with self._lock:
            change = status_write(self.name, self.status, value, self.driver_features, self.offered_features())
            if change.features is not None:
                self.features = change.features
            self.status = change.status
        if change.start:
            self._activate()

    # ---- activation, kicks, interrupts ------------------------------------------------------
    def _activate_queue(self, i: int) -> bool:
        error = activate_queue(self.queues[i], self.features)
        if error is not None:
            self._needs_reset(f"queue {i}: {error}")
            return False
        return True

    def _activate(self) -> None:
        assert self.device is not None
        for i, q in enumerate(self.queues):
            if q.ready and not q.active and not self._activate_queue(i):
                return
        ctx = VirtioContext(features=self.features, queues=list(self.queues), interrupt=self.queue_interrupt,
                            config_changed=self.config_changed, needs_reset=self._needs_reset)
        if not start_device(self.name, self.device, ctx, self._needs_reset):
            return
        self.active = True
        for i, q in enumerate(self.queues):  # buffers queued before DRIVER_OK are looked at
            if q.active:
                self.kick(i)

    def kick(self, index: int) -> None:
        """QueueNotify: the device serves queue ``index`` now (unless stopped, broken or not ready)."""
        device = self.device
        if device is None or not 0 <= index < len(self.queues):
            return
        if not self.active or self.broken or not self.queues[index].active:
            return  # a notify before the queue is ready (or after NEEDS_RESET) is dropped
        try:
            device.queue_notify(index)
        except VirtQueueError as exc:
            self._needs_reset(f"queue {index}: {exc}")
        except Exception as exc:
            log.exception("%s: queue %d notify failed", self.name, index)
            self._needs_reset(f"queue {index}: {exc}")
        if self.after_io is not None:
            self.after_io()

    def virtio_reset(self) -> None:
        """Status 0 (or a machine reset): the device and every queue back to their initial state."""
        if self.active and self.device is not None:
            self.active = False
            try:
                self.device.reset()
            except Exception:
                log.exception("%s: device reset failed", self.name)
        with self._lock:
            self._reset_state()
            self._update_irq()

    def _needs_reset(self, reason: str) -> None:
        log.warning("%s: device needs reset: %s", self.name, reason)
        with self._lock:
            self.broken = True
            self.status |= STATUS_NEEDS_RESET
        self.config_changed()

    def config_changed(self) -> None:
        """The configuration-change interrupt (also bumps ConfigGeneration)."""
        with self._lock:
            self.generation = (self.generation + 1) & 0xFFFFFFFF
            self.interrupt_status |= INT_CONFIG
            self._update_irq()

    def queue_interrupt(self, index: int) -> None:
        """VirtioContext.interrupt: queue ``index``'s used ring moved; suppressed as the driver asked."""
        if not 0 <= index < len(self.queues) or not self.queues[index].should_notify():
            return
        with self._lock:
            self.interrupt_status |= INT_VRING
            self._update_irq()

    def _update_irq(self) -> None:
        self.irq(bool(self.interrupt_status))

    def close(self) -> None:
        """VM teardown: stop the device and let it release its resources."""
        self.virtio_reset()
        if self.device is not None:
            try:
                self.device.close()
            except Exception:
                log.exception("%s: close failed", self.name)
