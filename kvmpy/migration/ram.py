"""Guest RAM over the stream: zero-page detection and batching on the way out, bounded writes on the way in.

Contiguous dirty pages go out as RUN records, scattered ones gathered in
PAGES records, zero pages as ranges (ZERORUN) or indices. While the guest
runs, the sender copies each batch of pages before checksumming and sending
it, so a vCPU writing concurrently cannot make the bytes on the wire differ
from the checksum (such a page is dirty-logged and sent again in the next
round); once the vCPUs are stopped (``stable``) RUN data goes straight from
guest RAM. Pages the host has never mapped (per /proc/self/pagemap) are known
to be zero without reading them, which would fault every one of them in.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from kvmpy.memory.ramblock import PAGE_SIZE, RAMBlock
from kvmpy.migration.stream import MAX_NORMAL, MAX_ZERO, PagesRecord, RunRecord, StreamWriter

log = logging.getLogger(__name__)

SCAN_PAGES = 16384  # pages handled at once when sending a whole block
MIN_RUN = 8  # dirty runs shorter than this are gathered into PAGES records
MAX_SCAN_RUNS = 256  # above this many mapped runs per scan, test them gathered instead of one by one
PAGEMAP_USED = np.uint64(3 << 62)  # present or swapped
PAGEMAP_CHUNK = 1 << 18  # pagemap entries read at once (2 MiB)


def page_view(block: RAMBlock) -> np.ndarray:
    """(npages, 512) uint64 rows: fast zero tests and row copies."""
    return block.array.view(np.uint64).reshape(-1, PAGE_SIZE // 8)


def mapped_pages(block: RAMBlock) -> np.ndarray | None:
    """Per page: has the host ever backed it (present or swapped)? None if pagemap cannot be read.

    Guest RAM is a private anonymous mapping, where a page that is neither
    present nor swapped reads as zero.
    """
    out = np.empty(block.npages, dtype=bool)
    entries = np.empty(min(block.npages, PAGEMAP_CHUNK), dtype="<u8")  # 8 bytes a page: read in pieces
    try:
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    except OSError:
        return None
    try:
        for first in range(0, block.npages, PAGEMAP_CHUNK):
            part = entries[:min(PAGEMAP_CHUNK, block.npages - first)]
            if os.preadv(fd, [part], (block.host_addr // PAGE_SIZE + first) * 8) != part.nbytes:
                return None
            np.not_equal(part & PAGEMAP_USED, 0, out=out[first:first + len(part)])
    except OSError:
        return None
    finally:
        os.close(fd)
    return out


def runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of True in a bool array."""
    edges = np.diff(np.concatenate(([0], np.asarray(mask, dtype=np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def nonzero_pages(block: RAMBlock, view: np.ndarray) -> np.ndarray:
    """Per page: may it hold data? Reads only pages the host has mapped."""
    mapped = mapped_pages(block)
    if mapped is None:
        return view.any(axis=1)
    out = np.zeros(len(view), dtype=bool)
    starts, ends = runs(mapped)
    if len(starts) > MAX_SCAN_RUNS:
        idx = np.flatnonzero(mapped)
        for i in range(0, len(idx), SCAN_PAGES):
            part = idx[i:i + SCAN_PAGES]
            out[part] = view[part].any(axis=1)
    else:
        for a, b in zip(starts.tolist(), ends.tolist()):
            out[a:b] = view[a:b].any(axis=1)
    return out


@dataclass
class RamCounters:
    duplicate: int = 0  # zero pages sent as a marker
    normal: int = 0  # pages sent with data


class RamSender:
    def __init__(self, blocks: list[RAMBlock], writer: StreamWriter, counters: RamCounters,
                 check: Callable[[], None] = lambda: None) -> None:
        self.blocks = blocks
        self.views = [page_view(b) for b in blocks]
        self.writer = writer
        self.counters = counters
        self.check = check  # raises to abort (cancel) between records
        self.stable = False  # True once nothing can write guest RAM: send without copying
        self._buf: np.ndarray | None = None

    def _copy(self, src: np.ndarray) -> np.ndarray:
        if self._buf is None:
            self._buf = np.empty((MAX_NORMAL, PAGE_SIZE // 8), dtype=np.uint64)
        rows = self._buf[:len(src)]
        np.copyto(rows, src)
        return rows

    def _emit(self, block: int, idx: np.ndarray, rows: np.ndarray) -> None:
        """Send scattered pages ``idx`` whose (copied) contents are ``rows``."""
        nz = rows.any(axis=1)
        zero, normal = idx[~nz], idx[nz]
        for i in range(0, len(zero), MAX_ZERO):
            self.check()
            self.writer.pages(block, zero[i:i + MAX_ZERO], zero[:0], rows[:0])
        data = rows[nz] if len(normal) != len(idx) else rows
        for i in range(0, len(normal), MAX_NORMAL):
            self.check()
            self.writer.pages(block, zero[:0], normal[i:i + MAX_NORMAL], data[i:i + MAX_NORMAL])
        self.counters.duplicate += len(zero)
        self.counters.normal += len(normal)

    def _zero_run(self, block: int, first: int, count: int) -> None:
        self.writer.zero_run(block, first, count)
        self.counters.duplicate += count

    def _run(self, block: int, first: int, count: int) -> None:
        """Pages first..first+count (at most MAX_NORMAL): RUN records for data, ZERORUN for zero stretches."""
        self.check()
        src = self.views[block][first:first + count]
        rows = src if self.stable else self._copy(src)
        nz = rows.any(axis=1)
        if nz.all():
            self.writer.run(block, first, rows)
            self.counters.normal += count
            return
        starts, ends = runs(nz)
        pos = 0
        for a, b in zip(starts.tolist(), ends.tolist()):
            if a > pos:
                self._zero_run(block, first + pos, a - pos)
            self.writer.run(block, first + a, rows[a:b])
            self.counters.normal += b - a
            pos = b
        if pos < count:
            self._zero_run(block, first + pos, count - pos)

    def _send_mask(self, block: int, base: int, mask: np.ndarray) -> None:
        """Pages base+i for every True in ``mask``: long runs as RUNs, the rest gathered."""
        starts, ends = runs(mask)
        lengths = ends - starts
        short = lengths < MIN_RUN
        if short.any():
            keep = np.repeat(short, lengths)  # per selected page: does it belong to a short run?
            idx = (np.flatnonzero(mask)[keep] + base).astype(np.uint32)
            view = self.views[block]
            for i in range(0, len(idx), MAX_NORMAL):
                self.check()
                part = idx[i:i + MAX_NORMAL]
                self._emit(block, part, view[part])
        for a, b in zip(starts[~short].tolist(), ends[~short].tolist()):
            for s in range(a, b, MAX_NORMAL):
                self._run(block, base + s, min(MAX_NORMAL, b - s))

    def send_all(self, block: int) -> None:
        """Every page of a block, in address order (the first round)."""
        nz = nonzero_pages(self.blocks[block], self.views[block])
        for start in range(0, len(nz), SCAN_PAGES):
            self.check()
            part = nz[start:start + SCAN_PAGES]
            starts, ends = runs(~part)
            for a, b in zip(starts.tolist(), ends.tolist()):
                self._zero_run(block, start + a, b - a)
            # Re-tested after the copy: a page may have been written since the scan; send what we copied.
            self._send_mask(block, start, part)

    def send_pages(self, block: int, pages: np.ndarray) -> None:
        """A dirty set of a block: a bool mask per page, or sorted page indices."""
        if pages.dtype != bool:
            mask = np.zeros(len(self.views[block]), dtype=bool)
            mask[pages] = True
            pages = mask
        self._send_mask(block, 0, pages)


class RamReceiver:
    """Writes page records into the new VM's RAM; skips zero pages that are already zero."""

    def __init__(self, blocks: list[RAMBlock]) -> None:
        self.views = [page_view(b) for b in blocks]
        self.bytes_views = [b.array.reshape(-1, PAGE_SIZE) for b in blocks]
        # Which pages may hold data (a fresh VM has only the loader's pages).
        self.nonzero = [nonzero_pages(b, v) for b, v in zip(blocks, self.views)]
        self.pages = 0

    def apply(self, rec: PagesRecord) -> None:
        nz = self.nonzero[rec.block]
        if len(rec.zero):
            clear = rec.zero[nz[rec.zero]]
            if len(clear):
                self.views[rec.block][clear] = 0
                nz[clear] = False
        if len(rec.normal):
            self.bytes_views[rec.block][rec.normal] = rec.data
            nz[rec.normal] = True
        self.pages += len(rec.zero) + len(rec.normal)

    def applied_run(self, rec: RunRecord) -> None:
        """A RUN, whose data the reader has already put in place."""
        self.nonzero[rec.block][rec.first:rec.first + rec.count] = True
        self.pages += rec.count

    def apply_zero_run(self, rec: RunRecord) -> None:
        nz = self.nonzero[rec.block][rec.first:rec.first + rec.count]
        if nz.any():
            view = self.views[rec.block][rec.first:rec.first + rec.count]
            for a, b in zip(*runs(nz)):
                view[a:b] = 0
            nz[:] = False
        self.pages += rec.count
