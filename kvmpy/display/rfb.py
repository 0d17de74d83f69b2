"""The RFB (VNC) wire protocol, as RFC 6143 lays it out: versions, pixel formats and the client's messages.

This module owns the bytes: it parses what a (possibly hostile) client sends and
formats what the server answers, without sockets or threads. Every length a
client states is checked against a bound before anything is allocated, and
anything malformed raises :class:`RfbError`, which a server turns into a clean
disconnect. The pixel encodings live in :mod:`kvmpy.display.rfb_encodings`.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Union

import numpy as np

from kvmpy.display.surface import BYTES_PER_PIXEL, Frame, Rect

# Security types (RFC 6143 7.1.2).
SEC_INVALID = 0
SEC_NONE = 1
SEC_VNC_AUTH = 2

# Client-to-server message types (RFC 6143 7.5).
MSG_SET_PIXEL_FORMAT = 0
MSG_SET_ENCODINGS = 2
MSG_UPDATE_REQUEST = 3
MSG_KEY_EVENT = 4
MSG_POINTER_EVENT = 5
MSG_CLIENT_CUT_TEXT = 6
MSG_QEMU = 255  # QEMU's client message, subtype 0: the extended key event
QEMU_EXTENDED_KEY = 0

# Server-to-client message types.
MSG_FRAMEBUFFER_UPDATE = 0
MSG_BELL = 2

# Encodings and pseudo-encodings (RFC 6143 7.7, 7.8; the IANA RFB registry).
ENC_RAW = 0
ENC_ZLIB = 6
ENC_ZRLE = 16
ENC_DESKTOP_SIZE = -223
ENC_QEMU_EXTENDED_KEY = -258  # the client may send key numbers (QEMU's qnum) with each keysym
ENC_COMPRESS_LEVEL_0 = -256  # -256 .. -247: zlib compression levels 0..9

MAX_ENCODINGS = 1024  # more than any client names; a longer SetEncodings is refused
MAX_CUT_TEXT = 1 << 20  # QEMU's limit for ClientCutText too: 1 MiB
MAX_DIMENSION = 0xFFFF


class RfbError(Exception):
    """The client broke the protocol; the server closes the connection."""


def parse_version(data: bytes) -> tuple[int, int]:
    """The (major, minor) version a client answered with, normalised to 3.3, 3.7 or 3.8.

    RFC 6143 says a server treats an unknown 3.x (3.4-3.6, as some viewers send) as 3.3,
    and Apple's 3.889 is 3.8 in all but name.
    """
    m = re.fullmatch(rb"RFB (\d{3})\.(\d{3})\n", data)
    if not m or int(m.group(1)) != 3:
        raise RfbError(f"not an RFB 3.x version string: {data[:12]!r}")
    minor = int(m.group(2))
    return (3, 8) if minor >= 8 else (3, 7) if minor == 7 else (3, 3)


@dataclass(frozen=True)
class PixelFormat:
    """RFC 6143 7.4's PIXEL_FORMAT: how a client wants each pixel's bytes laid out."""

    bits_per_pixel: int = 32
    depth: int = 24
    big_endian: bool = False
    true_colour: bool = True
    red_max: int = 255
    green_max: int = 255
    blue_max: int = 255
    red_shift: int = 16
    green_shift: int = 8
    blue_shift: int = 0

    WIRE = struct.Struct("!BBBBHHHBBB3x")

    def to_bytes(self) -> bytes:
        return self.WIRE.pack(self.bits_per_pixel, self.depth, self.big_endian, self.true_colour,
                              self.red_max, self.green_max, self.blue_max,
                              self.red_shift, self.green_shift, self.blue_shift)

    @classmethod
    def from_bytes(cls, data: bytes) -> PixelFormat:
        """The client's format; RfbError for one this server cannot produce (colour maps, odd sizes)."""
        bpp, depth, be, tc, rmax, gmax, bmax, rs, gs, bs = cls.WIRE.unpack(data)
        pf = cls(bpp, depth, bool(be), bool(tc), rmax, gmax, bmax, rs, gs, bs)
        if bpp not in (8, 16, 32):
            raise RfbError(f"bits-per-pixel {bpp} is not 8, 16 or 32")
        if not tc:
            raise RfbError("colour-map pixel formats are not supported")
        for cmax, shift in ((rmax, rs), (gmax, gs), (bmax, bs)):
            if cmax == 0 or cmax & (cmax + 1) or shift >= bpp or (cmax << shift) >> bpp:
                raise RfbError(f"colour max {cmax} at shift {shift} does not fit {bpp} bits")
        return pf

    @property
    def bytes_per_pixel(self) -> int:
        return self.bits_per_pixel // 8

    @property
    def is_native(self) -> bool:
        """Whether the frame's own B, G, R, X bytes are already this format."""
        return self == NATIVE_FORMAT

    def convert(self, frame: Frame, rect: Rect) -> np.ndarray:
        """The pixels of ``rect`` in this format, as an (h, w) array of unsigned integers."""
        x0 = rect.x * BYTES_PER_PIXEL
        x1 = x0 + rect.w * BYTES_PER_PIXEL
        rows = np.frombuffer(frame.pixels, np.uint8, frame.height * frame.stride).reshape(frame.height, frame.stride)
        block = np.ascontiguousarray(rows[rect.y : rect.y + rect.h, x0:x1])
        xrgb = block.view("<u4").astype(np.uint32)
        if self.is_native:
            return xrgb
        out = np.zeros_like(xrgb)
        for cmax, shift, src in ((self.red_max, self.red_shift, 16), (self.green_max, self.green_shift, 8),
                                 (self.blue_max, self.blue_shift, 0)):
            out |= (((xrgb >> src) & 0xFF) * cmax // 255) << shift
        return out

    def pixel_bytes(self, values: np.ndarray) -> bytes:
        """An array from :meth:`convert` as wire bytes."""
        order = ">" if self.big_endian else "<"
        dtype = {8: "u1", 16: order + "u2", 32: order + "u4"}[self.bits_per_pixel]
        return values.astype(dtype).tobytes()


NATIVE_FORMAT = PixelFormat()  # the frame's B, G, R, X bytes read as a little-endian 32-bit x8r8g8b8


# ---- client-to-server messages ---------------------------------------------

@dataclass(frozen=True)
class SetPixelFormat:
    pixel_format: PixelFormat


@dataclass(frozen=True)
class SetEncodings:
    encodings: tuple[int, ...]


@dataclass(frozen=True)
class UpdateRequest:
    incremental: bool
    rect: Rect


@dataclass(frozen=True)
class KeyEvent:
    down: bool
    keysym: int


@dataclass(frozen=True)
class PointerEvent:
    buttons: int
    x: int
    y: int


@dataclass(frozen=True)
class ClientCutText:
    text: bytes


@dataclass(frozen=True)
class ExtendedKeyEvent:
    """QEMU's extended key event: the keysym and the key's number (set-1 code, 0x80 for E0 keys)."""

    down: bool
    keysym: int
    keycode: int


ClientMessage = Union[SetPixelFormat, SetEncodings, UpdateRequest, KeyEvent, PointerEvent, ClientCutText,
                      ExtendedKeyEvent]

# The largest message the parser ever buffers: a ClientCutText at its cap.
MAX_MESSAGE = 8 + MAX_CUT_TEXT


class ClientMessageParser:
    """Splits the client's byte stream into messages; never holds more than :data:`MAX_MESSAGE` bytes."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[ClientMessage]:
        """Every complete message ``data`` finishes; RfbError on a malformed one."""
        self._buf += data
        out: list[ClientMessage] = []
        while self._buf:
            need, msg = self._parse_one()
            if msg is None:
                if len(self._buf) > MAX_MESSAGE:  # cannot happen with the checks in _parse_one
                    raise RfbError("message too long")
                break
            del self._buf[:need]
            out.append(msg)
        return out

    def _parse_one(self) -> tuple[int, ClientMessage | None]:
        buf = self._buf
        kind = buf[0]
        if kind == MSG_SET_PIXEL_FORMAT:
            if len(buf) < 20:
                return 20, None
            return 20, SetPixelFormat(PixelFormat.from_bytes(bytes(buf[4:20])))
        if kind == MSG_SET_ENCODINGS:
            if len(buf) < 4:
                return 4, None
            (count,) = struct.unpack_from("!H", buf, 2)
            if count > MAX_ENCODINGS:
                raise RfbError(f"SetEncodings names {count} encodings (at most {MAX_ENCODINGS})")
            need = 4 + 4 * count
            if len(buf) < need:
                return need, None
            return need, SetEncodings(struct.unpack_from(f"!{count}i", buf, 4))
        if kind == MSG_UPDATE_REQUEST:
            if len(buf) < 10:
                return 10, None
            inc, x, y, w, h = struct.unpack_from("!BHHHH", buf, 1)
            return 10, UpdateRequest(bool(inc), Rect(x, y, w, h))
        if kind == MSG_KEY_EVENT:
            if len(buf) < 8:
                return 8, None
            down, keysym = struct.unpack_from("!B2xI", buf, 1)
            return 8, KeyEvent(bool(down), keysym)
        if kind == MSG_POINTER_EVENT:
            if len(buf) < 6:
                return 6, None
            mask, x, y = struct.unpack_from("!BHH", buf, 1)
            return 6, PointerEvent(mask, x, y)
        if kind == MSG_CLIENT_CUT_TEXT:
            if len(buf) < 8:
                return 8, None
            (length,) = struct.unpack_from("!I", buf, 4)
            if length > MAX_CUT_TEXT:
                raise RfbError(f"ClientCutText of {length} bytes (at most {MAX_CUT_TEXT})")
            if len(buf) < 8 + length:
                return 8 + length, None
            return 8 + length, ClientCutText(bytes(buf[8 : 8 + length]))
        if kind == MSG_QEMU:
            if len(buf) < 2:
                return 2, None
            if buf[1] != QEMU_EXTENDED_KEY:
                raise RfbError(f"unknown QEMU client message subtype {buf[1]}")
            if len(buf) < 12:
                return 12, None
            down, keysym, keycode = struct.unpack_from("!HII", buf, 2)
            return 12, ExtendedKeyEvent(bool(down), keysym, keycode)
        raise RfbError(f"unknown client message type {kind}")


# ---- server-to-client messages ---------------------------------------------

def server_init(width: int, height: int, pf: PixelFormat, name: str) -> bytes:
    raw = name.encode("utf-8", "replace")
    return struct.pack("!HH", width, height) + pf.to_bytes() + struct.pack("!I", len(raw)) + raw


def update_header(count: int) -> bytes:
    return struct.pack("!BxH", MSG_FRAMEBUFFER_UPDATE, count)


def rect_header(rect: Rect, encoding: int) -> bytes:
    return struct.pack("!HHHHi", rect.x, rect.y, rect.w, rect.h, encoding)


def clip(rect: Rect, width: int, height: int) -> Rect | None:
    """``rect`` cut to a width x height screen; None if nothing is left."""
    x0, y0 = max(rect.x, 0), max(rect.y, 0)
    x1, y1 = min(rect.x + rect.w, width), min(rect.y + rect.h, height)
    if x1 <= x0 or y1 <= y0:
        return None
    return Rect(x0, y0, x1 - x0, y1 - y0)


def bounding_box(rects: list[Rect]) -> Rect:
    x0 = min(r.x for r in rects)
    y0 = min(r.y for r in rects)
    x1 = max(r.x + r.w for r in rects)
    y1 = max(r.y + r.h for r in rects)
    return Rect(x0, y0, x1 - x0, y1 - y0)
