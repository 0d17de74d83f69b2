"""The rules both virtio transports (``pci.py`` and ``mmio.py``) apply the same way.

Each transport has its own registers and locking; what they share is how a
driver's writes are judged: the device-status handshake (FEATURES_OK only for
offered features with VERSION_1, DRIVER_OK only after FEATURES_OK, NEEDS_RESET
kept), a 32-bit half of a 64-bit ring address, the validation of a queue's
rings at activation, and starting the device model without letting its failure
reach the VMM.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from kvmpy.devices.virtio.device import (F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1, STATUS_DRIVER_OK,
                                         STATUS_FEATURES_OK, STATUS_NEEDS_RESET, VirtioContext, VirtioDevice, bit)
from kvmpy.devices.virtio.queue import SplitQueue, VirtQueueError

log = logging.getLogger(__name__)

TRANSPORT_FEATURES = bit(F_VERSION_1) | bit(F_INDIRECT_DESC) | bit(F_EVENT_IDX)  # what either transport adds


@dataclass(frozen=True)
class StatusChange:
    """The outcome of a driver's status write: the status to store, the features it fixed (None: no change),
    and whether the device starts (DRIVER_OK set) or stops (DRIVER_OK cleared)."""

    status: int
    features: int | None
    start: bool
    stop: bool


def status_write(name: str, old: int, value: int, driver_features: int, offered: int) -> StatusChange:
    """Judge a non-zero status write ``value`` against the ``old`` status (zero is a reset: the caller's)."""
    new = (value & ~STATUS_NEEDS_RESET) | (old & STATUS_NEEDS_RESET)
    features = None
    if new & STATUS_FEATURES_OK and not old & STATUS_FEATURES_OK:
        if driver_features & ~offered or not driver_features & bit(F_VERSION_1):
            log.info("%s: FEATURES_OK refused (driver features %#x, offered %#x)", name, driver_features, offered)
            new &= ~STATUS_FEATURES_OK
        else:
            features = driver_features
    if new & STATUS_DRIVER_OK and not new & STATUS_FEATURES_OK:
        new &= ~STATUS_DRIVER_OK  # DRIVER_OK without negotiated features: not accepted
    return StatusChange(new, features, start=bool(new & STATUS_DRIVER_OK) and not old & STATUS_DRIVER_OK,
                        stop=bool(old & STATUS_DRIVER_OK) and not new & STATUS_DRIVER_OK)


def write_ring_address(q: SplitQueue, addrs: dict[int, str], off: int, value: int) -> None:
    """Store ``value`` as the low or high half of the ring address whose low register ``addrs`` maps ``off``
    (or ``off - 4``) to; other offsets are ignored."""
    for lo, attr in addrs.items():
        if off in (lo, lo + 4):
            shift = 32 if off == lo + 4 else 0
            setattr(q, attr, (getattr(q, attr) & ~(0xFFFFFFFF << shift)) | ((value & 0xFFFFFFFF) << shift))
            return


def activate_queue(q: SplitQueue, features: int) -> str | None:
    """Validate and start ``q`` with the negotiated ``features``; the reason when its rings are unfit."""
    try:
        q.activate(bool(features & bit(F_EVENT_IDX)), bool(features & bit(F_INDIRECT_DESC)))
    except VirtQueueError as exc:
        return str(exc)
    return None


def start_device(name: str, device: VirtioDevice, ctx: VirtioContext,
                 needs_reset: Callable[[str], None]) -> bool:
    """``device.activate(ctx)``; a device that fails to start is marked NEEDS_RESET (False), never the VMM."""
    try:
        device.activate(ctx)
    except VirtQueueError as exc:
        needs_reset(str(exc))
        return False
    except Exception as exc:
        log.exception("%s: activation failed", name)
        needs_reset(f"activation failed: {exc}")
        return False
    return True
