"""VirtioPci: the virtio 1.x modern PCI transport carrying one VirtioDevice.

The function looks like QEMU 7.2's ``virtio-*-pci,disable-legacy=on``: vendor
0x1AF4, device 0x1040 + the virtio type, revision 1, subsystem 1AF4:1100, INTA,
no I/O BAR. Its config space holds QEMU's capability chain at QEMU's offsets:
the vendor-specific (id 9) COMMON_CFG at 0x40, ISR_CFG at 0x50, DEVICE_CFG at
0x60, NOTIFY_CFG at 0x70 (notify_off_multiplier 4), PCI_CFG at 0x84 and MSI-X
at 0x98 when the device has vectors. BAR4 (16 KiB, 64-bit prefetchable) holds
the common configuration at 0x0, the ISR at 0x1000, the device configuration
at 0x2000 and the notify area at 0x3000 (queue i at 0x3000 + 4*i); the MSI-X
table and PBA live in BAR1 (4 KiB, 32-bit). What differs from QEMU's default
(transitional) device: no legacy I/O BAR0, device ID 0x1040+type instead of
0x1000+n, revision 1, and the subsystem ID is 0x1100 instead of the type.

Kicks: each queue has an eventfd; the board registers it as a KVM ioeventfd
on the queue's notify address, so a guest kick wakes the device's I/O thread
without a vCPU exit in Python. A notify write that does exit (no ioeventfd)
writes the same eventfd. The I/O thread (epoll over the eventfds and a stop
fd) calls ``device.queue_notify(i)``; nothing else calls into the device
concurrently. A device whose data plane is in the kernel (vhost-net) takes a
queue's eventfd over with ``VirtioContext.own_kick``: the I/O thread then stops
watching it, so a kick wakes only the kernel. Interrupts: the queue's MSI-X vector when the driver enabled
MSI-X, else INTx with the ISR bits (reading the ISR clears it and lowers INTx).

The driver is hostile: every register is bounded, feature negotiation refuses
bits that were not offered (and a driver without VERSION_1), queue registers
are frozen once a queue is enabled, and a ``VirtQueueError`` (or any device
failure) at activation or during a kick sets NEEDS_RESET and raises the
configuration interrupt instead of reaching the vCPU loop.

Locking: ``_io`` (the device-call lock: kicks, activation, reset, quiesce) is
always taken before the PCI function's own lock, and the device is never
called with the function's lock held, so device threads that raise interrupts
cannot deadlock against a vCPU resetting the device.
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
from typing import TYPE_CHECKING, Any, Callable, Protocol

from kvmpy.devices.device import DeviceStateError, check_keys, int_field
from kvmpy.devices.msi import MsiRoutes
from kvmpy.devices.pci.device import Bar, BarKind, PciDevice, PciIdentity
from kvmpy.devices.pci.msix import MAX_VECTORS, MsiX
from kvmpy.devices.virtio.device import (STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET, VirtioContext,
                                         VirtioDevice)
from kvmpy.devices.virtio.queue import GuestRam, SplitQueue, VirtQueueError
from kvmpy.devices.virtio.transport import (TRANSPORT_FEATURES, activate_queue, start_device, status_write,
                                            write_ring_address)
from kvmpy.errors import ConfigError
from kvmpy.kvm.errors import KvmError

if TYPE_CHECKING:
    from kvmpy.config_devices import DeviceSpec
    from kvmpy.kvm.vm import VmFd

log = logging.getLogger(__name__)

VENDOR = 0x1AF4
DEVICE_ID_BASE = 0x1040
MODERN_BAR = 4
MODERN_BAR_SIZE = 0x4000
MSIX_BAR = 1
MSIX_BAR_SIZE = 0x1000
COMMON_OFF, ISR_OFF, DEVICE_OFF, NOTIFY_OFF = 0x0000, 0x1000, 0x2000, 0x3000
REGION_SIZE = 0x1000
NOTIFY_MULTIPLIER = 4
MAX_QUEUES = REGION_SIZE // NOTIFY_MULTIPLIER
NO_VECTOR = 0xFFFF

# Capability types (virtio 1.2, 4.1.4) and where QEMU puts them.
CAP_VENDOR = 0x09
CAP_COMMON, CAP_NOTIFY, CAP_ISR, CAP_DEVICE, CAP_PCI_CFG = 1, 2, 3, 4, 5
CAP_AT = {CAP_COMMON: 0x40, CAP_ISR: 0x50, CAP_DEVICE: 0x60, CAP_NOTIFY: 0x70, CAP_PCI_CFG: 0x84}
MSIX_CAP_AT = 0x98
PCI_CFG_BAR, PCI_CFG_OFFSET, PCI_CFG_LENGTH, PCI_CFG_DATA = 4, 8, 12, 16  # inside the PCI_CFG capability

# Common configuration registers (virtio 1.2, 4.1.4.3): offset -> size.
DFSELECT, DF, GFSELECT, GF = 0x00, 0x04, 0x08, 0x0C
MSIX_CONFIG, NUM_QUEUES, STATUS_REG, CFG_GENERATION = 0x10, 0x12, 0x14, 0x15
Q_SELECT, Q_SIZE, Q_MSIX, Q_ENABLE, Q_NOTIFY_OFF = 0x16, 0x18, 0x1A, 0x1C, 0x1E
Q_DESC_LO, Q_DESC_HI, Q_DRIVER_LO, Q_DRIVER_HI, Q_DEVICE_LO, Q_DEVICE_HI = 0x20, 0x24, 0x28, 0x2C, 0x30, 0x34
Q_ADDRS = {Q_DESC_LO: "desc_addr", Q_DRIVER_LO: "avail_addr", Q_DEVICE_LO: "used_addr"}

ISR_QUEUE, ISR_CONFIG = 1, 2
PCI_CLASS_OTHER = 0x00FF


# (eventfd, guest-physical address, assign) -> registered; the board's KVM ioeventfd hook.
IoEventFdHook = Callable[[int, int, bool], bool]


class ModernBar:
    """BAR4's four regions; an 8-byte access is split into two 4-byte ones, as QEMU's memory core does."""

    def __init__(self, transport: "VirtioPci") -> None:
        self.transport = transport

    def read(self, offset: int, size: int) -> int:
        if size == 8:
            return self.read(offset, 4) | (self.read(offset + 4, 4) << 32)
        if size not in (1, 2, 4):
            return 0
        try:
            return self.transport.bar_read(offset, size) & ((1 << (8 * size)) - 1)
        except Exception:  # a device bug must not reach the vCPU loop
            log.exception("%s: BAR4 read at %#x failed", self.transport.name, offset)
            return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if size == 8:
            self.write(offset, 4, value & 0xFFFFFFFF)
            self.write(offset + 4, 4, value >> 32)
            return
        if size not in (1, 2, 4):
            return
        try:
            self.transport.bar_write(offset, size, value & ((1 << (8 * size)) - 1))
        except Exception:
            log.exception("%s: BAR4 write at %#x failed", self.transport.name, offset)


def vendor_cap(cfg_type: int, bar: int, offset: int, length: int, extra: bytes = b"") -> bytes:
    """The body of a virtio_pci_cap after cap_vndr/cap_next: cap_len, cfg_type, bar, id, padding, offset, length."""
    body = bytes((16 + len(extra), cfg_type, bar, 0, 0, 0)) + offset.to_bytes(4, "little") \
        + length.to_bytes(4, "little") + extra
    return body


class VirtioPci(PciDevice):
    """One virtio device behind the modern PCI transport (see the module docstring)."""

    def __init__(self, name: str, device: VirtioDevice, memory: GuestRam, *,
                 msi: MsiRoutes | None = None, vectors: int = 0,
                 ioeventfd: IoEventFdHook | None = None, qdev_id: str = "") -> None:
        sizes = tuple(device.queue_max_sizes)
        if not 1 <= len(sizes) <= MAX_QUEUES:
            raise ValueError(f"{name}: a virtio-pci device has 1 to {MAX_QUEUES} queues, not {len(sizes)}")
        self.device = device
        self.memory = memory
        self.max_sizes = sizes
        self.bar_device = ModernBar(self)
        self.queues = [SplitQueue(memory, n) for n in sizes]
        self.vectors = [NO_VECTOR] * len(sizes)  # queue_msix_vector of each queue
        self.ioeventfd_hook = ioeventfd
        # Device calls; always taken before PciDevice's lock. Re-entrant: a device that starts an
        # in-kernel data plane under it (activation) calls own_kick, which takes it too.
        self._io = threading.RLock()
        self._notify_fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in sizes]
        self._stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._rewatch_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)  # the set of owned kicks changed
        self._owned_lock = threading.Lock()  # orders own_kick against the I/O thread's eventfd reads
        self._owned: frozenset[int] = frozenset()  # queues whose kick eventfd the device handed to the kernel
        self._registered: dict[int, int] = {}  # queue -> notify address registered as a KVM ioeventfd
        self._thread: threading.Thread | None = None
        self._closed = False
        self._init_common()
        bars = [Bar(MODERN_BAR, BarKind.MEM64, MODERN_BAR_SIZE, self.bar_device, prefetchable=True)]
        # MSI-X (QEMU: table at 0, PBA at 0x800 of a 4 KiB BAR1) when the board routes MSIs and vectors > 0.
        self.msix = MsiX(msi, vectors, name=f"{name} MSI-X") if msi is not None and vectors > 0 else None
        if self.msix is not None:
            bars.insert(0, Bar(MSIX_BAR, BarKind.MEM32, MSIX_BAR_SIZE, self.msix))
        identity = PciIdentity(VENDOR, DEVICE_ID_BASE + int(device.device_type), device.pci_class,
                               revision=1, interrupt_pin=1)
        super().__init__(name, identity, tuple(bars))
        self.qdev_id = qdev_id

    def _init_common(self) -> None:
        self.dfselect = 0
        self.gfselect = 0
        self.driver_features = 0  # what the driver wrote
        self.features = 0  # negotiated at FEATURES_OK
        self.status = 0
        self.generation = 0
        self.queue_select = 0
        self.msix_config = NO_VECTOR
        self.isr = 0
        self.active = False  # device.activate() ran and no reset since
        self.broken = False  # NEEDS_RESET: no more kicks reach the device
        self.quiesced = False
        self.pending: set[int] = set()  # kicks that arrived while the device could not take them
        for q in self.queues:
            q.reset()  # size back to the maximum, which the driver reads and may lower
        self.vectors = [NO_VECTOR] * len(self.queues)

    # ---- config space ------------------------------------------------------------------
    def init_config(self) -> None:
        """QEMU's capability chain; added in QEMU's order so the list reads 0x98 (or 0x84), 0x70, ..., 0x40."""
        caps = ((CAP_COMMON, COMMON_OFF), (CAP_ISR, ISR_OFF), (CAP_DEVICE, DEVICE_OFF))
        for cfg_type, off in caps:
            self.add_capability(CAP_VENDOR, CAP_AT[cfg_type], vendor_cap(cfg_type, MODERN_BAR, off, REGION_SIZE))
        self.add_capability(CAP_VENDOR, CAP_AT[CAP_NOTIFY],
                            vendor_cap(CAP_NOTIFY, MODERN_BAR, NOTIFY_OFF, REGION_SIZE,
                                       NOTIFY_MULTIPLIER.to_bytes(4, "little")))
        # PCI_CFG: bar, offset, length and the data window are the driver's to write.
        wmask = bytearray(vendor_cap(CAP_PCI_CFG, 0, 0, 0, bytes(4)))
        wmask[:] = bytes(len(wmask))
        for lo, hi in ((PCI_CFG_BAR - 2, PCI_CFG_BAR - 1), (PCI_CFG_OFFSET - 2, PCI_CFG_DATA + 2)):
            wmask[lo:hi] = b"\xff" * (hi - lo)
        self.add_capability(CAP_VENDOR, CAP_AT[CAP_PCI_CFG], vendor_cap(CAP_PCI_CFG, 0, 0, 0, bytes(4)),
                            writable=bytes(wmask))
        if self.msix is not None:
            self.msix.attach(self, MSIX_CAP_AT)

    def config_written(self, old: bytes, addr: int, size: int) -> None:
        if self.msix is not None:
            self.msix.config_written(addr, size)  # MSI-X Enable / Function Mask

    def config_read(self, addr: int, size: int) -> int:
        base = CAP_AT[CAP_PCI_CFG] + PCI_CFG_DATA
        if 0 <= addr < base + 4 and base < addr + size and size in (1, 2, 4):
            self._pci_cfg_access(None)  # a read of the window reads the BAR into it first
        return super().config_read(addr, size)

    def config_write(self, addr: int, size: int, value: int) -> None:
        super().config_write(addr, size, value)
        base = CAP_AT[CAP_PCI_CFG] + PCI_CFG_DATA
        if 0 <= addr < base + 4 and base < addr + size and size in (1, 2, 4):
            self._pci_cfg_access(self._get(self.config, base, 4))  # outside the function's lock

    def _pci_cfg_access(self, value: int | None) -> None:
        """The PCI_CFG window: an access of 1, 2 or 4 bytes at cap.offset of cap.bar, if it is BAR4."""
        cap = CAP_AT[CAP_PCI_CFG]
        with self._lock:
            bar = self.config[cap + PCI_CFG_BAR]
            off = self._get(self.config, cap + PCI_CFG_OFFSET, 4)
            length = self._get(self.config, cap + PCI_CFG_LENGTH, 4)
        if bar != MODERN_BAR or length not in (1, 2, 4) or off % length or off + length > MODERN_BAR_SIZE:
            return
        if value is not None:
            self.bar_device.write(off, length, value & ((1 << (8 * length)) - 1))
            return
        data = self.bar_device.read(off, length)
        with self._lock:
            self._put(self.config, cap + PCI_CFG_DATA, length, data)

    # ---- BAR4 dispatch ----------------------------------------------------------------
    def bar_read(self, offset: int, size: int) -> int:
        region, off = offset & ~(REGION_SIZE - 1), offset & (REGION_SIZE - 1)
        if region == COMMON_OFF:
            with self._lock:
                return self._common_read(off)
        if region == ISR_OFF:
            with self._lock:
                value, self.isr = self.isr, 0
                self.set_irq(False)
            return value
        if region == DEVICE_OFF:
            return self.device.config_read(off, size)
        return 0  # the notify area reads as 0

    def bar_write(self, offset: int, size: int, value: int) -> None:
        region, off = offset & ~(REGION_SIZE - 1), offset & (REGION_SIZE - 1)
        if region == COMMON_OFF:
            self._common_write(off, size, value)
        elif region == DEVICE_OFF:
            self.device.config_write(off, size, value)
        elif region == NOTIFY_OFF:
            q = off // NOTIFY_MULTIPLIER
            if q < len(self.queues):
                os.eventfd_write(self._notify_fds[q], 1)  # the same path as a KVM ioeventfd

    # ---- common configuration -----------------------------------------------------------
    def offered_features(self) -> int:
        return (self.device.device_features() | TRANSPORT_FEATURES) & ((1 << 64) - 1)

    def _selected(self) -> SplitQueue | None:
        i = self.queue_select
        return self.queues[i] if i < len(self.queues) else None

    def _common_read(self, off: int) -> int:
        if off == DFSELECT:
            return self.dfselect
        if off == DF:
            return (self.offered_features() >> (32 * self.dfselect)) & 0xFFFFFFFF if self.dfselect < 2 else 0
        if off == GFSELECT:
            return self.gfselect
        if off == GF:
            return (self.driver_features >> (32 * self.gfselect)) & 0xFFFFFFFF if self.gfselect < 2 else 0
        if off == MSIX_CONFIG:
            return self.msix_config
        if off == NUM_QUEUES:
            return len(self.queues)
        if off == STATUS_REG:
            return self.status
        if off == CFG_GENERATION:
            return self.generation
        if off == Q_SELECT:
            return self.queue_select
        q = self._selected()
        if q is None:
            return 0
        if off == Q_SIZE:
            return q.size
        if off == Q_MSIX:
            return self.vectors[self.queue_select]
        if off == Q_ENABLE:
            return int(q.ready)
        if off == Q_NOTIFY_OFF:
            return self.queue_select
        for lo, attr in Q_ADDRS.items():
            if off in (lo, lo + 4):
                return (getattr(q, attr) >> (32 if off == lo + 4 else 0)) & 0xFFFFFFFF
        return 0

    def _common_write(self, off: int, size: int, value: int) -> None:
        if off == STATUS_REG:
            self._write_status(value & 0xFF)
            return
        if off == Q_ENABLE:
            if value & 1:
                self._enable_queue()
            return
        with self._lock:
            if off == DFSELECT:
                self.dfselect = value
            elif off == GFSELECT:
                self.gfselect = value
            elif off == GF:
                if self.gfselect < 2 and not self.status & STATUS_FEATURES_OK:
                    shift = 32 * self.gfselect
                    self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | (value << shift)
            elif off == MSIX_CONFIG:
                self.msix_config = self._vector(value)
            elif off == Q_SELECT:
                self.queue_select = value & 0xFFFF
            else:
                self._queue_register_write(off, value)

    def _vector(self, value: int) -> int:
        """A vector the driver asks for, or NO_VECTOR if the function has no such MSI-X vector."""
        value &= 0xFFFF
        return value if self.msix is not None and value < self.msix.nvectors else NO_VECTOR

    def _queue_register_write(self, off: int, value: int) -> None:
        q = self._selected()
        if q is None:
            return
        if off == Q_MSIX:
            self.vectors[self.queue_select] = self._vector(value)
            return
        if q.ready:  # the ring's registers are frozen once the queue is enabled
            return
        if off == Q_SIZE:
            q.size = value & 0xFFFF  # checked (power of two, <= max) when the queue is activated
            return
        write_ring_address(q, Q_ADDRS, off, value)

    def _enable_queue(self) -> None:
        with self._io:
            with self._lock:
                q = self._selected()
                if q is None or q.ready:
                    return
                q.ready = True
                running = self.active and not self.broken
            if running:  # a queue enabled after DRIVER_OK (allowed for some devices) starts now
                self._activate_queue(self.queue_select)

    def _write_status(self, value: int) -> None:
        if value == 0:
            self.virtio_reset()
            return
        with self._io:
            with self._lock:
                change = status_write(self.name, self.status, value, self.driver_features,
                                      self.offered_features())
                if change.features is not None:
                    self.features = change.features
                self.status = change.status
            if change.start:
                self._activate()
            elif change.stop:
                self._deactivate()

    # ---- activation, kicks and interrupts -------------------------------------------------
    def _activate_queue(self, i: int) -> bool:
        """Validate queue i's rings (caller holds ``_io``); a bad ring marks the device NEEDS_RESET."""
        error = activate_queue(self.queues[i], self.features)
        if error is not None:
            self._needs_reset(f"queue {i}: {error}")
            return False
        os.eventfd_write(self._notify_fds[i], 1)  # buffers queued before the kick was wired are looked at
        return True

    def _activate(self) -> None:
        """DRIVER_OK: validate the enabled queues, then start the device (caller holds ``_io``)."""
        for i, q in enumerate(self.queues):
            if q.ready and not q.active and not self._activate_queue(i):
                return
        ctx = VirtioContext(features=self.features, queues=list(self.queues), interrupt=self.queue_interrupt,
                            config_changed=self.config_changed, needs_reset=self.needs_reset,
                            kick_fd=self.kick_fd, call_fd=self.call_fd, own_kick=self.own_kick)
        if not start_device(self.name, self.device, ctx, self._needs_reset):
            return
        self.active = True
        self._start_thread()

    def _deactivate(self) -> None:
        if self.active:
            self.active = False
            self._device_call(self.device.reset)

    def _device_call(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            log.exception("%s: %s failed", self.name, getattr(fn, "__name__", "device call"))

    def virtio_reset(self) -> None:
        """Status 0 (or a machine reset): the device and every queue back to their initial state."""
        with self._io:
            if self.active:
                self.active = False
                self._device_call(self.device.reset)
            if self._owned:  # the device gave its kicks back in reset(); make sure of it
                self._owned = frozenset()
                os.eventfd_write(self._rewatch_fd, 1)
            quiesced = self.quiesced
            with self._lock:
                self._init_common()
                self.quiesced = quiesced
                self.set_irq(False)
            self._drain_fds()

    def _drain_fds(self) -> None:
        for fd in self._notify_fds:
            try:
                os.eventfd_read(fd)
            except BlockingIOError:
                pass

    def needs_reset(self, reason: str) -> None:
        """VirtioContext.needs_reset: the device stops taking kicks until the driver resets it."""
        self._needs_reset(reason)

    def _needs_reset(self, reason: str) -> None:
        log.warning("%s: device needs reset: %s", self.name, reason)
        with self._lock:
            self.broken = True
            self.status |= STATUS_NEEDS_RESET
        self.config_changed()

    def config_changed(self) -> None:
        """The configuration-change interrupt (also bumps config_generation)."""
        with self._lock:
            self.generation = (self.generation + 1) & 0xFF
            self._interrupt(self.msix_config, ISR_CONFIG)

    def queue_interrupt(self, index: int) -> None:
        """VirtioContext.interrupt: queue ``index``'s used ring moved; suppressed as the driver asked."""
        if not 0 <= index < len(self.queues):
            return
        if not self.queues[index].should_notify():
            return
        with self._lock:
            self._interrupt(self.vectors[index], ISR_QUEUE)

    def _interrupt(self, vector: int, isr_bit: int) -> None:
        """MSI-X vector if the driver enabled MSI-X (NO_VECTOR: none), else ISR + INTx (caller holds the lock)."""
        if self.msix is not None and self.msix.notify(vector):  # False: MSI-X is off, so INTx
            return
        self.isr |= isr_bit
        self.set_irq(True)

    def kick_fd(self, index: int) -> int | None:
        """VirtioContext.kick_fd: queue ``index``'s kick eventfd (the KVM ioeventfd), e.g. for vhost.

        The I/O thread keeps reading it until the device takes it over with ``own_kick``.
        """
        return self._notify_fds[index] if 0 <= index < len(self._notify_fds) else None

    def own_kick(self, index: int, owned: bool) -> None:
        """VirtioContext.own_kick: stop (True) or resume (False) reading queue ``index``'s kick eventfd.

        While a device's in-kernel data plane (vhost) consumes the kicks, the I/O thread no
        longer wakes for them, so no Python runs per kick. On resume the queue is looked at once.
        """
        if not 0 <= index < len(self._notify_fds):
            return
        # Not under the I/O lock: a device may call this holding its own lock, which kicks take after it.
        with self._owned_lock:  # the I/O thread reads a kick eventfd only under it: none is read after this
            if (index in self._owned) == owned:
                return
            self._owned = self._owned | {index} if owned else self._owned - {index}
        os.eventfd_write(self._rewatch_fd, 1)
        if not owned:
            os.eventfd_write(self._notify_fds[index], 1)

    def call_fd(self, index: int) -> int | None:
        """VirtioContext.call_fd: the irqfd eventfd of queue ``index``'s MSI-X vector, or None (MSI-X off,
        no vector, or KVM without irqfd), for an in-kernel data plane that signals the guest itself."""
        if self.msix is None or not self.msix.enabled or not 0 <= index < len(self.vectors):
            return None
        vector = self.vectors[index]
        if not 0 <= vector < self.msix.nvectors:
            return None
        fd = self.msix.vector(vector).fd
        return fd if fd >= 0 else None

    # ---- the I/O thread ---------------------------------------------------------------------
    def _start_thread(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._io_loop, name=f"{self.name}-io", daemon=True)
            self._thread.start()

    def _io_loop(self) -> None:
        sel = selectors.DefaultSelector()
        watched: set[int] = set()

        def rewatch() -> None:  # watch every kick eventfd the device has not handed to the kernel
            want = set(range(len(self._notify_fds))) - self._owned
            for i in watched - want:
                sel.unregister(self._notify_fds[i])
            for i in want - watched:
                sel.register(self._notify_fds[i], selectors.EVENT_READ, i)
            watched.clear()
            watched.update(want)

        try:
            sel.register(self._stop_fd, selectors.EVENT_READ, -1)
            sel.register(self._rewatch_fd, selectors.EVENT_READ, -2)
            rewatch()
            while True:
                for key, _ in sel.select():
                    if key.data == -1:
                        return
                    if key.data == -2:
                        try:
                            os.eventfd_read(key.fd)
                        except BlockingIOError:
                            pass
                        rewatch()
                        continue
                    if key.data in watched:
                        self._kick_from_fd(key.data)
        finally:
            sel.close()

    def _kick_from_fd(self, index: int) -> None:
        """The I/O thread saw queue ``index``'s kick eventfd readable: consume it and kick, unless the
        device handed it to the kernel meanwhile (the check, the read and the kick are one step under
        the I/O lock, so a kick the kernel is owed is never taken from it)."""
        with self._owned_lock:
            if index in self._owned:
                return  # handed over (the rewatch may come later in this same wake-up)
            try:
                os.eventfd_read(self._notify_fds[index])
            except BlockingIOError:
                return
        self.kick(index)

    def kick(self, index: int) -> None:
        """Hand a kick of queue ``index`` to the device, unless it is stopped (then it is kept for later)."""
        with self._io:
            if not self.active or self.broken or not self.queues[index].active:
                return
            if self.quiesced:
                self.pending.add(index)
                return
            try:
                self.device.queue_notify(index)
            except VirtQueueError as exc:
                self._needs_reset(f"queue {index}: {exc}")
            except Exception as exc:
                log.exception("%s: queue %d notify failed", self.name, index)
                self._needs_reset(f"queue {index}: {exc}")

    # ---- ioeventfds ---------------------------------------------------------------------------
    def update_mappings(self) -> None:
        super().update_mappings()
        self._sync_ioeventfds()

    def _sync_ioeventfds(self) -> None:
        """Keep each queue's ioeventfd on its notify address while BAR4 decodes (and off when it moves)."""
        hook = self.ioeventfd_hook
        if hook is None:
            return
        base = self.mapped_bars().get(MODERN_BAR)
        want = {} if base is None or self._closed else \
            {i: base + NOTIFY_OFF + NOTIFY_MULTIPLIER * i for i in range(len(self.queues))}
        for i, addr in list(self._registered.items()):
            if want.get(i) != addr:
                hook(self._notify_fds[i], addr, False)
                del self._registered[i]
        for i, addr in want.items():
            if i not in self._registered and hook(self._notify_fds[i], addr, True):
                self._registered[i] = addr

    def kick_addresses(self) -> dict[int, int]:
        """Queue -> the notify address KVM signals its eventfd for (empty without ioeventfds)."""
        return dict(self._registered)

    # ---- device protocol ------------------------------------------------------------------------
    def reset(self) -> None:
        self.virtio_reset()
        super().reset()
        if self.msix is not None:
            self.msix.reset()

    def quiesce(self) -> None:
        """Stop calling into the device and let it finish in-flight work (the VM is being paused or saved)."""
        with self._io:
            if self.quiesced:
                return
            self.quiesced = True
            if self.active:
                self._device_call(self.device.quiesce)

    def resume(self) -> None:
        with self._io:
            if not self.quiesced:
                return
            self.quiesced = False
            if self.active:
                self._device_call(self.device.resume)
            pending, self.pending = self.pending, set()
        for i in pending:
            os.eventfd_write(self._notify_fds[i], 1)

    def close(self) -> None:
        """VM teardown: stop the I/O thread, drop the ioeventfds, let the device release its resources."""
        if self._closed:
            return
        self._closed = True
        self._sync_ioeventfds()
        os.eventfd_write(self._stop_fd, 1)
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._io:
            if self.active:
                self.active = False
                self._device_call(self.device.reset)
        self._device_call(self.device.close)
        for fd in (*self._notify_fds, self._stop_fd, self._rewatch_fd):
            os.close(fd)

    # ---- state ------------------------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        with self._io:
            with self._lock:
                common = {"dfselect": self.dfselect, "gfselect": self.gfselect,
                          "driver_features": self.driver_features, "features": self.features,
                          "status": self.status, "generation": self.generation,
                          "queue_select": self.queue_select, "msix_config": self.msix_config, "isr": self.isr,
                          "broken": self.broken}
                queues = [{"msix_vector": v, "ring": q.save()} for q, v in zip(self.queues, self.vectors)]
            state = {"pci": super().save(), "common": common, "queues": queues,
                     "msix": self.msix.save() if self.msix is not None else None,
                     "device": self.device.save()}
        return state

    def validate(self, state: dict[str, Any]) -> Any:
        check_keys(state, {"pci", "common", "queues", "msix", "device"})
        pci = super().validate(state["pci"])
        c = check_keys(state["common"], {"dfselect", "gfselect", "driver_features", "features", "status",
                                         "generation", "queue_select", "msix_config", "isr", "broken"})
        for key, hi in (("dfselect", 0xFFFFFFFF), ("gfselect", 0xFFFFFFFF), ("driver_features", (1 << 64) - 1),
                        ("features", (1 << 64) - 1), ("status", 0xFF), ("generation", 0xFF),
                        ("queue_select", 0xFFFF), ("msix_config", 0xFFFF), ("isr", 3)):
            int_field(c, key, 0, hi)
        if type(c["broken"]) is not bool:
            raise DeviceStateError("broken must be a boolean")
        if c["features"] & ~self.offered_features():
            raise DeviceStateError(f"negotiated features {c['features']:#x} include bits this device does not offer")
        self._check_vector(c["msix_config"])
        queues = state["queues"]
        if not isinstance(queues, list) or len(queues) != len(self.queues):
            raise DeviceStateError(f"the state must hold {len(self.queues)} queues")
        for i, (q, s) in enumerate(zip(self.queues, queues)):
            check_keys(s, {"msix_vector", "ring"})
            int_field(s, "msix_vector", 0, 0xFFFF)
            self._check_vector(s["msix_vector"])
            if not isinstance(s["ring"], dict):
                raise DeviceStateError(f"queue {i}: ring state must be a dict")
            q.validate(s["ring"])
        if self.msix is None:
            if state["msix"] is not None:
                raise DeviceStateError("this function has no MSI-X capability")
        else:
            if not isinstance(state["msix"], dict):
                raise DeviceStateError("MSI-X state must be a dict")
            self.msix.validate(state["msix"])
        if not isinstance(state["device"], dict):
            raise DeviceStateError("device state must be a dict")
        self.device.validate(state["device"])
        return pci

    def _check_vector(self, v: int) -> None:
        if v != NO_VECTOR and (self.msix is None or v >= self.msix.nvectors):
            raise DeviceStateError(f"MSI-X vector {v} does not exist on this function")

    def restore(self, state: dict[str, Any]) -> None:
        """Apply a validated state; a running device (DRIVER_OK) is activated again on the restored queues."""
        self.validate(state)
        with self._io:
            if self.active:
                self.active = False
                self._device_call(self.device.reset)
        quiesced = self.quiesced
        self._drain_fds()
        config, intx = super().validate(state["pci"])
        with self._lock:  # PciDevice.restore's work (its restore() would validate with this class's validate)
            self.config[:] = config
            self._intx_level = intx
            self.update_mappings()  # re-maps BAR4, so the ioeventfds follow
            self._drive_intx()
        with self._io:
            c = state["common"]
            with self._lock:
                self._init_common()
                self.quiesced = quiesced
                self.dfselect, self.gfselect = c["dfselect"], c["gfselect"]
                self.driver_features, self.features = c["driver_features"], c["features"]
                self.status, self.generation = c["status"], c["generation"]
                self.queue_select, self.msix_config, self.isr = c["queue_select"], c["msix_config"], c["isr"]
                self.broken = c["broken"]
                for i, (q, s) in enumerate(zip(self.queues, state["queues"])):
                    q.restore(s["ring"])
                    self.vectors[i] = s["msix_vector"]
            if self.msix is not None:
                self.msix.restore(state["msix"])
            self.device.restore(state["device"])
            if self.status & STATUS_DRIVER_OK and not self.broken:
                for q in self.queues:
                    q.active = False  # re-validated against this VM's RAM (the cursors are kept)
                self._activate()
            if self.active:
                self.pending |= {i for i, q in enumerate(self.queues) if q.active}
            if not self.quiesced:
                pending, self.pending = self.pending, set()
                for i in pending:
                    os.eventfd_write(self._notify_fds[i], 1)


# ---- building a function for a board from a -device line ----------------------------------------
TRANSPORT_PROPS = frozenset({"addr", "vectors", "disable-legacy", "disable-modern"})


class PciBoard(Protocol):
    """What a board gives the virtio functions it builds: guest RAM, its KVM VM (ioeventfds), MSI routes."""

    memory: Any
    vm: "VmFd"
    msi: MsiRoutes


def kvm_ioeventfd(vm: "VmFd", name: str) -> IoEventFdHook:
    """Register a queue's eventfd on its notify address with KVM (2-byte writes, as Linux makes them).

    When KVM refuses, the notify write exits to the MMIO handler, which signals the same eventfd.
    """
    warned: list[bool] = []

    def hook(fd: int, addr: int, assign: bool) -> bool:
        try:
            vm.ioeventfd(fd, addr, 2, pio=False, deassign=not assign)
            return True
        except (KvmError, OSError, ValueError) as exc:
            if not warned:
                warned.append(True)
                log.warning("%s: no KVM ioeventfd at %#x (%s); kicks take the MMIO exit", name, addr, exc)
            return False
    return hook


def virtio_pci(board: PciBoard, spec: "DeviceSpec", device: VirtioDevice,
               device_props: frozenset[str] = frozenset()) -> VirtioPci:
    """The modern transport around ``device`` for ``-device DRIVER,...``; refuses what it cannot honour.

    ``device_props`` are the properties the device's own factory reads; any other one (beyond the
    transport's and ``id``) is refused with QEMU's message.
    """
    where = spec.source or f"-device {spec.driver}"
    for key, _ in spec.props:
        if key not in TRANSPORT_PROPS and key not in device_props:
            raise ConfigError(f"{where}: Property '{spec.driver}.{key}' not found")
    if spec.get("disable-legacy", "on") not in ("on", "auto", "true", "yes") \
            or spec.get_bool("disable-modern", False):
        raise ConfigError(f"{where}: kvmpy's virtio-pci devices are modern (virtio 1.x) only; "
                          "disable-legacy=off and disable-modern=on are not supported")
    vectors = spec.get_number("vectors", len(device.queue_max_sizes) + 1, lo=0, hi=MAX_VECTORS)
    return VirtioPci(spec.driver, device, board.memory, msi=board.msi, vectors=vectors or 0,
                     ioeventfd=kvm_ioeventfd(board.vm, spec.driver), qdev_id=spec.id or "")
