"""QEMU's cache= modes and how an image file is opened for them (O_DIRECT, flushes), with aligned bounce buffers.

A cache mode is three switches, as in QEMU's ``cache.*`` options:

============  ==========  ==========  =========  ===========================
cache=        writeback   direct      no-flush   what it means
============  ==========  ==========  =========  ===========================
writeback     on          off         off        page cache; flush = fdatasync
none          on          on          off        O_DIRECT; flush = fdatasync
writethrough  off         off         off        fdatasync after every write
directsync    off         on          off        O_DIRECT + fdatasync after every write
unsafe        on          off         on         page cache; flushes ignored
============  ==========  ==========  =========  ===========================

``writeback`` is what a guest sees as the disk's volatile write cache (virtio's
WCE / ``writeback`` config byte); with it off the drive makes every write
durable before completing it, the way QEMU's block layer emulates FUA with a
flush. ``direct`` opens a second descriptor of the image with O_DIRECT for guest
data; transfers whose offset, length and memory are aligned use it, aligned
transfers from unaligned memory go through an aligned bounce buffer, and the
rare unaligned transfer (and image metadata) uses the buffered descriptor: the
kernel keeps the two coherent (direct I/O writes back and drops cached pages of
its range).
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

import numpy as np

from kvmpy.block.errors import BlockError

MAX_BOUNCE = 1 << 20


@dataclass(frozen=True)
class CacheMode:
    name: str
    writeback: bool
    direct: bool
    no_flush: bool

    @classmethod
    def parse(cls, name: str) -> "CacheMode":
        try:
            wb, direct, no_flush = _MODES[name]
        except KeyError:
            raise BlockError(f"invalid cache option '{name}' (use one of "
                             f"{', '.join(_MODES)})") from None
        return cls(name, wb, direct, no_flush)


_MODES = {"writeback": (True, False, False), "none": (True, True, False),
          "writethrough": (False, False, False), "directsync": (False, True, False),
          "unsafe": (True, False, True)}
CACHE_MODES = tuple(_MODES)
DEFAULT_CACHE = "writeback"


def address_of(buf: memoryview) -> int:
    """The memory address of a contiguous buffer (read-only ones too)."""
    return int(np.frombuffer(buf, dtype=np.uint8).ctypes.data) if len(buf) else 0


def probe_alignment(fd: int) -> int:
    """The request alignment O_DIRECT needs on this file: 512 if a 512-byte read works, else 4096
    (what QEMU's raw_probe_alignment finds for the usual devices)."""
    buf = mmap.mmap(-1, 4096)
    try:
        os.preadv(fd, [memoryview(buf)[:512]], 0)
        return 512
    except OSError:
        return 4096
    finally:
        buf.close()


class DirectFile:
    """The O_DIRECT descriptor of an image plus what it takes to use it correctly."""

    def __init__(self, path: os.PathLike | str, readonly: bool) -> None:
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_DIRECT
        try:
            self.fd = os.open(path, flags)
        except OSError as e:
            raise BlockError(f"{path}: could not open with O_DIRECT (cache=none/directsync): "
                             f"{e.strerror}") from e
        self.align = probe_alignment(self.fd)
        self._bounce: mmap.mmap | None = None

    def fits(self, offset: int, length: int) -> bool:
        return offset % self.align == 0 and length % self.align == 0

    def fits_all(self, offset: int, views: list[memoryview]) -> bool:
        """True when a vectored transfer of ``views`` at ``offset`` can go to O_DIRECT as it is."""
        return offset % self.align == 0 and all(len(v) % self.align == 0 and self._aligned(v) for v in views)

    def _aligned(self, buf: memoryview) -> bool:
        return address_of(buf) % self.align == 0

    def _bounce_for(self, length: int) -> memoryview:
        if self._bounce is None or len(self._bounce) < length:
            if self._bounce is not None:
                self._bounce.close()
            self._bounce = mmap.mmap(-1, max(length, 1 << 16))  # page-aligned
        return memoryview(self._bounce)[:length]

    def read(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` (aligned offset and length) from the file; zeros past its end."""
        step = MAX_BOUNCE
        done = 0
        while done < len(buf):
            part = buf[done:done + step] if not self._aligned(buf) else buf[done:]
            target = part if self._aligned(part) else self._bounce_for(len(part))
            got = 0
            while got < len(target):
                n = os.preadv(self.fd, [target[got:]], offset + done + got)
                if n <= 0:
                    break
                got += n
                if got % self.align:  # a short read that is not aligned: the end of the file
                    break
            if target is not part:
                part[:got] = target[:got]
            if got < len(part):
                part[got:] = bytes(len(part) - got)
                buf[done + len(part):] = bytes(len(buf) - done - len(part))
                return
            done += len(part)

    def write(self, offset: int, buf: memoryview) -> None:
        """Write ``buf`` (aligned offset and length) to the file."""
        done = 0
        while done < len(buf):
            if self._aligned(buf[done:]):
                part = buf[done:]
            else:
                part = self._bounce_for(min(MAX_BOUNCE, len(buf) - done))
                part[:] = buf[done:done + len(part)]
            n = os.pwritev(self.fd, [part], offset + done)
            if n <= 0 or n % self.align:
                raise OSError(5, "short O_DIRECT write")
            done += n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._bounce is not None:
            self._bounce.close()
            self._bounce = None
