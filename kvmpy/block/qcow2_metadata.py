"""The metadata of an open qcow2 image: header, L1/L2 tables, refcounts, snapshot table and
bitmap directory, and every write into them.

``Qcow2Metadata`` is the named interface the qcow2 modules share: the guest I/O driver
(qcow2.py), check/repair (qcow2_check.py) and snapshots (qcow2_snapshot.py) all reach the
image's tables through its public methods, never through each other.

Every write into the file goes through ``pwrite`` (or ``check_data`` for guest data written in
bulk) with the kind of structure it means to write; a write that would land on metadata of
another kind marks the image corrupt and is refused (see qcow2_overlap).
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from kvmpy.block import qcow2_bitmaps as bm
from kvmpy.block import qcow2_format as fmt
from kvmpy.block.errors import BlockError, CorruptImageError, UnsupportedImageError
from kvmpy.block.qcow2_overlap import Meta, OverlapMap, describe
from kvmpy.block.qcow2_refcount import Refcounts

log = logging.getLogger(__name__)

# Cluster kinds as classify() reports them.
UNALLOCATED, ZERO_PLAIN, ZERO_ALLOC, NORMAL, COMPRESSED = range(5)
L2_RESERVED = 0x3F000000000001FE
SCALAR_CLASSIFY = 16  # classify() takes this many L2 entries or fewer one by one (see _classify_few)
L2_CACHE_BYTES = 32 << 20
BITMAP_MEMORY_LIMIT = 256 << 20  # recorded bits held per bitmap before it is given up (in-use)


class Qcow2Metadata:
    """An open qcow2 file's metadata (version 2 or 3), read at open and written through."""

    def __init__(self, fd: int, path: Path, readonly: bool, *, for_check: bool = False) -> None:
        self.fd = fd
        self.path = path
        self.readonly = readonly
        self.for_check = for_check  # check -r may open corrupt images read-write to repair them
        self._l2_cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._overlap: OverlapMap | None = None
        self._tracking: dict[int, dict[int, np.ndarray]] | None = None  # bitmap -> bits
        st = os.fstat(fd)
        first = os.pread(fd, 4096, 0)
        try:
            h = fmt.parse_header(first, st.st_size)
            if h.cluster_size > len(first):
                h = fmt.parse_header(os.pread(fd, h.cluster_size, 0), st.st_size)
        except (CorruptImageError, UnsupportedImageError) as e:
            raise type(e)(f"{path}: {e}") from None
        self.h = h
        self.cluster_bits = h.cluster_bits
        self.cs = h.cluster_size
        self.l2_bits = h.cluster_bits - 3
        self.l2_entries = 1 << self.l2_bits
        self._csize_shift = 62 - (h.cluster_bits - 8)
        self._csize_mask = (1 << (h.cluster_bits - 8)) - 1
        self._coff_mask = (1 << self._csize_shift) - 1
        if h.incompatible_features & fmt.INCOMPAT_CORRUPT and not readonly and not for_check:
            raise CorruptImageError(f"{path}: image is corrupt; cannot be opened read/write "
                                    "(run 'kvmpy-img check -r all')")
        raw = os.pread(fd, h.l1_size * 8, h.l1_table_offset) if h.l1_size else b""
        if len(raw) < h.l1_size * 8:
            raise CorruptImageError(f"{path}: L1 table at {h.l1_table_offset:#x} is past the "
                                    "end of the file")
        self.l1 = np.frombuffer(raw, dtype=">u8").astype(np.uint64)
        self.rc = Refcounts(fd, path, h.cluster_bits, h.refcount_order, h.refcount_table_offset,
                            h.refcount_table_clusters, self._write_reftable_location)
        self.rc.on_new_metadata = self.note_metadata
        self.rc.check_overlap = self.check_overlap
        self.snapshots = self._load_snapshots()
        self.bitmap_ext: bm.BitmapExtension | None = None
        self.bitmaps: list[bm.Bitmap] = []
        self._load_bitmaps()
        # Autoclear bits kvmpy does not maintain are cleared on a read-write open; the bitmaps
        # bit only stays while there are bitmaps it keeps consistent.
        known = fmt.AUTOCLEAR_KNOWN if self.bitmap_ext is not None else 0
        if not readonly and h.autoclear_features & ~known:
            h.autoclear_features &= known
            self.write_header()

    # ------------------------------------------------------------------ loading
    def _load_snapshots(self) -> list[fmt.SnapshotEntry]:
        h = self.h
        if h.nb_snapshots == 0:
            return []
        size = os.fstat(self.fd).st_size
        want = min(fmt.MAX_SNAPSHOT_TABLE_BYTES, max(0, size - h.snapshots_offset))
        buf = os.pread(self.fd, want, h.snapshots_offset)
        try:
            return fmt.parse_snapshot_table(buf, h.nb_snapshots, self.cs)
        except CorruptImageError as e:
            raise CorruptImageError(f"{self.path}: {e}") from None

    def _load_bitmaps(self) -> None:
        """Read the bitmap directory when the header says the bitmaps are consistent."""
        ext = next((e for e in self.h.extensions if e.type == fmt.EXT_BITMAPS), None)
        if ext is None or not self.h.autoclear_features & bm.AUTOCLEAR_BITMAPS:
            return  # no bitmaps, or QEMU already considers them all inconsistent
        try:
            be = bm.parse_extension(ext.data, self.cs)
            buf = os.pread(self.fd, be.directory_size, be.directory_offset)
            self.bitmaps = bm.parse_directory(buf, be, self.cs)
            self.bitmap_ext = be
        except CorruptImageError as e:
            # Keep the extension but stop claiming the bitmaps are consistent (as a program
            # without bitmap support does); QEMU then ignores them rather than trusting them.
            log.warning("%s: ignoring persistent bitmaps: %s", self.path, e)
            self.bitmaps = []

    # ------------------------------------------------------------------ header
    def check_writable(self) -> None:
        """Raise unless the image may be written (opened read-write and not found corrupt)."""
        if self.readonly:
            raise BlockError(f"{self.path}: image is opened read-only")

    def write_header(self) -> None:
        """Rewrite the whole header cluster's meaningful bytes from ``self.h``."""
        self.pwrite(Meta.MAIN_HEADER, self.h.pack(), 0)

    def write_header_field(self, offset: int, fmt_: str, *values: int) -> None:
        """Write one packed header field (``fmt_`` is a struct format) at ``offset``."""
        self.pwrite(Meta.MAIN_HEADER, struct.pack(fmt_, *values), offset)

    def _write_reftable_location(self, offset: int, clusters: int) -> None:
        self.h.refcount_table_offset, self.h.refcount_table_clusters = offset, clusters
        self.write_header_field(48, ">QI", offset, clusters)
        self.forget_overlap()

    def set_l1_location(self, offset: int, size: int) -> None:
        self.h.l1_table_offset, self.h.l1_size = offset, size
        self.write_header_field(36, ">IQ", size, offset)
        self.forget_overlap()

    def set_snapshot_table(self, snaps: list[fmt.SnapshotEntry], offset: int) -> None:
        """Point the header at a snapshot table already written at ``offset``."""
        self.write_header_field(60, ">IQ", len(snaps), offset)
        self.h.nb_snapshots, self.h.snapshots_offset = len(snaps), offset
        self.snapshots = snaps
        self.forget_overlap()

    def set_size(self, size: int) -> None:
        """Record a new virtual disk size in the header (the L1 table must already cover it)."""
        self.h.size = size
        self.write_header_field(24, ">Q", size)

    def set_incompat(self, bit: int, on: bool) -> None:
        """Set or clear an incompatible-feature bit (dirty, corrupt) and sync it (v3 only)."""
        if self.h.version < 3:
            return
        new = (self.h.incompatible_features | bit) if on else (self.h.incompatible_features & ~bit)
        if new != self.h.incompatible_features:
            self.h.incompatible_features = new
            self.write_header_field(72, ">Q", new)
            os.fsync(self.fd)

    def mark_corrupt(self, problem: str) -> CorruptImageError:
        """Set the corrupt bit (so nobody writes further damage) and build the error to raise."""
        log.error("%s: marking image as corrupt: %s", self.path, problem)
        if not self.readonly:
            if self.h.version >= 3:
                self.h.incompatible_features |= fmt.INCOMPAT_CORRUPT
                try:  # not through pwrite(): this one write must not be refused
                    os.pwrite(self.fd, struct.pack(">Q", self.h.incompatible_features), 72)
                    os.fsync(self.fd)
                except OSError:
                    pass
            self.readonly = True
        return CorruptImageError(f"{self.path}: marking image as corrupt: {problem}")

    # ------------------------------------------------------------------ overlap checks
    def _overlap_map(self) -> OverlapMap:
        if self._overlap is None:
            h, m = self.h, OverlapMap(self.cs)
            m.add(Meta.MAIN_HEADER, 0, self.cs)
            if h.l1_size:
                m.add(Meta.ACTIVE_L1, h.l1_table_offset, h.l1_size * 8)
            m.add(Meta.REFCOUNT_TABLE, h.refcount_table_offset, h.refcount_table_clusters * self.cs)
            if h.nb_snapshots:
                m.add(Meta.SNAPSHOT_TABLE, h.snapshots_offset,
                      len(fmt.snapshot_table_bytes(self.snapshots, h.version)))
                for s in self.snapshots:
                    if s.l1_size:
                        m.add(Meta.INACTIVE_L1, s.l1_table_offset, s.l1_size * 8)
            if self.bitmap_ext is not None:
                m.add(Meta.BITMAP_DIRECTORY, self.bitmap_ext.directory_offset,
                      self.bitmap_ext.directory_size)
            m.add_clusters(Meta.ACTIVE_L2, (self.l1 & np.uint64(fmt.L1E_OFFSET_MASK)).tolist())
            m.add_clusters(Meta.REFCOUNT_BLOCK,
                           (self.rc.table & np.uint64(fmt.REFT_OFFSET_MASK)).tolist())
            self._overlap = m
        return self._overlap

    def forget_overlap(self) -> None:
        """Tables moved or were freed: rebuild the overlap map on the next write."""
        self._overlap = None

    def note_metadata(self, kind: Meta, offset: int, nbytes: int) -> None:
        """A new metadata structure was written at [offset, offset + nbytes)."""
        if self._overlap is not None:
            self._overlap.add(kind, offset, nbytes)

    def check_overlap(self, kind: Meta, offset: int, nbytes: int) -> None:
        """Refuse (and mark the image corrupt) a write of ``kind`` over other metadata."""
        hit = self._overlap_map().hit(offset, nbytes, kind)
        if hit:
            raise self.mark_corrupt(describe(hit))

    def check_data(self, host_offsets: np.ndarray | list[int]) -> None:
        """The same check for guest data about to be written to these host clusters."""
        clusters = np.asarray(host_offsets, dtype=np.uint64) // np.uint64(self.cs)
        hit = self._overlap_map().hit_clusters(clusters, Meta.DATA)
        if hit:
            raise self.mark_corrupt(describe(hit))

    def pwrite(self, kind: Meta, data: bytes | bytearray | memoryview, offset: int) -> None:
        """Write after the overlap check: ``kind`` is the existing structure being updated, or
        Meta.DATA for guest data and for any newly allocated table (nothing may be there)."""
        self.check_overlap(kind, offset, len(data))
        os.pwrite(self.fd, data, offset)

    def flush(self) -> None:
        """fsync the file when it is open for writing."""
        if not self.readonly:
            os.fsync(self.fd)

    def now(self) -> tuple[int, int]:
        """The wall-clock time as (seconds, nanoseconds), for snapshot dates."""
        t = time.time_ns()
        return t // 1_000_000_000, t % 1_000_000_000

    # ------------------------------------------------------------------ persistent bitmaps
    def guest_data_changing(self, offset: int = 0, length: int = 0, *,
                            untrackable: bool = False, resized: bool = False) -> None:
        """Called before guest bytes [offset, offset + length) change: enabled bitmaps record
        the range (the first call flags them in-use on disk, see qcow2_bitmaps). An
        ``untrackable`` change (snapshot apply, emptying the image) leaves enabled bitmaps
        in-use for good; ``resized`` does that to every bitmap, since their size follows the
        disk's."""
        if not self.bitmaps:
            return
        if self._tracking is None:
            self._tracking = {}
            for i, b in enumerate(self.bitmaps):
                if b.flags & bm.FLAG_AUTO and not b.flags & bm.FLAG_IN_USE:
                    self._set_bitmap_flags(b, b.flags | bm.FLAG_IN_USE)
                    self._tracking[i] = {}
            os.fsync(self.fd)
        if resized:
            for b in self.bitmaps:
                if not b.flags & bm.FLAG_IN_USE:
                    self._set_bitmap_flags(b, b.flags | bm.FLAG_IN_USE)
        if resized or untrackable:
            for i in list(self._tracking):
                log.warning("%s: bitmap '%s' left in use: kvmpy cannot record this change in it",
                            self.path, self.bitmaps[i].name)
            self._tracking.clear()
            return
        for i, pending in list(self._tracking.items()):
            bm.mark_range(pending, offset, length, self.bitmaps[i].granularity_bits, self.cs)
            if len(pending) * self.cs * 8 > BITMAP_MEMORY_LIMIT:
                log.warning("%s: bitmap '%s' left in use: too many changes to hold in memory",
                            self.path, self.bitmaps[i].name)
                del self._tracking[i]

    def _set_bitmap_flags(self, b: bm.Bitmap, flags: int) -> None:
        self.pwrite(Meta.BITMAP_DIRECTORY, struct.pack(">I", flags), bm.flags_offset(b))
        b.flags = flags

    def store_bitmaps(self) -> None:
        """Write the recorded bits into the enabled bitmaps and clear their in-use flags (a
        clean close). A bitmap that cannot be stored stays in-use, so QEMU will not trust it."""
        if not self._tracking or self.readonly:
            return
        tracking, self._tracking = self._tracking, {}
        for i, pending in tracking.items():
            b = self.bitmaps[i]
            try:
                self._store_bitmap(b, pending)
            except (BlockError, OSError) as e:
                log.warning("%s: bitmap '%s' left in use: %s", self.path, b.name, e)
                continue
            self._set_bitmap_flags(b, b.flags & ~bm.FLAG_IN_USE)
        os.fsync(self.fd)

    def _store_bitmap(self, b: bm.Bitmap, pending: dict[int, np.ndarray]) -> None:
        if b.table_size != bm.table_entries(self.h.size, b.granularity_bits, self.cs):
            raise BlockError("its table does not match the disk size")
        table = np.frombuffer(os.pread(self.fd, b.table_size * 8, b.table_offset),
                              dtype=">u8").astype(np.uint64)
        if len(table) < b.table_size or (table & np.uint64(bm.TABLE_RESERVED)).any():
            raise BlockError("its table is damaged")
        for j in sorted(pending):
            if j >= b.table_size:
                raise BlockError("a write lies past the bitmap's end")
            e = int(table[j])
            off = e & bm.TABLE_OFFSET_MASK
            if not off and e & bm.TABLE_ALL_ONES:
                continue  # every bit already set
            bits = pending[j]
            if off:
                old = np.frombuffer(os.pread(self.fd, self.cs, off), dtype=np.uint8)
                if len(old) < self.cs:
                    raise BlockError("a data cluster lies past the end of the file")
                bits = bits | np.unpackbits(old, bitorder="little").astype(bool)
                self.pwrite(Meta.DATA, bm.pack_bits(bits), off)
            else:  # all zeros so far: the cluster is allocated, written, then linked
                off = self.rc.alloc(1)
                self.pwrite(Meta.DATA, bm.pack_bits(bits), off)
                self.pwrite(Meta.DATA, off.to_bytes(8, "big"), b.table_offset + j * 8)

    # ------------------------------------------------------------------ L1 / L2 tables
    def l1_entry_offset(self, l1i: int) -> int:
        """The L2 table offset in active L1 slot ``l1i`` (0: none); unaligned is corrupt."""
        e = int(self.l1[l1i])
        off = e & fmt.L1E_OFFSET_MASK
        if off % self.cs:
            raise self.mark_corrupt(f"L2 table offset {off:#x} unaligned (L1 index {l1i:#x})")
        return off

    def load_l2(self, off: int) -> np.ndarray:
        """The L2 table at ``off`` (cached; callers that change it call store_l2)."""
        tbl = self._l2_cache.get(off)
        if tbl is not None:
            self._l2_cache.move_to_end(off)
            return tbl
        raw = os.pread(self.fd, self.cs, off)
        if len(raw) < self.cs:
            raise CorruptImageError(f"{self.path}: L2 table at {off:#x} is past the end of the file")
        tbl = np.frombuffer(raw, dtype=">u8").astype(np.uint64)
        self._l2_cache[off] = tbl
        while len(self._l2_cache) * self.cs > L2_CACHE_BYTES and len(self._l2_cache) > 4:
            self._l2_cache.popitem(last=False)
        return tbl

    def store_l2(self, off: int, tbl: np.ndarray, lo: int, hi: int) -> None:
        """Write entries [lo, hi) of the active L2 table at ``off``."""
        self.pwrite(Meta.ACTIVE_L2, tbl[lo:hi].astype(">u8").tobytes(), off + lo * 8)

    def drop_l2_cache(self) -> None:
        """Forget cached L2 tables (after changes made behind the cache, or to re-read)."""
        self._l2_cache.clear()

    def write_l1(self) -> None:
        """Write the whole active L1 table back."""
        self.pwrite(Meta.ACTIVE_L1, self.l1.astype(">u8").tobytes(), self.h.l1_table_offset)

    def replace_l1(self, new: np.ndarray) -> None:
        """Make ``new`` (same length) the active L1 table, in place."""
        self.pwrite(Meta.ACTIVE_L1, new.astype(">u8").tobytes(), self.h.l1_table_offset)
        self.l1 = new
        self._l2_cache.clear()
        self.forget_overlap()

    def classify(self, entries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(kind, host offset) per L2 entry; raises on entries no valid image contains."""
        if len(entries) <= SCALAR_CLASSIFY:
            return self._classify_few(entries)
        comp = (entries & np.uint64(fmt.QCOW_OFLAG_COMPRESSED)) != 0
        offs = entries & np.uint64(fmt.L2E_OFFSET_MASK)
        zero = (entries & np.uint64(fmt.QCOW_OFLAG_ZERO)) != 0
        kinds = np.full(entries.shape, UNALLOCATED, dtype=np.int8)
        kinds[(offs != 0) & ~comp] = NORMAL
        kinds[zero & ~comp] = ZERO_PLAIN
        kinds[zero & ~comp & (offs != 0)] = ZERO_ALLOC
        kinds[comp] = COMPRESSED
        std = ~comp
        if ((entries[std] & np.uint64(L2_RESERVED)) != 0).any() or \
                ((offs[std] % np.uint64(self.cs)) != 0).any():
            bad = int(entries[std][((entries[std] & np.uint64(L2_RESERVED)) != 0) |
                                   ((offs[std] % np.uint64(self.cs)) != 0)][0])
            raise self.mark_corrupt(f"cluster allocation offset {bad & fmt.L2E_OFFSET_MASK:#x} "
                                    "unaligned or reserved bits set in L2 entry")
        offs = np.where(comp, entries & np.uint64(self._coff_mask), offs)
        return kinds, offs

    def _classify_few(self, entries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """classify() of a few entries (a guest request within one or two clusters) with Python ints: the same
        answer and the same error, without the dozen whole-array numpy operations that cost ~0.2 ms per call
        however short the array (two calls per read of an overlay over a base image)."""
        kinds: list[int] = []
        offs: list[int] = []
        cs, coff_mask = self.cs, self._coff_mask
        for e in entries.tolist():
            if e & fmt.QCOW_OFLAG_COMPRESSED:
                kinds.append(COMPRESSED)
                offs.append(e & coff_mask)
                continue
            off = e & fmt.L2E_OFFSET_MASK
            if e & L2_RESERVED or off % cs:
                raise self.mark_corrupt(f"cluster allocation offset {off:#x} "
                                        "unaligned or reserved bits set in L2 entry")
            if e & fmt.QCOW_OFLAG_ZERO:
                kinds.append(ZERO_ALLOC if off else ZERO_PLAIN)
            else:
                kinds.append(NORMAL if off else UNALLOCATED)
            offs.append(off)
        return np.array(kinds, dtype=np.int8), np.array(offs, dtype=np.uint64)

    def compressed_extent(self, entry: int) -> tuple[int, int]:
        """(host byte offset, byte count to read) of a compressed cluster's data."""
        off = entry & self._coff_mask
        nsec = ((entry >> self._csize_shift) & self._csize_mask) + 1
        return off, nsec * 512 - (off & 511)

    def compressed_entry(self, host: int, nbytes: int) -> int:
        """The L2 entry for ``nbytes`` of compressed data stored at ``host``."""
        nsec = ((host & 511) + nbytes + 511) // 512
        return fmt.QCOW_OFLAG_COMPRESSED | ((nsec - 1) << self._csize_shift) | host

    def lookup(self, l1i: int, first: int, count: int) -> np.ndarray:
        """L2 entries [first, first+count) of L1 slot ``l1i`` (zeros when no L2 table)."""
        if l1i >= len(self.l1):
            return np.zeros(count, dtype=np.uint64)
        off = self.l1_entry_offset(l1i)
        if off == 0:
            return np.zeros(count, dtype=np.uint64)
        return self.load_l2(off)[first:first + count]

    def l2_for_write(self, l1i: int) -> tuple[int, np.ndarray]:
        """The L2 table for ``l1i``, allocated or copied so it is exclusively ours."""
        if l1i >= len(self.l1):
            self.grow_l1(l1i + 1)
        e = int(self.l1[l1i])
        off = self.l1_entry_offset(l1i)
        if off and e & fmt.QCOW_OFLAG_COPIED:
            return off, self.load_l2(off)
        new = self.rc.alloc(1)
        tbl = self.load_l2(off).copy() if off else np.zeros(self.l2_entries, dtype=np.uint64)
        self.pwrite(Meta.DATA, tbl.astype(">u8").tobytes(), new)  # new: nothing may be there
        self._l2_cache[new] = tbl
        self.note_metadata(Meta.ACTIVE_L2, new, self.cs)
        entry = new | fmt.QCOW_OFLAG_COPIED
        self.pwrite(Meta.ACTIVE_L1, entry.to_bytes(8, "big"), self.h.l1_table_offset + l1i * 8)
        self.l1[l1i] = np.uint64(entry)
        if off:  # the old table stays with the snapshots that share it
            self._l2_cache.pop(off, None)
            self.forget_overlap()
            self.rc.update([off // self.cs], -1)
        return new, tbl

    def grow_l1(self, min_size: int, exact: bool = False) -> None:
        new_size = min_size if exact else max(min_size, len(self.l1) + len(self.l1) // 2, 1)
        if new_size * 8 > fmt.MAX_L1_BYTES:
            raise BlockError(f"{self.path}: L1 table would exceed {fmt.MAX_L1_BYTES} bytes")
        nclusters = -(-new_size * 8 // self.cs)
        if not exact:
            new_size = min(nclusters * self.cs // 8, fmt.MAX_L1_BYTES // 8)
        new_off = self.rc.alloc(nclusters)
        new_l1 = np.zeros(new_size, dtype=np.uint64)
        new_l1[:len(self.l1)] = self.l1
        self.pwrite(Meta.DATA, new_l1.astype(">u8").tobytes(), new_off)  # new table
        old_off, old_size = self.h.l1_table_offset, len(self.l1)
        self.set_l1_location(new_off, new_size)
        self.l1 = new_l1
        if old_size:
            first = old_off // self.cs
            self.rc.update(np.arange(first, first + -(-old_size * 8 // self.cs)), -1)

    def release(self, entries: np.ndarray) -> None:
        """Drop the references the given (now replaced) L2 entries held."""
        if not entries.any():  # nothing was allocated there (the usual case for a fresh image)
            return
        kinds, hosts = self.classify(entries)
        plain = (kinds == NORMAL) | (kinds == ZERO_ALLOC)
        drop = (hosts[plain] // np.uint64(self.cs)).astype(np.int64).tolist()
        for e in entries[kinds == COMPRESSED].tolist():
            off, n = self.compressed_extent(int(e))
            start = off & ~511
            stop = start + ((off & 511) + n + 511) // 512 * 512
            drop.extend(range(start // self.cs, (stop - 1) // self.cs + 1))
        if drop:
            self.rc.update(np.array(drop, dtype=np.int64), -1)

    def read_l1(self, offset: int, size: int, what: str) -> np.ndarray:
        """An (inactive) L1 table of ``size`` entries at ``offset``."""
        raw = os.pread(self.fd, size * 8, offset)
        if len(raw) < size * 8:
            raise BlockError(f"{self.path}: {what} L1 table is past the end of the file")
        return np.frombuffer(raw, dtype=">u8").astype(np.uint64)

    def bitmap_clusters(self) -> list[tuple[int, int, str]]:
        """(offset, byte count, what) of every run of clusters the persistent bitmaps own."""
        if self.bitmap_ext is None:
            return []
        return bm.referenced_clusters(self.bitmaps, self.bitmap_ext, self.cs,
                                      lambda n, off: os.pread(self.fd, n, off))
