"""The machine's graphical console: the VNC server a board starts for its display adapter, or a blank screen without one.

A board hands over whatever display adapter it has (any device that is a
:class:`DisplaySource`) and its keyboard and pointer; with no adapter (``-vga none``,
or before one exists) viewers see a black 640x480 screen, as QEMU shows one when no
device drives the display.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from kvmpy.display.options import VncOptions
from kvmpy.display.surface import BYTES_PER_PIXEL, DisplaySource, Frame, KeyboardSink, PointerSink, Rect, Update
from kvmpy.display.vnc import VncServer
from kvmpy.errors import ConfigError

log = logging.getLogger(__name__)

BLANK_SIZE = (640, 480)


class BlankScreen:
    """A DisplaySource that shows black: what viewers see when no device drives the display."""

    def __init__(self, width: int = BLANK_SIZE[0], height: int = BLANK_SIZE[1]) -> None:
        self._frame = Frame(width, height, width * BYTES_PER_PIXEL, bytes(width * height * BYTES_PER_PIXEL))
        self._first = True

    def refresh(self) -> Update:
        first, self._first = self._first, False
        frame = self._frame
        return Update(frame, [Rect(0, 0, frame.width, frame.height)] if first else [], first)


def find_display_source(devices: Iterable[Any]) -> DisplaySource | None:
    """The first device (or a PCI function's device model) that renders a screen: one with ``refresh``."""
    for dev in devices:
        for candidate in (dev, getattr(dev, "device", None)):
            if candidate is not None and callable(getattr(candidate, "refresh", None)):
                return candidate
    return None


def start_vnc(options: VncOptions, source: DisplaySource | None, keyboard: KeyboardSink | None,
              pointer: PointerSink | None, name: str | None = None) -> VncServer:
    """A running VNC server for ``source`` (a blank screen if None); ConfigError if it cannot listen."""
    try:
        server = VncServer(source if source is not None else BlankScreen(), options.host, options.port,
                           keyboard=keyboard, pointer=pointer, password_required=options.password,
                           name=f"kvmpy ({name})" if name else "kvmpy")
    except OSError as exc:
        raise ConfigError(f"{options.source}: Failed to find an available port: {exc.strerror or exc}") from None
    log.info("VNC server on %s:%d (display %d)", options.host, options.port, options.display)
    return server.start()
