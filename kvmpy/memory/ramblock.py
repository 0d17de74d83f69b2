"""RAMBlock: one anonymous mmap of guest RAM, its numpy view, host address and VMM-side dirty bitmap."""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field

import numpy as np

from kvmpy.kvm.abi import ffi

PAGE_SIZE = 4096
PAGE_SHIFT = 12


class RAMAllocationError(MemoryError):
    """The host refused to map the requested amount of guest RAM."""


@dataclass(eq=False)
class RAMBlock:
    """Host memory backing guest RAM. ``array`` is a uint8 view; ``host_addr`` is for KVM slots."""

    name: str
    size: int
    mm: mmap.mmap
    array: np.ndarray
    host_addr: int
    # Pages written by the VMM (device emulation, loaders): KVM's dirty log never sees them.
    vmm_dirty: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=bool))

    @classmethod
    def allocate(cls, name: str, size: int) -> "RAMBlock":
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"RAM block {name!r}: size {size} is not a positive multiple of {PAGE_SIZE}")
        try:
            mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0),
                           prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            raise RAMAllocationError(f"cannot allocate {size >> 20} MiB for RAM block {name!r}: {exc.strerror}") from None
        try:
            mm.madvise(mmap.MADV_DONTFORK)  # child processes (e.g. exec: migration) must not copy guest RAM
        except (AttributeError, OSError):
            pass
        array = np.frombuffer(mm, dtype=np.uint8)
        host_addr = int(ffi.cast("uintptr_t", ffi.from_buffer(mm)))
        return cls(name, size, mm, array, host_addr, np.zeros(size >> PAGE_SHIFT, dtype=bool))

    @property
    def npages(self) -> int:
        return self.size >> PAGE_SHIFT

    def mark_dirty(self, offset: int, length: int) -> None:
        if length > 0:
            self.vmm_dirty[offset >> PAGE_SHIFT:(offset + length - 1 >> PAGE_SHIFT) + 1] = True

    def take_vmm_dirty(self) -> np.ndarray:
        """Return and clear the VMM-side dirty bitmap."""
        taken = self.vmm_dirty.copy()
        self.vmm_dirty[:] = False
        return taken
