"""The raw image driver: the file is the disk, holes in the file are zero ranges."""

from __future__ import annotations

import errno
import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from kvmpy.block.backend import BlockBackend, Extent, HostFileOptions, map_file_range, merge_extents
from kvmpy.block.errors import BlockError, io_errors

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_IOV_MAX = 1024


@functools.lru_cache(maxsize=1)
def _libc_fallocate():  # type: ignore[no-untyped-def]
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = libc.fallocate
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return fn


@functools.lru_cache(maxsize=1)
def _libc_vec_io():  # type: ignore[no-untyped-def]
    """libc's preadv and pwritev through ctypes (which lets the GIL go during the call)."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fns = libc.preadv, libc.pwritev
    for fn in fns:
        fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64]
        fn.restype = ctypes.c_ssize_t
    return fns, ctypes.get_errno, ctypes.memset


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate a file range via fallocate(2); False when the file system cannot."""
    try:
        rc = _libc_fallocate()(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)
    except (OSError, AttributeError):
        return False
    return rc == 0


def create_raw(path: Path, size: int) -> None:
    """Create (or truncate) a sparse raw image of ``size`` bytes."""
    if size < 0:
        raise BlockError(f"{path}: image size must not be negative")
    try:
        with open(path, "wb") as f:
            f.truncate(size)
    except OSError as e:
        raise BlockError(f"{path}: cannot create raw image: {e.strerror}") from e


class RawBackend(BlockBackend):
    """A plain file used as a disk, sparse-aware through SEEK_DATA/SEEK_HOLE and hole punching."""

    format_name = "raw"

    def __init__(self, path: Path, readonly: bool = True, host: HostFileOptions | None = None) -> None:
        super().__init__(path, readonly, host)
        self.fd = self.open_host_file()
        self._size = os.fstat(self.fd).st_size

    @io_errors
    def read(self, offset: int, length: int) -> bytes:
        self.check_range(offset, length)
        data = os.pread(self.fd, length, offset)
        if len(data) < length:  # the file shrank under us; the rest reads as zeros
            data += bytes(length - len(data))
        return data

    @io_errors
    def readinto(self, offset: int, buf: memoryview) -> None:
        self.check_range(offset, len(buf))
        self.pread_all(self.fd, [(offset, buf)])

    @io_errors
    def readv_into(self, offset: int, views: list[memoryview], total: int | None = None) -> None:
        """One preadv straight into the caller's buffers (guest RAM), unless O_DIRECT needs them aligned."""
        if total is None:
            total = sum(map(len, views))
        self.check_range(offset, total)
        if self.direct is not None and not self.direct.fits_all(offset, views):
            super().readv_into(offset, views)
            return
        fd = self.direct.fd if self.direct is not None else self.fd
        pos = 0
        while views:
            got = os.preadv(fd, views[:1024], offset + pos)
            if pos + got == total:  # all of it (the usual case): no walk over the views
                return
            if got <= 0:  # past the end of a file that shrank: zeros
                for v in views:
                    v[:] = bytes(len(v))
                return
            pos += got
            while views and got >= len(views[0]):
                got -= len(views[0])
                views = views[1:]
            if views and got:
                views = [views[0][got:]] + views[1:]

    @io_errors
    def writev_from(self, offset: int, views: list[memoryview], total: int | None = None) -> None:
        """One pwritev straight from the caller's buffers (guest RAM), unless O_DIRECT needs them aligned."""
        self._check_writable()
        if total is None:
            total = sum(map(len, views))
        self.check_range(offset, total)
        if self.direct is not None and not self.direct.fits_all(offset, views):
            super().writev_from(offset, views)
            return
        fd = self.direct.fd if self.direct is not None else self.fd
        pos = 0
        while views:
            n = os.pwritev(fd, views[:1024], offset + pos)
            pos += n
            if pos == total:  # all of it (the usual case): no walk over the views
                return
            while views and n >= len(views[0]):
                n -= len(views[0])
                views = views[1:]
            if views and n:
                views = [views[0][n:]] + views[1:]

    def can_host_io(self) -> bool:
        return self.direct is None

    @io_errors
    def host_io(self, offset: int, iov: Any, total: int, write: bool) -> None:
        """One preadv/pwritev per IOV_MAX rows of ``iov`` (host addresses, lengths), straight to or from
        guest RAM without a Python object per buffer."""
        if self.direct is not None:
            raise BlockError(f"{self.path}: O_DIRECT needs aligned buffers: no host-memory I/O")
        if write:
            self._check_writable()
        self.check_range(offset, total)
        (preadv, pwritev), get_errno, memset = _libc_vec_io()
        call = pwritev if write else preadv
        done = 0
        rows = iov
        while len(rows):
            chunk = rows[:_IOV_MAX]
            got = call(self.fd, chunk.ctypes.data, len(chunk), offset + done)
            if got < 0:
                err = get_errno()
                if err == errno.EINTR:
                    continue
                raise OSError(err, os.strerror(err))
            done += got
            if done == total:
                return
            if got == 0:
                if write:
                    raise OSError(errno.EIO, "pwritev wrote nothing")
                for addr, n in rows.tolist():  # past the end of a file that shrank: zeros
                    memset(addr, 0, n)
                return
            ends = np.cumsum(rows[:, 1])  # move past what this call moved, maybe into a row
            k = int(np.searchsorted(ends, got, side="right"))
            rows = rows[k:].copy()
            if len(rows):
                part = got - (int(ends[k - 1]) if k else 0)
                rows[0, 0] += part
                rows[0, 1] -= part

    @io_errors
    def mapped(self, offset: int, length: int) -> memoryview | None:
        self.check_range(offset, length)
        return map_file_range(self.fd, offset, length)

    @io_errors
    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self._check_writable()
        self.check_range(offset, len(data))
        self.pwrite_all(self.fd, [(offset, [data])])

    @io_errors
    def write_zeroes(self, offset: int, length: int, *, unmap: bool = False) -> None:
        self._check_writable()
        self.check_range(offset, length)
        if length and punch_hole(self.fd, offset, length):
            return
        chunk = bytes(min(length, 1 << 20))
        while length:
            n = min(length, len(chunk))
            os.pwrite(self.fd, chunk[:n], offset)
            offset += n
            length -= n

    def discard(self, offset: int, length: int) -> None:
        self.write_zeroes(offset, length, unmap=True)

    @io_errors
    def flush(self) -> None:
        if not self.readonly and self.durable:
            os.fdatasync(self.fd)

    def size(self) -> int:
        return self._size

    def reload(self) -> None:
        """The other side of a migration may have resized the file."""
        self._size = os.fstat(self.fd).st_size

    @io_errors
    def resize(self, new_size: int, *, shrink: bool = False) -> None:
        self._check_writable()
        if new_size < 0:
            raise BlockError(f"{self.path}: size must not be negative")
        if new_size < self._size and not shrink:
            raise BlockError(f"{self.path}: use the --shrink option to shrink the image")
        os.ftruncate(self.fd, new_size)
        self._size = new_size

    def block_status(self, offset: int, length: int) -> list[Extent]:
        self.check_range(offset, length)
        end = offset + length
        out: list[Extent] = []
        pos = offset
        while pos < end:
            try:
                data_start = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    return [Extent(offset, length, True, False, host_offset=offset)]
                data_start = end
            data_start = min(data_start, end)
            if data_start > pos:
                out.append(Extent(pos, data_start - pos, False, True, host_offset=pos))
                pos = data_start
                continue
            try:
                hole = os.lseek(self.fd, pos, os.SEEK_HOLE)
            except OSError:
                hole = end
            hole = min(max(hole, pos + 1), end)
            out.append(Extent(pos, hole - pos, True, False, host_offset=pos))
            pos = hole
        return merge_extents(out)

    def close(self) -> None:
        if self.fd >= 0:
            self.close_host_file(self.fd)
            self.fd = -1

    def _check_writable(self) -> None:
        if self.readonly:
            raise BlockError(f"{self.path}: image is opened read-only")
        if not self.active:
            raise BlockError(f"{self.path}: image is inactive (another process owns it)")
