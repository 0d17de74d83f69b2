"""RAMBlock: one mmap of guest RAM (anonymous or of a file), its numpy view, host address and VMM-side dirty bitmap.

``allocate`` maps anonymous memory (pc.ram, memory-backend-ram); ``map_file``
maps a file on tmpfs or hugetlbfs (memory-backend-file), privately or, with
``share``, MAP_SHARED so that another process mapping the file sees the guest
write. Both kinds are the same RAMBlock to slots, dirty logging and migration.

numpy is imported on first use of ``array`` or of the dirty bitmaps, not at
start-up: booting a guest only needs the memoryview, and importing numpy
costs seconds inside the nested test bed.
"""

from __future__ import annotations

import mmap
import os
import stat
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from kvmpy.kvm.abi import ffi

if TYPE_CHECKING:
    import numpy as np

PAGE_SIZE = 4096
PAGE_SHIFT = 12
HUGE_ALIGN = 2 << 20  # x86-64's transparent huge page size


class RAMAllocationError(MemoryError):
    """The host refused to map the requested amount of guest RAM; ``reason`` is the OS's word for why."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(eq=False)
class RAMBlock:
    """Host memory backing guest RAM. ``array`` is a uint8 view; ``host_addr`` is for KVM slots."""

    name: str
    size: int
    mm: mmap.mmap
    mv: memoryview  # writable bytes view of the block (``size`` bytes of ``mm`` from ``offset``)
    host_addr: int
    # Pages written by the VMM (device emulation, loaders): KVM's dirty log never sees them.
    # One byte per page, non-zero when dirty.
    vmm_dirty: bytearray = field(repr=False, default_factory=bytearray)
    page_size: int = PAGE_SIZE  # the host page size behind the block (huge pages on hugetlbfs)
    offset: int = 0  # where the block starts in ``mm`` (anonymous RAM is placed on a 2 MiB boundary)

    @classmethod
    def allocate(cls, name: str, size: int, share: bool = False) -> "RAMBlock":
        """Anonymous guest RAM (``share``: MAP_SHARED, as QEMU's memory-backend-ram,share=on), starting on a
        2 MiB boundary when it is at least that big (as QEMU aligns its RAM blocks): the kernel can then back
        it with transparent huge pages from the first touch, rather than with small pages that khugepaged
        later collapses by moving them under the running guest."""
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"RAM block {name!r}: size {size} is not a positive multiple of {PAGE_SIZE}")
        slack = HUGE_ALIGN if size >= HUGE_ALIGN else 0
        kind = mmap.MAP_SHARED if share else mmap.MAP_PRIVATE
        try:
            mm = mmap.mmap(-1, size + slack, flags=kind | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0),
                           prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            raise RAMAllocationError(f"cannot allocate {size >> 20} MiB for RAM block {name!r}: {exc.strerror}",
                                     exc.strerror or "") from None
        base = int(ffi.cast("uintptr_t", ffi.from_buffer(mm)))
        pad = -base % HUGE_ALIGN if slack else 0  # the unused slack is address space only (never touched)
        for advice in ("MADV_DONTFORK",  # child processes (e.g. exec: migration) must not copy guest RAM
                       "MADV_HUGEPAGE"):  # as QEMU does: fewer faults and TLB misses for guest RAM
            try:
                mm.madvise(getattr(mmap, advice), pad, size)
            except (AttributeError, OSError):
                pass
        return cls(name, size, mm, memoryview(mm)[pad:pad + size], base + pad, bytearray(size >> PAGE_SHIFT),
                   offset=pad)

    @classmethod
    def map_file(cls, name: str, size: int, path: str, share: bool = False, prealloc: bool = False) -> "RAMBlock":
        """Map ``size`` bytes of ``path`` (a file, created and sized if need be, or a directory to hold an
        unlinked temporary file, as QEMU's mem-path). RAMAllocationError carries QEMU's wording."""
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"RAM block {name!r}: size {size} is not a positive multiple of {PAGE_SIZE}")
        try:
            if os.path.isdir(path):
                fd, tmp = tempfile.mkstemp(prefix=f"kvmpy_{name.rsplit('/', 1)[-1]}.", dir=path)
                os.unlink(tmp)
            else:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise RAMAllocationError(f"can't open backing store {path} for guest RAM: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            page = max(PAGE_SIZE, os.fstatvfs(fd).f_bsize)
            if size % page:
                raise RAMAllocationError(f"backing store {path} uses {page}-byte pages: size {size} is not a multiple")
            if stat.S_ISREG(st.st_mode) and st.st_size < size:
                os.ftruncate(fd, size)
            flags = mmap.MAP_SHARED if share else mmap.MAP_PRIVATE
            mm = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            raise RAMAllocationError(f"unable to map backing store for guest RAM: {exc.strerror}") from None
        finally:
            os.close(fd)  # the mapping keeps the file alive
        try:
            mm.madvise(mmap.MADV_DONTFORK)
        except (AttributeError, OSError):
            pass
        host_addr = int(ffi.cast("uintptr_t", ffi.from_buffer(mm)))
        block = cls(name, size, mm, memoryview(mm), host_addr, bytearray(size >> PAGE_SHIFT), page)
        if prealloc:
            block.populate()
        return block

    def populate(self) -> None:
        """Fault every page in now (prealloc=on): MADV_POPULATE_WRITE, else a write per page."""
        advice = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14+
        try:
            self.mm.madvise(advice, self.offset, self.size)
            return
        except OSError:
            pass
        for off in range(0, self.size, self.page_size):
            self.mv[off] = self.mv[off]

    @cached_property
    def array(self) -> "np.ndarray":
        """The block as a uint8 numpy array (shares memory with the mmap)."""
        import numpy as np

        return np.frombuffer(self.mv, dtype=np.uint8)

    @property
    def npages(self) -> int:
        return self.size >> PAGE_SHIFT

    def mark_dirty(self, offset: int, length: int) -> None:
        if length > 0:
            first, last = offset >> PAGE_SHIFT, (offset + length - 1 >> PAGE_SHIFT) + 1
            self.vmm_dirty[first:last] = b"\x01" * (last - first)

    def take_vmm_dirty(self) -> "np.ndarray":
        """Return (as a bool array, one per page) and clear the VMM-side dirty bitmap."""
        import numpy as np

        live = np.frombuffer(self.vmm_dirty, dtype=np.uint8)
        taken = live.astype(bool)
        live[:] = 0
        return taken
