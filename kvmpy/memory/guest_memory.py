"""GuestMemory: bounds-checked reads and writes of guest-physical memory by the VMM.

Accesses may span several RAM ranges (e.g. across a DIMM boundary) and are
split transparently. Anything that touches a hole or an I/O range raises
GuestMemoryError, which device models turn into a guest-visible error rather
than a crash. Every write marks the RAM block's VMM-side dirty bitmap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from kvmpy.memory.address_space import AddressSpace, FlatRange

if TYPE_CHECKING:
    import numpy as np


class GuestMemoryError(ValueError):
    """A guest-physical access fell outside RAM."""


class GuestMemory:
    def __init__(self, address_space: AddressSpace) -> None:
        self.address_space = address_space

    def _chunks(self, gpa: int, length: int) -> Iterator[tuple[FlatRange, int, int]]:
        """Yield (range, offset inside its RAM block, chunk length) covering [gpa, gpa+length)."""
        if gpa < 0 or length < 0 or gpa + length > 1 << 52:
            raise GuestMemoryError(f"guest access [{gpa:#x}, +{length:#x}) is out of range")
        view = self.address_space.flatview
        pos, end = gpa, gpa + length
        while pos < end:
            r = view.lookup(pos)
            if r is None or not r.is_ram:
                what = "unmapped" if r is None else f"I/O ({r.region.name})"
                raise GuestMemoryError(f"guest access at {pos:#x} hits {what} memory")
            n = min(end, r.end) - pos
            yield r, r.ram_offset + (pos - r.addr), n
            pos += n

    def _within_one(self, gpa: int, length: int) -> tuple[FlatRange, int] | None:
        """The fast path: the RAM range holding all of [gpa, gpa+length) and the block offset, if one does."""
        r = self.address_space.flatview.lookup(gpa) if gpa >= 0 and length >= 0 else None
        if r is None or gpa + length > r.addr + r.size or not r.is_ram:
            return None
        return r, r.region.ram_offset + r.offset + (gpa - r.addr)

    def check(self, gpa: int, length: int, write: bool = False) -> None:
        """Raise GuestMemoryError unless [gpa, gpa+length) is all RAM (and, with ``write``, all writable)."""
        one = self._within_one(gpa, length)
        if one is not None and not (write and one[0].region.readonly):
            return
        for r, _off, _n in self._chunks(gpa, length):
            if write and r.region.readonly:
                raise GuestMemoryError(f"guest range [{gpa:#x}, +{length:#x}) hits read-only {r.region.name}")

    def read(self, gpa: int, length: int) -> bytes:
        one = self._within_one(gpa, length)
        if one is not None:
            return bytes(one[0].region.ram.mv[one[1]:one[1] + length])  # type: ignore[union-attr]
        return b"".join(bytes(r.region.ram.mv[off:off + n]) for r, off, n in self._chunks(gpa, length))  # type: ignore[union-attr]

    def view(self, gpa: int, length: int) -> "np.ndarray":
        """A zero-copy uint8 view; the range must lie in a single RAM range. Not dirty-marked."""
        chunks = list(self._chunks(gpa, length))
        if len(chunks) != 1:
            raise GuestMemoryError(f"guest range [{gpa:#x}, +{length:#x}) is not contiguous in one RAM block")
        r, off, n = chunks[0]
        return r.region.ram.array[off:off + n]  # type: ignore[union-attr]

    def write(self, gpa: int, data: "bytes | bytearray | memoryview | np.ndarray") -> None:
        src = memoryview(data).cast("B")  # any contiguous buffer, numpy arrays included
        one = self._within_one(gpa, len(src))
        if one is not None and not one[0].region.readonly:
            block, off = one[0].region.ram, one[1]
            block.mv[off:off + len(src)] = src  # type: ignore[union-attr]
            block.mark_dirty(off, len(src))  # type: ignore[union-attr]
            return
        chunks = list(self._chunks(gpa, len(src)))  # validate everything before writing anything
        pos = 0
        for r, off, n in chunks:
            if r.region.readonly:
                raise GuestMemoryError(f"guest write at {r.addr + off - r.ram_offset:#x} hits read-only {r.region.name}")
        for r, off, n in chunks:
            block = r.region.ram
            assert block is not None
            block.mv[off:off + n] = src[pos:pos + n]
            block.mark_dirty(off, n)
            pos += n

    def read_u32(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 4), "little")

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 8), "little")

    def write_u32(self, gpa: int, value: int) -> None:
        self.write(gpa, (value & 0xFFFFFFFF).to_bytes(4, "little"))

    def write_u64(self, gpa: int, value: int) -> None:
        self.write(gpa, (value & (1 << 64) - 1).to_bytes(8, "little"))

    def fill(self, gpa: int, length: int, byte: int = 0) -> None:
        for r, off, n in list(self._chunks(gpa, length)):
            r.region.ram.mv[off:off + n] = bytes((byte & 0xFF,)) * n  # type: ignore[union-attr]
            r.region.ram.mark_dirty(off, n)  # type: ignore[union-attr]

    def buffers(self, gpa: int, length: int, write: bool = False) -> list[memoryview]:
        """Zero-copy views of [gpa, gpa+length), one per RAM range it crosses, for device DMA
        (preadv/pwritev straight to or from guest RAM). With ``write`` the range must be
        writable RAM; the caller fills the views and then calls ``mark_dirty`` for the range
        (after the write, so a migration pass cannot send the old bytes and lose the new)."""
        one = self._within_one(gpa, length)
        if one is not None and not (write and one[0].region.readonly):
            return [one[0].region.ram.mv[one[1]:one[1] + length]]  # type: ignore[union-attr]
        out = []
        for r, off, n in list(self._chunks(gpa, length)):
            if write and r.region.readonly:
                raise GuestMemoryError(f"guest range [{gpa:#x}, +{length:#x}) hits read-only {r.region.name}")
            out.append(r.region.ram.mv[off:off + n])  # type: ignore[union-attr]
        return out

    def mark_dirty(self, gpa: int, length: int) -> None:
        """Record that the VMM wrote [gpa, gpa+length) through ``buffers`` views."""
        one = self._within_one(gpa, length)
        if one is not None:
            one[0].region.ram.mark_dirty(one[1], length)  # type: ignore[union-attr]
            return
        for r, off, n in list(self._chunks(gpa, length)):
            r.region.ram.mark_dirty(off, n)  # type: ignore[union-attr]
