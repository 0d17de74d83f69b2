"""pc-dimm placement: the device-memory window above RAM and where each DIMM goes in it.

As QEMU's pc machine lays it out (``-m size,slots=n,maxmem=max``): the window
starts at the first 1 GiB boundary past the RAM above 4 GiB (or at 4 GiB) and
is ``max - size`` long plus 1 GiB per slot, so that every DIMM can be aligned
to up to 1 GiB. The sum of the DIMMs may not exceed ``max - size``. A DIMM
takes the slot and address it asks for if they are free and fit, else the
lowest free slot and the lowest aligned gap that holds it. ``DeviceMemory``
checks and records plugged DIMMs; mapping their RAM into the guest, and the
ACPI that announces them, are the board's and the hotplug controller's jobs.
Error messages are QEMU 7.2's.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from kvmpy.memory.backend import HostMemoryBackend

GiB = 1 << 30
FOUR_GIB = 4 * GiB
SLOT_ALIGN = GiB  # the largest alignment a DIMM may need: room per slot


class DimmError(ValueError):
    """A DIMM cannot be plugged here; the message is QEMU's."""


def _align_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def device_memory_window(ram_above_4g: int, ram_size: int, maxmem: int, slots: int) -> tuple[int, int]:
    """(base, size) of the hotplug window for this RAM and ``-m`` slots/maxmem."""
    base = _align_up(FOUR_GIB + ram_above_4g, GiB)
    return base, maxmem - ram_size + SLOT_ALIGN * slots


@dataclass(eq=False)
class PcDimm:
    id: str | None
    backend: HostMemoryBackend
    addr: int
    slot: int
    node: int = 0
    hotplugged: bool = False

    @property
    def size(self) -> int:
        return self.backend.size

    @property
    def end(self) -> int:
        return self.addr + self.size

    def info(self) -> dict:
        """query-memory-devices' ``data`` for this DIMM (QEMU's member order)."""
        d = {"memdev": self.backend.path, "hotplugged": self.hotplugged, "addr": self.addr,
             "hotpluggable": True, "size": self.size, "slot": self.slot, "node": self.node}
        if self.id is not None:
            d["id"] = self.id
        return d


class DeviceMemory:
    """The window [base, base+size) and the DIMMs in it; ``limit`` is how much they may sum to."""

    def __init__(self, base: int, size: int, slots: int, limit: int) -> None:
        self.base, self.size, self.slots, self.limit = base, size, slots, limit
        self.dimms: list[PcDimm] = []
        self.lock = threading.Lock()

    @property
    def end(self) -> int:
        return self.base + self.size

    @property
    def used(self) -> int:
        return sum(d.size for d in self.dimms)

    def find(self, dev_id: str) -> PcDimm | None:
        return next((d for d in self.dimms if d.id == dev_id), None)

    def by_slot(self, slot: int) -> PcDimm | None:
        return next((d for d in self.dimms if d.slot == slot), None)

    def _slot(self, want: int | None) -> int:
        if not self.slots:
            raise DimmError("no slots where allocated, please specify the 'slots' option")
        used = {d.slot for d in self.dimms}
        if want is not None:
            if not 0 <= want < self.slots:
                raise DimmError(f"invalid slot number {want}, valid range is [0-{self.slots - 1}]")
            if want in used:
                raise DimmError(f"slot {want} is busy")
            return want
        free = next((i for i in range(self.slots) if i not in used), None)
        if free is None:
            raise DimmError("no free slots available")
        return free

    def _addr(self, size: int, align: int, want: int | None) -> int:
        if self.used + size > self.limit:
            raise DimmError(f"not enough space, currently {self.used:#x} in use of total space for memory "
                            f"devices {self.limit:#x}")
        if size % align:
            raise DimmError(f"backend memory size must be multiple of {align:#x}")
        placed = sorted(self.dimms, key=lambda d: d.addr)
        if want is not None:
            if want % align:
                raise DimmError(f"address must be aligned to {align:#x} bytes")
            if want < self.base or want + size > self.end:
                raise DimmError(f"can't add memory device [{want:#x}:{size:#x}], usable range for memory "
                                f"devices [{self.base:#x}:{self.size:#x}]")
            for d in placed:
                if want < d.end and d.addr < want + size:
                    raise DimmError(f"address range conflicts with memory device id='{d.id or ''}'")
            return want
        addr = _align_up(self.base, align)
        for d in placed:
            if addr < d.end and d.addr < addr + size:
                addr = _align_up(d.end, align)
            elif addr + size <= d.addr:
                break
        if addr + size > self.end:
            raise DimmError("could not find position in guest address space for memory device - memory "
                            "fragmented due to alignments")
        return addr

    def plan(self, backend: HostMemoryBackend, addr: int | None = None, slot: int | None = None) -> tuple[int, int]:
        """(address, slot) for a DIMM of ``backend``, honouring ``addr``/``slot``; DimmError if it cannot go in."""
        s = self._slot(slot)
        return self._addr(backend.size, backend.align, addr), s

    def add(self, dimm: PcDimm) -> None:
        self.dimms.append(dimm)

    def remove(self, dimm: PcDimm) -> None:
        self.dimms.remove(dimm)
