"""Guest RAM over the stream: zero-page detection and batching on the way out, bounded writes on the way in.

The sender copies each batch of pages before checksumming and sending it, so a
vCPU writing concurrently cannot make the bytes on the wire differ from the
checksum (such a page is dirty-logged and sent again in the next round).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from kvmpy.memory.ramblock import PAGE_SIZE, RAMBlock
from kvmpy.migration.stream import MAX_NORMAL, MAX_ZERO, PagesRecord, StreamWriter

SCAN_PAGES = 16384  # pages checked for zero at once when sending a whole block


def page_view(block: RAMBlock) -> np.ndarray:
    """(npages, 512) uint64 rows: fast zero tests and row copies."""
    return block.array.view(np.uint64).reshape(-1, PAGE_SIZE // 8)


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

    def _emit(self, block: int, idx: np.ndarray, rows: np.ndarray) -> None:
        """Send pages ``idx`` whose (copied) contents are ``rows``."""
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

    def send_all(self, block: int) -> None:
        """Every page of a block, in address order (the first round)."""
        view = self.views[block]
        for start in range(0, len(view), SCAN_PAGES):
            self.check()
            chunk = view[start:start + SCAN_PAGES]
            nz = chunk.any(axis=1)
            idx = np.arange(start, start + len(chunk), dtype=np.uint32)
            zero = idx[~nz]
            for i in range(0, len(zero), MAX_ZERO):
                self.writer.pages(block, zero[i:i + MAX_ZERO], zero[:0], chunk[:0])
            self.counters.duplicate += len(zero)
            normal = idx[nz]
            for i in range(0, len(normal), MAX_NORMAL):
                self.check()
                part = normal[i:i + MAX_NORMAL]
                rows = view[part]  # a copy, taken now
                # Re-test: a page may have been written since the scan; send what we copied.
                self._emit(block, part, rows)

    def send_pages(self, block: int, pages: np.ndarray) -> None:
        """The given page indices (a dirty set) of a block."""
        view = self.views[block]
        for i in range(0, len(pages), MAX_NORMAL):
            self.check()
            part = pages[i:i + MAX_NORMAL].astype(np.uint32)
            self._emit(block, part, view[part])


class RamReceiver:
    """Writes page records into the new VM's RAM; skips zero pages that are already zero."""

    def __init__(self, blocks: list[RAMBlock]) -> None:
        self.views = [page_view(b) for b in blocks]
        self.bytes_views = [b.array.reshape(-1, PAGE_SIZE) for b in blocks]
        # Which pages may hold data (a fresh VM has only the loader's pages).
        self.nonzero = [v.any(axis=1) for v in self.views]
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
