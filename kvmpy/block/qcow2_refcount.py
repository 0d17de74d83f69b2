"""qcow2 reference counts: the refcount table, refcount blocks of any width, and cluster allocation.

Every change is written through to the file before the caller continues, so callers can order their
own writes after it (refcount first, then data, then L2, then L1): a crash leaks, never corrupts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kvmpy.block.errors import BlockError, CorruptImageError
from kvmpy.block.qcow2_format import REFT_OFFSET_MASK
from kvmpy.block.qcow2_overlap import Meta

log = logging.getLogger(__name__)

_BE_DTYPES = {8: ">u1", 16: ">u2", 32: ">u4", 64: ">u8"}


def decode_refblock(buf: bytes, bits: int) -> np.ndarray:
    """A refcount block's bytes -> uint64 array of its entries."""
    if bits >= 8:
        return np.frombuffer(buf, dtype=_BE_DTYPES[bits]).astype(np.uint64)
    raw = np.unpackbits(np.frombuffer(buf, dtype=np.uint8), bitorder="little")
    weights = (1 << np.arange(bits)).astype(np.uint64)
    return (raw.reshape(-1, bits).astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)


def encode_refblock(values: np.ndarray, bits: int) -> bytes:
    """uint64 refcounts -> bytes (entries narrower than a byte are packed LSB first)."""
    if bits >= 8:
        return values.astype(_BE_DTYPES[bits]).tobytes()
    v = values.astype(np.uint64)
    raw = ((v[:, None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
    return np.packbits(raw.reshape(-1), bitorder="little").tobytes()


def _distinct(values: np.ndarray) -> list[int]:
    """Sorted distinct values (np.unique would import numpy.ma, ~10 ms of start-up)."""
    if values.size and values.min() == values.max():
        return [int(values[0])]
    return sorted(set(values.tolist()))


class Refcounts:
    """The refcount table and a cache of its blocks, with a first-fit cluster allocator."""

    def __init__(self, fd: int, path: Path, cluster_bits: int, refcount_order: int,
                 table_offset: int, table_clusters: int,
                 write_table_location: Callable[[int, int], None]) -> None:
        self.fd = fd
        self.path = path
        self.cluster_bits = cluster_bits
        self.cs = 1 << cluster_bits
        self.bits = 1 << refcount_order
        self.max_refcount = (1 << self.bits) - 1
        self.epb = self.cs * 8 // self.bits  # entries per refcount block
        self.table_offset = table_offset
        self.table_clusters = table_clusters
        self._write_table_location = write_table_location
        raw = os.pread(fd, table_clusters * self.cs, table_offset)
        if len(raw) < table_clusters * self.cs:
            raw += bytes(table_clusters * self.cs - len(raw))  # past EOF reads as "no blocks"
        self.table = np.frombuffer(raw, dtype=">u8").astype(np.uint64)
        self._blocks: dict[int, np.ndarray] = {}
        self.free_hint = 0
        # The image's hooks: told about every new table or block, and asked before any write
        # (qcow2_metadata refuses writes that would land on other metadata).
        self.on_new_metadata: Callable[[Meta, int, int], None] = lambda kind, off, n: None
        self.check_overlap: Callable[[Meta, int, int], None] = lambda kind, off, n: None

    def _pwrite(self, kind: Meta, data: bytes, offset: int) -> None:
        """Write after the overlap check. ``kind`` is what an existing structure being updated
        is; a new block or table is written as Meta.DATA (as QEMU does: nothing may be there)."""
        self.check_overlap(kind, offset, len(data))
        os.pwrite(self.fd, data, offset)

    # -- reading ---------------------------------------------------------------------------
    def block_offset(self, index: int) -> int:
        if index >= len(self.table):
            return 0
        raw = int(self.table[index])
        off = raw & REFT_OFFSET_MASK
        if raw & ~REFT_OFFSET_MASK or off % self.cs:
            raise CorruptImageError(f"refcount block {index} offset {raw:#x} is not cluster aligned")
        if off == 0 and raw:
            raise CorruptImageError(f"refcount block {index} overlaps the image header")
        if off >= 1 << 56:
            raise CorruptImageError(f"refcount block {index} offset {raw:#x} is invalid")
        return off

    def block(self, index: int) -> np.ndarray | None:
        """The decoded refcount block ``index`` (None when the table has no block there)."""
        blk = self._blocks.get(index)
        if blk is not None:
            return blk
        off = self.block_offset(index)
        if off == 0:
            return None
        raw = os.pread(self.fd, self.cs, off)
        if len(raw) < self.cs:
            raise CorruptImageError(f"refcount block {index} at {off:#x} is past the end of the file")
        if len(self._blocks) > 4096:  # bound the cache; blocks are re-read on demand
            self._blocks.clear()
        blk = decode_refblock(raw, self.bits)
        self._blocks[index] = blk
        return blk

    def get(self, cluster: int) -> int:
        blk = self.block(cluster // self.epb)
        return 0 if blk is None else int(blk[cluster % self.epb])

    def get_many(self, clusters: np.ndarray) -> np.ndarray:
        """Refcounts of arbitrary cluster indices (vectorised per refcount block)."""
        clusters = np.asarray(clusters, dtype=np.int64)
        out = np.zeros(clusters.shape, dtype=np.uint64)
        if clusters.size == 0:
            return out
        bis = clusters // self.epb
        for bi in _distinct(bis):
            blk = self.block(bi)
            if blk is not None:
                sel = bis == bi
                out[sel] = blk[clusters[sel] - bi * self.epb]
        return out

    def get_range(self, start: int, count: int) -> np.ndarray:
        out = np.zeros(count, dtype=np.uint64)
        c = start
        while c < start + count:
            bi, i = divmod(c, self.epb)
            n = min(self.epb - i, start + count - c)
            blk = self.block(bi)
            if blk is not None:
                out[c - start:c - start + n] = blk[i:i + n]
            c += n
        return out

    # -- writing ---------------------------------------------------------------------------
    def _store(self, bi: int, lo: int, hi: int) -> None:
        """Write entries [lo, hi) of block ``bi`` back to the file."""
        blk = self._blocks[bi]
        if self.bits < 8:
            per = 8 // self.bits
            lo, hi = lo - lo % per, -(-hi // per) * per
        data = encode_refblock(blk[lo:hi], self.bits)
        self._pwrite(Meta.REFCOUNT_BLOCK, data, self.block_offset(bi) + lo * self.bits // 8)

    def update(self, clusters: np.ndarray | list[int], delta: int,
               weights: np.ndarray | None = None) -> None:
        """Add ``delta`` (times ``weights[i]``, if given) to each listed cluster's refcount."""
        arr = np.asarray(clusters, dtype=np.int64)
        if arr.size == 0 or delta == 0:
            return
        w = np.ones(arr.shape, dtype=np.int64) if weights is None else \
            np.asarray(weights, dtype=np.int64)
        if (arr < 0).any():
            raise CorruptImageError("negative cluster index")
        if delta > 0:
            for bi in _distinct(arr // self.epb):
                self._ensure_block(bi, arr)
        order = np.argsort(arr, kind="stable")
        arr, w = arr[order], w[order]
        bis = arr // self.epb
        for bi in _distinct(bis):
            m = bis == bi
            sel = arr[m] - bi * self.epb
            blk = self.block(bi)
            if blk is None:
                raise CorruptImageError(f"cluster {int(sel[0]) + bi * self.epb} has no refcount block")
            lo, hi = int(sel.min()), int(sel.max()) + 1
            counts = np.zeros(hi - lo, dtype=object if self.bits == 64 else np.int64)
            np.add.at(counts, sel - lo, w[m] * delta)
            if self.bits == 64:
                new = np.array([int(x) for x in blk[lo:hi]], dtype=object) + counts
            else:
                new = blk[lo:hi].astype(np.int64) + counts
            if (new < 0).any():
                bad = bi * self.epb + lo + int(np.flatnonzero(np.asarray(new < 0))[0])
                raise CorruptImageError(f"refcount of cluster {bad} would drop below zero")
            if (new > self.max_refcount).any():
                raise BlockError(f"{self.path}: refcount overflow ({self.bits}-bit refcounts)")
            blk[lo:hi] = np.array([int(x) for x in new], dtype=np.uint64) if self.bits == 64 \
                else new.astype(np.uint64)
            self._store(bi, lo, hi)
            if delta < 0:
                freed = np.flatnonzero(blk[lo:hi] == 0)
                if freed.size:
                    self.free_hint = min(self.free_hint, bi * self.epb + lo + int(freed[0]))

    def set_value(self, cluster: int, value: int, avoid: set[int] | None = None) -> None:
        """Set one refcount outright (check -r uses this); a new block avoids ``avoid``."""
        bi, i = divmod(cluster, self.epb)
        if value and self.block(bi) is None:
            base = bi * self.epb
            taken = [c for c in range(base, base + self.epb) if c in (avoid or ())] + [cluster]
            self._ensure_block(bi, np.array(taken))
        blk = self.block(bi)
        if blk is None:
            return
        blk[i] = value
        self._store(bi, i, i + 1)
        if value == 0:
            self.free_hint = min(self.free_hint, cluster)

    # -- allocation ------------------------------------------------------------------------
    def alloc(self, count: int) -> int:
        """Allocate ``count`` contiguous clusters (refcount 1, written) and return the byte offset."""
        extra = 0
        while True:
            start = self._find_free(count + extra)
            last = start + count + extra - 1
            if last // self.epb >= len(self.table):
                self._grow_table(last // self.epb)
                continue
            missing = [bi for bi in range(start // self.epb, last // self.epb + 1)
                       if self.block(bi) is None]
            if not missing:
                self.update(np.arange(start, start + count), 1)
                if start == self.free_hint:
                    self.free_hint = start + count
                return start * self.cs
            if len(missing) > extra:
                extra = len(missing)  # search again for room for the blocks too
                continue
            self._create_blocks(missing, start)
            extra = 0

    def _create_blocks(self, missing: list[int], start: int) -> None:
        """Write refcount blocks ``missing`` into clusters start, start+1, ... and hook them in."""
        places = list(range(start, start + len(missing)))
        new = {bi: np.zeros(self.epb, dtype=np.uint64) for bi in missing}
        elsewhere = []
        for c in places:
            if c // self.epb in new:
                new[c // self.epb][c % self.epb] = 1
            else:
                elsewhere.append(c)
        for bi, c in zip(missing, places):
            self._pwrite(Meta.DATA, encode_refblock(new[bi], self.bits), c * self.cs)
        for bi, c in zip(missing, places):
            self._pwrite(Meta.REFCOUNT_TABLE, int(c * self.cs).to_bytes(8, "big"),
                         self.table_offset + bi * 8)
            self._blocks[bi] = new[bi]
            self.table[bi] = c * self.cs
            self.on_new_metadata(Meta.REFCOUNT_BLOCK, c * self.cs, self.cs)
        if elsewhere:
            self.update(np.array(elsewhere), 1)

    def _first_free(self) -> int:
        """Move free_hint (nothing below it is free) up to the first free cluster."""
        c = self.free_hint
        while True:
            bi, i = divmod(c, self.epb)
            blk = self.block(bi) if bi < len(self.table) else None
            if blk is None:
                break
            if blk[i] == 0:
                break
            rest = blk[i:]
            j = int(rest.argmin())
            if rest[j] == 0:
                c += j
                break
            c = (bi + 1) * self.epb
        self.free_hint = c
        return c

    def _find_free(self, count: int) -> int:
        c = self._first_free()
        bi, i = divmod(c, self.epb)
        if i + count <= self.epb and bi < len(self.table):
            # Sequential allocation: the first free cluster usually starts a long enough run.
            blk = self.block(bi)
            if blk is not None and not blk[i:i + count].any():
                return c
        run_start, run_len = c, 0
        while True:
            bi, i = divmod(c, self.epb)
            blk = self.block(bi) if bi < len(self.table) else None
            if blk is None:
                if run_len == 0:
                    run_start = c
                run_len += self.epb - i
                if run_len >= count:
                    return run_start
                c = (bi + 1) * self.epb
                continue
            free = blk[i:] == 0
            if run_len:
                lead = int(np.argmin(free)) if not free.all() else free.size
                if run_len + lead >= count:
                    return run_start
                if lead == free.size:
                    run_len += lead
                    c = (bi + 1) * self.epb
                    continue
                run_len = 0
            if free.size >= count:
                used = np.concatenate(([0], np.cumsum(~free)))
                hits = np.flatnonzero(used[count:] == used[:-count])
                if hits.size:
                    return bi * self.epb + i + int(hits[0])
            tail = free.size - (int(np.flatnonzero(~free)[-1]) + 1 if (~free).any() else 0)
            run_start, run_len = (bi + 1) * self.epb - tail, tail
            c = (bi + 1) * self.epb

    def _ensure_block(self, bi: int, avoid: np.ndarray) -> None:
        """Create refcount block ``bi`` if missing, placing it inside the range it describes."""
        if self.block(bi) is not None:
            return
        if bi >= len(self.table):
            self._grow_table(bi)
            if self.block(bi) is not None:
                return
        taken = set(int(x) for x in avoid)
        base = bi * self.epb
        # alloc() searches again afterwards, so when every slot is wanted the first one is fine
        slot = next((c for c in range(base, base + self.epb) if c not in taken), base)
        blk = np.zeros(self.epb, dtype=np.uint64)
        blk[slot - base] = 1
        off = slot * self.cs
        self._pwrite(Meta.DATA, encode_refblock(blk, self.bits), off)
        self._pwrite(Meta.REFCOUNT_TABLE, int(off).to_bytes(8, "big"), self.table_offset + bi * 8)
        self._blocks[bi] = blk
        self.table[bi] = off
        self.on_new_metadata(Meta.REFCOUNT_BLOCK, off, self.cs)

    def _grow_table(self, bi: int) -> None:
        """Move the refcount table to a larger place past every covered cluster."""
        old_len = len(self.table)
        base = max(old_len, bi) * self.epb  # first cluster no block covers: free by definition
        new_len = max(bi + 1, old_len * 2, 1)
        while True:
            tclusters = -(-new_len * 8 // self.cs)
            nblocks = 1
            while -(-(tclusters + nblocks) // self.epb) > nblocks:
                nblocks += 1
            last_bi = (base + tclusters + nblocks - 1) // self.epb
            if last_bi < new_len:
                break
            new_len = last_bi + 1
        if tclusters * self.cs > (8 << 20):
            raise BlockError(f"{self.path}: refcount table would exceed 8 MiB; image too large")
        new_table = np.zeros(tclusters * self.cs // 8, dtype=np.uint64)
        new_table[:old_len] = self.table
        first_bi = base // self.epb
        # New blocks sit right after the new table and count the table, themselves and nothing else.
        for k in range(nblocks):
            nb = first_bi + k
            blk = np.zeros(self.epb, dtype=np.uint64)
            lo = max(base, nb * self.epb)
            hi = min(base + tclusters + nblocks, (nb + 1) * self.epb)
            blk[lo - nb * self.epb:hi - nb * self.epb] = 1
            off = (base + tclusters + k) * self.cs
            self._pwrite(Meta.DATA, encode_refblock(blk, self.bits), off)
            self._blocks[nb] = blk
            new_table[nb] = off
            self.on_new_metadata(Meta.REFCOUNT_BLOCK, off, self.cs)
        new_off = base * self.cs
        self._pwrite(Meta.DATA, new_table.astype(">u8").tobytes(), new_off)
        old_off, old_clusters = self.table_offset, self.table_clusters
        self._write_table_location(new_off, tclusters)
        self.table, self.table_offset, self.table_clusters = new_table, new_off, tclusters
        self.on_new_metadata(Meta.REFCOUNT_TABLE, new_off, tclusters * self.cs)
        log.debug("%s: refcount table moved to %#x (%d clusters)", self.path, new_off, tclusters)
        self.update(np.arange(old_off // self.cs, old_off // self.cs + old_clusters), -1)
