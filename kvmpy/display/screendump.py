"""A frame as an image file: PPM (P6) exactly as QEMU's screendump writes it, and PNG (8-bit RGB).

QEMU's PPM is the header ``P6\\n<width> <height>\\n255\\n`` and then the pixels as R, G,
B bytes, row after row. The PNG is an 8-bit RGB image without interlacing, as QEMU's
(libpng) one; it is built here with zlib (the format is small, and zlib is in the
standard library), its rows unfiltered.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from kvmpy.display.surface import BYTES_PER_PIXEL, Frame

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def rgb_rows(frame: Frame) -> np.ndarray:
    """The frame as an (height, width, 3) array of R, G, B bytes."""
    rows = np.frombuffer(frame.pixels, np.uint8, frame.height * frame.stride).reshape(frame.height, frame.stride)
    bgrx = rows[:, : frame.width * BYTES_PER_PIXEL].reshape(frame.height, frame.width, BYTES_PER_PIXEL)
    return bgrx[:, :, 2::-1]


def to_ppm(frame: Frame) -> bytes:
    return f"P6\n{frame.width} {frame.height}\n255\n".encode() + rgb_rows(frame).tobytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data))


def to_png(frame: Frame) -> bytes:
    rgb = rgb_rows(frame)
    scanlines = np.concatenate([np.zeros((frame.height, 1), np.uint8),  # filter type 0 (None) per row
                                rgb.reshape(frame.height, frame.width * 3)], axis=1)
    ihdr = struct.pack("!IIBBBBB", frame.width, frame.height, 8, 2, 0, 0, 0)  # 8-bit, RGB, deflate, no interlace
    return (PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6))
            + _chunk(b"IEND", b""))


FORMATS = {"ppm": to_ppm, "png": to_png}
