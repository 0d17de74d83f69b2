"""MsiRoutes owns the PC board's KVM GSI routing table; MsiVector is one MSI message source.

KVM_SET_GSI_ROUTING replaces the whole table, so the owner always writes KVM's
default x86 routes first (GSIs 0-15 to the IOAPIC pin of the same number and to
the PIC pin, master for 0-7 and slave for 8-15; GSIs 16-23 to the IOAPIC only),
which keeps every ISA and PCI INTx line (KVM_IRQ_LINE) working as before, and
then one MSI route per programmed vector on GSIs from 24 up. Until the first
change the kernel's own default table is in place, which has the same routes.

An ``MsiVector`` holds an eventfd bound with KVM_IRQFD to its own GSI:
``trigger()`` is a single eventfd write, safe from any thread, with no ioctl.
Masking unbinds the irqfd, so writes made while masked stay counted in the
eventfd and KVM injects them when the vector is bound again (KVM polls the
eventfd on assignment). Where KVM lacks irqfd or GSI routing, a vector sends its
message with KVM_SIGNAL_MSI instead (an ioctl per trigger) and keeps a pending
flag while masked.

Route changes can be grouped with ``MsiRoutes.batch()`` so one change set costs
one KVM_SET_GSI_ROUTING. Everything is guarded by one lock per object.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import select
import threading
import weakref
from collections.abc import Iterator

from kvmpy.kvm import abi
from kvmpy.kvm.errors import KvmCapabilityError
from kvmpy.kvm.vm import GsiRoute, IrqchipRoute, MsiRoute, VmFd

log = logging.getLogger(__name__)

ISA_IRQS = 16
IOAPIC_PINS = abi.KVM_IOAPIC_NUM_PINS
FIRST_MSI_GSI = IOAPIC_PINS  # GSIs below are the irqchip pins


def default_routes() -> tuple[IrqchipRoute, ...]:
    """KVM's own x86 default table (what a VM has after KVM_CREATE_IRQCHIP)."""
    routes: list[IrqchipRoute] = []
    for gsi in range(IOAPIC_PINS):
        routes.append(IrqchipRoute(gsi, abi.IRQCHIP_IOAPIC, gsi))
        if gsi < ISA_IRQS:
            chip = abi.IRQCHIP_PIC_MASTER if gsi < 8 else abi.IRQCHIP_PIC_SLAVE
            routes.append(IrqchipRoute(gsi, chip, gsi % 8))
    return tuple(routes)


DEFAULT_ROUTES = default_routes()


class MsiRoutesFull(RuntimeError):
    """Every GSI KVM's routing table can hold is taken."""


class MsiRoutes:
    """The VM's GSI routing table: fixed irqchip routes plus MSI routes on GSIs allocated from 24 up."""

    def __init__(self, vm: VmFd, prefer_irqfd: bool = True) -> None:
        """``prefer_irqfd=False`` makes vectors use KVM_SIGNAL_MSI even where irqfd works."""
        self.vm = vm
        self._lock = threading.RLock()
        self.max_routes = vm.check_extension(abi.CAP_IRQ_ROUTING)  # 0: no routing table
        self.use_irqfd = prefer_irqfd and self.max_routes > len(DEFAULT_ROUTES) \
            and vm.check_extension(abi.CAP_IRQFD) > 0
        self.use_signal_msi = vm.check_extension(abi.CAP_SIGNAL_MSI) > 0
        self._allocated: set[int] = set()
        self._freed: list[int] = []  # a heap of GSIs given back, below ``_next``
        self._next = FIRST_MSI_GSI
        self._messages: dict[int, tuple[int, int]] = {}  # GSI -> (address, data) for routed GSIs
        self._vectors: weakref.WeakSet[MsiVector] = weakref.WeakSet()  # the ones not yet released, for close()
        self._batch_depth = 0
        self._dirty = False
        self.commits = 0  # KVM_SET_GSI_ROUTING calls made (a figure for tests and stats)

    # ---- GSIs ------------------------------------------------------------------------
    def allocate(self) -> int:
        """The lowest free GSI at or above 24 (no route yet)."""
        with self._lock:
            if len(self._allocated) >= self.max_routes - len(DEFAULT_ROUTES):
                raise MsiRoutesFull(f"all {len(self._allocated)} MSI routes of KVM's table are in use")
            gsi = heapq.heappop(self._freed) if self._freed else self._next
            self._next = max(self._next, gsi + 1)
            self._allocated.add(gsi)
            return gsi

    def free(self, gsi: int) -> None:
        """Give a GSI back, dropping its route."""
        with self._lock:
            self._check(gsi)
            self._allocated.discard(gsi)
            heapq.heappush(self._freed, gsi)
            if self._messages.pop(gsi, None) is not None:
                self._changed()

    def allocated(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._allocated)

    # ---- routes ------------------------------------------------------------------------
    def set_route(self, gsi: int, address: int, data: int) -> None:
        """Route an allocated GSI to the MSI message (address, data)."""
        if not 0 <= address < 1 << 64 or not 0 <= data < 1 << 32:
            raise ValueError(f"MSI message {address:#x}/{data:#x} does not fit 64/32 bits")
        with self._lock:
            self._check(gsi)
            if self._messages.get(gsi) != (address, data):
                self._messages[gsi] = (address, data)
                self._changed()

    def clear_route(self, gsi: int) -> None:
        """The GSI stays allocated but goes nowhere."""
        with self._lock:
            self._check(gsi)
            if self._messages.pop(gsi, None) is not None:
                self._changed()

    def routes(self) -> list[GsiRoute]:
        """The whole table as KVM gets it."""
        with self._lock:
            msi = [MsiRoute(g, a, d) for g, (a, d) in sorted(self._messages.items())]
        return [*DEFAULT_ROUTES, *msi]

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Changes made inside (from this thread; others wait) reach KVM in one ioctl at the end."""
        with self._lock:
            self._batch_depth += 1
            try:
                yield
            finally:
                self._batch_depth -= 1
                if self._batch_depth == 0 and self._dirty:
                    self.commit()

    def commit(self) -> None:
        """Write the table to KVM now (normally done for you after each change or batch)."""
        with self._lock:
            self._dirty = False
            self.commits += 1
            self.vm.set_gsi_routing(self.routes())

    def flush(self) -> None:
        """Commit now if a change is waiting (even inside a batch)."""
        with self._lock:
            if self._dirty:
                self.commit()

    def _changed(self) -> None:
        self._dirty = True
        if self._batch_depth == 0:
            self.commit()

    def _check(self, gsi: int) -> None:
        if gsi not in self._allocated:
            raise ValueError(f"GSI {gsi} was not allocated for MSI")

    # ---- vectors -----------------------------------------------------------------------
    def vector(self) -> "MsiVector":
        """A new MSI source, masked and without a message until ``update()``/``unmask()``."""
        if self.use_irqfd:
            vec = MsiVector(self, self.allocate())
        elif self.use_signal_msi:
            vec = MsiVector(self, None)
        else:
            raise KvmCapabilityError("this KVM has neither irqfd with GSI routing nor KVM_SIGNAL_MSI: no MSI")
        with self._lock:
            self._vectors.add(vec)
        return vec

    def close(self) -> None:
        """The VM is going away: close every vector's eventfd without further ioctls."""
        with self._lock:
            vectors = list(self._vectors)
            self._vectors.clear()
        for vec in vectors:
            vec.close()


class MsiVector:
    """One MSI message source; ``trigger()`` is the hot path (an eventfd write with irqfd)."""

    def __init__(self, routes: MsiRoutes, gsi: int | None) -> None:
        self.routes = routes
        self.gsi = gsi  # None: delivered with KVM_SIGNAL_MSI
        self._lock = threading.Lock()
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) if gsi is not None else -1
        self._masked = True
        self._message: tuple[int, int] | None = None
        self._pending = False  # KVM_SIGNAL_MSI mode: a trigger arrived while masked
        self._released = False

    @property
    def fd(self) -> int:
        """The eventfd KVM watches (irqfd mode), e.g. for vhost's call fd; -1 without irqfd."""
        return self._fd

    @property
    def masked(self) -> bool:
        return self._masked

    @property
    def message(self) -> tuple[int, int] | None:
        return self._message

    def trigger(self) -> None:
        """Send the message now, or hold it until unmasked; callable from any thread."""
        with self._lock:
            if self._fd >= 0:
                os.eventfd_write(self._fd, 1)
                return
            if self._released:
                return
            if self._masked or self._message is None:
                self._pending = True
                return
            address, data = self._message
        self.routes.vm.signal_msi(address, data)

    def update(self, address: int, data: int) -> None:
        """The message this vector sends (re-routes its GSI when it changed)."""
        with self._lock:
            if self._released:
                raise ValueError("MSI vector was released")
            self._message = (address, data)
            if self.gsi is not None:
                self.routes.set_route(self.gsi, address, data)

    def mask(self) -> None:
        """Stop delivering; triggers meanwhile stay pending."""
        with self._lock:
            if self._masked or self._released:
                return
            self._masked = True
            if self.gsi is not None:
                self.routes.vm.irqfd_deassign(self._fd, self.gsi)

    def unmask(self) -> None:
        """Deliver again, starting with anything that became pending while masked."""
        with self._lock:
            if not self._masked or self._released:
                return
            self._masked = False
            if self.gsi is not None:
                self.routes.flush()  # the route must be in KVM before binding: held triggers go out at once
                self.routes.vm.irqfd(self._fd, self.gsi)
                return
            deliver = self._pending and self._message is not None
            self._pending = False
            message = self._message
        if deliver and message is not None:
            self.routes.vm.signal_msi(*message)

    def pending(self) -> bool:
        """A trigger is held because the vector is masked."""
        with self._lock:
            if self._fd < 0:
                return self._pending
            if not self._masked:
                return False
            return bool(select.select([self._fd], [], [], 0)[0])

    def clear_pending(self) -> None:
        """Drop a held trigger (the guest cleared it, or the device was reset)."""
        with self._lock:
            self._pending = False
            if self._fd >= 0 and self._masked:
                try:
                    os.eventfd_read(self._fd)
                except BlockingIOError:
                    pass

    def close(self) -> None:
        """Close the eventfd only (the VM is being torn down, which drops its irqfds itself)."""
        with self._lock:
            self._released = self._masked = True
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def release(self) -> None:
        """Unbind, free the GSI and close the eventfd; later triggers are ignored."""
        with self._lock:
            if self._released:
                return
            self._released = True
            if self.gsi is not None:
                if not self._masked:
                    self.routes.vm.irqfd_deassign(self._fd, self.gsi)
                self.routes.free(self.gsi)
                os.close(self._fd)
                self._fd = -1
            self._masked = True
