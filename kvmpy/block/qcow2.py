"""The qcow2 driver: guest reads and writes through L1/L2 tables, copy-on-write, zero and
compressed clusters, resize, and the dirty/corrupt bits. The image's tables and every write into
them belong to Qcow2Metadata (qcow2_metadata); snapshots and check live in sibling modules and
use that same interface.

Write ordering (crash consistency): refcounts are raised first (qcow2_refcount writes them through),
then the data, then the L2 entry, then the L1 entry; references are dropped only after the new
metadata is written. A crash at any point can leak clusters but never loses or corrupts data.
"""

from __future__ import annotations

import io
import logging
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kvmpy.block.backend import BlockBackend, Extent, HostFileOptions, map_file_range, merge_extents
from kvmpy.block.errors import BlockError, CorruptImageError, io_errors
from kvmpy.block import qcow2_format as fmt
from kvmpy.block.qcow2_metadata import (COMPRESSED, NORMAL, UNALLOCATED, ZERO_ALLOC, ZERO_PLAIN,
                                        Qcow2Metadata)
from kvmpy.block.qcow2_overlap import Meta
from kvmpy.block.qcow2_refcount import Refcounts

log = logging.getLogger(__name__)

__all__ = ["Qcow2Backend", "UNALLOCATED", "ZERO_PLAIN", "ZERO_ALLOC", "NORMAL", "COMPRESSED"]

BackingOpener = Callable[[str, "str | None"], BlockBackend]


class Qcow2Backend(BlockBackend):
    """An open qcow2 image (version 2 or 3)."""

    format_name = "qcow2"

    def __init__(self, path: Path, readonly: bool = True, *,
                 backing_opener: BackingOpener | None = None, repair_dirty: bool = True,
                 for_check: bool = False, host: HostFileOptions | None = None) -> None:
        super().__init__(path, readonly, host)
        self.fd = self.open_host_file()
        self._backing: BlockBackend | None = None
        self._comp_cursor = 0
        self._marked_dirty = False
        self._repair_dirty = repair_dirty and not for_check
        try:
            # Inactive (an -incoming destination): the source still writes the file, so its
            # metadata is only read here, never repaired or rewritten, until activate().
            self.meta = Qcow2Metadata(self.fd, self.path, readonly or not self.active, for_check=for_check)
            self._open(backing_opener, self._repair_dirty and self.active)
        except OSError as e:
            self.close()
            raise BlockError(f"{self.path}: I/O error: {e.strerror or e}") from e
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ open / header
    def _open(self, backing_opener: BackingOpener | None, repair_dirty: bool) -> None:
        m = self.meta
        self.cluster_bits, self.cs = m.cluster_bits, m.cs
        self.l2_bits, self.l2_entries = m.l2_bits, m.l2_entries
        h = m.h
        if h.backing_file and backing_opener is not None:
            self._backing = backing_opener(h.backing_file, h.backing_format)
        self._repair_if_dirty(repair_dirty)

    def _repair_if_dirty(self, repair_dirty: bool) -> None:
        m, h = self.meta, self.meta.h
        if not self.readonly and h.incompatible_features & fmt.INCOMPAT_DIRTY and repair_dirty:
            from kvmpy.block.qcow2_check import check_image  # rarely needed: keep start-up lean
            log.info("%s: image was not closed cleanly; repairing refcounts", self.path)
            check_image(m, repair="all")
            m.set_incompat(fmt.INCOMPAT_DIRTY, False)

    # The metadata's parts, for callers that inspect an open image (info, tests).
    @property
    def h(self) -> fmt.Header:
        return self.meta.h

    @property
    def l1(self) -> np.ndarray:
        return self.meta.l1

    @property
    def rc(self) -> Refcounts:
        return self.meta.rc

    @property
    def snapshots(self) -> list[fmt.SnapshotEntry]:
        return self.meta.snapshots

    # ------------------------------------------------------------------ reading
    def size(self) -> int:
        return self.h.size

    def cluster_size(self) -> int:
        return self.cs

    @property
    def backing(self) -> BlockBackend | None:
        return self._backing

    def _backing_read(self, off: int, n: int, out: memoryview) -> None:
        b = self._backing
        if b is None:
            out[:n] = bytes(n)
            return
        avail = max(0, min(n, b.size() - off))
        if avail:
            b.readinto(off, out[:avail])
        if avail < n:
            out[avail:n] = bytes(n - avail)

    def _decompress(self, entry: int) -> bytes:
        off, n = self.meta.compressed_extent(entry)
        data = os.pread(self.fd, n, off)
        try:
            if self.h.compression_type == fmt.COMPRESSION_ZSTD:
                import zstandard
                reader = zstandard.ZstdDecompressor(max_window_size=1 << 23).stream_reader(
                    io.BytesIO(data))
                out = reader.read(self.cs)
            else:
                out = zlib.decompressobj(-12).decompress(data, self.cs)
        except Exception as e:  # zlib.error, zstandard.ZstdError: both mean bad data
            raise CorruptImageError(f"{self.path}: cannot decompress cluster at {off:#x}: {e}") \
                from None
        if len(out) != self.cs:
            raise CorruptImageError(f"{self.path}: compressed cluster at {off:#x} decompresses to "
                                    f"{len(out)} bytes, not {self.cs}")
        return out

    @io_errors
    def read(self, offset: int, length: int) -> bytes:
        out = bytearray(length)
        self.readinto(offset, memoryview(out))
        return bytes(out)

    @io_errors
    def readinto(self, offset: int, view: memoryview) -> None:
        length = len(view)
        self.check_range(offset, length)
        reads: list[tuple[int, memoryview]] = []
        end = offset + length
        pos = offset
        cs, cb = self.cs, self.cluster_bits
        while pos < end:
            l1i = pos >> (cb + self.l2_bits)
            seg_end = min(end, (l1i + 1) << (cb + self.l2_bits))
            first = (pos >> cb) & (self.l2_entries - 1)
            count = ((seg_end - 1) >> cb) - (pos >> cb) + 1
            entries = self.meta.lookup(l1i, first, count)
            kinds, hosts = self.meta.classify(entries)
            i = 0
            while i < count:
                k = int(kinds[i])
                j = i + 1
                if k == NORMAL:
                    while j < count and kinds[j] == NORMAL and hosts[j] == hosts[j - 1] + np.uint64(cs):
                        j += 1
                elif k != COMPRESSED:
                    while j < count and kinds[j] == k:
                        j += 1
                g0 = max(pos, ((pos >> cb) + i) << cb)
                g1 = min(seg_end, ((pos >> cb) + j) << cb)
                dst = view[g0 - offset:g1 - offset]
                if k == NORMAL:
                    host = int(hosts[i]) + (g0 - (((pos >> cb) + i) << cb))
                    reads.append((host, dst))
                elif k == COMPRESSED:
                    data = self._decompress(int(entries[i]))
                    base = ((pos >> cb) + i) << cb
                    dst[:] = data[g0 - base:g1 - base]
                elif k == UNALLOCATED:
                    self._backing_read(g0, g1 - g0, dst)
                else:
                    dst[:] = bytes(len(dst))
                i = j
            pos = seg_end
        self.pread_all(self.fd, reads)

    @io_errors
    def mapped(self, offset: int, length: int) -> memoryview | None:
        self.check_range(offset, length)
        cb = self.cluster_bits
        l1i = offset >> (cb + self.l2_bits)
        if length <= 0 or (offset + length - 1) >> (cb + self.l2_bits) != l1i:
            return None
        first = (offset >> cb) & (self.l2_entries - 1)
        count = ((offset + length - 1) >> cb) - (offset >> cb) + 1
        kinds, hosts = self.meta.classify(self.meta.lookup(l1i, first, count))
        if not (kinds == NORMAL).all() or \
                (count > 1 and (np.diff(hosts) != np.uint64(self.cs)).any()):
            return None  # not one plain run of this file: zero, compressed, backing, scattered
        return map_file_range(self.fd, int(hosts[0]) + (offset & (self.cs - 1)), length)

    # ------------------------------------------------------------------ writing
    def _before_write(self, offset: int, length: int, *, untrackable: bool = False) -> None:
        """Checks and bookkeeping before guest bytes [offset, offset + length) change."""
        m = self.meta
        m.check_writable()
        self._check_active()
        if m.h.compatible_features & fmt.COMPAT_LAZY_REFCOUNTS and not self._marked_dirty:
            m.set_incompat(fmt.INCOMPAT_DIRTY, True)
            self._marked_dirty = True
        m.guest_data_changing(offset, length, untrackable=untrackable)

    @io_errors
    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        self.check_range(offset, len(view))
        self._before_write(offset, len(view))
        span = 1 << (self.cluster_bits + self.l2_bits)
        pos, end = offset, offset + len(view)
        while pos < end:
            seg_end = min(end, (pos // span + 1) * span)
            self._write_segment(pos, view[pos - offset:seg_end - offset])
            pos = seg_end

    def _cluster_image(self, ci: int) -> bytearray:
        """What guest cluster ``ci`` currently reads as (clipped to the disk size)."""
        g0 = ci << self.cluster_bits
        n = min(self.cs, self.h.size - g0)
        buf = bytearray(self.cs)
        if n > 0:
            buf[:n] = self.read(g0, n)
        return buf

    def _write_segment(self, pos: int, data: memoryview) -> None:
        cb, cs = self.cluster_bits, self.cs
        l1i = pos >> (cb + self.l2_bits)
        c0 = pos >> cb
        c1 = (pos + len(data) - 1) >> cb
        first = c0 & (self.l2_entries - 1)
        count = c1 - c0 + 1
        l2off, tbl = self.meta.l2_for_write(l1i)
        old = tbl[first:first + count].copy()
        kinds, hosts = self.meta.classify(old)
        inplace = (kinds == NORMAL) & ((old & np.uint64(fmt.QCOW_OFLAG_COPIED)) != 0)
        fresh_idx = np.flatnonzero(~inplace)
        new_hosts = hosts.copy()
        head_img = tail_img = None
        if fresh_idx.size:
            # Partial clusters being reallocated need their old contents (COW) first.
            if pos & (cs - 1) and not inplace[0]:
                head_img = self._cluster_image(c0)
            if (pos + len(data)) & (cs - 1) and not inplace[-1]:
                tail_img = head_img if c1 == c0 and head_img is not None else self._cluster_image(c1)
            start = self.rc.alloc(int(fresh_idx.size))  # refcount first
            new_hosts[fresh_idx] = np.arange(start, start + fresh_idx.size * cs, cs,
                                             dtype=np.uint64)
        self.meta.check_data(new_hosts)
        # Data: gathered into runs of contiguous host clusters, written before any metadata.
        jobs: list[tuple[int, list]] = []
        if head_img is None and tail_img is None:
            # No copy-on-write: one job per run of contiguous host clusters, sliced from data.
            brk = (np.flatnonzero(np.diff(new_hosts) != np.uint64(cs)) + 1).tolist()
            end = pos + len(data)
            for a, b in zip([0] + brk, brk + [count]):
                g0 = max(pos, (c0 + a) << cb)
                g1 = min(end, (c0 + b) << cb)
                jobs.append((int(new_hosts[a]) + (g0 & (cs - 1)), [data[g0 - pos:g1 - pos]]))
        else:
            self._cow_jobs(jobs, pos, data, c0, count, inplace, new_hosts, head_img, tail_img)
        self.pwrite_all(self.fd, jobs)
        if fresh_idx.size:
            tbl[first + fresh_idx] = new_hosts[fresh_idx] | np.uint64(fmt.QCOW_OFLAG_COPIED)
            lo, hi = first + int(fresh_idx[0]), first + int(fresh_idx[-1]) + 1
            self.meta.store_l2(l2off, tbl, lo, hi)  # then the L2 entry
            self.meta.release(old[fresh_idx])       # and only now drop the old references

    def _cow_jobs(self, jobs: list[tuple[int, list]], pos: int, data: memoryview, c0: int,
                  count: int, inplace: np.ndarray, new_hosts: np.ndarray,
                  head_img: bytearray | None, tail_img: bytearray | None) -> None:
        """Per-cluster job list when a partial head or tail cluster is copied on write."""
        cb, cs = self.cluster_bits, self.cs
        run_end = -1
        dpos = 0
        for i in range(count):
            g0 = max(pos, (c0 + i) << cb)
            g1 = min(pos + len(data), (c0 + i + 1) << cb)
            piece: memoryview | bytes | bytearray = data[dpos:dpos + (g1 - g0)]
            dpos += g1 - g0
            in_off = g0 & (cs - 1)
            if not inplace[i] and (g1 - g0) < cs:
                img = head_img if i == 0 and head_img is not None else tail_img
                assert img is not None
                img = bytearray(img)
                img[in_off:in_off + (g1 - g0)] = piece
                piece, in_off = img, 0
            target = int(new_hosts[i]) + in_off
            if jobs and target == run_end:
                jobs[-1][1].append(piece)
            else:
                jobs.append((target, [piece]))
            run_end = target + len(piece)

    @io_errors
    def write_compressed(self, offset: int, data: bytes) -> None:
        """Write one whole cluster compressed (falls back to a plain write if it does not shrink)."""
        cs = self.cs
        if offset % cs or len(data) != min(cs, self.h.size - offset):
            raise BlockError(f"{self.path}: compressed writes must cover exactly one cluster")
        self._before_write(offset, len(data))
        if len(data) < cs:
            data = bytes(data) + bytes(cs - len(data))
        if self.h.compression_type == fmt.COMPRESSION_ZSTD:
            import zstandard
            comp = zstandard.ZstdCompressor(level=3, write_content_size=False).compress(data)
        else:
            c = zlib.compressobj(6, zlib.DEFLATED, -12)
            comp = c.compress(data) + c.flush()
        if len(comp) >= cs - 512:
            self.write(offset, data[:min(cs, self.h.size - offset)])
            return
        l1i = offset >> (self.cluster_bits + self.l2_bits)
        idx = (offset >> self.cluster_bits) & (self.l2_entries - 1)
        l2off, tbl = self.meta.l2_for_write(l1i)
        old = tbl[idx:idx + 1].copy()
        cur = self._comp_cursor
        if cur and (cur % cs) and (cur % cs) + len(comp) <= cs and \
                0 < self.rc.get(cur // cs) < self.rc.max_refcount:
            host = cur
            self.rc.update([cur // cs], 1)
        else:
            host = self.rc.alloc(1)
        self.meta.pwrite(Meta.DATA, comp, host)
        self._comp_cursor = host + len(comp)
        entry = self.meta.compressed_entry(host, len(comp))
        tbl[idx] = np.uint64(entry)
        self.meta.store_l2(l2off, tbl, idx, idx + 1)
        self.meta.release(old)

    @io_errors
    def write_zeroes(self, offset: int, length: int, *, unmap: bool = False) -> None:
        self.check_range(offset, length)
        self._before_write(offset, length)
        cs = self.cs
        end = offset + length
        a = -(-offset // cs) * cs
        b = end // cs * cs
        if end == self.h.size:
            b = -(-end // cs) * cs  # the final partial cluster counts as whole
        if a >= b:
            self._write_zero_bytes(offset, length)
            return
        if offset < a:
            self._write_zero_bytes(offset, a - offset)
        self._zero_clusters(a, b, deallocate=True)
        if b < end:
            self._write_zero_bytes(b, end - b)

    def _write_zero_bytes(self, offset: int, length: int) -> None:
        if length:
            self.write(offset, bytes(length))

    @io_errors
    def discard(self, offset: int, length: int) -> None:
        self.check_range(offset, length)
        self._before_write(offset, length)
        cs = self.cs
        end = offset + length
        a = -(-offset // cs) * cs
        b = end // cs * cs if end != self.h.size else -(-end // cs) * cs
        if a < b:
            self._zero_clusters(a, b, deallocate=True, discard=True)

    def _zero_clusters(self, a: int, b: int, *, deallocate: bool, discard: bool = False) -> None:
        """Make whole clusters [a, b) read as zeros (or, for discard, unspecified)."""
        cb = self.cluster_bits
        span = 1 << (cb + self.l2_bits)
        v3 = self.h.version >= 3
        pos = a
        while pos < b:
            seg_end = min(b, (pos // span + 1) * span)
            l1i = pos >> (cb + self.l2_bits)
            first = (pos >> cb) & (self.l2_entries - 1)
            count = (seg_end - pos) >> cb
            cur = self.meta.lookup(l1i, first, count)
            kinds, _ = self.meta.classify(cur)
            if v3:
                target = fmt.QCOW_OFLAG_ZERO if (self._backing is not None or not discard) \
                    else 0
                if self._backing is None:
                    need = kinds != UNALLOCATED if discard else \
                        ~np.isin(kinds, (UNALLOCATED, ZERO_PLAIN))
                    if not discard:
                        target = 0  # with no backing file, unallocated already reads as zero
                else:
                    need = kinds != ZERO_PLAIN
                if need.any():
                    l2off, tbl = self.meta.l2_for_write(l1i)
                    old = tbl[first:first + count].copy()
                    idx = np.flatnonzero(need)
                    tbl[first + idx] = np.uint64(target)
                    self.meta.store_l2(l2off, tbl, first + int(idx[0]), first + int(idx[-1]) + 1)
                    self.meta.release(old[idx])
            elif self._backing is None or discard:
                need = kinds != UNALLOCATED
                if need.any():
                    l2off, tbl = self.meta.l2_for_write(l1i)
                    old = tbl[first:first + count].copy()
                    idx = np.flatnonzero(need)
                    tbl[first + idx] = np.uint64(0)
                    self.meta.store_l2(l2off, tbl, first + int(idx[0]), first + int(idx[-1]) + 1)
                    self.meta.release(old[idx])
            else:  # version 2 over a backing file: zeros must be stored
                n = min(seg_end, self.h.size) - pos
                step = 4 << 20
                for off in range(0, n, step):
                    self.write(pos + off, bytes(min(step, n - off)))
            pos = seg_end

    # ------------------------------------------------------------------ size, status, flush
    @io_errors
    def resize(self, new_size: int, *, shrink: bool = False) -> None:
        self.meta.check_writable()
        if new_size < 0 or new_size > fmt.MAX_VIRTUAL_SIZE:
            raise BlockError(f"{self.path}: invalid size {new_size}")
        self._check_active()
        if new_size % 512:
            raise BlockError(f"{self.path}: size must be a multiple of 512 bytes")
        old = self.h.size
        if new_size < old:
            if not shrink:
                raise BlockError(f"{self.path}: use the --shrink option to shrink the image")
            if self.snapshots:
                raise BlockError(f"{self.path}: can't shrink an image which has snapshots")
            cut = -(-new_size // self.cs) * self.cs
            if new_size % self.cs:
                self.write_zeroes(new_size, min(cut, old) - new_size)
            if cut < old:
                self._zero_clusters(cut, -(-old // self.cs) * self.cs, deallocate=True,
                                    discard=True)
                # discard on an image with a backing file leaves zero flags; drop them too
                self._drop_tail_entries(cut)
        if new_size != old:
            self.meta.guest_data_changing(resized=True)
        need_l1 = -(-new_size // (self.cs * self.l2_entries))
        if need_l1 > len(self.l1):
            self.meta.grow_l1(need_l1, exact=not len(self.l1))
        self.meta.set_size(new_size)
        os.fsync(self.fd)

    @io_errors
    def make_empty(self) -> None:
        """Deallocate every cluster so the image shows its backing file again (commit)."""
        self._before_write(0, self.h.size, untrackable=True)
        self._drop_tail_entries(0)
        self.flush()

    def _drop_tail_entries(self, cut: int) -> None:
        cb = self.cluster_bits
        span = 1 << (cb + self.l2_bits)
        for l1i in range(cut // span, len(self.l1)):
            off = self.meta.l1_entry_offset(l1i)
            if not off:
                continue
            first = max(0, (cut - l1i * span) >> cb)
            l2off, tbl = self.meta.l2_for_write(l1i)
            old = tbl[first:].copy()
            nz = np.flatnonzero(old)
            if nz.size:
                tbl[first:] = 0
                self.meta.store_l2(l2off, tbl, first, self.l2_entries)
                self.meta.release(old[nz])

    @io_errors
    def block_status(self, offset: int, length: int) -> list[Extent]:
        self.check_range(offset, length)
        return merge_extents(self.status_at_depth(offset, length, 0))

    def status_at_depth(self, offset: int, length: int, depth: int) -> list[Extent]:
        """block_status() unmerged, with ``depth`` added to every extent's depth (so a qcow2
        overlay can report its backing chain's extents without renumbering them)."""
        out: list[Extent] = []
        cb, cs = self.cluster_bits, self.cs
        end = offset + length
        pos = offset
        while pos < end:
            l1i = pos >> (cb + self.l2_bits)
            seg_end = min(end, (l1i + 1) << (cb + self.l2_bits))
            if l1i >= len(self.l1) or not self.meta.l1_entry_offset(l1i):
                out.extend(self._below(pos, seg_end - pos, depth))
                pos = seg_end
                continue
            first = (pos >> cb) & (self.l2_entries - 1)
            count = ((seg_end - 1) >> cb) - (pos >> cb) + 1
            entries = self.meta.lookup(l1i, first, count)
            kinds, hosts = self.meta.classify(entries)
            kinds = np.where(kinds == ZERO_ALLOC, ZERO_PLAIN, kinds)
            # Runs of one kind (data runs also need contiguous host offsets).
            brk = np.flatnonzero((kinds[1:] != kinds[:-1]) | (kinds[1:] == COMPRESSED) |
                                 ((kinds[1:] == NORMAL) & (hosts[1:] != hosts[:-1] + np.uint64(cs))))
            starts = np.concatenate(([0], brk + 1))
            stops = np.concatenate((brk + 1, [count]))
            c0 = pos >> cb
            for i, j in zip(starts.tolist(), stops.tolist()):
                g0 = max(pos, (c0 + i) << cb)
                g1 = min(seg_end, (c0 + j) << cb)
                k = int(kinds[i])
                if k == NORMAL:
                    out.append(Extent(g0, g1 - g0, True, False, depth, True,
                                      int(hosts[i]) + (g0 - ((c0 + i) << cb))))
                elif k == COMPRESSED:
                    out.append(Extent(g0, g1 - g0, True, False, depth, True, None, True))
                elif k == ZERO_PLAIN:
                    out.append(Extent(g0, g1 - g0, False, True, depth, True))
                else:
                    out.extend(self._below(g0, g1 - g0, depth))
            pos = seg_end
        return out

    def _below(self, offset: int, length: int, depth: int) -> list[Extent]:
        b = self._backing
        if b is None:
            return [Extent(offset, length, False, True, depth, False)]
        bsize = b.size()
        out: list[Extent] = []
        if offset < bsize:
            n = min(length, bsize - offset)
            if isinstance(b, Qcow2Backend):
                out.extend(b.status_at_depth(offset, n, depth + 1))
            else:
                out.extend(Extent(e.start, e.length, e.data, e.zero, depth + 1, True, e.host_offset)
                           for e in b.block_status(offset, n))
            offset, length = offset + n, length - n
        if length > 0:  # past the backing file's end qemu reports this layer's depth
            out.append(Extent(offset, length, False, True, depth, False))
        return out

    @io_errors
    def flush(self) -> None:
        if not self.readonly and self.fd >= 0 and self.durable and self.active:
            os.fdatasync(self.fd)

    def _check_active(self) -> None:
        if not self.active:
            raise BlockError(f"{self.path}: image is inactive (another process owns it)")

    def settle(self) -> None:
        """What close() writes, so the other side of a migration finds a clean image: the
        bitmaps, the data, and the dirty bit cleared (the refcounts are always kept exact)."""
        if self.readonly or self.fd < 0:
            return
        self.meta.store_bitmaps()
        self.flush()
        if self._marked_dirty:
            self.meta.set_incompat(fmt.INCOMPAT_DIRTY, False)
            self._marked_dirty = False
            self.flush()

    def reload(self) -> None:
        """Read the header, tables and refcounts again (QEMU's invalidate_cache): the other side
        of a migration wrote the image since they were read. The backing chain stays open; a
        header that now names a different backing file is refused."""
        old = self.meta.h
        meta = Qcow2Metadata(self.fd, self.path, self.readonly)
        h = meta.h
        if (h.backing_file, h.backing_format) != (old.backing_file, old.backing_format) and \
                self._backing is not None:
            raise BlockError(f"{self.path}: the backing file changed while the image was inactive "
                             f"({old.backing_file!r} -> {h.backing_file!r})")
        if h.cluster_bits != old.cluster_bits:
            raise CorruptImageError(f"{self.path}: the cluster size changed while the image was inactive")
        self.meta = meta
        self._comp_cursor = 0
        self._marked_dirty = False
        self._repair_if_dirty(self._repair_dirty)

    def close(self) -> None:
        if getattr(self, "fd", -1) < 0:
            return
        try:
            if hasattr(self, "h") and self.active:
                self.settle()
        finally:
            self.close_host_file(self.fd)
            self.fd = -1
            if self._backing is not None:
                self._backing.close()
                self._backing = None

    # ------------------------------------------------------------------ header edits
    @io_errors
    def set_backing(self, backing_file: str | None, backing_format: str | None) -> None:
        """Point the header at a different backing file (rebase -u / commit bookkeeping)."""
        self.meta.check_writable()
        self.h.backing_file = backing_file or None
        self.h.backing_format = backing_format if backing_file else None
        self.meta.write_header()
        os.fsync(self.fd)
