"""Persistent dirty bitmaps in qcow2 (the "bitmaps" header extension): parsing, the clusters
they own, and the bit arithmetic of recording writes in them.

Layouts from QEMU's docs/interop/qcow2.txt. kvmpy keeps bitmaps the way QEMU does: check counts
their clusters as referenced, read-only work never opens the image read-write, and autoclear
bit 0 stays set. Enabled bitmaps ("auto" flag) record guest writes: before the first change
kvmpy sets their in-use flag (on disk, synced), collects the dirtied bits in memory, and on a
clean close writes them into the bitmap's data clusters and clears in-use again. A crash
leaves in-use set, which QEMU reads as "inconsistent": never a bitmap that silently misses a
write. Disabled bitmaps do not record writes and are left alone. What kvmpy cannot record
(resize, applying an internal snapshot, commit emptying an image) leaves the affected bitmaps
in-use, QEMU's mark for a bitmap that must not be trusted.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kvmpy.block.errors import CorruptImageError

AUTOCLEAR_BITMAPS = 1 << 0
MAX_BITMAPS = 65535
MAX_DIRECTORY_BYTES = 64 << 20
MAX_TABLE_ENTRIES = 1 << 27  # QEMU's BME_MAX_TABLE_SIZE (0x8000000)
MIN_GRANULARITY_BITS, MAX_GRANULARITY_BITS = 9, 31  # QEMU's BME_{MIN,MAX}_GRANULARITY_BITS
TYPE_DIRTY_TRACKING = 1
FLAG_IN_USE = 1 << 0
FLAG_AUTO = 1 << 1
TABLE_OFFSET_MASK = 0x00FFFFFFFFFFFE00
TABLE_ALL_ONES = 1 << 0
TABLE_RESERVED = 0xFF000000000001FE

_EXT = struct.Struct(">IIQQ")
_ENTRY = struct.Struct(">QIIBBHI")


@dataclass
class BitmapExtension:
    nb_bitmaps: int
    directory_size: int
    directory_offset: int


@dataclass
class Bitmap:
    entry_offset: int      # where this bitmap's directory entry starts in the file
    table_offset: int
    table_size: int        # entries
    flags: int
    granularity_bits: int
    name: str


def parse_extension(data: bytes, cluster_size: int) -> BitmapExtension:
    if len(data) < _EXT.size:
        raise CorruptImageError("bitmaps extension is truncated")
    nb, _reserved, size, off = _EXT.unpack_from(data)
    if not 0 < nb <= MAX_BITMAPS:
        raise CorruptImageError(f"bitmaps extension: invalid bitmap count {nb}")
    if not 0 < size <= MAX_DIRECTORY_BYTES:
        raise CorruptImageError("bitmaps extension: invalid bitmap directory size")
    if off == 0 or off % cluster_size or off >= 1 << 56:
        raise CorruptImageError(f"bitmaps extension: invalid directory offset {off:#x}")
    return BitmapExtension(nb, size, off)


def parse_directory(buf: bytes, ext: BitmapExtension, cluster_size: int) -> list[Bitmap]:
    """The directory's entries (``buf`` holds exactly the directory's bytes)."""
    if len(buf) < ext.directory_size:
        raise CorruptImageError("bitmap directory is past the end of the file")
    out: list[Bitmap] = []
    pos = 0
    for i in range(ext.nb_bitmaps):
        if pos + _ENTRY.size > ext.directory_size:
            raise CorruptImageError(f"bitmap directory entry {i} is truncated")
        t_off, t_size, flags, _type, gbits, name_len, extra_len = _ENTRY.unpack_from(buf, pos)
        end = pos + _ENTRY.size + extra_len + name_len
        if end > ext.directory_size:
            raise CorruptImageError(f"bitmap directory entry {i} is truncated")
        try:
            name = buf[end - name_len:end].decode()
        except UnicodeDecodeError:
            raise CorruptImageError(f"bitmap {i}: name is not valid UTF-8") from None
        if t_off % cluster_size or t_off >= 1 << 56 or t_size > MAX_TABLE_ENTRIES or \
                (t_size and not t_off):
            raise CorruptImageError(f"bitmap '{name}': invalid bitmap table")
        if not MIN_GRANULARITY_BITS <= gbits <= MAX_GRANULARITY_BITS or \
                _type != TYPE_DIRTY_TRACKING:
            raise CorruptImageError(f"bitmap '{name}': invalid granularity or type")
        out.append(Bitmap(ext.directory_offset + pos, t_off, t_size, flags, gbits, name))
        pos = (end + 7) & ~7
    return out


def referenced_clusters(bitmaps: list[Bitmap], ext: BitmapExtension, cluster_size: int,
                        pread: Callable[[int, int], bytes]) -> list[tuple[int, int, str]]:
    """(byte offset, byte count, what) for every cluster run the bitmaps own: the directory,
    each bitmap table and each bitmap data cluster. Tables past the file's end are returned as
    they are; the caller reports those."""
    runs = [(ext.directory_offset, ext.directory_size, "bitmap directory")]
    for b in bitmaps:
        if not b.table_size:
            continue
        runs.append((b.table_offset, b.table_size * 8, f"bitmap '{b.name}' table"))
        raw = pread(b.table_size * 8, b.table_offset)
        for i in range(len(raw) // 8):
            e = struct.unpack_from(">Q", raw, i * 8)[0]
            off = e & TABLE_OFFSET_MASK
            if off:
                runs.append((off, cluster_size, f"bitmap '{b.name}' data"))
    return runs


def flags_offset(b: Bitmap) -> int:
    """File offset of a directory entry's 32-bit flags field."""
    return b.entry_offset + 12


def table_entries(disk_size: int, granularity_bits: int, cluster_size: int) -> int:
    """How many table entries a bitmap over ``disk_size`` bytes has (one per data cluster)."""
    nbits = -(-disk_size // (1 << granularity_bits))
    return -(-nbits // (cluster_size * 8))


def mark_range(pending: dict[int, np.ndarray], offset: int, length: int, granularity_bits: int,
               cluster_size: int) -> None:
    """Set the bits covering guest bytes [offset, offset + length) in ``pending`` (data cluster
    index -> that cluster's bits, unpacked, bit i of the cluster at index i)."""
    if length <= 0:
        return
    per = cluster_size * 8
    first = offset >> granularity_bits
    last = (offset + length - 1) >> granularity_bits
    for j in range(first // per, last // per + 1):
        bits = pending.get(j)
        if bits is None:
            bits = pending[j] = np.zeros(per, dtype=bool)
        lo, hi = max(first, j * per), min(last, (j + 1) * per - 1)
        bits[lo - j * per:hi - j * per + 1] = True


def pack_bits(bits: np.ndarray) -> bytes:
    """A data cluster's bits as qcow2 stores them: bit i is bit (i % 8) of byte i // 8."""
    return np.packbits(bits, bitorder="little").tobytes()
