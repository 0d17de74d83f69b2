"""Character backends for serial ports: stdio (with QEMU's Ctrl-A escapes on a terminal), file, null.

A backend owns the host side of a serial line: it writes what the guest
transmits and feeds what the user types into a ``receive`` callable. On a
terminal, stdin is switched to raw mode and restored on every exit path;
Ctrl-A x quits, Ctrl-A h prints help and Ctrl-A Ctrl-A sends a literal Ctrl-A,
as under ``qemu -nographic``.

Output never fails towards the guest: ``write()`` is called on a vCPU thread, and
a host-side error (a full disk, ``file:/dev/full``, a closed pipe, a terminal that
stays blocked) drops that output and is logged once per backend; the guest runs
on, as under QEMU. Backends implement ``put()`` and may raise OSError there.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import termios
import threading
import time
import tty
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

CTRL_A = 0x01
ESCAPE_HELP = (b"\r\nC-a h    print this help\r\nC-a x    exit kvmpy\r\n"
               b"C-a C-a  sends C-a\r\n")


OUTPUT_STALL = 1.0  # seconds a blocked output may hold up the vCPU before the bytes are dropped


def write_all(fd: int, data: bytes, stall: float = OUTPUT_STALL) -> None:
    """Write all of ``data`` to ``fd``, waiting at most ``stall`` seconds in all for a non-blocking fd.

    Raises OSError (BlockingIOError when the reader did not drain in time); callers drop the rest.
    """
    view = memoryview(data)
    deadline = None
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            now = time.monotonic()
            deadline = now + stall if deadline is None else deadline
            if now >= deadline:
                raise
            select.select([], [fd], [], deadline - now)
            continue
        view = view[n:]


class CharBackend:
    """Base: output is discarded, no input. Subclasses implement ``put()``; ``write()`` never raises."""

    what = "character device"
    output_failed = False  # set on the instance at the first dropped output (logged once)
    output_stall = OUTPUT_STALL

    def write(self, data: bytes) -> None:
        """Send guest output to the host side; a host error drops it (logged once), never reaches the vCPU."""
        try:
            self.put(data)
        except (OSError, ValueError) as exc:  # ValueError: a file object closed under us
            if not self.output_failed:
                self.output_failed = True
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                # A reader that went away (kvmpy ... | head) is ordinary; anything else is worth a warning.
                level = logging.DEBUG if isinstance(exc, BrokenPipeError) else logging.WARNING
                log.log(level, "%s: output failed (%s); guest output is dropped, the guest runs on",
                        self.what, reason)

    def put(self, data: bytes) -> None:
        pass

    def start(self, receive: Callable[[bytes], int], on_quit: Callable[[], None]) -> None:
        pass

    def close(self) -> None:
        pass


class NullBackend(CharBackend):
    pass


class FileBackend(CharBackend):
    def __init__(self, path: Path) -> None:
        self.what = f"serial output file {path}"
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ValueError(f"cannot open serial output file {path}: {reason}") from None

    def put(self, data: bytes) -> None:
        if self._fd >= 0:
            write_all(self._fd, data, self.output_stall)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class StdioBackend(CharBackend):
    def __init__(self, stdin_fd: int = 0, stdout_fd: int = 1, escapes: bool = True) -> None:
        self.in_fd = stdin_fd
        self.out_fd = stdout_fd
        self.escapes = escapes
        self._saved_tty: list | None = None
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    what = "serial output to stdout"

    def put(self, data: bytes) -> None:
        write_all(self.out_fd, data, self.output_stall)

    def start(self, receive: Callable[[bytes], int], on_quit: Callable[[], None]) -> None:
        try:
            is_tty = os.isatty(self.in_fd)
        except OSError:
            return
        if is_tty:
            self._saved_tty = termios.tcgetattr(self.in_fd)
            tty.setraw(self.in_fd)
        self._thread = threading.Thread(target=self._reader, args=(receive, on_quit, is_tty),
                                        name="stdin", daemon=True)
        self._thread.start()

    def _reader(self, receive: Callable[[bytes], int], on_quit: Callable[[], None], is_tty: bool) -> None:
        escape = False
        while True:
            try:
                ready, _, _ = select.select([self.in_fd, self._stop_r], [], [])
            except (OSError, ValueError):
                return
            if self._stop_r in ready:
                return
            try:
                data = os.read(self.in_fd, 4096)
            except OSError:
                return
            if not data:
                return  # EOF: the guest just gets no more input
            if not (is_tty and self.escapes):
                receive(data)
                continue
            out = bytearray()
            for b in data:
                if escape:
                    escape = False
                    if b == ord("x"):
                        if out:
                            receive(bytes(out))
                        self.write(b"kvmpy: terminating on C-a x\r\n")
                        on_quit()
                        return
                    if b == ord("h"):
                        self.write(ESCAPE_HELP)
                    elif b == CTRL_A:
                        out.append(CTRL_A)
                    continue
                if b == CTRL_A:
                    escape = True
                else:
                    out.append(b)
            if out:
                receive(bytes(out))

    def close(self) -> None:
        with self._lock:
            try:
                os.write(self._stop_w, b"x")
            except OSError:
                pass
            if self._saved_tty is not None:
                try:
                    termios.tcsetattr(self.in_fd, termios.TCSADRAIN, self._saved_tty)
                except termios.error:
                    pass
                self._saved_tty = None


def open_backend(spec: str) -> CharBackend:
    """``stdio``, ``file:PATH``, ``none``/``null``."""
    if spec == "stdio":
        return StdioBackend()
    if spec in ("none", "null"):
        return NullBackend()
    if spec.startswith("file:"):
        return FileBackend(Path(spec[5:]))
    raise ValueError(f"unsupported serial backend {spec!r} (use stdio, file:PATH, null or none)")


class BufferBackend(CharBackend):
    """Keeps the guest's output in memory and lets a script type into it: for tests and automation.

    ``expect(text, then=bytes)`` queues input that is sent once ``text`` has
    appeared in the output; ``wait_for(text, timeout)`` blocks until it has.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._out = bytearray()
        self._receive: Callable[[bytes], int] | None = None
        self._expects: list[tuple[bytes, bytes]] = []

    @property
    def output(self) -> bytes:
        with self._cond:
            return bytes(self._out)

    what = "serial output buffer"

    def put(self, data: bytes) -> None:
        with self._cond:
            self._out += data
            self._cond.notify_all()
            due = [e for e in self._expects if e[0] in self._out]
            self._expects = [e for e in self._expects if e not in due]
            receive = self._receive
        for _, reply in due:
            if receive is not None:
                receive(reply)

    def start(self, receive: Callable[[bytes], int], on_quit: Callable[[], None]) -> None:
        with self._cond:
            self._receive = receive

    def send(self, data: bytes) -> None:
        with self._cond:
            receive = self._receive
        if receive is None:
            raise RuntimeError("the machine has not started yet")
        receive(data)

    def expect(self, text: bytes, then: bytes) -> None:
        with self._cond:
            if text in self._out and self._receive is not None:
                self._receive(then)
            else:
                self._expects.append((text, then))

    def wait_for(self, text: bytes, timeout: float) -> bool:
        end = time.monotonic() + timeout
        with self._cond:
            while text not in self._out:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True
