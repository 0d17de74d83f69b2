"""A drive: an open image chain as a guest device uses it (cache mode, lock, discard policy, I/O statistics).

This is what QEMU calls a BlockBackend (kvmpy's ``BlockBackend`` is the image
driver interface underneath). A device model reads and writes through a
``Drive``; the monitor lists, resizes and counts through the same object:

- the image is opened with QEMU's locks and the ``cache=`` mode's O_DIRECT
  and flush switches (``kvmpy.block.cache``);
- ``writeback`` is the write cache the guest sees: with it off, every write is
  made durable before it completes (QEMU's FUA emulation); a guest may switch
  it through virtio-blk's ``writeback`` config byte;
- ``discard=ignore`` (QEMU's default) accepts discards and does nothing,
  ``discard=unmap`` passes them to the image; write-zeroes may then deallocate;
- every operation is counted as QEMU's BlockAcctStats counts it (bytes, ops,
  total time, failed and invalid requests), for query-blockstats;
- a migration hands the image between processes as QEMU does: an ``-incoming``
  destination opens it *inactive* (no lock bytes, metadata not trusted); the
  source ``inactivate()``s it at switchover (flushed, locks dropped) and the
  destination ``activate()``s it when the stream is complete (locks taken,
  metadata read again). ``inactivate_drives``/``activate_drives`` do that for
  a machine's drives, all or none.

Calls are serialised by one lock per drive: a device's I/O thread and the
monitor (query-block, block_resize) may call concurrently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from kvmpy.block.backend import BlockBackend
from kvmpy.block.cache import DEFAULT_CACHE, CacheMode
from kvmpy.block.errors import BlockError
from kvmpy.block.image import chain_of, open_image

log = logging.getLogger(__name__)

DISCARD_MODES = ("ignore", "unmap")


@dataclass
class BlockStats:
    """QEMU's BlockDeviceStats counters (query-blockstats ``stats``)."""

    rd_bytes: int = 0
    wr_bytes: int = 0
    unmap_bytes: int = 0
    rd_operations: int = 0
    wr_operations: int = 0
    flush_operations: int = 0
    unmap_operations: int = 0
    rd_total_time_ns: int = 0
    wr_total_time_ns: int = 0
    flush_total_time_ns: int = 0
    unmap_total_time_ns: int = 0
    failed_rd_operations: int = 0
    failed_wr_operations: int = 0
    failed_flush_operations: int = 0
    failed_unmap_operations: int = 0
    invalid_rd_operations: int = 0
    invalid_wr_operations: int = 0
    invalid_flush_operations: int = 0
    invalid_unmap_operations: int = 0
    wr_highest_offset: int = 0
    last_op_ns: int | None = None

    def as_qmp(self, now_ns: int) -> dict[str, Any]:
        d: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "last_op_ns"}
        d.update(rd_merged=0, wr_merged=0, unmap_merged=0, account_invalid=True,
                 account_failed=True, timed_stats=[])
        if self.last_op_ns is not None:
            d["idle_time_ns"] = now_ns - self.last_op_ns
        return d


_KINDS = {"rd": "rd", "wr": "wr", "flush": "flush", "unmap": "unmap"}


@dataclass
class Drive:
    """One open drive. ``id`` is the -drive id / -blockdev node-name the monitor shows."""

    id: str
    image: BlockBackend
    cache: CacheMode
    discard: str = "ignore"
    node_name: str = ""  # the format node's name (-blockdev node-name), "" for a -drive
    file_node_name: str = ""
    serial: str = ""  # a legacy -drive serial= (a device's serial= wins)
    stats: BlockStats = field(default_factory=BlockStats)
    writeback: bool = True
    on_resize: list[Callable[[int], None]] = field(default_factory=list)
    on_close: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.writeback = self.cache.writeback
        self._lock = threading.Lock()

    @property
    def readonly(self) -> bool:
        return self.image.readonly

    @property
    def active(self) -> bool:
        """False while another process (a migration's other side) owns the image."""
        return self.image.active

    def inactivate(self) -> None:
        """Give the image up to a migration's destination (flushed, locks dropped); see BlockBackend."""
        with self._lock:
            self.image.inactivate()

    def activate(self) -> None:
        """Take the image over (locks taken, metadata read again); BlockError (ImageLockError when
        another process holds it) leaves it inactive."""
        with self._lock:
            self.image.activate()

    def size(self) -> int:
        """The disk size in bytes (read without the lock: a vCPU reading the capacity must not wait
        for a long request; the value is one attribute, replaced whole by a resize)."""
        return self.image.size()

    # ---- accounting ------------------------------------------------------------------
    def _done(self, kind: str, start: int, nbytes: int, ok: bool) -> None:
        now = time.monotonic_ns()
        s = self.stats
        if ok:
            setattr(s, f"{kind}_operations", getattr(s, f"{kind}_operations") + 1)
            if kind != "flush":
                setattr(s, f"{kind}_bytes", getattr(s, f"{kind}_bytes") + nbytes)
        else:
            setattr(s, f"failed_{kind}_operations", getattr(s, f"failed_{kind}_operations") + 1)
        setattr(s, f"{kind}_total_time_ns", getattr(s, f"{kind}_total_time_ns") + now - start)
        s.last_op_ns = now

    def account_invalid(self, kind: str) -> None:
        """A request the device refused before it reached the image (bad range, bad header)."""
        kind = _KINDS[kind]
        with self._lock:
            setattr(self.stats, f"invalid_{kind}_operations",
                    getattr(self.stats, f"invalid_{kind}_operations") + 1)
            self.stats.last_op_ns = time.monotonic_ns()

    def _run(self, kind: str, nbytes: int, op: Callable[[], None], end: int | None = None) -> None:
        start = time.monotonic_ns()
        try:
            if kind in ("wr", "unmap") and self.image.readonly:
                raise BlockError(f"{self.image.path}: image is opened read-only")
            if kind in ("wr", "unmap") and not self.image.active:
                raise BlockError(f"{self.image.path}: image is inactive (another process owns it)")
            op()
        except BlockError:
            self._done(kind, start, nbytes, False)
            raise
        if end is not None and end > self.stats.wr_highest_offset:
            self.stats.wr_highest_offset = end
        self._done(kind, start, nbytes, True)

    # ---- data path -------------------------------------------------------------------
    def read_into(self, offset: int, views: Sequence[memoryview], total: int | None = None) -> None:
        """Fill ``views`` (in order; ``total`` bytes, when the caller knows) with the disk bytes at
        ``offset``: one preadv straight into them for a raw image, through one buffer and C-level
        copies otherwise."""
        if total is None:
            total = sum(map(len, views))
        bufs = views if isinstance(views, list) else list(views)
        with self._lock:
            self._run("rd", total, lambda: self.image.readv_into(offset, bufs, total))

    def write_from(self, offset: int, views: Sequence[memoryview], total: int | None = None) -> None:
        """Write the concatenation of ``views`` (``total`` bytes, when the caller knows) at ``offset``
        (durably when the write cache is off)."""
        if total is None:
            total = sum(map(len, views))
        bufs = views if isinstance(views, list) else list(views)

        def op() -> None:
            self.image.writev_from(offset, bufs, total)
            if not self.writeback:
                self.image.flush()
        with self._lock:
            self._run("wr", total, op, offset + total)

    def host_io(self, offset: int, iov: Any, total: int, write: bool) -> bool:
        """Read (or ``write``) ``total`` bytes at ``offset`` straight to or from the host memory ``iov``
        names (see BlockBackend.host_io; the caller keeps it mapped). False, and nothing done or counted,
        when the image cannot: use read_into/write_from."""
        def op() -> None:
            self.image.host_io(offset, iov, total, write)
            if write and not self.writeback:
                self.image.flush()
        with self._lock:
            if not self.image.can_host_io():
                return False
            self._run("wr" if write else "rd", total, op, offset + total if write else None)
        return True

    def write_zeroes(self, offset: int, length: int, *, unmap: bool) -> None:
        def op() -> None:
            self.image.write_zeroes(offset, length, unmap=unmap and self.discard == "unmap")
            if not self.writeback:
                self.image.flush()
        with self._lock:
            self._run("wr", length, op, offset + length)

    def discard_range(self, offset: int, length: int) -> None:
        def op() -> None:
            if self.discard == "unmap":
                self.image.discard(offset, length)
        with self._lock:
            self._run("unmap", length, op)

    def flush(self) -> None:
        with self._lock:
            self._run("flush", 0, self.image.flush)

    # ---- management ------------------------------------------------------------------
    def resize(self, new_size: int) -> None:
        """block_resize: change the disk size and tell the attached devices."""
        with self._lock:
            if self.image.readonly:
                raise BlockError("Image is read-only")
            if not self.image.active:
                raise BlockError("Permission 'resize' unavailable on an inactive image")
            self.image.resize(new_size, shrink=True)
        for cb in list(self.on_resize):
            cb(new_size)

    def chain(self) -> list[BlockBackend]:
        return chain_of(self.image)

    def close(self) -> None:
        """Release the image (and its locks); idempotent."""
        with self._lock:
            self.image.close()
            hooks, self.on_close = self.on_close, []
        for hook in hooks:
            hook()


def open_drive(path: Path | str, fmt: str | None = None, *, id: str, readonly: bool = False,
               cache: str | CacheMode = DEFAULT_CACHE, discard: str = "ignore", locking: bool = True,
               node_name: str = "", inactive: bool = False) -> Drive:
    """Open an image as a guest disk: QEMU's locks (unless ``locking`` is off), the cache mode
    (a cache= name or a CacheMode) for the whole backing chain, and the discard policy;
    ``inactive`` for an ``-incoming`` destination (see the module docstring)."""
    mode = cache if isinstance(cache, CacheMode) else CacheMode.parse(cache)
    if discard in ("off",):
        discard = "ignore"
    elif discard in ("on",):
        discard = "unmap"
    if discard not in DISCARD_MODES:
        raise BlockError(f"Invalid discard option '{discard}'")
    img = open_image(path, fmt, readonly=readonly, cache=mode, locking=locking, inactive=inactive)
    return Drive(id, img, mode, discard, node_name)


def inactivate_drives(drives: Sequence[Drive]) -> None:
    """QEMU's bdrv_inactivate_all: every drive flushed and its locks dropped, or (on an error,
    re-raised) none: the ones already given up are taken back."""
    done: list[Drive] = []
    try:
        for d in drives:
            if d.active:
                d.inactivate()
                done.append(d)
    except BaseException:
        for d in reversed(done):
            try:
                d.activate()
            except BlockError:
                log.exception("%s: could not take the image back after a failed hand-over", d.id)
        raise


def activate_drives(drives: Sequence[Drive]) -> None:
    """QEMU's bdrv_activate_all: every inactive drive locked and re-read, or (on an error,
    re-raised) none: the ones already taken are given up again, so the other side can."""
    done: list[Drive] = []
    try:
        for d in drives:
            if not d.active:
                d.activate()
                done.append(d)
    except BaseException:
        for d in reversed(done):
            try:
                d.inactivate()
            except BlockError:
                log.exception("%s: could not release the image after a failed activation", d.id)
        raise
