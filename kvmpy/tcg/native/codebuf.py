"""Executable memory for generated x86-64 code, and entry into it through cffi.

Code is written into anonymous mappings that are read-write while written and
read-execute otherwise (W^X): ``mprotect`` from libc, reached through cffi's ABI
mode, flips only the pages a new piece of code touches.  Code is never freed in
this first step: an invalidated unit's code stays mapped (a callback may still be
returning into it), and ``size`` reports what the cache holds.
"""

from __future__ import annotations

import logging
import mmap

from cffi import FFI

log = logging.getLogger(__name__)

ffi = FFI()
ffi.cdef("int mprotect(void *addr, size_t len, int prot);")
_libc = ffi.dlopen(None)

CHUNK = 4 << 20
PAGE = mmap.PAGESIZE
ALIGN = 16


class CodeBuffer:
    def __init__(self, chunk: int = CHUNK) -> None:
        self.chunk = chunk
        self._maps: list[mmap.mmap] = []
        self._base = 0          # address of the current chunk
        self._used = self.chunk
        self.size = 0           # bytes of code written, over all chunks

    def _new_chunk(self, need: int) -> None:
        n = max(self.chunk, (need + PAGE - 1) // PAGE * PAGE)
        m = mmap.mmap(-1, n, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._maps.append(m)
        self._base = int(ffi.cast("uintptr_t", ffi.from_buffer(m)))
        self._mv = memoryview(m)
        self._cap = n
        self._used = 0
        self._protect(0, n, mmap.PROT_READ | mmap.PROT_EXEC)

    def _protect(self, start: int, end: int, prot: int) -> None:
        lo = start // PAGE * PAGE
        hi = (end + PAGE - 1) // PAGE * PAGE
        if _libc.mprotect(ffi.cast("void *", self._base + lo), hi - lo, prot) != 0:
            raise OSError(ffi.errno, "mprotect failed on the native code buffer")

    def write(self, code: bytes) -> int:
        """Copy ``code`` into executable memory; returns its address."""
        start = (self._used + ALIGN - 1) // ALIGN * ALIGN
        if not self._maps or start + len(code) > self._cap:
            self._new_chunk(len(code))
            start = 0
        end = start + len(code)
        self._protect(start, end, mmap.PROT_READ | mmap.PROT_WRITE)
        self._mv[start:end] = code
        self._protect(start, end, mmap.PROT_READ | mmap.PROT_EXEC)
        self._used = end
        self.size += len(code)
        return self._base + start

    @staticmethod
    def entry(addr: int, signature: str = "uint64_t(*)(void)"):
        """A cffi callable for the code at ``addr``."""
        return ffi.cast(signature, addr)
