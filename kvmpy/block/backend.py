"""The BlockBackend interface every image driver implements, and its allocation-map extent."""

from __future__ import annotations

import abc
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from kvmpy.block.errors import BlockError


@dataclass(frozen=True)
class Extent:
    """One run of guest bytes with the same allocation status (qemu-img map's fields).

    ``depth`` is how many backing files down the data comes from (0 = this image); ``present``
    says whether any image in the chain defines it; ``host_offset`` is where the bytes sit in the
    file at that depth when they are stored uncompressed, else None.
    """

    start: int
    length: int
    data: bool
    zero: bool
    depth: int = 0
    present: bool = True
    host_offset: int | None = None
    compressed: bool = False

    def mergeable(self, other: "Extent") -> bool:
        if (self.data, self.zero, self.depth, self.present, self.compressed) != (
            other.data, other.zero, other.depth, other.present, other.compressed
        ):
            return False
        if self.start + self.length != other.start:
            return False
        if self.host_offset is None or other.host_offset is None:
            return self.host_offset is None and other.host_offset is None
        return self.host_offset + self.length == other.host_offset


def _preadv_full(fd: int, mv: memoryview, off: int) -> None:
    got = os.preadv(fd, [mv], off)
    if got < len(mv):
        mv[got:] = bytes(len(mv) - got)


def _pwritev_full(fd: int, bufs: list[memoryview], off: int) -> None:
    """pwritev that finishes short writes."""
    while bufs:
        n = os.pwritev(fd, bufs[:1024], off)
        off += n
        while bufs and n >= len(bufs[0]):
            n -= len(bufs[0])
            bufs = bufs[1:]
        if bufs and n:
            bufs = [bufs[0][n:]] + bufs[1:]


def merge_extents(extents: list[Extent]) -> list[Extent]:
    """Join neighbouring extents that describe the same kind of bytes."""
    out: list[Extent] = []
    for e in extents:
        if e.length <= 0:
            continue
        if out and out[-1].mergeable(e):
            p = out[-1]
            out[-1] = Extent(p.start, p.length + e.length, p.data, p.zero, p.depth, p.present,
                             p.host_offset, p.compressed)
        else:
            out.append(e)
    return out


class BlockBackend(abc.ABC):
    """A virtual disk: byte-addressed reads and writes over a fixed (resizable) size."""

    format_name: str = "?"

    def __init__(self, path: Path, readonly: bool) -> None:
        self.path = Path(path)
        self.readonly = readonly
        # False = flush() and close() skip fsync (qemu-img convert's default cache=unsafe)
        self.durable = True
        self._pool: ThreadPoolExecutor | None = None

    # Large data writes are split and issued from a few threads (pwrite releases the GIL),
    # the way QEMU's thread-pool AIO keeps both cores busy filling the page cache.
    _PIECE = 1 << 20

    def pwrite_all(self, fd: int, jobs: list[tuple[int, list]]) -> None:
        """Write every (file offset, [buffers]) job completely; returns when all are on file."""
        pieces: list[tuple[int, list[memoryview]]] = []
        total = 0
        for off, bufs in jobs:
            cur: list[memoryview] = []
            cur_off, cur_len = off, 0
            for b in bufs:
                mv = memoryview(b).cast("B")
                while len(mv):
                    take = min(len(mv), self._PIECE - cur_len)
                    cur.append(mv[:take])
                    cur_len += take
                    mv = mv[take:]
                    if cur_len == self._PIECE:
                        pieces.append((cur_off, cur))
                        cur_off, cur, cur_len = cur_off + cur_len, [], 0
            if cur:
                pieces.append((cur_off, cur))
            total += sum(len(memoryview(b)) for b in bufs)
        if total < 2 * self._PIECE or len(pieces) < 2:
            for off, bufs in pieces:
                _pwritev_full(fd, bufs, off)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="kvmpy-block")
        futures = [self._pool.submit(_pwritev_full, fd, bufs, off) for off, bufs in pieces]
        for f in futures:
            f.result()

    def pread_all(self, fd: int, jobs: list[tuple[int, memoryview]]) -> None:
        """Fill every (file offset, buffer) job; bytes past the end of the file read as zeros.
        Large requests are split into 1 MiB pieces read from a few threads."""
        pieces = [(off + i, mv[i:i + self._PIECE]) for off, mv in jobs
                  for i in range(0, len(mv), self._PIECE)]
        if sum(len(mv) for _, mv in jobs) < 2 * self._PIECE or len(pieces) < 2:
            for off, mv in pieces:
                _preadv_full(fd, mv, off)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="kvmpy-block")
        for f in [self._pool.submit(_preadv_full, fd, mv, off) for off, mv in pieces]:
            f.result()

    def _shutdown_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- data path -------------------------------------------------------------------------
    @abc.abstractmethod
    def read(self, offset: int, length: int) -> bytes:
        """Return ``length`` guest bytes at ``offset`` (reads past the end are an error)."""

    def readinto(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with guest bytes at ``offset`` (drivers override this to avoid a copy)."""
        buf[:] = self.read(offset, len(buf))

    @abc.abstractmethod
    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` at guest ``offset``."""

    @abc.abstractmethod
    def write_zeroes(self, offset: int, length: int, *, unmap: bool = False) -> None:
        """Make the range read as zeros; ``unmap`` allows deallocating it."""

    @abc.abstractmethod
    def discard(self, offset: int, length: int) -> None:
        """Tell the image the range is unused; its contents become unspecified (usually zero)."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Make every acknowledged write durable."""

    @abc.abstractmethod
    def size(self) -> int:
        """The virtual disk size in bytes."""

    @abc.abstractmethod
    def resize(self, new_size: int, *, shrink: bool = False) -> None:
        """Change the virtual size; shrinking must be asked for explicitly."""

    @abc.abstractmethod
    def block_status(self, offset: int, length: int) -> list[Extent]:
        """The allocation map of the range, following the backing chain."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush and release the file (idempotent)."""

    # -- descriptive -----------------------------------------------------------------------
    def actual_size(self) -> int:
        """Bytes the image occupies on the host file system."""
        try:
            return self.path.stat().st_blocks * 512
        except OSError:
            return 0

    def cluster_size(self) -> int | None:
        return None

    @property
    def backing(self) -> "BlockBackend | None":
        return None

    def check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size():
            raise BlockError(f"{self.path}: request {offset}+{length} is outside the "
                             f"{self.size()}-byte image")

    def __enter__(self) -> "BlockBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
