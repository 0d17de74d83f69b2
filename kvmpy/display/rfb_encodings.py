"""RFB rectangle encodings: Raw, zlib and ZRLE (RFC 6143 7.7 and the zlib encoding of the RFB registry).

An :class:`Encoder` belongs to one connection: zlib and ZRLE keep one zlib stream
for the life of a connection, as the protocol requires, so a client's inflater
stays in step. Each ``encode`` returns the rectangle's header and its data.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np

from kvmpy.display.rfb import (
    ENC_COMPRESS_LEVEL_0,
    ENC_RAW,
    ENC_ZLIB,
    ENC_ZRLE,
    PixelFormat,
    rect_header,
)
from kvmpy.display.surface import Frame, Rect

ZRLE_TILE = 64
DEFAULT_LEVEL = 6


def compress_level(encodings: tuple[int, ...]) -> int:
    """The zlib level a client asked for with the CompressLevel pseudo-encodings (-256 + level)."""
    for enc in encodings:
        if ENC_COMPRESS_LEVEL_0 <= enc <= ENC_COMPRESS_LEVEL_0 + 9:
            return enc - ENC_COMPRESS_LEVEL_0
    return DEFAULT_LEVEL


def zrle_cpixels(pf: PixelFormat, values: np.ndarray) -> bytes:
    """ZRLE's CPIXELs: 3 bytes for a 32-bit true-colour pixel whose colour bits fit in three
    of its bytes (the low three, or the high three), else the pixel's full bytes."""
    raw = pf.pixel_bytes(values)
    if pf.bits_per_pixel != 32 or pf.depth > 24:
        return raw
    used = (pf.red_max << pf.red_shift) | (pf.green_max << pf.green_shift) | (pf.blue_max << pf.blue_shift)
    if used < 1 << 24:
        keep = slice(1, 4) if pf.big_endian else slice(0, 3)
    elif used & 0xFF == 0:
        keep = slice(0, 3) if pf.big_endian else slice(1, 4)
    else:
        return raw
    return np.frombuffer(raw, np.uint8).reshape(-1, 4)[:, keep].tobytes()


class Encoder:
    """Encodes rectangles of a frame for one client, in the best encoding it accepts."""

    def __init__(self) -> None:
        self.encoding = ENC_RAW
        self.level = DEFAULT_LEVEL
        self._zlib: Any = None  # a zlib compressobj, made on first use
        self._zrle: Any = None

    def choose(self, encodings: tuple[int, ...]) -> None:
        """Use the first of the client's encodings this server knows (its order is its preference)."""
        self.encoding = next((e for e in encodings if e in (ENC_RAW, ENC_ZLIB, ENC_ZRLE)), ENC_RAW)
        self.level = compress_level(encodings)

    def encode(self, frame: Frame, rect: Rect, pf: PixelFormat) -> bytes:
        values = pf.convert(frame, rect)
        if self.encoding == ENC_ZLIB:
            if self._zlib is None:
                self._zlib = zlib.compressobj(self.level)
            data = self._zlib.compress(pf.pixel_bytes(values)) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
            return rect_header(rect, ENC_ZLIB) + struct.pack("!I", len(data)) + data
        if self.encoding == ENC_ZRLE:
            if self._zrle is None:
                self._zrle = zlib.compressobj(self.level)
            data = self._zrle.compress(self._zrle_tiles(values, pf)) + self._zrle.flush(zlib.Z_SYNC_FLUSH)
            return rect_header(rect, ENC_ZRLE) + struct.pack("!I", len(data)) + data
        return rect_header(rect, ENC_RAW) + pf.pixel_bytes(values)

    @staticmethod
    def _zrle_tiles(values: np.ndarray, pf: PixelFormat) -> bytes:
        """64x64 tiles left to right, top to bottom: a solid tile as subencoding 1 and one
        CPIXEL, any other as subencoding 0 and its raw CPIXELs (zlib squeezes the repeats)."""
        out = bytearray()
        height, width = values.shape
        for ty in range(0, height, ZRLE_TILE):
            for tx in range(0, width, ZRLE_TILE):
                tile = values[ty : ty + ZRLE_TILE, tx : tx + ZRLE_TILE]
                first = tile.flat[0]
                if (tile == first).all():
                    out.append(1)
                    out += zrle_cpixels(pf, tile.reshape(-1)[:1])
                else:
                    out.append(0)
                    out += zrle_cpixels(pf, tile.reshape(-1))
        return bytes(out)
