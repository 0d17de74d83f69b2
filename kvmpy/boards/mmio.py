"""MmioRouter: the MMIO bus a board routes vCPU MMIO exits to, rebuilt from each new FlatView.

The memory layer only flattens regions; this listener turns the I/O leaves of
each new FlatView into an address-range ``Bus``, so a board owns MMIO routing
the same way it owns the port-I/O bus.
"""

from __future__ import annotations

from kvmpy.devices.bus import Bus, OffsetDevice
from kvmpy.memory.address_space import FlatView
from kvmpy.memory.region import RegionKind


class MmioRouter:
    """Register with ``AddressSpace.add_listener``; ``read``/``write`` serve MMIO exits."""

    def __init__(self, name: str = "system-mmio") -> None:
        self.name = name
        self.bus = Bus(name)

    def __call__(self, view: FlatView) -> None:
        bus = Bus(self.name)
        for r in view.ranges:
            if r.region.kind is RegionKind.IO:
                assert r.region.device is not None
                dev = r.region.device if r.offset == 0 else OffsetDevice(r.region.device, r.offset)
                bus.map(r.addr, r.size, dev, r.region.name)
        self.bus = bus

    def read(self, addr: int, size: int) -> int:
        return self.bus.read(addr, size)

    def write(self, addr: int, size: int, value: int) -> None:
        self.bus.write(addr, size, value)
