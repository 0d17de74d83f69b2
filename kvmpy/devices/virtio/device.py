"""The contract between a virtio device model and the transport that carries it.

A device model (virtio-blk, -net, -rng, -console) knows its device type, its
feature bits, its configuration space and what to do with the buffers a
driver places on its queues. It knows nothing of PCI: the transport
(``kvmpy/devices/virtio/pci.py``) negotiates features, holds the queue
registers, turns a driver's kick into ``queue_notify`` on the device's own I/O
thread (fed by KVM ioeventfds), and turns ``VirtioContext.interrupt`` into an
MSI-X message through an irqfd, or INTx.

Life cycle, driven by the transport:
``reset()`` at power-on and whenever the driver writes status 0;
``activate(ctx)`` once the driver sets DRIVER_OK (queues validated and ready);
``queue_notify(i)`` for each kick, never concurrently with another call into
the device from the transport; ``quiesce()`` before the VM's state is saved
(in-flight requests completed or recorded, no guest-memory access until
``resume()``); ``save()``/``validate()``/``restore()`` as in ``Device``.

A driver that breaks the rules (a bad descriptor chain, a buffer outside RAM)
must never take the VMM down: the queue raises ``VirtQueueError`` and the
device fails that request, or calls ``ctx.needs_reset(reason)``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Callable, ClassVar

if TYPE_CHECKING:
    from kvmpy.devices.virtio.queue import SplitQueue

# Feature bits the transport handles (virtio 1.2, section 6).
F_INDIRECT_DESC = 28
F_EVENT_IDX = 29
F_VERSION_1 = 32
F_ACCESS_PLATFORM = 33
F_RING_PACKED = 34
F_IN_ORDER = 35

# Device status bits (virtio 1.2, 2.1).
STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_NEEDS_RESET = 0x40
STATUS_FAILED = 0x80


class DeviceType(IntEnum):
    """virtio device IDs (virtio 1.2, 5); the modern PCI device ID is 0x1040 + the type."""

    NET = 1
    BLOCK = 2
    CONSOLE = 3
    RNG = 4
    MEM = 24


def bit(n: int) -> int:
    return 1 << n


@dataclass
class VirtioContext:
    """What the transport gives a device at activation.

    ``queues[i]`` are ready, validated split queues. ``interrupt(i)`` tells the
    driver that queue i's used ring moved (the transport applies EVENT_IDX /
    NO_INTERRUPT suppression through the queue, then MSI-X or INTx).
    ``config_changed()`` raises the configuration-change interrupt.
    ``needs_reset(reason)`` marks the device NEEDS_RESET and stops it.

    Optional, for an in-kernel data plane (vhost-net); a transport that cannot
    offer them leaves them None and the device falls back to ``queue_notify``
    and ``interrupt``: ``kick_fd(i)`` is the eventfd a guest kick of queue i
    signals (the KVM ioeventfd); ``call_fd(i)`` an eventfd whose every write
    raises queue i's interrupt with no suppression applied (the irqfd eventfd
    of its MSI-X vector), or None when there is none (INTx, no vector);
    ``own_kick(i, True)`` makes the transport stop reading ``kick_fd(i)`` (the
    device gave it to the kernel) and ``own_kick(i, False)`` resume, looking
    at the queue once.
    """

    features: int
    queues: list["SplitQueue"]
    interrupt: Callable[[int], None]
    config_changed: Callable[[], None]
    needs_reset: Callable[[str], None]
    kick_fd: Callable[[int], int | None] | None = None
    call_fd: Callable[[int], int | None] | None = None
    own_kick: Callable[[int, bool], None] | None = None


class VirtioDevice(abc.ABC):
    """One virtio device model; subclasses are one file each under ``kvmpy/devices/virtio/``."""

    device_type: ClassVar[DeviceType]
    pci_class: ClassVar[int]  # PCI class << 8 | subclass, as QEMU gives the same device
    name: str  # "virtio-blk" etc., for logs and query-pci

    @property
    @abc.abstractmethod
    def queue_max_sizes(self) -> tuple[int, ...]:
        """The maximum size of each queue; their number is the device's queue count."""

    @abc.abstractmethod
    def device_features(self) -> int:
        """Device-specific feature bits offered (the transport adds VERSION_1, INDIRECT_DESC, EVENT_IDX)."""

    @abc.abstractmethod
    def config_read(self, offset: int, size: int) -> int:
        """Read the device configuration space; out of range reads 0."""

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Write the device configuration space; read-only by default."""

    @abc.abstractmethod
    def activate(self, ctx: VirtioContext) -> None:
        """The driver set DRIVER_OK: start using the queues (and any backend threads)."""

    @abc.abstractmethod
    def queue_notify(self, index: int) -> None:
        """The driver kicked queue ``index`` (called on the device's I/O thread)."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Back to the state before activation: stop backend threads, forget the queues."""

    def quiesce(self) -> None:
        """Finish or record in-flight work and stop touching guest memory until ``resume()``."""

    def resume(self) -> None:
        """Undo ``quiesce()``."""

    def save(self) -> dict[str, Any]:
        """Device-specific state (queue state is saved by the transport)."""
        return {}

    def validate(self, state: dict[str, Any]) -> Any:
        """Check ``save()`` data without applying it; raise DeviceStateError if unfit."""
        return None

    def restore(self, state: dict[str, Any]) -> None:
        """Apply validated ``save()`` data (the transport calls ``activate`` again if the driver was running)."""

    def close(self) -> None:
        """Release host resources (files, sockets, threads) at VM teardown."""
