"""The contract between a display adapter (the producer) and the display front ends (the consumers).

A display adapter (``kvmpy.devices.vga``) renders whatever mode the guest programmed
(VGA text, Bochs VBE graphics) into a :class:`Frame` of 32-bit pixels, and tells which
parts changed since it was last asked. Front ends (the VNC server, ``screendump``, the web
console) consume frames through :class:`DisplaySource` and send input back through
:class:`KeyboardSink` and :class:`PointerSink`; they never touch device registers.

Pixel format: 4 bytes per pixel in memory order B, G, R, X (pixman's x8r8g8b8 on a
little-endian host, what QEMU's console surfaces use); ``stride`` is in bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

BYTES_PER_PIXEL = 4


@dataclass(frozen=True)
class Rect:
    """A rectangle of pixels: x, y of its top-left corner, its width and height."""

    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class Frame:
    """One rendered picture of the guest's screen (B, G, R, X bytes per pixel)."""

    width: int
    height: int
    stride: int
    pixels: bytes

    def row(self, y: int) -> bytes:
        """The pixels of row ``y``, without the stride's padding."""
        start = y * self.stride
        return self.pixels[start : start + self.width * BYTES_PER_PIXEL]


@dataclass(frozen=True)
class Update:
    """What :meth:`DisplaySource.refresh` returns: the current frame and what changed.

    ``resized`` is True when the size or mode changed since the previous refresh (then
    ``dirty`` covers the whole frame). ``dirty`` lists the rectangles that may differ from
    the previous refresh; an idle screen gives an empty list.
    """

    frame: Frame
    dirty: list[Rect]
    resized: bool


class DisplaySource(Protocol):
    """A display adapter as the front ends see it. One consumer calls ``refresh`` (the
    console's refresh thread), which fans updates out to every viewer."""

    def refresh(self) -> Update:
        """Render the screen and report what changed since the last call."""
        ...


class KeyboardSink(Protocol):
    """Where key presses go: a PS/2 keyboard on the i8042 (or later a virtio/USB one).

    Keys are named by QEMU's QKeyCode strings (``a``, ``ret``, ``shift``, ``ctrl``,
    ``f1`` …), what QMP's send-key and input-send-event use; VNC keysyms are mapped to
    these names by the VNC server.
    """

    def key_event(self, qcode: str, down: bool) -> None:
        """Press (``down``) or release one key."""
        ...


class PointerSink(Protocol):
    """Where pointer motion goes: relative motion and the button mask (bit 0 left, 1 middle, 2 right, 3/4 wheel up/down)."""

    def pointer_event(self, dx: int, dy: int, buttons: int) -> None:
        """Move by (dx, dy) pixels with these buttons held."""
        ...
