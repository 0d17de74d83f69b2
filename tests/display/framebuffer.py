"""A framebuffer in memory that tests draw into: a real DisplaySource for the front ends, with its dirty rectangles."""

from __future__ import annotations

import threading

from kvmpy.display.surface import BYTES_PER_PIXEL, Frame, Rect, Update


class MemoryFramebuffer:
    """x8r8g8b8 pixels in a bytearray; ``fill`` paints and records the rectangle as dirty."""

    def __init__(self, width: int, height: int, stride: int | None = None) -> None:
        self._lock = threading.Lock()
        self.refreshes = 0
        self._resize(width, height, stride)

    def _resize(self, width: int, height: int, stride: int | None) -> None:
        self.width, self.height = width, height
        self.stride = stride or width * BYTES_PER_PIXEL
        self.pixels = bytearray(self.stride * height)
        self._dirty = [Rect(0, 0, width, height)]
        self._resized = True

    def resize(self, width: int, height: int) -> None:
        with self._lock:
            self._resize(width, height, None)

    def fill(self, rect: Rect, rgb: tuple[int, int, int]) -> None:
        px = bytes((rgb[2], rgb[1], rgb[0], 0))
        with self._lock:
            for y in range(rect.y, rect.y + rect.h):
                start = y * self.stride + rect.x * BYTES_PER_PIXEL
                self.pixels[start : start + rect.w * BYTES_PER_PIXEL] = px * rect.w
            self._dirty.append(rect)

    def pattern(self) -> None:
        """Every pixel a different colour, so a misplaced byte shows."""
        with self._lock:
            for y in range(self.height):
                for x in range(self.width):
                    o = y * self.stride + x * BYTES_PER_PIXEL
                    self.pixels[o : o + 4] = bytes(((x * 7) & 0xFF, (y * 5) & 0xFF, (x + y * 3) & 0xFF, 0))
            self._dirty.append(Rect(0, 0, self.width, self.height))

    def refresh(self) -> Update:
        with self._lock:
            self.refreshes += 1
            frame = Frame(self.width, self.height, self.stride, bytes(self.pixels))
            update = Update(frame, self._dirty, self._resized)
            self._dirty, self._resized = [], False
            return update

    def rgb_image(self) -> bytes:
        """The picture as R, G, B bytes per pixel, row after row (what a PIL RGB image holds)."""
        with self._lock:
            out = bytearray()
            for y in range(self.height):
                row = self.pixels[y * self.stride : y * self.stride + self.width * BYTES_PER_PIXEL]
                for x in range(self.width):
                    b, g, r = row[x * 4 : x * 4 + 3]
                    out += bytes((r, g, b))
            return bytes(out)
