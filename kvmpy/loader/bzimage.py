"""bzImage kernels: the protected-mode kernel, and its compressed payload decompressed on the host.

A bzImage is real-mode setup code, then the protected-mode kernel (the
kernel's own decompressor plus the compressed vmlinux). kvmpy enters the
64-bit entry point directly, so only the protected-mode part is loaded.
Alternatively the payload (located by payload_offset/payload_length) can be
decompressed here and booted as an ELF through PVH; Debian kernels use LZ4
"legacy" frames (cloud) or xz (generic), others gzip, zstd, bzip2 or lzma.
Inflation is bounded so a hostile image cannot exhaust host memory.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import struct
import zlib
from dataclasses import dataclass

from kvmpy.loader.boot_params import SetupHeader, parse_setup_header
from kvmpy.loader.errors import LoaderError

MAX_VMLINUX = 1 << 30
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
LZ4_LEGACY_BLOCK = 8 << 20  # uncompressed size of every block but the last


@dataclass(frozen=True)
class BzImage:
    header: SetupHeader
    image: bytes
    name: str

    @property
    def protected_mode_kernel(self) -> memoryview:
        return memoryview(self.image)[self.header.kernel_offset:]

    def payload(self) -> bytes:
        h = self.header
        if h.version < 0x208 or not h.payload_length:
            raise LoaderError(f"{self.name}: boot protocol {h.version:#x} does not locate the payload")
        start = h.kernel_offset + h.payload_offset
        if start + h.payload_length > len(self.image):
            raise LoaderError(f"{self.name}: payload_offset/payload_length point outside the file")
        return self.image[start:start + h.payload_length]


def parse_bzimage(image: bytes, name: str = "kernel") -> BzImage:
    return BzImage(parse_setup_header(image, name), image, name)


def compression_of(payload: bytes) -> str:
    magics = [(b"\x1f\x8b", "gzip"), (b"\xfd7zXZ\x00", "xz"), (LZ4_LEGACY_MAGIC, "lz4"),
              (b"\x28\xb5\x2f\xfd", "zstd"), (b"BZh", "bzip2"), (b"\x5d\x00\x00", "lzma"),
              (b"\x7fELF", "none")]
    for magic, kind in magics:
        if payload.startswith(magic):
            return kind
    return "unknown"


def _lz4_legacy(payload: bytes, limit: int) -> bytes:
    import lz4.block  # the well-kept binding of the reference LZ4 library; imported only when needed

    out = bytearray()
    pos = len(LZ4_LEGACY_MAGIC)
    while pos + 4 <= len(payload):
        size, = struct.unpack_from("<I", payload, pos)
        if payload[pos:pos + 4] == LZ4_LEGACY_MAGIC:  # concatenated streams
            pos += 4
            continue
        if pos + 4 + size > len(payload):
            if len(payload) - pos == 4:
                break  # the kernel build appends the uncompressed size after the last block
            raise LoaderError("LZ4 payload is truncated")
        block = payload[pos + 4:pos + 4 + size]
        pos += 4 + size
        try:
            out += lz4.block.decompress(block, uncompressed_size=LZ4_LEGACY_BLOCK)
        except lz4.block.LZ4BlockError as exc:
            raise LoaderError(f"LZ4 payload is corrupt: {exc}") from None
        if len(out) > limit:
            raise LoaderError("LZ4 payload inflates past the size limit")
    return bytes(out)


def _stream(reader: io.BufferedIOBase, limit: int, what: str) -> bytes:
    out = reader.read(limit + 1)
    if len(out) > limit:
        raise LoaderError(f"{what} payload inflates past the size limit")
    return out


def decompress_payload(payload: bytes, limit: int = MAX_VMLINUX) -> bytes:
    """The vmlinux ELF inside a bzImage payload."""
    kind = compression_of(payload)
    try:
        if kind == "lz4":
            return _lz4_legacy(payload, limit)
        if kind == "gzip":
            return _stream(gzip.GzipFile(fileobj=io.BytesIO(payload)), limit, "gzip")
        if kind in ("xz", "lzma"):
            fmt = lzma.FORMAT_XZ if kind == "xz" else lzma.FORMAT_ALONE
            # The kernel appends the uncompressed size after the stream; lzma stops at the stream end.
            dec = lzma.LZMADecompressor(format=fmt)
            out = dec.decompress(payload, max_length=limit + 1)
            if len(out) > limit:
                raise LoaderError(f"{kind} payload inflates past the size limit")
            if not dec.eof:
                raise LoaderError(f"{kind} payload is truncated (the stream has no end)")
            return out
        if kind == "bzip2":
            return _stream(bz2.BZ2File(io.BytesIO(payload)), limit, "bzip2")
        if kind == "zstd":
            try:
                import zstandard
            except ImportError:
                raise LoaderError("the payload is zstd-compressed; install the python package "
                                  "'zstandard' to decompress it on the host") from None
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload)) as r:
                return _stream(r, limit, "zstd")  # type: ignore[arg-type]
        if kind == "none":
            return payload
    except (OSError, EOFError, lzma.LZMAError, zlib.error, ValueError) as exc:
        if isinstance(exc, LoaderError):
            raise
        raise LoaderError(f"{kind} payload is corrupt: {exc}") from None
    raise LoaderError(f"payload compression with magic {payload[:4].hex()} is not supported")
