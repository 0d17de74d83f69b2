"""The contract between a network device model (virtio-net) and a -netdev backend.

A backend moves whole Ethernet frames. ``send`` takes one frame from the guest
and never blocks for long (a full or disconnected backend drops it and counts
the drop). Incoming frames are delivered by the backend's own reader thread
through the ``receive`` callback given to ``start``; when the device has no
room (the guest posted no RX buffers), ``receive`` returns False and the
backend keeps that frame and stops reading until the device calls
``rx_ready()``. When ``vnet_hdr`` is true (a tap opened with IFF_VNET_HDR and
the offloads set through ``set_offloads``), every frame in both directions is
prefixed with a 12-byte ``virtio_net_hdr_v1``, so checksum and TSO offloads
pass through unchanged.
"""

from __future__ import annotations

import abc
from typing import Callable

Receive = Callable[[bytes], bool]


class NetBackend(abc.ABC):
    """One -netdev: ``id`` is its name on the command line (``-netdev tap,id=n0``)."""

    id: str
    vnet_hdr: bool = False

    @abc.abstractmethod
    def start(self, receive: Receive) -> None:
        """Begin delivering incoming frames to ``receive`` from the backend's thread."""

    @abc.abstractmethod
    def send(self, frame: bytes | memoryview) -> None:
        """One outgoing frame (with the vnet header when ``vnet_hdr``)."""

    def rx_ready(self) -> None:
        """The device has RX room again: deliver the held frame and resume reading."""

    def set_offloads(self, csum: bool, tso4: bool, tso6: bool, ecn: bool, ufo: bool) -> None:
        """Offloads the guest accepted (tap only; others ignore it)."""

    def set_link(self, up: bool) -> None:
        """QMP set_link: while down, frames are dropped both ways."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the reader thread and release the fd / socket / helper process."""

    def info(self) -> str:
        """One line for HMP ``info network``, e.g. ``tap: ifname=tap0,script=no,downscript=no``."""
        return type(self).__name__
